import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from smallvit.config import load_recipe
from smallvit.data.batch import Batch, View
from smallvit.engine.experiment import build_experiment
from smallvit.errors import ConfigError
from smallvit.models.backbone import BackboneOutput
from smallvit.objectives import OBJECTIVES, ObjectiveSetup, StepContext, build_objective, parse_objective_config
from smallvit.objectives.grid import pair_labels, pair_targets, sample_pairs, token_labels
from smallvit.objectives.position_labels import absolute_labels as abs_position_labels
from smallvit.objectives.relations import (
    RELATION_NAMES,
    PairScores,
    _ChunkedRelationLoss,
    angle_targets,
    distance_targets,
    pair_regression_loss,
    relation_labels,
    relation_loss,
)

D = 18  # embed dim: 9 relation scores of width 2


def by_name(rows: list[str]) -> torch.Tensor:
    return torch.tensor([[RELATION_NAMES.index(name) for name in row.split()] for row in rows])


def test_relation_labels_3x3_by_hand():
    # Row x, column y: where token x lies relative to token y (tokens row-major on the 3x3 grid).
    expected = by_name(
        [
            "CC LC LC CU LU LU CU LU LU",
            "RC CC LC RU CU LU RU CU LU",
            "RC RC CC RU RU CU RU RU CU",
            "CD LD LD CC LC LC CU LU LU",
            "RD CD LD RC CC LC RU CU LU",
            "RD RD CD RC RC CC RU RU CU",
            "CD LD LD CD LD LD CC LC LC",
            "RD CD LD RD CD LD RC CC LC",
            "RD RD CD RD RD CD RC RC CC",
        ]
    )
    labels = relation_labels(3, 3)
    assert labels.dtype == torch.int64
    assert torch.equal(labels, expected)


def test_relation_labels_2x5_by_hand():
    expected = by_name(
        [
            "CC LC LC LC LC CU LU LU LU LU",
            "RC CC LC LC LC RU CU LU LU LU",
            "RC RC CC LC LC RU RU CU LU LU",
            "RC RC RC CC LC RU RU RU CU LU",
            "RC RC RC RC CC RU RU RU RU CU",
            "CD LD LD LD LD CC LC LC LC LC",
            "RD CD LD LD LD RC CC LC LC LC",
            "RD RD CD LD LD RC RC CC LC LC",
            "RD RD RD CD LD RC RC RC CC LC",
            "RD RD RD RD CD RC RC RC RC CC",
        ]
    )
    assert torch.equal(relation_labels(2, 5), expected)


def test_abs_position_labels_are_row_major_indices():
    assert abs_position_labels(2, 3).tolist() == [0, 1, 2, 3, 4, 5]


def test_distance_targets_by_hand_on_2x2():
    # Grid distances 0, 1, 1, sqrt(2) from token 0; divided by sqrt(2), mapped to [-1, 1].
    s = math.sqrt(2) - 1
    expected = torch.tensor([[-1, s, s, 1], [s, -1, 1, s], [s, 1, -1, s], [1, s, s, -1]])
    assert torch.allclose(distance_targets(2, 2), expected, atol=1e-6)


def test_angle_targets_by_hand_on_2x2():
    # Shifted coordinates (x = col + 1, y = row + 1): (1, 1), (2, 1), (1, 2), (2, 2) at polar angles 45°, 26.57°,
    # 63.43°, 45°. Pairwise angles 0, 18.43° or 36.87° (the maximum) map to -1, 0 and 1.
    expected = torch.tensor([[-1, 0, 0, -1], [0, -1, 1, 0], [0, 1, -1, 0], [-1, 0, 0, -1]]).float()
    assert torch.allclose(angle_targets(2, 2), expected, atol=1e-6)


@pytest.mark.parametrize("h, w", [(3, 3), (2, 4)])
def test_angle_targets_match_the_acos_definition(h, w):
    points = [(c + w / 2, r + h / 2) for r in range(h) for c in range(w)]
    acos = torch.zeros(h * w, h * w)
    for i, (xi, yi) in enumerate(points):
        for j, (xj, yj) in enumerate(points):
            cos = (xi * xj + yi * yj) / (math.hypot(xi, yi) * math.hypot(xj, yj))
            acos[i, j] = math.acos(min(1.0, cos)) / math.pi
    assert torch.allclose(angle_targets(h, w), acos / acos.max() * 2 - 1, atol=1e-4)


@pytest.mark.parametrize("targets", [distance_targets, angle_targets])
def test_regression_targets_span_minus_one_to_one(targets):
    values = targets(3, 4)
    assert values.shape == (12, 12)
    assert float(values.min()) == -1 and abs(float(values.max()) - 1) < 1e-6
    assert torch.allclose(values, values.T) and torch.all(values.diagonal() == -1)


# ---------------------------------------------------------------- head and losses


def setup_for(grid: tuple[int, int], embed_dim: int = D) -> ObjectiveSetup:
    return ObjectiveSetup(
        embed_dim=embed_dim, grid=grid, patch_size=4, img_size=4 * grid[0], in_chans=3, num_classes=10, num_train=100
    )


class FixedTokens(nn.Module):
    """A stand-in backbone that returns given patch tokens, so losses can be checked on exact inputs."""

    def __init__(self, tokens: torch.Tensor, grid: tuple[int, int]):
        super().__init__()
        self.tokens, self.grid = tokens, grid

    def forward(self, images):
        return BackboneOutput(self.tokens.mean(1), self.tokens, self.grid)


def run(objective, tokens, grid, patch_order=None, training=True):
    view = View(torch.zeros(len(tokens), 3, 1, 1), None, torch.arange(len(tokens)), patch_order=patch_order)
    return objective(StepContext(Batch({"main": view}), FixedTokens(tokens, grid), training=training))


def make(name: str, grid: tuple[int, int], **fields):
    torch.manual_seed(0)
    return build_objective(parse_objective_config({"name": name, **fields}), setup_for(grid))


@pytest.mark.parametrize("grid", [(2, 2), (2, 3), (8, 8), (16, 16)])
def test_relation_logits_shape(grid):
    n = grid[0] * grid[1]
    logits = PairScores(D, 9)(torch.randn(2, n, D))
    assert logits.shape == (2, 9, n, n)


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_relation_loss_equals_a_double_loop(smoothing):
    grid, batch = (2, 3), 2
    objective = make("relations", grid, label_smoothing=smoothing)
    tokens = torch.randn(batch, 6, D, generator=torch.Generator().manual_seed(1))
    labels = relation_labels(*grid)
    wq = objective.head.query.weight.view(9, 2, D)
    wk = objective.head.key.weight.view(9, 2, D)
    total = 0.0
    for b in range(batch):
        for x in range(6):
            for y in range(6):
                scores = torch.stack([(wq[k] @ tokens[b, x]) @ (wk[k] @ tokens[b, y]) / math.sqrt(2) for k in range(9)])
                log_probs = scores.log_softmax(0)
                target = labels[x, y]
                total += (1 - smoothing) * -log_probs[target] + smoothing * -log_probs.mean()
    out = run(objective, tokens, grid)
    assert torch.allclose(out.loss, total / (batch * 36), atol=1e-5)
    scores = objective.head(tokens)
    assert out.metrics["acc1"] == (scores.argmax(1) == labels).float().mean()
    unsmoothed = run(make("relations", grid), tokens, grid).loss
    assert torch.allclose(run(objective, tokens, grid, training=False).loss, unsmoothed)  # smoothing: training only


@pytest.mark.parametrize("smoothing", [0.0, 0.3])
def test_relation_loss_function_equals_a_loop_over_pairs(smoothing):
    # all pairs [B, 9, N, N] with shuffled patches, and sampled pairs [B, 9, P]
    grid, batch = (2, 2), 2
    labels = relation_labels(*grid)
    order = torch.tensor([[3, 1, 0, 2], [0, 1, 2, 3]])
    scores = torch.randn(batch, 9, 4, 4)
    total = 0.0
    for b in range(batch):
        for x in range(4):
            for y in range(4):
                log_probs = scores[b, :, x, y].log_softmax(0)
                target = labels[order[b, x], order[b, y]]
                total += (1 - smoothing) * -log_probs[target] + smoothing * -log_probs.mean()
    targets = pair_targets(labels, batch, order)
    assert torch.allclose(relation_loss(scores, targets, smoothing), total / (batch * 16), atol=1e-6)
    first, second = torch.tensor([[0, 3, 3], [1, 2, 0]]), torch.tensor([[1, 0, 3], [2, 2, 3]])
    sampled = scores[torch.arange(batch)[:, None], :, first, second].transpose(1, 2)  # [B, 9, P]
    total = sum(
        -sampled[b, :, p].log_softmax(0)[labels[order[b, first[b, p]], order[b, second[b, p]]]]
        for b in range(batch)
        for p in range(3)
    )
    assert torch.allclose(relation_loss(sampled, pair_targets(labels, batch, order, (first, second))), total / 6)


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_chunked_relation_loss_has_the_values_and_gradients_of_relation_loss(smoothing, monkeypatch):
    monkeypatch.setattr(_ChunkedRelationLoss, "ELEMENTS_PER_CHUNK", 2 * 9 * 36)  # 2 images a chunk: 2, 2, 1
    torch.manual_seed(0)
    head, tokens = PairScores(D, 9), torch.randn(5, 6, D, requires_grad=True)
    order = torch.stack([torch.randperm(6) for _ in range(5)])
    targets = pair_targets(relation_labels(2, 3), 5, order)
    scores = head(tokens)
    expected = relation_loss(scores, targets, smoothing)
    expected_grads = torch.autograd.grad(expected, [tokens, *head.parameters()])
    loss, accuracy = head.loss(tokens, targets, smoothing)
    grads = torch.autograd.grad(loss, [tokens, *head.parameters()])
    assert torch.allclose(loss, expected, atol=1e-6)
    assert accuracy == (scores.argmax(1) == targets).float().mean()
    assert all(torch.allclose(g, e, atol=1e-6) for g, e in zip(grads, expected_grads))
    with torch.no_grad():
        assert torch.allclose(head.loss(tokens, targets, smoothing)[0], expected, atol=1e-6)


@pytest.mark.parametrize("targets", [distance_targets, angle_targets])
def test_pair_regression_loss_function_equals_a_loop_over_pairs(targets):
    grid, batch = (2, 3), 2
    scores = torch.randn(batch, 1, 6, 6)
    grid_targets = targets(*grid)
    total = sum(
        (scores[b, 0, x, y] - grid_targets[x, y]) ** 2 for b in range(batch) for x in range(6) for y in range(6)
    )
    loss = pair_regression_loss(scores, pair_targets(grid_targets, batch))
    assert torch.allclose(loss, total / (batch * 36), atol=1e-6)


def test_abs_position_is_apl_with_relvits_linear_head_and_initialisation():
    # RelViT's abs_position is the apl objective with Linear(D, N) on all channels: same parameters, drawn the same
    assert OBJECTIVES["abs_position"].Config(name="abs_position").head == "linear"
    objective = make("abs_position", (2, 3))
    torch.manual_seed(0)
    reference = nn.Linear(D, 6)
    assert list(objective.state_dict()) == ["head.weight", "head.bias"]
    assert torch.equal(objective.head.weight, reference.weight) and torch.equal(objective.head.bias, reference.bias)
    tokens = torch.randn(2, 6, D)
    assert torch.equal(objective.head(tokens), reference(tokens))


@pytest.mark.parametrize("name", ["relations", "abs_position", "distances", "angles"])
def test_shuffled_tokens_with_patch_order_give_the_same_loss(name):
    # A position-free encoder is permutation-equivariant: shuffling the patches shuffles the tokens. Labels that
    # follow patch_order must then give exactly the loss of the unshuffled image.
    grid = (3, 4)
    objective = make(name, grid)
    tokens = torch.randn(3, 12, D)
    order = torch.stack([torch.randperm(12) for _ in range(3)])
    shuffled = tokens[torch.arange(3)[:, None], order]
    assert torch.allclose(run(objective, shuffled, grid, order).loss, run(objective, tokens, grid).loss, atol=1e-6)
    different_order = order.roll(1, dims=1)
    assert not torch.allclose(run(objective, shuffled, grid, different_order).loss, run(objective, tokens, grid).loss)


def test_max_pairs_is_off_by_default_and_matches_the_full_loss_on_the_same_pairs():
    assert parse_objective_config({"name": "relations"}).max_pairs is None
    grid, batch, pairs = (4, 4), 3, 20
    objective = make("relations", grid, max_pairs=pairs)
    tokens = torch.randn(batch, 16, D)
    order = torch.stack([torch.randperm(16) for _ in range(batch)])
    torch.manual_seed(5)
    sampled = run(objective, tokens, grid, order).loss
    torch.manual_seed(5)
    first, second = sample_pairs(batch, 16, pairs)
    logits = objective.head(tokens)  # [B, 9, N, N]
    labels = pair_labels(relation_labels(*grid), order, batch)
    rows = torch.arange(batch)[:, None]
    expected = F.cross_entropy(logits[rows, :, first, second].transpose(1, 2), labels[rows, first, second])
    assert torch.allclose(sampled, expected, atol=1e-6)
    full = run(make("relations", grid), tokens, grid, order).loss
    assert torch.allclose(run(make("relations", grid, max_pairs=16 * 16), tokens, grid, order).loss, full)


@pytest.mark.parametrize("name", ["distances", "angles"])
def test_regression_loss_is_mse_of_one_bilinear_score(name):
    grid = (2, 3)
    objective = make(name, grid)
    tokens = torch.randn(2, 6, D)
    scores = torch.einsum("bxd,byd->bxy", objective.head.query(tokens), objective.head.key(tokens)) / math.sqrt(D)
    targets = {"distances": distance_targets, "angles": angle_targets}[name](*grid)
    assert torch.allclose(run(objective, tokens, grid).loss, F.mse_loss(scores, targets.expand(2, 6, 6)), atol=1e-6)


def test_abs_position_is_cross_entropy_of_each_token_against_its_grid_index():
    grid = (2, 3)
    objective = make("abs_position", grid)
    tokens = torch.randn(2, 6, D)
    order = torch.stack([torch.randperm(6), torch.arange(6)])
    logits = objective.head(tokens)
    expected = F.cross_entropy(logits.flatten(0, 1), token_labels(abs_position_labels(*grid), order, 2).flatten())
    out = run(objective, tokens, grid, order)
    assert torch.allclose(out.loss, expected, atol=1e-6)
    assert objective.head.out_features == 6


def test_objectives_need_no_labels_and_train_their_heads():
    grid = (2, 2)
    for name in ["relations", "abs_position", "distances", "angles"]:
        assert not OBJECTIVES[name].requires_labels
        objective = make(name, grid)
        run(objective, torch.randn(2, 4, D), grid).loss.backward()
        assert all(p.grad is not None for p in objective.parameters())


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("name", ["relations", "abs_position", "distances", "angles"])
def test_single_token_grid_is_a_config_error(name):
    with pytest.raises(ConfigError, match="needs at least 2 patch tokens.*1×1") as err:
        make(name, (1, 1))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "fields, key", [({"max_pairs": 0}, "max_pairs"), ({"label_smoothing": 1.0}, "label_smoothing")]
)
def test_bad_fields_are_config_errors(fields, key):
    with pytest.raises(ConfigError, match=key):
        parse_objective_config({"name": "relations", **fields})


def test_mega_patch_grid_that_misses_the_backbone_names_the_img_size_to_set():
    objective = make("relations", (8, 8))
    view = View(torch.zeros(1, 3, 20, 20), None, torch.arange(1), grid=(5, 5))
    ctx = StepContext(Batch({"main": view}), FixedTokens(torch.randn(1, 25, D), (5, 5)))
    with pytest.raises(ConfigError, match="model.img_size=20"):
        objective(ctx)


def test_patch_size_that_does_not_divide_the_image_fails_clearly_in_the_recipe_path():
    stage = load_recipe("relvit-joint", ["model.patch_size=5", "data.subset.total=20"]).stages[0]
    with pytest.raises(ConfigError, match="not divisible by patch size 5"):
        build_experiment(stage, torch.device("cpu"), load_init=False)


# ---------------------------------------------------------------- recipes


def test_recipes():
    pretrain, finetune = load_recipe("relvit").stages
    assert [s.name for s in (pretrain, finetune)] == ["relvit-pretrain", "relvit-finetune"]
    assert not pretrain.model.pos_embed and not any(OBJECTIVES[o.name].requires_labels for o in pretrain.objectives)
    assert {o.name for o in pretrain.objectives} == {"relations", "abs_position"}
    assert pretrain.train.best_metric is None  # final weights, never selected on the test split
    assert "per_patch_augment" in [op["op"] for op in pretrain.augment["main"].ops]
    assert finetune.model.pos_embed and finetune.model.cls_token and finetune.model.init_from == "previous"
    assert [o.name for o in finetune.objectives] == ["supervised"]
    joint = load_recipe("relvit-joint", ["objectives.1.weight=0.5", "epochs=3"]).stages[0]
    assert [(o.name, w.weight) for o, w in zip(joint.objectives, joint.objective_weights)] == [
        ("supervised", 1.0),
        ("relations", 0.5),
        ("abs_position", 1.0),
    ]
    assert joint.model.pos_embed and joint.train.epochs == 3
    assert "per_patch_augment" not in [op["op"] for op in joint.augment["main"].ops]
    for stage in (pretrain, finetune):
        assert (stage.optim.lr, stage.optim.weight_decay, stage.optim.clip_grad) == (5e-4, 0.1, 1.0)
        assert (stage.model.drop_path, stage.train.batch_size) == (0.1, 256)
    # the joint recipe is its baseline plus the method's objectives, nothing else
    base = load_recipe("quickstart", ["epochs=3"]).stages[0]
    assert (joint.optim, joint.train, joint.augment, joint.model) == (base.optim, base.train, base.augment, base.model)
    assert joint.objectives[0] == base.objectives[0]


def test_pretrain_recipe_builds_and_steps_with_patch_size_filled_in():
    stage = load_recipe("relvit-pretrain", ["data.subset.total=20", "precision=fp32"]).stages[0]
    exp = build_experiment(stage, torch.device("cpu"), load_init=False)
    batch = exp.augment(exp.train_images[:4], exp.train_labels[:4], torch.arange(4), torch.Generator().manual_seed(0))
    loss, metrics = exp.model(batch, [1.0, 1.0])
    assert torch.isfinite(loss) and {"relations/acc1", "abs_position/acc1"} <= set(metrics)
    assert not exp.model.backbone.has_pos_embed
