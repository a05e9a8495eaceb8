"""How numbers are written for people, the same in every table and message. Torch-free."""

from __future__ import annotations


def pct(x: float | None) -> str:
    """A fraction as a percentage with two decimals ('n/a' for a missing value)."""
    return "n/a" if x is None else f"{100 * x:.2f}%"
