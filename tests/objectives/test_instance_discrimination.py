import warnings

import pytest
import torch
import torch.nn.functional as F

from smallvit.config import load_recipe
from smallvit.data import ImageDataset, stratified_subset
from smallvit.data.batch import Batch, Mix, View
from smallvit.data.loader import InMemoryLoader
from smallvit.data.pipeline import ViewSpec, build_augmentation
from smallvit.models import build_backbone
from smallvit.objectives import ObjectiveSetup, StepContext, build_objective, parse_objective_config
from smallvit.objectives.instance_discrimination import (
    LARGE_INSTANCE_COUNT,
    InstanceDiscrimination,
    instance_discrimination_loss,
    instance_targets,
    large_instance_count_warning,
)

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def _objective(num_train=6, img_size=8, **fields) -> tuple[InstanceDiscrimination, torch.nn.Module]:
    backbone = build_backbone("vit_lite", img_size=img_size, patch_size=4, depth=1)
    grid = (img_size // 4, img_size // 4)
    setup = ObjectiveSetup(
        embed_dim=192, grid=grid, patch_size=4, img_size=img_size, in_chans=3, num_classes=2, num_train=num_train
    )
    config = parse_objective_config({"name": "instance_discrimination", **fields})
    return build_objective(config, setup), backbone


def _numbered_dataset(n: int) -> ImageDataset:
    """Image i holds i in its pixels (low byte in channel 0, high byte in channel 1); label i % 3."""
    images = torch.zeros(n, 3, 8, 8, dtype=torch.uint8)
    images[:, 0] = (torch.arange(n) % 256).view(n, 1, 1)
    images[:, 1] = (torch.arange(n) // 256).view(n, 1, 1)
    return ImageDataset(images, torch.arange(n) % 3, ["a", "b", "c"], "numbered", "train")


def _number_in(images: torch.Tensor) -> torch.Tensor:
    return images[:, 0, 0, 0].long() + 256 * images[:, 1, 0, 0].long()


@pytest.mark.parametrize("world_size", [1, 2])
def test_instance_target_is_the_training_set_index_under_shuffling_subsets_and_sharding(world_size):
    full = _numbered_dataset(300)
    chosen = stratified_subset(full.labels, per_class=40, seed=3)
    train = full.subset(chosen)  # the training set: 120 images; their index is their position in it
    augment = build_augmentation({"large": ViewSpec(ops=[{"op": "hflip"}], copies=2)}, MEAN, STD)
    seen = []
    for rank in range(world_size):
        loader = InMemoryLoader(train.images, train.labels, 16, seed=5, rank=rank, world_size=world_size)
        loader.set_epoch(2)
        for images, labels, indices in loader:
            assert torch.equal(_number_in(images), chosen[indices])  # the image a target names is the one shown
            view = augment(images, labels, indices, torch.Generator().manual_seed(0)).views["large"]
            targets = instance_targets(view.indices, len(train))
            assert torch.equal(targets, torch.cat([indices, indices]))  # copy k of sample i is row k * B + i
            seen += indices.tolist()
    assert sorted(seen) == list(range(len(train)))


def test_targets_outside_the_training_set_are_refused():
    with pytest.raises(ValueError, match=r"\[0, 5\)"):
        instance_targets(torch.tensor([0, 5]), 5)


def test_idmm_multi_crop_views_shapes_counts_and_cutmix():
    stage = load_recipe("idmm-pretrain").stages[0]
    assert (stage.model.img_size, stage.model.patch_size) == (16, 2)
    augment = build_augmentation(stage.augment, MEAN, STD)
    images = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    indices = torch.tensor([7, 3, 11, 0, 9])
    batch = augment(images, torch.zeros(5, dtype=torch.long), indices, torch.Generator().manual_seed(0))
    assert set(batch.views) == {"large", "small"}
    for name, copies in (("large", 2), ("small", 4)):
        view = batch.views[name]
        assert view.images.shape == (5 * copies, 3, 16, 16)
        assert torch.equal(view.indices, indices.repeat(copies))
        assert view.mix is not None and bool((view.mix.lam >= 0.5).all())  # lam = max(lam, 1 - lam), box-corrected
    assert stage.objectives[0].views == ["large", "small"]


def test_loss_is_the_mean_over_views_of_each_views_mean_cross_entropy():
    torch.manual_seed(0)
    objective, backbone = _objective(label_smoothing=0.1, views=["large", "small"])
    large = View(torch.randn(4, 3, 8, 8), None, torch.tensor([0, 5, 0, 5]))
    mix = Mix(partner=torch.tensor([1, 0]), lam=torch.tensor([0.8, 0.6]))
    small = View(torch.randn(2, 3, 8, 8), None, torch.tensor([2, 3]), mix=mix)
    out = objective(StepContext(Batch({"large": large, "small": small}), backbone))

    def logits(view):
        return objective.head(backbone(view.images).pooled)

    expected_large = F.cross_entropy(logits(large), large.indices, label_smoothing=0.1)
    ce_small = F.cross_entropy(logits(small), torch.tensor([2, 3]), label_smoothing=0.1, reduction="none")
    ce_partner = F.cross_entropy(logits(small), torch.tensor([3, 2]), label_smoothing=0.1, reduction="none")
    expected_small = (torch.tensor([0.8, 0.6]) * ce_small + torch.tensor([0.2, 0.4]) * ce_partner).mean()
    assert torch.allclose(out.loss, (expected_large + expected_small) / 2, atol=1e-5)
    assert torch.allclose(out.metrics["large/loss"], expected_large, atol=1e-5)
    assert "large/acc1" in out.metrics and "small/acc1" not in out.metrics  # no accuracy on mixed crops


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_instance_discrimination_loss_equals_a_loop_over_crops(smoothing):
    logits, indices = torch.randn(3, 5), torch.tensor([4, 0, 4])
    mix = Mix(partner=torch.tensor([2, 0, 1]), lam=torch.tensor([0.7, 1.0, 0.55]))

    def smoothed_ce(row, target):
        log_probs = logits[row].log_softmax(0)
        return (1 - smoothing) * -log_probs[target] + smoothing * -log_probs.mean()

    plain = sum(smoothed_ce(i, indices[i]) for i in range(3)) / 3
    mixed = sum(
        mix.lam[i] * smoothed_ce(i, indices[i]) + (1 - mix.lam[i]) * smoothed_ce(i, indices[mix.partner[i]])
        for i in range(3)
    )
    assert torch.allclose(instance_discrimination_loss(logits, indices, None, smoothing), plain, atol=1e-6)
    assert torch.allclose(instance_discrimination_loss(logits, indices, mix, smoothing), mixed / 3, atol=1e-6)
    with pytest.raises(ValueError, match=r"\[0, 5\)"):
        instance_discrimination_loss(logits, torch.tensor([0, 1, 5]))


def test_multi_crop_recipes_weigh_the_mean_over_crop_groups_twice_as_the_paper_sums_them():
    weights = {
        name: [w.weight for w in load_recipe(name).stages[0].objective_weights]
        for name in ("idmm-id", "idmm-id-ls-lowres", "idmm-id-ls-lowres-multicrop", "idmm-pretrain")
    }
    assert weights == {
        "idmm-id": [1.0],
        "idmm-id-ls-lowres": [1.0],
        "idmm-id-ls-lowres-multicrop": [2.0],
        "idmm-pretrain": [2.0],
    }


def test_label_smoothing_defaults_to_the_papers_and_zero_is_plain_cross_entropy():
    assert InstanceDiscrimination.Config(name="instance_discrimination").label_smoothing == 0.1
    torch.manual_seed(0)
    objective, backbone = _objective(label_smoothing=0.0)
    view = View(torch.randn(3, 3, 8, 8), None, torch.tensor([4, 1, 2]))
    out = objective(StepContext(Batch({"main": view}), backbone))
    expected = F.cross_entropy(objective.head(backbone(view.images).pooled), view.indices)
    assert torch.allclose(out.loss, expected, atol=1e-6)


def test_evaluation_has_no_loss_and_the_head_is_not_exported():
    objective, backbone = _objective()
    view = View(torch.randn(2, 3, 8, 8), torch.tensor([0, 1]), torch.tensor([0, 1]))
    out = objective(StepContext(Batch({"main": view}), backbone, training=False))
    assert out.loss is None and out.metrics == {}
    assert objective.classifier_state() is None


def test_large_instance_counts_warn_and_100k_instances_train_a_step():
    assert large_instance_count_warning(LARGE_INSTANCE_COUNT) is None
    with pytest.warns(UserWarning, match="100000 training images"):
        objective, backbone = _objective(num_train=100_000)
    assert objective.head.weight.shape == (100_000, 192)
    view = View(torch.randn(8, 3, 8, 8), None, torch.tensor([0, 99_999, 5, 42, 7, 50_000, 3, 1]))
    out = objective(StepContext(Batch({"main": view}), backbone))
    out.loss.backward()
    assert objective.head.weight.grad.abs().sum(dim=1).count_nonzero() > 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _objective(num_train=LARGE_INSTANCE_COUNT)


def test_a_few_steps_of_instance_discrimination_reduce_the_loss():
    torch.manual_seed(0)
    objective, backbone = _objective(num_train=16, img_size=16, label_smoothing=0.0, views=["large"])
    params = [*backbone.parameters(), *objective.parameters()]
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    augment = build_augmentation({"large": ViewSpec(ops=[{"op": "hflip"}], copies=2)}, MEAN, STD)
    images = torch.randint(0, 256, (16, 3, 16, 16), dtype=torch.uint8)
    gen = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(15):
        batch = augment(images, None, torch.arange(16), gen)
        loss = objective(StepContext(batch, backbone)).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(torch.log(torch.tensor(16.0)).item(), abs=0.3)
    assert losses[-1] < 0.5 * losses[0]


def test_ablation_rows_each_add_one_change():
    rows = [
        load_recipe(name).stages[0]
        for name in (
            "idmm-id",
            "idmm-id-ls",
            "idmm-id-ls-lowres",
            "idmm-id-ls-lowres-multicrop",
            "idmm-id-ls-lowres-multicrop-cutmix",
        )
    ]
    smoothing = [row.objectives[0].label_smoothing for row in rows]
    assert smoothing == [0.0, 0.1, 0.1, 0.1, 0.1]
    assert [row.model.img_size for row in rows] == [32, 32, 16, 16, 16]
    assert [sorted(row.augment) for row in rows] == [["large"]] * 3 + [["large", "small"]] * 2
    assert [row.augment["large"].mix is not None for row in rows] == [False] * 4 + [True]
    assert len({(row.train.epochs, row.train.batch_size, row.optim.lr) for row in rows}) == 1  # same budget
    assert load_recipe("idmm-pretrain").stages[0].augment == rows[-1].augment
