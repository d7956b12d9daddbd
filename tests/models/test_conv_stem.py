import pytest
import torch
import torch.nn.functional as F

from smallvit.errors import ConfigError
from smallvit.models import ConvStem, build_backbone, create_timm_model, export_timm
from smallvit.models.layers import stem_widths


@pytest.mark.parametrize(
    ("embed_dim", "stages", "widths"),
    [(192, 4, [24, 48, 96, 192]), (192, 2, [96, 192]), (192, 5, [12, 24, 48, 96, 192]), (32, 4, [8, 8, 16, 32])],
)
def test_stem_widths_double_up_to_the_embedding_width(embed_dim, stages, widths):
    # 192-d at patch 16 is the ViT_C-1GF stem of Xiao et al. 2021 (24, 48, 96, 192).
    assert stem_widths(embed_dim, stages) == widths


def naive_stem(stem: ConvStem, images: torch.Tensor, block: int = 1) -> torch.Tensor:
    """The stem written out: space-to-depth of ``block`` x ``block`` pixels (channel c, row i, column j of a block
    -> channel (c * block + i) * block + j); per stage a stride-2 conv3x3, batch norm (running statistics), ReLU;
    then a conv1x1."""
    b, c, h, w = images.shape
    x = images.reshape(b, c, h // block, block, w // block, block).permute(0, 1, 3, 5, 2, 4)
    x = x.reshape(b, c * block * block, h // block, w // block)
    for stage in stem.stages:
        x = F.conv2d(x, stage.conv.weight, stride=2, padding=1)
        bn = stage.norm
        x = (x - bn.running_mean[:, None, None]) / torch.sqrt(bn.running_var[:, None, None] + bn.eps)
        x = torch.relu(x * bn.weight[:, None, None] + bn.bias[:, None, None])
    x = F.conv2d(x, stem.proj.weight, stem.proj.bias)
    return x.flatten(2).transpose(1, 2)


@pytest.mark.parametrize(
    ("batch", "height", "width", "patch", "block"),
    [(1, 32, 32, 4, 1), (3, 32, 48, 8, 1), (2, 40, 24, 8, 1), (2, 64, 96, 32, 2), (1, 128, 64, 64, 4)],
)
def test_stem_tokens_match_a_naive_reference(batch, height, width, patch, block):
    torch.manual_seed(0)
    stem = ConvStem(img_size=(height, width), patch_size=patch, embed_dim=16, strict_img_size=False)
    for stage in stem.stages:  # non-trivial statistics so that the normalisation is exercised
        stage.norm.running_mean.uniform_(-0.5, 0.5)
        stage.norm.running_var.uniform_(0.5, 2.0)
        stage.norm.weight.data.uniform_(0.5, 1.5)
        stage.norm.bias.data.uniform_(-0.2, 0.2)
    stem.eval()
    images = torch.randn(batch, 3, height, width)
    tokens = stem(images)
    assert tokens.shape == (batch, (height // patch) * (width // patch), 16)
    torch.testing.assert_close(tokens, naive_stem(stem, images, block), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("patch", "stages", "first_in"), [(4, 2, 3), (16, 4, 3), (32, 4, 12), (64, 4, 48)])
def test_larger_patches_take_space_to_depth_before_the_papers_four_conv_stages(patch, stages, first_in):
    stem = ConvStem(img_size=patch * 2, patch_size=patch, embed_dim=192)
    assert len(stem.stages) == stages and stem.stages[0].conv.in_channels == first_in
    assert [stage.conv.out_channels for stage in stem.stages] == stem_widths(192, stages)
    assert isinstance(stem.space_to_depth, torch.nn.Identity) == (patch <= 16)


@pytest.mark.parametrize(("img_size", "patch_size", "grid"), [(32, 4, 8), (64, 8, 8), (112, 16, 7), (224, 32, 7)])
def test_vit_lite_stem_keeps_the_patch_grid(img_size, patch_size, grid):
    backbone = build_backbone("vit_lite_stem", img_size=img_size, patch_size=patch_size, depth=1, pos_embed=False)
    assert isinstance(backbone.model.patch_embed, ConvStem) and backbone.grid == (grid, grid)
    out = backbone(torch.randn(3, 3, img_size, img_size))
    assert out.patch_tokens.shape == (3, grid * grid, 192) and out.pooled.shape == (3, 192)


def test_vit_lite_stem_refuses_other_than_power_of_two_patches_and_masked_forwards():
    with pytest.raises(ConfigError, match="power of two"):
        build_backbone("vit_lite_stem", img_size=96, patch_size=12)
    backbone = build_backbone("vit_lite_stem", img_size=32, patch_size=4, depth=1)
    with pytest.raises(ConfigError, match="leak"):
        backbone(torch.randn(2, 3, 32, 32), keep=torch.zeros(2, 4, dtype=torch.long))


def test_vit_lite_stem_is_deterministic_under_a_seed():
    outputs = []
    for _ in range(2):
        torch.manual_seed(3)
        backbone = build_backbone("vit_lite_stem", img_size=32, patch_size=4, depth=1).eval()
        outputs.append(backbone(torch.ones(2, 3, 32, 32)).pooled)
    assert torch.equal(*outputs)


def test_an_exported_stem_model_rebuilds_in_timm_with_the_same_outputs(tmp_path):
    backbone = build_backbone("vit_lite_stem", img_size=32, patch_size=4, depth=2, pos_embed=False).eval()
    export_timm(backbone, tmp_path / "export")
    model = create_timm_model(tmp_path / "export").eval()
    assert isinstance(model.patch_embed, ConvStem)
    images = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(model.forward_features(images)[:, 1:], backbone(images).patch_tokens)
