"""Everything a stage is built from: data, backbone, objectives and augmentation, from one :class:`RunConfig`.

Training, evaluation and export all build through :func:`build_experiment`, so a run folder's ``config.yaml``
always rebuilds exactly the model that was trained.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import Tensor, nn

from smallvit.config import RunConfig, read_yaml_mapping, validate_run
from smallvit.data import ImageDataset, get_dataset_info, load_dataset, split_validation, stratified_subset
from smallvit.data.pipeline import Augmentation, ViewSpec, build_augmentation, eval_augmentation
from smallvit.data.transforms import OPS
from smallvit.engine.checkpoint import load_checkpoint, write_text_atomic
from smallvit.errors import ConfigError, DataError, SmallViTError
from smallvit.models import LoadReport, ViTBackbone, build_backbone, load_backbone_weights
from smallvit.objectives import Objective, ObjectiveSetup, StepContext, build_objective
from smallvit.objectives.base import OBJECTIVES


class TrainModel(nn.Module):
    """The backbone and the objectives' heads: one module for the optimizer, checkpoints and DDP."""

    def __init__(self, backbone: ViTBackbone, objectives: list[Objective]):
        super().__init__()
        self.backbone = backbone
        self.objectives = nn.ModuleList(objectives)
        names = [o.config.name for o in objectives]
        self.keys = [n if names.count(n) == 1 else f"{n}{i}" for i, n in enumerate(names)]
        self._register_load_state_dict_pre_hook(self._move_mae_position_heads)

    def _move_mae_position_heads(self, state_dict: dict, prefix: str, *args) -> None:
        """Checkpoints written while MAE held its position labels kept their heads in it
        (``objectives.i.position_heads.apl.``); the config reads them as the apl/rpl objectives listed after it with
        ``masked_by: mae`` (:func:`smallvit.config._expand_mae_position_labels`), whose heads they are."""
        for i, objective in enumerate(self.objectives):
            for j, other in enumerate(self.objectives):
                if j > i and getattr(other.config, "masked_by", None) == objective.name:
                    old, new = f"{prefix}objectives.{i}.position_heads.{other.name}.", f"{prefix}objectives.{j}.head."
                    for key in [k for k in state_dict if k.startswith(old)]:
                        state_dict[new + key[len(old) :]] = state_dict.pop(key)

    def forward(self, batch, weights: list[float], training: bool = True, epoch: int = 0):
        """Weighted sum of the objectives' losses (``weights``: the run's, at this step), and every objective's
        metrics under ``<objective>/``."""
        ctx = StepContext(batch, self.backbone, training=training, epoch=epoch)
        total, metrics = None, {}
        for key, objective, weight in zip(self.keys, self.objectives, weights):
            out = objective(ctx)
            metrics.update({f"{key}/{name}": value for name, value in out.metrics.items()})
            if out.loss is None:
                continue
            metrics[f"{key}/loss"] = out.loss.detach()
            total = weight * out.loss if total is None else total + weight * out.loss
        return total, metrics

    def classifier_state(self) -> dict[str, Tensor] | None:
        for objective in self.objectives:
            if (state := objective.classifier_state()) is not None:
                return state
        return None


@dataclass
class EvalSet:
    """An evaluated split in memory: ``images`` uint8 [N, C, H, W] on the device, ``labels`` [N]."""

    name: str
    images: Tensor
    labels: Tensor


@dataclass
class Experiment:
    config: RunConfig
    device: torch.device
    train_images: Tensor
    train_labels: Tensor
    val: EvalSet | None
    test: EvalSet | None
    classes: list[str]
    subset_indices: Tensor | None
    model: TrainModel
    augment: Augmentation
    eval_augment: Augmentation
    init_report: LoadReport | None = None
    splits: dict[str, dict] = field(default_factory=dict)

    def eval_set(self, which: str) -> EvalSet:
        """The ``val`` or ``test`` split, with a clear error when the run has none."""
        found = {"val": self.val, "test": self.test}.get(which)
        if found is None:
            raise SmallViTError(
                f"this run has no {which} split: set data.{which}_split"
                + (" or data.val_fraction" if which == "val" else "")
            )
        return found


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"train.device={name} is not a device: use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device={name} but no CUDA GPU is visible: use train.device=cpu or auto")
    if device.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"train.device={name} is not supported: use auto, cpu, cuda or cuda:N")
    return device


def geometry(config: RunConfig) -> tuple[int, int, int]:
    """(storage image size, backbone input size, patch size), filling dataset defaults."""
    info = get_dataset_info(config.data.dataset)
    image_size = config.data.image_size or info.image_size
    img_size = config.model.img_size or image_size
    patch_size = config.model.patch_size or info.patch_size
    return image_size, img_size, patch_size


def last_stage(run_dir: Path) -> Path:
    """The folder of a multi-stage run's last stage (``2-relvit-finetune/``); any other path unchanged."""
    if not (run_dir / "recipe.yaml").is_file() or (run_dir / "config.yaml").is_file():
        return run_dir
    stages = [p for p in run_dir.iterdir() if (p / "config.yaml").is_file() and p.name.split("-")[0].isdigit()]
    return max(stages, key=lambda p: int(p.name.split("-")[0]), default=run_dir)


def resolve_checkpoint(path_or_run: str | Path) -> Path:
    """A run folder (its best, else last checkpoint; a multi-stage run's last stage), an export folder, or a
    .safetensors file."""
    path = last_stage(Path(path_or_run))
    for candidate in (
        path / "checkpoints" / "best.safetensors",
        path / "checkpoints" / "last.safetensors",
        path / "model.safetensors",
        path,
    ):
        if candidate.is_file():
            return candidate
    raise SmallViTError(f"no checkpoint found at '{path}': give a run folder, an export folder or a .safetensors file")


def load_backbone_state(path_or_run: str | Path) -> dict[str, Tensor]:
    """The timm-keyed backbone weights of a smallvit checkpoint or of an exported model."""
    tensors, _ = load_checkpoint(resolve_checkpoint(path_or_run))
    prefix = "model.backbone.model."
    if any(k.startswith(prefix) for k in tensors):
        return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
    return {k: v for k, v in tensors.items() if not k.startswith("head.")}


def _takes_patch_size(op_name: str | None) -> bool:
    op_class = OPS.get(op_name)
    return op_class is not None and "patch_size" in inspect.signature(op_class).parameters


def _with_patch_size(spec: ViewSpec, patch_size: int) -> ViewSpec:
    """Fill ``patch_size`` into the ops that take one (per-patch augmentation, mega-patches) and omit it."""
    ops = [
        {**op, "patch_size": patch_size} if "patch_size" not in op and _takes_patch_size(op.get("op")) else op
        for op in spec.ops
    ]
    return spec.model_copy(update={"ops": ops})


def _check_view_sizes(augment: Augmentation, images: Tensor, img_size: int) -> None:
    """Augment two images once, so a view the backbone cannot take fails now, not at the first step."""
    batch = augment(images, None, torch.arange(len(images)), torch.Generator().manual_seed(0), 0)
    for name, view in batch.views.items():
        size = tuple(view.images.shape[-2:])
        if size != (img_size, img_size):
            raise ConfigError(
                f"augment.{name} makes {size[0]}x{size[1]} images but the backbone takes {img_size}x{img_size}: "
                f"set model.img_size={size[0]} or change the view's ops"
            )


def _check_recipe(config: RunConfig, has_labels: bool, has_val: bool) -> None:
    _check_best_metric(config, has_val)
    for objective in config.objectives:
        if OBJECTIVES[objective.name].requires_labels and not has_labels:
            raise ConfigError(f"objective '{objective.name}' needs class labels, which this dataset does not have")


def _check_best_metric(config: RunConfig, has_val: bool) -> None:
    metric = config.train.best_metric
    if metric is None:
        return
    if metric.startswith("test/"):
        raise ConfigError(
            f"train.best_metric={metric!r} would choose the checkpoint on the test split, which is only reported: "
            f"use {metric.replace('test/', 'val/', 1)}"
        )
    if not has_val:
        raise ConfigError(
            f"train.best_metric={metric!r} needs a validation split, and this run has none: "
            "set data.val_fraction (e.g. 0.1) or train.best_metric=null"
        )
    keys = {o.name for o in config.objectives}
    parts = metric.split("/")
    ema = parts[1:2] == ["ema"]  # val/ema/...: the EMA weights' evaluation, which has no kNN
    rest = parts[2:] if ema else parts[1:]
    known = parts[:1] == ["val"] and (
        rest == ["loss"] or (len(rest) == 2 and (rest[0] in keys or (rest[0] == "knn" and not ema)))
    )
    if not known:
        raise ConfigError(
            f"train.best_metric={metric!r} names no metric this run produces: use val/loss, "
            f"val/<objective>/<metric> with an objective of the recipe ({', '.join(sorted(keys))}), val/knn/acc1, "
            "the same under val/ema/ with train.ema_decay, or null (keep the final weights)"
        )
    if ema and not config.train.ema_decay:
        raise ConfigError(f"train.best_metric={metric!r} needs an EMA of the weights: set train.ema_decay (e.g. 0.999)")
    if rest[:1] == ["knn"] and not config.train.knn_every:
        raise ConfigError(f"train.best_metric={metric!r} needs online kNN: set train.knn_every (e.g. 5)")


def content_digest(images: Tensor, labels: Tensor) -> str:
    """sha256 of a split's decoded pixels and labels: which images a number was measured on, in one string."""
    digest = hashlib.sha256()
    digest.update(images.cpu().contiguous().numpy().tobytes())
    digest.update(labels.cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def load_splits(config: RunConfig) -> tuple[ImageDataset, ImageDataset | None, ImageDataset | None, Tensor | None]:
    """The training set (after carving validation and taking ``data.subset``), the validation and test sets, and the
    subset's indices into the training split after carving.

    Validation is the dataset's own split where it has one (``data.val_split`` or the dataset's default), else
    (also with ``data.val_split='none'``) ``data.val_fraction`` of each training class held out with
    ``data.val_seed``; the test split is the dataset's unless ``data.test_split`` names another ('none': no test set).
    """
    data = config.data
    info = get_dataset_info(data.dataset)
    image_size, _, _ = geometry(config)

    def load(split: str) -> ImageDataset:
        return load_dataset(
            data.dataset,
            split,
            root=data.root,
            image_size=image_size,
            in_chans=data.in_chans,
            on_bad_file=data.on_bad_file,
            decode=data.decode,
        )

    train_set = load(data.train_split)
    val_name = None if data.val_split == "none" else data.val_split or info.val_split
    if val_name is not None:
        val_set = load(val_name)
    elif data.val_fraction > 0:
        kept, held_out = split_validation(train_set.labels, data.val_fraction, data.val_seed)
        if not len(held_out):
            raise DataError(
                f"data.val_fraction={data.val_fraction:g} holds out no image of split {data.train_split!r}: a class "
                "needs at least 2 images to give one to validation: add images"
            )
        val_set = replace(train_set.subset(held_out), split=f"{data.train_split}[val {data.val_fraction:g}]")
        train_set = train_set.subset(kept)
    else:
        val_set = None
    test_name = data.test_split or info.test_split
    test_set = load(test_name) if test_name and test_name != "none" else None
    subset_indices = None
    if data.subset is not None:
        subset_indices = stratified_subset(train_set.labels, **data.subset.model_dump())
        train_set = train_set.subset(subset_indices)
    if data.eval_subset is not None:
        val_set, test_set = (
            s.subset(stratified_subset(s.labels, **data.eval_subset.model_dump())) if s is not None else None
            for s in (val_set, test_set)
        )
    return train_set, val_set, test_set, subset_indices


def build_model(config: RunConfig, num_classes: int, num_train: int) -> TrainModel:
    """The run's backbone and objectives (with their heads), freshly initialised, on the CPU."""
    _, img_size, patch_size = geometry(config)
    backbone = build_backbone(
        config.model.preset,
        img_size=img_size,
        patch_size=patch_size,
        in_chans=config.data.in_chans,
        pos_embed=config.model.pos_embed,
        cls_token=config.model.cls_token,
        drop_path=config.model.drop_path,
        **config.model.overrides,
    )
    setup = ObjectiveSetup(
        embed_dim=backbone.embed_dim,
        grid=backbone.grid,
        patch_size=patch_size,
        img_size=img_size,
        in_chans=config.data.in_chans,
        num_classes=num_classes,
        num_train=num_train,
        has_cls_token=backbone.has_cls_token,
        has_pos_embed=backbone.has_pos_embed,
        has_patch_tokens=backbone.has_patch_tokens,
    )
    return TrainModel(backbone, [build_objective(o, setup) for o in config.objectives])


def build_experiment(config: RunConfig, device: torch.device | None = None, load_init: bool = True) -> Experiment:
    """Load data, build the backbone and objectives, and initialise from ``model.init_from`` if set."""
    device = device or resolve_device(config.train.device)
    data = config.data
    info = get_dataset_info(data.dataset)
    _, img_size, patch_size = geometry(config)
    train_set, val_set, test_set, subset_indices = load_splits(config)
    _check_recipe(config, has_labels=train_set.labels is not None, has_val=val_set is not None)

    model = build_model(config, num_classes=len(train_set.classes), num_train=len(train_set))
    report = None
    if load_init and config.model.init_from:
        report = load_backbone_weights(model.backbone, load_backbone_state(config.model.init_from))
    mean, std = info.mean[: data.in_chans], info.std[: data.in_chans]  # a 1-channel run normalises one channel
    views = {name: _with_patch_size(spec, patch_size) for name, spec in config.augment.items()}
    augment = build_augmentation(views, mean, std)
    _check_view_sizes(augment, train_set.images[:2], img_size)
    splits = {
        role: {
            "name": d.split,
            "images": len(d),
            "per_class": torch.bincount(d.labels, minlength=len(d.classes)).tolist(),
            "sha256": content_digest(d.images, d.labels),
            "skipped_files": list(d.skipped),
        }
        for role, d in (("train", train_set), ("val", val_set), ("test", test_set))
        if d is not None
    }
    return Experiment(
        config=config,
        device=device,
        train_images=train_set.images.to(device),
        train_labels=train_set.labels.to(device),
        val=EvalSet("val", val_set.images.to(device), val_set.labels.to(device)) if val_set is not None else None,
        test=EvalSet("test", test_set.images.to(device), test_set.labels.to(device)) if test_set is not None else None,
        classes=list(train_set.classes),
        subset_indices=subset_indices,
        model=model.to(device),
        augment=augment,
        eval_augment=eval_augmentation(img_size, mean, std),
        init_report=report,
        splits=splits,
    )


def read_run_config(run_dir: Path) -> RunConfig:
    """The resolved config a run folder was trained with."""
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise SmallViTError(f"'{run_dir}' is not a run folder (no config.yaml): give a folder under runs/")
    return validate_run(read_yaml_mapping(path, "run config"), f"run '{run_dir}'")


def write_json(path: Path, data: dict) -> None:
    """``data`` as indented JSON, replacing ``path`` atomically (a crash leaves the old file or the new one)."""
    write_text_atomic(path, json.dumps(data, indent=2, default=str) + "\n")
