"""The exponential moving average of the weights: a copy at the first step, then the average, saved and restored."""

import torch

from smallvit.engine.ema import Ema


def _model(value: float) -> torch.nn.Module:
    model = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(value)
    return model


def test_the_average_copies_at_step_one_then_moves_by_one_minus_decay():
    model, ema = _model(0.0), Ema(_model(5.0), decay=0.75)
    ema.update(model, step=1)
    assert ema.module.weight.item() == 0.0  # step 1 copies the weights
    with torch.no_grad():
        model.weight.fill_(4.0)
    ema.update(model, step=2)
    assert ema.module.weight.item() == 1.0  # 0.75 * 0 + 0.25 * 4
    ema.update(model, step=3)
    assert ema.module.weight.item() == 1.75  # 0.75 * 1 + 0.25 * 4


def test_the_average_is_saved_under_ema_and_restored_from_a_checkpoints_tensors():
    ema = Ema(_model(2.0), decay=0.9)
    tensors = ema.tensors()
    assert list(tensors) == ["ema.weight"] and tensors["ema.weight"].item() == 2.0
    other = Ema(_model(0.0), decay=0.9)
    other.load({**tensors, "model.weight": torch.zeros(1, 1)})  # the model's own weights are left alone
    assert other.module.weight.item() == 2.0
