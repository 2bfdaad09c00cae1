"""Benchmark: one optimizer step of jdl.optim against optax's.

Times `update` + `apply_updates`, compiled ahead of time with `jax.jit`
(parameters and optimizer state donated, as in a training loop), on a
float32 pytree of 100 leaves and about 10M parameters (`--quick`: 20
leaves, about 0.1M, a smoke run).  jdl and optax runs alternate (each goes first half the
time), each timing is the median of its repeats after a warm-up, and every
timing waits with `block_until_ready`.

A control measures the noise floor: a second, identical optax step is timed
in the same rotation, and `control_ratio` (optax copy / optax) says how far
from 1.0 two equal programs land on this machine.  `paired_ci95` is a
bootstrap 95% interval of the median of the per-repeat ratios jdl / optax
(each pair timed back to back).  Prints one JSON line per optimizer:

    {"benchmark": "optimizer_update/adam", "jdl_s": ..., "reference": "optax",
     "reference_s": ..., "ratio": ..., "device": ..., "jax_version": ...}

`same_hlo_op_counts` says whether XLA compiled the two steps to programs
with the same count of every operation; `same_program`, whether the two
optimized programs are the same text once every name is replaced by its
order of first appearance (`canonical_program`): the same instructions,
shapes, fusions and order, so the same machine code, and a ratio away from
1 is the machine's noise.

Usage: python benchmarks/optim_update.py [--quick] [--only adam,gd]
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jdl.optim as jo

OPTIMIZERS = {
    "gd": (lambda: jo.gd(0.1), lambda: optax.sgd(0.1)),
    "sgd_momentum": (lambda: jo.sgd(0.01, momentum=0.9), lambda: optax.sgd(0.01, momentum=0.9)),
    "nesterov": (
        lambda: jo.momentum(0.01, 0.9, nesterov=True),
        lambda: optax.sgd(0.01, momentum=0.9, nesterov=True),
    ),
    "adagrad": (lambda: jo.adagrad(0.01), lambda: optax.adagrad(0.01)),
    "rmsprop": (lambda: jo.rmsprop(0.001), lambda: optax.rmsprop(0.001)),
    "rmsprop_centered": (
        lambda: jo.rmsprop(0.001, centered=True, momentum=0.9),
        lambda: optax.rmsprop(0.001, centered=True, momentum=0.9),
    ),
    "adadelta": (lambda: jo.adadelta(1.0), lambda: optax.adadelta(1.0)),
    "adam": (lambda: jo.adam(1e-3), lambda: optax.adam(1e-3)),
    "adamw": (lambda: jo.adamw(1e-3), lambda: optax.adamw(1e-3)),
    "nadam": (lambda: jo.nadam(1e-3), lambda: optax.nadam(1e-3)),
    "amsgrad": (lambda: jo.amsgrad(1e-3), lambda: optax.amsgrad(1e-3)),
    "adamax": (lambda: jo.adamax(2e-3), lambda: optax.adamax(2e-3)),
    "lion": (lambda: jo.lion(1e-4), lambda: optax.lion(1e-4)),
}


def make_tree(quick: bool) -> dict:
    """50 layers of a square weight matrix and a bias: 100 float32 leaves
    (quick: 10 layers, 20 leaves, for the smoke run)."""
    sizes = [96 + 2 * i for i in range(10)] if quick else [300 + 6 * i for i in range(50)]
    key = jax.random.PRNGKey(0)
    tree = {}
    for i, d in enumerate(sizes):
        key, kw, kb = jax.random.split(key, 3)
        tree[f"layer_{i:02d}"] = {
            "w": jax.random.normal(kw, (d, d), jnp.float32),
            "b": jax.random.normal(kb, (d,), jnp.float32),
        }
    return tree


def _copy(tree):
    return jax.tree_util.tree_map(jnp.copy, tree)


class _Runner:
    """A compiled step with its own (donated) parameters and optimizer state."""

    def __init__(self, tx, params, grads, apply_updates=jo.apply_updates):
        def step(params, state, grads):
            updates, state = tx.update(grads, state, params)
            return apply_updates(params, updates), state

        self.params = _copy(params)
        self.state = tx.init(self.params)
        self.grads = grads
        compiled = jax.jit(step, donate_argnums=(0, 1)).lower(self.params, self.state, grads).compile()
        self.step = compiled
        self.op_counts = collections.Counter(re.findall(r"= \S+ (\w+)\(", compiled.as_text()))
        self.program = canonical_program(compiled.as_text())

    def time(self, calls: int) -> float:
        """Seconds per step over `calls` consecutive steps."""
        jax.block_until_ready((self.params, self.state))
        start = time.perf_counter()
        for _ in range(calls):
            self.params, self.state = self.step(self.params, self.state, self.grads)
        jax.block_until_ready((self.params, self.state))
        return (time.perf_counter() - start) / calls


def canonical_program(hlo_text: str) -> list[str]:
    """The computations of an optimized HLO module without what names the
    source: metadata and stack frames dropped, the entry's parameter names
    dropped, and every ``%name`` replaced by its order of first appearance."""
    lines = [line for line in hlo_text.splitlines() if re.match(r"^\s*(ROOT\s+)?%|^ENTRY|^\s*}", line)]
    names: dict[str, str] = {}

    def rename(match: re.Match) -> str:
        return names.setdefault(match.group(0), f"%{len(names)}")

    canonical = []
    for line in lines:
        line = re.sub(r", metadata=\{[^}]*\}|stack_frame_id=\d+", "", line)
        if line.startswith("ENTRY"):
            line = re.sub(r"[\w.]+: ", "", line)
        canonical.append(re.sub(r"%[\w.\-]+", rename, line))
    return canonical


def bootstrap_median_ci(values: np.ndarray, draws: int = 2000, seed: int = 0) -> list[float]:
    """95% percentile-bootstrap interval of the median of ``values``."""
    rng = np.random.default_rng(seed)
    medians = np.median(rng.choice(values, size=(draws, len(values)), replace=True), axis=1)
    return [float(np.percentile(medians, 2.5)), float(np.percentile(medians, 97.5))]


def run(quick: bool = False, names: list[str] | None = None) -> list[dict]:
    """Time every optimizer (or those in `names`); one result dict per optimizer."""
    params = make_tree(quick)
    grads = jax.tree_util.tree_map(lambda p: 1e-3 * jnp.sin(p), params)
    device = jax.devices()[0]
    repeats, calls = (5, 3) if quick else (21, 5)
    if device.platform != "cpu":
        calls *= 10  # steps take well under a millisecond there

    results = []
    for name in names or list(OPTIMIZERS):
        make_jdl, make_optax = OPTIMIZERS[name]
        runners = {
            "jdl": _Runner(make_jdl(), params, grads),
            "optax": _Runner(make_optax(), params, grads, optax.apply_updates),
            "optax_copy": _Runner(make_optax(), params, grads, optax.apply_updates),  # the control: optax itself
        }
        for runner in runners.values():
            runner.time(3)  # compile and warm up
        labels = list(runners)
        times: dict[str, list[float]] = {label: [] for label in labels}
        for repeat in range(repeats):  # rotate who goes first
            shift = repeat % len(labels)
            for label in labels[shift:] + labels[:shift]:
                times[label].append(runners[label].time(calls))
        jdl_s, optax_s = statistics.median(times["jdl"]), statistics.median(times["optax"])
        paired = np.asarray(times["jdl"]) / np.asarray(times["optax"])
        results.append(
            {
                "benchmark": f"optimizer_update/{name}",
                "jdl_s": jdl_s,
                "reference": "optax",
                "reference_s": optax_s,
                "ratio": jdl_s / optax_s,
                # the interval is the paired ratios' median's: that median given beside it (the ratio of
                # medians above can fall just outside it)
                "paired_median_ratio": float(np.median(paired)),
                "paired_ci95": bootstrap_median_ci(paired),
                "control_ratio": statistics.median(times["optax_copy"]) / optax_s,
                "device": f"{device.platform}:{device.device_kind}",
                "jax_version": jax.__version__,
                "optax_version": optax.__version__,
                # the two compiled programs have the same count of each HLO op
                "same_hlo_op_counts": runners["jdl"].op_counts == runners["optax"].op_counts,
                "same_program": runners["jdl"].program == runners["optax"].program,
                "leaves": len(jax.tree_util.tree_leaves(params)),
                "parameters": sum(p.size for p in jax.tree_util.tree_leaves(params)),
            }
        )
        del runners
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller tree, fewer repeats")
    parser.add_argument("--only", help="comma-separated optimizers, e.g. adam,gd", default=None)
    args = parser.parse_args()
    for result in run(args.quick, args.only.split(",") if args.only else None):
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
