"""The generated configuration reference (``scripts/config_reference.py``) lists every key the schema accepts, with
its type, default, allowed values and a description, and the documentation pages hold its markers."""

import importlib.util
import re
import sys
from pathlib import Path

import pytest
from pydantic import BaseModel, Field

from smallvit.config import ALIASES, ModelConfig, RunConfig, available_recipes
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


def page_tables(page: str) -> list[list[list[str]]]:
    """The markdown tables of ``page``, each a list of rows of cells (header first, the ``|---|`` line dropped); an
    escaped ``\\|`` stays inside its cell."""
    tables, current = [], []
    for line in [*page.splitlines(), ""]:
        if line.startswith("|"):
            cells = [cell.strip() for cell in re.split(r"(?<!\\)\|", line)[1:-1]]
            if not all(set(cell) <= {"-"} for cell in cells):
                current.append(cells)
        elif current:
            tables.append(current)
            current = []
    return tables


def test_every_key_listed_on_the_page_has_a_description(generator):
    """Every row of the page's key tables (stage keys and each objective's options) has a non-empty description."""
    keyed = [table for table in page_tables(generator.reference()) if table[0][0] == "key"]
    rows = [row for table in keyed for row in table[1:]]
    keys = {row.key for row in generator.run_rows()} | {r.key for n in OBJECTIVES for r in generator.objective_rows(n)}
    assert {row[0].strip("`") for row in rows} == keys
    assert [row[0] for row in rows if len(row) != 5 or not row[-1]] == []


def test_a_key_without_a_description_stops_the_reference(generator, monkeypatch):
    """A new field with no description anywhere fails with one line naming its key."""

    class Undescribed(BaseModel):
        described: int = Field(0, description="has one")
        bare: int = 0

    with pytest.raises(generator.UndescribedKey) as caught:
        list(generator.field_rows(Undescribed, "data.extra."))
    assert "'data.extra.bare'" in str(caught.value) and "\n" not in str(caught.value)
    monkeypatch.setattr(ModelConfig.model_fields["preset"], "description", None)
    with pytest.raises(generator.UndescribedKey, match=re.escape("'model.preset'")):
        generator.reference()


def test_a_key_without_a_description_fails_the_docs_build(generator, monkeypatch):
    """In ``mkdocs build`` the hook turns it into a build error, which aborts the build with that line."""
    plugin_error = pytest.importorskip("mkdocs.exceptions").PluginError
    monkeypatch.setattr(ModelConfig.model_fields["preset"], "description", None)
    page = (ROOT / "docs" / "configuration.md").read_text()
    with pytest.raises(plugin_error, match=re.escape("'model.preset'")):
        generator.on_page_markdown(page, None, None, None)


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
