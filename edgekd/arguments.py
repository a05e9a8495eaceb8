"""Argument types of the Python API, checked before any work: a wrong type is one typed line.

Python's own TypeErrors ("'int' object is not callable" an epoch into a run, "expected str,
bytes or os.PathLike object, not int") say neither which argument was wrong nor what it
takes, and some surface only after minutes of training. `checked(**kinds)` wraps a public
function: it binds the call to the signature (a missing or unknown argument is an
ArgumentError too) and checks each argument given against its Kind, raising the Kind's
EdgeKDError subclass with "NAME must be WHAT, not a TYPE". Values (ranges, choices) are
checked by the functions themselves, after the types. Torch-free: a Kind that takes an
nn.Module looks torch up only if it is already imported (a module passed in means it is).
"""

from __future__ import annotations

import functools
import inspect
import os
import sys
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from edgekd.errors import ArgumentError, EdgeKDError


@dataclass(frozen=True)
class Kind:
    """What one argument may be: `what` for the message, `accepts` the test, `error` the class raised."""

    what: str
    accepts: Callable[[Any], bool]
    error: type[EdgeKDError] = ArgumentError
    strings: bool = False  # a list of strings: a single string gets its own message

    def or_none(self) -> "Kind":
        return Kind(f"{self.what} or None", lambda v: v is None or self.accepts(v), self.error, self.strings)

    def raising(self, error: type[EdgeKDError]) -> "Kind":
        return Kind(self.what, self.accepts, error, self.strings)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_module(v: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(v, torch.nn.Module)


def _is_strings(v: Any) -> bool:
    return isinstance(v, (list, tuple)) and all(isinstance(x, str) for x in v)


PATH = Kind("a path (str or os.PathLike)", lambda v: isinstance(v, (str, os.PathLike)))
BOOL = Kind("True or False", lambda v: isinstance(v, bool))
INT = Kind("an integer", _is_int)
NUMBER = Kind("a number", _is_number)
TEXT = Kind("a string", lambda v: isinstance(v, str))
CALLABLE = Kind("a callable", callable)
STRINGS = Kind("a list of strings", _is_strings, strings=True)
MODULE = Kind("a torch.nn.Module", _is_module)
MAPPING_OR_STRINGS = Kind("a list of KEY=VALUE strings or a dict",
                          lambda v: isinstance(v, (list, tuple, Mapping, str)))  # each item: the function's check


def check_argument(function: str, name: str, value: Any, kind: Kind) -> None:
    if kind.accepts(value):
        return
    if kind.strings and isinstance(value, str):
        raise kind.error(f"{name}={value!r} is one string; pass a list such as {value.split(',')!r}")
    if kind.strings and isinstance(value, (list, tuple)):
        bad = next(x for x in value if not isinstance(x, str))
        raise kind.error(f"{name} must be {kind.what}; {bad!r} is a {type(bad).__name__}")
    raise kind.error(f"{name} must be {kind.what}, not a {type(value).__name__}")


def checked(**kinds: Kind) -> Callable[[Callable], Callable]:
    """Check the named arguments of every call against their Kinds before the function runs."""

    def wrap(fn: Callable) -> Callable:
        signature = inspect.signature(fn)
        unknown = set(kinds) - set(signature.parameters)
        if unknown:  # a typo here would silently check nothing
            raise ValueError(f"{fn.__qualname__} has no parameter {sorted(unknown)}")

        @functools.wraps(fn)
        def call(*args: Any, **kwargs: Any) -> Any:
            try:
                bound = signature.bind(*args, **kwargs)
            except TypeError as e:  # a missing argument, or one the function does not take
                raise ArgumentError(f"{fn.__qualname__}(): {e}") from None
            for name, value in bound.arguments.items():
                if name in kinds:
                    check_argument(fn.__qualname__, name, value, kinds[name])
            return fn(*args, **kwargs)

        call.__signature__ = signature  # inspect (and the API reference) see the real parameters
        return call

    return wrap
