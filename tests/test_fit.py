"""``smallvit fit``: the folder scan, the refusals before any work, and runs end to end on tiny generated folders —
fit, then predict, plot and eval on what it made. The rules, the plan and the report: ``test_fit_rules.py``,
``test_fit_plan.py``, ``test_fit_report.py``."""

import csv
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image, ImageDraw
from typer.testing import CliRunner

import smallvit.fit.orchestration as orchestration
from smallvit.cli import app
from smallvit.config import available_recipes, load_recipe
from smallvit.data import load_dataset, split_validation
from smallvit.engine.experiment import content_digest, read_run_config
from smallvit.fit import Speed, scan_folder

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
    sorted((folder / "test" / "circle").iterdir())[0].unlink()  # an unbalanced test split: 1, 2, 2
    summary = scan_folder(folder)
    assert summary.carves_val and summary.counts["train"] == {"circle": 7, "square": 12, "stripes": 12}
    assert summary.train_count(0.25) == 5 + 9 + 9  # round(1.75) = 2 and 3 of each class held out
    run = tmp_path / "run"
    args = ["fit", str(folder), "--epochs", "1", "--force", "--output", str(run), "--quiet", "model.overrides.depth=1"]
    result = CliRunner().invoke(app, [*args, "data.val_fraction=0.25", "data.val_seed=3"])
    assert result.exit_code == 0, result.output
    said = "validation: no val/ folder: 25 % of each class of train/ held out at random with seed 3"
    output = " ".join(result.output.split())  # the console wraps long lines
    assert said in output
    not_measured = "recipe: quickstart (rule not-measured: nothing was measured for this kind of folder: 3 classes"
    assert not_measured in output and "fit therefore trains the baseline quickstart" in output

    splits = json.loads((run / "data.json").read_text())["splits"]
    assert splits["val"]["name"] == "train[val 0.25]" and splits["val"]["per_class"] == [2, 3, 3]
    assert splits["train"]["per_class"] == [5, 9, 9] and splits["test"]["per_class"] == [1, 2, 2]
    config = read_run_config(run)
    whole = load_dataset("imagefolder", "train", root=folder, image_size=config.data.image_size, decode="draft")
    _, held_out = split_validation(whole.labels, 0.25, seed=3)
    assert splits["val"]["sha256"] == content_digest(whole.images[held_out], whole.labels[held_out])

    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    tests = [record for record in records if record["kind"] == "test"]
    assert len(tests) == 1 and tests[0] is records[-1]  # the test split: evaluated once, at the end
    assert not any(key.startswith("test/") for record in records[:-1] for key in record)
    fitted = json.loads((run / "fit.json").read_text())
    assert fitted["validation"].startswith("no val/ folder: 25 %")
    assert (fitted["recipe"]["recipe"], fitted["recipe"]["rule"], fitted["recipe"]["max_image_size"]) == (
        "quickstart",
        "not-measured",
        224,
    )
    assert read_run_config(run).model.preset == load_recipe("quickstart").stages[0].model.preset
    report = (run / "report.md").read_text()
    assert "| recipe | `quickstart` | `not-measured` | nothing was measured for this kind of folder: " in report
    assert "Nothing was measured for this kind of folder: 3 classes (measured: 10)" in report
    assert "| class | train | test | trained | val, held out of train/ |" in report
    assert "| circle | 7 | 1 | 5 | 2 |" in report and "| stripes | 12 | 2 | 9 | 3 |" in report
    assert f"| validation | {said.removeprefix('validation: ')}" in report
    summary = json.loads((run / "summary.json").read_text())
    exported_test = 100 * summary["best"]["test"]["test/supervised/acc1"]
    assert f"test top-1 of the exported checkpoint **{exported_test:.2f} %**" in report
    test_classes = json.loads((run / "fit.json").read_text())["test_classes"]
    assert test_classes["images"] == [1, 2, 2]  # the exported checkpoint on the test split, per class
    right = sum(accuracy * images for accuracy, images in zip(test_classes["per_class"].values(), [1, 2, 2]))
    assert right / 5 == pytest.approx(summary["best"]["test"]["test/supervised/acc1"])
    balanced = sum(test_classes["per_class"].values()) / 3
    assert f"balanced accuracy (mean per-class recall) **{100 * balanced:.2f} %**" in report
    assert (run / "export" / "README.md").is_file()  # the model card


def test_a_train_folder_too_small_to_hold_out_validation_is_one_clear_line(tmp_path):
    folder = _split_folder(tmp_path / "images", train_per_class=1, test_per_class=1)
    args = ["fit", str(folder), "--epochs", "1", "--force", "--output", str(tmp_path / "run")]
    result = CliRunner().invoke(app, args)
    message = str(result.exception)
    assert result.exit_code != 0 and "holds out no image of split 'train'" in message and "\n" not in message


def test_an_unreadable_file_stops_fit_unless_skipped(tmp_path):
    folder = make_image_folder(tmp_path / "images", per_class=2)
    result = CliRunner().invoke(app, ["fit", str(folder), "--epochs", "1", "--output", str(tmp_path / "run")])
    assert result.exit_code != 0
    message = str(result.exception)
    assert "broken.jpg" in message and "--on-bad-file skip" in message and "\n" not in message


def test_an_unknown_recipe_is_one_line_listing_the_shipped_recipes_before_any_work(tmp_path):
    folder, run = make_image_folder(tmp_path / "images", per_class=2, broken=False), tmp_path / "run"
    result = CliRunner().invoke(app, ["fit", str(folder), "--recipe", "small_data", "--output", str(run)])
    message = str(result.exception)
    assert result.exit_code != 0 and "\n" not in message and result.output == ""  # not even the folder scanned
    assert message == f"--recipe 'small_data' is not a shipped recipe: choose one of {', '.join(available_recipes())}"
    assert not run.exists()


def test_too_few_epochs_are_refused_in_one_line_before_any_work(tmp_path):
    folder, run = make_image_folder(tmp_path / "images", per_class=8, broken=False), tmp_path / "run"
    result = CliRunner().invoke(app, ["fit", str(folder), "--epochs", "3", "--output", str(run)])
    message = str(result.exception)  # 21 training images, batch 16: 1 step an epoch
    assert result.exit_code != 0 and "\n" not in message
    assert message.startswith("--epochs 3 is 3 optimizer steps (1 an epoch): too little to learn from")
    assert message.endswith("give --epochs 200 or more, or --force to train anyway")
    assert not run.exists() and not (tmp_path / "cache").exists()  # nothing made, nothing decoded


def test_a_budget_too_short_is_refused_in_one_line_after_measuring_and_leaves_no_folder(tmp_path, monkeypatch):
    speed = Speed(step_s=1.0, steps_per_epoch=1, eval_s=0.1, test_s=0, checkpoint_s=0.1, setup_s=0.5, pictures_s=1)
    monkeypatch.setattr(orchestration, "measure_speed", lambda *args, **kwargs: speed)  # 1 s a step, measured
    folder, run = make_image_folder(tmp_path / "images", per_class=8, broken=False), tmp_path / "run"
    args = ["fit", str(folder), "--budget", "60s", "--output", str(run), "model.overrides.depth=1"]
    result = CliRunner().invoke(app, args)
    message = str(result.exception)
    assert result.exit_code != 0 and "\n" not in message, result.output
    assert message.startswith("--budget 60s trains about ") and " optimizer steps at the measured speed" in message
    assert message.endswith("or more, or --force to train anyway") and not run.exists()


# ---------------------------------------------------------------- end to end


def test_a_fit_slower_than_measured_still_ends_within_its_budget(tmp_path, monkeypatch):
    measure_speed = orchestration.measure_speed

    def measured_before_the_machine_slowed_down(*args, **kwargs):  # steps then run 10x slower than measured
        speed = measure_speed(*args, **kwargs)
        return replace(speed, step_s=speed.step_s / 10)

    monkeypatch.setattr(orchestration, "measure_speed", measured_before_the_machine_slowed_down)
    folder, run, budget = make_image_folder(tmp_path / "images", per_class=8, broken=False), tmp_path / "run", 8
    args = ["fit", str(folder), "--budget", f"{budget}s", "--force", "--output", str(run), "--quiet"]
    result = CliRunner().invoke(app, [*args, "model.overrides.depth=1", "train.batch_size=4"])  # 5 steps an epoch
    assert result.exit_code == 0, result.output

    fitted, summary = (json.loads((run / name).read_text()) for name in ("fit.json", "summary.json"))
    assert read_run_config(run).train.time_budget_s == pytest.approx(fitted["plan"]["train_s"])
    assert fitted["time_budget"]["spent"] and fitted["time_budget"]["budget_s"] == fitted["plan"]["train_s"]
    assert summary["epochs"] == fitted["epochs"] > summary["epochs_run"] == fitted["epochs_run"] > 0
    assert summary["steps"] == fitted["steps_run"] > 0
    assert (run / "checkpoints" / "last.safetensors").is_file() and (run / "export" / "model.safetensors").is_file()
    # the loop ends after the step that reaches its time, a validation pass and a checkpoint; the seconds are the
    # summary's (fit's own clock excludes decoding), + 3 s for this test's tiny budget on a loaded machine
    assert summary["training_s"] == fitted["seconds"]["training_loop"] <= fitted["plan"]["train_s"] + 3
    assert fitted["seconds"]["after_decoding"] <= 1.2 * budget + 3
    report = (run / "report.md").read_text()
    assert (
        f"- {summary['steps']} optimizer steps of 4 images, equal to {summary['epochs_run']:.3g} epochs of 5" in report
    )
    assert f"- the {budget} s budget: {fitted['plan']['train_s']:.0f} s for the training loop" in report


def test_fit_of_small_images_trains_the_conv_tokenizer_and_its_export_predicts(tmp_path):
    folder = make_image_folder(tmp_path / "images", per_class=10, broken=False, sizes=((32, 32), (36, 40)))
    run = tmp_path / "run"
    args = ["fit", str(folder), "--epochs", "1", "--force", "--output", str(run), "--quiet", "--recipe", "small-data"]
    result = CliRunner().invoke(app, [*args, "model.overrides.depth=1"])
    assert result.exit_code == 0, result.output
    output = " ".join(result.output.split())  # the console wraps long lines
    assert "recipe: small-data (rule given: given with --recipe)" in output
    assert "--force: training anyway (--epochs 1 is" in output
    fitted = json.loads((run / "fit.json").read_text())
    assert (fitted["recipe"]["recipe"], fitted["recipe"]["overrides"]) == ("small-data", [])
    assert (fitted["recipe"]["rule"], fitted["recipe"]["max_image_size"]) == ("given", 112)
    assert fitted["geometry"]["patch_size"] == 4 and fitted["forced"]
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert (config["model"]["preset"], config["model"]["pos_embed"]) == ("vit_lite_conv", False)
    assert (config["train"]["batch_size"], config["optim"]["lr"]) == (16, pytest.approx(1e-3 * 16 / 128))
    assert "| recipe | `small-data` | `given` |" in (run / "report.md").read_text()
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
    args += ["--recipe", "small-data", "--force", "model.overrides.depth=1"]  # 2 steps an epoch: too few
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "geometry: 64 px, patch 8" in result.output  # median shorter side 60 px
    assert "recipe: small-data (rule given: given with --recipe)" in result.output

    fitted = json.loads((run / "fit.json").read_text())
    assert fitted["geometry"]["image_size"] == 64 and fitted["recipe"]["recipe"] == "small-data"
    assert fitted["recipe"]["rule"] == "given" and fitted["batch"]["batch_size"] == 16
    assert fitted["plan"]["planned_s"] <= budget and fitted["speed"]["timed_steps"] >= 5
    assert sum(fitted["plan"]["fit_parts"].values()) + fitted["plan"]["train_s"] == pytest.approx(budget, abs=0.1)
    # the budget is used, and kept to within B + 20 %, unless other work on this shared machine slowed the epochs
    # down after they were measured
    slowdown = max(1.0, fitted["epoch_s"]["slowdown"])
    assert 0.5 * budget <= fitted["seconds"]["after_decoding"] <= 1.2 * budget * slowdown, fitted["seconds"]
    assert fitted["steps_run"] >= 1 and fitted["speed"]["step_s"] > 0
    assert (run / "export" / "model.safetensors").is_file()
    exported = json.loads((run / "export" / "config.json").read_text())
    assert exported["classes"] == CLASSES and exported["smallvit_preprocess"]["image_size"] == 64

    report = (run / "report.md").read_text()
    for section in ("## Data", "## Choices", "## Training", "## Results", "## Use the model"):
        assert section in report, section
    recipe = "| recipe | `small-data` |"
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
