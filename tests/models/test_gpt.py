"""Tests for lowbit.models.gpt: config validation, shapes, overfitting, generation and held-out loss."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lowbit.models.gpt import GPT, GPTConfig, evaluate_lm_loss
from lowbit.models.layers import L1LayerNorm

TINY = {"vocab_size": 13, "block_size": 16, "n_layer": 2, "n_head": 2, "n_embd": 32}
VARIANTS = {
    "standard": GPTConfig(**TINY),
    "integer-transformer": GPTConfig.integer_transformer(**TINY),
}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"vocab_size": 0}, "vocab_size"),
        ({"vocab_size": 10, "n_embd": 30, "n_head": 4}, "divisible"),
        ({"vocab_size": 10, "attention": "linear"}, "attention='linear'"),
        ({"vocab_size": 10, "norm": "rms"}, "norm='rms'"),
        ({"vocab_size": 10, "activation": "tanh"}, "activation='tanh'"),
        ({"vocab_size": 10, "dropout": 1.0}, "dropout"),
    ],
    ids=["vocab", "heads", "attention", "norm", "activation", "dropout"],
)
def test_config_validation(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        GPTConfig(**kwargs)


def test_config_is_frozen() -> None:
    with pytest.raises(AttributeError):
        VARIANTS["standard"].n_layer = 3  # type: ignore[misc]


def test_integer_transformer_config() -> None:
    cfg = VARIANTS["integer-transformer"]
    assert (cfg.attention, cfg.norm, cfg.activation) == ("poly", "l1", "relu")
    model = GPT(cfg)
    assert isinstance(model.ln_f, L1LayerNorm)
    assert all(isinstance(b.mlp.act, nn.ReLU) for b in model.blocks)


@pytest.mark.parametrize("name", list(VARIANTS), ids=list(VARIANTS))
def test_shapes_initial_loss_and_linears(name: str) -> None:
    torch.manual_seed(0)
    model = GPT(VARIANTS[name])
    idx = torch.randint(13, (3, 16))
    logits, loss = model(idx, idx)
    assert logits.shape == (3, 16, 13) and loss.shape == ()
    assert abs(loss.item() - math.log(13)) < 0.1  # small init → near-uniform predictions
    assert model(idx)[1] is None
    assert isinstance(model.lm_head, nn.Linear) and model.lm_head.bias is None
    n_linear = sum(isinstance(m, nn.Linear) for m in model.modules())
    assert n_linear == 2 * 6 + 1  # q, k, v, out, fc_in, fc_out per block, plus lm_head
    with pytest.raises(ValueError, match="block_size"):
        model(torch.zeros(1, 17, dtype=torch.long))


@pytest.mark.parametrize("name", list(VARIANTS), ids=list(VARIANTS))
def test_overfits_a_tiny_batch(name: str) -> None:
    torch.manual_seed(0)
    model = GPT(VARIANTS[name])
    idx = torch.randint(13, (4, 16), generator=torch.Generator().manual_seed(0))
    x, y = idx[:, :-1], idx[:, 1:]
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = None
    for _ in range(60):
        _, loss = model(x, y)
        first = loss.item() if first is None else first
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.3 * first


def test_generate_is_deterministic_with_a_seeded_generator() -> None:
    torch.manual_seed(0)
    model = GPT(VARIANTS["integer-transformer"])
    start = torch.zeros(2, 1, dtype=torch.long)
    a = model.generate(start, 40, temperature=1.0, generator=torch.Generator().manual_seed(7))
    b = model.generate(start, 40, temperature=1.0, generator=torch.Generator().manual_seed(7))
    c = model.generate(start, 40, temperature=1.0, generator=torch.Generator().manual_seed(8))
    assert a.shape == (2, 41)  # 40 new tokens: longer than block_size, so the context is cropped
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert int(a.min()) >= 0 and int(a.max()) < 13


def test_greedy_generation_and_top_k() -> None:
    torch.manual_seed(0)
    model = GPT(VARIANTS["standard"])
    start = torch.tensor([[1, 2, 3]])
    greedy = model.generate(start, 5, temperature=0.0)
    logits, _ = model(start)
    assert int(greedy[0, 3]) == int(logits[0, -1].argmax())
    top1 = model.generate(start, 5, temperature=1.0, top_k=1, generator=torch.Generator().manual_seed(0))
    assert torch.equal(top1, greedy)
    with pytest.raises(ValueError, match="temperature"):
        model.generate(start, 1, temperature=-1.0)


def test_evaluate_lm_loss_is_the_token_weighted_mean() -> None:
    torch.manual_seed(0)
    model = GPT(VARIANTS["standard"]).train()
    gen = torch.Generator().manual_seed(1)
    batches = [
        (torch.randint(13, (b, 16), generator=gen), torch.randint(13, (b, 16), generator=gen)) for b in (3, 1)
    ]
    with torch.no_grad():
        losses = [model(x, y)[1] for x, y in batches]
    expected = (3 * float(losses[0]) + float(losses[1])) / 4
    assert evaluate_lm_loss(model, batches) == pytest.approx(expected, rel=1e-5)
    assert model.training  # restored
    with pytest.raises(ValueError, match="no batches"):
        evaluate_lm_loss(model, [])


def _tiny() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=16)).eval()


def test_targets_are_checked() -> None:
    """Issue 14: targets of another shape or outside the vocabulary reached cross_entropy (raw errors)."""
    model = _tiny()
    idx = torch.randint(0, 11, (2, 5))
    with pytest.raises(ValueError, match="idx's shape"):
        model(idx, idx[:, :4])
    with pytest.raises(ValueError, match=r"outside \[0, 11\)"):
        model(idx, torch.full((2, 5), 11))
    with pytest.raises(TypeError, match="integer"):
        model(idx, idx.float())
    ignore = idx.clone()
    ignore[0, 0] = -100  # cross_entropy's ignore_index stays allowed
    _, loss = model(idx, ignore)
    assert torch.isfinite(loss)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"temperature": float("nan")},
        {"temperature": -1.0},
        {"top_k": 0},
        {"max_new_tokens": -1},
        {"top_k": 2.5},
    ],
)
def test_generate_argument_errors(kwargs: dict) -> None:
    """Issue 14: top_k=0 raised an IndexError, temperature NaN a multinomial RuntimeError."""
    args = {"max_new_tokens": 2, **kwargs}
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        _tiny().generate(torch.zeros(1, 1, dtype=torch.long), **args)
