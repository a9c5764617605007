"""Data-parallel ``lowbit train`` / ``compare`` under torchrun (2 gloo processes on loopback, tiny GPT).

* ``torchrun --nproc_per_node 2 -m lowbit compare --recipes fp32,int4`` gives the per-step losses and
  evaluations of ``python -m lowbit compare`` with the same global batch. Not bit for bit: a gradient summed
  over two shards and averaged is not the same float sum as one sum over the batch, and the quantizers can
  round a value that moved by an ulp the other way; every statistic, seed and noise counter is the whole
  batch's (``lowbit.training.distributed``), so the losses agree to ``RTOL`` (observed: ≤ 1 ulp of float32).
* ``--fsdp`` (FSDP2) gives the DDP losses (observed: bit-identical).
* A rank that dies takes the run down: the survivor raises ``PeerFailure`` at its next collective (within a
  second, not a hang), and ``--resume`` from the last checkpoint (gathered and written by rank 0 of the FSDP
  run, in the one-process layout) continues with the uninterrupted run's losses: bit for bit under torchrun
  (FSDP, resharding it), to ``RTOL`` of the one-process run in one plain process (another world size).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch.multiprocessing as mp

RTOL = 1e-5  # float summation order of a sharded batch (see the module docstring)
STEPS, KILL_AT, CHECKPOINT_EVERY = 5, 3, 2
FLAGS = [
    "--task", "gpt-shakespeare", "--steps", str(STEPS), "--batch-size", "4", "--seq-len", "16",
    "--layers", "1", "--dim", "32", "--heads", "2", "--max-eval-examples", "8", "--eval-every", "2",
    "--checkpoint-every", str(CHECKPOINT_EVERY), "--threads", "1", "--no-progress",
]  # fmt: skip
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


def _lowbit(args: list[str], cwd: Path, torchrun: bool = False) -> subprocess.CompletedProcess:
    cmd = [*(TORCHRUN if torchrun else [sys.executable]), "-m", "lowbit", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _losses(folder: Path) -> list[float]:
    return json.loads((folder / "metrics.json").read_text())["train"]["loss"]


def _evals(folder: Path) -> list[float]:
    return json.loads((folder / "metrics.json").read_text())["eval"]["value"]


def _close(a: list[float], b: list[float], rtol: float) -> bool:
    return len(a) == len(b) and all(abs(x - y) <= rtol * abs(y) for x, y in zip(a, b, strict=True))


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One process, 2-process DDP and 2-process FSDP2 comparisons of fp32 and int4, same flags."""
    import random

    root = tmp_path_factory.mktemp("dist")
    words = ("to", "be", "or", "not", "that", "is", "the", "question", "whether", "tis", "nobler", "in")
    rng = random.Random(0)
    lines = [" ".join(rng.choice(words) for _ in range(rng.randint(4, 10))) for _ in range(150)]
    (root / "corpus.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    compare = ["compare", "--recipes", "fp32,int4", "--data", "corpus.txt", *FLAGS]
    _lowbit([*compare, "--out", "one"], root)
    ddp = _lowbit([*compare, "--out", "ddp"], root, torchrun=True)
    (root / "ddp.stdout").write_text(ddp.stdout)
    _lowbit([*compare, "--out", "fsdp", "--fsdp"], root, torchrun=True)
    return root


def test_two_processes_match_one_process(runs: Path) -> None:
    for recipe in ("fp32", "int4"):
        one, two = _losses(runs / "one" / recipe), _losses(runs / "ddp" / recipe)
        assert len(two) == STEPS and _close(two, one, RTOL), (recipe, one, two)
        assert _close(_evals(runs / "ddp" / recipe), _evals(runs / "one" / recipe), RTOL), recipe
    # rank 0 alone prints and writes: one results table, no files of the other rank
    assert (runs / "ddp.stdout").read_text().count("report: ") == 1
    files = sorted(p.name for p in (runs / "ddp" / "int4").iterdir() if p.name != ".lowbit.lock")
    assert files == ["checkpoint.pt", "metrics.json"]


def test_fsdp_matches_ddp(runs: Path) -> None:
    for recipe in ("fp32", "int4"):
        assert _close(_losses(runs / "fsdp" / recipe), _losses(runs / "ddp" / recipe), 1e-6), recipe
        assert _close(_evals(runs / "fsdp" / recipe), _evals(runs / "ddp" / recipe), 1e-6), recipe


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _dying_worker(rank: int, port: int, root: str) -> None:
    """A 2-process FSDP2 int4 run (the flags of ``FLAGS``) in which rank 1 dies after step ``KILL_AT``."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2")
    os.chdir(root)
    import torch

    torch.set_num_threads(1)
    from lowbit.experiments import parallel, torchrun
    from lowbit.experiments.config import TrainConfig
    from lowbit.experiments.runner import finish

    par = parallel.init(fsdp=True, timeout=60)
    config = TrainConfig.from_overrides(
        "gpt-shakespeare", recipe="int4", out="killed", data="corpus.txt", steps=STEPS, batch_size=4,
        seq_len=16, layers=1, dim=32, heads=2, max_eval_examples=8, eval_every=2,
        checkpoint_every=CHECKPOINT_EVERY, threads=1, progress=False,
    )  # fmt: skip
    run = torchrun.prepare(config, None, par)
    if (
        rank == 0
    ):  # FSDP2 shards QuantLinear's weight like nn.Linear's (dim 0); the 0-dim LSQ steps stay whole
        from torch.distributed.tensor import DTensor

        found = {
            n: [type(p).__name__, list(p.to_local().shape if isinstance(p, DTensor) else p.shape)]
            for n, p in run.model.named_parameters()
            if n in ("blocks.0.mlp.fc_in.weight", "blocks.0.mlp.fc_in.x_step", "lm_head.weight")
        }
        Path(root, "sharding.json").write_text(json.dumps(found))

    def on_step(step: int, loss: float) -> None:
        if step == KILL_AT and rank == 1:
            os._exit(3)  # dies without a word, as a killed process does

    try:
        finish(run, on_step)
    except parallel.PeerFailure as err:
        Path(root, "rank0.err").write_text(str(err))
        raise SystemExit(4) from None


def test_dead_rank_stops_the_run_and_resume_gives_the_same_losses(runs: Path) -> None:
    ctx = mp.get_context("spawn")
    port = _free_port()
    procs = [ctx.Process(target=_dying_worker, args=(r, port, str(runs))) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [4, 3]  # the survivor failed (no hang), the dead one died
    sharding = json.loads((runs / "sharding.json").read_text())
    assert sharding["blocks.0.mlp.fc_in.weight"] == ["DTensor", [64, 32]]  # 128 x 32 over 2 processes
    assert sharding["lm_head.weight"][0] == "DTensor" and sharding["blocks.0.mlp.fc_in.x_step"] == [
        "Parameter",
        [],
    ]
    message = (runs / "rank0.err").read_text()
    assert "another process died" in message and "--resume" in message
    assert _losses(runs / "killed") == _losses(runs / "fsdp" / "int4")[:CHECKPOINT_EVERY]  # checkpointed
    shutil.copytree(runs / "killed", runs / "killed-1")
    train = ["train", "--recipe", "int4", "--data", "corpus.txt", *FLAGS, "--resume"]
    # same world size and mode: the uninterrupted 2-process FSDP losses, bit for bit
    _lowbit([*train, "--out", "killed", "--fsdp"], runs, torchrun=True)
    assert _losses(runs / "killed") == _losses(runs / "fsdp" / "int4")
    # one plain process from the 2-process checkpoint: the one-process losses from there on
    _lowbit([*train, "--out", "killed-1"], runs)
    resumed, one = _losses(runs / "killed-1"), _losses(runs / "one" / "int4")
    assert _close(resumed[CHECKPOINT_EVERY:], one[CHECKPOINT_EVERY:], RTOL), (resumed, one)
