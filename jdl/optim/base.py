"""The gradient-transformation interface, `chain` and `apply_updates`.

A gradient transformation is a pair of pure functions (Optax's interface,
after the `GradientTransformation` of DeepMind's Optax):

    state = tx.init(params)
    updates, state = tx.update(grads, state, params)
    params = apply_updates(params, updates)

`update` maps candidate updates (usually gradients) to new updates and a new
state; nothing is stored anywhere else, so every step compiles with
`jax.jit`, differentiates, and `vmap`s over hyperparameters.  A jdl
transformation is a plain `(init, update)` NamedTuple, so it can sit inside
`optax.chain`, and any optax transformation can sit inside `jdl.optim.chain`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp

PyTree = Any
Params = PyTree
Updates = PyTree
OptState = PyTree
Schedule = Callable[[jax.typing.ArrayLike], jax.typing.ArrayLike]
ScalarOrSchedule = float | jax.Array | Schedule

NO_PARAMS_MSG = "this transformation needs the current parameters: call `update(updates, state, params)` with `params`."


class TransformInitFn(Protocol):
    def __call__(self, params: Params) -> OptState: ...


class TransformUpdateFn(Protocol):
    def __call__(self, updates: Updates, state: OptState, params: Params | None = None) -> tuple[Updates, OptState]: ...


class GradientTransformation(NamedTuple):
    """A pair of pure functions `(init, update)`.

    Attributes:
      init: `init(params) -> state`, the initial state for a parameter tree.
      update: `update(updates, state, params=None) -> (updates, state)`.
    """

    init: TransformInitFn
    update: TransformUpdateFn


class EmptyState(NamedTuple):
    """The state of a stateless transformation."""


def init_empty_state(params: Params) -> EmptyState:
    """`init` of a stateless transformation."""
    del params
    return EmptyState()


def identity() -> GradientTransformation:
    """The transformation that returns its updates unchanged."""

    def update_fn(updates, state, params=None):
        del params
        return updates, state

    return GradientTransformation(init_empty_state, update_fn)


def _takes_extra_args(update_fn: Callable) -> bool:
    try:
        parameters = inspect.signature(update_fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


def chain(*transforms: GradientTransformation) -> GradientTransformation:
    """Apply transformations one after another: `update = fn_k(... fn_1(g))`.

    The state is the tuple of the members' states, in order.  Members may be
    jdl or optax transformations; keyword arguments given to `update` (optax's
    "extra args", e.g. `value=loss`) go to the members that accept them.
    Inside optax's own combinators (``optax.chain``...), optax passes extra
    args only to its ``GradientTransformationExtraArgs`` class, which jdl
    (depending on jax alone) does not build: wrap a jdl chain that needs them
    as ``optax.GradientTransformationExtraArgs(*chain(...))``.
    """
    init_fns = tuple(t[0] for t in transforms)
    update_fns = tuple(t[1] for t in transforms)
    extra = tuple(_takes_extra_args(fn) for fn in update_fns)

    def init_fn(params):
        return tuple(fn(params) for fn in init_fns)

    def update_fn(updates, state, params=None, **extra_args):
        if len(state) != len(update_fns):
            raise ValueError(
                f"chain of {len(update_fns)} transformations got a state of "
                f"{len(state)}: was the state made by this chain's init?"
            )
        new_state = []
        for fn, s, takes_extra in zip(update_fns, state, extra, strict=True):
            kwargs = extra_args if takes_extra else {}
            try:
                updates, s = fn(updates, s, params, **kwargs)
            except (ValueError, TypeError) as error:
                _raise_if_trees_differ("update", "gradients", updates, params, error)
                raise
            new_state.append(s)
        return updates, tuple(new_state)

    return GradientTransformation(init_fn, update_fn)


def apply_updates(params: Params, updates: Updates) -> Params:
    """`params + updates`, leaf by leaf, cast back to each parameter's dtype.

    `None` leaves (absent parameters) stay `None`.
    """
    try:
        return jax.tree_util.tree_map(
            lambda p, u: None if p is None else jnp.asarray(p + u).astype(jnp.asarray(p).dtype),
            params,
            updates,
            is_leaf=lambda x: x is None,
        )
    except (ValueError, TypeError) as error:
        _raise_if_trees_differ("apply_updates", "updates", updates, params, error)
        raise


def _raise_if_trees_differ(where: str, what: str, tree: Any, params: Any, error: Exception) -> None:
    """After ``error``: a ValueError naming both tree structures if ``tree``'s
    is not ``params``' (given), which is then the likelier cause than the
    message of JAX's that came first ("Dict key mismatch; expected keys"
    lists the first tree's keys as the expected ones)."""
    if params is None:
        return
    structure = jax.tree_util.tree_structure(tree, is_leaf=lambda x: x is None)
    expected = jax.tree_util.tree_structure(params, is_leaf=lambda x: x is None)
    if structure != expected:
        raise ValueError(f"{where}: the {what} must have the parameters' tree structure {expected}; got {structure}") \
            from error


def safe_increment(count: jax.Array) -> jax.Array:
    """`count + 1`, saturating at the dtype's maximum instead of wrapping."""
    count = jnp.asarray(count)
    max_value = jnp.array(jnp.iinfo(count.dtype).max, count.dtype)
    return jnp.where(count < max_value, count + jnp.array(1, count.dtype), max_value)


def zero_count() -> jax.Array:
    """A step counter at 0 (int32, as in optax)."""
    return jnp.zeros([], jnp.int32)


def tree_full_like(tree: PyTree, fill_value: jax.typing.ArrayLike) -> PyTree:
    """A tree shaped like `tree` whose leaves are filled with `fill_value`."""
    return jax.tree_util.tree_map(lambda x: jnp.full_like(x, fill_value), tree)


def tree_zeros_like(tree: PyTree) -> PyTree:
    """A tree of zeros shaped like `tree`."""
    return jax.tree_util.tree_map(jnp.zeros_like, tree)


def tree_map_multi(fn: Callable[..., tuple], n_out: int, tree: PyTree, *rest: PyTree):
    """Map `fn` over leaves like `tree_map`, where `fn` returns `n_out` values.

    Returns `n_out` trees shaped like `tree`.  One pass computes everything a
    leaf needs (an update and its new moments), which keeps each optimizer's
    per-leaf arithmetic in one place.
    """
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    others = [treedef.flatten_up_to(r) for r in rest]
    outputs = [fn(*xs) for xs in zip(leaves, *others, strict=True)]
    columns = list(zip(*outputs, strict=True)) if outputs else [()] * n_out
    return tuple(treedef.unflatten(column) for column in columns)
