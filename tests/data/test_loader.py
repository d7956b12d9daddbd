import pytest
import torch

from smallvit.data.loader import InMemoryLoader


def dataset(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Image i is the constant i (mod 256), label i % 10."""
    images = (torch.arange(n) % 256).to(torch.uint8).view(n, 1, 1, 1).expand(n, 3, 2, 2).contiguous()
    return images, torch.arange(n) % 10


def epoch_indices(loader: InMemoryLoader, epoch: int = 0) -> list[int]:
    loader.set_epoch(epoch)
    return [i for _, _, indices in loader for i in indices.tolist()]


@pytest.mark.parametrize("drop_last", [False, True])
def test_every_index_once_per_epoch_with_matching_images_and_labels(drop_last):
    images, labels = dataset(23)
    loader = InMemoryLoader(images, labels, batch_size=5, drop_last=drop_last, seed=1)
    seen = []
    for batch_images, batch_labels, indices in loader:
        assert indices.dtype == torch.int64 and (len(indices) == 5 or not drop_last)
        assert torch.equal(batch_images, images[indices]) and torch.equal(batch_labels, labels[indices])
        seen += indices.tolist()
    assert len(loader) == (4 if drop_last else 5)
    assert len(seen) == len(set(seen)) == (20 if drop_last else 23)
    assert set(seen) <= set(range(23))


def test_epochs_reshuffle_and_a_seed_repeats():
    images, labels = dataset(40)
    loader = InMemoryLoader(images, labels, batch_size=8, seed=3)
    again = InMemoryLoader(images, labels, batch_size=8, seed=3)
    assert epoch_indices(loader, 0) == epoch_indices(again, 0)
    assert epoch_indices(loader, 0) != epoch_indices(loader, 1)
    assert epoch_indices(loader, 0) != epoch_indices(InMemoryLoader(images, labels, batch_size=8, seed=4), 0)


def test_without_shuffle_the_order_is_the_dataset_order():
    images, labels = dataset(7)
    assert epoch_indices(InMemoryLoader(images, labels, batch_size=3, shuffle=False)) == list(range(7))


@pytest.mark.parametrize("drop_last", [False, True])
def test_two_ranks_take_disjoint_equal_shards_of_the_dataset(drop_last):
    images, labels = dataset(30)
    shards = [
        epoch_indices(InMemoryLoader(images, labels, 4, drop_last=drop_last, seed=5, rank=rank, world_size=2), 2)
        for rank in range(2)
    ]
    assert len(shards[0]) == len(shards[1]) == (12 if drop_last else 15)
    assert not set(shards[0]) & set(shards[1])
    if not drop_last:
        assert sorted(shards[0] + shards[1]) == list(range(30))


def test_uneven_shards_are_padded_or_truncated():
    images, labels = dataset(31)

    def shards(drop_last):
        loaders = [InMemoryLoader(images, labels, 4, drop_last=drop_last, rank=r, world_size=2) for r in range(2)]
        return [loader.positions().tolist() for loader in loaders]

    padded = shards(drop_last=False)
    assert len(padded[0]) == len(padded[1]) == 16 and set(padded[0] + padded[1]) == set(range(31))
    truncated = shards(drop_last=True)
    assert len(truncated[0]) == len(truncated[1]) == 15 and len(set(truncated[0] + truncated[1])) == 30


def test_unlabelled_data_yields_no_labels():
    images, _ = dataset(5)
    assert all(labels is None for _, labels, _ in InMemoryLoader(images, None, batch_size=2))


def test_bad_arguments_fail():
    images, labels = dataset(4)
    with pytest.raises(ValueError, match="one label per image"):
        InMemoryLoader(images, labels[:3], batch_size=2)
    with pytest.raises(ValueError, match="rank < world_size"):
        InMemoryLoader(images, labels, batch_size=2, rank=2, world_size=2)
