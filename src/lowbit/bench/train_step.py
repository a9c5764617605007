"""One full training step (forward, backward, AdamW) of an FP32 Transformer stack vs its INT4 conversion.

Also a ``QuantLinear`` alone vs ``nn.Linear`` forward+backward on 4096x768 -> 3072, and where the INT4
layer's time goes (torch.profiler, per op). Both sides run in the same process, alternating, on the same
threads; the table reports medians and the FP32/INT4 time ratio (> 1: INT4 faster).

What one step is, on both sides: ``opt.zero_grad(set_to_none=True)``; forward of ``--layers`` pre-norm
blocks (``lowbit.models.layers.Block``: LayerNorm, softmax self-attention with separate q/k/v/out projections
and materialised (B, H, T, T) scores, T = 512, LayerNorm, GELU MLP); loss ``mean(y²)``; backward;
``AdamW.step()``.
The INT4 model is a deep copy of the FP32 one converted with ``lowbit.convert(recipe, keep_head=False)``
(the stack has no head: every ``nn.Linear``, 6 per block, becomes a ``QuantLinear``); everything else —
attention, LayerNorm, GELU, residuals, loss, optimizer — is the same code on both sides and counts on both
sides, so the step ratio is diluted by it. Same input, same initial weights, same thread count
(``torch.set_num_threads``), one warm-up call each, then ``--repeats`` alternating calls; medians.
The load average (``os.getloadavg``) before and after is recorded: the machine is shared, compare the
ratios of one run rather than absolute times across runs. ``--clock cpu --threads 1`` measures process CPU
time instead of elapsed time: on a loaded machine that removes most of the waiting for a core (2-thread
OpenMP regions wait for both threads to be scheduled), but it is not the target's measure.

Usage: ``python -m lowbit.bench.train_step [--tokens 4096] [--hidden 768] [--ffn 3072] [--layers 2]
[--recipe int4] [--repeats 5] [--threads 2] [--clock wall|cpu] [--json FILE]``; results also go to
``results/train_step/<cpu>.json`` and the table to ``results/train_step/<cpu>.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

import lowbit.ops
from lowbit.bench import RESULTS_DIR
from lowbit.experiments.runtime import keep_freed_memory
from lowbit.files import atomic_write_text
from lowbit.models.layers import Block
from lowbit.ops import backends
from lowbit.training import QuantLinear
from lowbit.training._kernels import native_reason

CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def _median_seconds(fns: dict[str, Callable[[], None]], repeats: int, clock: str) -> dict[str, float]:
    """Median time of each function; one warm-up call each, then the functions alternate."""
    now = CLOCKS[clock]
    times: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():
        fn()
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = now()
            fn()
            times[name].append(now() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def _stack(hidden: int, ffn: int, layers: int, heads: int) -> nn.Module:
    return nn.Sequential(*[Block(hidden, heads, ffn) for _ in range(layers)])


def _autocast(bf16: bool):
    """``torch.autocast("cpu", bfloat16)`` for the bf16 variant (what a user of a BF16-capable CPU picks)."""
    return torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def _train_step(
    model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, bf16: bool = False
) -> Callable[[], None]:
    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with _autocast(bf16):
            loss = model(x).float().pow(2).mean()
        loss.backward()
        opt.step()

    return step


def _linear_fb(
    layer: nn.Module, x: torch.Tensor, grad_y: torch.Tensor, bf16: bool = False
) -> Callable[[], None]:
    def run() -> None:
        layer.zero_grad(set_to_none=True)
        xr = x.detach().requires_grad_()
        with _autocast(bf16):
            y = layer(xr)
        y.backward(grad_y.to(y.dtype))

    return run


def _profile(fn: Callable[[], None], top: int = 10) -> list[dict[str, float | str]]:
    from torch.profiler import profile

    with profile() as prof:
        fn()
    rows = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in rows) or 1.0
    return [
        {"op": e.key, "ms": e.self_cpu_time_total / 1e3, "share": e.self_cpu_time_total / total}
        for e in rows[:top]
    ]


def _time_train_steps(args: argparse.Namespace) -> tuple[dict[str, float], object]:
    """Median seconds of one training step of the FP32, bf16-autocast and converted stacks (seeded, same
    input and initial weights); and the conversion summary."""
    torch.manual_seed(0)
    seq = 512
    batch = max(1, args.tokens // seq)
    x_model = torch.randn(batch, seq, args.hidden)
    fp32 = _stack(args.hidden, args.ffn, args.layers, args.heads)
    q_model = copy.deepcopy(fp32)
    summary = lowbit.convert(q_model, args.recipe, keep_head=False)
    bf16_model = copy.deepcopy(fp32)
    steps = {
        "fp32": _train_step(fp32, torch.optim.AdamW(fp32.parameters(), lr=1e-4), x_model),
        "bf16-autocast": _train_step(
            bf16_model, torch.optim.AdamW(bf16_model.parameters(), lr=1e-4), x_model, True
        ),
        args.recipe: _train_step(q_model, torch.optim.AdamW(q_model.parameters(), lr=1e-4), x_model),
    }
    step_t = _median_seconds(steps, args.repeats, args.clock)
    return step_t, summary


def _time_linear(args: argparse.Namespace) -> tuple[dict[str, float], list[dict[str, float | str]]]:
    """Median seconds of one forward+backward of ``nn.Linear`` (FP32, bf16 autocast) and ``QuantLinear``;
    and the profile of the ``QuantLinear`` one."""
    lin = nn.Linear(args.hidden, args.ffn)
    qlin = QuantLinear.from_linear(copy.deepcopy(lin), args.recipe)
    x = torch.randn(args.tokens, args.hidden)
    grad_y = torch.randn(args.tokens, args.ffn)
    layer_fns = {
        "nn.Linear": _linear_fb(lin, x, grad_y),
        "nn.Linear bf16-autocast": _linear_fb(lin, x, grad_y, bf16=True),
        "QuantLinear": _linear_fb(qlin, x, grad_y),
    }
    layer_t = _median_seconds(layer_fns, args.repeats, args.clock)
    profile = _profile(layer_fns["QuantLinear"])
    return layer_t, profile


def measure(args: argparse.Namespace) -> dict:
    """All measurements as one JSON-ready dict."""
    malloc = "glibc default (large freed buffers unmapped)"
    if not args.system_malloc and keep_freed_memory():
        malloc = "freed memory kept for reuse (lowbit.experiments.runtime.keep_freed_memory)"
    load_before = os.getloadavg()
    torch.set_num_threads(args.threads)
    step_t, summary = _time_train_steps(args)
    layer_t, profile = _time_linear(args)
    return {
        "recipe": args.recipe,
        "tokens": args.tokens,
        "hidden": args.hidden,
        "ffn": args.ffn,
        "layers": args.layers,
        "threads": args.threads,
        "repeats": args.repeats,
        "clock": args.clock,
        "engine": str(lowbit.ops.backend()),
        "backend": lowbit.ops.backend().chosen,
        "cpu": backends.cpu_summary(),
        "training_kernels": native_reason() or "native",
        "converted": str(summary).splitlines()[0],
        "train_step_s": step_t,
        "train_step_speedup": step_t["fp32"] / step_t[args.recipe],
        "linear_fwd_bwd_s": layer_t,
        "linear_speedup": layer_t["nn.Linear"] / layer_t["QuantLinear"],
        "train_step_speedup_vs_bf16": step_t["bf16-autocast"] / step_t[args.recipe],
        "linear_speedup_vs_bf16": layer_t["nn.Linear bf16-autocast"] / layer_t["QuantLinear"],
        "records": _records(step_t, layer_t, args.recipe),
        "quantlinear_profile": profile,
        "load_avg_1_5_15": {"before": list(load_before), "after": list(os.getloadavg())},
        "malloc": malloc,
        "torch": torch.__version__,
        "targets": {"train_step_speedup": 1.5, "linear_speedup": 2.0},
    }


def _records(step_t: dict, layer_t: dict, recipe: str) -> list[dict]:
    """Flat records: measurement (train-step / linear), variant (fp32 / bf16-autocast / recipe), backend,
    seconds."""
    backend = lowbit.ops.backend().chosen
    out = [
        {
            "measurement": "train-step",
            "variant": v,
            "backend": backend if v == recipe else "torch",
            "seconds": t,
        }
        for v, t in step_t.items()
    ]
    names = {"nn.Linear": "fp32", "nn.Linear bf16-autocast": "bf16-autocast", "QuantLinear": recipe}
    out += [
        {
            "measurement": "linear",
            "variant": names[k],
            "backend": backend if k == "QuantLinear" else "torch",
            "seconds": t,
        }
        for k, t in layer_t.items()
    ]
    return out


def _table(r: dict) -> str:
    s, lt, load = r["train_step_s"], r["linear_fwd_bwd_s"], r["load_avg_1_5_15"]
    lines = [
        f"engine: {r['engine']}; training kernels: {r['training_kernels']}; threads {r['threads']}; "
        f"{r['clock']} clock, medians of {r['repeats']}; "
        f"load avg (1 min) before {load['before'][0]:.2f}, after {load['after'][0]:.2f}; "
        f"malloc: {r.get('malloc', 'glibc default')}",
        f"{r['converted']}",
        "",
        f"CPU: {r['cpu']}",
        "",
        "| measurement | fp32 (s) | bf16 autocast (s) | " + r["recipe"] + " (s) | vs fp32 | vs bf16 |",
        "|---|---|---|---|---|---|",
        f"| train step, {r['layers']} blocks, {r['tokens']} tokens, hidden {r['hidden']}/ffn {r['ffn']} | "
        f"{s['fp32']:.3f} | {s['bf16-autocast']:.3f} | {s[r['recipe']]:.3f} | "
        f"{r['train_step_speedup']:.2f}x | "
        f"{r['train_step_speedup_vs_bf16']:.2f}x |",
        f"| Linear {r['tokens']}x{r['hidden']}->{r['ffn']} fwd+bwd | {lt['nn.Linear']:.3f} | "
        f"{lt['nn.Linear bf16-autocast']:.3f} | {lt['QuantLinear']:.3f} | {r['linear_speedup']:.2f}x | "
        f"{r['linear_speedup_vs_bf16']:.2f}x |",
        "",
        "QuantLinear fwd+bwd, self CPU time by op:",
    ]
    lines += [
        f"  {p['op']:<40} {p['ms']:9.1f} ms  {100 * p['share']:5.1f}%" for p in r["quantlinear_profile"]
    ]
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tokens", type=int, default=4096)
    p.add_argument("--hidden", type=int, default=768)
    p.add_argument("--ffn", type=int, default=3072)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--recipe", default="int4")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--clock",
        choices=sorted(CLOCKS),
        default="wall",
        help="wall: elapsed time (the target's measure); cpu: this process's CPU time, which with "
        "--threads 1 is far less disturbed by other jobs on a shared machine",
    )
    p.add_argument(
        "--system-malloc",
        action="store_true",
        help="leave glibc's malloc at its defaults (large freed buffers are unmapped, so both sides pay page "
        "faults every step); by default both sides keep freed memory for reuse",
    )
    p.add_argument("--json", type=Path, help="also write the results to this file")
    p.add_argument(
        "--no-results-file", action="store_true", help="do not write results/train_step/<cpu>.{md,json}"
    )


def run(args: argparse.Namespace) -> int:
    """Measure, print the table, write the JSON (and results/train_step/<cpu>.* unless --no-results-file)."""
    result = measure(args)
    table = _table(result)
    print(table)  # the benchmark's report
    paths = [args.json] if args.json else []
    if not args.no_results_file:
        out_dir = RESULTS_DIR / "train_step"  # one file pair per CPU
        atomic_write_text(out_dir / f"{backends.cpu_slug()}.md", "```\n" + table + "\n```\n")
        paths.append(out_dir / f"{backends.cpu_slug()}.json")
    for path in paths:
        atomic_write_text(path, json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    cli = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(cli)
    raise SystemExit(run(cli.parse_args()))
