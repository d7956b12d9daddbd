"""Validation and test splits, checkpoint selection on validation only, and fine-tuning that keeps what
pre-training learned (layer-wise lr decay, zero-initialised new position embedding, linear-probe head)."""

import dataclasses
import json

import pytest
import torch

import smallvit.data.datasets as datasets
from smallvit.config import RunConfig, load_recipe, validate_run
from smallvit.engine.checkpoint import load_checkpoint
from smallvit.engine.experiment import build_experiment, load_splits
from smallvit.engine.trainer import build_optimizer, evaluate, init_head_from_probe, train
from smallvit.errors import ConfigError
from smallvit.metrics import extract_features, knn_accuracy, train_linear_probe
from smallvit.runs import knn_evaluate_run

TINY = ["data.subset.per_class=8", "data.eval_subset.per_class=4", "model.overrides.depth=2", "train.batch_size=40"]


pytestmark = pytest.mark.usefixtures("isolated_data")


def _stage(recipe="quickstart", *overrides) -> RunConfig:
    return load_recipe(recipe, [*TINY, "precision=fp32", *overrides]).stages[0]


def test_cifar10_sample_validates_on_its_own_val_split_and_reports_test():
    train_set, val_set, test_set, _ = load_splits(_stage("quickstart", "data.subset=null", "data.eval_subset=null"))
    assert (len(train_set), len(val_set), len(test_set)) == (2040, 500, 2000)
    assert (val_set.split, test_set.split) == ("val", "test")


def test_without_a_val_split_a_seeded_fraction_of_each_class_is_held_out(monkeypatch):
    info = dataclasses.replace(datasets.DATASETS["cifar10-sample"], val_split=None)
    monkeypatch.setitem(datasets.DATASETS, "cifar10-sample", info)
    stage = _stage("quickstart", "data.subset=null", "data.eval_subset=null", "data.val_fraction=0.25")
    train_set, val_set, _, _ = load_splits(stage)
    assert (len(train_set), len(val_set)) == (1530, 510)  # 204 per class: 51 held out, 153 kept
    assert torch.bincount(val_set.labels).tolist() == [51] * 10
    pixels = {bytes(image.numpy()) for image in train_set.images}
    assert not any(bytes(image.numpy()) in pixels for image in val_set.images)
    again, _, _, _ = load_splits(stage)
    assert torch.equal(again.images, train_set.images)
    other, _, _, _ = load_splits(stage.model_copy(update={"data": stage.data.model_copy(update={"val_seed": 1})}))
    assert not torch.equal(other.images, train_set.images)


def test_best_checkpoint_is_chosen_on_validation_never_on_test(monkeypatch):
    with pytest.raises(ConfigError, match="only reported: use val/supervised/acc1"):
        build_experiment(_stage("quickstart", "train.best_metric=test/supervised/acc1"))
    info = dataclasses.replace(datasets.DATASETS["cifar10-sample"], val_split=None)
    monkeypatch.setitem(datasets.DATASETS, "cifar10-sample", info)
    with pytest.raises(ConfigError, match="needs a validation split"):
        build_experiment(_stage("quickstart", "data.val_fraction=0"))


@pytest.mark.parametrize(
    "metric, direction", [("val/loss", "min"), ("val/supervised/loss", "min"), ("val/x/acc1", "max")]
)
def test_best_mode_follows_the_metric_unless_set(metric, direction):
    assert _stage("quickstart", f"train.best_metric={metric}").train.best_direction == direction
    assert _stage("quickstart", f"train.best_metric={metric}", "train.best_mode=max").train.best_direction == "max"


def test_a_run_folder_from_before_validation_splits_still_loads_as_it_trained():
    raw = _stage().to_dict()
    raw["data"].pop("val_split"), raw["data"].pop("test_split"), raw["data"].pop("val_fraction")
    raw["data"]["eval_split"] = "test"
    legacy = validate_run(raw, "old run")
    assert (legacy.data.test_split, legacy.data.val_fraction, legacy.train.best_metric) == ("test", 0.0, None)


def test_layer_decay_scales_each_block_and_leaves_the_heads_at_full_lr():
    exp = build_experiment(_stage("quickstart", "optim.layer_decay=0.5"))
    optimizer = build_optimizer(exp.model, exp.config)
    scale_of = {id(p): g["lr_scale"] for g in optimizer.param_groups for p in g["params"]}
    vit = exp.model.backbone.model
    # as BEiT/MAE: heads 1, last block d, the block below d^2, the stem (patch embedding, tokens) d^3
    assert scale_of[id(vit.patch_embed.proj.weight)] == scale_of[id(vit.pos_embed)] == 0.5**3
    assert scale_of[id(vit.blocks[0].attn.qkv.weight)] == 0.5**2
    assert scale_of[id(vit.blocks[1].attn.qkv.weight)] == scale_of[id(vit.norm.weight)] == 0.5
    decay_of = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    assert decay_of[id(vit.pos_embed)] == decay_of[id(vit.cls_token)] == decay_of[id(vit.norm.weight)] == 0.0
    assert decay_of[id(vit.blocks[0].attn.qkv.weight)] == 0.05
    assert all(scale_of[id(p)] == 1.0 for p in exp.model.objectives.parameters())
    assert len(scale_of) == sum(1 for p in exp.model.parameters() if p.requires_grad)


def test_without_layer_decay_groups_split_only_weight_decay():
    exp = build_experiment(_stage())
    groups = build_optimizer(exp.model, exp.config).param_groups
    assert [g["weight_decay"] for g in groups] == [0.05, 0.0]
    assert all("lr_scale" not in g for g in groups)


def _pretrain(tmp_path, *overrides):
    stage = _stage("quickstart", "epochs=1", "train.best_metric=null", *overrides)
    run = tmp_path / "pre"
    train(stage, run, quiet=True)
    return run


@pytest.mark.parametrize("pos_embed", [False, True])
def test_fine_tuning_starts_from_exactly_the_pre_trained_features(tmp_path, pos_embed):
    """Before any update, the fine-tuning model's frozen features give the pre-training run's own kNN accuracy, also
    when fine-tuning adds a position embedding the pre-training did not have (it starts at zero)."""
    run = _pretrain(tmp_path, f"model.pos_embed={pos_embed}")
    pre_knn = knn_evaluate_run(run, split="val", checkpoint="last")["acc1"]
    exp = build_experiment(_stage("quickstart", f"model.init_from={run}", "model.pos_embed=true"))
    assert ("pos_embed" in exp.init_report.initialised) == (not pos_embed)
    backbone = exp.model.backbone
    train_features = extract_features(backbone, exp.train_images, exp.eval_augment)
    val_features = extract_features(backbone, exp.val.images, exp.eval_augment)
    assert knn_accuracy(train_features, exp.train_labels, val_features, exp.val.labels, 10) == pre_knn


def test_linear_probe_head_starts_fine_tuning_at_the_probes_accuracy(tmp_path):
    run = _pretrain(tmp_path, "model.pos_embed=false")
    exp = build_experiment(_stage("quickstart", f"model.init_from={run}", "model.head_init=linear_probe"))
    init_head_from_probe(exp)
    backbone = exp.model.backbone
    train_features = extract_features(backbone, exp.train_images, exp.eval_augment)
    probe = train_linear_probe(train_features, exp.train_labels, 10)
    probe_accuracy = probe.accuracy(extract_features(backbone, exp.val.images, exp.eval_augment), exp.val.labels)
    assert evaluate(exp, exp.model)["val/supervised/acc1"] == pytest.approx(probe_accuracy, abs=1e-6)


def test_folded_probe_gives_the_probes_logits_on_raw_features():
    features = torch.randn(60, 5) * 3 + 2
    labels = torch.arange(60) % 3
    probe = train_linear_probe(features, labels, 3, weight_decay=1e-3)
    weight, bias = probe.folded()
    torch.testing.assert_close(features @ weight.T + bias, probe.logits(features).float(), rtol=1e-4, atol=1e-4)


def test_lp_ft_counts_the_probe_itself_as_the_first_best_checkpoint_candidate(tmp_path):
    """Fine-tuning from a linear-probe head never ends, in its validation-chosen checkpoint, below the probe."""
    run = _pretrain(tmp_path, "model.pos_embed=false")
    stage = _stage("quickstart", f"model.init_from={run}", "model.head_init=linear_probe", "epochs=2", "lr=0.03")
    summary = train(stage, tmp_path / "ft", quiet=True)
    records = [json.loads(line) for line in (tmp_path / "ft" / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if r["kind"] == "eval"]
    assert evals[0]["epoch"] == 0 and evals[0]["step"] == 0
    probe = evals[0]["val/supervised/acc1"]
    assert summary["best"]["value"] == max(r["val/supervised/acc1"] for r in evals) >= probe
    assert summary["best"]["epoch"] == 0  # lr 0.03 wrecks the features: the best checkpoint is the probe's own model
    exp = build_experiment(_stage("quickstart", f"model.init_from={tmp_path / 'ft'}"))
    exp.model.load_state_dict(load_checkpoint(tmp_path / "ft" / "checkpoints" / "best.safetensors", "model.")[0])
    assert evaluate(exp, exp.model)["val/supervised/acc1"] == pytest.approx(probe)
