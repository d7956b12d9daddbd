import pytest
import torch

from smallvit.data.mixing import MixConfig
from smallvit.data.pipeline import ViewSpec, build_augmentation, eval_augmentation
from smallvit.data.transforms import Normalize, RandomErasing
from smallvit.errors import ConfigError

MEAN, STD = (0.5, 0.4, 0.3), (0.25, 0.2, 0.2)
SUPERVISED = ViewSpec(
    ops=[
        {"op": "random_crop", "padding": 4},
        {"op": "hflip"},
        {"op": "rand_augment"},
        {"op": "random_erasing"},
    ],
    mix=MixConfig(mixup_alpha=0.8, cutmix_alpha=1.0),
)
MULTI_CROP = {
    "large": ViewSpec(ops=[{"op": "random_resized_crop", "size": 16}, {"op": "color_jitter", "hue": 0.1}], copies=2),
    "small": ViewSpec(ops=[{"op": "random_resized_crop", "size": 8}, {"op": "gaussian_blur"}], copies=4),
}


def uint8_batch(n: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    images = torch.randint(0, 256, (n, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))
    return images, torch.tensor([7, 1, 4, 2, 9][:n]), torch.tensor([40, 11, 25, 3, 18][:n])


def run(views, seed: int = 0, n: int = 3, epoch: int = 0):
    return build_augmentation(views, MEAN, STD)(*uint8_batch(n), torch.Generator().manual_seed(seed), epoch)


def test_copies_repeat_labels_and_indices_copy_major():
    batch = run(MULTI_CROP)
    large, small = batch.views["large"], batch.views["small"]
    assert large.images.shape == (6, 3, 16, 16) and small.images.shape == (12, 3, 8, 8)
    assert large.labels.tolist() == [7, 1, 4] * 2 and small.indices.tolist() == [40, 11, 25] * 4
    assert len(batch) == 6


def test_copies_of_a_deterministic_view_are_equal():
    batch = run({"main": ViewSpec(copies=3)})
    first, *others = batch.main.images.chunk(3)
    assert all(torch.equal(first, other) for other in others)


def test_normalize_is_added_with_the_dataset_statistics():
    images, labels, indices = uint8_batch()
    batch = eval_augmentation(16, MEAN, STD)(images, labels, indices, torch.Generator())
    expected = (images / 255 - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)
    torch.testing.assert_close(batch.main.images, expected)
    assert batch.main.labels is labels and batch.main.indices is indices


def test_eval_resizes_when_the_size_differs():
    assert run({"main": ViewSpec()}).main.images.shape == (3, 3, 16, 16)
    images, labels, indices = uint8_batch()
    assert eval_augmentation(24, MEAN, STD)(images, labels, indices, torch.Generator()).main.images.shape[-1] == 24


def test_normalize_goes_before_ops_that_need_it():
    augment = build_augmentation({"main": SUPERVISED}, MEAN, STD)
    ops = [type(op) for op in augment.plans["main"].ops]
    assert ops.index(Normalize) == ops.index(RandomErasing) - 1 == 3


def test_listed_normalize_is_kept_but_must_come_first():
    normalize = {"op": "normalize", "mean": [0.1] * 3, "std": [1.0] * 3}
    augment = build_augmentation({"main": ViewSpec(ops=[{"op": "hflip"}, normalize])}, MEAN, STD)
    assert [op.mean for op in augment.plans["main"].ops if isinstance(op, Normalize)] == [(0.1,) * 3]
    with pytest.raises(ConfigError, match="view 'main': random_erasing works on normalised images; move it"):
        build_augmentation({"main": ViewSpec(ops=[{"op": "random_erasing"}, normalize])}, MEAN, STD)


def test_a_bad_op_fails_at_build_time_naming_the_view():
    with pytest.raises(ConfigError, match="view 'small': augmentation op 'gaussian_blur' has no argument 'radius'"):
        build_augmentation({"small": ViewSpec(ops=[{"op": "gaussian_blur", "radius": 2}])}, MEAN, STD)


@pytest.mark.parametrize("views", [{"main": SUPERVISED}, MULTI_CROP], ids=["supervised", "multi_crop"])
def test_the_same_seed_gives_the_same_batch(views):
    first, second, other = run(views, seed=1, n=5), run(views, seed=1, n=5), run(views, seed=2, n=5)
    for name, view in first.views.items():
        assert torch.equal(view.images, second.views[name].images)
        assert not torch.equal(view.images, other.views[name].images)
    if "main" in first.views:
        assert torch.equal(first.main.mix.lam, second.main.mix.lam)


def test_mix_is_applied_last_and_recorded():
    batch = run({"main": SUPERVISED}, n=4, epoch=1)
    assert batch.main.mix is not None and batch.main.mix.lam.shape == (4,)
