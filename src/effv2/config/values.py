"""Leaf values of a config: the field types a section may use, and how a raw value becomes one.

A raw value is what JSON (or a `--set` value parsed as JSON) can hold: bools, ints, floats,
strings, null and lists. :func:`coerce_field` turns one into the field's declared type, or raises a
:class:`RecipeError` naming the dotted key and the expected type in words. Nested sections are not
leaves; the walker (walker.py) handles them.
"""

from __future__ import annotations

import json
import math
import re
import types
from functools import cache
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from ..errors import UsageError


class RecipeError(UsageError):
    """A bad recipe value. ``key`` is the dotted key, so the resolver can name the layer that set it."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"recipe key {key}: {problem}")
        self.key = key
        self.problem = problem


class _Mismatch(Exception):
    pass


@cache
def field_types(cls: type) -> dict[str, Any]:
    """The resolved type hints of a dataclass (its annotations are strings under PEP 563)."""
    return get_type_hints(cls)


def describe(tp: Any) -> str:
    """``tp`` in the words an error message uses: "an integer or null", "one of "sgd", "adamw""."""
    if tp is type(None):
        return "null"
    if tp is bool:
        return "true or false"
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if tp is str:
        return "a string"
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(json.dumps(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(describe(a) for a in get_args(tp))
    if origin is tuple:
        return f"a list of {len(get_args(tp))} numbers"
    return str(tp)


def _coerce(value: Any, tp: Any) -> Any:
    """``value`` as type ``tp`` (ints become floats where a number is expected), or raise _Mismatch."""
    if tp is type(None):
        if value is None:
            return None
        raise _Mismatch
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _Mismatch
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _Mismatch
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
        raise _Mismatch
    if tp is str:
        if isinstance(value, str):
            return value
        raise _Mismatch
    origin = get_origin(tp)
    if origin is Literal:
        for a in get_args(tp):
            if type(value) is type(a) and value == a:
                return value
        raise _Mismatch
    if origin in (Union, types.UnionType):
        for a in get_args(tp):
            try:
                return _coerce(value, a)
            except _Mismatch:
                pass
        raise _Mismatch
    if origin is tuple:
        args = get_args(tp)
        if isinstance(value, (list, tuple)) and len(value) == len(args):
            return tuple(_coerce(v, a) for v, a in zip(value, args))
        raise _Mismatch
    raise TypeError(f"recipe field type {tp!r} is not supported")


def coerce_field(cls: type, name: str, value: Any, key: str) -> Any:
    """``value`` as the type of field ``name`` of ``cls``; errors name the dotted ``key``."""
    tp = field_types(cls)[name]
    try:
        return _coerce(value, tp)
    except _Mismatch:
        raise RecipeError(key, f"expected {describe(tp)}, got {json.dumps(value, default=repr)}") from None


def require(ok: bool, key: str, problem: str, value: Any) -> None:
    """The range and cross-field checks of a section's ``__post_init__``: raise unless ``ok``."""
    if not ok:
        raise RecipeError(key, f"{problem}, got {json.dumps(value, default=repr)}")


def parse_duration(text: str, what: str = "duration") -> float:
    """``"90s"``, ``"10m"``, ``"2h"``, ``"1h30m"`` or a plain number of seconds -> seconds (> 0)."""
    t = str(text).strip().lower()
    parts = re.fullmatch(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s?)?", t)
    if not t or parts is None or not any(parts.groups()):
        raise UsageError(f"{what} {text!r}: expected a time such as 90s, 10m, 2h or 1h30m")
    h, m, s = (float(g) if g else 0.0 for g in parts.groups())
    seconds = h * 3600 + m * 60 + s
    if seconds <= 0:
        raise UsageError(f"{what} {text!r}: the time must be positive")
    return seconds
