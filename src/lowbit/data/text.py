"""Plain-text corpora for character-level language modelling: splits, a char tokenizer and seeded batches."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

#: A corpus shorter than this (characters, per split) cannot fill even a few training windows.
MIN_SPLIT_CHARS = 64


@dataclass(frozen=True)
class TextSplits:
    """A text corpus cut into a training part and a held-out part."""

    name: str
    train: str
    val: str

    def __post_init__(self) -> None:
        for part in ("train", "val"):
            if len(getattr(self, part)) < MIN_SPLIT_CHARS:
                raise ValueError(
                    f"{self.name}: the {part} split has {len(getattr(self, part))} characters, fewer than "
                    f"{MIN_SPLIT_CHARS}; give a longer text or a different val_fraction"
                )


def load_text_file(path: str | Path, val_fraction: float = 0.1) -> TextSplits:
    """Read any UTF-8 text file and hold out its last ``val_fraction`` of characters for validation."""
    path = Path(path)
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if not path.is_file():
        raise FileNotFoundError(f"text file not found: {path}; pass the path of an existing UTF-8 text file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(
            f"{path} is not valid UTF-8 ({err.reason} at byte {err.start}); "
            "convert it first, e.g. iconv -f latin1 -t utf-8"
        ) from err
    text = text.replace("\r\n", "\n")
    n_val = int(len(text) * val_fraction)
    needed = math.ceil(MIN_SPLIT_CHARS / min(val_fraction, 1 - val_fraction))
    if n_val < MIN_SPLIT_CHARS or len(text) - n_val < MIN_SPLIT_CHARS:
        raise ValueError(
            f"{path} has {len(text)} characters, too short to split with val_fraction={val_fraction}; "
            f"give at least about {needed} characters"
        )
    logger.info("loaded %s: %d train / %d val characters", path, len(text) - n_val, n_val)
    return TextSplits(name=path.name, train=text[:-n_val], val=text[-n_val:])


class CharTokenizer:
    """Character-level tokenizer: one id per distinct character, ids in sorted character order."""

    def __init__(self, chars: str | list[str]) -> None:
        """Build from the list of characters (duplicates are removed, order is sorted)."""
        self.chars: list[str] = sorted(set(chars))
        if not self.chars:
            raise ValueError("CharTokenizer needs at least one character")
        self.stoi: dict[str, int] = {c: i for i, c in enumerate(self.chars)}

    @classmethod
    def from_text(cls, *texts: str) -> CharTokenizer:
        """Build a tokenizer covering every character of the given texts (e.g. train and val)."""
        return cls("".join(sorted(set("".join(texts)))))

    @property
    def vocab_size(self) -> int:
        """Number of distinct token ids."""
        return len(self.chars)

    def encode(self, text: str) -> torch.Tensor:
        """Map a string to a 1-D int64 tensor of ids; unknown characters raise ValueError."""
        try:
            ids = [self.stoi[c] for c in text]
        except KeyError:
            unknown = sorted(set(text) - set(self.stoi))
            raise ValueError(
                f"characters not in the tokenizer vocabulary: {unknown[:20]!r}; "
                "build the tokenizer from every text you will encode"
            ) from None
        return torch.tensor(ids, dtype=torch.long)

    def decode(self, ids: torch.Tensor | list[int]) -> str:
        """Map ids back to a string."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        return "".join(self.chars[i] for i in ids)

    def to_dict(self) -> dict[str, object]:
        """A JSON-serialisable description (for checkpoints)."""
        return {"type": "char", "chars": "".join(self.chars)}

    @classmethod
    def from_dict(cls, state: dict[str, object]) -> CharTokenizer:
        """Rebuild a tokenizer written by ``to_dict``."""
        if state.get("type") != "char" or not isinstance(state.get("chars"), str):
            raise ValueError(
                f"not a CharTokenizer state: keys {sorted(state)}; expected type='char' and chars"
            )
        return cls(state["chars"])

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CharTokenizer) and self.chars == other.chars

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size})"


def _check_tokens(tokens: torch.Tensor, block_size: int, batch_size: int) -> None:
    """Validate a 1-D token stream against the window and batch sizes."""
    if tokens.dim() != 1:
        raise ValueError(f"tokens must be a 1-D tensor, got shape {tuple(tokens.shape)}")
    if block_size < 1 or batch_size < 1:
        raise ValueError(f"block_size and batch_size must be >= 1, got {block_size}, {batch_size}")
    if tokens.numel() < block_size + 1:
        raise ValueError(
            f"token stream has {tokens.numel()} tokens, needs at least block_size + 1 = {block_size + 1}"
        )


def random_batch(
    tokens: torch.Tensor, block_size: int, batch_size: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample ``batch_size`` random windows from a seeded generator: x (B, T) and y = x shifted by one."""
    _check_tokens(tokens, block_size, batch_size)
    starts = torch.randint(tokens.numel() - block_size, (batch_size,), generator=generator)
    offsets = torch.arange(block_size + 1)
    windows = tokens[starts[:, None] + offsets]  # (B, T + 1)
    return windows[:, :-1].contiguous(), windows[:, 1:].contiguous()


def batch_iterator(
    tokens: torch.Tensor, block_size: int, batch_size: int, generator: torch.Generator
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless stream of ``random_batch`` draws from one generator (same seed, same data order)."""
    _check_tokens(tokens, block_size, batch_size)
    while True:
        yield random_batch(tokens, block_size, batch_size, generator)


def sequential_batches(
    tokens: torch.Tensor, block_size: int, batch_size: int, max_batches: int | None = None
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Non-overlapping consecutive windows covering the stream in order (a deterministic held-out loss)."""
    _check_tokens(tokens, block_size, batch_size)
    n_windows = (tokens.numel() - 1) // block_size
    starts = torch.arange(n_windows) * block_size
    offsets = torch.arange(block_size + 1)
    for b, first in enumerate(range(0, n_windows, batch_size)):
        if max_batches is not None and b >= max_batches:
            return
        windows = tokens[starts[first : first + batch_size, None] + offsets]  # (B, T + 1)
        yield windows[:, :-1].contiguous(), windows[:, 1:].contiguous()
