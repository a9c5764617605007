"""Two last probes of the E4M3 cosine gap on all-MiniLM-L6-v2 (issue 5): input rotations and mixed precision.

Same fake-quantization protocol as ``diagnose.py`` (whose ``Ctx`` it reuses: calibration on the last 256
training snippets, cosine = mean over the first N held-out snippets vs the FP32 sentence embedding).

* ``rotate``: every linear computes ``(x R)(W R)^T`` with an orthogonal R (block-diagonal Hadamard with random
  signs, block 64 or 128, or a dense random orthogonal matrix) and E4M3 is applied to ``x R`` and/or ``W R``.
  Rotations flatten outliers, which is what INT formats need; E4M3's error is relative to each value, so a
  rotation only redistributes it — the probe measures in which direction on this model.
* ``mixed``: GPTQ per-channel E4M3 weights on every linear, per-token E4M3 activations on all but a chosen set
  of linears whose inputs stay FP32 — how much of the model must leave E4M3 activations to reach 0.999.

Run: ``nice -n 19 .venv/bin/python results/ptq/e4m3_gap/probes.py rotate mixed [--n-eval 400]``; appends one
JSON line per configuration to ``probes.jsonl``.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import re
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
import diagnose as D  # noqa: E402 - the sibling script's fake-quant context

OUT = Path(__file__).with_name("probes.jsonl")
LAYER5 = r"encoder\.layer\.5\."
FFN_UP = r".*intermediate\.dense"
FFN_DOWN = r"encoder\.layer\.\d\.output\.dense"


def hadamard(n: int) -> torch.Tensor:
    """Orthonormal Sylvester Hadamard matrix of size n (a power of two), float64."""
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h / math.sqrt(n)


def rotation(k: int, kind: str, gen: torch.Generator) -> torch.Tensor | None:
    """None for "none"; "orth": dense random orthogonal; "hadB": block-diagonal Hadamard(B) x random signs."""
    if kind == "none":
        return None
    if kind == "orth":
        q, _ = torch.linalg.qr(torch.randn(k, k, generator=gen, dtype=torch.float64))
        return q
    block = int(kind[3:])
    signs = torch.where(torch.rand(k, generator=gen) < 0.5, -1.0, 1.0).double()
    return torch.block_diag(*[hadamard(block)] * (k // block)) * signs.unsqueeze(1)


class RotatedFakeQuant(nn.Module):
    """y = q(x R) q(W R)^T + b; q = E4M3 with a static max scale (activations) / per-channel (weights)."""

    def __init__(
        self, lin: nn.Linear, r: torch.Tensor | None, w_mode: str | None, quant_act: bool, xs
    ) -> None:
        super().__init__()
        w = lin.weight.detach().double()
        self.r = r.float() if r is not None else None
        wr = w @ r if r is not None else w
        xr = xs.double() @ r if r is not None else xs.double()
        self.w = D.quant_weight(wr.float(), w_mode) if w_mode else wr.float()
        self.a_scale = float(xr.abs().max()) / D.FMAX if quant_act else None
        self.b = lin.bias.detach().float() if lin.bias is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.r is not None:
            x = x @ self.r
        if self.a_scale is not None:
            x = D.q8(x, self.a_scale)
        return F.linear(x, self.w, self.b)


def probe_rotate(
    ctx: D.Ctx, only: str | None = None, kinds: tuple[str, ...] = ("none", "had64", "had128", "orth")
):
    """Every configuration with the rotation on every linear, or (``only``: a regex) on the matching ones."""
    out = []
    for w_mode, quant_act in [(None, True), ("channel", False), ("channel", True)]:
        for kind in kinds:
            gen = torch.Generator().manual_seed(0)
            m = copy.deepcopy(ctx.model)
            for n in ctx.names:
                lin = m.get_submodule(n)
                rotate = only is None or re.fullmatch(only, n)
                r = rotation(lin.in_features, kind if rotate else "none", gen)
                D._replace(m, n, RotatedFakeQuant(lin, r, w_mode, quant_act, ctx.samples[n]))
            where = "" if only is None else " (FFN-down inputs only)"
            label = f"rotate {kind}{where}: W {w_mode or 'fp32'}, A {'e4m3 max' if quant_act else 'fp32'}"
            out.append({"probe": "rotate", "config": label, "cosine": ctx.cosine(m)})
            print(f"{label}: {out[-1]['cosine']:.6f}", flush=True)  # noqa: T201
    return out


def probe_mixed(ctx: D.Ctx) -> list[dict]:
    weights = {}
    for n in ctx.names:
        x = ctx.samples[n].double()
        weights[n] = D.gptq_fp8(ctx.model.get_submodule(n).weight.detach().float(), x.T @ x, "channel")
    runs = {
        "every linear": (),
        "layer 5 value + attention output": (
            LAYER5 + r"attention\.self\.value",
            LAYER5 + r"attention\.output\.dense",
        ),
        "all 6 linears of layer 5": (LAYER5 + ".*",),
        "the 6 FFN-down linears": (FFN_DOWN,),
        "the 6 FFN-up linears": (FFN_UP,),
        "the 12 FFN linears (2/3 of the FLOPs)": (FFN_UP, FFN_DOWN),
    }
    out = []
    for label, fp32_inputs in runs.items():
        m = copy.deepcopy(ctx.model)
        for n in ctx.names:
            keep = any(re.fullmatch(p, n) for p in fp32_inputs)
            D._replace(m, n, D.FakeQuant(m.get_submodule(n), weights[n], None if keep else "token"))
        text = f"mixed: W E4M3 GPTQ everywhere, A E4M3 per token except {label}"
        if not fp32_inputs:
            text = "mixed: W E4M3 GPTQ everywhere, A E4M3 per token on every linear"
        out.append({"probe": "mixed", "config": text, "cosine": ctx.cosine(m)})
        print(f"{text}: {out[-1]['cosine']:.6f}", flush=True)  # noqa: T201
    return out


def probe_weighting(ctx: D.Ctx) -> list[dict]:
    """Per linear: the first-order output error weighting of E4M3's relative input error, sum_j E[x_j^2]
    ||W[:, j]||^2, over its value with the channels evened out by a rotation, mean(E[x_j^2]) ||W||^2 (< 1: the
    large activation channels meet small weight columns, so a rotation adds error); and the top-5 activation
    channels' column norm^2 over the mean."""
    out = []
    for n in ctx.names:
        a = ctx.samples[n].double().pow(2).mean(0)
        b = ctx.model.get_submodule(n).weight.detach().double().pow(2).sum(0)
        ratio = float((a * b).sum() / (a.mean() * b.sum()))
        top5 = float(b[a.topk(5).indices].mean() / b.mean())
        out.append(
            {"probe": "weighting", "config": n, "unrotated_over_evened": ratio, "top5_column_norm": top5}
        )
        print(f"{n}: {ratio:.3f} (top-5 channels' column norm^2 / mean {top5:.3f})", flush=True)  # noqa: T201
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("probes", nargs="+", choices=["rotate", "rotate-ffn-down", "mixed", "weighting"])
    parser.add_argument("--n-eval", type=int, default=400)
    args = parser.parse_args()
    torch.set_num_threads(1)
    ctx = D.Ctx(args.n_eval)
    for name in args.probes:
        t0 = time.perf_counter()
        probes = {
            "rotate": probe_rotate,
            "rotate-ffn-down": lambda c: probe_rotate(c, only=FFN_DOWN, kinds=("had128",)),
            "mixed": probe_mixed,
            "weighting": probe_weighting,
        }
        records = probes[name](ctx)
        with OUT.open("a") as f:
            for r in records:
                f.write(
                    json.dumps({**r, "n_eval": args.n_eval, "seconds": round(time.perf_counter() - t0)})
                    + "\n"
                )


if __name__ == "__main__":
    main()
