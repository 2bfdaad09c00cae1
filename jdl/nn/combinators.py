"""Combinators: layers built from layers."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax

from jdl._checks import is_int
from jdl.nn.core import Layer, Params, State, as_layer, make_layer, output_shape


def _names(layers: Sequence[Layer]) -> list[str]:
    """``dense_0, relu_0, dense_1, ...``: kind and index among its kind."""
    counts: dict[str, int] = {}
    names = []
    for layer in layers:
        index = counts.get(layer.name, 0)
        counts[layer.name] = index + 1
        names.append(f"{layer.name}_{index}")
    return names


def _checked_shape(input_shape: Sequence[int]) -> tuple[int, ...]:
    """``input_shape`` as a tuple of sizes, or a ValueError: every size an
    integer >= 0, the batch's too (stax's -1 for "any batch" is not taken:
    pass 1)."""
    try:
        shape = tuple(input_shape)
    except TypeError:
        shape = None
    if shape is None or not all(is_int(size) and size >= 0 for size in shape):
        raise ValueError(f"init: input_shape must be a sequence of sizes >= 0, the batch's included "
                         f"(e.g. (1, 28, 28, 1)); got {input_shape!r}")
    return tuple(int(size) for size in shape)


def _in_context(error: ValueError, position: int, name: str, shape: tuple, model_input) -> ValueError:
    """``error`` from a layer's init, told where in the model it came from:
    the layer's position and key, its input shape and the serial's (the
    innermost serial's: an outer one adds nothing).  Shapes met deep in a
    model (a pool's (1, 1, 1, 64)) are otherwise hard to trace back."""
    if getattr(error, "jdl_in_context", False):
        return error
    located = ValueError(f"{error} [serial's layer {position}, {name}, given shape {tuple(shape)}; the "
                         f"serial's input shape {tuple(model_input)}]")  # fmt: skip
    located.jdl_in_context = True
    return located


def serial(*layers: Layer | Callable[[jax.Array], jax.Array]) -> Layer:
    """Compose layers left to right: ``serial(f, g)(x) = g(f(x))``.

    Plain functions of one array (``jdl.nn.relu``, ``jax.nn.gelu``) are taken
    as layers with no parameters.  Parameters and state are dicts keyed by
    ``<kind>_<index>`` (``'conv_0'``, ``'dense_1'``, ...); layers without
    parameters (or state) have no entry.  One PRNG key is split among the
    layers, at ``init`` and at ``apply``.
    """
    if not layers:
        raise ValueError("serial: needs at least one layer")
    layers = tuple(as_layer(layer) for layer in layers)
    names = _names(layers)

    def init(key: jax.Array, input_shape: Sequence[int]) -> tuple[Params, State]:
        shape = model_input = _checked_shape(input_shape)
        keys = jax.random.split(key, len(layers))
        params: Params = {}
        state: State = {}
        for position, (name, layer, layer_key) in enumerate(zip(names, layers, keys)):
            try:
                layer_params, layer_state = layer.init(layer_key, shape)
            except ValueError as error:
                raise _in_context(error, position, name, shape, model_input) from error
            if layer_params:
                params[name] = layer_params
            if layer_state:
                state[name] = layer_state
            shape = output_shape(layer, layer_params, layer_state, shape)
        return params, state

    def apply(params, state, x, key=None, train=False):
        keys = jax.random.split(key, len(layers)) if key is not None else [None] * len(layers)
        new_state: State = {}
        for name, layer, layer_key in zip(names, layers, keys):
            x, layer_state = layer.apply(params.get(name, {}), state.get(name, {}), x, key=layer_key, train=train)
            if layer_state:
                new_state[name] = layer_state
        return x, new_state

    return make_layer("serial", init, apply)
