"""Diagnosis: what the first 30 fine-tuning steps after a linear probe do to validation accuracy.

Loads the RelViT pre-training of `results/diag-finetune` into the `cmp-finetune` stage, starts the classifier as a
probe of the frozen features, and trains 30 steps (two epochs of the 2040 images; lr warmed up over the first 15, as
the recipe does) under variants that each remove one suspected cause of the drop, evaluating validation after 15 and
30 steps. One line of JSON per variant goes to stdout and to ``--output``.

    python results/diag-finetune/first_steps.py PRETRAINED_RUN --output results/diag-finetune/first_steps.jsonl

Variants: the LP-FT default (probe of clean features, AdamW at lr 1e-4, training augmentation and drop path); the
same on exactly the probe's inputs (no augmentation, no drop path) at lr 1e-4, 1e-5 and 1e-6; lr 1e-5; SGD with
momentum; a probe with a 100x stronger L2 (a smaller head); a probe fitted on the augmented, drop-path features that
training sees. Give it a pre-training run made with a higher final lr (``optim.min_lr``) to see whether the drop
follows the lr the pre-training ended at.
"""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

import torch
import torch.nn.functional as F

from smallvit.config import load_recipe
from smallvit.engine.experiment import build_experiment
from smallvit.engine.provenance import device_name
from smallvit.engine.trainer import build_optimizer, evaluate, objective_weights, optimizer_step
from smallvit.metrics import extract_features, train_linear_probe

STEPS, WARMUP_STEPS, BATCH = 30, 15, 128
RECIPE = Path(__file__).parents[1] / "recipes" / "cmp-finetune.yaml"


def training_features(exp, passes: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled features as training sees them: the augmented training view, backbone in training mode (drop path)."""
    torch.manual_seed(0)  # drop path draws from the global generator
    backbone, gen = exp.model.backbone.train(), torch.Generator().manual_seed(0)
    features, labels = [], []
    with torch.no_grad():
        for _ in range(passes):
            for start in range(0, len(exp.train_labels), 256):
                chunk = slice(start, start + 256)
                indices = torch.arange(start, start + len(exp.train_labels[chunk]))
                view = exp.augment(exp.train_images[chunk], exp.train_labels[chunk], indices, gen, 0).main
                features.append(backbone(view.images).pooled.float())
                labels.append(view.labels)
    return torch.cat(features), torch.cat(labels)


def probe_head(features, labels, num_classes, weight_decay=None) -> dict:
    probe = train_linear_probe(features, labels, num_classes, weight_decay)
    weight, bias = probe.folded()
    return {"weight": weight, "bias": bias, "weight_decay": probe.weight_decay}


def experiment(pretrained: Path, augmented: bool):
    overrides = [f"model.init_from={pretrained}", "precision=fp32", "train.device=cpu", "seed=0"]
    if not augmented:
        overrides += ["model.drop_path=0", "augment.main.ops=[]"]
    return build_experiment(load_recipe(str(RECIPE), overrides).stages[0])


def fine_tune(exp, initial_state: dict, head: dict, optimizer_name: str, lr: float) -> dict:
    """Set the head, train STEPS steps from the loaded weights, return validation top-1 at 0, 15 and 30 steps."""
    torch.manual_seed(0)
    model = exp.model
    model.load_state_dict(initial_state)
    state = model.classifier_state()
    with torch.no_grad():
        state["head.weight"].copy_(head["weight"])
        state["head.bias"].copy_(head["bias"])
    if optimizer_name == "adamw":
        optimizer = build_optimizer(model, exp.config)
    else:
        optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    result = {"head_norm": round(state["head.weight"].norm().item(), 1), "val_top1": {}, "train_loss": []}
    result["val_top1"][0] = evaluate(exp, model)["val/supervised/acc1"]
    order = torch.randperm(len(exp.train_labels), generator=torch.Generator().manual_seed(1))
    gen, weights = torch.Generator().manual_seed(0), objective_weights(exp.config, 0)
    for step in range(STEPS):
        for group in optimizer.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / WARMUP_STEPS) * group.get("lr_scale", 1.0)
        batch = order[(step * BATCH) % len(order) :][:BATCH]
        batch = batch if len(batch) == BATCH else order[:BATCH]
        model.train()
        metrics, _ = optimizer_step(
            exp, model, optimizer, (exp.train_images[batch], exp.train_labels[batch], batch), gen, 0, weights, "fp32"
        )
        result["train_loss"].append(round(float(metrics["loss"]), 3))
        if step + 1 in (15, 30):
            result["val_top1"][step + 1] = evaluate(exp, model)["val/supervised/acc1"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pretrained", type=Path, help="the RelViT pre-training run folder")
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args()
    git = ["git", "rev-parse", "--short", "HEAD"]
    commit = subprocess.run(git, cwd=Path(__file__).parent, capture_output=True, text=True).stdout.strip()
    device = f"{device_name(torch.device('cpu'))} (fp32)"
    header = {"commit": commit, "device": device, "pretrained": str(args.pretrained)}
    records = [header]
    print(json.dumps(header), flush=True)

    exps = {augmented: experiment(args.pretrained, augmented) for augmented in (True, False)}
    initial = {augmented: {k: v.clone() for k, v in e.model.state_dict().items()} for augmented, e in exps.items()}
    exp = exps[True]
    clean = extract_features(exp.model.backbone, exp.train_images, exp.eval_augment)
    seen, seen_labels = training_features(exp)
    heads = {
        "probe": probe_head(clean, exp.train_labels, 10),
        "probe, L2 1e-2": probe_head(clean, exp.train_labels, 10, weight_decay=1e-2),
        "augmented probe": probe_head(seen, seen_labels, 10),
    }
    for name, head in heads.items():
        logits = seen @ head["weight"].T + head["bias"]
        record = {
            "probe": name,
            "weight_decay": head["weight_decay"],
            "on training features": {
                "top1": (logits.argmax(1) == seen_labels).float().mean().item(),
                "cross_entropy": F.cross_entropy(logits, seen_labels).item(),
            },
        }
        records.append(record)
        print(json.dumps(record), flush=True)
    variants = [
        ("LP-FT default: probe, AdamW lr 1e-4, augmentation + drop path", "probe", True, "adamw", 1e-4),
        ("the probe's own inputs: no augmentation, no drop path", "probe", False, "adamw", 1e-4),
        ("the probe's own inputs, lr 1e-5", "probe", False, "adamw", 1e-5),
        ("the probe's own inputs, lr 1e-6", "probe", False, "adamw", 1e-6),
        ("AdamW lr 1e-5", "probe", True, "adamw", 1e-5),
        ("SGD momentum 0.9, lr 1e-3", "probe", True, "sgd", 1e-3),
        ("a 100x stronger probe L2 (smaller head)", "probe, L2 1e-2", True, "adamw", 1e-4),
        ("probe of the augmented, drop-path training features", "augmented probe", True, "adamw", 1e-4),
    ]
    for name, head, augmented, optimizer_name, lr in variants:
        record = {"variant": name, "head": head, "optimizer": optimizer_name, "lr": lr, "augmented": augmented}
        record.update(fine_tune(exps[augmented], initial[augmented], heads[head], optimizer_name, lr))
        records.append(record)
        print(json.dumps(record), flush=True)
    args.output.write_text("".join(json.dumps(r) + "\n" for r in records))


if __name__ == "__main__":
    main()
