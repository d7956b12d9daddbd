"""Schedules as pure functions of training progress (in epochs, fractional).

Both the learning rate and every objective weight are functions of ``(epoch, total_epochs)``, so a resumed run
recomputes them exactly from its step counter.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict


def warmup_cosine(epoch: float, total: float, warmup: float, base: float, final: float = 0.0) -> float:
    """Linear warm-up from 0 to ``base`` over ``warmup`` epochs, then cosine decay to ``final`` at ``total``."""
    if warmup > 0 and epoch < warmup:
        return base * epoch / warmup
    span = max(total - warmup, 1e-12)
    progress = min(max((epoch - warmup) / span, 0.0), 1.0)
    return final + 0.5 * (base - final) * (1.0 + math.cos(math.pi * progress))


class WeightSchedule(BaseModel):
    """How an objective's weight evolves; the value multiplies the objective's configured ``weight``.

    constant: always 1. warmup: 0 → 1 linearly over ``warmup_epochs``, then 1. warmup_decay: 0 → 1 over
    ``warmup_epochs``, then linearly down to 0 at the last epoch (DRLoc). cosine: 1 → 0 along a half cosine.
    """

    model_config = ConfigDict(extra="forbid")

    kind: Literal["constant", "warmup", "warmup_decay", "cosine"] = "constant"
    warmup_epochs: float = 0.0

    def factor(self, epoch: float, total: float) -> float:
        ramp = min(epoch / self.warmup_epochs, 1.0) if self.warmup_epochs > 0 else 1.0
        if self.kind == "constant":
            return 1.0
        if self.kind == "warmup":
            return ramp
        if self.kind == "warmup_decay":
            if epoch < self.warmup_epochs:
                return ramp
            return max(0.0, (total - epoch) / max(total - self.warmup_epochs, 1e-12))
        return 0.5 * (1.0 + math.cos(math.pi * min(epoch / max(total, 1e-12), 1.0)))
