"""Fuzz the GPT's public entries (issue 14): ``forward(idx, targets)`` and ``generate`` with random ids,
targets and sampling arguments — a documented result or a ValueError/TypeError naming the problem."""

from __future__ import annotations

import functools

import torch
from hypothesis import given
from hypothesis import strategies as st
from tests.helpers import documented_errors, fuzz_settings

from lowbit.models.gpt import GPT, GPTConfig

VOCAB, BLOCK = 13, 6


@functools.cache
def _model() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=VOCAB, block_size=BLOCK, n_layer=1, n_head=2, n_embd=8)).eval()


ids = st.builds(
    lambda shape, lo, hi, seed, dtype: torch.randint(
        lo, hi, shape, generator=torch.Generator().manual_seed(seed)
    ).to(dtype),
    shape=st.one_of(
        st.tuples(st.integers(1, 3), st.integers(1, BLOCK)), st.lists(st.integers(0, 8), max_size=3)
    ),
    lo=st.sampled_from([0, 0, 0, -3]),
    hi=st.sampled_from([VOCAB, VOCAB, VOCAB + 2]),
    seed=st.integers(0, 1000),
    dtype=st.sampled_from([torch.int64, torch.int64, torch.int32, torch.float32]),
)


@fuzz_settings(80)
@given(idx=ids, targets=st.one_of(st.none(), ids, st.sampled_from(["same", "ignore"])))
def test_fuzz_gpt_forward(idx, targets) -> None:
    if targets == "same":
        targets = idx
    elif targets == "ignore":
        targets = torch.full_like(idx, -100)
    with documented_errors():
        logits, loss = _model()(idx, targets)
        assert tuple(logits.shape) == (*idx.shape, VOCAB) and bool(torch.isfinite(logits).all())
        if loss is not None and bool((targets != -100).any()):
            assert bool(torch.isfinite(loss))


@fuzz_settings(60)
@given(
    n=st.sampled_from([0, 1, 3, -1, 2.0, True]),
    temperature=st.one_of(st.sampled_from([0, 0.0, 1.0, 0.7, -1.0, float("nan"), float("inf"), 1e-30, 1e30])),
    top_k=st.sampled_from([None, 1, 3, 100, 0, -2, 2.5]),
    prompt_len=st.integers(1, 2 * BLOCK),
)
def test_fuzz_gpt_generate(n, temperature, top_k, prompt_len) -> None:
    prompt = torch.randint(0, VOCAB, (2, prompt_len), generator=torch.Generator().manual_seed(prompt_len))
    with documented_errors():
        out = _model().generate(prompt, n, temperature, torch.Generator().manual_seed(0), top_k)
        assert out.shape == (2, prompt_len + n) and int(out.min()) >= 0 and int(out.max()) < VOCAB
