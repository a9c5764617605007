"""A training run's progress display: a redrawn bar on a terminal, plain lines to logs and pipes.

The bar is drawn only when stderr is a terminal; otherwise, with progress on, a plain line every
``PROGRESS_LOG_SECONDS`` (and at the first and the last step).
"""

from __future__ import annotations

import math
import sys
import time

from lowbit.experiments.config import TrainConfig

#: Without a terminal on stderr: one progress line every this many seconds (and at the first and last step).
PROGRESS_LOG_SECONDS = 10.0


class Progress:
    """Shows a run's steps, loss and throughput (``unit`` per second of training time) until ``close``."""

    def __init__(self, config: TrainConfig, initial: int, unit: str) -> None:
        from tqdm.auto import tqdm

        self.config, self.unit = config, unit
        self.units, self.train_time = 0, 0.0
        # a redrawn bar only on a terminal; otherwise (logs, pipes) a plain line every few seconds
        self.use_bar = config.progress and getattr(sys.stderr, "isatty", lambda: False)()
        self.bar = tqdm(
            total=config.steps,
            initial=initial,
            desc=f"{config.task} {config.recipe}",
            unit="step",
            disable=not self.use_bar,
            dynamic_ncols=True,
            mininterval=0.5,
        )
        self.last_line = -math.inf

    def update(self, step: int, loss: float, units: int, seconds: float) -> None:
        """Step ``step`` trained ``units`` in ``seconds`` to ``loss``: advance the bar or print a line."""
        cfg = self.config
        self.units, self.train_time = self.units + units, self.train_time + seconds
        rate = f"loss {loss:.4f}, {self.units / max(self.train_time, 1e-9):,.0f} {self.unit}/s"
        self.bar.update(1)
        self.bar.set_postfix_str(rate)
        now = time.monotonic()
        if (
            cfg.progress
            and not self.use_bar
            and (now - self.last_line >= PROGRESS_LOG_SECONDS or step == cfg.steps)
        ):
            print(f"{cfg.task} {cfg.recipe}: step {step}/{cfg.steps}, {rate}", file=sys.stderr)
            sys.stderr.flush()
            self.last_line = now

    def close(self) -> None:
        """Close the bar."""
        self.bar.close()
