"""Checks of arguments shared by jdl's modules (the standard library only, so
``nn``, ``losses`` and ``optim`` still depend on jax alone)."""

from __future__ import annotations

import numbers


def is_int(value) -> bool:
    """A Python or NumPy integer, not a bool (sizes, counts, steps, seeds)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)
