"""The three training tasks (gpt-shakespeare, vit-fashion, bert-rt): data, model, loss, evaluation, samplers.

A task owns its data (loaded once in ``__init__``), builds a fresh model (``build_model``, called under the
run's init seed), hands out batches through a sampler whose ``state_dict`` is the exact data position, and
evaluates a model (held-out loss for the GPT, test accuracy in % for the classifiers).

``config.eval_split = "val"`` evaluates on a validation part of the training data instead of the test data,
for tuning. The classifiers use the training examples the run never draws: the run takes ``steps ×
batch_size`` examples from the first epoch's seeded permutation, and the rest of that permutation is the
validation set, so the training data stay exactly those of the default (test) run. The GPT samples windows
anywhere in its training text, so there the last ``GPT_VAL_FRACTION`` of the training text is carved off as
the validation set and the run trains on the rest (its training data differ from the test run's).

The interface is ``base.Task``, the samplers are in ``samplers``, the tasks in ``gpt`` and ``classifiers``;
this module is their registry.
"""

from __future__ import annotations

from lowbit.experiments.config import TrainConfig
from lowbit.experiments.tasks.base import Task
from lowbit.experiments.tasks.classifiers import BertRTTask, ViTFashionTask
from lowbit.experiments.tasks.gpt import GPTShakespeareTask

__all__ = ["TASK_TYPES", "BertRTTask", "GPTShakespeareTask", "Task", "ViTFashionTask", "make_task"]

TASK_TYPES: dict[str, type[Task]] = {t.name: t for t in (GPTShakespeareTask, ViTFashionTask, BertRTTask)}


def make_task(config: TrainConfig) -> Task:
    """The task named by ``config.task``, with its data loaded."""
    try:
        task_type = TASK_TYPES[config.task]
    except KeyError:
        raise ValueError(f"unknown task {config.task!r}; choose one of: {', '.join(TASK_TYPES)}") from None
    return task_type(config)
