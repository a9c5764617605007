"""Training checkpoints (issue 14): a damaged file is refused (SHA-256 trailer), leftovers of a killed save
are cleaned, a resume on edited data is refused, a foreign file is named for what it is."""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys

import pytest
import torch

from lowbit.experiments import checkpoint as ckpt
from lowbit.experiments.checkpoint import CHECKPOINT_NAME, CheckpointError
from lowbit.experiments.runner import prepare, train


def _run(tiny, tmp_path, text_file, **kw):
    config = tiny("gpt-shakespeare", tmp_path / "run", text_file, steps=3, **kw)
    train(config)
    return tmp_path / "run" / CHECKPOINT_NAME


def test_damaged_checkpoint_is_refused(tmp_path, text_file, tiny):
    path = _run(tiny, tmp_path, text_file)
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(b ^ 0x5A for b in data[middle : middle + 64])
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="damaged: its SHA-256 digest does not match"):
        prepare(tiny("gpt-shakespeare", tmp_path / "run", text_file, steps=3, resume=True))


def test_truncated_checkpoint_is_refused(tmp_path, text_file, tiny):
    path = _run(tiny, tmp_path, text_file)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="corrupt|damaged|digest"):
        prepare(tiny("gpt-shakespeare", tmp_path / "run", text_file, steps=3, resume=True))


def test_version_1_checkpoint_without_digest_still_loads(tmp_path, caplog):
    path = tmp_path / CHECKPOINT_NAME
    state = {
        "identity": {"task": "t"}, "step": 1, "model": {}, "optimizer": {}, "scheduler": {}, "rng": {},
        "sampler": {}, "history": {}, "seconds": 0.0,
    }  # fmt: skip
    torch.save({"format": ckpt.CHECKPOINT_FORMAT, "version": 1, **state}, path)
    with caplog.at_level(logging.WARNING):
        assert ckpt.load_checkpoint(path, {"task": "t"})["step"] == 1
    assert "no integrity digest" in caplog.text


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_temp_files_are_removed_on_the_next_run(tmp_path, text_file, tiny):
    out = tmp_path / "run"
    out.mkdir()
    stale = out / f".{CHECKPOINT_NAME}.{_dead_pid()}.0badc0de.tmp"
    live = out / f".{CHECKPOINT_NAME}.{os.getpid()}.0123abcd.tmp"  # a save in progress: left alone
    other = out / "notes.tmp"
    for f in (stale, live, other):
        f.write_bytes(b"\x00" * 1000)
    train(tiny("gpt-shakespeare", out, text_file, steps=2))
    assert not stale.exists() and live.exists() and other.exists()
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp") and p not in (live, other)]


def test_temp_file_of_a_save_killed_mid_write_is_cleaned(tmp_path, text_file, tiny):
    out = tmp_path / "run"
    out.mkdir()
    code = (
        "import sys, time\n"
        "from lowbit.files import atomic_write\n"
        "def slow(f):\n"
        "    f.write(b'x' * 4096); f.flush(); print('writing', flush=True); time.sleep(60)\n"
        f"atomic_write({str(out / CHECKPOINT_NAME)!r}, slow)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    try:
        assert proc.stdout.readline().strip() == b"writing"
        left = [p for p in out.iterdir() if p.name.endswith(".tmp")]
        assert len(left) == 1 and str(proc.pid) in left[0].name
    finally:
        proc.kill()  # SIGKILL: no cleanup in the writer
        proc.wait()
        proc.stdout.close()
    assert left[0].exists() and not (out / CHECKPOINT_NAME).exists()  # nothing half-written was published
    train(tiny("gpt-shakespeare", out, text_file, steps=2))
    assert not left[0].exists()


def test_resume_after_editing_the_data_is_refused(tmp_path, text_file, tiny):
    _run(tiny, tmp_path, text_file)
    lines = text_file.read_text().splitlines()
    text_file.write_text("\n".join(reversed(lines)) + "\n")  # same characters, other text
    with pytest.raises(CheckpointError, match="the data changed since checkpoint"):
        prepare(tiny("gpt-shakespeare", tmp_path / "run", text_file, steps=3, resume=True))


def test_resume_after_the_data_gained_characters_names_the_vocabulary(tmp_path, text_file, tiny):
    path = _run(tiny, tmp_path, text_file)
    before = len(set(text_file.read_text()))
    text_file.write_text(text_file.read_text() + "XYZ\n")
    with pytest.raises(CheckpointError, match=f"vocab size {before} in the checkpoint, {before + 3} now"):
        prepare(tiny("gpt-shakespeare", tmp_path / "run", text_file, steps=3, resume=True))
    # a checkpoint written before the data digest existed: a clear error instead of torch's size mismatch
    payload, verified = ckpt.load_verified(path)
    assert verified
    del payload["data"]
    ckpt.save_checkpoint(path, {k: v for k, v in payload.items() if k not in ("format", "version")})
    with pytest.raises(CheckpointError, match="holds a model of other shapes.*vocabulary"):
        prepare(tiny("gpt-shakespeare", tmp_path / "run", text_file, steps=3, resume=True))


def test_ptq_file_passed_as_a_training_checkpoint(tmp_path, text_file, tiny):
    from safetensors.torch import save_file

    (tmp_path / "run").mkdir()
    save_file({"w": torch.zeros(4)}, str(tmp_path / "run" / CHECKPOINT_NAME), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="is a safetensors file") as err:
        prepare(tiny("gpt-shakespeare", tmp_path / "run", text_file, resume=True))
    assert "weights_only" not in str(err.value)


def test_pickled_object_is_refused_without_torch_advice(tmp_path, text_file, tiny):
    (tmp_path / "run").mkdir()
    torch.save(argparse.Namespace(a=1), tmp_path / "run" / CHECKPOINT_NAME)
    with pytest.raises(CheckpointError, match="corrupt or not a lowbit checkpoint") as err:
        prepare(tiny("gpt-shakespeare", tmp_path / "run", text_file, resume=True))
    assert "weights_only" not in str(err.value) and "\n" not in str(err.value)


def test_disk_full_during_a_save_loses_nothing(tmp_path, text_file):
    """A real write failure (RLIMIT_FSIZE: EFBIG, as a full disk gives ENOSPC) while a replacing run saves:
    one line naming the file, exit 2; the previous run's checkpoint is intact, still resumes; no temp file."""
    out = tmp_path / "run"
    argv = [
        "train", "--task", "gpt-shakespeare", "--data", str(text_file), "--batch-size", "2", "--seq-len", "8",
        "--layers", "1", "--dim", "32", "--heads", "2", "--eval-every", "2", "--max-eval-examples", "4",
        "--out", str(out), "--no-progress", "--threads", "1", "--steps", "2",
    ]  # fmt: skip
    from lowbit import cli

    assert cli.main(argv) == 0
    before = (out / CHECKPOINT_NAME).read_bytes()
    limit = len(before) // 2
    code = (
        "import resource, signal, sys\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))\n"
        "from lowbit.cli import main\n"
        f"sys.exit(main({[*argv, '--seed', '1', '--overwrite']!r}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and "File too large" in errors[0] and str(out / CHECKPOINT_NAME) in errors[0]
    assert "Traceback" not in proc.stderr
    assert (out / CHECKPOINT_NAME).read_bytes() == before
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    assert cli.main([*argv, "--resume"]) == 0
