"""Atomic, no-clobber output files.

Every file softcamify writes goes through :func:`atomic_output`: the content is written to a
hidden temporary file in the destination folder, flushed to disk, and renamed over the destination
only when it is complete. A failed or interrupted run leaves the previous file (if any) untouched
and no temporary file behind (except after SIGKILL, where a ``.<name>.<pid>@<host>.*.tmp`` may remain:
it is ignored by every reader and removed by the next write into that folder once its process is gone).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import socket
import tempfile
import zlib
from collections.abc import Iterator
from pathlib import Path

from .errors import OutputError

#: The one metadata key of every model file softcamify writes: the whole SoftCAMMeta as JSON, in the
#: ``__metadata__`` of ``.safetensors`` files and in the ``metadata_props`` of ``.onnx`` exports (plus an
#: ``export`` entry). Here, in the torch-free foundations, so both the checkpoint format and the ONNX
#: runtime read the same name.
META_KEY = "softcamify"


def check_output_path(path: str | os.PathLike, force: bool = False) -> Path:
    """Return ``path`` as a Path after checking it can be written (before any long work starts)."""
    out = Path(path)
    if out.exists() and out.is_dir():
        raise OutputError(f"Output {out} is a folder; give a file name instead.")
    if out.exists() and not force:
        raise OutputError(f"Output {out} already exists; pass force to overwrite it.", param="force")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.exists():
        raise OutputError(f"Output folder {parent} does not exist; create it first.")
    if not parent.is_dir():
        raise OutputError(f"Output folder {parent} is not a folder.")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"Output folder {parent} is not writable; choose another output path.")
    return out


def check_output_dir(path: str | os.PathLike, force: bool = False, allow_existing: bool = False) -> Path:
    """Check that ``path`` can be used as an output folder (created later with :func:`make_output_dir`)."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise OutputError(f"Output {out} is a file; give a folder name instead.")
    if out.exists() and any(out.iterdir()) and not (force or allow_existing):
        raise OutputError(f"Output folder {out} is not empty; pass force to write into it.", param="force")
    parent = out if out.exists() else out.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise OutputError(f"{parent} is a file, so {out} cannot be created; choose another path.")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"Output folder {parent} is not writable; choose another path.")
    return out


def make_output_dir(path: str | os.PathLike) -> Path:
    out = Path(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"Cannot create output folder {out}: {e.strerror or e}.") from e
    return out


def _describe_os_error(e: OSError) -> str:
    if e.errno == errno.ENOSPC:
        return "the disk is full"
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "permission denied"
    return e.strerror or str(e)


_HOST = f"{zlib.crc32(socket.gethostname().encode()):08x}"
_STALE_TMP = re.compile(r"^\..+\.(\d+)@([0-9a-f]{8})\.[^.]+\.tmp$")
_swept: set[str] = set()


def _process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # exists, but not ours
        return False
    return False


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Remove temporary files left in ``folder`` by writers on this host that were killed (SIGKILL).

    Only names made by :func:`atomic_output` (``.<name>.<pid>@<host>.<random>.tmp``) whose process no
    longer exists are removed; a live writer's temporary file is never touched.
    """
    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        m = _STALE_TMP.match(entry.name)
        if m is None or m.group(2) != _HOST or int(m.group(1)) == os.getpid() or not _process_gone(int(m.group(1))):
            continue
        with contextlib.suppress(OSError):
            os.unlink(entry.path)
            removed.append(Path(entry.path))
    return removed


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, force: bool = False, mode: str = "wb") -> Iterator[Path]:
    """Yield a temporary path to write; on success it is renamed to ``path``.

    Usage::

        with atomic_output("model.safetensors", force=True) as tmp:
            save_file(tensors, tmp)
    """
    out = check_output_path(path, force=force)
    folder = os.fspath(out.parent or ".")
    if folder not in _swept:  # once per folder and process: temporaries of killed earlier runs
        _swept.add(folder)
        remove_stale_temporaries(folder)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.{os.getpid()}@{_HOST}.", suffix=".tmp", dir=folder)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_name, 0o666 & ~umask)  # mkstemp creates 0600; outputs get the usual permissions
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        if out.exists() and not force:  # appeared while we were working
            raise OutputError(f"Output {out} already exists; pass force to overwrite it.", param="force")
        os.replace(tmp, out)
    except OSError as e:
        raise OutputError(f"Cannot write {out}: {_describe_os_error(e)}.") from e
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


@contextlib.contextmanager
def cleanup_on_failure(folder: str | os.PathLike) -> Iterator[Path]:
    """Remove what the block created under ``folder`` when it fails (an error, Ctrl-C, SIGTERM).

    For commands that write many files into an output folder (``explain``, ``evaluate -o``,
    ``datasets synth``): a failed run leaves the folder as it found it (files that existed before are
    kept, even when ``--force`` overwrote them) and removes the folder itself when the block created it.
    An ``OSError`` (full disk, permissions) becomes an :class:`OutputError` naming the folder.
    """
    root = Path(folder)
    top = root  # the highest folder this block may create
    while not top.parent.exists() and top.parent != top:
        top = top.parent
    before: set[str] | None = None
    if root.exists():
        before = {os.path.join(d, n) for d, dirs, files in os.walk(root) for n in dirs + files}
    try:
        yield root
    except BaseException as exc:
        if before is None:
            if top.exists() and not top.is_symlink():
                shutil.rmtree(top, ignore_errors=True)
        else:
            for d, dirs, files in os.walk(root, topdown=False):
                for n in files + dirs:
                    p = os.path.join(d, n)
                    if p not in before:
                        with contextlib.suppress(OSError):
                            if n in dirs and not os.path.islink(p):
                                os.rmdir(p)
                            else:
                                os.unlink(p)
        if isinstance(exc, OSError):
            raise OutputError(f"Cannot write into {root}: {_describe_os_error(exc)}.") from exc
        raise


def write_bytes_atomic(path: str | os.PathLike, data: bytes, force: bool = False) -> Path:
    with atomic_output(path, force=force) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text_atomic(path: str | os.PathLike, text: str, force: bool = False) -> Path:
    return write_bytes_atomic(path, text.encode("utf-8"), force=force)
