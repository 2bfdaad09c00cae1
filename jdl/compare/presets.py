"""The optimizers a comparison can name, and how each is fed.

The eight classic presets differ in two things only: the update rule and
the batch it sees.  ``gd``, ``sgd`` and ``minibatch`` are one rule (plain
gradient descent) fed the whole training set, one example, or a mini-batch
per step.  Any other ``jdl.optim`` name (``adamw``, ``nesterov``, ``nadam``,
``amsgrad``, ``adamax``, ``lion``) and any optax optimizer (``optax.lamb``)
can be named too.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import NamedTuple

from jdl import optim
from jdl._checks import registry_key

FULL_BATCH = -1  # "the whole training set"


class Preset(NamedTuple):
    """How to build one optimizer for a learning rate, and the batch it sees."""

    name: str
    make: Callable  # learning_rate -> GradientTransformation (the rate may be a traced array)
    learning_rate: float
    batch_size: int | None  # FULL_BATCH, a fixed size, or None for the comparison's batch size


PRESETS: dict[str, Preset] = {
    "gd": Preset("gd", optim.gd, 0.5, FULL_BATCH),
    "sgd": Preset("sgd", optim.gd, 0.01, 1),
    "minibatch": Preset("minibatch", optim.gd, 0.1, None),
    "momentum": Preset("momentum", lambda lr: optim.momentum(lr, momentum=0.9), 0.01, None),
    "adagrad": Preset("adagrad", optim.adagrad, 0.05, None),
    "rmsprop": Preset("rmsprop", optim.rmsprop, 1e-3, None),
    "adadelta": Preset("adadelta", optim.adadelta, 1.0, None),
    "adam": Preset("adam", optim.adam, 1e-3, None),
}
CLASSIC = tuple(PRESETS)


def _optax_preset(name: str) -> Preset:
    """``optax.<attribute>``, checked to build a gradient transformation from a ``learning_rate``."""
    import optax

    attribute = name.split(".", 1)[1]
    build = getattr(optax, attribute, None)
    if not callable(build):
        raise ValueError(f"unknown optimizer {name!r}: optax has no optimizer {attribute!r}")
    try:
        built = build(learning_rate=1e-3)
    except TypeError as error:
        raise ValueError(f"{name!r} is not an optax optimizer taking a learning_rate: {error}") from error
    if not isinstance(built, optax.GradientTransformation):
        raise ValueError(f"{name!r} is not an optax optimizer: it built a {type(built).__name__}, "
                         "not a GradientTransformation")  # fmt: skip
    _check_plain_update(name, built)
    return Preset(name, lambda lr: build(learning_rate=lr), 1e-3, None)


def _check_plain_update(name: str, built) -> None:
    """A ValueError unless ``built.update(grads, state, params)`` is all a step
    needs (``optax.lbfgs`` also wants the loss, its gradient and function),
    tried on shapes only."""
    import jax
    import jax.numpy as jnp

    params = {"w": jax.ShapeDtypeStruct((2,), jnp.float32)}
    try:
        jax.eval_shape(lambda p: built.update(p, built.init(p), p), params)
    except TypeError as error:
        raise ValueError(f"{name!r} cannot be trained by jdl: its update needs more than the gradients, its state "
                         f"and the parameters ({error})") from error


def preset(name: str) -> Preset:
    """The preset called ``name``: a classic preset or a ``jdl.optim`` name
    (either in any case, ``-`` for ``_``), or ``optax.<name>``."""
    if not isinstance(name, str):
        raise TypeError(
            f"optimizers are named, e.g. 'adam' or 'optax.adam' (learning rates go in learning_rates=); "
            f"got a {type(name).__name__}"
        )
    if name.startswith("optax."):
        return _optax_preset(name)
    key = registry_key(name)
    if key in PRESETS:
        return PRESETS[key]
    if key in optim.OPTIMIZERS:
        return Preset(key, lambda lr: optim.get(key, learning_rate=lr), optim.DEFAULT_LEARNING_RATES[key], None)
    valid = sorted(set(PRESETS) | set(optim.OPTIMIZERS))
    close = difflib.get_close_matches(key, valid, n=3)
    hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
    raise ValueError(
        f"unknown optimizer {name!r}; expected one of {', '.join(valid)}, or optax.<name> (e.g. optax.lamb).{hint}"
    )
