import pytest
import torch
from torch import nn

from smallvit.config import load_recipe
from smallvit.data.batch import Batch, View
from smallvit.models import build_backbone
from smallvit.models.backbone import BackboneOutput
from smallvit.objectives import ObjectiveSetup, StepContext, build_objective, parse_objective_config
from smallvit.objectives.drloc import DRLocHead, drloc_loss, normalized_offsets
from smallvit.objectives.grid import pair_targets, sample_pairs


def test_normalized_offsets_by_hand_on_2x3():
    # tokens (row, col): 0 (0,0) 1 (0,1) 2 (0,2) 3 (1,0) 4 (1,1) 5 (1,2); target (Δr / 2, Δc / 3)
    offsets = normalized_offsets(2, 3)
    assert offsets.shape == (6, 6, 2)
    assert torch.allclose(offsets[5, 0], torch.tensor([1 / 2, 2 / 3]))
    assert torch.allclose(offsets[0, 5], torch.tensor([-1 / 2, -2 / 3]))
    assert torch.allclose(offsets[1, 3], torch.tensor([-1 / 2, 1 / 3]))
    assert torch.allclose(offsets[4, 2], torch.tensor([1 / 2, -1 / 3]))
    assert offsets.diagonal(dim1=0, dim2=1).abs().sum() == 0


class FixedTokens(nn.Module):
    def __init__(self, tokens, grid):
        super().__init__()
        self.tokens, self.grid = tokens, grid

    def forward(self, images):
        return BackboneOutput(self.tokens.mean(1), self.tokens, self.grid)


class ZeroHead(nn.Module):
    def forward(self, first, second):
        return torch.zeros(*first.shape[:-1], 2)


def zero_head_objective(tokens, grid, num_pairs):
    setup = ObjectiveSetup(tokens.shape[-1], grid, 4, 4 * grid[0], 3, 10, 8)
    objective = build_objective(parse_objective_config({"name": "drloc", "num_pairs": num_pairs}), setup)
    objective.head = ZeroHead()
    return objective


def run(objective, tokens, grid, patch_order):
    view = View(torch.zeros(len(tokens), 3, 1, 1), None, torch.arange(len(tokens)), patch_order=patch_order)
    return objective(StepContext(Batch({"main": view}), FixedTokens(tokens, grid))).loss


def test_drloc_loss_equals_a_loop_over_pairs():
    predicted = torch.randn(2, 3, 2)
    first, second = torch.tensor([[0, 5, 5], [2, 1, 0]]), torch.tensor([[1, 0, 5], [3, 3, 4]])
    order = torch.tensor([[5, 3, 1, 0, 2, 4], [0, 1, 2, 3, 4, 5]])
    offsets = normalized_offsets(2, 3)
    total = sum(
        (predicted[b, p] - offsets[order[b, first[b, p]], order[b, second[b, p]]]).abs().sum()
        for b in range(2)
        for p in range(3)
    )
    targets = pair_targets(offsets, 2, order, (first, second))
    assert torch.allclose(drloc_loss(predicted, targets), total / 12, atol=1e-6)


def test_loss_is_l1_to_the_sampled_pairs_offsets():
    tokens = torch.randn(3, 6, 4)
    objective = zero_head_objective(tokens, (2, 3), num_pairs=7)
    torch.manual_seed(0)
    loss = run(objective, tokens, (2, 3), None)
    torch.manual_seed(0)
    first, second = sample_pairs(3, 6, 7)
    assert torch.allclose(loss, normalized_offsets(2, 3)[first, second].abs().mean())


def test_loss_follows_patch_order():
    tokens = torch.randn(2, 6, 4)
    order = torch.tensor([[5, 4, 3, 2, 1, 0], [0, 2, 1, 3, 5, 4]])
    objective = zero_head_objective(tokens, (2, 3), num_pairs=5)
    torch.manual_seed(0)
    loss = run(objective, tokens, (2, 3), order)
    torch.manual_seed(0)
    first, second = sample_pairs(2, 6, 5)
    offsets = normalized_offsets(2, 3)
    expected = torch.stack([offsets[order[b, first[b]], order[b, second[b]]] for b in range(2)])
    assert torch.allclose(loss, expected.abs().mean())


def test_head_is_2d_512_512_2():
    shapes = [tuple(p.shape) for p in DRLocHead(16).parameters()]
    assert shapes == [(512, 32), (512,), (512, 512), (512,), (2, 512), (2,)]
    assert DRLocHead(16)(torch.randn(3, 32, 16), torch.randn(3, 32, 16)).shape == (3, 32, 2)


@pytest.mark.parametrize("batch", [1, 3])
def test_objective_on_a_backbone(batch):
    backbone = build_backbone("vit_lite", img_size=8, patch_size=4, depth=1, embed_dim=16, num_heads=2)
    setup = ObjectiveSetup(16, backbone.grid, 4, 8, 3, 10, 8)
    objective = build_objective(parse_objective_config({"name": "drloc"}), setup)
    view = View(torch.randn(batch, 3, 8, 8), torch.zeros(batch, dtype=torch.long), torch.arange(batch))
    out = objective(StepContext(Batch({"main": view}), backbone))
    out.loss.backward()
    assert out.loss.isfinite() and objective.config.num_pairs == 32


@pytest.mark.parametrize(
    ("recipe", "weight", "preset"), [("drloc-vit", 0.1, "vit_lite"), ("drloc-swin", 0.5, "swin_lite")]
)
def test_recipes_warm_up_then_decay_lambda(recipe, weight, preset):
    (stage,) = load_recipe(recipe).stages
    drloc, drloc_weight = stage.objectives[1], stage.objective_weights[1]
    assert stage.model.preset == preset and drloc.name == "drloc" and drloc_weight.weight == weight
    schedule, epochs = drloc_weight.weight_schedule, stage.train.epochs
    assert schedule.factor(10, epochs) == 0.5 and schedule.factor(20, epochs) == 1.0
    assert schedule.factor(epochs, epochs) == 0.0
