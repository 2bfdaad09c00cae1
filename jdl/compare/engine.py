"""Many configurations trained at once in one compiled program.

A *group* is the runs of one optimizer (over seeds and learning rates): their
parameters, model state and optimizer state are stacked along a leading axis
and one step is ``jax.vmap``-ed over it, with the learning rate a traced
array.  (On the CPU a convolutional model's runs take turns instead: in the
scan engine's program each run's whole epoch before the next
(``_runs_in_turn``), in the loop engine's step run by run: vmapped
convolutions become grouped convolutions or batched matrix products, several
times slower there than one per run.  On a GPU vmapped convolutions are
traced as matrix products: ``vmap_runs``.)  A *cluster* is the groups that
share a batch size (so the same number of steps per epoch): one program runs
an epoch of every group in it.  A full-batch step has its gradient summed over
chunks; on the CPU with convolutions the chunks are a host loop of compiled
calls, not a ``lax.scan`` (convolutions in a loop body run many times slower
there).  The
data lives on the device; each run gathers its own batches there by its own
permutation, the one ``jdl.data``'s loader would give for its seed.

Each run uses exactly ``jdl.train.fit``'s conventions (initialization key,
step keys, batch order), so a vmapped run trains to the parameters of the
same run done alone.  A run whose loss becomes non-finite is recorded as
diverged at that step (``first_bad``); its numbers go NaN while the others,
which share no arithmetic with it, go on.  (No per-step guard: its pass over
every parameter would cost every run for the sake of the diverged ones.)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jdl.nn.layers import auto_conv_method_as
from jdl.train.engine import (
    choose_mode,
    compile_lowered,
    compile_once,
    lower_once,
    run_once,
    uses_convolution,
    windows,
    with_device_transform,
)
from jdl.train.step import (
    Carry,
    Totals,
    add_chunk,
    chunk_key,
    eval_step,
    first_non_finite,
    mean_of_totals,
    run_keys,
    step_key,
    train_step,
    update_step,
)


class Group(NamedTuple):
    """The runs of one optimizer: ``make(lr)`` builds it; ``learning_rates``
    and ``seeds`` are per run."""

    name: str
    make: Callable
    learning_rates: np.ndarray
    seeds: np.ndarray


def init_groups(model, groups: list[Group], image_shape) -> tuple[tuple[Carry, ...], tuple[jax.Array, ...]]:
    """Stacked carries and base keys of every group: run ``k`` of a group is
    initialized as ``fit(seed=seeds[k])`` would be, bit for bit, whatever the
    other runs.  Each distinct seed's model is initialized by one single-run
    program (compiled once, run per seed: initialized vmapped over runs, XLA
    rounds some weights 1 ulp apart depending on how many runs there are,
    enough to flip a learning-rate search in an unstable setting); one more
    program gathers them per run and initializes the optimizers."""
    seeds = np.concatenate([g.seeds for g in groups]).astype(np.int32)
    distinct, run_seed = np.unique(seeds, return_inverse=True)

    def init_one(seed):
        base_key, init_key = run_keys(seed)
        return (base_key, *model.init(init_key, (1, *image_shape)))

    program = compile_once(lower_once(init_one, np.int32(0)))
    per_seed = [program(np.int32(seed)) for seed in distinct]
    sizes = np.cumsum([len(g.seeds) for g in groups])[:-1]

    def finish(per_seed, run_seed, learning_rates):
        # each run's (base key, params, state): its seed's, stacked over the runs
        base_keys_all, params, state = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs)[run_seed], *per_seed)
        carries, base_keys = [], []
        for group, group_keys, run_params, run_state, lrs in zip(
            groups, jnp.split(base_keys_all, sizes), _split_runs(params, sizes), _split_runs(state, sizes),
            learning_rates, strict=True,
        ):  # fmt: skip
            opt_state = jax.vmap(lambda p, lr, make=group.make: make(lr).init(p))(run_params, lrs)
            carries.append(Carry(run_params, run_state, opt_state, jnp.full((len(lrs),), -1, jnp.int32)))
            base_keys.append(group_keys)
        return tuple(carries), tuple(base_keys)

    return run_once(finish, per_seed, run_seed, tuple(np.asarray(g.learning_rates, np.float32) for g in groups))


def _split_runs(stacked, sizes) -> list:
    """A pytree stacked over runs, split along its run axis at ``sizes``."""
    leaves, treedef = jax.tree_util.tree_flatten(stacked)
    parts = [jnp.split(leaf, sizes) for leaf in leaves]
    return [jax.tree_util.tree_unflatten(treedef, [p[i] for p in parts]) for i in range(len(sizes) + 1)]


# How ``Conv(method='auto')`` convolves inside ``vmap_runs``, by backend: on a
# GPU a vmapped cuDNN convolution becomes a grouped one (FFT kernels and layout
# transposes), a matrix product becomes a batched one.  8 flax-CNN
# configurations vmapped, H200, seconds per epoch: 0.886 with cuDNN, 0.448 as
# matrix products (benchmarks/comparison.py).
VMAPPED_CONV_METHODS: dict[str, str] = {"gpu": "matmul"}


def vmap_runs(fn: Callable, in_axes=0) -> Callable:
    """``jax.vmap(fn, in_axes)`` over runs, its convolutions traced by ``VMAPPED_CONV_METHODS``."""

    def vmapped(*args):
        with auto_conv_method_as(VMAPPED_CONV_METHODS.get(jax.default_backend())):
            return jax.vmap(fn, in_axes=in_axes)(*args)

    return vmapped


def _unstack(stacked, runs: int) -> tuple:
    """A stacked pytree as a tuple of ``runs`` pytrees."""
    return tuple(jax.tree_util.tree_map(lambda a, k=k: a[k], stacked) for k in range(runs))


def _stack(trees) -> Any:
    """Pytrees of one structure as one pytree of stacked leaves."""
    return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *trees)


def _per_run(one: Callable, strategy: str, batched: int) -> Callable:
    """``one`` over stacked runs: its first ``batched`` arguments carry a
    leading run axis, the rest are shared.  ``'vmap'`` vmaps it; ``'unroll'``
    applies it run by run (a Python loop inside the compiled program) and
    stacks the results: what vmap computes, without turning each convolution
    into a grouped convolution over runs, which is several times slower on
    the CPU."""

    def run(*args):
        per_run, shared = args[:batched], args[batched:]
        if strategy == "vmap":
            return vmap_runs(lambda *xs: one(*xs, *shared))(*per_run)
        runs = jax.tree_util.tree_leaves(per_run[0])[0].shape[0]
        return _stack([one(*args, *shared) for args in _unstack(per_run, runs)])

    return run


def _one_run_step(model, loss_fn, make, microbatch) -> Callable:
    """``one(carry, lr, batch, base_key, epoch, index, global_step)``: one
    run's fast training step at learning rate ``lr``."""

    def one(carry, lr, batch, base_key, epoch, index, global_step):
        step = train_step(model, loss_fn, make(lr), microbatch=microbatch, guard=False)
        return with_device_transform(step, None)(carry, batch, base_key, epoch, index, global_step)

    return one


def _runs_in_turn(one: Callable) -> Callable:
    """An epoch of ``one`` for stacked runs, one run after another inside the
    program (``lax.map`` over runs, ``lax.scan`` over each run's steps):
    ``fn(carry, lrs, images, labels, order, base_keys, epoch, first_step) ->
    (carry, losses)`` with ``order`` ``(steps, runs, batch)`` and losses
    ``(steps, runs)``.  One copy of the step in the program, and one run's
    parameters and optimizer state in the caches at a time."""

    def epoch_of_runs(carry, lrs, images, labels, order, base_keys, epoch, first_step):
        def run(xs):
            carry, lr, run_order, base_key = xs

            def body(carry, ys):
                indices, index = ys
                batch = {"image": images[indices], "label": labels[indices]}
                carry, metrics = one(carry, lr, batch, base_key, epoch, index, first_step + index)
                return carry, metrics["loss"]

            return lax.scan(body, carry, (run_order, jnp.arange(run_order.shape[0], dtype=jnp.int32)))

        carry, losses = lax.map(run, (carry, lrs, jnp.swapaxes(order, 0, 1), base_keys))
        return carry, losses.T

    return epoch_of_runs


def choose_strategy(has_conv_layers: bool) -> str:
    """``'vmap'``, except ``'unroll'`` for convolutional models on the CPU:
    there a vmapped convolution is a grouped convolution or, as a matrix
    product, a batched one with few columns, up to several times slower than
    one per run.  ``'unroll'`` has the runs take turns in the scan engine's
    program (``_runs_in_turn``) and applies the step run by run in the loop
    engine's (8 flax-CNN configurations on 2 cores against the 8 run one after
    another: vmapped 0.99-1.14x, taking turns 0.93-1.03x, compiled in 1.8 s
    against 10.9 s for the 8; ``benchmarks/comparison.py``)."""
    return "unroll" if has_conv_layers and jax.devices()[0].platform == "cpu" else "vmap"


def choose_engine(model, images: np.ndarray) -> tuple[bool, str]:
    """``(use_scan, strategy)`` for training ``model`` on ``images``: the
    training engine's rule (no scan for XLA convolutions on the CPU, nor for
    data too big for the device: the loop engine still holds the split on the
    device, so a comparison's data must fit there) and ``choose_strategy`` (which asks whether
    the model has convolution layers, however they are computed)."""
    shape = (1, *images.shape[1:])
    params, state = jax.eval_shape(lambda k: model.init(k, shape), jax.random.key(0))
    has_conv = uses_convolution(model, params, state, shape)
    with auto_conv_method_as("lax"):
        has_conv_layers = uses_convolution(model, params, state, shape)
    mode = choose_mode("auto", has_conv=has_conv, has_host_transform=False, data_bytes=images.nbytes)
    return mode == "scan", choose_strategy(has_conv_layers)


def cluster_epoch(model, loss_fn, makes: list[Callable], use_scan: bool, microbatch: int | None = None,
                  strategy: str = "vmap", shared: tuple[bool, ...] | None = None) -> Callable:
    """A compiled function running one epoch (``use_scan``) or one step
    (otherwise) of every group of a cluster.

    ``fn(carries, lrs, images, labels, orders, base_keys, epoch, first_step)``
    where ``orders[g]`` is ``(steps, runs, batch)`` indices (one step's worth
    when not scanning); returns ``(carries, losses)`` with losses ``(steps,
    runs)`` per group.

    ``shared[g]``: group ``g``'s runs share one seed (a learning-rate grid),
    so they see the same batches and step keys.  Vmapped, its step then takes
    the first run's batch and key unbatched: the batch is gathered once, not
    once per run, and the first layer's product with it is one matrix product
    with every run's weights side by side (JAX's batching rule for an
    unbatched operand), not a batched product per run.
    """
    shared = shared or (False,) * len(makes)
    ones = [_one_run_step(model, loss_fn, make, microbatch) for make in makes]
    if use_scan and strategy == "unroll":
        epochs = [_runs_in_turn(one) for one in ones]

        def in_turn(carries, lrs, images, labels, orders, base_keys, epoch, first_step):
            outs = [fn(carry, lr, images, labels, order, keys, epoch, first_step)
                    for fn, carry, lr, order, keys in zip(epochs, carries, lrs, orders, base_keys)]  # fmt: skip
            return tuple(c for c, _ in outs), tuple(loss for _, loss in outs)

        return jax.jit(in_turn, donate_argnums=0)
    steps = [_per_run(one, strategy, batched=2 if share else 4) for one, share in zip(ones, shared, strict=True)]

    def all_groups(carries, lrs, images, labels, indices, base_keys, epoch, index, global_step):
        out_carries, losses = [], []
        for step, carry, lr, idx, keys, share in zip(steps, carries, lrs, indices, base_keys, shared):
            if share:  # every run's indices and key are the first run's
                idx, keys = idx[0], keys[0]
            batch = {"image": images[idx], "label": labels[idx]}
            carry, metrics = step(carry, lr, batch, keys, epoch, index, global_step)
            out_carries.append(carry)
            losses.append(metrics["loss"])
        return tuple(out_carries), tuple(losses)

    if not use_scan:

        def one_step(carries, lrs, images, labels, orders, base_keys, epoch, index, global_step):
            carries, losses = all_groups(carries, lrs, images, labels, [o[0] for o in orders], base_keys,
                                         epoch, index, global_step)
            return carries, tuple(loss[None] for loss in losses)

        return jax.jit(one_step, donate_argnums=0)

    def epoch_fn(carries, lrs, images, labels, orders, base_keys, epoch, first_step):
        count = orders[0].shape[0]

        def body(carries, xs):
            indices, index = xs
            return all_groups(carries, lrs, images, labels, indices, base_keys, epoch, index, first_step + index)

        return lax.scan(body, carries, (tuple(orders), jnp.arange(count, dtype=jnp.int32)))

    return jax.jit(epoch_fn, donate_argnums=0)


class ChunkedSteps(NamedTuple):
    """A full-batch step of every group as a host loop of compiled calls:
    ``start(carries) -> totals``; ``accumulate(totals, carries, images,
    labels, chunk_orders, base_keys, epoch, index, chunk) -> totals`` adds one
    chunk (``chunk_orders[g]`` is ``(runs, chunk size)`` indices), and
    ``accumulate_last`` the last, smaller chunk, weighted by its size (None
    when the chunks divide the batch); ``apply(carries, totals, lrs,
    global_step) -> (carries, losses)`` takes the step with the mean
    gradient, as ``train_step(microbatch=...)`` does in one program."""

    start: Callable
    accumulate: Callable
    apply: Callable
    accumulate_last: Callable | None = None


def chunked_steps(model, loss_fn, makes: list[Callable], chunks: int, strategy: str,
                  last: float = 0.0) -> ChunkedSteps:  # fmt: skip
    """``ChunkedSteps`` for batches of ``chunks`` chunks and, with ``last``,
    a smaller last one (``last``: its size over a chunk's), with the keys
    ``train_step``'s accumulation uses (``chunk_key(step key, chunk)``)."""
    add = add_chunk(model, loss_fn)

    def accumulating(weight: float | None) -> Callable:
        def one_add(totals, params, chunk, base_key, epoch, index, number):
            return add(totals, params, chunk, chunk_key(step_key(base_key, epoch, index), number), weight)

        add_run = _per_run(one_add, strategy, batched=4)

        def accumulate(totals, carries, images, labels, chunk_orders, base_keys, epoch, index, number):
            return tuple(
                add_run(t, c.params, {"image": images[idx], "label": labels[idx]}, keys, epoch, index, number)
                for t, c, idx, keys in zip(totals, carries, chunk_orders, base_keys)
            )

        return jax.jit(accumulate, donate_argnums=0)

    count = chunks + last if last else chunks
    updates = [_per_run(lambda carry, lr, totals, global_step, make=make: update_step(make(lr), guard=False)(
        carry, mean_of_totals(totals, count), global_step), strategy, batched=3) for make in makes]  # fmt: skip

    def start(carries):
        return tuple(
            # A copy of the state, so that donating the totals never donates the carries' buffers.
            Totals(jax.tree_util.tree_map(jnp.copy, c.state), jnp.zeros_like(c.first_bad, jnp.float32),
                   jnp.zeros_like(c.first_bad, jnp.float32), jax.tree_util.tree_map(jnp.zeros_like, c.params))
            for c in carries
        )  # fmt: skip

    def apply(carries, totals, lrs, global_step):
        stepped = [update(c, lr, t, global_step) for update, c, lr, t in zip(updates, carries, lrs, totals)]
        return tuple(c for c, _ in stepped), tuple(m["loss"][None] for _, m in stepped)

    return ChunkedSteps(jax.jit(start), accumulating(None), jax.jit(apply, donate_argnums=0),
                        accumulating(last) if last else None)  # fmt: skip


def group_evaluator(model, loss_fn, batch_size: int, strategy: str = "vmap") -> Callable:
    """``fn(params, state, images, labels, start, skip) -> (loss sum,
    correct)`` per run, for one evaluation window
    (``jdl.train.step.eval_step``): vmapped over the runs, or with
    ``'unroll'`` the runs taking turns (``lax.map``; 8 runs of 1,000 images
    on 2 CPU cores, cnn 1.4-1.8 s against 2.6-3.9 s vmapped, fmnist_2c2d 3.4
    against 11.4 s).  Groups with as many runs share its compiled program,
    whatever their optimizer states."""
    single = eval_step(model, loss_fn, batch_size)
    if strategy == "unroll":
        return jax.jit(lambda params, state, images, labels, start, skip: lax.map(
            lambda run: single(*run, images, labels, start, skip), (params, state)))  # fmt: skip
    return jax.jit(vmap_runs(single, in_axes=(0, 0, None, None, None, None)))


def evaluate_groups(evaluator, carries, images, labels, batch_size: int) -> list[dict[str, np.ndarray]]:
    """Mean loss and accuracy of every run of every group on the arrays."""
    n = len(images)
    results = []
    for carry in carries:
        sums = jax.device_get([evaluator(carry.params, carry.state, images, labels, start, skip)
                               for start, skip in windows(n, batch_size)])  # fmt: skip
        loss = np.sum([np.asarray(s[0], np.float64) for s in sums], axis=0)
        correct = np.sum([np.asarray(s[1], np.float64) for s in sums], axis=0)
        results.append({"loss": loss / n, "accuracy": correct / n})
    return results


def _chunked_step(fns: ChunkedSteps, carries, lrs, images, labels, orders, base_keys, epoch: int, index: int,
                  global_step: int, size: int):  # fmt: skip
    """One full-batch step of every group, a chunk of ``size`` examples per
    call (the last one smaller where ``size`` does not divide the batch)."""
    totals = fns.start(carries)
    count = orders[0].shape[-1] // size
    for number in range(count):
        chunk_orders = tuple(np.ascontiguousarray(o[index, :, number * size : (number + 1) * size]) for o in orders)
        totals = fns.accumulate(totals, carries, images, labels, chunk_orders, base_keys, epoch, index, number)
    if fns.accumulate_last is not None:
        chunk_orders = tuple(np.ascontiguousarray(o[index, :, count * size :]) for o in orders)
        totals = fns.accumulate_last(totals, carries, images, labels, chunk_orders, base_keys, epoch, index, count)
    return fns.apply(carries, totals, lrs, global_step)


def train_cluster(
    model,
    loss_fn,
    groups: list[Group],
    *,
    batch_size: int,
    images: np.ndarray,
    labels: np.ndarray,
    permutation: Callable[[int, int], np.ndarray],
    epochs: int,
    eval_images: np.ndarray,
    eval_labels: np.ndarray,
    use_scan: bool,
    microbatch: int | None = None,
    strategy: str = "vmap",
    on_epoch: Callable[[int], None] | None = None,
    start: tuple | None = None,
    evaluator: Callable | None = None,
) -> dict[str, Any]:
    """Train every run of every group for ``epochs`` epochs; returns per-group
    per-epoch metrics, divergence steps, the carries, and the timings.
    ``start``: the groups' ``(carries, base_keys)`` from ``init_groups``
    (default: initialized here); ``evaluator``: a ``group_evaluator`` for
    windows of ``min(1000, len(eval_images))`` shared with other clusters
    (default: made here)."""
    n = len(images)
    steps = n // batch_size
    makes = [g.make for g in groups]
    carries, base_keys = start if start is not None else init_groups(model, groups, images.shape[1:])
    # device_put, not jnp.asarray: host arrays go to the device without a program compiled for each
    lrs = jax.device_put(tuple(np.asarray(g.learning_rates, np.float32) for g in groups))
    device_images, device_labels, *device_eval = jax.device_put((images, labels, eval_images, eval_labels))
    eval_size = min(1000, len(eval_images))
    evaluator = evaluator or group_evaluator(model, loss_fn, eval_size, strategy)

    def orders_for(epoch: int) -> tuple[np.ndarray, ...]:
        out, orders = [], {}
        for g in groups:
            for seed in map(int, g.seeds):
                if seed not in orders:
                    orders[seed] = permutation(seed, epoch)[: steps * batch_size].reshape(steps, batch_size)
            runs = [orders[int(seed)] for seed in g.seeds]
            out.append(np.stack(runs, axis=1).astype(np.int32))  # (steps, runs, batch)
        return tuple(out)

    # Runs of one seed see the same batches (``cluster_epoch``'s ``shared``); taking turns, nothing to share.
    shared = tuple(strategy == "vmap" and len(g.seeds) > 1 and bool(np.all(g.seeds == g.seeds[0])) for g in groups)
    began = time.perf_counter()
    chunks, rest = divmod(batch_size, microbatch) if microbatch and batch_size > microbatch else (0, 0)
    host_chunks = chunks and strategy == "unroll" and not use_scan
    if host_chunks:
        steps_fns = chunked_steps(model, loss_fn, makes, chunks, strategy, rest / microbatch)
        totals = jax.eval_shape(steps_fns.start, carries)

        def compiled_for(fn, size):  # chunks of ``size`` examples
            shapes = tuple(jax.ShapeDtypeStruct((len(g.seeds), size), jnp.int32) for g in groups)
            return fn.lower(totals, carries, device_images, device_labels, shapes, base_keys, 0, 0, 0).compile()

        compiled = ChunkedSteps(
            steps_fns.start.lower(carries).compile(), compiled_for(steps_fns.accumulate, microbatch),
            steps_fns.apply.lower(carries, totals, lrs, 0).compile(),
            compiled_for(steps_fns.accumulate_last, rest) if rest else None,
        )  # fmt: skip
    elif use_scan:
        fn = cluster_epoch(model, loss_fn, makes, use_scan, microbatch, strategy, shared)
        shapes = tuple(jax.ShapeDtypeStruct((steps, len(g.seeds), batch_size), jnp.int32) for g in groups)
        compiled = compile_lowered(fn.lower(carries, lrs, device_images, device_labels, shapes, base_keys, 0, 0))
    else:
        fn = cluster_epoch(model, loss_fn, makes, use_scan, microbatch, strategy, shared)
        shapes = tuple(jax.ShapeDtypeStruct((1, len(g.seeds), batch_size), jnp.int32) for g in groups)
        compiled = compile_lowered(fn.lower(carries, lrs, device_images, device_labels, shapes, base_keys, 0, 0, 0))
    compile_s = time.perf_counter() - began

    history: list[list[dict[str, np.ndarray]]] = []
    times = []
    first_bad = [np.full(len(g.seeds), -1) for g in groups]
    for epoch in range(epochs):
        orders = orders_for(epoch)
        began = time.perf_counter()
        if use_scan:
            carries, losses = compiled(carries, lrs, device_images, device_labels, orders, base_keys, epoch,
                                       epoch * steps)
        else:
            per_step = []
            for index in range(steps):
                if host_chunks:
                    carries, loss = _chunked_step(compiled, carries, lrs, device_images, device_labels, orders,
                                                  base_keys, epoch, index, epoch * steps + index, microbatch)
                else:
                    step_orders = tuple(o[index : index + 1] for o in orders)
                    carries, loss = compiled(carries, lrs, device_images, device_labels, step_orders, base_keys,
                                             epoch, index, epoch * steps + index)
                per_step.append(loss)
            losses = tuple(np.concatenate(parts) for parts in zip(*jax.device_get(per_step)))  # on the host
        jax.block_until_ready(carries)
        times.append(time.perf_counter() - began)
        scores = evaluate_groups(evaluator, carries, *device_eval, eval_size)
        losses = [np.asarray(loss) for loss in losses]  # (steps, runs) per group
        for bad, loss in zip(first_bad, losses):
            index = first_non_finite(loss)
            new = (bad < 0) & (index >= 0)
            bad[new] = epoch * steps + index[new]
        history.append([
            {"train_loss": loss.mean(axis=0), "test_loss": s["loss"], "test_accuracy": s["accuracy"]}
            for loss, s in zip(losses, scores)
        ])  # fmt: skip
        if on_epoch is not None:
            on_epoch(epoch)
    return {"history": history, "first_bad": first_bad, "steps_per_epoch": steps, "times": times,
            "compile_s": compile_s, "carries": carries}  # fmt: skip
