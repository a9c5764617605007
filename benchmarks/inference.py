"""Integer-only inference vs FP32 vs torch dynamic INT8 (``quantize_dynamic``) on the Integer-Transformer GPT.

One process: trains (or loads ``--checkpoint``) the FP32 GPT exactly as ``lowbit infer`` does, converts it to
lowbit's integer-only graph and to ``torch.ao.quantization.quantize_dynamic`` (int8 ``nn.Linear``s, the path
a user would pick instead), then times one forward of a batch × sequence = ``--tokens`` (default 4096) batch,
the three variants interleaved round-robin so that load from other jobs hits each alike, and reports the
held-out loss of each. Prints a table with speed ratios; ``--json FILE`` writes the figures (and
``--results FILE``, default benchmarks/results/inference.json, keeps the last run).

Run ``python benchmarks/inference.py [--train-steps 300] [--reps 5] [--threads 1]`` or
``lowbit bench inference ...``.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from pathlib import Path

import torch

from lowbit.experiments import infer

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The benchmark's flags (plus the model/training flags of ``lowbit infer``)."""
    infer.add_arguments(parser)
    parser.add_argument("--tokens", type=int, default=4096, help="batch x sequence tokens per forward")
    parser.add_argument("--reps", type=int, default=5, help="timed repetitions per variant")
    parser.add_argument("--results", default=str(Path(__file__).parent / "results" / "inference.json"))
    parser.add_argument("--profile", action="store_true", help="print where the integer forward spends time")


def measure(variants: dict[str, object], x: torch.Tensor, reps: int) -> dict[str, float]:
    """Median ms of one forward per variant, interleaved round-robin after a warm-up."""
    with torch.no_grad():
        for fn in variants.values():
            fn(x)
        times: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(reps):
            for name, fn in variants.items():
                t0 = time.perf_counter()
                fn(x)
                times[name].append((time.perf_counter() - t0) * 1e3)
    return {name: statistics.median(ts) for name, ts in times.items()}


def run(args: argparse.Namespace) -> int:
    """Train/load, convert, time and evaluate the three variants; print the table."""
    from lowbit.integer import ConvertConfig, convert, integer_lm_loss
    from lowbit.models.gpt import evaluate_lm_loss

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.tokens % args.seq_len:
        raise ValueError(f"--tokens {args.tokens} must be a multiple of --seq-len {args.seq_len}")
    model, _, train, val = infer.prepare_gpt(args)
    im = convert(
        model,
        infer.calibration(train, args),
        ConvertConfig(act_qmax=args.act_qmax, weight_qmax=args.weight_qmax),
    )
    dyn = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
    batches = infer.held_out(val, args)
    from lowbit.data.text import sequential_batches

    x = next(iter(sequential_batches(val, args.seq_len, args.tokens // args.seq_len, 1)))[0]  # (B, T)
    variants = {"fp32": lambda t: model(t), "torch-dynamic-int8": lambda t: dyn(t), "lowbit-integer": im}
    ms = measure(variants, x, args.reps)
    with torch.no_grad():
        losses = {
            "fp32": evaluate_lm_loss(model, batches),
            "torch-dynamic-int8": evaluate_lm_loss(dyn, batches),
            "lowbit-integer": integer_lm_loss(im, batches),
        }
    fp32_bytes = sum(p.numel() * 4 for p in model.parameters())
    result = {
        "tokens": x.numel(),
        "shape": list(x.shape),
        "threads": torch.get_num_threads(),
        "model": {"layers": args.layers, "dim": args.dim, "heads": args.heads, "seq_len": args.seq_len},
        "ms": ms,
        "held_out_loss": losses,
        "speedup_vs_fp32": {k: ms["fp32"] / v for k, v in ms.items()},
        "integer_vs_dynamic": ms["torch-dynamic-int8"] / ms["lowbit-integer"],
        "weight_bytes": {"fp32": fp32_bytes, "lowbit-integer": im.weight_bytes()},
    }
    print(
        f"torch {torch.__version__}, {result['threads']} threads, batch x seq = {x.shape[0]} x {x.shape[1]}"
    )
    print(f"{'variant':<22}{'ms/forward':>12}{'vs fp32':>10}{'held-out loss':>16}")
    for name in variants:
        print(f"{name:<22}{ms[name]:>12.1f}{ms['fp32'] / ms[name]:>9.2f}x{losses[name]:>16.4f}")
    print(f"lowbit-integer vs torch-dynamic-int8: {result['integer_vs_dynamic']:.2f}x")
    if args.profile:
        import cProfile
        import pstats

        prof = cProfile.Profile()
        prof.enable()
        im(x)
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(10)
    text = json.dumps(result, indent=2) + "\n"
    for path in filter(None, (args.json, args.results)):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text)
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(p)
    raise SystemExit(run(p.parse_args()))
