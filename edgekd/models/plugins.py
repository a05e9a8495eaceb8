"""Model plugins: factories that other installed packages register through the
entry point group ``edgekd.models``, so a team's own architecture needs no edit to edgekd.

A plugin package declares in its pyproject.toml

    [project.entry-points."edgekd.models"]
    tinynet = "edgekd_tinynet:build_tinynet"

and a recipe then says ``student: {arch: tinynet}``. The entry point's name is the
model's name; its object is a factory with edgekd's signature (see registry.py),
checked by the same register_model as the built-in models. A recipe names a model,
never an import path: it can only choose among packages the user installed.

The names are read from the installed packages' metadata (no plugin code runs) the
first time edgekd looks up or lists a model, never at ``import edgekd``. A name that
edgekd or another plugin already has is ambiguous: it is recorded, and only a lookup
of that name fails (every other model, built-in or plugin, still works); ``edgekd
models`` lists the others, then names it (exit 2). A plugin's code is imported only
when its model is built or its options are read (``edgekd models`` reads all).
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Callable, Mapping

from edgekd.errors import ModelError, first_line

GROUP = "edgekd.models"


@dataclass(frozen=True)
class Plugin:
    """One installed entry point of the group, not yet imported."""

    entry_point: EntryPoint

    @property
    def name(self) -> str:
        return self.entry_point.name

    @property
    def package(self) -> str:
        """'<distribution> <version>': the model's source in `edgekd models`."""
        dist = self.entry_point.dist
        return f"{dist.name} {dist.version}" if dist is not None else "an unknown package"

    def describe(self) -> str:
        ep = self.entry_point
        return f"model plugin '{ep.name}' (package {self.package}, entry point {ep.name} = {ep.value})"

    def load(self) -> Callable[..., Any]:
        try:
            return self.entry_point.load()
        # Whatever the plugin's import raises, or a sys.exit in it (which would end edgekd
        # silently with the plugin's exit code): the user needs its package's name.
        except (Exception, SystemExit) as e:
            raise ModelError(f"{self.describe()} cannot be imported: {type(e).__name__}: {first_line(e)}") from e


@dataclass(frozen=True)
class Discovered:
    """What the installed packages' metadata says: the usable plugins, and the names that
    more than one source claims (each with the one line a lookup of it raises)."""

    plugins: dict[str, Plugin]
    clashes: dict[str, str]


def discover(taken: Mapping[str, str]) -> Discovered:
    """Every installed plugin by model name. ``taken`` maps the names edgekd already
    has to their source; a plugin claiming one of them, or a name another plugin
    claims, makes that name a clash (naming both), not a plugin."""
    claims: dict[str, list[Plugin]] = {}
    for ep in entry_points(group=GROUP):
        claims.setdefault(ep.name, []).append(Plugin(ep))
    plugins: dict[str, Plugin] = {}
    clashes: dict[str, str] = {}
    for name, (first, *others) in claims.items():
        if name in taken:
            clashes[name] = (f"{first.describe()}: edgekd already has a model named '{name}' ({taken[name]}); "
                             "rename the entry point")
        elif others:
            clashes[name] = (f"{others[0].describe()}: the name '{name}' is also registered by "
                             f"{first.describe()}; uninstall one of them or rename an entry point")
        else:
            plugins[name] = first
    return Discovered(plugins, clashes)
