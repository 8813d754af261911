"""The training-aware search space of EfficientNetV2 (paper section 3.3) as data.

A search space is the backbone's stage table with a set of choices per row: block type
{MBConv, Fused-MBConv}, number of layers (a range around the backbone's), kernel {3, 5},
expansion {1, 4, 6} and SE {0, 0.25}. Channels and strides are the backbone's and are not
searched, as in the paper. Every choice combination is a valid :class:`ArchSpec`.

>>> space = get_space("mini")
>>> print(space.to_table())      # doctest: +SKIP
>>> spec = space.sample(random.Random(0))
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..models.registry import get_card, list_models
from ..models.spec import BLOCK_TYPES, ArchSpec, ModelCard, SpecError, Stage

DEFAULT_BLOCKS: tuple[str, ...] = ("mbconv", "fused")
DEFAULT_KERNELS: tuple[int, ...] = (3, 5)
DEFAULT_EXPANDS: tuple[int, ...] = (1, 4, 6)
DEFAULT_SE: tuple[float, ...] = (0.0, 0.25)

# Short names for the registered backbones; any registered model name works too.
SPACE_ALIASES: dict[str, str] = {
    "pico": "efficientnetv2_pico",  # toy: tests and smoke runs
    "mini": "efficientnetv2_mini",  # Fashion-MNIST demo model (28 px, stem stride 1)
    "b0": "efficientnetv2_b0",
    "s": "efficientnetv2_s",
}
CHOICE_KEYS: tuple[str, ...] = ("block", "layers", "kernel", "expand", "se")


def default_layer_range(repeats: int) -> tuple[int, ...]:
    """Layers searched around the backbone's ``repeats``: +-max(1, round(repeats / 3)), at least 1."""
    delta = max(1, round(repeats / 3))
    return tuple(range(max(1, repeats - delta), repeats + delta + 1))


def _tuple_of(value: Any, kind: type, key: str, *, allowed: tuple | None = None) -> tuple:
    if not isinstance(value, (list, tuple)) or not value:
        raise UsageError(f"{key}: expected a non-empty list, got {value!r}")
    out = []
    for v in value:
        if kind is float and isinstance(v, (int, float)) and not isinstance(v, bool):
            v = float(v)
        if not isinstance(v, kind) or isinstance(v, bool):
            raise UsageError(f"{key}: {v!r} is not a {kind.__name__}")
        if allowed is not None and v not in allowed:
            raise UsageError(f"{key}: {v!r} is not one of {', '.join(map(str, allowed))}")
        out.append(v)
    if len(set(out)) != len(out):
        raise UsageError(f"{key}: repeated choice in {list(value)}")
    return tuple(out)


@dataclass(frozen=True, kw_only=True)
class StageChoices:
    """The choices for one stage row. ``out`` and ``stride`` are the backbone's, not searched."""

    out: int  # output channels (from the backbone)
    stride: int  # stride of the first block (from the backbone)
    block: tuple[str, ...] = DEFAULT_BLOCKS
    layers: tuple[int, ...]  # number of blocks in the stage
    kernel: tuple[int, ...] = DEFAULT_KERNELS
    expand: tuple[int, ...] = DEFAULT_EXPANDS
    se: tuple[float, ...] = DEFAULT_SE  # squeeze-excitation ratio; 0 = off

    def __post_init__(self) -> None:
        # Normalise lists to tuples so spaces compare, hash and print the same however they were built.
        object.__setattr__(self, "block", _tuple_of(self.block, str, "block", allowed=BLOCK_TYPES))
        for key in ("layers", "kernel", "expand"):
            values = _tuple_of(getattr(self, key), int, key)
            if any(v < 1 for v in values):
                raise UsageError(f"{key}: expected positive integers, got {list(values)}")
            object.__setattr__(self, key, values)
        if any(k % 2 == 0 for k in self.kernel):
            raise UsageError(f"kernel: expected odd kernel sizes, got {list(self.kernel)}")
        se = _tuple_of(self.se, float, "se")
        if any(not 0 <= v < 1 for v in se):
            raise UsageError(f"se: expected ratios in [0, 1), got {list(se)}")
        object.__setattr__(self, "se", se)

    @property
    def size(self) -> int:
        return len(self.block) * len(self.layers) * len(self.kernel) * len(self.expand) * len(self.se)

    def row(self, *, block: str, layers: int, kernel: int, expand: int, se: float) -> Stage:
        return Stage(block=block, expand=expand, kernel=kernel, stride=self.stride, se=se, out=self.out, repeats=layers)

    def contains(self, stage: Stage) -> bool:
        return (
            stage.out == self.out
            and stage.stride == self.stride
            and stage.block in self.block
            and stage.repeats in self.layers
            and stage.kernel in self.kernel
            and stage.expand in self.expand
            and float(stage.se) in self.se
        )


def param_name(stage: int, key: str) -> str:
    """The Optuna parameter name of one choice: ``s1.block``, ``s3.layers``, ... (1-based stages)."""
    return f"s{stage}.{key}"


@dataclass(frozen=True, kw_only=True)
class SearchSpace:
    """A backbone plus per-stage choices. ``sample`` turns a random source into an :class:`ArchSpec`."""

    name: str
    backbone: str  # registered model name or spec file the channels/strides come from
    base: ArchSpec  # the backbone's spec: stem, head and scalar fields are copied to every sample
    stages: tuple[StageChoices, ...]
    train_size: int  # the backbone's full train / eval size, copied to the found model's card
    eval_size: int
    dropout: float = 0.2
    drop_path: float = 0.2
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    std: tuple[float, ...] = (0.5, 0.5, 0.5)
    interpolation: str = "bicubic"

    def __post_init__(self) -> None:
        if len(self.stages) != len(self.base.stages):
            raise UsageError(
                f"space {self.name!r}: {len(self.stages)} stage choices for a backbone with "
                f"{len(self.base.stages)} stages"
            )

    # -- size and printing --------------------------------------------------------------------
    def size(self) -> int:
        """Number of distinct architectures: the product of the per-stage choice counts."""
        return math.prod(s.size for s in self.stages)

    def to_table(self) -> str:
        """The choices per stage as a person reads them, with the backbone's row beside them."""

        def fmt(values: tuple) -> str:
            if (
                values
                and isinstance(values[0], int)
                and len(values) > 2
                and list(values) == list(range(values[0], values[-1] + 1))
            ):
                return f"{values[0]}..{values[-1]}"
            return ",".join(
                "Fused" if v == "fused" else "MBConv" if v == "mbconv" else f"{v:g}" if isinstance(v, float) else str(v)
                for v in values
            )

        rows = [("stage", "channels", "stride", "block", "layers", "kernel", "expand", "se", "backbone row")]
        for i, (c, b) in enumerate(zip(self.stages, self.base.stages), start=1):
            rows.append(
                (
                    str(i),
                    str(c.out),
                    str(c.stride),
                    fmt(c.block),
                    fmt(c.layers),
                    fmt(c.kernel),
                    fmt(c.expand),
                    fmt(c.se),
                    genotype_stage(b),
                )
            )
        widths = [max(len(r[k]) for r in rows) for k in range(len(rows[0]))]
        lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        head = (
            f"search space {self.name!r} around {self.backbone} (stem {self.base.stem}/s{self.base.stem_stride}, "
            f"head {self.base.head}): {self.size():.3g} architectures"
        )
        return head + "\n" + "\n".join(lines)

    # -- sampling -------------------------------------------------------------------------------
    def sample(self, source: Any) -> ArchSpec:
        """A spec from ``source``: an Optuna trial (``suggest_*``), a ``random.Random``, a numpy
        ``Generator`` or an int seed."""
        return self.from_params(self.sample_params(source))

    def sample_params(self, source: Any) -> dict[str, Any]:
        if isinstance(source, int) and not isinstance(source, bool):
            source = random.Random(source)
        params: dict[str, Any] = {}
        for i, c in enumerate(self.stages, start=1):
            for key in CHOICE_KEYS:
                name, choices = param_name(i, key), getattr(c, key)
                if hasattr(source, "suggest_categorical"):  # an Optuna trial
                    if key == "layers" and _contiguous(choices):
                        params[name] = source.suggest_int(name, choices[0], choices[-1])
                    else:
                        params[name] = source.suggest_categorical(name, list(choices))
                elif isinstance(source, random.Random):
                    params[name] = source.choice(choices)
                elif hasattr(source, "integers"):  # numpy Generator
                    params[name] = choices[int(source.integers(len(choices)))]
                else:
                    raise TypeError(f"sample: cannot draw from {type(source).__name__}")
        return params

    def from_params(self, params: dict[str, Any]) -> ArchSpec:
        """The spec for a full set of choices (Optuna ``trial.params`` or :meth:`to_params`)."""
        rows = []
        for i, c in enumerate(self.stages, start=1):
            try:
                kw = {key: params[param_name(i, key)] for key in CHOICE_KEYS}
            except KeyError as exc:
                raise UsageError(f"parameter {exc.args[0]!r} is missing") from None
            rows.append(
                c.row(
                    block=kw["block"],
                    layers=int(kw["layers"]),
                    kernel=int(kw["kernel"]),
                    expand=int(kw["expand"]),
                    se=float(kw["se"]),
                )
            )
        return replace(self.base, stages=tuple(rows))

    def to_params(self, spec: ArchSpec) -> dict[str, Any]:
        """The inverse of :meth:`from_params`; raises UsageError when ``spec`` is not in the space."""
        if not self.contains(spec):
            raise UsageError(f"spec {spec.to_str()} is not in search space {self.name!r}")
        params: dict[str, Any] = {}
        for i, s in enumerate(spec.stages, start=1):
            params.update(
                {
                    param_name(i, "block"): s.block,
                    param_name(i, "layers"): s.repeats,
                    param_name(i, "kernel"): s.kernel,
                    param_name(i, "expand"): s.expand,
                    param_name(i, "se"): float(s.se),
                }
            )
        return params

    def contains(self, spec: ArchSpec) -> bool:
        return len(spec.stages) == len(self.stages) and all(c.contains(s) for c, s in zip(self.stages, spec.stages))

    def card(
        self, spec: ArchSpec, *, train_size: int | None = None, eval_size: int | None = None, **extra: Any
    ) -> dict[str, Any]:
        """A model-card dict for ``spec`` that ``create_model(path)`` and ``--model-spec`` accept."""
        return {
            "spec": spec.to_dict(),
            "train_size": int(train_size or self.train_size),
            "eval_size": int(eval_size or self.eval_size),
            "dropout": self.dropout,
            "drop_path": self.drop_path,
            "mean": list(self.mean),
            "std": list(self.std),
            "interpolation": self.interpolation,
            **extra,
        }

    # -- persistence ------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "backbone": self.backbone,
            "stages": [
                {
                    "block": list(c.block),
                    "layers": list(c.layers),
                    "kernel": list(c.kernel),
                    "expand": list(c.expand),
                    "se": list(c.se),
                }
                for c in self.stages
            ],
        }

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")


def _contiguous(values: tuple) -> bool:
    return all(isinstance(v, int) for v in values) and list(values) == list(range(values[0], values[-1] + 1))


def genotype_stage(s: Stage) -> str:
    """One stage as a short token: ``F4k3x2`` (Fused, expand 4, kernel 3, 2 layers), ``M6k5x3+se``."""
    return f"{'F' if s.block == 'fused' else 'M'}{s.expand}k{s.kernel}x{s.repeats}{'+se' if s.se else ''}"


def genotype(spec: ArchSpec) -> str:
    """The searched part of a spec in one readable line (channels and strides are the backbone's)."""
    return " ".join(genotype_stage(s) for s in spec.stages)


def space_from_card(
    card: ModelCard,
    *,
    name: str | None = None,
    backbone: str | None = None,
    stage_overrides: list[dict[str, Any]] | None = None,
) -> SearchSpace:
    """The default space around ``card``'s stage table, optionally with per-stage choice overrides."""
    overrides = stage_overrides or [{}] * len(card.spec.stages)
    if len(overrides) != len(card.spec.stages):
        raise UsageError(f"stages: {len(overrides)} rows given, backbone {card.name} has {len(card.spec.stages)}")
    stages = []
    for i, (row, over) in enumerate(zip(card.spec.stages, overrides), start=1):
        if not isinstance(over, dict):
            raise UsageError(f"stages[{i - 1}]: expected an object with keys {', '.join(CHOICE_KEYS)}")
        unknown = sorted(set(over) - set(CHOICE_KEYS))
        if unknown:
            raise UsageError(f"stages[{i - 1}]: unknown key {unknown[0]!r}; valid: {', '.join(CHOICE_KEYS)}")
        kw: dict[str, Any] = {"layers": default_layer_range(row.repeats)}
        for key in CHOICE_KEYS:
            if key in over:
                kind = {"block": str, "se": float}.get(key, int)
                kw[key] = _tuple_of(
                    over[key], kind, f"stages[{i - 1}].{key}", allowed=BLOCK_TYPES if key == "block" else None
                )
        stages.append(StageChoices(out=row.out, stride=row.stride, **kw))
    return SearchSpace(
        name=name or card.name,
        backbone=backbone or card.name,
        base=card.spec,
        stages=tuple(stages),
        train_size=card.train_size,
        eval_size=card.eval_size,
        dropout=card.dropout,
        drop_path=card.drop_path,
        mean=tuple(card.mean),
        std=tuple(card.std),
        interpolation=card.interpolation,
    )


def _card(name: str) -> ModelCard:
    try:
        return get_card(name)
    except SpecError as exc:
        raise UsageError(str(exc)) from None


def load_space(path: str | Path) -> SearchSpace:
    """A space from a JSON file: ``{"name": ..., "backbone": MODEL_OR_SPEC_FILE, "stages": [{...}, ...]}``.

    Omitted stage keys take the defaults (both blocks, kernels 3/5, expansions 1/4/6, SE 0/0.25,
    layers around the backbone's); ``"stages"`` may be omitted altogether.
    """
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except FileNotFoundError:
        raise UsageError(f"{p}: no such search-space file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"{p}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise UsageError(f"{p}: expected a JSON object with keys name, backbone, stages")
    unknown = sorted(set(data) - {"name", "backbone", "stages"})
    if unknown:
        raise UsageError(f"{p}: unknown key {unknown[0]!r}; valid: backbone, name, stages")
    if "backbone" not in data or not isinstance(data["backbone"], str):
        raise UsageError(f"{p}: 'backbone' (a registered model name or spec file) is required")
    backbone = SPACE_ALIASES.get(data["backbone"], data["backbone"])
    if backbone.endswith(".json") and not Path(backbone).is_absolute():
        backbone = str(p.parent / backbone)
    try:
        return space_from_card(
            _card(backbone), name=str(data.get("name", p.stem)), backbone=backbone, stage_overrides=data.get("stages")
        )
    except UsageError as exc:
        raise UsageError(f"{p}: {exc}") from None


def get_space(name_or_file: str) -> SearchSpace:
    """A space by name (``pico``, ``mini``, ``b0``, ``s``, or any registered model) or JSON file."""
    if name_or_file.endswith(".json"):
        return load_space(name_or_file)
    model = SPACE_ALIASES.get(name_or_file, name_or_file)
    if model not in list_models():
        raise UsageError(
            f"unknown search space {name_or_file!r}; valid: {', '.join(SPACE_ALIASES)}, "
            f"a registered model name, or a space file *.json"
        )
    return space_from_card(_card(model), name=name_or_file)


def space_from_dict(data: dict[str, Any]) -> SearchSpace:
    """Rebuild a space saved with :meth:`SearchSpace.to_dict` (as stored in a study)."""
    backbone = data["backbone"]
    return space_from_card(
        _card(backbone), name=data.get("name"), backbone=backbone, stage_overrides=data.get("stages")
    )
