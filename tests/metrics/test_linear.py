"""Linear probe on frozen features: Bayes accuracy, invariances, weight-decay selection."""

import math

import pytest
import torch

from smallvit.metrics import fit_linear_probe, linear_probe_accuracy, select_weight_decay


def _two_gaussians(n: int, gen: torch.Generator, dim: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Classes N(-mu, I) and N(+mu, I) with |mu| = 1: the best possible accuracy is Phi(1) = 0.841."""
    labels = torch.randint(0, 2, (n,), generator=gen)
    mu = torch.zeros(dim)
    mu[0] = 1.0
    return torch.randn(n, dim, generator=gen) + (2 * labels - 1).unsqueeze(1) * mu, labels


def test_probe_reaches_the_bayes_accuracy_of_two_gaussians():
    gen = torch.Generator().manual_seed(0)
    train, train_labels = _two_gaussians(2000, gen)
    query, query_labels = _two_gaussians(4000, gen)
    accuracy, weight_decay = linear_probe_accuracy(train, train_labels, query, query_labels, num_classes=2)
    bayes = 0.5 * (1 + math.erf(1 / math.sqrt(2)))
    assert accuracy == pytest.approx(bayes, abs=0.02)
    assert weight_decay in (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)


def test_separable_toy_features_are_classified_perfectly():
    gen = torch.Generator().manual_seed(1)
    centres = torch.randn(5, 12, generator=gen) * 4
    train_labels, query_labels = torch.arange(150) % 5, torch.arange(50) % 5
    train = centres[train_labels] + 0.2 * torch.randn(150, 12, generator=gen)
    query = centres[query_labels] + 0.2 * torch.randn(50, 12, generator=gen)
    accuracy, _ = linear_probe_accuracy(train, train_labels, query, query_labels, num_classes=5, weight_decay=1e-3)
    assert accuracy == 1.0


def test_probe_is_invariant_to_the_scale_and_offset_of_features():
    gen = torch.Generator().manual_seed(2)
    features, labels = _two_gaussians(300, gen)
    probe = fit_linear_probe(features, labels, 2, weight_decay=1e-2)
    rescaled = fit_linear_probe(features * 1000 + 7, labels, 2, weight_decay=1e-2)
    assert torch.equal(probe.logits(features).argmax(1), rescaled.logits(features * 1000 + 7).argmax(1))


def test_stronger_weight_decay_gives_smaller_weights_and_selection_prefers_it_on_ties():
    gen = torch.Generator().manual_seed(3)
    features, labels = _two_gaussians(200, gen)
    weak = fit_linear_probe(features, labels, 2, weight_decay=1e-4)
    strong = fit_linear_probe(features, labels, 2, weight_decay=1.0)
    assert strong.weight.norm() < weak.weight.norm()
    chosen, probe = select_weight_decay(features, labels, 2, candidates=(1e-3, 1e-3 * (1 + 1e-12)))
    assert chosen == 1e-3 * (1 + 1e-12) and probe.weight_decay == chosen
    with pytest.raises(ValueError, match="weight_decay >= 0"):
        fit_linear_probe(features, labels, 2, weight_decay=-1.0)
