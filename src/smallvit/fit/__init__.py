"""``smallvit fit FOLDER``: from a folder of images in class folders to a trained, exported and explained model.

:func:`fit_folder` (:mod:`~smallvit.fit.orchestration`) runs the steps in order, each usable alone:

1. :func:`scan_folder` (:mod:`~smallvit.fit.scan`) — the folder's layout, classes, image counts, sizes, modes and
   unreadable files (headers only);
2. :func:`choose_recipe`, :func:`choose_geometry` and :func:`choose_batch` (:mod:`~smallvit.fit.rules`) — the recipe
   (by a table of rules, each measured on a kind of folder and citing the results it rests on; a folder of no
   measured kind gets the crop + flip baseline; ``--recipe`` overrides them: :func:`given_recipe`), the image size,
   patch size and channels, and the batch size and learning rate, each with its rule id and reason;
3. decoding every split once into the decoded-split cache (timed, reported, not counted in the budget);
4. :func:`measure_speed` (:mod:`~smallvit.fit.speed`) — optimizer steps of the chosen model at the chosen size after
   a warm-up one, an evaluation batch and a checkpoint write; :func:`plan_epochs` (:mod:`~smallvit.fit.plan`) — the
   budget split into fit's own parts and the training loop's time, passed to the engine as ``train.time_budget_s``;
   a plan of fewer than 10 epochs or 200 steps is refused in one line naming a budget that would be enough
   (``--force`` trains anyway);
5. training through the engine (:func:`smallvit.engine.runner.run_recipe`), which also draws the run's pictures;
6. the export in ``<run>/export/`` with its model card (:func:`smallvit.export.export_folder`), and
   ``<run>/report.md`` (:mod:`~smallvit.fit.report`): the data, every choice, its rule and evidence, training steps
   and equivalent epochs, accuracy (balanced accuracy beside top-1 on an unbalanced test split), per-class accuracy,
   the confusion matrix and the worst-classified validation images.
"""

from smallvit.fit.orchestration import (
    Choices,
    choose,
    fit_folder,
    fit_overrides,
    validation_source,
)
from smallvit.fit.plan import (
    MIN_EPOCHS,
    MIN_STEPS,
    EpochPlan,
    duration_text,
    fit_parts,
    given_epochs,
    parse_duration,
    plan_epochs,
    too_little,
)
from smallvit.fit.report import (
    batch_line,
    class_overview,
    geometry_line,
    plan_line,
    recipe_line,
    summary_lines,
    write_report,
)
from smallvit.fit.result import FitResult
from smallvit.fit.rules import (
    BASELINE_RECIPE,
    CONV_TOKENIZER_MAX_SIZE,
    DECODED_MEMORY_BYTES,
    FALLBACK_RULE,
    KIND_FACTOR,
    MANY_CLASSES_RECIPE,
    MAX_IMAGE_SIZE,
    MIN_IMAGE_SIZE,
    RECIPE_RULES,
    RESULTS_PAGE,
    SMALL_DATA_RECIPE,
    TOKEN_GRID,
    BatchChoice,
    Evidence,
    Geometry,
    Kind,
    RecipeChoice,
    RecipeRule,
    choose_batch,
    choose_geometry,
    choose_recipe,
    given_recipe,
)
from smallvit.fit.scan import FolderSummary, check_folder, scan_folder
from smallvit.fit.speed import Speed, measure_speed

__all__ = [
    "BASELINE_RECIPE",
    "CONV_TOKENIZER_MAX_SIZE",
    "DECODED_MEMORY_BYTES",
    "FALLBACK_RULE",
    "KIND_FACTOR",
    "MAX_IMAGE_SIZE",
    "MIN_EPOCHS",
    "MIN_IMAGE_SIZE",
    "MIN_STEPS",
    "RECIPE_RULES",
    "RESULTS_PAGE",
    "MANY_CLASSES_RECIPE",
    "SMALL_DATA_RECIPE",
    "TOKEN_GRID",
    "BatchChoice",
    "Choices",
    "EpochPlan",
    "Evidence",
    "FitResult",
    "FolderSummary",
    "Geometry",
    "Kind",
    "RecipeChoice",
    "RecipeRule",
    "Speed",
    "batch_line",
    "check_folder",
    "choose",
    "choose_batch",
    "choose_geometry",
    "choose_recipe",
    "class_overview",
    "duration_text",
    "fit_folder",
    "fit_overrides",
    "fit_parts",
    "geometry_line",
    "given_epochs",
    "given_recipe",
    "measure_speed",
    "parse_duration",
    "plan_epochs",
    "plan_line",
    "recipe_line",
    "scan_folder",
    "summary_lines",
    "too_little",
    "validation_source",
    "write_report",
]
