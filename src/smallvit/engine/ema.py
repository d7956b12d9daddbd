"""An exponential moving average of the weights, as the training loop keeps it (``train.ema_decay``)."""

from __future__ import annotations

import torch
from timm.utils import ModelEmaV3
from torch import Tensor

from smallvit.engine.checkpoint import prefixed

PREFIX = "ema."
"""The EMA weights' key prefix in a checkpoint, beside the model's ``model.``."""


class Ema:
    """timm's :class:`~timm.utils.ModelEmaV3` of a model: a copy at the first update, then after each optimizer step
    ``average = decay * average + (1 - decay) * weights``. The loop evaluates ``module`` beside the model (metrics
    ``<split>/ema/...``) and saves it with every checkpoint, so that a resumed run continues the same average."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.average = ModelEmaV3(model, decay=decay)

    @property
    def module(self) -> torch.nn.Module:
        """The averaged model."""
        return self.average.module

    def update(self, model: torch.nn.Module, step: int) -> None:
        """Average in ``model``'s weights after optimizer step ``step`` (counted from 1; step 1 copies them)."""
        self.average.update(model, step=step)

    def tensors(self) -> dict[str, Tensor]:
        """The averaged weights keyed for a checkpoint (``ema.<name>``)."""
        return prefixed(PREFIX, self.module.state_dict())

    def load(self, tensors: dict[str, Tensor]) -> None:
        """Restore the average from a checkpoint's tensors (the ``ema.`` ones; others are ignored)."""
        self.module.load_state_dict({k[len(PREFIX) :]: v for k, v in tensors.items() if k.startswith(PREFIX)})
