"""Class-balanced random subsets, e.g. to train on 10% of a dataset or on k images per class, and validation splits."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from smallvit.errors import DataError


def stratified_subset(
    labels: Tensor | Sequence[int], per_class: int | None = None, total: int | None = None, seed: int = 0
) -> Tensor:
    """Sorted indices (int64) of ``per_class`` random images of every class, or of ``total`` images spread as evenly
    as the classes allow (the remainder adds one image to each of randomly chosen classes).

    The same labels, count and seed always give the same indices. Raises DataError if a class has too few images.
    """
    if (per_class is None) == (total is None):
        raise ValueError("pass exactly one of per_class and total")
    labels = torch.as_tensor(labels)
    classes = labels.unique()
    generator = torch.Generator().manual_seed(seed)
    if total is None:
        counts = torch.full((len(classes),), per_class)
    else:
        counts = torch.full((len(classes),), total // len(classes))
        counts[torch.randperm(len(classes), generator=generator)[: total % len(classes)]] += 1
    chosen = []
    for c, count in zip(classes.tolist(), counts.tolist(), strict=True):
        members = torch.nonzero(labels == c).flatten()
        if count > len(members):
            raise DataError(f"class {c} has {len(members)} images, fewer than the {count} asked for: ask for fewer")
        chosen.append(members[torch.randperm(len(members), generator=generator)[:count]])
    return torch.cat(chosen).sort().values


def split_validation(labels: Tensor | Sequence[int], fraction: float, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Sorted indices (int64) ``(train, val)`` that hold out, at random, ``round(fraction * n)`` of the ``n`` images of
    every class as validation and keep the rest for training.

    A class of two or more images gives at least one image to each side when ``fraction > 0``; a class of one image
    stays in training. ``round`` is Python's (ties to even: 2.5 -> 2). The same labels, fraction and seed always give
    the same split. ``fraction`` must be in [0, 1); 0 gives every image to training.
    """
    if not 0 <= fraction < 1:
        raise ValueError(f"fraction must be in [0, 1), not {fraction}")
    labels = torch.as_tensor(labels)
    generator = torch.Generator().manual_seed(seed)
    held_out = torch.zeros(len(labels), dtype=torch.bool)
    for c in labels.unique().tolist():
        members = torch.nonzero(labels == c).flatten()
        count = min(max(round(fraction * len(members)), int(fraction > 0)), len(members) - 1)
        held_out[members[torch.randperm(len(members), generator=generator)[:count]]] = True
    return torch.nonzero(~held_out).flatten(), torch.nonzero(held_out).flatten()
