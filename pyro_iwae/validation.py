"""Checks of the arguments a user passes, with errors that name the argument and what it takes."""

from __future__ import annotations

import numbers


def positive_integer(name: str, value: object) -> int:
    """
    ``value``, if it is a whole number of at least 1 (a count of particles, rows or passes).

    :raises ValueError: naming ``name`` and the value, for anything else (0, a float, a string, a bool).
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a whole number of at least 1, got {value!r}")
    return int(value)
