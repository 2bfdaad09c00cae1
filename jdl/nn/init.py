"""Weight initializers: ``init(key, shape, dtype=float32) -> array``.

Each is an initializer itself, called as the functions that
``jax.nn.initializers``' factories return are: pass ``init.lecun_normal``
(not ``init.lecun_normal()``), or ``jax.nn.initializers.lecun_normal()``.
Fans follow the usual
convention for the kernels jdl uses: a dense kernel ``(in, out)`` and a
convolution kernel in HWIO layout ``(*window, in, out)`` have
``fan_in = receptive_field * in`` and ``fan_out = receptive_field * out``.

Variance scaling draws with standard deviation ``sqrt(scale / fan)``:

* glorot / xavier: ``fan = (fan_in + fan_out) / 2``, scale 1
  (Glorot & Bengio, 2010, "Understanding the difficulty of training deep
  feedforward neural networks").
* he / kaiming: ``fan = fan_in``, scale 2 (He et al., 2015, "Delving deep into
  rectifiers").
* lecun: ``fan = fan_in``, scale 1 (LeCun et al., 1998, "Efficient BackProp").

The ``normal`` variants draw from a normal truncated at two standard
deviations, rescaled to keep the variance (as ``jax.nn.initializers`` and
flax do); the ``uniform`` variants draw from ``U(-limit, limit)`` with
``limit = sqrt(3 * scale / fan)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

Initializer = Callable[..., jax.Array]

# Standard deviation of a unit normal truncated to [-2, 2]; dividing by it
# gives the truncated draw unit variance.
_TRUNCATED_NORMAL_STDDEV = 0.87962566103423978

__all__ = [
    "Initializer",
    "compute_fans",
    "variance_scaling",
    "glorot_uniform",
    "glorot_normal",
    "xavier_uniform",
    "xavier_normal",
    "he_uniform",
    "he_normal",
    "kaiming_uniform",
    "kaiming_normal",
    "lecun_uniform",
    "lecun_normal",
    "zeros",
    "ones",
    "constant",
    "normal",
    "truncated_normal",
    "uniform",
]


def compute_fans(shape: Sequence[int]) -> tuple[float, float]:
    """Return ``(fan_in, fan_out)`` of a kernel ``(*receptive_field, in, out)``."""
    shape = tuple(shape)
    if len(shape) == 0:
        return 1.0, 1.0
    if len(shape) == 1:
        return float(shape[0]), float(shape[0])
    receptive_field = math.prod(shape[:-2])
    return float(shape[-2] * receptive_field), float(shape[-1] * receptive_field)


def variance_scaling(scale: float, mode: str, distribution: str) -> Initializer:
    """Draws with variance ``scale / fan`` where ``fan`` is chosen by ``mode``.

    ``mode`` is ``'fan_in'``, ``'fan_out'`` or ``'fan_avg'``; ``distribution``
    is ``'truncated_normal'``, ``'normal'`` or ``'uniform'``.
    """
    if mode not in ("fan_in", "fan_out", "fan_avg"):
        raise ValueError(f"variance_scaling: mode must be 'fan_in', 'fan_out' or 'fan_avg'; got {mode!r}")
    if distribution not in ("truncated_normal", "normal", "uniform"):
        raise ValueError(
            "variance_scaling: distribution must be 'truncated_normal', 'normal' or 'uniform'; "
            f"got {distribution!r}"
        )

    def init(key: jax.Array, shape: Sequence[int], dtype=jnp.float32) -> jax.Array:
        fan_in, fan_out = compute_fans(shape)
        fan = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2}[mode]
        variance = scale / fan
        if distribution == "truncated_normal":
            stddev = math.sqrt(variance) / _TRUNCATED_NORMAL_STDDEV
            return jax.random.truncated_normal(key, -2.0, 2.0, shape, dtype) * stddev
        if distribution == "normal":
            return jax.random.normal(key, shape, dtype) * math.sqrt(variance)
        limit = math.sqrt(3.0 * variance)
        return jax.random.uniform(key, shape, dtype, -limit, limit)

    return init


glorot_uniform = variance_scaling(1.0, "fan_avg", "uniform")
glorot_normal = variance_scaling(1.0, "fan_avg", "truncated_normal")
he_uniform = variance_scaling(2.0, "fan_in", "uniform")
he_normal = variance_scaling(2.0, "fan_in", "truncated_normal")
lecun_uniform = variance_scaling(1.0, "fan_in", "uniform")
lecun_normal = variance_scaling(1.0, "fan_in", "truncated_normal")
xavier_uniform, xavier_normal = glorot_uniform, glorot_normal
kaiming_uniform, kaiming_normal = he_uniform, he_normal


def constant(value: float) -> Initializer:
    """Every entry equal to ``value``."""

    def init(key: jax.Array, shape: Sequence[int], dtype=jnp.float32) -> jax.Array:
        del key
        return jnp.full(shape, value, dtype)

    return init


zeros = constant(0.0)
ones = constant(1.0)


def normal(stddev: float = 1e-2) -> Initializer:
    """Draws from ``N(0, stddev**2)``."""

    def init(key: jax.Array, shape: Sequence[int], dtype=jnp.float32) -> jax.Array:
        return jax.random.normal(key, shape, dtype) * stddev

    return init


def truncated_normal(stddev: float = 1e-2) -> Initializer:
    """Draws from ``N(0, stddev**2)`` truncated at two standard deviations.

    ``stddev`` is that of the untruncated normal, as in TensorFlow's
    ``truncated_normal_initializer`` (used by the DeepOBS test problems).
    """

    def init(key: jax.Array, shape: Sequence[int], dtype=jnp.float32) -> jax.Array:
        return jax.random.truncated_normal(key, -2.0, 2.0, shape, dtype) * stddev

    return init


def uniform(scale: float = 1e-2) -> Initializer:
    """Draws from ``U(0, scale)``, as ``jax.nn.initializers.uniform``."""

    def init(key: jax.Array, shape: Sequence[int], dtype=jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, 0.0, scale)

    return init
