"""The accelerator checks in one prepared call, with a profile of the misses.

Device time is short (minutes a session), so everything the accelerator
goals need runs from this one script, saving its lines after each part:

1. ``kernels``: how many kernels one training step launches, jdl against
   flax+optax (top-level instructions of the optimized HLO: fusions, library
   calls, copies), and the seconds per step: a step that costs a few
   microseconds per kernel is launch-bound, not compute-bound.
2. ``command_buffers``: the cnn epoch again with XLA command buffers (CUDA
   graphs) extended to loops, in a subprocess with
   ``XLA_FLAGS=--xla_gpu_enable_command_buffer=...``.
3. the benchmarks of ``run.py`` that need an accelerator: ``train_epoch``,
   ``time_to_accuracy``, ``comparison`` (vmapped), with variants (convolution
   method, prefetch chunk and thread switch interval).
4. ``trace``, ``trace_comparison`` and ``profile_variants``
   (``profile_step.py``): kernel durations per step from ``jax.profiler``
   (the cnn step, the vmapped comparison), and the step with its extras
   removed; ``step_variants`` (``step_variants.py``): convolution method per
   layer, bias gradient, unrolled scan.
5. ``cold_start`` (``cold_start.py``): from the call to the result in fresh
   processes, no compilation cache, jdl against flax+optax; ``cold_start_cnn``
   against ``cold_start_threefry_kernel``: the cnn's, without and with JAX's
   threefry kernel lowering on the GPU (``threefry_kernel``); ``cold_start_lab``
   (``cold_start.lab``): jdl's cold start under each candidate setting for
   its compilation (``cold_start.LAB``) against its defaults, and
   ``epoch_flags``: what the XLA flags among them cost the cnn's epoch.
6. ``bf16_unroll2``: the cnn's bfloat16 epoch and time to 92% with ``fit``'s
   scan unrolled two steps per iteration (``unrolled``), against ``bf16`` and
   ``time_to_accuracy_bf16``.
7. settings in fresh processes (``cold_start.LAB``): ``epoch_settings``,
   ``comparison_settings`` and ``epoch_settings_models`` (what a setting that
   shortens the cold start costs each epoch), ``cold_to_92`` and
   ``cold_to_92_evaluation`` (to 92% on real Fashion-MNIST from the call),
   ``unroll_sweep`` (``fit``'s scan unrolled 1, 2 and 4 steps),
   ``autotune_cache`` (to 92% with XLA's per-fusion autotuning cache, the
   first of 3 rounds filling it).
8. ``feed_stacked``: the 100 µs step fed 64 steps per dispatch from
   ``prefetch_to_device(loader, stack=True)`` against the same scan over a
   resident chunk, beside ``feed``'s per-batch line.
9. ``stream_chunks``: ``fit``'s stream engine with 64 steps per call
   (``engine.STREAM_CHUNK``) against one call per step, beside the flax
   example's loop (mlp and cnn, bfloat16).

On the device machine, from the repository root, with Fashion-MNIST's four
``.gz`` files in ``.device-data/fashion-mnist`` (carried; no TensorFlow needed)::

    python benchmarks/device_check.py --out "$OUT"

writes ``$OUT/device.json`` and prints the lines as they come; ``--parts
trace,feed_more`` runs only the parts named, in that order.  ``--quick`` is a smoke run of
every part but time-to-92% (also on the CPU).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
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
from jdl.train import engine
from jdl.train.engine import stream_step, with_device_transform
from jdl.train.step import Carry, train_step

HERE = Path(__file__).resolve().parent
NOT_KERNELS = {"parameter", "constant", "get-tuple-element", "tuple", "bitcast"}
COMMAND_BUFFERS = "FUSION,CUBLAS,CUBLASLT,CUDNN,CUSTOM_CALL,CONDITIONAL,WHILE"
COMMAND_BUFFER_OPTIONS = {"xla_gpu_enable_command_buffer": COMMAND_BUFFERS}


def entry_kernels(hlo_text: str) -> dict[str, int]:
    """Count of each top-level instruction of the ENTRY computation that runs
    as a kernel or library call (everything but parameters, constants,
    tuples and bitcasts)."""
    entry = hlo_text[hlo_text.index("\nENTRY") :]
    body = entry[: entry.index("\n}")]
    counts: dict[str, int] = {}
    for op in re.findall(r"= \S+ ([\w-]+)\(", body):
        if op not in NOT_KERNELS:
            counts[op] = counts.get(op, 0) + 1
    return counts


def kernels(quick: bool) -> list[dict]:
    """Kernels per training step (batch 128) and seconds per step, jdl and flax+optax."""
    batch = 128
    x = jnp.zeros((batch, 28, 28, 1), jnp.float32)
    y = jnp.zeros((batch,), jnp.int32)
    batch_dict, key, calls = {"image": x, "label": y}, jax.random.key(0), 5 if quick else 200
    records = []
    for name in ("mlp",) if quick else ("mlp", "cnn", "fmnist_2c2d"):
        flax_state = train_epoch._flax_state(train_epoch.FLAX[name](), (28, 28, 1))
        flax_compiled = train_epoch.flax_step.lower(flax_state, x, y).compile()
        model, tx = train_epoch.JDL[name](), optim.adam(1e-3)
        params, state = model.init(jax.random.key(0), (1, 28, 28, 1))
        carry = Carry(params, state, tx.init(params), jnp.int32(-1))
        run = with_device_transform(train_step(model, losses.cross_entropy, tx, guard=False), None)
        jdl_compiled = stream_step(run).lower(carry, batch_dict, key, 0, 0, 0).compile()
        ours, theirs = entry_kernels(jdl_compiled.as_text()), entry_kernels(flax_compiled.as_text())
        jdl_s = _seconds_per_call(lambda c, f=jdl_compiled: f(c, batch_dict, key, 0, 0, 0)[0], carry, calls)
        flax_s = _seconds_per_call(lambda s, f=flax_compiled: f(s, x, y), flax_state, calls)
        records.append(common.line(
            f"kernels/{name}", jdl_s, "flax+optax step", flax_s, jdl_kernels=sum(ours.values()),
            reference_kernels=sum(theirs.values()), jdl_kernel_kinds=ours, reference_kernel_kinds=theirs,
            jdl_us_per_kernel=1e6 * jdl_s / max(1, sum(ours.values())),
            reference_us_per_kernel=1e6 * flax_s / max(1, sum(theirs.values()))))  # fmt: skip
    return records


def _seconds_per_call(step, first, calls: int) -> float:
    """Median seconds per call of ``value = step(value)`` over five runs of ``calls`` calls."""
    value = jax.block_until_ready(step(first))
    times = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(calls):
            value = step(value)
        jax.block_until_ready(value)
        times.append((time.perf_counter() - start) / calls)
    return common.median(times)


def _lines_with_flags(flags: str, code: str) -> list[dict]:
    """The benchmark lines ``code`` (an expression for a list of them, with
    ``train_epoch`` imported) gives in a fresh process with ``flags`` added to
    ``XLA_FLAGS``; one line saying why when it fails."""
    flags = f"{os.environ.get('XLA_FLAGS', '')} {flags}".strip()
    try:
        lines = _json_from_fresh_process(f"import train_epoch; print(json.dumps({code}))",
                                         {**os.environ, "XLA_FLAGS": flags})  # fmt: skip
    except RuntimeError as error:
        return [common.line("fresh_process", float("nan"), "default flags", float("nan"),
                            failed=str(error), code=code, xla_flags=flags)]  # fmt: skip
    return [{**line, "xla_flags": flags} for line in lines]


def _json_from_fresh_process(code: str, environment: dict | None = None):
    """What ``code`` prints last, one JSON line, parsed: run in a fresh Python
    process from the repository's root with ``benchmarks/`` and the root on
    its path (``json`` imported), in ``environment`` (default: this one's);
    a RuntimeError with the end of its stderr when it fails."""
    done = subprocess.run([sys.executable, "-c", f"import json, sys; sys.path[:0] = ['benchmarks', '.']; {code}"],
                          capture_output=True, text=True, cwd=HERE.parent, env=environment, timeout=600)  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-2000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def command_buffers(quick: bool) -> list[dict]:
    """The cnn epoch (``train_epoch``) in a subprocess with command buffers for loops."""
    lines = _lines_with_flags(f"--xla_gpu_enable_command_buffer={COMMAND_BUFFERS}",
                              f"train_epoch.run({quick}, ('mlp',) if {quick} else ('cnn', 'mlp'))")  # fmt: skip
    return [{**line, "benchmark": f"command_buffers/{line['benchmark']}"} for line in lines]


# XLA flags that may shorten compilation (``cold_start.LAB``), for their cost
# to the epoch they compile: label -> flags.
EPOCH_FLAGS = {"default": "", "autotune0": "--xla_gpu_autotune_level=0",
               "triton_gemm_off": "--xla_gpu_enable_triton_gemm=false",
               "autotune1": "--xla_gpu_autotune_level=1"}  # fmt: skip


def epoch_flags(quick: bool, labels: tuple[str, ...] = ("default", "autotune0", "triton_gemm_off")) -> list[dict]:
    """The cnn's bfloat16 scan epoch (``train_epoch``, jdl and flax+optax)
    in a fresh process under each of ``EPOCH_FLAGS``: what compiling without
    timing candidate kernels, or without Triton's matrix products, costs the
    epoch (the lines give each library's compile seconds too)."""
    code = f"train_epoch.run({quick}, ('mlp',) if {quick} else ('cnn',), ways=('scan',), dtype='bfloat16')"
    records = []
    for label in labels:
        records += _suffixed(_lines_with_flags(EPOCH_FLAGS[label], code), label)
    return records


# XLA options for ``fit``'s evaluation program (``engine.GPU_EVALUATION_COMPILER_OPTIONS``
# candidates): label -> options.
EVALUATION_OPTIONS = {"xla_default": {}, "autotune0": {"xla_gpu_autotune_level": 0},
                      "autotune1": {"xla_gpu_autotune_level": 1},
                      "autotune1+cublas": {"xla_gpu_autotune_level": 1,
                                           "xla_gpu_enable_triton_gemm": False}}  # fmt: skip


def evaluation_child(label: str, quick: bool, calls: int = 20) -> dict:
    """In this (fresh) process: ``fit``'s evaluation program for the cnn in
    bfloat16 (windows of 1,000 test images, ``step.eval_step``) compiled with
    ``EVALUATION_OPTIONS[label]`` exactly; its compile seconds, the median
    seconds of one evaluation of the test split over ``calls`` calls, and the
    accuracy."""
    from jdl.train.engine import evaluate_arrays
    from jdl.train.step import eval_step

    _, test, source = common.mnist_shaped(512)
    n = 2000 if quick else len(test["label"])
    images, labels = jax.device_put(test["image"][:n]), jax.device_put(test["label"][:n])
    model = models.cnn(dtype=jnp.bfloat16)
    params, state = model.init(jax.random.key(0), (1, *images.shape[1:]))
    lowered = jax.jit(eval_step(model, losses.cross_entropy, 1000)).lower(params, state, images, labels, 0, 0)
    begun = time.perf_counter()
    program = lowered.compile(compiler_options=dict(EVALUATION_OPTIONS[label]))
    compile_s = time.perf_counter() - begun
    result = evaluate_arrays(program, params, state, images, labels, 1000)  # warm-up
    times = []
    for _ in range(3 if quick else calls):
        begun = time.perf_counter()
        evaluate_arrays(program, params, state, images, labels, 1000)
        times.append(time.perf_counter() - begun)
    return {"seconds": common.median(times), "compile_s": compile_s, "accuracy": result["accuracy"],
            "examples": n, "data": source}  # fmt: skip


def evaluation_speed(quick: bool) -> list[dict]:
    """``evaluation_child`` for each of ``EVALUATION_OPTIONS``, each in a
    fresh process (in one process XLA's autotuning results of the first
    compilation serve the next): what compiling the evaluation with less
    autotuning saves, and costs each epoch."""
    children = {}
    for label in EVALUATION_OPTIONS:
        code = f"import device_check; print(json.dumps(device_check.evaluation_child({label!r}, {quick})))"
        try:
            children[label] = _json_from_fresh_process(code)
        except RuntimeError as error:
            raise RuntimeError(f"evaluation_child {label} failed: {error}") from error
    base = children["xla_default"]
    return [common.line(f"evaluation/cnn/bfloat16/{label}", child["seconds"], "XLA's default options",
                        base["seconds"], examples=child["examples"], data=child["data"], compile_s=child["compile_s"],
                        reference_compile_s=base["compile_s"], compiler_options=EVALUATION_OPTIONS[label],
                        accuracy=child["accuracy"], reference_accuracy=base["accuracy"])
            for label, child in children.items()]  # fmt: skip


def scan_variants(quick: bool) -> list[dict]:
    """The scan epoch of jdl (``fit``) with each convolution method, against
    flax+optax's scan, each compiled with and without command buffers
    (``compiler_options``, per program over ``engine.GPU_COMPILER_OPTIONS``:
    no process-wide flags)."""
    data, test, _ = common.mnist_shaped(512 if quick else 60000)
    test = {k: v[:2000] for k, v in test.items()}
    epochs, records = (2 if quick else 4), []
    for name in ("cnn",) if quick else ("cnn", "fmnist_2c2d"):
        for label, options in (("default", {}), ("command_buffers", COMMAND_BUFFER_OPTIONS)):
            flax_s, flax_compile, flax_acc = train_epoch.time_flax(
                train_epoch.FLAX[name](), "scan", data, test, 128, epochs, options or None)
            for method in ("lax", "matmul"):
                with mock.patch.dict(engine.GPU_COMPILER_OPTIONS, options):  # over jdl's own, then restored
                    model = getattr(models, name)(conv_method=method)
                    jdl_s, jdl_compile, jdl_acc = train_epoch.time_jdl(model, "scan", data, test, 128, epochs)
                records.append(common.line(
                    f"variants/{name}/{method}/{label}", jdl_s, f"flax+optax scan ({label})", flax_s,
                    examples=len(data["label"]), jdl_compile_s=jdl_compile, reference_compile_s=flax_compile,
                    jdl_test_accuracy=jdl_acc, reference_test_accuracy=flax_acc, compiler_options=options))
    return records  # fmt: skip


def time_to_accuracy_matmul() -> list[dict]:
    """Time to 92% for the cnn with ``conv_method='matmul'`` (the reference is
    the ``time_to_accuracy`` part's flax+optax line)."""
    import time_to_accuracy

    real = common.fashion_mnist()
    if real is None:
        return [{"benchmark": "time_to_92/cnn/matmul", "skipped": "real Fashion-MNIST not found"}]
    data, test, source = real
    ours = time_to_accuracy.jdl_time("cnn", data, test, 20, conv_method="matmul")
    return [{"benchmark": "time_to_92/cnn/matmul", "device": common.device_name(), "data": source, **ours}]


FEEDS = {"chunk16": (16, None), "chunk64": (64, None), "chunk16_switch0.5ms": (16, 5e-4),
         "chunk64_switch0.5ms": (64, 5e-4), "chunk128": (128, None)}  # fmt: skip


def _fashion_mnist_loader():
    """A shuffling uint8 Loader of real Fashion-MNIST's training split, batches of 128, or None."""
    from jdl.data import Loader, idx

    files = common.fashion_mnist_files()
    if not files:
        return None
    images, labels = idx.read_idx(files["train_data"])[..., None], idx.read_idx(files["train_labels"])
    return Loader(images, labels.astype(np.int32), batch_size=128, shuffle=True, seed=0, drop_remainder=True)


def feed(quick: bool, names=tuple(FEEDS)) -> list[dict]:
    """The 100 µs step fed by ``prefetch_to_device`` from a uint8 Loader of
    real Fashion-MNIST: ``FEEDS`` gives each variant's chunk (batches per
    transfer) and Python's thread switch interval (default 5 ms)."""
    import loader as loader_bench

    loader = _fashion_mnist_loader()
    if loader is None:
        return [{"benchmark": "loader/feed_100us_step", "skipped": "real Fashion-MNIST not found"}]
    records = []
    for label in names:
        chunk, interval = FEEDS[label]
        previous = sys.getswitchinterval()
        if interval:
            sys.setswitchinterval(interval)
        try:
            line = loader_bench._feed(loader, "real Fashion-MNIST, uint8", quick, chunk=chunk)
        finally:
            sys.setswitchinterval(previous)
        records.append({**line, "benchmark": f"loader/feed_100us_step/{label}"})
    return records  # fmt: skip


def feed_stacked(quick: bool) -> list[dict]:
    """The 100 µs step run 64 steps per dispatch over chunks from
    ``prefetch_to_device(loader, stack=True)`` (``loader._feed_stacked``), and
    ``feed``'s per-batch line beside it, on real Fashion-MNIST."""
    import loader as loader_bench

    loader = _fashion_mnist_loader()
    if loader is None:
        return [{"benchmark": "loader/feed_100us_step_stacked", "skipped": "real Fashion-MNIST not found"}]
    note = "real Fashion-MNIST, uint8"
    calibrated = loader_bench._calibrated_step(100e-6, loader)  # once for both lines: the same step
    return [loader_bench._feed_stacked(loader, note, quick, calibrated=calibrated),
            loader_bench._feed(loader, note, quick, calibrated=calibrated, chunk=64)]


def _suffixed(lines: list[dict], suffix: str) -> list[dict]:
    """The lines with ``/suffix`` appended to their benchmark names."""
    return [{**line, "benchmark": f"{line['benchmark']}/{suffix}"} for line in lines]


def unrolled(part: Callable[[], list[dict]], steps: int = 2) -> list[dict]:
    """``part()`` with ``fit``'s scan epoch unrolled ``steps`` steps per loop
    iteration on a GPU (``engine.SCAN_UNROLL``); lines renamed ``.../unroll{steps}``."""
    with mock.patch.dict(engine.SCAN_UNROLL, {"gpu": steps}):
        return _suffixed(part(), f"unroll{steps}")


def stream_chunks(quick: bool, chunks=(64, 0)) -> list[dict]:
    """``fit``'s stream engine (the 'loop' way of ``train_epoch``, jdl against
    the flax example's loop) with ``engine.STREAM_CHUNK`` steps per call, each
    of ``chunks`` (0: one call per step, as before stop 23); lines renamed
    ``.../chunk{n}``."""
    names = ("mlp",) if quick else ("mlp", "cnn")
    lines = []
    for chunk in chunks:
        with mock.patch.object(engine, "STREAM_CHUNK", chunk):
            lines += _suffixed(train_epoch.run(quick, names, ways=("loop",), dtype="bfloat16"), f"chunk{chunk}")
    return lines


# Settings for the cold start measured in one call (``cold_start.LAB``): the
# defaults, then the candidates whose epoch ``epoch_settings`` measures too.
COLD_CANDIDATES = ("default", "xla_defaults", "sequential", "autotune0+matmul", "autotune0+matmul+cublas",
                   "autotune0+cublas", "autotune1+cublas")  # fmt: skip
# The settings the ``cold_to_92`` and ``comparison_settings`` parts run beside
# the defaults (chosen after the ``cold_start_lab_cublas`` and ``epoch_settings``
# parts: cold start 1.94 against 4.50 s, epoch 0.0731 against 0.0652 s).
TO_92_CANDIDATES: tuple[str, ...] = ("autotune1+cublas",)


def _lines_under(label: str, expression: str) -> list[dict]:
    """The lines ``expression`` (benchmark lines) gives in a fresh process
    under ``cold_start.LAB[label]``'s settings (``XLA_FLAGS`` and
    ``cold_start.apply_settings``'s), renamed ``.../{label}``."""
    import cold_start

    env, settings = cold_start.LAB[label]
    unknown = set(env) - {"XLA_FLAGS"}
    if unknown:
        raise ValueError(f"{label}'s environment {sorted(unknown)} is not passed on")
    code = f"(__import__('cold_start').apply_settings({settings!r}), {expression})[1]"
    lines = _lines_with_flags(env.get("XLA_FLAGS", ""), code)
    return [{**line, "settings": settings} for line in _suffixed(lines, label)]


def epoch_settings(quick: bool, labels: tuple[str, ...], models: tuple[str, ...] = ("cnn",)) -> list[dict]:
    """The bfloat16 scan epoch of each of ``models`` (``train_epoch``, jdl and
    flax+optax) in a fresh process under each of ``cold_start.LAB``'s settings
    named in ``labels`` (flax+optax under the flags alone): what a setting
    that shortens the cold start costs each epoch after it."""
    names = ("mlp",) if quick else models
    expression = f"train_epoch.run({quick}, {names!r}, ways=('scan',), dtype='bfloat16')"
    return [line for label in labels for line in _lines_under(label, expression)]


def comparison_settings(quick: bool, labels: tuple[str, ...]) -> list[dict]:
    """``comparison.run``'s 8 vmapped bfloat16 cnn configurations against the
    same 8 one after another, in a fresh process under each of
    ``cold_start.LAB``'s settings named in ``labels`` (both sides under them)."""
    expression = f"__import__('comparison').run({quick}, strategies=('vmap',), dtype='bfloat16')"
    return [line for label in labels for line in _lines_under(label, expression)]


def unroll_sweep(quick: bool, steps=(1, 2, 4), rounds: int = 2) -> list[dict]:
    """The cnn's bfloat16 scan epoch through ``fit`` (``train_epoch``, with
    flax+optax's beside it each time) with ``fit``'s scan unrolled each of
    ``steps`` steps per loop iteration (``engine.SCAN_UNROLL``), each in a
    fresh process (no compilation or autotuning results carried from one to
    the next), ``rounds`` times in rotated order: whether unrolling brings the
    epoch under the 0.06 s goal, and what it adds to the compilation (each
    line's ``jdl_compile_s``)."""
    names = ("mlp",) if quick else ("cnn",)
    lines = []
    for round_ in range(rounds):
        shift = round_ % len(steps)
        for count in steps[shift:] + steps[:shift]:
            code = (f"(__import__('jdl.train.engine', fromlist=['SCAN_UNROLL']).SCAN_UNROLL.update(gpu={count}), "
                    f"train_epoch.run({quick}, {names!r}, ways=('scan',), dtype='bfloat16'))[1]")  # fmt: skip
            lines += [{**line, "round": round_}
                      for line in _suffixed(_lines_with_flags("", code), f"unroll{count}")]  # fmt: skip
    return lines


def threefry_kernel(part: Callable[[], list[dict]]) -> list[dict]:
    """``part()`` with ``JAX_THREEFRY_GPU_KERNEL_LOWERING=true`` in the
    environment of the fresh processes it starts: on a GPU, JAX then lowers
    the threefry hash (every ``jax.random`` draw) to a precompiled kernel
    instead of its unrolled rounds, which XLA compiles anew for each draw's
    shape (on the CPU, with LLVM's optimizations, the cnn's four weight draws
    take 1.4-1.7 s of its start program's 1.75 s; ``fit`` compiles that
    program without them there, ``engine.compile_once``, which XLA's GPU
    backend cannot do).  The same values either way; on the CPU the variable
    changes nothing.  The lines are renamed ``.../threefry_kernel``."""
    with mock.patch.dict(os.environ, {"JAX_THREEFRY_GPU_KERNEL_LOWERING": "true"}):
        return _suffixed(part(), "threefry_kernel")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT", "."))
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--parts", help="comma-separated part names (default: all)")
    args = parser.parse_args()
    import cold_start
    import comparison
    import optim_update
    import profile_step
    import step_variants
    import time_to_accuracy

    print(jax.__version__, jax.devices(), flush=True)
    parts = [
        ("kernels", lambda: kernels(args.quick)),
        ("train_epoch", lambda: train_epoch.run(args.quick, ("mlp",) if args.quick else ("cnn", "mlp", "fmnist_2c2d"))),
        ("command_buffers", lambda: command_buffers(args.quick)),
        ("scan_variants", lambda: scan_variants(args.quick)),
        ("time_to_accuracy", lambda: time_to_accuracy.run(cpu=True, cached=True)),
        ("time_to_accuracy_matmul", time_to_accuracy_matmul),
        ("time_to_accuracy_bf16", lambda: time_to_accuracy.run(cpu=True, dtype="bfloat16")),
        ("time_to_accuracy_seeds", lambda: time_to_accuracy.over_seeds("cnn", 5)
         + time_to_accuracy.over_seeds("cnn", 5, "bfloat16")),
        ("time_to_accuracy_seeds_bf16", lambda: time_to_accuracy.over_seeds("cnn", 9, "bfloat16")),
        ("feed", lambda: feed(args.quick)),
        ("comparison", lambda: comparison.run(args.quick, strategies=("vmap", "vmap_seeds"))),
        ("comparison_matmul", lambda: comparison.run(args.quick, strategies=("vmap",), conv_method="matmul")),
        ("comparison_bf16", lambda: comparison.run(args.quick, strategies=("vmap",), dtype="bfloat16")),
        ("trace", lambda: profile_step.trace(args.quick, args.out)),
        ("trace_bf16", lambda: profile_step.trace(args.quick, args.out, jnp.bfloat16, ("flax", "jdl", "jdl_unfolded"))),
        ("profile_variants", lambda: profile_step.variants(args.quick, names=("cnn", "mlp"))),
        ("feed_more", lambda: feed(args.quick, ("chunk64", "chunk64_switch0.5ms", "chunk128"))),
        ("step_variants", lambda: step_variants.run(args.quick)),
        ("step_variants_bf16", lambda: step_variants.run_bfloat16(args.quick)),
        ("step_variants_cnn", lambda: step_variants.run(args.quick, ("cnn",))),
        ("trace_comparison", lambda: profile_step.trace_comparison(args.quick)),
        ("trace_comparison_bf16", lambda: profile_step.trace_comparison(args.quick, args.out, dtype=jnp.bfloat16)),
        ("cold_start", lambda: cold_start.run(args.quick, models=("mlp", "cnn", "fmnist_2c2d"))),
        ("cold_start_cnn", lambda: cold_start.run(args.quick, models=("cnn",))),
        ("bf16_unroll2", lambda: unrolled(lambda: train_epoch.run(args.quick, ("mlp",) if args.quick else ("cnn",),
                                                                 ways=("scan",), dtype="bfloat16")
                                          + ([] if args.quick else time_to_accuracy.run(
                                              cpu=True, names=("cnn",), dtype="bfloat16")))),
        ("cold_start_threefry_kernel", lambda: threefry_kernel(lambda: cold_start.run(args.quick, models=("cnn",)))),
        ("cold_start_lab", lambda: cold_start.lab(args.quick)),
        ("epoch_flags", lambda: epoch_flags(args.quick)),
        ("evaluation_speed", lambda: evaluation_speed(args.quick)),
        ("cold_start_lab_autotune", lambda: cold_start.lab(
            args.quick, repeats=3, names=("default", "autotune1", "evaluation_autotune0", "evaluation_autotune1",
                                          "threefry_kernel+autotune1",
                                          "threefry_kernel+autotune1+evaluation_autotune0"))),
        ("epoch_flags_autotune1", lambda: epoch_flags(args.quick, ("autotune1", "default"))),
        ("unroll_sweep", lambda: unroll_sweep(args.quick)),
        ("cold_start_defaults", lambda: cold_start.lab(
            args.quick, repeats=3, names=("default", "xla_defaults", "start_on_host", "evaluation_autotune0"))),
        ("cold_start_lab_cublas", lambda: cold_start.lab(args.quick, names=COLD_CANDIDATES)),
        ("epoch_settings", lambda: epoch_settings(args.quick, ("default", *COLD_CANDIDATES[3:]))),
        ("cold_to_92", lambda: cold_start.lab(args.quick, repeats=2, names=("default", *TO_92_CANDIDATES),
                                              to_92=True)),
        ("comparison_settings", lambda: comparison_settings(args.quick, ("default", *TO_92_CANDIDATES))),
        ("cold_to_92_evaluation", lambda: cold_start.lab(
            args.quick, repeats=2, names=("default", "evaluation_cublas", "autotune1+cublas"), to_92=True)),
        ("flat_optimizer", lambda: step_variants.run_flat_optimizer(args.quick)),
        ("optimizers", lambda: optim_update.run(args.quick)),
        ("feed_stacked", lambda: feed_stacked(args.quick)),
        ("stream_chunks", lambda: stream_chunks(args.quick)),
        ("trace_patches_first", lambda: profile_step.trace(args.quick, args.out, jnp.bfloat16,
                                                           ("flax", "jdl", "jdl_patches_first"))),
        ("epoch_patches_first", lambda: epoch_settings(args.quick, ("default", "patches_first"))),
        ("autotune_cache", lambda: cold_start.lab(args.quick, repeats=3, names=("default", "autotune_cache"),
                                                  to_92=True)),
        ("epoch_settings_models", lambda: epoch_settings(args.quick, ("default", *TO_92_CANDIDATES),
                                                         ("fmnist_2c2d", "mlp"))),
        ("bf16", lambda: train_epoch.run(args.quick, ("mlp",) if args.quick else ("cnn", "fmnist_2c2d"),
                                         ways=("scan",), dtype="bfloat16")
         + train_epoch.run(args.quick, ("mlp",) if args.quick else ("cnn",), ways=("scan",))),
    ]  # fmt: skip
    if args.parts:
        wanted = args.parts.split(",")
        unknown = sorted(set(wanted) - {name for name, _ in parts})
        if unknown:
            parser.error(f"unknown parts {unknown}; the parts are {[name for name, _ in parts]}")
        parts = [(name, dict(parts)[name]) for name in dict.fromkeys(wanted)]  # in the order asked for
    if args.quick:  # minutes on the CPU even when quick
        parts = [(name, part) for name, part in parts if not name.startswith("time_to_accuracy")]
    records, started = [], time.perf_counter()
    out = Path(args.out) / "device.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    for name, part in parts:
        begun = time.perf_counter()
        try:
            records += common.print_lines(part())
        except Exception as error:  # keep what the other parts measure
            records.append({"benchmark": name, "error": repr(error)[-2000:]})
            print(f"{name} failed: {error!r}", file=sys.stderr, flush=True)
        print(f"{name}: {time.perf_counter() - begun:.1f} s", file=sys.stderr, flush=True)
        out.write_text(json.dumps({"device": common.device_name(), "seconds": time.perf_counter() - started,
                                   "results": records}, indent=1) + "\n")  # fmt: skip


if __name__ == "__main__":
    main()
