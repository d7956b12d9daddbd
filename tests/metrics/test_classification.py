import pytest
import torch

from smallvit.engine.pictures import class_summary
from smallvit.metrics.classification import balanced_accuracy, balanced_accuracy_from_per_class, is_balanced


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


def test_balanced_accuracy_from_a_class_summary_leaves_out_the_classes_without_images():
    labels = torch.tensor([0] * 10 + [1] * 2)  # class c has no image
    predictions = torch.tensor([0] * 8 + [1] * 2 + [0, 1])  # recalls 8/10 and 1/2
    summary = class_summary(torch.eye(3)[predictions], labels, ["a", "b", "c"])  # what the model card reads
    assert summary["per_class"] == {"a": 0.8, "b": 0.5, "c": None} and summary["accuracy"] == 0.75
    assert balanced_accuracy_from_per_class(summary["per_class"]) == pytest.approx(0.65)
    assert balanced_accuracy_from_per_class(summary["per_class"]) == balanced_accuracy(predictions, labels, 3)
    assert balanced_accuracy_from_per_class({"a": None}) is None
    assert balanced_accuracy(torch.tensor([], dtype=torch.long), torch.tensor([], dtype=torch.long), 2) is None
