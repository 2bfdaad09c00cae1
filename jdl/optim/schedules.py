"""Learning-rate schedules: functions `step -> value`.

A schedule is any callable from the step count (0 at the first update, an
int32 scalar under `jit`) to a scalar; every `learning_rate` argument in
`jdl.optim` accepts one.  These constructors match optax's schedules of the
same name (without the `_schedule` suffix) value for value; unlike optax,
degenerate arguments (no steps, a zero decay rate) raise `ValueError`
instead of quietly giving a constant.  Values may be traced arrays, so a
schedule's peak can be `vmap`ped over.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp

from jdl._checks import is_int
from jdl.optim import _validate
from jdl.optim.base import Schedule


def _check_steps(name: str, value: int, *, positive: bool) -> None:
    if not is_int(value):
        raise ValueError(f"{name} must be an int, got {value!r}")
    if value < (1 if positive else 0):
        raise ValueError(f"{name} must be {'> 0' if positive else '>= 0'}, got {value}")


def constant(value: jax.typing.ArrayLike) -> Schedule:
    """`lr(t) = value`."""
    _validate.check_schedule_value("value", value)
    return lambda count: value


def exponential_decay(
    init_value: jax.typing.ArrayLike,
    transition_steps: int,
    decay_rate: float,
    transition_begin: int = 0,
    staircase: bool = False,
    end_value: jax.typing.ArrayLike | None = None,
) -> Schedule:
    """`lr(t) = init_value * decay_rate ** ((t - transition_begin) / transition_steps)`.

    Constant at `init_value` until `transition_begin`; with `staircase` the
    exponent is floored (decay in steps); `end_value` bounds the result
    (below for a decay, above for a growth).
    """
    _validate.check_schedule_value("init_value", init_value)
    _check_steps("transition_steps", transition_steps, positive=True)
    _check_steps("transition_begin", transition_begin, positive=False)
    _validate.check_range("decay_rate", decay_rate, 0.0, include_low=False)
    staircase = _validate.check_flag("staircase", staircase)
    if end_value is not None:
        _validate.check_number("end_value", end_value)

    def schedule(count):
        decreased_count = count - transition_begin
        p = decreased_count / transition_steps
        if staircase:
            p = jnp.floor(p)
        value = jnp.where(decreased_count <= 0, init_value, init_value * jnp.power(decay_rate, p))
        if end_value is None:
            return value
        # a bound below for a decay, above for a growth; chosen by a select, so decay_rate may be traced
        return jnp.where(decay_rate < 1.0, jnp.maximum(value, end_value), jnp.minimum(value, end_value))

    return schedule


def cosine_decay(
    init_value: jax.typing.ArrayLike,
    decay_steps: int,
    alpha: jax.typing.ArrayLike = 0.0,
    exponent: jax.typing.ArrayLike = 1.0,
) -> Schedule:
    """Cosine annealing from `init_value` to `alpha * init_value`.

        lr(t) = init_value * ((1 - alpha) * c(t) ** exponent + alpha),
        c(t)  = (1 + cos(pi * min(t, decay_steps) / decay_steps)) / 2

    (`exponent` > 0.)  Loshchilov and Hutter, "SGDR: Stochastic Gradient Descent with Warm
    Restarts", ICLR 2017.
    """
    _validate.check_schedule_value("init_value", init_value)
    _check_steps("decay_steps", decay_steps, positive=True)
    _validate.check_range("alpha", alpha, 0.0, 1.0)
    _validate.check_range("exponent", exponent, 0.0, include_low=False)
    return _cosine(init_value, decay_steps, alpha, exponent)


def _cosine(init_value, decay_steps: int, alpha, exponent) -> Schedule:
    """`cosine_decay` without the checks (`alpha` may be traced)."""
    steps = float(decay_steps)  # a float keeps large step counts exact

    def schedule(count):
        count = jnp.minimum(count, steps)
        cosine = 0.5 * (1 + jnp.cos(jnp.pi * count / steps))
        return init_value * ((1 - alpha) * cosine**exponent + alpha)

    return schedule


def warmup_cosine_decay(
    init_value: jax.typing.ArrayLike,
    peak_value: jax.typing.ArrayLike,
    warmup_steps: int,
    decay_steps: int,
    end_value: jax.typing.ArrayLike = 0.0,
    exponent: jax.typing.ArrayLike = 1.0,
) -> Schedule:
    """Linear warm-up from `init_value` to `peak_value`, then cosine decay.

    For `t < warmup_steps`: `lr(t) = init_value + (peak_value - init_value)
    * t / warmup_steps`; after, `cosine_decay(peak_value, decay_steps -
    warmup_steps, alpha=end_value / peak_value)` at `t - warmup_steps`.
    `decay_steps` counts the warm-up too.  Goyal et al., "Accurate, Large
    Minibatch SGD", arXiv:1706.02677, 2017 (warm-up); Loshchilov and Hutter,
    ICLR 2017 (cosine).
    """
    _validate.check_schedule_value("init_value", init_value)
    _validate.check_schedule_value("peak_value", peak_value)
    _validate.check_number("end_value", end_value)
    _validate.check_range("exponent", exponent, 0.0, include_low=False)
    _check_steps("warmup_steps", warmup_steps, positive=False)
    _check_steps("decay_steps", decay_steps, positive=True)
    if decay_steps <= warmup_steps:
        raise ValueError(f"decay_steps ({decay_steps}) must exceed warmup_steps ({warmup_steps})")
    if _validate.is_traced(peak_value):
        alpha = jnp.where(peak_value == 0.0, 0.0, end_value / peak_value)
    else:
        alpha = 0.0 if peak_value == 0.0 else end_value / peak_value
    decay = _cosine(peak_value, decay_steps - warmup_steps, alpha, exponent)

    def warmup(count):
        if warmup_steps == 0:
            return init_value
        frac = 1 - jnp.clip(count, 0, warmup_steps) / warmup_steps
        return (init_value - peak_value) * (frac**1) + peak_value

    def schedule(count):
        return jnp.where(count < warmup_steps, warmup(count), decay(count - warmup_steps))

    return schedule


def piecewise_constant(
    init_value: jax.typing.ArrayLike,
    boundaries_and_scales: dict[int, float] | Sequence[tuple[int, float]] | None = None,
) -> Schedule:
    """Multiply the value by `scale` from step `boundary` on, for each pair.

    `piecewise_constant(0.1, {100: 0.1, 200: 0.5})` gives 0.1 for steps
    0-99, 0.01 for 100-199 and 0.005 from 200 on (optax's
    `piecewise_constant_schedule`); the pairs may also be given as a
    sequence of `(boundary, scale)`.
    """
    _validate.check_schedule_value("init_value", init_value)
    given = boundaries_and_scales or {}
    if isinstance(given, Mapping):
        given = given.items()
    try:
        pairs = sorted([(boundary, factor) for boundary, factor in given], key=lambda pair: pair[0])
    except (TypeError, ValueError) as error:
        raise ValueError(
            "boundaries_and_scales must be a dict {boundary: scale} or (boundary, scale) pairs; "
            f"got {boundaries_and_scales!r}"
        ) from error
    for boundary, factor in pairs:
        _check_steps("boundary", boundary, positive=False)
        _validate.check_range("scale", factor, 0.0)

    def schedule(count):
        value = init_value
        for boundary, factor in pairs:
            indicator = jnp.maximum(0.0, jnp.sign(boundary - count))
            value = value * indicator + (1 - indicator) * factor * value
        return value

    return schedule


__all__ = [
    "constant",
    "cosine_decay",
    "exponential_decay",
    "piecewise_constant",
    "warmup_cosine_decay",
]
