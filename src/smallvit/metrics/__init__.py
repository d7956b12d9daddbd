"""Metrics, tensors in and numbers out: frozen features, weighted kNN, linear probe (re-exported here), and the
classifier and spatial diagnostics of :mod:`~smallvit.metrics.classification` and :mod:`~smallvit.metrics.spatial`.

They know no run folders or trainers, so the engine uses them during training (online kNN, a linear-probe head)
and :mod:`smallvit.runs` uses them on a finished run.
"""

from smallvit.metrics.features import extract_features
from smallvit.metrics.knn import knn_accuracy, knn_scores
from smallvit.metrics.linear import (
    LinearProbe,
    fit_linear_probe,
    linear_probe_accuracy,
    select_weight_decay,
    train_linear_probe,
)

__all__ = [
    "LinearProbe",
    "extract_features",
    "fit_linear_probe",
    "knn_accuracy",
    "knn_scores",
    "linear_probe_accuracy",
    "select_weight_decay",
    "train_linear_probe",
]
