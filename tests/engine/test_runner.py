"""The run-folder rules of a new run: which folder it writes to (also under torchrun), what is checked before the
folder is made, what a failed start leaves behind, and the recipe a fine-tuning starts from."""

import pytest

import smallvit.engine.runner as runner
from smallvit.config import load_recipe
from smallvit.engine.runner import (
    check_devices,
    discard_untrained,
    finetune_recipe,
    run_new,
    training_run_dir,
)
from smallvit.errors import ConfigError, SmallViTError


@pytest.fixture
def single_process(monkeypatch):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)


def torchrun(monkeypatch, rank: int) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", str(rank))


def test_a_single_process_gets_a_new_folder_every_time(tmp_path, single_process):
    first = training_run_dir(tmp_path / "runs", "quickstart", "a")
    assert first == tmp_path / "runs" / "a" and first.is_dir()
    assert training_run_dir(tmp_path / "runs", "quickstart", "a") == tmp_path / "runs" / "a-2"


def test_under_torchrun_every_rank_names_one_folder_that_rank_0_checks(tmp_path, monkeypatch):
    torchrun(monkeypatch, rank=1)
    with pytest.raises(SmallViTError, match="pass --name NAME"):
        training_run_dir(tmp_path, "quickstart", None)
    assert training_run_dir(tmp_path, "quickstart", "same") == tmp_path / "same"
    assert not (tmp_path / "same").exists()  # made by the run itself, on every rank
    (tmp_path / "same").mkdir()
    (tmp_path / "same" / "config.yaml").write_text("{}")
    assert training_run_dir(tmp_path, "quickstart", "same") == tmp_path / "same"  # only rank 0 checks
    torchrun(monkeypatch, rank=0)
    with pytest.raises(SmallViTError, match="already holds a run: continue it with --resume"):
        training_run_dir(tmp_path, "quickstart", "same")


def test_only_a_run_folder_without_any_stage_config_is_discarded(tmp_path, monkeypatch, single_process):
    untrained = tmp_path / "untrained"
    (untrained / "1-pretrain").mkdir(parents=True)
    (untrained / "recipe.yaml").write_text("{}")
    assert discard_untrained(untrained) and not untrained.exists()
    second_stage_failed = tmp_path / "second"
    (second_stage_failed / "1-pretrain").mkdir(parents=True)
    (second_stage_failed / "1-pretrain" / "config.yaml").write_text("{}")
    assert not discard_untrained(second_stage_failed) and second_stage_failed.exists()
    shared = tmp_path / "shared"
    shared.mkdir()
    torchrun(monkeypatch, rank=0)
    assert not discard_untrained(shared) and shared.exists()


def test_a_new_run_stopped_before_training_leaves_no_folder(tmp_path, monkeypatch, single_process):
    def stopped(recipe, run_dir, **kwargs):
        (run_dir / "recipe.yaml").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "run_recipe", stopped)
    run_dir = tmp_path / "new"
    run_dir.mkdir()
    with pytest.raises(KeyboardInterrupt):
        run_new(load_recipe("quickstart"), run_dir)
    assert not run_dir.exists()


def test_devices_are_checked_for_every_stage():
    check_devices(load_recipe("quickstart"))
    with pytest.raises(ConfigError, match="train.device=tpu9 is not a device"):
        check_devices(load_recipe("quickstart", ["train.device=tpu9"]))


def test_a_finetuning_recipe_starts_its_first_stage_from_the_source(tmp_path):
    with pytest.raises(SmallViTError, match="no checkpoint found"):
        finetune_recipe(tmp_path / "nothing", "nope", [])  # the source is checked before the recipe is read
    source = tmp_path / "weights.safetensors"
    source.write_bytes(b"")
    recipe = finetune_recipe(source, "quickstart", ["epochs=3"])
    assert recipe.stages[0].model.init_from == str(source) and recipe.stages[0].train.epochs == 3
    assert load_recipe("quickstart").stages[0].model.init_from is None
