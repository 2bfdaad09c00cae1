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
* ``auto_dot_bias``: ``auto`` with each convolution's bias gradient computed
  as a matrix-vector product instead of XLA's column reduction (26 µs a step
  on an H200 for the first layer's);
* ``auto_unroll4``: ``auto`` with the scan unrolled four steps per iteration;
* ``--bfloat16``: the flax CNN in mixed precision, each method (``run_bfloat16``).

Usage: python benchmarks/step_variants.py [--quick] [--bfloat16]   (an accelerator run;
on the CPU ``auto`` is ``matmul`` for every layer)
"""

from __future__ import annotations

import argparse
import math

import jax
import jax.numpy as jnp
import numpy as np

if __package__ in (None, ""):
    import common  # type: ignore[no-redef]
    import profile_step  # type: ignore[no-redef]
else:
    from benchmarks import common, profile_step

from jdl import losses, models, nn, optim
from jdl.nn import layers
from jdl.train.step import train_step


def _add_bias_by_dot():
    """``y + b`` whose gradient for ``b`` is ``ones @ g`` (a matrix-vector product)."""

    @jax.custom_vjp
    def add(y, b):
        return y + b

    def backward(_, g):
        return g, jnp.ones(math.prod(g.shape[:-1]), g.dtype) @ g.reshape(-1, g.shape[-1])

    add.defvjp(lambda y, b: (y + b, None), backward)
    return add


def _conv_dot_bias(features: int, window) -> nn.Layer:
    conv, add = nn.Conv(features, window, use_bias=False), _add_bias_by_dot()

    def init(key, input_shape):
        params, _ = conv.init(key, input_shape)
        return {**params, "b": jnp.zeros((features,))}, {}

    def apply(params, state, x, key=None, train=False):
        y, _ = conv.apply({"w": params["w"]}, {}, x)
        return add(y, params["b"]), state

    return nn.make_layer("conv", init, apply)


def _cnn_dot_bias() -> nn.Layer:
    return nn.serial(
        _conv_dot_bias(32, (3, 3)), nn.relu, nn.AvgPool((2, 2), strides=(2, 2)),
        _conv_dot_bias(64, (3, 3)), nn.relu, nn.AvgPool((2, 2), strides=(2, 2)),
        nn.Flatten(), nn.Dense(256), nn.relu, nn.Dense(10),
    )  # fmt: skip


def _time(model, images, labels, orders, threshold: int, unroll: int = 1) -> tuple[float, float]:
    previous = layers.GPU_MATMUL_MAX_CHANNELS
    layers.GPU_MATMUL_MAX_CHANNELS = threshold
    try:
        tx = optim.adam(1e-3)
        step = train_step(model, losses.cross_entropy, tx, guard=False)
        return profile_step.jdl_epoch_seconds(model, tx, step, images, labels, orders, unroll)
    finally:
        layers.GPU_MATMUL_MAX_CHANNELS = previous


def run(quick: bool = False) -> list[dict]:
    mnist, _, source = common.mnist_shaped(2048 if quick else 60000)
    rng = np.random.default_rng(0)
    cifar = {"image": rng.random((2048 if quick else 50000, 32, 32, 3), np.float32),
             "label": rng.integers(0, 10, 2048 if quick else 50000).astype(np.int32)}  # fmt: skip
    epochs, records = (2 if quick else 4), []
    for name in ("cnn",) if quick else ("cnn", "fmnist_2c2d", "cifar10_3c3d"):
        data = cifar if name == "cifar10_3c3d" else mnist
        images, labels = jnp.asarray(data["image"]), jnp.asarray(data["label"])
        orders = profile_step.epoch_orders(len(data["label"]), epochs)
        make = getattr(models, name)
        cases = {"lax": (make(conv_method="lax"), -1, 1), "matmul": (make(conv_method="matmul"), -1, 1),
                 "auto": (make(), 3, 1)}  # fmt: skip
        if name == "cnn":
            cases |= {"auto_dot_bias": (_cnn_dot_bias(), 3, 1), "auto_unroll4": (make(), 3, 4)}
        times = {label: _time(model, images, labels, orders, threshold, unroll)
                 for label, (model, threshold, unroll) in cases.items()}  # fmt: skip
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
    method, and ``auto`` with the scan unrolled two steps, against flax+optax
    in bfloat16."""
    data, _, source = common.mnist_shaped(2048 if quick else 60000)
    images, labels = jnp.asarray(data["image"]), jnp.asarray(data["label"])
    orders = profile_step.epoch_orders(len(data["label"]), 2 if quick else 4)
    half = jnp.bfloat16
    cases = {"lax": (models.cnn(conv_method="lax", dtype=half), -1, 1),
             "matmul": (models.cnn(conv_method="matmul", dtype=half), -1, 1),
             "auto": (models.cnn(dtype=half), 3, 1), "auto_unroll2": (models.cnn(dtype=half), 3, 2)}  # fmt: skip
    times = {label: _time(model, images, labels, orders, threshold, unroll)
             for label, (model, threshold, unroll) in cases.items()}  # fmt: skip
    reference_s = profile_step.flax_epoch_seconds("cnn", images, labels, orders, dtype=half)
    return [common.line(f"step_variants/cnn/bfloat16/{label}", seconds, "flax+optax scan (bfloat16)", reference_s,
                        data=source, jdl_compile_s=compile_s, examples=len(data["label"]))
            for label, (seconds, compile_s) in times.items()]  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--bfloat16", action="store_true", help="the flax CNN in mixed precision instead")
    args = parser.parse_args()
    common.print_lines((run_bfloat16 if args.bfloat16 else run)(args.quick))
