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

Usage: ``python benchmarks/train_step.py [--tokens 4096] [--hidden 768] [--ffn 3072] [--layers 2]
[--recipe int4] [--repeats 5] [--threads 2] [--clock wall|cpu] [--json FILE]``; results also go to
``results/train_step.json`` and the table to ``results/train_step.md``.
"""

from __future__ import annotations

import argparse
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
from lowbit.experiments.runtime import keep_freed_memory
from lowbit.models.layers import Block
from lowbit.training import QuantLinear, convert
from lowbit.training._kernels import native_reason

RESULTS_DIR = Path(__file__).resolve().parents[1] / "results"


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


def _train_step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        opt.zero_grad(set_to_none=True)
        model(x).pow(2).mean().backward()
        opt.step()

    return step


def _linear_fb(layer: nn.Module, x: torch.Tensor, grad_y: torch.Tensor) -> Callable[[], None]:
    def run() -> None:
        layer.zero_grad(set_to_none=True)
        xr = x.detach().requires_grad_()
        layer(xr).backward(grad_y)

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


def measure(args: argparse.Namespace) -> dict:
    """All measurements as one JSON-ready dict."""
    malloc = "glibc default (large freed buffers unmapped)"
    if not args.system_malloc and keep_freed_memory():
        malloc = "freed memory kept for reuse (lowbit.experiments.runtime.keep_freed_memory)"
    load_before = os.getloadavg()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    seq = 512
    batch = max(1, args.tokens // seq)
    x_model = torch.randn(batch, seq, args.hidden)
    fp32 = _stack(args.hidden, args.ffn, args.layers, args.heads)
    q_model = copy.deepcopy(fp32)
    summary = convert(q_model, args.recipe, keep_head=False)
    steps = {
        "fp32": _train_step(fp32, torch.optim.AdamW(fp32.parameters(), lr=1e-4), x_model),
        args.recipe: _train_step(q_model, torch.optim.AdamW(q_model.parameters(), lr=1e-4), x_model),
    }
    step_t = _median_seconds(steps, args.repeats, args.clock)

    lin = nn.Linear(args.hidden, args.ffn)
    qlin = QuantLinear.from_linear(copy.deepcopy(lin), args.recipe)
    x = torch.randn(args.tokens, args.hidden)
    grad_y = torch.randn(args.tokens, args.ffn)
    layer_fns = {"nn.Linear": _linear_fb(lin, x, grad_y), "QuantLinear": _linear_fb(qlin, x, grad_y)}
    layer_t = _median_seconds(layer_fns, args.repeats, args.clock)
    profile = _profile(layer_fns["QuantLinear"])
    return {
        "recipe": args.recipe,
        "tokens": args.tokens,
        "hidden": args.hidden,
        "ffn": args.ffn,
        "layers": args.layers,
        "threads": args.threads,
        "repeats": args.repeats,
        "clock": args.clock,
        "engine": lowbit.ops.backend(),
        "training_kernels": native_reason() or "native",
        "converted": str(summary).splitlines()[0],
        "train_step_s": step_t,
        "train_step_speedup": step_t["fp32"] / step_t[args.recipe],
        "linear_fwd_bwd_s": layer_t,
        "linear_speedup": layer_t["nn.Linear"] / layer_t["QuantLinear"],
        "quantlinear_profile": profile,
        "load_avg_1_5_15": {"before": list(load_before), "after": list(os.getloadavg())},
        "malloc": malloc,
        "torch": torch.__version__,
        "targets": {"train_step_speedup": 1.5, "linear_speedup": 2.0},
    }


def _table(r: dict) -> str:
    s, lt, load = r["train_step_s"], r["linear_fwd_bwd_s"], r["load_avg_1_5_15"]
    lines = [
        f"engine: {r['engine']}; training kernels: {r['training_kernels']}; threads {r['threads']}; "
        f"{r['clock']} clock, medians of {r['repeats']}; "
        f"load avg (1 min) before {load['before'][0]:.2f}, after {load['after'][0]:.2f}; "
        f"malloc: {r.get('malloc', 'glibc default')}",
        f"{r['converted']}",
        "",
        "| measurement | fp32 (s) | " + r["recipe"] + " (s) | speed-up | target |",
        "|---|---|---|---|---|",
        f"| train step, {r['layers']} blocks, {r['tokens']} tokens, hidden {r['hidden']}/ffn {r['ffn']} | "
        f"{s['fp32']:.3f} | {s[r['recipe']]:.3f} | {r['train_step_speedup']:.2f}x | >= 1.5x |",
        f"| Linear {r['tokens']}x{r['hidden']}->{r['ffn']} fwd+bwd | {lt['nn.Linear']:.3f} | "
        f"{lt['QuantLinear']:.3f} | {r['linear_speedup']:.2f}x | >= 2.0x |",
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
    p.add_argument("--no-results-file", action="store_true", help="do not write results/train_step.{md,json}")


def run(args: argparse.Namespace) -> int:
    """Measure, print the table, write the JSON (and results/train_step.* unless --no-results-file)."""
    result = measure(args)
    table = _table(result)
    print(table)  # noqa: T201 - the benchmark's report
    paths = [args.json] if args.json else []
    if not args.no_results_file:
        RESULTS_DIR.mkdir(exist_ok=True)
        (RESULTS_DIR / "train_step.md").write_text("```\n" + table + "\n```\n")
        paths.append(RESULTS_DIR / "train_step.json")
    for path in paths:
        path.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    cli = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(cli)
    raise SystemExit(run(cli.parse_args()))
