"""jdl.nn against independent references: lax, flax.linen, jax.nn.initializers,
finite differences in float64."""

from __future__ import annotations

import flax.linen as fnn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from jax.flatten_util import ravel_pytree

from jdl import models, nn

KEY = jax.random.key(0)


def _images(shape, seed=0):
    return jax.random.normal(jax.random.key(seed), shape)


# --- initializers ----------------------------------------------------------


@pytest.mark.parametrize(
    "ours, reference",
    [
        (nn.init.glorot_uniform, jax.nn.initializers.glorot_uniform()),
        (nn.init.glorot_normal, jax.nn.initializers.glorot_normal()),
        (nn.init.xavier_uniform, jax.nn.initializers.xavier_uniform()),
        (nn.init.he_uniform, jax.nn.initializers.he_uniform()),
        (nn.init.he_normal, jax.nn.initializers.he_normal()),
        (nn.init.kaiming_normal, jax.nn.initializers.kaiming_normal()),
        (nn.init.lecun_uniform, jax.nn.initializers.lecun_uniform()),
        (nn.init.lecun_normal, jax.nn.initializers.lecun_normal()),
        (nn.init.zeros, jax.nn.initializers.zeros),
        (nn.init.ones, jax.nn.initializers.ones),
        (nn.init.normal(0.3), jax.nn.initializers.normal(0.3)),
        (nn.init.truncated_normal(0.05), jax.nn.initializers.truncated_normal(0.05)),
    ],
)
@pytest.mark.parametrize("shape", [(30, 20), (3, 3, 8, 16)])
def test_initializers_match_jax(ours, reference, shape):
    np.testing.assert_allclose(ours(KEY, shape), reference(KEY, shape), rtol=1e-6, atol=1e-7)


def test_glorot_uniform_variance_matches_formula():
    fan_in, fan_out = 3 * 3 * 64, 3 * 3 * 128
    w = np.asarray(nn.init.glorot_uniform(KEY, (3, 3, 64, 128)), np.float64)
    assert abs(w.var() / (2.0 / (fan_in + fan_out)) - 1.0) < 0.02
    assert np.abs(w).max() <= np.sqrt(6.0 / (fan_in + fan_out))


# --- layers against lax and flax -------------------------------------------


def test_dense_matches_flax():
    x = _images((5, 7))
    params, state = nn.Dense(3).init(KEY, x.shape)
    y, _ = nn.Dense(3).apply(params, state, x)
    flax_params = {"params": {"kernel": params["w"], "bias": params["b"]}}
    np.testing.assert_allclose(y, fnn.Dense(3).apply(flax_params, x), rtol=1e-6, atol=1e-6)
    assert params["w"].shape == (7, 3) and params["b"].shape == (3,)


@pytest.mark.parametrize("method", ["lax", "matmul"])
@pytest.mark.parametrize("strides, padding", [(1, "SAME"), (2, "VALID"), ((2, 1), ((1, 2), (0, 1)))])
def test_conv_matches_lax_and_flax(strides, padding, method):
    x = _images((2, 9, 8, 3))
    layer = nn.Conv(4, (3, 2), strides=strides, padding=padding, method=method)
    params, state = layer.init(KEY, x.shape)
    y, _ = layer.apply(params, state, x)
    stride = (strides, strides) if isinstance(strides, int) else strides
    expected = lax.conv_general_dilated(
        x, params["w"], stride, padding, dimension_numbers=("NHWC", "HWIO", "NHWC")
    ) + params["b"]
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)
    flax_conv = fnn.Conv(4, (3, 2), strides=stride, padding=padding)
    flax_y = flax_conv.apply({"params": {"kernel": params["w"], "bias": params["b"]}}, x)
    np.testing.assert_allclose(y, flax_y, rtol=1e-5, atol=1e-5)


class _FlaxCNN(fnn.Module):
    """flax examples/mnist/train.py, with flax's computation ``dtype``."""

    dtype: object = None

    @fnn.compact
    def __call__(self, x):
        x = fnn.avg_pool(fnn.relu(fnn.Conv(32, (3, 3), dtype=self.dtype)(x)), (2, 2), strides=(2, 2))
        x = fnn.avg_pool(fnn.relu(fnn.Conv(64, (3, 3), dtype=self.dtype)(x)), (2, 2), strides=(2, 2))
        x = fnn.relu(fnn.Dense(256, dtype=self.dtype)(x.reshape((x.shape[0], -1))))
        return fnn.Dense(10, dtype=self.dtype)(x)


def _from_flax_cnn(flax_params) -> dict:
    pairs = [(kind, flax_params[f"{flax_kind}_{i}"], i) for kind, flax_kind in (("conv", "Conv"), ("dense", "Dense"))
             for i in range(2)]  # fmt: skip
    return {f"{kind}_{i}": {"w": layer["kernel"], "b": layer["bias"]} for kind, layer, i in pairs}


@pytest.mark.parametrize("method", ["lax", "matmul"])
def test_bfloat16_computation_matches_flax_with_float32_parameters_and_gradients(method):
    """Mixed precision (``dtype=jnp.bfloat16``) against flax.linen's ``dtype``:
    the same outputs, in bfloat16; parameters and their gradients float32."""
    x = _images((4, 28, 28, 1))
    flax_model = _FlaxCNN(dtype=jnp.bfloat16)
    flax_params = flax_model.init(KEY, x)["params"]
    params = _from_flax_cnn(flax_params)
    model = models.cnn(conv_method=method, dtype=jnp.bfloat16)
    ours, _ = model.apply(params, {}, x)
    theirs = flax_model.apply({"params": flax_params}, x)
    assert ours.dtype == theirs.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.float32(ours), np.float32(theirs), rtol=2e-2, atol=2e-2)
    full, _ = models.cnn(conv_method=method).apply(params, {}, x)  # float32: bfloat16 is an approximation of it
    assert full.dtype == jnp.float32 and 0 < np.max(np.abs(np.float32(ours) - full)) < 0.1

    def loss(apply, p):
        return jnp.mean(apply(p).astype(jnp.float32) ** 2)

    ours_grad = jax.grad(lambda p: loss(lambda q: model.apply(q, {}, x)[0], p))(params)
    flax_grad = _from_flax_cnn(jax.grad(lambda p: loss(lambda q: flax_model.apply({"params": q}, x), p))(flax_params))
    for a, b in zip(jax.tree_util.tree_leaves(ours_grad), jax.tree_util.tree_leaves(flax_grad), strict=True):
        assert a.dtype == jnp.float32
        np.testing.assert_allclose(a, b, rtol=5e-2, atol=5e-2 * float(np.max(np.abs(b))))
    assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(model.init(KEY, x.shape)[0]))


@pytest.mark.parametrize("layer", [nn.Dense, lambda dtype: nn.Conv(2, 3, dtype=dtype)])
@pytest.mark.parametrize("dtype", [jnp.int32, "not a dtype", bool])
def test_a_computation_dtype_must_be_floating(layer, dtype):
    with pytest.raises(ValueError, match="dtype must be a floating dtype"):
        layer(dtype=dtype) if layer is not nn.Dense else nn.Dense(3, dtype=dtype)


def test_conv_rejects_an_unknown_method():
    with pytest.raises(ValueError, match="Conv: method must be 'auto', 'lax' or 'matmul'; got 'fft'"):
        nn.Conv(4, 3, method="fft")


def _primitives(layer, x) -> set[str]:
    params, _ = layer.init(KEY, x.shape)
    jaxpr = jax.make_jaxpr(lambda p: layer.apply(p, {}, x)[0])(params)
    return {str(eqn.primitive) for eqn in jaxpr.jaxpr.eqns}


@pytest.mark.parametrize("backend, channels, expected", [("cpu", 1, "matmul"), ("cpu", 32, "matmul"),
                                                         ("gpu", 1, "matmul"), ("gpu", 3, "matmul"),
                                                         ("gpu", 4, "lax"), ("gpu", 32, "lax"), ("tpu", 1, "lax")])
def test_auto_conv_method_by_backend_and_input_channels(monkeypatch, backend, channels, expected):
    monkeypatch.setattr(jax, "default_backend", lambda: backend)
    assert nn.layers.auto_conv_method(channels) == expected
    with nn.layers.auto_conv_method_as("lax"):
        assert nn.layers.auto_conv_method(channels) == "lax"
        with nn.layers.auto_conv_method_as(None):
            assert nn.layers.auto_conv_method(channels) == expected
    assert nn.layers.auto_conv_method(channels) == expected


def test_auto_conv_traces_the_method_chosen_for_it():
    x = _images((2, 6, 6, 3))
    layer = nn.Conv(4, 3)  # method='auto': a matrix product on the CPU
    assert "conv_general_dilated" not in _primitives(layer, x) and "dot_general" in _primitives(layer, x)
    with nn.layers.auto_conv_method_as("lax"):
        assert "conv_general_dilated" in _primitives(layer, x)
    assert "conv_general_dilated" in _primitives(nn.Conv(4, 3, method="lax"), x)
    with pytest.raises(ValueError, match="method must be None, 'lax' or 'matmul'; got 'fft'"):
        with nn.layers.auto_conv_method_as("fft"):
            pass


def test_auto_conv_on_the_cpu_takes_lax_where_the_windows_would_not_fit_in_memory():
    """A 3x3 layer over (32, 224, 224, 64) float32 as a matrix product holds
    3.7 GB of windows; 'auto' takes lax.conv there (traced on shapes only)."""
    layer = nn.Conv(64, 3)
    params, _ = layer.init(KEY, (1, 8, 8, 64))

    def primitives(shape):
        x = jax.ShapeDtypeStruct(shape, jnp.float32)
        return {str(e.primitive) for e in jax.make_jaxpr(lambda x: layer.apply(params, {}, x)[0])(x).jaxpr.eqns}

    assert "conv_general_dilated" in primitives((32, 224, 224, 64))
    assert "conv_general_dilated" not in primitives((32, 28, 28, 64))  # 58 MB of windows: the product
    with nn.layers.auto_conv_method_as("matmul"):  # the caller's choice stands
        assert "conv_general_dilated" not in primitives((32, 224, 224, 64))


@pytest.mark.parametrize("patches_first", [False, True], ids=["side_by_side", "patches_first"])
@pytest.mark.parametrize("kernel, strides, padding", [((3, 3), 1, "SAME"), ((5, 5), 2, "SAME"), ((3,), 2, "VALID"),
                                                      ((2, 2, 2), 1, ((1, 0), (0, 1), (1, 1)))])  # fmt: skip
def test_conv_by_matmul_matches_a_float64_loop_with_gradients(monkeypatch, kernel, strides, padding, patches_first):
    """The matmul convolution against a NumPy float64 sum over windows, value
    and the gradients with respect to input and kernel (through the lax
    convolution's transpose, an independent derivation); its windows side by
    side (the default) or stacked first (as on a GPU with
    ``MATMUL_PATCHES_FIRST_MAX_CHANNELS`` at least the 3 channels here)."""
    if patches_first:
        monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
        monkeypatch.setattr(nn.layers, "MATMUL_PATCHES_FIRST_MAX_CHANNELS", 3)
    n = len(kernel)
    x = _images((2, *(7,) * n, 3))
    layer = nn.Conv(5, kernel, strides=strides, padding=padding, use_bias=False, method="matmul")
    params, _ = layer.init(KEY, x.shape)
    w = np.asarray(params["w"], np.float64)
    stride = (strides,) * n if isinstance(strides, int) else strides
    pairs = lax.padtype_to_pads(x.shape[1:-1], kernel, stride, padding) if isinstance(padding, str) else padding
    xp = np.pad(np.asarray(x, np.float64), [(0, 0), *pairs, (0, 0)])
    out = [(xp.shape[1 + i] - kernel[i]) // stride[i] + 1 for i in range(n)]
    expected = np.zeros((2, *out, 5))
    for o in np.ndindex(*out):
        window = tuple(slice(o[i] * stride[i], o[i] * stride[i] + kernel[i]) for i in range(n))
        expected[(slice(None), *o)] = np.tensordot(xp[(slice(None), *window)], w, n + 1)
    y, _ = layer.apply(params, {}, x)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)
    spatial = "HWD"[:n]
    numbers = ("N" + spatial + "C", spatial + "IO", "N" + spatial + "C")

    def lax_loss(x, w):
        return jnp.sum(jnp.sin(lax.conv_general_dilated(x, w, stride, pairs, dimension_numbers=numbers)))

    def matmul_loss(x, w):
        return jnp.sum(jnp.sin(layer.apply({"w": w}, {}, x)[0]))

    for ours, theirs in zip(jax.grad(matmul_loss, (0, 1))(x, params["w"]), jax.grad(lax_loss, (0, 1))(x, params["w"])):
        np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("patches_first", [-1, 3], ids=["side_by_side", "patches_first"])
@pytest.mark.parametrize("backend, channels, folded", [("gpu", 1, True), ("gpu", 3, True), ("gpu", 4, False),
                                                       ("cpu", 1, False)])  # fmt: skip
def test_matmul_conv_folds_its_bias_into_the_product_on_a_gpu(monkeypatch, backend, channels, folded, patches_first):
    """Where the bias is folded (a GPU, at most 3 input channels) the layer's
    program adds nothing after its one product, and value and gradients (of
    input, kernel and bias) still match a float64 NumPy convolution plus bias
    and its gradients written out by hand; with the windows side by side or
    stacked first (``MATMUL_PATCHES_FIRST_MAX_CHANNELS`` 3: on a GPU, up to 3
    channels)."""
    monkeypatch.setattr(jax, "default_backend", lambda: backend)
    monkeypatch.setattr(nn.layers, "MATMUL_PATCHES_FIRST_MAX_CHANNELS", patches_first)
    x = _images((2, 6, 5, channels))
    layer = nn.Conv(4, (3, 2), method="matmul")
    params, _ = layer.init(KEY, x.shape)
    params["b"] = jax.random.normal(jax.random.key(7), (4,))
    primitives = _primitives(layer, x)
    assert ("add" not in primitives) == folded and "dot_general" in primitives
    xp = np.pad(np.asarray(x, np.float64), [(0, 0), (1, 1), (0, 1), (0, 0)])  # 'SAME' for a (3, 2) window
    w, b = np.asarray(params["w"], np.float64), np.asarray(params["b"], np.float64)
    windows = np.stack([xp[:, i : i + 6, j : j + 5] for i in range(3) for j in range(2)], axis=-2)
    expected = np.einsum("nhwkc,kcf->nhwf", windows, w.reshape(6, channels, 4)) + b
    y, _ = layer.apply(params, {}, x)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)
    # loss = sum(sin(y)): dL/dy = cos(y); dL/db = sum of dL/dy; dL/dw = windows^T dL/dy;
    # dL/dx scatters dL/dy @ w^T back over the windows.
    dy = np.cos(expected)
    grads = jax.grad(lambda p, x: jnp.sum(jnp.sin(layer.apply(p, {}, x)[0])), (0, 1))(params, x)
    np.testing.assert_allclose(grads[0]["b"], dy.sum((0, 1, 2)), rtol=1e-4, atol=1e-5)
    dw = np.einsum("nhwkc,nhwf->kcf", windows, dy).reshape(w.shape)
    np.testing.assert_allclose(grads[0]["w"], dw, rtol=1e-4, atol=1e-5)
    dwindows = np.einsum("nhwf,kcf->nhwkc", dy, w.reshape(6, channels, 4))
    dxp = np.zeros_like(xp)
    for k, (i, j) in enumerate((i, j) for i in range(3) for j in range(2)):
        dxp[:, i : i + 6, j : j + 5] += dwindows[..., k, :]
    np.testing.assert_allclose(grads[1], dxp[:, 1:7, 0:5], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("padding", ["VALID", "SAME"])
@pytest.mark.parametrize("window, strides", [((2, 2), None), ((3, 3), (2, 2)), ((2, 3), (1, 1))])
def test_pools_match_reduce_window_and_flax(window, strides, padding):
    x = _images((2, 7, 8, 3))
    step = window if strides is None else strides
    max_y, _ = nn.MaxPool(window, strides, padding).apply({}, {}, x)
    avg_y, _ = nn.AvgPool(window, strides, padding).apply({}, {}, x)
    dims, steps = (1, *window, 1), (1, *step, 1)
    np.testing.assert_allclose(max_y, lax.reduce_window(x, -jnp.inf, lax.max, dims, steps, padding))
    total = lax.reduce_window(x, 0.0, lax.add, dims, steps, padding)
    np.testing.assert_allclose(avg_y, total / np.prod(window), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(max_y, fnn.max_pool(x, window, step, padding), rtol=1e-6)
    np.testing.assert_allclose(avg_y, fnn.avg_pool(x, window, step, padding), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("shape, window, padding", [((2, 8, 6, 3), (2, 2), "VALID"), ((2, 8, 6, 3), (2, 3), "SAME"),
                                                     ((2, 4, 6, 8, 3), (2, 3, 2), "VALID")])  # fmt: skip
def test_average_pool_of_tiling_windows_is_a_block_mean_with_a_uniform_gradient(shape, window, padding):
    """Windows that tile the input (strides = window, divisible sizes) are
    summed by a reshape, not ``reduce_window``: the value is each block's mean
    (NumPy, float64) and the gradient of ``sum(c * pool(x))`` spreads each
    ``c / block size`` evenly over its block."""
    x = _images(shape)
    pool = nn.AvgPool(window, padding=padding)
    assert "reduce_window_sum" not in _primitives(pool, x)
    y, _ = pool.apply({}, {}, x)
    n = len(window)
    blocks = np.asarray(x, np.float64).reshape(
        shape[0], *[v for size, w in zip(shape[1:-1], window) for v in (size // w, w)], shape[-1]
    )
    np.testing.assert_allclose(y, blocks.mean(axis=tuple(range(2, 2 * n + 1, 2))), rtol=1e-6, atol=1e-6)
    c = np.asarray(_images(y.shape), np.float64)
    grad = jax.grad(lambda x: jnp.sum(jnp.asarray(c, jnp.float32) * pool.apply({}, {}, x)[0]))(x)
    expected = c / np.prod(window)
    for axis, w in enumerate(window, start=1):
        expected = np.repeat(expected, w, axis=axis)
    np.testing.assert_allclose(grad, expected, rtol=1e-6, atol=1e-7)
    half = x.astype(jnp.bfloat16)  # added in bfloat16, as reduce_window adds (flax's avg_pool): the same values
    dims = (1, *window, 1)
    same = lax.reduce_window(half, np.asarray(0, half.dtype), lax.add, dims, dims, padding) / np.prod(window)
    np.testing.assert_array_equal(np.asarray(pool.apply({}, {}, half)[0], np.float32), np.asarray(same, np.float32))
    assert "reduce_window_sum" in _primitives(nn.AvgPool(window, strides=1, padding=padding), x)
    padded = nn.AvgPool(window, padding=[(w, w) for w in window])
    assert "reduce_window_sum" in _primitives(padded, x)
    padded_y, _ = padded.apply({}, {}, x)
    assert padded_y.shape == (shape[0], *(size // w + 2 for size, w in zip(shape[1:-1], window)), shape[-1])


def test_flatten():
    x = _images((4, 3, 2, 5))
    y, _ = nn.Flatten().apply({}, {}, x)
    np.testing.assert_array_equal(y, np.asarray(x).reshape(4, 30))


def test_flatten_and_a_model_take_an_empty_batch():
    y, _ = nn.Flatten().apply({}, {}, jnp.ones((0, 3, 2, 5)))
    assert y.shape == (0, 30)
    model = models.mlp()
    params, state = model.init(jax.random.key(0), (1, 28, 28, 1))
    assert model.apply(params, state, jnp.zeros((0, 28, 28, 1)))[0].shape == (0, 10)


def test_batchnorm_matches_flax_in_train_and_eval():
    x = _images((16, 5, 5, 3)) * 3.0 + 1.0
    layer = nn.BatchNorm(momentum=0.9, eps=1e-5)
    params, state = layer.init(KEY, x.shape)
    params = {"scale": jnp.array([1.0, 2.0, 0.5]), "bias": jnp.array([0.1, -0.2, 0.3])}
    flax_bn = fnn.BatchNorm(use_running_average=False, momentum=0.9, epsilon=1e-5)
    variables = {"params": params, "batch_stats": {"mean": state["mean"], "var": state["var"]}}
    flax_y, flax_updates = flax_bn.apply(variables, x, mutable=["batch_stats"])
    y, new_state = layer.apply(params, state, x, train=True)
    np.testing.assert_allclose(y, flax_y, rtol=1e-5, atol=1e-5)
    for name in ("mean", "var"):
        np.testing.assert_allclose(new_state[name], flax_updates["batch_stats"][name], rtol=1e-5, atol=1e-6)
    # Running statistics against NumPy in float64.
    x64 = np.asarray(x, np.float64).reshape(-1, 3)
    np.testing.assert_allclose(new_state["mean"], 0.1 * x64.mean(0), rtol=1e-5)
    np.testing.assert_allclose(new_state["var"], 0.9 + 0.1 * x64.var(0), rtol=1e-5)
    # Eval mode uses the running statistics and leaves them alone.
    eval_y, eval_state = layer.apply(params, new_state, x, train=False)
    flax_eval = fnn.BatchNorm(use_running_average=True, momentum=0.9, epsilon=1e-5).apply(
        {"params": params, "batch_stats": flax_updates["batch_stats"]}, x
    )
    np.testing.assert_allclose(eval_y, flax_eval, rtol=1e-5, atol=1e-5)
    assert jax.tree_util.tree_all(jax.tree_util.tree_map(jnp.array_equal, eval_state, new_state))


def test_batchnorm_statistics_of_bfloat16_inputs_are_computed_in_float32():
    """Inputs far from zero in bfloat16 (a bfloat16 layer's output): the batch
    statistics as NumPy's in float64 of the same values, to float32 rounding
    (E[x^2] - E[x]^2 in bfloat16 would cancel to nothing)."""
    x = (10.0 + _images((256, 16))).astype(jnp.bfloat16)
    layer = nn.BatchNorm(momentum=0.9)
    params, state = layer.init(KEY, x.shape)
    y, new_state = layer.apply(params, state, x, train=True)
    x64 = np.asarray(x.astype(jnp.float32), np.float64)
    mean, var = x64.mean(0), x64.var(0)
    np.testing.assert_allclose(y, (x64 - mean) / np.sqrt(var + 1e-5), atol=2e-4)
    np.testing.assert_allclose(new_state["var"], 0.9 + 0.1 * var, rtol=1e-5)
    np.testing.assert_allclose(new_state["mean"], 0.1 * mean, rtol=1e-6)


@pytest.mark.parametrize("method", ["lax", "matmul"])
def test_conv_without_a_dtype_promotes_bfloat16_inputs_as_flax(method):
    """``dtype=None``: a bfloat16 input and float32 parameters compute in
    float32, as ``Dense`` and flax's ``Conv`` do (on a GPU ``'auto'`` is ``'lax'``)."""
    x = _images((2, 8, 8, 4)).astype(jnp.bfloat16)
    layer = nn.Conv(5, (3, 3), method=method)
    params, _ = layer.init(KEY, x.shape)
    y, _ = layer.apply(params, {}, x)
    reference = fnn.Conv(5, (3, 3)).apply({"params": {"kernel": params["w"], "bias": params["b"]}}, x)
    assert y.dtype == reference.dtype == jnp.float32
    np.testing.assert_allclose(y, reference, rtol=1e-5, atol=1e-5)


def test_layer_sizes_may_be_numpy_integers():
    """Sizes computed with NumPy (e.g. ``labels.max() + 1``) are sizes, as in flax."""
    features = np.array([0, 9]).max() + 1
    dense, _ = nn.Dense(features).init(KEY, (1, 3))
    assert dense["w"].shape == (3, 10)
    conv = nn.Conv(features, np.int64(3), strides=np.int64(1), padding=np.int64(1))
    params, _ = conv.init(KEY, (1, 8, 8, 2))
    assert params["w"].shape == (3, 3, 2, 10) and conv.apply(params, {}, _images((1, 8, 8, 2)))[0].shape[1:3] == (8, 8)
    zero_d = nn.Conv(features, np.array(3), strides=np.array(2))  # 0-d arrays, as sizes read from a file come
    assert zero_d.init(KEY, (1, 8, 8, 2))[0]["w"].shape == (3, 3, 2, 10)
    assert nn.MaxPool(np.array(2)).apply({}, {}, _images((1, 8, 8, 2)))[0].shape == (1, 4, 4, 2)
    with pytest.raises(ValueError, match="features must be a positive int"):
        nn.Dense(True)


def test_leaky_relu_is_an_activation_and_leaky_relu_with_sets_its_slope():
    x = jnp.array([-2.0, -0.5, 0.0, 3.0])
    np.testing.assert_allclose(nn.leaky_relu(x), [-0.02, -0.005, 0.0, 3.0], rtol=1e-7)  # slope 0.01
    np.testing.assert_array_equal(nn.leaky_relu_with(0.1)(x), jax.nn.leaky_relu(x, 0.1))
    for old_use in (lambda: nn.leaky_relu(0.1), lambda: nn.leaky_relu()):
        with pytest.raises(TypeError, match=r"the activation itself .* use leaky_relu_with\(slope\)"):
            old_use()
    model = nn.serial(nn.Dense(3), nn.leaky_relu, nn.Dense(2), nn.leaky_relu_with(0.2))
    params, state = model.init(KEY, (1, 4))
    assert model.apply(params, state, jnp.ones((5, 4)))[0].shape == (5, 2)


def test_max_pool_of_integers_and_windows_beyond_an_explicitly_padded_input():
    x = np.arange(-16, 16, dtype=np.int32).reshape(2, 4, 4, 1)
    y, _ = nn.MaxPool((2, 2)).apply({}, {}, jnp.asarray(x))
    np.testing.assert_array_equal(y, x.reshape(2, 2, 2, 2, 2, 1).max(axis=(2, 4)))
    with pytest.raises(ValueError, match=r"window \(5, 5\) is larger than the input's spatial shape \(3, 3\)"):
        nn.serial(nn.Conv(2, (5, 5), padding=0)).init(KEY, (1, 3, 3, 1))
    assert nn.Conv(2, (5, 5), padding=1).init(KEY, (1, 3, 3, 1))[0]["w"].shape == (5, 5, 1, 2)


@pytest.mark.parametrize("method", ["lax", "matmul"])
def test_conv_padding_as_one_int_per_dimension_matches_flax(method):
    x = _images((2, 7, 6, 3))
    layer = nn.Conv(4, (3, 3), padding=(1, 2), method=method)
    params, _ = layer.init(KEY, x.shape)
    ours, _ = layer.apply(params, {}, x)
    flax_conv = fnn.Conv(4, (3, 3), padding=(1, 2))
    theirs = flax_conv.apply({"params": {"kernel": params["w"], "bias": params["b"]}}, x)
    assert ours.shape == theirs.shape == (2, 7, 8, 4)
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)
    pooled, _ = nn.MaxPool((3, 3), strides=1, padding=(1, 1)).apply({}, {}, x)
    np.testing.assert_allclose(pooled, fnn.max_pool(x, (3, 3), (1, 1), ((1, 1), (1, 1))))


def test_padding_as_a_numpy_array_of_pairs_is_taken():
    x = _images((1, 6, 6, 2))
    layer = nn.Conv(3, (3, 3), padding=np.array([[1, 1], [1, 1]]))
    params, _ = layer.init(KEY, x.shape)
    np.testing.assert_array_equal(layer.apply(params, {}, x)[0], nn.Conv(3, (3, 3), padding=1).apply(params, {}, x)[0])


@pytest.mark.parametrize("padding", [[(-1, -1), (-1, -1)], -1, None, 1.5, (1, 2, 3), [(1, 2, 3), (0, 0)]])
def test_padding_that_is_no_padding_is_refused_at_construction(padding):
    for make in (lambda: nn.Conv(2, (3, 3), padding=padding), lambda: nn.MaxPool((2, 2), padding=padding)):
        with pytest.raises(ValueError, match=r"padding must be 'SAME', 'VALID', an int, 2 ints or 2 \(low, high\)"):
            make()


def test_conv_applied_to_an_input_of_the_wrong_rank_names_the_layer_and_shapes():
    layer = nn.Conv(3, (3, 3))
    params, _ = layer.init(KEY, (1, 5, 5, 2))
    with pytest.raises(ValueError, match=r"Conv: expected an input of rank 4, shape \(batch, H, W, channels\); "
                                         r"got shape \(5, 5, 2\)"):
        layer.apply(params, {}, jnp.ones((5, 5, 2)))


@pytest.mark.parametrize("window, strides, padding", [((2, 2), None, "VALID"), ((3, 3), 1, "SAME")])
def test_average_pool_of_uint8_pixels_is_their_float_mean(window, strides, padding):
    x = np.random.default_rng(0).integers(0, 256, (2, 6, 6, 1)).astype(np.uint8)
    ours, _ = nn.AvgPool(window, strides, padding).apply({}, {}, jnp.asarray(x))
    step = window if strides is None else (strides,) * 2
    reference = fnn.avg_pool(jnp.asarray(x, jnp.float32), window, step, padding)  # flax, on floats
    assert ours.dtype == jnp.float32
    np.testing.assert_allclose(ours, reference, rtol=1e-6)
    np.testing.assert_allclose(nn.AvgPool((2, 2)).apply({}, {}, jnp.full((1, 4, 4, 1), 200, jnp.uint8))[0], 200.0)


def test_batchnorm_without_its_state_says_so():
    model = nn.serial(nn.Dense(4), nn.BatchNorm())
    params, _ = model.init(KEY, (2, 3))
    with pytest.raises(ValueError, match=r"BatchNorm: its state must hold the running 'mean' and 'var'"):
        model.apply(params, {}, jnp.ones((2, 3)), train=True)


def test_dropout_rate_and_scaling():
    x = jnp.ones((200, 500))
    layer = nn.Dropout(0.3)
    y, _ = layer.apply({}, {}, x, key=jax.random.key(1), train=True)
    kept = np.asarray(y) != 0
    assert abs(kept.mean() - 0.7) < 0.01
    np.testing.assert_allclose(np.asarray(y)[kept], 1.0 / 0.7, rtol=1e-6)
    eval_y, _ = layer.apply({}, {}, x, train=False)
    np.testing.assert_array_equal(eval_y, x)
    other, _ = layer.apply({}, {}, x, key=jax.random.key(2), train=True)
    assert not np.array_equal(np.asarray(other) != 0, kept)


def test_dropout_without_key_says_so():
    with pytest.raises(ValueError, match="train=True needs a PRNG key"):
        nn.Dropout(0.5).apply({}, {}, jnp.ones((2, 3)), train=True)


def test_dropout_takes_its_rate_as_a_zero_dimensional_array_too():
    x = jnp.ones((100, 100))
    for rate in (np.array(0.25), jnp.float32(0.25), np.float64(0.25)):
        y, _ = nn.Dropout(rate).apply({}, {}, x, key=jax.random.key(3), train=True)
        np.testing.assert_allclose(np.asarray(y)[np.asarray(y) != 0], 1 / 0.75, rtol=1e-6)


@pytest.mark.parametrize("rate", [1.5, -0.1, None, "0.5", True])
def test_dropout_rate_that_is_not_a_probability_is_refused(rate):
    with pytest.raises(ValueError, match=r"a number in \[0, 1\); got " + repr(rate).replace(".", r"\.")):
        nn.Dropout(rate)


# --- serial, names and shapes -----------------------------------------------


def test_serial_names_params_and_accepts_plain_functions():
    model = nn.serial(nn.Dense(4), jax.nn.gelu, nn.Dense(3), nn.tanh, nn.BatchNorm(), nn.Dense(2))
    params, state = model.init(KEY, (1, 6))
    assert set(params) == {"dense_0", "dense_1", "dense_2", "batch_norm_0"}
    assert set(state) == {"batch_norm_0"}
    x = _images((5, 6))
    y, _ = model.apply(params, state, x)
    p = params
    h = jax.nn.gelu(x @ p["dense_0"]["w"] + p["dense_0"]["b"])
    h = jnp.tanh(h @ p["dense_1"]["w"] + p["dense_1"]["b"])
    h = (h - 0.0) / jnp.sqrt(1.0 + 1e-5)
    expected = h @ p["dense_2"]["w"] + p["dense_2"]["b"]
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


def test_cnn_matches_flax_mnist_example_with_copied_weights():
    x = _images((3, 28, 28, 1))
    flax_params = _FlaxCNN().init(KEY, x)["params"]
    params = _from_flax_cnn(flax_params)
    ours, _ = models.cnn().apply(params, {}, x)
    np.testing.assert_allclose(ours, _FlaxCNN().apply({"params": flax_params}, x), rtol=1e-4, atol=1e-5)
    assert nn.count_params(params) == 824_458
    jdl_params, _ = models.cnn().init(KEY, (1, 28, 28, 1))
    assert jax.tree_util.tree_map(jnp.shape, jdl_params) == jax.tree_util.tree_map(jnp.shape, params)


@pytest.mark.parametrize(
    "name, shape, count, classes",
    # DeepOBS' published parameter counts for its test problems.
    # cifar100_3c3d: cifar10_3c3d's count with a last layer of 256 x 100 + 100 instead of 256 x 10 + 10.
    [("fmnist_2c2d", (1, 28, 28, 1), 3_274_634, 10), ("cifar10_3c3d", (1, 32, 32, 3), 895_210, 10),
     ("cifar100_3c3d", (1, 32, 32, 3), 895_210 + 256 * 90 + 90, 100)],
)
def test_deepobs_models_parameter_counts(name, shape, count, classes):
    params, _ = models.get(name).init(KEY, shape)
    assert nn.count_params(params) == count
    y, _ = models.get(name).apply(params, {}, jnp.zeros((2, *shape[1:])))
    assert y.shape == (2, classes)
    params, _ = models.get(name.upper(), num_classes=7).init(KEY, shape)
    assert models.get(name, num_classes=7).apply(params, {}, jnp.zeros((2, *shape[1:])))[0].shape == (2, 7)


def test_cifar10_3c3d_initializes_as_deepobs():
    """DeepOBS's _3c3d: convolution kernels Glorot normal (a normal truncated
    at two standard deviations, rescaled to variance 2 / (fan_in + fan_out)),
    dense weights Glorot uniform (within sqrt(3) of their standard
    deviation), biases zero."""
    params, _ = models.cifar10_3c3d().init(KEY, (1, 32, 32, 3))
    kernels = [leaf for path, leaf in jax.tree_util.tree_leaves_with_path(params) if path[-1].key == "w"]
    assert [k.ndim for k in kernels] == [4, 4, 4, 2, 2, 2]
    for kernel in kernels:
        w = np.asarray(kernel, np.float64)
        receptive = int(np.prod(w.shape[:-2]))
        std = np.sqrt(2.0 / (receptive * (w.shape[-2] + w.shape[-1])))
        assert abs(w.std() / std - 1) < 0.05
        if w.ndim == 4:  # truncated normal: beyond the uniform's sqrt(3), up to 2 / 0.8796 standard deviations
            assert 1.9 * std < np.abs(w).max() <= 2.28 * std
        else:
            assert np.abs(w).max() <= np.sqrt(3) * std * (1 + 1e-6)
    biases = [leaf for path, leaf in jax.tree_util.tree_leaves_with_path(params) if path[-1].key == "b"]
    assert len(biases) == 6 and all(not np.any(np.asarray(b)) for b in biases)


@pytest.mark.parametrize("kwargs, message", [
    (dict(momentum="0.9"), r"momentum must be a number in \[0, 1\]; got '0.9'"),
    (dict(momentum=1.5), r"momentum must be a number in \[0, 1\]; got 1.5"),
    (dict(eps=0.0), r"eps must be a finite number > 0; got 0.0"),
    (dict(eps=float("nan")), r"eps must be a finite number > 0; got nan"),
    (dict(eps=-1e-5), r"eps must be a finite number > 0; got -1e-05"),
])  # fmt: skip
def test_batch_norm_refuses_hyperparameters_that_fail_later(kwargs, message):
    """A string momentum failed inside apply with a NumPy indexing error, and
    an eps of 0 or NaN gave NaN outputs (0 or NaN for a constant feature)."""
    with pytest.raises(ValueError, match=r"BatchNorm: " + message):
        nn.BatchNorm(**kwargs)


def test_an_uncalled_layer_constructor_and_a_stax_batch_size_are_named():
    """nn.Dense passed uncalled was taken for an activation and failed inside
    init with a tracer in its message; a batch size of -1 or None (stax's
    way) failed deep in lax."""
    with pytest.raises(TypeError, match=r"Dense is a layer constructor, not a layer: call it, e.g. nn.Dense\(...\)"):
        nn.serial(nn.Dense, nn.relu)
    for batch in (-1, None):
        with pytest.raises(ValueError, match=r"input_shape must be a sequence of sizes >= 0.*got \(" + str(batch)):
            models.cnn().init(KEY, (batch, 28, 28, 1))
    params, _ = models.mlp().init(KEY, (0, 28, 28, 1))  # an empty batch is a batch
    assert nn.count_params(params) > 0


def test_parameters_of_another_model_are_named_not_a_bare_key_error():
    mlp = nn.serial(nn.Dense(3), nn.Dense(2))
    _, state = mlp.init(KEY, (1, 4))
    with pytest.raises(ValueError, match=r"Dense: its parameters need 'w', 'b'; got \[\] \(parameters from another"):
        mlp.apply({}, state, jnp.ones((1, 4)))
    cnn_params, _ = models.cnn().init(KEY, (1, 28, 28, 1))
    with pytest.raises(ValueError, match=r"BatchNorm: its parameters need 'scale', 'bias'; got \['b', 'w'\]"):
        nn.BatchNorm().apply(cnn_params["conv_0"], {"mean": 0.0, "var": 1.0}, jnp.ones((2, 32)))


def test_layers_applied_to_what_they_cannot_take_name_the_layer_and_what_was_expected():
    """Found by review: these were bare NumPy/JAX errors or silently empty outputs."""
    for layer in (nn.Conv(2, 5, padding="VALID", method="matmul"), nn.Conv(2, 5, padding="VALID", method="lax"),
                  nn.MaxPool(5, padding="VALID"), nn.AvgPool(5, padding="VALID")):  # fmt: skip
        params, state = layer.init(KEY, (1, 8, 8, 3))
        with pytest.raises(ValueError, match=r"window \(5, 5\) is larger than the input's spatial shape \(3, 3\)"):
            layer.apply(params, state, jnp.ones((2, 3, 3, 3)))
    for make, match in ((lambda: nn.Conv(3, 3.0), r"Conv: kernel_size must be a positive int or a sequence"),
                        (lambda: nn.MaxPool(2.0), r"MaxPool: window must be a positive int or a sequence"),
                        (lambda: nn.Conv(3, 3, strides=1.5), r"Conv: strides must be a positive int or 2 positive"),
                        (lambda: nn.AvgPool(2, strides="2"), r"AvgPool: strides must be a positive int or 2")):
        with pytest.raises(ValueError, match=match):
            make()
    mlp = models.mlp()
    params, state = mlp.init(KEY, (28, 28, 1))  # no batch axis: the first Dense takes 28 features
    with pytest.raises(ValueError, match=r"Dense: expected inputs with 28 features .*got shape \(2, 784\) \(a "
                                         r"model initialized with an input_shape lacking the batch axis"):
        mlp.apply(params, state, jnp.ones((2, 28, 28, 1)))
    with pytest.raises(TypeError, match=r"Dense: w_init must be an initializer \(key, shape\) -> array .*it "
                                        r"returned a function"):
        nn.Dense(3, w_init=jax.nn.initializers.lecun_normal).init(KEY, (1, 4))  # the factory, not called
    with pytest.raises(TypeError, match=r"Conv: b_init must be an initializer.* returned shape \(\)"):
        nn.Conv(3, 3, b_init=lambda key, shape: jnp.zeros(())).init(KEY, (1, 4, 4, 1))
    no_bias, _ = nn.Dense(3, use_bias=False).init(KEY, (1, 4))
    with pytest.raises(ValueError, match=r"Dense: its parameters need 'b'; got \['w'\]"):
        nn.Dense(3).apply(no_bias, {}, jnp.ones((1, 4)))
    with pytest.raises(ValueError, match=r"Flatten: expected an input with a batch dimension; got shape \(\)"):
        nn.Flatten().apply({}, {}, jnp.ones(()))


def test_an_init_error_deep_in_a_model_says_where_and_from_which_input():
    where = r"\[serial's layer 5, avg_pool_1, given shape \(1, 1, 1, 64\); the serial's input shape \(1, 2, 2, 1\)\]$"
    with pytest.raises(ValueError, match=r"^AvgPool: window \(2, 2\) is larger .* " + where):
        models.cnn().init(KEY, (1, 2, 2, 1))
    inner = r"\[serial's layer 1, conv_0, given shape \(1, 3\); the serial's input shape \(1, 4\)\]$"
    with pytest.raises(ValueError, match=r"^Conv: expected an input of rank 4.*" + inner):  # the innermost serial's
        nn.serial(nn.Flatten(), nn.serial(nn.Dense(3), nn.Conv(2, 3))).init(KEY, (1, 4))


def test_models_get_unknown_name_lists_valid_ones():
    with pytest.raises(ValueError, match=r"unknown model 'cnnn'.*cifar10_3c3d.*Did you mean 'cnn'"):
        models.get("cnnn")
    with pytest.raises(ValueError, match=r"unknown model None; expected one of cifar100_3c3d"):
        models.get(None)


def test_shape_mismatch_fails_at_init_with_layer_and_shapes():
    model = nn.serial(nn.Dense(10), nn.Conv(4, (3, 3)))
    with pytest.raises(ValueError, match=r"Conv: expected an input of rank 4.*got shape \(1, 10\)"):
        model.init(KEY, (1, 784))
    with pytest.raises(ValueError, match=r"MaxPool: window \(5, 5\) is larger.*\(3, 3\)"):
        nn.serial(nn.MaxPool((5, 5))).init(KEY, (1, 3, 3, 2))
    params, state = nn.Dense(3).init(KEY, (1, 8))
    with pytest.raises(ValueError, match=r"Dense: expected inputs with 8 features.*\(2, 5\)"):
        nn.Dense(3).apply(params, state, jnp.ones((2, 5)))


# --- transformations ---------------------------------------------------------

LAYERS = {
    "dense": (nn.Dense(4), (3, 5)),
    "conv": (nn.Conv(4, (3, 3)), (3, 6, 6, 2)),
    "max_pool": (nn.MaxPool((2, 2)), (3, 6, 6, 2)),
    "avg_pool": (nn.AvgPool((2, 2)), (3, 6, 6, 2)),
    "flatten": (nn.Flatten(), (3, 6, 6, 2)),
    "dropout": (nn.Dropout(0.5), (3, 5)),
    "batch_norm": (nn.BatchNorm(), (3, 5)),
    "serial": (nn.serial(nn.Conv(2, 3), nn.relu, nn.Flatten(), nn.Dense(3)), (3, 6, 6, 2)),
}


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_jit_grad_vmap_on_every_layer(name):
    layer, shape = LAYERS[name]
    params, state = layer.init(KEY, shape)
    x = _images(shape)
    key = jax.random.key(3)

    def run(params, x):
        return layer.apply(params, state, x, key=key, train=True)[0]

    eager = run(params, x)
    np.testing.assert_allclose(jax.jit(run)(params, x), eager, rtol=1e-5, atol=1e-6)
    batched = jax.vmap(run, in_axes=(None, 0))(params, jnp.stack([x, 2 * x]))
    np.testing.assert_allclose(batched[0], eager, rtol=1e-5, atol=1e-6)
    grad_fn = jax.grad(lambda p, x: jnp.sum(run(p, x) ** 2), argnums=(0, 1))
    grads = grad_fn(params, x)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree_util.tree_leaves(grads))
    _ = jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
                               jax.jit(grad_fn)(params, x), grads)


def test_init_vmapped_over_keys_matches_separate_inits():
    model = models.cnn()
    keys = jax.random.split(KEY, 3)
    stacked, _ = jax.vmap(lambda k: model.init(k, (1, 28, 28, 1)))(keys)
    for i, key in enumerate(keys):
        single, _ = model.init(key, (1, 28, 28, 1))
        jax.tree_util.tree_map(lambda a, b, i=i: np.testing.assert_allclose(a[i], b, rtol=1e-6), stacked, single)
    assert not np.allclose(stacked["dense_0"]["w"][0], stacked["dense_0"]["w"][1])


def test_model_gradients_match_finite_differences_in_float64():
    with jax.enable_x64(True):
        model = nn.serial(nn.Conv(3, (3, 3)), nn.tanh, nn.AvgPool((2, 2)), nn.Flatten(), nn.Dense(4), nn.gelu,
                          nn.BatchNorm(), nn.Dense(2))
        params, state = model.init(KEY, (1, 6, 6, 2))
        params = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), params)
        x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 6, 6, 2)), jnp.float64)

        def loss(p):
            return jnp.sum(jnp.sin(model.apply(p, state, x, train=True)[0]))

        flat, unravel = ravel_pytree(params)
        grad = ravel_pytree(jax.grad(loss)(params))[0]
        rng = np.random.default_rng(1)
        for index in rng.choice(flat.size, size=25, replace=False):
            step = np.zeros(flat.size)
            step[index] = 1e-6
            numeric = (loss(unravel(flat + step)) - loss(unravel(flat - step))) / 2e-6
            np.testing.assert_allclose(grad[index], numeric, rtol=1e-5, atol=1e-8)
