"""scripts/typecheck.py: the mypy baseline may only shrink (mypy's own run is `make typecheck`)."""

from __future__ import annotations

import importlib.util
from collections import Counter
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def tc(monkeypatch, tmp_path):
    spec = importlib.util.spec_from_file_location("typecheck", REPO / "scripts" / "typecheck.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    monkeypatch.setattr(mod, "BASELINE", tmp_path / "baseline.txt")
    return mod


def _fake(mod, monkeypatch, lines):
    counts = Counter()
    for line in lines:
        m = mod.ERROR.match(line)
        counts[(m["file"], m["code"])] += 1
    monkeypatch.setattr(mod, "run_mypy", lambda: (counts, list(lines)))


A = "softcamify/a.py:3: error: Incompatible types in assignment  [assignment]"
A2 = "softcamify/a.py:9: error: Incompatible types in assignment  [assignment]"
B = 'softcamify/b.py:1:5: error: Item "None" has no attribute "x"  [union-attr]'


def test_the_error_pattern_reads_mypy_lines(tc):
    m = tc.ERROR.match(B)
    assert (m["file"], m["code"]) == ("softcamify/b.py", "union-attr")
    assert tc.ERROR.match("softcamify/a.py:3: note: See https://…") is None


def test_new_errors_fail_and_fewer_errors_shrink_the_baseline(tc, monkeypatch, capsys):
    _fake(tc, monkeypatch, [A, B])
    assert tc.main(["--update"]) == 0  # the first baseline
    assert tc.read_baseline() == Counter({("softcamify/a.py", "assignment"): 1, ("softcamify/b.py", "union-attr"): 1})
    assert tc.main([]) == 0
    _fake(tc, monkeypatch, [A, A2, B])  # one more error of a known kind in a known file: still new
    assert tc.main([]) == 1
    assert "softcamify/a.py:9" in capsys.readouterr().out
    assert tc.main(["--update"]) == 1  # never raised
    assert sum(tc.read_baseline().values()) == 2
    _fake(tc, monkeypatch, [B])  # one fixed
    assert tc.main([]) == 0
    assert "1 fewer than the baseline" in capsys.readouterr().out
    assert tc.main(["--update"]) == 0
    assert tc.read_baseline() == Counter({("softcamify/b.py", "union-attr"): 1})
