"""Parametric instance discrimination: every training image is its own class (IDMM).

From "Training Vision Transformers with Only 2040 Images" (Cao, Yu, Wu; ECCV 2022,
https://arxiv.org/abs/2201.10728). A linear layer with one output per training image sits on the pooled feature
(CLS token, or mean patch token); the target of a crop is the index of the image it was cut from. The paper's
pre-training adds label smoothing, low-resolution crops, multi-crop (2 large + 4 small crops per image) and
CutMix; here the crops and CutMix are the recipe's augmentation views (see ``recipes/idmm-pretrain.yaml``), so
this objective only reads ``view.indices`` and ``view.mix``. Its loss is the mean over its views of each view's
mean cross-entropy, as every objective's (:func:`~smallvit.objectives.base.mean_over_views`); the paper sums the
crop groups, CE(large crops) + CE(small crops), which the multi-crop recipes get with the run-level
``weight: 2.0`` (before the objectives shared one reduction this objective summed its views, so that weight keeps
their loss, gradients and training unchanged).

Matches the released code (``main_deit_instance_discrimination.py`` of the authors' repository
"Training-Vision-Transformers-with-only-2040-images"): a bias-carrying linear head on the CLS feature,
``lam * CE(y_a) + (1 - lam) * CE(y_b)`` under CutMix, one loss term per crop group. Deliberate differences: label
smoothing defaults to 0.1 as the paper's ablation (the released code uses plain cross-entropy; set
``label_smoothing: 0``); the CutMix partner is the reversed batch (the project's one CutMix, as timm) rather than
a random permutation. In evaluation the head means nothing for unseen images, so the objective returns no loss:
measure the representation with online kNN (``train.knn_every``) or ``smallvit eval knn|linear``.

Example:
    >>> objective = InstanceDiscrimination(InstanceDiscrimination.Config(name="instance_discrimination"), setup)
    >>> view = View(images, labels=None, indices=torch.arange(len(images)))
    >>> out = objective(StepContext(Batch({"main": view}), backbone))
    >>> out.loss.backward()
    >>> out.metrics["acc1"]
"""

from __future__ import annotations

import warnings

from pydantic import Field
from torch import Tensor, nn

from smallvit.data.batch import Mix
from smallvit.data.mixing import mixed_cross_entropy
from smallvit.objectives.base import (
    Objective,
    ObjectiveConfig,
    ObjectiveOutput,
    ObjectiveSetup,
    StepContext,
    register_objective,
)
from smallvit.objectives.supervised import topk_accuracy

LARGE_INSTANCE_COUNT = 20_000
"""Above this many training images, each instance's class weight gets too few updates to learn well (warned)."""


def instance_targets(indices: Tensor, num_instances: int) -> Tensor:
    """The class of each crop: the training-set index of its image.

    Checked to lie in ``[0, num_instances)`` on the CPU; on a GPU the check would stall every step, and an index
    out of range stops cross-entropy with a device-side assertion instead.
    """
    if (
        indices.device.type == "cpu"
        and len(indices)
        and not 0 <= int(indices.min()) <= int(indices.max()) < num_instances
    ):
        raise ValueError(
            f"instance indices must lie in [0, {num_instances}), got [{int(indices.min())}, {int(indices.max())}]"
        )
    return indices.long()


def large_instance_count_warning(num_instances: int) -> str | None:
    """The warning to show for a dataset too large for one class per image to train well, if it is."""
    if num_instances <= LARGE_INSTANCE_COUNT:
        return None
    return (
        f"instance discrimination over {num_instances} training images: each image's class weight is updated "
        "only when that image is in the batch (once per epoch), so the head learns slowly; expect to need many epochs"
    )


def instance_discrimination_loss(
    logits: Tensor, indices: Tensor, mix: Mix | None = None, label_smoothing: float = 0.1
) -> Tensor:
    """Cross-entropy of instance logits [B, num_instances] against each crop's training-set index [B].

    ``mix``: a CutMix/mixup pairing of the crops, giving ``lam * CE(i) + (1 - lam) * CE(i[partner])``. Usage::

        head = nn.Linear(192, len(train_set))                        # one class per training image
        view = augment(images, None, indices, generator).main           # indices: positions in the training set
        logits = head(backbone(view.images).pooled)
        loss = instance_discrimination_loss(logits, view.indices, view.mix, label_smoothing=0.1)
        loss.backward()
    """
    return mixed_cross_entropy(logits, instance_targets(indices, logits.shape[-1]), mix, label_smoothing)


class InstanceDiscriminationConfig(ObjectiveConfig):
    """``label_smoothing``: 0.1 as the paper; 0 gives the released code's plain cross-entropy."""

    label_smoothing: float = Field(0.1, ge=0.0, lt=1.0, description="label smoothing of the instance cross-entropy")


@register_objective
class InstanceDiscrimination(Objective):
    """Cross-entropy over training-image indices through a linear head (one class per image) on the pooled feature.

    Args:
        config: ``views`` lists the crop groups (e.g. ``[large, small]``); the loss is the mean of their mean losses.
        setup: ``num_train`` sets the number of classes.
    """

    name = "instance_discrimination"
    requires_patch_tokens = False
    Config = InstanceDiscriminationConfig

    def __init__(self, config: InstanceDiscriminationConfig, setup: ObjectiveSetup):
        super().__init__(config, setup)
        if setup.num_train < 1:
            raise ValueError(f"instance discrimination needs at least one training image, got {setup.num_train}")
        if (message := large_instance_count_warning(setup.num_train)) is not None:
            warnings.warn(message, stacklevel=2)
        self.head = nn.Linear(setup.embed_dim, setup.num_train)
        nn.init.trunc_normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    def view_loss(self, ctx: StepContext, view: str) -> ObjectiveOutput:
        if not ctx.training:
            return ObjectiveOutput(None)
        indices, mix = ctx.view(view).indices, ctx.view(view).mix
        logits = self.head(ctx.encode(view).pooled).float()
        loss = instance_discrimination_loss(logits, indices, mix, self.config.label_smoothing)
        return ObjectiveOutput(loss, {} if mix is not None else {"acc1": topk_accuracy(logits.detach(), indices, 1)})
