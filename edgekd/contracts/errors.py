"""The one error a contract raises: a file of another format version, or one lacking a key.

Each is also the error its stage raised before the contracts existed (a student.pt is a
CheckpointError, a manifest a BundleError, a split a DataError), so callers that catch those
keep working; all exit 2 with one line, like every EdgeKDError.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from edgekd.errors import BundleError, CheckpointError, DataError, EdgeKDError


class ContractError(EdgeKDError):
    """A file handed between stages that this edgekd cannot read as its contract says."""


class StudentCheckpointError(ContractError, CheckpointError):
    """student.pt: not edgekd's student format, another version of it, or a required key missing."""


class ManifestError(ContractError, BundleError):
    """manifest.json: not a bundle manifest, another schema_version, or a required key missing."""


class SplitInfoError(ContractError, DataError):
    """A recorded data split (split.json, student.pt's and the manifest's copies) lacking a key."""


def require_keys(raw: Mapping[str, Any], keys: Iterable[str], error: type[ContractError], message: str) -> None:
    """Raise `error(message.format(missing=...))` when any of `keys` is absent from `raw`."""
    missing = [k for k in keys if k not in raw]
    if missing:
        raise error(message.format(missing=", ".join(missing)))


def newer_hint(found: Any, ours: int) -> str:
    """What to do about a file of version `found` when this edgekd reads version `ours`."""
    return ": upgrade edgekd" if isinstance(found, int) and not isinstance(found, bool) and found > ours else ""
