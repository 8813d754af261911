"""One walker over a tree of frozen dataclasses: raw layers in, checked patches, dicts and keys out.

A field whose type is a dataclass is a *section* (``Recipe.progressive: ProgressiveConfig``); every
other field is a leaf (values.py). Nothing here knows a section by name: adding
``adv: AdvConfig = field(default_factory=AdvConfig)`` to a class makes ``adv``, ``adv.<key>`` and
any deeper ``adv.<section>.<key>`` valid everywhere below. A section class may set
``_bool_key = "<bool field>"`` so that a bare true/false sets that field (``progressive: false``
is ``progressive.enabled: false``).

A *patch* is a nested dict holding only the keys one layer set, already coerced:
``{"epochs": 3, "progressive": {"n_stages": 2}}``. Patches merge section by section, flatten to
dotted keys for provenance, and build the dataclass tree (whose ``__post_init__`` checks ranges).
In a patch a dict is always a section: no leaf type (values.py) holds a dict.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import fields, is_dataclass
from functools import cache
from typing import Any

from ..errors import UsageError
from .values import RecipeError, coerce_field, field_types


@cache
def sections(cls: type) -> dict[str, type]:
    """The nested sections of ``cls``: field name -> section class, in field order."""
    hints = field_types(cls)
    out = {f.name: tp for f in fields(cls) if isinstance(tp := hints[f.name], type) and is_dataclass(tp)}
    for sub in out.values():
        bool_key = getattr(sub, "_bool_key", None)
        if bool_key is not None and field_types(sub).get(bool_key) is not bool:
            raise TypeError(f"{sub.__name__}._bool_key={bool_key!r} must name a bool field of {sub.__name__}")
    return out


@cache
def _leaves(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in fields(cls) if f.name not in sections(cls))


def _expects(section: type) -> str:
    return "true/false or an object" if getattr(section, "_bool_key", None) else "an object"


def valid_keys(cls: type, prefix: str = "") -> list[str]:
    """Every key a layer may set under ``cls``, dotted: its leaves, then each section and its keys."""
    keys = [prefix + name for name in _leaves(cls)]
    for name, sub in sections(cls).items():
        keys += [prefix + name, *valid_keys(sub, f"{prefix}{name}.")]
    return keys


def _unknown(where: str, key: str, valid: list[str]) -> UsageError:
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return UsageError(f"{where}: unknown recipe key {key!r}{hint}; valid keys: {', '.join(valid)}")


def _candidates(value: Any, from_strings: bool) -> list[Any]:
    """The readings of one value: a command-line string is JSON first ("3", "true", "null",
    "[0.9, 0.99]") and itself second, so ``name=123`` still sets the string "123"."""
    if from_strings and isinstance(value, str):
        try:
            return [json.loads(value), value]
        except json.JSONDecodeError:
            pass
    return [value]


def _put(cls: type, prefix: str, key: str, value: Any, patch: dict[str, Any], where: str, from_strings: bool) -> None:
    """Check ``key`` (dotted, relative to the section ``cls`` found at ``prefix``) and set it in ``patch``."""
    name, dotted, rest = key.partition(".")
    sub = sections(cls).get(name)
    if sub is not None:
        child = patch.get(name, {})
        if dotted:
            _put(sub, f"{prefix}{name}.", rest, value, child, where, from_strings)
        else:
            _put_section(sub, prefix + name, value, child, where, from_strings)
        if child:  # `progressive={}` sets nothing, so it leaves no empty section behind
            patch[name] = child
    elif not dotted and name in _leaves(cls):
        errors = []
        for candidate in _candidates(value, from_strings):
            try:
                patch[name] = coerce_field(cls, name, candidate, prefix + key)
                return
            except RecipeError as e:
                errors.append(e)
        raise RecipeError(prefix + key, f"{errors[0].problem} ({where})")
    else:  # the valid keys listed are those of the deepest section the key reached
        raise _unknown(where, prefix + key, valid_keys(cls, prefix))


def _put_section(section: type, path: str, value: Any, child: dict[str, Any], where: str, from_strings: bool) -> None:
    """A whole section given at once: an object of its keys, or the bool shorthand."""
    value = _candidates(value, from_strings)[0]
    bool_key = getattr(section, "_bool_key", None)
    if isinstance(value, bool) and bool_key:
        child[bool_key] = value
    elif isinstance(value, dict):
        for sub_key, sub_value in value.items():
            # f"{...}": a non-string key (possible only from Python) fails as an unknown key under path
            _put(section, f"{path}.", f"{sub_key}", sub_value, child, where, from_strings)
    else:
        raise RecipeError(path, f"expected {_expects(section)}, got {json.dumps(value, default=repr)} ({where})")


def _ordered(patch: dict[str, Any]) -> dict[str, Any]:
    """Leaves first, then sections, at every level (the order patches and provenance list keys in)."""
    leaves = {k: v for k, v in patch.items() if not isinstance(v, dict)}
    return leaves | {k: _ordered(v) for k, v in patch.items() if isinstance(v, dict)}


def normalize(cls: type, raw: Any, where: str, *, from_strings: bool = False, prefix: str = "") -> dict[str, Any]:
    """Check one raw layer against ``cls`` and return it as a patch.

    Keys may be dotted at any depth (``progressive.n_stages``); a section's key may hold an object
    or, when the section has a ``_bool_key``, a bool. With ``from_strings`` the values are
    command-line strings (see :func:`_candidates`). ``where`` names the layer in error messages;
    ``prefix`` is the dotted path of ``cls`` when it is a section below the root.
    """
    if not isinstance(raw, dict):
        raise UsageError(f"{where}: a recipe must be a JSON object, got {type(raw).__name__}")
    patch: dict[str, Any] = {}
    for key, value in raw.items():
        if not isinstance(key, str):
            raise UsageError(f"{where}: recipe keys must be strings, got {key!r}")
        _put(cls, prefix, key, value, patch, where, from_strings)
    return _ordered(patch)


def merge(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """``patch`` over ``base``: its leaves win, its sections merge key by key (at any depth)."""
    merged = {**base, **{k: v for k, v in patch.items() if not isinstance(v, dict)}}
    for k, v in patch.items():
        if isinstance(v, dict):
            merged[k] = merge(base.get(k, {}), v)
    return merged


def flatten(patch: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A patch (or a :func:`to_dict`) as ``{dotted key: JSON value}``, leaves before sections."""
    flat = {prefix + k: (list(v) if isinstance(v, tuple) else v) for k, v in patch.items() if not isinstance(v, dict)}
    for k, v in patch.items():
        if isinstance(v, dict):
            flat.update(flatten(v, f"{prefix}{k}."))
    return flat


def to_dict(obj: Any) -> dict[str, Any]:
    """A JSON-ready dict of a dataclass tree: sections nested, tuples as lists."""
    subs = sections(type(obj))
    out: dict[str, Any] = {}
    for f in fields(obj):
        v = getattr(obj, f.name)
        out[f.name] = to_dict(v) if f.name in subs else list(v) if isinstance(v, tuple) else v
    return out


def build(cls: type, patch: dict[str, Any]) -> Any:
    """The dataclass tree of a (checked) patch; keys it lacks take the defaults. Sections are built
    first, so each class's ``__post_init__`` sees finished sections."""
    subs = sections(cls)
    nested = {name: build(sub, patch.get(name, {})) for name, sub in subs.items()}
    return cls(**{k: v for k, v in patch.items() if k not in subs}, **nested)


def from_dict(cls: type, d: Any, *, where: str) -> Any:
    """Check a raw (possibly partial) dict and build it: :func:`normalize` then :func:`build`."""
    return build(cls, normalize(cls, d, where))


def check_fields(obj: Any, prefix: str = "") -> None:
    """Coerce the fields of a just-built dataclass in place; call it first in ``__post_init__``.

    A section given as a dict (``Recipe(progressive={...})``) is checked and built here; any other
    non-section value is an error. Sections go before leaves, so a bad section is reported first.
    ``prefix`` is the dotted path of ``obj`` in the tree, for the keys errors name.
    """
    cls = type(obj)
    for name, sub in sections(cls).items():
        value = getattr(obj, name)
        if isinstance(value, dict):
            patch = normalize(cls, {name: value}, f"{cls.__name__}({name}=...)", prefix=prefix)
            value = build(sub, patch.get(name, {}))
            object.__setattr__(obj, name, value)  # frozen dataclass
        if not isinstance(value, sub):
            raise RecipeError(prefix + name, f"expected {_expects(sub)}, got {value!r}")
    for name in _leaves(cls):
        object.__setattr__(obj, name, coerce_field(cls, name, getattr(obj, name), prefix + name))
