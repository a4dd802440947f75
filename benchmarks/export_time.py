"""Seconds to export (and validate) a SoftCAM model to ONNX, per exporter and architecture, from one run.

    python benchmarks/export_time.py                       # the default architectures, 224 px
    python benchmarks/export_time.py --models resnet18 tf_efficientnet_lite0 --size 160

Each architecture is built with random weights (nothing is downloaded), converted, and exported by
``softcamify.exporters.export_onnx`` once per exporter (``torchscript``, ``dynamo``; spatial ``auto``:
dynamic height/width when they validate at a second size, else static). Printed per row: seconds,
whether height/width stayed dynamic, the evidence output's dims as written in the file (their length
shows how readable they are), and the ratio dynamo / torchscript — ratios, because absolute seconds
depend on the machine and on what else runs on it. ``--exporter auto`` (the default of ``softcamify
export``) is timed too: it must be as fast as the fastest exporter that validates.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

MODELS = ("resnet18", "tf_efficientnet_lite0", "convnext_atto", "regnetx_002", "mobilenetv3_small_050")
EXPORTERS = ("torchscript", "dynamo", "auto")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(MODELS))
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--classes", type=int, default=5)
    p.add_argument("--exporters", nargs="+", default=list(EXPORTERS), choices=EXPORTERS)
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = p.parse_args(argv)

    import torch

    from softcamify.checkpoints import load_model
    from softcamify.conversion import convert
    from softcamify.errors import SoftcamifyError
    from softcamify.exporters import export_onnx

    torch.set_num_threads(max(1, torch.get_num_threads()))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            torch.manual_seed(0)
            sc = convert(load_model(name, num_classes=args.classes, input_size=(args.size, args.size)))
            for exporter in args.exporters:
                out = Path(tmp) / f"{name}_{exporter}.onnx"
                t0 = time.perf_counter()
                try:
                    report = export_onnx(sc, out, exporter=exporter, force=True)
                    row = {
                        "model": name,
                        "exporter": exporter,
                        "used": report.exporter,
                        "seconds": round(time.perf_counter() - t0, 1),
                        "dynamic_spatial": report.dynamic_spatial,
                        "evidence_dims": report.shapes.get("evidence"),
                        "max_dim_name": max((len(str(d)) for d in report.shapes.get("evidence", [])), default=0),
                    }
                except SoftcamifyError as e:
                    row = {
                        "model": name,
                        "exporter": exporter,
                        "used": None,
                        "seconds": round(time.perf_counter() - t0, 1),
                        "error": str(e)[:160],
                    }
                rows.append(row)
                print(json.dumps(row) if args.json else _line(row), flush=True)
    if not args.json:
        print()
        for name in args.models:
            by = {r["exporter"]: r for r in rows if r["model"] == name}
            if "dynamo" in by and "torchscript" in by and by["torchscript"]["seconds"] > 0:
                print(
                    f"{name:24s} dynamo / torchscript export time: "
                    f"{by['dynamo']['seconds'] / by['torchscript']['seconds']:.1f}×"
                )
    return 0


def _line(row: dict) -> str:
    if row.get("used") is None:
        return f"{row['model']:24s} {row['exporter']:12s} {row['seconds']:7.1f} s  FAILED: {row['error']}"
    dims = "×".join(str(d) for d in row["evidence_dims"])
    if len(dims) > 60:
        dims = dims[:57] + "…"
    return (
        f"{row['model']:24s} {row['exporter']:12s} {row['seconds']:7.1f} s  used {row['used']:11s} "
        f"{'dynamic' if row['dynamic_spatial'] else 'static ':7s}  evidence {dims} "
        f"(longest dim name {row['max_dim_name']} chars)"
    )


if __name__ == "__main__":
    sys.exit(main())
