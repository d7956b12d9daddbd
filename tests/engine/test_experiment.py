"""Building a stage from its configuration: geometry, splits, subsets, checks, and rebuilding a run's model."""

import dataclasses

import pytest
import torch

import smallvit.data.datasets as datasets
from smallvit.config import RunConfig, load_recipe
from smallvit.data import load_dataset, stratified_subset
from smallvit.data.pipeline import ViewSpec
from smallvit.engine.checkpoint import load_checkpoint
from smallvit.engine.experiment import (
    _check_best_metric,
    build_experiment,
    content_digest,
    geometry,
    read_run_config,
    resolve_device,
)
from smallvit.engine.trainer import evaluate, train
from smallvit.errors import ConfigError, SmallViTError

TINY = [
    "data.subset.per_class=4",
    "data.eval_subset.per_class=2",
    "model.overrides.depth=1",
    "epochs=1",
    "train.batch_size=20",
    "precision=fp32",
]
CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


pytestmark = pytest.mark.usefixtures("isolated_data")


def _stage(*overrides, recipe="quickstart") -> RunConfig:
    return load_recipe(recipe, [*TINY, *overrides]).stages[0]


def _without_dataset_val_split(monkeypatch):
    info = dataclasses.replace(datasets.DATASETS["cifar10-sample"], val_split=None)
    monkeypatch.setitem(datasets.DATASETS, "cifar10-sample", info)


# ---------------------------------------------------------------- geometry and defaults


def test_geometry_takes_the_datasets_defaults_unless_overridden():
    assert geometry(RunConfig()) == (32, 32, 4)  # cifar10-sample: 32 px, patch 4
    assert geometry(RunConfig(data={"dataset": "imagenette-2040"})) == (112, 112, 16)
    assert geometry(RunConfig(data={"dataset": "tiny-imagenet", "image_size": 32})) == (32, 32, 8)
    assert geometry(RunConfig(data={"image_size": 16}, model={"img_size": 24, "patch_size": 2})) == (16, 24, 2)


def test_a_tiny_quickstart_builds_the_backbone_objectives_and_data_it_asks_for():
    exp = build_experiment(_stage())
    backbone = exp.model.backbone
    assert (backbone.embed_dim, backbone.grid, backbone.has_cls_token, len(backbone.model.blocks)) == (
        192,
        (8, 8),
        True,
        1,
    )
    assert exp.classes == CIFAR10
    assert (exp.train_images.shape, exp.train_images.dtype) == ((40, 3, 32, 32), torch.uint8)
    assert torch.bincount(exp.train_labels).tolist() == [4] * 10
    assert (len(exp.val.labels), len(exp.test.labels)) == (20, 20)
    head = exp.model.classifier_state()
    assert tuple(head["head.weight"].shape) == (10, 192)
    augmented = exp.augment(exp.train_images[:3], exp.train_labels[:3], torch.arange(3), torch.Generator(), 0)
    assert list(augmented.views) == ["main"] and augmented.main.images.shape == (3, 3, 32, 32)


def test_a_view_the_backbone_cannot_take_fails_when_the_experiment_is_built():
    stage = _stage()
    stage = stage.model_copy(update={"augment": {"main": ViewSpec(ops=[{"op": "center_crop", "size": 24}])}})
    with pytest.raises(ConfigError, match="augment.main makes 24x24 images but the backbone takes 32x32"):
        build_experiment(stage)


def test_resolve_device_names_what_is_wrong():
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ConfigError, match="train.device=tpu is not a device"):
        resolve_device("tpu")


# ---------------------------------------------------------------- splits and subsets


def test_validation_and_test_come_from_the_datasets_own_splits_and_are_recorded():
    exp = build_experiment(_stage())
    assert {role: split["name"] for role, split in exp.splits.items()} == {
        "train": "train",
        "val": "val",
        "test": "test",
    }
    assert exp.splits["val"]["sha256"] == content_digest(exp.val.images, exp.val.labels)
    assert exp.splits["train"]["per_class"] == [4] * 10 and exp.splits["test"]["per_class"] == [2] * 10
    val_set = load_dataset("cifar10-sample", "val")
    expected = stratified_subset(val_set.labels, per_class=2)
    assert torch.equal(exp.val.images, val_set.images[expected])


def test_val_split_names_another_split_and_test_split_none_drops_the_test_set():
    exp = build_experiment(_stage("data.val_split=test", "data.test_split=none"))
    assert exp.splits["val"]["name"] == "test" and "test" not in exp.splits and exp.test is None
    with pytest.raises(SmallViTError, match="this run has no test split: set data.test_split$"):
        exp.eval_set("test")


def test_without_a_val_split_val_fraction_is_carved_out_before_the_subset_is_taken(monkeypatch):
    _without_dataset_val_split(monkeypatch)
    exp = build_experiment(_stage("data.val_fraction=0.25"))
    assert exp.splits["val"]["name"] == "train[val 0.25]" and exp.splits["val"]["per_class"] == [2] * 10
    whole_train_split = {bytes(image.numpy()) for image in load_dataset("cifar10-sample", "train").images}
    val = {bytes(image.numpy()) for image in exp.val.images}
    assert len(val) == 20 and val <= whole_train_split
    assert not any(bytes(image.numpy()) in val for image in exp.train_images)


def test_without_any_validation_there_is_no_val_set_and_the_error_says_how_to_get_one(monkeypatch):
    _without_dataset_val_split(monkeypatch)
    exp = build_experiment(_stage("data.val_fraction=0", "train.best_metric=null"))
    assert exp.val is None and "val" not in exp.splits
    with pytest.raises(SmallViTError, match="no val split: set data.val_split or data.val_fraction"):
        exp.eval_set("val")


def test_the_training_subset_is_the_stratified_subset_of_the_training_split_and_its_indices_are_kept():
    exp = build_experiment(_stage("data.subset.seed=3"))
    train_set = load_dataset("cifar10-sample", "train")
    expected = stratified_subset(train_set.labels, per_class=4, seed=3)
    assert torch.equal(exp.subset_indices, expected)
    assert torch.equal(exp.train_images, train_set.images[expected])
    assert torch.equal(exp.train_labels, train_set.labels[expected])
    other = build_experiment(_stage("data.subset.seed=4")).subset_indices
    assert not torch.equal(other, expected)


# ---------------------------------------------------------------- checks


@pytest.mark.parametrize(
    "metric, overrides, message",
    [
        ("test/supervised/acc1", [], "only reported: use val/supervised/acc1"),
        ("val/nothing/acc1", [], "names no metric this run produces"),
        ("val/supervised", [], "names no metric this run produces"),
        ("loss", [], "names no metric this run produces"),
        ("val/knn/acc1", [], "needs online kNN: set train.knn_every"),
        ("val/ema/supervised/acc1", [], "needs an EMA of the weights: set train.ema_decay"),
        ("val/ema/nothing/acc1", ["train.ema_decay=0.99"], "names no metric this run produces"),
        ("val/ema/knn/acc1", ["train.ema_decay=0.99", "train.knn_every=1"], "names no metric this run produces"),
    ],
)
def test_best_metric_that_no_evaluation_produces_is_refused(metric, overrides, message):
    with pytest.raises(ConfigError, match=message):
        _check_best_metric(_stage(f"train.best_metric={metric}", *overrides), has_val=True)


@pytest.mark.parametrize(
    "metric, overrides",
    [
        ("null", []),
        ("val/loss", []),
        ("val/supervised/acc1", []),
        ("val/supervised/loss", []),
        ("val/knn/acc1", ["train.knn_every=1"]),
        ("val/ema/loss", ["train.ema_decay=0.99"]),
        ("val/ema/supervised/acc1", ["train.ema_decay=0.99"]),
    ],
)
def test_best_metric_that_an_evaluation_produces_is_accepted(metric, overrides):
    assert _check_best_metric(_stage(f"train.best_metric={metric}", *overrides), has_val=True) is None


def test_best_metric_needs_a_validation_split():
    with pytest.raises(ConfigError, match="needs a validation split, and this run has none: set data.val_fraction"):
        _check_best_metric(_stage(), has_val=False)
    assert _check_best_metric(_stage("train.best_metric=null"), has_val=False) is None


# ---------------------------------------------------------------- a run folder rebuilds its model


def test_the_config_yaml_of_a_run_folder_rebuilds_the_identical_model(tmp_path):
    geometry_overrides = ["data.image_size=16", "model.patch_size=2", "model.cls_token=false", "model.pos_embed=false"]
    stage = _stage(*geometry_overrides, "model.drop_path=0.2", "train.best_metric=null")
    run = tmp_path / "run"
    summary = train(stage, run, quiet=True)

    config = read_run_config(run)
    assert config == stage
    torch.manual_seed(123)  # a different initialisation: only the architecture must match
    exp = build_experiment(config, load_init=False)
    trained, _ = load_checkpoint(run / "checkpoints" / "last.safetensors", prefix="model.")
    rebuilt = exp.model.state_dict()
    assert {k: tuple(v.shape) for k, v in rebuilt.items()} == {k: tuple(v.shape) for k, v in trained.items()}
    exp.model.load_state_dict(trained, strict=True)
    assert (exp.model.backbone.grid, exp.model.backbone.has_cls_token) == ((8, 8), False)
    assert sum(p.numel() for p in exp.model.backbone.parameters()) == summary["parameters"]
    assert evaluate(exp, exp.model, "val") == {k: v for k, v in summary["final"].items() if k.startswith("val/")}
