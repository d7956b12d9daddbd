"""Weighted kNN on frozen features: the vote, and its arguments."""

import math

import pytest
import torch

from smallvit.metrics import knn_accuracy, knn_scores


def test_separable_toy_features_are_classified_perfectly():
    gen = torch.Generator().manual_seed(0)
    centres = torch.eye(16)[:4] * 5  # 4 classes on orthogonal axes, noise far smaller than their distance
    train_labels, query_labels = torch.arange(200) % 4, torch.arange(100) % 4
    train = centres[train_labels] + 0.3 * torch.randn(200, 16, generator=gen)
    query = centres[query_labels] + 0.3 * torch.randn(100, 16, generator=gen)
    assert knn_accuracy(train, train_labels, query, query_labels, num_classes=4) == 1.0


def test_votes_are_exp_cosine_over_temperature_of_the_k_nearest():
    bank = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0], [-1.0, 0.0]])
    labels = torch.tensor([0, 1, 1, 0])
    query = torch.tensor([[3.0, 0.0]])  # cosines: 1, 0, 1/sqrt(2), -1
    scores = knn_scores(bank, labels, query, num_classes=2, k=2, temperature=0.5)
    expected = torch.tensor([[math.exp(1 / 0.5), math.exp(2**-0.5 / 0.5)]])
    assert torch.allclose(scores, expected)
    all_neighbours = knn_scores(bank, labels, query, num_classes=2, k=10, temperature=0.5)  # k clipped to the bank
    assert torch.allclose(all_neighbours[0, 0], torch.tensor(math.exp(2) + math.exp(-2)))


def test_bad_k_or_temperature_is_refused():
    with pytest.raises(ValueError, match="k >= 1"):
        knn_scores(torch.randn(3, 2), torch.zeros(3, dtype=torch.long), torch.randn(1, 2), 1, k=0)
    with pytest.raises(ValueError, match="temperature > 0"):
        knn_scores(torch.randn(3, 2), torch.zeros(3, dtype=torch.long), torch.randn(1, 2), 1, temperature=0)
