"""Two ways through an epoch.

* **stream**: a Python loop of one compiled step per batch, batches coming
  from the host loader (and its host transform) and prefetched to the device.
* **scan**: the whole epoch as one compiled program: the split resident on the
  device, each batch gathered there by an index permutation, ``lax.scan``
  over the steps, no host round-trip per step.

Both see the same batches in the same order (the loader's
``permutation(epoch)``) and the same PRNG keys (``step_key(seed, epoch,
step)``), so they train to the same parameters up to float rounding.

On the CPU, XLA's convolutions inside ``lax.scan`` run about 25x slower than
the same step called from a Python loop (shared/FACTS.md), so ``auto`` never
takes the scan path there for a model whose forward pass holds a
``conv_general_dilated``.  jdl's own ``nn.Conv`` holds none on the CPU: its
``method='auto'`` computes convolutions as matrix products there, which a scan
does not slow, so jdl's convolutional models train in the scan engine on the
CPU too.
"""

from __future__ import annotations

import contextlib
import os
import re
import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jdl.data.prefetch import put
from jdl.train.step import Carry, all_finite, step_key

# A device transform gets its own key, folded from the step's key.
_AUGMENT_SALT = 0x5EED


def with_device_transform(step: Callable, device_transform: Callable | None) -> Callable:
    """``run(carry, batch, base_key, epoch, index, global_step)``: derive the
    step's key, apply ``device_transform(key, batch)`` if given, take the step."""

    def run(carry: Carry, batch: dict, base_key: jax.Array, epoch, index, global_step):
        key = step_key(base_key, epoch, index)
        if device_transform is not None:
            batch = device_transform(jax.random.fold_in(key, _AUGMENT_SALT), batch)
        return step(carry, batch, key, global_step)

    return run


def uses_convolution(model, params, state, input_shape) -> bool:
    """Whether the model's forward pass contains a convolution (read off its jaxpr)."""
    x = jax.ShapeDtypeStruct(tuple(input_shape), jnp.float32)
    jaxpr = jax.make_jaxpr(lambda p, s, x: model.apply(p, s, x)[0])(params, state, x)

    def walk(jaxpr) -> bool:
        for equation in jaxpr.eqns:
            if equation.primitive.name == "conv_general_dilated":
                return True
            for param in equation.params.values():
                inner = getattr(param, "jaxpr", param)
                if hasattr(inner, "eqns") and walk(inner):
                    return True
        return False

    return walk(jaxpr.jaxpr)


def choose_mode(mode: str, *, has_conv: bool, has_host_transform: bool, data_bytes: int) -> str:
    """``'stream'`` or ``'scan'`` for ``mode='auto'``; checks a forced mode."""
    if mode not in ("auto", "stream", "scan"):
        raise ValueError(f"mode must be 'auto', 'stream' or 'scan'; got {mode!r}")
    if mode == "scan" and has_host_transform:
        raise ValueError(
            "mode='scan' keeps the data on the device and cannot run the loader's host transform per batch; "
            "pass the transform as fit(..., device_transform=fn(key, batch)) or use mode='stream'"
        )
    if mode != "auto":
        return mode
    if has_host_transform:
        return "stream"
    device = jax.devices()[0]
    if device.platform == "cpu":
        return "stream" if has_conv else "scan"
    limit = (device.memory_stats() or {}).get("bytes_limit", 8 << 30)
    return "scan" if data_bytes < limit // 4 else "stream"


class Placement:
    """Where arrays live: one device, or a data-parallel mesh over all devices
    (batch sharded along its first axis, everything else replicated): the
    local ones, or with several processes (``jax.distributed``) every
    process's, each process placing its own devices' parts (``prefetch.put``)."""

    def __init__(self, batch_size: int, data_parallel: bool | str = "auto"):
        if not isinstance(data_parallel, (bool, str)):
            raise TypeError(f"fit: data_parallel must be True, False or 'auto'; got {data_parallel!r}")
        if isinstance(data_parallel, str) and data_parallel != "auto":
            raise ValueError(f"fit: data_parallel must be True, False or 'auto'; got {data_parallel!r}")
        devices = jax.devices()  # in one process, its local devices
        use_mesh = len(devices) > 1 and data_parallel is not False
        if use_mesh and batch_size % len(devices):
            if data_parallel is True or jax.process_count() > 1:  # several processes: each alone would diverge
                raise ValueError(
                    f"data-parallel training over {len(devices)} devices needs a batch size divisible by "
                    f"{len(devices)}; got batch_size={batch_size}"
                )
            warnings.warn(
                f"batch_size {batch_size} is not divisible by the {len(devices)} local devices: training on one "
                f"device; use a multiple of {len(devices)} to train on all, or data_parallel=False to train on one "
                "without this warning",
                stacklevel=3,
            )
            use_mesh = False
        self.num_devices = len(devices) if use_mesh else 1
        if use_mesh:
            mesh = Mesh(np.array(devices), ("data",))
            self.replicated = NamedSharding(mesh, PartitionSpec())
            self.batch = NamedSharding(mesh, PartitionSpec("data"))
        else:
            self.replicated = self.batch = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])

    def replicate(self, tree: Any) -> Any:
        return put(tree, self.replicated)

    def shard_batch(self, batch: dict) -> dict:
        size = len(next(iter(batch.values())))
        sharding = self.batch if size % self.num_devices == 0 else self.replicated
        return put(batch, sharding)

    def constrain_batch(self, batch: dict) -> dict:
        if self.num_devices == 1:
            return batch
        return jax.lax.with_sharding_constraint(batch, self.batch)


# XLA options for jdl's training and evaluation programs on a GPU
# (``compile_lowered``: fit's epoch, step and evaluation programs,
# ``evaluate``'s, the comparison's epochs and steps).  Autotuning level 1
# (XLA's default is 4): candidate convolution and matrix-product kernels are
# still timed and the fastest chosen, without initializing, re-initializing
# and cross-checking their buffers.  Measured on an H200 with the level set for the whole process
# (``XLA_FLAGS``), the flax CNN's cold start (one epoch of 2,560 images and its
# accuracy, fresh processes, 3 rounds): 5.63 s against 7.99 s, 4.29 s with
# threefry as a kernel in the whole process too (see ``lower_once``); its
# bfloat16 epoch of 60,000 images 0.0644 s against 0.0648 s, within the
# spread between processes, the same test accuracy (benchmarks/README.md,
# stop 19).  Level 0 (no timing) compiled fastest but ran jdl's epoch 41 times
# and its evaluation 15 times slower.  Command buffers (CUDA graphs) changed
# nothing on an H100.  ``{}``: XLA's defaults.  An option the user sets in
# ``XLA_FLAGS`` is left to the user's value (``_options_not_in_xla_flags``).
GPU_COMPILER_OPTIONS: dict[str, Any] = {"xla_gpu_autotune_level": 1}


# Steps per loop iteration of ``fit``'s scan epoch, by backend (absent: 1).
# Unrolling trades compilation for step time: the flax CNN's scan epoch on an
# H200 (benchmarks/step_variants.py, bfloat16) took 0.0587 / 0.0569 / 0.0562 s
# with 1 / 2 / 4 steps per iteration, compiling in 0.81 / 1.03 / 1.71 s;
# through ``fit``, fresh processes, 2 rounds (stop 20, ``unroll_sweep``):
# 1 / 2 / 4 steps 0.0644-0.0659 / 0.0650-0.0659 / 0.0662 s, compiling in
# 3.1-3.2 / 3.6-4.0 / 4.4-4.5 s, so ``fit`` does not unroll.
SCAN_UNROLL: dict[str, int] = {}


def scan_unroll() -> int:
    """``SCAN_UNROLL``'s steps per iteration on the default backend."""
    return SCAN_UNROLL.get(jax.default_backend(), 1)


# XLA options for ``fit``'s evaluation program on a GPU, over
# ``GPU_COMPILER_OPTIONS``: its matrix products through cuBLAS, not Triton
# kernels compiled and timed for each shape.  Measured on an H200 (stop 20,
# fresh processes): the flax CNN's bfloat16 evaluation program (windows of
# 1,000 images) compiled in 0.66 s against 1.64 s and evaluated the 10,000
# test images in 4.5 ms against 5.7 ms; that CNN to 92% on Fashion-MNIST
# from the call took 5.1 s against 6.4 s (2 rounds, same machine): less
# compilation running beside the epoch's.  Without any timing of candidate
# kernels (``{"xla_gpu_autotune_level": 0}``) each evaluation took 78-81 ms.
# The same for the training programs (``GPU_COMPILER_OPTIONS``) started
# faster still (4.4 s to 92%) but ran the epoch 8-24% slower (cnn,
# fmnist_2c2d, mlp) and the comparison's vmapped epoch 33% slower: not
# adopted there (benchmarks/README.md, stop 20).
GPU_EVALUATION_COMPILER_OPTIONS: dict[str, Any] = {"xla_gpu_enable_triton_gemm": False}


def _options_not_in_xla_flags(options: dict[str, Any]) -> dict[str, Any]:
    """``options`` less those the ``XLA_FLAGS`` environment variable sets
    (``--name=...``): JAX applies compiler options over ``XLA_FLAGS``, so
    without this jdl's defaults would silently override the user's flags."""
    flags = os.environ.get("XLA_FLAGS", "")
    return {name: value for name, value in options.items()
            if not re.search(rf"(^|\s)--{re.escape(name)}(=|\s|$)", flags)}  # fmt: skip


def compile_lowered(lowered: jax.stages.Lowered, evaluation: bool = False) -> jax.stages.Compiled:
    """``lowered.compile()``, with ``GPU_COMPILER_OPTIONS`` on a GPU (and
    ``GPU_EVALUATION_COMPILER_OPTIONS`` over them for an ``evaluation``
    program), except those the user sets in ``XLA_FLAGS``."""
    if jax.default_backend() == "gpu":
        options = GPU_COMPILER_OPTIONS | (GPU_EVALUATION_COMPILER_OPTIONS if evaluation else {})
        options = _options_not_in_xla_flags(options)
        if options:
            return lowered.compile(compiler_options=dict(options))
    return lowered.compile()


# XLA options on the CPU for a program that runs once (initialization):
# without LLVM's optimization passes, which take most of its compilation and
# would save little on its one run.  jdl's CNN initialized, 2 CPU cores: 1.5 s
# to compile, 0.5 s without them (python benchmarks/cold_start.py).  Not on a
# GPU: XLA's GPU backend does not support unoptimized code generation.
CPU_RUN_ONCE_COMPILER_OPTIONS: dict[str, int] = {"xla_backend_optimization_level": 0}


def compile_once(lowered: jax.stages.Lowered, platform: str | None = None) -> jax.stages.Compiled:
    """``lowered.compile()`` for a program called once: with
    ``CPU_RUN_ONCE_COMPILER_OPTIONS`` when it runs on the CPU (``platform``:
    where it was lowered for; default, the default backend)."""
    options = CPU_RUN_ONCE_COMPILER_OPTIONS if (platform or jax.default_backend()) == "cpu" else {}
    return lowered.compile(compiler_options=dict(options))


# Whether ``fit`` runs its start program (the model's initialization and the
# optimizer's first state, run once) on the host's CPU when the default
# backend is an accelerator, then copies what it returns to the device.  On
# the CPU that program compiles without LLVM's optimizations in 0.5 s for the
# flax CNN (2 cores); on an H200's host XLA's GPU backend took 1.4 s for it
# alone and 4.3-4.7 s side by side with the epoch and evaluation programs, the
# longest of the three (benchmarks/README.md, stop 15).  Off until measured
# (device_check.py's ``cold_start_lab``).
RUN_ONCE_ON_HOST = False


def run_once_placement() -> jax.sharding.Sharding | None:
    """Where ``fit``'s start program runs: the host CPU's device under
    ``RUN_ONCE_ON_HOST`` on an accelerator, else None (the default device)."""
    if RUN_ONCE_ON_HOST and jax.default_backend() != "cpu":
        return jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])
    return None


# Whether programs run once (initialization) are lowered with jax.random's
# threefry hash as JAX's precompiled GPU kernel rather than its unrolled
# rounds, which XLA compiles anew for each draw's shape.  The same bits either
# way; the kernel's inputs (keys and counters broadcast to each draw's shape,
# four uint32 arrays) take memory for the moment of the draw.  Only there: in
# a training step a kernel call cannot fuse with what uses the bits (dropout's
# masks).  Measured on an H200 for the whole process
# (``JAX_THREEFRY_GPU_KERNEL_LOWERING``), where the start program's
# compilation gained most, 4.8 -> 3.1 s (stop 19, ``GPU_COMPILER_OPTIONS``).
# As set here, for the programs run once alone, with level 1: the cold start
# 4.50 s against 7.84 s with XLA's and JAX's defaults (stop 20, same rounds).
RUN_ONCE_THREEFRY_KERNEL = True

try:  # the setting's state: JAX has no public context manager for it
    from jax._src.config import threefry_gpu_kernel_lowering as _THREEFRY_KERNEL_SETTING
except ImportError:  # another JAX: lowered as by default
    _THREEFRY_KERNEL_SETTING = None


def _threefry_kernel_lowering() -> contextlib.AbstractContextManager:
    """A context in which JAX lowers threefry to its GPU kernel, when
    ``RUN_ONCE_THREEFRY_KERNEL`` and the default backend is a GPU (and this
    JAX has the setting); otherwise one that changes nothing."""
    if RUN_ONCE_THREEFRY_KERNEL and _THREEFRY_KERNEL_SETTING is not None and jax.default_backend() == "gpu":
        try:
            return _THREEFRY_KERNEL_SETTING(True)
        except TypeError:  # another JAX's setting, not a context manager
            pass
    return contextlib.nullcontext()


def lower_once(fn: Callable, *args, **jit_kwargs) -> jax.stages.Lowered:
    """``jax.jit(fn, **jit_kwargs).lower(*args)`` for a program called once,
    with ``RUN_ONCE_THREEFRY_KERNEL``'s lowering of random draws."""
    with _threefry_kernel_lowering():
        return jax.jit(fn, **jit_kwargs).lower(*args)


def run_once(fn: Callable, *args):
    """``jax.jit(fn)(*args)`` for a program called once (``lower_once``, ``compile_once``)."""
    return compile_once(lower_once(fn, *args))(*args)


def stream_step(run: Callable) -> Callable:
    """One step, jitted, carry donated: for the Python loop."""
    return jax.jit(run, donate_argnums=0)


# Steps per call of the stream engine on an accelerator: batches arrive in
# chunks of this many (``prefetch_to_device(..., stack=True)``) and one
# compiled ``lax.scan`` runs a chunk's steps, as Keras's
# ``steps_per_execution`` does (0: one call per step).  A step shorter than
# the host's cost per step (its dispatch, the feeding thread's share) then
# no longer waits for the host: batch by batch, a 100 µs step fed by
# prefetching took 107-128 µs against 99-108 µs with the data resident (H200,
# stop 15).  Not used on the CPU, where convolutions in a scan are slow
# (``choose_mode``).  The chunk is the largest divisor of the epoch's full
# steps from half of this to this (``runner.chunk_dividing``), so that an
# epoch compiles one chunk program and, for a last smaller batch, one more.
# Chosen without a device measurement (stop 23):
# ``benchmarks/device_check.py --parts feed_stacked,stream_chunks`` measures it.
STREAM_CHUNK = 64


def largest_divisor(n: int, low: int, high: int) -> int | None:
    """The largest divisor of ``n`` in ``[low, high]``, or None: a chunk
    size that splits ``n`` steps or examples into equal chunks, so that one
    compiled program runs them all."""
    return next((size for size in range(high, max(low, 1) - 1, -1) if n % size == 0), None)


def stream_chunk(run: Callable, placement: Placement) -> Callable:
    """``(carry, chunk, base_key, epoch, first_index, first_global_step) ->
    (carry, metrics)``: the chunk's batches (leaves ``(steps, B, ...)``) as
    steps ``first_index, first_index + 1, ...`` of ``epoch`` in one
    ``lax.scan``, the metrics one row per step; carry donated, as
    ``stream_step``'s."""

    def chunk_fn(carry, chunk, base_key, epoch, first_index, first_global_step):
        def body(carry, xs):
            batch, offset = xs
            return run(carry, placement.constrain_batch(batch), base_key, epoch, first_index + offset,
                       first_global_step + offset)  # fmt: skip

        steps = jax.tree_util.tree_leaves(chunk)[0].shape[0]
        return lax.scan(body, carry, (chunk, jnp.arange(steps, dtype=jnp.int32)))

    return jax.jit(chunk_fn, donate_argnums=0)


def scan_epoch(run: Callable, placement: Placement, unroll: int = 1) -> Callable:
    """``(carry, images, labels, order, base_key, epoch, first_global_step) ->
    (carry, metrics)``: ``order`` is ``(steps, batch)`` indices; the metrics
    are the steps' (one row per step) and ``params_finite``, whether the
    parameters the epoch ends with are all finite (the fast step checks
    nothing; this saves the caller a program of its own).  ``unroll`` steps per
    loop iteration (``lax.scan``'s).  The carry is not donated: ``fit`` keeps
    the epoch's starting carry for a replay, and this is that copy made
    inside the program (``EpochRunner.starting_carry``)."""

    def epoch_fn(carry, images, labels, order, base_key, epoch, first_global_step):
        def body(carry, xs):
            indices, index = xs
            batch = placement.constrain_batch({"image": images[indices], "label": labels[indices]})
            return run(carry, batch, base_key, epoch, index, first_global_step + index)

        steps = order.shape[0]
        carry, metrics = lax.scan(body, carry, (order, jnp.arange(steps, dtype=jnp.int32)), unroll=unroll)
        return carry, metrics | {"params_finite": all_finite(carry.params)}

    return jax.jit(epoch_fn)


def windows(n: int, batch_size: int) -> list[tuple[int, int]]:
    """``(start, skip)`` of each evaluation window over ``n`` examples: windows
    of ``min(batch_size, n)``, the last moved back to fit and told to skip
    what the one before it counted."""
    size = min(batch_size, n)
    return [(min(begin, n - size), begin - min(begin, n - size)) for begin in range(0, n, size)]


def evaluate_arrays(window_fn: Callable, params, state, images, labels, batch_size: int) -> dict[str, float]:
    """Mean loss and accuracy over arrays, one compiled window at a time,
    fetched together and summed on the host (no eager device ops in between:
    on a CPU mesh those interleave with collectives and can deadlock them)."""
    n = len(images)
    if n == 0:
        raise ValueError("evaluate: the evaluation data is empty")
    outputs = [window_fn(params, state, images, labels, start, skip) for start, skip in windows(n, batch_size)]
    sums = jax.device_get(outputs)
    return {"loss": float(sum(loss for loss, _ in sums)) / n, "accuracy": float(sum(c for _, c in sums)) / n}
