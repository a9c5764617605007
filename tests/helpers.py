"""Shared test helpers, imported as ``from tests.helpers import ...``: plain functions and constants, and the
one fixture several test folders use. Fixtures of one folder stay in its conftest.py.

* ``sqnr_db`` — the one SQNR definition.
* ``single_thread`` — the autouse fixture of the test folders that run on one intra-op thread (imported into
  their conftest.py).
* ``BACKENDS`` / ``NATIVE_ISAS`` — every concrete integer-GEMM backend as a pytest parameter; one this machine
  cannot run is skipped with the reason (the missing CPU feature, or the kernel that is not shipped), never
  silently dropped.
* Fuzz settings and hypothesis strategies for the fuzz suites (``tests/**/test_*_fuzz.py``): tensors of random
  shapes, dtypes, strides and values (NaN, ±Inf, ±0, subnormals, huge), and the property every public entry
  keeps. The property: a call either returns its documented result, or raises ``ValueError`` / ``TypeError``
  (or a subclass) with a short message naming the problem — never another exception, never a tensor dumped
  into the message, never a silently non-finite result (checked by each suite on what it returns). Each suite
  runs a fixed number of derandomized examples (``FUZZ_EXAMPLES``; set ``LOWBIT_FUZZ_EXAMPLES`` for a longer
  run, e.g. ``LOWBIT_FUZZ_EXAMPLES=2000 pytest tests -k fuzz``).
* Float64 references for the quantizer tests (``ref_round``, ``boundary_values``, ``ref_mx``), written from
  the format definitions, not from lowbit.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st

import lowbit.formats as F
from lowbit.ops import backends

# --- measures -------------------------------------------------------------------------------------


def sqnr_db(ref: torch.Tensor, approx: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio in dB of ``approx`` against ``ref`` (computed in float64)."""
    ref64, approx64 = ref.double(), approx.double()
    noise = (ref64 - approx64).pow(2).sum()
    signal = ref64.pow(2).sum()
    if noise == 0:
        return float("inf")
    return float(10 * torch.log10(signal / noise))


# --- threading ------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def single_thread() -> Iterator[None]:
    """One intra-op thread for the test, then the previous setting back. Autouse in the folders whose
    conftest.py imports it (models, ptq, training, experiments): tiny tensors on a shared, loaded CPU lose
    milliseconds per op to OpenMP hand-offs (measured: torch.round on 64x48 took 13 ms with 2 threads, 2 µs
    with 1). tests/ops does not import it: its kernels are tested with the default thread count."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


# --- integer-GEMM backends as pytest parameters ----------------------------------------------------


def backend_params(include_unshipped: bool = True) -> list:
    """``pytest.param`` per concrete backend, skip-marked with the reason where it cannot run here."""
    params = []
    for name in backends.CONCRETE:
        reason = backends._why_not(name)
        if reason and not include_unshipped:
            continue
        marks = [pytest.mark.skip(reason=f"{name}: {reason}")] if reason else []
        params.append(pytest.param(name, id=name, marks=marks))
    return params


BACKENDS = backend_params()
NATIVE_ISAS = [p for p in BACKENDS if p.values[0] in backends.NATIVE_ISAS]


# --- fuzz settings and strategies -----------------------------------------------------------------

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


# --- float64 quantizer references -----------------------------------------------------------------


def ref_round(x: np.ndarray, fmt, mode: str = "nearest") -> np.ndarray:
    """Float64 reference: saturate, then the nearest of fmt.codes() (ties to even code / away from 0)."""
    if isinstance(fmt, F.IntFormat):
        t = np.clip(x, fmt.qmin, fmt.qmax)
        return np.round(t) if mode == "nearest" else np.sign(t) * np.floor(np.abs(t) + 0.5)
    grid = fmt.codes().numpy()
    pos = grid[grid >= 0]  # 0, min_subnormal, ..., max: index parity = mantissa parity of the bit pattern
    mag = np.minimum(np.abs(x), fmt.max)
    hi = np.clip(np.searchsorted(pos, mag, side="left"), 0, len(pos) - 1)
    lo = np.maximum(hi - 1, 0)
    d_lo, d_hi = mag - pos[lo], pos[hi] - mag
    tie_pick = hi if mode == "nearest-away" else np.where(hi % 2 == 0, hi, lo)
    idx = np.where(d_lo < d_hi, lo, np.where(d_hi < d_lo, hi, tie_pick))
    return np.copysign(pos[idx], x)


def boundary_values(fmt, gen: torch.Generator) -> torch.Tensor:
    """Every code, every midpoint between neighbours (ties), points just off them, beyond max, and random."""
    grid = fmt.codes()
    mids = (grid[1:] + grid[:-1]) / 2
    near = torch.cat([mids * (1 + 1e-9), mids * (1 - 1e-9)])
    beyond = torch.tensor([fmt.max * 1.01, fmt.max * 7, -fmt.max * 3, 0.0, -0.0], dtype=torch.float64)
    rand = torch.randn(2000, generator=gen, dtype=torch.float64) * fmt.max / 3
    return torch.cat([grid, mids, near, beyond, rand])


def ref_mx(x: np.ndarray, fmt: F.MXFormat) -> tuple[np.ndarray, np.ndarray]:
    """OCP MX reference, float64: per 32-block X = 2^(floor(log2 amax) - emax_elem), elements saturated."""
    blocks = x.reshape(*x.shape[:-1], -1, fmt.block)
    out, scales = np.empty_like(blocks), np.empty(blocks.shape[:-1])
    for idx in np.ndindex(*blocks.shape[:-1]):
        amax = np.abs(blocks[idx]).max()
        scale = 1.0 if amax == 0 else 2.0 ** (math.frexp(amax)[1] - 1 - fmt.element_emax)
        scales[idx] = scale
        out[idx] = ref_round(blocks[idx] / scale, fmt.element) * scale
    return out.reshape(x.shape), scales
