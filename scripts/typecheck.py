"""Type-check ``softcamify/`` with mypy against a committed baseline that may only shrink.

``make test`` runs this. mypy's errors are counted per file and error code (line numbers move with every
edit, counts do not); the run fails when any (file, code) count is above the one recorded in
``scripts/mypy-baseline.txt``: new code must type-check. When counts fall below the baseline, it says so;
``--update`` then rewrites the baseline (or writes the first one), and refuses to raise any count. Usage::

    python scripts/typecheck.py            # check (exit 1 on new errors)
    python scripts/typecheck.py --update   # record a smaller baseline after fixing errors
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BASELINE = REPO / "scripts" / "mypy-baseline.txt"
ERROR = re.compile(r"^(?P<file>[^:]+):\d+(?::\d+)?: error: .*\[(?P<code>[a-z0-9-]+)\]\s*$")


def run_mypy() -> tuple[Counter[tuple[str, str]], list[str]]:
    proc = subprocess.run([sys.executable, "-m", "mypy", "softcamify"], cwd=REPO, capture_output=True, text=True)
    lines = proc.stdout.splitlines()
    if proc.returncode not in (0, 1) or (proc.returncode == 1 and not any(ERROR.match(x) for x in lines)):
        sys.exit(f"mypy failed to run (exit {proc.returncode}):\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    counts: Counter[tuple[str, str]] = Counter()
    errors = []
    for line in lines:
        m = ERROR.match(line)
        if m:
            counts[(m["file"], m["code"])] += 1
            errors.append(line)
    return counts, errors


def read_baseline() -> Counter[tuple[str, str]]:
    counts: Counter[tuple[str, str]] = Counter()
    if BASELINE.is_file():
        for line in BASELINE.read_text(encoding="utf-8").splitlines():
            if line.strip() and not line.startswith("#"):
                n, file, code = line.split()
                counts[(file, code)] = int(n)
    return counts


def write_baseline(counts: Counter[tuple[str, str]]) -> None:
    rows = [f"{n} {file} {code}" for (file, code), n in sorted(counts.items()) if n]
    header = (
        "# mypy errors per file and code that softcamify still has (scripts/typecheck.py); counts may only go down\n"
    )
    BASELINE.write_text(header + "\n".join(rows) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--update", action="store_true", help="record the current (smaller) counts as the baseline")
    args = ap.parse_args(argv)
    counts, errors = run_mypy()
    base = read_baseline()
    worse = {k: (n, base.get(k, 0)) for k, n in counts.items() if n > base.get(k, 0)}
    total, total_base = sum(counts.values()), sum(base.values())
    if args.update:
        if worse and BASELINE.is_file():  # the first baseline records what there is
            print("refusing to raise the baseline for: " + ", ".join(f"{f} [{c}]" for f, c in sorted(worse)))
            return 1
        write_baseline(counts)
        print(f"baseline: {total_base} -> {total} mypy errors")
        return 0
    if worse:
        print(f"mypy: new type errors ({total} now, baseline {total_base}):")
        for line in errors:
            file, code = ERROR.match(line)["file"], ERROR.match(line)["code"]  # type: ignore[index]
            if (file, code) in worse:
                print("  " + line)
        return 1
    fixed = total_base - total
    note = f"; {fixed} fewer than the baseline: run scripts/typecheck.py --update" if fixed else ""
    print(f"mypy: {total} known errors, none new{note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
