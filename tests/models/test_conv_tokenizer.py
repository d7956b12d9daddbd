import json
import math

import pytest
import torch
import torch.nn.functional as F
from timm.optim import param_groups_layer_decay
from torch import nn

from smallvit.data.batch import Batch, View
from smallvit.errors import ConfigError
from smallvit.models import (
    ConvTokenizer,
    adapt_state_dict,
    build_backbone,
    create_timm_model,
    export_timm,
    load_backbone_weights,
    no_weight_decay_names,
)
from smallvit.objectives import ObjectiveSetup, StepContext, build_objective, parse_objective_config


def objective_setup(backbone, img_size, patch_size):
    return ObjectiveSetup(
        embed_dim=backbone.embed_dim, grid=backbone.grid, patch_size=patch_size, img_size=img_size, in_chans=3,
        num_classes=10, num_train=6, has_cls_token=backbone.has_cls_token, has_pos_embed=backbone.has_pos_embed,
        has_patch_tokens=backbone.has_patch_tokens,
    )  # fmt: skip


def test_vit_lite_conv_is_vit_lite_with_a_conv_tokenizer():
    conv = build_backbone("vit_lite_conv", img_size=32, patch_size=4)
    lite = build_backbone("vit_lite", img_size=32, patch_size=4)
    params, lite_params = (sum(p.numel() for p in b.parameters()) for b in (conv, lite))
    print(f"vit_lite_conv: {params / 1e6:.2f} M parameters (vit_lite: {lite_params / 1e6:.2f} M)")
    assert isinstance(conv.model.patch_embed, ConvTokenizer)
    # The tokenizer (3*64*9 + 64*192*9 weights) replaces the 4x4 patch projection (4*4*3*192 + 192).
    assert params - lite_params == 3 * 64 * 9 + 64 * 192 * 9 - (4 * 4 * 3 * 192 + 192)
    assert (lite_params, params) == (2_695_680, 2_798_592)  # "2.8 M params"
    assert {k: v for k, v in conv.model.state_dict().items() if not k.startswith("patch_embed")}.keys() == {
        k for k in lite.model.state_dict() if not k.startswith("patch_embed")
    }


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize(("img_size", "patch_size"), [(32, 4), (64, 8)])
def test_output_shapes_and_grid(batch, img_size, patch_size):
    backbone = build_backbone("vit_lite_conv", img_size=img_size, patch_size=patch_size, depth=1)
    assert len(backbone.model.patch_embed.stages) == math.log2(patch_size)
    assert backbone.patch_size == patch_size and backbone.grid == (8, 8) and backbone.has_patch_tokens
    out = backbone(torch.randn(batch, 3, img_size, img_size))
    assert out.pooled.shape == (batch, 192) and out.patch_tokens.shape == (batch, 64, 192) and out.grid == (8, 8)


def test_patch_tokens_are_timm_features_and_options_work():
    backbone = build_backbone("vit_lite_conv", img_size=16, patch_size=4, depth=1).eval()
    images = torch.randn(2, 3, 16, 16)
    assert torch.allclose(backbone(images).patch_tokens, backbone.model.forward_features(images)[:, 1:], atol=1e-6)
    bare = build_backbone("vit_lite_conv", img_size=16, patch_size=4, depth=1, pos_embed=False, cls_token=False)
    assert bare.model.pos_embed is None and not bare.has_pos_embed and not bare.has_cls_token
    out = bare.eval()(images)
    assert out.patch_tokens.shape == (2, 16, 192) and torch.allclose(out.pooled, out.patch_tokens.mean(1))
    with pytest.raises(ConfigError, match="masked patches would leak"):  # MAE: its receptive field spans patches
        backbone(images, keep=torch.tensor([[0, 5, 9], [3, 4, 15]]))


def test_tokenizer_convs_keep_ccts_kaiming_init_through_timms_vit_init():
    torch.manual_seed(0)
    backbone = build_backbone("vit_lite_conv", img_size=32, patch_size=4, depth=1)
    for stage in backbone.model.patch_embed.stages:
        weight = stage.conv.weight
        assert stage.conv.bias is None
        assert abs(weight.std().item() / math.sqrt(2 / weight[0].numel()) - 1) < 0.1


@pytest.mark.parametrize(("img_size", "patch_size"), [(36, 6), (32, 1)])
def test_patch_size_must_be_a_power_of_two(img_size, patch_size):
    with pytest.raises(ConfigError, match=r"^model.patch_size=\d is not a power of two >= 2") as err:
        build_backbone("vit_lite_conv", img_size=img_size, patch_size=patch_size)
    print(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("spec", [{"name": "relations"}, {"name": "apl"}])
def test_position_objectives_run_on_it(spec):
    torch.manual_seed(0)
    backbone = build_backbone("vit_lite_conv", img_size=16, patch_size=4, depth=1, pos_embed=False)
    objective = build_objective(parse_objective_config(spec), objective_setup(backbone, 16, 4))
    view = View(torch.randn(3, 3, 16, 16), torch.zeros(3, dtype=torch.long), torch.arange(3))
    out = objective(StepContext(Batch({"main": view}), backbone))
    out.loss.backward()
    assert out.loss.isfinite() and backbone.model.patch_embed.stages[0].conv.weight.grad.abs().sum() > 0


@pytest.mark.parametrize(("cls_token", "pos_embed"), [(True, True), (False, True), (True, False)])
def test_export_loads_with_create_timm_model(tmp_path, cls_token, pos_embed):
    torch.manual_seed(0)
    backbone = build_backbone(
        "vit_lite_conv", img_size=32, patch_size=4, depth=2, cls_token=cls_token, pos_embed=pos_embed
    )
    backbone.eval()
    head = {"head.weight": torch.randn(10, 192), "head.bias": torch.randn(10)}
    export_timm(backbone, tmp_path, head=head)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["smallvit_changes"] == {"embed_layer": "conv_tokenizer"} and "embed_layer" not in config["model_args"]
    images = torch.randn(2, 3, 32, 32)
    model = create_timm_model(tmp_path).eval()
    assert isinstance(model.patch_embed, ConvTokenizer)
    expected = backbone(images).pooled @ head["head.weight"].T + head["head.bias"]
    assert torch.allclose(model(images), expected, atol=1e-5)


def test_weights_adapt_between_patch_and_conv_tokenizers_and_sizes():
    lite = build_backbone("vit_lite", img_size=32, patch_size=4, depth=1)
    conv = build_backbone("vit_lite_conv", img_size=32, patch_size=4, depth=1)
    report = load_backbone_weights(conv, lite.model.state_dict())  # patch projection dropped, tokenizer fresh
    assert report.ignored == ["patch_embed.proj.bias", "patch_embed.proj.weight"]
    assert report.initialised == [f"patch_embed.stages.{i}.conv.weight" for i in range(2)] and not report.resized
    assert torch.equal(conv.model.blocks[0].attn.qkv.weight, lite.model.blocks[0].attn.qkv.weight)
    large = build_backbone("vit_lite_conv", img_size=64, patch_size=4, depth=1)  # 16x16 grid
    assert load_backbone_weights(large, conv.model.state_dict()).resized == ["pos_embed"]
    deeper = build_backbone("vit_lite_conv", img_size=64, patch_size=8, depth=1)  # 3 stages, 8x8 grid
    report = load_backbone_weights(deeper, conv.model.state_dict())
    assert report.initialised == ["patch_embed.stages.1.conv.weight", "patch_embed.stages.2.conv.weight"]
    gray = build_backbone("vit_lite_conv", img_size=32, patch_size=4, depth=1, in_chans=1)
    _, report = adapt_state_dict(conv.model.state_dict(), gray.model.state_dict())
    assert report.resized == ["patch_embed.stages.0.conv.weight"]


def test_weight_decay_and_layer_decay_groups():
    backbone = build_backbone("vit_lite_conv", img_size=16, patch_size=4, depth=2)
    assert no_weight_decay_names(backbone) >= {"model.pos_embed", "model.cls_token"}
    groups = param_groups_layer_decay(backbone.model, 0.05, no_weight_decay_names(backbone.model), layer_decay=0.75)
    assert sum(len(g["params"]) for g in groups) == len(list(backbone.model.parameters()))
    stem = next(g for g in groups if any(p is backbone.model.patch_embed.stages[0].conv.weight for p in g["params"]))
    assert stem["lr_scale"] == min(g["lr_scale"] for g in groups)


def test_deterministic_under_a_fixed_seed():
    images = torch.randn(2, 3, 16, 16)
    outputs = []
    for _ in range(2):
        torch.manual_seed(0)
        outputs.append(build_backbone("vit_lite_conv", img_size=16, patch_size=4, depth=1).eval()(images).pooled)
    assert torch.equal(*outputs)


def ccts_tokenizer(tokenizer: ConvTokenizer, images: torch.Tensor) -> torch.Tensor:
    """Naive reference: CCT's released Tokenizer order (conv, ReLU, max-pool) in NCHW, with ``tokenizer``'s weights."""
    x = images
    for stage in tokenizer.stages:
        x = F.max_pool2d(F.relu(F.conv2d(x, stage.conv.weight, padding=1)), 3, stride=2, padding=1)
    return x.flatten(2).transpose(1, 2)


@pytest.mark.parametrize(("batch", "img_size", "patch_size"), [(1, (32, 32), 4), (3, (32, 48), 4), (2, (40, 24), 8)])
def test_tokenizer_computes_ccts_conv_relu_pool_tokens_and_gradients(batch, img_size, patch_size):
    torch.manual_seed(0)
    tokenizer = ConvTokenizer(img_size=img_size, patch_size=patch_size, embed_dim=16, hidden_dim=8)
    images = torch.randn(batch, 3, *img_size)
    tokens, expected = tokenizer(images), ccts_tokenizer(tokenizer, images)
    grid = (img_size[0] // patch_size) * (img_size[1] // patch_size)
    assert tokens.shape == expected.shape == (batch, grid, 16)
    assert torch.allclose(tokens, expected, rtol=1e-5, atol=1e-5)  # channels_last kernels round differently
    weights = [stage.conv.weight for stage in tokenizer.stages]
    grads = torch.autograd.grad(tokens.square().sum(), weights)
    expected_grads = torch.autograd.grad(expected.square().sum(), weights)
    for grad, expected_grad in zip(grads, expected_grads, strict=True):
        assert (grad - expected_grad).norm() <= 1e-5 * expected_grad.norm()  # sums of many rounded terms


def test_each_stage_pools_before_its_relu_with_exactly_ccts_values_and_gradients():
    stage = ConvTokenizer(img_size=16, patch_size=2, embed_dim=8).stages[0]
    assert list(dict(stage.named_children())) == ["conv", "pool", "act"]
    features = torch.randn(2, 8, 16, 16, requires_grad=True)  # half of them negative: the ReLU matters
    pool_then_relu = stage.act(stage.pool(features))
    relu_then_pool = F.max_pool2d(F.relu(features), 3, stride=2, padding=1)
    assert torch.equal(pool_then_relu, relu_then_pool)
    upstream = torch.randn_like(relu_then_pool)
    grads = [torch.autograd.grad(out, features, upstream)[0] for out in (pool_then_relu, relu_then_pool)]
    assert torch.equal(*grads) and grads[0].count_nonzero() > 0


def test_tokenizer_is_a_timm_embed_layer_on_its_own():
    tokenizer = ConvTokenizer(img_size=32, patch_size=4, in_chans=3, embed_dim=8, output_fmt="NHWC")
    assert tokenizer(torch.randn(1, 3, 32, 32)).shape == (1, 8, 8, 8) and tokenizer.feat_ratio() == 4
    assert isinstance(tokenizer.stages[0].pool, nn.MaxPool2d)
    with pytest.raises(ValueError, match="power of two"):
        ConvTokenizer(img_size=24, patch_size=3)
