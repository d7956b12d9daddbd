"""The learning-rate schedule, a pure function of training progress (in epochs, fractional).

A resumed run recomputes it exactly from its step counter. Objective weight schedules are part of the run
configuration: :class:`smallvit.config.WeightSchedule`.
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
