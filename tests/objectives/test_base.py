import math

import pytest
import torch
from torch import nn

from smallvit.config import RunConfig, load_recipe, validate_run
from smallvit.data.batch import Batch, View
from smallvit.engine.experiment import TrainModel, build_experiment
from smallvit.errors import ConfigError, SmallViTError
from smallvit.models import build_backbone
from smallvit.models.backbone import BackboneOutput
from smallvit.objectives import (
    OBJECTIVES,
    Objective,
    ObjectiveOutput,
    ObjectiveSetup,
    StepContext,
    build_objective,
    parse_objective_config,
    register_objective,
)
from smallvit.objectives.base import mean_over_views, top1

# ---------------------------------------------------------------- the template: one view at a time, mean over views


class PerView(Objective):
    """Loss = the view's first pixel; metric ``acc1`` = 1 on ``a``, 0 on ``b``; ``extra`` on ``a`` only."""

    name = "per_view_test"
    requires_patch_tokens = False

    def view_loss(self, ctx, view):
        metrics = {"acc1": torch.tensor(1.0 if view == "a" else 0.0)}
        if view == "a":
            metrics["extra"] = torch.tensor(5.0)
        return ObjectiveOutput(ctx.view(view).images.flatten()[0], metrics)


def views(**values: float) -> Batch:
    return Batch({name: View(torch.full((1, 1, 1, 1), v), None, torch.arange(1)) for name, v in values.items()})


def setup_for(grid=(2, 2), embed_dim=18) -> ObjectiveSetup:
    return ObjectiveSetup(embed_dim, grid, 4, 4 * grid[0], 3, 10, 8)


def test_views_are_reduced_by_their_mean_and_reported_one_by_one():
    objective = PerView(PerView.Config(name="per_view_test", views=["a", "b"]), setup_for())
    out = objective(StepContext(views(a=2.0, b=6.0), nn.Identity()))
    assert out.loss == 4.0
    assert out.metrics == {
        "acc1": 0.5,
        "extra": 5.0,  # the mean over the views that report it
        "a/loss": 2.0,
        "a/acc1": 1.0,
        "a/extra": 5.0,
        "b/loss": 6.0,
        "b/acc1": 0.0,
    }


def test_one_view_is_passed_through_unchanged():
    objective = PerView(PerView.Config(name="per_view_test", views=["a"]), setup_for())
    out = objective(StepContext(views(a=3.0), nn.Identity()))
    assert out.loss == 3.0 and set(out.metrics) == {"acc1", "extra"}


def test_views_without_a_loss_are_left_out_and_none_at_all_gives_none():
    out = mean_over_views({"a": ObjectiveOutput(torch.tensor(2.0)), "b": ObjectiveOutput(None)})
    assert out.loss == 2.0 and out.metrics == {"a/loss": 2.0}
    assert mean_over_views({"a": ObjectiveOutput(None), "b": ObjectiveOutput(None)}).loss is None


def test_top1_is_argmax_accuracy_on_any_class_dimension():
    logits, targets = torch.randn(4, 9, 5, 5), torch.randint(9, (4, 5, 5))
    assert top1(logits, targets, dim=1) == (logits.argmax(1) == targets).float().mean()
    flat, flat_targets = torch.randn(50, 7), torch.randint(7, (50,))
    assert top1(flat, flat_targets) == (flat.argmax(-1) == flat_targets).float().mean()


class Tokens(nn.Module):
    """A stand-in backbone returning given patch tokens, the kept ones for a masked forward; counts its calls."""

    def __init__(self, tokens: torch.Tensor, grid: tuple[int, int]):
        super().__init__()
        self.tokens, self.grid, self.calls = tokens, grid, 0

    def forward(self, images, keep=None):
        self.calls += 1
        tokens = self.tokens if keep is None else self.tokens[torch.arange(len(keep))[:, None], keep]
        return BackboneOutput(tokens.mean(1), tokens, self.grid)


def context(tokens, grid=(2, 3), patch_order=None, **kwargs) -> StepContext:
    n = len(tokens)
    view = View(torch.zeros(n, 3, 1, 1), torch.zeros(n, dtype=torch.long), torch.arange(n))
    return StepContext(Batch({"main": view.replace(patch_order=patch_order)}), Tokens(tokens, grid), **kwargs)


def test_encode_is_cached_per_view_and_mask():
    ctx = context(torch.randn(2, 6, 4))
    keep, other = torch.tensor([[0, 2], [1, 5]]), torch.tensor([[0, 2], [1, 5]])
    assert ctx.encode("main") is ctx.encode("main")
    masked = ctx.encode("main", keep)
    assert masked is ctx.encode("main", keep) and masked.patch_tokens.shape == (2, 2, 4)
    assert ctx.encode("main", other) is not masked  # another mask tensor is another forward, even if equal
    assert ctx.backbone.calls == 3


def test_a_mask_must_be_published_before_it_is_read():
    ctx = context(torch.randn(2, 6, 4))
    with pytest.raises(ConfigError, match="no 'mae' mask for view 'main'.*list mae before"):
        ctx.mask("mae", "main")
    keep = torch.tensor([[0, 2], [1, 5]])
    ctx.publish_mask("mae", "main", keep)
    assert ctx.mask("mae", "main") is keep


GRID_OBJECTIVES = [
    {"name": "relations", "label_smoothing": 0.1},
    {"name": "relations", "max_pairs": 3},
    {"name": "distances"},
    {"name": "angles"},
    {"name": "apl"},
    {"name": "abs_position"},
    {"name": "rpl"},
    {"name": "rpl", "max_pairs": 3},
    {"name": "drloc", "num_pairs": 5},
]


@pytest.mark.parametrize("spec", GRID_OBJECTIVES, ids=lambda s: "-".join(map(str, s.values())))
def test_masked_by_reads_the_kept_tokens_at_their_grid_positions(spec):
    # On a masked encoding, a position objective equals itself on the kept tokens with patch_order = the kept
    # positions, composed with any patch shuffling of the view.
    tokens, grid = torch.randn(2, 6, 18), (2, 3)
    shuffle = torch.tensor([[5, 4, 3, 2, 1, 0], [0, 1, 2, 3, 4, 5]])
    keep = torch.tensor([[0, 2, 3], [5, 1, 4]])
    torch.manual_seed(0)
    masked = build_objective(parse_objective_config({**spec, "masked_by": "mae"}), setup_for(grid))
    ctx = context(tokens, grid, shuffle)
    ctx.publish_mask("mae", "main", keep)
    torch.manual_seed(1)
    loss = masked(ctx).loss
    torch.manual_seed(0)
    plain = build_objective(parse_objective_config(spec), setup_for(grid))
    kept = tokens[torch.arange(2)[:, None], keep]
    torch.manual_seed(1)
    expected = plain(context(kept, grid, torch.gather(shuffle, 1, keep))).loss
    assert torch.allclose(loss, expected, atol=1e-6)


@pytest.mark.parametrize("spec", GRID_OBJECTIVES[:1] + GRID_OBJECTIVES[4:5], ids=["relations", "apl"])
def test_grid_objectives_report_acc1(spec):
    objective = build_objective(parse_objective_config(spec), setup_for((2, 3)))
    metrics = objective(context(torch.randn(2, 6, 18))).metrics
    assert set(metrics) == {"acc1"}


# ---------------------------------------------------------------- registry


def test_a_name_is_registered_once():
    class Another(Objective):
        name = "relations"

    before = dict(OBJECTIVES)
    with pytest.raises(SmallViTError, match="'relations' is already registered by .*Relations: give") as err:
        register_objective(Another)
    assert "\n" not in str(err.value) and OBJECTIVES == before


# ---------------------------------------------------------------- weights in the run configuration


@pytest.mark.parametrize("value", ["-0.5", ".nan", ".inf", "-.inf"])
def test_objective_weights_must_be_finite_and_not_negative(value):
    with pytest.raises(ConfigError, match=r"objectives\.1\.weight=.*must be a finite number >= 0") as err:
        load_recipe("relvit-joint", [f"objectives.1.weight={value}"])
    assert "\n" not in str(err.value)


def test_weight_and_schedule_are_split_from_the_objective_and_written_back_beside_it():
    (stage,) = load_recipe("drloc-vit").stages
    drloc = stage.objectives[1]
    assert not hasattr(drloc, "weight") and not hasattr(drloc, "weight_schedule")
    weight = stage.objective_weights[1]
    assert weight.weight == 0.1 and weight.weight_schedule.kind == "warmup_decay"
    written = stage.to_dict()["objectives"][1]
    assert list(written)[:4] == ["name", "weight", "weight_schedule", "views"]  # a run folder's config.yaml, as before
    assert written["weight_schedule"] == {"kind": "warmup_decay", "warmup_epochs": 20.0}
    assert validate_run(stage.to_dict(), "run") == stage
    assert RunConfig().objective_weights[0].weight == 1.0  # the default: supervised, weight 1


def test_default_weights_are_the_objectives():
    stage = RunConfig.model_validate({"objectives": [{"name": "apl"}, {"name": "abs_position"}, {"name": "rpl"}]})
    assert [w.weight for w in stage.objective_weights] == [0.5, 1.0, 0.5]


def test_an_objectives_own_config_has_no_weight():
    with pytest.raises(ConfigError, match=r"objectives\[drloc\]\.weight: .* weight and its schedule belong to the run"):
        parse_objective_config({"name": "drloc", "weight": 0.1})


def test_objective_weights_are_not_a_recipe_key():
    with pytest.raises(ConfigError, match="write weight and weight_schedule per objective"):
        validate_run({"objective_weights": [{"weight": 1.0}]}, "recipe")


@pytest.mark.parametrize(
    "objectives, message",
    [
        ([{"name": "apl", "masked_by": "mae"}, {"name": "mae"}], r"masked_by='mae': list a masking objective \(mae\)"),
        ([{"name": "relations"}, {"name": "apl", "masked_by": "relations"}], "list a masking objective"),
        ([{"name": "mae"}, {"name": "rpl", "masked_by": "mae", "views": ["other"]}], r"does not mask view\(s\)"),
    ],
)
def test_masked_by_names_a_masking_objective_listed_before(objectives, message):
    raw = {"objectives": objectives, "augment": {"main": {"ops": []}, "other": {"ops": []}}}
    with pytest.raises(ConfigError, match=message):
        validate_run(raw, "recipe")


# ---------------------------------------------------------------- run folders written before the objectives rework


def tiny_train_model(config: RunConfig) -> TrainModel:
    backbone = build_backbone(
        "vit_lite", img_size=16, patch_size=4, pos_embed=False, depth=1, embed_dim=32, num_heads=2
    )
    setup = ObjectiveSetup(32, backbone.grid, 4, 16, 3, 10, 8, has_pos_embed=False)
    return TrainModel(backbone, [build_objective(o, setup) for o in config.objectives])


def test_a_run_folder_of_mae_with_position_labels_reopens_with_its_heads():
    legacy = {
        "objectives": [
            {
                "name": "mae",
                "weight": 2.0,
                "views": ["main"],
                "decoder_dim": 16,
                "decoder_heads": 2,
                "position_labels": [
                    {"kind": "apl", "weight": 0.5, "channel_split": 0.5, "max_pairs": None},
                    {"kind": "rpl", "weight": 0.25, "channel_split": 0.5, "max_pairs": 5},
                ],
            }
        ]
    }
    config = validate_run(legacy, "run")
    assert [(o.name, getattr(o, "masked_by", None)) for o in config.objectives] == [
        ("mae", None),
        ("apl", "mae"),
        ("rpl", "mae"),
    ]
    assert [w.weight for w in config.objective_weights] == [2.0, 1.0, 0.5]  # mae's weight × the label weight
    assert config.objectives[2].max_pairs == 5
    torch.manual_seed(0)
    trained = tiny_train_model(config)
    state = {
        k.replace("objectives.1.head.", "objectives.0.position_heads.apl.").replace(
            "objectives.2.head.", "objectives.0.position_heads.rpl."
        ): v
        for k, v in trained.state_dict().items()
    }  # the keys the old MAE objective wrote
    assert any(".position_heads.rpl." in k for k in state)
    reopened = tiny_train_model(config)
    reopened.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(trained.state_dict().values(), reopened.state_dict().values()))


# ---------------------------------------------------------------- recipes give the losses they gave before a rework

BEFORE = {  # total loss of one step of the recipe on 8 images, computed by the code before the objectives rework
    "relvit-joint": 9.042474746704102,  # supervised + relations + abs_position
    "mae-apl-pretrain": 3.3094475269317627,  # mae with position_labels: [{kind: apl, weight: 0.5}]
    "idmm-pretrain": 6.061501502990723,  # instance discrimination summed over its two crop groups
}


@pytest.mark.parametrize("recipe", list(BEFORE))
def test_recipes_step_to_the_loss_they_had_before(recipe):
    stage = load_recipe(recipe, ["data.subset.total=20", "precision=fp32"]).stages[0]
    torch.manual_seed(0)
    exp = build_experiment(stage, torch.device("cpu"), load_init=False)
    batch = exp.augment(exp.train_images[:8], exp.train_labels[:8], torch.arange(8), torch.Generator().manual_seed(0))
    weights = [w.weight * w.weight_schedule.factor(1.0, stage.train.epochs) for w in stage.objective_weights]
    torch.manual_seed(3)
    loss, metrics = exp.model(batch, weights)
    assert math.isclose(loss.item(), BEFORE[recipe], rel_tol=1e-6)
    assert not any(key.endswith("/acc") for key in metrics)
