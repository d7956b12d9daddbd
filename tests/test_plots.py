"""The pictures of a run and the numbers behind them: confusion matrix, per-class accuracy, worst images, attention
distance, position-embedding similarity — the math pinned on cases a reader can check by hand, then every picture
drawn from a real (untrained) model and checked to be a valid, non-empty PNG."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from smallvit.config import load_recipe
from smallvit.engine.experiment import build_experiment
from smallvit.engine.pictures import (
    class_summary,
    draw_attention_distance,
    draw_confusion_matrix,
    draw_image_grid,
    draw_position_predictions,
    draw_position_similarity,
    draw_run_pictures,
)
from smallvit.metrics.classification import confusion_matrix, per_class_accuracy, worst_classified
from smallvit.metrics.spatial import cosine_similarity_matrix, mean_attention_distance, position_accuracy
from smallvit.models import build_backbone
from smallvit.models.inspection import attention_weights, patch_position_embedding
from test_fit import assert_picture, make_image_folder

pytestmark = pytest.mark.usefixtures("isolated_data")


# ---------------------------------------------------------------- the numbers


def test_confusion_matrix_rows_are_true_classes_and_per_class_accuracy_reads_its_diagonal():
    predictions, labels = torch.tensor([0, 1, 1, 2, 0]), torch.tensor([0, 0, 1, 2, 2])
    confusion = confusion_matrix(predictions, labels, num_classes=4)
    assert confusion.tolist() == [[1, 1, 0, 0], [0, 1, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]]
    accuracy = per_class_accuracy(confusion)
    assert accuracy[:3].tolist() == [0.5, 1.0, 0.5] and torch.isnan(accuracy[3])  # class 3 has no images
    summary = class_summary(torch.eye(4)[predictions], labels, ["a", "b", "c", "d"])
    assert summary["accuracy"] == 0.6 and summary["per_class"] == {"a": 0.5, "b": 1.0, "c": 0.5, "d": None}


def test_worst_classified_are_the_mistakes_with_the_least_probability_on_the_truth():
    probabilities = torch.tensor([[0.9, 0.1], [0.3, 0.7], [0.6, 0.4], [0.2, 0.8]])
    labels = torch.tensor([0, 0, 1, 1])  # mistakes: image 1 (truth 0.3) and image 2 (truth 0.4)
    assert worst_classified(probabilities, labels, count=5).tolist() == [1, 2]
    assert worst_classified(probabilities, labels, count=1).tolist() == [1]


def test_mean_attention_distance_on_a_2x2_grid():
    # patch centres at (2, 2), (2, 6), (6, 2), (6, 6) for patch 4; with a CLS token in front
    attend_self = torch.zeros(1, 1, 5, 5)
    attend_self[0, 0, 1:, 1:] = torch.eye(4)
    assert mean_attention_distance(attend_self, (2, 2), 4, prefix=1).tolist() == [0.0]
    attend_right_neighbour = torch.zeros(1, 1, 4, 4)
    for query, key in ((0, 1), (1, 0), (2, 3), (3, 2)):
        attend_right_neighbour[0, 0, query, key] = 1.0
    assert mean_attention_distance(attend_right_neighbour, (2, 2), 4).tolist() == [4.0]
    uniform = torch.full((1, 2, 4, 4), 0.25)  # distances from any patch: 0, 4, 4, 4·√2
    expected = (0 + 4 + 4 + 4 * 2**0.5) / 4
    assert mean_attention_distance(uniform, (2, 2), 4) == pytest.approx(torch.tensor([expected, expected]))
    cls_heavy = torch.zeros(1, 1, 5, 5)
    cls_heavy[0, 0, 1:, 0] = 0.5  # half the weight on CLS is left out; the rest renormalised
    cls_heavy[0, 0, 1:, 1:] = 0.5 * torch.eye(4)
    assert mean_attention_distance(cls_heavy, (2, 2), 4, prefix=1).tolist() == [0.0]


def test_cosine_similarity_and_position_accuracy():
    similarity = cosine_similarity_matrix(torch.tensor([[1.0, 0.0], [0.0, 2.0], [-3.0, 0.0]]))
    assert similarity.tolist() == [[1.0, 0.0, -1.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 1.0]]
    logits = torch.eye(4)[None].repeat(2, 1, 1)  # both images place every token right ...
    logits[1, 0] = torch.tensor([0.0, 5.0, 0.0, 0.0])  # ... but token 0 of image 1, placed at 1
    assert position_accuracy(logits).tolist() == [1.0, 0.75]


def test_attention_weights_are_timms_own_softmax_attention():
    backbone = build_backbone("vit_lite", img_size=16, patch_size=4, depth=2).eval()
    images = torch.randn(2, 3, 16, 16)
    timm_maps = []
    for block in backbone.model.blocks:  # timm's unfused path keeps the softmax; read it back there
        block.attn.fused_attn = False
        block.attn.attn_drop.register_forward_hook(lambda module, args, output: timm_maps.append(output))
    with torch.no_grad():
        maps = attention_weights(backbone, images)
    assert len(maps) == 2 and maps[0].shape == (2, 12, 17, 17)
    for ours, theirs in zip(maps, timm_maps):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(ours.sum(-1), torch.ones(2, 12, 17))


def test_position_embedding_of_the_patches_only():
    backbone = build_backbone("vit_lite", img_size=16, patch_size=4, depth=1)
    embedding = patch_position_embedding(backbone)
    assert embedding.shape == (16, 192)
    assert torch.equal(embedding, backbone.model.pos_embed[0, 1:].detach())  # the CLS token's entry left out
    assert patch_position_embedding(build_backbone("vit_lite", img_size=16, patch_size=4, pos_embed=False)) is None


# ---------------------------------------------------------------- the pictures


def test_each_drawing_is_a_png_of_what_it_is_given(tmp_path):
    classes = [f"class {i}" for i in range(12)]
    confusion = torch.randint(0, 20, (12, 12))
    assert_picture(draw_confusion_matrix(confusion, classes, tmp_path / "c.png", "confusion"))
    images = torch.randint(0, 256, (5, 3, 24, 24), dtype=torch.uint8)
    gray = torch.randint(0, 256, (2, 1, 24, 24), dtype=torch.uint8)
    assert_picture(draw_image_grid(images, ["a\nb"] * 5, tmp_path / "g.png", "grid"))
    assert_picture(draw_image_grid(gray, ["a", "b"], tmp_path / "g1.png", "gray"))
    assert_picture(draw_image_grid(images[:0], [], tmp_path / "g0.png", "none", empty="nothing to show"))
    predicted = torch.arange(16).repeat(2, 1)
    predicted[1, :4] = 15
    assert_picture(draw_position_predictions(images[:2], predicted, (4, 4), tmp_path / "p.png", "positions"))
    similarity = cosine_similarity_matrix(torch.randn(16, 8))
    assert_picture(draw_position_similarity(similarity, (4, 4), tmp_path / "s.png", "similarity"))
    distances = torch.rand(9, 12) * 20
    assert_picture(draw_attention_distance(distances, tmp_path / "d.png", "distance", max_distance=45.0))


def test_a_runs_pictures_and_analysis_from_a_model(tmp_path):
    folder = make_image_folder(tmp_path / "images", per_class=12, broken=False)
    overrides = [
        "data.dataset=imagefolder",
        f"data.root={folder}",
        "data.image_size=32",
        "data.test_split=none",
        "model.overrides.depth=2",
    ]
    config = load_recipe("relvit-joint", overrides).stages[0]
    experiment = build_experiment(config)
    analysis = draw_run_pictures(experiment, experiment.model, tmp_path, checkpoint=None)
    assert analysis.split == "val" and analysis.images == 3 and analysis.classes == ["circle", "square", "stripes"]
    assert sum(map(sum, analysis.confusion)) == 3 and len(analysis.worst) <= 3
    assert set(analysis.position_accuracy) == {"abs_position"} and len(analysis.attention_distance) == 2
    assert all(0 < d < 32 * 2**0.5 for block in analysis.attention_distance for d in block)
    assert set(analysis.pictures.values()) == {
        "confusion_matrix.png",
        "worst_val_images.png",
        "position_predictions.png",
        "position_embedding_similarity.png",
        "attention_distance.png",
    }
    for name in analysis.pictures.values():
        assert_picture(tmp_path / name)
    assert json.loads((tmp_path / "analysis.json").read_text())["pictures"] == analysis.pictures
    with Image.open(tmp_path / "confusion_matrix.png") as image:
        assert np.asarray(image).shape[-1] in (3, 4)
