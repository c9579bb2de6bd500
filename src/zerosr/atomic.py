"""Crash-safe file writes: a file is either its old complete version or its new complete version.

Everything is written to a temporary file in the destination directory (so `os.replace` is a
same-filesystem rename, which POSIX makes atomic), flushed and fsync'ed, renamed over the
destination, and then the directory itself is fsync'ed so the rename survives a power cut.
A failed write (typically ENOSPC, disk full) removes the temporary file and leaves the existing
destination untouched.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable

from zerosr.errors import UserError

# What a failed write tells the user to do, unless the caller knows better (`advice`).
CHECKPOINT_ADVICE = "(free disk space or set hydra.run.dir elsewhere); the previous checkpoint is intact"


def atomic_save(obj_writer: Callable[[Path], None], path: str | os.PathLike, advice: str = CHECKPOINT_ADVICE) -> None:
    """Call `obj_writer(tmp_path)` to write the content, then move it into place at `path`.

    `obj_writer` must write the complete content to the path it is given (it may open it itself,
    e.g. `torch.save`, `Figure.savefig`). OSError from it or from the rename becomes a one-line
    `UserError` ending in `advice`; any other exception propagates unchanged after the temporary
    file is removed.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # The leading dot keeps half-written files out of globs such as `state_*.pt`.
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
    except OSError as err:
        raise _write_error(path, err, advice) from err
    tmp = Path(tmp_name)
    try:
        obj_writer(tmp)
        _fsync_file(tmp)
        os.replace(tmp, path)
    except OSError as err:
        _remove_quietly(tmp)
        raise _write_error(path, err, advice) from err
    except BaseException:
        _remove_quietly(tmp)
        raise
    _fsync_directory(path.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes, advice: str = CHECKPOINT_ADVICE) -> None:
    """Atomically replace `path` with `data`."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            f.write(data)

    atomic_save(write, path, advice)


def _write_error(path: Path, err: OSError, advice: str) -> UserError:
    reason = err.strerror or str(err)
    return UserError(f"could not write {path}: {reason} {advice}")


def _fsync_file(path: Path) -> None:
    # Writers such as torch.save close their own handle, so reopen to flush the data to disk.
    with open(path, "rb+") as f:
        f.flush()
        os.fsync(f.fileno())


def _fsync_directory(directory: Path) -> None:
    # Persists the rename itself. Directories cannot be opened on Windows; there the rename is
    # already durable enough, so skip it.
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_quietly(path: Path) -> None:
    # Best-effort cleanup while another error is being raised: a leftover hidden .tmp file must
    # not mask the original error.
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass
