from types import SimpleNamespace

import pytest
import torch

import smallvit.engine.trainer as trainer
from smallvit.metrics.classification import balanced_accuracy, is_balanced


def test_balanced_accuracy_is_the_mean_of_per_class_recalls():
    # Class 0: 3 images, 2 right; class 1: 1 image, right; class 2: no images (left out of the mean).
    labels = torch.tensor([0, 0, 0, 1])
    predictions = torch.tensor([0, 0, 1, 1])
    assert balanced_accuracy(predictions, labels, num_classes=3) == pytest.approx((2 / 3 + 1) / 2)
    # Plain top-1 weighs class 0 three times: 3/4.
    assert (predictions == labels).float().mean().item() == 0.75


def test_balanced_accuracy_equals_top1_on_a_balanced_split():
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    predictions = torch.tensor([0, 1, 1, 1, 0, 2])
    assert balanced_accuracy(predictions, labels, 3) == pytest.approx((predictions == labels).float().mean().item())


@pytest.mark.parametrize(
    ("labels", "balanced"), [([0, 1, 2, 0, 1, 2], True), ([0, 0, 1], False), ([2, 2, 0, 0], True), ([], True)]
)
def test_is_balanced_counts_only_the_classes_present(labels, balanced):
    assert is_balanced(torch.tensor(labels, dtype=torch.long)) is balanced


def test_the_trainer_records_balanced_accuracy_only_on_an_unbalanced_test_split(monkeypatch):
    probabilities = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.4, 0.6], [0.3, 0.7]])  # predicts 0, 0, 1, 1
    monkeypatch.setattr(trainer, "predict_split", lambda exp, model, data: probabilities)
    unbalanced = SimpleNamespace(test=SimpleNamespace(labels=torch.tensor([0, 0, 0, 1])), classes=["a", "b"])
    assert trainer.balanced_test_accuracy(unbalanced, None) == {
        "test/supervised/balanced_acc1": pytest.approx((2 / 3 + 1) / 2)
    }
    balanced = SimpleNamespace(test=SimpleNamespace(labels=torch.tensor([0, 0, 1, 1])), classes=["a", "b"])
    assert trainer.balanced_test_accuracy(balanced, None) == {}
    monkeypatch.setattr(trainer, "predict_split", lambda exp, model, data: None)  # a stage without a classifier
    assert trainer.balanced_test_accuracy(unbalanced, None) == {}
