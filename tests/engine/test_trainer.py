"""The training loop's parts: one optimizer step with gradient accumulation, the learning rate of each parameter
group, non-finite losses, the best checkpoint, evaluation, precision and the progress line."""

import dataclasses
import io
import json
import math

import pytest
import torch
import torch.nn.functional as F
import yaml
from rich.console import Console

import smallvit.engine.trainer as trainer
from smallvit.config import load_recipe
from smallvit.data.batch import Batch
from smallvit.data.pipeline import ViewSpec
from smallvit.engine.checkpoint import load_checkpoint
from smallvit.engine.experiment import EvalSet, build_experiment, read_run_config, resolve_device
from smallvit.engine.pictures import predict_split
from smallvit.engine.runner import resume_run
from smallvit.engine.schedules import warmup_cosine
from smallvit.engine.trainer import NonFiniteLoss, evaluate, objective_weights, optimizer_step, train
from smallvit.errors import SmallViTError
from smallvit.metrics import extract_features, knn_accuracy
from smallvit.metrics.classification import balanced_accuracy

TINY = [
    "data.subset.per_class=4",  # 40 training images: 2 steps per epoch at batch 20
    "data.eval_subset.per_class=2",  # 20 validation and 20 test images
    "model.overrides.depth=1",
    "epochs=1",
    "train.batch_size=20",
    "precision=fp32",
]


pytestmark = pytest.mark.usefixtures("isolated_data")


def _stage(*overrides, recipe="quickstart"):
    return load_recipe(recipe, [*TINY, *overrides]).stages[0]


def _train(tmp_path, *overrides, recipe="quickstart", name="run"):
    """Train into ``tmp_path/name`` quietly; returns the run folder, its summary and what it printed."""
    out = io.StringIO()
    run = tmp_path / name
    summary = train(_stage(*overrides, recipe=recipe), run, quiet=True, console=Console(file=out, width=400))
    return run, summary, out.getvalue()


def _records(run, kind):
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [record for record in map(json.loads, lines) if record["kind"] == kind]


# ---------------------------------------------------------------- one optimizer step


class RecordingSGD(torch.optim.SGD):
    """SGD at lr 1 that keeps the gradients it stepped with."""

    def __init__(self, params):
        super().__init__(params, lr=1.0)
        self.grads: list[torch.Tensor] = []

    def step(self, closure=None):
        self.grads = [p.grad.clone() for group in self.param_groups for p in group["params"] if p.grad is not None]
        return super().step(closure)


def _deterministic_experiment():
    """No random augmentation and no drop path, so a micro-batch computes exactly its rows of the full batch."""
    stage = _stage("model.drop_path=0")
    stage = stage.model_copy(update={"augment": {"main": ViewSpec(ops=[])}})
    return build_experiment(stage)


def _one_step(exp, state, accumulation, images, labels):
    exp.model.load_state_dict(state)
    train_config = exp.config.train.model_copy(update={"accumulation": accumulation})
    exp = dataclasses.replace(exp, config=exp.config.model_copy(update={"train": train_config}))
    optimizer = RecordingSGD(exp.model.parameters())
    data = (images, labels, torch.arange(len(labels)))
    weights = objective_weights(exp.config, 0.0)
    metrics, finite = optimizer_step(
        exp, exp.model, optimizer, data, torch.Generator().manual_seed(0), 0, weights, "fp32"
    )
    after = {name: p.detach().clone() for name, p in exp.model.named_parameters()}
    return metrics, finite, optimizer.grads, after


def test_accumulated_micro_batches_give_the_full_batch_gradient_update_and_mean_loss():
    exp = _deterministic_experiment()
    state = {k: v.clone() for k, v in exp.model.state_dict().items()}
    images, labels = exp.train_images[:10], exp.train_labels[:10]  # accumulation 3: micro-batches of 4, 4 and 2
    full, full_finite, full_grads, full_after = _one_step(exp, state, 1, images, labels)
    accumulated, finite, grads, after = _one_step(exp, state, 3, images, labels)

    assert full_finite and finite
    assert len(grads) == len(full_grads) == sum(1 for p in exp.model.parameters() if p.requires_grad)
    for grad, reference in zip(grads, full_grads):
        torch.testing.assert_close(grad, reference, rtol=1e-4, atol=1e-7)
    for name, value in after.items():
        torch.testing.assert_close(value, full_after[name], rtol=1e-5, atol=1e-7)
    # the logged loss and accuracy are the full batch's: micro-batch means weighted 4/10, 4/10, 2/10
    assert set(accumulated) == set(full) == {"loss", "supervised/loss", "supervised/acc1", "supervised/acc5"}
    for key in full:
        torch.testing.assert_close(accumulated[key], full[key], rtol=1e-5, atol=1e-6)
    exp.model.load_state_dict(state)  # the full batch's loss, recomputed by hand: the classifier on the features
    features = extract_features(exp.model.backbone, images, exp.augment)
    head = exp.model.classifier_state()
    logits = features @ head["head.weight"].T + head["head.bias"]
    expected = F.cross_entropy(logits, labels, label_smoothing=0.1)
    torch.testing.assert_close(full["loss"], expected, rtol=1e-5, atol=1e-6)
    last_micro_batch = F.cross_entropy(logits[8:], labels[8:], label_smoothing=0.1)
    assert not math.isclose(accumulated["loss"].item(), last_micro_batch.item(), rel_tol=1e-3)


def test_a_step_with_a_non_finite_loss_leaves_the_parameters_and_gradients_alone():
    exp = _deterministic_experiment()
    before = {k: v.clone() for k, v in exp.model.state_dict().items()}
    real = exp.augment
    exp.augment = lambda *args: _poison(real(*args))
    optimizer = torch.optim.AdamW(exp.model.parameters(), lr=1.0)
    data = (exp.train_images[:8], exp.train_labels[:8], torch.arange(8))
    metrics, finite = optimizer_step(exp, exp.model, optimizer, data, torch.Generator(), 0, [1.0], "fp32")
    assert not finite and math.isnan(metrics["loss"]) and math.isnan(metrics["supervised/loss"])
    assert all(torch.equal(value, before[key]) for key, value in exp.model.state_dict().items())
    assert all(p.grad is None for p in exp.model.parameters()) and not optimizer.state


# ---------------------------------------------------------------- the loop


def test_the_learning_rate_follows_warmup_cosine_in_every_group_times_its_lr_scale(tmp_path, monkeypatch):
    seen = []
    real = trainer.optimizer_step

    def recording(exp, model, optimizer, *args):
        seen.append([(group["lr"], group["lr_scale"]) for group in optimizer.param_groups])
        return real(exp, model, optimizer, *args)

    monkeypatch.setattr(trainer, "optimizer_step", recording)
    schedule = ["lr=1e-3", "optim.min_lr=1e-5", "optim.warmup_fraction=0.5", "optim.layer_decay=0.5"]
    run, _, _ = _train(tmp_path, "epochs=2", "train.log_every=1", *schedule)
    # 2 steps per epoch, warm-up 1 epoch; each step uses the lr at its end: 0.5 and 1 epoch in warm-up, then cosine
    expected = [5e-4, 1e-3, 1e-5 + 0.5 * (1e-3 - 1e-5), 1e-5]
    assert [record["lr"] for record in _records(run, "train")] == pytest.approx(expected, rel=1e-12)
    assert len(seen) == 4
    for lr, groups in zip(expected, seen):
        assert [group_lr for group_lr, _ in groups] == pytest.approx([lr * scale for _, scale in groups], rel=1e-12)
    assert sorted({scale for _, scale in seen[0]}) == [0.25, 0.5, 1.0]  # stem, the one block, the heads


def _poison(batch: Batch) -> Batch:
    return Batch({name: view.replace(images=view.images * float("nan")) for name, view in batch.views.items()})


def _poison_training_calls(monkeypatch, bad_calls: set[int]) -> None:
    """Make the training augmentation's output NaN at the given calls (0-based: one call per optimizer step)."""

    def build(config, *args, **kwargs):
        exp = build_experiment(config, *args, **kwargs)
        real_augment, calls = exp.augment, []

        def augment(*args):
            calls.append(None)
            batch = real_augment(*args)
            return _poison(batch) if len(calls) - 1 in bad_calls else batch

        exp.augment = augment
        return exp

    monkeypatch.setattr(trainer, "build_experiment", build)


@pytest.mark.parametrize("bad_step, checkpoint_written", [(1, False), (3, True)])
def test_a_non_finite_loss_stops_the_run_naming_step_and_objective_and_writes_no_nan_checkpoint(
    tmp_path, monkeypatch, bad_step, checkpoint_written
):
    _poison_training_calls(monkeypatch, {bad_step - 1})
    with pytest.raises(NonFiniteLoss) as raised:
        _train(tmp_path, "epochs=2")
    message = str(raised.value)
    last = tmp_path / "run" / "checkpoints" / "last.safetensors"
    where = f"the last good checkpoint is {last}" if checkpoint_written else "no checkpoint was written yet"
    assert message.startswith(f"the loss is not finite at step {bad_step} (objective: supervised); {where}: ")
    assert "\n" not in message
    written = sorted((tmp_path / "run" / "checkpoints").glob("*.safetensors"))
    assert written == ([last] if checkpoint_written else [])
    for path in written:  # epoch 1's checkpoint, finite
        tensors, state = load_checkpoint(path)
        assert state["step"] == 2 and all(torch.isfinite(t).all() for t in tensors.values() if t.is_floating_point())


def test_skip_nonfinite_skips_and_counts_bad_steps_then_stops_at_one_more(tmp_path, monkeypatch):
    _poison_training_calls(monkeypatch, {1})  # step 2
    run, summary, output = _train(tmp_path, "epochs=2", "train.log_every=1", "train.skip_nonfinite=1")
    logged = [(record["step"], record["train/skipped_nonfinite"]) for record in _records(run, "train")]
    assert logged == [(1, 0), (3, 1), (4, 1)]  # the skipped step adds nothing to the log window
    assert "step 2: non-finite loss, skipped (1/1)" in output
    assert summary["final"]["val/supervised/acc1"] == evaluate(*_reloaded(run, "last"), "val")["val/supervised/acc1"]

    _poison_training_calls(monkeypatch, {1, 2})
    with pytest.raises(NonFiniteLoss, match="not finite at step 3 "):
        _train(tmp_path, "epochs=2", "train.skip_nonfinite=1", name="again")


def _reloaded(run, checkpoint):
    """The experiment of a run folder, rebuilt from its config.yaml, with a checkpoint's weights."""
    exp = build_experiment(read_run_config(run), load_init=False)
    exp.model.load_state_dict(load_checkpoint(run / "checkpoints" / f"{checkpoint}.safetensors", prefix="model.")[0])
    return exp, exp.model


@pytest.mark.parametrize("mode", ["default", "max"])
def test_the_best_checkpoint_follows_the_metric_direction(tmp_path, mode):
    """A loss keeps its minimum unless best_mode says otherwise; best.safetensors holds the weights that scored it."""
    overrides = ["epochs=3", "train.eval_every=1", "lr=3e-3", "optim.warmup_fraction=0", "train.best_metric=val/loss"]
    run, summary, _ = _train(tmp_path, *overrides, *([] if mode == "default" else [f"train.best_mode={mode}"]))
    losses = {record["epoch"]: record["val/loss"] for record in _records(run, "eval")}
    assert sorted(losses) == [1, 2, 3] and len(set(losses.values())) == 3
    choose = min if mode == "default" else max
    best_epoch = choose(losses, key=losses.get)
    assert summary["best"] == {
        "metric": "val/loss",
        "value": losses[best_epoch],
        "epoch": best_epoch,
        "test": summary["best"]["test"],
    }
    assert load_checkpoint(run / "checkpoints" / "best.safetensors")[1]["epoch"] == best_epoch
    assert evaluate(*_reloaded(run, "best"), "val")["val/loss"] == pytest.approx(losses[best_epoch], rel=1e-6)


# ---------------------------------------------------------------- the time limit


def test_a_time_limit_stops_after_the_step_that_reaches_it_then_evaluates_checkpoints_and_summarises(tmp_path):
    run, summary, output = _train(tmp_path, "epochs=3", "train.time_limit_s=0.000001")  # 2 steps an epoch
    assert summary["time_limit"] == {"limit_s": 1e-6, "stopped": True}
    assert (summary["epochs"], summary["epochs_run"], summary["steps"]) == (3, 0.5, 1) and summary["training_s"] > 0
    assert json.loads((run / "summary.json").read_text())["time_limit"]["stopped"]
    assert "stopped on the time limit of 1e-06 s of training after 0.50 of 3 planned epochs (1 steps)" in output
    state = load_checkpoint(run / "checkpoints" / "last.safetensors")[1]
    assert (state["epoch"], state["batch"], state["step"]) == (0, 1, 1)  # resumable at the next batch
    assert (run / "checkpoints" / "best.safetensors").is_file()
    [evaluation], [test] = _records(run, "eval"), _records(run, "test")
    assert evaluation["epoch"] == test["epoch"] == 0.5 and "val/supervised/acc1" in summary["final"]
    assert "test/supervised/acc1" in test and not any(key.startswith("test/") for key in evaluation)
    # the learning rate follows the schedule planned for 3 epochs, not one shortened to the time limit
    stage = read_run_config(run)
    planned = warmup_cosine(0.5, 3, stage.optim.warmup(3), stage.optim.lr, stage.optim.min_lr)
    assert _records(run, "train")[-1]["lr"] == pytest.approx(planned)


def test_the_summary_records_the_commit_the_run_started_from_not_the_one_at_its_end(tmp_path, monkeypatch):
    commits = iter(["started-here", "checked-out-later"])
    monkeypatch.setattr(trainer, "git_commit", lambda console=None: next(commits))
    _, summary, _ = _train(tmp_path, "epochs=1")
    assert summary["provenance"]["git_commit"] == "started-here"


def test_a_run_its_time_limit_stopped_resumes_only_once_the_limit_is_raised(tmp_path):
    run, _, _ = _train(tmp_path, "epochs=3", "train.time_limit_s=0.000001")
    out = io.StringIO()
    [kept] = resume_run(run, quiet=True, console=Console(file=out, width=400))
    assert kept["steps"] == 1 and "resumed" not in kept
    assert f"to train on, raise or remove train.time_limit_s in {run / 'config.yaml'} and resume" in out.getvalue()
    with pytest.raises(SmallViTError, match=r"has trained [\d.]+ s, its time limit train.time_limit_s=1e-06") as err:
        train(read_run_config(run), run, resume=True, quiet=True, console=Console(file=io.StringIO()))
    assert "\n" not in str(err.value)

    config = yaml.safe_load((run / "config.yaml").read_text())
    config["train"]["time_limit_s"] = None  # the user asks for more
    (run / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    [resumed] = resume_run(run, quiet=True, console=Console(file=io.StringIO()))
    assert (resumed["epochs_run"], resumed["steps"], resumed["resumed"]) == (3, 6, True) and "time_limit" not in resumed
    assert resumed["training_s"] >= kept["training_s"]  # counted across the two runs
    assert [record["epoch"] for record in _records(run, "eval")] == [0.5, 3] and len(_records(run, "test")) == 1


# ---------------------------------------------------------------- validation and online kNN after an epoch


@pytest.mark.parametrize(
    "eval_every, knn_every, expected",
    [
        (1, 0, [(True, False), (True, False), (True, False), (True, False)]),
        (2, 3, [(False, False), (True, False), (False, True), (True, True)]),  # both after the last, epoch 4
        (0, 2, [(False, False), (False, True), (False, False), (True, True)]),  # eval_every 0: only at the end
    ],
)
def test_validation_and_online_knn_are_due_every_n_epochs_and_after_the_last(eval_every, knn_every, expected):
    tc = _stage(f"train.eval_every={eval_every}", f"train.knn_every={knn_every}").train
    assert [trainer.evaluations_due(tc, done, last=done == 4) for done in (1, 2, 3, 4)] == expected


def test_online_knn_is_the_weighted_knn_of_the_frozen_validation_features():
    exp = build_experiment(_stage())
    features = [
        extract_features(exp.model.backbone, images, exp.eval_augment) for images in (exp.train_images, exp.val.images)
    ]
    expected = knn_accuracy(
        features[0], exp.train_labels, features[1], exp.val.labels, len(exp.classes), k=20, temperature=0.07
    )
    assert trainer.online_knn(exp, exp.model.backbone) == {"val/knn/acc1": expected}


# ---------------------------------------------------------------- evaluation, precision, progress


def test_evaluate_averages_over_images_and_matches_the_classifier_recomputed_by_hand():
    exp = build_experiment(_stage("train.batch_size=8"))  # 20 validation images: batches of 8, 8 and 4
    metrics = evaluate(exp, exp.model, "val")
    features = extract_features(exp.model.backbone, exp.val.images, exp.eval_augment)
    head = exp.model.classifier_state()
    logits = features @ head["head.weight"].T + head["head.bias"]
    accuracy = (logits.argmax(1) == exp.val.labels).float().mean().item()
    loss = F.cross_entropy(logits, exp.val.labels).item()  # no label smoothing when evaluating
    assert metrics["val/supervised/acc1"] == pytest.approx(accuracy, abs=1e-6)
    assert metrics["val/supervised/loss"] == pytest.approx(loss, rel=1e-5)
    assert metrics["val/loss"] == metrics["val/supervised/loss"]


def test_evaluate_draws_the_same_masks_every_time_and_leaves_the_training_rng_alone():
    exp = build_experiment(_stage(recipe="mae-pretrain"))
    torch.manual_seed(1)
    first = evaluate(exp, exp.model)
    torch.manual_seed(2)
    state = torch.get_rng_state()
    second = evaluate(exp, exp.model)
    assert second == first and torch.equal(torch.get_rng_state(), state)
    # without its fixed seed the loss would differ: MAE's masks are random
    torch.manual_seed(2)
    with torch.no_grad():
        unseeded = trainer._evaluate(exp, exp.model, exp.val, "val")
    assert unseeded["val/loss"] != first["val/loss"]


def _unbalanced_test(exp):
    """``exp`` with its first test image of class 0 left out: 19 test images, 1 of class 0 and 2 of each other."""
    keep = torch.ones(len(exp.test.labels), dtype=torch.bool)
    keep[(exp.test.labels == 0).nonzero()[0]] = False
    return dataclasses.replace(exp, test=EvalSet("test", exp.test.images[keep], exp.test.labels[keep]))


def test_evaluate_adds_balanced_accuracy_on_an_unbalanced_split_from_its_own_forward_passes():
    exp = _unbalanced_test(build_experiment(_stage("train.batch_size=8")))  # batches of 8, 8 and 3
    head = exp.model.classifier_state()
    with torch.no_grad():  # every image predicted class 0
        head["head.weight"].zero_()
        head["head.bias"].copy_(torch.eye(len(exp.classes))[0])
    passes = []
    exp.model.backbone.register_forward_hook(lambda *_: passes.append(1))
    plain = evaluate(exp, exp.model, "test")
    metrics = evaluate(exp, exp.model, "test", balanced=True)
    assert len(passes) == 2 * 3  # one backbone pass per batch, with or without balanced accuracy
    assert plain["test/supervised/acc1"] == pytest.approx(1 / 19)
    assert metrics == {**plain, "test/supervised/balanced_acc1": 0.1}  # recall 1 of class 0, 0 of the 9 others


def test_evaluate_adds_no_balanced_accuracy_on_a_balanced_split_or_without_a_classifier():
    balanced = build_experiment(_stage())  # 2 test images of each class
    assert evaluate(balanced, balanced.model, "test", balanced=True) == evaluate(balanced, balanced.model, "test")
    pretraining = _unbalanced_test(build_experiment(_stage(recipe="mae-pretrain")))
    metrics = evaluate(pretraining, pretraining.model, "test", balanced=True)
    assert metrics == evaluate(pretraining, pretraining.model, "test") and "test/mae/loss" in metrics


def test_the_summary_has_balanced_accuracy_of_the_last_and_best_weights_on_an_unbalanced_test_split(
    tmp_path, monkeypatch
):
    real_build = trainer.build_experiment
    monkeypatch.setattr(trainer, "build_experiment", lambda config: _unbalanced_test(real_build(config)))
    run, summary, _ = _train(tmp_path, "epochs=2", "train.eval_every=1", "train.ema_decay=0.9")
    for checkpoint, metrics in (("last", summary["final"]), ("best", summary["best"]["test"])):
        exp, model = _reloaded(run, checkpoint)
        exp = _unbalanced_test(exp)
        predictions = predict_split(exp, model, exp.test).argmax(dim=1)
        expected = balanced_accuracy(predictions, exp.test.labels, len(exp.classes))
        assert metrics["test/supervised/balanced_acc1"] == expected
    assert not any("balanced" in key for key in summary["final"] if key.startswith(("val/", "test/ema/")))
    test_record = _records(run, "test")[-1]
    assert test_record["best/test/supervised/balanced_acc1"] == summary["best"]["test"]["test/supervised/balanced_acc1"]


def test_precision_is_resolved_once_per_run_and_per_evaluation_not_per_micro_batch(tmp_path, monkeypatch):
    resolved, evaluations = [], []
    real_resolve, real_evaluate = trainer.resolve_precision, trainer.evaluate
    monkeypatch.setattr(trainer, "resolve_precision", lambda p, d: resolved.append(p) or real_resolve(p, d))
    monkeypatch.setattr(trainer, "evaluate", lambda *a, **k: evaluations.append(a) or real_evaluate(*a, **k))
    _, summary, _ = _train(tmp_path, "precision=auto", "train.batch_size=10", "train.accumulation=2")
    # 4 optimizer steps of 2 micro-batches each; every evaluation is of 20 images, in 2 batches
    assert len(evaluations) >= 2  # validation, then test
    assert resolved.count("auto") == 1 + len(evaluations)
    assert summary["precision"] == real_resolve("auto", resolve_device("auto"))


def _top1(record, prefix):
    return {key[len(prefix) : -len("/acc1")]: value for key, value in record.items() if key.endswith("/acc1")}


def test_the_progress_lines_show_every_objectives_own_top1(tmp_path):
    run, _, output = _train(tmp_path, recipe="poslabel-apl-vit")
    lines = output.splitlines()
    train_record, eval_record = _records(run, "train")[-1], _records(run, "eval")[-1]
    # supervised trains on mixup/CutMix images, so it has a training top-1 only in evaluation
    for record, prefix, start, names in [
        (train_record, "train/", "epoch 1/1: ", ["apl"]),
        (eval_record, "val/", "epoch 1: ", ["apl", "supervised"]),
    ]:
        top1 = _top1(record, prefix)
        assert sorted(top1) == names
        line = next(line for line in lines if line.startswith(start)) + "  "
        assert line.startswith(f"{start}loss {record[prefix + 'loss']:.3f}  ")
        for name, value in top1.items():
            assert f"  {name} {value:.3f}  " in line
