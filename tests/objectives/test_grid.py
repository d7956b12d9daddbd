import torch

from smallvit.objectives.grid import grid_coords, pair_labels, pair_offsets, sample_pairs, token_labels


def test_grid_coords_are_row_major():
    assert grid_coords(2, 3).tolist() == [[0, 0], [0, 1], [0, 2], [1, 0], [1, 1], [1, 2]]


def test_pair_offsets_by_hand_on_1x3():
    offsets = pair_offsets(1, 3)
    assert offsets[..., 1].tolist() == [[0, -1, -2], [1, 0, -1], [2, 1, 0]]
    assert offsets[..., 0].abs().sum() == 0


def test_labels_follow_patch_order():
    labels = torch.tensor([10, 11, 12, 13])
    order = torch.tensor([[3, 2, 1, 0], [0, 1, 2, 3]])
    assert token_labels(labels, order, 2).tolist() == [[13, 12, 11, 10], [10, 11, 12, 13]]
    assert token_labels(labels, None, 2).tolist() == [[10, 11, 12, 13]] * 2
    pairs = torch.arange(16).reshape(4, 4)
    permuted = pair_labels(pairs, order, 2)
    assert permuted.shape == (2, 4, 4)
    assert permuted[0, 0, 1] == pairs[3, 2] and torch.equal(permuted[1], pairs)


def test_sample_pairs_shapes_and_range():
    gen = torch.Generator().manual_seed(0)
    first, second = sample_pairs(3, 5, 7, gen)
    assert first.shape == second.shape == (3, 7)
    assert 0 <= int(first.min()) and int(second.max()) < 5
