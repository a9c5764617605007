"""Checkpoint save, load and checks (lowbit.experiments.checkpoint; atomic writes: tests/test_files.py)."""

from __future__ import annotations

import pytest
import torch

from lowbit.experiments import checkpoint as ckpt


def _state(step: int = 3) -> dict:
    return {
        "identity": {"task": "gpt-shakespeare", "recipe": "fp32", "seed": 0}, "step": step,
        "model": {"w": torch.arange(4.0)}, "optimizer": {}, "scheduler": {},
        "rng": {"torch": torch.get_rng_state()}, "sampler": {}, "history": {"losses": [1.0, 0.5]},
        "seconds": 1.5,
    }  # fmt: skip


def test_round_trip(tmp_path):
    path = tmp_path / "run" / ckpt.CHECKPOINT_NAME
    ckpt.save_checkpoint(path, _state())
    loaded = ckpt.load_checkpoint(path, _state()["identity"])
    assert loaded["step"] == 3
    assert torch.equal(loaded["model"]["w"], torch.arange(4.0))
    assert loaded["history"] == {"losses": [1.0, 0.5]}


def test_failed_torch_save_leaves_no_file(tmp_path):
    path = tmp_path / ckpt.CHECKPOINT_NAME

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("cannot pickle (simulated)")

    with pytest.raises(RuntimeError, match="simulated"):
        ckpt.atomic_torch_save({"x": Unpicklable()}, path)
    assert list(tmp_path.iterdir()) == []


def test_missing_checkpoint_says_run_without_resume(tmp_path):
    with pytest.raises(ckpt.CheckpointError, match="no checkpoint at .*without --resume"):
        ckpt.load_checkpoint(tmp_path / ckpt.CHECKPOINT_NAME, {})


@pytest.mark.parametrize(
    "content",
    [b"", b"not a checkpoint at all", b"PK\x03\x04truncated zip"],
    ids=["empty", "garbage", "truncated-zip"],
)
def test_corrupt_checkpoint_is_a_clear_error(tmp_path, content):
    path = tmp_path / ckpt.CHECKPOINT_NAME
    path.write_bytes(content)
    with pytest.raises(ckpt.CheckpointError, match="corrupt or not a lowbit checkpoint"):
        ckpt.load_checkpoint(path, {})


def test_truncated_real_checkpoint_is_a_clear_error(tmp_path):
    path = tmp_path / ckpt.CHECKPOINT_NAME
    ckpt.save_checkpoint(path, _state())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ckpt.CheckpointError, match="corrupt"):
        ckpt.load_checkpoint(path, _state()["identity"])


def test_foreign_torch_file_is_rejected(tmp_path):
    path = tmp_path / ckpt.CHECKPOINT_NAME
    torch.save({"weights": torch.zeros(2)}, path)
    with pytest.raises(ckpt.CheckpointError, match="not a lowbit training checkpoint"):
        ckpt.load_checkpoint(path, {})


def test_other_version_is_rejected(tmp_path):
    path = tmp_path / ckpt.CHECKPOINT_NAME
    torch.save({"format": ckpt.CHECKPOINT_FORMAT, "version": 999}, path)
    with pytest.raises(ckpt.CheckpointError, match="version 999"):
        ckpt.load_checkpoint(path, {})


def test_incompatible_identity_names_the_setting(tmp_path):
    path = tmp_path / ckpt.CHECKPOINT_NAME
    ckpt.save_checkpoint(path, _state())
    identity = {**_state()["identity"], "seed": 7}
    with pytest.raises(ckpt.CheckpointError, match=r"seed: checkpoint 0 vs now 7"):
        ckpt.load_checkpoint(path, identity)


def test_missing_required_key_is_refused_on_save(tmp_path):
    state = _state()
    del state["sampler"]
    with pytest.raises(ValueError, match="sampler"):
        ckpt.save_checkpoint(tmp_path / ckpt.CHECKPOINT_NAME, state)
