"""The training tasks' data samplers: random windows of a token stream, seeded epochs of example indices.

A sampler's ``state_dict`` is the exact data position, so a checkpoint resumes on the very next batch.
"""

from __future__ import annotations

from typing import Any

import torch

from lowbit.experiments.config import TrainConfig, derive_seed

Batch = tuple[torch.Tensor, ...]


def unused_training_examples(config: TrainConfig, n_train: int) -> torch.Tensor:
    """Indices of the training examples a run of ``config`` never draws (its validation set), fixed order.

    The run's ``EpochSampler`` draws ``steps × batch_size`` examples from the first epoch's permutation (the
    first ``randperm`` of its data generator); this is the rest of that permutation, cut to
    ``max_eval_examples``. ValueError when the run draws every example (it spans one epoch or more).
    """
    used = config.steps * config.batch_size
    if used >= n_train:
        raise ValueError(
            f"--eval-split val uses the training examples the run never draws, but {config.steps} steps x "
            f"{config.batch_size} examples = {used} >= the {n_train} training examples; lower --steps or "
            f"--batch-size, or evaluate with --eval-split test"
        )
    generator = torch.Generator().manual_seed(derive_seed(config.seed, "data"))
    rest = torch.randperm(n_train, generator=generator)[used:]
    return rest[: config.max_eval_examples] if config.max_eval_examples else rest


class RandomWindowSampler:
    """Random (x, y) windows of a token stream from one generator; its state is the generator's state."""

    def __init__(
        self, tokens: torch.Tensor, block_size: int, batch_size: int, generator: torch.Generator
    ) -> None:
        from lowbit.data import random_batch

        self._random_batch = random_batch
        self.tokens, self.block_size, self.batch_size, self.generator = (
            tokens,
            block_size,
            batch_size,
            generator,
        )
        self.batches = 0

    def next(self) -> Batch:
        """The next training batch: x (B, T) and targets (B, T)."""
        self.batches += 1
        return self._random_batch(self.tokens, self.block_size, self.batch_size, self.generator)

    def state_dict(self) -> dict[str, Any]:
        """The data position."""
        return {"kind": "windows", "generator": self.generator.get_state(), "batches": self.batches}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a data position written by ``state_dict``."""
        if state.get("kind") != "windows":
            raise ValueError(f"sampler state of kind {state.get('kind')!r}, expected 'windows'")
        self.generator.set_state(state["generator"])
        self.batches = int(state["batches"])


class EpochSampler:
    """Batches of example indices: a fresh seeded permutation per epoch, the incomplete last batch dropped."""

    def __init__(self, n_examples: int, batch_size: int, generator: torch.Generator) -> None:
        if n_examples < batch_size:
            raise ValueError(
                f"{n_examples} training examples are fewer than one batch of {batch_size}; lower --batch-size"
            )
        self.n_examples, self.batch_size, self.generator = n_examples, batch_size, generator
        self.epoch, self.position = 0, 0
        self.permutation = torch.randperm(n_examples, generator=generator)

    def next(self) -> torch.Tensor:
        """Indices (B,) of the next batch."""
        if self.position + self.batch_size > self.n_examples:
            self.epoch, self.position = self.epoch + 1, 0
            self.permutation = torch.randperm(self.n_examples, generator=self.generator)
        idx = self.permutation[self.position : self.position + self.batch_size]
        self.position += self.batch_size
        return idx

    def state_dict(self) -> dict[str, Any]:
        """The data position: epoch, position in the epoch, its permutation and the generator state."""
        return {
            "kind": "epochs", "generator": self.generator.get_state(), "epoch": self.epoch,
            "position": self.position, "permutation": self.permutation.clone(), "n_examples": self.n_examples,
        }  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a data position written by ``state_dict``."""
        if state.get("kind") != "epochs" or state.get("n_examples") != self.n_examples:
            raise ValueError(
                f"sampler state ({state.get('kind')!r}, {state.get('n_examples')} examples) does not match "
                f"this data ('epochs', {self.n_examples} examples)"
            )
        self.generator.set_state(state["generator"])
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self.permutation = state["permutation"].clone()
