"""The one strict schema base and the one formatter of pydantic's reports, on small models a reader can follow."""

import math

import pytest
from pydantic import Field, ValidationError, field_validator, model_validator

from smallvit.errors import ConfigError, Strict, allowed_keys, validation_error


class Inner(Strict):
    rate: float = Field(0.5, ge=0, le=1)
    tags: list[str] = []

    @field_validator("tags")
    @classmethod
    def _no_empty(cls, tags):
        if "" in tags:
            raise ValueError("a tag is empty: give each tag a name")
        return tags


class Outer(Strict):
    name: str
    inner: Inner = Inner()
    items: list[Inner] = []
    sizes: tuple[int, int] = (1, 1)

    @model_validator(mode="after")
    def _not_reserved(self):
        if self.name == "all":
            raise ValueError("the name 'all' is reserved: choose another")
        return self


def message(raw: dict, **where) -> str:
    with pytest.raises(ValidationError) as err:
        Outer.model_validate(raw)
    error = validation_error(err.value, Outer, **where)
    assert isinstance(error, ConfigError) and "\n" not in str(error)
    return str(error)


def test_strict_models_refuse_unknown_keys_and_non_finite_numbers():
    for rate in (math.nan, math.inf):
        with pytest.raises(ValidationError, match="finite number"):
            Inner(rate=rate)
    with pytest.raises(ValidationError, match="Extra inputs"):
        Inner(rate=0.5, speed=1)


def test_unknown_keys_name_the_keys_allowed_at_that_depth():
    assert message({"name": "a", "colour": 1}, where="recipe 'r'") == (
        "recipe 'r': unknown key 'colour' (allowed here: name, inner, items, sizes)"
    )
    assert (
        message({"name": "a", "items": [{}, {"speed": 1}]}) == "unknown key 'items.1.speed' (allowed here: rate, tags)"
    )
    assert allowed_keys(Outer, ("inner",)) == ["rate", "tags"] and allowed_keys(Outer, ()) == list(Outer.model_fields)


def test_values_missing_keys_and_our_own_checks_read_as_one_line():
    assert message({"name": "a", "inner": {"rate": 2}}, where="w") == (
        "w: inner.rate=2: Input should be less than or equal to 1"
    )
    assert message({}, where="w") == "w: 'name' is missing"
    assert message({"name": "all"}, where="w") == "w: the name 'all' is reserved: choose another"
    assert message({"name": "a", "sizes": [1, 2, 3]}).startswith("sizes=[1, 2, 3]: Tuple should have at most 2 items")
    # a list our own check refused is not repeated (its message says what is wrong); pydantic's prefix is dropped
    assert message({"name": "a", "inner": {"tags": ["x", ""]}}) == "inner.tags: a tag is empty: give each tag a name"
    assert message({"name": "a", "inner": {"rate": "fast"}}, at="stages.0[a]").startswith(
        "stages.0[a].inner.rate='fast': Input should be a valid number"
    )


def test_a_key_that_is_not_printable_is_escaped():
    assert message({"name": "a", "co\nlour": 1}).startswith("unknown key 'co\\nlour'")
