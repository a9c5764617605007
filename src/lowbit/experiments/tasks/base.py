"""The task interface a training run drives: data, model, loss, evaluation, sampler and data fingerprint."""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from typing import Any

import torch
from torch import nn

from lowbit.experiments.config import TrainConfig
from lowbit.experiments.tasks.samplers import Batch, EpochSampler, RandomWindowSampler


class Task(ABC):
    """One training task; subclasses set the class attributes and implement the abstract methods."""

    name: str
    eval_name: str
    higher_is_better: bool
    unit: str  # what throughput counts: "tok" or "img" or "ex"
    #: Linear layers every recipe keeps in FP32 besides the output head (``convert``'s skip patterns).
    keep_fp32: tuple[str, ...] = ()
    #: LSQ step initialisation of the int4 recipes that leave it to the task (``Recipe.lsq_init`` None).
    lsq_init: str = "paper"

    def __init__(self, config: TrainConfig) -> None:
        self.config = config

    @abstractmethod
    def build_model(self) -> nn.Module:
        """A freshly initialised model (the caller seeds the global RNG with the run's init seed)."""

    @abstractmethod
    def make_sampler(self, generator: torch.Generator) -> RandomWindowSampler | EpochSampler:
        """The training-data sampler drawing from ``generator``."""

    @abstractmethod
    def batch(self, draw: Any) -> Batch:
        """Turn a sampler draw into model inputs."""

    @abstractmethod
    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        """Mean training loss of ``model`` on ``batch`` (scalar tensor with grad)."""

    @abstractmethod
    def units(self, batch: Batch) -> int:
        """How many ``unit`` a batch holds (for throughput)."""

    @abstractmethod
    def evaluate(self, model: nn.Module) -> float:
        """The evaluation metric (``eval_name``) of ``model`` on the held-out data."""

    def describe(self) -> dict[str, Any]:
        """Sizes of the data, for logs and reports."""
        return {}

    def data_fingerprint(self) -> dict[str, Any]:
        """A digest of the data the run trains and evaluates on (and the vocabulary size where there is one),
        stored in checkpoints so a resume on edited data is refused; computed once."""
        cached = getattr(self, "_fingerprint", None)
        if cached is None:
            digest = hashlib.sha256()
            for part in self._data_parts():
                digest.update(len(part).to_bytes(8, "little"))
                digest.update(part)
            cached = {
                "sha256": digest.hexdigest(),
                "vocab_size": getattr(self, "vocab_size", None),
                "n_classes": getattr(self, "n_classes", None),
            }
            self._fingerprint = cached
        return dict(cached)

    def _data_parts(self) -> list[bytes]:
        """The bytes the fingerprint covers (subclasses: every tensor and text the run reads)."""
        return []
