"""Fuzzing the recipe loader: whatever a recipe file holds (generated YAML built from the real keys and values,
mutated shipped recipes, random bytes) and whatever overrides are typed, :func:`load_recipe`, :func:`validate_run`
and :func:`parse_overrides` either return a config or raise one of smallvit's own errors (:class:`SmallViTError`),
with a one-line message — never a traceback from YAML, pydantic or Python itself.

The fast test runs 200 fixed cases (derandomized, so CI is reproducible); the ``fuzz`` one runs 10,000 fresh ones:
``pytest -m fuzz tests/faults``. The hand-picked cases at the bottom are the crashes fuzzing found, kept as examples.
"""

from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from smallvit.config import ALIASES, RunConfig, load_recipe, parse_overrides, recipe_dir, validate_run
from smallvit.errors import SmallViTError
from smallvit.objectives import OBJECTIVES


def field_paths(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Every dotted key of a config model, nested models included (``train.epochs``, ``data.subset.per_class``)."""
    paths = []
    for name, field in model.model_fields.items():
        paths.append(prefix + name)
        annotation = field.annotation
        for candidate in (annotation, *getattr(annotation, "__args__", ())):
            if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                paths += field_paths(candidate, f"{prefix}{name}.")
    return paths


RECIPES = sorted(recipe_dir().glob("*.yaml"))
OBJECTIVE_FIELDS = sorted({f for cls in OBJECTIVES.values() for f in field_paths(cls.Config)})
PATHS = field_paths(RunConfig) + list(ALIASES) + ["base", "stages", "augment.main.ops.0.op", "data.eval_split"]
PATHS += [f"objectives.{i}.{f}" for i in (0, 1) for f in [*OBJECTIVE_FIELDS, "weight", "weight_schedule.kind"]]
PATHS += ["objectives.0.position_labels.0.kind", "objectives.0.position_labels.0.weight"]  # a legacy MAE form
WORDS = sorted({part for path in PATHS for part in path.split(".")})
VALUES = [p.stem for p in RECIPES] + ["auto", "cpu", "tpu9", "fp32", "bf16", "previous", *OBJECTIVES, "apl", "rpl"]
VALUES += ["cifar10-sample", "random_crop", "hflip", "val/supervised/acc1", "main", "none", "../x.yaml", "error"]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(VALUES),
    st.text(max_size=12),
)
keys = st.one_of(st.sampled_from(WORDS), st.text(max_size=8), st.integers(-2, 3), st.none())
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(keys, inner, max_size=5)),
    max_leaves=25,
)
top_level = st.dictionaries(st.one_of(st.sampled_from(WORDS), keys), values, max_size=6)


def mutate(text: str, edits: list[tuple[int, int, str]]) -> str:
    for position, length, insert in edits:
        position %= len(text) + 1
        text = text[:position] + insert + text[position + length :]
    return text


shipped = st.sampled_from([p.read_text() for p in RECIPES])
snippets = st.sampled_from([":", "-", " ", "\n", "  ", "[", "{", "}", "]", "*a", "&a ", "!!", "'", '"', "#", "\t", "?"])
mutated = st.builds(
    mutate,
    shipped,
    st.lists(st.tuples(st.integers(0, 4000), st.integers(0, 6), st.one_of(snippets, st.text(max_size=4))), max_size=5),
)


def dump(document) -> bytes:
    return yaml.safe_dump(document, allow_unicode=True).encode()


documents = st.one_of(
    top_level.map(dump),
    mutated.map(str.encode),
    st.binary(max_size=200),
    st.text(max_size=200).map(str.encode),
)
override_strings = st.one_of(
    st.builds(
        lambda key, value: f"{key}={value}",
        st.one_of(st.sampled_from(PATHS), st.text(max_size=12)),
        st.one_of(values.map(lambda v: yaml.safe_dump(v, default_flow_style=True).strip()), st.text(max_size=12)),
    ),
    st.text(max_size=20),
)
overrides = st.lists(override_strings, max_size=3)


def only_project_errors(call, *args) -> None:
    try:
        call(*args)
    except SmallViTError as err:
        assert "\n" not in str(err), str(err)


@pytest.fixture(scope="module")
def recipe_file(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz") / "recipe.yaml"


def loads_or_refuses(recipe_file: Path, document: bytes, mapping: dict, overriding: list[str]) -> None:
    recipe_file.write_bytes(document)
    only_project_errors(load_recipe, str(recipe_file))
    only_project_errors(load_recipe, str(recipe_file), overriding)
    only_project_errors(load_recipe, "quickstart", overriding)
    only_project_errors(validate_run, mapping, "fuzz")
    only_project_errors(parse_overrides, overriding)


CASES = {"document": documents, "mapping": top_level, "overriding": overrides}
COMMON = {"deadline": None, "database": None, "suppress_health_check": [HealthCheck.too_slow]}


@settings(max_examples=200, derandomize=True, **COMMON)
@given(**CASES)
def test_the_recipe_loader_raises_only_smallvit_errors(recipe_file, document, mapping, overriding):
    loads_or_refuses(recipe_file, document, mapping, overriding)


@pytest.mark.fuzz
@settings(max_examples=10_000, **COMMON)
@given(**CASES)
def test_the_recipe_loader_raises_only_smallvit_errors_10000_cases(recipe_file, document, mapping, overriding):
    loads_or_refuses(recipe_file, document, mapping, overriding)


@pytest.mark.parametrize(
    "document",
    [
        "[" * 5000 + "]" * 5000,  # nesting deeper than Python's recursion limit
        "train: {seed: 2021-02-30}\n",  # a date YAML cannot build
        "base: 5\n",
        "base: [quickstart]\n",
        "stages:\n",
        "stages: [5]\n",
        "stages: [{train: {epochs: 1}}]\n",
        "stages: quickstart\n",
        "stages: [quickstart]\nname: [1, 2]\n",
        "data: {eval_split: test}\ntrain: [1]\n",
        "objectives: [{name: mae, position_labels: [5]}]\n",
        "objectives: [{name: mae, weight: x, position_labels: [{kind: apl, weight: 2}]}]\n",
    ],
)
def test_recipes_that_once_crashed_the_loader(recipe_file, document):
    recipe_file.write_text(document)
    only_project_errors(load_recipe, str(recipe_file))


@pytest.mark.parametrize(
    "override",
    [
        "lr=[",
        "seed=2021-02-30",
        "lr=!!python/name:os.system",
        "lr=" + "[" * 5000,
        "augment.main.ops.0.op.x=1",
        "objectives.0.name=[]",
        "objectives.0.name='a\nb'",
    ],
)
def test_overrides_that_once_crashed_the_loader(override):
    only_project_errors(load_recipe, "quickstart", [override])
    only_project_errors(load_recipe, "idmm-pretrain", ["objectives.0.views.0.x=1"])
