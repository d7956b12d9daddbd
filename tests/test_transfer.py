"""Resolution and dataset transfer of a pre-trained backbone: what the weight loader resizes, end to end."""

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file
from typer.testing import CliRunner

from smallvit.cli import app
from smallvit.models import adapt_state_dict, build_backbone, load_backbone_weights

TINY = ["epochs=1", "model.overrides.depth=1", "train.batch_size=20", "train.precision=fp32"]


pytestmark = pytest.mark.usefixtures("isolated_data")


def test_pos_embed_7x7_interpolated_to_14x14_loads_into_a_timm_model_of_the_new_size():
    torch.manual_seed(0)
    small = build_backbone("vit_lite", img_size=28, patch_size=4, depth=1)  # 7x7 grid
    large = timm.create_model(small.arch, **dict(small.model_args, img_size=56))  # 14x14 grid, plain timm
    state, report = adapt_state_dict(small.model.state_dict(), large.state_dict())
    assert report.resized == ["pos_embed"] and not report.initialised
    large.load_state_dict(state, strict=True)
    src = small.model.pos_embed[0, 1:].reshape(7, 7, -1)
    dst = large.pos_embed[0, 1:].reshape(14, 14, -1)
    assert (dst[0, 0] - src[0, 0]).abs().max() < 0.05 and (dst[13, 13] - src[6, 6]).abs().max() < 0.05
    assert large.eval()(torch.randn(2, 3, 56, 56)).shape == (2, 192)


def test_low_resolution_patch_kernel_is_resampled_so_upsampled_patches_embed_alike():
    """16 px / patch 2 -> 32 px / patch 4 (idmm-pretrain -> idmm-finetune): same 8x8 grid, kernel 2x2 -> 4x4."""
    torch.manual_seed(0)
    small = build_backbone("vit_lite", img_size=16, patch_size=2, depth=1)
    large = build_backbone("vit_lite", img_size=32, patch_size=4, depth=1)
    report = load_backbone_weights(large, small.model.state_dict())
    assert report.resized == ["patch_embed.proj.weight"] and not report.initialised
    assert torch.equal(large.model.pos_embed, small.model.pos_embed)

    images = torch.randn(2, 3, 16, 16)
    patches = images.unfold(2, 2, 2).unfold(3, 2, 2).permute(0, 2, 3, 1, 4, 5).reshape(-1, 3, 2, 2)
    upsampled = F.interpolate(patches, size=(4, 4), mode="bicubic", antialias=True)  # as resample_patch_embed
    upsampled = upsampled.reshape(2, 8, 8, 3, 4, 4).permute(0, 3, 1, 4, 2, 5).reshape(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(large.model.patch_embed(upsampled), small.model.patch_embed(images), atol=1e-4)


def _write_imagefolder(root, classes=("circle", "square", "stripe"), size=24) -> None:
    """A dataset unlike CIFAR-10: 3 classes of 24 px images, 6 train and 3 val per class, colour by class."""
    rng = np.random.default_rng(0)
    for split, count in (("train", 6), ("val", 3)):
        for c, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
                pixels[..., c] += 150
                Image.fromarray(pixels).save(folder / f"{i}.png")


def test_finetune_a_cifar_pretraining_on_another_dataset_resolution_and_class_count(tmp_path):
    runs, other = tmp_path / "runs", tmp_path / "other"
    _write_imagefolder(other)
    pretrain = ["train", "idmm-pretrain", *TINY, "data.subset.per_class=2", "data.eval_subset.per_class=2"]
    result = CliRunner().invoke(app, [*pretrain, "--runs-dir", str(runs), "--name", "pre", "--quiet"])
    assert result.exit_code == 0, result.output

    target = ["data.dataset=imagefolder", f"data.root={other}", "data.eval_split=val", "data.image_size=24"]
    target += ["data.subset=null", "data.eval_subset=null", "model.img_size=24", "augment.main.ops.0.size=24"]
    args = ["finetune", str(runs / "pre"), "--recipe", "idmm-transfer", *TINY, *target]
    result = CliRunner().invoke(app, [*args, "--runs-dir", str(runs), "--name", "ft", "--quiet"])
    assert result.exit_code == 0, result.output
    output = " ".join(result.output.split())
    assert "0 new" in output and "patch_embed.proj.weight" in output and "pos_embed" in output  # 8x8 -> 6x6 grid
    weights = load_file(str(runs / "ft" / "checkpoints" / "last.safetensors"))
    heads = {key: tuple(value.shape) for key, value in weights.items() if key.startswith("model.objectives.")}
    assert heads == {"model.objectives.0.head.weight": (3, 192), "model.objectives.0.head.bias": (3,)}
    assert (runs / "ft" / "summary.json").is_file()


def test_finetune_needs_a_checkpoint(tmp_path):
    result = CliRunner().invoke(app, ["finetune", str(tmp_path / "missing"), "--recipe", "idmm-finetune"])
    assert result.exit_code != 0
    assert "no checkpoint found" in str(result.exception)


@pytest.mark.parametrize("source_chans, target_chans", [(3, 1), (1, 3)])
def test_patch_embedding_adapts_between_rgb_and_grayscale_so_gray_images_embed_alike(source_chans, target_chans):
    """RGB -> grayscale sums the colour kernels, grayscale -> RGB repeats the kernel / 3 (timm adapt_input_conv):
    either way a gray image embeds as it did before, whether given as 1 channel or as 3 equal ones."""
    torch.manual_seed(0)
    source = build_backbone("vit_lite", img_size=16, patch_size=4, depth=1, in_chans=source_chans)
    target = build_backbone("vit_lite", img_size=16, patch_size=4, depth=1, in_chans=target_chans)
    report = load_backbone_weights(target, source.model.state_dict())
    assert report.resized == ["patch_embed.proj.weight"] and not report.initialised
    gray = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        before = source.model.patch_embed(gray.expand(-1, source_chans, -1, -1))
        after = target.model.patch_embed(gray.expand(-1, target_chans, -1, -1))
    assert torch.allclose(before, after, atol=1e-5)
