"""What only a CUDA GPU can check (marked ``cuda``, skipped without one): the engine trains in bf16 with fused AdamW
and resumes bit-identically, evaluation on the GPU equals the CPU's, the batched augmentation runs on the device.

    python -m pytest -m cuda          # benchmarks/gpu_check.sh runs them first
"""

from __future__ import annotations

import dataclasses
import math
import os

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

import smallvit.engine.trainer as trainer
from smallvit.config import RunConfig, load_recipe
from smallvit.engine.checkpoint import load_checkpoint
from smallvit.engine.experiment import build_experiment
from smallvit.engine.trainer import evaluate, train

# cuBLAS is deterministic only with a fixed workspace, read when it first starts (after collection, before any test)
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    pytest.mark.usefixtures("isolated_data"),
]

CUDA = torch.device("cuda")
TINY = ["data.subset.per_class=20", "data.eval_subset.per_class=10", "model.overrides.depth=2", "batch_size=40"]


@pytest.fixture
def deterministic():
    """Deterministic kernels, and attention through the plain math kernel (the fused kernels' backward passes may
    add in any order), so that the same steps run twice give the same bits."""
    enabled, warn_only = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        with sdpa_kernel(SDPBackend.MATH):
            yield
    finally:
        torch.use_deterministic_algorithms(enabled, warn_only=warn_only)


@pytest.fixture
def no_tf32():
    """True fp32 matrix products and convolutions (TF32 keeps 10 mantissa bits), as the CPU computes them."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _stage(recipe: str, *overrides: str) -> RunConfig:
    return load_recipe(recipe, [*TINY, "device=cuda", *overrides]).stages[0]


class _Crash(Exception):
    """Stands for the process dying right after a checkpoint was written."""


def test_engine_trains_in_bf16_with_fused_adamw_and_resumes_bit_identically(tmp_path, monkeypatch, deterministic):
    config = _stage("quickstart", "epochs=2")  # precision: auto
    optimizers = []
    build_optimizer = trainer.build_optimizer
    monkeypatch.setattr(
        trainer, "build_optimizer", lambda *args: optimizers.append(build_optimizer(*args)) or optimizers[-1]
    )

    straight = train(config, tmp_path / "straight", quiet=True)
    assert straight["precision"] == "bf16", "precision auto should pick bf16 on a CUDA GPU with bf16"
    assert not straight["device"].startswith("cpu")
    assert optimizers[0].defaults["fused"] is True
    assert all(p.is_cuda for group in optimizers[0].param_groups for p in group["params"])
    assert math.isfinite(straight["final"]["val/loss"]) and math.isfinite(straight["final"]["test/loss"])

    save_checkpoint = trainer.save_checkpoint

    def crash_after_first_epoch(path, tensors, state):
        save_checkpoint(path, tensors, state)
        if path.name == "last.safetensors" and state["epoch"] == 1:
            raise _Crash

    monkeypatch.setattr(trainer, "save_checkpoint", crash_after_first_epoch)
    with pytest.raises(_Crash):
        train(config, tmp_path / "resumed", quiet=True)
    monkeypatch.setattr(trainer, "save_checkpoint", save_checkpoint)
    resumed = train(config, tmp_path / "resumed", resume=True, quiet=True)

    last = [load_checkpoint(tmp_path / run / "checkpoints" / "last.safetensors")[0] for run in ("straight", "resumed")]
    model_keys = sorted(k for k in last[0] if k.startswith("model."))
    assert model_keys and model_keys == sorted(k for k in last[1] if k.startswith("model."))
    differ = [k for k in last[0] if k.startswith(("model.", "optim.")) and not torch.equal(last[0][k], last[1][k])]
    assert not differ, f"{len(differ)} weight or optimizer tensors differ after the resume, e.g. {differ[:3]}"
    assert resumed["final"] == straight["final"]


def test_evaluation_on_cuda_equals_the_cpus_evaluation_of_the_same_weights(no_tf32):
    config = _stage("quickstart", "precision=fp32")
    cpu = build_experiment(config, torch.device("cpu"))
    gpu = build_experiment(config, CUDA)
    gpu.model.load_state_dict(cpu.model.state_dict())

    expected = evaluate(cpu, cpu.model, "val")
    got = evaluate(gpu, gpu.model, "val")
    assert got.keys() == expected.keys() and "val/supervised/acc1" in got
    one_image = 1 / len(cpu.val.labels)
    for key, value in expected.items():
        if key.endswith(("acc1", "acc5")):  # an image whose top logits tie to rounding may flip, no more
            assert abs(got[key] - value) <= one_image + 1e-9, key
        else:
            assert got[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key

    bf16 = evaluate(dataclasses.replace(gpu, config=_stage("quickstart", "precision=bf16")), gpu.model, "val")
    assert bf16["val/loss"] == pytest.approx(expected["val/loss"], rel=2e-2)


def _tensors(view) -> dict[str, torch.Tensor]:
    found = {"images": view.images, "labels": view.labels, "indices": view.indices, "patch_order": view.patch_order}
    if view.mix is not None:
        found.update(mix_partner=view.mix.partner, mix_lam=view.mix.lam)
    return {name: t for name, t in found.items() if t is not None}


@pytest.mark.parametrize(
    "recipe",
    [
        "supervised",  # crop, flip, RandAugment, random erasing, mixup/CutMix
        "idmm-id-ls-lowres-multicrop-cutmix",  # resized crops, colour jitter, grayscale, blur, multi-crop, CutMix
        "relvit-pretrain",  # per-patch augmentation
    ],
)
def test_batched_augmentation_runs_on_the_device(recipe):
    exp = build_experiment(_stage(recipe), CUDA)
    images, labels = exp.train_images[:32], exp.train_labels[:32]
    assert images.is_cuda and images.dtype == torch.uint8
    indices = torch.arange(32, device=CUDA)

    def views(seed: int) -> dict:
        gen = torch.Generator(device=CUDA).manual_seed(seed)
        return exp.augment(images, labels, indices, gen, 0).views

    first, again, other = views(0), views(0), views(1)
    for name, view in first.items():
        for part, tensor in _tensors(view).items():
            assert tensor.is_cuda, f"view {name!r}: {part} left the GPU"
        assert view.images.dtype == torch.float32 and torch.isfinite(view.images).all()
        assert view.images.shape[-2:] == (exp.config.model.img_size or 32,) * 2
        # every random draw comes from the GPU generator: the same seed gives the same views, another seed others
        assert all(torch.equal(t, _tensors(again[name])[part]) for part, t in _tensors(view).items()), name
        assert not torch.equal(view.images, other[name].images), name
