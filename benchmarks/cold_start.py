"""Benchmark: a cold start, from the call to the result, jdl against flax+optax.

What a user waits for the first time a program runs: every compilation
included, no persistent compilation cache, each library in a fresh process
(JAX's in-memory caches empty).  For each model, one epoch over the first
``--examples`` images of the shipped ``mnist_sample`` (batch 128, Adam 1e-3)
and the test accuracy after it:

* jdl: ``jdl.train.fit(..., epochs=1, eval_data=test)``, its automatic engine;
* flax+optax: ``module.init`` and ``TrainState.create`` (the flax examples'
  way), the epoch in one ``lax.scan`` with the data on the device (on the CPU,
  for convolutional models, its faster way there: the examples' loop of jitted
  steps), and a jitted accuracy.

Each line gives the medians over ``--repeats`` fresh processes of each
(alternating) of the wall seconds from the call to the result, of the seconds
spent compiling (XLA) and of the number of programs compiled, and the
programs that took longest to compile in jdl's last process.

``lab`` (``--lab``) is the same cold start of jdl under candidate settings
for its compilation (``LAB``: environment variables, XLA flags,
``jdl.train.engine`` settings), each against jdl's defaults in the same
rounds.

Usage: python benchmarks/cold_start.py [--quick] [--models mlp,cnn] [--repeats 3] [--lab]
"""

from __future__ import annotations

import argparse
import collections
import importlib
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

if __package__ in (None, ""):
    import common  # type: ignore[no-redef]
    import train_epoch  # type: ignore[no-redef]
else:
    from benchmarks import common, train_epoch

from jdl import losses, optim
from jdl.data import mnist_sample
from jdl.data.loader import Loader
from jdl.train import engine, fit

_COMPILED = re.compile(r"Finished XLA compilation of (?:jit\()?([^ )]+)\)? in ([0-9.]+) sec")


class _CompileLog(logging.Handler):
    """Collects ``(program, seconds)`` from JAX's ``jax_log_compiles`` messages."""

    def __init__(self):
        super().__init__()
        self.compiled: list[tuple[str, float]] = []

    def emit(self, record: logging.LogRecord) -> None:
        match = _COMPILED.search(record.getMessage())
        if match:
            self.compiled.append((match.group(1), float(match.group(2))))


def _data(examples: int) -> tuple[dict, dict]:
    def split(name: str, count: int | None = None) -> dict:
        images, labels = mnist_sample.read_split(name)
        return {"image": images[:count].astype(np.float32) / 255, "label": labels[:count].astype(np.int32)}

    return split("train", examples), split("test")


def _jdl(model_name: str, train: dict, test: dict) -> float:
    loader = Loader(train["image"], train["label"], batch_size=128, shuffle=True, seed=0, drop_remainder=True)
    model = train_epoch.JDL[model_name]()
    result = fit(model, losses.cross_entropy, optim.adam(1e-3), loader, epochs=1, eval_data=test, progress=False)
    return result.history[-1]["test_accuracy"]


def _flax(model_name: str, train: dict, test: dict) -> float:
    state = train_epoch._flax_state(train_epoch.FLAX[model_name](), train["image"].shape[1:])
    conv_on_cpu = model_name != "mlp" and jax.devices()[0].platform == "cpu"
    epoch, _ = train_epoch.compile_flax_epoch(state, "loop" if conv_on_cpu else "scan", train, 128)
    steps = len(train["label"]) // 128
    state = epoch(state, np.random.default_rng(0).permutation(len(train["label"]))[: steps * 128].reshape(steps, 128))
    return float(train_epoch.flax_accuracy(state, jnp.asarray(test["image"]), jnp.asarray(test["label"])))


def apply_settings(settings: dict) -> None:
    """Set each of ``settings``: a bare name is a ``jdl.train.engine``
    attribute (e.g. ``RUN_ONCE_ON_HOST``), a dotted one ``module.ATTRIBUTE``
    (e.g. ``jdl.nn.layers.GPU_MATMUL_MAX_CHANNELS``)."""
    for name, value in settings.items():
        module_name, _, attribute = name.rpartition(".")
        module = importlib.import_module(module_name) if module_name else engine
        if not hasattr(module, attribute):
            raise ValueError(f"{module.__name__} has no setting {attribute!r}")
        setattr(module, attribute, value)


def _to_92(library: str, model_name: str) -> Callable[[], dict]:
    """``time_to_accuracy``'s run of ``library`` to 92% on real Fashion-MNIST in bfloat16."""
    import time_to_accuracy

    real = common.fashion_mnist()
    if real is None:
        raise RuntimeError("real Fashion-MNIST not found (Debian's dataset-fashion-mnist or JDL_FASHION_MNIST_DIR)")
    train, test, _ = real
    timer = time_to_accuracy.jdl_time if library == "jdl" else time_to_accuracy.flax_time
    return lambda: timer(model_name, train, test, 20, dtype=jnp.bfloat16)


# What a child runs: ``library`` -> (library, whether to 92% on real Fashion-MNIST).
CHILD_RUNS = {"jdl": ("jdl", False), "flax": ("flax", False), "jdl_to_92": ("jdl", True),
              "flax_to_92": ("flax", True)}  # fmt: skip


def child(library: str, model_name: str, examples: int, settings: dict | None = None) -> dict:
    """One cold run in this (fresh) process: wall seconds from the call to the
    accuracy, and every compilation JAX logged on the way.  ``settings``: see
    ``apply_settings``.  ``library`` ``'jdl'`` or ``'flax'``: one epoch of
    ``examples`` images of ``mnist_sample``; ``'jdl_to_92'`` or
    ``'flax_to_92'``: to 92% test accuracy on real Fashion-MNIST in bfloat16,
    as ``time_to_accuracy`` (the line then gives the epochs and the seconds of
    training too)."""
    apply_settings(settings or {})
    name, to_92 = CHILD_RUNS[library]
    if to_92:
        call = _to_92(name, model_name)
    else:
        train, test = _data(examples)
        call = lambda: (_jdl if name == "jdl" else _flax)(model_name, train, test)  # noqa: E731
    jax.config.update("jax_enable_compilation_cache", False)
    log = _CompileLog()
    logger = logging.getLogger("jax")
    logger.addHandler(log)
    logger.setLevel(logging.DEBUG)
    jax.config.update("jax_log_compiles", True)
    jax.block_until_ready(jnp.zeros(1) + 1)  # the backend started, as in any program before its first model
    log.compiled.clear()
    start = time.perf_counter()
    result = call()
    wall = time.perf_counter() - start
    if to_92:
        return {"wall_s": wall, "accuracy": result["accuracy"], "epochs": result["epochs"],
                "train_s": result["train_s"], "compiled": log.compiled}  # fmt: skip
    return {"wall_s": wall, "accuracy": result, "compiled": log.compiled}


def _spawn(library: str, model_name: str, examples: int, env: dict | None = None,
           settings: dict | None = None) -> dict:  # fmt: skip
    """``child`` in a fresh process, with ``env`` added to its environment
    (``XLA_FLAGS`` appended to the present ones)."""
    environment = dict(os.environ)
    for name, value in (env or {}).items():
        environment[name] = f"{environment.get(name, '')} {value}".strip() if name == "XLA_FLAGS" else value
    out = subprocess.run([sys.executable, __file__, "--child", library, model_name, str(examples),
                          json.dumps(settings or {})], capture_output=True, text=True, env=environment)  # fmt: skip
    if out.returncode != 0:
        raise RuntimeError(f"cold start child {library} {model_name} {env} {settings} failed: {out.stderr[-1500:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _summary(runs: list[dict]) -> dict:
    summary = {"wall_s": common.median([r["wall_s"] for r in runs]),
               "compile_s": common.median([sum(s for _, s in r["compiled"]) for r in runs]),
               "programs": common.median([len(r["compiled"]) for r in runs]),
               "accuracy": runs[-1]["accuracy"]}  # fmt: skip
    for key in ("epochs", "train_s"):  # runs to 92%
        if key in runs[-1]:
            summary[f"{key}_each"] = [r[key] for r in runs]
    return summary


def _slowest(compiled: list[tuple[str, float]], top: int = 6) -> list[list]:
    totals: dict[str, list] = collections.defaultdict(lambda: [0, 0.0])
    for name, seconds in compiled:
        totals[name][0] += 1
        totals[name][1] += seconds
    ranked = sorted(totals.items(), key=lambda item: -item[1][1])[:top]
    return [[name, count, round(seconds, 3)] for name, (count, seconds) in ranked]


def run(quick: bool = False, models: tuple[str, ...] = ("mlp", "cnn"), repeats: int = 3,
        examples: int = 2560) -> list[dict]:  # fmt: skip
    if quick:
        models, repeats, examples = ("mlp",), 1, 512
    results = []
    for name in models:
        runs: dict[str, list[dict]] = {"jdl": [], "flax": []}
        for repeat in range(repeats):
            for library in ("jdl", "flax") if repeat % 2 == 0 else ("flax", "jdl"):
                runs[library].append(_spawn(library, name, examples))
        mine, theirs = _summary(runs["jdl"]), _summary(runs["flax"])
        results.append(common.line(
            f"cold_start/{name}", mine["wall_s"], "flax+optax", theirs["wall_s"], examples=examples,
            repeats=repeats, compile_s=mine["compile_s"], reference_compile_s=theirs["compile_s"],
            programs=mine["programs"], reference_programs=theirs["programs"], accuracy=mine["accuracy"],
            reference_accuracy=theirs["accuracy"], slowest_compiles=_slowest(runs["jdl"][-1]["compiled"]),
        ))  # fmt: skip
    return results


# Candidate settings for the compilation of a cold start: name -> (environment,
# ``jdl.train.engine`` settings).  Environment variables apply to the whole
# process (every program); engine settings to the programs they name.
_AUTOTUNE_OFF = {"xla_gpu_autotune_level": 0}
_AUTOTUNE_QUICK = {"xla_gpu_autotune_level": 1}
# Every convolution as one matrix product of shifted windows (``conv_as_matmul``)
_ALL_CONVS_MATMUL = {"jdl.nn.layers.GPU_MATMUL_MAX_CHANNELS": 1 << 30}
_NO_TRITON_GEMM = {"xla_gpu_enable_triton_gemm": False}
# ``lab`` puts a temporary folder, the same for all its rounds, in place of this
_AUTOTUNE_CACHE_FOLDER = "{autotune_cache}"
_AUTOTUNE_CACHE = {"xla_gpu_per_fusion_autotune_cache_dir": _AUTOTUNE_CACHE_FOLDER}
LAB: dict[str, tuple[dict, dict]] = {
    "default": ({}, {}),
    # XLA's and JAX's defaults: jdl's GPU settings of stops 19 and 20 undone
    # (level-4 autotuning and Triton's matrix products everywhere; threefry's
    # unrolled rounds in the start program too)
    "xla_defaults": ({}, {"GPU_COMPILER_OPTIONS": {}, "GPU_EVALUATION_COMPILER_OPTIONS": {},
                          "RUN_ONCE_THREEFRY_KERNEL": False}),
    # jax.random's threefry hash as a precompiled kernel, not unrolled rounds for XLA to compile
    "threefry_kernel": ({"JAX_THREEFRY_GPU_KERNEL_LOWERING": "true"}, {}),
    # the initialization and the optimizer's first state compiled and run on the host's CPU
    "start_on_host": ({}, {"RUN_ONCE_ON_HOST": True}),
    # the evaluation program compiled without timing candidate kernels
    "evaluation_autotune0": ({}, {"GPU_EVALUATION_COMPILER_OPTIONS": _AUTOTUNE_OFF}),
    # every program compiled without timing candidate kernels (the epoch may run slower)
    "autotune0": ({"XLA_FLAGS": "--xla_gpu_autotune_level=0"}, {}),
    # matrix products through cuBLAS, not Triton kernels tuned for each shape
    "triton_gemm_off": ({"XLA_FLAGS": "--xla_gpu_enable_triton_gemm=false"}, {}),
    "threefry_kernel+evaluation_autotune0": ({"JAX_THREEFRY_GPU_KERNEL_LOWERING": "true"},
                                             {"GPU_EVALUATION_COMPILER_OPTIONS": _AUTOTUNE_OFF}),
    "start_on_host+evaluation_autotune0": ({}, {"RUN_ONCE_ON_HOST": True,
                                                "GPU_EVALUATION_COMPILER_OPTIONS": _AUTOTUNE_OFF}),
    # candidate kernels still timed, but without the initializing, re-initializing
    # and cross-checking of their buffers that levels 2-4 add (XLA's default is 4)
    "autotune1": ({"XLA_FLAGS": "--xla_gpu_autotune_level=1"}, {}),
    "evaluation_autotune1": ({}, {"GPU_EVALUATION_COMPILER_OPTIONS": _AUTOTUNE_QUICK}),
    "threefry_kernel+autotune1": ({"JAX_THREEFRY_GPU_KERNEL_LOWERING": "true",
                                   "XLA_FLAGS": "--xla_gpu_autotune_level=1"}, {}),
    "threefry_kernel+autotune1+evaluation_autotune0": ({"JAX_THREEFRY_GPU_KERNEL_LOWERING": "true",
                                                        "XLA_FLAGS": "--xla_gpu_autotune_level=1"},
                                                       {"GPU_EVALUATION_COMPILER_OPTIONS": _AUTOTUNE_OFF}),
    # the start, epoch and evaluation programs compiled one after another, not side by side
    # (each one's compilation seconds alone)
    "sequential": ({}, {"jdl.train.fit.COMPILE_THREADS": 0}),
    # no timing of candidate kernels, with every convolution a matrix product
    # (level 0 ran cuDNN's convolutions 41 times slower): XLA's default Triton
    # tiling, or cuBLAS's own heuristics
    "autotune0+matmul": ({}, {"GPU_COMPILER_OPTIONS": _AUTOTUNE_OFF, **_ALL_CONVS_MATMUL}),
    "autotune0+matmul+cublas": ({}, {"GPU_COMPILER_OPTIONS": _AUTOTUNE_OFF | _NO_TRITON_GEMM, **_ALL_CONVS_MATMUL}),
    "autotune0+cublas": ({}, {"GPU_COMPILER_OPTIONS": _AUTOTUNE_OFF | _NO_TRITON_GEMM}),
    # level 1 choosing among cuBLAS's and cuDNN's algorithms only: no Triton kernels to compile for timing
    "autotune1+cublas": ({}, {"GPU_COMPILER_OPTIONS": _AUTOTUNE_QUICK | _NO_TRITON_GEMM}),
    # the evaluation program alone so (it runs once an epoch; less to compile
    # beside the epoch's): jdl's default since stop 20, so now the same as "default"
    "evaluation_cublas": ({}, {"GPU_EVALUATION_COMPILER_OPTIONS": _NO_TRITON_GEMM}),
    # XLA's own cache of autotuning results, one file per fusion, in a folder
    # that the lab's first round fills and later rounds read (JAX's cache of
    # whole programs stays off): what a second run of a program with the same
    # fusions (another optimizer, another learning rate) would save
    "autotune_cache": ({}, {"GPU_COMPILER_OPTIONS": _AUTOTUNE_QUICK | _AUTOTUNE_CACHE}),
    # the first layer's windows stacked on a leading axis, one contiguous block
    # each, not side by side in rows of 10 (stop 16's bfloat16 trace: that
    # concatenation 7.5 us of the step's 136)
    "patches_first": ({}, {"jdl.nn.layers.MATMUL_PATCHES_FIRST_MAX_CHANNELS": 3}),
}  # fmt: skip


def lab(quick: bool = False, model_name: str = "cnn", repeats: int = 2, examples: int = 2560,
        names: tuple[str, ...] = tuple(LAB), to_92: bool = False) -> list[dict]:  # fmt: skip
    """jdl's cold start (``child``) under each of ``LAB``'s settings named in
    ``names``, and flax+optax's under none, ``repeats`` rounds, each round in
    a rotated order (the host drifts); one line per setting: the median wall
    seconds against jdl's ``default`` in the same rounds.  ``to_92``: each
    run to 92% on real Fashion-MNIST in bfloat16, not one epoch of
    ``mnist_sample`` (lines named ``cold_to_92/...``).  Settings that name
    ``_AUTOTUNE_CACHE_FOLDER`` share one temporary folder over all rounds:
    the first round's run fills it, the later rounds' read it."""
    if quick:
        model_name, repeats, examples, names = "mlp", 1, 512, ("default", "start_on_host")
    with tempfile.TemporaryDirectory(prefix="jdl-autotune-") as folder:
        return _lab(model_name, repeats, examples, names, to_92, folder)


def _with_folder(settings: dict, folder: str) -> dict:
    """``settings`` with ``_AUTOTUNE_CACHE_FOLDER`` replaced by ``folder``, at any depth."""
    if isinstance(settings, dict):
        return {name: _with_folder(value, folder) for name, value in settings.items()}
    return folder if settings == _AUTOTUNE_CACHE_FOLDER else settings


def _lab(model_name: str, repeats: int, examples: int, names: tuple[str, ...], to_92: bool,
         folder: str) -> list[dict]:  # fmt: skip
    labels = ["default", *(name for name in names if name != "default"), "flax+optax"]
    runs: dict[str, list[dict]] = {label: [] for label in labels}
    failed: dict[str, str] = {}  # a setting this machine refuses does not cost the others' lines
    for repeat in range(repeats):
        shift = repeat % len(labels)
        for label in labels[shift:] + labels[:shift]:
            if label in failed:
                continue
            env, settings = LAB.get(label, ({}, {}))
            settings = _with_folder(settings, folder)
            try:
                library = ("flax" if label == "flax+optax" else "jdl") + ("_to_92" if to_92 else "")
                runs[label].append(_spawn(library, model_name, examples, env, settings))
            except RuntimeError as error:
                failed[label] = str(error)[-1500:]
    baseline = _summary(runs["default"]) if runs["default"] else {"wall_s": float("nan")}
    title = "cold_to_92" if to_92 else "cold_start_lab"
    records = []
    for label in labels:
        env, settings = LAB.get(label, ({}, {}))
        if label in failed:
            records.append(common.line(f"{title}/{model_name}/{label}", float("nan"), "jdl default",
                                       baseline["wall_s"], env=env, settings=settings, failed=failed[label]))
            continue
        mine = _summary(runs[label])
        records.append(common.line(
            f"{title}/{model_name}/{label}", mine["wall_s"], "jdl default", baseline["wall_s"],
            examples="fashion_mnist (real), bfloat16" if to_92 else examples, repeats=repeats,
            walls=[round(r["wall_s"], 3) for r in runs[label]], **{k: v for k, v in mine.items() if k != "wall_s"},
            env=env, settings=settings, slowest_compiles=_slowest(runs[label][-1]["compiled"])))  # fmt: skip
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--models", default="mlp,cnn")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--examples", type=int, default=2560)
    parser.add_argument("--lab", action="store_true", help="jdl under each of LAB's settings (first model)")
    parser.add_argument("--child", nargs=4, metavar=("LIBRARY", "MODEL", "EXAMPLES", "SETTINGS"),
                        help=argparse.SUPPRESS)  # fmt: skip
    args = parser.parse_args()
    if args.child:
        library, model_name, examples, settings = args.child
        print(json.dumps(child(library, model_name, int(examples), json.loads(settings))))
        return
    models = tuple(args.models.split(","))
    if args.lab:
        common.print_lines(lab(args.quick, models[0], args.repeats, args.examples))
        return
    common.print_lines(run(args.quick, models, args.repeats, args.examples))


if __name__ == "__main__":
    main()
