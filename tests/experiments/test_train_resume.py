"""Exact resume: an interrupted run continued with --resume gives bit-identical losses and weights."""

from __future__ import annotations

import json

import pytest
import torch

from lowbit.experiments.checkpoint import CHECKPOINT_NAME, CheckpointError
from lowbit.experiments.metrics import METRICS_NAME
from lowbit.experiments.runner import finish, prepare, train
from lowbit.experiments.tasks.gpt import GPTShakespeareTask


class Interrupted(Exception):
    """Raised from the step callback to simulate a crash right after a checkpoint."""


def _interrupt_at(step_to_stop, losses):
    def on_step(step, loss):
        losses.append(loss)
        if step == step_to_stop:
            raise Interrupted

    return on_step


def _run_interrupted_then_resumed(config_of, out):
    """Losses of a run stopped after step 3 and resumed to the end, and the resumed Run's final weights."""
    losses = []
    with pytest.raises(Interrupted):
        train(config_of(out), on_step=_interrupt_at(3, losses))
    resumed = prepare(config_of(out, resume=True))
    assert resumed.step == 3
    finish(resumed, on_step=lambda step, loss: losses.append(loss))
    return losses, resumed.model.state_dict()


@pytest.mark.parametrize("task", ["gpt-shakespeare", "vit-fashion"], ids=["gpt-windows", "vit-epochs"])
def test_resume_is_bit_identical(task, tmp_path, text_file, tiny):
    data = text_file if task == "gpt-shakespeare" else None

    # checkpoint every 3 steps; the vit run (40 examples, batch 16) crosses two epoch boundaries.
    def config_of(out, **kw):
        return tiny(task, out, data, checkpoint_every=3, **kw)

    full_losses = []
    reference = prepare(config_of(tmp_path / "full"))
    finish(reference, on_step=lambda step, loss: full_losses.append(loss))
    losses, weights = _run_interrupted_then_resumed(config_of, tmp_path / "resumed")
    assert losses == full_losses  # exact float equality, every step
    for name, tensor in reference.model.state_dict().items():
        assert torch.equal(tensor, weights[name]), name
    metrics = json.loads((tmp_path / "resumed" / METRICS_NAME).read_text())
    assert metrics["train"]["loss"] == full_losses  # the history survives the resume


@pytest.mark.parametrize("lsq_init", ["paper", "mse"])
def test_int4_resume_is_bit_identical_with_either_step_init(lsq_init, tmp_path, text_file, tiny):
    # the learned LSQ steps travel in the checkpoint: a resumed run does not re-initialise them
    def config_of(out, **kw):
        return tiny(
            "gpt-shakespeare", out, text_file, recipe="int4", lsq_init=lsq_init, checkpoint_every=3, **kw
        )

    full_losses = []
    reference = prepare(config_of(tmp_path / "full"))
    finish(reference, on_step=lambda step, loss: full_losses.append(loss))
    losses, weights = _run_interrupted_then_resumed(config_of, tmp_path / "resumed")
    assert losses == full_losses
    steps = {k: v for k, v in reference.model.state_dict().items() if k.endswith(("x_step", "w_step"))}
    assert steps and all(torch.equal(v, weights[k]) for k, v in steps.items())


def test_resume_after_finish_only_reports(tmp_path, text_file, tiny):
    first = train(tiny("gpt-shakespeare", tmp_path / "run", text_file))
    again = train(tiny("gpt-shakespeare", tmp_path / "run", text_file, resume=True))
    assert again.final_train_loss == first.final_train_loss and again.eval_metric == first.eval_metric


def test_resume_with_other_settings_is_refused(tmp_path, text_file, tiny):
    train(tiny("gpt-shakespeare", tmp_path / "run", text_file, steps=3))
    with pytest.raises(CheckpointError, match=r"seed: checkpoint 0 vs now 5"):
        prepare(tiny("gpt-shakespeare", tmp_path / "run", text_file, steps=3, seed=5, resume=True))
    with pytest.raises(CheckpointError, match=r"dim: checkpoint 32 vs now 64"):
        prepare(tiny("gpt-shakespeare", tmp_path / "run", text_file, steps=3, dim=64, resume=True))


def test_resume_without_checkpoint_is_refused(tmp_path, text_file, tiny):
    with pytest.raises(CheckpointError, match="no checkpoint"):
        prepare(tiny("gpt-shakespeare", tmp_path / "empty", text_file, resume=True))


def test_resume_from_corrupt_checkpoint_is_refused(tmp_path, text_file, tiny):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / CHECKPOINT_NAME).write_bytes(b"\x00" * 100)
    with pytest.raises(CheckpointError, match="corrupt"):
        prepare(tiny("gpt-shakespeare", tmp_path / "run", text_file, resume=True))


class _NoisyLinear(torch.nn.Linear):
    """A stand-in for a quantized layer: adds noise from its own generator (like stochastic rounding)."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__(n_in, n_out)
        self.noise_generator = torch.Generator().manual_seed(123)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        noise = torch.rand(x.shape, generator=self.noise_generator) - 0.5
        return super().forward(x + 0.1 * noise)


class _NoisyTask(GPTShakespeareTask):
    """The tiny GPT task with a noisy layer in front of the LM head (its generator lives in the module)."""

    def build_model(self) -> torch.nn.Module:
        model = super().build_model()
        model.lm_head = torch.nn.Sequential(
            _NoisyLinear(model.config.n_embd, model.config.n_embd), model.lm_head
        )
        return model


def test_resume_restores_generators_held_by_modules(tmp_path, text_file, tiny):
    def config_of(out, **kw):
        return tiny("gpt-shakespeare", out, text_file, checkpoint_every=3, **kw)

    full = []
    finish(
        prepare(config_of(tmp_path / "full"), _NoisyTask(config_of(tmp_path))),
        on_step=lambda s, v: full.append(v),
    )
    part = []
    with pytest.raises(Interrupted):
        train(
            config_of(tmp_path / "resumed"), _NoisyTask(config_of(tmp_path)), on_step=_interrupt_at(3, part)
        )
    resumed = prepare(config_of(tmp_path / "resumed", resume=True), _NoisyTask(config_of(tmp_path)))
    finish(resumed, on_step=lambda s, v: part.append(v))
    assert part == full
