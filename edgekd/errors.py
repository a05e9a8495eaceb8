"""User-facing errors: every error edgekd raises on purpose is an EdgeKDError.

Anything the user can fix (a recipe, data, checkpoint, ONNX file, bundle, flag or
API argument) raises an EdgeKDError subclass with a one-line message that names
what is wrong and what is allowed; exit_code 2. A check of the result that fails on
good input (parity, the INT8 search, a lost training peer, a validation gate) is a
FailedCheck, an EdgeKDError with exit_code 1. The CLI prints the message as one line
on stderr and exits with exit_code, never a traceback (unless --debug); the Python
API (edgekd.api) raises it as it is.
"""

from __future__ import annotations


def first_line(exc: BaseException, limit: int | None = None) -> str:
    """The first non-empty line of an exception's message (its class name if it has none),
    cut to `limit` characters: how a library's multi-line error becomes one line of ours."""
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    return line if limit is None else line[:limit]


class EdgeKDError(Exception):
    """The base of edgekd's errors. Without a subclass: a problem with the user's input. Exit code 2."""

    exit_code = 2


class Problems(EdgeKDError):
    """Several independent problems found by one check (both nets' checkpoints, every variant of a
    comparison): the message has one line per problem, and the CLI prints each as its own line.
    `problems` holds the errors themselves; the exit code is the highest of theirs."""

    def __init__(self, problems: list[EdgeKDError]):
        self.problems = list(problems)
        self.exit_code = max(p.exit_code for p in self.problems)
        super().__init__("\n".join(first_line(p) for p in self.problems))


def raise_all(problems: list[EdgeKDError]) -> None:
    """Nothing for no problem, the error itself for one, Problems for several."""
    if len(problems) == 1:
        raise problems[0]
    if problems:
        raise Problems(problems)


class ArgumentError(EdgeKDError, TypeError):
    """An argument of the Python API of the wrong type, or a call with a missing or unknown
    argument (edgekd.arguments). A TypeError too, as Python's own would be."""


class RecipeError(EdgeKDError):
    """A recipe or an override: unreadable or not YAML, an unknown key, a wrong type or value."""


class DataError(EdgeKDError):
    """Images or a data folder: missing, empty, corrupt, or classes that do not match the model's."""


class ModelError(EdgeKDError):
    """A model: an unknown arch or option, or a module passed in that does not fit the data."""


class CheckpointError(EdgeKDError):
    """A checkpoint or run file: missing, truncated, unsafe, or not fitting the model or recipe."""


class ExportError(EdgeKDError):
    """An export setting (format, calibration) or a file that cannot be exported."""


class BundleError(EdgeKDError):
    """A bundle: no manifest, a file whose sha256 or shape disagrees with it, a format it lacks."""


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


class GateError(FailedCheck):
    """A validated bundle failed its gate (Report.raise_for_gate). The command `edgekd validate`
    prints the verdict and exits 1 instead of raising it."""
