"""Files lowbit writes, written atomically: a temp file in the same folder, fsync, then ``os.replace`` — a
crash or a full disk at any point leaves the old file or the new one, never a partial one, and no temp file.
One home for every writer (checkpoints, PTQ models, metrics, reports, plots, JSON)."""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

logger = logging.getLogger(__name__)


class CheckpointError(ValueError, RuntimeError):
    """A file lowbit wrote cannot be read back faithfully: missing, corrupt (digest), from another format
    version, run or architecture. One type for training checkpoints and quantized models; it is both a
    ``ValueError`` and a ``RuntimeError`` because the two loaders raised one each before they shared it."""


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None]) -> None:
    """Create ``path`` atomically: ``write`` fills a temp file in the same folder, fsync, then ``os.replace``.

    A crash at any point leaves either the old file or the new one, never a partial file; the temp file is
    removed when ``write`` (or anything after it) fails.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A unique name opened with "xb" (not mkstemp, which makes the file 0600): permissions follow the umask.
    tmp_name = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp_name, "xb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
    except BaseException as err:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        if isinstance(err, OSError) and err.filename is None and err.errno is not None:
            # a full disk or a size limit: say which file could not be written (the old one is intact)
            raise OSError(err.errno, err.strerror, str(path)) from err
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    """Flush the directory entry of a replaced file (POSIX); skipped where a folder cannot be opened."""
    try:
        dir_fd = os.open(folder, os.O_RDONLY)
    except OSError as err:
        logger.debug("cannot fsync directory %s: %s", folder, err)
        return
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically (see ``atomic_write``)."""
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see ``atomic_write``)."""
    atomic_write(path, lambda f: f.write(data))


def atomic_savefig(fig: object, path: str | Path, **kwargs: object) -> None:
    """``fig.savefig`` (matplotlib) to ``path`` atomically: a plot is never half-written."""
    fmt = Path(path).suffix.lstrip(".") or "png"
    atomic_write(path, lambda f: fig.savefig(f, format=fmt, **kwargs))
