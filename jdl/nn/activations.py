"""Activation functions: plain functions of one array, usable directly or as
layers in ``serial``.  They are ``jax.nn``'s own."""

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


leaky_relu = jax.nn.leaky_relu  # x -> max(x, 0.01 x); another slope: leaky_relu_with(0.1)


def leaky_relu_with(negative_slope: float):
    """The activation ``x -> max(x, negative_slope * x)`` (``jax.nn.leaky_relu``
    with that slope), e.g. ``serial(Dense(64), leaky_relu_with(0.1))``."""
    fn = functools.partial(jax.nn.leaky_relu, negative_slope=negative_slope)
    fn.__name__ = "leaky_relu"  # type: ignore[attr-defined]
    return fn


def identity(x: jax.Array) -> jax.Array:
    """``x`` unchanged."""
    return x
