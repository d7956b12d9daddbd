"""Training objectives: one file per method behind the interface in :mod:`smallvit.objectives.base`.

Importing this package registers every objective.
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
    "Objective",
    "ObjectiveConfig",
    "ObjectiveOutput",
    "ObjectiveSetup",
    "StepContext",
    "build_objective",
    "parse_objective_config",
    "register_objective",
]
