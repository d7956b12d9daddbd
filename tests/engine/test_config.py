import pytest

from smallvit.config import (
    DistributedEnv,
    apply_overrides,
    available_recipes,
    distributed_env,
    load_recipe,
    override_value,
    parse_overrides,
    split_override,
)
from smallvit.errors import ConfigError


def test_every_shipped_recipe_validates():
    recipes = available_recipes()
    assert "quickstart" in recipes and "supervised" in recipes
    for name in recipes:
        assert load_recipe(name).stages, name


def test_overrides_with_aliases_types_and_list_indices():
    recipe = load_recipe(
        "quickstart", ["epochs=3", "train.batch_size=64", "objectives.0.label_smoothing=0.2", "dataset=cifar10-jpeg"]
    )
    stage = recipe.stages[0]
    assert stage.train.epochs == 3 and stage.train.batch_size == 64
    assert stage.objectives[0].label_smoothing == 0.2
    assert stage.data.dataset == "cifar10-jpeg"


def test_override_creates_nested_blocks():
    stage = load_recipe("quickstart", ["data.subset.per_class=20"]).stages[0]
    assert stage.data.subset.per_class == 20


def test_objective_specific_fields_survive_serialisation():
    stage = load_recipe("quickstart", ["objectives.0.label_smoothing=0.3"]).stages[0]
    assert stage.to_dict()["objectives"][0]["label_smoothing"] == 0.3


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.epoch=3", "unknown key 'train.epoch' (allowed here: epochs"),
        ("train.epochs=abc", "train.epochs='abc'"),
        ("objectives.0.smoothing=0.1", "smoothing"),
        ("objectives.0.name=nope", "unknown objective 'nope'"),
        ("model.bogus=1", "unknown key 'model.bogus'"),
        ("epochs", "is not key=value"),
        ("objectives.5.weight=1", "not an index below 1"),
        ("train.time_limit_s=0", "train.time_limit_s=0: Input should be greater than 0"),
        ("train.time_limit_s=-5", "train.time_limit_s=-5: Input should be greater than 0"),
        ("train.time_limit_s=.inf", "train.time_limit_s=inf: Input should be a finite number"),
    ],
)
def test_bad_overrides_fail_with_one_line(override, message):
    with pytest.raises(ConfigError) as err:
        load_recipe("quickstart", [override])
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_unknown_recipe_names_the_known_ones(tmp_path):
    with pytest.raises(ConfigError, match="unknown recipe 'nope'.*quickstart"):
        load_recipe("nope")
    with pytest.raises(ConfigError, match="does not exist"):
        load_recipe(str(tmp_path / "missing.yaml"))


def test_recipe_files_inherit_with_base(tmp_path):
    child = tmp_path / "child.yaml"
    child.write_text("base: quickstart\ntrain:\n  epochs: 7\n")
    stage = load_recipe(str(child)).stages[0]
    assert stage.train.epochs == 7
    assert stage.train.batch_size == load_recipe("quickstart").stages[0].train.batch_size
    assert stage.name == "child"


def test_multi_stage_recipe(tmp_path):
    (tmp_path / "two.yaml").write_text(f"stages: [quickstart, {tmp_path / 'second.yaml'}]\n")
    (tmp_path / "second.yaml").write_text("base: quickstart\nmodel: {init_from: previous}\n")
    recipe = load_recipe(str(tmp_path / "two.yaml"), ["epochs=2"])
    assert [s.name for s in recipe.stages] == ["quickstart", "second"]
    assert all(s.train.epochs == 2 for s in recipe.stages)
    assert recipe.stages[1].model.init_from == "previous"


def test_views_read_by_objectives_must_exist():
    with pytest.raises(ConfigError, match="reads view"):
        load_recipe("quickstart", ["objectives.0.views=[large]"])


def test_parse_and_apply_overrides_are_pure():
    raw = {"train": {"epochs": 1}}
    updated = apply_overrides(raw, parse_overrides(["train.epochs=2"]))
    assert raw["train"]["epochs"] == 1 and updated["train"]["epochs"] == 2


def test_split_override_expands_aliases_and_refuses_what_is_not_key_value():
    assert split_override("epochs=5") == ("train.epochs", "5")
    assert split_override("model.overrides.depth=a=b") == ("model.overrides.depth", "a=b")
    assert split_override("train.best_metric=") == ("train.best_metric", "")
    for pair in ("epochs", "=5"):
        with pytest.raises(ConfigError, match=f"override '{pair}' is not key=value"):
            split_override(pair)


def test_override_value_is_the_last_one_given_under_either_name():
    args = ["quickstart", "seed=1", "lr=0.1", "train.seed=2", "data.dataset=svhn", "not-an-override"]
    assert override_value(args, "train.seed") == "2"
    assert override_value(args, "data.dataset") == "svhn"
    assert override_value(args, "train.epochs") is None


def test_an_objective_weight_error_says_what_a_weight_is():
    for value in ("-1", "x", ".inf"):
        with pytest.raises(ConfigError, match=r"objectives\.0\.weight=.*: an objective weight must be a finite number"):
            load_recipe("quickstart", [f"objectives.0.weight={value}"])


def test_non_finite_numbers_are_refused_in_objective_and_mixing_settings_too():
    for override in ("objectives.0.label_smoothing=.nan", "augment.main.mix.mixup_alpha=.inf"):
        with pytest.raises(ConfigError, match="Input should be a finite number"):
            load_recipe("quickstart", [override])


def test_distributed_env_reads_torchrun_variables(monkeypatch):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    single = distributed_env()
    assert single == DistributedEnv(1, 0, 0) and not single.distributed and single.is_main
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    rank3 = distributed_env()
    assert rank3 == DistributedEnv(world_size=4, rank=3, local_rank=1) and rank3.distributed and not rank3.is_main
