"""What ``smallvit fit`` prints and writes: the folder for few and many classes, one line per choice with its rule,
the evidence in ``report.md`` (of the rule that fired, of the fallback for a folder no rule measured, of a recipe
given with ``--recipe``), and balanced accuracy beside top-1 on an unbalanced test split."""

from dataclasses import replace
from pathlib import Path

from rich.console import Console
from rich.table import Table

from smallvit.fit import (
    RECIPE_RULES,
    FitResult,
    FolderSummary,
    batch_line,
    choose_batch,
    choose_geometry,
    choose_recipe,
    class_overview,
    geometry_line,
    given_epochs,
    given_recipe,
    plan_line,
    recipe_line,
    write_report,
)


def _summary(folder: Path, classes: int, test: list[int] | None = None) -> FolderSummary:
    names = [f"class{i:03d}" for i in range(classes)]
    counts = {"train": {name: 10 + i % 7 for i, name in enumerate(names)}}
    if test is not None:
        counts["test"] = dict(zip(names, test))
    images = sum(sum(split.values()) for split in counts.values())
    return FolderSummary(folder, False, names, counts, [(64, 48)] * images)


def _rendered(renderable) -> str:
    console = Console(record=True, width=120)
    console.print(renderable, markup=False, highlight=False)
    return console.export_text()


def test_up_to_20_classes_the_console_shows_a_table(tmp_path):
    overview = class_overview(_summary(tmp_path, 5, test=[2, 2, 2, 2, 3]))
    assert isinstance(overview, Table) and overview.row_count == 5
    text = _rendered(overview)
    assert all(f"class{i:03d}" in text for i in range(5)) and "train" in text and "test" in text


def test_many_classes_are_one_line_of_images_per_class(tmp_path):
    overview = class_overview(_summary(tmp_path, 100, test=[5] * 99 + [1]))
    assert overview == "100 classes; images per class (min / median / max): train 10 / 13 / 16, test 1 / 5 / 5"
    assert len(_rendered(overview).strip().splitlines()) == 1


def _result(run_dir: Path, test: list[int], per_class: dict | None) -> FitResult:
    summary = _summary(run_dir / "images", 2, test=test)
    recipe = choose_recipe(summary.train_count(), 2, summary.median_side)
    run_summary = {
        "final": {"val/supervised/acc1": 0.5, "test/supervised/acc1": 0.6},
        "best": {"metric": "val/supervised/acc1", "value": 0.55, "test": {"test/supervised/acc1": 0.75}},
        "steps": 20,
        "epochs_run": 10.0,
        "epochs": 10,
        "training_s": 5.0,
    }
    test_classes = None if per_class is None else {"per_class": per_class, "images": test}
    return FitResult(
        run_dir,
        summary,
        choose_geometry(summary.short_sides, max_size=recipe.max_image_size),
        recipe,
        choose_batch(summary.train_count(), 128, 1e-3),
        given_epochs(10, 2),
        None,
        ["train.epochs=10"],
        run_summary=run_summary,
        test_classes=test_classes,
    )


def test_each_choice_is_one_console_line_with_its_rule_and_the_evidence_goes_to_the_report(tmp_path):
    result = _result(tmp_path, [4, 4], None)
    lines = [
        recipe_line(result.recipe),
        geometry_line(result.geometry),
        batch_line(result.batch),
        plan_line(result.plan),
    ]
    rules = ["(rule not-measured: ", "(rule median-side-grid-8: ", "(rule batch-tenth: ", "(rule given-epochs: "]
    for line, rule in zip(lines, rules):
        assert rule in line and "\n" not in line, line
    assert lines[0].startswith("recipe: quickstart (rule not-measured: nothing was measured for this kind of folder")
    assert lines[2].startswith("batch: 16, lr 0.000125") and lines[3].startswith("training: 10.0 epochs, 20 steps")
    measured = RECIPE_RULES[0].kind.measured  # what the rule that did not fire was measured on
    assert not any(measured in line for line in lines)  # the evidence is not on the console...
    report = write_report(result).read_text()
    assert "## Evidence" in report and f"measured on {measured}" in report  # ...but here
    assert "Rule `not-measured` rests on these results (docs/results.md):\n\n- none yet" in report
    outside = "2 classes (measured: 10), 9.5 training images per class (measured: 204)"  # 19 after validation
    assert f"Nothing was measured for this kind of folder: {outside}, more than a factor of 2 from what" in report
    assert "fit therefore trains the baseline `quickstart`. What each rule was measured on:" in report
    kind = "measured on 10 classes, 204 training images per class, 32–112 px trained side; fires for 5–20 "
    assert f"- rule `small-data` (`small-data`): {kind}" in report
    assert "- 20 optimizer steps of 16 images, equal to 10 epochs of 2 steps" in report
    assert "| batch | 16, lr 0.000125 | `batch-tenth` |" in report
    assert "balanced" not in report  # a balanced test split: top-1 alone


def test_the_report_cites_the_rule_that_fired_or_says_the_recipe_was_given(tmp_path):
    result = _result(tmp_path, [4, 4], None)
    result.recipe = choose_recipe(2040, 10, 32)  # a folder of the kind the small-data rule was measured on
    fired = write_report(result).read_text()
    assert "| recipe | `small-data` | `small-data` |" in fired and "Nothing was measured" not in fired
    assert "Rule `small-data` rests on these results (docs/results.md):" in fired
    for evidence in result.recipe.evidence:
        assert f"- {evidence.citation}: {evidence.shows}" in fired

    result = replace(result, recipe=given_recipe("small-data"))
    given = write_report(result).read_text()
    assert "| recipe | `small-data` | `given` | given with --recipe |" in given
    assert "The recipe was given with `--recipe`; no rule chose it." in given and "- rule `small-data`" in given
    assert "rests on these results" not in given


def test_an_unbalanced_test_split_reports_balanced_accuracy_beside_top1(tmp_path):
    result = _result(tmp_path, [10, 2], {"class000": 0.8, "class001": 0.5})
    report = write_report(result).read_text()
    assert "test top-1 of the exported checkpoint **75.00 %**" in report
    assert "balanced accuracy (mean per-class recall) **65.00 %**: the test split is unbalanced" in report
    assert "| test, balanced (mean per-class recall) | – | 65.00 % |" in report
