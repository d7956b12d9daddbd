import torch

from smallvit.objectives.grid import (
    grid_coords,
    original_positions,
    pair_labels,
    pair_offsets,
    sample_pairs,
    sampled_pair_labels,
    take_tokens,
    token_labels,
)


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


def test_take_tokens_gathers_rows_per_image():
    tokens = torch.arange(2 * 4 * 3).reshape(2, 4, 3)
    index = torch.tensor([[3, 0], [1, 1]])
    assert take_tokens(tokens, index).tolist() == [[[9, 10, 11], [0, 1, 2]], [[15, 16, 17], [15, 16, 17]]]
    assert take_tokens(torch.arange(8).reshape(2, 4), index).tolist() == [[3, 0], [5, 5]]


def test_original_positions_follow_patch_order():
    order = torch.tensor([[3, 2, 1, 0], [0, 1, 2, 3]])
    tokens = torch.tensor([[0, 3], [2, 1]])
    assert original_positions(tokens, order).tolist() == [[3, 0], [2, 1]]
    assert original_positions(tokens, None) is tokens


def test_sampled_pair_labels_agree_with_all_pair_labels():
    pairs = torch.arange(16).reshape(4, 4)
    order = torch.tensor([[3, 2, 1, 0], [1, 0, 3, 2]])
    first, second = torch.tensor([[0, 1, 3], [2, 2, 0]]), torch.tensor([[1, 1, 2], [3, 0, 0]])
    full = pair_labels(pairs, order, 2)
    expected = torch.stack([full[b, first[b], second[b]] for b in range(2)])
    assert torch.equal(sampled_pair_labels(pairs, order, first, second), expected)
    assert sampled_pair_labels(pairs, None, first, second)[0].tolist() == [1, 5, 14]
