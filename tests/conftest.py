"""Shared fixtures: small real models and real files on disk. Nothing is downloaded."""

from __future__ import annotations

import os
import subprocess
import sys
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
