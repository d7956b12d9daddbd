"""Weighted k-nearest-neighbour classification on frozen features (Wu et al., CVPR 2018; as DINO evaluates).

Each of the ``k`` most cosine-similar training features votes for its class with weight ``exp(sim / T)``.

Example::

    accuracy = knn_accuracy(train_features, train_labels, test_features, test_labels, num_classes=10)

The same of a run folder, with its features cached there: :func:`smallvit.runs.knn_evaluate_run`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


@torch.no_grad()
def knn_scores(
    train_features: Tensor,
    train_labels: Tensor,
    query_features: Tensor,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
    chunk: int = 1024,
) -> Tensor:
    """Class scores [Q, num_classes] for each query feature."""
    if k < 1 or temperature <= 0:
        raise ValueError(f"need k >= 1 and temperature > 0, got k={k}, temperature={temperature}")
    bank = F.normalize(train_features.float(), dim=1)
    k = min(k, len(bank))
    scores = []
    for start in range(0, len(query_features), chunk):
        query = F.normalize(query_features[start : start + chunk].float(), dim=1)
        similarity, neighbours = (query @ bank.T).topk(k, dim=1)
        votes = torch.zeros(len(query), num_classes, device=query.device)
        votes.scatter_add_(1, train_labels[neighbours], (similarity / temperature).exp())
        scores.append(votes)
    return torch.cat(scores)


def knn_accuracy(
    train_features: Tensor,
    train_labels: Tensor,
    query_features: Tensor,
    query_labels: Tensor,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
) -> float:
    """Top-1 accuracy of weighted kNN."""
    scores = knn_scores(train_features, train_labels, query_features, num_classes, k, temperature)
    return (scores.argmax(dim=1) == query_labels).float().mean().item()
