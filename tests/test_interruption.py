"""Killed, interrupted and concurrent runs through the real command line (issue 8, docs/reliability.md).

* ``finetune`` SIGKILLed in the middle of an epoch, then ``--resume``: the final weights equal an
  uninterrupted run with the same seed, bit for bit (CPU); a reader polling the run folder never sees a
  half-written ``last.pt`` or ``best.safetensors``.
* A second ``finetune --force`` on a RUN_DIR in use is refused (exit 6) and changes nothing; Ctrl-C then
  stops the first one (exit 130) with the command that resumes it, and that command ends with the same
  weights as the uninterrupted run.
* ``convert`` and ``export`` killed in the middle of writing their output (a patched, slow write):
  SIGKILL leaves the previous output intact (its hidden temporary file is removed by the next write into
  the folder), SIGTERM and Ctrl-C leave no temporary file at all.
* Started as a background job of a script (``cmd &``: SIGINT ignored), ``datasets synth``, ``export``,
  ``convert`` and ``finetune`` still stop on SIGTERM: exit 130, no traceback, nothing half-written.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from test_hostile_inputs import ENV, _image_set, invoke, one_sentence, temporaries

from softcamify.errors import EXIT_INTERRUPTED, EXIT_OUTPUT

PY = [sys.executable, "-m", "softcamify"]
# an epoch takes ~0.3 s here: long enough to be killed in the middle of one
CFG = [
    "--num-classes",
    "2",
    "--input-size",
    "128",
    "-b",
    "4",
    "-j",
    "0",
    "--device",
    "cpu",
    "--lr",
    "3e-3",
    "--epochs",
    "3",
    "--seed",
    "0",
    "--json",
]


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def wait_for(predicate, timeout: float = 180, proc: subprocess.Popen | None = None, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc is not None and proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"the process ended (exit {proc.returncode}) before {what}: {err[-2000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


def popen(*args, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [*map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **ENV, **(env or {})},
        stdin=subprocess.DEVNULL,
    )


class RunFolderReader(threading.Thread):
    """Reads last.pt and best.safetensors over and over while runs write them: every read must be whole."""

    def __init__(self, run_dir: Path):
        super().__init__(daemon=True)
        self.run_dir, self.stop, self.reads, self.errors = run_dir, threading.Event(), {}, []

    def run(self) -> None:
        from safetensors.torch import load as st_load

        from softcamify.checkpoints import META_KEY

        while not self.stop.is_set():
            for name in ("last.pt", "best.safetensors"):
                try:
                    data = (self.run_dir / name).read_bytes()
                except FileNotFoundError:
                    continue
                try:
                    if name == "last.pt":
                        state = torch.load(io.BytesIO(data), weights_only=True)
                        assert "model" in state and "epoch" in state
                    else:
                        assert len(st_load(data)) > 0
                        n = int.from_bytes(data[:8], "little")
                        assert META_KEY in json.loads(data[8 : 8 + n])["__metadata__"]
                    self.reads[name] = self.reads.get(name, 0) + 1
                except Exception as e:  # noqa: BLE001 - any failure is a half-written file
                    self.errors.append(f"{name}: {type(e).__name__}: {e}")
            time.sleep(0.002)

    def finish(self) -> None:
        self.stop.set()
        self.join(timeout=30)
        assert not self.errors, f"a reader saw a half-written file: {self.errors[:3]}"
        assert self.reads.get("last.pt", 0) > 0 and self.reads.get("best.safetensors", 0) > 0, self.reads


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    _image_set(root / "healthy", 20, rng, False)
    _image_set(root / "lesion", 20, rng, True)
    return root


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory) -> dict:
    """The uninterrupted run (same command, in this process, one thread like the subprocesses)."""
    run_dir = tmp_path_factory.mktemp("ref") / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        r = invoke("finetune", "test_resnet", data, "-o", run_dir, *CFG)
    finally:
        torch.set_num_threads(threads)
    assert r.code == 0, r.stderr
    return final_state(run_dir)


def final_state(run_dir: Path) -> dict:
    from safetensors.torch import load_file

    state = torch.load(run_dir / "last.pt", weights_only=True)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for rec in records:
        rec.pop("time_s", None)
        for part in ("train", "val"):
            if isinstance(rec.get(part), dict):
                rec[part].pop("images_per_s", None)
                rec[part].pop("time_s", None)
    return {
        "model": state["model"],
        "epoch": state["epoch"],
        "best": load_file(run_dir / "best.safetensors"),
        "metrics": records,
    }


def assert_same_run(got: dict, want: dict) -> None:
    assert got["epoch"] == want["epoch"] == 3
    assert got["model"].keys() == want["model"].keys()
    different = [k for k in want["model"] if not torch.equal(got["model"][k], want["model"][k])]
    assert not different, f"weights differ from the uninterrupted run: {different[:5]}"
    assert all(torch.equal(got["best"][k], want["best"][k]) for k in want["best"])
    assert got["metrics"] == want["metrics"]  # one record per epoch, none twice, same numbers


def test_sigkill_mid_epoch_then_resume_equals_uninterrupted_run(data, reference, tmp_path):
    run_dir = tmp_path / "run"
    reader = RunFolderReader(run_dir)
    reader.start()
    proc = popen(*PY, "finetune", "test_resnet", data, "-o", run_dir, *CFG)
    wait_for(
        lambda: (run_dir / "metrics.jsonl").exists() and (run_dir / "last.pt").exists(),
        proc=proc,
        what="the end of epoch 1",
    )
    epoch_s = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[0]).get("time_s") or 0.3
    time.sleep(0.4 * epoch_s)  # into epoch 2
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    state = torch.load(run_dir / "last.pt", weights_only=True)  # whole, from an epoch end
    assert 1 <= state["epoch"] < 3
    resumed = subprocess.run(
        [*PY, "finetune", "test_resnet", str(data), "-o", str(run_dir), *CFG, "--resume"],
        capture_output=True,
        text=True,
        env={**os.environ, **ENV},
        timeout=300,
    )
    reader.finish()
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads(resumed.stdout)["resumed_from"] == state["epoch"]
    assert_same_run(final_state(run_dir), reference)
    assert temporaries(run_dir) == [] and not (run_dir / ".lock").exists()  # a killed write's temp is swept


def test_second_run_refused_then_ctrl_c_and_the_printed_resume_command(data, reference, tmp_path):
    run_dir = tmp_path / "run"
    first = popen(*PY, "finetune", "test_resnet", data, "-o", run_dir, *CFG)
    wait_for(lambda: (run_dir / "last.pt").exists(), proc=first, what="the first last.pt")
    first.send_signal(signal.SIGSTOP)  # keep it in the middle of its run while the second one starts
    try:
        files = {p.name: sha(p) for p in run_dir.iterdir() if p.is_file()}
        second = subprocess.run(
            [*PY, "finetune", "test_resnet", str(data), "-o", str(run_dir), *CFG, "--force"],
            capture_output=True,
            text=True,
            env={**os.environ, **ENV},
            timeout=300,
        )
        assert second.returncode == EXIT_OUTPUT, second.stderr[-2000:]
        line = one_sentence(second.stderr)
        assert str(run_dir) in line and "in use by another finetune run" in line and str(first.pid) in line
        assert {p.name: sha(p) for p in run_dir.iterdir() if p.is_file()} == files  # untouched
    finally:  # Ctrl-C while it is stopped: it stops at its next step, however fast the machine is
        first.send_signal(signal.SIGINT)
        first.send_signal(signal.SIGCONT)
    _, err = first.communicate(timeout=300)
    assert first.returncode == EXIT_INTERRUPTED, err[-2000:]
    message = " ".join(err.split())
    assert "interrupted" in message and "--resume" in message and str(run_dir / "last.pt") in message
    command = next(ln.strip() for ln in err.splitlines() if ln.strip().startswith("softcamify finetune"))
    argv = shlex.split(command)
    assert argv[-1] == "--resume" and "--force" not in argv
    resumed = subprocess.run([*PY, *argv[1:]], capture_output=True, text=True, env={**os.environ, **ENV}, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_run(final_state(run_dir), reference)
    assert temporaries(run_dir) == [] and not (run_dir / ".lock").exists()


# A write that stops half-way (after half the bytes reached the temporary file) until it is killed.
SLOW_WRITE = r"""
import os, pathlib, signal, sys, time
# Ctrl-C as in a terminal, even when the test runner was started with SIGINT ignored (a background job)
signal.signal(signal.SIGINT, signal.default_int_handler)
_write_bytes = pathlib.Path.write_bytes
def slow_write_bytes(self, data):
    if not self.name.endswith(".tmp"):
        return _write_bytes(self, data)
    with open(self, "wb") as fh:
        fh.write(data[: len(data) // 2])
        fh.flush()
        os.fsync(fh.fileno())
    pathlib.Path(os.environ["SLOW_WRITE_READY"]).touch()
    time.sleep(300)
pathlib.Path.write_bytes = slow_write_bytes
from softcamify.cli import main
sys.argv = ["softcamify", *sys.argv[1:]]
main()
"""


def killed_mid_write(sig: int, ready: Path, *argv) -> subprocess.CompletedProcess:
    ready.unlink(missing_ok=True)
    proc = popen(sys.executable, "-c", SLOW_WRITE, *argv, env={"SLOW_WRITE_READY": str(ready)})
    wait_for(ready.exists, proc=proc, what="the output write")
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


@pytest.mark.parametrize("command, second", [("convert", signal.SIGTERM), ("export", signal.SIGINT)])
def test_killed_mid_write_keeps_the_previous_output(command, second, tmp_path):
    import timm
    from safetensors.torch import save_file

    weights = tmp_path / "w.safetensors"
    torch.manual_seed(0)
    save_file(
        {k: v.contiguous() for k, v in timm.create_model("test_resnet", num_classes=3).state_dict().items()},
        str(weights),
    )
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    if command == "convert":
        out = out_dir / "m.safetensors"
        argv = ["convert", "test_resnet", "-w", weights, "--input-size", "32", "-o", out, "--samples", "1", "--force"]
    else:
        model = tmp_path / "model.safetensors"
        assert (
            invoke("convert", "test_resnet", "-w", weights, "--input-size", "32", "-o", model, "--samples", "1").code
            == 0
        )
        out = out_dir / "m.onnx"
        argv = ["export", model, "-o", out, "--exporter", "torchscript", "--spatial", "static", "--force"]
    out.write_bytes(b"the previous output")  # what a killed run must leave as it is
    ready = tmp_path / "ready"

    r = killed_mid_write(signal.SIGKILL, ready, *argv)
    assert r.returncode == -signal.SIGKILL
    assert out.read_bytes() == b"the previous output"
    left = temporaries(out_dir)  # killed in the middle of writing: its half-written temporary file remains
    assert len(left) == 1 and left[0].name.startswith(f".{out.name}.") and left[0].stat().st_size > 0

    # SIGTERM (CI timeouts, kill, docker stop) and Ctrl-C are handled: exit 130, the temporary file removed
    r = killed_mid_write(second, ready, *argv)
    assert r.returncode == EXIT_INTERRUPTED, r.stderr[-2000:]
    assert "interrupted" in r.stderr and "Traceback" not in r.stderr
    assert out.read_bytes() == b"the previous output"
    # ... and the SIGKILLed run's temporary file was swept by this next write into the folder
    assert sorted(p.name for p in out_dir.iterdir()) == [out.name]


# --------------------------------------------------------------------------------------------------
# SIGTERM to a background job of a script (issue 16): ``cmd &`` in a non-interactive shell starts the
# command with SIGINT ignored; a scheduler's SIGTERM must still stop it cleanly (exit 130, nothing left).
# --------------------------------------------------------------------------------------------------


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def background(*args, env: dict | None = None) -> subprocess.Popen:
    """``args &`` as a shell script starts it: SIGINT ignored."""
    return subprocess.Popen(
        [*map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **ENV, **(env or {})},
        stdin=subprocess.DEVNULL,
        preexec_fn=_ignore_sigint,
    )


def assert_terminated(proc: subprocess.Popen) -> str:
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_INTERRUPTED, err[-2000:]
    assert "interrupted" in err and "Traceback" not in err, err[-2000:]
    return err


def test_sigterm_stops_datasets_synth_in_the_background(tmp_path):
    out = tmp_path / "synth"
    proc = background(*PY, "datasets", "synth", out, "--n", "5000", "--size", "64")
    wait_for(
        lambda: any((out / "train").rglob("*.png")) if (out / "train").is_dir() else False,
        proc=proc,
        what="the first images",
    )
    assert "interrupted by SIGTERM" in assert_terminated(proc)
    assert not out.exists()  # the partial dataset is removed, the folder it created too
    assert temporaries(tmp_path) == []


@pytest.mark.parametrize("command", ["export", "convert"])
def test_sigterm_stops_export_and_convert_in_the_background(command, tmp_path):
    """The slow write of :data:`SLOW_WRITE`, but started as ``cmd &`` is: SIGINT ignored."""
    import timm
    from safetensors.torch import save_file

    weights = tmp_path / "w.safetensors"
    torch.manual_seed(0)
    save_file(
        {k: v.contiguous() for k, v in timm.create_model("test_resnet", num_classes=3).state_dict().items()},
        str(weights),
    )
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    if command == "convert":
        out = out_dir / "m.safetensors"
        argv = ["convert", "test_resnet", "-w", weights, "--input-size", "32", "-o", out, "--samples", "1"]
    else:
        model = tmp_path / "model.safetensors"
        assert (
            invoke("convert", "test_resnet", "-w", weights, "--input-size", "32", "-o", model, "--samples", "1").code
            == 0
        )
        out = out_dir / "m.onnx"
        argv = ["export", model, "-o", out, "--exporter", "torchscript", "--spatial", "static"]
    ready = tmp_path / "ready"
    script = SLOW_WRITE.replace("signal.signal(signal.SIGINT, signal.default_int_handler)", "pass")
    proc = background(sys.executable, "-c", script, *argv, env={"SLOW_WRITE_READY": str(ready)})
    wait_for(ready.exists, proc=proc, what="the output write")
    assert "interrupted by SIGTERM" in assert_terminated(proc)
    assert sorted(p.name for p in out_dir.iterdir()) == []  # no output, no temporary file


def test_sigterm_stops_finetune_in_the_background_with_a_resume_hint(data, tmp_path):
    run_dir = tmp_path / "run"
    proc = background(*PY, "finetune", "test_resnet", data, "-o", run_dir, *CFG, "--epochs", "50")
    wait_for(lambda: (run_dir / "last.pt").exists(), proc=proc, what="the first last.pt")
    err = assert_terminated(proc)
    message = " ".join(err.split())
    assert "--resume" in message and str(run_dir / "last.pt") in message
    torch.load(run_dir / "last.pt", weights_only=True)  # whole
    assert temporaries(run_dir) == [] and not (run_dir / ".lock").exists()


def test_sigterm_stops_finetune_nproc_in_the_background(data, tmp_path):
    """``--nproc``: the launcher passes SIGTERM on to torchrun, whose processes save their state; no
    traceback (torchrun's SignalException), exit 130, the resume command."""
    run_dir = tmp_path / "run"
    proc = background(*PY, "finetune", "test_resnet", data, "-o", run_dir, *CFG, "--epochs", "200", "--nproc", "2")
    wait_for(lambda: (run_dir / "last.pt").exists(), proc=proc, what="the first last.pt")
    err = assert_terminated(proc)
    message = " ".join(err.split())
    assert "--resume" in message and "--nproc 2" in message and str(run_dir / "last.pt") in message
    assert torch.load(run_dir / "last.pt", weights_only=True)["epoch"] >= 1
    assert temporaries(run_dir) == [] and not (run_dir / ".lock").exists()


def test_sigterm_inside_a_fork_hook_is_delivered_a_moment_later():
    """A SIGTERM that lands in a function whose exceptions Python ignores (logging's at-fork lock release, seen
    once in `datasets synth`) must not be lost: it is re-delivered by a short timer, where it propagates."""
    import signal
    import types

    from softcamify.cli import _terminate
    from softcamify.cli._common import Terminated

    def _releaseLock():  # noqa: N802 - the name logging's fork hook has
        return sys._getframe()

    hook_frame = _releaseLock()
    assert hook_frame.f_code.co_name == "_releaseLock"
    previous = {s: signal.getsignal(s) for s in (signal.SIGALRM, signal.SIGTERM, signal.SIGINT)}
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        _terminate(signal.SIGTERM, hook_frame)  # deferred: no exception here
        assert signal.getitimer(signal.ITIMER_REAL)[0] > 0 and signal.getsignal(signal.SIGALRM) is _terminate
        signal.setitimer(signal.ITIMER_REAL, 0)
        with pytest.raises(Terminated):  # an ordinary frame: the stop propagates
            _terminate(
                signal.SIGTERM,
                types.SimpleNamespace(
                    f_code=test_sigterm_inside_a_fork_hook_is_delivered_a_moment_later.__code__,
                    f_globals={"__name__": __name__},
                ),
            )
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN  # a second SIGTERM cannot cut the cleanup
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        for s, h in previous.items():
            signal.signal(s, h)
