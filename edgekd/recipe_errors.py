"""A recipe's schema error (pydantic's ValidationError) as the one line a RecipeError says: the key
path as the recipe spells it and what is allowed there.

Apart from the schema (edgekd/recipe.py), which hands itself in: the saved-recipe readers
(edgekd/saved_recipe.py) word their errors the same way.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ValidationError

from edgekd.training.method_settings import METHOD_SETTINGS, not_keys_of, unknown_method


def format_error(err: ValidationError, schema: type[BaseModel]) -> str:
    """One line for the first problem, naming the key path and what is allowed. An unknown
    key comes first: a typo ('epocs') also makes the real key look missing."""
    errors = err.errors()
    e = next((x for x in errors if x["type"] == "extra_forbidden"), errors[0])
    if e["loc"][:1] == ("distill",) and (problem := _distill_problem(e, errors)):
        return problem
    loc = ".".join(str(p) for p in _without_method_tag(e["loc"]) if not str(p).startswith("function-after"))
    kind = e["type"]
    msg = e["msg"]
    if kind == "extra_forbidden":
        return f"unknown key '{loc}' (a typo?); allowed here: {_allowed_keys(e['loc'], schema)}"
    if kind == "missing":
        return f"missing required key '{loc}'"
    if kind == "literal_error":
        return f"{loc}: {e.get('input')!r} is not allowed; {msg.lower()}"
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
        return msg if not loc else f"{loc}: {msg}"
    got = e.get("input")
    got_s = "" if isinstance(got, dict) else f" (got {got!r})"
    return f"{loc}: {msg.lower()}{got_s}"


def _distill_problem(e: dict[str, Any], errors: list[dict[str, Any]]) -> str | None:
    """The `distill:` section's own problems: no such method, or keys its method does not take (all
    of them at once: a recipe switched to another method by hand may hold several)."""
    loc = e["loc"]
    if e["type"] == "union_tag_invalid":
        return f"distill.method: {unknown_method(e['input'].get('method'))}"
    if e["type"] in ("union_tag_not_found", "model_attributes_type"):
        return f"distill: must be a section (method and its keys), got {e['input']!r}"
    if e["type"] == "extra_forbidden" and len(loc) == 3 and loc[1] in METHOD_SETTINGS:
        keys = [x["loc"][2] for x in errors if x["type"] == "extra_forbidden" and x["loc"][:2] == loc[:2]]
        return not_keys_of(loc[1], keys)
    return None


def _without_method_tag(loc: tuple) -> tuple:
    # pydantic names the method in the path (distill.dml.temperature); the recipe's key is distill.temperature.
    if len(loc) > 1 and loc[0] == "distill" and loc[1] in METHOD_SETTINGS:
        return (loc[0], *loc[2:])
    return loc


def _allowed_keys(loc: tuple, schema: type[BaseModel]) -> str:
    model = schema
    for part in loc[:-1]:
        field = model.model_fields.get(str(part)) or next(
            (f for f in model.model_fields.values() if f.alias == str(part)), None)  # validate: is `gate`
        if field is None:
            break
        ann = field.annotation
        for cand in (ann, *getattr(ann, "__args__", ())):
            if isinstance(cand, type) and issubclass(cand, BaseModel):
                model = cand
                break
    return ", ".join(model.model_fields)
