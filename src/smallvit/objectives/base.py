"""The one interface every training signal implements.

An objective is an ``nn.Module`` with a registry name and a pydantic config. It is called with a
:class:`StepContext` (the batch's views and a cached ``encode``) and returns an :class:`ObjectiveOutput`
(a loss and scalar metrics). It may own heads: their parameters are trained, checkpointed, and dropped on
export. A run is a list of objectives, each with a weight that may follow a schedule.

Adding a method means adding one file that subclasses :class:`Objective` and decorates it with
:func:`register_objective`; the engine needs no change.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError
from torch import Tensor, nn

from smallvit.data.batch import Batch, View
from smallvit.engine.schedules import WeightSchedule
from smallvit.errors import ConfigError
from smallvit.models.backbone import PRESETS, BackboneOutput


class ObjectiveConfig(BaseModel):
    """Fields every objective accepts; subclasses add their own (unknown keys are rejected)."""

    model_config = ConfigDict(extra="forbid")

    name: str
    weight: float = 1.0
    weight_schedule: WeightSchedule = WeightSchedule()
    views: list[str] = ["main"]


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
    """One step's inputs. ``encode(view)`` runs the backbone on a view once and caches the result."""

    batch: Batch
    backbone: nn.Module
    training: bool = True
    epoch: int = 0
    _cache: dict = field(default_factory=dict)

    def view(self, name: str) -> View:
        return self.batch.views[name]

    def encode(self, name: str = "main") -> BackboneOutput:
        view = self.batch.views[name]
        key = id(view)
        if key not in self._cache:
            self._cache[key] = self.backbone(view.images)
        return self._cache[key]


@dataclass
class ObjectiveOutput:
    """A loss (``None`` when the objective has nothing to say in this phase) and scalar metrics."""

    loss: Tensor | None
    metrics: dict[str, Tensor | float] = field(default_factory=dict)


class Objective(nn.Module):
    """Base class. Subclasses set ``name``, ``Config`` and implement ``forward(ctx)``.

    ``requires_labels``: the objective reads class labels (the engine checks the dataset has them).
    ``requires_patch_tokens``: the objective reads ``patch_tokens`` (:func:`build_objective` refuses a backbone
    without them, a CNN); only objectives on the pooled feature set it False.
    """

    name: ClassVar[str]
    Config: ClassVar[type[ObjectiveConfig]] = ObjectiveConfig
    requires_labels: ClassVar[bool] = False
    requires_patch_tokens: ClassVar[bool] = True

    def __init__(self, config: ObjectiveConfig, setup: ObjectiveSetup):
        super().__init__()
        self.config = config
        self.setup = setup

    def forward(self, ctx: StepContext) -> ObjectiveOutput:
        raise NotImplementedError

    def classifier_state(self) -> dict[str, Tensor] | None:
        """A ``head.weight``/``head.bias`` classifier to export with the backbone, if this objective has one."""
        return None


OBJECTIVES: dict[str, type[Objective]] = {}


def register_objective(cls: type[Objective]) -> type[Objective]:
    """Class decorator adding an objective to the registry under ``cls.name``."""
    OBJECTIVES[cls.name] = cls
    return cls


def _first_error(err: ValidationError, where: str) -> ConfigError:
    first = err.errors()[0]
    key = ".".join(str(p) for p in first["loc"])
    value = first.get("input")
    return ConfigError(f"{where}.{key}={value!r}: {first['msg']}")


def parse_objective_config(spec: dict, where: str = "objectives") -> ObjectiveConfig:
    """Validate one ``objectives`` entry against its objective's own config model."""
    name = spec.get("name")
    if name not in OBJECTIVES:
        raise ConfigError(f"unknown objective '{name}' in {where}: choose one of {', '.join(sorted(OBJECTIVES))}")
    try:
        return OBJECTIVES[name].Config.model_validate(spec)
    except ValidationError as err:
        raise _first_error(err, f"{where}[{name}]") from None


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
