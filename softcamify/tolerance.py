"""The one tolerance rule for every comparison softcamify makes (convert, export, approximate heads).

Two outputs agree when ``max |got − ref| ≤ atol + rtol × scale``, where ``scale`` is ``max |ref|`` of
*that* output (logits and evidence maps each have their own): float32 round-off grows with the
magnitude of the numbers, so an absolute bound alone refuses correct large-valued models and a relative
one alone accepts noise around zero. Like :func:`numpy.allclose`, with the scale taken over the whole
output rather than per element, so a few near-zero entries do not tighten the bound. Torch-free.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

__all__ = ["DEFAULT_ATOL", "DEFAULT_RTOL", "Agreement", "agreement", "allowed"]

DEFAULT_ATOL = 1e-4
DEFAULT_RTOL = 1e-5


def allowed(scale: float, atol: float = DEFAULT_ATOL, rtol: float = DEFAULT_RTOL) -> float:
    """The largest accepted max |Δ| for an output whose largest magnitude is ``scale``."""
    return float(atol) + float(rtol) * float(scale)


@dataclass
class Agreement:
    """How far one output is from its reference, and whether that is within the tolerance."""

    max_abs_diff: float
    scale: float  # max |ref|
    allowed: float  # atol + rtol × scale
    passed: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def phrase(self, what: str) -> str:
        """``max |Δevidence| 2.8e-4 > 1e-4 + 1e-5 × 62`` style text for messages."""
        sign = "≤" if self.passed else ">"
        return f"max |Δ{what}| {self.max_abs_diff:.3g} {sign} allowed {self.allowed:.3g} (scale {self.scale:.3g})"


def agreement(got: Any, ref: Any, atol: float = DEFAULT_ATOL, rtol: float = DEFAULT_RTOL) -> Agreement:
    """Compare ``got`` with ``ref`` (arrays or tensors of one shape) by the rule above; non-finite
    differences never pass."""
    a = np.asarray(_numpy(got), dtype=np.float64)
    b = np.asarray(_numpy(ref), dtype=np.float64)
    diff = float(np.abs(a - b).max()) if a.size else 0.0
    finite = b[np.isfinite(b)]
    scale = float(np.abs(finite).max()) if finite.size else 0.0
    limit = allowed(scale, atol, rtol)
    return Agreement(diff, scale, limit, bool(math.isfinite(diff) and diff <= limit))


def _numpy(x: Any) -> Any:
    if hasattr(x, "detach"):  # a torch tensor, without importing torch here
        return x.detach().cpu().double().numpy()
    return x
