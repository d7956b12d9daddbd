"""A finished run folder: the feature cache, and kNN / linear probes of a run through the command line."""

import json
import math

import pytest
import torch
from typer.testing import CliRunner

from smallvit.cli import app
from smallvit.data.pipeline import eval_augmentation
from smallvit.errors import SmallViTError
from smallvit.metrics import extract_features, linear_probe_accuracy
from smallvit.models import build_backbone
from smallvit.runs import cached_features, check_finite, evaluate_run, evaluation_report, load_run, run_features

TINY_IDMM = [
    "epochs=1",
    "data.subset.per_class=4",
    "data.eval_subset.per_class=5",
    "model.overrides.depth=1",
    "train.batch_size=20",
    "train.precision=fp32",
    "train.knn_every=1",
    "train.eval_every=1",
]


pytestmark = pytest.mark.usefixtures("isolated_data")


def test_feature_cache_is_reused_only_for_the_same_weights_images_and_transform(tmp_path):
    torch.manual_seed(0)
    backbone = build_backbone("vit_lite", img_size=8, patch_size=4, depth=1)
    images = torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8)
    augment = eval_augmentation(8, (0.5,) * 3, (0.25,) * 3)
    path = tmp_path / "features.safetensors"
    first, cached = cached_features(path, backbone, images, augment)
    assert not cached and first.shape == (6, 192)
    again, cached = cached_features(path, backbone, images, augment)
    assert cached and torch.equal(again, first)
    assert not cached_features(path, backbone, images.flip(0), augment)[1]
    assert not cached_features(path, backbone, images, eval_augmentation(8, (0.4,) * 3, (0.25,) * 3))[1]
    with torch.no_grad():
        backbone.model.blocks[0].mlp.fc1.bias.add_(1.0)
    changed, cached = cached_features(path, backbone, images, augment)
    assert not cached and not torch.allclose(changed, first)


def test_eval_knn_of_a_pretraining_run_matches_its_online_knn(tmp_path):
    runs = tmp_path / "runs"
    args = ["train", "idmm-pretrain", *TINY_IDMM, "--runs-dir", str(runs), "--name", "pre", "--quiet"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    run = runs / "pre"
    online = json.loads((run / "summary.json").read_text())["final"]["val/knn/acc1"]  # online kNN runs on val

    result = CliRunner().invoke(app, ["eval", "knn", str(run), "--checkpoint", "last", "--split", "val"])
    assert result.exit_code == 0, result.output
    assert f"knn/acc1 (val, k=20, T=0.07): {online:.4f}" in result.output
    record = json.loads((run / "evaluations.jsonl").read_text().splitlines()[-1])
    assert record["kind"] == "knn" and record["acc1"] == pytest.approx(online)

    result = CliRunner().invoke(app, ["eval", "knn", str(run), "--checkpoint", "last"])  # test, the default
    assert result.exit_code == 0 and "knn/acc1 (test, k=20, T=0.07)" in result.output, result.output
    features = run_features(run, "last")
    assert features.from_cache
    assert features.train.shape == (40, 192) and features.query.shape == (50, 192)


def test_eval_linear_of_a_run(tmp_path):
    runs = tmp_path / "runs"
    fast = ["epochs=1", "data.subset.per_class=6", "data.eval_subset.per_class=4", "model.overrides.depth=1"]
    args = ["train", "quickstart", *fast, "train.precision=fp32", "--runs-dir", str(runs), "--name", "sup", "--quiet"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    run = runs / "sup"

    result = CliRunner().invoke(app, ["eval", "linear", str(run), "--weight-decay", "0.01"])
    assert result.exit_code == 0, result.output
    record = json.loads((run / "evaluations.jsonl").read_text().splitlines()[-1])
    assert (record["kind"], record["split"], record["checkpoint"], record["weight_decay"]) == (
        "linear",
        "test",
        "best",
        0.01,
    )
    assert f"linear/acc1 (test, weight decay 0.01): {record['acc1']:.4f}" in result.output
    assert sorted(p.name for p in (run / "features").iterdir()) == ["best-test.safetensors", "best-train.safetensors"]

    # the cached features are the checkpoint's, and the probe on them gives the recorded accuracy
    features = run_features(run)
    experiment = load_run(run)
    fresh = extract_features(experiment.model.backbone, experiment.test.images, experiment.eval_augment)
    assert features.from_cache and torch.equal(features.query, fresh)
    train, labels, query, query_labels = features.train, features.train_labels, features.query, features.query_labels
    assert linear_probe_accuracy(train, labels, query, query_labels, 10, weight_decay=0.01) == (record["acc1"], 0.01)

    # eval --json: the metrics of evaluate_run, with the per-class numbers of the same split
    report = evaluation_report(run, split="val")
    assert (report["split"], report["checkpoint"], report["metrics"]) == ("val", "best", evaluate_run(run, "val"))
    assert report["classes"] == experiment.classes and len(report["confusion_matrix"]) == 10
    assert report["images_per_class"] == [4] * 10 and len(report["per_class_accuracy"]) == 10


def test_non_finite_metrics_are_refused_naming_the_first():
    check_finite({"test/supervised/acc1": 0.5})
    with pytest.raises(SmallViTError, match="^test/supervised/loss is not finite: the checkpoint's weights are broken"):
        check_finite({"test/supervised/acc1": 0.5, "test/supervised/loss": math.inf, "test/x": math.nan})
