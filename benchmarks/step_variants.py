"""Where an accelerator step can get faster: convolution method per layer,
the bias gradient's formulation, the scan's unrolling.

Each line is jdl's whole-epoch scan (``fit``'s step, Adam 1e-3, batch 128) of
one variant against flax+optax's scan on the same data (for ``cifar10_3c3d``,
which flax has no copy of here, against jdl's all-cuDNN variant):

* ``lax`` / ``matmul``: every ``nn.Conv`` through cuDNN / as a matrix
  product (``nn.layers.conv_as_matmul``);
* ``auto``: what ``Conv(method='auto')`` takes: a matrix product for layers
  with at most ``nn.layers.GPU_MATMUL_MAX_CHANNELS`` input channels on a GPU,
  where cuDNN has no tensor-core kernel for one input channel (the flax CNN's
  first layer was its slowest kernels: ``profile_step.py trace``);
* ``auto_unfolded``: ``auto`` with the bias of its matrix-product
  convolutions added after the product
  (``nn.layers.MATMUL_BIAS_FOLD_MAX_CHANNELS = -1``: its gradient a column
  reduction of XLA's, 25 µs a step on an H200 for the first layer's) instead
  of folded into it (``conv_as_matmul``, what ``auto`` does on a GPU);
* ``auto_unroll4``: ``auto`` with the scan unrolled four steps per iteration;
* ``matmul_all_folded``: every convolution a matrix product with its bias folded in;
* ``auto_window_pool``: the cnn's average pools as ``lax.reduce_window``
  (flax's way, and jdl's before it summed tiling windows by a reshape);
* ``--bfloat16``: the flax CNN in mixed precision, each method (``run_bfloat16``),
  and two other first layers: ``auto_depth16`` (the folded product's depth
  padded to 16) and ``auto_direct_first`` (nine multiply-adds, no patches).

Usage: python benchmarks/step_variants.py [--quick] [--bfloat16]   (an accelerator run;
on the CPU ``auto`` is ``matmul`` for every layer)
"""

from __future__ import annotations

import argparse
from unittest import mock

import jax.numpy as jnp
import numpy as np
from jax import lax

if __package__ in (None, ""):
    import common  # type: ignore[no-redef]
    import profile_step  # type: ignore[no-redef]
else:
    from benchmarks import common, profile_step

from jdl import losses, models, nn, optim
from jdl.nn import layers
from jdl.train.step import train_step


def _first_conv(apply_first) -> nn.Layer:
    """A 3x3, 32-feature convolution whose ``apply`` is ``apply_first(x, w, b)``
    (``Conv``'s parameters and initialization)."""
    conv = nn.Conv(32, (3, 3))

    def apply(params, state, x, key=None, train=False):
        return apply_first(x, params["w"], params["b"]), state

    return nn.make_layer("conv", conv.init, apply)


def _patches_padded_to_16(x, w, b):
    """The first layer's folded product with its depth (9 windows and the bias'
    column) padded with zeros to 16, a multiple of the tensor cores' 8 in
    bfloat16 (XLA pads a bfloat16 product's dimensions itself otherwise)."""
    half = jnp.bfloat16
    xp = jnp.pad(x.astype(half), ((0, 0), (1, 1), (1, 1), (0, 0)))
    height, width = x.shape[1:3]
    columns = [xp[:, i : i + height, j : j + width] for i in range(3) for j in range(3)]
    columns += [jnp.ones_like(columns[0])] + [jnp.zeros_like(columns[0])] * 6
    kernel = jnp.concatenate([w.reshape(9, 32), b.reshape(1, 32), jnp.zeros((6, 32), w.dtype)]).astype(half)
    return jnp.concatenate(columns, axis=-1) @ kernel


def _direct_sum(x, w, b):
    """The first layer (one input channel) as nine broadcast multiply-adds in
    float32, one element-wise fusion with no patches in memory; the output in
    bfloat16."""
    xp = jnp.pad(x.astype(jnp.float32), ((0, 0), (1, 1), (1, 1), (0, 0)))
    height, width = x.shape[1:3]
    y = sum(xp[:, i : i + height, j : j + width] * w[i, j, 0] for i in range(3) for j in range(3))
    return (y + b).astype(jnp.bfloat16)


def _window_avg_pool() -> nn.Layer:
    """2x2 average pooling as ``lax.reduce_window`` (``nn.AvgPool`` until stop 16,
    and flax's ``avg_pool``); ``nn.AvgPool`` now sums windows that tile the
    input by a reshape (``nn.layers._tiled_sum``)."""

    def apply(params, state, x, key=None, train=False):
        return lax.reduce_window(x, np.asarray(0, x.dtype), lax.add, (1, 2, 2, 1), (1, 2, 2, 1), "VALID") / 4, state

    return nn.make_layer("avg_pool", lambda key, shape: ({}, {}), apply)


def _cnn_with(first_conv=None, pool=None, dtype=jnp.bfloat16) -> nn.Layer:
    """``models.cnn(dtype=dtype)`` with its first convolution's ``apply`` replaced
    by ``first_conv(x, w, b)`` and its pools by ``pool()``, where given."""
    first = nn.Conv(32, (3, 3), dtype=dtype) if first_conv is None else _first_conv(first_conv)
    pool = pool or (lambda: nn.AvgPool((2, 2), strides=(2, 2)))
    return nn.serial(
        first, nn.relu, pool(),
        nn.Conv(64, (3, 3), dtype=dtype), nn.relu, pool(),
        nn.Flatten(), nn.Dense(256, dtype=dtype), nn.relu, nn.Dense(10, dtype=dtype),
    )  # fmt: skip


def _time(model, images, labels, orders, threshold: int, unroll: int = 1, fold: int = 3,
          tx=None) -> tuple[float, float]:  # fmt: skip
    """``tx``: the optimizer (default Adam 1e-3)."""
    with (mock.patch.object(layers, "GPU_MATMUL_MAX_CHANNELS", threshold),
          mock.patch.object(layers, "MATMUL_BIAS_FOLD_MAX_CHANNELS", fold)):  # fmt: skip
        tx = tx or optim.adam(1e-3)
        step = train_step(model, losses.cross_entropy, tx, guard=False)
        return profile_step.jdl_epoch_seconds(model, tx, step, images, labels, orders, unroll)


def run(quick: bool = False, names: tuple[str, ...] = ("cnn", "fmnist_2c2d", "cifar10_3c3d")) -> list[dict]:
    mnist, _, source = common.mnist_shaped(2048 if quick else 60000)
    rng = np.random.default_rng(0)
    cifar = {"image": rng.random((2048 if quick else 50000, 32, 32, 3), np.float32),
             "label": rng.integers(0, 10, 2048 if quick else 50000).astype(np.int32)}  # fmt: skip
    epochs, records = (2 if quick else 4), []
    for name in ("cnn",) if quick else names:
        data = cifar if name == "cifar10_3c3d" else mnist
        images, labels = jnp.asarray(data["image"]), jnp.asarray(data["label"])
        orders = profile_step.epoch_orders(len(data["label"]), epochs)
        make = getattr(models, name)
        cases = {"lax": (make(conv_method="lax"), -1), "matmul": (make(conv_method="matmul"), -1),
                 "auto": (make(), 3), "auto_unfolded": (make(), 3, 1, -1),
                 "matmul_all_folded": (make(conv_method="matmul"), -1, 1, 10**6)}
        if name == "cnn":
            window_pools = _cnn_with(pool=_window_avg_pool, dtype=None)
            cases |= {"auto_unroll4": (make(), 3, 4), "auto_window_pool": (window_pools, 3)}
        times = {label: _time(model, images, labels, orders, *how) for label, (model, *how) in cases.items()}
        if name == "cifar10_3c3d":
            reference, reference_s = "jdl lax (cuDNN) scan", times["lax"][0]
        else:
            reference, reference_s = "flax+optax scan", profile_step.flax_epoch_seconds(name, images, labels, orders)
        for label, (seconds, compile_s) in times.items():
            records.append(common.line(f"step_variants/{name}/{label}", seconds, reference, reference_s,
                                       data="random (cifar-shaped)" if name == "cifar10_3c3d" else source,
                                       jdl_compile_s=compile_s, examples=len(data["label"])))  # fmt: skip
    return records


def run_bfloat16(quick: bool = False) -> list[dict]:
    """The flax CNN in mixed precision (``dtype=bfloat16``): each convolution
    method, ``auto`` with its bias unfolded, and ``auto`` with the scan
    unrolled two and four steps, against flax+optax in bfloat16."""
    data, _, source = common.mnist_shaped(2048 if quick else 60000)
    images, labels = jnp.asarray(data["image"]), jnp.asarray(data["label"])
    orders = profile_step.epoch_orders(len(data["label"]), 2 if quick else 4)
    half = jnp.bfloat16
    cases = {"lax": (models.cnn(conv_method="lax", dtype=half), -1),
             "matmul": (models.cnn(conv_method="matmul", dtype=half), -1),
             "auto": (models.cnn(dtype=half), 3), "auto_unfolded": (models.cnn(dtype=half), 3, 1, -1),
             "auto_unroll2": (models.cnn(dtype=half), 3, 2), "auto_unroll4": (models.cnn(dtype=half), 3, 4),
             "matmul_all_folded": (models.cnn(conv_method="matmul", dtype=half), -1, 1, 10**6),
             "auto_depth16": (_cnn_with(_patches_padded_to_16), 3),
             "auto_direct_first": (_cnn_with(_direct_sum), 3),
             "auto_window_pool": (_cnn_with(pool=_window_avg_pool), 3)}
    times = {label: _time(model, images, labels, orders, *how) for label, (model, *how) in cases.items()}
    reference_s = profile_step.flax_epoch_seconds("cnn", images, labels, orders, dtype=half)
    return [common.line(f"step_variants/cnn/bfloat16/{label}", seconds, "flax+optax scan (bfloat16)", reference_s,
                        data=source, jdl_compile_s=compile_s, examples=len(data["label"]))
            for label, (seconds, compile_s) in times.items()]  # fmt: skip


def run_flat_optimizer(quick: bool = False, rounds: int = 2) -> list[dict]:
    """The flax CNN in bfloat16 with Adam updating each parameter array on its
    own (jdl's way: one small update kernel per array on a GPU, ~1-2 µs each
    in the stop 16 trace) against Adam on all parameters as one flat vector
    (``optax.flatten`` around ``jdl.optim.adam``: the gradients concatenated,
    one update, the updates split again), ``rounds`` times alternately, with
    flax+optax's bfloat16 epoch as the yardstick: whether a multi-tensor
    update brings the epoch under 0.06 s."""
    import optax

    data, _, source = common.mnist_shaped(2048 if quick else 60000)
    images, labels = jnp.asarray(data["image"]), jnp.asarray(data["label"])
    orders = profile_step.epoch_orders(len(data["label"]), 2 if quick else 4)
    half = jnp.bfloat16
    cases = {"per_array": lambda: optim.adam(1e-3), "flat": lambda: optax.flatten(optim.adam(1e-3))}
    times: dict[str, list[tuple[float, float]]] = {label: [] for label in cases}
    for round_ in range(rounds):
        for label in list(cases)[:: 1 if round_ % 2 == 0 else -1]:
            times[label].append(_time(models.cnn(dtype=half), images, labels, orders, 3, tx=cases[label]()))
    reference_s = profile_step.flax_epoch_seconds("cnn", images, labels, orders, dtype=half)
    return [common.line(f"step_variants/cnn/bfloat16/adam_{label}", common.median([t for t, _ in runs]),
                        "flax+optax scan (bfloat16)", reference_s, data=source, rounds=[t for t, _ in runs],
                        jdl_compile_s=runs[-1][1], examples=len(data["label"]))
            for label, runs in times.items()]  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--bfloat16", action="store_true", help="the flax CNN in mixed precision instead")
    args = parser.parse_args()
    common.print_lines((run_bfloat16 if args.bfloat16 else run)(args.quick))
