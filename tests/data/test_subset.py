import pytest
import torch

from smallvit.data import split_validation, stratified_subset
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


def test_split_validation_holds_out_round_fraction_of_each_class():
    # class sizes 4, 6, 1, 2, 10 at 25%: 1.0 -> 1; 1.5 -> 2; a lone image stays in train; 0.5 -> at least 1 of the 2;
    # 2.5 -> 2 (Python's round, ties to even)
    labels = torch.tensor([0] * 4 + [1] * 6 + [2] + [3] * 2 + [4] * 10)
    labels = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))]
    train, val = split_validation(labels, 0.25)
    assert torch.bincount(labels[val], minlength=5).tolist() == [1, 2, 0, 1, 2]
    assert torch.bincount(labels[train], minlength=5).tolist() == [3, 4, 1, 1, 8]
    assert train.dtype == val.dtype == torch.int64
    assert torch.equal(train, train.sort().values) and torch.equal(val, val.sort().values)
    assert torch.equal(torch.cat([train, val]).sort().values, torch.arange(len(labels)))  # disjoint and complete


def test_split_validation_never_empties_a_class_of_its_training_images():
    train, val = split_validation([0, 0, 1, 1, 1], 0.9)  # 1.8 -> 2 and 2.7 -> 3 would take whole classes
    assert val.tolist() != [] and torch.bincount(torch.tensor([0, 0, 1, 1, 1])[train]).tolist() == [1, 1]


def test_split_validation_same_seed_same_split_other_seed_other_split():
    train, val = split_validation(SHUFFLED, 0.3, seed=5)
    assert torch.bincount(SHUFFLED[val]).tolist() == [2] * 10  # 0.3 * 7 = 2.1 -> 2
    again = split_validation(SHUFFLED, 0.3, seed=5)
    assert torch.equal(train, again[0]) and torch.equal(val, again[1])
    assert not torch.equal(val, split_validation(SHUFFLED, 0.3, seed=6)[1])
    assert torch.equal(split_validation(SHUFFLED.tolist(), 0.3, seed=5)[1], val)  # a list works like a tensor


def test_split_validation_fraction_zero_and_out_of_range():
    train, val = split_validation(SHUFFLED, 0.0)
    assert torch.equal(train, torch.arange(70)) and val.tolist() == [] and val.dtype == torch.int64
    for fraction in (1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match=r"fraction must be in \[0, 1\)"):
            split_validation(SHUFFLED, fraction)
