"""Export a SoftCAM model in softcamify's ``.safetensors`` format, reloaded and checked before it is kept."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import torch
from typing_extensions import Unpack

from ..errors import UsageError, ValidationError
from ..io import atomic_output, check_output_path
from ..model import SoftCAM
from ..options import LoadOptions
from ..runtime import load_softcam
from ..sources import cpu_float32
from ..tolerance import DEFAULT_ATOL, DEFAULT_RTOL, agreement
from .report import ExportReport

__all__ = ["export_safetensors"]


def export_safetensors(
    model: Any,
    output: str | os.PathLike,
    *,
    force: bool = False,
    atol: float = DEFAULT_ATOL,
    rtol: float = DEFAULT_RTOL,
    seed: int = 0,
    strict: bool = False,
    class_names: Sequence[str] | None = None,
    **options: Unpack[LoadOptions],
) -> ExportReport:
    """Write the softcamify ``.safetensors`` format (as ``convert`` does), reloaded and checked before
    it is renamed into place: the reloaded model must reproduce logits and evidence within
    ``atol + rtol × scale`` (:mod:`softcamify.tolerance`). ``class_names`` rename the classes in the file's
    metadata (their count must be the model's); the ``options`` (:class:`softcamify.options.LoadOptions`)
    load a model given as a path, as :func:`load_softcam`."""
    from ..checkpoints import load, serialize

    t0 = time.perf_counter()
    out = Path(output)
    if out.suffix.lower() != ".safetensors":
        raise UsageError(f"output {out} must end in .safetensors for the softcamify format.", param="output")
    check_output_path(out, force=force)
    sc, notes = load_softcam(model, strict=strict, atol=atol, class_names=class_names, **options)
    sc = cast(SoftCAM, cpu_float32(sc)[0]).eval()
    c, *size = (int(v) for v in sc.meta.data_config["input_size"])  # C, H, W (C, D, H, W for volumes)
    x = torch.randn(2, c, *size, generator=torch.Generator().manual_seed(seed))
    with atomic_output(out, force=force) as tmp:
        tmp.write_bytes(serialize(sc))  # not save(): its own temporary file would be named in errors
        reloaded = load(tmp, trust_pickle=bool(options.get("trust_pickle")))
        with torch.no_grad():
            ref_l, ref_m = sc.forward_maps(x)
            got_l, got_m = reloaded.forward_maps(x)
        on_logits, on_evidence = agreement(got_l, ref_l, atol, rtol), agreement(got_m, ref_m, atol, rtol)
        if not (on_logits.passed and on_evidence.passed):
            raise ValidationError(
                f"The reloaded {out.name} differs from the model ({on_logits.phrase('logits')}, "
                f"{on_evidence.phrase('evidence')}); nothing was written.",
                param=("atol", "rtol"),
            )
        dl, dm = on_logits.max_abs_diff, on_evidence.max_abs_diff
    return ExportReport.passed_for(
        "safetensors",
        out,
        sc,
        atol=atol,
        rtol=rtol,
        checks=[
            {
                "batch": 2,
                "size": list(size),
                "max_abs_diff_logits": dl,
                "max_abs_diff_evidence": dm,
                "scale_logits": on_logits.scale,
                "scale_evidence": on_evidence.scale,
                "allowed_logits": on_logits.allowed,
                "allowed_evidence": on_evidence.allowed,
            }
        ],
        started=t0,
        notes=notes,
    )
