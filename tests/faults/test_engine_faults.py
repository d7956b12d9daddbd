"""Hostile and broken input to the engine, and faults while it runs: non-finite numbers, damaged checkpoints and run
folders, bad recipes and options, a full disk, two processes racing for one run folder, SIGTERM and SIGKILL.

Each test names the guarantee it proves. Command-line behaviour is tested on real processes (``cli`` fixture, see
``cli_processes.py``): exit code 2, exactly one line on stderr, no traceback. Runs are tiny (80 training images,
one 48-d block, 3 epochs of 4 steps): the file takes about 50 s of CPU, 90 s on 2 cores shared with other work.
"""

import errno
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import SafetensorError
from safetensors.torch import load_file

import smallvit.engine.checkpoint as checkpoint_module
import smallvit.engine.trainer as trainer
from smallvit.config import load_recipe
from smallvit.engine.checkpoint import load_checkpoint, save_checkpoint
from smallvit.engine.experiment import write_json
from smallvit.engine.logging import plot_curves, read_metrics
from smallvit.engine.runner import new_run_dir
from smallvit.engine.trainer import NonFiniteLoss, train
from smallvit.errors import SmallViTError

FAST = [
    "epochs=3",
    "data.subset.per_class=8",  # 80 training images: 4 steps of 20 per epoch
    "data.eval_subset.per_class=4",
    "model.overrides.depth=1",
    "model.overrides.embed_dim=48",
    "model.overrides.num_heads=3",
    "train.batch_size=20",
    "train.eval_every=1",
    "train.log_every=1",
    "precision=fp32",
]
STEPS_PER_EPOCH, EPOCHS = 4, 3


def train_args(runs: Path, name: str, *extra: str) -> list[str]:
    return ["train", "quickstart", *FAST, *extra, "--runs-dir", str(runs), "--name", name, "--quiet"]


def one_line_error(result, *fragments: str) -> str:
    """The command failed as a user error should: exit code 2, one line on stderr naming the problem, no traceback."""
    assert result.returncode == 2, (result.returncode, result.stderr[-3000:])
    assert "Traceback" not in result.stderr, result.stderr
    line = result.stderr.strip()
    assert line.startswith("error: ") and "\n" not in line, result.stderr
    for fragment in fragments:
        assert fragment in line, line
    return line


def succeeded(result) -> None:
    assert result.returncode == 0, (result.returncode, result.stderr[-3000:])


def checkpoint_tensors(run: Path, name: str = "last") -> dict[str, torch.Tensor]:
    return load_file(str(run / "checkpoints" / f"{name}.safetensors"))


def assert_bit_identical(run: Path, reference: Path) -> None:
    """Same parameters, optimizer state and RNG streams (every tensor of ``last``), and the same evaluations."""
    ours, theirs = checkpoint_tensors(run), checkpoint_tensors(reference)
    assert sorted(ours) == sorted(theirs)
    different = [key for key in ours if not torch.equal(ours[key], theirs[key])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"
    assert eval_records(run) == eval_records(reference)
    summary, expected = (json.loads((r / "summary.json").read_text()) for r in (run, reference))
    assert (summary["final"], summary["best"]) == (expected["final"], expected["best"])


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def eval_records(run: Path) -> list[dict]:
    return [r for r in records(run) if r["kind"] in ("eval", "test")]


def all_finite(path: Path) -> bool:
    return all(torch.isfinite(t).all() for t in load_file(str(path)).values() if t.is_floating_point())


def unfinished_copy(reference: Path, destination: Path) -> Path:
    """A copy of the reference run as it was one epoch before it finished (its ``last.prev`` as ``last``)."""
    shutil.copytree(reference, destination)
    checkpoints = destination / "checkpoints"
    shutil.copy(checkpoints / "last.prev.safetensors", checkpoints / "last.safetensors")
    (destination / "summary.json").unlink()
    assert load_checkpoint(checkpoints / "last.safetensors")[1]["epoch"] == EPOCHS - 1
    return destination


@pytest.fixture(scope="module")
def reference(cli, tmp_path_factory, data_cache) -> Path:
    """An uninterrupted run of the FAST recipe, which every interrupted run must reproduce bit for bit."""
    runs = tmp_path_factory.mktemp("reference")
    env = dict(os.environ, SMALLVIT_DATA=str(runs / "data"), SMALLVIT_CACHE=str(data_cache))
    succeeded(cli.run(*train_args(runs, "reference"), env=env))
    return runs / "reference"


# ---------------------------------------------------------------- non-finite numbers: never silent, never saved


def test_a_huge_learning_rate_stops_at_the_first_nonfinite_step_and_saves_no_nan_model(cli, env, tmp_path):
    result = cli.run(*train_args(tmp_path, "run", "lr=1e10"), env=env)
    one_line_error(result, "the loss is not finite at step 2", "(objective: supervised)", "no checkpoint was written")
    assert not list((tmp_path / "run").rglob("*.safetensors"))
    assert not (tmp_path / "run" / ".lock").exists()


def test_a_huge_objective_weight_stops_naming_that_objective(cli, env, tmp_path):
    """A weight that makes the weighted loss overflow, though the objective's own loss is finite, is named."""
    result = cli.run(*train_args(tmp_path, "run", "objectives.0.weight=1e39"), env=env)
    one_line_error(result, "the loss is not finite at step 1", "(objective: supervised)")


@pytest.mark.parametrize(
    "override, key",
    [("lr=inf", "optim.lr"), ("lr=.inf", "optim.lr"), ("lr=nan", "optim.lr"), ("optim.min_lr=-.inf", "optim.min_lr")],
)
def test_nonfinite_numbers_are_refused_before_training(cli, env, tmp_path, override, key):
    result = cli.run(*train_args(tmp_path, "run", override), env=env)
    one_line_error(result, key, "finite number")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("seed", ["-1", str(2**62)])
def test_a_seed_out_of_range_is_refused_before_training(cli, env, tmp_path, seed):
    one_line_error(cli.run(*train_args(tmp_path, "run", f"seed={seed}"), env=env), "train.seed")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "override",
    [
        "objectives.0.weight=-1",
        "objectives.0.weight=.inf",
        "objectives.0.weight=.nan",
        "objectives.0.weight_schedule.warmup_epochs=.nan",
    ],
)
def test_negative_or_nonfinite_objective_weights_are_refused_before_training(cli, env, tmp_path, override):
    result = cli.run(*train_args(tmp_path, "run", override), env=env)
    one_line_error(result, override.split("=")[0])
    assert not (tmp_path / "run").exists()


def poison_steps(monkeypatch, steps: set[int]) -> None:
    """Make the augmented images of the given optimizer steps (counted from 1 in this process) NaN: a corrupt batch."""
    real_build = trainer.build_experiment

    def build_experiment(config, *args, **kwargs):
        exp = real_build(config, *args, **kwargs)
        augment, calls = exp.augment, [0]

        def poisoned(*a, **k):
            batch = augment(*a, **k)
            calls[0] += 1
            if calls[0] in steps:
                for view in batch.views.values():
                    view.images.fill_(float("nan"))
            return batch

        exp.augment = poisoned
        return exp

    monkeypatch.setattr(trainer, "build_experiment", build_experiment)


def fast_stage(*overrides: str):
    return load_recipe("quickstart", [*FAST, *overrides]).stages[0]


def test_a_nonfinite_loss_after_a_checkpoint_names_the_step_objective_and_last_good_checkpoint(
    env, tmp_path, monkeypatch, no_pictures
):
    poison_steps(monkeypatch, {6})
    with pytest.raises(NonFiniteLoss) as excinfo:
        train(fast_stage(), tmp_path / "run", quiet=True)
    message = str(excinfo.value)
    checkpoints = tmp_path / "run" / "checkpoints"
    assert "\n" not in message and "step 6 (objective: supervised)" in message
    assert f"the last good checkpoint is {checkpoints / 'last.safetensors'}" in message
    assert load_checkpoint(checkpoints / "last.safetensors")[1]["step"] == STEPS_PER_EPOCH
    assert all(all_finite(path) for path in checkpoints.glob("*.safetensors"))


def test_skip_nonfinite_skips_bad_steps_counts_them_and_stops_past_its_budget(env, tmp_path, monkeypatch, no_pictures):
    poison_steps(monkeypatch, {2, 7})
    train(fast_stage("train.skip_nonfinite=2", "epochs=2"), tmp_path / "skip", quiet=True)
    train_records = [r for r in records(tmp_path / "skip") if r["kind"] == "train"]
    expected = [(1, 0), (3, 1), (4, 1), (5, 1), (6, 1), (8, 2)]  # a skipped step alone makes no log record
    assert [(r["step"], r["train/skipped_nonfinite"]) for r in train_records] == expected
    assert all(torch.isfinite(torch.tensor(r["train/loss"])) for r in train_records)
    tensors = checkpoint_tensors(tmp_path / "skip")
    assert all_finite(tmp_path / "skip" / "checkpoints" / "last.safetensors")
    assert {float(v) for k, v in tensors.items() if k.endswith(".step")} == {6.0}  # 8 steps, 2 left no update

    poison_steps(monkeypatch, {2, 3})
    with pytest.raises(NonFiniteLoss, match="not finite at step 3"):
        train(fast_stage("train.skip_nonfinite=1"), tmp_path / "stop", quiet=True)


def test_weights_that_become_nonfinite_are_never_written_as_a_checkpoint(env, tmp_path, monkeypatch, no_pictures):
    """The loss of the step that broke the weights was still finite: the checkpoint writer itself refuses."""
    real_build = trainer.build_optimizer

    def build_optimizer(model, config):
        optimizer = real_build(model, config)
        real_step = optimizer.step

        def step(*args, **kwargs):
            real_step(*args, **kwargs)
            if optimizer.state[next(iter(optimizer.state))]["step"] == STEPS_PER_EPOCH:  # the epoch's last step
                next(model.parameters()).data[0] = float("inf")

        optimizer.step = step
        return optimizer

    monkeypatch.setattr(trainer, "build_optimizer", build_optimizer)
    with pytest.raises(NonFiniteLoss, match=f"weights became non-finite .* at step {STEPS_PER_EPOCH}, so last"):
        train(fast_stage(), tmp_path / "run", quiet=True)
    assert not list((tmp_path / "run" / "checkpoints").glob("*.safetensors"))


def test_eval_of_a_checkpoint_with_nonfinite_weights_exits_nonzero(cli, env, reference, tmp_path):
    run = shutil.copytree(reference, tmp_path / "run")
    tensors, state = load_checkpoint(run / "checkpoints" / "last.safetensors")
    tensors = {
        k: v.fill_(float("nan")) if k.startswith("model.backbone") and v.is_floating_point() else v
        for k, v in tensors.items()
    }
    save_checkpoint(run / "checkpoints" / "last.safetensors", tensors, state)  # a valid file holding a NaN model
    one_line_error(cli.run("eval", run, "--checkpoint", "last", env=env), "is not finite")


# ---------------------------------------------------------------- damaged files and bad options: one line each


def damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if how == "truncated" else random.Random(0).randbytes(len(data)))


@pytest.mark.parametrize("how", ["truncated", "random bytes"])
@pytest.mark.parametrize("command", ["resume", "eval", "export"])
def test_a_damaged_checkpoint_is_one_line(cli, env, reference, tmp_path, command, how):
    run = unfinished_copy(reference, tmp_path / "run")
    checkpoints = run / "checkpoints"
    (checkpoints / "last.prev.safetensors").unlink()  # nothing to fall back to
    damage(checkpoints / ("last.safetensors" if command == "resume" else "best.safetensors"), how)
    args = {
        "resume": ["train", "--resume", run],
        "eval": ["eval", run],
        "export": ["export", run, "--output", tmp_path / "export"],
    }[command]
    one_line_error(cli.run(*args, env=env), "checkpoint", "safetensors")
    assert not (run / ".lock").exists()


def test_a_damaged_last_checkpoint_falls_back_to_the_previous_one_and_resumes_exactly(cli, env, reference, tmp_path):
    run = shutil.copytree(reference, tmp_path / "run")
    (run / "summary.json").unlink()  # as if it was stopped right after writing its last (epoch-3) checkpoint
    damage(run / "checkpoints" / "last.safetensors", "truncated")  # ... which was then damaged: use last.prev
    result = cli.run("train", "--resume", run, "--quiet", env=env)
    succeeded(result)
    assert "resuming from the checkpoint before it, last.prev.safetensors" in " ".join(result.stdout.split())
    assert_bit_identical(run, reference)


@pytest.mark.parametrize("command", ["resume", "eval"])
def test_an_unparseable_run_config_is_one_line(cli, env, reference, tmp_path, command):
    run = shutil.copytree(reference, tmp_path / "run")
    (run / "config.yaml").write_text("train: {epochs: [3\n  batch_size: 20\n")
    args = ["train", "--resume", run] if command == "resume" else ["eval", run]
    one_line_error(cli.run(*args, env=env), "run config", "config.yaml", "is not valid YAML")


@pytest.mark.parametrize(
    "content, message",
    [
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe", "is not valid YAML"),
        (b"epochs: 3\x00\x01\x02", "is not valid YAML"),
        (b"", "is empty"),
        (b"# only a comment\n\n", "is empty"),
        (b"- a list\n- not a mapping\n", "must be a YAML mapping"),
    ],
    ids=["binary", "nul bytes", "empty", "comments only", "a list"],
)
def test_a_broken_recipe_file_is_one_line(cli, env, tmp_path, content, message):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_bytes(content)
    one_line_error(cli.run("train", recipe, "--runs-dir", tmp_path / "runs", env=env), str(recipe), message)
    assert not (tmp_path / "runs").exists()


def test_a_relative_base_resolves_against_the_recipe_folder_not_the_working_directory(tmp_path, monkeypatch):
    (tmp_path / "recipes" / "shared").mkdir(parents=True)
    (tmp_path / "recipes" / "shared" / "grand.yaml").write_text("base: quickstart\ntrain: {epochs: 7, seed: 5}\n")
    (tmp_path / "recipes" / "parent.yaml").write_text("base: shared/grand.yaml\ntrain: {epochs: 6}\n")
    (tmp_path / "recipes" / "child.yaml").write_text("base: parent.yaml\noptim: {lr: 0.002}\n")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "parent.yaml").write_text("train: {epochs: 99}\n")  # a decoy in the working directory
    monkeypatch.chdir(tmp_path / "elsewhere")
    stage = load_recipe("../recipes/child.yaml").stages[0]
    assert (stage.train.epochs, stage.train.seed, stage.optim.lr, stage.name) == (6, 5, 0.002, "child")


def test_a_missing_relative_base_is_one_line(cli, env, tmp_path):
    (tmp_path / "child.yaml").write_text("base: nowhere.yaml\n")
    one_line_error(cli.run("train", tmp_path / "child.yaml", env=env), "nowhere.yaml", "does not exist")


def test_an_unknown_device_is_one_line(cli, env, tmp_path):
    one_line_error(cli.run(*train_args(tmp_path, "run", "device=tpu9"), env=env), "train.device=tpu9")


def test_a_runs_dir_that_is_a_file_is_one_line(cli, env, tmp_path):
    (tmp_path / "file").write_text("not a folder")
    args = ["train", "quickstart", *FAST, "--quiet"]
    one_line_error(cli.run(*args, "--runs-dir", tmp_path / "file", env=env), "--runs-dir", "is a file")
    result = cli.run(*args, "--runs-dir", tmp_path / "file" / "runs", env=env)
    one_line_error(result, "--runs-dir", f"is inside a file, {tmp_path / 'file'}")


def test_an_unwritable_runs_dir_is_one_line(cli, env, tmp_path):
    runs = tmp_path / "readonly"
    runs.mkdir(mode=0o500)
    try:
        (runs / "probe").mkdir()
    except PermissionError:
        pass
    else:
        pytest.skip("running as root: a read-only folder does not stop writes (see the runs-dir-under-a-file test)")
    one_line_error(cli.run(*train_args(runs, "run"), env=env), "cannot create a run folder", "Permission denied")


def test_export_to_an_existing_file_is_one_line(cli, env, reference, tmp_path):
    (tmp_path / "model.safetensors").write_text("precious")
    result = cli.run("export", reference, "--output", tmp_path / "model.safetensors", env=env)
    one_line_error(result, "--output", "is a file")
    assert (tmp_path / "model.safetensors").read_text() == "precious"


def test_a_full_disk_keeps_the_previous_checkpoint_and_the_run_resumes_exactly(cli, env, reference, tmp_path):
    hooks = {"enospc_in_write": ["last.safetensors", 2]}  # the end of epoch 2
    result = cli.run(*train_args(tmp_path, "run"), env=env, hooks=hooks)
    one_line_error(result, "No space left on device", "the previous checkpoint is intact", "--resume")
    run = tmp_path / "run"
    tensors, state = load_checkpoint(run / "checkpoints" / "last.safetensors")  # complete, and verified
    assert state["epoch"] == 1 and state["step"] == STEPS_PER_EPOCH
    assert sorted(p.name for p in (run / "checkpoints").iterdir() if p.name.startswith(".")) == []  # no temp files
    assert not (run / ".lock").exists()
    succeeded(cli.run("train", "--resume", run, "--quiet", env=env))
    assert_bit_identical(run, reference)


# ---------------------------------------------------------------- races: one process per run folder


def test_runs_started_at_once_with_the_same_name_never_share_a_folder(tmp_path):
    for trial in range(20):  # threads in one process
        runs, barrier, made = tmp_path / f"threads{trial}", threading.Barrier(4), []

        def make(runs=runs, barrier=barrier, made=made):
            barrier.wait()
            made.append(new_run_dir(runs, "quickstart", "same"))

        threads = [threading.Thread(target=make) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(set(made)) == 4 and all(path.is_dir() for path in made)

    # Processes: each imports once (torch is slow to import), then per trial says "ready" and waits for one line
    # from the test, so every trial's mkdir calls start together instead of whenever each import ends.
    script = (
        "import sys; from pathlib import Path; from smallvit.engine.runner import new_run_dir\n"
        "for runs in sys.argv[1:]:\n"
        "    print('ready', flush=True); sys.stdin.readline()\n"
        "    print(new_run_dir(Path(runs), 'quickstart', 'same'), flush=True)\n"
    )
    trials = [tmp_path / f"processes{trial}" for trial in range(20)]
    command = [sys.executable, "-c", script, *map(str, trials)]
    children = [subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for _ in range(3)]
    for runs in trials:
        assert all(child.stdout.readline() == "ready\n" for child in children)
        for child in children:
            child.stdin.write("go\n")
            child.stdin.flush()
        made = {child.stdout.readline().strip() for child in children}
        assert made == {str(runs / "same"), str(runs / "same-2"), str(runs / "same-3")}
    for child in children:
        child.stdin.close()
        assert child.wait(timeout=60) == 0


def test_a_second_resume_of_a_running_folder_is_refused_with_one_line(cli, env, reference, tmp_path):
    run = unfinished_copy(reference, tmp_path / "run")
    ready, go = tmp_path / "ready", tmp_path / "go"
    hooks = {"pause_in_step": [(EPOCHS - 1) * STEPS_PER_EPOCH + 1, str(ready), str(go)]}
    first = cli.start("train", "--resume", run, "--quiet", env=env, hooks=hooks)
    wait_for(ready)
    second = cli.run("train", "--resume", run, "--quiet", env=env)
    one_line_error(second, f"{run} is in use by process {first.pid}")
    go.touch()
    succeeded(first.wait())
    assert not (run / ".lock").exists()
    assert_bit_identical(run, reference)


def test_a_stale_lock_of_a_dead_process_is_taken_over_but_another_hosts_lock_is_not(cli, env, reference, tmp_path):
    run = unfinished_copy(reference, tmp_path / "run")
    (run / ".lock").write_text(f"12345 {socket.gethostname()}-elsewhere\n")
    one_line_error(cli.run("train", "--resume", run, env=env), "is in use by process 12345")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (run / ".lock").write_text(f"{dead.pid} {socket.gethostname()}\n")
    succeeded(cli.run("train", "--resume", run, "--quiet", env=env))
    assert not (run / ".lock").exists()


def wait_for(path: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.02)


# ---------------------------------------------------------------- signals


def test_sigterm_mid_epoch_checkpoints_prints_the_resume_command_and_resumes_exactly(cli, env, reference, tmp_path):
    ready, go = tmp_path / "ready", tmp_path / "go"
    step = STEPS_PER_EPOCH + 2  # the second step of epoch 2
    child = cli.start(*train_args(tmp_path, "run"), env=env, hooks={"pause_in_step": [step, str(ready), str(go)]})
    wait_for(ready)
    os.kill(child.pid, signal.SIGTERM)
    go.touch()
    result = child.wait()
    run = tmp_path / "run"
    assert result.returncode == 130, result.stderr
    assert result.stderr == (  # one line, however long, so that the command can be copied
        f"stopped by signal {int(signal.SIGTERM)} at step {step} (epoch 2), checkpoint written: "
        f"continue with `smallvit train --resume {run}`\n"
    )
    state = load_checkpoint(run / "checkpoints" / "last.safetensors")[1]
    assert (state["epoch"], state["batch"], state["step"]) == (1, 2, step)  # mid-epoch: epoch 2, after 2 batches
    succeeded(cli.run("train", "--resume", run, "--quiet", env=env))
    assert_bit_identical(run, reference)


def test_sigkill_at_three_random_steps_then_resume_is_bit_identical(cli, env, reference, tmp_path):
    """SIGKILL gives no chance to save: each resume restarts from the last epoch checkpoint and replays the epoch
    (the first kill, before any checkpoint, from scratch in the same folder). One seeded random step in each epoch:
    steps 2, 5 and 11 — mid-epoch 1, the start of epoch 2, mid-epoch 3."""
    rng = random.Random(1)
    steps = [epoch * STEPS_PER_EPOCH + rng.randint(1, STEPS_PER_EPOCH) for epoch in range(EPOCHS)]
    assert any((s - 1) % STEPS_PER_EPOCH for s in steps), steps  # at least one kill lands mid-epoch
    run = tmp_path / "run"
    for i, step in enumerate(steps):
        args = train_args(tmp_path, "run") if i == 0 else ["train", "--resume", run, "--quiet"]
        result = cli.run(*args, env=env, hooks={"kill_in_step": step})
        assert result.returncode == -signal.SIGKILL, (step, result.stderr[-2000:])
    succeeded(cli.run("train", "--resume", run, "--quiet", env=env))
    assert_bit_identical(run, reference)
    train_steps = [r["step"] for r in records(run) if r["kind"] == "train"]
    assert train_steps == list(range(1, EPOCHS * STEPS_PER_EPOCH + 1))  # no record twice, none missing


# ---------------------------------------------------------------- what a crash leaves: partial and damaged run files


@pytest.mark.parametrize(
    "error",
    [
        OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)),
        SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)"),
    ],
    ids=["OSError", "SafetensorError"],
)
def test_a_full_disk_while_writing_a_checkpoint_is_one_line_and_leaves_no_partial_file(tmp_path, monkeypatch, error):
    """safetensors reports a failed write as its own SafetensorError, with the OS error inside its message."""
    checkpoints = tmp_path / "run" / "checkpoints"
    path = checkpoints / "last.safetensors"
    save_checkpoint(path, {"w": torch.ones(2)}, {"epoch": 1})

    def full_disk(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\0" * 10)  # the part that fitted
        raise error

    monkeypatch.setattr(checkpoint_module, "save_file", full_disk)
    with pytest.raises(SmallViTError) as excinfo:
        save_checkpoint(path, {"w": torch.zeros(2)}, {"epoch": 2})
    message = str(excinfo.value)
    assert "\n" not in message
    assert message.startswith(f"could not write {path} (No space left on device): free disk space, then continue with ")
    assert message.endswith(f"`smallvit train --resume {tmp_path / 'run'}`; the previous checkpoint is intact")
    assert load_checkpoint(path)[1]["epoch"] == 1
    assert sorted(p.name for p in checkpoints.iterdir()) == ["last.json", "last.safetensors"]


def test_a_failed_first_checkpoint_says_none_was_written(tmp_path, monkeypatch):
    def read_only(tensors, filename, metadata=None):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(filename))

    monkeypatch.setattr(checkpoint_module, "save_file", read_only)
    with pytest.raises(SmallViTError, match=r"\(Read-only file system\): make the folder writable; no best.safe"):
        save_checkpoint(tmp_path / "best.safetensors", {"w": torch.ones(2)}, {})
    assert list(tmp_path.iterdir()) == []


def test_a_checkpoint_write_removes_the_temporary_files_a_killed_writer_left(tmp_path):
    """SIGKILL mid-write leaves a checkpoint-sized temporary file (ours, or safetensors' own); the next write goes."""
    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()
    for name in (".last.safetensors.tmp-4242", ".last.prev.safetensors.tmp-4242", ".last.json.tmp-4242", ".tmpX1y2Z3"):
        (checkpoints / name).write_bytes(b"\0" * 100)
    (checkpoints / "notes.txt").write_text("not a leftover")
    save_checkpoint(checkpoints / "last.safetensors", {"w": torch.ones(2)}, {"epoch": 1})
    assert sorted(p.name for p in checkpoints.iterdir()) == ["last.json", "last.safetensors", "notes.txt"]


def test_a_run_file_that_cannot_be_written_whole_keeps_the_old_one(tmp_path, monkeypatch):
    """summary.json, data.json...: a full disk leaves the previous file whole, not a truncated one."""
    summary = tmp_path / "summary.json"
    write_json(summary, {"final": 1})

    def full_disk(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(SmallViTError) as excinfo:
        write_json(summary, {"final": 2})
    expected = f"could not write {summary} (No space left on device): free disk space; the previous summary.json is"
    assert str(excinfo.value) == expected + " intact"
    assert json.loads(summary.read_text()) == {"final": 1} and [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def cut_last_record(path: Path) -> None:
    """Cut the file in the middle of its last line, as a power cut during an append leaves it."""
    text = path.read_text()
    last = text.rstrip("\n").rfind("\n") + 1
    path.write_text(text[: last + (len(text) - last) // 2])


def warning_line(result) -> str:
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_a_metrics_file_cut_mid_record_is_read_without_that_record(tmp_path, caplog):
    records = [{"kind": "train", "step": step, "epoch": 1, "train/loss": 1.0 / step} for step in (1, 2, 3)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    cut_last_record(tmp_path / "metrics.jsonl")
    assert read_metrics(tmp_path) == records[:2]
    assert [r.getMessage() for r in caplog.records] == [
        f"{tmp_path / 'metrics.jsonl'} ends in a record cut off mid-write (the run was stopped while writing it): "
        "left out"
    ]
    assert plot_curves(tmp_path) == tmp_path / "curves.png"


def test_a_damaged_metrics_line_before_the_last_is_one_line(tmp_path):
    lines = ['{"kind": "train", "step": 1}', '{"kind": "tr\x00', '{"kind": "train", "step": 3}']
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(SmallViTError, match=r"metrics.jsonl line 2 is not a JSON record .*: delete that line"):
        read_metrics(tmp_path)


def test_a_metrics_file_cut_mid_record_resumes_exactly_and_plots(cli, env, reference, tmp_path):
    run = unfinished_copy(reference, tmp_path / "run")
    cut_last_record(run / "metrics.jsonl")
    result = cli.run("train", "--resume", run, "--quiet", env=env)
    succeeded(result)
    assert "metrics.jsonl ends in a record cut off mid-write" in warning_line(result)
    assert_bit_identical(run, reference)  # the cut record was after the checkpoint: written again
    finished = shutil.copytree(reference, tmp_path / "finished")
    cut_last_record(finished / "metrics.jsonl")
    assert not (finished / "curves.png").exists()  # the command-line children draw no pictures while training
    result = cli.run("plot", finished, env=env)
    succeeded(result)
    assert "metrics.jsonl ends in a record cut off mid-write" in warning_line(result)
    assert (finished / "curves.png").is_file()


def test_a_damaged_summary_is_written_again_by_a_resume(cli, env, reference, tmp_path):
    """The summary is derived: from the final checkpoint a resume evaluates again and writes it."""
    run = shutil.copytree(reference, tmp_path / "run")
    summary = run / "summary.json"
    summary.write_text(summary.read_text()[:40])
    result = cli.run("train", "--resume", run, "--quiet", env=env)
    succeeded(result)
    assert f"{summary} is damaged (" in warning_line(result)
    assert_bit_identical(run, reference)


def test_a_damaged_summary_without_a_checkpoint_is_one_line(cli, env, reference, tmp_path):
    run = shutil.copytree(reference, tmp_path / "run")
    shutil.rmtree(run / "checkpoints")
    (run / "summary.json").write_bytes(b"\x00\x9f\xff")
    result = cli.run("train", "--resume", run, "--quiet", env=env)
    one_line_error(result, f"{run / 'summary.json'} is damaged", "no checkpoint to write it again from", "restore")
    assert not (run / ".lock").exists()


@pytest.mark.parametrize("command", ["sweep", "compare"])
def test_a_binary_sweep_file_is_one_line(cli, env, tmp_path, command):
    sweep = tmp_path / "sweep.yaml"
    sweep.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe")
    one_line_error(cli.run(command, sweep, env=env), f"sweep file '{sweep}' is not valid YAML", "binary")


def test_predict_into_a_csv_in_a_missing_folder_is_one_line_before_any_work(cli, env, reference, tmp_path):
    image = tmp_path / "image.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(image)
    result = cli.run("predict", reference, image, "--csv", tmp_path / "missing" / "p.csv", env=env)
    one_line_error(result, f"--csv {tmp_path / 'missing' / 'p.csv'}: {tmp_path / 'missing'} does not exist")
    assert result.stdout == ""  # nothing classified, nothing printed
    result = cli.run("predict", reference, image, "--csv", tmp_path, env=env)
    one_line_error(result, f"--csv {tmp_path} is a folder")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_while_the_images_decode_stops_cleanly_and_frees_the_name(cli, env, tmp_path, sig):
    """Before training begins there is nothing to resume: SIGTERM, like Ctrl-C, removes the lock and the folder."""
    ready, go = tmp_path / "ready", tmp_path / "go"
    env = dict(env, SMALLVIT_CACHE=str(tmp_path / "cache"))  # empty: the images are decoded
    child = cli.start(*train_args(tmp_path, "run"), env=env, hooks={"pause_in_decode": [str(ready), str(go)]})
    wait_for(ready)
    assert (tmp_path / "run" / ".lock").is_file()
    os.kill(child.pid, sig)
    go.touch()
    result = child.wait()
    assert result.returncode == 130, result.stderr
    stopped = f"stopped by signal {int(sig)}" if sig == signal.SIGTERM else "interrupted"
    assert result.stderr == f"{stopped} before training began: nothing to resume\n"
    assert not (tmp_path / "run").exists()
