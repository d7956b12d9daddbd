import json
import math

import pytest
import torch
from typer.testing import CliRunner

from smallvit.cli import app
from smallvit.data.pipeline import eval_augmentation
from smallvit.eval.features import cached_features, run_features
from smallvit.eval.knn import knn_accuracy, knn_scores
from smallvit.models import build_backbone

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


@pytest.fixture(autouse=True)
def _isolated_data(tmp_path, monkeypatch):
    monkeypatch.setenv("SMALLVIT_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("SMALLVIT_CACHE", str(tmp_path / "cache"))


def test_separable_toy_features_are_classified_perfectly():
    gen = torch.Generator().manual_seed(0)
    centres = torch.eye(16)[:4] * 5  # 4 classes on orthogonal axes, noise far smaller than their distance
    train_labels, query_labels = torch.arange(200) % 4, torch.arange(100) % 4
    train = centres[train_labels] + 0.3 * torch.randn(200, 16, generator=gen)
    query = centres[query_labels] + 0.3 * torch.randn(100, 16, generator=gen)
    assert knn_accuracy(train, train_labels, query, query_labels, num_classes=4) == 1.0


def test_votes_are_exp_cosine_over_temperature_of_the_k_nearest():
    bank = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0], [-1.0, 0.0]])
    labels = torch.tensor([0, 1, 1, 0])
    query = torch.tensor([[3.0, 0.0]])  # cosines: 1, 0, 1/sqrt(2), -1
    scores = knn_scores(bank, labels, query, num_classes=2, k=2, temperature=0.5)
    expected = torch.tensor([[math.exp(1 / 0.5), math.exp(2**-0.5 / 0.5)]])
    assert torch.allclose(scores, expected)
    all_neighbours = knn_scores(bank, labels, query, num_classes=2, k=10, temperature=0.5)  # k clipped to the bank
    assert torch.allclose(all_neighbours[0, 0], torch.tensor(math.exp(2) + math.exp(-2)))


def test_bad_k_or_temperature_is_refused():
    with pytest.raises(ValueError, match="k >= 1"):
        knn_scores(torch.randn(3, 2), torch.zeros(3, dtype=torch.long), torch.randn(1, 2), 1, k=0)
    with pytest.raises(ValueError, match="temperature > 0"):
        knn_scores(torch.randn(3, 2), torch.zeros(3, dtype=torch.long), torch.randn(1, 2), 1, temperature=0)


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
