"""Granularity: which elements share a scale — the one vocabulary of quantizers, PTQ recipes and checkpoints.

:class:`Granularity` speaks ``tensor`` / ``row`` / ``column`` / ``group`` / ``block`` (see its docstring).
The PTQ recipes (:mod:`lowbit.ptq.config`) and serialized PTQ checkpoints keep their role spellings, each the
name of one granularity of a (rows, K) operand — :data:`ROLE_SPELLINGS`:

* a weight is (out_features N, in_features K): ``"channel"`` (one scale per output channel) is ``row``;
* an activation is (tokens, K): ``"token"`` (one scale per token) is ``row``.

``"channel"`` is not a general alias: for a generic tensor a per-channel (feature) scale is ``column``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lowbit.formats import Format, MXFormat

GRANULARITY_KINDS = ("tensor", "row", "column", "group", "block")
DEFAULT_BLOCK = 32  # "block" granularity for non-MX formats: the OCP MX block size


@dataclass(frozen=True)
class Granularity:
    """Which elements share a scale.

    ``tensor``: one scale. ``row``: one per row, i.e. per index of all leading dims (per token), reduced over
    the last dim. ``column``: one per index of the last dim (per channel), reduced over all other dims.
    ``group``: groups of ``group_size`` consecutive elements along ``dim``. ``block``: groups of the MX
    format's block size (32 for non-MX formats) along the last dim.
    """

    kind: str
    group_size: int | None = None
    dim: int = -1

    def __post_init__(self) -> None:
        if self.kind not in GRANULARITY_KINDS:
            raise ValueError(f"granularity kind must be one of {GRANULARITY_KINDS}, got {self.kind!r}")
        if self.kind in ("group", "block"):
            g = self.group_size
            if isinstance(g, bool) or not isinstance(g, int) or g < 1:
                raise ValueError(f"group size must be a positive int, got {g!r}; e.g. ('group', 128)")
        elif self.group_size is not None:
            raise ValueError(f"granularity {self.kind!r} takes no group size, got {self.group_size!r}")
        if isinstance(self.dim, bool) or not isinstance(self.dim, int):
            raise TypeError(f"granularity dim must be an int, got {self.dim!r}")

    @classmethod
    def parse(cls, spec: object, fmt: Format | None = None) -> Granularity:
        """Accept a Granularity, "tensor", "row", "column", "block", ("group", G) or ("group", G, dim)."""
        if isinstance(spec, Granularity):
            return spec
        if isinstance(spec, list):  # e.g. from JSON
            spec = tuple(spec)
        if spec == "block":
            return cls("block", fmt.block if isinstance(fmt, MXFormat) else DEFAULT_BLOCK)
        if isinstance(spec, str) and spec in ("tensor", "row", "column"):
            return cls(spec)
        if isinstance(spec, tuple) and len(spec) in (2, 3) and spec[0] == "group":
            return cls("group", spec[1], spec[2] if len(spec) == 3 else -1)
        raise ValueError(
            f"granularity must be 'tensor', 'row', 'column', 'block', ('group', G) or ('group', G, dim); "
            f"got {spec!r}"
        )

    def __str__(self) -> str:
        if self.kind == "group":
            return f"group{self.group_size}" + ("" if self.dim == -1 else f"@dim{self.dim}")
        return self.kind

    def group_view(self, shape: torch.Size) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(grouped shape, reduced dims) for data of ``shape``; the scale: grouped shape, 1s there."""
        nd = len(shape)
        if self.kind == "tensor":
            return tuple(shape), tuple(range(nd))
        if self.kind == "row":
            if nd < 1:
                raise ValueError("granularity='row' needs at least 1 dimension; use 'tensor' for scalars")
            return tuple(shape), (nd - 1,)
        if self.kind == "column":
            if nd < 2:
                raise ValueError(
                    f"granularity='column' needs at least 2 dimensions, got shape {tuple(shape)}; "
                    "use 'tensor' or reshape to (rows, columns)"
                )
            return tuple(shape), tuple(range(nd - 1))
        if not -nd <= self.dim < nd:
            raise ValueError(f"group dim {self.dim} is out of range for shape {tuple(shape)}")
        d = self.dim % nd
        g = self.group_size
        if shape[d] % g:
            raise ValueError(
                f"group size {g} does not divide dim {d} of size {shape[d]} (shape {tuple(shape)}); "
                f"pick a group size that divides {shape[d]} or pad the tensor"
            )
        grouped = (*shape[:d], shape[d] // g, g, *shape[d + 1 :])
        return grouped, (d + 1,)


#: The PTQ role spellings and the granularity each names ("group" takes the recipe's group_size).
ROLE_SPELLINGS: dict[str, dict[str, str]] = {
    "weight": {"tensor": "tensor", "channel": "row", "group": "group"},
    "activation": {"tensor": "tensor", "token": "row"},
}


def for_role(spelling: str, role: str, group_size: int | None = None) -> Granularity:
    """The :class:`Granularity` a PTQ spelling names for ``role`` (``"weight"`` or ``"activation"``)."""
    names = ROLE_SPELLINGS[role]
    if spelling not in names:
        *first, last = (repr(n) for n in names)
        raise ValueError(f"{role} granularity must be {', '.join(first)} or {last}, got {spelling!r}")
    kind = names[spelling]
    return Granularity("group", group_size) if kind == "group" else Granularity(kind)


def role_spelling(gran: Granularity, role: str) -> tuple[str, int | None]:
    """(PTQ spelling, group size) of a :class:`Granularity` for ``role``; ValueError if it has none."""
    for spelling, kind in ROLE_SPELLINGS[role].items():
        if kind == gran.kind and (kind != "group" or gran.dim == -1):
            return spelling, gran.group_size
    raise ValueError(
        f"granularity {gran} has no {role} spelling in the PTQ recipes; use one of "
        f"{', '.join(f'{k} ({s!r})' for s, k in ROLE_SPELLINGS[role].items())}"
    )
