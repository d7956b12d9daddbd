"""Errors a user can cause and fix. The CLI prints them as one line, without a traceback.

Every schema a user writes (a recipe, an objective's settings, a sweep file) is a :class:`Strict` model, and
:func:`validation_error` turns pydantic's report on it into one :class:`ConfigError` line.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, ValidationError


class SmallViTError(Exception):
    """A problem with the user's input: the message names the problem and the fix."""


class ConfigError(SmallViTError):
    """A recipe, override or option is invalid."""


class DataError(SmallViTError):
    """A dataset is missing, unprepared, corrupt or has an unexpected layout."""


class Strict(BaseModel):
    """A schema the user writes: unknown keys are errors, and so are NaN and infinite numbers."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


def allowed_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    """The keys accepted at ``loc`` inside ``model``, following nested models (also inside lists and optionals)."""
    for part in loc:
        field = model.model_fields.get(str(part))
        annotation = getattr(field, "annotation", None)
        candidates = [annotation, *getattr(annotation, "__args__", ())]
        nested = [c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)]
        if not nested:
            break
        model = nested[0]
    return list(model.model_fields)


def quoted(text: str) -> str:
    """``'text'`` for a message, or its escaped ``repr`` when it holds a newline or another unprintable character."""
    return f"'{text}'" if text.isprintable() else repr(text)


def validation_error(err: ValidationError, model: type[BaseModel], where: str = "", at: str = "") -> ConfigError:
    """Pydantic's first complaint about validating ``model`` as one line naming the key, its value and the problem.

    ``where`` names what was read (``"recipe 'quickstart'"``) and starts the message; ``at`` is the dotted place of
    the validated mapping inside it (``"objectives.0[mae]"``), put before each key. For example
    ``recipe 'quickstart': train.epochs='abc': Input should be a valid integer, ...`` or
    ``sweep file 'a.yaml': unknown key 'runs.0.seed' (allowed here: name, recipe, ...)``.
    """
    first = err.errors()[0]
    loc = tuple(first["loc"])
    key = ".".join(str(part) for part in (*([at] if at else []), *loc))
    prefix = f"{where}: " if where else ""
    if first["type"] == "extra_forbidden":
        allowed = ", ".join(allowed_keys(model, loc[:-1]))
        return ConfigError(f"{prefix}unknown key {quoted(key)} (allowed here: {allowed})")
    if first["type"] == "missing":
        return ConfigError(f"{prefix}{quoted(key)} is missing")
    problem = first["msg"].removeprefix("Value error, ")
    if not key:
        return ConfigError(f"{prefix}{problem}")
    value = first.get("input")
    # a mapping is not shown, nor a list that a check of ours refused (its message says what is wrong in it)
    hidden = isinstance(value, dict) or (isinstance(value, list) and first["type"] == "value_error")
    shown = f"={value!r}" if loc and not hidden else ""
    return ConfigError(f"{prefix}{key if key.isprintable() else repr(key)}{shown}: {problem}")
