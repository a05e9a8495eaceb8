"""Writes the reference half of docs/api.md from the signatures and docstrings of the Python API.

    python docs/api_reference.py

rewrites docs/api.md from the MARKER line down; the part above it is written by hand.
tests/test_api.py checks that docs/api.md holds exactly what this writes, so the
reference cannot drift from the code. Imports no torch.
"""

from __future__ import annotations

import dataclasses
import inspect
import sys
from pathlib import Path

DOC = Path(__file__).resolve().parent / "api.md"
MARKER = "<!-- reference: written by docs/api_reference.py from the docstrings; do not edit below -->"


def _parameters(fn) -> tuple[list[str], str]:
    """Each parameter as written in the source (annotations are strings there), and the return type."""
    sig = inspect.signature(fn)
    params, star = [], False
    for p in sig.parameters.values():
        if p.name == "self":
            continue
        if p.kind is p.KEYWORD_ONLY and not star:
            params.append("*")
            star = True
        text = p.name if p.annotation is p.empty else f"{p.name}: {p.annotation}"
        params.append(text if p.default is p.empty else f"{text} = {p.default!r}")
    return params, "" if sig.return_annotation is sig.empty else f" -> {sig.return_annotation}"


def _signature(name: str, fn) -> str:
    params, ret = _parameters(fn)
    return f"{name}(\n" + "".join(f"    {p},\n" for p in params) + f"){ret}"


def _text(doc: str | None) -> list[str]:
    return ["```text", inspect.cleandoc(doc or ""), "```", ""]


def _function(name: str, fn) -> list[str]:
    return [f"### `{name}`", "", "```python", _signature(name, fn), "```", "", *_text(fn.__doc__)]


def _class(name: str, cls) -> list[str]:
    lines = [f"### `{name}`", "", *_text(cls.__doc__)]
    fields = [f"- `{f.name}: {f.type}`" for f in dataclasses.fields(cls)]
    lines += ["Fields:", "", *fields, ""]
    members = []
    for attr, value in vars(cls).items():
        if attr.startswith("_"):
            continue
        if isinstance(value, property):
            first = inspect.cleandoc(value.fget.__doc__ or "").split("\n\n")[0].replace("\n", " ")
            members.append(f"- `{attr}` (property)" + (f": {first}" if first else ""))
        elif inspect.isfunction(value):
            first = inspect.cleandoc(value.__doc__ or "").split("\n\n")[0].replace("\n", " ")
            params, ret = _parameters(value)
            members.append(f"- `{attr}({', '.join(params)}){ret}`" + (f": {first}" if first else ""))
    if members:
        lines += ["Members:", "", *members, ""]
    return lines


def _errors() -> list[str]:
    from edgekd import errors

    lines = ["### Errors (`edgekd.errors`)", "", "| class | exit code | what |", "|---|---|---|"]
    for name, cls in vars(errors).items():
        if isinstance(cls, type) and issubclass(cls, errors.EdgeKDError):
            what = inspect.cleandoc(cls.__doc__ or "").replace("\n", " ")
            base = "" if cls is errors.EdgeKDError else f" ({cls.__mro__[1].__name__})"
            lines.append(f"| `{name}`{base} | {cls.exit_code} | {what} |")
    return lines + [""]


def render() -> str:
    """The reference half of docs/api.md, from MARKER to the end."""
    from edgekd import api

    lines = [MARKER, "", "## Reference", ""]
    for name in ("distill", "export", "validate"):
        lines += _function(f"edgekd.{name}", getattr(api, name))
    for name in ("Run", "Bundle", "Report"):
        lines += _class(f"edgekd.{name}", getattr(api, name))
    lines += _errors()
    return "\n".join(lines).rstrip() + "\n"


def current() -> tuple[str, str]:
    """docs/api.md split at MARKER: (the hand-written part, the reference part as it is)."""
    text = DOC.read_text(encoding="utf-8")
    at = text.index(MARKER)
    return text[:at], text[at:]


if __name__ == "__main__":
    sys.path.insert(0, str(DOC.parents[1]))
    head, _ = current()
    DOC.write_text(head + render(), encoding="utf-8")
    print(f"wrote {DOC}")
