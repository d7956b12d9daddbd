"""Comparing runs: reading new and old summaries, grouping into rows, the statistics by hand, table, JSON, report."""

import itertools
import json
import math
import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from smallvit import cli
from smallvit.cli import app
from smallvit.compare import (
    TOP1,
    collect_runs,
    compare_rows,
    curve_panels,
    curve_style,
    gain,
    markdown_table,
    mean_std,
    read_run,
    rows_json,
    rows_table,
    write_report,
)
from smallvit.errors import SmallViTError

REPO = Path(__file__).resolve().parents[1]
SPLITS = {
    split: {"name": split, "images": n, "sha256": f"{split}-sha"} for split, n in (("train", 2040), ("val", 500))
} | {"test": {"name": "test", "images": 2000, "sha256": "test-sha"}}


def _stage(test, val, *, epochs=60, dataset="cifar10-sample", seed=0, wall=100.0, rate=120.0, splits=SPLITS):
    return {
        "name": "quickstart",
        "recipe": "quickstart",
        "epochs": epochs,
        "final": {"val/supervised/acc1": val, "val/loss": 1.7, "test/supervised/acc1": test},
        "best": {"metric": "val/supervised/acc1", "value": val, "epoch": epochs},
        "wall_clock_s": wall,
        "images_per_s": rate,
        "device": "cpu: test (2 threads)",
        "precision": "fp32",
        "provenance": {"dataset": dataset, "seed": seed, "recipe": "quickstart", "splits": splits},
    }


def _run(root: Path, row: str, seed: int, test: float, val: float, *, baseline=False, curve=(), **stage) -> Path:
    """A fabricated finished run folder of a sweep: summary.json, sweep.json and, given a curve, metrics.jsonl."""
    folder = root / row / f"seed{seed}"
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps(_stage(test, val, seed=seed, **stage)))
    entry = {"sweep": "s", "row": row, "index": 0 if baseline else 1, "label": f"{row} label", "baseline": baseline}
    entry |= {"seed": seed, "command": f"smallvit train quickstart seed={seed}"}
    (folder / "sweep.json").write_text(json.dumps(entry))
    records = [{"kind": "train", "epoch": e, "train/loss": 1.0} for e, _ in curve]
    records += [{"kind": "eval", "epoch": e, "val/supervised/acc1": v} for e, v in curve]
    if curve:
        (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return folder


@pytest.fixture
def sweep_runs(tmp_path):
    """Row 'strong' (3 seeds: 40, 42, 44 %) against baseline row 'weak' (2 seeds: 38, 40 %)."""
    root = tmp_path / "runs"
    for seed, (test, val) in enumerate([(0.40, 0.50), (0.42, 0.52), (0.44, 0.54)]):
        _run(root, "strong", seed, test, val, curve=[(1, 0.2 + seed / 100), (2, 0.3 + seed / 100)], wall=90.0 + seed)
    for seed, test in enumerate([0.38, 0.40]):
        _run(root, "weak", seed, test, 0.45, baseline=True, curve=[(1, 0.1), (2, 0.2)], rate=100.0 + 20 * seed)
    return root


def test_statistics_by_hand(sweep_runs):
    rows, notes = compare_rows(collect_runs([sweep_runs]))
    assert notes == []
    weak, strong = rows  # the baseline comes first: its sweep index is 0
    assert (weak.name, strong.name) == ("weak", "strong") and weak.baseline and not strong.baseline
    # strong: 40, 42, 44 -> mean 42, sample variance (4 + 0 + 4) / 2 = 4, std 2
    assert strong.top1_mean == pytest.approx(42.0) and strong.top1_std == pytest.approx(2.0)
    assert strong.val_mean == pytest.approx(52.0) and strong.val_std == pytest.approx(2.0)
    # weak: 38, 40 -> mean 39, sample variance (1 + 1) / 1 = 2
    assert weak.top1_mean == pytest.approx(39.0) and weak.top1_std == pytest.approx(math.sqrt(2))
    assert weak.val_std == pytest.approx(0.0)
    # gain 42 - 39 = 3 points, std sqrt(4 / 3 + 2 / 2)
    assert strong.gain_mean == pytest.approx(3.0) and strong.gain_std == pytest.approx(math.sqrt(4 / 3 + 1))
    assert (weak.gain_mean, weak.gain_std, strong.baseline_row) == (0.0, None, "weak")
    assert strong.wall_clock_s == pytest.approx(91.0) and weak.images_per_s == pytest.approx(110.0)
    assert strong.seeds == [0, 1, 2] and strong.label == "strong label"


def test_mean_std_edge_cases():
    assert mean_std([]) == (None, None) and mean_std([40.0]) == (40.0, None)
    assert mean_std([1.0, 3.0]) == (2.0, math.sqrt(2))
    assert compare_rows([]) == ([], [])


def test_gain_has_no_std_when_a_row_has_one_run(tmp_path):
    _run(tmp_path, "base", 0, 0.40, 0.4, baseline=True)
    _run(tmp_path, "base", 1, 0.42, 0.4, baseline=True)
    _run(tmp_path, "single", 0, 0.45, 0.4)
    base, single = compare_rows(collect_runs([tmp_path]))[0]
    assert gain(single, base) == (pytest.approx(4.0), None)
    assert single.gain_mean == pytest.approx(4.0) and single.gain_std is None


def test_baseline_option_overrides_the_sweeps_flag_and_unknown_names_are_errors(sweep_runs):
    rows, _ = compare_rows(collect_runs([sweep_runs]), baseline="strong")
    strong, weak = rows  # the baseline row comes first, wherever its sweep placed it
    assert strong.baseline and not weak.baseline and weak.gain_mean == pytest.approx(-3.0)
    with pytest.raises(SmallViTError, match="--baseline nope: no such row"):
        compare_rows(collect_runs([sweep_runs]), baseline="nope")


def test_rows_of_other_protocols_are_not_merged_and_get_no_gain_across_datasets(tmp_path):
    _run(tmp_path / "a", "q", 0, 0.40, 0.4, baseline=True)
    _run(tmp_path / "b", "q", 0, 0.50, 0.5, epochs=20)
    _run(tmp_path / "c", "q", 0, 0.60, 0.6, dataset="svhn")
    other_splits = {**SPLITS, "test": {"name": "test", "images": 100, "sha256": "other"}}
    _run(tmp_path / "d", "q", 0, 0.70, 0.7, splits=other_splits)
    rows, notes = compare_rows(collect_runs([tmp_path]))
    same, other = rows[0].protocol, rows[3].protocol
    assert same != other and [r.name for r in rows] == [
        f"q [cifar10-sample, 60 ep, splits {same}]",
        f"q [cifar10-sample, 20 ep, splits {same}]",
        f"q [svhn, 60 ep, splits {same}]",
        f"q [cifar10-sample, 60 ep, splits {other}]",
    ]
    assert [r.gain_mean for r in rows] == [0.0, pytest.approx(10.0), None, None]
    assert len(notes) == 4 and "separate rows" in notes[0]


def test_the_same_run_found_twice_counts_once(sweep_runs):
    folder = sweep_runs / "weak" / "seed0"
    rows, notes = compare_rows(collect_runs([folder, folder / "summary.json", folder]))
    assert len(rows) == 1 and len(rows[0].runs) == 1 and "counted once" in notes[0]


def test_multi_stage_run_reads_its_last_stage_recipe_name_and_probes(tmp_path):
    folder = tmp_path / "relvit-run"
    (folder / "1-relvit-pretrain").mkdir(parents=True)
    (folder / "2-relvit-finetune").mkdir()
    (folder / "recipe.yaml").write_text(yaml.safe_dump({"name": "relvit", "stages": []}))
    pretrain = {**_stage(None, None, epochs=10, wall=50.0, rate=100.0), "final": {"val/loss": 6.0}}
    finetune = _stage(0.33, 0.35, epochs=10, wall=150.0, rate=200.0)
    (folder / "summary.json").write_text(json.dumps({"stages": [pretrain, finetune]}))
    logged = [{"kind": "knn", "acc1": 0.2}, {"kind": "knn", "acc1": 0.25}, {"kind": "linear", "acc1": 0.3}]
    logged.append({"kind": "linear", "split": "val", "acc1": 0.9})  # a validation probe: not the table's test column
    (folder / "1-relvit-pretrain" / "evaluations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in logged))
    (tmp_path / "unfinished" / "1-relvit-pretrain").mkdir(parents=True)  # an unfinished run's finished stage
    (tmp_path / "unfinished" / "recipe.yaml").write_text("name: relvit\n")
    (tmp_path / "unfinished" / "1-relvit-pretrain" / "summary.json").write_text(json.dumps(pretrain))
    [row], _ = compare_rows(collect_runs([tmp_path]))
    assert (row.name, row.epochs, row.top1_mean, row.val_mean) == ("relvit", (10, 10), 33.0, 35.0)
    assert (row.knn_mean, row.linear_mean) == (25.0, 30.0)
    # wall-clock summed over stages; images/s weighted by stage wall-clock: (100 * 50 + 200 * 150) / 200
    assert row.wall_clock_s == 200.0 and row.images_per_s == pytest.approx(175.0)


def test_a_resumed_run_counts_the_time_of_every_start(tmp_path):
    before = {**_stage(0.5, 0.5, wall=675.0), "training_s": 2528.4, "resumed": True}  # last start's wall-clock only
    after = {**_stage(0.5, 0.5, wall=2528.4), "training_s": 2528.4, "resumed": True}
    plain = {**_stage(0.5, 0.5, wall=300.0), "training_s": 290.0}  # not resumed: its own wall-clock
    for name, stage in (("before", before), ("after", after), ("plain", plain)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "summary.json").write_text(json.dumps(stage))
    walls = {name: read_run(tmp_path / name).wall_clock_s for name in ("before", "after", "plain")}
    assert walls == {"before": 2528.4, "after": 2528.4, "plain": 300.0}


def _old_summary(path: Path, run_id: str, acc1: float, args: list[str]):
    """A summary in the format results/run.py wrote (test split under eval/, no validation)."""
    stage = {"name": "quickstart", "epochs": 20, "final": {"eval/supervised/acc1": acc1}, "wall_clock_s": 300.0}
    stage |= {"images_per_s": 120.0, "device": "cpu: old", "precision": "fp32"}
    entry = {"id": run_id, "table": "t", "label": "vit_lite, 20 epochs", "args": args}
    path.write_text(json.dumps({"entry": entry, "stages": [stage], "knn": None, "linear": None}))


def test_old_format_summaries_are_test_top1_without_validation(tmp_path):
    _old_summary(tmp_path / "quickstart-s0.json", "quickstart-s0", 0.396, ["quickstart", "seed=0"])
    _old_summary(tmp_path / "quickstart-s1.json", "quickstart-s1", 0.399, ["quickstart", "seed=1"])
    _old_summary(tmp_path / "full.json", "full", 0.43, ["quickstart", "dataset=cifar10-jpeg", "epochs=1"])
    (tmp_path / "notes.json").write_text('{"not": "a summary"}')
    (tmp_path / "broken.json").write_text("{half-written")
    _run(tmp_path / "new", "quickstart", 0, 0.41, 0.42, epochs=20)
    rows, _ = compare_rows(collect_runs([tmp_path]))
    by_name = {r.name: r for r in rows}
    old = by_name["quickstart [legacy]"]
    assert old.legacy and old.seeds == [0, 1] and old.val_mean is None and old.dataset == "cifar10-sample"
    assert old.top1_mean == pytest.approx(39.75) and old.top1_std == pytest.approx(0.3 / math.sqrt(2))
    assert old.commands == ["smallvit train quickstart seed=0", "smallvit train quickstart seed=1"]
    assert by_name["full"].dataset == "cifar10-jpeg" and by_name["full"].label == "vit_lite, 20 epochs"
    assert "quickstart [splits " in " ".join(by_name)
    # a gain needs the same test images: old summaries are not compared with a new baseline, and vice versa
    rows, _ = compare_rows(collect_runs([tmp_path]), baseline=next(n for n in by_name if "splits" in n))
    assert {r.name: r.gain_mean for r in rows}["quickstart [legacy]"] is None
    rows, _ = compare_rows(collect_runs([tmp_path]), baseline="quickstart [legacy]")
    assert [r.gain_mean for r in rows if not r.legacy] == [None]


def test_the_repositorys_old_summaries_are_read():
    if not (REPO / "results" / "summaries" / "quickstart-s0.json").is_file():
        pytest.skip("results/summaries/ is not in this checkout")
    rows, _ = compare_rows(collect_runs([REPO / "results" / "summaries"]), baseline="quickstart")
    row = next(r for r in rows if r.name == "quickstart")
    assert len(row.runs) == 2 and row.top1_mean == pytest.approx(39.75) and row.baseline


def test_missing_paths_and_empty_folders_are_one_line_errors(tmp_path):
    with pytest.raises(SmallViTError, match="does not exist"):
        collect_runs([tmp_path / "nope"])
    with pytest.raises(SmallViTError, match="no finished run"):
        collect_runs([tmp_path])


def test_table_json_and_report(sweep_runs, tmp_path):
    rows, _ = compare_rows(collect_runs([sweep_runs]))
    table = rows_table(rows)
    assert table.columns[0].header == "row" and table.row_count == 2
    [weak, strong] = rows_json(rows)
    assert {"name", "runs", "top1_mean", "top1_std", "gain_mean", "gain_std", "val_mean", "val_std"} <= set(strong)
    assert {"wall_clock_s", "images_per_s", "device", "commands"} <= set(strong)
    assert (strong["runs"], strong["top1_mean"], strong["gain_mean"], strong["top1_runs"]) == (
        3,
        42.0,
        3.0,
        [40, 42, 44],
    )
    assert strong["gain_std"] == round(math.sqrt(4 / 3 + 1), 4) and weak["baseline"]

    written = write_report(rows, tmp_path / "report", command="smallvit compare runs")
    assert [p.name for p in written] == ["report.md", "accuracy.png", "val_curves.png"]
    assert all(p.stat().st_size > 0 for p in written)
    report = (tmp_path / "report" / "report.md").read_text()
    assert "| strong | strong label | 3 (0, 1, 2) | cifar10-sample | 60 | 42.00 ± 2.00 | 52.00 ± 2.00 |" in report
    assert "+3.00 ± 1.53" in report and "smallvit train quickstart seed=2" in report and "![" in report
    # the report keeps small copies of the runs, from which the same rows come back
    copies = tmp_path / "report" / "runs"
    assert (copies / "strong" / "seed2" / "metrics.jsonl").is_file()
    again, _ = compare_rows(collect_runs([copies]))
    assert rows_json(again)[1]["top1_mean"] == 42.0 and again[0].baseline


def test_a_report_grows_from_its_own_copies_and_new_runs(sweep_runs, tmp_path):
    """Seeds finished on another machine join a kept report: its copies stay, the new runs are copied beside them."""
    report = tmp_path / "report"
    write_report(compare_rows(collect_runs([sweep_runs]))[0], report)
    later = _run(tmp_path / "later", "weak", 2, 0.42, 0.46, baseline=True, curve=[(1, 0.1), (2, 0.2)])
    rows, notes = compare_rows(collect_runs([later.parent, report / "runs", sweep_runs / "strong" / "seed0"]))
    write_report(rows, report)
    assert sorted(p.name for p in (report / "runs" / "weak").iterdir()) == ["seed0", "seed1", "seed2"]
    assert sorted(p.name for p in (report / "runs" / "strong").iterdir()) == ["seed0", "seed1", "seed2"]
    assert [row.seeds for row in rows] == [[0, 1, 2], [0, 1, 2]]  # in order, though seed 2 of weak was found first
    assert len(notes) == 1 and "counted once" in notes[0]
    [weak, strong] = rows_json(compare_rows(collect_runs([report / "runs"]))[0])
    assert (weak["runs"], weak["top1_mean"], strong["runs"], strong["gain_mean"]) == (3, 40.0, 3, 2.0)


def test_a_report_read_from_its_copies_listed_last_is_not_copied_twice(sweep_runs, tmp_path):
    """Copies listed after the runs they copy: each run counts once, as the original, and is not copied again."""
    report = tmp_path / "report"
    write_report(compare_rows(collect_runs([sweep_runs]))[0], report)
    shutil.rmtree(sweep_runs / "weak")  # its runs now live in the copies only, so the copies are kept
    rows, notes = compare_rows(collect_runs([sweep_runs, report / "runs"]))
    write_report(rows, report)
    assert len(notes) == 3 and sorted(p.name for p in (report / "runs" / "strong").iterdir()) == [
        "seed0",
        "seed1",
        "seed2",
    ]


def test_report_without_metrics_has_no_curves(tmp_path):
    _run(tmp_path / "runs", "a", 0, 0.4, 0.4)
    written = write_report(compare_rows(collect_runs([tmp_path / "runs"]))[0], tmp_path / "out")
    assert [p.name for p in written] == ["report.md", "accuracy.png"]


def test_cli_compare_json_and_output(sweep_runs, tmp_path, monkeypatch):
    monkeypatch.setattr(cli.console, "_width", 250)
    result = CliRunner().invoke(app, ["compare", str(sweep_runs)])
    assert result.exit_code == 0, result.output
    assert "42.00 ± 2.00" in result.output and "baseline" in result.output and "+3.00 ± 1.53" in result.output
    result = CliRunner().invoke(app, ["compare", str(sweep_runs), "--json", "--output", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert [row["name"] for row in json.loads(result.stdout)] == ["weak", "strong"]
    assert (tmp_path / "out" / "report.md").is_file()


def _choose(folder: Path, best: dict) -> None:
    """Give a fabricated run the checkpoint it chose on validation (``best`` of its summary)."""
    summary = json.loads((folder / "summary.json").read_text())
    summary["best"] = best
    (folder / "summary.json").write_text(json.dumps(summary))


def test_checkpoint_best_reads_the_validation_chosen_checkpoint(tmp_path):
    root = tmp_path / "runs"
    chosen = _run(root, "a", 0, 0.40, 0.50, curve=[(20, 0.48), (40, 0.55), (60, 0.50)])
    _choose(chosen, {"metric": "val/supervised/acc1", "value": 0.55, "epoch": 40, "test": {TOP1: 0.41}})
    by_loss = _run(root, "a", 1, 0.44, 0.52, curve=[(20, 0.47), (40, 0.53), (60, 0.52)])
    _choose(by_loss, {"metric": "val/loss", "value": 1.2, "epoch": 20, "test": {TOP1: 0.43}})
    _run(root, "a", 2, 0.42, 0.51)  # chose nothing on validation: its last weights are what it keeps
    [final], _ = compare_rows(collect_runs([root]))
    [best], _ = compare_rows(collect_runs([root], checkpoint="best"))
    assert [100 * r.top1 for r in final.runs] == pytest.approx([40, 44, 42])
    assert [100 * r.top1 for r in best.runs] == pytest.approx([41, 43, 42])
    # validation top-1 of the chosen checkpoint: the metric itself, else the curve at the chosen epoch
    assert [100 * r.val1 for r in best.runs] == pytest.approx([55, 47, 51])
    assert best.top1_mean == pytest.approx(42.0) and best.val_mean == pytest.approx(51.0)
    assert rows_json([best])[0]["checkpoint"] == "best"
    assert "chose on validation" in write_report([best], tmp_path / "out").pop(0).read_text()
    with pytest.raises(SmallViTError, match="unknown checkpoint 'last': use one of final, best"):
        collect_runs([root], checkpoint="last")


def test_cli_compare_checkpoint_option(sweep_runs, tmp_path):
    _choose(sweep_runs / "strong" / "seed0", {"metric": "val/supervised/acc1", "value": 0.6, "test": {TOP1: 0.46}})
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app, ["compare", str(sweep_runs), "--checkpoint", "best", "--json", "--output", str(out)]
    )
    assert result.exit_code == 0, result.output
    strong = json.loads(result.stdout)[1]
    assert strong["top1_runs"] == [46, 42, 44] and strong["checkpoint"] == "best"
    assert "--checkpoint best --output" in (out / "report.md").read_text().split("\n")[2]


def test_cli_compare_errors_are_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("sys.argv", ["smallvit", "compare", str(tmp_path / "nope")])
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    assert exit_.value.code == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_the_baseline_sweep_rows_come_first_though_another_sweep_is_found_first(sweep_runs):
    """A report folding two sweeps lists the baseline's sweep first, whatever order the folders sort in."""
    other = _run(sweep_runs / "aa-joint", "joint", 0, 0.5, 0.6)
    entry = json.loads((other / "sweep.json").read_text())
    (other / "sweep.json").write_text(json.dumps(entry | {"sweep": "aa-joint", "index": 0}))
    rows, _ = compare_rows(collect_runs([sweep_runs]))
    assert [row.name for row in rows] == ["weak", "strong", "joint"]


def test_validation_curves_of_seeded_and_exploration_rows_get_their_own_panels(sweep_runs, tmp_path):
    rows, _ = compare_rows(collect_runs([sweep_runs]))
    assert [(title, [r.name for r in panel]) for title, panel in curve_panels(rows)] == [("", ["weak", "strong"])]
    _run(sweep_runs, "explore", 0, 0.5, 0.55, curve=[(1, 0.3), (2, 0.4)])
    rows, _ = compare_rows(collect_runs([sweep_runs]))
    panels = [(title, [r.name for r in panel]) for title, panel in curve_panels(rows)]
    assert panels == [
        ("rows with several seeds", ["weak", "strong"]),
        ("rows with one seed (exploration)", ["weak", "explore"]),  # the baseline as the reference in both
    ]
    written = write_report(rows, tmp_path / "report")
    assert (tmp_path / "report" / "val_curves.png") in written
    only_the_baseline_seeded = [row for row in rows if row.name != "strong"]
    assert [len(panel) for _, panel in curve_panels(only_the_baseline_seeded)] == [2]


def test_forty_curves_get_forty_different_styles():
    styles = [curve_style(position) for position in range(40)]
    assert len(set(styles)) == 40
    assert styles[0] == ("C0", "-") and styles[10] == ("C0", "--") and styles[39] == ("C9", "-.")


def test_a_copied_old_summary_folder_compares(tmp_path):
    if not (REPO / "results" / "summaries" / "quickstart-s0.json").is_file():
        pytest.skip("results/summaries/ is not in this checkout")
    shutil.copy(REPO / "results" / "summaries" / "quickstart-s0.json", tmp_path / "a.json")
    [row], _ = compare_rows(collect_runs([tmp_path / "a.json"]))
    assert row.name == "quickstart" and row.top1_mean == pytest.approx(39.6)


@pytest.mark.parametrize("report", sorted(REPO.glob("results/*/report.md")), ids=lambda path: path.parent.name)
def test_every_kept_report_comes_back_from_its_run_copies_in_the_repository(report):
    """The README's tables must regenerate from the repository alone: each report's ``runs/`` copies are committed
    and give its table again, every row with the same figures (a report over several sweeps may list them in
    another order: the copies keep no order of the sweeps)."""
    text = report.read_text()
    generated_by = text.split("\n")[2]
    baseline = generated_by.split("--baseline ")[1].split()[0] if "--baseline " in generated_by else None
    checkpoint = generated_by.split("--checkpoint ")[1].split()[0] if "--checkpoint " in generated_by else "final"
    rows, _ = compare_rows(collect_runs([report.parent / "runs"], checkpoint), baseline=baseline)
    table = markdown_table(rows).splitlines()
    kept = [line for line in text.splitlines() if line.startswith("|")]
    assert table[:2] == kept[:2] and sorted(table[2:]) == sorted(kept[2:])


def markdown_tables(text: str) -> list[list[str]]:
    """The tables of a markdown text, each as its list of lines."""
    tables, lines = [], text.splitlines()
    for number, line in enumerate(lines):
        if line.startswith("|") and (number == 0 or not lines[number - 1].startswith("|")):
            tables.append(list(itertools.takewhile(lambda row: row.startswith("|"), lines[number:])))
    return tables


def test_every_results_table_in_the_readme_is_a_kept_reports_table():
    """The README's result tables are pasted from the kept reports (``results/intro.md`` at each fold, the rest by
    ``results/readme_section.py``): a paste that missed a fold, or a figure edited by hand, fails here."""
    kept = [
        table
        for report in [*REPO.glob("results/*/report.md"), REPO / "results" / "RESULTS.md"]
        for table in markdown_tables(report.read_text())
    ]
    readme = [table for table in markdown_tables((REPO / "README.md").read_text()) if table[0].startswith("| row |")]
    assert len(readme) >= 3
    kept_lines = {line for table in kept for line in table}
    assert [line for table in readme if table not in kept for line in table if line not in kept_lines] == []
    assert all(table in kept for table in readme)  # the same lines, in the same order
