import math

import pytest

from smallvit.config import WeightSchedule
from smallvit.engine.schedules import run_fraction, warmup_cosine


def test_warmup_cosine_by_hand():
    assert warmup_cosine(0, 100, 10, 1e-3) == 0
    assert warmup_cosine(5, 100, 10, 1e-3) == pytest.approx(5e-4)
    assert warmup_cosine(10, 100, 10, 1e-3) == pytest.approx(1e-3)
    assert warmup_cosine(55, 100, 10, 1e-3) == pytest.approx(5e-4)  # half-way through the cosine
    assert warmup_cosine(100, 100, 10, 1e-3, final=1e-5) == pytest.approx(1e-5)


def test_weight_schedules_by_hand():
    assert WeightSchedule().factor(3, 10) == 1
    warm = WeightSchedule(kind="warmup", warmup_epochs=4)
    assert [warm.factor(e, 10) for e in (0, 2, 4, 8)] == [0, 0.5, 1, 1]
    drloc = WeightSchedule(kind="warmup_decay", warmup_epochs=20)
    assert drloc.factor(10, 100) == 0.5
    assert drloc.factor(20, 100) == 1
    assert drloc.factor(60, 100) == pytest.approx(0.5)
    assert drloc.factor(100, 100) == 0
    cosine = WeightSchedule(kind="cosine")
    assert cosine.factor(0, 10) == 1 and cosine.factor(5, 10) == pytest.approx(0.5)
    assert math.isclose(cosine.factor(10, 10), 0, abs_tol=1e-12)


def test_unknown_schedule_kind_is_rejected():
    with pytest.raises(ValueError):
        WeightSchedule(kind="step")


def test_the_run_fraction_is_of_the_steps_or_of_the_time_budget_whichever_is_further():
    assert run_fraction(5, 20) == 0.25
    assert run_fraction(5, 20, elapsed_s=30.0, budget_s=60.0) == 0.5  # the clock is further along
    assert run_fraction(15, 20, elapsed_s=30.0, budget_s=60.0) == 0.75  # the steps are
    assert run_fraction(5, 20, elapsed_s=61.0, budget_s=60.0) == 1.0  # never past the end


def test_the_learning_rate_at_a_fraction_of_the_run_by_hand():
    """A clock-following run reads the schedule at fraction x epochs: 10 epochs, 1 of warm-up, lr 1e-3 to 1e-5."""

    def lr(fraction):
        return warmup_cosine(fraction * 10, 10, 1, 1e-3, final=1e-5)

    assert lr(0.05) == pytest.approx(5e-4)  # half-way through warm-up
    assert lr(0.1) == pytest.approx(1e-3)  # its end
    assert lr(0.55) == pytest.approx(1e-5 + 0.5 * (1e-3 - 1e-5))  # half-way through the cosine
    assert lr(1.0) == 1e-5  # exactly the minimum when the budget is spent
