"""Recipe layers: where each value of a resolved recipe comes from.

Layers, lowest first (each one may set any key; a later layer wins):

    dataclass defaults            Recipe() / ProgressiveConfig() (schema.py)
    <- model                      from the model card: eval size, dropout and stochastic depth,
                                  progressive.min_size capped at the train size
    <- dataset                    src/effv2/recipes/dataset-<name>.json, when the data set has one
    <- data-fitted                image folders and CSVs only (``fitted=`` facts): batch size, epochs
                                  for a minimum number of steps, sizes and RandAugment fitted to the
                                  data's size and resolution (fitted.py); fills only keys no layer
                                  above sets
    <- recipe                     src/effv2/recipes/<name>.json or a user JSON file; a recipe may
                                  "extends": "<other recipe or path>" (recursively; cycles rejected)
    <- overrides                  `--set key=value` (dotted keys for nested fields)
    <- filled                     progressive.max_size, when no layer set it: the model's train
                                  size (or its eval size with progressive.max_size_from="eval")

Every layer is checked on its own (unknown keys name the file and list the valid keys; wrong types
name the key and the expected type), and the merged result is checked again for ranges and
cross-field rules, each error naming the layer that set the offending key.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from ..errors import UsageError
from .fitted import LAYER as FITTED
from .fitted import DataFacts, facts_record, fitted_layer
from .schema import ProgressiveConfig, Recipe, recipe_from_dict, recipe_to_dict
from .values import RecipeError
from .walker import flatten, merge, normalize

RECIPES_DIR = Path(__file__).resolve().parent.parent / "recipes"

# The recipe chosen when none is named (``resolve_recipe(None, ...)``); anything else gets "base".
DEFAULT_RECIPE_FOR_DATASET: dict[str, str] = {
    "fashion-mnist": "fmnist-cpu",
    "cifar10": "finetune-cifar10",
    "cifar100": "finetune-cifar100",
    "flowers102": "finetune-flowers102",
    "stanford-cars": "finetune-stanford-cars",
}

# The "defaults" layer's source in provenance (config.json "layers"). It keeps the class's original
# module path so that provenance stays byte-identical across the move of Recipe to effv2.config.
DEFAULTS_SOURCE = "effv2.config.schema.Recipe"


def normalize_layer(raw: Any, where: str, *, from_strings: bool = False) -> dict[str, Any]:
    """Check one layer and return it as a nested patch ``{key: value, "progressive": {key: value}}``.

    Keys may be dotted (``progressive.n_stages``); a section such as ``progressive`` may be a bool
    (shorthand for ``progressive.enabled``) or an object. Values are type-checked and coerced (ints
    to floats, lists to tuples). With ``from_strings`` the values are command-line strings: parsed
    as JSON when they parse, else taken as the string itself. ``where`` names the layer in errors.
    """
    return normalize(Recipe, raw, where, from_strings=from_strings)


def parse_overrides(overrides: list[str] | dict[str, Any] | None) -> dict[str, Any]:
    """`--set` strings (``key=value``) or a dict as one checked layer."""
    if overrides is None:
        return {}
    if isinstance(overrides, dict):
        return normalize_layer(overrides, "overrides")
    layer: dict[str, Any] = {}
    for item in overrides:
        if not isinstance(item, str) or "=" not in item:
            raise UsageError(
                f"--set {item}: expected KEY=VALUE, e.g. --set epochs=20 or --set progressive.enabled=false"
            )
        key, value = item.split("=", 1)
        layer = merge(layer, normalize_layer({key.strip(): value}, f"--set {item}", from_strings=True))
    return layer


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
        raise UsageError(
            f"unknown recipe {ref!r}; shipped recipes: {', '.join(shipped_recipes())}; "
            "or give the path of a recipe JSON file"
        )
    return path.resolve()


def read_recipe_json(path: Path) -> Any:
    """The JSON in a recipe file; a malformed or unreadable file is a one-line error naming it."""
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UsageError(f"{_display(path)}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
    except OSError as e:
        raise UsageError(f"{_display(path)}: cannot read ({e.strerror})") from None


def load_recipe_layers(
    ref: str, *, _base_dir: Path | None = None, _seen: tuple[Path, ...] = ()
) -> list[tuple[str, Path, dict[str, Any]]]:
    """The chain of layers of one recipe, root first: ``[(label, file, patch), ...]``.

    ``extends`` names a shipped recipe or a path (relative to the extending file). The top file's
    ``name`` defaults to its file stem, so a recipe never inherits its parent's name.
    """
    path = _find_recipe(ref, _base_dir)
    if path in _seen:
        cycle = " -> ".join(_display(p) for p in (*_seen, path))
        raise UsageError(f"recipe 'extends' cycle: {cycle}")
    raw = read_recipe_json(path)
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


def resolve_recipe(
    recipe: str | None,
    *,
    model: str,
    dataset: str,
    overrides: list[str] | dict[str, Any] | None = None,
    fitted: DataFacts | None = None,
) -> tuple[Recipe, dict[str, Any]]:
    """The recipe for training ``model`` on ``dataset``, and the provenance of its values.

    ``recipe`` is a shipped name, a path to a JSON file, or None for the data set's default
    (:func:`default_recipe`). The provenance maps each applied layer, in order, to its source and
    the keys it set: ``{"defaults": {...}, "model": {...}, "dataset": {...}, "recipe:<name>": {...},
    "overrides": {...}, "filled": {...}}``. ``fitted``: the measured facts of an image folder or CSV;
    with them (and no dataset layer) a "data-fitted" layer, recording its facts, comes just above
    the dataset layer (fitted.py).
    """
    card, model_patch = _model_layer(model)
    provenance: dict[str, Any] = {"defaults": {"source": DEFAULTS_SOURCE, "set": {}}}
    layers: list[tuple[str, str, dict[str, Any]]] = [("model", f"model card {card.name}", model_patch)]
    ds_file = RECIPES_DIR / f"dataset-{dataset}.json"
    if re.fullmatch(r"[a-z0-9][a-z0-9_-]*", dataset or "") and ds_file.is_file():
        layers.append(("dataset", _display(ds_file), normalize_layer(read_recipe_json(ds_file), _display(ds_file))))
    name = recipe if recipe is not None else default_recipe(dataset)
    for label, path, patch in load_recipe_layers(name):
        while label in provenance or any(label == lb for lb, _, _ in layers):
            label += "+"
        layers.append((label, _display(path), patch))
    over = parse_overrides(overrides)
    if over:
        layers.append(("overrides", "--set" if not isinstance(overrides, dict) else "overrides", over))
    n_lower = 2 if layers[1][0] == "dataset" else 1
    if fitted is not None and n_lower == 1:
        lower: dict[str, Any] = {}
        for _, _, patch in layers[:n_lower]:
            lower.update(flatten(patch))
        upper: dict[str, Any] = {}
        for _, _, patch in layers[n_lower:]:
            upper.update(flatten(patch))
        fit = fitted_layer(
            fitted,
            train_size=card.train_size,
            eval_size=card.eval_size,
            stride=card.spec.total_stride,
            lower=lower,
            upper=upper,
            default_epochs=Recipe().epochs,
        )
        layers.insert(n_lower, (FITTED, fitted.describe(), normalize_layer(fit, FITTED)))

    merged: dict[str, Any] = {}
    for label, source, patch in layers:
        merged = merge(merged, patch)
        provenance[label] = {"source": source, "set": flatten(patch)}
        if label == FITTED and fitted is not None:
            provenance[label]["facts"] = facts_record(fitted)

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
            provenance["filled"] = {
                "source": f"model card {card.name} (progressive.max_size_from={rec.progressive.max_size_from})",
                "set": flatten(filled),
            }
            rec = recipe_from_dict(merge(merged, filled))
    except RecipeError as e:
        raise RecipeError(e.key, f"{e.problem} (set by {who_set(e.key)})") from None
    return rec, provenance


def explain(recipe: Recipe, provenance: dict[str, Any]) -> list[str]:
    """``key = value  (layer)`` lines for every key, naming the last layer that set it."""
    lines = []
    for key, value in flatten(recipe_to_dict(recipe)).items():
        who = "defaults"
        for label, layer in provenance.items():
            if key in layer.get("set", {}):
                who = label
        lines.append(f"{key} = {json.dumps(value)}  ({who})")
    return lines
