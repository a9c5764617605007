"""The gpt-shakespeare task: a character-level GPT trained from scratch, scored by its held-out loss."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from lowbit.experiments.config import TrainConfig
from lowbit.experiments.tasks.base import Task
from lowbit.experiments.tasks.samplers import Batch, RandomWindowSampler

#: Evaluation batch size in windows (forward only, so larger than the training batch).
EVAL_WINDOWS_PER_BATCH = 64
#: gpt-shakespeare with ``eval_split="val"``: this tail of the training text is the validation set.
GPT_VAL_FRACTION = 0.1


class GPTShakespeareTask(Task):
    """Character-level GPT trained from scratch; metric: mean cross-entropy on the held-out play."""

    name, eval_name, higher_is_better, unit = "gpt-shakespeare", "held-out loss", False, "tok"

    def __init__(self, config: TrainConfig) -> None:
        super().__init__(config)
        from lowbit.data import CharTokenizer, load_shakespeare, load_text_file

        splits = load_text_file(config.data) if config.data else load_shakespeare()
        self.tokenizer = CharTokenizer.from_text(splits.train, splits.val)
        train_text = splits.train[: config.max_train_examples] if config.max_train_examples else splits.train
        eval_text = splits.val
        if config.eval_split == "val":  # carve the validation set off the end of the training text
            cut = len(train_text) - int(len(train_text) * GPT_VAL_FRACTION)
            if cut <= config.seq_len or len(train_text) - cut <= config.seq_len:
                raise ValueError(
                    f"--eval-split val holds out the last {GPT_VAL_FRACTION:.0%} of the {len(train_text)} "
                    f"training characters, too few for --seq-len {config.seq_len} windows on both sides"
                )
            train_text, eval_text = train_text[:cut], train_text[cut:]
        for part, text in (("training", train_text), ("held-out", eval_text)):
            if len(text) <= config.seq_len:
                raise ValueError(
                    f"--seq-len {config.seq_len} is longer than the {part} text of {splits.name} "
                    f"({len(text)} characters); pass --seq-len below {len(text)} or a longer --data file"
                )
        self.train_tokens = self.tokenizer.encode(train_text)
        self.val_tokens = self.tokenizer.encode(eval_text)
        self.source = splits.name
        self.vocab_size = self.tokenizer.vocab_size

    def _data_parts(self) -> list[bytes]:
        return [
            "".join(self.tokenizer.chars).encode("utf-8"),
            self.train_tokens.numpy().tobytes(),
            self.val_tokens.numpy().tobytes(),
        ]

    def build_model(self) -> nn.Module:
        from lowbit.models.gpt import GPT, GPTConfig

        cfg = self.config
        return GPT(GPTConfig(
            vocab_size=self.tokenizer.vocab_size, block_size=cfg.seq_len, n_layer=cfg.layers,
            n_head=cfg.heads, n_embd=cfg.dim,
        ))  # fmt: skip

    def make_sampler(self, generator: torch.Generator) -> RandomWindowSampler:
        return RandomWindowSampler(self.train_tokens, self.config.seq_len, self.config.batch_size, generator)

    def batch(self, draw: Batch) -> Batch:
        return draw

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        x, y = batch
        _, loss = model(x, y)
        return loss

    def units(self, batch: Batch) -> int:
        return batch[0].numel()

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> float:
        from lowbit.data import sequential_batches

        max_batches = None
        if self.config.max_eval_examples is not None:
            max_batches = math.ceil(self.config.max_eval_examples / EVAL_WINDOWS_PER_BATCH)
        total, count = 0.0, 0
        for x, y in sequential_batches(
            self.val_tokens, self.config.seq_len, EVAL_WINDOWS_PER_BATCH, max_batches
        ):
            _, loss = model(x, y)
            total += float(loss) * y.numel()
            count += y.numel()
        return total / count

    def describe(self) -> dict[str, Any]:
        return {
            "data": self.source, "vocab_size": self.tokenizer.vocab_size,
            "train_tokens": self.train_tokens.numel(), "eval_split": self.config.eval_split,
            "val_tokens": self.val_tokens.numel(),
        }  # fmt: skip
