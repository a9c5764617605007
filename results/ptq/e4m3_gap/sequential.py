"""Sequential / asymmetric GPTQ and act-order for FP8 E4M3 on all-MiniLM-L6-v2 (issue 5, e4m3_gap task 2).

Same data protocol as ``lowbit ptq`` (calibration: the last 8 x 32 training snippets; evaluation: the first
N held-out snippets, mean cosine of mean-pooled embeddings vs FP32). Appends one JSON line per config to
``sequential.jsonl``. Run: ``nice -n 19 .venv/bin/python results/ptq/e4m3_gap/sequential.py --n-eval 1200
LABEL ...`` (labels below).
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import time
from pathlib import Path

import torch

from lowbit.data.rotten_tomatoes import load_rotten_tomatoes
from lowbit.models.bert import load_minilm
from lowbit.ptq import PTQConfig, calibrate, quantize, sequential
from lowbit.ptq.fidelity import embed_sorted, embedding_cosine
from lowbit.ptq.gptq import asymmetric_target


def _cfg(a_gran: str = "tensor", **kw: object) -> PTQConfig:
    return PTQConfig("fp8-e4m3", "fp8-e4m3", "channel", activation_granularity=a_gran, **kw)


CONFIGS = {
    "gptq": lambda: _cfg(weight_rounding="gptq"),
    "gptq-ao": lambda: _cfg(weight_rounding="gptq", gptq_act_order=True),
    "gptq-seq": lambda: _cfg(weight_rounding="gptq-seq"),
    "gptq-asym": lambda: _cfg(weight_rounding="gptq-asym"),
    "gptq-asym-ao": lambda: _cfg(weight_rounding="gptq-asym", gptq_act_order=True),
    "token-gptq": lambda: _cfg("token", weight_rounding="gptq"),
    "token-gptq-ao": lambda: _cfg("token", weight_rounding="gptq", gptq_act_order=True),
    "token-gptq-asym": lambda: _cfg("token", weight_rounding="gptq-asym"),
    "token-gptq-asym-ao": lambda: _cfg("token", weight_rounding="gptq-asym", gptq_act_order=True),
}


def main() -> None:
    """Evaluate the named configs; one JSON line each."""
    p = argparse.ArgumentParser()
    p.add_argument("labels", nargs="+", choices=sorted(CONFIGS))
    p.add_argument("--n-eval", type=int, default=1200)
    p.add_argument("--calib-batches", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--asym-damp",
        type=float,
        default=None,
        help="damping of the gptq-asym correction solve (fraction of the mean Gram diagonal; library: 0.01)",
    )
    p.add_argument("--out", default=str(Path(__file__).with_name("sequential.jsonl")))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.asym_damp is not None:  # experiment knob: the library solves with GPTQ's damping
        sequential.asymmetric_target = functools.partial(asymmetric_target, damp=args.asym_damp)
    data = load_rotten_tomatoes(seed=0)
    n_calib = args.calib_batches * 32
    calib_texts = data.train_texts[-n_calib:]
    texts = data.test_texts[: args.n_eval]
    model, tok = load_minilm(None)
    batches = [
        dict(tok(calib_texts[i : i + 32], padding=True, truncation=True, max_length=128, return_tensors="pt"))
        for i in range(0, n_calib, 32)
    ]
    calib = calibrate(model, batches)
    ref = embed_sorted(model, tok, texts, 64, 128)
    ref_calib = embed_sorted(model, tok, calib_texts, 64, 128)
    for label in args.labels:
        cfg = CONFIGS[label]()
        t0 = time.perf_counter()
        q = copy.deepcopy(model)
        quantize(q, cfg, calib)
        t_q = time.perf_counter() - t0
        cos = embedding_cosine(ref, embed_sorted(q, tok, texts, 64, 128))
        cos_calib = embedding_cosine(ref_calib, embed_sorted(q, tok, calib_texts, 64, 128))
        rec = {
            "label": label,
            "recipe": cfg.describe(),
            "cosine": float(cos.mean()),
            "min_cosine": float(cos.min()),
            "n_eval": len(texts),
            "calib_cosine": float(cos_calib.mean()),  # in-sample: the calibration snippets themselves
            "calib_snippets": n_calib,
            "quantize_seconds": round(t_q, 1),
            "asym_damp": args.asym_damp,
        }
        print(json.dumps(rec), flush=True)
        with open(args.out, "a") as f:
            f.write(json.dumps(rec) + "\n")


if __name__ == "__main__":
    main()
