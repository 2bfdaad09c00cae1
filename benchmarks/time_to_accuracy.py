"""Benchmark: time to 92% test accuracy on real Fashion-MNIST, jdl against flax+optax.

Adam 1e-3, batch 128, the data on the device, test accuracy after every
epoch, until 92% (at most ``max_epochs``).  For each of the flax CNN and
DeepOBS fmnist_2c2d: seconds of training until the epoch that reaches it,
compilation seconds, and wall seconds from the call to the result (the
device and its libraries started before either is timed).  With
``--cached``, each again with a warm persistent compilation cache.  jdl runs
``fit`` (its automatic engine); flax+optax runs one epoch per ``lax.scan`` as
in shared/FACTS.md, except on the CPU, where convolutions in scan are about
25x slower: there it runs its faster way, the flax example's loop of jitted
steps.  Needs the real data (Debian's dataset-fashion-mnist or
``JDL_FASHION_MNIST_DIR``); without it the lines say so and give no times.
Skipped on the CPU unless ``--cpu`` (many minutes there).

Usage: python benchmarks/time_to_accuracy.py [--quick] [--cpu] [--cached] [--models cnn,fmnist_2c2d] [--dtype bfloat16]
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np

if __package__ in (None, ""):
    import common  # type: ignore[no-redef]
    import train_epoch  # type: ignore[no-redef]
else:
    from benchmarks import common, train_epoch

from jdl import losses, models, optim, train
from jdl.data.loader import Loader

TARGET = 0.92


def jdl_time(name: str, data: dict, test: dict, max_epochs: int, conv_method: str = "auto", dtype=None,
             seed: int = 0) -> dict:  # fmt: skip
    """``fit`` to the target; ``seed``: the loader's order and the model's initialization."""
    start = time.perf_counter()
    loader = Loader(data["image"], data["label"], batch_size=128, shuffle=True, seed=seed, drop_remainder=True)
    if name == "mlp":  # the smoke runs' model (train_epoch's: 784-128-10); no convolutions
        model = models.mlp(hidden=(128,), dtype=dtype)
    else:
        model = {"cnn": models.cnn, "fmnist_2c2d": models.fmnist_2c2d}[name](conv_method=conv_method, dtype=dtype)
    result = train.fit(model, losses.cross_entropy, optim.adam(1e-3), loader, epochs=max_epochs, eval_data=test,
                       progress=False, seed=seed, stop_when=lambda r: r["test_accuracy"] >= TARGET)  # fmt: skip
    wall = time.perf_counter() - start
    history = result.history
    reached = history[-1]["test_accuracy"] >= TARGET
    return {"train_s": sum(h["time_s"] for h in history), "compile_s": history[0]["compile_s"], "wall_s": wall,
            "epochs": len(history), "reached": reached, "accuracy": history[-1]["test_accuracy"]}  # fmt: skip


def flax_time(name: str, data: dict, test: dict, max_epochs: int, way: str = "scan", dtype=None,
              seed: int = 0) -> dict:  # fmt: skip
    """flax+optax to the target, one epoch per ``lax.scan`` (``way='scan'``) or
    a Python loop of jitted steps over host batches (``way='loop'``);
    ``seed``: the initialization's key and the epochs' orders."""
    start = time.perf_counter()
    state = train_epoch._flax_state(train_epoch.FLAX[name](dtype=dtype), data["image"].shape[1:], seed)
    rng = np.random.default_rng(seed)
    n = len(data["label"]) // 128 * 128
    test_images, test_labels = jnp.asarray(test["image"]), jnp.asarray(test["label"])
    epoch, compile_s = train_epoch.compile_flax_epoch(state, way, data, 128)
    compile_start = time.perf_counter()
    accuracy_fn = train_epoch.flax_accuracy.lower(state, test_images, test_labels).compile()
    compile_s += time.perf_counter() - compile_start
    train_s, accuracy, epochs = 0.0, 0.0, 0
    while epochs < max_epochs and accuracy < TARGET:
        order = rng.permutation(len(data["label"]))[:n].reshape(-1, 128)
        t = time.perf_counter()
        state = jax.block_until_ready(epoch(state, order))
        train_s += time.perf_counter() - t
        accuracy, epochs = float(accuracy_fn(state, test_images, test_labels)), epochs + 1
    return {"train_s": train_s, "compile_s": compile_s, "wall_s": time.perf_counter() - start, "epochs": epochs,
            "reached": accuracy >= TARGET, "accuracy": accuracy}  # fmt: skip


def warm_backend() -> None:
    """Start the device and its libraries (on a GPU the CUDA context, cuBLAS,
    cuDNN: about a second) before either library is timed, so that the first
    one timed does not pay for both."""
    x = jnp.ones((2, 8, 8, 4))
    y = jax.lax.conv_general_dilated(x, jnp.ones((3, 3, 4, 4)), (1, 1), "SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))  # fmt: skip
    jax.block_until_ready(jnp.sum(y.reshape(2, -1) @ jnp.ones((256, 4))))


@contextlib.contextmanager
def fresh_compilation_cache() -> Iterator[None]:
    """The persistent compilation cache on (``jdl.train.enable_compilation_cache``)
    in a new temporary folder for the block, off after it."""
    from jdl.train.cache import disable_compilation_cache, enable_compilation_cache

    with tempfile.TemporaryDirectory() as folder:
        enable_compilation_cache(folder)
        try:
            yield
        finally:
            disable_compilation_cache()


def with_cache(name: str, data: dict, test: dict, max_epochs: int, way: str, dtype=None) -> dict:
    """Each library's time to the target twice more with the persistent
    compilation cache on (``fresh_compilation_cache``): the first run fills
    it, the second loads every program from it, as a rerun of the same script
    or notebook would."""
    out = {}
    with fresh_compilation_cache():
        timers = (("jdl", lambda: jdl_time(name, data, test, max_epochs, dtype=dtype)),
                  ("reference", lambda: flax_time(name, data, test, max_epochs, way, dtype)))
        for label, timer in timers:
            timer()
            warm = timer()
            out |= {f"{label}_cached_{key}": warm[key] for key in ("wall_s", "compile_s", "train_s", "epochs")}
    return out


def over_seeds(name: str = "cnn", seeds: int = 5, dtype: str | None = None, max_epochs: int = 20) -> list[dict]:
    """Epochs and training seconds to the target for each of ``seeds`` seeds,
    both libraries (a seed sets the initialization and the orders: one seed's
    luck moves the epochs needed by a few), the median against the median.
    On an accelerator; a persistent compilation cache (filled by the first
    seed) keeps the compilations short."""
    real = common.fashion_mnist()
    if real is None:
        return [{"benchmark": f"time_to_92/{name}/seeds", "skipped": "real Fashion-MNIST not found"}]
    data, test, source = real
    compute, suffix = (None, "") if dtype is None else (jnp.dtype(dtype), f"/{dtype}")
    warm_backend()
    with fresh_compilation_cache():
        ours = [jdl_time(name, data, test, max_epochs, dtype=compute, seed=s) for s in range(seeds)]
        ref = [flax_time(name, data, test, max_epochs, "scan", compute, seed=s) for s in range(seeds)]
    lists = {f"{who}_{key}": [one[key] for one in runs] for who, runs in (("jdl", ours), ("reference", ref))
             for key in ("train_s", "epochs", "reached")}  # fmt: skip
    return [common.line(
        f"time_to_92/{name}{suffix}/seeds", common.median(lists["jdl_train_s"]), f"flax+optax scan{suffix}",
        common.median(lists["reference_train_s"]), data=source, seeds=seeds, **lists,
        jdl_median_epochs=common.median(lists["jdl_epochs"]),
        reference_median_epochs=common.median(lists["reference_epochs"]),
        note="median over seeds of the training seconds to 92%; the lists give each seed")]  # fmt: skip


def run(quick: bool = False, cpu: bool = False, names=("cnn", "fmnist_2c2d"), cached: bool = False,
        dtype: str | None = None) -> list[dict]:  # fmt: skip
    """``dtype='bfloat16'``: both libraries in mixed precision (lines named ``.../bfloat16``)."""
    compute, suffix = (None, "") if dtype is None else (jnp.dtype(dtype), f"/{dtype}")
    on_cpu = jax.devices()[0].platform == "cpu"
    way = "loop" if on_cpu else "scan"  # flax+optax's faster way on each (both models have convolutions)
    reference = f"flax+optax {way}"
    if on_cpu and not cpu:
        return [common.line(f"time_to_92/{name}", float("nan"), reference, float("nan"),
                            skipped="CPU: run with --cpu (many minutes)") for name in names]  # fmt: skip
    real = common.fashion_mnist()
    if real is None:
        return [common.line(f"time_to_92/{name}", float("nan"), reference, float("nan"),
                            skipped="real Fashion-MNIST not found") for name in names]  # fmt: skip
    data, test, source = real
    max_epochs = 3 if quick else 20
    records = []
    warm_backend()
    for name in names:
        ours = jdl_time(name, data, test, max_epochs, dtype=compute)
        ref = flax_time(name, data, test, max_epochs, way, dtype=compute)
        extra = with_cache(name, data, test, max_epochs, way, compute) if cached else {}
        records.append(common.line(
            f"time_to_92/{name}{suffix}", ours["train_s"], reference + suffix, ref["train_s"], data=source,
            jdl_compile_s=ours["compile_s"], reference_compile_s=ref["compile_s"], jdl_wall_s=ours["wall_s"],
            reference_wall_s=ref["wall_s"], jdl_epochs=ours["epochs"], reference_epochs=ref["epochs"],
            jdl_reached=ours["reached"], reference_reached=ref["reached"], jdl_accuracy=ours["accuracy"],
            reference_accuracy=ref["accuracy"], **extra))  # fmt: skip
    return records


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--cpu", action="store_true")
    parser.add_argument("--models", default="cnn,fmnist_2c2d", help="comma-separated: cnn, fmnist_2c2d")
    parser.add_argument("--cached", action="store_true", help="also with a persistent compilation cache, warm")
    parser.add_argument("--dtype", help="both libraries' computation dtype, e.g. bfloat16 (default: float32)")
    args = parser.parse_args()
    common.print_lines(run(args.quick, args.cpu, tuple(args.models.split(",")), args.cached, args.dtype))
