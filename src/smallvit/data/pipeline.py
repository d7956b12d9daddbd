"""From a uint8 batch to a :class:`Batch` of augmented views, as a recipe describes them.

A recipe names its views; each lists its ops (see :mod:`smallvit.data.transforms`), how many augmented copies
of every image it holds (multi-crop: 2 large and 4 small) and an optional mixup/CutMix::

    augment = build_augmentation(
        {"main": ViewSpec(ops=[{"op": "random_crop", "padding": 4}, {"op": "hflip"}], mix=MixConfig(cutmix_alpha=1.0))},
        mean=(0.49, 0.48, 0.45), std=(0.25, 0.24, 0.26),
    )
    batch = augment(images_uint8, labels, indices, gen, epoch)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from pydantic import Field
from torch import Tensor

from smallvit.data import patch_ops  # noqa: F401  (registers RelViT's patch-level ops beside transforms' ops)
from smallvit.data.batch import Batch, View
from smallvit.data.mixing import MixConfig, apply_mix
from smallvit.data.transforms import OPS, Op, build_op
from smallvit.errors import ConfigError, Strict


class ViewSpec(Strict):
    """One named view of a recipe.

    Attributes:
        ops: the ops in order, each ``{"op": name, **arguments}``. Unless ``normalize`` is listed, it is added with
            the dataset's mean and std: before the first op that needs standardised images (``random_erasing``),
            else at the end.
        copies: augmented copies of each image; copy k of sample i is row ``k * B + i``, so
            ``view.images.chunk(copies)`` gives one batch per copy.
        mix: mixup/CutMix applied after the ops, across all rows of the view.
    """

    ops: list[dict[str, Any]] = Field(default_factory=list)
    copies: int = Field(1, ge=1)
    mix: MixConfig | None = None


@dataclass
class _ViewPlan:
    copies: int
    ops: list[Op]
    mix: MixConfig | None


class Augmentation:
    """Turns a uint8 batch into a :class:`Batch`, one :class:`View` per recipe view; see :func:`build_augmentation`."""

    def __init__(self, plans: Mapping[str, _ViewPlan]):
        self.plans = dict(plans)

    def __call__(
        self, images: Tensor, labels: Tensor | None, indices: Tensor, gen: torch.Generator | None, epoch: int = 0
    ) -> Batch:
        """Augment ``images`` uint8 [B, C, H, W] with their ``labels`` [B] (or None) and dataset ``indices`` [B].

        ``gen`` lives on the images' device and supplies every random number (None will do when no op is random,
        as in evaluation); ``epoch`` drives mixing schedules.
        """
        source = View(images.float().div_(255), labels, indices)
        views = {}
        for name, plan in self.plans.items():
            view = _repeat(source, plan.copies)
            for op in plan.ops:
                view = op(view, gen)
            if plan.mix is not None:
                view = apply_mix(view, plan.mix, gen, epoch)
            views[name] = view
        return Batch(views)


def _repeat(view: View, copies: int) -> View:
    """``copies`` copies of every row, copy-major: row ``k * B + i`` is copy k of sample i."""
    if copies == 1:
        return view

    def repeat(t: Tensor | None) -> Tensor | None:
        return None if t is None else torch.cat([t] * copies)

    return view.replace(images=repeat(view.images), labels=repeat(view.labels), indices=repeat(view.indices))


def _with_normalize(view: str, specs: list[dict[str, Any]], mean: Sequence[float], std: Sequence[float]) -> list[dict]:
    """The op list with ``normalize`` inserted where it belongs, unless it is listed already (then checked)."""
    names = [spec.get("op") for spec in specs]
    needs_normalized = (i for i, name in enumerate(names) if getattr(OPS.get(name), "after_normalize", False))
    first = next(needs_normalized, len(names))
    if "normalize" not in names:
        return [*specs[:first], {"op": "normalize", "mean": mean, "std": std}, *specs[first:]]
    if names.index("normalize") > first:
        raise ConfigError(f"view {view!r}: {names[first]} works on normalised images; move it after normalize")
    return specs


def build_augmentation(views: Mapping[str, ViewSpec], mean: Sequence[float], std: Sequence[float]) -> Augmentation:
    """The augmentation for a recipe's views, every op built and checked now so a bad recipe fails before training.

    ``mean`` and ``std`` (per channel, of [0, 1] images) are the dataset's, used where ``normalize`` is added.

    Raises:
        ConfigError: an op is unknown, has a bad argument, or is placed before ``normalize`` but needs it.
    """
    plans = {}
    for name, spec in views.items():
        specs = _with_normalize(name, spec.ops, mean, std)
        try:
            ops = [build_op(op) for op in specs]
        except ConfigError as err:
            raise ConfigError(f"view {name!r}: {err}") from None
        plans[name] = _ViewPlan(spec.copies, ops, spec.mix)
    return Augmentation(plans)


def eval_augmentation(size: int | Sequence[int], mean: Sequence[float], std: Sequence[float]) -> Augmentation:
    """Evaluation: one view ``"main"``, resized to ``size`` if it differs, then normalised."""
    return build_augmentation({"main": ViewSpec(ops=[{"op": "resize", "size": size}])}, mean, std)
