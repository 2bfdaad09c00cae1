"""Activation functions: plain functions of one array, usable directly or as
layers in ``serial``.  They are ``jax.nn``'s own (``leaky_relu`` calls
``jax.nn.leaky_relu``, refusing its former use as a factory)."""

from __future__ import annotations

import functools

import jax

relu = jax.nn.relu
relu6 = jax.nn.relu6
elu = jax.nn.elu
selu = jax.nn.selu
gelu = jax.nn.gelu
silu = jax.nn.silu
swish = jax.nn.swish
softplus = jax.nn.softplus
sigmoid = jax.nn.sigmoid
tanh = jax.numpy.tanh
softmax = jax.nn.softmax
log_softmax = jax.nn.log_softmax


_NO_INPUT = object()


def leaky_relu(x: jax.Array = _NO_INPUT, negative_slope: float = 0.01) -> jax.Array:  # type: ignore[assignment]
    """``jax.nn.leaky_relu``: ``x`` where ``x >= 0``, ``negative_slope * x``
    elsewhere (Maas, Hannun & Ng, 2013).  For another slope in ``serial``:
    ``leaky_relu_with(0.1)``.  A Python number or no argument is refused:
    that was this function's use as a factory before (``leaky_relu(0.1)``)."""
    if x is _NO_INPUT or (isinstance(x, int | float) and not isinstance(x, bool)):
        raise TypeError("leaky_relu(x) is the activation itself (slope 0.01); for a layer with another slope "
                        f"use leaky_relu_with(slope){'' if x is _NO_INPUT else f', e.g. leaky_relu_with({x!r})'}")
    return jax.nn.leaky_relu(x, negative_slope)


def leaky_relu_with(negative_slope: float):
    """The activation ``x -> where(x >= 0, x, negative_slope * x)``
    (``jax.nn.leaky_relu`` with that slope), e.g. ``serial(Dense(64),
    leaky_relu_with(0.1))``."""
    fn = functools.partial(jax.nn.leaky_relu, negative_slope=negative_slope)
    fn.__name__ = "leaky_relu"  # type: ignore[attr-defined]
    return fn


def identity(x: jax.Array) -> jax.Array:
    """``x`` unchanged."""
    return x
