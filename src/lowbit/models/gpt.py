"""A small decoder-only GPT (nanoGPT-style), standard or Integer Transformer (poly attention, L1 norm, ReLU).

Layout: token + learned position embeddings → ``n_layer`` pre-norm causal ``Block``s → final norm ``ln_f`` →
``lm_head`` (an ``nn.Linear`` without bias, not tied to the embedding so that it can be kept in full precision
or quantized on its own).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lowbit.models.layers import ACTIVATIONS, ATTENTIONS, INIT_STD, NORMS, Block, make_norm

#: Std of the normal initialisation of linear and embedding weights (GPT-2's).


@dataclass(frozen=True)
class GPTConfig:
    """Sizes and architecture of ``GPT``; ``integer_transformer()`` gives the docs/SPEC.md §2 variant."""

    vocab_size: int
    block_size: int = 128
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 256
    dropout: float = 0.0
    bias: bool = True
    attention: str = "softmax"
    norm: str = "layer"
    activation: str = "gelu"
    mlp_ratio: int = 4

    def __post_init__(self) -> None:
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd", "mlp_ratio"):
            if getattr(self, name) < 1:
                raise ValueError(f"GPTConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.n_embd % self.n_head != 0:
            raise ValueError(f"GPTConfig.n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"GPTConfig.dropout must be in [0, 1), got {self.dropout}")
        for name, allowed in (("attention", ATTENTIONS), ("norm", NORMS), ("activation", ACTIVATIONS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"GPTConfig.{name}={getattr(self, name)!r}; choose one of {allowed}")

    @classmethod
    def integer_transformer(cls, vocab_size: int, **kwargs: object) -> GPTConfig:
        """The Integer Transformer of docs/SPEC.md §2: polynomial attention, L1 LayerNorm, ReLU FFN."""
        return cls(vocab_size=vocab_size, attention="poly", norm="l1", activation="relu", **kwargs)


def check_token_ids(idx: object, vocab_size: int, block_size: int, name: str = "idx") -> torch.Tensor:
    """Validate a (batch, seq) token-id tensor; return it as a contiguous int64 tensor.

    Raises ``TypeError`` for a non-tensor or a non-integer dtype and ``ValueError`` for another shape than
    (batch, seq), an empty batch or sequence, a sequence longer than ``block_size``, a meta tensor, or an id
    outside [0, vocab_size) (a negative id would otherwise index from the end of the embedding).
    """
    if not isinstance(idx, torch.Tensor):
        raise TypeError(f"{name} must be a tensor of token ids, shape (batch, seq); got {type(idx).__name__}")
    if idx.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        raise TypeError(f"{name} must hold integer token ids (torch.long), got dtype {idx.dtype}")
    if idx.dim() != 2:
        hint = f"; for one sequence pass {name}.unsqueeze(0)" if idx.dim() == 1 else ""
        raise ValueError(f"{name} must have shape (batch, seq), got shape {tuple(idx.shape)}{hint}")
    b, t = idx.shape
    if b == 0 or t == 0:
        raise ValueError(f"{name} is empty: shape {(b, t)}; expected shape (batch, seq), batch and seq >= 1")
    if t > block_size:
        raise ValueError(f"sequence length {t} exceeds block_size {block_size}")
    if idx.is_meta:
        raise ValueError(f"{name} is on the meta device (shapes only, no ids); pass real token ids")
    lo, hi = int(idx.min()), int(idx.max())
    if lo < 0 or hi >= vocab_size:
        raise ValueError(
            f"{name} holds token ids outside [0, {vocab_size}): min {lo}, max {hi}; "
            f"ids must index the vocabulary of {vocab_size} tokens"
        )
    return idx.to(torch.int64).contiguous()  # uint8/bool-like dtypes would index as masks


def _check_targets(targets: object, shape: tuple[int, ...], vocab_size: int) -> torch.Tensor:
    """Targets of idx's shape, integer ids in [0, vocab_size) or -100 (cross_entropy's ignore_index)."""
    if not isinstance(targets, torch.Tensor) or targets.dtype not in (torch.int64, torch.int32):
        got = targets.dtype if isinstance(targets, torch.Tensor) else type(targets).__name__
        raise TypeError(f"targets must be an integer (torch.long) tensor of idx's shape {shape}, got {got}")
    if tuple(targets.shape) != shape:
        raise ValueError(f"targets must have idx's shape {shape}, got {tuple(targets.shape)}")
    bad = ((targets < 0) & (targets != -100)) | (targets >= vocab_size)
    if bool(bad.any()):
        raise ValueError(
            f"targets hold {int(bad.sum())} ids outside [0, {vocab_size}) (and not the ignore index -100)"
        )
    return targets.long()


class GPT(nn.Module):
    """Decoder-only Transformer language model; ``forward(idx, targets)`` → (logits, loss)."""

    def __init__(self, config: GPTConfig) -> None:
        """Build and initialise (normal(0, 0.02); residual projections scaled by 1/√(2·n_layer))."""
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.block_size, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(
            Block(
                config.n_embd,
                config.n_head,
                config.mlp_ratio * config.n_embd,
                attention=config.attention,
                norm=config.norm,
                activation=config.activation,
                causal=True,
                bias=config.bias,
                dropout=config.dropout,
            )
            for _ in range(config.n_layer)
        )
        self.ln_f = make_norm(config.norm, config.n_embd, bias=config.bias)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.apply(_init_weights)
        for block in self.blocks:
            for proj in (block.attn.out_proj, block.mlp.fc_out):
                nn.init.normal_(proj.weight, mean=0.0, std=INIT_STD / math.sqrt(2 * config.n_layer))

    def num_params(self) -> int:
        """Number of parameters."""
        return sum(p.numel() for p in self.parameters())

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """idx (B, T) int64 → logits (B, T, vocab), and the mean cross-entropy if targets (B, T) is given.

        ``idx`` is checked by :func:`check_token_ids` (shape (batch, seq), ids in [0, vocab_size)).
        """
        if not (isinstance(idx, torch.Tensor) and idx.is_meta):  # meta: shapes only, nothing to check
            idx = check_token_ids(idx, self.config.vocab_size, self.config.block_size)
        seq_len = idx.shape[1]
        if targets is not None and not idx.is_meta:
            targets = _check_targets(targets, tuple(idx.shape), self.config.vocab_size)
        pos = torch.arange(seq_len, device=idx.device)
        x = self.drop(self.wte(idx) + self.wpe(pos))  # (B, T, C)
        for block in self.blocks:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))  # (B, T, V)
        if targets is None:
            return logits, None
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        return logits, loss

    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
        top_k: int | None = None,
    ) -> torch.Tensor:
        """Append ``max_new_tokens`` sampled tokens to idx (B, T); temperature 0 means greedy decoding."""
        if not (isinstance(temperature, int | float) and 0 <= temperature < float("inf")):
            raise ValueError(f"temperature must be a finite number >= 0 (0: greedy), got {temperature!r}")
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
            raise ValueError(f"top_k must be None or an int >= 1, got {top_k!r}")
        for _ in range(max_new_tokens):
            logits, _ = self(idx[:, -self.config.block_size :])
            logits = logits[:, -1, :]  # (B, V)
            if temperature == 0:
                next_id = logits.argmax(dim=-1, keepdim=True)
            else:
                logits = logits / temperature
                if top_k is not None:
                    kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, -1:]
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                next_id = torch.multinomial(F.softmax(logits, dim=-1), 1, generator=generator)
            idx = torch.cat([idx, next_id], dim=1)
        return idx


def _init_weights(module: nn.Module) -> None:
    """GPT-2 initialisation for linear and embedding layers."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, mean=0.0, std=INIT_STD)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, mean=0.0, std=INIT_STD)


@torch.no_grad()
def evaluate_lm_loss(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """Token-weighted mean cross-entropy over (x, y) batches; ``model(x)`` gives logits or (logits, ...)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        for x, y in batches:
            out = model(x)
            logits = out[0] if isinstance(out, tuple) else out  # (B, T, V)
            total += float(
                F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1), reduction="sum")
            )
            count += y.numel()
    finally:
        model.train(was_training)
    if count == 0:
        raise ValueError("evaluate_lm_loss got no batches; the held-out text is shorter than one window")
    return total / count
