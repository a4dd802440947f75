"""MONAI bundle folders (``configs/inference.json`` + ``models/model.pt``), read without running their code.

The bundle's ``network_def`` names the network as ``{"_target_": "monai.networks.nets.X", ...arguments}``.
softcamify builds only targets under ``monai.networks.nets`` with literal (JSON) arguments, resolving
``@key`` references to literal values of the same config; expressions (``$...``) are refused, since
evaluating them would run code from the file. The weights are read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import InputError

CONFIG = Path("configs") / "inference.json"
WEIGHTS = Path("models") / "model.pt"
_PREFIX = "monai.networks.nets."


def bundle_root(path: Path) -> Path | None:
    """The bundle folder of ``path`` (the folder itself, or its ``models/model.pt``), or None."""
    for root in (path, path.parent.parent):
        if root.is_dir() and (root / CONFIG).is_file():
            return root
    return None


def _resolve(value: Any, config: dict[str, Any], where: str, depth: int = 0) -> Any:
    if isinstance(value, str) and value.startswith("$"):
        raise InputError(
            f"{where} is the expression {value!r}; softcamify does not evaluate bundle expressions (they run code): "
            "replace it with its value."
        )
    if isinstance(value, str) and value.startswith("@") and depth < 8:
        key = value[1:]
        if key not in config:
            raise InputError(f"{where} refers to {value!r}, which the bundle config does not define.")
        return _resolve(config[key], config, where, depth + 1)
    if isinstance(value, list):
        return [_resolve(v, config, where, depth + 1) for v in value]
    if isinstance(value, dict):
        if "_target_" in value:
            raise InputError(f"{where} builds an object ({value['_target_']!r}); softcamify reads literal arguments.")
        return {k: _resolve(v, config, where, depth + 1) for k, v in value.items()}
    return value


def network_def(root: Path) -> tuple[str, dict[str, Any]]:
    """(MONAI network name, its constructor arguments) from the bundle's ``network_def``."""
    path = root / CONFIG
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise InputError(f"{path} is not valid JSON.") from None
    except OSError as e:
        raise InputError(f"Cannot read {path} ({e.strerror or e}).") from None
    net = config.get("network_def") if isinstance(config, dict) else None
    if isinstance(net, str) and net.startswith("@"):
        net = config.get(net[1:])
    if not isinstance(net, dict) or not isinstance(net.get("_target_"), str):
        raise InputError(f"{path} has no network_def with a _target_.")
    target = net["_target_"]
    if not target.startswith(_PREFIX):
        raise InputError(
            f"{path}: network_def builds {target!r}; softcamify builds only networks of monai.networks.nets "
            "(never arbitrary imports)."
        )
    name = target.rsplit(".", 1)[1]
    args = {
        k: _resolve(v, config, f"{path} network_def {k}")
        for k, v in net.items()
        if not k.startswith("_") or k in ("_requires_",)
    }
    args.pop("_requires_", None)
    return name, args


def weights_file(root: Path) -> Path:
    path = root / WEIGHTS
    if not path.is_file():
        raise InputError(f"MONAI bundle {root} has no {WEIGHTS} (its weights).")
    return path
