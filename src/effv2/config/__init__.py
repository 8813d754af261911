"""Training configuration: the recipe schema and how its layers are resolved.

    values.py   leaf field types and how a raw JSON / `--set` value becomes one (RecipeError)
    walker.py   one generic walker over a dataclass tree: raw layer -> checked patch, merge,
                flatten to dotted keys, to/from dicts; nested sections are found by their type
    schema.py   Recipe and its sections (frozen dataclasses that validate themselves)
    layers.py   recipe files and "extends", the model and dataset layers, resolve_recipe with
                provenance, explain

Nothing here imports effv2.training; presentation of the progressive stages (stage_table) lives
with the `effv2 recipes` command (effv2.cli.recipes).
"""

from .layers import (
    DEFAULT_RECIPE_FOR_DATASET,
    RECIPES_DIR,
    default_recipe,
    explain,
    load_recipe_layers,
    normalize_layer,
    parse_overrides,
    resolve_recipe,
    shipped_recipes,
)
from .schema import DEFAULT_EPS, ProgressiveConfig, Recipe, recipe_from_dict, recipe_to_dict, valid_keys
from .values import RecipeError

__all__ = [
    "DEFAULT_EPS",
    "DEFAULT_RECIPE_FOR_DATASET",
    "RECIPES_DIR",
    "ProgressiveConfig",
    "Recipe",
    "RecipeError",
    "default_recipe",
    "explain",
    "load_recipe_layers",
    "normalize_layer",
    "parse_overrides",
    "recipe_from_dict",
    "recipe_to_dict",
    "resolve_recipe",
    "shipped_recipes",
    "valid_keys",
]
