"""The generated configuration reference (``scripts/config_reference.py``) lists every key the schema accepts, with
its type, default, allowed values and a description, and the documentation pages hold its markers."""

import importlib.util
import sys
from pathlib import Path

import pytest
from pydantic import BaseModel

from smallvit.config import ALIASES, RunConfig, available_recipes
from smallvit.data.datasets import DATASETS
from smallvit.data.transforms import OPS
from smallvit.models.presets import PRESETS
from smallvit.objectives import OBJECTIVES, ObjectiveConfig

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def generator():
    spec = importlib.util.spec_from_file_location("config_reference", ROOT / "scripts" / "config_reference.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[spec.name]


def schema_keys(model: type[BaseModel], prefix: str = "") -> set[str]:
    """Every dotted key of ``model``, walked independently of the generator (``<view>`` for a mapping's values)."""
    keys = set()
    for name, field in model.model_fields.items():
        keys.add(prefix + name)
        for arg in [field.annotation, *getattr(field.annotation, "__args__", ())]:
            inner = arg if isinstance(arg, type) and issubclass(arg, BaseModel) else None
            if inner is not None:
                mapping = getattr(field.annotation, "__origin__", None) is dict
                keys |= schema_keys(inner, f"{prefix}{name}.<view>." if mapping else f"{prefix}{name}.")
    return keys


def test_every_key_of_the_schema_has_a_row_with_a_type_and_a_description(generator):
    rows = {row.key: row for row in generator.run_rows()}
    expected = {key for key in schema_keys(RunConfig) if not key.startswith("objective_weights")}
    expected |= {f"objectives.<i>.{key}" for key in schema_keys(ObjectiveConfig)}
    expected |= {"objectives.<i>.weight", "objectives.<i>.weight_schedule.kind"}
    assert expected <= set(rows)
    assert {"data.subset.per_class", "augment.<view>.mix.cutmix_alpha", "train.time_limit_s"} <= set(rows)
    assert [key for key, row in rows.items() if not (row.type and row.description)] == []


def test_every_option_of_every_objective_has_a_row(generator):
    for name, cls in OBJECTIVES.items():
        own = set(cls.Config.model_fields) - set(ObjectiveConfig.model_fields)
        rows = generator.objective_rows(name)
        assert {row.key for row in rows} == {f"{name}.{option}" for option in own}, name
        assert all(row.description for row in rows), name


def test_defaults_and_allowed_values_come_from_the_schema(generator):
    rows = {row.key: row for row in generator.run_rows()}
    assert rows["optim.lr"].default == "`0.001`" and rows["optim.lr"].allowed == "> 0"
    assert rows["train.precision"].allowed == "auto, fp32, bf16"
    assert rows["data.val_fraction"].allowed == "≥ 0, < 1"
    assert rows["model.pos_embed"].type == "bool" and rows["model.init_from"].type == "str or null"
    assert rows["objectives.<i>.name"].default == "required"
    assert all(name in rows["model.preset"].allowed for name in PRESETS)
    assert all(name in rows["data.dataset"].allowed for name in DATASETS)
    assert all(name in rows["objectives"].allowed for name in OBJECTIVES)


def test_the_page_names_every_key_alias_objective_op_recipe_and_preset(generator):
    page = generator.reference()
    keys = [row.key for row in generator.run_rows()] + [r.key for n in OBJECTIVES for r in generator.objective_rows(n)]
    assert [key for key in keys if f"| `{key}` |" not in page] == []
    assert all(f"| `{alias}` | `{key}` |" in page for alias, key in ALIASES.items())
    assert all(f"#### `{name}`" in page for name in OBJECTIVES)
    assert all(f"| `{name}` |" in page for name in OPS)
    assert all(f"| `{name}` |" in generator.recipe_table() for name in available_recipes())
    assert all(f"| `{name}` |" in generator.preset_table() for name in PRESETS)


def test_every_note_describes_a_key_the_schema_leaves_undescribed(generator):
    """A note for a key that is gone, or that the schema now describes itself, is stale: remove it."""
    rows = generator.run_rows() + [row for name in OBJECTIVES for row in generator.objective_rows(name)]
    described_without_notes = {row.key for row in rows if row.description != generator.NOTES.get(row.key)}
    stale = [key for key in generator.NOTES if key not in {row.key for row in rows} or key in described_without_notes]
    assert stale == []


def test_the_hook_fills_in_the_markers_of_the_pages(generator):
    pages = {
        generator.CONFIG_MARKER: "configuration.md",
        generator.RECIPE_MARKER: "recipes.md",
        generator.PRESET_MARKER: "backbones.md",
    }
    for marker, page in pages.items():
        text = (ROOT / "docs" / page).read_text()
        assert marker in text, page
        filled = generator.on_page_markdown(text, None, None, None)
        assert marker not in filled and filled.count("\n") > text.count("\n") + 5, page
    assert "hooks:\n  - scripts/config_reference.py" in (ROOT / "mkdocs.yml").read_text()
