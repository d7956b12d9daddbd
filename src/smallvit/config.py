"""Recipes: validated YAML run configurations, with ``key.sub=value`` overrides.

A recipe file in ``smallvit/recipes/`` (or any path) is either one stage (a :class:`RunConfig`) or a list of
stage recipes run in sequence (``stages: [relvit-pretrain, relvit-finetune]``). ``base: other-recipe``
inherits another recipe and deep-merges this file's keys over it, so ablation rows state only what differs.
Under ``torchrun`` the environment adds the process's place in the launch: :func:`distributed_env`.
"""

from __future__ import annotations

import copy
import math
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    Field,
    SerializeAsAny,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from smallvit.data.pipeline import ViewSpec
from smallvit.errors import ConfigError, Strict, quoted, validation_error
from smallvit.objectives import OBJECTIVES, ObjectiveConfig, parse_objective_config

# Short names for the overrides users type most.
ALIASES = {
    "epochs": "train.epochs",
    "batch_size": "train.batch_size",
    "lr": "optim.lr",
    "seed": "train.seed",
    "dataset": "data.dataset",
    "device": "train.device",
    "precision": "train.precision",
}


class SubsetConfig(Strict):
    """A deterministic, stratified subset: ``per_class`` images of each class, or ``total`` images."""

    per_class: int | None = Field(None, gt=0, description="images of each class (give this or `total`)")
    total: int | None = Field(None, gt=0, description="images in all (give this or `per_class`)")
    seed: int = Field(0, description="seeds the subset's choice")

    @model_validator(mode="after")
    def _one_of(self):
        if (self.per_class is None) == (self.total is None):
            raise ValueError("give exactly one of per_class or total")
        return self


class DataConfig(Strict):
    """Which images train, which choose (validation) and which are only reported (test).

    Every tuning decision — the best checkpoint, early comparisons, objective weights — reads the validation split:
    the dataset's own (``val_split``, default: the dataset's, e.g. cifar10-sample ``val``), else — also with
    ``val_split: none`` — ``val_fraction`` of each training class held out with ``val_seed``. The test split is
    evaluated once, at the end of a stage.
    """

    dataset: str = Field(
        "cifar10-sample", description="a registered dataset (`smallvit datasets`), or `imagefolder` with `data.root`"
    )
    root: str | None = Field(
        None, description="the folder of an `imagefolder` dataset (`root/split/class/img` or `root/class/img`)"
    )
    train_split: str = Field("train", description="the split that trains")
    val_split: str | None = Field(
        None,
        description="None: the dataset's own validation split, else carved; 'none': carved even when the dataset "
        "has one (an image folder without val/)",
    )
    val_fraction: float = Field(0.1, ge=0, lt=1, description="held out per class when there is no val split")
    val_seed: int = Field(0, description="seeds the per-class validation hold-out when there is no validation split")
    test_split: str | None = Field(None, description="None: the dataset's test split; 'none': no test evaluation")
    image_size: int | None = Field(None, gt=0, description="storage and training resolution; None: dataset default")
    in_chans: Literal[1, 3] = Field(3, description="1 trains grayscale images as one channel, 3 repeats them over RGB")
    on_bad_file: Literal["error", "skip"] = Field(
        "error", description="an undecodable image: stop with an error naming it, or skip it (listed in the run folder)"
    )
    decode: Literal["full", "draft"] = Field(
        "full",
        description="image files: full (every pixel, then resized) or draft (camera photos: JPEGs decoded at reduced "
        "scale, EXIF orientation applied; smallvit fit's choice)",
    )
    subset: SubsetConfig | None = None
    eval_subset: SubsetConfig | None = Field(None, description="subsample the validation and test splits")


class ModelConfig(Strict):
    preset: str = Field("vit_lite", description="the network (see Backbones)")
    patch_size: int | None = Field(None, gt=0, description="None: the dataset's default patch size")
    img_size: int | None = Field(None, gt=0, description="backbone input size; None: data.image_size")
    pos_embed: bool = Field(
        True, description="a learned absolute position embedding (on a Swin preset: the relative position bias)"
    )
    cls_token: bool = Field(True, description="a class token; without one, the pooled feature is the mean patch token")
    drop_path: float = Field(0.1, ge=0.0, lt=1.0, description="stochastic depth rate of the last block")
    overrides: dict[str, Any] = Field(
        {}, description="keyword arguments passed on to the timm model (e.g. `depth`, `num_heads`)"
    )
    init_from: str | None = Field(None, description="run folder or .safetensors to start from; 'previous' stage")
    head_init: Literal["random", "linear_probe"] = Field(
        "random",
        description="with init_from, linear_probe starts the classifier as a linear probe of the loaded features "
        "(LP-FT, Kumar et al., ICLR 2022), so fine-tuning starts where the probe ends instead of distorting the "
        "features to fit a random head",
    )


class OptimConfig(Strict):
    lr: float = Field(1e-3, gt=0, description="peak learning rate (`lr=` on the command line)")
    weight_decay: float = Field(
        0.05, ge=0, description="AdamW weight decay (not on biases, norms, position embedding and tokens)"
    )
    betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW betas")
    warmup_epochs: float = Field(10, ge=0, description="linear warm-up length, unless `warmup_fraction` is set")
    warmup_fraction: float | None = Field(None, ge=0, le=1, description="warm-up as a fraction of the epochs")
    min_lr: float = Field(1e-5, ge=0, description="learning rate at the end of the cosine decay")
    clip_grad: float | None = Field(None, gt=0, description="gradient-norm clipping; null: off")
    layer_decay: float | None = Field(
        None, gt=0, le=1, description="layer-wise lr decay (BEiT/MAE fine-tuning): block i of L gets lr * decay^(L-i)"
    )

    def warmup(self, epochs: int) -> float:
        """Warm-up length in epochs: ``warmup_fraction`` of the run when set (so it follows an epochs override)."""
        return self.warmup_fraction * epochs if self.warmup_fraction is not None else self.warmup_epochs


class WeightSchedule(Strict):
    """How an objective's weight evolves; the value multiplies the objective's configured ``weight``.

    constant: always 1. warmup: 0 → 1 linearly over ``warmup_epochs``, then 1. warmup_decay: 0 → 1 over
    ``warmup_epochs``, then linearly down to 0 at the last epoch (DRLoc). cosine: 1 → 0 along a half cosine.
    A pure function of ``(epoch, total)``, so a resumed run recomputes it exactly from its step counter.
    """

    kind: Literal["constant", "warmup", "warmup_decay", "cosine"] = Field(
        "constant",
        description="constant; warmup: 0 → 1 over `warmup_epochs`; warmup_decay: then down to 0 at the last epoch "
        "(DRLoc); cosine: 1 → 0 along a half cosine",
    )
    warmup_epochs: float = Field(0.0, ge=0, description="length of the warm-up of `warmup` and `warmup_decay`")

    def factor(self, epoch: float, total: float) -> float:
        ramp = min(epoch / self.warmup_epochs, 1.0) if self.warmup_epochs > 0 else 1.0
        if self.kind == "constant":
            return 1.0
        if self.kind == "warmup":
            return ramp
        if self.kind == "warmup_decay":
            if epoch < self.warmup_epochs:
                return ramp
            return max(0.0, (total - epoch) / max(total - self.warmup_epochs, 1e-12))
        return 0.5 * (1.0 + math.cos(math.pi * min(epoch / max(total, 1e-12), 1.0)))


class ObjectiveWeight(Strict):
    """How much one objective's loss counts in the run: ``weight × weight_schedule.factor(epoch, epochs)``.

    Written in the recipe beside the objective (``{name: drloc, weight: 0.1, weight_schedule: {...}}``) and split
    off when the recipe is read; without ``weight``, the objective's ``default_weight`` (the paper's).
    """

    weight: float = Field(
        1.0, ge=0, description="how much its loss counts (default: the objective's own, below); 0: off"
    )
    weight_schedule: WeightSchedule = WeightSchedule()

    @field_validator("weight", mode="wrap")
    @classmethod
    def _weight_in_words(cls, value, handler):
        try:
            return handler(value)
        except ValidationError:
            raise ValueError("an objective weight must be a finite number >= 0 (0: off)") from None


def _expand_mae_position_labels(specs: list) -> list:
    """Run folders written before MAE composed with the apl/rpl objectives held them inside it
    (``{name: mae, position_labels: [{kind: apl, weight: 0.5}]}``, loss ``mae + Σ weight · label``): they become those
    objectives listed right after it with ``masked_by: mae`` and weight ``mae's weight × label weight``, the same loss.
    """
    expanded = []
    for spec in specs:
        if not (isinstance(spec, dict) and spec.get("name") == "mae" and "position_labels" in spec):
            expanded.append(spec)
            continue
        spec = dict(spec)
        labels = spec.pop("position_labels") or []
        if not isinstance(labels, list) or not all(isinstance(label, dict) and "kind" in label for label in labels):
            raise ConfigError(f"mae.position_labels={labels!r}: write a list of {{kind: apl or rpl, weight: w}}")
        expanded.append(spec)
        for label in labels:
            label = dict(label)
            kind, weight = label.pop("kind"), label.pop("weight", 0.5)
            if kind == "apl":
                label.pop("max_pairs", None)  # was accepted and unused
            shared = {key: spec[key] for key in ("weight_schedule", "views") if key in spec}
            factors = (spec.get("weight", 1.0), weight)
            numbers = all(isinstance(w, (int, float)) and not isinstance(w, bool) for w in factors)
            weight = factors[0] * weight if numbers else weight  # else validation names the bad one
            expanded.append({"name": kind, "weight": weight, "masked_by": "mae", **shared, **label})
    return expanded


def _split_objective(spec: Any, where: str) -> tuple[ObjectiveConfig, ObjectiveWeight]:
    """One ``objectives`` entry → (the objective's own config, its run-level weight and schedule)."""
    if isinstance(spec, ObjectiveConfig):
        return spec, ObjectiveWeight(weight=OBJECTIVES[spec.name].default_weight)
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}={spec!r} is not a mapping: write e.g. {{name: relations, weight: 0.5}}")
    own = {key: value for key, value in spec.items() if key not in ("weight", "weight_schedule")}
    if not isinstance(own.get("name"), str) or own["name"] not in OBJECTIVES:  # any value, also [] or "a\nb"
        known = ", ".join(sorted(OBJECTIVES))
        raise ConfigError(f"unknown objective {own.get('name')!r} in {where}: choose one of {known}")
    config = parse_objective_config(own, where)
    weight = spec.get("weight", OBJECTIVES[config.name].default_weight)
    try:
        return config, ObjectiveWeight(weight=weight, weight_schedule=spec.get("weight_schedule", {}))
    except ValidationError as err:
        raise validation_error(err, ObjectiveWeight, at=where) from None


class TrainConfig(Strict):
    epochs: int = Field(100, gt=0, description="epochs of this stage (`epochs=`)")
    batch_size: int = Field(128, gt=0, description="images per optimizer step and process (`batch_size=`)")
    accumulation: int = Field(1, gt=0, description="micro-batches per optimizer step")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="auto: bf16 autocast where the hardware makes it faster (CUDA, CPUs with AMX), else fp32"
    )
    compile: bool = Field(False, description="`torch.compile` the model")
    ema_decay: float | None = Field(
        None, gt=0, lt=1, description="keep an exponential moving average of the weights; null: off"
    )
    eval_every: int = Field(1, ge=0, description="epochs between evaluations; 0: only at the end")
    knn_every: int = Field(0, ge=0, description="epochs between online kNN evaluations; 0: off")
    log_every: int = Field(10, gt=0, description="optimizer steps between metric log lines")
    best_metric: str | None = Field(
        "val/supervised/acc1",
        description="validation metric that picks checkpoints/best.safetensors; None: no selection, the final "
        "weights are the run's result",
    )
    best_mode: Literal["max", "min"] | None = Field(None, description="None: min for a loss, max for anything else")

    @property
    def best_direction(self) -> Literal["max", "min"]:
        """``best_mode``, or what the metric implies: a loss is minimised, anything else maximised."""
        return self.best_mode or ("min" if (self.best_metric or "").endswith("loss") else "max")

    skip_nonfinite: int = Field(
        0, ge=0, description="optimizer steps with a non-finite loss to skip (counted in the metrics) before stopping"
    )
    seed: int = Field(0, ge=0, lt=2**32, description="seeds the weights, data order, augmentation and drop path")
    device: str = Field(
        "auto", description="auto (a CUDA GPU when there is one, else the CPU), cpu, cuda, cuda:N or mps (`device=`)"
    )
    time_limit_s: float | None = Field(
        None,
        gt=0,
        description="seconds of training (the loop: steps, validation, checkpoints; not loading the data or the final "
        "test) after which the run stops at the end of its step, evaluates, checkpoints and writes its summary; the "
        "learning-rate schedule still follows train.epochs; None: no limit",
    )
    time_budget_s: float | None = Field(
        None,
        gt=0,
        description="seconds of training (counted as train.time_limit_s) that the schedules follow instead of the "
        "steps: warm-up, then cosine to optim.min_lr as the budget is spent, when the run evaluates, checkpoints and "
        "writes its summary; train.epochs then bounds the run and scales schedules written in epochs; None: off",
    )
    max_steps: int | None = Field(
        None,
        gt=0,
        description="optimizer steps the schedules run over and the run ends after (at most train.epochs epochs; "
        "repeats a train.time_budget_s run by steps: its summary's time_budget.max_steps); None: train.epochs",
    )


class RunConfig(Strict):
    """One training stage: data → model → objectives → engine."""

    name: str = Field(
        "run", description="the stage's name: the run folder's prefix and a multi-stage run's stage folder"
    )
    description: str = Field("", description="one line shown by `smallvit recipes`")
    data: DataConfig = DataConfig()
    augment: dict[str, ViewSpec] = Field(
        {"main": ViewSpec(ops=[{"op": "random_crop", "padding": 4}, {"op": "hflip"}])},
        description="named views (`main`, or e.g. `large` and `small` for multi-crop); each objective reads the "
        "views it lists",
    )
    model: ModelConfig = Field(ModelConfig(), description="the backbone")
    objectives: list[SerializeAsAny[ObjectiveConfig]] = Field(
        default_factory=lambda: [parse_objective_config({"name": "supervised"})],
        description="the losses, summed with their weights; each entry is `{name: ..., weight: ..., <options>}` "
        "(see Objectives below)",
    )
    objective_weights: list[ObjectiveWeight] = Field(
        default_factory=lambda: [ObjectiveWeight()],
        description="one per objective, in order; split off the objectives entries (write weight beside each)",
    )
    optim: OptimConfig = Field(
        OptimConfig(), description="AdamW with per-group weight decay, linear warm-up then cosine decay"
    )
    train: TrainConfig = Field(TrainConfig(), description="the loop")

    @model_validator(mode="before")
    @classmethod
    def _legacy_eval_split(cls, data):
        """Run folders written before validation splits existed evaluated one split, ``data.eval_split``: it becomes
        the test split, nothing is carved out of their training set (so they rebuild exactly), and their best
        checkpoint is no longer selected (it was chosen on that split)."""
        legacy = isinstance(data, dict) and isinstance(data.get("data"), dict) and "eval_split" in data["data"]
        if legacy and isinstance(data.get("train", {}), dict):
            data = copy.deepcopy(data)
            data["data"]["test_split"] = data["data"].pop("eval_split")
            data["data"].setdefault("val_fraction", 0.0)
            data.setdefault("train", {})["best_metric"] = None
        return data

    @model_validator(mode="before")
    @classmethod
    def _objectives_by_name(cls, data):
        """Each ``objectives`` entry into the objective's own config (validated by its objective) and its run-level
        weight and schedule (``objective_weights``)."""
        if isinstance(data, dict) and "objective_weights" in data:
            raise ConfigError("objective_weights is not a recipe key: write weight and weight_schedule per objective")
        if isinstance(data, dict) and isinstance(data.get("objectives"), list):
            data = dict(data)
            entries = _expand_mae_position_labels(data["objectives"])
            split = [_split_objective(spec, f"objectives.{i}") for i, spec in enumerate(entries)]
            data["objectives"] = [config for config, _ in split]
            data["objective_weights"] = [weight for _, weight in split]
        return data

    @model_serializer(mode="wrap")
    def _weights_beside_objectives(self, handler) -> dict:
        """Written as read: each objective's weight and schedule inside its entry, as in a recipe."""
        data = handler(self)
        weights = data.pop("objective_weights")
        data["objectives"] = [{"name": o["name"], **w, **o} for o, w in zip(data["objectives"], weights, strict=True)]
        return data

    @model_validator(mode="after")
    def _views_exist(self):
        for objective in self.objectives:
            missing = [v for v in objective.views if v not in self.augment]
            if missing:
                raise ValueError(
                    f"objective '{objective.name}' reads view(s) {missing} that augment does not define "
                    f"(defined: {sorted(self.augment)})"
                )
        return self

    @model_validator(mode="after")
    def _masks_listed_first(self):
        """An objective ``masked_by`` another reads the mask it publishes in the same step: that one comes first."""
        for i, objective in enumerate(self.objectives):
            source = getattr(objective, "masked_by", None)
            if source is None:
                continue
            where = f"objectives.{i}.masked_by={source!r}"
            maskers = [o for o in self.objectives[:i] if o.name == source and OBJECTIVES[o.name].publishes_mask]
            if not maskers:
                options = ", ".join(sorted(name for name, cls in OBJECTIVES.items() if cls.publishes_mask))
                raise ConfigError(f"{where}: list a masking objective ({options}) of that name before {objective.name}")
            missing = [v for v in objective.views if v not in maskers[0].views]
            if missing:
                raise ConfigError(f"{where}: {source} does not mask view(s) {missing}: give {source} those views")
        return self

    def to_dict(self) -> dict:
        return self.model_dump(mode="json")


class Recipe(BaseModel):
    """A loaded recipe: its stages in order (one for most recipes) and its description."""

    name: str
    description: str
    stages: list[RunConfig]


# ---------------------------------------------------------------- loading


def recipe_dir() -> Path:
    return Path(str(resources.files("smallvit") / "recipes"))


def available_recipes() -> dict[str, str]:
    """Recipe name → one-line description, for every YAML shipped in ``smallvit/recipes``."""
    out = {}
    for path in sorted(recipe_dir().glob("*.yaml")):
        raw = yaml.safe_load(path.read_text()) or {}
        out[path.stem] = str(raw.get("description", "")).strip().splitlines()[0] if raw.get("description") else ""
    return out


def _recipe_path(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise ConfigError(f"recipe file '{name_or_path}' does not exist: check the path")
        return path
    shipped = recipe_dir() / f"{name_or_path}.yaml"
    if not shipped.is_file():
        known = ", ".join(available_recipes())
        raise ConfigError(f"unknown recipe '{name_or_path}': choose one of {known}, or give a path to a .yaml file")
    return shipped


def _deep_merge(base: dict, update: dict) -> dict:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _yaml_reason(err: Exception) -> str:
    """What is wrong with a YAML text, in a few words: the first line of YAML's message (a ``ValueError`` is a value
    YAML cannot build, such as the date 2021-02-30; a ``RecursionError``, nesting deeper than Python can follow)."""
    if isinstance(err, RecursionError):
        return "nested too deeply"
    return (str(err).splitlines() or [type(err).__name__])[0]


def read_yaml_mapping(path: Path, what: str) -> dict:
    """A YAML file that must hold a non-empty mapping (a recipe, a run's config), or one ConfigError line."""
    try:
        raw = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError, ValueError, RecursionError) as err:
        reason = "binary, not text" if isinstance(err, UnicodeDecodeError) else _yaml_reason(err)
        raise ConfigError(f"{what} '{path}' is not valid YAML ({reason}): fix or replace the file") from None
    except OSError as err:
        raise ConfigError(f"{what} '{path}' cannot be read ({err.strerror}): check the path") from None
    if raw is None:
        raise ConfigError(f"{what} '{path}' is empty: give at least a description, or base: quickstart")
    if not isinstance(raw, dict):
        raise ConfigError(f"{what} '{path}' must be a YAML mapping of keys to values")
    return raw


def _relative_to(recipe: Path, name_or_path: str) -> str:
    """A ``base:`` or ``stages:`` path, resolved against the folder of the recipe that names it (shipped names and
    absolute paths unchanged)."""
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml") and not candidate.is_absolute() and (recipe.parent / candidate).is_file():
        return str(recipe.parent / candidate)
    return name_or_path


def load_raw(name_or_path: str, _seen: tuple = ()) -> dict:
    """A recipe's YAML as a dict, with ``base:`` inheritance resolved (a relative path is taken from the recipe's own
    folder first, then the working directory)."""
    path = _recipe_path(name_or_path)
    if path.resolve() in _seen:
        raise ConfigError(f"recipe '{name_or_path}' inherits itself through 'base': break the cycle")
    raw = read_yaml_mapping(path, "recipe")
    raw.setdefault("name", path.stem)
    if not isinstance(raw["name"], str):
        raise ConfigError(f"recipe '{path}': name={raw['name']!r} must be a string")
    if "stages" in raw:
        if not isinstance(raw["stages"], list) or not all(isinstance(s, str) for s in raw["stages"]):
            stages = raw["stages"]
            raise ConfigError(f"recipe '{path}': stages={stages!r} must be a list of recipe names or .yaml paths")
        raw["stages"] = [_relative_to(path, s) for s in raw["stages"]]
    base = raw.pop("base", None)
    if base is not None and not isinstance(base, str):
        raise ConfigError(f"recipe '{path}': base={base!r} must be a recipe name or a .yaml path")
    if base:
        parent = load_raw(_relative_to(path, base), _seen + (path.resolve(),))
        parent.pop("description", None)
        raw = _deep_merge(parent, raw)
        raw["name"] = path.stem
    return raw


def split_override(pair: str) -> tuple[str, str]:
    """``"epochs=5"`` → ``("train.epochs", "5")``: an override's full dotted key (an alias expanded) and the text of
    its value."""
    key, sep, value = pair.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {pair!r} is not key=value: write e.g. train.epochs=5")
    return ALIASES.get(key, key), value


def override_value(args: list[str], key: str) -> str | None:
    """The text that the last override of the dotted ``key`` (written in full or as its alias) among ``args`` sets,
    or None; arguments that are not overrides (a recipe name) are passed over."""
    for arg in reversed(args):
        try:
            name, value = split_override(arg)
        except ConfigError:
            continue
        if name == key:
            return value
    return None


def parse_overrides(pairs: list[str]) -> list[tuple[list[str], Any]]:
    """``["train.epochs=5", "dataset=svhn"]`` → ``[(["train", "epochs"], 5), (["data", "dataset"], "svhn")]``."""
    parsed = []
    for pair in pairs:
        key, value = split_override(pair)
        try:
            parsed.append((key.split("."), yaml.safe_load(value) if value else None))
        except (yaml.YAMLError, ValueError, RecursionError) as err:
            raise ConfigError(f"override {pair!r}: the value is not valid YAML ({_yaml_reason(err)})") from None
    return parsed


def _index(node: dict | list, key: str, dotted: str) -> str | int:
    """``key`` as a checked list index when ``node`` is a list, else unchanged."""
    if isinstance(node, dict):
        return key
    if not isinstance(node, list):
        raise ConfigError(f"override {dotted!r}: {key!r} is inside {node!r}, a value, not a mapping or a list")
    if not key.isdigit() or int(key) >= len(node):
        raise ConfigError(f"override {dotted!r}: {key!r} is not an index below {len(node)}")
    return int(key)


def apply_overrides(raw: dict, overrides: list[tuple[list[str], Any]]) -> dict:
    """Set each dotted key in a copy of ``raw``; list items are addressed by index (``objectives.1.weight``)."""
    raw = copy.deepcopy(raw)
    for keys, value in overrides:
        dotted = ".".join(keys)
        node = raw
        for key in keys[:-1]:
            key = _index(node, key, dotted)
            if isinstance(node, dict) and not isinstance(node.get(key), (dict, list)):
                node[key] = {}
            node = node[key]
        node[_index(node, keys[-1], dotted)] = value
    return raw


def validate_run(raw: dict, where: str) -> RunConfig:
    """Validate one stage's dict, turning pydantic's report into one line naming the key, value and fix."""
    try:
        return RunConfig.model_validate(raw)
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None
    except ValidationError as err:
        raise validation_error(err, RunConfig, where) from None


def load_recipe(name_or_path: str, overrides: list[str] | None = None) -> Recipe:
    """Load, inherit, override and validate a recipe. Overrides apply to every stage."""
    parsed = parse_overrides(overrides or [])
    raw = load_raw(name_or_path)
    if "stages" in raw:
        extra = set(raw) - {"stages", "name", "description"}
        if extra:
            extra = sorted(map(str, extra))
            raise ConfigError(f"recipe {raw['name']!r} has stages and also {extra}: put those in the stages")
        stage_raws = [load_raw(stage) for stage in raw["stages"]]
    else:
        stage_raws = [raw]
    stages = [
        validate_run(apply_overrides(stage, parsed), f"recipe {quoted(str(stage.get('name', raw['name'])))}")
        for stage in stage_raws
    ]
    description = str(raw.get("description", "")).strip()
    return Recipe(name=raw["name"], description=description, stages=stages)


# ---------------------------------------------------------------- the launch


@dataclass(frozen=True)
class DistributedEnv:
    """This process's place in a ``torchrun`` launch; a process started otherwise is rank 0 of 1."""

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0, which alone checks and locks the run folder."""
        return self.rank == 0


def distributed_env() -> DistributedEnv:
    """The ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK`` that ``torchrun`` sets (each unset one: a single process's)."""
    return DistributedEnv(
        world_size=int(os.environ.get("WORLD_SIZE", "1")),
        rank=int(os.environ.get("RANK", "0")),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
    )
