import torch
import torch.nn.functional as F

from smallvit.data.batch import Batch, Mix, View
from smallvit.models import build_backbone
from smallvit.objectives import ObjectiveSetup, StepContext, build_objective, parse_objective_config
from smallvit.objectives.supervised import topk_accuracy


def _setup(num_classes=4):
    backbone = build_backbone("vit_lite", img_size=8, patch_size=4, depth=1)
    setup = ObjectiveSetup(
        embed_dim=192, grid=(2, 2), patch_size=4, img_size=8, in_chans=3, num_classes=num_classes, num_train=5
    )
    return backbone, setup


def test_loss_is_label_smoothed_cross_entropy_of_the_head_on_pooled():
    torch.manual_seed(0)
    backbone, setup = _setup()
    objective = build_objective(parse_objective_config({"name": "supervised", "label_smoothing": 0.1}), setup)
    view = View(torch.randn(3, 3, 8, 8), torch.tensor([0, 3, 1]), torch.arange(3))
    out = objective(StepContext(Batch({"main": view}), backbone))
    logits = objective.head(backbone(view.images).pooled)
    assert torch.allclose(out.loss, F.cross_entropy(logits, view.labels, label_smoothing=0.1), atol=1e-6)
    assert out.metrics["acc1"] == topk_accuracy(logits, view.labels, 1)


def test_mixed_batches_use_both_targets_and_skip_accuracy():
    torch.manual_seed(0)
    backbone, setup = _setup()
    objective = build_objective(parse_objective_config({"name": "supervised", "label_smoothing": 0.0}), setup)
    mix = Mix(partner=torch.tensor([1, 0]), lam=torch.tensor([0.7, 0.7]))
    view = View(torch.randn(2, 3, 8, 8), torch.tensor([0, 2]), torch.arange(2), mix=mix)
    out = objective(StepContext(Batch({"main": view}), backbone))
    logits = objective.head(backbone(view.images).pooled)
    expected = 0.7 * F.cross_entropy(logits, view.labels) + 0.3 * F.cross_entropy(logits, view.labels[[1, 0]])
    assert torch.allclose(out.loss, expected, atol=1e-6)
    assert "acc1" not in out.metrics


def test_topk_accuracy_by_hand():
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.3], [0.2, 0.3, 0.5]])
    labels = torch.tensor([1, 2, 0])
    assert topk_accuracy(logits, labels, 1) == 1 / 3
    assert topk_accuracy(logits, labels, 2) == 2 / 3
    assert topk_accuracy(logits, labels, 5) == 1.0


def test_encode_runs_the_backbone_once_per_view():
    backbone, _ = _setup()
    calls = []
    backbone.register_forward_hook(lambda *args: calls.append(1))
    ctx = StepContext(Batch({"main": View(torch.randn(2, 3, 8, 8), None, torch.arange(2))}), backbone)
    ctx.encode("main")
    ctx.encode("main")
    assert len(calls) == 1
