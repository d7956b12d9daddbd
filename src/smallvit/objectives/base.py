"""The one interface every training signal implements.

An objective is an ``nn.Module`` with a registry name and a pydantic config. It is called with a
:class:`StepContext` (the batch's views and a cached ``encode``) and returns an :class:`ObjectiveOutput`
(a loss and scalar metrics). A subclass writes only :meth:`Objective.view_loss`, the loss and metrics of one view;
:meth:`Objective.forward` runs it on each view of ``config.views`` and reduces them one way, the mean over views
(:func:`mean_over_views`). It may own heads: their parameters are trained, checkpointed, and dropped on export.

How much an objective counts in a run, its weight and weight schedule, belongs to the run configuration
(:class:`smallvit.config.ObjectiveWeight`), not to the objective: its loss is unweighted.

Adding a method means adding one file that subclasses :class:`Objective` (or :class:`GridObjective`, for tasks
on the token grid) and decorates it with :func:`register_objective`; the engine needs no change.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from pydantic import Field, ValidationError
from torch import Tensor, nn

from smallvit.data.batch import Batch, View
from smallvit.errors import ConfigError, SmallViTError, Strict, validation_error
from smallvit.models.backbone import PRESETS, BackboneOutput
from smallvit.objectives.grid import check_grid, check_min_tokens, original_positions


class ObjectiveConfig(Strict):
    """Fields every objective accepts; subclasses add their own (unknown keys are rejected)."""

    name: str = Field(..., description="the objective (see Objectives below)")
    views: list[str] = Field(
        ["main"], description="the views of `augment` it reads; losses and metrics are averaged over them"
    )


@dataclass(frozen=True)
class ObjectiveSetup:
    """What an objective may know when it is built: backbone geometry and dataset sizes."""

    embed_dim: int
    grid: tuple[int, int]
    patch_size: int
    img_size: int
    in_chans: int
    num_classes: int
    num_train: int
    has_cls_token: bool = True
    has_pos_embed: bool = True
    has_patch_tokens: bool = True


@dataclass
class StepContext:
    """One step's inputs: the batch's views, and the backbone's encodings of them, each computed once.

    A masking objective (MAE) publishes the tokens it keeps of a view with :meth:`publish_mask`; objectives
    configured ``masked_by`` it read them with :meth:`mask` and encode the same visible tokens, from the cache.
    """

    batch: Batch
    backbone: nn.Module
    training: bool = True
    epoch: int = 0
    _encoded: dict = field(default_factory=dict)
    _masks: dict = field(default_factory=dict)

    def view(self, name: str) -> View:
        return self.batch.views[name]

    def encode(self, name: str = "main", keep: Tensor | None = None) -> BackboneOutput:
        """The backbone's output on view ``name``, run once per (view, ``keep``) and cached.

        ``keep`` [B, K]: indices of the patches to encode (a masked forward, MAE's visible tokens); the cache is keyed
        by the tensor's identity, so objectives that pass the same ``keep`` share one forward.
        """
        view = self.batch.views[name]
        key = (id(view), None if keep is None else id(keep))
        if key not in self._encoded:
            encoded = self.backbone(view.images) if keep is None else self.backbone(view.images, keep=keep)
            self._encoded[key] = (keep, encoded)  # holding ``keep`` keeps its id from being reused this step
        return self._encoded[key][1]

    def publish_mask(self, objective: str, view: str, keep: Tensor) -> None:
        """Record the patch indices [B, K] that ``objective`` keeps visible of ``view`` this step."""
        self._masks[(objective, view)] = keep

    def mask(self, objective: str, view: str) -> Tensor:
        """The patch indices ``objective`` published for ``view`` this step (it must run first)."""
        if (objective, view) not in self._masks:
            raise ConfigError(
                f"no '{objective}' mask for view '{view}' in this step: list {objective} before the objectives "
                f"with masked_by: {objective}, on the same views"
            )
        return self._masks[(objective, view)]


@dataclass
class ObjectiveOutput:
    """A loss (``None`` when the objective has nothing to say in this phase) and scalar metrics."""

    loss: Tensor | None
    metrics: dict[str, Tensor | float] = field(default_factory=dict)


def _mean(values: list[Tensor | float]) -> Tensor | float:
    if len(values) == 1:
        return values[0]
    return torch.stack([torch.as_tensor(v, dtype=torch.float32) for v in values]).mean()


def mean_over_views(outputs: dict[str, ObjectiveOutput]) -> ObjectiveOutput:
    """Reduce per-view outputs: the loss is the mean of the views' losses (``None`` if no view has one), each metric
    the mean over the views that report it. With several views, each view's loss and metrics are also kept under
    ``<view>/`` (``large/acc1``)."""
    losses = [out.loss for out in outputs.values() if out.loss is not None]
    keys = dict.fromkeys(key for out in outputs.values() for key in out.metrics)
    metrics = {key: _mean([out.metrics[key] for out in outputs.values() if key in out.metrics]) for key in keys}
    if len(outputs) > 1:
        for view, out in outputs.items():
            if out.loss is not None:
                metrics[f"{view}/loss"] = out.loss.detach()
            metrics.update({f"{view}/{key}": value for key, value in out.metrics.items()})
    return ObjectiveOutput(torch.stack(losses).mean() if losses else None, metrics)


def top1(logits: Tensor, targets: Tensor, dim: int = -1) -> Tensor:
    """Fraction of the ``targets`` whose class has the highest of the ``logits`` along ``dim`` (a tie counts as a hit).

    Two passes (``amax``, ``gather``) instead of ``argmax``, whose CPU kernel over a non-last dimension is slow:
    on relation scores [128, 9, 196, 196] (``dim=1``) 30 ms of CPU time against 820 ms.
    """
    logits = logits.detach()
    return (logits.gather(dim, targets.unsqueeze(dim)) == logits.amax(dim, keepdim=True)).float().mean()


class Objective(nn.Module):
    """Base class. Subclasses set ``name`` and ``Config`` and implement :meth:`view_loss`.

    ``default_weight``: the run-level weight of the objective when a recipe gives none (the paper's).
    ``requires_labels``: the objective reads class labels (the engine checks the dataset has them).
    ``requires_patch_tokens``: the objective reads ``patch_tokens`` (:func:`build_objective` refuses a backbone
    without them, a CNN); only objectives on the pooled feature set it False.
    ``publishes_mask``: the objective encodes a subset of each view's patches and publishes it
    (:meth:`StepContext.publish_mask`), so other objectives may name it in ``masked_by``.
    """

    name: ClassVar[str]
    Config: ClassVar[type[ObjectiveConfig]] = ObjectiveConfig
    default_weight: ClassVar[float] = 1.0
    requires_labels: ClassVar[bool] = False
    requires_patch_tokens: ClassVar[bool] = True
    publishes_mask: ClassVar[bool] = False

    def __init__(self, config: ObjectiveConfig, setup: ObjectiveSetup):
        super().__init__()
        self.config = config
        self.setup = setup

    def forward(self, ctx: StepContext) -> ObjectiveOutput:
        """:meth:`view_loss` on each of ``config.views``, reduced by :func:`mean_over_views`."""
        return mean_over_views({view: self.view_loss(ctx, view) for view in self.config.views})

    def view_loss(self, ctx: StepContext, view: str) -> ObjectiveOutput:
        """The loss and metrics of one view (``acc1`` for top-1 accuracy)."""
        raise NotImplementedError

    def classifier_state(self) -> dict[str, Tensor] | None:
        """A ``head.weight``/``head.bias`` classifier to export with the backbone, if this objective has one."""
        return None


@dataclass
class Tokens:
    """A view's patch tokens [B, K, D] on its token ``grid``; ``positions`` [B, K] is the grid index of the patch at
    each token (``None``: all N tokens in grid order), the argument every label helper of :mod:`.grid` takes."""

    tokens: Tensor
    grid: tuple[int, int]
    positions: Tensor | None


class GridObjectiveConfig(ObjectiveConfig):
    masked_by: str | None = Field(
        None, description="read only the patches this masking objective (mae) keeps visible, from its masked encoding"
    )


class GridObjective(Objective):
    """An objective on the patch tokens of the token grid (RelViT's tasks, position labels, DRLoc).

    Needs at least 2 tokens; its heads and its labels ``grid_labels(h, w)`` (per position or per pair of positions)
    are sized for the backbone's grid, which every encoded view must have. The labels are built once, as the
    non-persistent buffer ``labels`` (they follow the module to its device and stay out of checkpoints).
    :meth:`tokens` reads a view's tokens and their grid positions, or with ``masked_by`` only the tokens the named
    masking objective keeps visible (the positions are then those of the visible patches).
    """

    Config = GridObjectiveConfig
    grid_labels: ClassVar[Callable[[int, int], Tensor]]

    def __init__(self, config: GridObjectiveConfig, setup: ObjectiveSetup):
        super().__init__(config, setup)
        check_min_tokens(self.name, setup.grid)
        self.register_buffer("labels", self.grid_labels(*setup.grid), persistent=False)

    def tokens(self, ctx: StepContext, view: str) -> Tokens:
        patch_order = ctx.view(view).patch_order
        if self.config.masked_by is None:
            encoded, positions = ctx.encode(view), patch_order
        else:
            keep = ctx.mask(self.config.masked_by, view)
            encoded, positions = ctx.encode(view, keep), original_positions(keep, patch_order)
        check_grid(self.name, self.setup.grid, encoded.grid, self.setup.patch_size)
        return Tokens(encoded.patch_tokens, encoded.grid, positions)


OBJECTIVES: dict[str, type[Objective]] = {}


def register_objective(cls: type[Objective]) -> type[Objective]:
    """Class decorator adding an objective to the registry under ``cls.name``; a name is registered once."""
    if cls.name in OBJECTIVES:
        taken = OBJECTIVES[cls.name]
        raise SmallViTError(
            f"objective name '{cls.name}' is already registered by {taken.__module__}.{taken.__qualname__}: "
            f"give {cls.__qualname__} another name"
        )
    OBJECTIVES[cls.name] = cls
    return cls


def parse_objective_config(spec: dict, where: str = "objectives") -> ObjectiveConfig:
    """Validate one objective's own config (``name`` and its fields; no weight) against its objective's model."""
    name = spec.get("name")
    if name not in OBJECTIVES:
        raise ConfigError(f"unknown objective '{name}' in {where}: choose one of {', '.join(sorted(OBJECTIVES))}")
    if run_level := [key for key in ("weight", "weight_schedule") if key in spec]:
        raise ConfigError(
            f"{where}[{name}].{run_level[0]}: an objective's weight and its schedule belong to the run: give them in a "
            "recipe's objectives entry, or multiply the objective's loss in your own loop"
        )
    try:
        return OBJECTIVES[name].Config.model_validate(spec)
    except ValidationError as err:
        raise validation_error(err, OBJECTIVES[name].Config, at=f"{where}[{name}]") from None


def build_objective(config: ObjectiveConfig, setup: ObjectiveSetup) -> Objective:
    cls = OBJECTIVES[config.name]
    if cls.requires_patch_tokens and not setup.has_patch_tokens:
        cnn = [name for name, preset in PRESETS.items() if preset.family == "cnn"]
        tokens = [name for name, preset in PRESETS.items() if preset.family != "cnn"]
        raise ConfigError(
            f"objective '{config.name}' needs patch tokens, which CNN presets ({', '.join(cnn)}) do not have: "
            f"set model.preset to a ViT or Swin preset ({', '.join(tokens)})"
        )
    return cls(config, setup)
