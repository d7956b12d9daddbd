"""Where a classifier goes wrong: the confusion matrix, accuracy per class, and the worst-classified images.

Tensors in, numbers out; :mod:`smallvit.engine.pictures` draws them and ``smallvit eval --json`` prints them.

Example:
    >>> confusion = confusion_matrix(torch.tensor([0, 1, 1]), torch.tensor([0, 0, 1]), num_classes=2)
    >>> confusion.tolist()                  # rows: true class, columns: predicted class
    [[1, 1], [0, 1]]
    >>> per_class_accuracy(confusion).tolist()
    [0.5, 1.0]
    >>> balanced_accuracy(torch.tensor([0, 1, 1]), torch.tensor([0, 0, 1]), num_classes=2)  # (0.5 + 1.0) / 2
    0.75
    >>> balanced_accuracy_from_per_class({"cat": 0.5, "dog": 1.0, "owl": None})  # owl: no images
    0.75
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor


def confusion_matrix(predictions: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """int64 [num_classes, num_classes]: entry (t, p) counts the images of true class t predicted as p."""
    if predictions.shape != labels.shape:
        raise ValueError(f"predictions {tuple(predictions.shape)} and labels {tuple(labels.shape)} differ in shape")
    pairs = labels.long().cpu() * num_classes + predictions.long().cpu()
    return torch.bincount(pairs, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def per_class_accuracy(confusion: Tensor) -> Tensor:
    """float [num_classes]: the fraction of each true class predicted right; NaN for a class with no images."""
    totals = confusion.sum(dim=1).double()
    return (confusion.diagonal().double() / totals).where(totals > 0, torch.full_like(totals, float("nan")))


def balanced_accuracy(predictions: Tensor, labels: Tensor, num_classes: int) -> float | None:
    """Top-1 averaged over the classes that have images (mean per-class recall): what top-1 is on a balanced split,
    and the fair figure on an unbalanced one, where top-1 weighs the large classes more. None without images."""
    return balanced_accuracy_from_per_class(per_class_accuracy(confusion_matrix(predictions, labels, num_classes)))


def balanced_accuracy_from_per_class(per_class: Tensor | Mapping[str, float | None]) -> float | None:
    """:func:`balanced_accuracy` from accuracies already computed per class (:func:`per_class_accuracy`'s tensor, or
    a class summary's ``per_class`` dict): their mean over the classes with images (NaN or None: without); None when
    no class has images."""
    if isinstance(per_class, Mapping):
        per_class = torch.tensor([math.nan if a is None else a for a in per_class.values()], dtype=torch.float64)
    mean = per_class.double().nanmean()
    return None if mean.isnan() else float(mean)


def is_balanced(labels: Tensor) -> bool:
    """Whether every class that has images has as many as the others."""
    counts = torch.bincount(labels.long().cpu())
    present = counts[counts > 0]
    return bool(present.min() == present.max()) if len(present) else True


def worst_classified(probabilities: Tensor, labels: Tensor, count: int) -> Tensor:
    """Indices of the ``count`` misclassified images whose true class got the lowest probability, worst first
    (fewer when fewer are misclassified). ``probabilities``: [N, classes] softmax outputs."""
    true_probability = probabilities.gather(1, labels.long()[:, None]).squeeze(1)
    wrong = (probabilities.argmax(dim=1) != labels).nonzero().squeeze(1)
    order = true_probability[wrong].argsort(stable=True)
    return wrong[order[:count]]
