"""SIGINT/SIGTERM during training: the step finishes, a checkpoint is written at the next batch, the run stops."""

import io
import os
import signal

import pytest
from rich.console import Console

import smallvit.engine.trainer as trainer
from smallvit.config import load_recipe
from smallvit.engine.checkpoint import load_checkpoint
from smallvit.engine.signals import Interrupted, StopRequest

TINY = ["data.subset.per_class=4", "data.eval_subset.per_class=2", "model.overrides.depth=1", "train.batch_size=20"]


def test_the_first_signal_asks_to_stop_a_second_stops_at_once_and_the_handlers_are_restored():
    before = signal.getsignal(signal.SIGTERM)
    with StopRequest() as stop:
        assert stop.signal is None and stop.source == "a signal to another rank"
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.signal == signal.SIGTERM and stop.source == f"signal {signal.SIGTERM}"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGTERM) is before


@pytest.mark.usefixtures("isolated_data")
def test_a_signal_mid_epoch_checkpoints_at_the_next_batch_and_stops(tmp_path, monkeypatch):
    real_step = trainer.optimizer_step

    def step_then_signal(*args):
        result = real_step(*args)
        os.kill(os.getpid(), signal.SIGINT)
        return result

    monkeypatch.setattr(trainer, "optimizer_step", step_then_signal)
    stage = load_recipe("quickstart", [*TINY, "epochs=2"]).stages[0]  # 2 steps an epoch
    with pytest.raises(Interrupted, match=r"^stopped by signal 2 at step 1 \(epoch 1\), checkpoint written$"):
        trainer.train(stage, tmp_path / "run", quiet=True, console=Console(file=io.StringIO()))
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.safetensors")[1]
    assert (state["epoch"], state["batch"], state["step"]) == (0, 1, 1)
