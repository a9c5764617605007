"""Tiny data files and configs for the experiment-runner tests (each run trains in about a second)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from tests.helpers import single_thread  # noqa: F401  (autouse: this folder runs on one thread)

from lowbit.experiments.config import TrainConfig

_WORDS = (
    "to", "be", "or", "not", "that", "is", "the", "question", "whether", "tis", "nobler", "in", "mind",
    "suffer", "slings", "and", "arrows",
)  # fmt: skip


@pytest.fixture
def text_file(tmp_path: Path) -> Path:
    """A ~6 kB UTF-8 text of seeded random word sequences (last 10% becomes the held-out part)."""
    rng = random.Random(0)
    lines = [" ".join(rng.choice(_WORDS) for _ in range(rng.randint(4, 10))) for _ in range(150)]
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def csv_file(tmp_path: Path) -> Path:
    """A text,label CSV with 60 short snippets, label = whether the snippet says 'good'."""
    rng = random.Random(1)
    rows = ["text,label"]
    for i in range(60):
        label = i % 2
        words = [rng.choice(_WORDS) for _ in range(rng.randint(3, 8))] + ["good" if label else "bad"]
        rng.shuffle(words)
        rows.append(f"{' '.join(words)},{label}")
    path = tmp_path / "snippets.csv"
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def tiny_config(task: str, out: Path, data: Path | None = None, **overrides: object) -> TrainConfig:
    """The smallest sensible run of ``task``: a few steps of a one-block model on a handful of examples."""
    sizes: dict[str, dict[str, object]] = {
        # width 32: the int4 recipe's Hadamard block (32) must divide every converted layer's input width
        "gpt-shakespeare": dict(batch_size=4, seq_len=16, layers=1, dim=32, heads=2, max_eval_examples=8),
        "vit-fashion": dict(
            batch_size=16,
            layers=1,
            dim=32,
            heads=2,
            patch_size=7,
            max_train_examples=40,
            max_eval_examples=32,
        ),
        # MiniLM is the real 22M-parameter model: keep its runs to 2 steps.
        "bert-rt": dict(
            batch_size=4, seq_len=16, max_train_examples=16, max_eval_examples=8, steps=2, eval_every=1
        ),
    }
    values: dict[str, object] = dict(
        steps=6, eval_every=3, warmup_steps=2, out=str(out), progress=False, data=str(data) if data else None
    )
    values.update(sizes[task])
    values.update(overrides)
    return TrainConfig.from_overrides(task, **values)


@pytest.fixture
def tiny():
    """``tiny_config`` as a fixture (test modules cannot import a conftest by name)."""
    return tiny_config
