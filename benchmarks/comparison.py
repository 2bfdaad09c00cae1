"""Benchmark: K configurations trained at once (vmapped, one program) against
the same K trained one after another, with jdl.compare's engine.

The flax examples/mnist CNN (``jdl.models.cnn``), Adam at K learning rates,
batch 128, MNIST-shaped data on the device.  Sequential: the same engine with
one configuration, K times, with the strategy the engine chooses (on the CPU
for convolutional models ``'unroll'``: a program of one run, taking its turn alone).
The K runs share seed 0 (a learning-rate grid: the same batches, gathered
once per step); strategy ``'vmap_seeds'`` gives each run its own seed instead.
Reported: seconds per epoch for all K together (median of its epochs, timed
both before and after the sequential runs, as the machine drifts) vs the sum
over the K sequential runs' medians (ratio < 1: training together wins),
compile apart.  Goal: at least 4x faster on an accelerator (flax+optax vmapped: 1.5x
slower than sequential, FACTS), no slower on the CPU.

Usage: python benchmarks/comparison.py [--quick]
"""

from __future__ import annotations

import argparse

import jax
import numpy as np

if __package__ in (None, ""):
    import common  # type: ignore[no-redef]
else:
    from benchmarks import common

from jdl import losses, models, optim
from jdl.compare.engine import Group, choose_engine, train_cluster
from jdl.data.loader import Loader


def _epoch_seconds(model, data, test, lrs, seeds, batch, epochs, use_scan, strategy="vmap"):
    group = Group("adam", optim.adam, np.asarray(lrs, np.float32), np.asarray(seeds))
    out = train_cluster(
        model, losses.cross_entropy, [group], batch_size=batch, images=data["image"], labels=data["label"],
        permutation=lambda seed, epoch: Loader(data["image"], data["label"], batch_size=batch, seed=seed,
                                               num_classes=10).permutation(epoch),
        epochs=epochs, eval_images=test["image"], eval_labels=test["label"], use_scan=use_scan, strategy=strategy,
    )  # fmt: skip
    return out["times"][1:], out["compile_s"], out["history"][-1][0]["test_accuracy"]


def run(quick: bool = False, k: int = 8, batch: int = 128, strategies=("unroll", "vmap"),
        conv_method: str = "auto", dtype: str | None = None) -> list[dict]:  # fmt: skip
    """``conv_method``: the cnn's ``nn.Conv`` method (``'auto'``: matrix products
    on the CPU, cuDNN on a GPU); the engine (scan or loop) and the strategy it
    would choose follow from it, as in ``jdl.compare.run``.  ``dtype``: the
    model's computation dtype for every run, together and sequential (lines
    named ``.../bfloat16``)."""
    on_cpu = jax.devices()[0].platform == "cpu"
    n_train = 1024 if quick else (4096 if on_cpu else 60000)
    data, test, source = common.mnist_shaped(n_train)
    test = {key: value[:1000] for key, value in test.items()}
    epochs = 2 if quick else 3
    model, model_name = models.cnn(conv_method=conv_method, dtype=dtype), "cnn" + ("" if dtype is None else f"/{dtype}")
    if quick:  # the smoke run: a small MLP, fewer configurations
        model, model_name, k, n_train = models.mlp(hidden=(32,), dtype=dtype), "mlp", 2, 512
        data = {key: value[:n_train] for key, value in data.items()}
    use_scan, chosen = choose_engine(model, data["image"])
    lrs = list(np.geomspace(1e-4, 3e-3, k))

    def together(strategy: str):
        # 'vmap_seeds': vmapped with a seed per run (its own batches), not one seed for the grid (shared batches).
        seeds = list(range(k)) if strategy == "vmap_seeds" else [0] * k
        return _epoch_seconds(model, data, test, lrs, seeds, batch, epochs, use_scan, strategy.split("_")[0])

    before = {strategy: together(strategy) for strategy in strategies}  # timed again after: the machine drifts
    alone, alone_compile, accs_alone = 0.0, 0.0, []
    for lr in lrs:
        times, compile_s, acc = _epoch_seconds(model, data, test, [lr], [0], batch, epochs, use_scan, chosen)
        alone, alone_compile = alone + common.median(times), alone_compile + compile_s
        accs_alone.append(float(acc[0]))
    records = []
    for strategy in strategies:
        times, compile_s, accs = together(strategy)
        together_s = common.median(before[strategy][0] + times)
        records.append(common.line(
            f"comparison/{model_name}/{k}_configs/{strategy}", together_s, f"{k} sequential runs (same engine)", alone,
            batch_size=batch, examples=n_train, data=source, engine="scan" if use_scan else "loop",
            strategy=strategy, chosen=strategy == chosen, conv_method=conv_method,
            jdl_compile_s=compile_s,
            reference_compile_s=alone_compile, speedup=alone / together_s,
            max_accuracy_difference=(None if strategy == "vmap_seeds" else  # other seeds than the sequential runs
                                     float(np.max(np.abs(np.asarray(accs) - np.asarray(accs_alone))))),
        ))  # fmt: skip
    return records


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    common.print_lines(run(parser.parse_args().quick))
