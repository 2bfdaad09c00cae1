"""The training step: one pure function from (carry, batch, key) to (carry, metrics).

The carry is ``(params, state, opt_state, first_bad)``.  ``first_bad`` is the
global step index of the first non-finite loss, or -1.  The guarded step: a
step whose loss or gradient is not finite, or that comes after one, leaves
params, state and optimizer state untouched, so a run that diverges keeps its
last good parameters without a host round-trip per step.  The fast step
(``guard=False``) checks nothing: the caller finds the first non-finite loss
among the per-step losses it fetches anyway (``first_non_finite``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jdl.nn import Layer
from jdl.optim import GradientTransformation, apply_updates

Batch = dict[str, jax.Array]
LossFn = Callable[[jax.Array, jax.Array], jax.Array]


class Carry(NamedTuple):
    """What a step changes: parameters, model state, optimizer state, and the
    global step of the first non-finite loss (-1 while there is none)."""

    params: Any
    state: Any
    opt_state: Any
    first_bad: jax.Array


def correct(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Per example, whether the prediction is right.  Several outputs: the
    largest logit is the label (integer classes, or one-hot / probability
    rows).  One score per example (shape ``(batch,)`` or ``(batch, 1)``, as
    binary losses take: ``log_loss`` from logits, ``hinge_loss``,
    ``exponential_loss``): the score is positive exactly when the label is
    above 1/2, for labels in {0, 1}, {-1, +1} or soft targets in [0, 1].  (A
    model that outputs probabilities, for ``log_loss(from_logits=False)``, is
    not scored right by this rule.)"""
    if logits.ndim >= 1 and logits.shape[-1:] == (1,):  # one score per example, kept in a last axis
        if labels.shape == logits.shape:
            labels = labels[..., 0]
        logits = logits[..., 0]
    if logits.ndim == 1:
        return (logits > 0) == (labels > 0.5)
    predicted = jnp.argmax(logits, axis=-1)
    if labels.ndim == logits.ndim:
        labels = jnp.argmax(labels, axis=-1)
    return predicted == labels


def accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Fraction of examples predicted right (``correct``)."""
    return jnp.mean(correct(logits, labels))


def all_finite(tree) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree_util.tree_leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def run_keys(seed: int | jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(base_key, init_key)`` of the run with ``seed``: the steps' keys
    derive from the first (``step_key``), the model's initialization uses the
    second.  ``fit`` and ``jdl.compare`` both start runs this way."""
    base_key, init_key = jax.random.split(jax.random.key(seed))
    return base_key, init_key


def step_key(base_key: jax.Array, epoch: int | jax.Array, step: int | jax.Array) -> jax.Array:
    """The PRNG key of (epoch, step): the same however a run is split or resumed."""
    return jax.random.fold_in(jax.random.fold_in(base_key, epoch), step)


class Totals(NamedTuple):
    """Sums over the chunks of a batch seen so far: the model state threaded
    through them, loss, accuracy and gradient."""

    state: Any
    loss: jax.Array
    accuracy: jax.Array
    grads: Any


def empty_totals(params, state) -> Totals:
    """Totals before the first chunk."""
    return Totals(state, jnp.float32(0.0), jnp.float32(0.0), jax.tree_util.tree_map(jnp.zeros_like, params))


def objective(model: Layer, loss_fn: LossFn) -> Callable:
    """``f(params, state, batch, key) -> (loss, (accuracy, new_state))`` in train mode."""

    def f(params, state, batch, key):
        logits, new_state = model.apply(params, state, batch["image"], key=key, train=True)
        return loss_fn(logits, batch["label"]), (accuracy(logits, batch["label"]), new_state)

    return f


def add_chunk(model: Layer, loss_fn: LossFn) -> Callable:
    """``add(totals, params, chunk, key, weight=None) -> totals`` with one
    more chunk's loss, accuracy and gradient (for gradients accumulated over
    chunks); a ``weight`` (a smaller last chunk's size over a full chunk's)
    scales its three means."""
    value_and_grad = jax.value_and_grad(objective(model, loss_fn), has_aux=True)

    def add(totals: Totals, params, chunk: Batch, key: jax.Array, weight: float | None = None) -> Totals:
        (loss, (acc, new_state)), grads = value_and_grad(params, totals.state, chunk, key)
        if weight is not None:
            loss, acc = loss * weight, acc * weight
            grads = jax.tree_util.tree_map(lambda g: g * weight, grads)
        return Totals(new_state, totals.loss + loss, totals.accuracy + acc,
                      jax.tree_util.tree_map(jnp.add, totals.grads, grads))  # fmt: skip

    return add


def chunk_key(key: jax.Array, chunk: int | jax.Array) -> jax.Array:
    """The key of chunk ``chunk`` of a step whose key is ``key``."""
    return jax.random.fold_in(key, chunk)


def _accumulated(add: Callable, microbatch: int) -> Callable:
    """``(loss, (accuracy, state)), grads`` averaged over chunks of
    ``microbatch`` examples, computed one chunk at a time in a ``lax.scan``
    (for full-batch gradient descent on a large training set).  A batch that
    ``microbatch`` does not divide ends with a smaller chunk of ``rest``
    examples, weighted ``rest / microbatch``, so the mean is over examples:
    ``(sum_i microbatch * mean_i + rest * mean_last) / size``."""

    def run(params, state, batch, key):
        size = batch["label"].shape[0]
        count, rest = divmod(size, microbatch)
        head = batch if rest == 0 else jax.tree_util.tree_map(lambda a: a[: count * microbatch], batch)
        chunks = jax.tree_util.tree_map(lambda a: a.reshape(count, microbatch, *a.shape[1:]), head)

        def body(totals, xs):
            chunk, index = xs
            return add(totals, params, chunk, chunk_key(key, index)), None

        totals, _ = lax.scan(body, empty_totals(params, state), (chunks, jnp.arange(count)))
        if rest == 0:
            return mean_of_totals(totals, count)
        last = jax.tree_util.tree_map(lambda a: a[count * microbatch :], batch)
        totals = add(totals, params, last, chunk_key(key, count), rest / microbatch)
        return mean_of_totals(totals, count + rest / microbatch)

    return run


def mean_of_totals(totals: Totals, count) -> tuple:
    """``(loss, (accuracy, state)), grads``: the totals over ``count`` chunks averaged."""
    grads = jax.tree_util.tree_map(lambda g: g / count, totals.grads)
    return (totals.loss / count, (totals.accuracy / count, totals.state)), grads


def train_step(
    model: Layer,
    loss_fn: LossFn,
    optimizer: GradientTransformation,
    *,
    microbatch: int | None = None,
    guard: bool = True,
) -> Callable:
    """``step(carry, batch, key, global_step) -> (carry, metrics)``, pure and unjitted.

    ``metrics`` holds ``loss`` and ``accuracy`` of the batch before the update.
    With ``guard`` (the default) a step whose loss or update is not finite, or
    any step after it, leaves the carry unchanged.  Without it the step
    applies the update regardless and leaves
    ``first_bad`` as it was: no pass over the parameters to check them, which
    on small models is a large part of a step, and no check of the loss
    either (a few µs a step on a GPU: ``benchmarks/profile_step.py``); the
    caller finds the first non-finite loss among the per-step losses
    (``first_non_finite``).  ``fit`` uses that fast step and, if an epoch went
    bad, replays it with the guarded one.
    With ``microbatch``, a batch larger than that has its gradient
    accumulated over chunks of ``microbatch`` examples (the last one smaller
    where ``microbatch`` does not divide the batch), which keeps full-batch
    gradient descent within memory; the update is the same (up to rounding)
    for models without batch statistics.
    """
    value_and_grad = jax.value_and_grad(objective(model, loss_fn), has_aux=True)
    update = update_step(optimizer, guard=guard)

    def step(carry: Carry, batch: Batch, key: jax.Array, global_step: jax.Array) -> tuple[Carry, dict]:
        gradient = value_and_grad
        size = batch["label"].shape[0]
        if microbatch is not None and size > microbatch:
            gradient = _accumulated(add_chunk(model, loss_fn), microbatch)
        return update(carry, gradient(carry.params, carry.state, batch, key), global_step)

    return step


def first_non_finite(losses: np.ndarray, axis: int = 0) -> np.ndarray:
    """Index along ``axis`` of the first non-finite value of ``losses`` (one
    per step, stacked in order), -1 where all are finite; for the fast step's
    callers, which record divergence from the losses instead of in the carry."""
    bad = ~np.isfinite(np.asarray(losses))
    if bad.shape[axis] == 0:  # no steps
        return np.full(np.delete(bad.shape, axis), -1)
    return np.where(bad.any(axis=axis), np.argmax(bad, axis=axis), -1)


def update_step(optimizer: GradientTransformation, *, guard: bool = True) -> Callable:
    """``update(carry, ((loss, (accuracy, new_state)), grads), global_step) ->
    (carry, metrics)``: the second half of ``train_step``, given the gradient."""

    def update(carry: Carry, value_and_grads, global_step: jax.Array) -> tuple[Carry, dict]:
        (loss, (batch_accuracy, new_state)), grads = value_and_grads
        updates, new_opt_state = optimizer.update(grads, carry.opt_state, carry.params)
        new_params = apply_updates(carry.params, updates)
        metrics = {"loss": loss, "accuracy": batch_accuracy}
        if not guard:
            return Carry(new_params, new_state, new_opt_state, carry.first_bad), metrics
        healthy = jnp.isfinite(loss) & all_finite(updates)
        keep_going = healthy & (carry.first_bad < 0)

        def select(new, old):
            return jax.tree_util.tree_map(lambda n, o: jnp.where(keep_going, n, o), new, old)

        first_bad = jnp.where((carry.first_bad < 0) & ~healthy, global_step, carry.first_bad)
        new_carry = Carry(
            select(new_params, carry.params),
            select(new_state, carry.state),
            select(new_opt_state, carry.opt_state),
            first_bad.astype(jnp.int32),
        )
        return new_carry, metrics

    return update


def make_train_step(model: Layer, loss_fn: LossFn, optimizer: GradientTransformation) -> Callable:
    """A jitted step ``(params, state, opt_state, batch, key) -> (params, state,
    opt_state, metrics)`` with donated buffers; ``metrics`` has ``loss`` and
    ``accuracy`` of the batch.  A non-finite loss leaves everything unchanged
    and sets ``metrics['finite']`` to False."""
    step = train_step(model, loss_fn, optimizer)

    def plain_step(params, state, opt_state, batch, key):
        carry, metrics = step(Carry(params, state, opt_state, jnp.int32(-1)), batch, key, jnp.int32(0))
        metrics["finite"] = carry.first_bad < 0
        return carry.params, carry.state, carry.opt_state, metrics

    return jax.jit(plain_step, donate_argnums=(0, 1, 2))


def eval_step(model: Layer, loss_fn: LossFn, batch_size: int) -> Callable:
    """``(params, state, images, labels, start, skip) -> (summed loss, number
    correct)`` over the window ``images[start:start + batch_size]``, leaving
    out its first ``skip`` examples (so the last, overlapping window of a split
    counts each example once).  ``start`` and ``skip`` are traced: one
    compiled program serves the whole split.  The per-example loss is
    ``loss_fn`` applied to each example alone."""

    def evaluate_window(params, state, images, labels, start, skip):
        x = lax.dynamic_slice_in_dim(images, start, batch_size)
        y = lax.dynamic_slice_in_dim(labels, start, batch_size)
        logits, _ = model.apply(params, state, x, train=False)
        per_example = jax.vmap(lambda logit, label: loss_fn(logit[None], label[None]))(logits, y)
        keep = jnp.arange(batch_size) >= skip
        return jnp.sum(jnp.where(keep, per_example, 0.0)), jnp.sum(jnp.where(keep, correct(logits, y), 0))

    return evaluate_window
