"""The model card ``README.md`` of an export folder: the data, classes, recipe and its changed settings, the run's
accuracies, balanced and per-class accuracy on an unbalanced test split, and load snippets that run."""

import ast
import functools
import json
import os
import re

import pytest
import torch
from typer.testing import CliRunner

from smallvit.cli import app
from smallvit.config import load_recipe
from smallvit.engine.pictures import class_summary, predict_split
from smallvit.export import card
from smallvit.export.card import class_accuracy, recipe_changes, timm_snippet, write_model_card
from smallvit.models import build_backbone, create_timm_model, export_timm
from smallvit.runs import load_run
from test_fit import CLASSES, make_image_folder

pytestmark = pytest.mark.usefixtures("isolated_data")


def python_blocks(card: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", card, flags=re.S)


@pytest.fixture(scope="module")
def unbalanced_run(tmp_path_factory):
    """One epoch of a one-block quickstart on ``train/`` (validation held out of it) and a ``test/`` split whose
    circle class has 2 images and the others 4."""
    root = tmp_path_factory.mktemp("card")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SMALLVIT_CACHE", str(root / "cache"))
        folder = root / "images"
        make_image_folder(folder / "train", per_class=8, broken=False)
        make_image_folder(folder / "test", per_class=4, seed=1, broken=False)
        for path in sorted((folder / "test" / "circle").iterdir())[:2]:
            path.unlink()
        args = ["train", "quickstart", "data.dataset=imagefolder", f"data.root={folder}", "data.test_split=test"]
        args += [
            "data.val_split=none",
            "data.image_size=32",
            "model.patch_size=4",
            "model.overrides.depth=1",
            "epochs=1",
        ]
        result = CliRunner().invoke(app, [*args, "--runs-dir", str(root / "runs"), "--name", "run", "--quiet"])
        assert result.exit_code == 0, result.output
        yield root / "runs" / "run", root / "cache"


def test_the_card_has_the_data_recipe_accuracies_and_per_class_test_accuracy(unbalanced_run, tmp_path, monkeypatch):
    run, cache = unbalanced_run
    monkeypatch.setenv("SMALLVIT_CACHE", str(cache))
    out = tmp_path / "export"
    result = CliRunner().invoke(app, ["export", str(run), "--output", str(out)])
    assert result.exit_code == 0, result.output
    card = (out / "README.md").read_text()
    assert f"Classes (3): {', '.join(CLASSES)}." in card
    data = json.loads((run / "data.json").read_text())["splits"]
    assert f"| test | test | {data['test']['images']} |" in card and data["test"]["per_class"] == [2, 4, 4]
    assert f"| training | train | {data['train']['images']} |" in card
    assert "Recipe: `quickstart`." in card
    assert "`model.overrides.depth=1`" in card and "`data.test_split=test`" in card

    best = json.loads((run / "summary.json").read_text())["best"]
    assert f"| validation | {100 * best['value']:.2f} % |" in card
    assert f"| test | {100 * best['test']['test/supervised/acc1']:.2f} % |" in card
    experiment = load_run(run)  # what the card's per-class numbers must be: the best checkpoint on test
    expected = class_summary(
        predict_split(experiment, experiment.model, experiment.test), experiment.test.labels, CLASSES
    )
    balanced = sum(expected["per_class"].values()) / 3
    assert f"| test, balanced (mean of the per-class top-1) | {100 * balanced:.2f} % |" in card
    for name, count in zip(CLASSES, [2, 4, 4]):
        assert f"| {name} | " in card
        assert re.search(rf"\| {name} \| \d+ \| {count} \| {100 * expected['per_class'][name]:.2f} % \|", card)
    assert "Trained from scratch on" in card and "not calibrated" in card and "32 × 32 px" in card

    for code in python_blocks(card):
        ast.parse(code)
    monkeypatch.chdir(tmp_path)  # the snippets run from the folder above the export
    scope = {}
    exec(python_blocks(card)[0], scope)
    images = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(scope["model"](images), create_timm_model(out).eval()(images))


def test_a_backbone_without_classifier_gets_a_card_without_accuracies(unbalanced_run, tmp_path, monkeypatch):
    run, cache = unbalanced_run
    monkeypatch.setenv("SMALLVIT_CACHE", str(cache))
    folder = tmp_path / "backbone"
    export_timm(load_run(run).model.backbone, folder)  # what a pre-training stage exports
    card = write_model_card(folder, run).read_text()
    assert card.startswith("# vit_lite backbone (no classifier") and "## Results" not in card
    assert "only its" not in card and "Trained from scratch on 21 images" in card


@pytest.mark.parametrize("preset", ["vit_lite", "vit_lite_conv", "resnet18_cifar"])
def test_the_timm_snippet_loads_the_export(tmp_path, monkeypatch, preset):
    depth = {} if preset == "resnet18_cifar" else {"depth": 1}
    backbone = build_backbone(preset, img_size=32, patch_size=4, **depth)
    head = {"head.weight": torch.randn(2, backbone.model.num_features), "head.bias": torch.randn(2)}
    folder = tmp_path / "exported"
    export_timm(backbone, folder, head=head)
    code = timm_snippet(folder, json.loads((folder / "config.json").read_text()))
    monkeypatch.chdir(tmp_path)
    scope = {}
    exec(code, scope)
    images = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(scope["model"].eval()(images), create_timm_model(folder).eval()(images))


def test_recipe_changes_are_the_settings_that_differ_from_the_recipe():
    (config,) = load_recipe("quickstart", ["train.epochs=3", "model.overrides.depth=1"]).stages
    assert recipe_changes(config) == ["model.overrides.depth=1", "train.epochs=3"]
    assert recipe_changes(load_recipe("quickstart").stages[0]) == []


def test_per_class_accuracy_comes_from_the_runs_analysis_when_it_read_the_same_split_and_weights(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "best.safetensors").write_bytes(b"")
    analysis = {"split": "val", "weights": "best checkpoint (epoch 3)", "per_class": {"a": 0.5, "b": 1.0}}
    analysis["confusion"] = [[1, 1], [0, 3]]
    (tmp_path / "analysis.json").write_text(json.dumps(analysis))
    assert class_accuracy(tmp_path, "best", "val") == ({"a": 0.5, "b": 1.0}, [2, 3])


def test_the_accuracy_per_class_is_evaluated_once_for_the_same_checkpoint(monkeypatch, tmp_path):
    """The model card and fit's report both ask for it: one pass over the split, again only for a new checkpoint."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    weights = run / "checkpoints" / "best.safetensors"
    weights.write_bytes(b"0")
    calls = []

    def evaluated(run_dir, checkpoint, used, split, stamp):
        calls.append(stamp)
        return {"a": 1.0}, [3]

    monkeypatch.setattr(card, "_class_accuracy", functools.lru_cache(maxsize=4)(evaluated))
    first = card.class_accuracy(run, "best", "test")
    first[0]["a"] = 0.0  # a caller's change does not reach the kept result
    assert card.class_accuracy(run, "best", "test") == ({"a": 1.0}, [3]) and len(calls) == 1
    os.utime(weights, ns=(0, weights.stat().st_mtime_ns + 10**9))  # a new version of the checkpoint
    card.class_accuracy(run, "best", "test")
    assert len(calls) == 2
