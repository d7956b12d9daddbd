"""``smallvit fit``: the rules it chooses by (pure functions, pinned on cases a reader can check), the folder scan, and
one run end to end on a tiny generated folder — fit, then predict, plot and eval on what it made."""

import csv
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image, ImageDraw
from typer.testing import CliRunner

import smallvit.fit as fit
from smallvit.cli import app
from smallvit.data import load_dataset, split_validation
from smallvit.engine.experiment import content_digest, read_run_config
from smallvit.errors import ConfigError, DataError
from smallvit.fit import (
    BUDGET_FILL,
    Speed,
    choose_geometry,
    choose_recipe,
    parse_duration,
    plan_epochs,
    scan_folder,
)
from smallvit.models import build_backbone

CLASSES = ["circle", "square", "stripes"]


SIZES = ((48, 40), (64, 64), (80, 60), (56, 72), (120, 90))


def make_image_folder(
    root: Path, per_class: int = 12, seed: int = 0, broken: bool = True, sizes: tuple = SIZES
) -> Path:
    """``root/<class>/<image>``: three classes of drawn shapes in ``sizes``, formats and modes — RGB JPEGs,
    grayscale and RGBA PNGs, palette GIFs — and, with ``broken``, one file that is not an image."""
    rng = np.random.default_rng(seed)
    for name in CLASSES:
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            width, height = sizes[i % len(sizes)]
            image = Image.new("RGB", (width, height), tuple(int(v) for v in rng.integers(0, 120, 3)))
            draw = ImageDraw.Draw(image)
            colour = tuple(int(v) for v in rng.integers(140, 256, 3))
            side = min(width, height) // 2
            x, y = int(rng.integers(0, width - side)), int(rng.integers(0, height - side))
            if name == "circle":
                draw.ellipse([x, y, x + side, y + side], fill=colour)
            elif name == "square":
                draw.rectangle([x, y, x + side, y + side], fill=colour)
            else:
                for left in range(0, width, 8):
                    draw.rectangle([left, 0, left + 3, height], fill=colour)
            kind = i % 6
            if kind == 0:
                image.convert("L").save(folder / f"{i:02d}.png")
            elif kind == 1:
                rgba = image.convert("RGBA")
                rgba.putalpha(200)
                rgba.save(folder / f"{i:02d}.png")
            elif kind == 2:
                image.convert("P", palette=Image.Palette.ADAPTIVE).save(folder / f"{i:02d}.gif")
            else:
                image.save(folder / f"{i:02d}.jpg", quality=90)
    if broken:
        (root / "square" / "broken.jpg").write_bytes(b"this is not an image")
    return root


def assert_picture(path: Path, min_side: int = 200) -> None:
    """A PNG that opens, is not tiny, and is not one flat colour."""
    assert path.is_file() and path.stat().st_size > 0, path
    with Image.open(path) as image:
        assert image.format == "PNG", path
        assert min(image.size) >= min_side, (path, image.size)
        assert np.asarray(image.convert("L")).std() > 5, path


pytestmark = pytest.mark.usefixtures("isolated_data")


# ---------------------------------------------------------------- the rules


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


def test_recipe_rule_by_images_per_class():
    small = choose_recipe(num_train=2040, num_classes=10)  # the CIFAR-10 sample and imagenette-2040 of the evidence
    conv = ("model.preset=vit_lite_conv", "model.pos_embed=false")
    assert (small.recipe, small.rule, small.overrides, small.max_image_size) == (
        "relvit-joint",
        "small-data",
        conv,
        112,
    )
    assert small.text == "relvit-joint model.preset=vit_lite_conv model.pos_embed=false"
    assert "conv tokenizer" in small.reason and "without a position embedding" in small.reason
    assert "imagenette-2040" in small.reason and "at equal time" in small.reason and "7.66x" in small.reason
    assert choose_recipe(num_train=3000, num_classes=3).rule == "small-data"  # exactly 1,000 per class
    more = choose_recipe(num_train=3003, num_classes=3)
    assert (more.recipe, more.rule, more.overrides, more.max_image_size) == ("quickstart", "more-data", (), 224)


@pytest.mark.parametrize("side", [32, 60, 90, 100, 112, 500])
def test_the_small_data_recipe_builds_at_every_geometry_it_allows(side):
    choice = choose_recipe(num_train=100, num_classes=10)
    geometry = choose_geometry([side], max_size=choice.max_image_size)
    backbone = build_backbone(
        "vit_lite_conv", img_size=geometry.image_size, patch_size=geometry.patch_size, pos_embed=False, depth=1
    )
    output = backbone(torch.zeros(2, 3, geometry.image_size, geometry.image_size))
    assert output.grid == (geometry.grid, geometry.grid) and output.patch_tokens.shape[1] == geometry.grid**2


def test_epochs_fill_the_budget_from_the_measured_speed():
    speed = Speed(step_s=1.0, steps_per_epoch=10, eval_s=2.0, test_s=1.0, checkpoint_s=0.5, setup_s=1.5, pictures_s=4.0)
    # fixed: 2 set-ups 3 + final validation 2 + 2 tests 2 + pictures 4 + measuring 5 = 16 s;
    # an epoch: 10 steps + 0.5 checkpoint + 2 validation = 12.5 s; 0.9 x 300 - 16 = 254 -> 20 epochs
    plan = plan_epochs(300, speed, spent_s=5)
    assert (plan.epochs, plan.eval_every) == (20, 1)
    assert plan.planned_s == pytest.approx(16 + 20 * 12.5) and plan.planned_s <= BUDGET_FILL * 300
    long = plan_epochs(3600, speed)  # more than 20 epochs: about 20 evaluations in all
    assert long.eval_every > 1 and long.planned_s <= BUDGET_FILL * 3600
    assert long.epochs // long.eval_every in range(15, 26)
    short = plan_epochs(10, speed)
    assert short.epochs == 1 and "does not hold one epoch" in short.reason
    # training stops at the budget less fixed, one step and one checkpoint (at least a moment: one step is trained)
    assert (plan.time_limit_s, long.time_limit_s, short.time_limit_s) == (282.5, 3600 - 11 - 1.5, 0.01)


@pytest.mark.parametrize(("text", "seconds"), [("90", 90), ("90s", 90), ("15m", 900), ("1h30m", 5400), ("2.5m", 150)])
def test_budgets_read_as_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["soon", "15 minutes", "0s", "-5m", "m"])
def test_a_budget_that_is_not_a_duration_is_one_clear_line(text):
    with pytest.raises(ConfigError, match="--budget"):
        parse_duration(text)


# ---------------------------------------------------------------- the folder


def test_scan_counts_images_sizes_and_modes_and_finds_the_unreadable_file(tmp_path):
    summary = scan_folder(make_image_folder(tmp_path / "images"))
    assert summary.flat and summary.classes == CLASSES
    assert summary.counts == {"all": dict.fromkeys(CLASSES, 12)} and summary.total == 36
    assert summary.modes == {"RGB": 18, "L": 6, "RGBA": 6, "P": 6}
    assert [path.endswith("broken.jpg") for path, _ in summary.unreadable] == [True]
    assert summary.train_count() == 33  # round(1.2) = 1 of each class held out


def _split_folder(root: Path, train_per_class: int = 12, test_per_class: int = 2) -> Path:
    """``root/{train,test}/<class>/<image>``, no ``val/``; circle keeps 7 training images, the others 12."""
    make_image_folder(root / "train", per_class=train_per_class, broken=False)
    make_image_folder(root / "test", per_class=test_per_class, seed=1, broken=False)
    for path in sorted((root / "train" / "circle").iterdir())[: max(train_per_class - 7, 0)]:
        path.unlink()
    return root


def test_split_folders_without_val_hold_out_a_seeded_val_split_of_each_train_class(tmp_path):
    folder = _split_folder(tmp_path / "images")
    summary = scan_folder(folder)
    assert summary.carves_val and summary.counts["train"] == {"circle": 7, "square": 12, "stripes": 12}
    assert summary.train_count(0.25) == 5 + 9 + 9  # round(1.75) = 2 and 3 of each class held out
    run = tmp_path / "run"
    args = ["fit", str(folder), "--epochs", "1", "--output", str(run), "--quiet", "model.overrides.depth=1"]
    result = CliRunner().invoke(app, [*args, "data.val_fraction=0.25", "data.val_seed=3"])
    assert result.exit_code == 0, result.output
    said = "validation: no val/ folder: 25 % of each class of train/ held out at random with seed 3"
    assert said in " ".join(result.output.split())  # the console wraps long lines

    splits = json.loads((run / "data.json").read_text())["splits"]
    assert splits["val"]["name"] == "train[val 0.25]" and splits["val"]["per_class"] == [2, 3, 3]
    assert splits["train"]["per_class"] == [5, 9, 9] and splits["test"]["per_class"] == [2, 2, 2]
    config = read_run_config(run)
    whole = load_dataset("imagefolder", "train", root=folder, image_size=config.data.image_size, decode="draft")
    _, held_out = split_validation(whole.labels, 0.25, seed=3)
    assert splits["val"]["sha256"] == content_digest(whole.images[held_out], whole.labels[held_out])

    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    tests = [record for record in records if record["kind"] == "test"]
    assert len(tests) == 1 and tests[0] is records[-1]  # the test split: evaluated once, at the end
    assert not any(key.startswith("test/") for record in records[:-1] for key in record)
    assert json.loads((run / "fit.json").read_text())["validation"].startswith("no val/ folder: 25 %")
    report = (run / "report.md").read_text()
    assert "| class | train | test | trained | val, held out of train/ |" in report
    assert "| circle | 7 | 2 | 5 | 2 |" in report and "| stripes | 12 | 2 | 9 | 3 |" in report
    assert f"| validation | {said.removeprefix('validation: ')}" in report
    summary = json.loads((run / "summary.json").read_text())
    exported_test = 100 * summary["best"]["test"]["test/supervised/acc1"]
    assert f"test top-1 of the exported checkpoint **{exported_test:.2f} %**" in report


def test_a_train_folder_too_small_to_hold_out_validation_is_one_clear_line(tmp_path):
    folder = _split_folder(tmp_path / "images", train_per_class=1, test_per_class=1)
    result = CliRunner().invoke(app, ["fit", str(folder), "--epochs", "1", "--output", str(tmp_path / "run")])
    message = str(result.exception)
    assert result.exit_code != 0 and "holds out no image of split 'train'" in message and "\n" not in message


def test_an_unreadable_file_stops_fit_unless_skipped(tmp_path):
    folder = make_image_folder(tmp_path / "images", per_class=2)
    result = CliRunner().invoke(app, ["fit", str(folder), "--epochs", "1", "--output", str(tmp_path / "run")])
    assert result.exit_code != 0
    message = str(result.exception)
    assert "broken.jpg" in message and "--on-bad-file skip" in message and "\n" not in message


# ---------------------------------------------------------------- end to end


def test_a_fit_slower_than_measured_stops_on_its_time_limit_and_ends_within_the_budget(tmp_path, monkeypatch):
    measure_speed = fit.measure_speed

    def measured_before_the_machine_slowed_down(*args, **kwargs):  # steps then run 10x slower than measured
        speed = measure_speed(*args, **kwargs)
        return replace(speed, step_s=speed.step_s / 10)

    monkeypatch.setattr(fit, "measure_speed", measured_before_the_machine_slowed_down)
    folder, run, budget = make_image_folder(tmp_path / "images", per_class=8, broken=False), tmp_path / "run", 8
    args = ["fit", str(folder), "--budget", f"{budget}s", "--output", str(run), "--quiet", "model.overrides.depth=1"]
    result = CliRunner().invoke(app, [*args, "train.batch_size=4"])  # 5 steps an epoch
    assert result.exit_code == 0, result.output

    fitted, summary = (json.loads((run / name).read_text()) for name in ("fit.json", "summary.json"))
    assert fitted["stopped_on_time_limit"] and summary["time_limit"]["stopped"]
    assert (
        summary["time_limit"]["limit_s"] == fitted["time_limit_s"] and "train.time_limit_s" in fitted["epochs_reason"]
    )
    assert summary["epochs"] == fitted["epochs"] > summary["epochs_run"] == fitted["epochs_run"] > 0
    assert (run / "checkpoints" / "last.safetensors").is_file() and (run / "export" / "model.safetensors").is_file()
    # the loop ends after the step that reaches the limit, a validation pass and a checkpoint; the seconds are the
    # summary's (fit's own clock excludes decoding), + 3 s for this test's tiny budget on a loaded machine
    assert summary["training_s"] == fitted["seconds"]["training_loop"] <= fitted["time_limit_s"] + 3
    assert fitted["seconds"]["after_decoding"] <= 1.2 * budget + 3
    report = (run / "report.md").read_text()
    assert f"of {fitted['epochs']} planned epochs (stopped on its time limit of {fitted['time_limit_s']:g} s)" in report
    assert "s of training (steps, validation, checkpoints)" in report and "ended above its minimum" in report


def test_fit_of_small_images_trains_the_conv_tokenizer_and_its_export_predicts(tmp_path):
    folder = make_image_folder(tmp_path / "images", per_class=10, broken=False, sizes=((32, 32), (36, 40)))
    run = tmp_path / "run"
    args = ["fit", str(folder), "--epochs", "1", "--output", str(run), "--quiet", "model.overrides.depth=1"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    output = " ".join(result.output.split())  # the console wraps long lines
    assert "recipe: relvit-joint model.preset=vit_lite_conv model.pos_embed=false (rule small-data:" in output
    fitted = json.loads((run / "fit.json").read_text())
    assert fitted["recipe"]["overrides"] == ["model.preset=vit_lite_conv", "model.pos_embed=false"]
    assert fitted["geometry"]["patch_size"] == 4
    model = yaml.safe_load((run / "config.yaml").read_text())["model"]
    assert (model["preset"], model["pos_embed"]) == ("vit_lite_conv", False)
    assert (
        "| recipe | `relvit-joint model.preset=vit_lite_conv model.pos_embed=false` |"
        in (run / "report.md").read_text()
    )
    table = tmp_path / "predictions.csv"
    result = CliRunner().invoke(app, ["predict", str(run / "export"), str(folder / "circle"), "--csv", str(table)])
    assert result.exit_code == 0, result.output
    rows = list(csv.reader(table.open()))[1:]
    assert len(rows) == 10 and all(row[1] in CLASSES for row in rows)


def test_fit_within_its_budget_then_predict_plot_and_eval(tmp_path):
    folder = make_image_folder(tmp_path / "images")
    run = tmp_path / "run"
    budget = 60
    args = ["fit", str(folder), "--budget", f"{budget}s", "--output", str(run), "--on-bad-file", "skip", "--quiet"]
    result = CliRunner().invoke(app, [*args, "model.overrides.depth=1"])
    assert result.exit_code == 0, result.output
    assert "geometry: 64 px, patch 8" in result.output  # median shorter side 60 px
    assert "recipe: relvit-joint model.preset=vit_lite_conv model.pos_embed=false" in result.output

    fitted = json.loads((run / "fit.json").read_text())
    assert fitted["geometry"]["image_size"] == 64 and fitted["recipe"]["recipe"] == "relvit-joint"
    assert fitted["recipe"]["rule"] == "small-data"
    assert fitted["planned_s"] <= 0.9 * budget
    # within B + 20 %, unless other work on this shared machine slowed the epochs down after they were measured
    slowdown = max(1.0, fitted["epoch_s"]["slowdown"])
    assert fitted["seconds"]["after_decoding"] <= 1.2 * budget * slowdown, (fitted["seconds"], fitted["epoch_s"])
    assert fitted["epochs"] >= 1 and fitted["speed"]["step_s"] > 0
    assert (run / "export" / "model.safetensors").is_file()
    exported = json.loads((run / "export" / "config.json").read_text())
    assert exported["classes"] == CLASSES and exported["smallvit_preprocess"]["image_size"] == 64

    report = (run / "report.md").read_text()
    for section in ("## Data", "## Choices", "## Training", "## Results", "## Use the model"):
        assert section in report, section
    recipe = "| recipe | `relvit-joint model.preset=vit_lite_conv model.pos_embed=false` |"
    for text in ("| image size | 64 px |", recipe, "broken.jpg", "| circle |", "curves.png"):
        assert text in report, text
    pictures = [
        "curves.png",
        "confusion_matrix.png",
        "worst_val_images.png",
        "position_predictions.png",
        "attention_distance.png",
    ]
    assert not (run / "position_embedding_similarity.png").exists()  # the chosen model has no position embedding
    for name in pictures:
        assert_picture(run / name)
        assert f"]({name})" in report, name

    table = tmp_path / "predictions.csv"
    images = [str(folder / "circle"), str(folder / "square" / "broken.jpg"), str(folder / "stripes" / "00.png")]
    result = CliRunner().invoke(app, ["predict", str(run), *images, "--top-k", "2", "--csv", str(table)])
    assert result.exit_code == 1  # one file could not be read; the others are predicted
    assert "cannot read" in result.output and "broken.jpg" in result.output and "1 of 14 files" in result.output
    rows = list(csv.reader(table.open()))
    assert rows[0] == ["path", "top1_class", "top1_probability", "top2_class", "top2_probability"]
    assert len(rows) == 1 + 13 and rows[-1][0].endswith("stripes/00.png")
    for row in rows[1:]:
        assert row[1] in CLASSES and row[3] in CLASSES and row[1] != row[3]
        assert 1 >= float(row[2]) >= float(row[4]) >= 0

    from_export = tmp_path / "from_export.csv"
    args = ["predict", str(run / "export"), str(folder / "circle"), "--csv", str(from_export)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    exported_rows = list(csv.reader(from_export.open()))[1:]
    assert [r[:2] for r in exported_rows] == [r[:2] for r in rows[1:13]]  # the export predicts what the run does

    for name in pictures[1:]:
        (run / name).unlink()
    result = CliRunner().invoke(app, ["plot", str(run)])
    assert result.exit_code == 0, result.output
    for name in pictures:
        assert_picture(run / name)

    result = CliRunner().invoke(app, ["eval", str(run), "--split", "val", "--json"])
    assert result.exit_code == 0, result.output
    evaluated = json.loads(result.output)
    assert evaluated["classes"] == CLASSES and len(evaluated["confusion_matrix"]) == 3
    assert sum(map(sum, evaluated["confusion_matrix"])) == 3 and set(evaluated["per_class_accuracy"]) == set(CLASSES)
