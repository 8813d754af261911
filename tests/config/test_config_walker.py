"""The config walker on a test-only tree: two nested sections, one of them holding a section of its
own, handled purely by their dataclass types (no walker change, no names special-cased)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

import pytest

from effv2.config.values import RecipeError, require
from effv2.config.walker import (
    build,
    check_fields,
    flatten,
    from_dict,
    merge,
    normalize,
    sections,
    to_dict,
    valid_keys,
)
from effv2.errors import UsageError


@dataclass(frozen=True)
class Inner:  # two levels deep: Root.outer.inner
    on: bool = False
    depth: int = 1

    _bool_key = "on"

    def __post_init__(self) -> None:
        check_fields(self, "outer.inner.")
        require(self.depth >= 1, "outer.inner.depth", "must be an integer >= 1", self.depth)


@dataclass(frozen=True)
class Outer:  # no bool shorthand
    scale: float = 1.0
    inner: Inner = field(default_factory=Inner)

    def __post_init__(self) -> None:
        check_fields(self, "outer.")


@dataclass(frozen=True)
class Adv:
    enabled: bool = False
    eps: float = 0.0
    pair: tuple[float, float] = (0.0, 1.0)

    _bool_key = "enabled"

    def __post_init__(self) -> None:
        check_fields(self, "adv.")


@dataclass(frozen=True)
class Root:
    epochs: int = 10
    outer: Outer = field(default_factory=Outer)
    mode: Literal["a", "b"] = "a"
    adv: Adv = field(default_factory=Adv)

    def __post_init__(self) -> None:
        check_fields(self)


KEYS = [
    "epochs",
    "mode",
    "outer",
    "outer.scale",
    "outer.inner",
    "outer.inner.on",
    "outer.inner.depth",
    "adv",
    "adv.enabled",
    "adv.eps",
    "adv.pair",
]


def _msg(exc_info) -> str:
    msg = str(exc_info.value)
    assert "\n" not in msg
    return msg


def test_sections_are_found_by_type_and_keys_are_dotted_at_any_depth():
    assert sections(Root) == {"outer": Outer, "adv": Adv}
    assert sections(Outer) == {"inner": Inner} and sections(Inner) == {}
    assert valid_keys(Root) == KEYS  # leaves first, then each section followed by its own keys
    assert valid_keys(Outer, "outer.") == KEYS[3:7]


def test_json_layer_is_coerced_into_a_nested_patch():
    raw = {"adv": {"eps": 1, "pair": [0, 2]}, "epochs": 3, "outer": {"scale": 2, "inner": {"depth": 3}}}
    patch = normalize(Root, raw, "layer.json")
    assert patch == {
        "epochs": 3,
        "adv": {"eps": 1.0, "pair": (0.0, 2.0)},
        "outer": {"scale": 2.0, "inner": {"depth": 3}},
    }
    assert list(patch) == ["epochs", "adv", "outer"]  # leaves before sections
    assert isinstance(patch["outer"]["scale"], float)
    assert normalize(Root, {"outer": {}, "adv.eps": 0}, "x") == {"adv": {"eps": 0.0}}  # empty sections vanish


def test_set_strings_with_dotted_keys():
    raw = {
        "outer.inner.depth": "4",
        "adv.pair": "[0.5, 0.9]",
        "mode": "b",
        "adv": '{"eps": 0.25}',
        "outer.inner": "true",
        "outer": '{"inner.on": false}',
    }
    patch = normalize(Root, raw, "--set", from_strings=True)
    assert patch == {
        "mode": "b",
        "outer": {"inner": {"depth": 4, "on": False}},
        "adv": {"pair": (0.5, 0.9), "eps": 0.25},
    }


def test_bool_shorthand_sets_the_declared_field_at_any_depth():
    assert normalize(Root, {"adv": False}, "x") == {"adv": {"enabled": False}}
    assert normalize(Root, {"outer.inner": True}, "x") == {"outer": {"inner": {"on": True}}}
    assert normalize(Root, {"outer": {"inner": True}}, "x") == {"outer": {"inner": {"on": True}}}
    with pytest.raises(RecipeError) as e:  # Outer declares no _bool_key
        normalize(Root, {"outer": "false"}, "--set outer=false", from_strings=True)
    assert _msg(e) == "recipe key outer: expected an object, got false (--set outer=false)"
    with pytest.raises(RecipeError) as e:
        normalize(Root, {"outer.inner": 3}, "x")
    assert _msg(e) == "recipe key outer.inner: expected true/false or an object, got 3 (x)"


@pytest.mark.parametrize(
    "raw, words",
    [
        ({"epoch": 1}, ["unknown recipe key 'epoch' (did you mean epochs?)", "valid keys: " + ", ".join(KEYS)]),
        (
            {"outer.inner.dept": 1},
            ["'outer.inner.dept' (did you mean outer.inner.depth?)", "valid keys: outer.inner.on, outer.inner.depth"],
        ),
        ({"outer": {"inner": {"dept": 1}}}, ["'outer.inner.dept' (did you mean outer.inner.depth?)"]),
        ({"outer.scal": 1}, ["'outer.scal' (did you mean outer.scale?)", "valid keys: " + ", ".join(KEYS[3:7])]),
        ({"adv.eps.x": 1}, ["'adv.eps.x'", "valid keys: adv.enabled, adv.eps, adv.pair"]),
        ({"epochs.x": 1}, ["'epochs.x'", "valid keys: " + ", ".join(KEYS)]),
    ],
)
def test_unknown_keys_list_the_keys_of_the_deepest_section_reached(raw, words):
    with pytest.raises(UsageError) as e:
        normalize(Root, raw, "layer.json")
    msg = _msg(e)
    assert msg.startswith("layer.json: unknown recipe key")
    for w in words:
        assert w in msg, (w, msg)


def test_type_errors_name_the_nested_key_and_the_layer():
    with pytest.raises(RecipeError) as e:
        normalize(Root, {"outer.inner.depth": "1.5"}, "--set outer.inner.depth=1.5", from_strings=True)
    assert e.value.key == "outer.inner.depth"
    assert _msg(e) == "recipe key outer.inner.depth: expected an integer, got 1.5 (--set outer.inner.depth=1.5)"
    with pytest.raises(RecipeError, match=r"adv\.pair: expected a list of 2 numbers"):
        normalize(Root, {"adv": {"pair": [1]}}, "x")


def test_merge_is_per_key_at_every_depth_and_flatten_names_dotted_keys():
    base = {"epochs": 1, "outer": {"scale": 2.0, "inner": {"on": True}}}
    patch = {"outer": {"inner": {"depth": 3}}, "adv": {"pair": (0.1, 0.2)}, "mode": "b"}
    merged = merge(base, patch)
    assert merged == {
        "epochs": 1,
        "mode": "b",
        "outer": {"scale": 2.0, "inner": {"on": True, "depth": 3}},
        "adv": {"pair": (0.1, 0.2)},
    }
    assert base == {"epochs": 1, "outer": {"scale": 2.0, "inner": {"on": True}}}  # inputs untouched
    assert flatten(merged) == {
        "epochs": 1,
        "mode": "b",
        "outer.scale": 2.0,
        "outer.inner.on": True,
        "outer.inner.depth": 3,
        "adv.pair": [0.1, 0.2],
    }
    assert list(flatten(to_dict(Root()))) == [
        "epochs",
        "mode",
        "outer.scale",
        "outer.inner.on",
        "outer.inner.depth",
        "adv.enabled",
        "adv.eps",
        "adv.pair",
    ]


def test_build_to_dict_and_from_dict_round_trip():
    root = from_dict(Root, {"outer.inner": True, "adv": {"pair": [0, 1]}, "epochs": 2}, where="x")
    assert root == Root(epochs=2, outer=Outer(inner=Inner(on=True)), adv=Adv(pair=(0.0, 1.0)))
    d = to_dict(root)
    assert d == {
        "epochs": 2,
        "outer": {"scale": 1.0, "inner": {"on": True, "depth": 1}},
        "mode": "a",
        "adv": {"enabled": False, "eps": 0.0, "pair": [0.0, 1.0]},
    }
    assert from_dict(Root, d, where="x") == root
    assert build(Root, {}) == Root()


def test_dataclasses_check_themselves_and_accept_dicts_for_sections():
    assert Root(outer={"inner": {"depth": 2}}).outer.inner.depth == 2
    assert Root(adv={"eps": 1}).adv.eps == 1.0 and isinstance(Root(adv={"eps": 1}).adv.eps, float)
    with pytest.raises(RecipeError) as e:
        Root(adv=True)  # the bool shorthand belongs to layers, not to the constructor
    assert _msg(e) == "recipe key adv: expected true/false or an object, got True"
    with pytest.raises(UsageError, match=r"Root\(outer=\.\.\.\): unknown recipe key 'outer.scal'"):
        Root(outer={"scal": 1})
    with pytest.raises(RecipeError, match=r"outer\.inner\.depth: must be an integer >= 1, got 0"):
        from_dict(Root, {"outer.inner.depth": 0}, where="x")
    with pytest.raises(RecipeError, match="recipe key epochs: expected an integer, got 1.5"):
        Root(epochs=1.5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        Root().outer.inner.on = True  # type: ignore[misc]


@dataclass(frozen=True)
class BadShorthand:
    size: int = 1

    _bool_key = "size"


@dataclass(frozen=True)
class HoldsBadShorthand:
    bad: BadShorthand = field(default_factory=BadShorthand)


def test_a_bool_key_must_name_a_bool_field():
    with pytest.raises(TypeError, match="_bool_key='size' must name a bool field"):
        sections(HoldsBadShorthand)
