"""``smallvit fit``'s rules (pure functions and a table, pinned on cases a reader can check by hand), and the
``small-data`` recipe they name."""

import math
import re

import pytest
import torch
from typer.testing import CliRunner

from smallvit.cli import app
from smallvit.config import load_recipe
from smallvit.errors import DataError
from smallvit.fit import (
    RECIPE_RULES,
    RESULTS_PAGE,
    SMALL_DATA_RECIPE,
    RecipeRule,
    choose_batch,
    choose_geometry,
    choose_recipe,
    unmeasured,
)
from smallvit.models import build_backbone

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


def test_recipe_rule_by_images_per_class():
    small = choose_recipe(num_train=2040, num_classes=10, median_side=32)  # the CIFAR-10 sample of the evidence
    assert (small.recipe, small.rule, small.overrides, small.max_image_size) == ("small-data", "small-data", (), 112)
    assert small.text == "small-data"
    assert "conv tokenizer without a position embedding" in small.reason
    assert "results: imagenette-40ep, row conv-tokenizer-relvit-joint-no-pe-equal-time" in small.reason
    assert RESULTS_PAGE in small.reason and "not measured" not in small.reason  # 10 classes, 204 per class, 32 px
    assert choose_recipe(num_train=3000, num_classes=3).rule == "small-data"  # exactly 1,000 per class
    more = choose_recipe(num_train=3003, num_classes=3)
    assert (more.recipe, more.rule, more.overrides, more.max_image_size) == ("quickstart", "more-data", (), 224)
    assert "(more than 1000)" in more.reason and "no result yet" in more.reason


def test_rule_reasons_cite_results_rows_and_copy_no_figures():
    for num_train in (100, 2040, 30_000):
        choice = choose_recipe(num_train=num_train, num_classes=10, median_side=112)
        assert not FIGURE.search(choice.reason), choice.reason
        for evidence in choice.evidence:
            assert not FIGURE.search(evidence.shows), evidence
    studies = {evidence.study for rule in RECIPE_RULES for evidence in rule.evidence}
    assert "results: imagenette-40ep" in studies and "results: cifar10-60ep" in studies


def test_the_rule_table_is_data_the_first_rule_that_holds_the_folder_fires():
    rules = (
        RecipeRule("tiny", "quickstart", max_per_class=50, max_image_size=64, why="few images"),
        RecipeRule("rest", "supervised", max_per_class=math.inf, max_image_size=224, why="the others"),
    )
    tiny = choose_recipe(num_train=500, num_classes=10, rules=rules)
    rest = choose_recipe(num_train=510, num_classes=10, rules=rules)
    assert (tiny.rule, tiny.recipe, tiny.max_image_size) == ("tiny", "quickstart", 64)
    assert (rest.rule, rest.recipe) == ("rest", "supervised") and "(more than 50)" in rest.reason


@pytest.mark.parametrize(
    ("classes", "per_class", "side", "notes"),
    [
        (10, 204, 112, []),  # imagenette-2040 as it was measured
        (100, 204, 112, ["100 classes (results: 10)"]),
        (10, 5, 112, ["5 training images per class (results: 204)"]),
        (10, 204, 3000, ["3000 px median shorter side (results: 32–224)"]),
    ],
)
def test_folders_outside_what_was_measured_are_named_in_the_reason(classes, per_class, side, notes):
    assert unmeasured(classes, per_class, side) == notes
    choice = choose_recipe(num_train=classes * per_class, num_classes=classes, median_side=side)
    assert choice.rule == "small-data"  # the decision is kept; the reason says what was not measured
    assert ("not measured: " + ", ".join(notes) in choice.reason) if notes else ("not measured" not in choice.reason)


@pytest.mark.parametrize("side", [32, 60, 90, 100, 112, 500])
def test_the_small_data_recipe_builds_at_every_geometry_it_allows(side):
    choice = choose_recipe(num_train=100, num_classes=10)
    geometry = choose_geometry([side], max_size=choice.max_image_size)
    backbone = build_backbone(
        "vit_lite_conv", img_size=geometry.image_size, patch_size=geometry.patch_size, pos_embed=False, depth=1
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


def test_recipes_lists_small_data_first():
    result = CliRunner().invoke(app, ["recipes"])
    assert result.exit_code == 0, result.output
    names = [line.split()[1] for line in result.output.splitlines() if line.startswith("│ ") and line.split()[1]]
    assert names[0] == "small-data" and "quickstart" in names and names.count("small-data") == 1
