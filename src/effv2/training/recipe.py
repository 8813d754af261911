"""Training recipes: one typed dataclass tree, built in layers, saved beside every run.

Layers, lowest first (each one may set any key; a later layer wins):

    dataclass defaults            Recipe() / ProgressiveConfig() below
    <- model                      from the model card: eval size, dropout and stochastic depth,
                                  progressive.min_size capped at the train size
    <- dataset                    src/effv2/recipes/dataset-<name>.json, when the data set has one
    <- recipe                     src/effv2/recipes/<name>.json or a user JSON file; a recipe may
                                  "extends": "<other recipe or path>" (recursively; cycles rejected)
    <- overrides                  `--set key=value` (dotted keys for nested fields)
    <- filled                     progressive.max_size, when no layer set it: the model's train
                                  size (or its eval size with progressive.max_size_from="eval")

Every layer is checked on its own (unknown keys name the file and list the valid keys; wrong types
name the key and the expected type), and the merged result is checked again for ranges and
cross-field rules, each error naming the layer that set the offending key.

Units: ``lr``, ``warmup_lr`` and ``min_lr`` are per 256 images. The trainer uses
``lr * batch_size / 256`` (the official code's ``lr_base * batch_size / 256``), and ``warmup_lr`` and
``min_lr`` scale the same way (the official code scales ``lr_min`` likewise).
"""

from __future__ import annotations

import difflib
import json
import math
import re
import types
from dataclasses import dataclass, field, fields
from functools import cache
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from ..errors import UsageError

RECIPES_DIR = Path(__file__).resolve().parent.parent / "recipes"

# The recipe chosen when none is named (``resolve_recipe(None, ...)``); anything else gets "base".
DEFAULT_RECIPE_FOR_DATASET: dict[str, str] = {
    "fashion-mnist": "fmnist-cpu",
    "cifar10": "finetune-cifar10",
    "cifar100": "finetune-cifar100",
    "flowers102": "finetune-flowers102",
    "stanford-cars": "finetune-stanford-cars",
}

# Per-optimizer epsilon when ``eps`` is null: TF RMSProp as the official code (1e-3), torch AdamW's 1e-8.
DEFAULT_EPS = {"rmsprop_tf": 1e-3, "adamw": 1e-8, "sgd": 0.0}


class RecipeError(UsageError):
    """A bad recipe value. ``key`` is the dotted key, so the resolver can name the layer that set it."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"recipe key {key}: {problem}")
        self.key = key
        self.problem = problem


# --------------------------------------------------------------------------- the dataclass tree
@dataclass(frozen=True)
class ProgressiveConfig:
    """Progressive learning with adaptive regularization (paper Algorithm 1; see schedule.py)."""

    enabled: bool = True  # false: one stage at max_size with every regularization at its max
    variant: Literal["paper", "code"] = "paper"  # "paper": Algorithm 1 / Table 6; "code": the released code
    n_stages: int = 4  # M in the paper (4 on ImageNet); epochs are split evenly, later stages take the rest
    min_size: int = 128  # image size of stage 0 ("paper"); the "code" size rule starts from it too
    max_size: int | None = None  # image size of the last stage; null = the model's train size (see max_size_from)
    max_size_from: Literal["train", "eval"] = "train"  # which model size a null max_size becomes ("eval": fine-tuning)
    randaug_min: float = 5  # RandAugment magnitude of stage 0 (scale 10; values above 10 extrapolate)
    randaug_max: float = 15  # RandAugment magnitude of the last stage
    mixup_min: float = 0  # Mixup alpha of stage 0 (0 = off)
    mixup_max: float = 0  # Mixup alpha of the last stage
    cutmix_min: float = 0  # CutMix alpha of stage 0 (0 = off; the "code" variant sets cutmix = mixup)
    cutmix_max: float = 0  # CutMix alpha of the last stage
    dropout_min: float = 0.1  # classifier dropout of stage 0 ("paper" only; "code" keeps dropout fixed)
    dropout_max: float | None = None  # dropout of the last stage; null = the model's dropout
    drop_path_min: float | None = None  # stochastic depth of stage 0; null = no schedule (fixed at drop_path_max)
    drop_path_max: float | None = None  # stochastic depth of the last stage; null = the model's drop_path

    def __post_init__(self) -> None:
        _coerce_fields(self, "progressive.")
        k = "progressive."
        _require(self.n_stages >= 1, k + "n_stages", "must be an integer >= 1", self.n_stages)
        _require(self.min_size >= 1, k + "min_size", "must be a positive image size", self.min_size)
        _require(self.max_size is None or self.max_size >= 1, k + "max_size", "must be a positive image size or null",
                 self.max_size)
        for name in ("randaug", "mixup", "cutmix"):
            for end in ("min", "max"):
                v = getattr(self, f"{name}_{end}")
                _require(v >= 0, f"{k}{name}_{end}", "must be >= 0", v)
        for name in ("dropout_min", "dropout_max", "drop_path_min", "drop_path_max"):
            v = getattr(self, name)
            problem = "must be in [0, 1)" + ("" if name == "dropout_min" else " or null")
            _require(v is None or 0 <= v < 1, k + name, problem, v)
        if not self.enabled:
            return  # a single stage uses only the max values; stale min values are harmless
        # Regularization grows with image size (the paper's premise): every min <= its max.
        if self.max_size is not None:
            _require(self.min_size <= self.max_size, k + "min_size",
                     f"must be <= progressive.max_size={self.max_size} (or set progressive.enabled=false)",
                     self.min_size)
        for name in ("randaug", "mixup", "cutmix"):
            lo, hi = getattr(self, f"{name}_min"), getattr(self, f"{name}_max")
            _require(lo <= hi, f"{k}{name}_min", f"must be <= progressive.{name}_max={hi}", lo)
        if self.variant == "paper" and self.dropout_max is not None:
            _require(self.dropout_min <= self.dropout_max, k + "dropout_min",
                     f"must be <= progressive.dropout_max={self.dropout_max}", self.dropout_min)
        if self.drop_path_min is not None and self.drop_path_max is not None:
            _require(self.drop_path_min <= self.drop_path_max, k + "drop_path_min",
                     f"must be <= progressive.drop_path_max={self.drop_path_max}", self.drop_path_min)


@dataclass(frozen=True)
class Recipe:
    """Everything a training run needs besides the model and the data. Saved as config.json["recipe"]."""

    # -- identity
    name: str = "base"  # the recipe's name (a shipped recipe's file stem, or a user file's stem)
    description: str = ""  # one paragraph: what it is for and why the numbers are what they are
    follows: str = ""  # the source it follows, e.g. "paper Table 6" or "official code datasets.py"
    # -- length and batch
    epochs: int = 10  # training epochs; progressive stages split them (schedule.stage_bounds)
    batch_size: int = 128  # global batch (all processes together); per process = batch_size / world size
    eval_batch_size: int = 256  # batch for evaluation (no gradients, so larger is fine)
    # -- optimizer (optim.py)
    optimizer: Literal["sgd", "adamw", "rmsprop_tf"] = "sgd"
    lr: float = 0.1  # peak learning rate per 256 images; the trainer uses lr * batch_size / 256
    momentum: float = 0.9  # SGD momentum / RMSProp momentum (unused by AdamW)
    nesterov: bool = False  # SGD only
    weight_decay: float = 1e-5  # on conv/linear weights only; L2 on the gradient (sgd, rmsprop_tf), decoupled (adamw)
    betas: tuple[float, float] = (0.9, 0.999)  # AdamW only
    eps: float | None = None  # null = per-optimizer default: rmsprop_tf 1e-3 (inside the sqrt), adamw 1e-8
    rmsprop_decay: float = 0.9  # RMSProp's square-average decay (TF "decay", torch "alpha")
    # -- learning-rate schedule (lr.py)
    lr_schedule: Literal["cosine", "exponential", "constant", "step"] = "cosine"
    warmup_epochs: float = 0  # linear warmup length (may be fractional); warmup steps = int(epochs * steps/epoch)
    warmup_lr: float = 0  # lr at step 0 of the warmup, per 256 images like lr (0 = from zero, as the official code)
    min_lr: float = 0  # floor: cosine ends here; exponential and step never go below; per 256 images like lr
    decay_rate: float = 0.97  # exponential/step: multiply the lr by this ...
    decay_epochs: float = 2.4  # ... every this many epochs (staircase, clock starting at step 0 like TF)
    # -- loss and weights
    label_smoothing: float = 0.1
    ema_decay: float = 0  # EMA of weights and BN statistics (0 = off); TF warm-up min(decay, (1+n)/(10+n))
    grad_clip: float = 0  # max global gradient norm (0 = off)
    # -- speed
    amp: Literal["auto", "bf16", "fp16", "none"] = "auto"  # auto = fast_defaults: bf16 on AMX CPUs and Ampere+ GPUs
    channels_last: Literal["auto"] | bool = "auto"  # auto = effv2.bench.machine.fast_defaults (measured: on for CPU and CUDA)
    compile: bool = False  # torch.compile the model
    # -- progressive learning (schedule.py)
    progressive: ProgressiveConfig = field(default_factory=ProgressiveConfig)
    # -- data
    eval_size: int | None = None  # evaluation image size; null = the model's eval size
    randaug_ops: int = 2  # RandAugment ops per image (the official code: 2 of 16)
    hflip: bool = True  # random horizontal flips in training
    # auto: pad_crop for in-memory sets (Fashion-MNIST, CIFAR), random_resized for image files
    crop: Literal["auto", "pad_crop", "random_resized", "none"] = "auto"
    # -- run control
    checkpoint_every_steps: int = 0  # also save checkpoints/last every N optimizer steps (0 = only at epoch ends)
    eval_every_epochs: int = 1  # evaluate every N epochs (and always after the last)
    max_nonfinite_steps: int = 5  # stop after this many non-finite steps in a row (each one is skipped)
    num_workers: int = 0  # data loader worker processes (0 = in the training process)
    val_fraction: float = 0.0  # stratified hold-out of train evaluated during training; 0 = evaluate on the test split
    seed: int = 0  # seeds weights, data order and augmentation
    deterministic: bool = False  # torch.use_deterministic_algorithms (slower; bitwise repeatable runs)
    time_budget_s: float = 0  # stop cleanly (checkpoint, summary) after this much training time; 0 = no budget

    def __post_init__(self) -> None:
        if isinstance(self.progressive, dict):  # convenience: Recipe(progressive={...})
            object.__setattr__(self, "progressive", _progressive_from_dict(self.progressive, "Recipe(progressive=...)"))
        if not isinstance(self.progressive, ProgressiveConfig):
            raise RecipeError("progressive", f"expected true/false or an object, got {self.progressive!r}")
        _coerce_fields(self, "")
        for key in ("epochs", "batch_size", "eval_batch_size", "eval_every_epochs", "max_nonfinite_steps"):
            _require(getattr(self, key) >= 1, key, "must be an integer >= 1", getattr(self, key))
        for key in ("randaug_ops", "checkpoint_every_steps", "num_workers", "seed"):
            _require(getattr(self, key) >= 0, key, "must be an integer >= 0", getattr(self, key))
        for key in ("weight_decay", "warmup_epochs", "grad_clip", "time_budget_s"):
            _require(getattr(self, key) >= 0, key, "must be >= 0", getattr(self, key))
        _require(self.lr > 0, "lr", "must be > 0", self.lr)
        _require(0 <= self.warmup_lr <= self.lr, "warmup_lr", f"must be in [0, lr={self.lr}]", self.warmup_lr)
        _require(0 <= self.min_lr <= self.lr, "min_lr", f"must be in [0, lr={self.lr}]", self.min_lr)
        _require(self.warmup_epochs <= self.epochs, "warmup_epochs", f"must be <= epochs={self.epochs}",
                 self.warmup_epochs)
        _require(0 < self.decay_rate <= 1, "decay_rate", "must be in (0, 1]", self.decay_rate)
        _require(self.decay_epochs > 0, "decay_epochs", "must be > 0", self.decay_epochs)
        _require(0 <= self.momentum < 1, "momentum", "must be in [0, 1)", self.momentum)
        _require(not self.nesterov or self.momentum > 0, "nesterov", "needs momentum > 0", self.nesterov)
        _require(all(0 <= b < 1 for b in self.betas), "betas", "each must be in [0, 1)", list(self.betas))
        _require(self.eps is None or self.eps > 0, "eps", "must be > 0 or null", self.eps)
        _require(0 <= self.rmsprop_decay < 1, "rmsprop_decay", "must be in [0, 1)", self.rmsprop_decay)
        _require(0 <= self.label_smoothing < 1, "label_smoothing", "must be in [0, 1)", self.label_smoothing)
        _require(0 <= self.ema_decay < 1, "ema_decay", "must be in [0, 1) (0 = off)", self.ema_decay)
        _require(0 <= self.val_fraction < 1, "val_fraction", "must be in [0, 1)", self.val_fraction)
        _require(self.eval_size is None or self.eval_size >= 1, "eval_size", "must be a positive image size or null",
                 self.eval_size)

    @property
    def optimizer_eps(self) -> float:
        """``eps``, or the optimizer's default when null."""
        return DEFAULT_EPS[self.optimizer] if self.eps is None else self.eps

    @property
    def scaled_lr(self) -> float:
        """The peak lr the trainer uses: ``lr * batch_size / 256``."""
        return self.lr * self.batch_size / 256


# --------------------------------------------------------------------------- types and checks
class _Mismatch(Exception):
    pass


@cache
def _hints(cls: type) -> dict[str, Any]:
    return get_type_hints(cls)


def _describe(tp: Any) -> str:
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
        return " or ".join(_describe(a) for a in get_args(tp))
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


def _coerce_field(cls: type, name: str, value: Any, key: str) -> Any:
    tp = _hints(cls)[name]
    try:
        return _coerce(value, tp)
    except _Mismatch:
        raise RecipeError(key, f"expected {_describe(tp)}, got {json.dumps(value, default=repr)}") from None


def _coerce_fields(obj: Any, prefix: str) -> None:
    for f in fields(obj):
        if f.name == "progressive":
            continue
        object.__setattr__(obj, f.name, _coerce_field(type(obj), f.name, getattr(obj, f.name), prefix + f.name))


def _require(ok: bool, key: str, problem: str, value: Any) -> None:
    if not ok:
        raise RecipeError(key, f"{problem}, got {json.dumps(value, default=repr)}")


RECIPE_KEYS = tuple(f.name for f in fields(Recipe))
PROGRESSIVE_KEYS = tuple(f.name for f in fields(ProgressiveConfig))


def valid_keys() -> list[str]:
    """Every key `--set` accepts, dotted for nested fields."""
    top = [k for k in RECIPE_KEYS if k != "progressive"]
    return top + ["progressive"] + [f"progressive.{k}" for k in PROGRESSIVE_KEYS]


def _unknown(where: str, key: str, valid: list[str]) -> UsageError:
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return UsageError(f"{where}: unknown recipe key {key!r}{hint}; valid keys: {', '.join(valid)}")


# --------------------------------------------------------------------------- dicts and layers
def recipe_to_dict(recipe: Recipe) -> dict[str, Any]:
    """A JSON-ready dict (nested ``progressive``, ``betas`` as a list); ``recipe_from_dict`` inverts it."""
    out: dict[str, Any] = {}
    for f in fields(recipe):
        v = getattr(recipe, f.name)
        if f.name == "progressive":
            v = {p.name: getattr(v, p.name) for p in fields(v)}
        elif isinstance(v, tuple):
            v = list(v)
        out[f.name] = v
    return out


def recipe_from_dict(d: dict[str, Any], *, where: str = "recipe") -> Recipe:
    """Build and validate a recipe from a (possibly partial) dict; missing keys take the defaults."""
    patch = normalize_layer(d, where)
    prog = patch.pop("progressive", {})
    return Recipe(**patch, progressive=ProgressiveConfig(**prog))


def _progressive_from_dict(d: dict[str, Any], where: str) -> ProgressiveConfig:
    return ProgressiveConfig(**normalize_layer({"progressive": d}, where).get("progressive", {}))


def normalize_layer(raw: Any, where: str, *, from_strings: bool = False) -> dict[str, Any]:
    """Check one layer and return it as a nested patch ``{key: value, "progressive": {key: value}}``.

    Keys may be dotted (``progressive.n_stages``); ``progressive`` may be a bool (shorthand for
    ``progressive.enabled``) or an object. Values are type-checked and coerced (ints to floats, lists
    to tuples). With ``from_strings`` the values are command-line strings: parsed as JSON when they
    parse, else taken as the string itself. ``where`` names the layer in error messages.
    """
    if not isinstance(raw, dict):
        raise UsageError(f"{where}: a recipe must be a JSON object, got {type(raw).__name__}")
    out: dict[str, Any] = {}
    prog: dict[str, Any] = {}

    def put(cls: type, name: str, value: Any, key: str, target: dict[str, Any]) -> None:
        candidates = [value]
        if from_strings and isinstance(value, str):
            try:  # JSON first ("3", "true", "null", "[0.9, 0.99]"); a string that is not JSON stays a string
                candidates = [json.loads(value), value]
            except json.JSONDecodeError:
                pass
        errors = []
        for candidate in candidates:
            try:
                target[name] = _coerce_field(cls, name, candidate, key)
                return
            except RecipeError as e:
                errors.append(e)
        raise RecipeError(key, f"{errors[0].problem} ({where})")

    for key, value in raw.items():
        if not isinstance(key, str):
            raise UsageError(f"{where}: recipe keys must be strings, got {key!r}")
        parts = key.split(".")
        if parts[0] == "progressive" and len(parts) == 1:
            if from_strings and isinstance(value, str):
                try:
                    value = json.loads(value)
                except json.JSONDecodeError:
                    pass
            if isinstance(value, bool):
                prog["enabled"] = value
            elif isinstance(value, dict):
                for sub, v in value.items():
                    if sub not in PROGRESSIVE_KEYS:
                        raise _unknown(where, f"progressive.{sub}", [f"progressive.{k}" for k in PROGRESSIVE_KEYS])
                    put(ProgressiveConfig, sub, v, f"progressive.{sub}", prog)
            else:
                got = json.dumps(value, default=repr)
                raise RecipeError("progressive", f"expected true/false or an object, got {got} ({where})")
        elif parts[0] == "progressive" and len(parts) == 2 and parts[1] in PROGRESSIVE_KEYS:
            put(ProgressiveConfig, parts[1], value, key, prog)
        elif parts[0] == "progressive":
            raise _unknown(where, key, [f"progressive.{k}" for k in PROGRESSIVE_KEYS])
        elif len(parts) == 1 and key in RECIPE_KEYS:
            put(Recipe, key, value, key, out)
        else:
            raise _unknown(where, key, valid_keys())
    if prog:
        out["progressive"] = prog
    return out


def _merge(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    merged = {**base, **{k: v for k, v in patch.items() if k != "progressive"}}
    if "progressive" in patch:
        merged["progressive"] = {**base.get("progressive", {}), **patch["progressive"]}
    return merged


def _flat(patch: dict[str, Any]) -> dict[str, Any]:
    flat = {k: (list(v) if isinstance(v, tuple) else v) for k, v in patch.items() if k != "progressive"}
    flat.update({f"progressive.{k}": v for k, v in patch.get("progressive", {}).items()})
    return flat


def parse_overrides(overrides: list[str] | dict[str, Any] | None) -> dict[str, Any]:
    """`--set` strings (``key=value``) or a dict as one checked layer."""
    if overrides is None:
        return {}
    if isinstance(overrides, dict):
        return normalize_layer(overrides, "overrides")
    layer: dict[str, Any] = {}
    for item in overrides:
        if not isinstance(item, str) or "=" not in item:
            raise UsageError(f"--set {item}: expected KEY=VALUE, e.g. --set epochs=20 "
                             "or --set progressive.enabled=false")
        key, value = item.split("=", 1)
        layer = _merge(layer, normalize_layer({key.strip(): value}, f"--set {item}", from_strings=True))
    return layer


# --------------------------------------------------------------------------- recipe files
def shipped_recipes() -> list[str]:
    """Names of the recipes shipped in src/effv2/recipes (dataset layers excluded)."""
    return sorted(p.stem for p in RECIPES_DIR.glob("*.json") if not p.stem.startswith("dataset-"))


def _display(path: Path) -> str:
    try:
        return "effv2/recipes/" + str(path.relative_to(RECIPES_DIR))
    except ValueError:
        return str(path)


def _find_recipe(ref: str, base_dir: Path | None) -> Path:
    if ref.endswith(".json") or "/" in ref or "\\" in ref:
        path = Path(ref).expanduser()
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        if not path.is_file():
            raise UsageError(f"recipe file {path} not found")
        return path.resolve()
    path = RECIPES_DIR / f"{ref}.json"
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", ref) or not path.is_file():
        raise UsageError(f"unknown recipe {ref!r}; shipped recipes: {', '.join(shipped_recipes())}; "
                         "or give the path of a recipe JSON file")
    return path.resolve()


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UsageError(f"{_display(path)}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
    except OSError as e:
        raise UsageError(f"{_display(path)}: cannot read ({e.strerror})") from None


def load_recipe_layers(ref: str, *, _base_dir: Path | None = None, _seen: tuple[Path, ...] = ()
                       ) -> list[tuple[str, Path, dict[str, Any]]]:
    """The chain of layers of one recipe, root first: ``[(label, file, patch), ...]``.

    ``extends`` names a shipped recipe or a path (relative to the extending file). The top file's
    ``name`` defaults to its file stem, so a recipe never inherits its parent's name.
    """
    path = _find_recipe(ref, _base_dir)
    if path in _seen:
        cycle = " -> ".join(_display(p) for p in (*_seen, path))
        raise UsageError(f"recipe 'extends' cycle: {cycle}")
    raw = _read_json(path)
    if not isinstance(raw, dict):
        raise UsageError(f"{_display(path)}: a recipe must be a JSON object, got {type(raw).__name__}")
    raw = dict(raw)
    parent = raw.pop("extends", None)
    chain: list[tuple[str, Path, dict[str, Any]]] = []
    if parent is not None:
        if not isinstance(parent, str) or not parent:
            raise UsageError(f"{_display(path)}: 'extends' must name a recipe or a recipe file, got {parent!r}")
        chain = load_recipe_layers(parent, _base_dir=path.parent, _seen=(*_seen, path))
    patch = normalize_layer(raw, _display(path))
    patch.setdefault("name", path.stem)
    chain.append((f"recipe:{path.stem}", path, patch))
    return chain


def default_recipe(dataset: str) -> str:
    """The recipe used when none is named: see DEFAULT_RECIPE_FOR_DATASET."""
    return DEFAULT_RECIPE_FOR_DATASET.get(dataset, "base")


def _model_layer(model: str) -> tuple[Any, dict[str, Any]]:
    from ..models import get_card
    from ..models.spec import SpecError

    try:
        card = get_card(model)
    except SpecError as e:
        raise UsageError(str(e)) from None
    defaults = ProgressiveConfig()
    patch = {
        "eval_size": card.eval_size,
        "progressive": {
            # Small models (28-64 px) would otherwise start above their own train size.
            "min_size": min(defaults.min_size, card.train_size),
            "dropout_min": min(defaults.dropout_min, card.dropout),
            "dropout_max": card.dropout,
            "drop_path_max": card.drop_path,
        },
    }
    return card, patch


def resolve_recipe(recipe: str | None, *, model: str, dataset: str,
                   overrides: list[str] | dict[str, Any] | None = None) -> tuple[Recipe, dict[str, Any]]:
    """The recipe for training ``model`` on ``dataset``, and the provenance of its values.

    ``recipe`` is a shipped name, a path to a JSON file, or None for the data set's default
    (:func:`default_recipe`). The provenance maps each applied layer, in order, to its source and
    the keys it set: ``{"defaults": {...}, "model": {...}, "dataset": {...}, "recipe:<name>": {...},
    "overrides": {...}, "filled": {...}}``.
    """
    card, model_patch = _model_layer(model)
    provenance: dict[str, Any] = {"defaults": {"source": "effv2.training.recipe.Recipe", "set": {}}}
    layers: list[tuple[str, str, dict[str, Any]]] = [("model", f"model card {card.name}", model_patch)]
    ds_file = RECIPES_DIR / f"dataset-{dataset}.json"
    if re.fullmatch(r"[a-z0-9][a-z0-9_-]*", dataset or "") and ds_file.is_file():
        layers.append(("dataset", _display(ds_file), normalize_layer(_read_json(ds_file), _display(ds_file))))
    name = recipe if recipe is not None else default_recipe(dataset)
    for label, path, patch in load_recipe_layers(name):
        while label in provenance or any(label == lb for lb, _, _ in layers):
            label += "+"
        layers.append((label, _display(path), patch))
    over = parse_overrides(overrides)
    if over:
        layers.append(("overrides", "--set" if not isinstance(overrides, dict) else "overrides", over))

    merged: dict[str, Any] = {}
    for label, source, patch in layers:
        merged = _merge(merged, patch)
        provenance[label] = {"source": source, "set": _flat(patch)}

    def who_set(key: str) -> str:
        for label in reversed(list(provenance)):
            if key in provenance[label]["set"]:
                return label
        return "defaults"

    try:
        rec = recipe_from_dict(merged)
        filled: dict[str, Any] = {}
        if rec.eval_size is None:  # the last layer: sizes nobody set come from the model card
            filled["eval_size"] = card.eval_size
        if rec.progressive.max_size is None:
            from_eval = rec.progressive.max_size_from == "eval"
            size = filled.get("eval_size", rec.eval_size) if from_eval else card.train_size
            filled["progressive"] = {"max_size": size}
        if filled:
            provenance["filled"] = {"source": f"model card {card.name} (progressive.max_size_from="
                                              f"{rec.progressive.max_size_from})", "set": _flat(filled)}
            rec = recipe_from_dict(_merge(merged, filled))
    except RecipeError as e:
        raise RecipeError(e.key, f"{e.problem} (set by {who_set(e.key)})") from None
    return rec, provenance


def explain(recipe: Recipe, provenance: dict[str, Any]) -> list[str]:
    """``key = value  (layer)`` lines for every key, naming the last layer that set it."""
    lines = []
    for key, value in _flat(recipe_to_dict(recipe)).items():
        who = "defaults"
        for label, layer in provenance.items():
            if key in layer.get("set", {}):
                who = label
        lines.append(f"{key} = {json.dumps(value)}  ({who})")
    return lines


def stage_table(recipe: Recipe, *, train_size: int, dropout: float, drop_path: float) -> list[str]:
    """The progressive stages of a resolved recipe as text rows (epochs, size, regularization)."""
    from .schedule import all_stages, stage_bounds

    p = recipe.progressive
    stages = all_stages(p, train_size=train_size, dropout=dropout, drop_path=drop_path, eval_size=recipe.eval_size)
    bounds = stage_bounds(recipe.epochs, len(stages))
    rows = [f"{'stage':>5} {'epochs':>11} {'size':>5} {'randaug':>8} {'mixup':>7} {'cutmix':>7} {'dropout':>8} "
            f"{'drop_path':>9}"]
    for sp, (a, b) in zip(stages, bounds):
        span = f"{a}-{b - 1}" if b > a else "(none)"
        rows.append(f"{sp.index:>5} {span:>11} {sp.image_size:>5} {sp.randaug_magnitude:>8.4g} {sp.mixup_alpha:>7.4g} "
                    f"{sp.cutmix_alpha:>7.4g} {sp.dropout:>8.4g} {sp.drop_path:>9.4g}")
    return rows


def add_recipe_args(ap) -> None:
    """The arguments of `effv2 recipes` / `python -m effv2.training.recipe` (one definition for both)."""
    ap.add_argument("recipe", nargs="?", help="shipped recipe name or recipe JSON file (default: the data set's)")
    ap.add_argument("--model", default="efficientnetv2_s")
    ap.add_argument("--data", default="imagenet", help="data set name (picks the dataset layer and default recipe)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--list", action="store_true", help="list the shipped recipes")
    ap.add_argument("--json", action="store_true", help="print the resolved recipe as JSON")


def main(argv: list[str] | None = None) -> int:
    """``python -m effv2.training.recipe [NAME|FILE] --model M --data D [--set K=V ...]``: print the
    resolved recipe, the layer that set each key, and the progressive stages. ``--list``: the
    shipped recipes and what each follows. ``--json``: the resolved recipe as config.json stores it."""
    import argparse
    import sys
    import textwrap

    ap = argparse.ArgumentParser(prog="python -m effv2.training.recipe", description=main.__doc__)
    add_recipe_args(ap)
    args = ap.parse_args(argv)
    try:
        if args.list:
            for name in shipped_recipes():
                raw = _read_json(RECIPES_DIR / f"{name}.json")
                parent = f" (extends {raw['extends']})" if "extends" in raw else ""
                print(f"{name}{parent}: follows {raw.get('follows') or '(inherited)'}")
            return 0
        rec, prov = resolve_recipe(args.recipe, model=args.model, dataset=args.data, overrides=args.overrides)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"recipe": recipe_to_dict(rec), "layers": prov}, indent=2))
        return 0
    from ..models import get_card

    card = get_card(args.model)
    print(f"recipe {rec.name} for {card.name} on {args.data}: follows {rec.follows or '-'}")
    print("layers: " + " <- ".join(f"{k} ({v['source']})" for k, v in prov.items()))
    print(textwrap.fill(rec.description, width=100))
    print(f"lr {rec.lr} per 256 images -> {rec.scaled_lr:g} at batch {rec.batch_size}")
    print("\n".join(line for line in explain(rec, prov) if not line.startswith("description =")))
    p = rec.progressive
    title = f"{p.variant} variant, {p.n_stages} stages" if p.enabled else "progressive learning off"
    print(f"stages ({title}, {rec.epochs} epochs):")
    print("\n".join(stage_table(rec, train_size=card.train_size, dropout=card.dropout, drop_path=card.drop_path)))
    return 0


if __name__ == "__main__":  # run the package's copy of the module, not a second __main__ copy
    from effv2.training.recipe import main as _main

    raise SystemExit(_main())
