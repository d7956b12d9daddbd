import itertools

import pytest
import torch
import torch.nn.functional as F

from smallvit.data.batch import View
from smallvit.data.patch_ops import from_patches, to_patches
from smallvit.data.transforms import ColorJitter, Grayscale, RandomCrop, Resize, build_op
from smallvit.errors import ConfigError
from smallvit.objectives.grid import pair_labels, token_labels
from smallvit.objectives.relations import relation_labels


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def view_of(images: torch.Tensor) -> View:
    return View(images, torch.arange(len(images)) % 3, torch.arange(len(images)))


def indexed_images(batch: int, rows: int, cols: int, p: int) -> torch.Tensor:
    """Images whose patch at grid index i is filled with the value i / 100 (all channels)."""
    values = torch.arange(rows * cols).float().div(100).view(1, rows * cols, 1, 1, 1)
    return from_patches(values.expand(batch, -1, 3, p, p).contiguous(), rows, cols)


def test_to_and_from_patches_are_inverse_and_row_major():
    images = torch.rand(2, 3, 8, 12)
    patches = to_patches(images, 4)
    assert patches.shape == (2, 6, 3, 4, 4)
    assert torch.equal(patches[1, 4], images[1, :, 4:8, 4:8])  # row 1, column 1 of a 2x3 grid
    assert torch.equal(from_patches(patches, 2, 3), images)


# ---------------------------------------------------------------- per-patch augmentation


def test_per_patch_augment_is_the_batched_ops_applied_to_all_patches_as_one_batch():
    images = torch.rand(3, 3, 8, 12)
    out = build_op({"op": "per_patch_augment", "patch_size": 4})(view_of(images), gen(7))
    flat = to_patches(images, 4).flatten(0, 1)
    reference = View(flat, None, torch.arange(len(flat)))
    ops = [RandomCrop(size=3, padding=0), Resize(4), ColorJitter(0.4, 0.4, 0.4, 0.1, p=0.8), Grayscale(p=0.2)]
    g = gen(7)
    for op in ops:
        reference = op(reference, g)
    assert torch.equal(out.images, from_patches(reference.images.view(3, 6, 3, 4, 4), 2, 3))
    assert out.images.shape == images.shape and 0 <= float(out.images.min()) and float(out.images.max()) <= 1
    assert out.labels is not None and out.patch_order is None


def test_per_patch_crop_takes_a_random_window_of_each_patch():
    # Without colour ops every output patch is one of the four 3x3 windows of its 4x4 patch, resized to 4x4;
    # across 2 x 16 patches several different windows are drawn.
    images = torch.rand(2, 3, 16, 16)
    op = build_op({"op": "per_patch_augment", "patch_size": 4, "color_jitter_p": 0, "grayscale_p": 0})
    out = to_patches(op(view_of(images), gen(0)).images, 4)
    source = to_patches(images, 4)
    chosen = set()
    for b, t in itertools.product(range(2), range(16)):
        windows = [
            F.interpolate(source[b, t, :, i : i + 3, j : j + 3][None], size=4, mode="bilinear", antialias=True)[0]
            for i, j in itertools.product(range(2), range(2))
        ]
        matches = [k for k, window in enumerate(windows) if torch.allclose(out[b, t], window, atol=1e-6)]
        assert len(matches) == 1
        chosen.add(matches[0])
    assert len(chosen) > 1


def test_per_patch_colours_differ_between_patches_of_one_image():
    images = torch.tensor([0.2, 0.5, 0.8]).view(1, 3, 1, 1).expand(1, 3, 16, 16).contiguous()
    op = build_op({"op": "per_patch_augment", "patch_size": 4, "color_jitter_p": 1.0, "grayscale_p": 0})
    means = to_patches(op(view_of(images), gen(0)).images, 4).mean((3, 4))[0]  # [16 patches, 3 channels]
    assert len({tuple(m.round(decimals=4).tolist()) for m in means}) == 16


# ---------------------------------------------------------------- patch shuffling


def test_patch_shuffle_moves_whole_patches_and_records_where_they_came_from():
    images = torch.rand(4, 3, 8, 12)
    out = build_op({"op": "patch_shuffle", "patch_size": 4})(view_of(images), gen(0))
    order = out.patch_order
    assert order.shape == (4, 6) and torch.equal(order.sort(1).values, torch.arange(6).expand(4, 6))
    assert any(not torch.equal(o, torch.arange(6)) for o in order)
    before, after = to_patches(images, 4), to_patches(out.images, 4)
    assert torch.equal(after, before[torch.arange(4)[:, None], order])


def test_shuffled_labels_belong_to_the_original_positions():
    # Each patch's value tells its original grid index; labels gathered through patch_order must agree with it.
    images = indexed_images(3, 3, 3, 2)
    out = build_op({"op": "patch_shuffle", "patch_size": 2})(view_of(images), gen(1))
    origin = (to_patches(out.images, 2)[:, :, 0, 0, 0] * 100).round().long()  # [B, N]
    assert torch.equal(token_labels(torch.arange(9), out.patch_order, 3), origin)
    relations = pair_labels(relation_labels(3, 3), out.patch_order, 3)
    for b, t, u in itertools.product(range(3), range(9), range(9)):
        assert relations[b, t, u] == relation_labels(3, 3)[origin[b, t], origin[b, u]]


def test_two_shuffles_compose():
    images = indexed_images(2, 2, 4, 2)
    op = build_op({"op": "patch_shuffle", "patch_size": 2})
    out = op(op(view_of(images), gen(0)), gen(1))
    origin = (to_patches(out.images, 2)[:, :, 0, 0, 0] * 100).round().long()
    assert torch.equal(out.patch_order, origin)


# ---------------------------------------------------------------- mega-patches


def matching_cuts(out: torch.Tensor, image: torch.Tensor, k: int) -> list[tuple[tuple, tuple]]:
    """All (row cuts, column cuts) whose K x K regions, area-averaged to one pixel each, give ``out`` (p = 1)."""
    n = image.shape[-1]
    found = []
    for row_cuts, col_cuts in itertools.product(itertools.combinations(range(1, n), k - 1), repeat=2):
        rows, cols = (0, *row_cuts, n), (0, *col_cuts, n)
        expected = torch.stack(
            [
                torch.stack([image[:, rows[i] : rows[i + 1], cols[j] : cols[j + 1]].mean((1, 2)) for j in range(k)], -1)
                for i in range(k)
            ],
            -2,
        )
        if torch.allclose(out, expected, atol=1e-5):
            found.append((row_cuts, col_cuts))
    return found


@pytest.mark.parametrize("row_cuts_for_cols", [False, True])
def test_mega_patches_average_random_rectangles_of_whole_patches(row_cuts_for_cols):
    # Patch size 1 on a 5x5 image: each output pixel is the mean of one rectangle of a K x K partition.
    images = torch.rand(12, 3, 5, 5)
    op = build_op({"op": "mega_patches", "k": 3, "patch_size": 1, "row_cuts_for_cols": row_cuts_for_cols})
    out = op(view_of(images), gen(0))
    assert out.images.shape == (12, 3, 3, 3) and out.grid == (3, 3) and out.patch_order is None
    cuts = [matching_cuts(out.images[b], images[b], 3) for b in range(12)]
    assert all(len(c) == 1 for c in cuts)
    same = [rows == cols for ((rows, cols),) in cuts]
    assert all(same) if row_cuts_for_cols else not all(same)
    assert len({c[0] for c in cuts}) > 1  # the partition differs between samples


def test_mega_patches_with_k_equal_to_the_grid_keep_the_image_and_p_gives_k_times_p():
    images = torch.rand(2, 3, 16, 16)
    assert torch.equal(build_op({"op": "mega_patches", "k": 4, "patch_size": 4})(view_of(images), gen()).images, images)
    out = build_op({"op": "mega_patches", "k": 3, "patch_size": 4})(view_of(images), gen())
    assert out.images.shape == (2, 3, 12, 12) and out.grid == (3, 3)


def test_patch_shuffle_after_mega_patches_shuffles_the_mega_grid():
    view = build_op({"op": "mega_patches", "k": 3, "patch_size": 4})(view_of(torch.rand(2, 3, 32, 32)), gen())
    out = build_op({"op": "patch_shuffle", "patch_size": 4})(view, gen())
    assert out.patch_order.shape == (2, 9) and out.grid == (3, 3)


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "spec, images, message",
    [
        ({"op": "mega_patches", "k": 9, "patch_size": 4}, torch.rand(1, 3, 32, 32), "k=9 exceeds the native 8×8"),
        ({"op": "per_patch_augment", "patch_size": 5}, torch.rand(1, 3, 32, 32), "do not split into patches of 5"),
        ({"op": "patch_shuffle", "patch_size": 3}, torch.rand(1, 3, 32, 32), "do not split into patches of 3"),
        (
            {"op": "mega_patches", "k": 2, "patch_size": 4, "row_cuts_for_cols": True},
            torch.rand(1, 3, 16, 32),
            "needs a square patch grid",
        ),
    ],
)
def test_bad_geometry_is_a_one_line_config_error(spec, images, message):
    with pytest.raises(ConfigError, match=message) as err:
        build_op(spec)(view_of(images), gen())
    assert "\n" not in str(err.value)


def test_mega_patches_after_shuffle_is_a_config_error():
    shuffled = build_op({"op": "patch_shuffle", "patch_size": 4})(view_of(torch.rand(1, 3, 16, 16)), gen())
    with pytest.raises(ConfigError, match="before patch_shuffle"):
        build_op({"op": "mega_patches", "k": 2, "patch_size": 4})(shuffled, gen())


@pytest.mark.parametrize(
    "spec",
    [
        {"op": "mega_patches", "k": 0, "patch_size": 4},
        {"op": "mega_patches", "k": 2},
        {"op": "per_patch_augment", "patch_size": 4, "crop_ratio": 0.5},
        {"op": "patch_shuffle", "patch_size": 4, "p": 0.5},
    ],
)
def test_bad_arguments_are_config_errors(spec):
    with pytest.raises(ConfigError):
        build_op(spec)
