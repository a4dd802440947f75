"""The original classifier beside a SoftCAM model in ``evaluate(original=...)``: loaded as a torch module and
checked to return the model's logits, and its class probabilities for a numpy batch. Torch is imported inside the
functions only (evaluation.run stays torch-free at module level)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ..errors import InputError
from ..runtime import Runtime, TorchRuntime, softmax

__all__ = ["Predict", "load_original", "torch_predict"]

Predict = Callable[[np.ndarray], np.ndarray]


def load_original(
    original: Any,
    mm: Runtime,
    trust_pickle: bool,
    weights: Any = None,
    module: str | None = None,
    model_args: dict[str, Any] | None = None,
) -> Any:
    """``original`` as a torch module in eval mode on the model's device, checked to return its logits
    (``module`` and ``model_args`` build it as :func:`softcamify.checkpoints.load_model` does)."""
    import torch

    from ..checkpoints import LoadedModel, load_model

    assert isinstance(mm, TorchRuntime)  # evaluate refuses original= beside an .onnx model before loading it
    if isinstance(original, torch.nn.Module):
        net = original
    elif isinstance(original, LoadedModel):
        net = original.module
    else:
        try:
            net = load_model(
                original,
                weights=weights,
                trust_pickle=trust_pickle,
                input_size=tuple(mm.input_size[1:]),
                module=module,
                model_args=model_args,
            ).module
        except InputError as e:
            if "holds weights only" not in str(e):
                raise
            raise InputError(
                f"original {original} holds weights only; name its architecture as original and "
                f"give this file as original_weights.",
                param=("original", "original_weights"),
            ) from None
    net = net.to(mm.device).eval()
    with torch.no_grad():
        out = net(torch.zeros(1, *mm.input_size, device=mm.device))
    # a single-logit black box reads as its two classes wherever its logits are used (softmax, baselines)
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[1] != mm.num_logits:
        shape = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise InputError(
            f"The original model returns {shape}, not logits for the SoftCAM model's {mm.num_classes} "
            "classes; original must be the classifier this model was converted from.",
            param="original",
        )
    return net


def torch_predict(module: Any, device: Any) -> Predict:
    """Class probabilities (softmax) of a torch classifier for a numpy batch."""
    import torch

    def predict(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            out = module(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(device))
        return softmax(out.float().cpu().numpy())

    return predict
