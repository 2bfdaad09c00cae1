"""Layers as pure functions: every layer is a ``Layer(init, apply)``.

>>> import jax, jdl.nn as nn
>>> model = nn.serial(nn.Flatten(), nn.Dense(32), nn.relu, nn.Dense(10))
>>> params, state = model.init(jax.random.key(0), (1, 28, 28, 1))
>>> logits, state = model.apply(params, state, jax.numpy.zeros((8, 28, 28, 1)))
>>> logits.shape
(8, 10)
"""

from jdl.nn import init
from jdl.nn.activations import (
    elu,
    gelu,
    identity,
    leaky_relu,
    leaky_relu_with,
    log_softmax,
    relu,
    relu6,
    selu,
    sigmoid,
    silu,
    softmax,
    softplus,
    swish,
    tanh,
)
from jdl.nn.combinators import serial
from jdl.nn.core import Layer, count_params, make_layer, output_shape, stateless
from jdl.nn.layers import AvgPool, BatchNorm, Conv, Dense, Dropout, Flatten, MaxPool

__all__ = [
    "init",
    "Layer",
    "make_layer",
    "stateless",
    "output_shape",
    "count_params",
    "serial",
    "Dense",
    "Conv",
    "MaxPool",
    "AvgPool",
    "Flatten",
    "Dropout",
    "BatchNorm",
    "relu",
    "relu6",
    "elu",
    "selu",
    "gelu",
    "silu",
    "swish",
    "softplus",
    "sigmoid",
    "tanh",
    "softmax",
    "log_softmax",
    "leaky_relu",
    "leaky_relu_with",
    "identity",
]
