"""Layers with parameters or behaviour of their own.

Each constructor returns a ``Layer(init, apply)`` (see ``jdl.nn.core``).
Images are NHWC and convolution kernels HWIO, as in flax and TensorFlow.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Iterator, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jdl._checks import is_int, is_real
from jdl.nn import init as initializers
from jdl.nn.core import Layer, Params, State, make_layer

Padding = str | int | Sequence[int] | Sequence[tuple[int, int]]


def _tuple(value: int | Sequence[int], n: int, what: str, layer: str) -> tuple[int, ...]:
    value = _unwrapped(value)
    values = (value,) * n if is_int(value) else tuple(value) if _is_sequence(value) else ()
    if len(values) != n or not all(is_int(v) and v >= 1 for v in values):
        raise ValueError(f"{layer}: {what} must be a positive int or {n} positive ints; got {value!r}")
    return tuple(int(v) for v in values)


def _is_sequence(value) -> bool:
    return isinstance(value, (Sequence, np.ndarray)) and not isinstance(value, str)


def _unwrapped(value):
    """A 0-d NumPy array as the scalar it holds; anything else as it is."""
    return value.item() if isinstance(value, np.ndarray) and value.ndim == 0 else value


def _window(value: int | Sequence[int], what: str, layer: str) -> tuple[int, ...]:
    """An int means a square 2-D window; a sequence gives one size per spatial dim."""
    value = _unwrapped(value)
    if not is_int(value) and not (_is_sequence(value) and len(value) >= 1):
        raise ValueError(f"{layer}: {what} must be a positive int or a sequence of them, one per spatial "
                         f"dimension; got {value!r}")
    return _tuple(value, 2 if is_int(value) else len(value), what, layer)


def _check_rank(layer: str, input_shape: Sequence[int], rank: int, layout: str) -> None:
    if len(input_shape) != rank:
        raise ValueError(
            f"{layer}: expected an input of rank {rank}, shape {layout}; got shape {tuple(input_shape)}"
        )


def _check_features(layer: str, expected: int, x: jax.Array, what: str = "features", hint: str = "") -> None:
    if x.ndim < 1 or x.shape[-1] != expected:
        raise ValueError(
            f"{layer}: expected inputs with {expected} {what} in the last axis (as at init); "
            f"got shape {tuple(x.shape)}{hint}"
        )


def _initialized(layer: str, what: str, initializer, key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """``initializer(key, shape)``, checked to be an array of ``shape``: an
    initializer factory not called (``jax.nn.initializers.lecun_normal``)
    returns a function, not an array."""
    value = initializer(key, shape)
    if not hasattr(value, "shape") or tuple(value.shape) != tuple(shape):
        got = f"shape {tuple(value.shape)}" if hasattr(value, "shape") else f"a {type(value).__name__}"
        raise TypeError(
            f"{layer}: {what} must be an initializer (key, shape) -> array such as jdl.nn.init.lecun_normal or "
            f"jax.nn.initializers.lecun_normal(); for {shape} it returned {got}"
        )
    return value


def _check_params(layer: str, params, names: tuple[str, ...]) -> None:
    """A ValueError naming the entries of ``names`` that ``params`` lacks
    (parameters of another model, or of another layer of this one)."""
    missing = [name for name in names if not isinstance(params, Mapping) or name not in params]
    if missing:
        got = sorted(params) if isinstance(params, Mapping) else type(params).__name__
        raise ValueError(f"{layer}: its parameters need {', '.join(map(repr, missing))}; got {got} "
                         "(parameters from another model's init?)")


def _compute_dtype(dtype, layer: str):
    """``dtype`` checked to be a floating dtype (or None)."""
    if dtype is None:
        return None
    try:
        checked = jnp.dtype(dtype)
    except TypeError:
        checked = None
    if checked is None or not jnp.issubdtype(checked, jnp.floating):
        raise ValueError(f"{layer}: dtype must be a floating dtype such as jnp.bfloat16, or None; got {dtype!r}")
    return checked


def _cast(dtype, *arrays):
    """The arrays in the computation's ``dtype`` (unchanged when None)."""
    return arrays if dtype is None else tuple(None if a is None else a.astype(dtype) for a in arrays)


def Dense(  # noqa: N802 - layer constructors are capitalized, as in stax and flax
    features: int,
    *,
    use_bias: bool = True,
    w_init: initializers.Initializer = initializers.lecun_normal,
    b_init: initializers.Initializer = initializers.zeros,
    dtype=None,
) -> Layer:
    """Fully connected layer ``y = x @ w + b`` on the last axis.

    ``w`` has shape ``(in_features, features)``; ``w_init`` defaults to LeCun
    normal and ``b_init`` to zeros (flax.linen.Dense's defaults).

    ``dtype``: the computation's dtype.  ``jnp.bfloat16`` gives mixed
    precision: ``x``, ``w`` and ``b`` are cast to it and ``y`` comes out in
    it, while the parameters (and so their gradients and the optimizer's
    state) stay float32 (flax.linen.Dense's ``dtype``; Micikevicius et al.,
    *Mixed Precision Training*, ICLR 2018).  None: the dtype ``x`` and ``w``
    promote to.
    """
    if not is_int(features) or features < 1:
        raise ValueError(f"Dense: features must be a positive int; got {features!r}")
    features = int(features)
    dtype = _compute_dtype(dtype, "Dense")

    def init(key: jax.Array, input_shape: Sequence[int]) -> tuple[Params, State]:
        if len(input_shape) < 2:
            raise ValueError(
                f"Dense: expected an input of shape (batch, ..., in_features); got shape {tuple(input_shape)}"
            )
        w_key, b_key = jax.random.split(key)
        params = {"w": _initialized("Dense", "w_init", w_init, w_key, (input_shape[-1], features))}
        if use_bias:
            params["b"] = _initialized("Dense", "b_init", b_init, b_key, (features,))
        return params, {}

    def apply(params, state, x, key=None, train=False):
        _check_params("Dense", params, ("w", "b") if use_bias else ("w",))
        _check_features("Dense", params["w"].shape[0], x,
                        hint=" (a model initialized with an input_shape lacking the batch axis, e.g. (28, 28, 1) "
                             "for (1, 28, 28, 1), expects other features than it gets)")  # fmt: skip
        x, w, b = _cast(dtype, x, params["w"], params.get("b"))
        y = x @ w
        if use_bias:
            y = y + b
        return y, state

    return make_layer("dense", init, apply)


def _spatial_layout(n: int) -> tuple[str, str]:
    """Input and kernel layout strings for ``n`` spatial dims (NHWC, HWIO)."""
    spatial = "HWD"[:n] if n <= 3 else None
    if spatial is None:
        raise ValueError(f"Conv: at most 3 spatial dimensions are supported; got {n}")
    return "N" + spatial + "C", spatial + "IO"


def _padding(padding: Padding, n: int, layer: str) -> str | list[tuple[int, int]]:
    """``'SAME'`` / ``'VALID'``, or one ``(low, high)`` pair of zeros to pad per
    spatial dimension: an int pads every side by it, ``n`` ints pad both sides
    of each dimension (flax's forms), ``n`` pairs give each side."""
    expected = f"'SAME', 'VALID', an int, {n} ints or {n} (low, high) pairs of non-negative ints"
    if isinstance(padding, np.ndarray):  # e.g. np.array([[1, 1], [1, 1]])
        padding = padding.tolist()
    if isinstance(padding, str):
        if padding.upper() not in ("SAME", "VALID"):
            raise ValueError(f"{layer}: padding must be {expected}; got {padding!r}")
        return padding.upper()
    if is_int(padding):
        pairs = [(padding, padding)] * n
    elif isinstance(padding, Sequence) and len(padding) == n and all(is_int(p) for p in padding):
        pairs = [(p, p) for p in padding]
    elif isinstance(padding, Sequence) and len(padding) == n and all(
        isinstance(p, Sequence) and len(p) == 2 and all(is_int(v) for v in p) for p in padding
    ):
        pairs = [tuple(p) for p in padding]
    else:
        raise ValueError(f"{layer}: padding must be {expected}; got {padding!r}")
    if any(v < 0 for pair in pairs for v in pair):
        raise ValueError(f"{layer}: padding must be {expected} (negative padding would crop); got {padding!r}")
    return [(int(lo), int(hi)) for lo, hi in pairs]


def _check_window_fits(layer: str, input_shape, window, padding) -> None:
    """A ValueError when the window is larger than the (padded) input: no output."""
    if padding == "SAME":
        return
    spatial = tuple(input_shape[1:-1])
    pairs = [(0, 0)] * len(spatial) if padding == "VALID" else padding
    padded = tuple(s + lo + hi for s, (lo, hi) in zip(spatial, pairs))
    if any(s < w for s, w in zip(padded, window)):
        described = "'VALID'" if padding == "VALID" else f"{[tuple(p) for p in pairs]}"
        raise ValueError(
            f"{layer}: window {tuple(window)} is larger than the input's spatial shape {spatial} "
            f"(input shape {tuple(input_shape)}) with padding {described}"
        )


# How ``Conv(method='auto')`` convolves on each backend (see ``Conv``)...
CONV_METHODS: dict[str, str] = {"cpu": "matmul", "gpu": "lax", "tpu": "lax"}
# ...except that on a GPU a layer with at most this many input channels takes
# 'matmul': cuDNN has no tensor-core kernel for one input channel.
GPU_MATMUL_MAX_CHANNELS = 3
# On a GPU, a 'matmul' convolution with at most this many input channels
# computes its bias inside the product (see ``conv_as_matmul``): XLA's own
# reduction for the bias gradient is then a large part of a shallow layer's
# cost (flax CNN epoch on an H200, bias added / folded: float32 0.097 / 0.086 s,
# bfloat16 0.071 / 0.065 s).  Not on the CPU, where folding made the flax CNN's
# epoch slower (8,192 images: unfolded 3.0-3.5 s, folded 3.6-3.8 s).  -1: never.
MATMUL_BIAS_FOLD_MAX_CHANNELS = 3
# On a GPU, a 'matmul' convolution with at most this many input channels
# stacks its windows on a leading axis, ``(window, batch, *out, C)``, rather
# than side by side in the last one (see ``conv_as_matmul``).  -1: never (the
# default until it is measured; ``benchmarks/device_check.py``'s
# ``epoch_patches_first`` part times it).
MATMUL_PATCHES_FIRST_MAX_CHANNELS = -1


_AUTO_OVERRIDE: contextvars.ContextVar[str | None] = contextvars.ContextVar("jdl_conv_auto", default=None)


@contextlib.contextmanager
def auto_conv_method_as(method: str | None) -> Iterator[None]:
    """Within the block, every ``Conv(method='auto')`` traced takes ``method``
    (``'lax'`` or ``'matmul'``; ``None``: the default rule).  For callers that
    know more than the layer does: ``jdl.compare`` vmaps models over
    configurations, which turns cuDNN convolutions into grouped ones."""
    if method not in (None, "lax", "matmul"):
        raise ValueError(f"auto_conv_method_as: method must be None, 'lax' or 'matmul'; got {method!r}")
    token = _AUTO_OVERRIDE.set(method)
    try:
        yield
    finally:
        _AUTO_OVERRIDE.reset(token)


def auto_conv_override() -> str | None:
    """The method ``auto_conv_method_as`` set for the current block, or None."""
    return _AUTO_OVERRIDE.get()


def auto_conv_method(in_channels: int) -> str:
    """The method ``Conv(method='auto')`` takes for a layer with ``in_channels``
    inputs on the default backend (or inside ``auto_conv_method_as``)."""
    override = _AUTO_OVERRIDE.get()
    if override is not None:
        return override
    backend = jax.default_backend()
    if backend == "gpu" and in_channels <= GPU_MATMUL_MAX_CHANNELS:
        return "matmul"
    return CONV_METHODS.get(backend, "lax")


# On the CPU, 'auto' takes 'lax' instead of 'matmul' for a layer whose
# windows side by side would take more than this many bytes: the matrix
# product holds every input value once per window offset (a 3x3 layer over
# (32, 224, 224, 64) float32: 3.7 GB, against 0.4 GB of input).  Every model
# jdl benchmarks stays under it, training and evaluating (the flax CNN's
# second layer: 29 MB at batch 128, 226 MB in fit's evaluation windows of
# 1,000; fmnist_2c2d's 5x5 one: 80 and 627 MB).
CPU_MATMUL_MAX_PATCH_BYTES = 2**30


def _padded_output(spatial: Sequence[int], window, strides, padding) -> tuple[list, list[int]]:
    """``(pairs, out)``: the ``(low, high)`` padding of each spatial dimension
    (``'SAME'`` and ``'VALID'`` as ``lax`` pads them) and the output size,
    ``(size + low + high - k) // stride + 1``."""
    pairs = lax.padtype_to_pads(spatial, window, strides, padding) if isinstance(padding, str) else padding
    out = [(size + lo + hi - k) // s + 1 for size, (lo, hi), k, s in zip(spatial, pairs, window, strides)]
    return pairs, out


def _auto_for(shape: Sequence[int], window, strides, padding, dtype) -> str:
    """``auto_conv_method`` for an input of ``shape``, with 'lax' on the CPU
    past ``CPU_MATMUL_MAX_PATCH_BYTES`` (outside ``auto_conv_method_as``)."""
    chosen = auto_conv_method(shape[-1])
    if chosen != "matmul" or _AUTO_OVERRIDE.get() is not None or jax.default_backend() != "cpu":
        return chosen
    _, out = _padded_output(shape[1:-1], window, strides, padding)
    patch_bytes = shape[0] * math.prod(out) * math.prod(window) * shape[-1] * jnp.dtype(dtype).itemsize
    return "matmul" if patch_bytes <= CPU_MATMUL_MAX_PATCH_BYTES else "lax"


def _folds_bias(in_channels: int) -> bool:
    """Whether a 'matmul' convolution of ``in_channels`` inputs folds its bias
    into the product (``MATMUL_BIAS_FOLD_MAX_CHANNELS``, on a GPU only)."""
    return jax.default_backend() == "gpu" and in_channels <= MATMUL_BIAS_FOLD_MAX_CHANNELS


def _patches_first(in_channels: int) -> bool:
    """Whether a 'matmul' convolution of ``in_channels`` inputs stacks its
    windows first (``MATMUL_PATCHES_FIRST_MAX_CHANNELS``, on a GPU only)."""
    return jax.default_backend() == "gpu" and in_channels <= MATMUL_PATCHES_FIRST_MAX_CHANNELS


def conv_as_matmul(
    x: jax.Array,
    w: jax.Array,
    strides: Sequence[int],
    padding,
    b: jax.Array | None = None,
    patches_first: bool = False,
) -> jax.Array:
    """Cross-correlation as one matrix product (im2col by shifted slices).

    ``y[b, o, f] = sum_{k, c} x_pad[b, o * s + k, c] w[k, c, f]``: the input
    is padded, each of the ``K = prod(kernel_size)`` window offsets ``k``
    takes a strided slice ``x_pad[:, k : k + s * (out - 1) + 1 : s]``, the
    slices are stacked to ``(batch, *out, K * C)`` and multiplied by the
    kernel reshaped to ``(K * C, features)`` (Chellapilla et al., 2006, "High
    performance convolutional neural networks for document processing").
    Its gradient is slices, pads and two matrix products: no convolution
    primitive at all.  ``padding``: ``'SAME'``, ``'VALID'`` or one ``(low,
    high)`` pair per spatial dimension; ``x`` is ``(batch, *spatial, C)``
    and ``w`` is ``(*kernel_size, C, features)``.

    With a bias ``b`` (``(features,)``), it is folded into the product: the
    patches get a column of ones and the kernel ``b`` as its last row, so
    ``y = [patches, 1] @ [[w], [b]]`` and the bias gradient comes out of the
    kernel gradient's product, ``[patches, 1]^T @ dy``, instead of a separate
    reduction of ``dy`` over every output position (the flax CNN's first
    layer: 128 x 28 x 28 rows, XLA's slowest kernel after the convolutions
    on an H200).  The bias is then rounded as the kernel is: to TF32 in a
    float32 product on a GPU (JAX's default precision there).

    ``patches_first``: the windows are stacked on a new leading axis,
    ``P[k] = x_pad[window k]`` of shape ``(K, batch, *out, C)``, and
    ``y = sum_{k, c} P[k, ..., c] w[k, c, :]`` is one product contracting the
    first and last axes (the bias, if folded, as one more window of ones in
    channel 0).  Each window is then written as one contiguous block, where
    side by side every output position gets ``K * C`` values; for one input
    channel that is rows of 9 to 25 values.
    """
    window, channels, features = w.shape[:-2], w.shape[-2], w.shape[-1]
    pairs, out = _padded_output(x.shape[1:-1], window, strides, padding)
    x = jnp.pad(x, [(0, 0), *pairs, (0, 0)])
    slices = []
    for offset in np.ndindex(*window):
        starts = (0, *offset, 0)
        limits = (x.shape[0], *(o + s * (n - 1) + 1 for o, s, n in zip(offset, strides, out)), channels)
        slices.append(lax.slice(x, starts, limits, (1, *strides, 1)))
    if patches_first:
        return _stacked_windows_product(slices, w.reshape(len(slices), channels, features), b)
    kernel = w.reshape(len(slices) * channels, features)
    if b is not None:
        slices.append(jnp.ones_like(slices[0], shape=(*slices[0].shape[:-1], 1)))
        kernel = jnp.concatenate([kernel, b.reshape(1, features)])
    return jnp.concatenate(slices, axis=-1) @ kernel


def _stacked_windows_product(slices: list[jax.Array], kernel: jax.Array, b: jax.Array | None) -> jax.Array:
    """``sum_{k, c} slices[k][..., c] kernel[k, c, :]`` with the windows
    stacked first (``conv_as_matmul(..., patches_first=True)``); a bias ``b``
    is one more window, ones in channel 0, with ``b`` as its kernel row 0."""
    channels = kernel.shape[1]
    if b is not None:
        ones = jnp.ones_like(slices[0], shape=(*slices[0].shape[:-1], 1))
        slices = [*slices, jnp.pad(ones, [(0, 0)] * (ones.ndim - 1) + [(0, channels - 1)])]
        kernel = jnp.concatenate([kernel, jnp.pad(b.reshape(1, 1, -1), [(0, 0), (0, channels - 1), (0, 0)])])
    patches = jnp.stack(slices)
    dtype = jnp.result_type(patches, kernel)  # promoted as the side-by-side product's ``@`` does
    return lax.dot_general(patches.astype(dtype), kernel.astype(dtype), (((0, patches.ndim - 1), (0, 1)), ((), ())))


def Conv(  # noqa: N802
    features: int,
    kernel_size: int | Sequence[int],
    strides: int | Sequence[int] = 1,
    padding: Padding = "SAME",
    *,
    use_bias: bool = True,
    w_init: initializers.Initializer = initializers.lecun_normal,
    b_init: initializers.Initializer = initializers.zeros,
    method: str = "auto",
    dtype=None,
) -> Layer:
    """Convolution (cross-correlation, as ``lax.conv_general_dilated``) with bias.

    Inputs are ``(batch, *spatial, channels)`` (NHWC for 2-D), the kernel is
    ``(*kernel_size, in_channels, features)`` (HWIO).  An int ``kernel_size``
    means a square 2-D window.  Defaults follow ``flax.linen.Conv``.

    ``method``: ``'lax'`` calls ``lax.conv_general_dilated`` (cuDNN on a GPU);
    ``'matmul'`` computes the same sum as one matrix product of the input's
    shifted windows with the flattened kernel (``conv_as_matmul``);
    ``'auto'`` (default) takes ``auto_conv_method(in_channels)`` when the
    layer is traced: ``'matmul'`` on the CPU, where XLA's convolutions run
    about 25x slower inside ``lax.scan`` than outside it and the matrix
    product is not slowed (flax CNN step, batch 128, 2 cores: 49 ms in a scan
    against 83 ms for ``lax`` called from a Python loop); on a GPU
    ``'matmul'`` for layers with at most ``GPU_MATMUL_MAX_CHANNELS`` (3) input
    channels and ``'lax'`` for the rest: cuDNN has no tensor-core kernel for
    one input channel (the flax CNN's first layer took 57 of a step's 217 µs
    of kernels on an H200), and is faster for wide inputs (DeepOBS 2c2d on an
    H100 with every layer a matrix product: 0.235 against 0.186 s per epoch).
    Epochs on an H200 (``benchmarks/step_variants.py``), all ``'lax'`` /
    ``'auto'``: flax CNN 0.124 / 0.104 s, DeepOBS 3c3d 0.197 / 0.175 s,
    2c2d 0.179 / 0.182 s.  ``'lax'`` on TPUs.  On the CPU a layer whose
    windows side by side would take more than ``CPU_MATMUL_MAX_PATCH_BYTES``
    (1 GiB: large images, wide batches) takes ``'lax'``.

    ``dtype``: the computation's dtype, as for ``Dense`` (``jnp.bfloat16``:
    mixed precision, float32 parameters).
    """
    if not is_int(features) or features < 1:
        raise ValueError(f"Conv: features must be a positive int; got {features!r}")
    features = int(features)
    dtype = _compute_dtype(dtype, "Conv")
    window = _window(kernel_size, "kernel_size", "Conv")
    n = len(window)
    stride = _tuple(strides, n, "strides", "Conv")
    pad = _padding(padding, n, "Conv")
    lhs_layout, rhs_layout = _spatial_layout(n)
    dimension_numbers = (lhs_layout, rhs_layout, lhs_layout)
    if method not in ("auto", "lax", "matmul"):
        raise ValueError(f"Conv: method must be 'auto', 'lax' or 'matmul'; got {method!r}")

    def init(key: jax.Array, input_shape: Sequence[int]) -> tuple[Params, State]:
        _check_rank("Conv", input_shape, n + 2, "(batch, " + ", ".join("HWD"[:n]) + ", channels)")
        _check_window_fits("Conv", input_shape, window, pad)
        w_key, b_key = jax.random.split(key)
        params = {"w": _initialized("Conv", "w_init", w_init, w_key, (*window, input_shape[-1], features))}
        if use_bias:
            params["b"] = _initialized("Conv", "b_init", b_init, b_key, (features,))
        return params, {}

    def apply(params, state, x, key=None, train=False):
        if x.ndim != n + 2:
            raise ValueError(
                f"Conv: expected an input of rank {n + 2}, shape (batch, {', '.join('HWD'[:n])}, channels); "
                f"got shape {tuple(x.shape)}"
            )
        _check_params("Conv", params, ("w", "b") if use_bias else ("w",))
        _check_features("Conv", params["w"].shape[-2], x, "channels")
        _check_window_fits("Conv", x.shape, window, pad)
        chosen = _auto_for(x.shape, window, stride, pad, x.dtype) if method == "auto" else method
        x, w, b = _cast(dtype, x, params["w"], params.get("b"))
        if x.dtype != w.dtype:  # dtype None: the dtype they promote to, as Dense and flax's Conv
            x, w = (a.astype(jnp.promote_types(x.dtype, w.dtype)) for a in (x, w))
        folded = chosen == "matmul" and _folds_bias(x.shape[-1])
        if chosen == "matmul":
            y = conv_as_matmul(x, w, stride, pad, b if folded else None, _patches_first(x.shape[-1]))
        else:
            y = lax.conv_general_dilated(x, w, stride, pad, dimension_numbers=dimension_numbers)
        if use_bias and not folded:
            y = y + b
        return y, state

    return make_layer("conv", init, apply)


def _pool(name: str, window, strides, padding, reduce_fn, init_value, average: bool) -> Layer:
    label = {"max_pool": "MaxPool", "avg_pool": "AvgPool"}[name]
    window = _window(window, "window", label)
    n = len(window)
    stride = window if strides is None else _tuple(strides, n, "strides", label)
    pad = _padding(padding, n, label)
    dims, steps = (1, *window, 1), (1, *stride, 1)
    full_pad = pad if isinstance(pad, str) else [(0, 0), *pad, (0, 0)]
    size = math.prod(window)
    # 'SAME' pads nothing where the windows tile the input; explicit pairs might.
    unpadded = isinstance(pad, str) or all(tuple(pair) == (0, 0) for pair in pad)
    tiles = average and stride == window and unpadded

    def init(key: jax.Array, input_shape: Sequence[int]) -> tuple[Params, State]:
        _check_rank(label, input_shape, n + 2, "(batch, " + ", ".join("HWD"[:n]) + ", channels)")
        _check_window_fits(label, input_shape, window, pad)
        return {}, {}

    def apply(params, state, x, key=None, train=False):
        if x.ndim != n + 2:
            raise ValueError(f"{label}: expected an input of rank {n + 2}; got shape {tuple(x.shape)}")
        _check_window_fits(label, x.shape, window, pad)
        if average and not jnp.issubdtype(x.dtype, jnp.inexact):
            x = x.astype(jnp.float32)  # integer pixels (uint8) would overflow their own dtype's sum
        if tiles and all(d % w == 0 for d, w in zip(x.shape[1:-1], window)):
            return _tiled_sum(x, window) / size, state
        # A concrete NumPy init value lets lax recognize the max / add monoid,
        # which is what makes the pool differentiable under jit.
        start = init_value if average or jnp.issubdtype(x.dtype, jnp.floating) else jnp.iinfo(x.dtype).min
        y = lax.reduce_window(x, np.asarray(start, x.dtype), reduce_fn, dims, steps, full_pad)
        return (y / size if average else y), state

    return make_layer(name, init, apply)


def _tiled_sum(x: jax.Array, window: Sequence[int]) -> jax.Array:
    """Sums over windows that tile ``x``'s spatial dimensions exactly (strides
    equal to the window, sizes divisible by it: no padding either way): a
    reshape to ``(batch, H / h, h, W / w, w, C)`` and a sum over the window's
    axes, added in ``x``'s dtype as ``lax.reduce_window`` adds (``jnp.sum``
    would add bfloat16 in float32), so either way gives the same values.
    ``reduce_window``'s gradient is a padded strided window sum of its own;
    this one's is a broadcast, which XLA fuses into its neighbours (the flax
    CNN's two 2x2 average pools)."""
    shape = [x.shape[0]]
    for size, w in zip(x.shape[1:-1], window):
        shape += [size // w, w]
    axes = tuple(range(2, 2 * len(window) + 1, 2))
    return lax.reduce(x.reshape(*shape, x.shape[-1]), np.asarray(0, x.dtype), lax.add, axes)


def MaxPool(  # noqa: N802
    window: int | Sequence[int], strides: int | Sequence[int] | None = None, padding: Padding = "VALID"
) -> Layer:
    """Maximum over each window (``lax.reduce_window`` with ``lax.max``).

    ``strides`` defaults to the window, so ``MaxPool((2, 2))`` halves height
    and width (as Keras and PyTorch; stax and flax default to stride 1).
    """
    return _pool("max_pool", window, strides, padding, lax.max, -np.inf, False)


def AvgPool(  # noqa: N802
    window: int | Sequence[int], strides: int | Sequence[int] | None = None, padding: Padding = "VALID"
) -> Layer:
    """Mean over each window; padded positions count as zeros (flax's
    ``avg_pool`` default, ``count_include_pad=True``).  ``strides`` defaults to
    the window.  Integer inputs (uint8 pixels) are averaged in float32: summed
    in their own dtype they would overflow (as flax's ``avg_pool`` does).
    Windows that tile the input exactly are summed by a reshape
    (``_tiled_sum``), others by ``lax.reduce_window``: the flax CNN's epoch on
    an H200 in bfloat16 took 0.059 s against 0.063 s with ``reduce_window``
    (``benchmarks/step_variants.py --bfloat16``)."""
    return _pool("avg_pool", window, strides, padding, lax.add, 0.0, True)


def Flatten() -> Layer:  # noqa: N802
    """Reshape ``(batch, d1, d2, ...)`` to ``(batch, d1 * d2 * ...)``."""

    def init(key: jax.Array, input_shape: Sequence[int]) -> tuple[Params, State]:
        if len(input_shape) < 1:
            raise ValueError(f"Flatten: expected an input with a batch dimension; got shape {tuple(input_shape)}")
        return {}, {}

    def apply(params, state, x, key=None, train=False):
        if x.ndim < 1:
            raise ValueError(f"Flatten: expected an input with a batch dimension; got shape {tuple(x.shape)}")
        # the size, not -1: an empty batch has no size to infer it from
        return x.reshape(x.shape[0], math.prod(x.shape[1:])), state

    return make_layer("flatten", init, apply)


def Dropout(rate: float) -> Layer:  # noqa: N802
    """Zero each entry with probability ``rate`` during training and scale the
    kept ones by ``1 / (1 - rate)`` (inverted dropout; Srivastava et al., 2014,
    "Dropout: a simple way to prevent neural networks from overfitting").

    With ``train=True`` a PRNG ``key`` is required; with ``train=False`` the
    layer is the identity.
    """
    if not (is_real(rate) and 0 <= float(rate) < 1):
        raise ValueError(f"Dropout: rate is the probability of dropping, a number in [0, 1); got {rate!r}")
    rate = float(rate)
    keep = 1.0 - rate

    def init(key: jax.Array, input_shape: Sequence[int]) -> tuple[Params, State]:
        return {}, {}

    def apply(params, state, x, key=None, train=False):
        if not train or rate == 0.0:
            return x, state
        if key is None:
            raise ValueError(
                "Dropout: train=True needs a PRNG key to draw the mask; "
                "call apply(params, state, x, key=jax.random.key(...), train=True)"
            )
        mask = jax.random.bernoulli(key, keep, x.shape)
        return jnp.where(mask, x / keep, jnp.zeros_like(x)), state

    return make_layer("dropout", init, apply)


def BatchNorm(momentum: float = 0.99, eps: float = 1e-5) -> Layer:  # noqa: N802
    """Batch normalization over all axes but the last (Ioffe & Szegedy, 2015).

    ``y = (x - mean) / sqrt(var + eps) * scale + bias``.  With ``train=True``
    mean and (biased) variance are the batch's, and the returned state holds
    ``running = momentum * running + (1 - momentum) * batch``; with
    ``train=False`` the running statistics in ``state`` are used.  Matches
    ``flax.linen.BatchNorm``, except that ``eps`` must be above 0 (a feature
    constant over the batch would otherwise give 0 / 0).
    """
    if not (is_real(momentum) and 0.0 <= float(momentum) <= 1.0):
        raise ValueError(f"BatchNorm: momentum must be a number in [0, 1]; got {momentum!r}")
    if not (is_real(eps) and 0.0 < float(eps) < float("inf")):  # eps 0: a constant feature's var 0 gives NaN
        raise ValueError(f"BatchNorm: eps must be a finite number > 0; got {eps!r}")

    def init(key: jax.Array, input_shape: Sequence[int]) -> tuple[Params, State]:
        if len(input_shape) < 2:
            raise ValueError(
                f"BatchNorm: expected an input of shape (batch, ..., features); got shape {tuple(input_shape)}"
            )
        features = input_shape[-1]
        params = {"scale": jnp.ones((features,)), "bias": jnp.zeros((features,))}
        state = {"mean": jnp.zeros((features,)), "var": jnp.ones((features,))}
        return params, state

    def apply(params, state, x, key=None, train=False):
        _check_params("BatchNorm", params, ("scale", "bias"))
        _check_features("BatchNorm", params["scale"].shape[0], x)
        if not {"mean", "var"} <= set(state):
            raise ValueError(f"BatchNorm: its state must hold the running 'mean' and 'var' (from its init); "
                             f"got keys {sorted(state)}")
        if train:
            # the statistics in float32 at least (as flax): E[x^2] - E[x]^2 cancels in bfloat16
            x32 = x.astype(jnp.promote_types(x.dtype, jnp.float32))
            axes = tuple(range(x.ndim - 1))
            mean = jnp.mean(x32, axes)
            var = jnp.maximum(0.0, jnp.mean(jnp.square(x32), axes) - jnp.square(mean))
            state = {
                "mean": momentum * state["mean"] + (1.0 - momentum) * mean,
                "var": momentum * state["var"] + (1.0 - momentum) * var,
            }
        else:
            mean, var = state["mean"], state["var"]
        y = (x - mean) * lax.rsqrt(var + eps) * params["scale"] + params["bias"]
        return y, state

    return make_layer("batch_norm", init, apply)
