"""The run folder's lock: one finetune run per folder, and a run killed with SIGKILL never blocks its resume.

How it works (POSIX; on Windows there is no lock):

* **The lock** is an exclusive ``flock`` on ``RUN_DIR/.lock``. The file records who took it: pid, the
  process's start time (Linux: ``/proc/<pid>/stat``, so a reused pid is not mistaken for the owner) and the
  host name. A clean end of the run removes the file.
* **Children do not hold it.** A ``flock`` belongs to the open file, not the process, and a forked child
  (DataLoader workers use ``fork`` on Linux) shares that open file, so it would keep the folder locked
  after its parent died, until it noticed and exited (seconds later): an immediate ``--resume`` after
  SIGKILL was refused, naming the dead pid. ``O_CLOEXEC`` does not help (a worker is forked, not exec'd),
  and neither would an OFD lock (also per open file). So every process forked from Python closes its copy
  of the descriptor at once (``os.register_at_fork``); the lock lives exactly as long as the process that
  took it.
* **A stale lock is taken over.** Should a descendant still hold the ``flock`` (a process forked outside
  Python, or a run of an older softcamify), the recorded owner decides: when it no longer runs on this
  host (no such pid, a zombie, or another process under that pid), the lock is stale; its file is removed
  and a new one is locked, and :attr:`RunLock.took_over_from` names the dead pid. A live owner, or one on
  another host (a shared folder, where its liveness cannot be known), keeps the folder: the second run is
  refused with exit 6. Acquiring (including a take-over) happens under a brief ``flock`` on the run folder
  itself, so two runs starting at once cannot both take over the same stale lock.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import time
import weakref
from dataclasses import dataclass
from pathlib import Path

from ..errors import OutputError
from .config import LOCK_NAME

# How long acquiring waits for another process that is acquiring the same folder right now.
GUARD_WAIT_S = 10.0

_held: weakref.WeakSet[RunLock] = weakref.WeakSet()


def _close_in_child() -> None:
    """After ``fork``, in the child: drop this process's copies of every held lock (the parent keeps them)."""
    for lock in list(_held):
        if lock.fd is not None:
            with contextlib.suppress(OSError):
                os.close(lock.fd)
            lock.fd = None
    _held.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_in_child)


def _stat_fields(pid: int) -> list[str]:
    """The fields of ``/proc/<pid>/stat`` after "pid (comm) ": state, ppid, … (Linux); [] where unreadable."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read().decode("ascii", "replace")
    except OSError:
        return []
    return stat[stat.rfind(")") + 2 :].split()


def _start_time(pid: int) -> str | None:
    """The start time of process ``pid`` (clock ticks since boot; Linux), or None where unknown."""
    fields = _stat_fields(pid)  # the 20th is starttime
    return fields[19] if len(fields) > 19 else None


def _process_state(pid: int) -> str | None:
    """The state letter of process ``pid`` (Linux: R, S, Z, …), or None where unknown."""
    rest = _stat_fields(pid)
    return rest[0] if rest else None


@dataclass
class Owner:
    """Who holds a lock, as its file says."""

    pid: int | None
    start: str | None = None
    host: str | None = None

    @classmethod
    def me(cls) -> Owner:
        return cls(os.getpid(), _start_time(os.getpid()), socket.gethostname())

    @classmethod
    def parse(cls, text: str) -> Owner:
        text = text.strip()
        try:
            d = json.loads(text)
            if isinstance(d, dict):
                pid = d.get("pid")
                return cls(int(pid) if isinstance(pid, int) else None, d.get("start"), d.get("host"))
        except ValueError:
            pass
        first = text.split()[0] if text.split() else ""  # an older softcamify wrote the pid alone
        return cls(int(first) if first.isdigit() else None)

    def dumps(self) -> str:
        return json.dumps({"pid": self.pid, "start": self.start, "host": self.host}) + "\n"

    def is_gone(self) -> bool:
        """True when the owner certainly no longer runs: on this host, and its pid is free, a zombie, or
        another process's. Unknown owners (no pid, another host) count as running."""
        if self.pid is None or (self.host is not None and self.host != socket.gethostname()):
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except OSError:  # exists, owned by another user
            pass
        if _process_state(self.pid) in ("Z", "X"):  # killed, not yet reaped by its parent
            return True
        now = _start_time(self.pid)
        return self.start is not None and now is not None and now != self.start

    def describe(self) -> str:
        pid = "?" if self.pid is None else str(self.pid)
        if self.host is not None and self.host != socket.gethostname():
            return f"pid {pid} on {self.host}"
        return f"pid {pid}"


class RunLock:
    """An exclusive lock on a run folder (see the module docstring): ``RunLock(run_dir).acquire()``, then
    :meth:`release`. ``took_over_from``: the owner of a stale lock this one replaced, else None."""

    def __init__(self, run_dir: str | os.PathLike):
        self.path = Path(run_dir) / LOCK_NAME
        self.fd: int | None = None
        self.took_over_from: Owner | None = None

    def acquire(self) -> RunLock:
        try:
            import fcntl
        except ImportError:  # no flock (Windows): no protection against concurrent runs
            return self
        with self._guard(fcntl):
            fd = self._lock_file(fcntl)
            try:
                os.ftruncate(fd, 0)
                os.write(fd, Owner.me().dumps().encode())
            except OSError as e:  # a full disk: say so (exit 6), and leave no lock file behind
                self.fd = fd
                self.release()
                why = "the disk is full" if e.errno == errno.ENOSPC else (e.strerror or str(e))
                raise OutputError(f"Cannot write the lock file {self.path}: {why}.") from e
        self.fd = fd
        _held.add(self)
        return self

    def _lock_file(self, fcntl) -> int:
        """Open and ``flock`` the current lock file, taking over a stale one; returns the descriptor."""
        for _ in range(100):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
            except OSError as e:
                raise OutputError(f"Cannot create the lock file {self.path}: {e.strerror or e}.") from e
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                try:
                    owner = Owner.parse(os.read(fd, 4096).decode("utf-8", "replace"))
                    if not owner.is_gone():
                        raise OutputError(
                            f"Run folder {self.path.parent} is in use by another finetune run "
                            f"({owner.describe()}); wait for it to finish or choose another run_dir.",
                            param="run_dir",
                        ) from None
                    # Stale: its owner is dead and only processes it left behind hold the flock. They never
                    # write to the folder; the file goes (only if it is still the one we read) and a new one
                    # is locked.
                    self._remove_if_same(fd)
                    self.took_over_from = owner
                finally:
                    os.close(fd)
                continue
            try:  # the file we locked may have been removed by its previous owner: lock the current one
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                return fd
            os.close(fd)
        raise OutputError(f"Cannot lock {self.path}: it keeps being replaced by another process.")

    def _remove_if_same(self, fd: int) -> None:
        try:
            if os.fstat(fd).st_ino == os.stat(self.path).st_ino:
                os.unlink(self.path)
        except FileNotFoundError:
            pass
        except OSError as e:
            raise OutputError(f"Cannot remove the stale lock file {self.path}: {e.strerror or e}.") from e

    @contextlib.contextmanager
    def _guard(self, fcntl):
        """A brief exclusive ``flock`` on the run folder while the lock is acquired (best effort: file
        systems without ``flock`` on folders go without)."""
        try:
            dfd = os.open(self.path.parent, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except OSError:
            yield
            return
        try:
            deadline = time.monotonic() + GUARD_WAIT_S
            while True:
                try:
                    fcntl.flock(dfd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise OutputError(
                            f"Run folder {self.path.parent} is being locked by another process; try again."
                        ) from None
                    time.sleep(0.01)
                except OSError:  # no flock on folders here
                    break
            yield
        finally:
            os.close(dfd)  # releases the guard

    def release(self) -> None:
        if self.fd is None:
            return
        _held.discard(self)
        with contextlib.suppress(OSError):
            if os.fstat(self.fd).st_ino == os.stat(self.path).st_ino:  # ours, not a successor's
                self.path.unlink()
        with contextlib.suppress(OSError):
            os.close(self.fd)
        self.fd = None
