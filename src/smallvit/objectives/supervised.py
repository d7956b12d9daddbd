"""Supervised classification: a linear head on the pooled feature, cross-entropy with label smoothing.

Soft targets from mixup/CutMix come as a :class:`~smallvit.data.batch.Mix` pairing on the view, turned into
``lam * CE(y) + (1 - lam) * CE(y[partner])`` by the shared :func:`~smallvit.data.mixing.mixed_cross_entropy`, which
is also the tensor-level loss to call from a loop of your own: ``mixed_cross_entropy(logits, labels, mix, 0.1)``.

Example:
    >>> objective = Supervised(Supervised.Config(name="supervised"), setup)
    >>> out = objective(StepContext(batch, backbone))
    >>> out.loss.backward(); out.metrics["acc1"]
"""

from __future__ import annotations

from pydantic import Field
from torch import Tensor, nn

from smallvit.data.mixing import mixed_cross_entropy
from smallvit.objectives.base import (
    Objective,
    ObjectiveConfig,
    ObjectiveOutput,
    ObjectiveSetup,
    StepContext,
    register_objective,
)


def topk_accuracy(logits: Tensor, labels: Tensor, k: int) -> Tensor:
    """Fraction of rows whose label is among the ``k`` highest logits (k clipped to the class count)."""
    k = min(k, logits.shape[-1])
    return (logits.topk(k, dim=-1).indices == labels[:, None]).any(dim=-1).float().mean()


class SupervisedConfig(ObjectiveConfig):
    label_smoothing: float = Field(0.1, description="label smoothing of the cross-entropy (training only)")


@register_objective
class Supervised(Objective):
    """Cross-entropy on class labels through a linear head on the pooled feature (CLS or mean token)."""

    name = "supervised"
    requires_patch_tokens = False
    Config = SupervisedConfig
    requires_labels = True

    def __init__(self, config: SupervisedConfig, setup: ObjectiveSetup):
        super().__init__(config, setup)
        self.head = nn.Linear(setup.embed_dim, setup.num_classes)
        nn.init.trunc_normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    def view_loss(self, ctx: StepContext, view: str) -> ObjectiveOutput:
        labels, mix = ctx.view(view).labels, ctx.view(view).mix
        logits = self.head(ctx.encode(view).pooled).float()
        smoothing = self.config.label_smoothing if ctx.training else 0.0
        metrics = {} if mix is not None else {f"acc{k}": topk_accuracy(logits, labels, k) for k in (1, 5)}
        return ObjectiveOutput(mixed_cross_entropy(logits, labels, mix, smoothing), metrics)

    def classifier_state(self) -> dict[str, Tensor]:
        return {"head.weight": self.head.weight, "head.bias": self.head.bias}
