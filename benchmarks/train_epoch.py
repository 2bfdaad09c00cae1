"""Benchmark: one training epoch of jdl against flax.linen + optax, same model, batch and data.

Models: ``mlp`` (784-128-10), ``cnn`` (the flax examples/mnist CNN) and
``fmnist_2c2d`` (DeepOBS), Adam 1e-3, cross-entropy, fp32 (``--dtype bfloat16``:
both compute in bfloat16, parameters float32).  Two ways each:

* ``loop``: the flax example's way, a Python loop of jitted steps fed host
  NumPy batches; jdl's ``fit(mode='stream')``.
* ``scan``: one epoch in ``lax.scan`` with the data on the device; jdl's
  ``fit(mode='scan')``.

Times are medians of whole epochs after a warm-up epoch, compile apart; jdl's
come from ``fit``'s own history (what a user gets).  Both include drawing the
epoch's order (flax+optax's only since stop 21: before, its shuffle was drawn
outside the timed region while ``fit``'s was inside).  The line also gives the
test accuracy both reach, to show the same model was trained.  On the CPU
XLA's convolutions in scan are about 25x slower (shared/FACTS.md), so there
the convolutional models' ``scan`` line sets jdl's scan (whose ``nn.Conv`` is a
matrix product on the CPU, what ``fit``'s ``auto`` mode runs) against
flax+optax's faster way there: the example's loop or a loop of jitted blocks
of ``UNROLL_BLOCK`` unrolled steps (``unroll``), whichever was faster in the
run (both are in the line's ``reference_candidates_s``).

Usage: python benchmarks/train_epoch.py [--quick] [--models cnn,mlp] [--rounds R]
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import flax.linen as fnn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state

if __package__ in (None, ""):
    import common  # type: ignore[no-redef]
else:
    from benchmarks import common

from jdl import losses, models, optim, train
from jdl.data.loader import Loader


class FlaxMLP(fnn.Module):
    dtype: Any = None  # the computation's dtype (bfloat16: mixed precision), as in jdl's layers

    @fnn.compact
    def __call__(self, x):
        x = x.reshape((x.shape[0], -1))
        return fnn.Dense(10, dtype=self.dtype)(fnn.relu(fnn.Dense(128, dtype=self.dtype)(x)))


class FlaxCNN(fnn.Module):
    """flax examples/mnist/train.py."""

    dtype: Any = None

    @fnn.compact
    def __call__(self, x):
        x = fnn.avg_pool(fnn.relu(fnn.Conv(32, (3, 3), dtype=self.dtype)(x)), (2, 2), strides=(2, 2))
        x = fnn.avg_pool(fnn.relu(fnn.Conv(64, (3, 3), dtype=self.dtype)(x)), (2, 2), strides=(2, 2))
        x = x.reshape((x.shape[0], -1))
        return fnn.Dense(10, dtype=self.dtype)(fnn.relu(fnn.Dense(256, dtype=self.dtype)(x)))


class Flax2c2d(fnn.Module):
    """DeepOBS fmnist_2c2d."""

    dtype: Any = None

    @fnn.compact
    def __call__(self, x):
        w, b, dtype = fnn.initializers.truncated_normal(0.05), fnn.initializers.constant(0.05), self.dtype
        x = fnn.max_pool(fnn.relu(fnn.Conv(32, (5, 5), kernel_init=w, bias_init=b, dtype=dtype)(x)), (2, 2), (2, 2),
                         "SAME")  # fmt: skip
        x = fnn.max_pool(fnn.relu(fnn.Conv(64, (5, 5), kernel_init=w, bias_init=b, dtype=dtype)(x)), (2, 2), (2, 2),
                         "SAME")  # fmt: skip
        x = x.reshape((x.shape[0], -1))
        x = fnn.relu(fnn.Dense(1024, kernel_init=w, bias_init=b, dtype=dtype)(x))
        return fnn.Dense(10, kernel_init=w, bias_init=b, dtype=dtype)(x)


FLAX = {"mlp": FlaxMLP, "cnn": FlaxCNN, "fmnist_2c2d": Flax2c2d}
JDL = {"mlp": lambda dtype=None: models.mlp(hidden=(128,), dtype=dtype), "cnn": models.cnn,
       "fmnist_2c2d": models.fmnist_2c2d}  # fmt: skip


def _flax_state(module: fnn.Module, shape, seed: int = 0) -> train_state.TrainState:
    params = module.init(jax.random.key(seed), jnp.zeros((1, *shape)))["params"]
    return train_state.TrainState.create(apply_fn=module.apply, params=params, tx=optax.adam(1e-3))


def _flax_loss(state, params, images, labels):
    logits = state.apply_fn({"params": params}, images)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


@jax.jit
def flax_step(state, images, labels):
    grads = jax.grad(lambda p: _flax_loss(state, p, images, labels))(state.params)
    return state.apply_gradients(grads=grads)


def _flax_scan(state, images, labels, order):
    def body(state, idx):
        return flax_step(state, images[idx], labels[idx]), None

    return jax.lax.scan(body, state, order)[0]


flax_scan = jax.jit(_flax_scan, donate_argnums=0)

# Steps per call of flax+optax's unrolled way: a Python loop over jitted blocks
# of this many steps, unrolled in the block (no lax.scan), the data on the
# device.  On the CPU, where XLA's convolutions are slow inside lax.scan, it
# beat the flax example's loop of single steps by ~14% for the cnn (review F,
# stop 18): a third candidate for flax+optax's faster way there.
UNROLL_BLOCK = 16


def _flax_block(state, images, labels, block):
    for idx in block:  # unrolled: `block` has a static leading axis
        state = flax_step(state, images[idx], labels[idx])
    return state


flax_block = jax.jit(_flax_block, donate_argnums=0)


@jax.jit
def flax_accuracy(state, images, labels):
    return jnp.mean(jnp.argmax(state.apply_fn({"params": state.params}, images), -1) == labels)


def compile_flax_epoch(state, way: str, data: dict, batch: int, compiler_options: dict | None = None):
    """``(epoch, compile seconds)``: ``epoch(state, order) -> state`` trains
    one flax+optax epoch over ``order`` (``(steps, batch)`` indices), in one
    ``lax.scan`` over the data on the device (``way='scan'``), as the flax
    example's Python loop of jitted steps over host batches (``way='loop'``),
    or as a loop of jitted blocks of ``UNROLL_BLOCK`` unrolled steps over the
    data on the device (``way='unroll'``).
    ``compiler_options``: XLA options for the scan's compilation."""
    start = time.perf_counter()
    if way == "scan":
        images, labels = jnp.asarray(data["image"]), jnp.asarray(data["label"])
        steps = len(data["label"]) // batch
        lowered = flax_scan.lower(state, images, labels, jnp.zeros((steps, batch), jnp.int32))
        compiled = lowered.compile(compiler_options=compiler_options)

        def epoch(state, order):
            return compiled(state, images, labels, jnp.asarray(order))
    elif way == "unroll":
        images, labels = jnp.asarray(data["image"]), jnp.asarray(data["label"])
        block = flax_block.lower(state, images, labels, jnp.zeros((UNROLL_BLOCK, batch), jnp.int32)).compile()
        single = flax_step.lower(state, images[:batch], labels[:batch]).compile()

        def epoch(state, order):
            whole = len(order) // UNROLL_BLOCK * UNROLL_BLOCK
            for start in range(0, whole, UNROLL_BLOCK):
                state = block(state, images, labels, jnp.asarray(order[start:start + UNROLL_BLOCK]))
            for idx in order[whole:]:  # the steps left over, one by one
                state = single(state, images[idx], labels[idx])
            return state
    else:
        compiled = flax_step.lower(state, data["image"][:batch], data["label"][:batch]).compile()

        def epoch(state, order):
            for idx in order:
                state = compiled(state, data["image"][idx], data["label"][idx])
            return state

    return epoch, time.perf_counter() - start


def time_flax(module: fnn.Module, way: str, data: dict, test: dict, batch: int, epochs: int,
              compiler_options: dict | None = None):  # fmt: skip
    """(median seconds per epoch, compile seconds, final test accuracy) of a flax module."""
    state = _flax_state(module, data["image"].shape[1:])
    n = len(data["label"]) // batch * batch
    rng = np.random.default_rng(0)
    epoch, compile_s = compile_flax_epoch(state, way, data, batch, compiler_options)
    times = []
    for _ in range(epochs):
        start = time.perf_counter()  # the epoch's shuffle included, as in fit's time_s (since stop 21)
        order = rng.permutation(len(data["label"]))[:n].reshape(-1, batch)
        state = jax.block_until_ready(epoch(state, order))
        times.append(time.perf_counter() - start)
    accuracy = float(flax_accuracy(state, jnp.asarray(test["image"]), jnp.asarray(test["label"])))
    return common.median(times[1:]), compile_s, accuracy


def time_jdl(model, way: str, data: dict, test: dict, batch: int, epochs: int) -> tuple[float, float, float]:
    """The same for a jdl model, timed by ``fit`` itself."""
    loader = Loader(data["image"], data["label"], batch_size=batch, shuffle=True, seed=0, drop_remainder=True)
    mode = "scan" if way == "scan" else "stream"
    result = train.fit(model, losses.cross_entropy, optim.adam(1e-3), loader, epochs=epochs, mode=mode,
                       progress=False)
    history = result.history
    score = train.evaluate(model, losses.cross_entropy, result.params, result.state, test)
    return common.median([h["time_s"] for h in history[1:]]), history[0]["compile_s"], score["accuracy"]


def run(quick: bool = False, names=("mlp", "cnn", "fmnist_2c2d"), batch: int = 128, rounds: int = 1,
        ways=("loop", "scan"), dtype: str | None = None) -> list[dict]:  # fmt: skip
    """One line per model and way.  With ``rounds`` > 1 both are timed that
    many times, jdl and flax+optax alternately, and the line gives the medians
    over rounds and the median of the per-round ratios (``round_ratios``): on
    a noisy machine epochs timed minutes apart differ more than the two
    libraries do.  ``dtype='bfloat16'``: both libraries' layers compute in
    bfloat16 (mixed precision: float32 parameters and optimizer)."""
    compute = None if dtype is None else jnp.dtype(dtype)
    suffix = "" if dtype is None else f"/{dtype}"
    on_cpu = jax.devices()[0].platform == "cpu"
    n_train = 4096 if quick else (12800 if on_cpu else 60000)
    data, test, source = common.mnist_shaped(n_train)
    test = {k: v[:2000] for k, v in test.items()}
    epochs = 3 if quick else 4
    records = []
    for name in names:
        for way in ways:
            # flax's convolutions in scan are ~25x slower on the CPU (FACTS): its faster way there is the
            # example's loop or unrolled blocks of steps, whichever is faster in this run
            ref_ways = ("loop", "unroll") if on_cpu and way == "scan" and name != "mlp" else (way,)
            timed = []
            for _ in range(rounds):
                ours = time_jdl(JDL[name](dtype=compute), way, data, test, batch, epochs)
                theirs = {w: time_flax(FLAX[name](dtype=compute), w, data, test, batch, epochs) for w in ref_ways}
                ref_way = min(theirs, key=lambda w: theirs[w][0])
                timed.append((ours, theirs[ref_way], {w: t[0] for w, t in theirs.items()}))
            (jdl_s, jdl_compile, jdl_acc), (ref_s, ref_compile, ref_acc), candidates = timed[-1]
            extra = {"reference_candidates_s": candidates} if len(ref_ways) > 1 else {}
            if rounds > 1:
                jdl_s, ref_s = (common.median([t[i][0] for t in timed]) for i in (0, 1))
                ratios = [ours[0] / theirs[0] for ours, theirs, _ in timed]
                extra |= {"round_ratios": ratios, "median_round_ratio": common.median(ratios)}
            records.append(common.line(
                f"train_epoch/{name}/{way}{suffix}", jdl_s, f"flax+optax {ref_way}{suffix}", ref_s, batch_size=batch,
                examples=len(data["label"]), data=source, jdl_compile_s=jdl_compile, reference_compile_s=ref_compile,
                jdl_test_accuracy=jdl_acc, reference_test_accuracy=ref_acc, epochs=epochs, rounds=rounds,
                **extra))  # fmt: skip
    return records


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--models", default="mlp,cnn,fmnist_2c2d")
    parser.add_argument("--rounds", type=int, default=1, help="time both libraries this many times, alternately")
    parser.add_argument("--ways", default="loop,scan")
    parser.add_argument("--dtype", help="the layers' computation dtype, e.g. bfloat16 (default: float32)")
    args = parser.parse_args()
    common.print_lines(run(args.quick, tuple(args.models.split(",")), rounds=args.rounds,
                           ways=tuple(args.ways.split(",")), dtype=args.dtype))  # fmt: skip
