"""Reliability of fine-tuning runs, through the real command line (issue 16, docs/reliability.md).

* **The lock.** A ``finetune`` with DataLoader workers SIGKILLed right after an epoch is saved, then resumed
  at once, ends bit-identical to an uninterrupted run (three kill points); its workers, which outlive it for
  a few seconds, no longer hold the run folder. A live run still keeps a second one out (exit 6), and a
  lock whose owner is dead is taken over even while a process it left behind holds the ``flock``.
* **A run folder inside DATA_DIR** is not a class: the run resumes, also with the command printed after
  Ctrl-C. ``--resume`` with another DATA_DIR is refused, naming both folders.
* **An image that breaks during training** (in a worker) is one sentence naming it (exit 3), not a worker
  traceback, and the run resumes once it is fixed. ``--nproc 2`` with a class mismatch prints one line,
  not torchrun's ``ChildFailedError`` report.
* **No class vanishes silently**: a class folder that is a broken link or a file is named (exit 3) by
  ``finetune`` and ``evaluate``.

Each CLI case asserts the exit code, the sentence, no traceback, and nothing half-written.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_cli
from PIL import Image
from test_hostile_inputs import invoke, temporaries

from softcamify.errors import (
    EXIT_INPUT,
    EXIT_INTERRUPTED,
    EXIT_OUTPUT,
    EXIT_USAGE,
    InputError,
    OutputError,
    UsageError,
)
from softcamify.training import RunLock
from softcamify.training.loaders import CarryErrors, WorkerError
from softcamify.training.lock import Owner

ENV = {"COLUMNS": "200", "NO_COLOR": "1", "OMP_NUM_THREADS": "1"}
PY = [sys.executable, "-m", "softcamify"]
# 3 epochs of 4 steps on 16 images at 64 px with 2 DataLoader workers: a few seconds per run
CFG = [
    "--num-classes",
    "2",
    "--input-size",
    "64",
    "-b",
    "4",
    "-j",
    "2",
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


def make_data(root: Path, n: int = 10) -> Path:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:32, :32]
    for c, name in enumerate(("healthy", "lesion")):
        d = root / name
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img = rng.integers(0, 60, (32, 32, 3)).astype(np.uint8)
            if c:
                cy, cx = rng.integers(6, 26, 2)
                img[(yy - cy) ** 2 + (xx - cx) ** 2 < 16] = 240
            Image.fromarray(img).save(d / f"{i:03d}.png")
    return root


def cli(*args, timeout: int = 300) -> subprocess.CompletedProcess:
    return run_cli(*args, timeout=timeout, env=ENV)


def popen(*args) -> subprocess.Popen:
    return subprocess.Popen(
        [*PY, *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **ENV},
        stdin=subprocess.DEVNULL,
    )


def error_line(stderr: str) -> str:
    """The one ``error: …`` line (notes may precede it), and no traceback."""
    assert "Traceback" not in stderr, stderr
    errors = [ln for ln in stderr.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1, stderr
    line = errors[0]
    assert line.rstrip().endswith(".") and len(line) < 500, line
    assert stderr.rstrip().endswith(line.rstrip()), f"something follows the error line:\n{stderr}"
    return line


def tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


class Saves:
    """Counts the epochs saved in a run folder: every save replaces last.pt (a new file, atomically)."""

    def __init__(self, run_dir: Path):
        self.last = run_dir / "last.pt"
        self.seen: int | None = None
        self.count = 0

    def poll(self) -> int:
        try:
            ino = self.last.stat().st_ino
        except FileNotFoundError:
            return self.count
        if ino != self.seen:
            self.seen, self.count = ino, self.count + 1
        return self.count


def wait_saved(proc: subprocess.Popen, run_dir: Path, epochs: int, timeout: float = 240) -> None:
    saves, deadline = Saves(run_dir), time.monotonic() + timeout
    while saves.poll() < epochs:
        if proc.poll() is not None:
            _, err = proc.communicate()
            raise AssertionError(
                f"the run ended (exit {proc.returncode}) before epoch {epochs} was saved: {err[-2000:]}"
            )
        assert time.monotonic() < deadline, f"timed out waiting for epoch {epochs}"
        time.sleep(0.002)


def final_state(run_dir: Path) -> dict:
    from safetensors.torch import load_file

    state = torch.load(run_dir / "last.pt", weights_only=True)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for rec in records:
        rec.pop("time_s", None)
        for part in ("train", "val"):
            rec[part].pop("images_per_s", None)
            rec[part].pop("time_s", None)
    return {
        "model": state["model"],
        "optimizer": state["optimizer"],
        "epoch": state["epoch"],
        "best": load_file(run_dir / "best.safetensors"),
        "metrics": records,
    }


def assert_same_run(got: dict, want: dict) -> None:
    assert got["epoch"] == want["epoch"] == 3
    different = [k for k in want["model"] if not torch.equal(got["model"][k], want["model"][k])]
    assert not different, f"weights differ from the uninterrupted run: {different[:5]}"
    assert all(torch.equal(got["best"][k], want["best"][k]) for k in want["best"])
    assert got["metrics"] == want["metrics"]  # one record per epoch, none twice, same numbers


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_data(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory) -> dict:
    """The uninterrupted run, in this process (without workers: the result does not depend on them)."""
    run_dir = tmp_path_factory.mktemp("ref") / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = [("0" if a == "2" and CFG[i - 1] == "-j" else a) for i, a in enumerate(CFG)]
        r = invoke("finetune", "test_resnet", data, "-o", run_dir, *cfg)
    finally:
        torch.set_num_threads(threads)
    assert r.code == 0, r.stderr
    return final_state(run_dir)


# --------------------------------------------------------------------------------------------------
# The lock
# --------------------------------------------------------------------------------------------------


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (Linux)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        if int(text[text.rfind(")") + 2 :].split()[1]) == pid:
            found.append(int(stat.parent.name))
    return found


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc (Linux)")
@pytest.mark.parametrize(
    "epoch, into_next",
    [(1, 0.0), (1, 0.4), (2, 0.0)],
    ids=["epoch-1-saved", "epoch-1-saved-then-40pc", "epoch-2-saved"],
)
def test_sigkill_with_dataloader_workers_then_immediate_resume(data, reference, tmp_path, epoch, into_next):
    run_dir = tmp_path / "run"
    proc = popen("finetune", "test_resnet", data, "-o", run_dir, *CFG)
    wait_saved(proc, run_dir, epoch)
    if into_next:
        first = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[0])
        time.sleep(into_next * first["train"]["time_s"])
    # Its DataLoader workers notice a dead parent within seconds; stopped, they outlive it for sure, as
    # they do when --resume follows at once on a fast machine.
    workers = children(proc.pid)
    assert workers, "no DataLoader worker processes"
    for pid in workers:
        os.kill(pid, signal.SIGSTOP)
    try:
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=60) == -signal.SIGKILL
        proc.stdout.close()  # not read to the end: the stopped workers hold its pipes open
        proc.stderr.close()
        resumed = cli("finetune", "test_resnet", data, "-o", run_dir, *CFG, "--resume")
    finally:
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads(resumed.stdout)["resumed_from"] == epoch
    assert_same_run(final_state(run_dir), reference)
    assert temporaries(run_dir) == [] and not (run_dir / ".lock").exists()


def test_live_run_with_workers_keeps_a_second_run_out(data, reference, tmp_path):
    run_dir = tmp_path / "run"
    proc = popen("finetune", "test_resnet", data, "-o", run_dir, *CFG)
    try:
        wait_saved(proc, run_dir, 1)
        proc.send_signal(signal.SIGSTOP)  # alive, in the middle of its run
        files = tree_digest(run_dir)
        second = cli("finetune", "test_resnet", data, "-o", run_dir, *CFG, "--resume")
        assert second.returncode == EXIT_OUTPUT, second.stderr[-2000:]
        line = error_line(second.stderr)
        assert f"Run folder {run_dir} is in use by another finetune run (pid {proc.pid})" in line
        assert tree_digest(run_dir) == files  # untouched
    finally:
        proc.send_signal(signal.SIGKILL)  # killed while stopped, workers and all
        proc.communicate()
    resumed = cli("finetune", "test_resnet", data, "-o", run_dir, *CFG, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_run(final_state(run_dir), reference)


# Takes the lock, then leaves a process behind that holds its flock beyond Python's reach (exec'd, the
# descriptor passed on): what a descendant forked outside Python, or an older softcamify's worker, does.
HOLDER = r"""
import subprocess, sys, time
from softcamify.training import RunLock
lock = RunLock(sys.argv[1]).acquire()
left = subprocess.Popen(["sleep", "120"], pass_fds=[lock.fd])
print(left.pid, flush=True)
time.sleep(120)
"""


def _state(pid: int) -> str:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rfind(")") + 2 :].split()[0]


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc (Linux)")
@pytest.mark.parametrize("reaped", [True, False], ids=["dead", "zombie"])
def test_stale_lock_is_taken_over_while_a_leftover_process_holds_it(tmp_path, reaped):
    import fcntl

    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path)], stdout=subprocess.PIPE, text=True, env={**os.environ, **ENV}
    )
    leftover = int(holder.stdout.readline())
    try:
        with pytest.raises(OutputError, match=f"in use by another finetune run \\(pid {holder.pid}\\)"):
            RunLock(tmp_path).acquire()
        holder.kill()
        if reaped:
            holder.wait()
        else:  # killed, not yet reaped by its parent: a zombie still has its pid
            deadline = time.monotonic() + 30
            while _state(holder.pid) != "Z":
                assert time.monotonic() < deadline
                time.sleep(0.01)
        fd = os.open(tmp_path / ".lock", os.O_RDONLY)
        try:  # the leftover process still holds the flock of the dead run's lock file
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
        lock = RunLock(tmp_path).acquire()
        try:
            assert lock.took_over_from is not None and lock.took_over_from.pid == holder.pid
            assert Owner.parse((tmp_path / ".lock").read_text()).pid == os.getpid()
            with pytest.raises(OutputError, match=f"\\(pid {os.getpid()}\\)"):  # a live owner keeps it
                RunLock(tmp_path).acquire()
        finally:
            lock.release()
        assert not (tmp_path / ".lock").exists()
    finally:
        holder.kill()
        holder.wait()
        os.kill(leftover, signal.SIGKILL)


def test_lock_owner_liveness():
    me = Owner.me()
    assert me.pid == os.getpid() and not me.is_gone()
    assert Owner.parse(me.dumps()) == me
    assert Owner.parse("4242\n") == Owner(4242)  # the pid alone, as older versions wrote it
    assert Owner.parse("") == Owner(None) and not Owner(None).is_gone()  # unknown: kept
    assert not Owner(os.getpid(), None, socket.gethostname() + "-elsewhere").is_gone()  # another host: kept
    done = subprocess.Popen(["true"])
    done.wait()
    assert Owner(done.pid, None, socket.gethostname()).is_gone()
    if me.start is not None:  # Linux: a pid now used by another process is not the owner
        assert Owner(os.getpid(), str(int(me.start) + 1), socket.gethostname()).is_gone()


def test_forked_children_do_not_hold_the_lock(tmp_path):
    import fcntl

    lock = RunLock(tmp_path).acquire()
    try:
        pid = os.fork()
        if pid == 0:  # the child (a DataLoader worker is forked like this): its copy is closed at once
            os._exit(0 if lock.fd is None else 1)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        fd = os.open(tmp_path / ".lock", os.O_RDONLY)
        try:
            with pytest.raises(BlockingIOError):  # the parent still holds it
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
    finally:
        lock.release()


# --------------------------------------------------------------------------------------------------
# The run folder inside DATA_DIR, and --resume on other data
# --------------------------------------------------------------------------------------------------


def test_run_folder_inside_data_dir_resumes_with_the_printed_command(tmp_path):
    data = make_data(tmp_path / "data")
    run_dir = data / "run"
    first = popen("finetune", "test_resnet", data, "-o", run_dir, *CFG)
    wait_saved(first, run_dir, 1)
    first.send_signal(signal.SIGINT)
    _, err = first.communicate(timeout=300)
    assert first.returncode == EXIT_INTERRUPTED, err[-2000:]
    command = next(ln.strip() for ln in err.splitlines() if ln.strip().startswith("softcamify finetune"))
    argv = shlex.split(command)
    assert argv[-1] == "--resume"
    resumed = cli(*argv[1:])  # the run folder now holds last.pt & co: not a class
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary = json.loads(resumed.stdout)
    assert summary["epochs_completed"] == 3 and summary["data"]["class_names"] == ["healthy", "lesion"]
    again = cli("finetune", "test_resnet", data, "-o", run_dir, *CFG, "--resume", "--epochs", "4")
    assert again.returncode == 0, again.stderr[-3000:]


def test_resume_with_another_data_dir_is_refused_naming_both(data, tmp_path):
    run_dir = tmp_path / "run"
    one = [a if a != "3" else "1" for a in CFG]
    assert cli("finetune", "test_resnet", data, "-o", run_dir, *one).returncode == 0
    other = make_data(tmp_path / "other")
    files = tree_digest(run_dir)
    r = cli("finetune", "test_resnet", other, "-o", run_dir, *one, "--resume", "--epochs", "2")
    assert r.returncode == EXIT_USAGE, r.stderr[-2000:]
    line = error_line(r.stderr)
    assert f"DATA_DIR {other} is not the folder the run in {run_dir} was started on ({data})" in line
    assert tree_digest(run_dir) == files and not (run_dir / ".lock").exists()
    # the same folder by another path (relative, through a link) is the same data
    os.symlink(data, tmp_path / "link")
    r = subprocess.run(
        [*PY, "finetune", "test_resnet", "link", "-o", "run", *one, "--resume", "--epochs", "2"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**os.environ, **ENV},
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]


# --------------------------------------------------------------------------------------------------
# An image that breaks during training; torchrun's report
# --------------------------------------------------------------------------------------------------


def test_image_corrupted_during_training_is_one_sentence_and_resumable(tmp_path):
    data = make_data(tmp_path / "data")
    run_dir = tmp_path / "run"
    bad = data / "lesion" / "003.png"
    good = bad.read_bytes()
    proc = popen("finetune", "test_resnet", data, "-o", run_dir, *CFG)
    wait_saved(proc, run_dir, 1)
    proc.send_signal(signal.SIGSTOP)
    bad.write_bytes(good[:100])  # checked at the start; it breaks later (a flaky share, a sync tool)
    proc.send_signal(signal.SIGCONT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == EXIT_INPUT, err[-3000:]
    line = error_line(err)  # read in a DataLoader worker: still one sentence
    assert f"Image {bad} is truncated or corrupt" in line and "continue the run with --resume" in line
    assert "DataLoader worker" not in err
    assert temporaries(run_dir) == [] and not (run_dir / ".lock").exists()
    saved = torch.load(run_dir / "last.pt", weights_only=True)["epoch"]
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == saved >= 1  # nothing half-written
    bad.write_bytes(good)
    resumed = cli("finetune", "test_resnet", data, "-o", run_dir, *CFG, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads(resumed.stdout)["epochs_completed"] == 3


def test_worker_error_survives_torch_reraise():
    from torch._utils import ExceptionWrapper

    original = UsageError("batch_size 0 is too small.", param="batch_size")
    try:
        raise WorkerError.carrying(original) from original
    except WorkerError:
        wrapped = ExceptionWrapper(where="in DataLoader worker process 0")  # what torch ships: text only
    with pytest.raises(WorkerError) as caught:
        wrapped.reraise()
    e = caught.value
    assert str(e) == e.message == "batch_size 0 is too small." and e.params == ("batch_size",)
    assert e.exit_code == EXIT_USAGE and "Traceback" in str(e.__cause__)  # kept for --debug
    back = e.original()
    assert type(back) is UsageError and str(back) == str(original) and back.params == ("batch_size",)


def test_worker_errors_in_a_real_dataloader():
    class Broken(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            raise InputError(f"Image /data/{i}.png is truncated or corrupt (x); re-export it or remove it.")

    loader = torch.utils.data.DataLoader(CarryErrors(Broken()), batch_size=2, num_workers=1)
    with pytest.raises(WorkerError) as caught:
        next(iter(loader))
    assert str(caught.value) == "Image /data/0.png is truncated or corrupt (x); re-export it or remove it."
    assert type(caught.value.original()) is InputError and caught.value.exit_code == EXIT_INPUT
    with pytest.raises(InputError) as direct:  # no worker: raised as it is
        CarryErrors(Broken())[1]
    assert type(direct.value) is InputError


def test_torchrun_class_mismatch_prints_one_line(tmp_path, resnet_weights):
    data = make_data(tmp_path / "data", n=4)
    run_dir = tmp_path / "run"
    r = cli(
        "finetune",
        "test_resnet",
        data,
        "-o",
        run_dir,
        "-w",
        resnet_weights,
        "--input-size",
        "64",
        "-b",
        "4",
        "-j",
        "0",
        "--device",
        "cpu",
        "--epochs",
        "1",
        "--nproc",
        "2",
    )
    assert r.returncode == EXIT_INPUT, r.stderr[-3000:]
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr  # not torchrun's ChildFailedError report
    line = error_line(r.stderr)
    assert "The model has 5 classes but the data has 2 (healthy, lesion)" in line and "--reset-head" in line
    assert not run_dir.exists() or not any(run_dir.iterdir())


# --------------------------------------------------------------------------------------------------
# A class that would vanish
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["finetune", "evaluate"])
@pytest.mark.parametrize("what", ["broken-link", "file"])
def test_class_folder_that_is_a_broken_link_or_a_file_is_named(tmp_path, command, what):
    data = make_data(tmp_path / "data", n=4)
    (data / ".DS_Store").write_bytes(b"\0")  # ignored, as ever
    third = data / "drusen"
    if what == "broken-link":
        os.symlink(tmp_path / "mnt" / "share" / "drusen", third)  # an unmounted share
        expected = f"{third} is a broken link (to {tmp_path / 'mnt' / 'share' / 'drusen'})"
    else:
        third.write_text("a class folder that became a file\n")
        expected = f"{third} is a file among the class folders of {data}"
    out = tmp_path / "out"
    inputs = tree_digest(data)
    if command == "finetune":
        r = cli(
            "finetune",
            "test_resnet",
            data,
            "-o",
            out,
            "--num-classes",
            "3",
            "--input-size",
            "64",
            "-j",
            "0",
            "--device",
            "cpu",
        )
    else:
        r = cli(
            "evaluate", "test_resnet", data, "--num-classes", "3", "--input-size", "64", "--device", "cpu", "-o", out
        )
    assert r.returncode == EXIT_INPUT, r.stderr[-3000:]
    line = error_line(r.stderr)
    assert expected in line
    assert not out.exists() and tree_digest(data) == inputs


def test_torchrun_wrapper_reports_what_rank_0_did_not(tmp_path, monkeypatch):
    from softcamify import _torchrun
    from softcamify.cli.finetune import EXIT_FILE_ENV

    assert _torchrun.EXIT_FILE_ENV == EXIT_FILE_ENV  # where rank 0 leaves its exit code
    exit_file = tmp_path / "exit.txt"
    monkeypatch.setenv(EXIT_FILE_ENV, str(exit_file))
    assert not _torchrun._reported()  # rank 0 never got there (killed, or another rank failed first)
    exit_file.write_text("0")
    assert not _torchrun._reported()
    exit_file.write_text("3")
    assert _torchrun._reported()  # it printed its error line: torchrun stays quiet
    assert _torchrun._how(-signal.SIGKILL) == "was killed by SIGKILL"
    assert _torchrun._how(3) == "failed with exit code 3"
