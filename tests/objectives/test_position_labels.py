import pytest
import torch
import torch.nn.functional as F
from timm.models.swin_transformer import get_relative_position_index

from smallvit.config import load_recipe
from smallvit.data.batch import Batch, View
from smallvit.errors import ConfigError
from smallvit.models import build_backbone
from smallvit.models.backbone import BackboneOutput
from smallvit.objectives import OBJECTIVES, ObjectiveSetup, StepContext, build_objective, parse_objective_config
from smallvit.objectives.grid import check_grid, pair_targets, sample_pairs, token_labels
from smallvit.objectives.position_labels import (
    AbsolutePositionHead,
    RelativePositionHead,
    _ChunkedLinearCrossEntropy,
    absolute_labels,
    absolute_position_loss,
    relative_label_count,
    relative_labels,
    relative_position_loss,
)


def test_absolute_labels_by_hand():
    assert absolute_labels(2, 2).tolist() == [0, 1, 2, 3]
    assert absolute_labels(2, 3).tolist() == [0, 1, 2, 3, 4, 5]
    labels = absolute_labels(7, 7)
    assert labels.shape == (49,) and labels[8] == 8 and labels[48] == 48  # (1, 1) and (6, 6)


def test_relative_labels_by_hand_on_2x2():
    # tokens (row, col): 0 (0,0), 1 (0,1), 2 (1,0), 3 (1,1); label = (Δr + 1)·3 + (Δc + 1)
    assert relative_labels(2, 2).tolist() == [
        [4, 3, 1, 0],
        [5, 4, 2, 1],
        [7, 6, 4, 3],
        [8, 7, 5, 4],
    ]


def test_relative_labels_by_hand_on_2x3():
    # tokens (row, col): 0 (0,0) 1 (0,1) 2 (0,2) 3 (1,0) 4 (1,1) 5 (1,2); label = (Δr + 1)·5 + (Δc + 2)
    assert relative_labels(2, 3).tolist() == [
        [7, 6, 5, 2, 1, 0],
        [8, 7, 6, 3, 2, 1],
        [9, 8, 7, 4, 3, 2],
        [12, 11, 10, 7, 6, 5],
        [13, 12, 11, 8, 7, 6],
        [14, 13, 12, 9, 8, 7],
    ]
    assert relative_label_count(2, 3) == 15


def test_relative_labels_on_7x7():
    labels = relative_labels(7, 7)
    assert labels.shape == (49, 49)
    assert relative_label_count(7, 7) == 169 and labels.unique().tolist() == list(range(169))
    center = 6 * 13 + 6  # Δ = (0, 0)
    assert (labels.diagonal() == center).all()
    assert (labels + labels.T == 2 * center).all()  # (i, j) and (j, i) have opposite offsets
    assert labels[0, 48] == 0 and labels[48, 0] == 168  # Δ = (−6, −6) and (6, 6)
    assert labels[0, 6] == 6 * 13 and labels[7, 0] == 7 * 13 + 6  # Δ = (0, −6) and (1, 0)
    assert torch.equal(labels, get_relative_position_index(7, 7))  # Swin's relative position index


@pytest.mark.parametrize("channel_split", [0.5, 0.25])
def test_factorised_rpl_head_equals_the_concatenation_mlp(channel_split):
    torch.manual_seed(0)
    head = RelativePositionHead(16, relative_label_count(2, 3), channel_split)
    tokens = torch.randn(3, 6, 16)
    factorised = head(tokens)
    assert factorised.shape == (3, 6, 6, 15)
    assert torch.allclose(factorised, head.forward_concatenated(tokens), atol=1e-5)
    first, second = torch.tensor([[0, 5, 2], [1, 1, 4], [3, 0, 0]]), torch.tensor([[5, 0, 2], [2, 3, 4], [0, 0, 1]])
    sampled = head(tokens, (first, second))
    expected = torch.stack([factorised[b, first[b], second[b]] for b in range(3)])
    assert torch.allclose(sampled, expected, atol=1e-5)


@pytest.mark.parametrize("sampled", [False, True])
def test_chunked_rpl_loss_has_the_values_and_gradients_of_relative_position_loss(sampled, monkeypatch):
    monkeypatch.setattr(_ChunkedLinearCrossEntropy, "ELEMENTS_PER_CHUNK", 15 * 7)  # 7 rows a chunk, the last shorter
    torch.manual_seed(0)
    head, tokens = RelativePositionHead(16, relative_label_count(2, 3)), torch.randn(3, 6, 16, requires_grad=True)
    order = torch.stack([torch.randperm(6) for _ in range(3)])
    pairs = sample_pairs(3, 6, 10) if sampled else None
    targets = pair_targets(relative_labels(2, 3), 3, order, pairs)
    logits = head(tokens, pairs)
    expected = relative_position_loss(logits, targets)
    expected_grads = torch.autograd.grad(expected, [tokens, *head.parameters()])
    loss, accuracy = head.loss(tokens, targets, pairs)
    grads = torch.autograd.grad(loss, [tokens, *head.parameters()])
    assert torch.allclose(loss, expected, atol=1e-6)
    assert accuracy == (logits.argmax(-1) == targets).float().mean()
    assert all(torch.allclose(g, e, atol=1e-6) for g, e in zip(grads, expected_grads))
    with torch.no_grad():
        assert torch.allclose(head.loss(tokens, targets, pairs)[0], expected, atol=1e-6)


def test_apl_head_reads_only_its_channel_share():
    head = AbsolutePositionHead(16, 4, channel_split=0.25)
    tokens = torch.randn(2, 4, 16)
    changed = tokens.clone()
    changed[..., 4:] = torch.randn(2, 4, 12)
    assert head(tokens).shape == (2, 4, 4) and torch.equal(head(tokens), head(changed))


def apl_loss(head, tokens, grid, positions):
    """APL's loss and top-1 accuracy through the tensor-level function."""
    logits = head(tokens)
    targets = token_labels(absolute_labels(*grid), positions, len(tokens))
    return absolute_position_loss(logits, targets), (logits.argmax(-1) == targets).float().mean()


def rpl_loss(head, tokens, grid, positions, pairs=None):
    """RPL's loss and top-1 accuracy through the tensor-level function."""
    logits = head(tokens, pairs)
    targets = pair_targets(relative_labels(*grid), len(tokens), positions, pairs)
    return relative_position_loss(logits, targets), (logits.argmax(-1) == targets).float().mean()


def test_absolute_position_loss_equals_a_loop_over_tokens():
    logits, grid = torch.randn(2, 6, 6), (2, 3)
    order = torch.tensor([[5, 3, 1, 0, 2, 4], [0, 1, 2, 3, 4, 5]])
    total = sum(-logits[b, k].log_softmax(0)[order[b, k]] for b in range(2) for k in range(6))
    targets = token_labels(absolute_labels(*grid), order, 2)
    assert torch.allclose(absolute_position_loss(logits, targets), total / 12, atol=1e-6)
    masked = torch.tensor([[4, 0], [2, 5]])  # 2 visible tokens per image, at these grid positions
    total = sum(-logits[b, k].log_softmax(0)[masked[b, k]] for b in range(2) for k in range(2))
    assert torch.allclose(absolute_position_loss(logits[:, :2], masked), total / 4, atol=1e-6)


def test_relative_position_loss_equals_a_loop_over_pairs():
    grid, labels = (2, 3), relative_labels(2, 3)
    order = torch.tensor([[5, 3, 1, 0, 2, 4], [0, 1, 2, 3, 4, 5]])
    logits = torch.randn(2, 6, 6, 15)
    total = sum(
        -logits[b, i, j].log_softmax(0)[labels[order[b, i], order[b, j]]]
        for b in range(2)
        for i in range(6)
        for j in range(6)
    )
    targets = pair_targets(relative_labels(*grid), 2, order)
    assert torch.allclose(relative_position_loss(logits, targets), total / 72, atol=1e-6)
    first, second = torch.tensor([[0, 5, 5], [2, 1, 0]]), torch.tensor([[1, 0, 5], [3, 3, 4]])
    sampled = logits[torch.arange(2)[:, None], first, second]  # [B, P, C]
    total = sum(
        -sampled[b, p].log_softmax(0)[labels[order[b, first[b, p]], order[b, second[b, p]]]]
        for b in range(2)
        for p in range(3)
    )
    targets = pair_targets(relative_labels(*grid), 2, order, (first, second))
    assert torch.allclose(relative_position_loss(sampled, targets), total / 6, atol=1e-6)


def test_losses_follow_patch_order():
    # Moving the tokens and saying where each came from (patch_order) leaves both losses unchanged.
    torch.manual_seed(0)
    tokens = torch.randn(2, 6, 16)
    order = torch.stack([torch.randperm(6) for _ in range(2)])
    moved = torch.stack([tokens[b, order[b]] for b in range(2)])
    apl = AbsolutePositionHead(16, 6)
    rpl = RelativePositionHead(16, relative_label_count(2, 3))
    assert torch.allclose(apl_loss(apl, moved, (2, 3), order)[0], apl_loss(apl, tokens, (2, 3), None)[0])
    assert torch.allclose(rpl_loss(rpl, moved, (2, 3), order)[0], rpl_loss(rpl, tokens, (2, 3), None)[0])


def test_sampled_rpl_loss_uses_the_sampled_pairs_labels():
    _, setup = tiny_vit_setup()
    objective = build_objective(parse_objective_config({"name": "rpl", "max_pairs": 5}), setup)
    tokens = torch.randn(2, 4, 16)
    torch.manual_seed(1)
    loss = run(objective, tokens, (2, 2)).loss
    torch.manual_seed(1)
    first, second = sample_pairs(2, 4, 5)
    targets = relative_labels(2, 2)[first, second]
    expected = F.cross_entropy(objective.head(tokens, (first, second)).flatten(0, 1), targets.flatten())
    assert torch.allclose(loss, expected)


def test_max_pairs_at_least_all_pairs_scores_all_pairs():
    _, setup = tiny_vit_setup()
    tokens = torch.randn(2, 4, 16)
    torch.manual_seed(0)
    all_pairs = build_objective(parse_objective_config({"name": "rpl"}), setup)
    torch.manual_seed(0)
    enough = build_objective(parse_objective_config({"name": "rpl", "max_pairs": 16}), setup)
    assert torch.equal(run(enough, tokens, (2, 2)).loss, run(all_pairs, tokens, (2, 2)).loss)


def test_heads_learn_positions_from_position_carrying_tokens():
    torch.manual_seed(0)
    codes = torch.randn(1, 4, 32).expand(4, -1, -1)  # a fixed code per grid position
    apl, rpl = AbsolutePositionHead(32, 4), RelativePositionHead(32, relative_label_count(2, 2))
    optimizer = torch.optim.Adam([*apl.parameters(), *rpl.parameters()], lr=1e-2)
    for _ in range(60):
        loss = apl_loss(apl, codes, (2, 2), None)[0] + rpl_loss(rpl, codes, (2, 2), None)[0]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert apl_loss(apl, codes, (2, 2), None)[1] == 1.0
    assert rpl_loss(rpl, codes, (2, 2), None)[1] == 1.0


class FixedTokens(torch.nn.Module):
    def __init__(self, tokens, grid):
        super().__init__()
        self.tokens, self.grid = tokens, grid

    def forward(self, images):
        return BackboneOutput(self.tokens.mean(1), self.tokens, self.grid)


def run(objective, tokens, grid):
    view = View(torch.zeros(len(tokens), 3, 1, 1), None, torch.arange(len(tokens)))
    return objective(StepContext(Batch({"main": view}), FixedTokens(tokens, grid)))


def tiny_vit_setup(img_size=8, patch_size=4):
    backbone = build_backbone(
        "vit_lite", img_size=img_size, patch_size=patch_size, pos_embed=False, depth=1, embed_dim=16, num_heads=2
    )
    setup = ObjectiveSetup(
        embed_dim=16, grid=backbone.grid, patch_size=patch_size, img_size=img_size, in_chans=3, num_classes=10,
        num_train=256, has_pos_embed=False,
    )  # fmt: skip
    return backbone, setup


@pytest.mark.parametrize("batch", [1, 3, 256])
@pytest.mark.parametrize("spec", [{"name": "apl"}, {"name": "rpl"}, {"name": "rpl", "max_pairs": 3}])
def test_objectives_run_at_any_batch_size(batch, spec):
    backbone, setup = tiny_vit_setup()
    objective = build_objective(parse_objective_config(spec), setup)
    view = View(torch.randn(batch, 3, 8, 8), torch.zeros(batch, dtype=torch.long), torch.arange(batch))
    out = objective(StepContext(Batch({"main": view}), backbone))
    out.loss.backward()
    assert out.loss.isfinite() and 0.0 <= float(out.metrics["acc1"]) <= 1.0
    assert OBJECTIVES[spec["name"]].default_weight == 0.5


def test_config_errors_are_one_line():
    with pytest.raises(ConfigError, match="channel_split"):
        parse_objective_config({"name": "rpl", "channel_split": 1.0})
    with pytest.raises(ConfigError, match="channel_split"):
        parse_objective_config({"name": "apl", "channel_split": 1.5})
    with pytest.raises(ConfigError, match="built for a 2×2 token grid but got 4×4"):
        check_grid("apl", (2, 2), (4, 4), 4)


@pytest.mark.parametrize("recipe", ["poslabel-apl-vit", "poslabel-rpl-vit", "poslabel-rpl-swin"])
def test_recipes_train_without_position_information(recipe):
    (stage,) = load_recipe(recipe).stages
    assert not stage.model.pos_embed
    names = [o.name for o in stage.objectives]
    assert names[0] == "supervised" and names[1] in {"apl", "rpl"} and stage.objective_weights[1].weight == 0.5
    # the method's recipe differs from its baseline only in what the method adds
    base = load_recipe("supervised").stages[0]
    assert (stage.optim, stage.train, stage.objectives[0]) == (base.optim, base.train, base.objectives[0])
