"""Checks of hyperparameters at construction time.

Only concrete values are checked: a hyperparameter that is a JAX tracer (for
instance a learning rate under `jax.vmap` or `jax.jit`) is accepted as it is,
so one compiled program can run many hyperparameter settings.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import numpy as np

from jdl._checks import check_flag as check_flag  # re-exported: switches are checked as the loader's
from jdl._checks import is_real


def is_traced(value: Any) -> bool:
    """Whether `value` is an abstract JAX value (under `jit`, `vmap`, `grad`)."""
    if not isinstance(value, jax.Array):
        return False
    try:
        np.asarray(value)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return True
    return False


def _concrete_scalar(name: str, value: Any) -> float | None:
    """`value` as a float, None when traced; ValueError unless a real scalar."""
    if is_traced(value):
        return None
    if not is_real(value):
        raise ValueError(f"{name} must be a real number, got {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return number


def check_number(name: str, value: Any) -> Any:
    """Check that `value` is a finite real scalar (or traced); return it."""
    _concrete_scalar(name, value)
    return value


def check_range(
    name: str,
    value: Any,
    low: float,
    high: float = math.inf,
    *,
    include_low: bool = True,
    include_high: bool = True,
) -> Any:
    """Check `low <= value <= high` (open ends unless `include_*`); return it."""
    number = _concrete_scalar(name, value)
    if number is None:
        return value
    above = low <= number if include_low else low < number
    below = number <= high if include_high else number < high
    if not (above and below):
        lower, upper = "[" if include_low else "(", "]" if include_high else ")"
        if math.isfinite(high):
            interval = f"in {lower}{low:g}, {high:g}{upper}"
        else:
            interval = f"{'>=' if include_low else '>'} {low:g}"
        raise ValueError(f"{name} must be {interval}, got {value!r}")
    return value


def check_schedule_value(name: str, value: Any) -> Any:
    """A schedule's value (start, peak, boundary value): a finite real number
    or a traced one, not itself a schedule."""
    if callable(value):
        raise ValueError(f"{name} must be a number, got the callable {value!r}: a schedule's values are numbers")
    return check_number(name, value)


def check_denominator_eps(value: Any, floor: Any = 0.0, floor_name: str | None = None) -> Any:
    """An ``eps`` added to a denominator that is 0 where the gradient is: >= 0,
    and > 0 unless ``floor`` (``floor_name``, another term of the
    denominator) is > 0, since with both 0 a coordinate whose gradient is 0
    is updated by 0/0 = NaN (optax accepts it and gives the NaN)."""
    check_range("eps", value, 0.0)
    other = 0.0 if floor_name is None else _concrete_scalar(floor_name, floor)
    if _concrete_scalar("eps", value) == 0.0 and other == 0.0:
        unless = "" if floor_name is None else f" when {floor_name} is 0"
        raise ValueError(f"eps must be > 0{unless}, got {value!r}: with 0, a coordinate whose gradient is 0 "
                         "is updated by 0/0 = NaN")  # fmt: skip
    return value


def check_beta(name: str, value: Any) -> Any:
    """An exponential-averaging rate of Adam: in [0, 1)."""
    return check_range(name, value, 0.0, 1.0, include_high=False)


def check_learning_rate(learning_rate: Any, name: str = "learning_rate") -> Any:
    """A learning rate is a finite real number, a (traced) scalar or a callable."""
    if callable(learning_rate):
        return learning_rate
    if is_real(learning_rate) or is_traced(learning_rate):
        return check_number(name, learning_rate)  # a ValueError for nan or inf says "must be finite"
    raise ValueError(f"{name} must be a number or a schedule (step -> value), got {learning_rate!r}")
