"""``smallvit fit``'s rules (pure functions and a table, pinned on cases a reader can check by hand), and the
``small-data`` recipe they name."""

import re
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from smallvit.cli import app
from smallvit.config import available_recipes, load_recipe
from smallvit.data.datasets import DATASETS
from smallvit.errors import ConfigError, DataError
from smallvit.fit import (
    FALLBACK_RULE,
    MANY_CLASSES_RECIPE,
    RECIPE_RULES,
    RESULTS_PAGE,
    SMALL_DATA_RECIPE,
    Kind,
    RecipeRule,
    choose_batch,
    choose_geometry,
    choose_recipe,
    given_recipe,
)
from smallvit.models import build_backbone
from smallvit.sweep import load_sweep

REPO = Path(__file__).resolve().parents[1]
FIGURE = re.compile(r"\d+\.\d+|\d+(\.\d+)?x\b")  # a copied result: a decimal figure or a speed ratio


# ---------------------------------------------------------------- geometry


@pytest.mark.parametrize(
    ("sides", "size", "patch"),
    [
        ([32] * 5, 32, 4),  # CIFAR-sized: the README's protocol, 8 x 8
        ([112, 100, 130], 112, 16),  # imagenette-2040 as stored: 112 / 8 = 14 -> 16, 7 x 7
        ([375, 500, 3000], 224, 32),  # photos: clamped to 224; 28 -> 32, 7 x 7
        ([100, 100, 90, 120], 96, 16),  # median 100: 12.5 -> 16 (log2 3.64), round(6.25) = 6 -> 96
        ([90, 88, 92], 88, 8),  # median 90: 11.25 -> 8 (log2 3.49), round(11.25) = 11 -> 88
        ([60, 50, 70], 64, 8),  # median 60: 7.5 -> 8, round(7.5) = 8 -> 64
        ([8, 10, 12], 32, 4),  # thumbnails: raised to 32
    ],
)
def test_geometry_takes_the_median_shorter_side_and_a_power_of_two_patch_near_size_over_8(sides, size, patch):
    geometry = choose_geometry(sides)
    assert (geometry.image_size, geometry.patch_size, geometry.in_chans) == (size, patch, 3)
    assert geometry.image_size % geometry.patch_size == 0


def test_every_geometry_has_a_power_of_two_patch_and_a_grid_near_8x8():
    for max_size in (112, 224):
        for side in range(8, 400):
            geometry = choose_geometry([side], max_size=max_size)
            assert geometry.patch_size & (geometry.patch_size - 1) == 0, side  # a power of two
            assert geometry.image_size == geometry.patch_size * geometry.grid, side
            assert 6 <= geometry.grid <= 11, side
            assert abs(geometry.image_size - min(max(side, 32), max_size)) <= geometry.patch_size / 2, side


def test_geometry_clamps_to_the_recipes_largest_size():
    photos = choose_geometry([375, 500, 3000], max_size=112)
    assert (photos.image_size, photos.patch_size, photos.grid) == (112, 16, 7)
    assert "clamped to 32–112 px" in photos.size_reason


def test_geometry_fits_the_decoded_images_in_memory():
    big = choose_geometry([500] * 3, num_images=200_000, memory_bytes=4 * 2**30)
    assert big.image_size == 80 and "fit in 4 GiB" in big.size_reason  # isqrt(4 GiB / 600k) = 84 -> patch 8
    assert choose_geometry([500] * 3, num_images=2040).image_size == 224  # 2040 photos: 307 MB at 224 px
    with pytest.raises(DataError):
        choose_geometry([])


# ---------------------------------------------------------------- recipe


NOTHING_MEASURED = "nothing was measured for this kind of folder: "


def test_the_folders_the_results_measured_get_their_rules_and_other_kinds_the_baseline():
    small = choose_recipe(num_train=2040, num_classes=10, median_side=32)  # the CIFAR-10 sample of the evidence
    assert (small.recipe, small.rule, small.overrides, small.max_image_size) == ("small-data", "small-data", (), 112)
    assert small.text == "small-data" and small.unmeasured == ()
    assert small.reason.startswith("10 classes, 204 training images per class, median shorter side 32 px: the kind ")
    assert "conv tokenizer without a position embedding" in small.reason
    assert "results: imagenette-40ep, row conv-tokenizer-relvit-joint-no-pe-equal-time" in small.reason
    assert RESULTS_PAGE in small.reason and "nothing was measured" not in small.reason

    caltech = choose_recipe(num_train=101 * 20, num_classes=101, median_side=144)  # caltech101-2020
    assert (caltech.recipe, caltech.rule, caltech.max_image_size) == ("small-data-stem", "many-classes", 112)
    assert caltech.reason.startswith(
        "101 classes, 20 training images per class, median shorter side 144 px (trained at 112 px): the kind"
    )
    assert "results: equal-time-caltech101, row small-data-stem" in caltech.reason and caltech.unmeasured == ()

    photos = choose_recipe(num_train=102 * 20, num_classes=102, median_side=500)  # trained at 112 px, as caltech
    assert (photos.rule, photos.max_image_size) == ("many-classes", 112)
    assert photos.reason.startswith("102 classes, 20 training images per class, median shorter side 500 px (trained at")

    tiny = choose_recipe(num_train=102 * 20, num_classes=102, median_side=40)  # 40 px images: not measured
    assert (tiny.recipe, tiny.rule, tiny.overrides, tiny.max_image_size) == ("quickstart", "not-measured", (), 224)
    assert tiny.unmeasured == (
        "102 classes (measured: 10), 20 training images per class (measured: 204), more than a factor of 2 from what "
        "rule small-data was measured on",
        "40 px trained side (measured: 112), more than a factor of 2 from what rule many-classes was measured on",
    )
    assert tiny.reason.startswith(NOTHING_MEASURED + "; ".join(tiny.unmeasured))
    assert "fit therefore trains the baseline quickstart (the crop + flip baseline" in tiny.reason
    assert "no result yet" in tiny.reason  # the kind is not measured, so no result is cited
    assert tiny.evidence == FALLBACK_RULE.evidence


def test_a_kind_holds_each_property_within_a_factor_of_two_of_what_was_measured():
    small, many = RECIPE_RULES
    assert small.kind == Kind(classes=(10, 10), per_class=(204, 204), trained_side=(32, 112))
    assert small.kind.measured == "10 classes, 204 training images per class, 32–112 px trained side"
    assert small.kind.bounds == "5–20 classes, 102–408 training images per class, 16–224 px trained side"
    assert many.kind.measured == "101 classes, 20 training images per class, 112 px trained side"
    assert many.kind.bounds == "50.5–202 classes, 10–40 training images per class, 56–224 px trained side"


@pytest.mark.parametrize(
    ("classes", "per_class", "side", "outside"),
    [
        (10, 204, 112, []),  # imagenette-2040 as it was measured
        (5, 102, 16, []),  # every lower edge: half of what was measured
        (20, 408, 112, []),  # the upper edges of classes and images per class: twice (the side is capped)
        (4, 204, 112, ["4 classes (measured: 10)"]),
        (21, 204, 112, ["21 classes (measured: 10)"]),
        (10, 101, 112, ["101 training images per class (measured: 204)"]),
        (10, 409, 112, ["409 training images per class (measured: 204)"]),
        (10, 204, 15, ["15 px trained side (measured: 32–112)"]),
        (10, 204, 3000, []),  # trained at 112 px, as imagenette-2040's 224 px photos
        (10, 204, None, []),  # an unknown median side is not checked
        (
            3,
            1001,
            10,
            [
                "3 classes (measured: 10)",
                "1001 training images per class (measured: 204)",
                "10 px trained side (measured: 32–112)",
            ],
        ),
    ],
)
def test_the_factor_of_two_edges_of_the_small_data_kind(classes, per_class, side, outside):
    trained_side = None if side is None else min(side, RECIPE_RULES[0].max_image_size)
    assert RECIPE_RULES[0].kind.outside(classes, per_class, trained_side) == outside
    choice = choose_recipe(num_train=classes * per_class, num_classes=classes, median_side=side)
    if not outside:
        assert (choice.rule, choice.recipe) == ("small-data", "small-data") and "nothing" not in choice.reason
        return
    assert (choice.rule, choice.recipe, choice.max_image_size) == ("not-measured", "quickstart", 224)
    assert choice.reason.startswith(NOTHING_MEASURED + ", ".join(outside) + ", more than a factor of 2 from")


def test_images_per_class_just_past_an_edge_are_not_rounded_into_the_kind():
    choice = choose_recipe(num_train=2043, num_classes=5, median_side=112)  # 408.6 per class
    assert choice.rule == "not-measured"
    assert choice.reason.startswith(NOTHING_MEASURED + "408.6 training images per class (measured: 204)")


def test_rule_reasons_cite_results_rows_and_copy_no_figures():
    for num_train, num_classes in ((100, 10), (2040, 10), (30_000, 10), (2020, 101)):
        choice = choose_recipe(num_train=num_train, num_classes=num_classes, median_side=112)
        assert not FIGURE.search(choice.reason), choice.reason
        for evidence in choice.evidence:
            assert not FIGURE.search(evidence.shows), evidence
    studies = {evidence.study for rule in (*RECIPE_RULES, FALLBACK_RULE) for evidence in rule.evidence}
    assert "results: imagenette-40ep" in studies and "results: cifar10-60ep" in studies


def test_the_rule_table_is_data_the_first_rule_whose_kind_holds_the_folder_fires():
    rules = (
        RecipeRule("few", "supervised", Kind((2, 4), (10, 20), (32, 64)), max_image_size=64, why="few images"),
        RecipeRule("cifar", "relvit", Kind((10, 10), (20, 50), (32, 32)), max_image_size=32, why="like CIFAR"),
    )
    few = choose_recipe(num_train=5 * 10, num_classes=5, median_side=40, rules=rules)  # in both kinds: the first
    cifar = choose_recipe(num_train=10 * 80, num_classes=10, median_side=40, rules=rules)
    neither = choose_recipe(num_train=100 * 5, num_classes=100, median_side=40, rules=rules)
    assert (few.rule, few.recipe, few.max_image_size) == ("few", "supervised", 64)
    assert (cifar.rule, cifar.recipe, cifar.max_image_size) == ("cifar", "relvit", 32)
    assert (neither.rule, neither.recipe, neither.max_image_size) == ("not-measured", "quickstart", 224)
    assert neither.unmeasured == (
        "100 classes (measured: 2–4), more than a factor of 2 from what rule few was measured on",
        "100 classes (measured: 10), 5 training images per class (measured: 20–50), more than a factor of 2 from what "
        "rule cifar was measured on",
    )
    assert neither.reason.startswith(NOTHING_MEASURED + "; ".join(neither.unmeasured) + "; fit therefore trains")
    fallback = RecipeRule("other", "supervised", None, max_image_size=96, why="the rest")
    other = choose_recipe(num_train=100 * 5, num_classes=100, rules=rules, fallback=fallback)
    assert (other.rule, other.recipe, other.max_image_size) == ("other", "supervised", 96)


def test_a_recipe_given_with_recipe_overrides_the_rules_at_the_size_of_the_rule_naming_it():
    assert given_recipe("small-data") == given_recipe(SMALL_DATA_RECIPE)
    small = given_recipe("small-data")
    assert (small.recipe, small.rule, small.reason, small.max_image_size) == (
        "small-data",
        "given",
        "given with --recipe",
        112,
    )
    assert given_recipe("quickstart").max_image_size == 224  # the fallback rule's recipe
    assert given_recipe("relvit").max_image_size == 224  # named by no rule
    with pytest.raises(ConfigError) as raised:
        given_recipe("smalldata")
    message = str(raised.value)
    assert message.startswith("--recipe 'smalldata' is not a shipped recipe: choose one of ") and "\n" not in message
    assert message.endswith(", ".join(available_recipes()))


@pytest.mark.parametrize("side", [32, 60, 90, 100, 112, 500])
@pytest.mark.parametrize(
    ("classes", "per_class", "rule", "preset"),
    [(10, 204, "small-data", "vit_lite_conv"), (101, 20, "many-classes", "vit_lite_stem")],
)
def test_the_rules_recipes_build_at_every_geometry_they_allow(side, classes, per_class, rule, preset):
    choice = choose_recipe(num_train=classes * per_class, num_classes=classes)
    (stage,) = load_recipe(choice.recipe).stages
    assert choice.rule == rule and stage.model.preset == preset and stage.model.pos_embed is False
    geometry = choose_geometry([side], max_size=choice.max_image_size)
    backbone = build_backbone(
        preset, img_size=geometry.image_size, patch_size=geometry.patch_size, pos_embed=False, depth=1
    )
    output = backbone(torch.zeros(2, 3, geometry.image_size, geometry.image_size))
    assert output.grid == (geometry.grid, geometry.grid) and output.patch_tokens.shape[1] == geometry.grid**2


# ---------------------------------------------------------------- batch


@pytest.mark.parametrize(
    ("images", "batch"),
    [
        (200, 16),  # a tenth is 20 -> 16: 12 steps an epoch
        (50, 16),  # a tenth is 5: raised to 16
        (319, 16),  # 31 -> 16
        (320, 32),
        (700, 64),
        (2040, 128),  # 204 -> 128, also the recipe's batch
        (100_000, 128),  # capped by the recipe
    ],
)
def test_the_batch_is_the_power_of_two_at_most_a_tenth_of_the_images(images, batch):
    choice = choose_batch(images, recipe_batch=128, recipe_lr=1e-3)
    assert choice.batch_size == batch
    if images >= 10 * 16:
        assert images // choice.batch_size >= 10  # at least 10 optimizer steps an epoch


def test_the_learning_rate_scales_linearly_with_the_batch():
    for images, recipe_batch, recipe_lr in ((200, 128, 1e-3), (700, 256, 5e-4), (5000, 128, 1e-3)):
        choice = choose_batch(images, recipe_batch, recipe_lr)
        assert choice.lr == pytest.approx(recipe_lr * choice.batch_size / recipe_batch)
    small = choose_batch(200, 128, 1e-3)
    assert small.overrides == ("train.batch_size=16", "optim.lr=0.000125")
    assert "12 optimizer steps an epoch" in small.reason and "scaled by 16/128" in small.reason
    assert choose_batch(64, recipe_batch=8, recipe_lr=1e-3).batch_size == 8  # never above the recipe's batch


# ---------------------------------------------------------------- the small-data recipe


def test_small_data_is_relvit_joint_on_the_conv_tokenizer_without_a_position_embedding():
    (named,) = load_recipe(SMALL_DATA_RECIPE).stages
    (spelled,) = load_recipe("relvit-joint", ["model.preset=vit_lite_conv", "model.pos_embed=false"]).stages
    assert named.name == "small-data" and named.description != spelled.description
    same = {"name", "description"}
    assert named.model_dump(exclude=same) == spelled.model_dump(exclude=same)
    description = load_recipe(SMALL_DATA_RECIPE).description
    assert "vit_lite_conv" in description and not FIGURE.search(description)


def test_small_data_stem_is_small_data_on_the_conv_stem():
    (named,) = load_recipe(MANY_CLASSES_RECIPE).stages
    (spelled,) = load_recipe("relvit-joint", ["model.preset=vit_lite_stem", "model.pos_embed=false"]).stages
    same = {"name", "description"}
    assert named.name == "small-data-stem" and named.model_dump(exclude=same) == spelled.model_dump(exclude=same)
    assert not FIGURE.search(load_recipe(MANY_CLASSES_RECIPE).description)


def test_recipes_lists_small_data_first():
    result = CliRunner().invoke(app, ["recipes"])
    assert result.exit_code == 0, result.output
    names = [line.split()[1] for line in result.output.splitlines() if line.startswith("│ ") and line.split()[1]]
    assert names[0] == "small-data" and "quickstart" in names and names.count("small-data") == 1


# ---------------------------------------------------------------- fit's choice is the protocol's row

# Each development dataset as a folder of its source images shows it to fit: classes, training images per class and
# the median shorter side of the files (results/sweeps/equal-time-*.yaml and the datasets page).
DEVELOPMENT_FOLDERS = [
    ("equal-time-cifar10.yaml", 10, 204, 32),
    ("equal-time-imagenette.yaml", 10, 204, 224),
    ("equal-time-caltech101.yaml", 101, 20, 144),
    ("equal-time-eurosat.yaml", 10, 204, 64),
]


@pytest.mark.parametrize(("sweep_file", "classes", "per_class", "side"), DEVELOPMENT_FOLDERS)
def test_fits_choice_for_each_development_dataset_is_the_equal_time_row_its_rule_cites(
    sweep_file, classes, per_class, side
):
    """The row whose figures a rule cites trained what fit trains on such a folder (all but the data source and the
    epochs, which fit takes from its budget), so the protocol measures fit's own choice."""
    sweep = load_sweep(REPO / "results" / "sweeps" / sweep_file)
    choice = choose_recipe(num_train=classes * per_class, num_classes=classes, median_side=side)
    row = {"small-data": "small-data", "many-classes": "small-data-stem"}[choice.rule]
    (run,) = [run for run in sweep.runs if run.name == row]
    (protocol,) = load_recipe(run.recipe, [*sweep.overrides, *run.overrides]).stages
    geometry = choose_geometry([side], max_size=choice.max_image_size)
    batch = choose_batch(classes * per_class, protocol.train.batch_size, protocol.optim.lr)
    patch = [f"model.patch_size={geometry.patch_size}", f"augment.main.ops.0.padding={geometry.patch_size}"]
    (fitted,) = load_recipe(choice.recipe, [*patch, *batch.overrides]).stages
    assert geometry.image_size == DATASETS[protocol.data.dataset].image_size
    for part in ("model", "augment", "objectives", "optim"):
        assert getattr(fitted, part) == getattr(protocol, part), part
    assert fitted.train.model_dump(exclude={"epochs"}) == protocol.train.model_dump(exclude={"epochs"})
