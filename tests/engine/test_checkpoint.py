import pytest
import torch

from smallvit.engine.checkpoint import (
    load_checkpoint,
    optimizer_from_flat,
    optimizer_to_flat,
    restore_rng,
    rng_tensors,
    save_checkpoint,
    usable_checkpoint,
)
from smallvit.engine.experiment import last_stage, resolve_checkpoint
from smallvit.errors import SmallViTError


def _trained_optimizer(model):
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    return optimizer


def test_round_trip_restores_model_optimizer_rng_and_state(tmp_path):
    model = torch.nn.Linear(3, 2)
    optimizer = _trained_optimizer(model)
    tensors, meta = optimizer_to_flat(optimizer)
    torch.manual_seed(123)
    tensors.update(rng_tensors())
    tensors.update({f"model.{k}": v for k, v in model.state_dict().items()})
    save_checkpoint(tmp_path / "last.safetensors", tensors, {"epoch": 3, "optimizer": meta})
    expected_next = torch.rand(3)

    loaded, state = load_checkpoint(tmp_path / "last.safetensors")
    assert state["epoch"] == 3 and (tmp_path / "last.json").is_file()
    fresh = torch.nn.Linear(3, 2)
    fresh.load_state_dict({k[6:]: v for k, v in loaded.items() if k.startswith("model.")})
    fresh_optimizer = torch.optim.AdamW(fresh.parameters(), lr=0.1)
    optimizer_from_flat(fresh_optimizer, loaded, state["optimizer"])
    restore_rng(loaded)
    assert torch.equal(torch.rand(3), expected_next)
    for a, b in zip(optimizer.state_dict()["state"].values(), fresh_optimizer.state_dict()["state"].values()):
        assert all(torch.equal(torch.as_tensor(a[k]), torch.as_tensor(b[k])) for k in a)


def test_prefix_filter_and_no_temp_files_left(tmp_path):
    save_checkpoint(tmp_path / "c.safetensors", {"model.w": torch.ones(2), "optim.0.exp_avg": torch.zeros(2)}, {})
    model_only, _ = load_checkpoint(tmp_path / "c.safetensors", prefix="model.")
    assert list(model_only) == ["w"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.json", "c.safetensors"]


def test_a_failed_write_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    path = tmp_path / "last.safetensors"
    save_checkpoint(path, {"w": torch.ones(2)}, {"epoch": 1})

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("smallvit.engine.checkpoint.save_file", crash)
    with pytest.raises(SmallViTError, match="could not write .*disk full.*previous checkpoint is intact"):
        save_checkpoint(path, {"w": torch.zeros(2)}, {"epoch": 2})
    tensors, state = load_checkpoint(path)
    assert state["epoch"] == 1 and torch.equal(tensors["w"], torch.ones(2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.json", "last.safetensors"]  # no temporary files


def test_replacing_last_keeps_the_previous_one_and_a_damaged_last_falls_back_to_it(tmp_path):
    path = tmp_path / "last.safetensors"
    save_checkpoint(path, {"w": torch.ones(2)}, {"epoch": 1})
    save_checkpoint(path, {"w": torch.zeros(2)}, {"epoch": 2})
    assert load_checkpoint(tmp_path / "last.prev.safetensors")[1]["epoch"] == 1
    assert usable_checkpoint(tmp_path) == (path, load_checkpoint(path)[1])
    path.write_bytes(path.read_bytes()[:-8])  # truncated
    with pytest.raises(SmallViTError, match="unreadable|checksum"):
        load_checkpoint(path)
    chosen, state = usable_checkpoint(tmp_path)
    assert chosen.name == "last.prev.safetensors" and state["epoch"] == 1


def test_a_flipped_byte_in_a_tensor_fails_the_checksum(tmp_path):
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, {"w": torch.arange(64, dtype=torch.float32)}, {})
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF  # inside the tensor payload, which ends the file
    path.write_bytes(bytes(data))
    with pytest.raises(SmallViTError, match="fails its checksum"):
        load_checkpoint(path)


@pytest.mark.parametrize("content", [b"", b"\x00" * 7, b"not a safetensors file at all", bytes(range(256)) * 4])
def test_random_or_empty_bytes_are_one_clear_error(tmp_path, content):
    path = tmp_path / "c.safetensors"
    path.write_bytes(content)
    with pytest.raises(SmallViTError, match="is unreadable"):
        load_checkpoint(path)


def test_a_multi_stage_run_folder_resolves_to_its_last_stage(tmp_path):
    run = tmp_path / "relvit"
    for stage in ("1-relvit-pretrain", "2-relvit-finetune", "10-extra"):
        (run / stage / "checkpoints").mkdir(parents=True)
        (run / stage / "config.yaml").write_text("{}")
        (run / stage / "checkpoints" / "last.safetensors").write_bytes(b"")
    (run / "recipe.yaml").write_text("{}")
    assert last_stage(run) == run / "10-extra"  # by stage number, not by name
    assert resolve_checkpoint(run) == run / "10-extra" / "checkpoints" / "last.safetensors"
    single = run / "1-relvit-pretrain"
    assert last_stage(single) == single and resolve_checkpoint(single).parent.parent == single
