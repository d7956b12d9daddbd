"""End to end through the command line: train, evaluate, export, reload in timm, resume; bad input."""

import json
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

from smallvit.cli import app
from smallvit.models import create_timm_model

FAST = [
    "epochs=2",
    "data.subset.per_class=20",
    "data.eval_subset.per_class=10",
    "model.overrides.depth=2",
    "train.batch_size=50",
    "train.log_every=2",
]


pytestmark = pytest.mark.usefixtures("isolated_data")


def _train(tmp_path, name, *extra):
    args = ["train", "quickstart", *FAST, *extra, "--runs-dir", str(tmp_path / "runs"), "--name", name, "--quiet"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return tmp_path / "runs" / name


def _eval_records(run_dir):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if '"eval"' in line]


def test_train_eval_export_reload_in_timm(tmp_path):
    run = _train(tmp_path, "a")
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "curves.png", "subset_indices.json"):
        assert (run / name).is_file(), name
    assert (run / "checkpoints" / "best.safetensors").is_file() and (run / "checkpoints" / "last.json").is_file()
    assert list((run / "tensorboard").iterdir())
    summary = json.loads((run / "summary.json").read_text())
    lines = (run / "metrics.jsonl").read_text().splitlines()
    rates = [record["train/images_per_s"] for record in map(json.loads, lines) if record["kind"] == "train"]
    assert len(rates) == 4 and summary["images_per_s"] == round(sum(rates[1:]) / 3, 1)  # the first is warm-up
    assert {"val/supervised/acc1", "test/supervised/acc1"} <= set(summary["final"])
    assert len(json.loads((run / "subset_indices.json").read_text())["train"]) == 200
    splits = summary["provenance"]["splits"]
    assert (splits["train"]["images"], splits["val"]["images"], splits["test"]["images"]) == (200, 100, 100)
    assert summary["provenance"]["recipe"] == "quickstart" and summary["provenance"]["seed"] == 0

    for split in ("test", "val"):  # re-evaluating the last weights reproduces the numbers the run reported
        result = CliRunner().invoke(app, ["eval", str(run), "--checkpoint", "last", "--split", split])
        assert result.exit_code == 0, result.output
        assert f"{split}/supervised/acc1: {summary['final'][f'{split}/supervised/acc1']:.4f}" in result.output

    out = tmp_path / "export"
    result = CliRunner().invoke(app, ["export", str(run), "--output", str(out), "--checkpoint", "last"])
    assert result.exit_code == 0, result.output
    model = create_timm_model(out).eval()
    assert model.num_classes == 10
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 10)


def test_same_seed_same_metrics_and_resume_continues_exactly(tmp_path, monkeypatch):
    first = _eval_records(_train(tmp_path, "first"))
    second = _eval_records(_train(tmp_path, "second"))
    assert first == second

    import smallvit.engine.trainer as trainer

    real_save = trainer.save_checkpoint
    crashed = {}

    def crash_after_first_epoch(path, tensors, state):
        real_save(path, tensors, state)
        if path.name == "last.safetensors" and state["epoch"] == 1:
            crashed.update(state)
            raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "save_checkpoint", crash_after_first_epoch)
    args = ["train", "quickstart", *FAST, "--runs-dir", str(tmp_path / "runs"), "--name", "crashed", "--quiet"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 130 and "--resume" in result.output
    monkeypatch.setattr(trainer, "save_checkpoint", real_save)

    run = tmp_path / "runs" / "crashed"
    result = CliRunner().invoke(app, ["train", "--resume", str(run), "--quiet"])
    assert result.exit_code == 0, result.output
    assert _eval_records(run) == first
    summary = json.loads((run / "summary.json").read_text())  # the time of both starts, not of the last alone
    assert summary["resumed"] and summary["wall_clock_s"] == summary["training_s"] > crashed["train_s"] > 0


def _cli(*args, env_dir, **extra_env):
    env = {"SMALLVIT_DATA": str(env_dir / "data"), "SMALLVIT_CACHE": str(env_dir / "cache"), "PATH": "", **extra_env}
    return subprocess.run([sys.executable, "-m", "smallvit.cli", *args], capture_output=True, text=True, env=env)


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "nope"], "unknown recipe 'nope'"),
        (["train", "quickstart", "train.epoch=1"], "unknown key 'train.epoch'"),
        (["train", "quickstart", "dataset=svhn"], "smallvit prepare svhn"),
        (["train", "quickstart", "model.patch_size=5"], "not divisible by patch size 5"),
        (["eval", "no/such/run"], "not a run folder"),
        (["prepare", "cifar10", "--source", "no/such/archive.tar.gz"], "no/such/archive.tar.gz"),
    ],
)
def test_bad_input_is_one_line_without_traceback(tmp_path, args, message):
    result = _cli(*args, env_dir=tmp_path)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr and result.stderr.strip().count("\n") == 0, result.stderr


def test_a_run_that_fails_before_training_leaves_no_folder_so_its_name_stays_free(tmp_path):
    args = ("train", "quickstart", "model.patch_size=5", "--runs-dir", str(tmp_path / "runs"), "--name", "seed0")
    for _ in range(2):  # the retry gets the same name, not seed0-2
        result = _cli(*args, env_dir=tmp_path)
        assert result.returncode == 2 and "not divisible by patch size 5" in result.stderr, result.stderr
        assert list((tmp_path / "runs").iterdir()) == []


def test_an_unknown_device_is_refused_before_a_run_folder_is_made(tmp_path):
    result = _cli("train", "quickstart", "train.device=tpu9", "--runs-dir", str(tmp_path / "runs"), env_dir=tmp_path)
    assert result.returncode == 2 and "train.device=tpu9" in result.stderr, result.stderr
    assert not (tmp_path / "runs").exists()


def test_under_torchrun_a_named_folder_that_holds_a_run_is_refused_by_rank_0(tmp_path):
    (tmp_path / "runs" / "same").mkdir(parents=True)
    (tmp_path / "runs" / "same" / "config.yaml").write_text("{}")
    args = ("train", "quickstart", "--runs-dir", str(tmp_path / "runs"), "--name", "same")
    result = _cli(*args, env_dir=tmp_path, WORLD_SIZE="2", RANK="0")
    assert result.returncode == 2 and "already holds a run" in result.stderr and "--resume" in result.stderr


def test_without_best_metric_no_checkpoint_is_selected(tmp_path):
    run = _train(tmp_path, "pre", "train.best_metric=null")
    assert (run / "checkpoints" / "last.safetensors").is_file()
    assert not (run / "checkpoints" / "best.safetensors").exists()
    assert json.loads((run / "summary.json").read_text())["best"]["value"] is None
    result = CliRunner().invoke(app, ["eval", str(run)])  # falls back to the final weights
    assert result.exit_code == 0, result.output
