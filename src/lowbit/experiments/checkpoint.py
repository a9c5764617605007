"""Training checkpoints: atomic writes (temp file, fsync, ``os.replace``); validated loading for exact resume.

A checkpoint is one ``torch.save`` file holding a plain dict::

    {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
     "identity": {...},          # settings a resumed run must share (task, recipe, seed, sizes, steps, ...)
     "step": int,                # optimizer steps completed
     "model", "optimizer", "scheduler": state dicts,
     "rng": {"torch": ByteTensor, "data": ByteTensor, "quant": ByteTensor | None},
     "sampler": dict,            # the data position (epoch, index, permutation, ...)
     "history": dict,            # metrics logged so far, so metrics.json stays complete after a resume
     "seconds": float}           # training wall time spent so far

Loading uses ``torch.load(weights_only=True)``: only tensors and plain Python containers are accepted.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import torch

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "lowbit-train-checkpoint"
CHECKPOINT_VERSION = 1
CHECKPOINT_NAME = "checkpoint.pt"
REQUIRED_KEYS = (
    "identity", "step", "model", "optimizer", "scheduler", "rng", "sampler", "history", "seconds",
)  # fmt: skip


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, unreadable, or belongs to a different run."""


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
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
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


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save(obj)`` to ``path`` atomically (see ``atomic_write``)."""
    atomic_write(path, lambda f: torch.save(obj, f))


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write a training checkpoint atomically; ``state`` must hold every key in ``REQUIRED_KEYS``."""
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise ValueError(f"checkpoint state lacks {missing}; expected keys {list(REQUIRED_KEYS)}")
    payload = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **state}
    atomic_torch_save(payload, path)
    logger.debug("checkpoint at step %d written to %s", state["step"], path)


def load_checkpoint(path: str | Path, identity: dict[str, Any]) -> dict[str, Any]:
    """Read a checkpoint and check it belongs to a run with the same ``identity``, else CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"--resume: no checkpoint at {path}; run without --resume first (or pass the --out folder of the "
            "run to continue)"
        )
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types (pickle, zip, EOF, RuntimeError) for a damaged file
        raise CheckpointError(
            f"checkpoint {path} is corrupt or not a lowbit checkpoint ({type(err).__name__}: {err}); "
            "delete it and start again without --resume"
        ) from err
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a lowbit training checkpoint (format tag missing)")
    if payload.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint version {payload.get('version')}, this lowbit reads version "
            f"{CHECKPOINT_VERSION}; start again without --resume"
        )
    missing = [k for k in REQUIRED_KEYS if k not in payload]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {missing}; delete it and run again without --resume")
    saved = payload["identity"]
    diffs = {k: (saved.get(k), v) for k, v in identity.items() if saved.get(k) != v}
    diffs.update({k: (v, None) for k, v in saved.items() if k not in identity})
    if diffs:
        detail = "; ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in sorted(diffs.items()))
        raise CheckpointError(
            f"checkpoint {path} was written by a different run ({detail}); resume with the same settings, "
            "or use another --out folder"
        )
    return payload
