"""Fidelity of a quantized encoder against its FP32 original: embeddings, per-layer SQNR, the SQNR plot."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from lowbit.files import atomic_savefig
from lowbit.models.bert import encode_sentences, tokenize
from lowbit.modules import capture
from lowbit.ptq.base import PTQLinear


def sqnr_db(ref: torch.Tensor, approx: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio of ``approx`` against ``ref`` in dB (float64; inf if identical)."""
    ref64, approx64 = ref.double(), approx.double()
    noise = float((ref64 - approx64).pow(2).sum())
    signal = float(ref64.pow(2).sum())
    if noise == 0.0:
        return math.inf
    return 10.0 * math.log10(signal / noise) if signal > 0 else -math.inf


def embed_sorted(
    model: nn.Module, tokenizer: object, texts: Sequence[str], batch_size: int = 64, max_length: int = 128
) -> torch.Tensor:
    """Sentence embeddings (N, hidden) in the order of ``texts``, computed on length-sorted batches.

    Sorting by length cuts the padding each batch carries (the same embeddings, about 1.5x faster on
    review snippets); the result is mean-pooled and L2-normalised like ``encode_sentences``.
    """
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    emb = encode_sentences(model, tokenizer, [texts[i] for i in order], batch_size, max_length)
    out = torch.empty_like(emb)
    out[torch.tensor(order)] = emb
    return out


def embedding_cosine(ref: torch.Tensor, approx: torch.Tensor) -> torch.Tensor:
    """Per-row cosine similarity of two (N, hidden) embedding matrices, computed in float64."""
    return F.cosine_similarity(ref.double(), approx.double(), dim=-1)


@torch.no_grad()
def layer_sqnr(
    fp32_model: nn.Module, q_model: nn.Module, tokenizer: object, texts: Sequence[str], max_length: int = 128
) -> tuple[dict[str, float], dict[str, float]]:
    """Per quantized linear, the SQNR (dB) of its output against the FP32 model's same layer on ``texts``.

    Returns ``(in_model, isolated)``: *in_model* runs the whole quantized model, so errors of earlier layers
    accumulate; *isolated* feeds each quantized layer the FP32 model's own input to that layer, measuring
    the layer's own quantization error. Padding positions are excluded.
    """
    names = [n for n, m in q_model.named_modules() if isinstance(m, PTQLinear)]
    if not names:
        raise ValueError("q_model holds no quantized layers")
    batch = tokenize(tokenizer, texts, max_length)
    keep = batch["attention_mask"].reshape(-1).bool()  # (B*T,) real tokens
    with capture([(n, fp32_model.get_submodule(n)) for n in names], what="both", record=True) as fp:
        fp32_model.eval()(**batch)
    with capture([(n, q_model.get_submodule(n)) for n in names], what="output", record=True) as q:
        q_model.eval()(**batch)
    fp_calls, q_calls = fp.last(), q.last()  # name -> (input, output) / (output,) of its last call
    in_model, isolated = {}, {}
    for name in names:
        fp_in, fp_out = fp_calls[name]
        ref = fp_out.reshape(keep.numel(), -1)[keep]
        in_model[name] = sqnr_db(ref, q_calls[name][0].reshape(keep.numel(), -1)[keep])
        alone = q_model.get_submodule(name)(fp_in)
        isolated[name] = sqnr_db(ref, alone.reshape(keep.numel(), -1)[keep])
    return in_model, isolated


def _short(name: str) -> str:
    """``encoder.layer.3.attention.self.query`` -> ``3.query``; ``...intermediate.dense`` -> ``3.ffn_in``."""
    parts = name.split(".")
    layer = next((p for p in parts if p.isdigit()), "")
    if "intermediate" in parts:
        tail = "ffn_in"
    elif parts[-2:] == ["output", "dense"] and "attention" not in parts:
        tail = "ffn_out"
    elif "attention" in parts and parts[-2:] == ["output", "dense"]:
        tail = "attn_out"
    else:
        tail = parts[-1]
    return f"{layer}.{tail}" if layer else name


def line_style(i: int) -> dict[str, str]:
    """Colour and dash of curve ``i``: ten colours, then the next dash, so up to 40 curves look distinct."""
    return {"color": f"C{i % 10}", "linestyle": ("-", "--", ":", "-.")[(i // 10) % 4]}


def plot_sqnr(
    curves: Mapping[str, tuple[Mapping[str, float], Mapping[str, float]]], path: str | Path, title: str
) -> Path:
    """Draw per-layer SQNR (in-model and isolated) for each format into a PNG at ``path``."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(14, 8), layout="constrained")
    axes = fig.subplots(2, 1, sharex=True)
    names: list[str] = []
    for i, (fmt, (in_model, isolated)) in enumerate(curves.items()):
        names = list(in_model)
        x = range(len(names))
        clip = [min(v, 120.0) for v in in_model.values()]
        style = line_style(i)
        axes[0].plot(x, clip, marker="o", markersize=3, label=fmt, **style)
        iso = [min(isolated[n], 120.0) for n in names]
        axes[1].plot(x, iso, marker="o", markersize=3, label=fmt, **style)
    axes[0].set_title(
        f"{title}: output SQNR of each quantized linear, whole quantized model (errors accumulate)"
    )
    axes[1].set_title("same layers, each fed the FP32 model's input (the layer's own error)")
    for ax in axes:
        ax.set_ylabel("SQNR (dB)")
        ax.grid(True, alpha=0.3)
    axes[0].legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)  # outside: no data hidden
    axes[1].set_xticks(range(len(names)), [_short(n) for n in names], rotation=90, fontsize=7)
    path = Path(path)
    atomic_savefig(fig, path, dpi=110)
    return path
