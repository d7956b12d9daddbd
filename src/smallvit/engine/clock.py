"""Training time: counted across the starts of a resumed run, against ``train.time_limit_s`` and
``train.time_budget_s``."""

from __future__ import annotations

import time


def now() -> float:
    """The clock training time is read from, in seconds (a test replaces it with one it controls)."""
    return time.perf_counter()


class TrainingClock:
    """Seconds of training — the loop: steps, validation, checkpoints; not loading the data or the final test —
    since this start, plus ``spent_s`` of the starts before it.

    ``limit_s`` (``train.time_limit_s``) and ``budget_s`` (``train.time_budget_s``) both end a run after the step that
    reaches them; the budget is also what a clock-following schedule spreads over (:meth:`start_step`)."""

    def __init__(
        self,
        spent_s: float = 0.0,
        limit_s: float | None = None,
        budget_s: float | None = None,
        last_step_s: float = 0.0,
    ):
        self.spent_s, self.limit_s, self.budget_s = spent_s, limit_s, budget_s
        self.last_step_s = last_step_s  # how long the last step took (a resumed run: before it stopped)
        self._started = now()
        self._step_started = self._started

    def elapsed_s(self) -> float:
        """Seconds of training so far, earlier starts included."""
        return self.spent_s + now() - self._started

    def limit_reached(self) -> bool:
        """Whether the training time has reached the time limit."""
        return self.limit_s is not None and self.elapsed_s() >= self.limit_s

    def budget_spent(self) -> bool:
        """Whether the training time has reached the time budget."""
        return self.budget_s is not None and self.elapsed_s() >= self.budget_s

    def start_step(self) -> tuple[float, float]:
        """Mark a step's start; returns the training time now and the time the step is expected to end at, if it
        takes as long as the last one (the first step of a run: now)."""
        self._step_started = now()
        elapsed = self.spent_s + self._step_started - self._started
        return elapsed, elapsed + self.last_step_s

    def end_step(self) -> None:
        """Mark the end of the step :meth:`start_step` began."""
        self.last_step_s = now() - self._step_started
