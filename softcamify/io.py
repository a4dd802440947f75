"""Atomic, no-clobber output files.

Every file softcamify writes goes through :func:`atomic_output`: the content is written to a
hidden temporary file in the destination folder, flushed to disk, and renamed over the destination
only when it is complete. A failed or interrupted run leaves the previous file (if any) untouched
and no temporary file behind (except after SIGKILL, where a ``.<name>.*.tmp`` may remain and is
ignored by every reader).
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .errors import OutputError


def check_output_path(path: str | os.PathLike, force: bool = False) -> Path:
    """Return ``path`` as a Path after checking it can be written (before any long work starts)."""
    out = Path(path)
    if out.exists() and out.is_dir():
        raise OutputError(f"Output {out} is a folder; give a file name instead.")
    if out.exists() and not force:
        raise OutputError(f"Output {out} already exists; pass --force to overwrite it.")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.exists():
        raise OutputError(f"Output folder {parent} does not exist; create it first.")
    if not parent.is_dir():
        raise OutputError(f"Output folder {parent} is not a folder.")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"Output folder {parent} is not writable; choose another -o path.")
    return out


def check_output_dir(path: str | os.PathLike, force: bool = False, allow_existing: bool = False) -> Path:
    """Check that ``path`` can be used as an output folder (created later with :func:`make_output_dir`)."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise OutputError(f"Output {out} is a file; give a folder name instead.")
    if out.exists() and any(out.iterdir()) and not (force or allow_existing):
        raise OutputError(f"Output folder {out} is not empty; pass --force to write into it.")
    parent = out if out.exists() else out.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
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


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, force: bool = False, mode: str = "wb") -> Iterator[Path]:
    """Yield a temporary path to write; on success it is renamed to ``path``.

    Usage::

        with atomic_output("model.safetensors", force=True) as tmp:
            save_file(tensors, tmp)
    """
    out = check_output_path(path, force=force)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent or ".")
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
            raise OutputError(f"Output {out} already exists; pass --force to overwrite it.")
        os.replace(tmp, out)
    except OSError as e:
        raise OutputError(f"Cannot write {out}: {_describe_os_error(e)}.") from e
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def write_bytes_atomic(path: str | os.PathLike, data: bytes, force: bool = False) -> Path:
    with atomic_output(path, force=force) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text_atomic(path: str | os.PathLike, text: str, force: bool = False) -> Path:
    return write_bytes_atomic(path, text.encode("utf-8"), force=force)
