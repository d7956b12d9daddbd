"""Distributed training (CPU, gloo) proven equal to one process: the same parameters, evaluations and kNN from the
same global batch; instance discrimination's per-image classes right on every rank; a killed 2-process run resumed
to exactly the uninterrupted one.

Ranks are started as torchrun starts them: one process each, with ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``,
``MASTER_ADDR`` and ``MASTER_PORT`` set, all running ``smallvit train``. They are forked from an already-imported
command server (``tests/faults/cli_processes.py``), which saves each rank ~10 s of imports; one test (slow) runs the
real ``torchrun`` launcher.
"""

import importlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from smallvit.data.loader import InMemoryLoader

RUN = [
    "data.subset.per_class=8",  # 80 training images
    "data.eval_subset.per_class=4",
    "model.overrides.depth=1",
    "model.overrides.embed_dim=48",
    "model.overrides.num_heads=3",
    "train.eval_every=1",
    "train.log_every=1",
    "precision=fp32",
]


@pytest.fixture(scope="module")
def cli():
    sys.path.insert(0, str(Path(__file__).parents[1] / "faults"))
    server = importlib.import_module("cli_processes").CliServer()
    yield server
    server.close()


@pytest.fixture
def env(tmp_path_factory) -> dict:
    cache = tmp_path_factory.getbasetemp() / "distributed-cache"
    return dict(os.environ, SMALLVIT_DATA=str(cache / "data"), SMALLVIT_CACHE=str(cache))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(cli, world_size: int, args: list[str], env: dict, hooks: dict | list | None = None) -> list:
    """Start ``smallvit ARGS`` in ``world_size`` processes as torchrun does, one thread each (``hooks``: the same for
    every rank, or one per rank); wait for their results."""
    return [child.wait() for child in start(cli, world_size, args, env, hooks)]


def start(cli, world_size: int, args: list[str], env: dict, hooks: dict | list | None = None) -> list:
    port = free_port()
    per_rank = hooks if isinstance(hooks, list) else [hooks] * world_size
    if world_size == 1:
        return [cli.start(*args, env=env, hooks=per_rank[0], threads=1)]
    ranks = {"WORLD_SIZE": str(world_size), "LOCAL_WORLD_SIZE": str(world_size), "MASTER_ADDR": "127.0.0.1"}
    return [
        cli.start(
            *args,
            env={**env, **ranks, "RANK": str(rank), "LOCAL_RANK": str(rank), "MASTER_PORT": str(port)},
            hooks=per_rank[rank],
            threads=1,
        )
        for rank in range(world_size)
    ]


def succeeded(results) -> None:
    for result in results:
        assert result.returncode == 0, result.stderr[-3000:]


def train(cli, env, runs: Path, name: str, world_size: int, per_process_batch: int, *extra: str, hooks=None):
    args = ["train", "quickstart", *RUN, f"train.batch_size={per_process_batch}", *extra]
    return launch(cli, world_size, [*args, "--runs-dir", str(runs), "--name", name, "--quiet"], env, hooks)


def last(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "checkpoints" / "last.safetensors"))


def evaluations(run: Path) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "step"} for line in lines if '"kind": "eval"' in line]


def test_each_rank_takes_its_stride_of_one_permutation_with_dataset_indices():
    """The global batch of a step is the single process's batch, split between the ranks, and every rank's
    ``indices`` are positions in the whole training set — so instance discrimination's per-image classes (and the
    labels) are the same whether one process or two see an image."""
    images = torch.arange(50, dtype=torch.uint8).view(50, 1, 1, 1).expand(50, 1, 2, 2).contiguous()
    labels = torch.arange(50) % 7
    single = InMemoryLoader(images, labels, batch_size=10, seed=3, drop_last=True)
    ranks = [InMemoryLoader(images, labels, 5, seed=3, drop_last=True, rank=r, world_size=2) for r in range(2)]
    for epoch in range(3):
        for loader in (single, *ranks):
            loader.set_epoch(epoch)
        assert len(single) == len(ranks[0]) == len(ranks[1]) == 5
        for whole, *parts in zip(single, *ranks):
            assert sorted(torch.cat([p[2] for p in parts]).tolist()) == sorted(whole[2].tolist())
            for part_images, part_labels, indices in parts:
                assert torch.equal(part_images[:, 0, 0, 0].long(), indices)  # image i is image i of the dataset
                assert torch.equal(part_labels, labels[indices])


def test_two_processes_end_where_one_process_does_with_the_same_global_batch(cli, env, tmp_path):
    """2 processes × 10 images per step against 1 process × 20: the same parameters (to float tolerance — DDP sums
    the two halves' gradients in another order), the same validation losses, accuracies and kNN accuracy.

    What must match for this to hold, and how the config ensures it: the data order — every rank draws the same
    permutation per epoch and takes every 2nd position (``InMemoryLoader``), so a step's 20 images are the single
    process's 20; the initial weights — DDP broadcasts rank 0's at start; the augmentation — each rank draws its
    random crops and flips from its own generator (seeded by rank), so they cannot match a single process's:
    ``augment.main.ops=[]`` makes them deterministic; drop path — drawn from the global RNG, seeded ``seed + rank``:
    ``model.drop_path=0``. Instance discrimination (one class per training image) is trained alongside the supervised
    objective: its head, with one row per image, ends the same only if every rank used the images' dataset indices.
    Evaluation and online kNN run on rank 0 over the whole validation and training sets.
    """
    deterministic = [
        "epochs=2",
        "augment.main.ops=[]",
        "model.drop_path=0",
        "objectives=[{name: supervised}, {name: instance_discrimination}]",
        "train.knn_every=1",
    ]
    succeeded(train(cli, env, tmp_path, "one", 1, 20, *deterministic))
    succeeded(train(cli, env, tmp_path, "two", 2, 10, *deterministic))
    one, two = last(tmp_path / "one"), last(tmp_path / "two")
    weights = [key for key in one if key.startswith("model.")]
    assert "model.objectives.1.head.weight" in weights  # instance discrimination's head: 80 rows, one per image
    for key in weights:
        if key.endswith("attn.qkv.bias"):  # the key bias has no gradient (softmax ignores a shift of every key's score)
            q, k, v = two[key].chunk(3)  # in exact arithmetic; AdamW scales its rounding noise up to lr-sized steps
            torch.testing.assert_close(torch.cat([q, v]), torch.cat([one[key].chunk(3)[i] for i in (0, 2)]), msg=key)
            torch.testing.assert_close(k, one[key].chunk(3)[1], rtol=0, atol=1e-3)
        else:
            torch.testing.assert_close(two[key], one[key], rtol=1e-4, atol=2e-6, msg=key)
    for ours, theirs in zip(evaluations(tmp_path / "two"), evaluations(tmp_path / "one"), strict=True):
        assert ours.keys() == theirs.keys() and "val/knn/acc1" in ours
        for key, value in ours.items():
            assert value == (pytest.approx(theirs[key], rel=1e-4, abs=1e-5) if key != "kind" else theirs[key]), key


REAL = ["epochs=3", "model.overrides.depth=2"]  # drop path grows from 0 at the first block: 2 blocks to have any


@pytest.fixture(scope="module")
def uninterrupted(cli, tmp_path_factory) -> Path:
    """A 2-process run with the random augmentation and drop path of a real recipe: each rank has its own random
    streams, which a resumed run must continue exactly."""
    runs = tmp_path_factory.mktemp("uninterrupted")
    cache = tmp_path_factory.getbasetemp() / "distributed-cache"
    env = dict(os.environ, SMALLVIT_DATA=str(cache / "data"), SMALLVIT_CACHE=str(cache))
    succeeded(train(cli, env, runs, "whole", 2, 10, *REAL))
    return runs / "whole"


def assert_bit_identical(run: Path, reference: Path) -> None:
    """Every tensor of the last checkpoint (parameters, optimizer state, each rank's RNG streams) and every
    evaluation are those of the reference run."""
    ours, theirs = last(run), last(reference)
    assert sorted(ours) == sorted(theirs)
    different = [key for key in ours if not torch.equal(ours[key], theirs[key])]
    assert not different, different[:5]
    assert evaluations(run) == evaluations(reference)


def test_a_killed_two_process_run_resumes_exactly_to_the_uninterrupted_one(cli, env, tmp_path, uninterrupted):
    """Both ranks SIGKILLed in the middle of epoch 2 (step 6 of 12), then resumed from the epoch-1 checkpoint."""
    killed = train(cli, env, tmp_path, "killed", 2, 10, *REAL, hooks={"kill_in_step": 6})
    assert [r.returncode for r in killed] == [-9, -9]
    succeeded(launch(cli, 2, ["train", "--resume", str(tmp_path / "killed"), "--quiet"], env))
    assert_bit_identical(tmp_path / "killed", uninterrupted)


def test_sigterm_to_one_rank_stops_all_at_one_step_and_resumes_exactly(cli, env, tmp_path, uninterrupted):
    """SIGTERM reaches rank 1 alone, in step 7 (mid-epoch 2): the ranks agree to stop after that step, rank 0 writes
    a mid-epoch checkpoint with every rank's augmentation generator, both exit 130, and the resumed run ends as the
    uninterrupted one."""
    ready, go = tmp_path / "ready", tmp_path / "go"
    args = ["train", "quickstart", *RUN, "train.batch_size=10", *REAL, "--runs-dir", str(tmp_path), "--name", "run"]
    ranks = start(cli, 2, [*args, "--quiet"], env, hooks=[None, {"pause_in_step": [7, str(ready), str(go)]}])
    deadline = time.monotonic() + 300
    while not ready.exists():
        assert time.monotonic() < deadline
        time.sleep(0.02)
    os.kill(ranks[1].pid, signal.SIGTERM)
    go.touch()
    results = [rank.wait() for rank in ranks]
    assert [r.returncode for r in results] == [130, 130], [r.stderr[-2000:] for r in results]
    assert "stopped by signal 15 at step 7" in results[1].stderr
    assert "a signal to another rank at step 7" in results[0].stderr and "--resume" in results[0].stderr
    state = json.loads((tmp_path / "run" / "checkpoints" / "last.json").read_text())
    assert (state["epoch"], state["batch"], state["step"]) == (1, 3, 7)
    succeeded(launch(cli, 2, ["train", "--resume", str(tmp_path / "run"), "--quiet"], env))
    assert_bit_identical(tmp_path / "run", uninterrupted)


def test_a_nonfinite_loss_on_one_rank_is_skipped_by_every_rank(cli, env, tmp_path):
    """Rank 1's batch of step 3 is corrupt (NaN), rank 0's is not. DDP averages the gradients, so both ranks hold NaN
    gradients: both must skip that update (``train.skip_nonfinite``), not rank 1 alone while rank 0 steps into a NaN
    model, and the count is in the metrics."""
    hooks = [None, {"nan_in_step": 3}]
    succeeded(train(cli, env, tmp_path, "run", 2, 10, "epochs=2", "train.skip_nonfinite=1", hooks=hooks))
    tensors = last(tmp_path / "run")
    assert all(torch.isfinite(t).all() for t in tensors.values() if t.is_floating_point())
    assert {float(v) for k, v in tensors.items() if k.endswith(".step")} == {7.0}  # 8 steps, one skipped
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["train/skipped_nonfinite"] for r in records if r["kind"] == "train"][-1] == 1


@pytest.mark.slow
def test_torchrun_two_processes_train_one_run(tmp_path):
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
    env = dict(os.environ, SMALLVIT_CACHE=str(tmp_path / "cache"), OMP_NUM_THREADS="1")
    args = [torchrun, "--standalone", "--nproc_per_node", "2", "-m", "smallvit.cli", "train", "quickstart"]
    args += ["epochs=1", "data.subset.per_class=10", "data.eval_subset.per_class=5", "model.overrides.depth=1"]
    args += ["train.batch_size=25", "--runs-dir", str(tmp_path / "runs"), "--name", "ddp", "--quiet"]
    result = subprocess.run(args, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "runs" / "ddp" / "summary.json").read_text())
    assert {"val/supervised/acc1", "test/supervised/acc1"} <= set(summary["final"])
    steps = [
        json.loads(line)["step"] for line in (tmp_path / "runs" / "ddp" / "metrics.jsonl").read_text().splitlines()
    ]
    assert max(steps) == 2  # 100 images, 25 per rank and step, 2 ranks
