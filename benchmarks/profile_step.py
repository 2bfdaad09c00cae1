"""Where a scan epoch's time goes: jdl's step with parts of its work removed, and kernel times.

``python benchmarks/profile_step.py variants [--quick]``: the whole-epoch
``lax.scan`` of jdl's training step (as ``fit(mode='scan')`` compiles it) for
the mlp and the cnn, with the per-step extras taken away one at a time,
against flax+optax's scan, one process, medians of epochs after a warm-up:

* ``full``: what ``fit`` runs (loss and accuracy of each step stacked as scan
  outputs; ``fit`` finds a non-finite loss among them after the epoch).
* ``loss_only``: the step's loss as its one output, no accuracy.
* ``bare``: no per-step outputs, the same work as flax+optax's step.

(Until stop 13 the step also tracked the first non-finite loss in its carry:
on an H200 that cost ~10 µs of a cnn step's 250, and it moved to the host.)

``python benchmarks/profile_step.py trace [--quick]``: 100 steps of the cnn
scan of flax+optax, of jdl as ``fit`` runs it, and of jdl's bare step, under
``jax.profiler`` (a Perfetto trace, parsed here): kernels per step, the sum of
their durations, the span from the first kernel to the last, and how busy the
device was over that span, with the costliest kernels.  A step whose kernels
add up to much less than its span is bound by launching, not by arithmetic.
(Nsight Compute attached to a JAX process profiled nothing in 200 s on an
H100; the profiler built into JAX needs no external tool.)
"""

from __future__ import annotations

import glob
import gzip
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np

if __package__ in (None, ""):
    import common  # type: ignore[no-redef]
    import train_epoch  # type: ignore[no-redef]
else:
    from benchmarks import common, train_epoch

from jdl import losses, models, optim
from jdl.nn import layers
from jdl.train.engine import Placement, scan_epoch, with_device_transform
from jdl.train.step import Carry, objective, train_step

BATCH = 128


def _bare_step(model, tx, with_loss: bool):
    """The step without metrics (flax+optax's work), returning its loss as the
    one metric when ``with_loss``."""
    loss_of = objective(model, losses.cross_entropy)
    value_and_grad = jax.value_and_grad(lambda p, s, b, k: loss_of(p, s, b, k)[0])

    def step(carry, batch, key, global_step):
        loss, grads = value_and_grad(carry.params, carry.state, batch, key)
        updates, opt_state = tx.update(grads, carry.opt_state, carry.params)
        new_carry = Carry(optim.apply_updates(carry.params, updates), carry.state, opt_state, carry.first_bad)
        return new_carry, ({"loss": loss} if with_loss else {})

    return step


def _variant(name: str, model, tx):
    if name == "full":
        return train_step(model, losses.cross_entropy, tx, guard=False)
    return _bare_step(model, tx, with_loss=name == "loss_only")


def jdl_program(model, tx, step, images, labels, order, unroll: int = 1):
    """jdl's scan epoch of ``step`` compiled for ``order``'s shape, the seconds
    that took, and a maker of fresh inputs."""
    params, model_state = model.init(jax.random.key(0), (1, *images.shape[1:]))

    def inputs():
        carry = Carry(params, model_state, tx.init(params), jnp.int32(-1))
        return (jax.tree_util.tree_map(jnp.copy, carry), images, labels, order, jax.random.key(0), 0, 0)

    start = time.perf_counter()
    compiled = scan_epoch(with_device_transform(step, None), Placement(BATCH), unroll).lower(*inputs()).compile()
    return compiled, time.perf_counter() - start, inputs


def jdl_epoch_seconds(model, tx, step, images, labels, orders, unroll: int = 1) -> tuple[float, float]:
    """(median seconds per epoch, compile seconds) of ``step`` in jdl's scan
    epoch: one warm-up epoch on ``orders[0]``, then one per further order."""
    epoch_fn, compile_s, inputs = jdl_program(model, tx, step, images, labels, orders[0], unroll)
    carry, key = inputs()[0], jax.random.key(0)
    times = []
    for e, order in enumerate(orders):
        start = time.perf_counter()
        carry, _ = jax.block_until_ready(epoch_fn(carry, images, labels, order, key, e, 0))
        times.append(time.perf_counter() - start)
    return common.median(times[1:]), compile_s


def flax_epoch_seconds(name: str, images, labels, orders, dtype=None) -> float:
    """Median seconds per epoch of flax+optax's scan epoch (``train_epoch``), timed as ``jdl_epoch_seconds``;
    ``dtype``: the layers' computation dtype."""
    state = train_epoch._flax_state(train_epoch.FLAX[name](dtype=dtype), tuple(images.shape[1:]))
    flax_fn = train_epoch.flax_scan.lower(state, images, labels, orders[0]).compile()
    state = flax_fn(state, images, labels, orders[0])  # warm-up (it donates the state)
    times = []
    for order in orders[1:]:
        start = time.perf_counter()
        state = jax.block_until_ready(flax_fn(state, images, labels, order))
        times.append(time.perf_counter() - start)
    return common.median(times)


def epoch_orders(n: int, epochs: int) -> list[jax.Array]:
    """``epochs + 1`` random orders of ``n`` examples as ``(steps, BATCH)`` indices."""
    rng, steps = np.random.default_rng(0), n // BATCH
    orders = [rng.permutation(n)[: steps * BATCH].reshape(steps, BATCH) for _ in range(epochs + 1)]
    return [jnp.asarray(order, jnp.int32) for order in orders]


def variants(quick: bool, names: tuple[str, ...] = ("mlp", "cnn"), unrolls: tuple[int, ...] = ()) -> list[dict]:
    """Each variant's epoch against flax+optax's; with ``unrolls``, also the
    full step with ``lax.scan`` unrolled that many steps per iteration."""
    data, _, source = common.mnist_shaped(2048 if quick else 60000)
    images, labels = jnp.asarray(data["image"]), jnp.asarray(data["label"])
    steps, records = len(data["label"]) // BATCH, []
    orders = epoch_orders(len(data["label"]), 3 if quick else 5)
    for name in ("mlp",) if quick else names:
        flax_s = flax_epoch_seconds(name, images, labels, orders)
        cases = [(v, 1) for v in ("full", "loss_only", "bare")]
        for variant, unroll in cases + [("full", u) for u in unrolls]:
            model, tx = train_epoch.JDL[name](), optim.adam(1e-3)
            jdl_s, _ = jdl_epoch_seconds(model, tx, _variant(variant, model, tx), images, labels, orders, unroll)
            label = variant if unroll == 1 else f"{variant}_unroll{unroll}"
            records.append(common.line(f"profile/{name}/{label}", jdl_s, "flax+optax scan", flax_s,
                                       data=source, steps=steps, jdl_us_per_step=1e6 * jdl_s / steps,
                                       reference_us_per_step=1e6 * flax_s / steps))  # fmt: skip
    return records


def _cnn_program(which: str, images, labels, steps: int, dtype=None):
    """The compiled cnn scan epoch of ``steps`` steps and a maker of fresh inputs
    (flax+optax's program donates them): flax+optax's, jdl's as ``fit`` runs it, jdl's bare
    step, jdl's with the first layer's bias unfolded (``jdl_unfolded``:
    ``nn.layers.MATMUL_BIAS_FOLD_MAX_CHANNELS = -1``), or with its windows
    stacked first (``jdl_patches_first``:
    ``nn.layers.MATMUL_PATCHES_FIRST_MAX_CHANNELS = 3``); ``dtype``: the
    layers' computation dtype."""
    order = jnp.arange(steps * BATCH, dtype=jnp.int32).reshape(steps, BATCH)
    if which == "flax":
        state = train_epoch._flax_state(train_epoch.FLAX["cnn"](dtype=dtype), (28, 28, 1))

        def inputs():
            return (jax.tree_util.tree_map(jnp.copy, state), images, labels, order)

        return train_epoch.flax_scan.lower(*inputs()).compile(), inputs
    model, tx = train_epoch.JDL["cnn"](dtype=dtype), optim.adam(1e-3)
    fold = -1 if which == "jdl_unfolded" else layers.MATMUL_BIAS_FOLD_MAX_CHANNELS
    first = 3 if which == "jdl_patches_first" else layers.MATMUL_PATCHES_FIRST_MAX_CHANNELS
    with (mock.patch.object(layers, "MATMUL_BIAS_FOLD_MAX_CHANNELS", fold),
          mock.patch.object(layers, "MATMUL_PATCHES_FIRST_MAX_CHANNELS", first)):  # fmt: skip
        compiled, _, inputs = jdl_program(model, tx, _variant("bare" if which == "jdl_bare" else "full", model, tx),
                                          images, labels, order)  # fmt: skip
    return compiled, inputs


def kernel_table(trace_file: str, steps: int, top: int = 12) -> dict:
    """Kernel durations per step from a Perfetto trace written by ``jax.profiler``.

    On a GPU, the events of the device's stream lines (one event per kernel or
    copy); on the CPU, the host events that carry an ``hlo_op``.  ``busy`` is
    the fraction of the span from the first kernel's start to the last one's
    end during which some kernel ran: what is not busy is the device waiting
    between kernels (launch latency, host work).
    """
    with gzip.open(trace_file) as f:
        trace = json.load(f)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    processes = {e["pid"]: e["args"]["name"] for e in events if e.get("ph") == "M" and e["name"] == "process_name"}
    threads = {(e["pid"], e["tid"]): e["args"]["name"] for e in events
               if e.get("ph") == "M" and e["name"] == "thread_name"}  # fmt: skip
    device = {pid for pid, name in processes.items() if "GPU" in name or "TPU" in name}
    if device:
        streams = {key for key in threads if key[0] in device and threads[key].lower().startswith("stream")}
        kept = [e for e in events if e.get("ph") == "X" and (e["pid"], e.get("tid")) in streams]
    else:
        kept = [e for e in events if e.get("ph") == "X" and "hlo_op" in e.get("args", {})]
    if not kept:
        return {"error": "no kernel events", "processes": sorted(processes.values()),
                "threads": sorted(set(threads.values()))[:40]}  # fmt: skip
    per_kernel: dict[str, list[float]] = {}
    for e in kept:
        label = f"{e.get('args', {}).get('hlo_op', '?')} | {e['name'][:60]}"
        per_kernel.setdefault(label, []).append(float(e["dur"]))
    intervals = sorted((float(e["ts"]), float(e["ts"]) + float(e["dur"])) for e in kept)
    busy, end = 0.0, intervals[0][0]
    for begin, finish in intervals:
        busy += max(0.0, finish - max(begin, end))
        end = max(end, finish)
    span = intervals[-1][1] - intervals[0][0]
    ranked = sorted(per_kernel.items(), key=lambda item: -sum(item[1]))
    return {
        "kernels_per_step": round(len(kept) / steps, 2),
        "kernel_us_per_step": round(sum(float(e["dur"]) for e in kept) / steps, 2),
        "span_us_per_step": round(span / steps, 2),
        "busy": round(busy / span, 4),
        "top": [{"kernel": label, "us_per_step": round(sum(d) / steps, 2), "per_step": round(len(d) / steps, 2)}
                for label, d in ranked[:top]],  # fmt: skip
        "streams": sorted({threads.get((e["pid"], e.get("tid")), "?") for e in kept})[:8],
    }


def _traced(run: Callable, steps: int, out_dir: str | None, name: str) -> dict:
    """``run()`` under ``jax.profiler``: its ``kernel_table`` over ``steps``
    steps; the trace file is kept in ``out_dir`` as ``trace-{name}.json.gz``."""
    with tempfile.TemporaryDirectory() as log_dir:
        with jax.profiler.trace(log_dir, create_perfetto_trace=True):
            run()
        found = glob.glob(f"{log_dir}/**/*.trace.json.gz", recursive=True)
        if out_dir and found:
            shutil.copy(found[0], Path(out_dir) / f"trace-{name}.json.gz")
        return kernel_table(found[0], steps) if found else {"error": "no trace file written"}


def trace_comparison(quick: bool, out_dir: str | None = None, k: int = 8, dtype=None,
                     methods: tuple[str, ...] = ("lax", "matmul")) -> list[dict]:  # fmt: skip
    """Kernel table of ``k`` cnn configurations vmapped in jdl.compare's engine
    (one epoch after a compiled warm-up, evaluation included), per step, for
    each convolution ``method`` (``'lax'``: cuDNN's grouped convolutions under
    vmap); ``dtype``: the layers' computation dtype (bfloat16: mixed precision)."""
    import comparison

    records = []
    data, test, _ = common.mnist_shaped(1024 if quick else 60000)
    test = {key: value[:1000] for key, value in test.items()}
    lrs, steps = list(np.geomspace(1e-4, 3e-3, k)), 2 * (len(data["label"]) // BATCH)
    suffix = "" if dtype is None else f"/{jnp.dtype(dtype).name}"
    for method in methods:
        model = models.cnn(conv_method=method, dtype=dtype)
        table = _traced(lambda model=model, data=data, test=test, lrs=lrs: comparison._epoch_seconds(
            model, data, test, lrs, [0] * k, BATCH, 2, True), steps, out_dir,
            f"comparison-{method}{suffix.replace('/', '-')}")  # fmt: skip
        records.append({"benchmark": f"profile/trace/comparison/cnn{suffix}/{k}_configs/{method}",
                        "device": common.device_name(), "jax_version": jax.__version__, "steps": steps,
                        "note": "two epochs and their evaluations, per step; the span includes compiling",
                        **table})  # fmt: skip
    return records


def trace(quick: bool, out_dir: str | None = None, dtype=None,
          programs: tuple[str, ...] = ("flax", "jdl", "jdl_bare")) -> list[dict]:  # fmt: skip
    """The cnn scan epoch of flax+optax, jdl (as fit runs it) and jdl's bare
    step (``programs``: see ``_cnn_program``) under ``jax.profiler``: the
    kernel table of each (``kernel_table``); ``dtype``: the layers' computation
    dtype.  With ``out_dir``, each program's optimized HLO is kept there too
    (``hlo-cnn-{program}[-dtype].txt.gz``): which fusion each kernel is, for
    sessions without a device."""
    steps, records = (8 if quick else 100), []
    data, _, _ = common.mnist_shaped(steps * BATCH)
    images, labels = jnp.asarray(data["image"]), jnp.asarray(data["label"])
    suffix = "" if dtype is None else f"-{jnp.dtype(dtype).name}"
    for which in programs:
        fn, inputs = _cnn_program(which, images, labels, steps, dtype)
        if out_dir:
            with gzip.open(Path(out_dir) / f"hlo-cnn-{which}{suffix}.txt.gz", "wt") as f:
                f.write(fn.as_text())
        for _ in range(2):
            jax.block_until_ready(fn(*inputs()))
        ready = jax.block_until_ready(inputs())
        start = time.perf_counter()
        jax.block_until_ready(fn(*ready))
        wall = time.perf_counter() - start
        ready = jax.block_until_ready(inputs())
        table = _traced(lambda fn=fn, ready=ready: jax.block_until_ready(fn(*ready)), steps, out_dir,
                        f"cnn-{which}{suffix}")  # fmt: skip
        records.append({"benchmark": f"profile/trace/cnn{suffix.replace('-', '/')}/{which}",
                        "device": common.device_name(), "jax_version": jax.__version__, "steps": steps,
                        "wall_us_per_step": round(1e6 * wall / steps, 2), **table})  # fmt: skip
    return records


if __name__ == "__main__":
    part = trace if sys.argv[1] == "trace" else variants
    for line in part("--quick" in sys.argv):
        print(json.dumps(line), flush=True)
