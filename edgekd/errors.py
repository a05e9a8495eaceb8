"""User-facing errors.

Anything the user can fix (a recipe, data, checkpoint, ONNX file, bundle or flag)
raises an EdgeKDError subclass with a one-line message that names what is wrong
and what is allowed. The CLI turns it into that line on stderr and exit code 2,
never a traceback (unless --debug). A check of the result that fails on good input
(parity, the INT8 search, a lost training peer) is a FailedCheck, an EdgeKDError
with exit code 1.
"""

from __future__ import annotations


def first_line(exc: BaseException, limit: int | None = None) -> str:
    """The first non-empty line of an exception's message (its class name if it has none),
    cut to `limit` characters: how a library's multi-line error becomes one line of ours."""
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    return line if limit is None else line[:limit]


class EdgeKDError(Exception):
    """A problem with the user's input. Exit code 2."""

    exit_code = 2


class RecipeError(EdgeKDError):
    pass


class DataError(EdgeKDError):
    pass


class ModelError(EdgeKDError):
    pass


class CheckpointError(EdgeKDError):
    pass


class ExportError(EdgeKDError):
    pass


class BundleError(EdgeKDError):
    pass


class MissingDependencyError(EdgeKDError):
    """An optional package (torch, onnxruntime, tensorrt) or a GPU is missing."""


class FailedCheck(EdgeKDError):
    """The input was fine, but a check of the result failed. Exit code 1.

    An EdgeKDError too (the CLI prints every one as one line and exits with its
    exit_code); a caller that must tell a failed result from bad input catches this."""

    exit_code = 1


class ParityError(FailedCheck):
    """Export produced a model that disagrees with PyTorch: not the user's input."""


class PeerLostError(FailedCheck):
    """Under torchrun, another training process died (killed, pre-empted, crashed):
    not the user's input; the run resumes from its last checkpoint."""


class Int8SearchError(FailedCheck):
    """`edgekd export --int8-search` found no INT8 file that passes the recipe's gate: the input
    was fine, the model does not survive INT8 within the gate. The bundle is written without
    that file (every candidate's figures in its manifest)."""
