"""Training time across resumes, against the time limit and the time budget, read from a clock the test moves."""

import pytest

import smallvit.engine.clock as clock
from smallvit.engine.clock import TrainingClock


@pytest.fixture
def time_now(monkeypatch):
    """The clock's reading, in seconds: set ``time_now[0]`` to move it."""
    reading = [100.0]
    monkeypatch.setattr(clock, "now", lambda: reading[0])
    return reading


def test_training_time_counts_earlier_starts_and_this_one(time_now):
    timer = TrainingClock(spent_s=30.0)
    assert timer.elapsed_s() == 30.0
    time_now[0] += 12.5
    assert timer.elapsed_s() == 42.5


def test_the_limit_and_the_budget_are_reached_at_their_second(time_now):
    timer = TrainingClock(spent_s=5.0, limit_s=10.0, budget_s=8.0)
    assert not timer.limit_reached() and not timer.budget_spent()
    time_now[0] += 3.0  # 8 s
    assert timer.budget_spent() and not timer.limit_reached()
    time_now[0] += 2.0  # 10 s
    assert timer.limit_reached()
    assert not TrainingClock().limit_reached() and not TrainingClock().budget_spent()  # none set: never


def test_a_step_is_expected_to_end_as_long_after_its_start_as_the_last_step_took(time_now):
    timer = TrainingClock(spent_s=2.0)
    assert timer.start_step() == (2.0, 2.0)  # nothing measured yet
    time_now[0] += 1.5
    timer.end_step()
    time_now[0] += 0.5  # logging, between steps
    assert timer.last_step_s == 1.5 and timer.start_step() == (4.0, 5.5)
    resumed = TrainingClock(spent_s=4.0, last_step_s=1.5)  # a resumed run keeps its last step's length
    assert resumed.start_step() == (4.0, 5.5)
