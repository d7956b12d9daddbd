"""Linear probe on frozen features: multinomial logistic regression fitted by full-batch L-BFGS.

As Kornblith, Shlens, Le ("Do Better ImageNet Models Transfer Better?", CVPR 2019) evaluate representations:
features standardised with the training set's statistics, an L2-regularised softmax classifier fitted to
convergence with L-BFGS, the regularisation strength chosen on a held-out fifth of the training features and the
probe then refitted on all of them. Unlike Kornblith et al., L-BFGS stops after 300 iterations, and the candidate
strengths are fitted as one path from strong to weak, each starting from the previous solution. On a few thousand
cached features this takes seconds on a CPU, with no learning rate or epoch count to tune (unlike the SGD probes of
MoCo/DINO, which augment and train for 100 epochs).

Example::

    probe = fit_linear_probe(train_features, train_labels, num_classes=10, weight_decay=1e-4)
    accuracy = probe.accuracy(test_features, test_labels)

The same of a run folder, with its features cached there: :func:`smallvit.runs.linear_probe_run`.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

WEIGHT_DECAYS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
"""Candidate L2 strengths (on the mean cross-entropy) tried by :func:`select_weight_decay`."""

SINGLE_THREAD_ELEMENTS = 1 << 22
"""Feature matrices up to this size are fitted on one thread: their operations are too small to gain from more,
and on a busy machine waiting for the other threads made each L-BFGS step several times slower."""


@contextmanager
def _threads_for(features: Tensor):
    previous = torch.get_num_threads()
    if features.numel() <= SINGLE_THREAD_ELEMENTS:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@dataclass
class LinearProbe:
    """A fitted probe: ``logits = ((x - mean) / std) @ weight.T + bias``."""

    weight: Tensor
    bias: Tensor
    mean: Tensor
    std: Tensor
    weight_decay: float

    def logits(self, features: Tensor) -> Tensor:
        standardised = (features.to(self.weight) - self.mean) / self.std
        return standardised @ self.weight.T + self.bias

    def folded(self) -> tuple[Tensor, Tensor]:
        """The same classifier on raw features, ``x @ weight.T + bias`` (standardisation folded in), float32."""
        weight = self.weight / self.std
        return weight.float(), (self.bias - weight @ self.mean).float()

    def accuracy(self, features: Tensor, labels: Tensor) -> float:
        predictions = self.logits(features).argmax(dim=1).cpu()
        return (predictions == labels.cpu()).double().mean().item()


@torch.enable_grad()
def fit_linear_probe(
    features: Tensor,
    labels: Tensor,
    num_classes: int,
    weight_decay: float = 1e-4,
    max_iter: int = 300,
    init: LinearProbe | None = None,
) -> LinearProbe:
    """Minimise ``mean CE + weight_decay / 2 * |W|^2`` (bias not decayed) over standardised features, on the CPU
    in float64 with L-BFGS (strong Wolfe line search), from zero or from ``init``'s weights, until the gradient
    vanishes or after ``max_iter`` iterations (weakly regularised probes of nearly separable features approach
    their optimum slowly; their accuracy has long settled by then).
    """
    if weight_decay < 0 or max_iter < 1:
        raise ValueError(f"need weight_decay >= 0 and max_iter >= 1, got {weight_decay}, {max_iter}")
    x = features.detach().double().cpu()
    y = labels.detach().long().cpu()
    mean, std = x.mean(dim=0), x.std(dim=0).clamp_min(1e-6)
    x = (x - mean) / std
    if init is None:
        weight = torch.zeros(num_classes, x.shape[1], dtype=torch.float64, requires_grad=True)
        bias = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    else:
        weight, bias = init.weight.clone().requires_grad_(), init.bias.clone().requires_grad_()
    optimizer = torch.optim.LBFGS(
        [weight, bias], lr=1, max_iter=max_iter, history_size=20, tolerance_grad=1e-9, line_search_fn="strong_wolfe"
    )

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(x @ weight.T + bias, y) + weight_decay / 2 * weight.square().sum()
        loss.backward()
        return loss

    with _threads_for(x):
        optimizer.step(closure)
    return LinearProbe(weight.detach(), bias.detach(), mean, std, weight_decay)


def select_weight_decay(
    features: Tensor,
    labels: Tensor,
    num_classes: int,
    candidates: tuple[float, ...] = WEIGHT_DECAYS,
    held_out: float = 0.2,
    seed: int = 0,
) -> tuple[float, LinearProbe | None]:
    """The candidate whose probe, fitted on a random ``1 - held_out`` of the samples, classifies the rest best
    (ties go to the stronger regularisation), and that probe (None when there are too few samples to hold any out).

    Candidates are fitted from the strongest to the weakest, each starting from the previous solution.
    """
    if not candidates or not 0 < held_out < 1:
        raise ValueError(f"need at least one candidate and 0 < held_out < 1, got {candidates}, {held_out}")
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    cut = int(len(labels) * held_out)
    if cut == 0 or cut == len(labels):
        return max(candidates), None
    val, fit = order[:cut], order[cut:]
    features, labels = features.cpu(), labels.cpu()
    best, best_probe, best_accuracy, probe = None, None, -1.0, None
    for weight_decay in sorted(candidates, reverse=True):
        probe = fit_linear_probe(features[fit], labels[fit], num_classes, weight_decay, init=probe)
        accuracy = probe.accuracy(features[val], labels[val])
        if accuracy > best_accuracy:
            best, best_probe, best_accuracy = weight_decay, probe, accuracy
    return best, best_probe


def linear_probe_accuracy(
    train_features: Tensor,
    train_labels: Tensor,
    query_features: Tensor,
    query_labels: Tensor,
    num_classes: int,
    weight_decay: float | None = None,
) -> tuple[float, float]:
    """Top-1 of :func:`train_linear_probe` on the queries. Returns (accuracy, weight decay used)."""
    probe = train_linear_probe(train_features, train_labels, num_classes, weight_decay)
    return probe.accuracy(query_features, query_labels), probe.weight_decay


def train_linear_probe(
    features: Tensor, labels: Tensor, num_classes: int, weight_decay: float | None = None
) -> LinearProbe:
    """A probe fitted on all of ``features``; ``weight_decay`` None selects it on a held-out fifth of them."""
    init = None
    if weight_decay is None:
        weight_decay, init = select_weight_decay(features, labels, num_classes)
    return fit_linear_probe(features, labels, num_classes, weight_decay, init=init)
