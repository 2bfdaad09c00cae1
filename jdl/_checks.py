"""Checks of arguments shared by jdl's modules (the standard library only, so
``nn``, ``losses`` and ``optim`` still depend on jax alone)."""

from __future__ import annotations

import numbers


def is_int(value) -> bool:
    """A Python or NumPy integer, not a bool (sizes, counts, steps, seeds)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def registry_key(name: str) -> str:
    """``name`` as jdl's registries of optimizers and models key it: without
    surrounding spaces, in lower case, ``-`` as ``_`` ('Adam-W ' -> 'adam_w')."""
    return name.strip().lower().replace("-", "_")


def scalar(value):
    """The number a 0-d array (NumPy's, a concrete JAX one) holds; anything
    else as it is.  A traced 0-d value has none: its ``item`` raises."""
    if getattr(value, "shape", None) == () and callable(getattr(value, "item", None)):
        return value.item()
    return value


def is_real(value) -> bool:
    """A real number: Python's or NumPy's, or a 0-d array holding one (a
    concrete JAX scalar too); not a bool, a string or a complex number
    (rates, fractions, a loss's hyperparameters).  A traced value is not one
    (callers that accept traced hyperparameters let them through first)."""
    try:
        value = scalar(value)
    except Exception:  # noqa: BLE001 - a tracer: no concrete value
        return False
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_seed(name: str, value) -> int:
    """A seed of ``np.random.default_rng([seed, ...])``: an integer in
    [0, 2**32), returned as an int.  A larger one is read as several words,
    so ``[2**32 + s, e]`` would be ``[s, 1, e]``: another seed's order."""
    if not is_int(value) or not 0 <= value < 2**32:
        raise ValueError(f"{name} must be an integer in [0, 2**32); got {value!r}")
    return int(value)


def check_flag(name: str, value, allow_none: bool = False) -> bool | None:
    """A switch (``nesterov``, ``from_logits``, ``shuffle``): True or False
    (Python's, NumPy's, or a 0-d boolean array holding one; or None where
    ``allow_none``), returned as a bool; a ValueError for anything else, as
    a string such as 'no' would otherwise count as True.  A traced boolean
    raises JAX's own error: a switch must be known when the program is built."""
    if value is None and allow_none:
        return None
    numpy_bool = type(value).__module__ == "numpy" and type(value).__name__ in ("bool", "bool_")
    boolean_array = getattr(value, "shape", None) == () and str(getattr(value, "dtype", "")) == "bool"
    if not (isinstance(value, bool) or numpy_bool or boolean_array):
        expected = "True, False or None" if allow_none else "True or False"
        raise ValueError(f"{name} must be {expected}; got {value!r}")
    return bool(value)
