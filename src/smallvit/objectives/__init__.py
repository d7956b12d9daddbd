"""Training objectives: one file per method behind the interface in :mod:`smallvit.objectives.base`.

Importing this package registers every objective. Each method's file also has a tensor-level loss for a loop of your
own: ``relation_loss``, ``pair_regression_loss`` (relations), ``absolute_position_loss``, ``relative_position_loss``
(position_labels), ``drloc_loss``, ``mae_loss``, ``instance_discrimination_loss``; supervised training's is
:func:`smallvit.data.mixing.mixed_cross_entropy`.
"""

from smallvit.objectives import (  # noqa: F401  (registers)
    drloc,
    instance_discrimination,
    mae,
    position_labels,
    relations,
    supervised,
)
from smallvit.objectives.base import (
    OBJECTIVES,
    GridObjective,
    GridObjectiveConfig,
    Objective,
    ObjectiveConfig,
    ObjectiveOutput,
    ObjectiveSetup,
    StepContext,
    build_objective,
    parse_objective_config,
    register_objective,
)

__all__ = [
    "OBJECTIVES",
    "GridObjective",
    "GridObjectiveConfig",
    "Objective",
    "ObjectiveConfig",
    "ObjectiveOutput",
    "ObjectiveSetup",
    "StepContext",
    "build_objective",
    "parse_objective_config",
    "register_objective",
]
