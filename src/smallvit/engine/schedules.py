"""The learning-rate schedule, a pure function of training progress (in epochs, fractional).

A resumed run recomputes it exactly from its step counter, or, when its schedule follows the clock
(``train.time_budget_s``), from its step counter and its training time so far. Objective weight schedules are part of
the run configuration: :class:`smallvit.config.WeightSchedule`.
"""

from __future__ import annotations

import math


def warmup_cosine(epoch: float, total: float, warmup: float, base: float, final: float = 0.0) -> float:
    """Linear warm-up from 0 to ``base`` over ``warmup`` epochs, then cosine decay to ``final`` at ``total``."""
    if warmup > 0 and epoch < warmup:
        return base * epoch / warmup
    span = max(total - warmup, 1e-12)
    progress = min(max((epoch - warmup) / span, 0.0), 1.0)
    return final + 0.5 * (base - final) * (1.0 + math.cos(math.pi * progress))


def run_fraction(steps: int, total_steps: int, elapsed_s: float = 0.0, budget_s: float | None = None) -> float:
    """How much of a run is done, from 0 to 1: ``steps`` of ``total_steps``, or with a time budget the elapsed
    fraction of ``budget_s`` when that is further along (so the run ends annealed at whichever it reaches first)."""
    done = steps / total_steps
    if budget_s is not None:
        done = max(done, elapsed_s / budget_s)
    return min(done, 1.0)
