"""A schedule that follows the clock (``train.time_budget_s``) and its repetition by steps (``train.max_steps``).

The clock is one the test moves: each optimizer step takes 1 s, or 2 s once the machine "slows down"; nothing else
takes time. 40 training images at batch 20: 2 steps an epoch; ``epochs=10`` bounds the run at 20 steps.
"""

import io
import json
import os
import signal

import pytest
from rich.console import Console

import smallvit.engine.clock as clock
import smallvit.engine.trainer as trainer
from smallvit.config import load_recipe
from smallvit.engine.checkpoint import load_checkpoint
from smallvit.engine.schedules import warmup_cosine
from smallvit.engine.signals import Interrupted
from smallvit.errors import ConfigError

TINY = [
    "data.subset.per_class=4",
    "data.eval_subset.per_class=2",
    "model.overrides.depth=1",
    "train.batch_size=20",
    "precision=fp32",
    "epochs=10",
    "train.log_every=1",
    "lr=1e-3",
    "optim.min_lr=1e-5",
    "optim.warmup_fraction=0.1",  # 1 of the 10 epochs: a tenth of the run
]

pytestmark = pytest.mark.usefixtures("isolated_data", "no_pictures")


@pytest.fixture
def slowing_clock(monkeypatch):
    """Steps 1-3 of a run take 1 s each, later ones 2 s; ``signal_after`` (a step) sends SIGINT at that step's end."""
    time_s, hooks = [0.0], {}
    real_step = trainer.optimizer_step

    def timed_step(exp, model, optimizer, *args):
        result = real_step(exp, model, optimizer, *args)
        step = int(next(iter(optimizer.state.values()))["step"])  # the run's, resumed runs included
        time_s[0] += 1.0 if step <= 3 else 2.0
        if hooks.get("signal_after") == step:
            os.kill(os.getpid(), signal.SIGINT)
        return result

    monkeypatch.setattr(clock, "now", lambda: time_s[0])
    monkeypatch.setattr(trainer, "optimizer_step", timed_step)
    return hooks


def _train(tmp_path, *overrides, name="run", resume=False):
    stage = load_recipe("quickstart", [*TINY, *overrides]).stages[0]
    return trainer.train(stage, tmp_path / name, resume=resume, quiet=True, console=Console(file=io.StringIO()))


def _records(run, kind):
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "train/images_per_s"} for r in records if r["kind"] == kind]


def _lr(fraction):
    return warmup_cosine(fraction * 10, 10, 1, 1e-3, 1e-5)


def test_a_machine_that_slows_down_halfway_still_ends_at_the_minimum_lr_as_the_budget_is_spent(tmp_path, slowing_clock):
    summary = _train(tmp_path, "train.time_budget_s=9")
    # each step's lr is the schedule's at its expected end: the time now plus the last step's length, over 9 s
    fractions = [1 / 20, 2 / 9, 3 / 9, 4 / 9, 7 / 9, 1.0]  # step 1: nothing measured yet, 1 of 20 steps
    train = _records(tmp_path / "run", "train")
    assert [r["run_fraction"] for r in train] == pytest.approx(fractions, rel=1e-12)
    assert [r["lr"] for r in train] == pytest.approx([_lr(f) for f in fractions], rel=1e-12)
    assert train[-1]["lr"] == 1e-5  # annealed exactly
    assert (summary["steps"], summary["epochs_run"], summary["training_s"]) == (6, 3.0, 9.0)  # not 9 steps
    assert summary["time_budget"] == {"budget_s": 9, "schedule": "clock", "spent": True, "max_steps": 6}
    assert "time_limit" not in summary and trainer.epochs_text(summary) == "3 epochs (6 steps, time budget 9 s)"
    [evaluation] = _records(tmp_path / "run", "eval")
    assert evaluation["epoch"] == 3 and evaluation["step"] == 6
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.safetensors")[1]
    assert (state["epoch"], state["batch"], state["step"], state["fraction"]) == (3, 0, 6, 1.0)


def test_a_resumed_run_continues_the_clock_schedule_exactly(tmp_path, slowing_clock):
    _train(tmp_path, "train.time_budget_s=9", name="straight")
    slowing_clock["signal_after"] = 3  # mid-epoch 2; the clock goes on from 3 s
    with pytest.raises(Interrupted):
        _train(tmp_path, "train.time_budget_s=9", name="resumed")
    slowing_clock.clear()
    summary = _train(tmp_path, "train.time_budget_s=9", name="resumed", resume=True)
    assert summary["resumed"] and summary["steps"] == 6 and summary["time_budget"]["spent"]
    for kind in ("train", "eval", "test"):
        assert _records(tmp_path / "resumed", kind) == _records(tmp_path / "straight", kind)


def test_max_steps_repeats_a_budget_runs_length_with_a_step_schedule(tmp_path, slowing_clock):
    budget = _train(tmp_path, "train.time_budget_s=9", name="budget")
    steps = _train(tmp_path, f"train.max_steps={budget['time_budget']['max_steps']}", name="steps")
    assert (steps["steps"], steps["epochs_run"]) == (budget["steps"], budget["epochs_run"]) == (6, 3.0)
    assert "time_budget" not in steps
    train = _records(tmp_path / "steps", "train")
    assert [r["lr"] for r in train] == pytest.approx([_lr(step / 6) for step in range(1, 7)], rel=1e-12)
    assert train[-1]["lr"] == 1e-5


def test_max_steps_can_end_a_run_mid_epoch_and_may_not_exceed_the_epochs(tmp_path):
    summary = _train(tmp_path, "train.max_steps=5")
    assert (summary["steps"], summary["epochs_run"]) == (5, 2.5) and trainer.epochs_text(
        summary
    ) == "2.5 epochs (5 steps)"
    assert _records(tmp_path / "run", "train")[-1]["lr"] == 1e-5
    assert [r["epoch"] for r in _records(tmp_path / "run", "eval")] == [2.5]
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.safetensors")[1]
    assert (state["epoch"], state["batch"], state["step"]) == (2, 1, 5)  # resumable at the next batch
    with pytest.raises(ConfigError, match=r"^train.max_steps=21 is more than train.epochs=10 epochs of 2 steps: "):
        _train(tmp_path, "train.max_steps=21", name="too-long")
    assert not (tmp_path / "too-long").exists()  # refused before the run folder is made


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.time_budget_s=0", "train.time_budget_s=0: Input should be greater than 0"),
        ("train.time_budget_s=-5", "train.time_budget_s=-5: Input should be greater than 0"),
        ("train.time_budget_s=.inf", "train.time_budget_s=inf: Input should be a finite number"),
        ("train.max_steps=0", "train.max_steps=0: Input should be greater than 0"),
    ],
)
def test_a_budget_or_step_count_that_is_not_positive_is_refused_in_one_line(override, message):
    with pytest.raises(ConfigError) as err:
        load_recipe("quickstart", [override])
    assert message in str(err.value) and "\n" not in str(err.value)
