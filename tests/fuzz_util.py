"""Shared hypothesis strategies for the fuzz suites (tests/**/test_fuzz_*.py): tensors of random shapes,
dtypes, strides and values (NaN, ±Inf, ±0, subnormals, huge), and the property every public entry keeps.

The property: a call either returns its documented result, or raises ``ValueError`` / ``TypeError`` (or a
subclass) with a short message naming the problem — never another exception, never a tensor dumped into the
message, never a silently non-finite result (checked by each suite on what it returns).

Each suite runs a fixed number of derandomized examples (``FUZZ_EXAMPLES``; set ``LOWBIT_FUZZ_EXAMPLES`` for a
longer run, e.g. ``LOWBIT_FUZZ_EXAMPLES=2000 pytest tests -k fuzz``).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st

#: Examples per fuzz test (the CI budget); more with LOWBIT_FUZZ_EXAMPLES.
FUZZ_EXAMPLES = int(os.environ.get("LOWBIT_FUZZ_EXAMPLES", "0")) or None


def fuzz_settings(examples: int) -> settings:
    """Derandomized (a fixed seed: the same examples every run), no deadline (a shared 2-core machine)."""
    return settings(
        derandomize=True,
        max_examples=FUZZ_EXAMPLES or examples,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


SPECIALS = (
    float("nan"), float("inf"), float("-inf"), 0.0, -0.0, 1e-40, -1e-45, 1e-310, 3.3e38, -3.4e38, 1e39,
    -1e300, 65504.0, 448.0, 1.5, -2.5, 1e-8,
)  # fmt: skip
FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


@st.composite
def tensors(
    draw: st.DrawFn,
    max_dims: int = 3,
    max_side: int = 9,
    dtypes: tuple[torch.dtype, ...] = FLOAT_DTYPES,
    last: tuple[int, ...] = (),
    specials: bool = True,
) -> torch.Tensor:
    """A tensor of random shape (0..max_dims dims, sides 0..max_side, the last side sometimes from
    ``last``), dtype, values (normal, scaled, or special) and strides (contiguous, transposed, sliced)."""
    nd = draw(st.sampled_from([*range(max_dims + 1), *[min(2, max_dims)] * 2]))  # 2-D most often
    shape = [draw(st.integers(0, max_side)) for _ in range(nd)]
    if nd and last and draw(st.integers(0, 3)):  # mostly a width the callee takes
        shape[-1] = draw(st.sampled_from(last))
    dtype = draw(st.sampled_from(dtypes))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    kinds = ["normal", "normal", "scaled", "scaled", "special", "zeros"] if specials else ["normal", "scaled"]
    kind = draw(st.sampled_from(kinds))
    layout = draw(st.sampled_from(["contiguous", "transposed", "sliced"]))
    base = list(shape)
    if layout == "transposed" and nd >= 2:
        base[-1], base[-2] = base[-2], base[-1]
    elif layout == "sliced" and nd >= 1:
        base[-1] = base[-1] * 2
    x = torch.randn(base, generator=g, dtype=torch.float64)
    if kind == "scaled":
        x = x * 10.0 ** draw(st.integers(-40, 38))
    elif kind == "zeros":
        x = x * 0.0
    elif kind == "special" and x.numel():
        n_special = draw(st.integers(1, 4))
        flat = x.view(-1)
        for _ in range(n_special):
            flat[draw(st.integers(0, flat.numel() - 1))] = draw(st.sampled_from(SPECIALS))
    if dtype.is_floating_point:
        with warnings_off():
            x = x.to(dtype)
    else:
        x = x.nan_to_num(0.0, 0.0, 0.0).clamp(-100, 100).to(dtype)
    if layout == "transposed" and nd >= 2:
        x = x.transpose(-1, -2)
    elif layout == "sliced" and nd >= 1:
        x = x[..., ::2]
    assert tuple(x.shape) == tuple(shape)
    return x


@contextlib.contextmanager
def warnings_off() -> Iterator[None]:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def check_error(err: BaseException) -> None:
    """The error side of the property: ValueError/TypeError with a short message that dumps no tensor."""
    assert isinstance(err, ValueError | TypeError), f"{type(err).__name__}: {err}"
    msg = str(err)
    assert msg and len(msg) < 600 and "tensor([" not in msg, msg


@contextlib.contextmanager
def documented_errors() -> Iterator[None]:
    """Run a call; ValueError/TypeError pass (after :func:`check_error`), anything else fails the test."""
    try:
        yield
    except (ValueError, TypeError) as err:
        check_error(err)
        event(f"refused: {type(err).__name__}")  # --hypothesis-show-statistics shows the mix
    else:
        event("accepted")
