"""The CLI's guards: user errors, output paths checked before any work, the ``--out`` lock, Ctrl-C hints.

* :class:`UserError` — a problem with what the user typed or handed over; ``lowbit.cli`` prints it as one line
  ``lowbit COMMAND: error: ...`` and exits 2 (any other exception is a bug: traceback, exit 1).
* :func:`check_output_dir` / :func:`check_output_file` — every output path is checked (nothing created)
  before data is loaded or a step is trained, so a bad ``--out`` / ``--json`` costs nothing.
* :func:`locked_output` — an exclusive ``fcntl.flock`` on ``OUT/.lowbit.lock`` for the whole run, so two
  processes never write one folder; released when the run ends (or the process dies).
* :func:`check_fresh_run` — a folder that already holds a run is continued only with ``--resume`` and
  replaced only with ``--overwrite``.
* :func:`note_checkpoint` / :func:`interrupt_hint` — the last checkpoint written, for the Ctrl-C message.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

LOCK_NAME = ".lowbit.lock"
#: Files whose presence means a folder already holds a training run.
RUN_FILES = ("checkpoint.pt", "metrics.json")

_last_checkpoint: list[Path] = []


class UserError(ValueError):
    """A problem the user can fix (bad flag value, unusable path, wrong file): one line, exit code 2."""


def _first_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_output_dir(path: str | Path, flag: str = "--out", create: bool = False) -> Path:
    """Prove folder ``path`` writable (or creatable: its nearest existing parent writable), creating it only
    with ``create``; UserError naming ``flag`` otherwise."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{flag} {path} is an existing file, not a folder; pass a folder path")
    existing = _first_existing(path.absolute())
    if not existing.is_dir():
        raise UserError(f"{flag} {path}: {existing} is a file, so the folder cannot be created there")
    try:
        if create:
            path.mkdir(parents=True, exist_ok=True)
            existing = path
        probe = existing / f".lowbit-write-test.{os.getpid()}"
        with open(probe, "xb"):
            pass
        probe.unlink()
    except OSError as err:
        raise UserError(
            f"{flag} {path} is not a writable folder ({err.strerror or err}); pass a folder you can write to"
        ) from None
    return path


def check_output_file(path: str | Path, flag: str = "--json") -> Path:
    """Check that file ``path`` can be written (its folder created and writable, not an existing folder)."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{flag} {path} is a folder; pass a file path such as {path / 'result.json'}")
    parent = path.parent if str(path.parent) else Path(".")
    if parent.exists() and not parent.is_dir():
        raise UserError(f"{flag} {path}: {parent} is a file, not a folder; pass another path")
    try:
        check_output_dir(parent, flag)
    except UserError:
        raise UserError(
            f"{flag} {path} cannot be written (its folder {parent} is not writable or cannot be created); "
            "pass a path in a folder you can write to"
        ) from None
    if path.exists() and not os.access(path, os.W_OK) and not os.access(parent, os.W_OK):
        raise UserError(f"{flag} {path} is not writable; pass another path")
    return path


def check_fresh_run(folders: list[Path], resume: bool, overwrite: bool, flag: str = "--out") -> None:
    """Refuse to start over a folder that already holds a run unless ``--resume`` or ``--overwrite``."""
    if resume and overwrite:
        raise UserError("--resume continues the run in --out and --overwrite replaces it; pass only one")
    if resume or overwrite:
        return
    for folder in folders:
        found = [name for name in RUN_FILES if (Path(folder) / name).exists()]
        if found:
            raise UserError(
                f"{flag} {folder} already holds a run ({', '.join(found)}); pass --resume to continue it, "
                "--overwrite to start again and replace it, or another --out folder"
            )


def _lock_owner(path: Path) -> str:
    with contextlib.suppress(OSError, ValueError):
        pid = int(path.read_text().strip() or "x")
        return f" (pid {pid})"
    return ""


@contextlib.contextmanager
def locked_output(folder: str | Path, flag: str = "--out") -> Iterator[Path]:
    """Hold an exclusive lock on ``folder`` (created if needed) for the ``with`` block; UserError when another
    process holds it. The lock file stays (removing it would race with a process that just opened it)."""
    folder = check_output_dir(folder, flag, create=True)
    lock_path = folder / LOCK_NAME
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(
                f"{flag} {folder} is in use by another lowbit process{_lock_owner(lock_path)}; wait for it "
                "to finish or pass another --out folder"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        from lowbit.experiments.checkpoint import remove_stale_temps

        remove_stale_temps(folder)  # leftovers of a save killed mid-write (results.json, report.md, ...)
        try:
            yield folder
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def note_checkpoint(path: str | Path) -> None:
    """Remember the last training checkpoint written (for the Ctrl-C message)."""
    _last_checkpoint[:] = [Path(path)]


def forget_checkpoints() -> None:
    """Start a command with no checkpoint noted."""
    _last_checkpoint.clear()


def interrupt_hint() -> str:
    """What a Ctrl-C leaves to resume from, as one sentence."""
    if _last_checkpoint:
        path = _last_checkpoint[0]
        return f"the last checkpoint is {path}; run the same command with --resume to continue from it"
    return "this run wrote no checkpoint yet"
