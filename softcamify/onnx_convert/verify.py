"""Check a rewritten ONNX graph against the original, both in onnxruntime (no torch).

:func:`check_graph` runs ``onnx.checker`` (``full_check``) and strict shape inference on the rewritten graph;
:func:`compare` runs both graphs on the same inputs (random, seeded; calibration images when given) and
measures the pre-activation logits against the original's, every original output against itself, and the
mean of the evidence maps against the logits, by the one tolerance rule (:mod:`softcamify.tolerance`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..binary import two_class
from ..errors import InputError, UsageError, ValidationError
from ..threads import tune_onnxruntime
from ..tolerance import agreement

__all__ = ["check_graph", "compare", "random_inputs", "session"]


def check_graph(model: Any) -> None:
    """Raise :class:`ValidationError` unless ``model`` passes the checker and strict shape inference."""
    import onnx

    try:
        onnx.checker.check_model(model, full_check=True)
        onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise ValidationError(
            f"The rewritten graph does not pass the ONNX checker ({first}); nothing was written."
        ) from None


def session(model: Any) -> Any:
    """An onnxruntime CPU session of an in-memory ``onnx.ModelProto``."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    tune_onnxruntime(opts, None)
    return ort.InferenceSession(model.SerializeToString(), sess_options=opts, providers=["CPUExecutionProvider"])


def with_outputs(model: Any, names: Sequence[str]) -> Any:
    """A copy of ``model`` that also outputs the tensors ``names`` (the original's pre-activation logits)."""
    import onnx

    m = onnx.ModelProto()
    m.CopyFrom(model)
    have = {o.name for o in m.graph.output}
    for name in names:
        if name not in have:
            m.graph.output.append(onnx.ValueInfoProto(name=name))
    return m


def data_input(model: Any) -> Any:
    """The graph's image input (its first input that is not an initializer)."""
    weights = {t.name for t in model.graph.initializer}
    return next(i for i in model.graph.input if i.name not in weights)


def input_shape(model: Any, input_size: Sequence[int] | None, batch: int) -> list[int]:
    """The shape of a batch of ``batch`` inputs: the graph's static dims, ``input_size`` ([C,] H, W …) for the
    others (channels first)."""
    dims = data_input(model).type.tensor_type.shape.dim
    static = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    if not static:
        raise InputError("The graph's input has no shape, so no verification input can be made.")
    shape: list[int] = [static[0] or batch]
    rest = static[1:]
    if all(isinstance(d, int) for d in rest):
        return shape + [int(d) for d in rest]  # type: ignore[arg-type]
    if input_size is None:
        raise UsageError(
            "The graph's input size is not fixed; give input_size (the size the model was trained at).",
            param="input_size",
        )
    size = [int(v) for v in input_size]
    if len(size) == len(rest) - 1:  # spatial only: the channels are the graph's
        size = [int(rest[0] or 3), *size]
    if len(size) != len(rest):
        raise UsageError(f"input_size {list(input_size)} does not fit the graph's input {static}.", param="input_size")
    return shape + [int(d) if d else s for d, s in zip(rest, size, strict=True)]


def random_inputs(shape: Sequence[int], samples: int, seed: int, dtype: Any) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((samples, *shape[1:])).astype(dtype)


def _run(sess: Any, name: str, names: list[str], x: np.ndarray, fixed_batch: int | None) -> list[np.ndarray]:
    step = fixed_batch or max(1, min(8, len(x)))
    parts: list[list[np.ndarray]] = [[] for _ in names]
    for start in range(0, len(x), step):
        chunk = x[start : start + step]
        keep = len(chunk)
        if fixed_batch and keep < fixed_batch:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], fixed_batch - keep, axis=0)])
        for i, out in enumerate(sess.run(names, {name: chunk})):
            parts[i].append(np.asarray(out)[:keep])
    return [np.concatenate(p) for p in parts]


def compare(
    original: Any,
    rewritten: Any,
    *,
    logits: str,
    original_logits: str,
    evidence: str,
    original_outputs: Sequence[str],
    inputs: np.ndarray,
    atol: float,
    rtol: float,
) -> dict[str, Any]:
    """The conversion figures of ``rewritten`` against ``original`` (both ``onnx.ModelProto``) on ``inputs``."""
    image = data_input(original)
    first = image.type.tensor_type.shape.dim
    fixed = first[0].dim_value if first and first[0].HasField("dim_value") and first[0].dim_value > 0 else None
    ref_all = _run(
        session(with_outputs(original, [original_logits])),
        image.name,
        [original_logits, *original_outputs],
        inputs,
        fixed,
    )
    got_all = _run(session(rewritten), image.name, [logits, evidence, *original_outputs], inputs, fixed)
    ref, got, maps = (a.astype(np.float64) for a in (ref_all[0], got_all[0], got_all[1]))
    ref, got = ref.reshape(len(ref), -1), got.reshape(len(got), -1)
    logit_check = agreement(got, ref, atol, rtol)
    means = maps.mean(axis=tuple(range(2, maps.ndim)))
    maps_check = agreement(means, got, atol, rtol)
    others = {
        name: agreement(b, a, atol, rtol).to_dict()
        for name, a, b in zip(original_outputs, ref_all[1:], got_all[2:], strict=True)
    }
    ref2, got2 = two_class(ref), two_class(got)
    p = ref2 - ref2.max(1, keepdims=True)
    p = p - np.log(np.exp(p).sum(1, keepdims=True))
    q = got2 - got2.max(1, keepdims=True)
    q = q - np.log(np.exp(q).sum(1, keepdims=True))
    d = np.abs(got - ref)
    scale = max(logit_check.scale, 1e-12)
    return {
        "max_abs_diff": float(d.max()),
        "mean_abs_diff": float(d.mean()),
        "max_rel_diff": float(d.max()) / scale,
        "top1_agreement": float((ref2.argmax(1) == got2.argmax(1)).mean()),
        "kl_divergence": max(0.0, float((np.exp(p) * (p - q)).sum(1).mean())),
        "maps_mean_diff": maps_check.max_abs_diff,
        "logit_scale": scale,
        "logit_spread": float((ref.max(0) - ref.min(0)).max()),
        "logits_passed": logit_check.passed,
        "maps_passed": maps_check.passed,
        "maps_agreement": maps_check,
        "outputs": others,
        "evidence_shape": list(maps.shape[1:]),
    }
