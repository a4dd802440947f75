"""A network of the user's own class, named ``package.module:Class`` and built with keyword arguments.

The module is imported (as Python imports any installed code), never unpickled; only ``nn.Module``
subclasses are constructed, so a file's metadata cannot make softcamify call an arbitrary function.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from typing import Any

from torch import nn

from ..errors import InputError, UsageError

KIND = "import"
EXTRA = None


def split(spec: str) -> tuple[str, str]:
    module, _, qualname = spec.partition(":")
    parts = [*module.split("."), *qualname.split(".")]
    if not module or not qualname or not all(p.isidentifier() for p in parts):
        raise UsageError(f"module {spec!r} must name a class as package.module:Class.", param="module")
    return module, qualname


def target(spec: str) -> type[nn.Module]:
    module_name, qualname = split(spec)
    top = module_name.split(".")[0]
    if top in sys.stdlib_module_names or top.startswith("_"):
        # no network class lives there, and some of them act when imported (antigravity, this)
        raise InputError(f"{spec} is not a network class (the standard library has none).", param="module")
    if importlib.util.find_spec(top) is None:  # found without running anything
        raise InputError(
            f"Cannot import {module_name!r} for {spec}; install it or add its folder to PYTHONPATH.", param="module"
        )
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as e:
        raise InputError(
            f"Cannot import {module_name!r} for {spec} ({e}); install it or add its folder to PYTHONPATH.",
            param="module",
        ) from None
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
    if not (isinstance(obj, type) and issubclass(obj, nn.Module)):
        raise InputError(f"{spec} is not an nn.Module class.", param="module")
    return obj


def is_known(spec: str) -> bool:
    return False  # never guessed from a name given as MODEL


def names() -> list[str]:
    return []


def build(name: str, num_classes: int | None, model_args: dict[str, Any]) -> nn.Module:
    cls = target(name)
    if num_classes is not None:
        params = inspect.signature(cls).parameters
        if "num_classes" in params and "num_classes" not in model_args:
            model_args["num_classes"] = int(num_classes)
    try:
        return cls(**model_args)
    except TypeError as e:
        raise UsageError(
            f"{name} cannot be built with model_args {model_args}: {e}; pass its constructor arguments.",
            param="model_args",
        ) from e


def stride_args(model_args: dict[str, Any], output_stride: int) -> dict[str, Any] | None:
    return None


def data_defaults(model: nn.Module, pretrained_cfg: dict[str, Any] | None = None) -> tuple[dict[str, Any], list[str]]:
    return {}, []


def candidates(model: nn.Module, first_channels: int | None):
    """An importable class built without arguments (anything else needs ``module=`` and ``model_args``)."""
    cls = type(model)
    if cls.__module__ in ("__main__", "builtins") or "<locals>" in cls.__qualname__:
        return
    try:
        params = inspect.signature(cls).parameters.values()
    except (TypeError, ValueError):
        return
    if any(p.default is inspect.Parameter.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params):
        return
    yield {"kind": KIND, "name": f"{cls.__module__}:{cls.__qualname__}", "model_args": {}}
