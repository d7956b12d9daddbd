import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image, ImageOps

from smallvit.data.batch import View
from smallvit.data.transforms import OPS, RAND_AUGMENT_OPS, build_op, register_op
from smallvit.errors import ConfigError

# Every registered op with arguments that make it do something.
SPECS = [
    {"op": "random_resized_crop", "size": 9},
    {"op": "random_crop", "padding": 4},
    {"op": "random_crop", "size": 8, "padding": 2, "fill": "reflect"},
    {"op": "resize", "size": [6, 17]},
    {"op": "center_crop", "size": 5},
    {"op": "hflip"},
    {"op": "color_jitter", "brightness": 0.4, "contrast": 0.4, "saturation": 0.4, "hue": 0.1},
    {"op": "grayscale", "p": 0.5},
    {"op": "gaussian_blur", "p": 0.5, "kernel_size": 5},
    {"op": "rand_augment", "p": 1.0},
    {"op": "normalize", "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.2, 0.2]},
    {"op": "random_erasing", "p": 1.0},
]
STAYS_IN_UNIT_RANGE = {"random_resized_crop", "random_crop", "resize", "center_crop", "hflip", "color_jitter"}
STAYS_IN_UNIT_RANGE |= {"grayscale", "gaussian_blur", "rand_augment"}


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def view_of(images: torch.Tensor) -> View:
    n = len(images)
    return View(images, torch.arange(n) % 3, torch.arange(n))


def random_view(n: int, h: int = 13, w: int = 11, seed: int = 0) -> View:
    return view_of(torch.rand(n, 3, h, w, generator=gen(seed)))


def apply(spec: dict, images: torch.Tensor, seed: int = 0) -> torch.Tensor:
    return build_op(spec)(view_of(images), gen(seed)).images


def test_every_op_of_this_module_is_tested():
    defined_here = {name for name, cls in OPS.items() if cls.__module__ == "smallvit.data.transforms"}
    assert {spec["op"] for spec in SPECS} == defined_here


@pytest.mark.parametrize("spec", SPECS, ids=lambda spec: spec["op"])
@pytest.mark.parametrize("n", [1, 3, 7])
def test_shapes_ranges_and_view_fields(spec, n):
    view = random_view(n)
    out = build_op(spec)(view, gen())
    expected = {"random_resized_crop": (9, 9), "random_crop": (8, 8) if "size" in spec else (13, 11)}
    expected |= {"resize": (6, 17), "center_crop": (5, 5)}
    assert out.images.shape == (n, 3, *expected.get(spec["op"], (13, 11)))
    assert out.images.dtype == torch.float32 and torch.isfinite(out.images).all()
    if spec["op"] in STAYS_IN_UNIT_RANGE:
        assert out.images.min() >= 0 and out.images.max() <= 1
    assert out.labels is view.labels and out.indices is view.indices


@pytest.mark.parametrize("spec", SPECS, ids=lambda spec: spec["op"])
def test_same_seed_same_output(spec):
    images = random_view(5).images
    assert torch.equal(apply(spec, images, seed=3), apply(spec, images, seed=3))


@pytest.mark.parametrize(
    "spec",
    [
        {"op": "random_resized_crop", "size": 13},
        {"op": "random_crop", "padding": 4},
        {"op": "color_jitter", "brightness": 0.4, "hue": 0.2},
        {"op": "gaussian_blur", "p": 1.0},
        {"op": "rand_augment", "p": 1.0},
        {"op": "random_erasing", "p": 1.0},
    ],
    ids=lambda spec: spec["op"],
)
def test_samples_get_their_own_randomness(spec):
    images = torch.rand(1, 3, 13, 13, generator=gen()).expand(8, -1, -1, -1)
    out = apply(spec, images)
    assert len({tuple(sample.flatten().tolist()) for sample in out}) == 8


# --- registry -------------------------------------------------------------------------------------------------


def test_unknown_op_lists_the_known_ones():
    with pytest.raises(ConfigError, match="unknown augmentation op 'hlfip'; known ops: center_crop") as err:
        build_op({"op": "hlfip"})
    assert "\n" not in str(err.value)


def test_bad_argument_names_it_and_the_accepted_ones():
    with pytest.raises(ConfigError, match="'hflip' has no argument 'prob'; it accepts: p$") as err:
        build_op({"op": "hflip", "prob": 0.5})
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"op": "resize"}, "missing.*'size'"),
        ({"op": "hflip", "p": 2}, "p must be in"),
        ({"op": "random_crop", "fill": "edge"}, "fill must be a number or 'reflect'"),
        ({"op": "color_jitter", "hue": 0.7}, "hue must lie in"),
        ({"op": "gaussian_blur", "kernel_size": 4}, "kernel_size must be a positive odd number"),
    ],
)
def test_bad_values_are_config_errors(spec, message):
    with pytest.raises(ConfigError, match=message) as err:
        build_op(spec)
    assert "\n" not in str(err.value)


def test_registering_a_name_twice_fails():
    with pytest.raises(ValueError, match="already registered"):
        register_op("hflip")(type("Another", (), {}))


# --- geometry -------------------------------------------------------------------------------------------------


def test_hflip_always_and_twice_is_identity():
    images = random_view(3).images
    flip = build_op({"op": "hflip", "p": 1.0})
    once = flip(view_of(images), gen())
    assert torch.equal(once.images, images.flip(-1))
    assert torch.equal(flip(once, gen(1)).images, images)


def test_hflip_never():
    images = random_view(3).images
    assert torch.equal(apply({"op": "hflip", "p": 0.0}, images), images)


def test_random_crop_is_a_window_of_the_padded_image():
    images = torch.arange(4 * 3 * 7 * 6, dtype=torch.float32).view(4, 3, 7, 6) + 1
    padded = torch.nn.functional.pad(images, [2] * 4)
    out = apply({"op": "random_crop", "padding": 2}, images)
    assert out.shape == images.shape
    for sample, source in zip(out, padded, strict=True):
        windows = [source[:, i : i + 7, j : j + 6] for i in range(5) for j in range(5)]
        assert any(torch.equal(sample, window) for window in windows)


def test_random_crop_without_padding_is_identity():
    images = random_view(3).images
    assert torch.equal(apply({"op": "random_crop", "padding": 0}, images), images)


def test_random_crop_too_large_fails():
    with pytest.raises(ConfigError, match="exceeds the padded image"):
        apply({"op": "random_crop", "size": 20, "padding": 1}, random_view(2).images)


def test_random_resized_crop_of_the_whole_image_is_identity():
    images = random_view(3, 12, 12).images
    out = apply({"op": "random_resized_crop", "size": 12, "scale": [1, 1], "ratio": [1, 1]}, images)
    torch.testing.assert_close(out, images)


def test_random_resized_crop_falls_back_to_a_centre_crop():
    # No box of the whole area with aspect 2 fits a square: the fallback is the middle 8 rows (4 to 11), full width,
    # stretched to 16 rows: output row j samples the ramp at its pixel centre, 4 + (j + 0.5) / 2 - 0.5.
    rows = torch.arange(16.0).view(1, 1, 16, 1).expand(2, 3, 16, 16)
    out = apply({"op": "random_resized_crop", "size": 16, "scale": [1, 1], "ratio": [2, 2]}, rows)
    torch.testing.assert_close(out, (3.75 + 0.5 * torch.arange(16.0)).view(1, 1, 16, 1).expand(2, 3, 16, 16))


def test_resize_antialiases_when_shrinking():
    checkerboard = (torch.arange(16).view(1, 16) + torch.arange(16).view(16, 1)) % 2
    images = checkerboard.float().expand(2, 3, 16, 16)
    out = apply({"op": "resize", "size": 4}, images)
    torch.testing.assert_close(out, torch.full((2, 3, 4, 4), 0.5), atol=0.01, rtol=0)


def test_resize_to_the_same_size_is_a_no_op():
    view = random_view(2)
    assert build_op({"op": "resize", "size": [13, 11]})(view, gen()) is view


def test_center_crop():
    images = random_view(2).images
    assert torch.equal(apply({"op": "center_crop", "size": [5, 3]}, images), images[..., 4:9, 4:7])
    with pytest.raises(ConfigError, match="resize first"):
        apply({"op": "center_crop", "size": 12}, images)


# --- colour and blur ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, factor, reference",
    [
        ("brightness", 1.3, TF.adjust_brightness),
        ("contrast", 0.6, TF.adjust_contrast),
        ("saturation", 1.7, TF.adjust_saturation),
        ("hue", -0.3, TF.adjust_hue),
        ("hue", 0.45, TF.adjust_hue),
    ],
)
def test_color_jitter_matches_torchvision(name, factor, reference):
    images = random_view(4).images
    out = apply({"op": "color_jitter", name: [factor, factor]}, images)
    torch.testing.assert_close(out, reference(images, factor), atol=1e-5, rtol=0)


def test_color_jitter_probability_leaves_the_others_alone():
    images = random_view(64).images
    out = apply({"op": "color_jitter", "brightness": [0.5, 0.5], "p": 0.5}, images)
    changed = (out != images).flatten(1).any(1)
    torch.testing.assert_close(out[changed], images[changed] * 0.5)
    assert 0 < changed.sum() < 64


def test_grayscale_matches_torchvision():
    images = random_view(3).images
    expected = TF.rgb_to_grayscale(images, num_output_channels=3)
    torch.testing.assert_close(apply({"op": "grayscale", "p": 1.0}, images), expected)


def test_color_ops_need_rgb():
    with pytest.raises(ConfigError, match="need RGB images"):
        apply({"op": "grayscale", "p": 1.0}, torch.rand(2, 1, 5, 5))


@pytest.mark.parametrize("sigma, kernel_size", [(0.7, 3), (1.6, 5)])
def test_gaussian_blur_matches_torchvision(sigma, kernel_size):
    images = random_view(3).images
    out = apply({"op": "gaussian_blur", "p": 1.0, "sigma": [sigma, sigma], "kernel_size": kernel_size}, images)
    expected = TF.gaussian_blur(images, [kernel_size, kernel_size], [sigma, sigma])
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


# --- RandAugment ----------------------------------------------------------------------------------------------


def to_pil(image: torch.Tensor) -> Image.Image:
    return Image.fromarray((image * 255).round().byte().permute(1, 2, 0).numpy())


def from_pil(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255


def quantised_view(n: int = 3) -> torch.Tensor:
    return (random_view(n).images * 255).round() / 255


@pytest.mark.parametrize("name", list(RAND_AUGMENT_OPS))
def test_rand_augment_ops_keep_shape_and_range(name):
    images = random_view(4).images
    level = torch.tensor([-1.0, -0.3, 0.5, 1.0])
    out = RAND_AUGMENT_OPS[name](images, level, torch.tensor(0.5))
    assert out.shape == images.shape and out.min() >= 0 and out.max() <= 1


@pytest.mark.parametrize("name", ["rotate", "shear_x", "shear_y", "translate_x", "translate_y", "solarize", "color"])
def test_rand_augment_ops_at_level_zero_are_identity(name):
    images = random_view(3).images
    out = RAND_AUGMENT_OPS[name](images, torch.zeros(3), torch.tensor(0.5))
    torch.testing.assert_close(out, images)


def test_translate_moves_by_whole_pixels_and_fills():
    images = random_view(1, 10, 10).images
    out = RAND_AUGMENT_OPS["translate_x"](images, torch.tensor([2 / 0.45 / 10]), torch.tensor(0.25))
    torch.testing.assert_close(out[..., :8], images[..., 2:])
    torch.testing.assert_close(out[..., 8:], torch.full_like(out[..., 8:], 0.25))


@pytest.mark.parametrize(
    "name, level, reference",
    [
        ("equalize", 0.0, ImageOps.equalize),
        ("posterize", 0.6, lambda image: ImageOps.posterize(image, 2)),
        ("solarize", 0.7, lambda image: ImageOps.solarize(image, 256 - 179)),
        ("invert", 0.0, ImageOps.invert),
    ],
)
def test_rand_augment_ops_match_pil(name, level, reference):
    images = quantised_view()
    images[1] = (images[1] * 77).round() / 255 + 0.2  # a narrow histogram
    out = RAND_AUGMENT_OPS[name](images, torch.full((3,), level), torch.tensor(0.5))
    expected = torch.stack([from_pil(reference(to_pil(image))) for image in images])
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)


def test_auto_contrast_stretches_each_channel():
    images = quantised_view() * 0.5 + 0.1
    out = RAND_AUGMENT_OPS["auto_contrast"](images, torch.zeros(3), torch.tensor(0.5))
    torch.testing.assert_close(out.amin((2, 3)), torch.zeros(3, 3))
    torch.testing.assert_close(out.amax((2, 3)), torch.ones(3, 3))


def test_rand_augment_applies_one_of_its_ops_to_each_sample_in_place():
    images = quantised_view(6)
    out = apply({"op": "rand_augment", "num_ops": 1, "magnitude": 5, "magnitude_std": 0, "p": 1.0}, images)
    fill = torch.tensor(0.5)
    for image, result in zip(images, out, strict=True):
        candidates = [
            op(image[None], torch.tensor([level]), fill)[0] for op in RAND_AUGMENT_OPS.values() for level in (-0.5, 0.5)
        ]
        assert any(torch.allclose(result, candidate) for candidate in candidates)


def test_rand_augment_without_ops_or_probability_is_identity():
    images = random_view(4).images
    assert torch.equal(apply({"op": "rand_augment", "num_ops": 0}, images), images)
    assert torch.equal(apply({"op": "rand_augment", "p": 0.0}, images), images)


# --- normalisation and erasing --------------------------------------------------------------------------------


def test_normalize():
    images = random_view(2).images
    mean, std = torch.tensor([0.5, 0.4, 0.3]), torch.tensor([0.2, 0.3, 0.4])
    out = apply({"op": "normalize", "mean": mean.tolist(), "std": std.tolist()}, images)
    torch.testing.assert_close(out, (images - mean.view(3, 1, 1)) / std.view(3, 1, 1))


def test_random_erasing_replaces_one_box_per_sample():
    images = torch.full((16, 3, 20, 20), 9.0)
    out = apply({"op": "random_erasing", "p": 1.0, "value": 0.0}, images)
    for erased in out[:, 0] == 0:
        rows, cols = erased.any(1).nonzero().squeeze(1), erased.any(0).nonzero().squeeze(1)
        box = erased[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
        assert box.all() and erased.sum() == box.numel()
        assert 0.02 * 400 - 10 <= box.numel() <= 400 / 3 + 10  # area fraction in scale, up to rounding


def test_random_erasing_with_noise_and_never():
    images = torch.full((8, 3, 12, 12), 9.0)
    noisy = apply({"op": "random_erasing", "p": 1.0}, images)
    erased = noisy != 9
    assert erased.flatten(1).any(1).all() and noisy[erased].abs().max() < 9
    assert torch.equal(apply({"op": "random_erasing", "p": 0.0}, images), images)
