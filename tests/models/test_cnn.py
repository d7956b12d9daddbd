import json

import pytest
import timm
import torch
from safetensors.torch import load_file
from timm.optim import param_groups_layer_decay
from torch import nn

from smallvit.data.batch import Batch, View
from smallvit.errors import ConfigError
from smallvit.models import (
    PRESETS,
    ResNetBackbone,
    build_backbone,
    create_timm_model,
    export_timm,
    load_backbone_weights,
    no_weight_decay_names,
)
from smallvit.objectives import OBJECTIVES, ObjectiveSetup, StepContext, build_objective, parse_objective_config

TINY = dict(layers=(1, 1, 1, 1), channels=(16, 32, 64, 128))  # fast: same stem, one narrow block per stage


@pytest.fixture(scope="module")
def resnet18_cifar():
    return build_backbone("resnet18_cifar", img_size=32, patch_size=4)


def objective_setup(backbone, img_size=32, patch_size=4, num_train=6):
    return ObjectiveSetup(
        embed_dim=backbone.embed_dim, grid=backbone.grid, patch_size=patch_size, img_size=img_size, in_chans=3,
        num_classes=10, num_train=num_train, has_cls_token=backbone.has_cls_token,
        has_pos_embed=backbone.has_pos_embed, has_patch_tokens=backbone.has_patch_tokens,
    )  # fmt: skip


@pytest.mark.parametrize("batch", [1, 3])
def test_resnet18_cifar_is_resnet18_with_the_cifar_stem(resnet18_cifar, batch):
    backbone = resnet18_cifar
    params = sum(p.numel() for p in backbone.parameters())
    print(f"resnet18_cifar: {params / 1e6:.2f} M parameters")
    assert isinstance(backbone, ResNetBackbone) and PRESETS["resnet18_cifar"].family == "cnn"
    # ResNet-18's 11,689,512 less the 1000-class fc, and the stem's 7x7 kernels cut to 3x3
    assert params == 11_689_512 - (512 * 1000 + 1000) - 3 * 64 * (7 * 7 - 3 * 3) == 11_168_832
    conv1 = backbone.model.conv1
    assert (conv1.kernel_size, conv1.stride, conv1.padding) == ((3, 3), (1, 1), (1, 1))
    assert isinstance(backbone.model.maxpool, nn.Identity)
    out = backbone(torch.randn(batch, 3, 32, 32))
    assert out.pooled.shape == (batch, 512) and out.patch_tokens is None
    assert out.grid == backbone.grid == (4, 4) and backbone.patch_size == 8
    assert backbone.embed_dim == 512 and not (backbone.has_patch_tokens or backbone.has_cls_token)


def test_grid_follows_the_image_and_pooled_is_timms_feature():
    backbone = build_backbone("resnet18_cifar", img_size=64, patch_size=8, **TINY).eval()
    images = torch.randn(2, 3, 64, 64)
    out = backbone(images)
    assert out.grid == backbone.grid == (8, 8)
    assert torch.allclose(out.pooled, backbone.model(images), atol=1e-6)  # num_classes=0: timm returns pre-logits


def test_vit_only_options_are_ignored():
    torch.manual_seed(0)
    plain = build_backbone("resnet18_cifar", img_size=32, patch_size=4, **TINY)
    torch.manual_seed(0)
    other = build_backbone("resnet18_cifar", img_size=32, patch_size=16, pos_embed=False, cls_token=False, **TINY)
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), other.state_dict().values()))
    with pytest.raises(ConfigError, match="cannot encode a subset"):
        plain(torch.randn(1, 3, 32, 32), keep=torch.tensor([[0]]))


def test_token_objectives_refuse_it_in_one_line():
    setup = objective_setup(build_backbone("resnet18_cifar", img_size=32, patch_size=4, **TINY))
    with pytest.raises(ConfigError) as err:
        build_objective(parse_objective_config({"name": "relations"}), setup)
    message = str(err.value)
    print(message)
    assert "\n" not in message
    assert message.startswith("objective 'relations' needs patch tokens, which CNN presets (resnet18_cifar, resnet18)")
    assert "vit_lite_conv" in message
    token_objectives = sorted(name for name, cls in OBJECTIVES.items() if cls.requires_patch_tokens)
    assert token_objectives == ["abs_position", "angles", "apl", "distances", "drloc", "mae", "relations", "rpl"]
    for name in token_objectives:
        with pytest.raises(ConfigError, match="needs patch tokens"):
            build_objective(parse_objective_config({"name": name}), setup)


@pytest.mark.parametrize("name", ["supervised", "instance_discrimination"])
def test_pooled_objectives_train_it(name):
    torch.manual_seed(0)
    backbone = build_backbone("resnet18_cifar", img_size=32, patch_size=4, **TINY)
    objective = build_objective(parse_objective_config({"name": name}), objective_setup(backbone))
    view = View(torch.randn(3, 3, 32, 32), torch.tensor([0, 3, 1]), torch.arange(3))
    out = objective(StepContext(Batch({"main": view}), backbone))
    out.loss.backward()
    assert out.loss.isfinite() and backbone.model.conv1.weight.grad.abs().sum() > 0


def test_export_loads_with_create_timm_model_and_by_hand(tmp_path):
    torch.manual_seed(0)
    backbone = build_backbone("resnet18_cifar", img_size=32, patch_size=4, **TINY).eval()
    head = {"head.weight": torch.randn(10, backbone.embed_dim), "head.bias": torch.randn(10)}
    path = export_timm(backbone, tmp_path, head=head)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["smallvit_changes"] == {"stem": "cifar"} and config["pretrained_cfg_overlay"]["input_size"][1] == 32
    images = torch.randn(2, 3, 32, 32)
    expected = backbone(images).pooled @ head["head.weight"].T + head["head.bias"]
    assert torch.allclose(create_timm_model(tmp_path).eval()(images), expected, atol=1e-5)
    plain = timm.create_model("resnet18", **config["model_args"])  # what cifar_stem's docstring tells timm users
    plain.conv1 = nn.Conv2d(3, 64, 3, padding=1, bias=False)
    plain.maxpool = nn.Identity()
    plain.load_state_dict(load_file(path))
    assert torch.allclose(plain.eval()(images), expected, atol=1e-5)


def test_weight_decay_and_layer_decay_groups():
    backbone = build_backbone("resnet18_cifar", img_size=32, patch_size=4, **TINY)
    assert no_weight_decay_names(backbone) == set()
    groups = param_groups_layer_decay(backbone.model, 0.05, no_weight_decay_names(backbone.model), layer_decay=0.75)
    grouped = [p for group in groups for p in group["params"]]
    assert len(grouped) == len(list(backbone.model.parameters()))
    stem = next(g for g in groups if any(p is backbone.model.conv1.weight for p in g["params"]))
    assert stem["lr_scale"] == min(g["lr_scale"] for g in groups)  # the stem is the lowest layer


def test_grayscale_fine_tune_sums_the_rgb_stem():
    rgb = build_backbone("resnet18_cifar", img_size=32, patch_size=4, **TINY)
    gray = build_backbone("resnet18_cifar", img_size=32, patch_size=4, in_chans=1, **TINY)
    report = load_backbone_weights(gray, rgb.model.state_dict())
    assert report.resized == ["conv1.weight"] and not report.initialised
    assert torch.allclose(gray.model.conv1.weight, rgb.model.conv1.weight.sum(1, keepdim=True))


def test_deterministic_under_a_fixed_seed():
    images = torch.randn(2, 3, 32, 32)
    outputs = []
    for _ in range(2):
        torch.manual_seed(0)
        outputs.append(build_backbone("resnet18_cifar", img_size=32, patch_size=4, **TINY).eval()(images).pooled)
    assert torch.equal(*outputs)
