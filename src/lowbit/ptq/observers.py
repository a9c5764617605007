"""Activation observers: running statistics of a linear layer's input and the static scale they imply.

One observer per quantized layer records, over every calibration batch, the exact running ``amax`` and a
histogram of ``|x|``. The histogram covers ``[0, R]`` with ``R`` a power of two; when a batch exceeds ``R``
the range doubles and adjacent bins merge pairwise, which is exact (no re-binning error). The rule picks the
clipping value ``c`` and the step is ``scale = c / fmt.max`` (x ≈ codes × scale):

* ``"max"`` — ``c = amax`` (the FP8-BERT recipe: per-tensor amax over the calibration batches);
* ``"percentile"`` — ``c`` = the ``percentile``-th percentile of ``|x|`` (linear inside a bin);
* ``"mse"`` — ``c = r · amax`` for ``r`` in 1.00, 0.99, …, 0.20 minimising the squared quantization error of
  the histogram (bin centres weighted by counts, rounded to the target format: the rule is format-aware).

Percentile and MSE are exact up to the bin width ``R / bins``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from lowbit.formats import Format, MXFormat
from lowbit.rounding import round_checked
from lowbit.scales import FLOAT32_MIN_NORMAL, MSE_RATIOS

OBSERVER_RULES = ("max", "percentile", "mse")


@dataclass(frozen=True)
class ObserverSpec:
    """How activations are observed: ``rule`` (``OBSERVER_RULES``), its ``percentile``, histogram ``bins``."""

    rule: str = "max"
    percentile: float = 99.99
    bins: int = 2048

    def __post_init__(self) -> None:
        if self.rule not in OBSERVER_RULES:
            raise ValueError(f"observer rule must be one of {OBSERVER_RULES}, got {self.rule!r}")
        p = self.percentile
        if isinstance(p, bool) or not isinstance(p, int | float) or not 0 < p <= 100:
            raise ValueError(f"percentile must be in (0, 100], got {p!r}; e.g. 99.99")
        if isinstance(self.bins, bool) or not isinstance(self.bins, int) or self.bins < 2 or self.bins % 2:
            raise ValueError(f"bins must be an even int >= 2, got {self.bins!r}")

    @classmethod
    def parse(cls, spec: object) -> ObserverSpec:
        """Accept an ObserverSpec, ``"max"``, ``"percentile"``, ``("percentile", p)`` or ``"mse"``."""
        if isinstance(spec, ObserverSpec):
            return spec
        if isinstance(spec, str):
            return cls(spec)
        if isinstance(spec, tuple) and len(spec) == 2 and spec[0] == "percentile":
            return cls("percentile", spec[1])
        raise ValueError(
            f"observer must be one of {OBSERVER_RULES}, ('percentile', p) or an ObserverSpec, got {spec!r}"
        )

    def __str__(self) -> str:
        return f"percentile{self.percentile:g}" if self.rule == "percentile" else self.rule


class HistogramObserver:
    """Running amax and power-of-two-range histogram of ``|x|`` for one tensor stream (see module doc)."""

    def __init__(self, spec: ObserverSpec) -> None:
        self.spec = spec
        self.amax = 0.0
        self.count = 0
        self.range = 0.0  # R: 0 until the first non-zero value
        self.hist = torch.zeros(spec.bins, dtype=torch.float64)
        self._pending_zeros = 0  # zeros seen before R was known

    def update(self, x: torch.Tensor) -> None:
        """Add a batch (any shape, float dtype). NaN/Inf raise ``ValueError`` naming the counts."""
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise TypeError(f"observer input must be a float tensor, got {getattr(x, 'dtype', type(x))}")
        mag = x.detach().float().abs().flatten()
        if mag.numel() == 0:
            return
        batch_max = float(mag.max())
        if not math.isfinite(batch_max):
            raise ValueError(
                f"calibration input holds {int(torch.isnan(mag).sum())} NaN and "
                f"{int(torch.isinf(mag).sum())} infinite values; the model produces non-finite "
                "activations on these batches"
            )
        self.count += mag.numel()
        self.amax = max(self.amax, batch_max)
        if batch_max == 0.0:
            if self.range == 0.0:
                self._pending_zeros += mag.numel()
            else:
                self.hist[0] += mag.numel()
            return
        if self.range == 0.0:
            self.range = 2.0 ** math.ceil(math.log2(batch_max))
            self.hist[0] += self._pending_zeros
            self._pending_zeros = 0
        while batch_max > self.range:  # double the range: merge bins pairwise (exact)
            merged = self.hist.view(-1, 2).sum(dim=1)
            self.hist = torch.cat([merged, torch.zeros_like(merged)])
            self.range *= 2.0
        self.hist += torch.histc(mag, bins=self.spec.bins, min=0.0, max=self.range).double()

    def clip_value(self, fmt: Format, rule: ObserverSpec | None = None) -> float:
        """The clipping value ``c`` for ``fmt`` under ``rule`` (default: the observer's own spec); 0 when
        everything seen was zero. Every rule reads the same amax and histogram, so one calibration pass
        serves them all.
        """
        rule = rule or self.spec
        if self.count == 0:
            raise ValueError("observer saw no data: run calibration batches through the model first")
        if self.amax == 0.0 or rule.rule == "max":
            return self.amax
        if rule.rule == "percentile":
            return self._percentile(rule.percentile)
        return self._mse_clip(fmt)

    def scale(self, fmt: Format, rule: ObserverSpec | None = None) -> float:
        """Static step size ``c / fmt.max`` (1 when ``c`` is 0; never below the smallest float32 normal)."""
        if isinstance(fmt, MXFormat):
            raise ValueError(f"{fmt.name} uses dynamic per-block scales; it takes no calibrated scale")
        clip = self.clip_value(fmt, rule)
        if clip == 0.0:
            return 1.0
        step = float(torch.tensor(clip / fmt.max, dtype=torch.float32))
        return max(step, FLOAT32_MIN_NORMAL)

    def _percentile(self, p: float) -> float:
        target = p / 100.0 * float(self.hist.sum())
        cum = torch.cumsum(self.hist, 0)
        idx = int(torch.searchsorted(cum, torch.tensor([target], dtype=torch.float64)))
        idx = min(idx, self.hist.numel() - 1)
        before = float(cum[idx - 1]) if idx > 0 else 0.0
        in_bin = float(self.hist[idx])
        frac = (target - before) / in_bin if in_bin > 0 else 1.0
        width = self.range / self.hist.numel()
        clip = min((idx + frac) * width, self.amax)
        return clip if clip > 0 else self.amax

    def _mse_clip(self, fmt: Format) -> float:
        width = self.range / self.hist.numel()
        centres = (torch.arange(self.hist.numel(), dtype=torch.float64) + 0.5) * width
        centres = centres.clamp(max=self.amax)  # the top bin's mass is at most amax
        elem = fmt.element if isinstance(fmt, MXFormat) else fmt
        best_clip, best_err = self.amax, math.inf
        for ratio in MSE_RATIOS:  # 1.00 first: ties keep the largest clip
            clip = self.amax * ratio
            step = clip / fmt.max
            grid = round_checked((centres / step).float(), elem, "nearest", None).double() * step
            err = float((self.hist * (grid - centres).pow(2)).sum())
            if err < best_err:
                best_clip, best_err = clip, err
        return best_clip
