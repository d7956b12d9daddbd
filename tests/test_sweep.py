"""Sweep files: schema errors, plan statuses on fabricated run folders, resume decisions, estimates, the CLI."""

import json
import shlex
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from smallvit import cli
from smallvit.cli import app
from smallvit.config import load_recipe
from smallvit.errors import ConfigError, SmallViTError
from smallvit.sweep import (
    DEFAULT_IMAGES_PER_S,
    format_duration,
    load_sweep,
    plan_sweep,
    plan_table,
    plan_total,
    run_sweep,
    train_image_count,
)

REPO = Path(__file__).resolve().parents[1]

# 10 images per class of cifar10-sample: 100 training images per epoch, known without loading the dataset
TINY = ["epochs=3", "data.subset.per_class=10"]


@pytest.fixture(autouse=True)
def _isolated(isolated_data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


def _write(tmp_path, text: str, name: str = "sweep.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def _sweep(tmp_path, runs=None, **top):
    data = {"name": "demo", "seeds": [0, 1], "overrides": TINY, **top}
    data["runs"] = runs or [{"name": "weak", "recipe": "quickstart"}, {"name": "strong", "recipe": "quickstart"}]
    return load_sweep(_write(tmp_path, yaml.safe_dump(data)))


def _one_line_error(tmp_path, text: str) -> str:
    with pytest.raises(ConfigError) as err:
        load_sweep(_write(tmp_path, text))
    assert "\n" not in str(err.value)
    return str(err.value)


# ---------------------------------------------------------------- schema


def test_unknown_keys_are_one_line_errors_naming_the_allowed_keys(tmp_path):
    message = _one_line_error(tmp_path, "name: x\nrunz: []\nruns: [{name: a, recipe: quickstart}]\n")
    assert "unknown key 'runz'" in message and "runs_dir" in message
    message = _one_line_error(tmp_path, "name: x\nruns: [{name: a, recipe: quickstart, seed: 1}]\n")
    assert "unknown key 'runs.0.seed'" in message and "seeds" in message and "baseline" in message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("name: x\n", "'runs' is missing"),
        ("name: x\nruns: []\n", "runs"),
        ("name: x\nruns: [{name: a, recipe: quickstart}, {name: a, recipe: quickstart}]\n", "more than once"),
        ("name: x\nruns: [{name: a, recipe: q, baseline: true}, {name: b, recipe: q, baseline: true}]", "at most one"),
        ("name: x\noverrides: [seed=3]\nruns: [{name: a, recipe: quickstart}]\n", "seeds"),
        ("name: x\nruns: [{name: a, recipe: quickstart, overrides: [epochs]}]\n", "not key=value"),
        ("name: x\nseeds: [1, 1]\nruns: [{name: a, recipe: quickstart}]\n", "repeat"),
        ("name: x\nruns: [{name: a/b, recipe: quickstart}]\n", "runs.0.name"),
        ("name: x\nruns: [{name: a, recipe: missing.yaml}]\n", "missing.yaml"),
        ("name: [x\n", "not valid YAML"),
        ("- a\n", "mapping"),
    ],
)
def test_invalid_sweep_files(tmp_path, text, expected):
    assert expected in _one_line_error(tmp_path, text)


def test_missing_sweep_file():
    with pytest.raises(ConfigError, match="does not exist"):
        load_sweep("nowhere.yaml")


def test_recipe_paths_resolve_next_to_the_sweep_file_first_then_cwd(tmp_path):
    (tmp_path / "sweeps" / "recipes").mkdir(parents=True)
    (tmp_path / "sweeps" / "recipes" / "mine.yaml").write_text("base: quickstart\n")
    (tmp_path / "other.yaml").write_text("base: quickstart\n")
    text = "name: x\nruns: [{name: a, recipe: recipes/mine.yaml}, {name: b, recipe: other.yaml}]\n"
    sweep = load_sweep(_write(tmp_path / "sweeps", text))
    assert [r.recipe for r in sweep.runs] == ["sweeps/recipes/mine.yaml", "other.yaml"]


def test_bad_override_of_a_run_names_the_run(tmp_path):
    sweep = _sweep(tmp_path, runs=[{"name": "a", "recipe": "quickstart", "overrides": ["train.nope=1"]}])
    with pytest.raises(ConfigError, match="run 'a'.*unknown key 'train.nope'"):
        plan_sweep(sweep)


# ---------------------------------------------------------------- plan


def _summary(folder, images_per_s=50.0, epochs=3):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "summary.json").write_text(json.dumps({"epochs": epochs, "images_per_s": images_per_s, "final": {}}))


def _config(folder, recipe, overrides):
    folder.mkdir(parents=True, exist_ok=True)
    stage = load_recipe(recipe, overrides).stages[0]
    (folder / "config.yaml").write_text(yaml.safe_dump(stage.to_dict(), sort_keys=False))


def _checkpoint(stage_dir, epoch):
    (stage_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    (stage_dir / "checkpoints" / "last.json").write_text(json.dumps({"epoch": epoch}))


def test_plan_statuses_and_commands_on_fabricated_folders(tmp_path):
    sweep = _sweep(tmp_path)
    root = Path("runs/sweeps/demo")  # relative to the current directory, tmp_path
    _summary(root / "weak" / "seed0")
    _config(root / "weak" / "seed1", "quickstart", [*TINY, "seed=1"])
    _checkpoint(root / "weak" / "seed1", 1)
    (root / "strong" / "seed0").mkdir(parents=True)  # empty: a run that failed before writing its config
    plan = plan_sweep(sweep)
    by_key = {p.key: p for p in plan.runs}
    assert [p.key for p in plan.runs] == ["weak/seed0", "weak/seed1", "strong/seed0", "strong/seed1"]
    assert [p.status for p in plan.runs] == ["done", "partial", "todo", "todo"]
    assert by_key["weak/seed0"].commands == []
    assert by_key["weak/seed1"].commands == [["train", "--resume", str(root / "weak" / "seed1"), "--quiet"]]
    assert by_key["weak/seed1"].progress == "epoch 1/3" and by_key["weak/seed1"].note == ""
    assert by_key["strong/seed1"].commands == [
        ["train", "quickstart", *TINY, "seed=1", "--runs-dir", str(root / "strong"), "--name", "seed1", "--quiet"]
    ]


def test_a_folder_whose_config_differs_from_the_sweep_is_flagged(tmp_path):
    sweep = _sweep(tmp_path)
    _config(tmp_path / "runs/sweeps/demo/weak/seed0", "quickstart", ["epochs=7", "seed=0"])
    assert "differs" in plan_sweep(sweep).runs[0].note


def test_a_foreign_non_empty_folder_is_an_error(tmp_path):
    sweep = _sweep(tmp_path)
    (tmp_path / "runs/sweeps/demo/weak/seed0").mkdir(parents=True)
    (tmp_path / "runs/sweeps/demo/weak/seed0/notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not a run folder"):
        plan_sweep(sweep)


def test_multi_stage_runs_resume_by_stage_and_probe_their_first_stage(tmp_path):
    runs = [{"name": "relvit", "recipe": "relvit"}]
    sweep = _sweep(tmp_path, runs=runs, seeds=[0, 1, 2], probe=["knn", "linear"], overrides=["epochs=4"])
    stages = load_recipe("relvit").stages
    root = Path("runs/sweeps/demo/relvit")
    first, second = f"1-{stages[0].name}", f"2-{stages[1].name}"
    for seed in (0, 1):  # seed 0: finished, one probe logged; seed 1: in its second stage
        saved = [s.to_dict() for s in load_recipe("relvit", ["epochs=4", f"seed={seed}"]).stages]
        (root / f"seed{seed}").mkdir(parents=True)
        (root / f"seed{seed}" / "recipe.yaml").write_text(yaml.safe_dump({"name": "relvit", "stages": saved}))
        _summary(root / f"seed{seed}" / first)
    _summary(root / "seed0")
    (root / "seed0" / first / "evaluations.jsonl").write_text('{"kind": "knn", "acc1": 0.3}\n')
    _checkpoint(root / "seed1" / second, 2)
    plan = plan_sweep(sweep, only=["relvit"])
    done, partial, todo = plan.runs
    assert (done.status, done.progress) == ("partial", "probe linear")
    assert done.commands == [["eval", "linear", str(root / "seed0" / first)]]
    assert (partial.status, partial.progress) == ("partial", "stage 2/2, epoch 2/4")
    assert done.note == partial.note == ""
    assert partial.commands[0] == ["train", "--resume", str(root / "seed1"), "--quiet"]
    assert [c[:2] for c in partial.commands[1:]] == [["eval", "knn"], ["eval", "linear"]]
    assert todo.status == "todo" and len(todo.commands) == 3


def test_estimates_use_the_default_then_the_rows_then_the_sweeps_images_per_second(tmp_path):
    sweep = _sweep(tmp_path)
    plan = plan_sweep(sweep)
    # 3 epochs x 100 images at the default 100 images/s
    assert plan.rates["weak"] == (DEFAULT_IMAGES_PER_S, "default")
    assert [plan.seconds(p) for p in plan.runs] == [3.0, 3.0, 3.0, 3.0]
    assert plan.total_seconds == 12.0

    _summary(tmp_path / "runs/sweeps/demo/weak/seed0", images_per_s=50.0)
    _config(tmp_path / "runs/sweeps/demo/weak/seed1", "quickstart", [*TINY, "seed=1"])
    _checkpoint(tmp_path / "runs/sweeps/demo/weak/seed1", 1)
    plan = plan_sweep(sweep)
    assert plan.rates == {"weak": (50.0, "row"), "strong": (50.0, "sweep")}
    # weak/seed1 has 2 of 3 epochs left: 2 x 100 / 50; strong: 3 x 100 / 50
    assert [plan.seconds(p) for p in plan.runs] == [0.0, 4.0, 6.0, 6.0]
    assert plan.total_seconds == 16.0
    assert "1 done, 1 partial, 2 todo; about 16 s left" in plan_total(plan)


def test_a_run_whose_dataset_cannot_be_read_here_has_no_estimate(tmp_path):
    unreadable = ["data.subset=null", "dataset=imagefolder", f"data.root={tmp_path / 'no-such-folder'}"]
    runs = [{"name": "a", "recipe": "quickstart"}, {"name": "b", "recipe": "quickstart", "overrides": unreadable}]
    plan = plan_sweep(_sweep(tmp_path, runs=runs, seeds=[0]))
    assert [plan.seconds(p) for p in plan.runs] == [3.0, None]
    assert (plan.total_seconds, plan.unknown) == (3.0, 1)
    assert "about 3 s left + 1 run(s) whose dataset cannot be read here" in plan_total(plan)


def test_placeholders_in_overrides_name_the_sweeps_folder_and_the_seed(tmp_path):
    runs = [{"name": "ft", "recipe": "quickstart", "overrides": ["model.init_from={runs_dir}/pre/seed{seed}/1-x"]}]
    plan = plan_sweep(_sweep(tmp_path, runs=runs), runs_dir="out")
    assert [p.recipe.stages[0].model.init_from for p in plan.runs] == ["out/pre/seed0/1-x", "out/pre/seed1/1-x"]
    assert "model.init_from=out/pre/seed1/1-x" in plan.runs[1].train_command


def test_only_keeps_the_named_runs_and_rejects_unknown_names(tmp_path):
    sweep = _sweep(tmp_path)
    assert {p.run.name for p in plan_sweep(sweep, only=["strong"]).runs} == {"strong"}
    assert len(plan_sweep(sweep, only=["weak,strong"]).runs) == 4
    with pytest.raises(ConfigError, match="--only nope: no such run"):
        plan_sweep(sweep, only=["nope"])


def test_seed_keeps_those_seeds_in_row_order_and_rejects_unknown_seeds(tmp_path):
    sweep = _sweep(tmp_path)
    assert [(p.run.name, p.seed) for p in plan_sweep(sweep, seeds=[1]).runs] == [("weak", 1), ("strong", 1)]
    assert [p.seed for p in plan_sweep(sweep, only=["strong"], seeds=[0, 1]).runs] == [0, 1]
    with pytest.raises(ConfigError, match="--seed 7: no run"):
        plan_sweep(sweep, seeds=[7])


def test_runs_dir_is_relative_to_the_current_directory_and_can_be_replaced(tmp_path):
    sweep = _sweep(tmp_path, runs_dir="elsewhere/x")
    assert plan_sweep(sweep).runs[0].folder.as_posix() == "elsewhere/x/weak/seed0"
    assert plan_sweep(sweep, runs_dir=tmp_path / "y").runs[0].folder == tmp_path / "y" / "weak" / "seed0"


def test_format_duration():
    assert [format_duration(s) for s in (None, 5, 89.6, 90, 3600, 5400, 7500)] == [
        "?",
        "5 s",
        "90 s",
        "2 min",
        "60 min",
        "1 h 30 min",
        "2 h 05 min",
    ]


# ---------------------------------------------------------------- running (runner mocked)


class FakeRunner:
    """Records each command; 'trains' by writing summary.json into the run folder, or returns a chosen status."""

    def __init__(self, statuses=None):
        self.calls, self.statuses = [], dict(statuses or {})

    def __call__(self, argv):
        self.calls.append(argv)
        assert argv[:3] == [sys.executable, "-m", "smallvit.cli"]
        args = argv[3:]
        folder = Path(args[2]) if args[1] == "--resume" else Path(args[args.index("--runs-dir") + 1]) / args[-2]
        status = self.statuses.get(f"{folder.parent.name}/{folder.name}", 0)
        if status == 0 and args[0] == "train":
            _summary(folder)
        return status


def test_run_sweep_skips_done_resumes_partial_starts_todo_and_writes_sweep_json(tmp_path):
    runs = [{"name": "weak", "recipe": "quickstart", "label": "W", "baseline": True}]
    sweep = _sweep(tmp_path, runs=runs, seeds=[0, 1, 2])
    root = Path("runs/sweeps/demo/weak")
    _summary(root / "seed0")
    _config(root / "seed1", "quickstart", [*TINY, "seed=1"])
    (root / "seed2").mkdir(parents=True)  # empty leftover: removed, then started
    runner = FakeRunner()
    ran = run_sweep(plan_sweep(sweep), runner=runner)
    commands = [call[3:] for call in runner.calls]
    assert commands == [
        ["train", "--resume", str(root / "seed1"), "--quiet"],
        ["train", "quickstart", *TINY, "seed=2", "--runs-dir", str(root), "--name", "seed2", "--quiet"],
    ]
    assert [p.key for p in ran] == ["weak/seed1", "weak/seed2"]
    for seed in (0, 1, 2):
        entry = json.loads((root / f"seed{seed}" / "sweep.json").read_text())
        assert entry["row"] == "weak" and entry["seed"] == seed and entry["baseline"] and entry["label"] == "W"
        assert entry["sweep"] == "demo" and entry["file"] == "sweep.yaml" and entry["index"] == 0
        assert entry["command"].startswith("smallvit train quickstart epochs=3") and f"seed={seed}" in entry["command"]
    assert run_sweep(plan_sweep(sweep), runner=runner) == [] and len(runner.calls) == 2


def test_a_failed_run_does_not_stop_the_others_and_is_reported(tmp_path):
    sweep = _sweep(tmp_path)
    runner = FakeRunner({"weak/seed0": 1})
    with pytest.raises(SmallViTError, match=r"1 run\(s\) failed: weak/seed0 \(exit status 1\)"):
        run_sweep(plan_sweep(sweep), runner=runner)
    assert len(runner.calls) == 4


def test_an_interrupted_run_stops_the_sweep(tmp_path):
    sweep = _sweep(tmp_path)
    runner = FakeRunner({"weak/seed1": 130})
    with pytest.raises(KeyboardInterrupt):
        run_sweep(plan_sweep(sweep), runner=runner)
    assert len(runner.calls) == 2


# ---------------------------------------------------------------- command line


def test_cli_dry_run_prints_the_plan_and_trains_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(cli.console, "_width", 250)
    _sweep(tmp_path)
    _summary(tmp_path / "runs/sweeps/demo/weak/seed0", images_per_s=50.0)
    result = CliRunner().invoke(app, ["sweep", "sweep.yaml", "--dry-run", "--only", "weak"])
    assert result.exit_code == 0, result.output
    assert "done" in result.output and "todo" in result.output and "50 (row)" in result.output
    assert "smallvit train quickstart epochs=3 data.subset.per_class=10 seed=1" in result.output
    assert "2 runs: 1 done, 0 partial, 1 todo; about 6 s left" in result.output
    assert not (tmp_path / "runs/sweeps/demo/weak/seed1").exists()


def test_plan_table_renders(tmp_path):
    table = plan_table(plan_sweep(_sweep(tmp_path)))
    assert [c.header for c in table.columns] == ["run", "seed", "status", "command", "images/s", "estimate"]
    assert table.row_count == 4


@pytest.mark.slow
def test_sweep_end_to_end_trains_resumes_nothing_and_compares(tmp_path):
    """Two 1-epoch runs through real child processes, a rerun that skips them, then `smallvit compare`."""
    overrides = ["epochs=1", "data.subset.per_class=4", "data.eval_subset.per_class=2", "model.overrides.depth=1"]
    text = yaml.safe_dump(
        {
            "name": "tiny",
            "seeds": [0, 1],
            "overrides": overrides,
            "runs": [{"name": "q", "recipe": "quickstart", "baseline": True}],
        }
    )
    _write(tmp_path, text)
    result = CliRunner().invoke(app, ["sweep", "sweep.yaml"])
    assert result.exit_code == 0, result.output
    for seed in (0, 1):
        folder = tmp_path / "runs/sweeps/tiny/q" / f"seed{seed}"
        assert (folder / "summary.json").is_file() and (folder / "sweep.json").is_file()
    result = CliRunner().invoke(app, ["sweep", "sweep.yaml", "--dry-run"])
    assert "2 runs: 2 done, 0 partial, 0 todo; nothing left to run" in result.output
    result = CliRunner().invoke(app, ["compare", "runs/sweeps/tiny", "--json", "--output", "report"])
    assert result.exit_code == 0, result.output
    row = json.loads(result.stdout)[0]
    assert row["name"] == "q" and row["runs"] == 2 and row["seeds"] == [0, 1] and row["baseline"]
    assert row["top1_mean"] is not None and row["val_mean"] is not None
    assert (tmp_path / "report" / "val_curves.png").stat().st_size > 0


def test_image_counts_leave_out_a_validation_split_carved_from_train():
    own_val = load_recipe("quickstart").stages[0]
    carved = load_recipe("quickstart", ["data.val_split=none", "data.val_fraction=0.25"]).stages[0]
    assert (train_image_count(own_val), train_image_count(carved)) == (2040, 1530)


@pytest.mark.parametrize("sweep_file", sorted((REPO / "results" / "sweeps").glob("*.yaml")), ids=lambda p: p.name)
def test_every_sweep_kept_in_the_repository_plans_all_its_runs(sweep_file, monkeypatch):
    """A row with a mistyped override would otherwise stop a queue hours after it was started."""
    monkeypatch.chdir(REPO)  # sweeps name their recipes relative to where they are run from
    plan = plan_sweep(load_sweep(sweep_file.relative_to(REPO)), runs_dir="runs-never-made")
    assert plan.runs and all(p.status == "todo" for p in plan.runs)


def _queue_lines() -> list:
    return [
        pytest.param(line, id=f"{queue.name}:{number}")
        for queue in sorted((REPO / "results" / "queues").glob("*.txt"))
        for number, line in enumerate(queue.read_text().splitlines(), 1)
        if line.strip() and not line.startswith("#")
    ]


@pytest.mark.parametrize("line", _queue_lines())
def test_every_queue_line_kept_in_the_repository_is_a_valid_sweep_command(line, monkeypatch):
    sweep_file, *options = shlex.split(line)
    monkeypatch.chdir(REPO)  # the queue runs from the repository root
    result = CliRunner().invoke(app, ["sweep", sweep_file, *options, "--dry-run", "--runs-dir", "runs-never-made"])
    assert result.exit_code == 0, result.output
    assert " todo;" in result.output and not (REPO / "runs-never-made").exists()
