import pytest
import timm
import torch

from smallvit.errors import ConfigError
from smallvit.models import (
    PRESETS,
    adapt_state_dict,
    build_backbone,
    create_timm_model,
    export_timm,
    load_backbone_weights,
)


def test_vit_lite_matches_the_papers_size():
    backbone = build_backbone("vit_lite", img_size=32, patch_size=4)
    params = sum(p.numel() for p in backbone.parameters())
    d, hidden, depth, tokens = 192, 384, 9, 8 * 8 + 1
    block = 2 * 2 * d + (d * 3 * d + 3 * d) + (d * d + d) + (d * hidden + hidden) + (hidden * d + d)  # norms, attn, mlp
    stem = (4 * 4 * 3 * d + d) + d + tokens * d  # patch projection, CLS token, position embedding
    assert params == depth * block + stem + 2 * d == 2_695_680  # the final norm: "2.7 M params"
    assert backbone.grid == (8, 8) and backbone.embed_dim == 192


@pytest.mark.parametrize("cls_token", [True, False])
@pytest.mark.parametrize("batch", [1, 3])
def test_output_shapes(cls_token, batch):
    backbone = build_backbone("vit_lite", img_size=24, patch_size=8, cls_token=cls_token, depth=2)
    out = backbone(torch.randn(batch, 3, 24, 24))
    assert out.pooled.shape == (batch, 192)
    assert out.patch_tokens.shape == (batch, 9, 192)
    assert out.grid == (3, 3)


def test_pooled_is_cls_token_or_mean_of_patches():
    with_cls = build_backbone("vit_lite", img_size=16, patch_size=4, depth=1).eval()
    images = torch.randn(2, 3, 16, 16)
    tokens = with_cls.model.forward_features(images)
    assert torch.allclose(with_cls(images).pooled, tokens[:, 0], atol=1e-6)
    no_cls = build_backbone("vit_lite", img_size=16, patch_size=4, depth=1, cls_token=False).eval()
    out = no_cls(images)
    assert torch.allclose(out.pooled, out.patch_tokens.mean(1), atol=1e-6)


def test_patch_tokens_are_final_normed_tokens():
    backbone = build_backbone("vit_lite", img_size=16, patch_size=4, depth=1).eval()
    images = torch.randn(2, 3, 16, 16)
    assert torch.allclose(backbone(images).patch_tokens, backbone.model.forward_features(images)[:, 1:], atol=1e-6)


def test_without_pos_embed_the_encoder_is_permutation_equivariant():
    torch.manual_seed(0)
    backbone = build_backbone("vit_lite", img_size=16, patch_size=4, depth=2, pos_embed=False).eval()
    assert backbone.model.pos_embed is None and not backbone.has_pos_embed
    images = torch.randn(1, 3, 16, 16)
    # Swap two patches (top-left and bottom-right) in pixel space.
    swapped = images.clone()
    swapped[..., 0:4, 0:4], swapped[..., 12:16, 12:16] = images[..., 12:16, 12:16], images[..., 0:4, 0:4]
    a, b = backbone(images).patch_tokens, backbone(swapped).patch_tokens
    order = list(range(16))
    order[0], order[15] = 15, 0
    assert torch.allclose(a[:, order], b, atol=1e-5)


def test_keep_runs_the_encoder_on_a_subset_of_patches():
    backbone = build_backbone("vit_lite", img_size=16, patch_size=4, depth=1)
    keep = torch.tensor([[0, 5, 9], [3, 4, 15]])
    out = backbone(torch.randn(2, 3, 16, 16), keep=keep)
    assert out.patch_tokens.shape == (2, 3, 192) and out.grid == (4, 4)


def test_bad_geometry_and_preset_are_config_errors():
    with pytest.raises(ConfigError, match="not divisible"):
        build_backbone("vit_lite", img_size=30, patch_size=4)
    with pytest.raises(ConfigError, match="vit_lite"):
        build_backbone("vit_huge", img_size=32, patch_size=4)


def test_all_presets_build():
    """Every preset builds and encodes a batch of 2 (batch norm, in the conv stem and the ResNets, needs more than one
    value per channel in training mode)."""
    for name, preset in PRESETS.items():
        if preset.family == "vit":
            backbone, size = build_backbone(name, img_size=16, patch_size=8, depth=1), 16
        elif preset.family == "cnn":
            backbone, size = build_backbone(name, img_size=16, patch_size=8, layers=(1, 1, 1, 1)), 16
        else:
            backbone, size = build_backbone(name, img_size=32, patch_size=2, depths=(1, 1, 1)), 32
        assert backbone(torch.zeros(2, 3, size, size)).pooled.shape[-1] == backbone.embed_dim


def test_pos_embed_resize_keeps_aligned_corners_and_loads():
    small = build_backbone("vit_lite", img_size=28, patch_size=4, depth=1)  # 7x7
    large = build_backbone("vit_lite", img_size=56, patch_size=4, depth=1)  # 14x14
    rows, cols = torch.meshgrid(torch.arange(7.0), torch.arange(7.0), indexing="ij")
    smooth = torch.stack([torch.sin(rows / 4 + d) + torch.cos(cols / 4 - d) for d in range(192)], dim=-1)
    with torch.no_grad():
        small.model.pos_embed[0, 1:] = smooth.reshape(49, 192)
    report = load_backbone_weights(large, small.model.state_dict())
    assert report.resized == ["pos_embed"] and not report.initialised
    src = small.model.pos_embed[0, 1:].reshape(7, 7, -1)
    dst = large.model.pos_embed[0, 1:].reshape(14, 14, -1)
    assert torch.allclose(large.model.pos_embed[0, 0], small.model.pos_embed[0, 0])
    for (i, j), (y, x) in {(0, 0): (0, 0), (6, 6): (13, 13), (0, 6): (0, 13)}.items():
        assert (dst[y, x] - src[i, j]).abs().max() < 0.1  # values span [-2, 2]


def test_fine_tune_from_pos_embed_free_pretraining_adds_a_zero_pe_and_a_fresh_cls():
    pretrained = build_backbone("vit_lite", img_size=16, patch_size=4, depth=1, pos_embed=False, cls_token=False)
    finetune = build_backbone("vit_lite", img_size=16, patch_size=4, depth=1)
    fresh_cls = finetune.model.cls_token.detach().clone()
    report = load_backbone_weights(finetune, pretrained.model.state_dict())
    assert set(report.initialised) == {"pos_embed", "cls_token"}
    assert torch.equal(finetune.model.pos_embed, torch.zeros_like(finetune.model.pos_embed))
    assert torch.equal(finetune.model.cls_token, fresh_cls)
    assert torch.equal(finetune.model.blocks[0].attn.qkv.weight, pretrained.model.blocks[0].attn.qkv.weight)


def test_adapt_ignores_unknown_keys():
    target = build_backbone("vit_lite", img_size=16, patch_size=4, depth=1).model.state_dict()
    source = dict(target, **{"extra.weight": torch.zeros(1)})
    _, report = adapt_state_dict(source, target)
    assert report.ignored == ["extra.weight"]


def test_export_loads_in_timm_without_key_surgery(tmp_path):
    backbone = build_backbone("vit_lite", img_size=32, patch_size=4, depth=2).eval()
    head = {"head.weight": torch.randn(10, 192), "head.bias": torch.randn(10)}
    path = export_timm(backbone, tmp_path, head=head)
    import json

    cfg = json.loads((tmp_path / "config.json").read_text())
    overlay = dict(cfg["pretrained_cfg_overlay"], file=str(path))
    model = timm.create_model(cfg["architecture"], pretrained=True, pretrained_cfg_overlay=overlay, **cfg["model_args"])
    images = torch.randn(2, 3, 32, 32)
    expected = backbone(images).pooled @ head["head.weight"].T + head["head.bias"]
    assert torch.allclose(model.eval()(images), expected, atol=1e-5)
    assert torch.allclose(create_timm_model(tmp_path).eval()(images), expected, atol=1e-5)


def test_export_without_head_gives_features_in_timm(tmp_path):
    backbone = build_backbone("vit_lite", img_size=32, patch_size=4, depth=1, cls_token=False).eval()
    export_timm(backbone, tmp_path)
    images = torch.randn(2, 3, 32, 32)
    assert torch.allclose(create_timm_model(tmp_path).eval()(images), backbone(images).pooled, atol=1e-5)


def test_swin_export_with_classifier_loads_in_timm(tmp_path):
    backbone = build_backbone("swin_lite", img_size=32, patch_size=2, depths=(1, 1, 1)).eval()
    head = {"head.weight": torch.randn(10, backbone.embed_dim), "head.bias": torch.randn(10)}
    export_timm(backbone, tmp_path, head=head)
    images = torch.randn(2, 3, 32, 32)
    expected = backbone(images).pooled @ head["head.weight"].T + head["head.bias"]
    assert torch.allclose(create_timm_model(tmp_path).eval()(images), expected, atol=1e-4)
