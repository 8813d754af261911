"""Architectures as data: keyword-only stage rows that read like the paper's Table 4.

An :class:`ArchSpec` is the single source of truth for a network. Registered models, search
candidates and scaled models are all ``ArchSpec`` values; the builder in
:mod:`effv2.models.efficientnetv2` turns one into an ``nn.Module``. The compact string form and
the JSON form are both derived from the rows and round-trip tested.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

BlockType = Literal["mbconv", "fused"]
BLOCK_TYPES: tuple[str, ...] = ("mbconv", "fused")
PADDINGS: tuple[str, ...] = ("symmetric", "tf_same")
# Technique options (blocks.NORM_LAYERS / blocks.ACT_LAYERS build them; this module stays torch-free).
NORMS: tuple[str, ...] = ("bn", "dual_bn")
ACTS: tuple[str, ...] = ("silu", "gelu", "softplus", "elu", "relu")
OPTIONS = ("norm", "act")  # left out of to_dict() at their defaults


def format_number(x: float) -> str:
    """Short form of a ratio or multiplier that parses back to the same float ("1.1", "0.25", "1.140625")."""
    text = f"{x:g}"
    return text if float(text) == float(x) else repr(float(x))


class SpecError(ValueError):
    """An architecture spec that cannot be built. The message names the field and the problem."""


def round_channels(channels: int, width_mult: float, divisor: int = 8) -> int:
    """The official EfficientNetV2 rounding (effnetv2_model.round_filters).

    ``max(divisor, int(c * w + divisor / 2) // divisor * divisor)``; unlike EfficientNet-V1 ports
    there is no "never go down by more than 10%" correction in V2's code, so none here.
    """
    if width_mult == 1.0:
        return int(channels)
    return int(max(divisor, int(channels * width_mult + divisor / 2) // divisor * divisor))


def round_repeats(repeats: int, depth_mult: float) -> int:
    """Depth multiplier rule of the official code: ``ceil(r * d)`` for every stage."""
    if depth_mult == 1.0:
        return int(repeats)
    return int(math.ceil(repeats * depth_mult))


@dataclass(frozen=True, kw_only=True)
class Stage:
    """One row of the stage table. ``stride`` applies to the first block of the stage."""

    block: BlockType  # "fused" (Fused-MBConv) or "mbconv" (MBConv with optional SE)
    expand: int  # expansion ratio: 1, 4, 6 in the paper's space
    kernel: int = 3  # depthwise (MBConv) or full (Fused) kernel size
    stride: int  # 1 or 2
    se: float = 0.0  # squeeze-excitation ratio of the block's input width; 0 = no SE
    out: int  # output channels before the width multiplier
    repeats: int  # number of blocks before the depth multiplier

    def __post_init__(self) -> None:
        if self.block not in BLOCK_TYPES:
            raise SpecError(f"stage.block: {self.block!r} is not one of {', '.join(BLOCK_TYPES)}")
        for name in ("expand", "kernel", "stride", "out", "repeats"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise SpecError(f"stage.{name}: expected a positive integer, got {value!r}")
        if self.kernel % 2 == 0:
            raise SpecError(f"stage.kernel: expected an odd kernel size, got {self.kernel}")
        if self.stride not in (1, 2):
            raise SpecError(f"stage.stride: expected 1 or 2, got {self.stride}")
        if not isinstance(self.se, (int, float)) or isinstance(self.se, bool) or not 0 <= self.se < 1:
            raise SpecError(f"stage.se: expected a ratio in [0, 1), got {self.se!r}")

    def to_str(self) -> str:
        """Compact form, e.g. ``fused_e4_k3_s2_se0_c48_r4`` (derived from the row, never parsed as truth)."""
        se = format_number(self.se)
        return f"{self.block}_e{self.expand}_k{self.kernel}_s{self.stride}_se{se}_c{self.out}_r{self.repeats}"

    @classmethod
    def from_str(cls, text: str) -> Stage:
        parts = text.strip().split("_")
        if len(parts) != 7:
            raise SpecError(f"stage string {text!r}: expected block_eE_kK_sS_seR_cC_rN")
        block, rest = parts[0], parts[1:]
        prefixes = ("e", "k", "s", "se", "c", "r")
        values: dict[str, str] = {}
        for prefix, part in zip(prefixes, rest):
            if not part.startswith(prefix) or (prefix == "s" and part.startswith("se")):
                raise SpecError(f"stage string {text!r}: expected field {prefix!r}, got {part!r}")
            values[prefix] = part[len(prefix) :]
        try:
            return cls(
                block=block,
                expand=int(values["e"]),
                kernel=int(values["k"]),
                stride=int(values["s"]),
                se=float(values["se"]),
                out=int(values["c"]),
                repeats=int(values["r"]),
            )
        except ValueError as exc:
            if isinstance(exc, SpecError):
                raise
            raise SpecError(f"stage string {text!r}: {exc}") from None


@dataclass(frozen=True, kw_only=True)
class ArchSpec:
    """A whole network: stem, stage rows, head and the multipliers applied to them."""

    stages: tuple[Stage, ...]
    stem: int  # stem output channels (before width multiplier)
    head: int = 1280  # head 1x1 conv channels (before width multiplier)
    stem_stride: int = 2  # 2 for ImageNet-sized inputs, 1 for 28-64 px inputs
    width_mult: float = 1.0
    depth_mult: float = 1.0
    bn_eps: float = 1e-3  # official value
    bn_momentum: float = 0.1  # PyTorch convention: 0.1 here == Keras momentum 0.9 in the official code
    padding: str = "symmetric"  # "tf_same" reproduces TF's asymmetric 'same' padding (tf_ checkpoints)
    norm: str = "bn"  # "dual_bn": AdvProp's main + auxiliary BN pairs (blocks.DualBatchNorm2d)
    act: str = "silu"  # every activation, SE's included; smooth ones (gelu, softplus, elu) for SAT

    def __post_init__(self) -> None:
        stages = tuple(self.stages)
        if not stages:
            raise SpecError("spec.stages: at least one stage is required")
        for i, s in enumerate(stages):
            if not isinstance(s, Stage):
                raise SpecError(f"spec.stages[{i}]: expected a Stage, got {type(s).__name__}")
        object.__setattr__(self, "stages", stages)
        for name in ("stem", "head"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise SpecError(f"spec.{name}: expected a positive integer, got {v!r}")
        if self.stem_stride not in (1, 2):
            raise SpecError(f"spec.stem_stride: expected 1 or 2, got {self.stem_stride!r}")
        for name in ("width_mult", "depth_mult"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0 < v <= 16:
                raise SpecError(f"spec.{name}: expected a number in (0, 16], got {v!r}")
        if not 0 < self.bn_eps < 1:
            raise SpecError(f"spec.bn_eps: expected a value in (0, 1), got {self.bn_eps!r}")
        if not 0 <= self.bn_momentum <= 1:
            raise SpecError(f"spec.bn_momentum: expected a value in [0, 1], got {self.bn_momentum!r}")
        for name, valid in (("padding", PADDINGS), ("norm", NORMS), ("act", ACTS)):
            if getattr(self, name) not in valid:
                raise SpecError(f"spec.{name}: {getattr(self, name)!r} is not one of {', '.join(valid)}")

    # -- derived values ---------------------------------------------------------------------
    @property
    def stem_channels(self) -> int:
        return round_channels(self.stem, self.width_mult)

    @property
    def head_channels(self) -> int:
        return round_channels(self.head, self.width_mult)

    def scaled_stages(self) -> tuple[Stage, ...]:
        """The rows after the width and depth multipliers: what the builder actually builds."""
        return tuple(
            replace(s, out=round_channels(s.out, self.width_mult), repeats=round_repeats(s.repeats, self.depth_mult))
            for s in self.stages
        )

    @property
    def num_blocks(self) -> int:
        return sum(s.repeats for s in self.scaled_stages())

    @property
    def total_stride(self) -> int:
        stride = self.stem_stride
        for s in self.stages:
            stride *= s.stride
        return stride

    def with_overrides(self, **overrides: Any) -> ArchSpec:
        valid = sorted(f.name for f in fields(self) if f.name != "stages")
        unknown = sorted(set(overrides) - set(valid))
        if unknown:
            raise SpecError(f"unknown override {unknown[0]!r}; valid: {', '.join(valid)}")
        return replace(self, **overrides)

    # -- printable and persistent forms ------------------------------------------------------
    def to_table(self) -> str:
        """The stage table as a person reads it (scaled values, as built)."""
        rows = [("stage", "block", "expand", "kernel", "stride", "se", "channels", "layers")]
        rows.append(("stem", "conv3x3", "-", "3", str(self.stem_stride), "-", str(self.stem_channels), "1"))
        for i, s in enumerate(self.scaled_stages(), start=1):
            block = "Fused-MBConv" if s.block == "fused" else "MBConv"
            rows.append(
                (
                    str(i),
                    block,
                    str(s.expand),
                    str(s.kernel),
                    str(s.stride),
                    f"{s.se:g}" if s.se else "-",
                    str(s.out),
                    str(s.repeats),
                )
            )
        rows.append(("head", "conv1x1", "-", "1", "1", "-", str(self.head_channels), "1"))
        widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
        lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines)

    def to_str(self) -> str:
        """Compact one-line form: ``stem24/s2|fused_e1_..|...|head1280[|w1.0|d1.0]``."""
        parts = [f"stem{self.stem}/s{self.stem_stride}", *(s.to_str() for s in self.stages), f"head{self.head}"]
        if self.width_mult != 1.0:
            parts.append(f"w{format_number(self.width_mult)}")
        if self.depth_mult != 1.0:
            parts.append(f"d{format_number(self.depth_mult)}")
        return "|".join(parts)

    @classmethod
    def from_str(cls, text: str) -> ArchSpec:
        parts = [p for p in text.strip().split("|") if p]
        if len(parts) < 3 or not parts[0].startswith("stem") or not any(p.startswith("head") for p in parts):
            raise SpecError(f"spec string {text!r}: expected stemC/sS|stage|...|headC[|wX][|dY]")
        try:
            stem_c, stem_s = parts[0][4:].split("/s")
            kwargs: dict[str, Any] = {"stem": int(stem_c), "stem_stride": int(stem_s)}
            stages = []
            for p in parts[1:]:
                if p.startswith("head"):
                    kwargs["head"] = int(p[4:])
                elif p.startswith("w") and p[1:2].isdigit():
                    kwargs["width_mult"] = float(p[1:])
                elif p.startswith("d") and p[1:2].isdigit():
                    kwargs["depth_mult"] = float(p[1:])
                else:
                    stages.append(Stage.from_str(p))
        except SpecError:
            raise
        except ValueError as exc:
            raise SpecError(f"spec string {text!r}: {exc}") from None
        return cls(stages=tuple(stages), **kwargs)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields; ``norm``/``act`` only when not the default, so a plain spec's dict (in
        checkpoints, search records) is what it was before they existed and older readers load it."""
        d = asdict(self)
        d["stages"] = [asdict(s) for s in self.stages]
        for f in fields(self):
            if f.name in OPTIONS and d[f.name] == f.default:
                del d[f.name]
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "spec") -> ArchSpec:
        if not isinstance(data, dict):
            raise SpecError(f"{source}: expected a JSON object, got {type(data).__name__}")
        valid = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - valid)
        if unknown:
            raise SpecError(f"{source}: unknown key {unknown[0]!r}; valid: {', '.join(sorted(valid))}")
        if "stages" not in data or not isinstance(data["stages"], list):
            raise SpecError(f"{source}: 'stages' must be a list of stage rows")
        stage_keys = {f.name for f in fields(Stage)}
        stages = []
        for i, row in enumerate(data["stages"]):
            if not isinstance(row, dict):
                raise SpecError(f"{source}: stages[{i}] must be an object")
            bad = sorted(set(row) - stage_keys)
            if bad:
                raise SpecError(f"{source}: stages[{i}] unknown key {bad[0]!r}; valid: {', '.join(sorted(stage_keys))}")
            try:
                stages.append(Stage(**row))
            except TypeError as exc:
                raise SpecError(f"{source}: stages[{i}]: {exc}") from None
        rest = {k: v for k, v in data.items() if k != "stages"}
        try:
            return cls(stages=tuple(stages), **rest)
        except TypeError as exc:
            raise SpecError(f"{source}: {exc}") from None

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> ArchSpec:
        p = Path(path)
        try:
            data = json.loads(p.read_text())
        except FileNotFoundError:
            raise SpecError(f"{p}: no such spec file") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise SpecError(f"{p}: not valid JSON ({exc})") from None
        if isinstance(data, dict) and "spec" in data and "stages" not in data:
            data = data["spec"]  # a saved model card: {"spec": {...}, "train_size": ...}
        return cls.from_dict(data, source=str(p))


def stages(*rows: Stage) -> tuple[Stage, ...]:
    return tuple(rows)


@dataclass(frozen=True, kw_only=True)
class ModelCard:
    """What is stored beside a registered architecture: sizes, dropout and preprocessing."""

    name: str
    spec: ArchSpec
    train_size: int
    eval_size: int
    dropout: float
    drop_path: float = 0.2  # stochastic depth at the last block (survival 0.8), official default
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)  # official: (x - 128) / 128
    std: tuple[float, ...] = (0.5, 0.5, 0.5)
    interpolation: str = "bicubic"
    notes: str = ""
    tags: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["spec"] = self.spec.to_dict()
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelCard:
        d = dict(data)
        d["spec"] = ArchSpec.from_dict(d["spec"])
        for k in ("mean", "std", "tags"):
            if k in d:
                d[k] = tuple(d[k])
        return cls(**d)
