"""``smallvit fit``'s plan: the budget split into fit's own parts and the training loop's time, and the one-line
refusal of a plan too short to learn from (numbers a reader can check by hand)."""

import pytest

from smallvit.errors import ConfigError
from smallvit.fit import (
    MIN_EPOCHS,
    MIN_STEPS,
    Speed,
    duration_text,
    fit_parts,
    given_epochs,
    parse_duration,
    plan_epochs,
    too_little,
)

SPEED = Speed(
    step_s=1.0, steps_per_epoch=10, eval_s=2.0, test_s=1.0, checkpoint_s=0.5, setup_s=1.5, pictures_s=4.0, timed_steps=5
)
# fit's own parts: 2 set-ups 3 + final validation 2 + 2 test passes 2 + pictures 4 + a step and a checkpoint 1.5
# = 12.5 s (+ measuring); an epoch: 10 steps + 0.5 checkpoint + 2 validation = 12.5 s


def test_fits_own_time_is_budgeted_part_by_part():
    parts = fit_parts(SPEED, measuring_s=5)
    assert sum(parts.values()) == 17.5 and parts["measuring"] == 5 and parts["pictures"] == 4
    extra = fit_parts(SPEED, measuring_s=5, test_passes=2)
    assert sum(extra.values()) == 17.5 + 2 * (1.5 + 1.0)  # each test pass after the export: a set-up and the pass


def test_the_training_loop_gets_the_rest_of_the_budget_and_the_clock_schedules_it():
    plan = plan_epochs(300, SPEED, spent_s=5)
    assert plan.train_s == 300 - 17.5 and plan.fit_s + plan.train_s == 300 == plan.planned_s
    assert (plan.epoch_s, plan.eval_every) == (12.5, 1)
    assert plan.expected_epochs == pytest.approx(22.6) and plan.steps == 226
    assert plan.epochs == 46  # a cap at twice the epochs expected: the clock ends the run, not train.epochs
    assert plan.overrides == ["train.epochs=46", "train.eval_every=1", "train.time_budget_s=282.50"]
    assert "train.time_budget_s" in plan.reason and "mean of 5 after a warm-up one" in plan.reason
    long = plan_epochs(3600, SPEED)  # more than 20 epochs: about 20 evaluations in all
    assert long.eval_every > 1 and long.expected_epochs / long.eval_every == pytest.approx(20, abs=5)
    given = given_epochs(30, 10)
    assert (given.epochs, given.eval_every, given.steps, given.planned_s) == (30, 2, 300, None)
    assert given.overrides == ["train.epochs=30", "train.eval_every=2"]  # no budget: the epochs' schedule


def test_a_budget_too_short_is_refused_in_one_line_naming_a_budget_that_is_enough():
    plan = plan_epochs(60, SPEED)  # 47.5 s of training: 3.8 epochs, 38 steps
    message = too_little(plan, 60, SPEED)
    assert message == (
        "--budget 60s trains about 3.8 epochs, 38 optimizer steps at the measured speed (12.5 s an epoch after 12 s "
        "of fit's own): too little to learn from (at least 10 epochs and 200 steps); give --budget 6m or more, or "
        "--force to train anyway"
    )  # 200 steps = 20 epochs of 10 steps: 12.5 + 1.25 x 20 x 12.5 = 325 s -> 6m
    enough = parse_duration("6m")
    assert too_little(plan_epochs(enough, SPEED), enough, SPEED) is None
    assert too_little(plan_epochs(10, SPEED), 10, SPEED).startswith("--budget 10s trains about 0.0 epochs")
    slow = Speed(step_s=3.0, steps_per_epoch=4, eval_s=5.0, test_s=0, checkpoint_s=1, setup_s=2, pictures_s=9)
    for budget in (30, 100, 500):  # the budget named is enough: 200 steps of 4 (50 epochs)
        named = parse_duration(
            too_little(plan_epochs(budget, slow), budget, slow).split("give --budget ")[1].split()[0]
        )
        assert too_little(plan_epochs(named, slow), named, slow) is None, budget


@pytest.mark.parametrize(
    ("epochs", "steps_per_epoch", "enough"),
    [(1, 2, 100), (9, 100, 10), (10, 19, 11), (100, 2, None), (10, 20, None)],
)
def test_too_few_epochs_or_steps_are_refused_naming_the_epochs_that_are_enough(epochs, steps_per_epoch, enough):
    plan = given_epochs(epochs, steps_per_epoch)
    message = too_little(plan)
    if enough is None:
        assert message is None and plan.steps >= MIN_STEPS and plan.epochs >= MIN_EPOCHS
    else:
        assert message.startswith(f"--epochs {epochs} is {epochs * steps_per_epoch} optimizer steps")
        assert message.endswith(f"give --epochs {enough} or more, or --force to train anyway") and "\n" not in message


@pytest.mark.parametrize("seconds", [1, 45.2, 120, 121, 899, 3600, 5400, 7201])
def test_durations_are_written_rounded_up_as_budgets_read_them(seconds):
    written = parse_duration(duration_text(seconds))
    assert seconds <= written < seconds + (1 if seconds <= 120 else 60)


@pytest.mark.parametrize(("text", "seconds"), [("90", 90), ("90s", 90), ("15m", 900), ("1h30m", 5400), ("2.5m", 150)])
def test_budgets_read_as_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["soon", "15 minutes", "0s", "-5m", "m"])
def test_a_budget_that_is_not_a_duration_is_one_clear_line(text):
    with pytest.raises(ConfigError, match="--budget"):
        parse_duration(text)
