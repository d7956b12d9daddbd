"""The convolutional embed layers' cost in a whole model step: CCT's tokenizer (its own layout and the shipped one) and
ViT_C's conv stem, against the patch projection.

One step is forward + backward + AdamW of the backbone alone (a mean-square loss on its CLS and patch tokens, no
augmentation, no objective), timed for four models on the same images: ``vit_lite`` (the patch projection, the
baseline of the ratios), ``vit_lite_conv`` as CCT's released ``Tokenizer`` runs it (conv → ReLU → max-pool, NCHW),
``vit_lite_conv`` as shipped (conv → max-pool → ReLU, channels_last; see ``ConvTokenizer``) and ``vit_lite_stem``
(ViT_C's stride-2 conv stem, see ``ConvStem``). The four are interleaved within each repeat so machine noise hits
them alike; the fastest repeat of each is reported (the one least disturbed), medians are recorded too.

    python benchmarks/bench_tokenizer.py [--sizes 32:4 112:16] [--batch-size 128] [--repeats 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import OrderedDict

import torch
from common import record
from torch import nn

from smallvit.models import ConvTokenizer, build_backbone


class DefaultLayout(nn.Module):
    """Back to the default (NCHW) memory layout: undoes the tokenizer's channels_last conversion."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images.contiguous()


def with_ccts_layout(tokenizer: ConvTokenizer) -> None:
    """Run ``tokenizer`` as CCT's released code does: ReLU before the pool, default memory layout; same weights."""
    stages = [nn.Sequential(OrderedDict(conv=s.conv, act=s.act, pool=s.pool)) for s in tokenizer.stages]
    tokenizer.stages = nn.Sequential(DefaultLayout(), *stages)


def build(variant: str, img_size: int, patch_size: int) -> nn.Module:
    torch.manual_seed(0)
    preset = {"vit_lite": "vit_lite", "conv stem": "vit_lite_stem"}.get(variant, "vit_lite_conv")
    backbone = build_backbone(preset, img_size=img_size, patch_size=patch_size)
    if variant == "conv, CCT's layout":
        with_ccts_layout(backbone.model.patch_embed)
    return backbone


def step_seconds(backbone: nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor) -> float:
    start = time.perf_counter()
    out = backbone(images)
    (out.pooled.square().mean() + out.patch_tokens.square().mean()).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def measure(img_size: int, patch_size: int, batch_size: int, repeats: int) -> dict:
    variants = ("vit_lite", "conv, CCT's layout", "conv, shipped", "conv stem")
    images = torch.randn(batch_size, 3, img_size, img_size, generator=torch.Generator().manual_seed(0))
    models = {name: build(name, img_size, patch_size) for name in variants}
    optimizers = {name: torch.optim.AdamW(model.parameters()) for name, model in models.items()}
    times: dict[str, list[float]] = {name: [] for name in variants}
    for name in variants:
        step_seconds(models[name], optimizers[name], images)  # warm-up: allocator and oneDNN primitive caches
    for _ in range(repeats):
        for name in variants:
            times[name].append(step_seconds(models[name], optimizers[name], images))
    fastest = {name: min(values) for name, values in times.items()}
    base = fastest["vit_lite"]
    return {
        "shape": f"{img_size} px / patch {patch_size} ({(img_size // patch_size) ** 2} tokens), batch {batch_size}",
        "seconds_per_step": {name: round(value, 4) for name, value in fastest.items()},
        "median_seconds_per_step": {name: round(statistics.median(v), 4) for name, v in times.items()},
        "ratio_to_vit_lite": {name: round(value / base, 3) for name, value in fastest.items()},
        "shipped_over_ccts_layout": round(fastest["conv, shipped"] / fastest["conv, CCT's layout"], 3),
        "repeats": repeats,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["32:4", "112:16"], help="IMG_SIZE:PATCH_SIZE pairs")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for size in args.sizes:
        img_size, patch_size = (int(value) for value in size.split(":"))
        entry = record("conv_tokenizer_layout", measure(img_size, patch_size, args.batch_size, args.repeats))
        print(f"model step, {entry['shape']}, fp32 ({entry['device']})")
        for name, seconds in entry["seconds_per_step"].items():
            print(f"  {name:<20}{seconds:>8.3f} s{entry['ratio_to_vit_lite'][name]:>8.2f}x")
        print(f"  shipped layout: {entry['shipped_over_ccts_layout']}x the time of CCT's")


if __name__ == "__main__":
    main()
