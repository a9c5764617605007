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

The file is the ``torch.save`` bytes followed by an 80-byte trailer ``\nlowbit-sha256:<64 hex>\n``, the
SHA-256 of those bytes: loading verifies it before unpickling, so a damaged checkpoint is refused instead of
resumed (version 1 files, written before the digest, still load, with a warning). Loading uses
``torch.load(weights_only=True)``: only tensors and plain Python containers are accepted. A save killed
mid-write leaves ``.NAME.<pid>.<hex>.tmp``; ``remove_stale_temps`` deletes those whose process is gone.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
from pathlib import Path
from typing import Any, BinaryIO

import torch

from lowbit.files import CheckpointError, atomic_write

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "lowbit-train-checkpoint"
CHECKPOINT_VERSION = 2
#: Versions this lowbit reads; version 1 has no digest trailer.
READABLE_VERSIONS = (1, 2)
DIGEST_TAG = b"\nlowbit-sha256:"
DIGEST_TRAILER_BYTES = len(DIGEST_TAG) + 64 + 1
_TEMP_RE = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.(?P<hex>[0-9a-f]{8})\.tmp$")
CHECKPOINT_NAME = "checkpoint.pt"
REQUIRED_KEYS = (
    "identity", "step", "model", "optimizer", "scheduler", "rng", "sampler", "history", "seconds",
)  # fmt: skip




def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save(obj)`` to ``path`` atomically (see ``atomic_write``)."""
    atomic_write(path, lambda f: torch.save(obj, f))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale_temps(folder: str | Path) -> list[Path]:
    """Delete the ``atomic_write`` temp files in ``folder`` left by processes that no longer run (a save
    killed mid-write); returns what was removed. Temp files of live processes are left alone."""
    folder = Path(folder)
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    for entry in folder.iterdir():
        match = _TEMP_RE.match(entry.name)
        if match is None or not entry.is_file() or _pid_alive(int(match["pid"])):
            continue
        with contextlib.suppress(FileNotFoundError):
            entry.unlink()
            removed.append(entry)
            logger.info("removed %s, left by an interrupted save (process %s is gone)", entry, match["pid"])
    return removed


class _HashingWriter:
    """A binary file wrapper feeding everything written through SHA-256 (``torch.save`` streams into it)."""

    def __init__(self, f: BinaryIO) -> None:
        self.f, self.sha = f, hashlib.sha256()
        self.error: OSError | None = None  # torch turns a failed write into "unexpected pos": keep the cause

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        try:
            return self.f.write(data)
        except OSError as err:
            self.error = err
            raise

    def flush(self) -> None:
        self.f.flush()


def _trailer(hexdigest: str) -> bytes:
    return DIGEST_TAG + hexdigest.encode() + b"\n"


def atomic_torch_save_verified(obj: Any, path: str | Path) -> None:
    """``torch.save(obj)`` followed by the SHA-256 trailer of its bytes, written atomically and streamed (no
    second copy in memory); ``load_verified`` checks it."""

    def write(f: BinaryIO) -> None:
        hashing = _HashingWriter(f)
        try:
            torch.save(obj, hashing)
        except Exception:
            if hashing.error is not None:
                raise hashing.error from None
            raise
        f.write(_trailer(hashing.sha.hexdigest()))

    atomic_write(path, write)


def foreign_file_kind(head: bytes, size: int) -> str | None:
    """What a file that is not a lowbit checkpoint is, from its first bytes and size (None: unrecognised)."""
    if len(head) >= 10 and head[8:9] == b"{":
        header = int.from_bytes(head[:8], "little")
        if 2 <= header <= size - 8:
            return "a safetensors file (e.g. a quantized model from lowbit ptq --save / save_quantized)"
    if head[:4] == b"\x7fELF":
        return "an executable"
    if head[:2] == b"\x1f\x8b":
        return "a gzip file"
    return None


def _load_error_detail(text: str) -> str:
    """One short clause from torch's load error: for a refused unpickle, what was refused (torch's advice to
    pass ``weights_only=False`` is dropped: lowbit never unpickles arbitrary objects)."""
    match = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\n\n|$)", text, re.S)
    if match:
        detail = match.group(1).strip().splitlines()[0].split(". ")[0]
        if detail.startswith("Unsupported global"):
            return f"it pickles Python objects, not only tensors: {detail[:140]}"
        return f"not a torch tensor file: {detail[:140]}"
    text = text.strip()
    return text.splitlines()[0][:160] if text else ""


def load_verified(path: str | Path, what: str = "checkpoint") -> tuple[Any, bool]:
    """``torch.load(weights_only=True)`` of ``path`` after checking its SHA-256 trailer when it has one:
    (the object, whether a trailer was present). CheckpointError, in one line, for a digest mismatch, a
    recognisable foreign file (e.g. safetensors) or anything torch cannot load (no pickle advice echoed)."""
    path = Path(path)
    try:
        f = open(path, "rb")  # noqa: SIM115 - one open file, hashed then loaded: a replace cannot interleave
    except OSError as err:
        raise CheckpointError(f"cannot read {what} {path}: {err.strerror or err}") from None
    with f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(16)
        kind = foreign_file_kind(head, size)
        if kind is not None:
            raise CheckpointError(f"{path} is {kind}, not a lowbit training {what}")
        verified = False
        if size > DIGEST_TRAILER_BYTES:
            f.seek(size - DIGEST_TRAILER_BYTES)
            tail = f.read(DIGEST_TRAILER_BYTES)
            if tail.startswith(DIGEST_TAG) and tail.endswith(b"\n"):
                sha, remaining = hashlib.sha256(), size - DIGEST_TRAILER_BYTES
                f.seek(0)
                while remaining:
                    chunk = f.read(min(remaining, 1 << 20))
                    if not chunk:
                        break
                    sha.update(chunk)
                    remaining -= len(chunk)
                if _trailer(sha.hexdigest()) != tail:
                    raise CheckpointError(
                        f"{what} {path} is damaged: its SHA-256 digest does not match its content (a disk or "
                        "copy error changed it); restore an intact copy, or start again without --resume"
                    )
                verified = True
        f.seek(0)
        try:  # the zip reader finds its directory before the trailer
            return torch.load(f, map_location="cpu", weights_only=True), verified
        except Exception as err:  # torch raises several types (pickle, zip, EOF, RuntimeError) for a bad file
            first = _load_error_detail(str(err))
            raise CheckpointError(
                f"{what} {path} is corrupt or not a lowbit {what} ({type(err).__name__}: {first}); "
                "pass the right file, or delete it and start again without --resume"
            ) from None


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write a training checkpoint atomically; ``state`` must hold every key in ``REQUIRED_KEYS``."""
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise ValueError(f"checkpoint state lacks {missing}; expected keys {list(REQUIRED_KEYS)}")
    payload = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **state}
    atomic_torch_save_verified(payload, path)
    logger.debug("checkpoint at step %d written to %s", state["step"], path)


def load_checkpoint(path: str | Path, identity: dict[str, Any]) -> dict[str, Any]:
    """Read a checkpoint and check it belongs to a run with the same ``identity``, else CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"--resume: no checkpoint at {path}; run without --resume first (or pass the --out folder of the "
            "run to continue)"
        )
    payload, verified = load_verified(path)
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a lowbit training checkpoint (format tag missing)")
    if payload.get("version") not in READABLE_VERSIONS:
        raise CheckpointError(
            f"{path} has checkpoint version {payload.get('version')}, this lowbit reads versions "
            f"{READABLE_VERSIONS}; start again without --resume"
        )
    if not verified:
        if payload["version"] >= 2:
            raise CheckpointError(
                f"checkpoint {path} lacks its SHA-256 digest trailer (cut short?); restore an intact copy, "
                "or start again without --resume"
            )
        logger.warning("checkpoint %s is version 1 (no integrity digest): resuming unverified", path)
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
