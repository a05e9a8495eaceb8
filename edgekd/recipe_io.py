"""The raw mapping a recipe is validated from: the YAML file (`yaml.safe_load` only, so a
recipe can never execute code) and the `--set a.b=value` overrides applied to it.

Nothing here knows the schema (edgekd/recipe.py validates what this returns), except that
switching distill.method leaves out the keys the new method does not take.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence, Union

import yaml

from edgekd.errors import RecipeError
from edgekd.training.method_settings import METHOD_SETTINGS, with_method

# What `--set` takes on the command line (KEY=VALUE strings, values parsed as YAML)
# and what edgekd.distill takes from Python (those strings, or {dotted key: value}).
Overrides = Union[Sequence[str], Mapping[str, Any]]


def _key_path(key: Any, label: str) -> list[str]:
    if not isinstance(key, str) or not key.strip() or any(not p for p in key.strip().split(".")):
        raise RecipeError(f"{label}: KEY must be a dotted path like optim.lr")
    return key.strip().split(".")


def parse_override(item: str) -> tuple[list[str], Any]:
    if not isinstance(item, str):
        raise RecipeError(f"override {item!r} is not a KEY=VALUE string; pass ['train.epochs=5'] or {{'train.epochs': 5}}")
    if "=" not in item:
        raise RecipeError(f"--set {item!r}: expected KEY=VALUE, e.g. --set train.epochs=5")
    key, raw = item.split("=", 1)
    path = _key_path(key, f"--set {item!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return path, value


def _override_items(overrides: Overrides) -> list[tuple[str, list[str], Any]]:
    """(how an error names it, key path, value) per override, in order."""
    if isinstance(overrides, Mapping):
        return [(f"override {k!r}", _key_path(k, f"override {k!r}"), v) for k, v in overrides.items()]
    if isinstance(overrides, str):  # iterating it would give one override per character
        raise RecipeError(f"overrides {overrides!r} is one string; pass a list ['{overrides}'] or a dict")
    return [(f"--set {item!r}", *parse_override(item)) for item in overrides]


def apply_overrides(raw: dict[str, Any], overrides: Overrides) -> dict[str, Any]:
    """Set each dotted key in `raw` (sections are created as needed); values from
    KEY=VALUE strings are parsed as YAML scalars, values of a mapping are used as they are.
    An override of distill.method switches methods (see _switch_method)."""
    items = _override_items(overrides)
    method_before = _distill_method(raw)
    for label, path, value in items:
        node = raw
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise RecipeError(f"{label}: '{part}' is not a section")
            node = child
        node[path[-1]] = value
    _switch_method(raw, method_before, {tuple(path) for _, path, _ in items})
    return raw


def _distill_method(raw: dict[str, Any]) -> Any:
    section = raw.get("distill")
    return with_method(section).get("method") if isinstance(section, dict) else None


def _switch_method(raw: dict[str, Any], method_before: Any, overridden: set[tuple[str, ...]]) -> None:
    """Overriding distill.method trains another method with the same recipe (`--set distill.method=dml`,
    compare's variants): the recipe's distill keys were written for its own method, so those the new
    method does not take are left out. Keys the overrides set stay, to be refused if it does not take them."""
    method = _distill_method(raw)
    if method == method_before or method not in METHOD_SETTINGS or ("distill",) in overridden:
        return
    takes = METHOD_SETTINGS[method].model_fields
    raw["distill"] = {k: v for k, v in raw["distill"].items() if k in takes or ("distill", k) in overridden}


def read_yaml_mapping(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"recipe {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise RecipeError(f"recipe {path} cannot be read as UTF-8 text: {e}") from e
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or "invalid YAML"
        raise RecipeError(f"recipe {path} is not valid YAML{where}: {problem}") from e
    if raw is None:
        raise RecipeError(f"recipe {path} is empty; it needs data, teacher, student and train sections")
    if not isinstance(raw, dict):
        raise RecipeError(f"recipe {path} must be a mapping of sections (data, teacher, ...), not a {type(raw).__name__}")
    return raw
