"""The volume preprocessing options of a command (``--window``, ``--zscore``, ``--target-shape``,
``--target-spacing``) as a :class:`softcamify.volumes.VolumeConfig`.

A command takes them with ``o: Shared = Shared(*VOLUME)`` (:data:`softcamify.cli._common.VOLUME`) and calls
:func:`volume_config` with the bundle. Torch-free.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from ..volumes.preprocess import VolumeConfig

__all__ = ["record_volume_config", "volume_config", "volume_options_given"]


def volume_options_given(o: SimpleNamespace | Any) -> bool:
    """True when any volume option was given on the command line."""
    return bool(
        getattr(o, "window", None)
        or getattr(o, "zscore", False)
        or getattr(o, "target_shape", None)
        or getattr(o, "target_spacing", None)
    )


def volume_config(o: SimpleNamespace | Any, channels: int = 1) -> VolumeConfig:
    """The :class:`VolumeConfig` of the options in ``o`` (a :class:`~softcamify.cli._common.Shared` bundle);
    malformed or conflicting values are a :class:`~softcamify.errors.UsageError` naming the option."""
    return VolumeConfig.from_options(
        window=getattr(o, "window", None),
        zscore=bool(getattr(o, "zscore", False)),
        target_shape=getattr(o, "target_shape", None),
        target_spacing=getattr(o, "target_spacing", None),
        channels=channels,
    )


def record_volume_config(softcam: Any, o: SimpleNamespace | Any) -> None:
    """Record the volume options in ``o`` (when any is given) in a volume model's ``data_config``, so later
    commands need no flags; for an image model they are a :class:`~softcamify.errors.UsageError`."""
    from ..errors import UsageError
    from ..volumes.preprocess import with_volume_config

    if not volume_options_given(o):
        return
    if int(getattr(softcam.meta, "spatial_dims", 2)) != 3:
        raise UsageError(
            f"--window, --zscore, --target-shape and --target-spacing apply to volume models; "
            f"{softcam.meta.architecture} reads 2-D images.",
            param=("window", "zscore", "target_shape", "target_spacing"),
        )
    channels = int(softcam.meta.data_config["input_size"][0])
    softcam.meta.data_config = with_volume_config(softcam.meta.data_config, volume_config(o, channels=channels))
