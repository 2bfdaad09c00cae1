"""Named model presets built from ``jdl.nn``.

Each returns a ``Layer`` whose output is a vector of logits per example.

* ``mlp``: a multilayer perceptron.
* ``cnn``: the CNN of the flax ``examples/mnist`` tutorial (824,458
  parameters on 28x28x1 inputs).
* ``fmnist_2c2d`` / ``mnist_2c2d``: the DeepOBS two-conv two-dense test problem
  (Schneider, Balles & Hennig, 2019, "DeepOBS: A Deep Learning Optimizer
  Benchmark Suite"), with its initialization: truncated normal (std 0.05)
  weights and 0.05 biases.
* ``cifar10_3c3d`` / ``cifar100_3c3d``: the DeepOBS three-conv three-dense test
  problem, Xavier (Glorot uniform) weights and zero biases.  DeepOBS adds L2
  weight decay 0.002 on the weights: that belongs to the optimizer or loss,
  not the model (e.g. ``jdl.optim.add_decayed_weights``).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence

from jdl import nn
from jdl._checks import registry_key
from jdl.nn import init


def mlp(
    num_classes: int = 10,
    hidden: Sequence[int] = (128,),
    activation: Callable = nn.relu,
    dtype=None,
) -> nn.Layer:
    """Flatten, then ``Dense(h), activation`` for each ``h`` in ``hidden``,
    then ``Dense(num_classes)``.  ``dtype``: the layers' computation dtype
    (``jnp.bfloat16``: mixed precision, float32 parameters; see ``nn.Dense``)."""
    layers: list = [nn.Flatten()]
    for width in hidden:
        layers += [nn.Dense(width, dtype=dtype), activation]
    layers.append(nn.Dense(num_classes, dtype=dtype))
    return nn.serial(*layers)


def cnn(num_classes: int = 10, conv_method: str = "auto", dtype=None) -> nn.Layer:
    """The flax examples/mnist CNN: conv32 3x3, relu, avgpool 2x2; conv64 3x3,
    relu, avgpool 2x2; dense256, relu; dense(num_classes).  flax's default
    initializers (LeCun normal weights, zero biases).  ``conv_method``: see
    ``nn.Conv``; ``dtype``: the layers' computation dtype (``jnp.bfloat16``:
    mixed precision, float32 parameters)."""
    return nn.serial(
        nn.Conv(32, (3, 3), method=conv_method, dtype=dtype), nn.relu, nn.AvgPool((2, 2), strides=(2, 2)),
        nn.Conv(64, (3, 3), method=conv_method, dtype=dtype), nn.relu, nn.AvgPool((2, 2), strides=(2, 2)),
        nn.Flatten(),
        nn.Dense(256, dtype=dtype), nn.relu,
        nn.Dense(num_classes, dtype=dtype),
    )  # fmt: skip


def fmnist_2c2d(num_classes: int = 10, conv_method: str = "auto", dtype=None) -> nn.Layer:
    """DeepOBS 2c2d: conv32 5x5 same, relu, maxpool 2x2 stride 2 same; conv64
    5x5 same, relu, maxpool 2x2 stride 2 same; dense1024, relu;
    dense(num_classes).  Weights truncated normal (std 0.05), biases 0.05.
    ``conv_method``: see ``nn.Conv``; ``dtype``: the layers' computation dtype
    (``jnp.bfloat16``: mixed precision, float32 parameters)."""
    w, b = init.truncated_normal(0.05), init.constant(0.05)
    return nn.serial(
        nn.Conv(32, (5, 5), padding="SAME", w_init=w, b_init=b, method=conv_method, dtype=dtype), nn.relu,
        nn.MaxPool((2, 2), strides=(2, 2), padding="SAME"),
        nn.Conv(64, (5, 5), padding="SAME", w_init=w, b_init=b, method=conv_method, dtype=dtype), nn.relu,
        nn.MaxPool((2, 2), strides=(2, 2), padding="SAME"),
        nn.Flatten(),
        nn.Dense(1024, w_init=w, b_init=b, dtype=dtype), nn.relu,
        nn.Dense(num_classes, w_init=w, b_init=b, dtype=dtype),
    )  # fmt: skip


def cifar10_3c3d(num_classes: int = 10, conv_method: str = "auto", dtype=None) -> nn.Layer:
    """DeepOBS 3c3d: conv64 5x5 valid, relu, maxpool 3x3 stride 2 same; conv96
    3x3 valid, relu, maxpool 3x3/2 same; conv128 3x3 same, relu, maxpool 3x3/2
    same; dense512, relu; dense256, relu; dense(num_classes).  Glorot normal
    (truncated) convolution kernels and Glorot uniform dense weights, zero
    biases, as DeepOBS's ``_3c3d`` (``glorot_normal`` and ``glorot_uniform``
    kernel initializers).  ``conv_method``: see ``nn.Conv``; ``dtype``: the
    layers' computation dtype (``jnp.bfloat16``: mixed precision, float32
    parameters)."""
    c, w = init.glorot_normal, init.glorot_uniform
    return nn.serial(
        nn.Conv(64, (5, 5), padding="VALID", w_init=c, method=conv_method, dtype=dtype), nn.relu,
        nn.MaxPool((3, 3), strides=(2, 2), padding="SAME"),
        nn.Conv(96, (3, 3), padding="VALID", w_init=c, method=conv_method, dtype=dtype), nn.relu,
        nn.MaxPool((3, 3), strides=(2, 2), padding="SAME"),
        nn.Conv(128, (3, 3), padding="SAME", w_init=c, method=conv_method, dtype=dtype), nn.relu,
        nn.MaxPool((3, 3), strides=(2, 2), padding="SAME"),
        nn.Flatten(),
        nn.Dense(512, w_init=w, dtype=dtype), nn.relu,
        nn.Dense(256, w_init=w, dtype=dtype), nn.relu,
        nn.Dense(num_classes, w_init=w, dtype=dtype),
    )  # fmt: skip


def cifar100_3c3d(num_classes: int = 100, conv_method: str = "auto", dtype=None) -> nn.Layer:
    """DeepOBS cifar100_3c3d: ``cifar10_3c3d`` with 100 outputs."""
    return cifar10_3c3d(num_classes, conv_method, dtype)


MODELS: dict[str, Callable[..., nn.Layer]] = {
    "mlp": mlp,
    "cnn": cnn,
    "fmnist_2c2d": fmnist_2c2d,
    "mnist_2c2d": fmnist_2c2d,
    "cifar10_3c3d": cifar10_3c3d,
    "cifar100_3c3d": cifar100_3c3d,
}


def names() -> list[str]:
    """The names ``get`` accepts."""
    return sorted(MODELS)


def get(name: str, num_classes: int | None = None, **kwargs) -> nn.Layer:
    """The preset called ``name`` (one of ``names()``, any case) with
    ``num_classes`` outputs (None: the preset's own, 100 for
    ``cifar100_3c3d`` and 10 for the others)."""
    key = registry_key(name) if isinstance(name, str) else None
    if key not in MODELS:
        close = difflib.get_close_matches(key, MODELS, n=3) if key else []
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise ValueError(f"unknown model {name!r}; expected one of {', '.join(names())}.{hint}")
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    return MODELS[key](**kwargs)
