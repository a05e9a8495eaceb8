"""Recipes a run saved (recipe.yaml, last.pt, student.pt, a comparison's files), read back: the
sections export uses, the whole recipe, and how it differs from the current one (what
`--resume` and `edgekd compare`'s reuse check).

A recipe saved by an older edgekd still reads: keys added since take their defaults.
"""

from __future__ import annotations

from typing import Any

from pydantic import ConfigDict, ValidationError, create_model

from edgekd.errors import RecipeError
from edgekd.recipe import Recipe, validate_recipe
from edgekd.recipe_errors import format_error
from edgekd.training.method_settings import own_keys_only

# The sections `edgekd export` reads back from the recipe a run saved in its student.pt: Recipe's
# own field definitions (names, the `validate` alias, defaults, schema), so errors name the same keys.
_SavedSections = create_model(
    "_SavedSections", __config__=ConfigDict(extra="forbid", populate_by_name=True),
    **{name: (Recipe.model_fields[name].annotation, Recipe.model_fields[name]) for name in ("gate", "export")})


def saved_sections(recipe: dict[str, Any], source: str) -> Any:
    """A run's saved validate: and export: sections, checked as at training time (a student.pt
    from an older edgekd lacks newer sections: their defaults apply): `.gate` (a ValidateConfig)
    and `.export` (an ExportConfig). The one reading of them: export's manifest and search use it."""
    raw = {k: recipe[k] for k in ("validate", "export") if recipe.get(k) is not None}
    try:
        return _SavedSections.model_validate(raw)
    except ValidationError as e:
        raise RecipeError(f"{source}: {format_error(e, Recipe)}") from None


def saved_recipe(saved: dict[str, Any], source: str = "saved recipe") -> Recipe:
    """The Recipe a run saved (recipe.yaml, last.pt, student.pt, a comparison's files), also one
    saved by an older edgekd: keys added since take their defaults, and a distill section written
    flat, with every method's keys, keeps only its method's (method_settings.own_keys_only)."""
    distill = saved.get("distill")
    if isinstance(distill, dict):
        saved = {**saved, "distill": own_keys_only(distill)}
    return validate_recipe(saved, source)


def with_defaults(saved: dict[str, Any]) -> dict[str, Any]:
    """A recipe dict saved by an older edgekd as this edgekd writes it (saved_recipe), so that a
    key added since, at its default, or another method's key it recorded, is not a difference."""
    try:
        return saved_recipe(saved).to_dict()
    except RecipeError:
        return saved


# train keys whose `auto` a run resolves and records (summary.json's and last.pt's speed_settings)
RESOLVED_AUTO = ("channels_last", "compile", "amp")


def with_resolved_auto(saved: dict[str, Any], current: dict[str, Any], speed: dict[str, Any] | None) -> dict[str, Any]:
    """`saved` (a run's recipe dict) with each train key it left at `auto` replaced by what the run
    resolved it to (`speed`, the run's recorded speed settings) where `current` pins that key, so
    that pinning a setting to what a run trained with is not a difference from that run."""
    if not speed:
        return saved
    train, now = dict(saved.get("train") or {}), current.get("train") or {}
    for key in RESOLVED_AUTO:
        if train.get(key) == "auto" and now.get(key) != "auto" and key in speed:
            train[key] = speed[key]
    return {**saved, "train": train}


def saved_recipe_diff(saved: dict[str, Any], current: "Recipe", speed: dict[str, Any] | None = None) -> list[str]:
    """Dotted keys where a saved run's recipe differs from `current`: the one comparison that both
    `--resume` and `edgekd compare`'s reuse make. Keys added since the run was saved count at their
    default; a saved `auto` matches a pin to what that run resolved it to (`speed`)."""
    now = current.to_dict()
    return recipe_diff(with_resolved_auto(with_defaults(saved), now, speed), now)


def recipe_diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two recipe dicts, sorted."""
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for k in set(a) | set(b):
            out += recipe_diff(a.get(k), b.get(k), f"{prefix}{k}.")
        return sorted(out)
    return [] if a == b else [prefix.rstrip(".")]


def describe_keys(keys: list[str], limit: int = 5) -> str:
    return ", ".join(keys[:limit]) + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")
