"""Comparing runs: reading new and old summaries and study tables, grouping into rows, the statistics by hand, table,
JSON, report, the table across datasets."""

import itertools
import json
import math
import shlex
import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from smallvit import cli
from smallvit.cli import app
from smallvit.compare import (
    BALANCED,
    TOP1,
    collect_runs,
    compare_rows,
    curve_panels,
    curve_style,
    gain,
    mean_std,
    parse_aliases,
    read_run,
    read_table,
    rename_runs,
    rows_json,
    rows_table,
    select_rows,
    table_cells,
    write_report,
)
from smallvit.compare.datasets import dataset_cells, write_dataset_table
from smallvit.compare.leave_one_out import leave_one_out
from smallvit.compare.report import report_text
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


def test_the_repositorys_legacy_table_is_read():
    rows, _ = compare_rows(collect_runs([REPO / "results" / "legacy-20ep"]), baseline="quickstart")
    row = next(r for r in rows if r.name == "quickstart")
    assert len(row.runs) == 2 and row.top1_mean == pytest.approx(39.75) and row.baseline and row.legacy


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
    names = ["report.md", "accuracy.png", "val_curves.png", "runs.csv", "curves.jsonl.gz"]
    assert [p.name for p in written] == names and all(p.stat().st_size > 0 for p in written)
    report = (tmp_path / "report" / "report.md").read_text()
    assert "| strong | strong label | 3 (0, 1, 2) | cifar10-sample | 60 | 42.00 ± 2.00 | 52.00 ± 2.00 |" in report
    assert "+3.00 ± 1.53" in report and "smallvit train quickstart seed=2" in report and "![" in report
    # the report's table of runs gives the same rows, curves included, and the same report again
    again, _ = compare_rows(collect_runs([tmp_path / "report"]))
    assert [r.curve for row in again for r in row.runs] == [r.curve for row in rows for r in row.runs]
    assert [{**row, "sources": []} for row in rows_json(again)] == [{**row, "sources": []} for row in rows_json(rows)]
    write_report(again, tmp_path / "again", command="smallvit compare runs")
    for name in ("report.md", "runs.csv", "curves.jsonl.gz"):
        assert (tmp_path / "again" / name).read_bytes() == (tmp_path / "report" / name).read_bytes()


def test_the_table_keeps_every_figure_to_the_last_bit_and_both_checkpoints(sweep_runs, tmp_path):
    _choose(sweep_runs / "strong" / "seed1", {"metric": "val/supervised/acc1", "value": 0.7, "test": {TOP1: 0.1 + 0.2}})
    write_report(compare_rows(collect_runs([sweep_runs]))[0], tmp_path / "report")
    for checkpoint in ("final", "best"):
        from_folders = collect_runs([sweep_runs], checkpoint)
        from_table = read_table(tmp_path / "report" / "runs.csv", checkpoint)
        pairs = zip(*(sorted(runs, key=lambda r: (r.name, r.seed)) for runs in (from_folders, from_table)))
        fields = ("top1", "val1", "wall_clock_s", "images_per_s", "final", "best", "command", "protocol", "curve")
        assert all(getattr(a, f) == getattr(b, f) for a, b in pairs for f in fields)
    assert [r.top1 for r in read_table(tmp_path / "report" / "runs.csv", "best") if r.name == "strong"][1] == 0.1 + 0.2


def test_a_report_grows_from_its_own_table_and_new_runs(sweep_runs, tmp_path):
    """Seeds finished on another machine join a kept report: its table's runs stay, the new runs are added to it."""
    report = tmp_path / "report"
    write_report(compare_rows(collect_runs([sweep_runs]))[0], report)
    later = _run(tmp_path / "later", "weak", 2, 0.42, 0.46, baseline=True, curve=[(1, 0.1), (2, 0.2)])
    rows, notes = compare_rows(collect_runs([report, later.parent, sweep_runs / "strong" / "seed0"]))
    write_report(rows, report)
    assert [row.seeds for row in rows] == [[0, 1, 2], [0, 1, 2]]  # in order, though seed 2 of weak was found last
    assert len(notes) == 1 and "counted once" in notes[0]
    [weak, strong] = rows_json(compare_rows(collect_runs([report]))[0])
    assert (weak["runs"], weak["top1_mean"], strong["runs"], strong["gain_mean"]) == (3, 40.0, 3, 2.0)
    assert len((report / "runs.csv").read_text().splitlines()) == 1 + 6


def test_runs_found_in_folders_and_in_the_table_count_once(sweep_runs, tmp_path):
    report = tmp_path / "report"
    write_report(compare_rows(collect_runs([sweep_runs]))[0], report)
    shutil.rmtree(sweep_runs / "weak")  # its runs now live in the table only
    rows, notes = compare_rows(collect_runs([sweep_runs, report]))
    write_report(rows, report)
    assert len(notes) == 3 and [len(row.runs) for row in rows] == [2, 3]
    assert len((report / "runs.csv").read_text().splitlines()) == 1 + 5


def test_a_table_that_cannot_be_read_is_a_one_line_error(sweep_runs, tmp_path):
    (tmp_path / "short" / "runs.csv").parent.mkdir()
    (tmp_path / "short" / "runs.csv").write_text("row,seed\nweak,0\n")
    with pytest.raises(SmallViTError, match="not a readable table of runs .*no column dataset"):
        collect_runs([tmp_path / "short"])
    write_report(compare_rows(collect_runs([sweep_runs]))[0], tmp_path / "report")
    table = tmp_path / "report" / "runs.csv"
    table.write_text(table.read_text().replace("strong,2,", "strong,two,"))
    with pytest.raises(SmallViTError, match="runs.csv' is not a readable table of runs .*'two'"):
        collect_runs([table])
    table.write_text(table.read_text().replace("strong,two,", "strong,2,"))
    (tmp_path / "report" / "curves.jsonl.gz").write_bytes(b"not gzip")
    with pytest.raises(SmallViTError, match="curves.jsonl.gz' is not a readable curves file"):
        read_table(table)


def test_a_balanced_accuracy_recorded_by_a_run_is_carried_and_never_invented(tmp_path):
    balanced = _run(tmp_path / "runs", "caltech", 0, 0.60, 0.5, dataset="caltech101-2020")
    summary = json.loads((balanced / "summary.json").read_text())
    summary["final"][BALANCED] = 0.45
    (balanced / "summary.json").write_text(json.dumps(summary))
    _run(tmp_path / "runs", "caltech", 1, 0.62, 0.5, dataset="caltech101-2020")  # recorded none
    rows, _ = compare_rows(collect_runs([tmp_path / "runs"]))
    assert rows[0].balanced_mean == pytest.approx(45.0) and rows[0].balanced_std is None
    header, cells = table_cells(rows)
    assert header[header.index("test top-1 %") + 1] == "balanced top-1 % (test)" and "45.00" in cells[0]
    write_report(rows, tmp_path / "out")
    assert [r.balanced for r in collect_runs([tmp_path / "out"])] == [0.45, None]
    _run(tmp_path / "plain", "q", 0, 0.4, 0.4)
    assert "balanced top-1 % (test)" not in table_cells(compare_rows(collect_runs([tmp_path / "plain"]))[0])[0]


def test_report_without_metrics_has_no_curves(tmp_path):
    _run(tmp_path / "runs", "a", 0, 0.4, 0.4)
    written = write_report(compare_rows(collect_runs([tmp_path / "runs"]))[0], tmp_path / "out")
    assert [p.name for p in written] == ["report.md", "accuracy.png", "runs.csv"]


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


def test_a_study_table_copied_elsewhere_compares_with_its_curves(sweep_runs, tmp_path):
    write_report(compare_rows(collect_runs([sweep_runs]))[0], tmp_path / "report")
    for name in ("runs.csv", "curves.jsonl.gz"):
        (tmp_path / "copy").mkdir(exist_ok=True)
        shutil.copy(tmp_path / "report" / name, tmp_path / "copy" / name)
    rows, _ = compare_rows(collect_runs([tmp_path / "copy" / "runs.csv"]))
    assert [len(row.runs) for row in rows] == [2, 3] and all(run.curve for row in rows for run in row.runs)


KEPT_REPORTS = sorted(REPO.glob("results/*/report.md"))


def _regeneration(report: Path) -> tuple[list[str], str | None, str]:
    """The command a kept report says regenerates it: ``smallvit compare results/STUDY [options] --output
    results/STUDY``, as (paths, baseline, checkpoint)."""
    command = shlex.split(report.read_text().split("\n")[2].removeprefix("Generated by `").removesuffix("`."))
    study = report.parent.relative_to(REPO).as_posix()
    assert command[:3] == ["smallvit", "compare", study] and command[-2:] == ["--output", study], command
    options = dict(zip(command[3:-2:2], command[4:-2:2]))
    assert set(options) <= {"--baseline", "--checkpoint"}, command
    return [study], options.get("--baseline"), options.get("--checkpoint", "final")


@pytest.mark.parametrize("report", KEPT_REPORTS, ids=lambda path: path.parent.name)
def test_every_kept_report_regenerates_from_its_table_in_the_repository(report, monkeypatch):
    """Each kept report comes back byte for byte from the table kept beside it (runs.csv, curves.jsonl.gz) by the
    command it names; its plots are there (they are drawn from the same rows: see the slow test below)."""
    monkeypatch.chdir(REPO)
    paths, baseline, checkpoint = _regeneration(report)
    rows, _ = compare_rows(collect_runs(paths, checkpoint), baseline=baseline)
    text = report.read_text()
    titles = {"accuracy.png": "Top-1 accuracy per row", "val_curves.png": "Validation top-1 per epoch"}
    plots = [(report.parent / name, title) for name, title in titles.items() if f"]({name})" in text]
    assert all(plot.is_file() for plot, _ in plots)
    assert report_text(rows, plots, text.split("\n")[2].split("`")[1]) == text


@pytest.mark.slow
@pytest.mark.parametrize("report", KEPT_REPORTS, ids=lambda path: path.parent.name)
def test_every_kept_report_and_its_plots_regenerate_by_its_command(report, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    paths, baseline, checkpoint = _regeneration(report)
    out = tmp_path / "out"
    options = [*(["--baseline", baseline] if baseline else []), "--checkpoint", checkpoint, "--output", str(out)]
    result = CliRunner().invoke(app, ["compare", *paths, *options])
    assert result.exit_code == 0, result.output
    regenerated = (out / "report.md").read_text().split("\n")[3:]
    assert regenerated == report.read_text().split("\n")[3:]
    for name in ("accuracy.png", "val_curves.png", "runs.csv", "curves.jsonl.gz"):
        assert (out / name).is_file() == (report.parent / name).is_file()
    assert (out / "runs.csv").read_bytes() == (report.parent / "runs.csv").read_bytes()


def markdown_tables(text: str) -> list[list[str]]:
    """The tables of a markdown text, each as its list of lines."""
    tables, lines = [], text.splitlines()
    for number, line in enumerate(lines):
        if line.startswith("|") and (number == 0 or not lines[number - 1].startswith("|")):
            tables.append(list(itertools.takewhile(lambda row: row.startswith("|"), lines[number:])))
    return tables


def test_every_results_table_in_the_readme_is_a_kept_reports_table():
    """The README's result tables are pasted from the kept reports and tables across datasets: a paste that missed a
    fold, or a figure edited by hand, fails here."""
    kept = [
        table
        for report in [*REPO.glob("results/*/report.md"), *KEPT_DATASET_TABLES, REPO / "results" / "RESULTS.md"]
        for table in markdown_tables(report.read_text())
    ]
    readme = [table for table in markdown_tables((REPO / "README.md").read_text()) if table[0].startswith("| row |")]
    assert readme  # the README shows results tables
    kept_lines = {line for table in kept for line in table}
    assert [line for table in readme if table not in kept for line in table if line not in kept_lines] == []
    assert all(table in kept for table in readme)  # the same lines, in the same order


def _study(root: Path, dataset: str, results: dict[str, list[float]], epochs: int = 40, **stage) -> Path:
    """A study folder holding only its table: row -> test top-1 of its seeds, on ``dataset`` (row 'weak' its
    baseline)."""
    runs = root / "runs"
    for row, accuracies in results.items():
        for seed, test in enumerate(accuracies):
            _run(runs, row, seed, test, test, dataset=dataset, epochs=epochs, baseline=row == "weak", **stage)
    write_report(compare_rows(collect_runs([runs]))[0], root / "study")
    shutil.rmtree(runs)
    return root / "study"


def test_the_table_across_datasets_matches_rows_by_name(tmp_path):
    cifar = _study(tmp_path / "a", "cifar10-sample", {"weak": [0.40, 0.42, 0.44], "small-data": [0.50]})
    euro = _study(tmp_path / "b", "eurosat-2040", {"small-data": [0.80, 0.90], "weak": [0.70, 0.70]})
    caltech = _study(tmp_path / "c", "caltech101-2020", {"resnet18": [0.3]})
    rows, _ = compare_rows(collect_runs([cifar, euro, caltech]))
    header, cells = dataset_cells(rows)
    assert header == [
        "row",
        *(f"{d}: test top-1 % (runs) · gain · s/epoch" for d in ("cifar10-sample", "eurosat-2040", "caltech101-2020")),
    ]
    # weak on eurosat: 70, 70 -> std 0; small-data: 80, 90 -> mean 85, std sqrt(50), gain 15 ± sqrt(50/2 + 0/2);
    # 100 s of wall-clock over 40 epochs: 2.5 s/epoch, shown rounded to even
    assert cells == [
        ["weak", "42.00 ± 2.00 (3) · baseline · 2 s/epoch", "70.00 ± 0.00 (2) · baseline · 2 s/epoch", "—"],
        [
            "small-data",
            "50.00 (1) · +8.00 · 2 s/epoch",
            f"85.00 ± {math.sqrt(50):.2f} (2) · +15.00 ± 5.00 · 2 s/epoch",
            "—",
        ],
        ["resnet18", "—", "—", "30.00 (1) · 2 s/epoch"],
    ]
    written = write_dataset_table(rows, tmp_path / "out", command="smallvit compare a b c --by-dataset")
    assert "| resnet18 | — | — | 30.00 (1) · 2 s/epoch |" in written[0].read_text()
    lines = written[1].read_text().splitlines()
    header = "row,dataset,runs,test_top1_mean,test_top1_std,gain_mean,gain_std,seconds_per_epoch"
    assert lines[0] == header and len(lines) == 1 + 5
    assert lines[2] == "weak,eurosat-2040,2,70.0,0.0,0.0,,2.5" and lines[-1] == "resnet18,caltech101-2020,1,30.0,,,,2.5"


def test_the_table_across_datasets_refuses_two_protocols_of_a_row_on_one_dataset(tmp_path):
    short = _study(tmp_path / "a", "cifar10-sample", {"weak": [0.40]}, epochs=20)
    long = _study(tmp_path / "b", "cifar10-sample", {"weak": [0.50]}, epochs=60)
    rows, _ = compare_rows(collect_runs([short, long]))
    with pytest.raises(SmallViTError, match="row 'weak' has runs under two protocols on cifar10-sample"):
        dataset_cells(rows)


def test_only_the_table_of_rows_notes_a_row_shown_once_per_dataset(tmp_path):
    cifar = _study(tmp_path / "a", "cifar10-sample", {"weak": [0.40]})
    euro = _study(tmp_path / "b", "eurosat-2040", {"weak": [0.70]})
    runs = collect_runs([cifar, euro])
    assert any("has runs under several protocols" in note for note in compare_rows(runs)[1])
    assert compare_rows(runs, datasets_as_columns=True)[1] == []


def test_cli_compare_by_dataset(tmp_path, monkeypatch):
    monkeypatch.setattr(cli.console, "_width", 250)
    cifar = _study(tmp_path / "a", "cifar10-sample", {"weak": [0.40, 0.42]})
    euro = _study(tmp_path / "b", "eurosat-2040", {"weak": [0.70]})
    result = CliRunner().invoke(app, ["compare", str(cifar), str(euro), "--by-dataset", "--json"])
    assert result.exit_code == 0, result.output
    [weak] = json.loads(result.stdout)
    speed = {"gain_mean": 0.0, "gain_std": None, "seconds_per_epoch": 2.5}
    assert weak["name"] == "weak" and weak["datasets"]["eurosat-2040"] == {"mean": 70.0, "std": None, "runs": 1} | speed
    assert weak["datasets"]["cifar10-sample"] == {"mean": 41.0, "std": round(math.sqrt(2), 4), "runs": 2} | speed
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["compare", str(cifar), str(euro), "--by-dataset", "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert "41.00 ± 1.41 (2)" in result.output and "--by-dataset --output" in (out / "datasets.md").read_text()
    assert "several protocols" not in result.output  # the datasets are the table's columns
    assert not (out / "report.md").exists()


def test_aliases_line_up_rows_that_studies_named_differently_and_rows_keeps_some_in_order(tmp_path):
    cifar = {"weak": [0.40, 0.42, 0.44], "relvit-joint-weak": [0.50, 0.52], "conv-weak": [0.6]}
    cifar = _study(tmp_path / "a", "cifar10-sample", cifar, epochs=60, wall=120.0)
    euro = _study(tmp_path / "b", "eurosat-2040", {"weak": [0.70, 0.70], "relvit-joint": [0.80], "other": [0.1]})
    runs = rename_runs(collect_runs([cifar, euro]), parse_aliases(["relvit-joint-weak=relvit-joint", "conv-weak=conv"]))
    rows = select_rows(compare_rows(runs)[0], ["relvit-joint", "weak", "conv"])
    # relvit-joint on cifar: 50, 52 -> 51 ± sqrt(2), gain 51 − 42 ± sqrt(2/2 + 4/3); 120 s / 60 epochs, 100 s / 40
    assert dataset_cells(rows)[1] == [
        ["relvit-joint", "51.00 ± 1.41 (2) · +9.00 ± 1.53 · 2 s/epoch", "80.00 (1) · +10.00 · 2 s/epoch"],
        ["weak", "42.00 ± 2.00 (3) · baseline · 2 s/epoch", "70.00 ± 0.00 (2) · baseline · 2 s/epoch"],
        ["conv", "60.00 (1) · +18.00 · 2 s/epoch", "—"],
    ]
    assert [run.name for run in runs].count("relvit-joint") == 3 and "relvit-joint-weak" not in {r.name for r in runs}


def test_bad_aliases_and_unknown_rows_are_errors(tmp_path):
    cifar = _study(tmp_path / "a", "cifar10-sample", {"weak": [0.40], "relvit-joint-weak": [0.50]})
    runs = collect_runs([cifar])
    for texts, message in [
        (["relvit-joint"], "--alias relvit-joint: expected OLD=NEW"),
        (["=weak"], "expected OLD=NEW"),
        (["a=b", "a=c"], "row 'a' is renamed twice"),
    ]:
        with pytest.raises(SmallViTError, match=message):
            parse_aliases(texts)
    with pytest.raises(SmallViTError, match=r"--alias nope=…: no such row \(rows: weak, relvit-joint-weak\)"):
        rename_runs(runs, {"nope": "x"})
    with pytest.raises(SmallViTError, match="rows relvit-joint-weak, weak would all be 'weak' on cifar10-sample"):
        rename_runs(runs, {"relvit-joint-weak": "weak"})
    assert [r.name for r in rename_runs(runs, {"relvit-joint-weak": "weak", "weak": "base"})] == ["base", "weak"]
    with pytest.raises(SmallViTError, match="--rows relvit: no such row"):
        select_rows(compare_rows(runs)[0], ["weak", "relvit"])


def test_cli_compare_aliases_and_rows_are_kept_in_the_command(tmp_path, monkeypatch, capsys):
    cifar = _study(tmp_path / "a", "cifar10-sample", {"weak": [0.40], "relvit-joint-weak": [0.50]})
    euro = _study(tmp_path / "b", "eurosat-2040", {"relvit-joint": [0.80], "weak": [0.70]})
    out = tmp_path / "out"
    options = ["--by-dataset", "--alias", "relvit-joint-weak=relvit-joint", "--rows", "relvit-joint,weak"]
    result = CliRunner().invoke(app, ["compare", str(cifar), str(euro), *options, "--output", str(out)])
    assert result.exit_code == 0, result.output
    text = (out / "datasets.md").read_text()
    assert shlex.join([*options, "--output", str(out)]) + "`." in text.split("\n")[2]
    assert [line.split(" |")[0] for line in text.splitlines() if line.startswith("| ")][1:] == [
        "| relvit-joint",
        "| weak",
    ]
    monkeypatch.setattr("sys.argv", ["smallvit", "compare", str(cifar), "--rows", "weak,nope"])
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    assert exit_.value.code == 2 and capsys.readouterr().err.startswith("error: --rows nope: no such row")


KEPT_DATASET_TABLES = sorted(REPO.glob("results/*/datasets.md"))


@pytest.mark.parametrize("table", KEPT_DATASET_TABLES, ids=lambda path: path.parent.name)
def test_every_kept_table_across_datasets_regenerates_by_its_command(table, tmp_path, monkeypatch):
    """A kept table across datasets (``smallvit compare STUDY... --by-dataset ... --output results/NAME``) comes back
    byte for byte from the studies' tables kept in the repository."""
    monkeypatch.chdir(REPO)
    command = shlex.split(table.read_text().split("\n")[2].removeprefix("Generated by `").removesuffix("`."))
    study = table.parent.relative_to(REPO).as_posix()
    assert command[:2] == ["smallvit", "compare"] and "--by-dataset" in command and command[-2:] == ["--output", study]
    result = CliRunner().invoke(app, [*command[1:-1], str(tmp_path)])
    assert result.exit_code == 0, result.output
    for name in ("datasets.md", "datasets.csv"):
        assert (tmp_path / name).read_text().replace(str(tmp_path), study) == (table.parent / name).read_text()


def _study_with_validation(root: Path, dataset: str, results: dict[str, tuple[float, float]]) -> Path:
    """A study folder holding only its table: row -> (test, validation) top-1 of its one run (row 'weak' baseline)."""
    runs = root / "runs"
    for row, (test, val) in results.items():
        _run(runs, row, 0, test, val, dataset=dataset, epochs=40, baseline=row == "weak")
    write_report(compare_rows(collect_runs([runs]))[0], root / "study")
    shutil.rmtree(runs)
    return root / "study"


@pytest.fixture
def three_datasets(tmp_path):
    """Validation gains over 'weak' (points): x +10 / +1 / +10, y +8 / +5 / +3 on a / b / c; z is only run on a."""
    a = {"weak": (0.40, 0.50), "x": (0.50, 0.60), "y": (0.45, 0.58), "z": (0.90, 0.99)}
    b = {"weak": (0.70, 0.70), "x": (0.72, 0.71), "y": (0.80, 0.75)}
    c = {"weak": (0.30, 0.30), "x": (0.29, 0.40), "y": (0.40, 0.33)}
    return [_study_with_validation(tmp_path / n, n, d) for n, d in (("a", a), ("b", b), ("c", c))]


def test_leave_one_out_chooses_on_the_other_datasets_validation_and_reads_the_held_out_test(three_datasets):
    checks = leave_one_out(compare_rows(collect_runs(three_datasets))[0])
    # held out a: x scores (1 + 10) / 2 = 5.5 and y (5 + 3) / 2 = 4 on b and c (z was not run there) -> x, test +10;
    # held out b: x (10 + 10) / 2 = 10, y (8 + 3) / 2 = 5.5 -> x, test +2; held out c: x 5.5, y 6.5 -> y, test +10
    assert [(c.dataset, c.chosen, c.runs) for c in checks] == [("a", "x", 1), ("b", "x", 1), ("c", "y", 1)]
    assert [c.validation_gain for c in checks] == pytest.approx([5.5, 10.0, 6.5])
    assert [c.test_gain for c in checks] == pytest.approx([10.0, 2.0, 10.0])
    assert [c.verdict for c in checks] == [
        "beats the baseline by ≥ 3 points",
        "beats the baseline by less than 3 points",
        "beats the baseline by ≥ 3 points",
    ]


def test_leave_one_out_says_where_nothing_can_be_chosen_or_read(tmp_path):
    a = _study_with_validation(tmp_path / "a", "a", {"weak": (0.4, 0.4), "x": (0.3, 0.5)})
    b = _study_with_validation(tmp_path / "b", "b", {"weak": (0.4, 0.4), "y": (0.3, 0.5)})
    checks = leave_one_out(compare_rows(collect_runs([a, b]))[0])
    assert [c.verdict for c in checks] == ["y was not run on a", "x was not run on b"]
    rows = [row for row in compare_rows(collect_runs([a, b]))[0] if not row.baseline]
    with pytest.raises(SmallViTError, match="no baseline row on a, b: keep the row each study marked baseline"):
        leave_one_out(rows)
    with pytest.raises(SmallViTError, match="needs studies on two datasets or more"):
        leave_one_out(compare_rows(collect_runs([a]))[0])


def test_cli_compare_leave_one_out_writes_its_page(three_datasets, tmp_path, monkeypatch):
    monkeypatch.setattr(cli.console, "_width", 250)
    out = tmp_path / "out"
    paths = list(map(str, three_datasets))
    result = CliRunner().invoke(app, ["compare", *paths, "--leave-one-out", "--output", str(out)])
    assert result.exit_code == 0, result.output
    text = (out / "leave-one-out.md").read_text()
    assert "--leave-one-out --output" in text.split("\n")[2]
    assert "| b | x | +10.00 | +2.00 (1) | beats the baseline by less than 3 points |" in text
    assert "| z | +49.00 | — | — |" in text
    result = CliRunner().invoke(app, ["compare", *paths, "--leave-one-out", "--json"])
    assert [c["chosen"] for c in json.loads(result.stdout)] == ["x", "x", "y"]
    result = CliRunner().invoke(app, ["compare", *paths, "--leave-one-out", "--by-dataset"])
    assert isinstance(result.exception, SmallViTError) and "give one of them per command" in str(result.exception)


@pytest.mark.parametrize("page", sorted(REPO.glob("results/*/leave-one-out.md")), ids=lambda path: path.parent.name)
def test_every_kept_leave_one_out_check_regenerates_by_its_command(page, tmp_path, monkeypatch):
    """A kept check (``smallvit compare STUDY... --leave-one-out ... --output results/NAME``) comes back byte for byte
    from the studies' tables kept in the repository."""
    monkeypatch.chdir(REPO)
    command = shlex.split(page.read_text().split("\n")[2].removeprefix("Generated by `").removesuffix("`."))
    study = page.parent.relative_to(REPO).as_posix()
    assert command[:2] == ["smallvit", "compare"] and "--leave-one-out" in command
    assert command[-2:] == ["--output", study]
    result = CliRunner().invoke(app, [*command[1:-1], str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "leave-one-out.md").read_text().replace(str(tmp_path), study) == page.read_text()
