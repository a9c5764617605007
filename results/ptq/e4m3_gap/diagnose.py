"""Where does FP8 E4M3 PTQ lose embedding cosine on all-MiniLM-L6-v2? (issue 5 diagnosis, fake-quant sweeps)

Every encoder linear is replaced by a fake-quantized copy: the weight rounded to E4M3 (per tensor or per
output channel scale) and/or the input rounded to E4M3 with a static scale calibrated on *training*
snippets (the last 256 of the training split, as ``lowbit ptq``); the product runs in float32 on the
dequantized values, which is the same arithmetic as ``FP8Linear`` up to float32 summation order. Optional
bias correction subtracts, per output channel, the mean output error measured on the calibration snippets.

Run: ``nice -n 19 .venv/bin/python results/ptq/e4m3_gap/diagnose.py GROUP [--n-eval 400]``; appends one JSON
line per configuration to ``results/ptq/e4m3_gap/diag.jsonl`` (cosine = mean over the first N held-out
snippets of the cosine to the FP32 sentence embedding).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import re
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from lowbit.data.rotten_tomatoes import load_rotten_tomatoes
from lowbit.formats import FP8_E4M3
from lowbit.models.bert import load_minilm, tokenize
from lowbit.ptq.calibrate import select_linears
from lowbit.ptq.fidelity import embed_sorted, embedding_cosine
from lowbit.ptq.observers import HistogramObserver, ObserverSpec

OUT = Path(__file__).with_name("diag.jsonl")
FMAX = 448.0
MIN_NORMAL = 2.0**-6


def q8(x: torch.Tensor, s: torch.Tensor | float) -> torch.Tensor:
    """E4M3 round-trip of x with step s (nearest-even, saturating)."""
    return (x / s).clamp(-FMAX, FMAX).to(torch.float8_e4m3fn).float() * s


def quant_weight(w: torch.Tensor, mode: str) -> torch.Tensor:
    if mode == "tensor":
        return q8(w, w.abs().max() / FMAX)
    if mode == "channel":
        return q8(w, w.abs().amax(dim=1, keepdim=True) / FMAX)
    if mode == "channel-mse":  # per row: ratio of amax minimising the row's squared error
        amax = w.abs().amax(dim=1, keepdim=True)
        best, best_err = None, None
        for i in range(0, 41):
            r = 1 - i / 200  # 1.000 .. 0.800
            wq = q8(w, amax * r / FMAX)
            err = (wq - w).double().pow(2).sum(dim=1, keepdim=True)
            if best is None:
                best, best_err = wq, err
            else:
                better = err < best_err
                best = torch.where(better, wq, best)
                best_err = torch.where(better, err, best_err)
        return best
    raise ValueError(mode)


def gptq_fp8(
    w: torch.Tensor, gram: torch.Tensor, gran: str, damp: float = 0.01, block: int = 128
) -> torch.Tensor:
    """Error-compensating rounding of w (N, K) onto the E4M3 grid (GPTQ order: columns left to right, the
    rounding error of each column spread over the not-yet-rounded columns through the inverse Hessian of
    ||x W^T||^2 estimated from calibration inputs); scales fixed beforehand from absmax."""
    w = w.clone().float()
    n, k = w.shape
    s = (w.abs().amax(1, keepdim=True) if gran == "channel" else w.abs().max().reshape(1, 1)) / FMAX
    h = gram.clone().double()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h += damp * torch.diag(h).mean() * torch.eye(k, dtype=torch.float64)
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True).float()
    q = torch.zeros_like(w)
    for i1 in range(0, k, block):
        i2 = min(i1 + block, k)
        w1 = w[:, i1:i2].clone()
        e1 = torch.zeros_like(w1)
        h1 = hinv[i1:i2, i1:i2]
        for j in range(i2 - i1):
            col = w1[:, j]
            qc = q8(col.unsqueeze(1), s).squeeze(1)
            q[:, i1 + j] = qc
            err = (col - qc) / h1[j, j]
            w1[:, j:] -= err.unsqueeze(1) * h1[j, j:].unsqueeze(0)
            e1[:, j] = err
        w[:, i2:] -= e1 @ hinv[i1:i2, i2:]
    return q


class FakeQuant(nn.Module):
    def __init__(self, lin: nn.Linear, w: torch.Tensor, a_scale: float | str | None) -> None:
        super().__init__()
        self.w = w
        self.w_fp = lin.weight.detach().float()
        self.b = lin.bias.detach().float().clone() if lin.bias is not None else None
        self.a_scale = a_scale
        self.collect = False
        self.err_sum = None
        self.err_cnt = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.a_scale is None:
            xq = x
        elif self.a_scale == "token":
            xq = q8(x, x.abs().amax(dim=-1, keepdim=True).clamp_min(1e-30) / FMAX)
        else:
            xq = q8(x, self.a_scale)
        y = F.linear(xq, self.w, self.b)
        if self.collect:  # own error of this layer on its actual input, real tokens only
            e = (y - F.linear(x, self.w_fp, self.b)).reshape(-1, y.shape[-1])[MASK[0]].double()
            self.err_sum = e.sum(0) if self.err_sum is None else self.err_sum + e.sum(0)
            self.err_cnt += e.shape[0]
        return y


MASK: list[torch.Tensor] = [torch.ones(0, dtype=torch.bool)]


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, new)


class Ctx:
    def __init__(self, n_eval: int) -> None:
        torch.manual_seed(0)
        self.model, self.tok = load_minilm()
        data = load_rotten_tomatoes(seed=0)
        self.calib_texts = data.train_texts[-256:]
        self.eval_texts = data.test_texts[:n_eval]
        self.names = select_linears(self.model)
        self.batches = [tokenize(self.tok, self.calib_texts[i : i + 32]) for i in range(0, 256, 32)]
        self.obs = {n: HistogramObserver(ObserverSpec()) for n in self.names}
        self.stats: dict[str, dict] = {n: {"sub": 0, "zero": 0, "n": 0} for n in self.names}
        hooks = []
        for n in self.names:

            def hook(_m, args, n=n):
                x = args[0].reshape(-1, args[0].shape[-1])[MASK[0]]
                self.obs[n].update(x)
                self._last[n] = x

            hooks.append(self.model.get_submodule(n).register_forward_pre_hook(hook))
        self._last: dict[str, torch.Tensor] = {}
        self.samples: dict[str, list[torch.Tensor]] = {n: [] for n in self.names}
        with torch.no_grad():
            for b in self.batches:
                MASK[0] = b["attention_mask"].reshape(-1).bool()
                self.model(**b)
                for n in self.names:
                    self.samples[n].append(self._last[n])
        for h in hooks:
            h.remove()
        self.samples = {n: torch.cat(v) for n, v in self.samples.items()}
        t0 = time.perf_counter()
        self.ref = embed_sorted(self.model, self.tok, self.eval_texts)
        self.fp32_s = time.perf_counter() - t0

    def a_scale(self, name: str, rule: str) -> float:
        if rule == "token":
            return "token"
        spec = ObserverSpec("percentile", float(rule[3:])) if rule.startswith("pct") else ObserverSpec(rule)
        return self.obs[name].scale(FP8_E4M3, spec)

    def build(self, w_mode, a_rule, layers=None, bias_corr=False) -> nn.Module:
        m = copy.deepcopy(self.model)
        chosen = (
            self.names
            if layers is None
            else [n for n in self.names if any(re.fullmatch(p, n) for p in layers)]
        )
        for n in chosen:
            lin = m.get_submodule(n)
            if w_mode and w_mode.startswith("gptq-"):
                x = self.samples[n].double()
                w = gptq_fp8(lin.weight.detach().float(), x.T @ x, w_mode[5:])
            else:
                w = (
                    quant_weight(lin.weight.detach().float(), w_mode)
                    if w_mode
                    else lin.weight.detach().float()
                )
            _replace(m, n, FakeQuant(lin, w, self.a_scale(n, a_rule) if a_rule else None))
        if bias_corr:
            self.bias_correct(m)
        return m

    @torch.no_grad()
    def bias_correct(self, m: nn.Module) -> None:
        fq = [mod for mod in m.modules() if isinstance(mod, FakeQuant)]
        for mod in fq:
            mod.collect, mod.err_sum, mod.err_cnt = True, None, 0
        for b in self.batches:
            MASK[0] = b["attention_mask"].reshape(-1).bool()
            m(**b)
        for mod in fq:
            mod.collect = False
            if mod.b is not None:
                mod.b -= (mod.err_sum / mod.err_cnt).float()

    @torch.no_grad()
    def cosine(self, m: nn.Module) -> float:
        emb = embed_sorted(m, self.tok, self.eval_texts)
        return float(embedding_cosine(self.ref, emb).mean())


def act_stats(ctx: Ctx) -> list[dict]:
    """Per linear input: amax, p99.99, fraction of values landing in E4M3 subnormals / zero at the max
    scale, and the E4M3 SQNR of the input itself under max / mse / per-token scales."""
    rows = []
    for n in ctx.names:
        x = ctx.samples[n]
        s_max = ctx.a_scale(n, "max")
        u = x.abs() / s_max
        rec = {
            "layer": n,
            "amax": float(x.abs().max()),
            "p9999": ctx.obs[n]._percentile(99.99),
            "rms": float(x.pow(2).mean().sqrt()),
            "frac_subnormal": float(((u < MIN_NORMAL) & (u > 0)).float().mean()),
            "frac_flush_zero": float(((u < 2.0**-10) & (x != 0)).float().mean()),
        }
        for rule in ("max", "mse", "pct99.99", "token"):
            s = ctx.a_scale(n, rule)
            xq = q8(x, x.abs().amax(-1, keepdim=True) / FMAX) if s == "token" else q8(x, s)
            rec[f"sqnr_{rule}"] = 10 * math.log10(
                float(x.double().pow(2).sum() / (xq - x).double().pow(2).sum())
            )
        w = ctx.model.get_submodule(n).weight.detach().float()
        for mode in ("tensor", "channel", "channel-mse"):
            wq = quant_weight(w, mode)
            rec[f"w_sqnr_{mode}"] = 10 * math.log10(
                float(w.double().pow(2).sum() / (wq - w).double().pow(2).sum())
            )
        rows.append(rec)
    return rows


GROUPS = {
    # (label, w_mode, a_rule, layers, bias_corr)
    "split": [
        ("W+A tensor/max", "tensor", "max", None, False),
        ("W only tensor", "tensor", None, None, False),
        ("A only max", None, "max", None, False),
        ("W only channel", "channel", None, None, False),
        ("W only channel-mse", "channel-mse", None, None, False),
        ("A only mse", None, "mse", None, False),
        ("A only token", None, "token", None, False),
    ],
    "types": [
        (f"W+A tensor/max only {t}", "tensor", "max", [rf"encoder\.layer\.\d+\.{t}"], False)
        for t in (
            r"attention\.self\.query",
            r"attention\.self\.key",
            r"attention\.self\.value",
            r"attention\.output\.dense",
            r"intermediate\.dense",
            r"output\.dense",
        )
    ],
    "recipes": [
        ("W channel A max", "channel", "max", None, False),
        ("W tensor A mse", "tensor", "mse", None, False),
        ("W tensor A pct99.99", "tensor", "pct99.99", None, False),
        ("W channel A mse", "channel", "mse", None, False),
        ("W tensor A max +bias corr", "tensor", "max", None, True),
        ("W channel A max +bias corr", "channel", "max", None, True),
        ("W channel A mse +bias corr", "channel", "mse", None, True),
        ("W channel-mse A mse +bias corr", "channel-mse", "mse", None, True),
        ("W only tensor +bias corr", "tensor", None, None, True),
        ("A only max +bias corr", None, "max", None, True),
    ],
    "atypes": [
        (f"A only max, only {t}", None, "max", [rf"encoder\.layer\.\d+\.{t}"], False)
        for t in (
            r"attention\.self\.(query|key)",
            r"attention\.self\.value",
            r"attention\.output\.dense",
            r"intermediate\.dense",
            r"output\.dense",
        )
    ],
    "gptq": [
        ("W only gptq-channel", "gptq-channel", None, None, False),
        ("W only gptq-tensor", "gptq-tensor", None, None, False),
        ("W gptq-channel A max", "gptq-channel", "max", None, False),
        ("W gptq-tensor A max", "gptq-tensor", "max", None, False),
        ("W gptq-channel A max +bias corr", "gptq-channel", "max", None, True),
    ],
}


def per_layer_group(ctx: Ctx) -> list[tuple]:
    return [(f"W+A tensor/max only {n}", "tensor", "max", [re.escape(n)], False) for n in ctx.names]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("groups", nargs="+")
    p.add_argument("--n-eval", type=int, default=400)
    args = p.parse_args()
    torch.set_num_threads(1)
    ctx = Ctx(args.n_eval)
    print(f"fp32 embeddings of {args.n_eval}: {ctx.fp32_s:.1f} s", flush=True)
    for g in args.groups:
        if g == "stats":
            rows = act_stats(ctx)
            Path(OUT.with_name("act_stats.json")).write_text(json.dumps(rows, indent=1) + "\n")
            for r in rows:
                print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()}))
            continue
        cfgs = per_layer_group(ctx) if g == "layers" else GROUPS[g]
        for label, w_mode, a_rule, layers, bc in cfgs:
            t0 = time.perf_counter()
            m = ctx.build(w_mode, a_rule, layers, bc)
            cos = ctx.cosine(m)
            rec = {
                "group": g,
                "label": label,
                "n_eval": args.n_eval,
                "cosine": cos,
                "one_minus_cos": 1 - cos,
                "seconds": round(time.perf_counter() - t0, 1),
            }
            print(json.dumps(rec), flush=True)
            with OUT.open("a") as f:
                f.write(json.dumps(rec) + "\n")


if __name__ == "__main__":
    main()
