"""Weighted k-nearest-neighbour classification on frozen features (Wu et al., CVPR 2018; as DINO evaluates).

Each of the ``k`` most cosine-similar training features votes for its class with weight ``exp(sim / T)``.

Example::

    accuracy = knn_accuracy(train_features, train_labels, test_features, test_labels, num_classes=10)
    result = knn_evaluate_run(Path("runs/idmm-pretrain-20261125-120000"))  # {"acc1": ..., "split": "test", ...}
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from smallvit.eval.features import log_evaluation, run_features


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


def knn_evaluate_run(
    run_dir: Path, split: str | None = None, checkpoint: str = "best", k: int = 20, temperature: float = 0.07
) -> dict[str, float | int | str]:
    """Weighted kNN top-1 of a run's frozen features: its training set is the bank, ``split`` the queries.

    Features are cached in the run folder; the result is also appended to ``<run>/evaluations.jsonl``.
    """
    features = run_features(run_dir, checkpoint, split)
    accuracy = knn_accuracy(
        features.train,
        features.train_labels,
        features.query,
        features.query_labels,
        features.num_classes,
        k=k,
        temperature=temperature,
    )
    result = {"kind": "knn", "checkpoint": checkpoint, "split": features.split, "k": k, "temperature": temperature}
    result["acc1"] = accuracy
    log_evaluation(run_dir, result)
    return result
