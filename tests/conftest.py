"""Shared fixtures: small real models and real files on disk. Nothing is downloaded."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TIMM_OFFLINE", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs one pytest worker per core: one intra-op thread each (and in the commands they start),
    # else two workers' thread pools fight over two cores. A user's SOFTCAMIFY_THREADS still wins.
    os.environ.setdefault("SOFTCAMIFY_THREADS", "1")
    os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[1]


def run_cli(
    *args: str, cwd: Path | None = None, timeout: int = 300, env: dict | None = None
) -> subprocess.CompletedProcess:
    """Run the real command line in a subprocess (``python -m softcamify ...``)."""
    full_env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "softcamify", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
        stdin=subprocess.DEVNULL,
    )


def run_cli_here(*args: str) -> subprocess.CompletedProcess:
    """The same command line in this process (typer's ``CliRunner``): the same commands, option parsing,
    messages and exit codes as :func:`run_cli`, without a new Python paying its imports (seconds each, more
    on a busy machine). For tests that need no clean process (blocked imports, signals, a module that must be
    missing use :func:`run_cli`)."""
    from typer.testing import CliRunner

    from softcamify.cli import app

    r = CliRunner(env={"COLUMNS": "200", "NO_COLOR": "1"}).invoke(app, [str(a) for a in args])
    if r.exit_code != 0 and r.exception is not None and not isinstance(r.exception, SystemExit):
        raise r.exception  # a bug in the test's own process: show its traceback
    return subprocess.CompletedProcess(["softcamify", *map(str, args)], r.exit_code, r.stdout, r.stderr)


_TORCH_FREE = textwrap.dedent("""
    import sys
    for name in sys.argv[1].split(","):
        sys.modules[name] = None  # any import of them now raises ImportError, as where they are not installed
    from softcamify.cli import app
    try:
        app(sys.argv[2:], standalone_mode=False)
    finally:
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "timm", "torchvision")
                        and sys.modules[m] is not None)
        print("TORCH-MODULES", loaded, file=sys.stderr)
""")


def run_cli_torch_free(
    *args: object, block: tuple[str, ...] = ("torch", "timm", "torchvision")
) -> subprocess.CompletedProcess:
    """The command line in a new Python where the ``block`` packages cannot be imported (as where they are not
    installed); its stderr ends with ``TORCH-MODULES [...]``, the torch modules loaded anyway (none expected)."""
    return subprocess.run(
        [sys.executable, "-c", _TORCH_FREE, ",".join(block), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def make_lesion_model(root: Path) -> dict:
    """A tiny synthetic lesion dataset (15 images, 64 px) under ``root/ds`` and a converted ``test_resnet``
    (random weights, seed 0) saved as ``root/m.safetensors``: ``{"data", "model", "original"}``."""
    import timm
    import torch

    import softcamify
    from softcamify.data.synth import make_lesions

    make_lesions(root / "ds", n=15, size=64, seed=3, workers=1)
    torch.manual_seed(0)
    original = timm.create_model("test_resnet", pretrained=False, num_classes=3).eval()
    sc = softcamify.convert(
        original, input_size=(64, 64), samples=2, class_names=["bright_lesion", "healthy", "red_lesion"]
    )
    path = softcamify.save(sc, root / "m.safetensors")
    return {"data": root / "ds", "model": path, "original": original}


@pytest.fixture
def cli():
    return run_cli


@pytest.fixture(scope="session")
def resnet_weights(tmp_path_factory) -> Path:
    """A user's test_resnet state dict (5 classes) saved as .safetensors."""
    import timm
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = timm.create_model("test_resnet", pretrained=False, num_classes=5)
    path = tmp_path_factory.mktemp("weights") / "test_resnet_5.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models: one intra-op thread is as fast, and immune to OpenMP spin-waits on a busy machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
