"""The ``lowbit ptq --formats`` grammar: ``NAME[/WEIGHT_GRAN[/ACT_GRAN]][@OBSERVER][+OPTION...]`` entries and
the PTQ recipe each stands for (``lowbit.experiments.ptq`` describes the formats and options)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from lowbit.ptq import ObserverSpec, PTQConfig, WeightOnlyConfig

DEFAULT_FORMATS = "fp32,fp8-e4m3,fp8-e5m2,int8"
KNOWN_FORMATS = ("fp32", "fp8-e4m3", "fp8-e5m2", "int8", "mxfp8-e4m3", "mxfp4", "int4")
OBSERVERS = ("max", "percentile", "mse")
INT8_OPTIONS = ("w7", "a7", "exact")  # PTQConfig.int8_kernel
GPTQ_OPTIONS = ("gptq", "gptq-seq", "gptq-asym")  # PTQConfig.weight_rounding (at most one)
# FP8 and INT8 entries: a GPTQ variant, "ao" (gptq_act_order=True) and "bc" (bias_correction=True)
RECIPE_OPTIONS = (*GPTQ_OPTIONS, "ao", "bc")


@dataclass(frozen=True)
class FormatEntry:
    """One ``--formats`` entry: ``NAME[/WEIGHT_GRAN[/ACT_GRAN]][@OBSERVER][+OPTION...]``, e.g.
    ``int8/channel/token`` or ``int8+exact``."""

    label: str
    name: str
    weight_granularity: str
    activation_granularity: str
    observer: str
    options: tuple[str, ...] = ()


def parse_formats(text: str, args: argparse.Namespace) -> list[FormatEntry]:
    """``"fp32, int8@mse, int8/channel/token"`` -> entries; defaults come from --granularity,
    --act-granularity and --observer. Unknown names, granularities or observers and repeated entries
    raise ``ValueError``.
    """
    labels = [f.strip().lower() for f in text.split(",") if f.strip()]
    if not labels:
        raise ValueError("--formats is empty; e.g. --formats fp32,fp8-e4m3,int8")
    if len(set(labels)) != len(labels):
        raise ValueError(f"--formats repeats an entry: {labels}")
    entries = []
    for label in labels:
        main, *options = label.split("+")
        body, _, observer = main.partition("@")
        name, *grans = body.split("/")
        if name not in KNOWN_FORMATS:
            raise ValueError(f"unknown format {name!r} in {label!r}; known: {', '.join(KNOWN_FORMATS)}")
        if len(grans) > 2:
            raise ValueError(f"{label!r}: use NAME[/WEIGHT_GRAN[/ACT_GRAN]][@OBSERVER]")
        w_gran = grans[0] if grans else args.granularity
        a_gran = grans[1] if len(grans) > 1 else args.act_granularity
        if w_gran not in ("tensor", "channel") or a_gran not in ("tensor", "token"):
            raise ValueError(
                f"{label!r}: weight granularity tensor|channel, activation granularity tensor|token"
            )
        observer = observer or args.observer
        if observer not in OBSERVERS:
            raise ValueError(f"{label!r}: observer must be one of {OBSERVERS}")
        allowed = (INT8_OPTIONS if name == "int8" else ()) + (
            RECIPE_OPTIONS if name in ("int8", "fp8-e4m3", "fp8-e5m2") else ()
        )
        bad = [o for o in options if o not in allowed]
        n_gptq = sum(o in GPTQ_OPTIONS for o in options)
        if (
            bad
            or len(set(options)) != len(options)
            or sum(o in INT8_OPTIONS for o in options) > 1
            or n_gptq > 1
            or ("ao" in options and not n_gptq)
        ):
            raise ValueError(
                f"{label!r}: options {options} not valid for {name}; fp8/int8 take one of "
                f"{', '.join('+' + o for o in GPTQ_OPTIONS)} (+ao: act-order, needs one of them) and +bc, "
                f"int8 also one of {', '.join('+' + o for o in INT8_OPTIONS)}"
            )
        entries.append(FormatEntry(label, name, w_gran, a_gran, observer, tuple(options)))
    return entries


def config_for(entry: FormatEntry, args: argparse.Namespace) -> PTQConfig | WeightOnlyConfig:
    """The PTQ recipe a ``--formats`` entry stands for."""
    if entry.name == "int4":
        return WeightOnlyConfig("int4", "group", group_size=32)
    if entry.name.startswith("mx"):
        return PTQConfig(entry.name, entry.name)
    observer = (
        ObserverSpec("percentile", args.percentile) if entry.observer == "percentile" else entry.observer
    )
    int8_kernel = next((o for o in entry.options if o in INT8_OPTIONS), "auto")
    return PTQConfig(
        entry.name,
        entry.name,
        weight_granularity=entry.weight_granularity,
        activation_granularity=entry.activation_granularity,
        fp8_compute=args.fp8_compute,
        observer=observer,
        int8_kernel=int8_kernel,
        weight_rounding=next((o for o in entry.options if o in GPTQ_OPTIONS), "nearest"),
        gptq_act_order="ao" in entry.options,
        bias_correction="bc" in entry.options,
    )
