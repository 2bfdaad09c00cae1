"""The ``Layer`` type: a pair of pure functions, as in ``jax.example_libraries.stax``.

``params, state = layer.init(key, input_shape)`` builds the parameters (what
the optimizer changes) and the state (what the layer itself keeps, such as
BatchNorm's running statistics) for inputs of ``input_shape``, which includes
the batch dimension.  ``y, state = layer.apply(params, state, x, key=None,
train=False)`` runs the layer.  Both are pure, so ``jax.jit``, ``jax.grad`` and
``jax.vmap`` apply to them directly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp

Params = dict[str, Any]
State = dict[str, Any]
Shape = tuple[int, ...]


class InitFn(Protocol):
    def __call__(self, key: jax.Array, input_shape: Sequence[int]) -> tuple[Params, State]: ...


class ApplyFn(Protocol):
    def __call__(
        self,
        params: Params,
        state: State,
        x: jax.Array,
        key: jax.Array | None = None,
        train: bool = False,
    ) -> tuple[jax.Array, State]: ...


class Layer(NamedTuple):
    """A layer: ``init(key, input_shape) -> (params, state)`` and
    ``apply(params, state, x, key=None, train=False) -> (y, state)``."""

    init: InitFn
    apply: ApplyFn

    @property
    def name(self) -> str:
        """The layer's kind, used to name its entry in ``serial``'s dicts."""
        return getattr(self.init, "layer_name", "layer")


def make_layer(name: str, init: InitFn, apply: ApplyFn) -> Layer:
    """Build a ``Layer`` whose parameters ``serial`` files under ``name``."""
    init.layer_name = name  # type: ignore[attr-defined]
    return Layer(init, apply)


def function_name(fn: Callable) -> str:
    """A readable name for a plain function (``jax.nn.relu`` -> ``'relu'``)."""
    while hasattr(fn, "func") and not hasattr(fn, "__name__"):  # functools.partial
        fn = fn.func
    return getattr(fn, "__name__", "fn").strip("_<>").lower() or "fn"


def stateless(fn: Callable[[jax.Array], jax.Array], name: str | None = None) -> Layer:
    """Wrap an elementwise or shape-changing function ``fn(x)`` as a layer with
    no parameters and no state."""

    def init(key: jax.Array, input_shape: Sequence[int]) -> tuple[Params, State]:
        del key, input_shape
        return {}, {}

    def apply(params, state, x, key=None, train=False):
        del params, key, train
        return fn(x), state

    return make_layer(name or function_name(fn), init, apply)


def as_layer(layer: Layer | Callable) -> Layer:
    """A ``Layer`` as it is; a plain callable as a stateless layer."""
    if isinstance(layer, Layer):
        return layer
    if callable(layer):
        name = getattr(layer, "__name__", "")
        if getattr(layer, "__module__", "") == "jdl.nn.layers" and name[:1].isupper():
            raise TypeError(f"{name} is a layer constructor, not a layer: call it, e.g. nn.{name}(...)")
        return stateless(layer)
    raise TypeError(f"expected a jdl.nn.Layer or a function of one array; got {type(layer).__name__}")


def output_shape(layer: Layer, params: Params, state: State, input_shape: Sequence[int]) -> Shape:
    """The shape of ``layer.apply(params, state, x)`` for ``x`` of ``input_shape``,
    found by tracing (no computation)."""

    def abstract(tree):
        return jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(jnp.shape(a), jnp.result_type(a)), tree)

    x = jax.ShapeDtypeStruct(tuple(input_shape), jnp.float32)
    try:
        y = jax.eval_shape(lambda p, s, x: layer.apply(p, s, x)[0], abstract(params), abstract(state), x)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{layer.name}: cannot take an input of shape {tuple(input_shape)}: {error}") from error
    return tuple(y.shape)


def count_params(params: Params) -> int:
    """The number of scalars in a parameter tree."""
    return sum(int(jnp.size(leaf)) for leaf in jax.tree_util.tree_leaves(params))
