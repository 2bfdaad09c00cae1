"""Where a scan epoch's time goes: jdl's step with parts of its work removed, and kernel times.

``python benchmarks/profile_step.py variants [--quick]``: the whole-epoch
``lax.scan`` of jdl's training step (as ``fit(mode='scan')`` compiles it) for
the mlp and the cnn, with the per-step extras taken away one at a time,
against flax+optax's scan, one process, medians of epochs after a warm-up:

* ``full``: what ``fit`` runs (loss and accuracy of each step stacked as scan
  outputs, the first non-finite step tracked in the carry).
* ``no_accuracy``: the step's accuracy not computed.
* ``no_metrics``: no per-step outputs at all.
* ``loss_only``: the step's loss as its one output, no non-finite tracking
  (separates the cost of computing the loss value from that of the check).
* ``no_first_bad``: ``no_metrics`` and the non-finite tracking removed too:
  the bare step, the same work as flax+optax's.

``python benchmarks/profile_step.py kernels jdl|flax``: two steps of the cnn
scan between ``cudaProfilerStart``/``Stop``, for Nsight Compute
(``ncu --profile-from-start off --metrics gpu__time_duration.sum --csv``):
the duration of every kernel a step launches.  Their sum against the step's
wall time says whether the step is bound by its arithmetic or by launching.
"""

from __future__ import annotations

import ctypes
import glob
import json
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

if __package__ in (None, ""):
    import common  # type: ignore[no-redef]
    import train_epoch  # type: ignore[no-redef]
else:
    from benchmarks import common, train_epoch

from jdl import losses, optim
from jdl.train.engine import Placement, scan_epoch, with_device_transform
from jdl.train.step import Carry, objective, train_step

BATCH = 128


def _bare_step(model, tx, with_loss: bool):
    """The step without metrics or non-finite tracking (flax+optax's work),
    returning its loss as the one metric when ``with_loss``."""
    loss_of = objective(model, losses.cross_entropy)
    value_and_grad = jax.value_and_grad(lambda p, s, b, k: loss_of(p, s, b, k)[0])

    def step(carry, batch, key, global_step):
        loss, grads = value_and_grad(carry.params, carry.state, batch, key)
        updates, opt_state = tx.update(grads, carry.opt_state, carry.params)
        new_carry = Carry(optim.apply_updates(carry.params, updates), carry.state, opt_state, carry.first_bad)
        return new_carry, ({"loss": loss} if with_loss else {})

    return step


def _variant(name: str, model, tx):
    full = train_step(model, losses.cross_entropy, tx, guard=False)
    if name == "full":
        return full
    if name == "loss_only":
        return _bare_step(model, tx, with_loss=True)
    if name == "no_accuracy":
        return lambda c, b, k, g: (lambda out: (out[0], {"loss": out[1]["loss"]}))(full(c, b, k, g))
    if name == "no_metrics":
        return lambda c, b, k, g: (full(c, b, k, g)[0], {})
    return _bare_step(model, tx, with_loss=False)


def _epoch_seconds(epoch_fn, carry, images, labels, orders, key, epochs):
    carry, _ = jax.block_until_ready(epoch_fn(carry, images, labels, orders[0], key, 0, 0))
    times = []
    for e in range(1, epochs + 1):
        start = time.perf_counter()
        carry, _ = jax.block_until_ready(epoch_fn(carry, images, labels, orders[e], key, e, 0))
        times.append(time.perf_counter() - start)
    return common.median(times)


def variants(quick: bool, names: tuple[str, ...] = ("mlp", "cnn")) -> list[dict]:
    data, _, source = common.mnist_shaped(2048 if quick else 60000)
    images, labels = jnp.asarray(data["image"]), jnp.asarray(data["label"])
    steps, epochs, records = len(data["label"]) // BATCH, 3 if quick else 5, []
    rng = np.random.default_rng(0)
    orders = [jnp.asarray(rng.permutation(len(data["label"]))[: steps * BATCH].reshape(steps, BATCH), jnp.int32)
              for _ in range(epochs + 1)]  # fmt: skip
    for name in ("mlp",) if quick else names:
        state = train_epoch._flax_state(train_epoch.FLAX[name](), (28, 28, 1))
        flax_fn = train_epoch.flax_scan.lower(state, images, labels, orders[0]).compile()
        state = flax_fn(state, images, labels, orders[0])  # warm-up (it donates the state)
        flax_times = []
        for e in range(1, epochs + 1):
            start = time.perf_counter()
            state = jax.block_until_ready(flax_fn(state, images, labels, orders[e]))
            flax_times.append(time.perf_counter() - start)
        flax_s = common.median(flax_times)
        for variant in ("full", "no_accuracy", "no_metrics", "loss_only", "no_first_bad"):
            model, tx = train_epoch.JDL[name](), optim.adam(1e-3)
            params, model_state = model.init(jax.random.key(0), (1, 28, 28, 1))
            carry = Carry(params, model_state, tx.init(params), jnp.int32(-1))
            run = with_device_transform(_variant(variant, model, tx), None)
            epoch_fn = scan_epoch(run, Placement(BATCH)).lower(
                carry, images, labels, orders[0], jax.random.key(0), 0, 0).compile()  # fmt: skip
            jdl_s = _epoch_seconds(epoch_fn, carry, images, labels, orders, jax.random.key(0), epochs)
            records.append(common.line(f"profile/{name}/{variant}", jdl_s, "flax+optax scan", flax_s,
                                       data=source, steps=steps, jdl_us_per_step=1e6 * jdl_s / steps,
                                       reference_us_per_step=1e6 * flax_s / steps))  # fmt: skip
    return records


def _cudart():
    for pattern in ("libcudart.so*", "/usr/local/cuda*/lib64/libcudart.so*"):
        for path in [pattern, *glob.glob(pattern)]:
            try:
                return ctypes.CDLL(path)
            except OSError:
                pass
    for path in glob.glob(f"{sys.prefix}/lib/python3*/site-packages/nvidia/cu*/lib/libcudart.so*"):
        return ctypes.CDLL(path)
    raise OSError("libcudart not found")


def kernels(which: str) -> None:
    data, _, _ = common.mnist_shaped(4 * BATCH)
    images, labels = jnp.asarray(data["image"]), jnp.asarray(data["label"])
    order = jnp.arange(2 * BATCH, dtype=jnp.int32).reshape(2, BATCH)
    if which == "flax":
        state = train_epoch._flax_state(train_epoch.FLAX["cnn"](), (28, 28, 1))
        fn = train_epoch.flax_scan.lower(state, images, labels, order).compile()

        def inputs():
            return (jax.tree_util.tree_map(jnp.copy, state), images, labels, order)
    else:
        model, tx = train_epoch.JDL["cnn"](), optim.adam(1e-3)
        params, model_state = model.init(jax.random.key(0), (1, 28, 28, 1))

        def inputs():
            carry = Carry(params, model_state, tx.init(params), jnp.int32(-1))
            return (jax.tree_util.tree_map(jnp.copy, carry), images, labels, order, jax.random.key(0), 0, 0)

        run = with_device_transform(train_step(model, losses.cross_entropy, tx, guard=False), None)
        fn = scan_epoch(run, Placement(BATCH)).lower(*inputs()).compile()

    for _ in range(2):
        jax.block_until_ready(fn(*inputs()))
    ready = jax.block_until_ready(inputs())  # made before the profiled region
    cudart = _cudart()
    cudart.cudaProfilerStart()
    jax.block_until_ready(fn(*ready))
    cudart.cudaProfilerStop()
    print(f"profiled two {which} cnn steps", flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "kernels":
        kernels(sys.argv[2])
    else:
        for line in variants("--quick" in sys.argv):
            print(json.dumps(line), flush=True)
