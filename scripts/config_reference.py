"""The configuration reference, generated from the pydantic schema in ``smallvit/config.py`` and the registries it
names (datasets, presets, objectives, augmentation ops, recipes), so the documentation cannot drift from the code.

    python scripts/config_reference.py          # print the reference as markdown
    mkdocs build --strict                       # mkdocs.yml loads this file as a hook

As a hook it replaces the markers of ``docs/configuration.md`` (``<!-- config-reference -->``),
``docs/recipes.md`` (``<!-- recipe-table -->``) and ``docs/backbones.md`` (``<!-- preset-table -->``). Descriptions
come from the schema (``Field(description=...)``, the ``Attributes:`` section of the model's docstring, or the
docstring of the model a key holds); a key with none stops the build with an error naming it.
"""

from __future__ import annotations

import inspect
import json
import re
import sys
import types
import typing
from collections.abc import Iterator

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from smallvit.config import ALIASES, ObjectiveWeight, RunConfig, available_recipes
from smallvit.data.datasets import DATASETS
from smallvit.data.transforms import OPS
from smallvit.models.presets import PRESETS
from smallvit.objectives import OBJECTIVES, ObjectiveConfig

OPS_INTRO = (
    "An entry of `augment.<view>.ops` is `{op: <name>, <argument>: <value>}`. An op's `patch_size` is the model's "
    "when the entry leaves it out; `normalize` is added with the dataset's mean and std unless a view lists it."
)
CONFIG_MARKER = "<!-- config-reference -->"
RECIPE_MARKER = "<!-- recipe-table -->"
PRESET_MARKER = "<!-- preset-table -->"

REGISTRIES: dict[str, list[str]] = {
    "data.dataset": sorted(DATASETS),
    "model.preset": sorted(PRESETS),
}
"""Keys whose allowed values are the names of a registry."""


class Row(typing.NamedTuple):
    """One key of the reference."""

    key: str
    type: str
    default: str
    allowed: str
    description: str


def type_name(annotation: typing.Any) -> str:
    """A YAML reader's name for a Python annotation: ``int or null``, ``list of str``, ``mapping``."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return type_name(args[0])
    if origin in (typing.Union, types.UnionType):
        names = [type_name(arg) for arg in args if arg is not type(None)]
        return " or ".join(names + (["null"] if type(None) in args else []))
    if origin is typing.Literal:
        kinds = {type(arg) for arg in args}
        return type_name(kinds.pop()) if len(kinds) == 1 else "value"
    if origin in (list, tuple):
        inner = {type_name(arg) for arg in args if arg is not Ellipsis}
        return f"list of {' or '.join(sorted(inner))}" if inner else "list"
    if origin is dict or annotation is dict:
        return "mapping"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "mapping"
    names = {bool: "bool", int: "int", float: "float", str: "str"}
    return names.get(annotation, "any")


def literal_values(annotation: typing.Any) -> list:
    """The values of the ``Literal`` in ``annotation`` (also inside ``Optional``), else []."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return list(args)
    return [value for arg in args for value in literal_values(arg)]


def yaml_value(value: typing.Any) -> str:
    """``value`` as a recipe writes it, in code quotes."""
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    elif isinstance(value, list) and value and isinstance(value[0], BaseModel):
        value = [item.model_dump(mode="json") for item in value]
    elif isinstance(value, dict):
        value = {
            key: item.model_dump(mode="json") if isinstance(item, BaseModel) else item for key, item in value.items()
        }
    if isinstance(value, tuple):
        value = list(value)
    return f"`{json.dumps(value, ensure_ascii=False)}`".replace("|", "\\|")


def bounds(field: FieldInfo) -> list[str]:
    """The numeric constraints of ``field``: ``> 0``, ``≤ 1``, …"""
    signs = {"gt": ">", "ge": "≥", "lt": "<", "le": "≤"}
    return [
        f"{sign} {getattr(item, name)}"
        for item in field.metadata
        for name, sign in signs.items()
        if getattr(item, name, None) is not None
    ]


def docstring_attributes(model: type) -> dict[str, str]:
    """The ``Attributes:`` section of ``model``'s docstring (Google style), one line per attribute."""
    doc = inspect.cleandoc(model.__doc__ or "")
    section = doc.split("Attributes:\n", 1)[1] if "Attributes:\n" in doc else ""
    entries = re.findall(r"^ {4}(\w+): (.*(?:\n {8}.*)*)", section, re.M)
    return {name: " ".join(text.split()) for name, text in entries}


class UndescribedKey(ValueError):
    """A key of the schema with no description: the reference would list it blank."""


def describe(model: type, name: str, field: FieldInfo, key: str) -> str:
    """The field's own description, else its entry in the model's docstring, else the first line of the docstring of
    the model it holds (not of a mapping's values); :class:`UndescribedKey` when there is none."""
    inner = None if typing.get_origin(field.annotation) is dict else model_of(field.annotation)
    own = inspect.cleandoc(inner.__doc__).split("\n")[0] if inner is not None and inner.__doc__ else ""
    text = field.description or docstring_attributes(model).get(name) or own
    if not text.strip():
        raise UndescribedKey(
            f"configuration key {key!r} ({model.__name__}.{name}) has no description: "
            "add Field(description=...) to the field"
        )
    return text.replace("|", "\\|").replace("\n", " ")


def model_of(annotation: typing.Any) -> type[BaseModel] | None:
    """The pydantic model a field holds (also when optional), else None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = model_of(arg)
        if found is not None:
            return found
    return None


def field_rows(model: type[BaseModel], prefix: str = "", skip: tuple[str, ...] = ()) -> Iterator[Row]:
    """A row for every field of ``model`` and, depth first, of the models inside it."""
    for name, field in model.model_fields.items():
        if name in skip:
            continue
        key = f"{prefix}{name}"
        allowed = [*map(str, literal_values(field.annotation)), *REGISTRIES.get(key, []), *bounds(field)]
        inner = model_of(field.annotation)
        value = None if field.is_required() else field.get_default(call_default_factory=True)
        default = "required" if field.is_required() else "" if isinstance(value, BaseModel) else yaml_value(value)
        yield Row(key, type_name(field.annotation), default, ", ".join(allowed), describe(model, name, field, key))
        if inner is not None and typing.get_origin(field.annotation) is not dict:
            yield from field_rows(inner, f"{key}.")
        elif inner is not None:
            yield from field_rows(inner, f"{key}.<view>.")


def run_rows() -> list[Row]:
    """Every key of a stage, the keys every ``objectives`` entry takes included (an objective's own:
    :func:`objective_rows`)."""
    rows = list(field_rows(RunConfig, skip=("objectives", "objective_weights")))
    objectives = RunConfig.model_fields["objectives"]
    first = next(i for i, row in enumerate(rows) if row.key == "optim")
    shared = [
        Row(
            "objectives",
            "list of mapping",
            yaml_value(objectives.get_default(call_default_factory=True)),
            ", ".join(sorted(OBJECTIVES)),
            describe(RunConfig, "objectives", objectives, "objectives"),
        ),
        *field_rows(ObjectiveConfig, "objectives.<i>."),
        *field_rows(ObjectiveWeight, "objectives.<i>."),
    ]
    return rows[:first] + shared + rows[first:]


def objective_rows(name: str) -> list[Row]:
    """The options an objective adds to the shared ``name`` and ``views``, as ``<objective>.<option>``."""
    config = OBJECTIVES[name].Config
    shared = set(ObjectiveConfig.model_fields)
    own = tuple(field for field in config.model_fields if field in shared)
    return list(field_rows(config, f"{name}.", skip=own))


def op_rows() -> list[Row]:
    """Every augmentation op: its arguments (with defaults) and the first line of its docstring."""
    rows = []
    for name in sorted(OPS):
        parameters = list(inspect.signature(OPS[name].__init__).parameters.values())[1:]
        arguments = ", ".join(
            p.name if p.default is inspect.Parameter.empty else f"{p.name}={p.default!r}"
            for p in parameters
            if p.kind is p.POSITIONAL_OR_KEYWORD or p.kind is p.KEYWORD_ONLY
        )
        summary = inspect.cleandoc(OPS[name].__doc__ or "").split("\n\n")[0]
        rows.append(Row(name, "op", f"`{arguments}`" if arguments else "", "", " ".join(summary.split())))
    return rows


def table(rows: list[Row]) -> str:
    lines = ["| key | type | default | allowed | description |", "|---|---|---|---|---|"]
    lines += [f"| `{r.key}` | {r.type} | {r.default} | {r.allowed} | {r.description} |" for r in rows]
    return "\n".join(lines)


def reference() -> str:
    """The reference as markdown: stage keys, aliases, each objective's options, the augmentation ops."""
    parts = ["### Stage keys", "", table(run_rows()), "", "### Short names", ""]
    parts += ["| alias | key |", "|---|---|", *(f"| `{alias}` | `{key}` |" for alias, key in ALIASES.items()), ""]
    parts += ["### Objectives", ""]
    for name in sorted(OBJECTIVES):
        cls = OBJECTIVES[name]
        summary = " ".join(inspect.cleandoc(cls.__doc__ or "").split("\n\n")[0].split())
        parts += [f"#### `{name}`", "", f"{summary} Default weight: `{cls.default_weight}`.", ""]
        rows = objective_rows(name)
        parts += [table(rows) if rows else "No options beyond `name`, `views` and the weight.", ""]
    parts += ["### Augmentation ops", "", OPS_INTRO, ""]
    parts += ["| op | arguments | description |", "|---|---|---|"]
    parts += [f"| `{r.key}` | {r.default} | {r.description} |" for r in op_rows()]
    return "\n".join(parts) + "\n"


def recipe_table() -> str:
    """The shipped recipes and their descriptions, as ``smallvit recipes`` lists them."""
    lines = ["| recipe | what it trains |", "|---|---|"]
    lines += [f"| `{name}` | {' '.join(text.split())} |" for name, text in sorted(available_recipes().items())]
    return "\n".join(lines) + "\n"


def preset_table() -> str:
    """The backbone presets: the timm architecture each is built from, smallvit's changes to it, its description."""
    lines = ["| preset | timm architecture | what |", "|---|---|---|"]
    for name, preset in PRESETS.items():
        changes = ", ".join(f"{key}: {value}" for key, value in preset.changes.items())
        built = f"`{preset.arch}`" + (f" ({changes})" if changes else "")
        lines.append(f"| `{name}` | {built} | {preset.description} |")
    return "\n".join(lines) + "\n"


def on_page_markdown(markdown: str, page, config, files) -> str:
    """The mkdocs hook: fill in the markers of the page being built; an undescribed key fails the build."""
    tables = {CONFIG_MARKER: reference, RECIPE_MARKER: recipe_table, PRESET_MARKER: preset_table}
    for marker, build in tables.items():
        if marker in markdown:
            try:
                markdown = markdown.replace(marker, build())
            except UndescribedKey as err:
                from mkdocs.exceptions import PluginError  # only the hook runs inside mkdocs

                raise PluginError(str(err)) from None
    return markdown


if __name__ == "__main__":
    sys.stdout.write(reference())
