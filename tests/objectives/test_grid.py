import pytest
import torch

from smallvit.errors import ConfigError
from smallvit.objectives.grid import (
    check_grid,
    check_min_tokens,
    choose_pairs,
    grid_coords,
    original_positions,
    pair_labels,
    pair_offsets,
    pair_targets,
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


def test_choose_pairs_scores_all_pairs_unless_fewer_are_asked():
    assert choose_pairs(2, 4, None) is None and choose_pairs(2, 4, 16) is None
    torch.manual_seed(0)
    first, second = choose_pairs(2, 4, 15)
    torch.manual_seed(0)
    assert all(torch.equal(a, b) for a, b in zip((first, second), sample_pairs(2, 4, 15)))


def test_pair_targets_of_all_or_sampled_pairs():
    pairs = torch.arange(16).reshape(4, 4)
    order = torch.tensor([[3, 2, 1, 0], [1, 0, 3, 2]])
    assert torch.equal(pair_targets(pairs, 2, order), pair_labels(pairs, order, 2))
    first, second = torch.tensor([[0, 1], [2, 2]]), torch.tensor([[1, 1], [3, 0]])
    assert torch.equal(pair_targets(pairs, 2, order, (first, second)), sampled_pair_labels(pairs, order, first, second))


def test_take_tokens_sends_gradients_back_to_every_taken_row():
    tokens = torch.randn(2, 3, 4, requires_grad=True)
    take_tokens(tokens, torch.tensor([[0, 0, 2], [1, 2, 2]])).sum().backward()
    assert tokens.grad[:, :, 0].tolist() == [[2, 0, 1], [0, 1, 2]]


def test_grid_checks_are_one_line_config_errors():
    check_min_tokens("relations", (1, 2))
    with pytest.raises(ConfigError, match="needs at least 2 patch tokens but the token grid is 1×1"):
        check_min_tokens("relations", (1, 1))
    check_grid("apl", (8, 8), (8, 8), 4)
    with pytest.raises(ConfigError, match="built for a 8×8 token grid but got 5×5: set model.img_size=20"):
        check_grid("apl", (8, 8), (5, 5), 4)
