import pytest
import torch

from smallvit.data import stratified_subset
from smallvit.errors import DataError

LABELS = torch.arange(10).repeat_interleave(7)  # 10 classes of 7 images, sorted by class
SHUFFLED = LABELS[torch.randperm(70, generator=torch.Generator().manual_seed(1))]


def test_per_class_takes_that_many_of_every_class():
    indices = stratified_subset(SHUFFLED, per_class=3)
    assert torch.bincount(SHUFFLED[indices]).tolist() == [3] * 10
    assert indices.dtype == torch.int64 and torch.equal(indices, indices.sort().values)
    assert len(indices.unique()) == 30


def test_total_spreads_evenly_and_the_remainder_one_per_class():
    counts = torch.bincount(SHUFFLED[stratified_subset(SHUFFLED, total=25)], minlength=10)
    assert counts.sum() == 25 and sorted(counts.tolist()) == [2] * 5 + [3] * 5
    assert torch.bincount(SHUFFLED[stratified_subset(SHUFFLED, total=70)]).tolist() == [7] * 10
    assert torch.bincount(SHUFFLED[stratified_subset(SHUFFLED, total=4)], minlength=10).tolist().count(1) == 4


def test_same_seed_same_subset_other_seed_other_subset():
    assert torch.equal(
        stratified_subset(SHUFFLED, per_class=2, seed=3), stratified_subset(SHUFFLED, per_class=2, seed=3)
    )
    assert not torch.equal(
        stratified_subset(SHUFFLED, per_class=2, seed=3), stratified_subset(SHUFFLED, per_class=2, seed=4)
    )
    assert (
        stratified_subset([0, 0, 1, 1, 1], per_class=1).tolist()
        == stratified_subset(torch.tensor([0, 0, 1, 1, 1]), per_class=1).tolist()
    )


def test_too_few_images_is_an_error():
    labels = torch.tensor([0, 0, 0, 1])
    with pytest.raises(DataError, match="class 1 has 1 images, fewer than the 2"):
        stratified_subset(labels, per_class=2)
    with pytest.raises(DataError):
        stratified_subset(labels, total=4)  # 2 per class
    with pytest.raises(ValueError):
        stratified_subset(labels, per_class=1, total=2)
