"""What ``smallvit fit`` tells: short lines on the console (the folder, one line per choice with its rule), and
``<run>/report.md`` with everything else (the data per class, every choice and the results it rests on, training,
accuracy, pictures, how to use the model)."""

from __future__ import annotations

import json
from pathlib import Path

from rich.table import Table

from smallvit.fit.plan import EpochPlan
from smallvit.fit.result import FitResult
from smallvit.fit.rules import KIND_FACTOR, RECIPE_RULES, RESULTS_PAGE, BatchChoice, Geometry, RecipeChoice, cite
from smallvit.fit.scan import FolderSummary, distribution
from smallvit.metrics.classification import balanced_accuracy_from_per_class

MAX_TABLE_CLASSES = 20  # more classes: one line of images per class (min / median / max) instead of a table


# ---------------------------------------------------------------- the console


def class_overview(summary: FolderSummary) -> Table | str:
    """Images per class and split: a table up to :data:`MAX_TABLE_CLASSES` classes, else one line of the classes
    and the images per class (min / median / max) of each split."""
    splits = list(summary.counts)
    if len(summary.classes) <= MAX_TABLE_CLASSES:
        table = Table("class", *splits)
        for name in summary.classes:
            table.add_row(name, *(str(summary.counts[split][name]) for split in splits))
        return table
    spread = []
    for split in splits:
        stats = distribution(list(summary.counts[split].values()))
        spread.append(f"{split} {stats['min']} / {stats['median']:g} / {stats['max']}")
    return f"{len(summary.classes)} classes; images per class (min / median / max): " + ", ".join(spread)


def summary_lines(summary: FolderSummary, unreadable: bool = True) -> list[str]:
    """The folder in a few lines: classes and images, sizes, modes, formats (and the first unreadable file)."""
    sides = distribution(summary.short_sides)
    widths = distribution([size[0] for size in summary.sizes])
    heights = distribution([size[1] for size in summary.sizes])
    lines = [
        f"{summary.folder}: {len(summary.classes)} classes, {summary.total} readable images",
        f"image sizes: width {widths['min']}–{widths['max']} (median {widths['median']:g}), height "
        f"{heights['min']}–{heights['max']} (median {heights['median']:g}); shorter side median {sides['median']:g} px",
        "modes: " + ", ".join(f"{mode} {count}" for mode, count in summary.modes.most_common()),
        "formats: " + ", ".join(f"{name} {count}" for name, count in summary.formats.most_common()),
    ]
    if summary.unreadable and unreadable:
        first = summary.unreadable[0]
        lines.append(f"unreadable files: {len(summary.unreadable)}, the first {first[0]} ({first[1]})")
    return lines


def recipe_line(choice: RecipeChoice) -> str:
    return f"recipe: {choice.text} (rule {choice.rule}: {choice.reason})"


def geometry_line(geometry: Geometry) -> str:
    return (
        f"geometry: {geometry.image_size} px, patch {geometry.patch_size}, {geometry.grid}x{geometry.grid} tokens "
        f"(rule {geometry.rule}: {geometry.size_reason})"
    )


def batch_line(batch: BatchChoice) -> str:
    return f"batch: {batch.batch_size}, lr {batch.lr:.3g} (rule {batch.rule}: {batch.reason})"


def plan_line(plan: EpochPlan) -> str:
    return f"training: {plan.expected_epochs:.1f} epochs, {plan.steps} steps (rule {plan.rule}: {plan.reason})"


# ---------------------------------------------------------------- numbers


def percent(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.2f} %"


# ---------------------------------------------------------------- report.md


def _headline(result: FitResult, keys: tuple[str, str], has_test: bool) -> str:
    final, best = result.run_summary.get("final", {}), result.run_summary.get("best", {})
    accuracy_key, test_key = keys
    headline = f"Validation top-1 **{percent(final.get(accuracy_key))}** (final weights)"
    if best.get("value") is not None:
        headline += f", **{percent(best['value'])}** (best checkpoint, epoch {result.best_epoch}, exported)"
    if not has_test:
        return headline + (
            "; no test split (the validation images chose the checkpoint, so their accuracy is slightly optimistic: "
            "put images in FOLDER/test/<class>/ for an unbiased number)."
        )
    best_test = (best.get("test") or {}).get(test_key)
    if best_test is None:
        headline += f"; test top-1 **{percent(final.get(test_key))}** (final weights, exported)"
    else:
        headline += f"; test top-1 of the exported checkpoint **{percent(best_test)}**"
        headline += f" (final weights {percent(final.get(test_key))})"
    if result.test_classes:
        balanced = balanced_accuracy_from_per_class(result.test_classes["per_class"])
        headline += f", balanced accuracy (mean per-class recall) **{percent(balanced)}**: the test split is unbalanced"
    return headline + "."


def _data_section(result: FitResult) -> list[str]:
    summary = result.summary
    splits = result.run_summary.get("provenance", {}).get("splits", {})
    columns = dict(summary.counts)
    if summary.carves_val and "val" in splits:  # as trained: train/ less the validation images held out of it
        for role, heading in (("train", "trained"), ("val", "val, held out of train/")):
            columns[heading] = dict(zip(summary.classes, splits[role]["per_class"]))
    lines = ["## Data", "", "| class | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for name in summary.classes:
        lines.append(f"| {name} | " + " | ".join(str(counts[name]) for counts in columns.values()) + " |")
    lines += [""] + [f"- {line}" for line in summary_lines(summary, unreadable=False)]
    lines.append(f"- validation: {result.validation}")
    if summary.unreadable:
        lines.append(f"- unreadable files, left out ({len(summary.unreadable)}):")
        lines += [f"  - `{path}`: {why}" for path, why in summary.unreadable[:20]]
    if (result.run_dir / "skipped_files.txt").is_file():
        lines.append("- every file left out while decoding: `skipped_files.txt`")
    if splits:
        lines.append("- images per split as trained: " + ", ".join(f"{r} {i['images']}" for r, i in splits.items()))
    decode = "draft: JPEGs decoded at reduced scale, EXIF orientation applied"
    lines += [f"- decoding: {result.decode_s:.1f} s ({decode}), not counted in the budget", ""]
    return lines


def _choices_section(result: FitResult) -> list[str]:
    geometry, recipe, batch, plan = result.geometry, result.recipe, result.batch, result.plan
    has_test = "test" in result.summary.counts
    forced = " (trained with --force although too little)" if result.forced else ""
    return [
        "## Choices",
        "",
        "| choice | value | rule | why |",
        "|---|---|---|---|",
        f"| image size | {geometry.image_size} px | `{geometry.rule}` | {geometry.size_reason} |",
        f"| patch size | {geometry.patch_size} px | `{geometry.rule}` | {geometry.patch_reason} |",
        f"| channels | {geometry.in_chans} | `{geometry.rule}` | {geometry.channels_reason} |",
        f"| recipe | `{recipe.text}` | `{recipe.rule}` | {recipe.reason} |",
        f"| batch | {batch.batch_size}, lr {batch.lr:.3g} | `{batch.rule}` | {batch.reason} |",
        f"| training | {plan.expected_epochs:.1f} epochs, {plan.steps} steps{forced} | `{plan.rule}` | {plan.reason} |",
        f"| validation | {result.validation} | | chooses the best checkpoint, which is exported |",
        f"| test | {'test/' if has_test else 'none'} | | {'reported once, chooses nothing' if has_test else 'none'} |",
        f"| augmentation | random crop (padding {geometry.patch_size} px = one patch) + flip | | the recipe's, "
        "shifted by up to one patch at every size as at 32 px / patch 4 |",
        "",
        "The rules are data in `smallvit/fit/rules.py` (`RECIPE_RULES`, `FALLBACK_RULE`, `choose_geometry`, "
        f"`choose_batch`) and `smallvit/fit/plan.py`; the exact run is `config.yaml`, the overrides "
        f"`{' '.join(result.overrides)}`.",
        "",
    ]


def _evidence_section(recipe: RecipeChoice) -> list[str]:
    lines = ["## Evidence", ""]
    if recipe.rule == "given":
        lines += [f"The recipe was given with `--recipe`; no rule chose it. The rules' results ({RESULTS_PAGE}):", ""]
        return [*lines, *_rule_lines(), ""]
    if recipe.unmeasured:
        lines += ["Nothing was measured for this kind of folder: " + "; ".join(recipe.unmeasured) + "."]
        lines += [f"fit therefore trains the baseline `{recipe.recipe}`. What each rule was measured on:", ""]
        lines += [*_rule_lines(), ""]
    lines += [f"Rule `{recipe.rule}` rests on these results ({RESULTS_PAGE}):", ""]
    lines += [f"- {evidence.citation}: {evidence.shows}" for evidence in recipe.evidence] or ["- none yet"]
    return [*lines, ""]


def _rule_lines() -> list[str]:
    """One line per rule of the recipe table: its recipe, the kind of folder it was measured on and the folders it
    fires for."""
    return [
        f"- rule `{rule.id}` (`{rule.recipe}`): measured on {rule.kind.measured}; fires for {rule.kind.bounds} (each "
        f"within a factor of {KIND_FACTOR}); {cite(rule.evidence)}"
        for rule in RECIPE_RULES
        if rule.kind
    ]


def _budget_lines(result: FitResult) -> list[str]:
    plan, run = result.plan, result.run_summary
    lines = [
        f"- {run.get('steps')} optimizer steps of {result.batch.batch_size} images, equal to "
        f"{run.get('epochs_run') or 0:.3g} epochs of {plan.steps_per_epoch} steps",
        f"- {run.get('training_s') or 0:.0f} s of training (steps, validation, checkpoints), "
        f"{run.get('images_per_s') or 0:.0f} training images/s on {run.get('device')} ({run.get('precision')})",
    ]
    if result.budget_s is not None and plan.train_s is not None:
        parts = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in plan.fit_parts.items())
        lines.append(
            f"- the {result.budget_s:.0f} s budget: {plan.train_s:.0f} s for the training loop, {plan.fit_s:.0f} s "
            f"for fit's own parts ({parts})"
        )
    spent = f"- after decoding: {result.after_decoding_s:.0f} s (measuring {result.measure_s:.0f} s, training "
    spent += f"{result.train_s:.0f} s, export and report {result.report_s:.0f} s)"
    if result.slowdown and result.slowdown > 1.1:
        spent += f"; epochs ran at {result.slowdown:.2f}x the measured time (other work on the machine)"
    lines.append(spent)
    return lines


def _results_section(result: FitResult, keys: tuple[str, str], has_test: bool, analysis: dict) -> list[str]:
    final, best = result.run_summary.get("final", {}), result.run_summary.get("best", {})
    accuracy_key, test_key = keys
    lines = ["## Results", "", "| split | final weights | best checkpoint |", "|---|---|---|"]
    lines.append(f"| validation | {percent(final.get(accuracy_key))} | {percent(best.get('value'))} |")
    if has_test:
        lines.append(f"| test | {percent(final.get(test_key))} | {percent((best.get('test') or {}).get(test_key))} |")
    if result.test_classes:
        balanced = percent(balanced_accuracy_from_per_class(result.test_classes["per_class"]))
        lines.append(f"| test, balanced (mean per-class recall) | – | {balanced} |")
    confusion = analysis.get("confusion") or []
    if analysis.get("per_class") and len({sum(row) for row in confusion}) > 1:  # an unbalanced validation split
        split = "validation" if analysis.get("split") == "val" else analysis.get("split")
        balanced = percent(balanced_accuracy_from_per_class(analysis["per_class"]))
        lines.append(f"| {split}, balanced (mean per-class recall, {analysis.get('weights')}) | – | {balanced} |")
    lines.append("")
    if analysis.get("per_class"):
        split = "validation" if analysis.get("split") == "val" else analysis.get("split")
        lines += [f"Per class, {split} split, {analysis.get('weights')}:", "", "| class | images | accuracy |"]
        lines.append("|---|---|---|")
        for i, (name, value) in enumerate(analysis["per_class"].items()):
            count = sum(confusion[i]) if i < len(confusion) else 0
            lines.append(f"| {name} | {count} | {percent(value)} |")
        lines.append("")
    return lines


_CAPTIONS = {
    "confusion matrix": "Confusion matrix (rows: true class, columns: predicted)",
    "worst-classified images": "Worst-classified validation images, with their true and predicted classes",
    "position predictions": "Predicted vs true grid position of every patch (the abs_position objective)",
    "position embedding similarity": "Cosine similarity of the learned position embeddings",
    "mean attention distance": "Mean attention distance per block",
}


def _use_section(run_dir: Path, export: str) -> list[str]:
    return [
        "## Use the model",
        "",
        "```bash",
        f"smallvit predict {run_dir} IMAGE_OR_FOLDER... --top-k 5 --csv predictions.csv",
        f"smallvit predict {run_dir / export} IMAGE_OR_FOLDER...   # the exported model, same preprocessing",
        "```",
        "",
        f"`{export}/` holds `model.safetensors` and `config.json` for timm "
        '(`smallvit.models.create_timm_model("' + str(run_dir / export) + '")`); the class names are in '
        "`config.json` under `classes`.",
        "",
    ]


def write_report(result: FitResult) -> Path:
    """``<run>/report.md``: the data, every choice, its rule and the results it rests on, training, results and
    pictures, and how to use the model."""
    run_dir = result.run_dir
    analysis_path = run_dir / "analysis.json"
    analysis = json.loads(analysis_path.read_text()) if analysis_path.is_file() else {}
    accuracy_key = result.run_summary.get("best", {}).get("metric") or "val/supervised/acc1"  # chose the export
    keys = (accuracy_key, accuracy_key.replace("val/", "test/", 1))
    has_test = "test" in result.summary.counts
    lines = [f"# fit report: {result.summary.folder.resolve()}", "", _headline(result, keys, has_test), ""]
    lines += _data_section(result) + _choices_section(result) + _evidence_section(result.recipe)
    lines += ["## Training", "", *_budget_lines(result), "", "![loss and accuracy curves](curves.png)", ""]
    lines += _results_section(result, keys, has_test, analysis)
    for name, file_name in (analysis.get("pictures") or {}).items():
        lines += [f"### {_CAPTIONS.get(name, name)}", "", f"![{name}]({file_name})", ""]
    lines += _use_section(run_dir, result.export_dir.name if result.export_dir else "export")
    path = run_dir / "report.md"
    path.write_text("\n".join(lines))
    return path
