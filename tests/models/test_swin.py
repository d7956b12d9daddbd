from copy import deepcopy

import pytest
import torch

from smallvit.errors import ConfigError
from smallvit.models import PRESETS, SwinBackbone, build_backbone, create_timm_model, export_timm


def tiny_swin(**kwargs):
    options = dict(img_size=16, patch_size=2, embed_dim=16, depths=(1, 1), num_heads=(1, 2), window_size=4)
    return build_backbone("swin_lite", **{**options, **kwargs})


def bias_tables(backbone):
    return [p for n, p in backbone.named_parameters() if n.endswith("relative_position_bias_table")]


@pytest.mark.parametrize("batch", [1, 3])
def test_swin_lite_outputs_final_stage_tokens(batch):
    backbone = build_backbone("swin_lite", img_size=32, patch_size=2)
    assert isinstance(backbone, SwinBackbone) and PRESETS["swin_lite"].family == "swin"
    assert sum(p.numel() for p in backbone.parameters()) == 2_609_324  # "2.6 M params, like vit_lite"
    out = backbone(torch.randn(batch, 3, 32, 32))
    assert out.patch_tokens.shape == (batch, 16, 256) and out.grid == (4, 4) == backbone.grid
    assert backbone.embed_dim == 256 and not backbone.has_cls_token
    assert torch.allclose(out.pooled, out.patch_tokens.mean(1))


def test_patch_tokens_are_timm_features_row_major():
    backbone = tiny_swin().eval()
    images = torch.randn(2, 3, 16, 16)
    features = backbone.model.forward_features(images)  # [B, h, w, D]
    tokens = backbone(images).patch_tokens
    assert torch.equal(tokens[:, 1], features[:, 0, 1]) and torch.equal(tokens[:, 4], features[:, 1, 0])


def test_bias_off_tables_are_zero_frozen_and_stay_zero_after_loading():
    backbone = tiny_swin(pos_embed=False)
    assert not backbone.has_pos_embed and len(bias_tables(backbone)) == 2
    assert all(t.abs().sum() == 0 and not t.requires_grad for t in bias_tables(backbone))
    state = {k: torch.randn_like(v) if k.endswith("bias_table") else v for k, v in backbone.state_dict().items()}
    backbone.load_state_dict(state)  # as a resumed run loads it, through the parent module
    assert all(t.abs().sum() == 0 for t in bias_tables(backbone))
    ema = deepcopy(backbone)  # as the EMA copy is made
    ema.load_state_dict(state)
    assert all(t.abs().sum() == 0 for t in bias_tables(ema))
    assert all(t.requires_grad and t.abs().sum() > 0 for t in bias_tables(tiny_swin()))


def permute_cells(images, order, cell):
    """Move the ``cell``-pixel squares of ``images`` so that cell t of the result is cell ``order[t]``."""
    b, c, h, w = images.shape
    cells = images.reshape(b, c, h // cell, cell, w // cell, cell).permute(0, 2, 4, 1, 3, 5)
    moved = cells.reshape(b, -1, c, cell, cell)[:, order].reshape(b, h // cell, w // cell, c, cell, cell)
    return moved.permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)


@pytest.mark.parametrize("bias", [False, True])
def test_without_bias_output_is_equivariant_to_moving_final_stage_cells(bias):
    # One window per stage (window ≥ grid: no shift, no mask): with the bias off nothing but content decides,
    # so moving the 4-px squares that become final-stage tokens moves the output tokens the same way.
    torch.manual_seed(0)
    backbone = tiny_swin(pos_embed=bias, window_size=8).eval()
    for table in bias_tables(backbone) if bias else []:
        table.data.normal_()  # larger than the initial std 0.02, so the test does not hang on a tolerance
    images = torch.randn(2, 3, 16, 16)
    order = torch.randperm(16)
    moved = backbone(permute_cells(images, order, cell=4)).patch_tokens
    expected = backbone(images).patch_tokens[:, order]
    assert torch.allclose(moved, expected, atol=1e-5) != bias


def test_bias_off_swin_exports_to_timm(tmp_path):
    backbone = tiny_swin(pos_embed=False).eval()
    images = torch.randn(2, 3, 16, 16)
    assert export_timm(backbone, tmp_path).is_file()
    reloaded = create_timm_model(tmp_path).eval()
    assert torch.allclose(reloaded.forward_features(images).flatten(1, 2), backbone(images).patch_tokens, atol=1e-5)


def test_geometry_errors_are_config_errors():
    with pytest.raises(ConfigError, match="not divisible by patch size"):
        build_backbone("swin_lite", img_size=36, patch_size=2)  # 36 / (2·4) is not whole
    with pytest.raises(ConfigError, match="window 4 does not divide stage 3's 6×6"):
        build_backbone("swin_lite", img_size=48, patch_size=2)
    with pytest.raises(ConfigError, match="Swin cannot encode a subset"):
        tiny_swin()(torch.randn(1, 3, 16, 16), keep=torch.zeros(1, 4, dtype=torch.long))
