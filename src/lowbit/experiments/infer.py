"""``lowbit infer``: integer-only inference — the Integer-Transformer GPT (or MiniLM) converted to integers.

``--task gpt-shakespeare``: train (or load ``--checkpoint``) the FP32 Integer-Transformer GPT (poly attention,
L1 LayerNorm, ReLU), convert it with ``lowbit.convert(model, IntegerConfig(...), batches)``, verify by
instrumentation that every intermediate tensor is an integer, generate a sample from the integer graph and
report held-out loss, weight bytes and latency of both. ``--task minilm-rt``: all-MiniLM-L6-v2 converted
integer-only (i-GELU, i-softmax, integer LayerNorm); embedding cosine vs FP32, Rotten Tomatoes accuracy of a
head trained on FP32 embeddings.
``--json FILE`` writes the figures. The sample's prompt is ``--prompt`` or the first line of the held-out
text (never a fixed string: any ``--data`` file works). Every flag, output path and the ``--checkpoint`` file
(SHA-256 verified, like training checkpoints) are checked before training starts.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from lowbit.experiments.checkpoint import CheckpointError, atomic_torch_save_verified, load_verified
from lowbit.experiments.guard import UserError, check_output_file
from lowbit.files import atomic_write_text

logger = logging.getLogger(__name__)

INFER_TASKS = ("gpt-shakespeare", "minilm-rt")
#: The ``--checkpoint`` file's format tag (older files hold a bare state dict and still load).
INFER_CHECKPOINT_FORMAT = "lowbit-infer-gpt"
#: The default prompt: the held-out text's first line, at most this many characters.
PROMPT_CHARS = 32


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``lowbit infer`` flags."""
    parser.add_argument("--task", default="gpt-shakespeare", choices=INFER_TASKS)
    parser.add_argument("--data", default=None, help="a UTF-8 text file instead of the bundled Shakespeare")
    parser.add_argument("--train-steps", type=int, default=300, help="FP32 training steps (default 300)")
    parser.add_argument(
        "--checkpoint", default=None, help="load the FP32 GPT from here if it exists, else save"
    )
    parser.add_argument(
        "--integer", action="store_true", help="run the integer-only graph (the point; default)"
    )
    parser.add_argument("--json", default=None, help="write the figures as JSON to this file")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--eval-batches", type=int, default=8, help="held-out batches of batch x seq tokens")
    parser.add_argument("--calib-batches", type=int, default=4)
    parser.add_argument("--act-qmax", type=int, default=127, help="activation code range (63: 7-bit, faster)")
    parser.add_argument(
        "--weight-qmax",
        type=int,
        default=64,
        help="GPT weight code range: 64 (default; 7-bit codes, the fused u8 x s8 GEMM path) or up to 127 "
        "(8-bit, the exact int16 path); MiniLM always uses 127",
    )
    parser.add_argument("--sample-tokens", type=int, default=200)
    parser.add_argument(
        "--prompt",
        default=None,
        help="start of the generated sample (default: the first line of the held-out text); its characters "
        "must occur in the data",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--max-texts", type=int, default=1000, help="minilm-rt: texts per split")


def time_call(fn: Callable[[], object], reps: int = 3) -> float:
    """Median wall time of ``fn()`` in milliseconds over ``reps`` runs after one warm-up."""
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def check_args(args: argparse.Namespace) -> None:
    """UserError for a flag value no run could use (before any data is read)."""
    positive = ("layers", "dim", "heads", "seq_len", "batch_size", "eval_batches", "calib_batches")
    for name in (*positive, *(("threads",) if args.threads is not None else ()), "max_texts"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    for name in ("train_steps", "sample_tokens"):
        if getattr(args, name) < 0:
            raise UserError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    if not 0 < args.lr < float("inf"):
        raise UserError(f"--lr must be a finite number > 0, got {args.lr}")
    if args.dim % args.heads:
        raise UserError(f"--dim ({args.dim}) must be divisible by --heads ({args.heads})")
    for name in ("act_qmax", "weight_qmax"):
        if not 1 <= getattr(args, name) <= 127:
            raise UserError(
                f"--{name.replace('_', '-')} must be in [1, 127] (int8 codes), got {getattr(args, name)}"
            )
    if args.prompt is not None and not args.prompt:
        raise UserError("--prompt is empty; pass at least one character (or leave it out)")
    if args.json:
        check_output_file(args.json, "--json")
    if args.checkpoint and not Path(args.checkpoint).exists():
        check_output_file(args.checkpoint, "--checkpoint")  # it will be written after training


def sample_prompt(held_out_text: str, prompt: str | None = None) -> str:
    """``prompt`` when given, else the first line of the held-out text (at most ``PROMPT_CHARS``
    characters, with its newline when it fits)."""
    if prompt is not None:
        return prompt
    line = held_out_text.split("\n", 1)[0]
    if line and len(line) < PROMPT_CHARS and len(line) < len(held_out_text):
        return line + "\n"
    return (line or held_out_text)[:PROMPT_CHARS]


def _load_checkpoint(path: Path, model: torch.nn.Module, vocab: str) -> None:
    """Load the FP32 GPT from ``path`` (digest verified; bare state dicts too); UserError if unusable."""
    try:
        payload, _ = load_verified(path, "GPT checkpoint")
    except CheckpointError as err:
        raise UserError(f"--checkpoint: {err}") from None
    if isinstance(payload, dict) and payload.get("format") == INFER_CHECKPOINT_FORMAT:
        state = payload.get("model")
        if payload.get("vocab") != vocab:
            raise UserError(
                f"--checkpoint {path} was trained on text with another character set "
                f"({len(payload.get('vocab') or '')} characters, this --data has {len(vocab)}); pass the "
                "--data it was trained on, or a new "
                "--checkpoint path"
            )
    elif isinstance(payload, dict) and payload.get("format") is not None:
        raise UserError(
            f"--checkpoint {path} is a {payload.get('format')!r} file, not a lowbit infer GPT checkpoint; "
            "pass a file written by lowbit infer --checkpoint (or a new path to train and save one)"
        )
    else:
        state = payload
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"--checkpoint {path} holds no model weights; pass a file written by lowbit infer")
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        lines = [ln.strip() for ln in str(err).splitlines()[1:] if ln.strip()]
        detail = lines[0] if lines else str(err)[:200]
        raise UserError(
            f"--checkpoint {path} holds a GPT of other sizes or another vocabulary ({detail}); pass the "
            "--data/--layers/--dim/--heads/--seq-len it was trained with, or a new --checkpoint path"
        ) from None


def prepare_gpt(args: argparse.Namespace) -> tuple[torch.nn.Module, object, torch.Tensor, torch.Tensor]:
    """(FP32 Integer-Transformer GPT, tokenizer, train tokens, held-out tokens), trained or loaded."""
    from lowbit.data import CharTokenizer, load_shakespeare, load_text_file
    from lowbit.models.gpt import GPT, GPTConfig

    try:
        splits = load_text_file(args.data) if args.data else load_shakespeare()
    except (ValueError, FileNotFoundError) as err:
        raise UserError(f"--data: {err}") from None
    for part, text in (("training", splits.train), ("held-out", splits.val)):
        if len(text) <= args.seq_len:
            raise UserError(
                f"--seq-len {args.seq_len} is longer than the {part} text of {splits.name} ({len(text)} "
                f"characters); pass --seq-len below {len(text)} or a longer --data file"
            )
    tok = CharTokenizer.from_text(splits.train, splits.val)
    train, val = tok.encode(splits.train), tok.encode(splits.val)
    prompt = sample_prompt(splits.val, args.prompt)
    unknown = sorted(set(prompt) - set(tok.chars))
    if unknown:
        raise UserError(
            f"--prompt holds characters that never occur in {splits.name}: {''.join(unknown)[:20]!r}; use "
            "characters of the data"
        )
    args.prompt_text = prompt
    torch.manual_seed(args.seed)
    cfg = GPTConfig.integer_transformer(
        tok.vocab_size, block_size=args.seq_len, n_layer=args.layers, n_head=args.heads, n_embd=args.dim
    )
    model = GPT(cfg)
    ckpt = Path(args.checkpoint) if args.checkpoint else None
    if ckpt is not None and ckpt.exists():
        _load_checkpoint(ckpt, model, "".join(tok.chars))
        logger.info("loaded the FP32 GPT from %s", ckpt)
    else:
        train_gpt(model, train, args)
        if ckpt is not None:
            payload = {
                "format": INFER_CHECKPOINT_FORMAT,
                "vocab": "".join(tok.chars),
                "model": model.state_dict(),
            }
            atomic_torch_save_verified(payload, ckpt)
    return model.eval(), tok, train, val


def train_gpt(model: torch.nn.Module, tokens: torch.Tensor, args: argparse.Namespace) -> None:
    """A short AdamW loop (linear warm-up, cosine decay) on random windows."""
    from lowbit.data.text import random_batch

    gen = torch.Generator().manual_seed(args.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    warmup = max(1, args.train_steps // 10)
    model.train()
    t0 = time.perf_counter()
    for step in range(args.train_steps):
        frac = min(1.0, (step + 1) / warmup)
        decay = 0.5 * (1 + math.cos(math.pi * step / max(1, args.train_steps)))
        for group in opt.param_groups:
            group["lr"] = args.lr * frac * (0.1 + 0.9 * decay)
        x, y = random_batch(tokens, args.seq_len, args.batch_size, gen)
        _, loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 50 == 0 or step == args.train_steps - 1:
            logger.info("step %d loss %.4f (%.0f s)", step, loss.item(), time.perf_counter() - t0)
    model.eval()


def held_out(val: torch.Tensor, args: argparse.Namespace) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The first ``--eval-batches`` consecutive held-out batches."""
    from lowbit.data.text import sequential_batches

    return list(sequential_batches(val, args.seq_len, args.batch_size, args.eval_batches))


def calibration(train: torch.Tensor, args: argparse.Namespace) -> list[torch.Tensor]:
    """Calibration inputs: random training windows (never the held-out text)."""
    from lowbit.data.text import random_batch

    gen = torch.Generator().manual_seed(args.seed + 1)
    return [random_batch(train, args.seq_len, args.batch_size, gen)[0] for _ in range(args.calib_batches)]


def generate_integer(im: object, tok: object, prompt: str, n: int, block: int, seed: int) -> str:
    """Sample ``n`` characters from the integer graph (sampling from its dequantized last-position logits)."""
    gen = torch.Generator().manual_seed(seed)
    idx = tok.encode(prompt).view(1, -1)
    for _ in range(n):
        logits = im(idx[:, -block:])[:, -1, :]  # (1, V)
        nxt = torch.multinomial(torch.softmax(logits / 0.8, -1), 1, generator=gen)
        idx = torch.cat([idx, nxt], dim=1)
    return tok.decode(idx[0])


def run_gpt(args: argparse.Namespace) -> dict[str, object]:
    """The gpt-shakespeare figures."""
    import lowbit
    from lowbit.integer import DtypeTrace, IntegerConfig, integer_lm_loss
    from lowbit.models.gpt import evaluate_lm_loss

    model, tok, train, val = prepare_gpt(args)
    batches = held_out(val, args)
    calib = calibration(train, args)
    config = IntegerConfig(act_qmax=args.act_qmax, weight_qmax=args.weight_qmax)
    im = lowbit.convert(model, config, calib).model  # a new IntegerGPT; the FP32 model is left as it was
    trace = DtypeTrace()
    im(batches[0][0][:2], trace)
    verified = bool(trace.records) and not trace.non_integer()
    logger.info("dtype trace: %d intermediate tensors, dtypes %s", len(trace.records),
                sorted({str(r[1]) for r in trace.records}))  # fmt: skip
    with torch.no_grad():
        fp32_loss = evaluate_lm_loss(model, batches)
        int_loss = integer_lm_loss(im, batches)
        x = batches[0][0]
        fp32_ms = time_call(lambda: model(x))
        int_ms = time_call(lambda: im(x))
    prompt = getattr(args, "prompt_text", None) or sample_prompt(
        tok.decode(val[: 4 * PROMPT_CHARS]), args.prompt
    )
    sample = generate_integer(im, tok, prompt, args.sample_tokens, args.seq_len, args.seed)
    return {
        "task": "gpt-shakespeare",
        "fp32_eval_loss": fp32_loss,
        "integer_eval_loss": int_loss,
        "loss_rel_diff": (int_loss - fp32_loss) / fp32_loss,
        "fp32_weight_bytes": sum(p.numel() * p.element_size() for p in model.parameters()),
        "integer_weight_bytes": im.weight_bytes(),
        "integer_only_verified": verified,
        "traced_tensors": len(trace.records),
        "fp32_ms": fp32_ms,
        "integer_ms": int_ms,
        "latency_tokens": x.numel(),
        "threads": torch.get_num_threads(),
        "sample": sample,
    }


def run(args: argparse.Namespace) -> int:
    """Entry point of ``lowbit infer``; prints a summary, writes ``--json``; 0 on success."""
    check_args(args)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if not args.integer:
        logger.info(
            "--integer not given: running the integer-only graph anyway (it is what this command does)"
        )
    if args.task == "gpt-shakespeare":
        result = run_gpt(args)
        print(f"sample (integer graph):\n{result['sample']}\n")
        print(f"held-out loss  fp32 {result['fp32_eval_loss']:.4f}  integer {result['integer_eval_loss']:.4f}"
              f"  ({100 * result['loss_rel_diff']:+.2f}%)")  # fmt: skip
        print(f"weight bytes   fp32 {result['fp32_weight_bytes']}  integer {result['integer_weight_bytes']}"
              f"  ({result['integer_weight_bytes'] / result['fp32_weight_bytes']:.3f}x)")  # fmt: skip
        print(f"latency ({result['latency_tokens']} tokens)  fp32 {result['fp32_ms']:.1f} ms"
              f"  integer {result['integer_ms']:.1f} ms")  # fmt: skip
        print(
            f"integer-only verified: {result['integer_only_verified']} ({result['traced_tensors']} tensors)"
        )
    else:
        from lowbit.experiments.infer_minilm import run_minilm

        result = run_minilm(args)
        print(json.dumps({k: v for k, v in result.items()}, indent=2))
    if args.json:
        atomic_write_text(args.json, json.dumps(result, indent=2) + "\n")
    return 0
