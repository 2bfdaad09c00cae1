"""Tests for jdl.losses against optax and NumPy float64 closed forms.

References are always computed independently of jdl (optax, or NumPy in
float64); the per-element values and their reductions are compared with them.
"""

from __future__ import annotations

import re
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from jax.experimental import checkify

from jdl import losses as L

PROPERTY = settings(max_examples=25, deadline=None)
K = 5  # classes
EPS = 1e-7  # log_loss's default eps


# --------------------------------------------------------------------------- input builders


def _logits(rng, scale, shape=(6, K)):
    x = scale * rng.standard_normal(shape)
    rows = x.reshape(-1, shape[-1])
    rows[0] = 0.0  # an all-equal row
    rows[1, :2] = [scale, -scale]
    return rows.reshape(shape).astype(np.float32)


def _int_labels(rng, shape=(6,)):
    y = rng.integers(0, K, shape)
    y.flat[0], y.flat[-1] = 0, K - 1  # both ends of the range
    return y.astype(np.int32)


def _probs(rng, shape=(6, K)):
    t = rng.dirichlet(np.ones(shape[-1]), shape[:-1])
    t[0] = np.eye(shape[-1])[2]  # one-hot row: zeros in the targets
    t[1, :2] = 0.0
    t[1] /= t[1].sum()
    return t.astype(np.float32)


def _signs(rng, shape=(6, 4)):
    return rng.choice([-1.0, 1.0], shape).astype(np.float32)


def _unit(rng, shape=(6, 4)):
    y = rng.uniform(0, 1, shape)
    y.flat[0], y.flat[1] = 0.0, 1.0
    return y.astype(np.float32)


def _np_log_loss_probs(p, y):
    p, y = np.float64(p), np.float64(y)
    return -y * np.log(np.clip(p, EPS, 1)) - (1 - y) * np.log(np.clip(1 - p, EPS, 1))


class Case(NamedTuple):
    name: str
    fn: callable
    kwargs: dict
    make: callable  # (rng, scale) -> (predictions, targets) as NumPy arrays
    reference: callable  # (predictions, targets) -> per-element loss, independent of jdl
    scales: tuple = (1e-3, 1.0, 30.0, 1e4)


def _smoothed_ce(a):
    def ref(x, y):
        onehot = jax.nn.one_hot(y, K) if y.dtype.kind == "i" else y
        return optax.losses.softmax_cross_entropy(x, optax.losses.smooth_labels(onehot, a))

    return ref


CASES = [
    Case(
        "ce_int",
        L.cross_entropy,
        {},
        lambda r, s: (_logits(r, s), _int_labels(r)),
        optax.losses.softmax_cross_entropy_with_integer_labels,
    ),
    Case(
        "ce_int_3d",
        L.cross_entropy,
        {},
        lambda r, s: (_logits(r, s, (2, 3, K)), _int_labels(r, (2, 3))),
        optax.losses.softmax_cross_entropy_with_integer_labels,
    ),
    Case(
        "ce_int_smooth",
        L.cross_entropy,
        {"label_smoothing": 0.1},
        lambda r, s: (_logits(r, s), _int_labels(r)),
        _smoothed_ce(0.1),
    ),
    Case(
        "ce_probs",
        L.cross_entropy,
        {},
        lambda r, s: (_logits(r, s), _probs(r)),
        optax.losses.softmax_cross_entropy,
    ),
    Case(
        "ce_probs_smooth",
        L.cross_entropy,
        {"label_smoothing": 0.25},
        lambda r, s: (_logits(r, s), _probs(r)),
        _smoothed_ce(0.25),
    ),
    Case(
        "log_loss",
        L.log_loss,
        {},
        lambda r, s: (_logits(r, s, (6, 4)), _unit(r)),
        optax.losses.sigmoid_binary_cross_entropy,
    ),
    Case(
        "log_loss_probs",
        L.log_loss,
        {"from_logits": False},
        lambda r, s: (
            np.concatenate(
                [[0.0, 1.0, 1e-12, 1 - 1e-9, 0.5], r.uniform(0, 1, 19)]
            ).reshape(6, 4).astype(np.float32),
            _unit(r),
        ),
        _np_log_loss_probs,
        (1.0,),
    ),
    Case(
        "exponential",
        L.exponential_loss,
        {},
        lambda r, s: (_logits(r, s, (6, 4)), _signs(r)),
        lambda f, y: np.exp(-np.float64(y) * np.float64(f)),
        (1e-3, 1.0, 10.0),
    ),
    Case(
        "hinge",
        L.hinge_loss,
        {},
        lambda r, s: (_logits(r, s, (6, 4)), _signs(r)),
        optax.losses.hinge_loss,
    ),
    Case(
        "multiclass_hinge",
        L.multiclass_hinge_loss,
        {},
        lambda r, s: (_logits(r, s), _int_labels(r)),
        optax.losses.multiclass_hinge_loss,
    ),
    Case(
        "kl",
        L.kl_divergence,
        {},
        lambda r, s: (np.asarray(jax.nn.log_softmax(_logits(r, s))), _probs(r)),
        optax.losses.kl_divergence,
    ),
    Case(
        "mse",
        L.mse,
        {},
        lambda r, s: (_logits(r, s, (6, 4)), _logits(r, s, (6, 4))),
        optax.losses.squared_error,
    ),
    Case(
        "mae",
        L.mae,
        {},
        lambda r, s: (_logits(r, s, (6, 4)), _logits(r, s, (6, 4))),
        lambda p, t: np.abs(np.float64(p) - np.float64(t)),
    ),
    Case(
        "huber",
        L.huber,
        {},
        lambda r, s: (_logits(r, s, (6, 4)), _logits(r, s, (6, 4))),
        optax.losses.huber_loss,
    ),
    Case(
        "huber_delta",
        L.huber,
        {"delta": 0.5},
        lambda r, s: (_logits(r, s, (6, 4)), _logits(r, s, (6, 4))),
        lambda p, t: optax.losses.huber_loss(p, t, delta=0.5),
    ),
]
CASE_IDS = [c.name for c in CASES]
SCALED = [(c, s) for c in CASES for s in c.scales]


def _ref(case, x, y):
    return np.asarray(case.reference(x, y), dtype=np.float64)


# --------------------------------------------------------------------------- against references


@pytest.mark.parametrize(("case", "scale"), SCALED, ids=[f"{c.name}-{s:g}" for c, s in SCALED])
def test_matches_reference(case, scale):
    rng = np.random.default_rng(0)
    x, y = case.make(rng, scale)
    got = case.fn(x, y, reduction="none", **case.kwargs)
    expected = _ref(case, x, y)
    assert got.dtype == jnp.float32
    assert got.shape == expected.shape
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, expected, rtol=2e-5, atol=1e-5 * (1 + scale))


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("weighting", ["none", "full", "broadcast", "scalar"])
def test_reductions_and_weights(case, weighting):
    rng = np.random.default_rng(1)
    x, y = case.make(rng, 1.0)
    per_element = _ref(case, x, y)
    shape = per_element.shape
    weights = {
        "none": None,
        "full": rng.uniform(0, 2, shape),
        "broadcast": rng.uniform(0, 2, shape[:1] + (1,) * (len(shape) - 1)),
        "scalar": np.float64(0.3),
    }[weighting]
    w = np.ones(shape) if weights is None else np.broadcast_to(weights, shape)

    def run(reduction):
        return np.asarray(case.fn(x, y, reduction=reduction, weights=weights, **case.kwargs))

    np.testing.assert_allclose(run("none"), w * per_element, rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(run("sum"), np.sum(w * per_element), rtol=2e-5, atol=1e-5)
    # 'mean' with weights is the mean of weights * loss over all elements.
    np.testing.assert_allclose(run("mean"), np.mean(w * per_element), rtol=2e-5, atol=1e-6)
    assert case.fn(x, y, **case.kwargs).shape == ()  # 'mean' is the default


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_jit_matches_eager(case):
    x, y = case.make(np.random.default_rng(2), 1.0)
    fn = jax.jit(lambda a, b: case.fn(a, b, reduction="none", **case.kwargs))
    np.testing.assert_allclose(fn(x, y), _ref(case, x, y), rtol=2e-5, atol=1e-5)


def test_integer_predictions_are_promoted():
    assert L.mse(jnp.array([1, 2]), jnp.array([0, 0])).dtype == jnp.float32
    assert float(L.mse(jnp.array([1, 2]), jnp.array([0, 0]))) == 2.5


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize(("dtype", "classes"), [(np.uint8, 300), (np.int16, 40000), (np.int8, 200)])
def test_narrow_integer_labels_with_more_classes_than_their_dtype_holds(dtype, classes, jit):
    """Labels of a dtype narrower than the class count (uint8 labels, 300
    classes) are valid and give optax's loss, not NaN (a comparison in the
    labels' dtype would wrap the class count around)."""
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((4, classes)).astype(np.float32)
    labels = np.array([0, 1, 50, 100], dtype)
    fn = jax.jit(L.cross_entropy) if jit else L.cross_entropy
    hinge = jax.jit(L.multiclass_hinge_loss) if jit else L.multiclass_hinge_loss
    expected = optax.softmax_cross_entropy_with_integer_labels(logits, labels.astype(np.int32)).mean()
    np.testing.assert_allclose(fn(logits, labels), expected, rtol=1e-6)
    expected = optax.losses.multiclass_hinge_loss(logits, labels.astype(np.int32)).mean()
    np.testing.assert_allclose(hinge(logits, labels), expected, rtol=1e-6)


def test_half_precision_predictions_are_computed_with_in_float32():
    """A mixed-precision model's bfloat16 logits: the loss is computed in float32
    from their values (NumPy in float64 on the same values as the reference)."""
    logits = jax.random.normal(jax.random.key(3), (6, 5)).astype(jnp.bfloat16) * 8
    labels = jnp.array([0, 1, 2, 3, 4, 0])
    loss = L.cross_entropy(logits, labels, reduction="none")
    x = np.asarray(logits, np.float64)
    expected = np.log(np.exp(x - x.max(-1, keepdims=True)).sum(-1)) + x.max(-1) - x[np.arange(6), labels]
    assert loss.dtype == jnp.float32
    np.testing.assert_allclose(loss, expected, rtol=1e-6, atol=1e-6)


def test_docstrings_give_formula_labels_and_source():
    for fn in (L.cross_entropy, L.log_loss, L.exponential_loss, L.hinge_loss,
               L.multiclass_hinge_loss, L.kl_divergence, L.mse, L.mae, L.huber):
        doc = fn.__doc__
        assert "loss =" in doc and "Source:" in doc, fn.__name__
    assert "Keras" in L.__doc__ and "checkify" in L.__doc__


# --------------------------------------------------------------------------- property-based

MAGNITUDE = 1e4
_extreme = st.one_of(
    st.sampled_from([-MAGNITUDE, MAGNITUDE, 0.0]),
    st.floats(-MAGNITUDE, MAGNITUDE, width=32),
)


def _floats(shape, lo=-MAGNITUDE, hi=MAGNITUDE):
    return hnp.arrays(np.float32, shape, elements=st.floats(lo, hi, width=32))


_labels = hnp.arrays(np.int32, (4,), elements=st.integers(0, K - 1))
_unit_floats = hnp.arrays(np.float32, (4, 3), elements=st.floats(0, 1, width=32))
_sign_floats = hnp.arrays(np.float32, (4, 3), elements=st.sampled_from([-1.0, 1.0]))
_smoothing = st.floats(0, 1)


def _finite(*arrays):
    return all(bool(jnp.all(jnp.isfinite(a))) for a in arrays)


@PROPERTY
@given(hnp.arrays(np.float32, (4, K), elements=_extreme), _labels, _smoothing)
def test_cross_entropy_int_nonnegative_finite_extreme(logits, labels, a):
    value, grad = jax.value_and_grad(
        lambda z: L.cross_entropy(z, labels, label_smoothing=a, reduction="sum")
    )(logits)
    assert _finite(value, grad)
    assert np.all(np.asarray(L.cross_entropy(logits, labels, reduction="none")) >= 0)


@pytest.mark.parametrize("classes", [K, L.SELECT_MAX_CLASSES + 1], ids=["select", "gather"])
@pytest.mark.parametrize("masked", [False, True], ids=["finite", "masked_logit"])
def test_cross_entropy_int_gradient_matches_optax(masked, classes):
    """The gradient with integer labels, which jdl picks out with a select
    over the classes (up to `SELECT_MAX_CLASSES`) or a gather (as optax); a
    logit of -inf (a masked class, not the label) has gradient 0 in both."""
    rng = np.random.default_rng(3)
    logits = _logits(rng, 3.0, (4, 3, classes))
    labels = rng.integers(0, classes - 1, size=(4, 3))
    if masked:
        logits[..., classes - 1] = -np.inf  # never a label
    value, ours = jax.value_and_grad(lambda z: L.cross_entropy(z, labels, reduction="sum"))(logits)
    expected, theirs = jax.value_and_grad(lambda z: optax.softmax_cross_entropy_with_integer_labels(z, labels).sum())(
        logits
    )
    assert _finite(value, ours)
    np.testing.assert_allclose(value, expected, rtol=1e-6)
    np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(jax.jit(jax.grad(lambda z: L.cross_entropy(z, labels)))(logits), theirs / labels.size,
                               rtol=1e-6, atol=1e-7)  # fmt: skip


@PROPERTY
@given(hnp.arrays(np.float32, (4, K), elements=_extreme), _floats((4, K)), _smoothing)
def test_cross_entropy_probs_nonnegative_finite_extreme(logits, z, a):
    targets = jax.nn.softmax(z)
    value, grads = jax.value_and_grad(
        lambda x, t: L.cross_entropy(x, t, label_smoothing=a, reduction="sum"), argnums=(0, 1)
    )(logits, targets)
    assert _finite(value, *grads)
    assert np.all(np.asarray(L.cross_entropy(logits, targets, reduction="none")) >= 0)


@PROPERTY
@given(hnp.arrays(np.float32, (4, 3), elements=_extreme), _unit_floats)
def test_log_loss_nonnegative_finite_extreme(logits, labels):
    value, grad = jax.value_and_grad(lambda x: L.log_loss(x, labels, reduction="sum"))(logits)
    assert _finite(value, grad)
    assert np.all(np.asarray(L.log_loss(logits, labels, reduction="none")) >= 0)
    probs = np.clip(np.abs(logits) / MAGNITUDE, 0, 1)
    value, grad = jax.value_and_grad(
        lambda p: L.log_loss(p, labels, from_logits=False, reduction="sum")
    )(probs)
    assert _finite(value, grad) and float(value) >= 0
    assert float(value) <= labels.size * -np.log(EPS) * (1 + 1e-5)


@PROPERTY
@given(hnp.arrays(np.float32, (4, 3), elements=_extreme), _sign_floats)
def test_hinge_nonnegative_finite_extreme(scores, labels):
    value, grad = jax.value_and_grad(lambda f: L.hinge_loss(f, labels, reduction="sum"))(scores)
    assert _finite(value, grad)
    assert np.all(np.asarray(L.hinge_loss(scores, labels, reduction="none")) >= 0)


@PROPERTY
@given(hnp.arrays(np.float32, (4, K), elements=_extreme), _labels)
def test_multiclass_hinge_nonnegative_finite_extreme(scores, labels):
    value, grad = jax.value_and_grad(
        lambda s: L.multiclass_hinge_loss(s, labels, reduction="sum")
    )(scores)
    assert _finite(value, grad)
    assert np.all(np.asarray(L.multiclass_hinge_loss(scores, labels, reduction="none")) >= 0)


@PROPERTY
@given(
    hnp.arrays(np.float32, (4, K), elements=_extreme),
    _floats((4, K)),
    hnp.arrays(bool, (4, K)),
)
def test_kl_nonnegative_finite_extreme_and_zero_targets(z, w, keep):
    log_q = jax.nn.log_softmax(z)
    keep[np.arange(4), np.argmax(w, axis=-1)] = True
    t = jnp.where(keep, jax.nn.softmax(w), 0.0)  # zeros in the targets
    t = t / t.sum(-1, keepdims=True)
    value, grads = jax.value_and_grad(
        lambda a, b: L.kl_divergence(a, b, reduction="sum"), argnums=(0, 1)
    )(log_q, t)
    assert _finite(value, *grads)
    # Gibbs' inequality; the tolerance covers float32 rounding of t * log q.
    scale = 1 + np.sum(np.abs(np.asarray(t) * np.asarray(log_q)), axis=-1)
    assert np.all(np.asarray(L.kl_divergence(log_q, t, reduction="none")) >= -1e-6 * scale)


@PROPERTY
@given(_floats((4, 3), -80, 80), _sign_floats)
def test_exponential_positive_finite_and_decreasing_in_margin(scores, labels):
    loss = np.asarray(L.exponential_loss(scores, labels, reduction="none"))
    assert np.all(np.isfinite(loss)) and np.all(loss >= 0)
    wider = np.asarray(L.exponential_loss(scores + labels, labels, reduction="none"))
    assert np.all(wider <= loss)


@PROPERTY
@given(_floats((4, 3)), st.floats(0.01, 100))
def test_regression_nonnegative_and_zero_at_perfect_prediction(p, delta):
    t = p[::-1].copy()
    for fn, kw in ((L.mse, {}), (L.mae, {}), (L.huber, {"delta": delta})):
        assert np.all(np.asarray(fn(p, t, reduction="none", **kw)) >= 0)
        assert float(fn(p, p, reduction="sum", **kw)) == 0.0


@PROPERTY
@given(_sign_floats, _floats((4, 3), 0, 1e3))
def test_hinge_zero_at_perfect_prediction(y, margin):
    assert float(L.hinge_loss(y * (1.0 + margin), y, reduction="sum")) == 0.0


@PROPERTY
@given(_floats((4, K), -1e3, 1e3), _labels, st.floats(0, 100, width=32))
def test_multiclass_hinge_zero_at_perfect_prediction(s, labels, margin):
    s, top = s.copy(), s.max(-1)
    correct = top + np.float32(1.0 + margin)
    correct = np.where(correct - top < 1, np.nextafter(correct, np.float32(np.inf)), correct)
    assert np.all(correct - top >= 1)  # a margin of at least 1 in float32 arithmetic
    s[np.arange(4), labels] = correct
    assert float(L.multiclass_hinge_loss(s, labels, reduction="sum")) == 0.0


@PROPERTY
@given(_labels, _smoothing, _floats((4, K), -30, 30))
@example(np.zeros(4, np.int32), 1.0, np.pad(np.full((1, 1), 1e-4, np.float32), ((0, 3), (0, K - 1))))  # was float32
def test_cross_entropy_minimal_at_target_distribution(labels, a, other):
    # The minimiser of cross-entropy against targets t is log t (up to a
    # constant); there the loss equals the entropy of t (Gibbs' inequality).
    with jax.enable_x64(True):
        t = (1 - a) * np.eye(K)[labels] + a / K
        best = np.log(np.maximum(t, 1e-300))
        at_best = np.asarray(L.cross_entropy(best, labels, label_smoothing=a, reduction="none"))
        entropy = -np.sum(np.where(t > 0, t * best, 0.0), axis=-1)
        np.testing.assert_allclose(at_best, entropy, atol=1e-9)
        elsewhere = L.cross_entropy(np.float64(other), labels, label_smoothing=a, reduction="none")
        assert np.all(np.asarray(elsewhere) >= at_best - 1e-9)
        t_probs = jnp.asarray(t)
        assert np.all(np.asarray(L.cross_entropy(np.float64(other), t_probs, reduction="none"))
                      >= np.asarray(L.cross_entropy(best, t_probs, reduction="none")) - 1e-9)


def test_cross_entropy_near_zero_for_confident_correct_logits():
    labels = np.array([0, 3, 4])
    logits = np.where(np.eye(K)[labels] > 0, MAGNITUDE, -MAGNITUDE).astype(np.float32)
    assert float(L.cross_entropy(logits, labels, reduction="sum")) == 0.0
    assert float(L.multiclass_hinge_loss(logits, labels, reduction="sum")) == 0.0


@PROPERTY
@given(_unit_floats, _floats((4, 3), -30, 30))
def test_log_loss_minimal_at_label(y, other):
    with jax.enable_x64(True):
        y = np.clip(np.float64(y), 1e-6, 1 - 1e-6)
        best = np.log(y) - np.log1p(-y)  # logit(y)
        entropy = -y * np.log(y) - (1 - y) * np.log1p(-y)
        at_best = np.asarray(L.log_loss(best, y, reduction="none"))
        np.testing.assert_allclose(at_best, entropy, rtol=1e-9, atol=1e-12)
        assert np.all(np.asarray(L.log_loss(np.float64(other), y, reduction="none"))
                      >= at_best - 1e-12)
        at_p = np.asarray(L.log_loss(y, y, from_logits=False, reduction="none"))
        np.testing.assert_allclose(at_p, entropy, rtol=1e-9, atol=1e-12)
    hard = np.array([0.0, 1.0, 1.0])
    assert float(L.log_loss(hard, hard, from_logits=False, reduction="sum")) == 0.0
    logits = np.array([-MAGNITUDE, MAGNITUDE, MAGNITUDE], np.float32)
    assert float(L.log_loss(logits, hard, reduction="sum")) == 0.0


@PROPERTY
@given(_floats((4, K), -30, 30), hnp.arrays(bool, (4, K)))
def test_kl_zero_at_perfect_prediction(z, keep):
    keep[np.arange(4), np.argmax(z, axis=-1)] = True
    t = np.where(keep, np.asarray(jax.nn.softmax(z)), 0.0).astype(np.float32)
    t /= t.sum(-1, keepdims=True)
    log_t = np.log(np.where(t > 0, t, 1.0))  # log q = log t where t > 0
    np.testing.assert_allclose(L.kl_divergence(log_t, t, reduction="none"), 0.0, atol=1e-6)


# --------------------------------------------------------------------------- gradients in float64

_h = 1e-6


def _check_grad(f, x, rng):
    """Directional central finite difference against jax.grad, in float64."""
    v = rng.standard_normal(x.shape)
    numeric = (f(x + _h * v) - f(x - _h * v)) / (2 * _h)
    analytic = np.sum(np.asarray(jax.grad(f)(x)) * v)
    np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-6)


def _fd_inputs(shape, lo=-10.0, hi=10.0):
    return hnp.arrays(np.float64, shape, elements=st.floats(lo, hi))


@PROPERTY
@given(_fd_inputs((4, K)), _labels, _smoothing, _fd_inputs((4, K)), st.integers(0, 2**31))
def test_gradients_classification_match_finite_differences(z, labels, a, w, seed):
    rng = np.random.default_rng(seed)
    weights = rng.uniform(0, 2, 4)
    with jax.enable_x64(True):
        t = 0.8 * np.asarray(jax.nn.softmax(w)) + 0.2 / K  # >= 0.04: t log t is smooth there
        log_q = np.asarray(jax.nn.log_softmax(z))
        for f, x in [
            (lambda x: L.cross_entropy(x, labels, label_smoothing=a, weights=weights), z),
            (lambda x: L.cross_entropy(x, t, label_smoothing=a, reduction="sum"), z),
            (lambda x: L.cross_entropy(z, x, reduction="sum"), t),
            (lambda x: L.kl_divergence(x, t, weights=weights), log_q),
            (lambda x: L.kl_divergence(log_q, x, reduction="sum"), t),
        ]:
            _check_grad(f, x, rng)


@PROPERTY
@given(_fd_inputs((4, 3)), _fd_inputs((4, 3), 0.0, 1.0), _sign_floats, st.integers(0, 2**31))
def test_gradients_binary_match_finite_differences(f, y, signs, seed):
    rng = np.random.default_rng(seed)
    signs = np.float64(signs)
    f = f + 0.1 * rng.standard_normal(f.shape)  # jitter: hypothesis favours exact kinks
    assume(np.all(np.abs(1 - signs * f) > 1e-4))  # away from the hinge's kink
    with jax.enable_x64(True):
        probs = np.clip(np.abs(f) / 10, 0.01, 0.99)
        _check_grad(lambda x: L.log_loss(x, y, reduction="sum"), f, rng)
        _check_grad(lambda x: L.log_loss(x, y, from_logits=False, reduction="sum"), probs, rng)
        _check_grad(lambda x: L.exponential_loss(x / 4, signs, reduction="sum"), f, rng)
        _check_grad(lambda x: L.hinge_loss(x, signs, weights=np.arange(3.0)), f, rng)


@PROPERTY
@given(_fd_inputs((4, K)), _labels, st.integers(0, 2**31))
def test_gradients_multiclass_hinge_match_finite_differences(s, labels, seed):
    rng = np.random.default_rng(seed)
    s = s + 0.1 * rng.standard_normal(s.shape)  # jitter: hypothesis favours exact ties
    margins = s + 1.0 - np.eye(K)[labels]
    top2 = np.sort(margins, axis=-1)[:, -2:]
    assume(np.all(top2[:, 1] - top2[:, 0] > 1e-4))  # a unique maximum: differentiable
    with jax.enable_x64(True):
        fn = lambda x: L.multiclass_hinge_loss(x, labels, reduction="sum")
        _check_grad(fn, s, rng)


@PROPERTY
@given(_fd_inputs((4, 3)), _fd_inputs((4, 3)), st.floats(0.1, 5), st.integers(0, 2**31))
def test_gradients_regression_match_finite_differences(p, t, delta, seed):
    rng = np.random.default_rng(seed)
    p = p + 0.1 * rng.standard_normal(p.shape)  # jitter: hypothesis favours p == t
    assume(np.all(np.abs(p - t) > 1e-4))  # mae's kink at p == t
    with jax.enable_x64(True):
        _check_grad(lambda x: L.mse(x, t), p, rng)
        _check_grad(lambda x: L.mae(x, t, reduction="sum"), p, rng)
        _check_grad(lambda x: L.huber(x, t, delta=delta, reduction="sum"), p, rng)


def test_cross_entropy_with_masked_logits_is_finite_as_optax():
    """Logits masked with -inf or the float minimum (impossible classes): the
    loss of a possible label is optax's, for integer labels and one-hot
    targets alike (0 log 0 = 0), not NaN."""
    low = float(jnp.finfo(jnp.float32).min)
    logits = jnp.array([[2.0, low, low, 0.5], [2.0, -jnp.inf, 0.0, 0.5]])
    labels = jnp.array([0, 0])
    expected = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    reference = -np.log(np.exp(2.0) / np.array([np.exp(2.0) + np.exp(0.5), np.exp(2.0) + 1 + np.exp(0.5)]))
    np.testing.assert_allclose(expected, reference, rtol=1e-6)
    np.testing.assert_allclose(L.cross_entropy(logits, labels, reduction="none"), expected, rtol=1e-6)
    np.testing.assert_allclose(L.cross_entropy(logits, jax.nn.one_hot(labels, 4), reduction="none"), expected,
                               rtol=1e-6)  # fmt: skip
    assert bool(jnp.isinf(L.cross_entropy(logits, labels, label_smoothing=0.1, reduction="none")).all())


def test_cross_entropy_gradient_in_the_targets_is_minus_log_softmax_and_traced_smoothing_of_zero_is_finite():
    """The loss is linear in probability targets: its gradient in them is
    ``-log_softmax(logits)`` (NumPy, float64), zeros of the target included;
    a traced ``label_smoothing`` of 0 with masked logits is as finite as a
    constant one."""
    logits = np.array([[2.0, 1.0, 0.0, 0.5]])
    targets = jnp.array([[1.0, 0.0, 0.0, 0.0]])
    grad = jax.grad(lambda t: L.cross_entropy(jnp.asarray(logits, jnp.float32), t, reduction="sum"))(targets)
    expected = -(logits - np.log(np.exp(logits).sum(-1, keepdims=True)))
    np.testing.assert_allclose(grad, expected, rtol=1e-6)
    masked = jnp.array([[2.0, -jnp.inf, 0.0, 0.5]])
    smoothed = jax.vmap(lambda a: L.cross_entropy(masked, jnp.array([0]), label_smoothing=a))(jnp.array([0.0, 0.1]))
    assert float(smoothed[0]) == pytest.approx(float(optax.softmax_cross_entropy_with_integer_labels(
        masked, jnp.array([0]))[0]), rel=1e-6)  # fmt: skip
    assert bool(jnp.isinf(smoothed[1]))


def test_kl_divergence_of_a_masked_class_with_target_zero_is_finite():
    """``log q = -inf`` where ``t = 0`` (a masked logit): that class adds 0,
    as in ``sum rel_entr(t, q)``, computed here in float64 NumPy."""
    logits = np.array([[2.0, -np.inf, 0.0, 0.5]])
    targets = np.array([[0.7, 0.0, 0.1, 0.2]])
    log_q = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    kept = targets > 0
    expected = np.sum(targets[kept] * (np.log(targets[kept]) - log_q[kept]))
    loss = L.kl_divergence(jax.nn.log_softmax(jnp.asarray(logits, jnp.float32)), jnp.asarray(targets, jnp.float32))
    assert float(loss) == pytest.approx(expected, abs=1e-6)  # float32 rounding of a difference of logs
    grad = jax.grad(lambda z: L.kl_divergence(jax.nn.log_softmax(z), jnp.asarray(targets, jnp.float32)))(
        jnp.asarray(logits, jnp.float32))  # fmt: skip
    assert bool(jnp.isfinite(grad).all())


def test_kl_divergence_takes_a_half_precision_distribution_whose_sum_rounds_above_one():
    # A float16 softmax can round a probability above 1 (in jax 0.10, jnp's division of
    # [36032, 1, 1, 0.5] by its sum is a product with the sum's reciprocal: p[0] = 1 + 2**-10).
    p = jnp.array([[1 + 2**-10, 1 / 36032, 1 / 36032, 0.5 / 36032]], jnp.float16)
    log_p = jnp.log(p)
    assert float(log_p[0, 0]) > 1e-4  # log p = +9.8e-4
    q = np.array([[0.7, 0.1, 0.1, 0.1]], np.float64)
    expected = np.sum(q * (np.log(q) - np.asarray(log_p, np.float64)))  # float64 by hand from the same log p
    np.testing.assert_allclose(L.kl_divergence(log_p, q.astype(np.float32)), expected, rtol=1e-3)
    assert np.isnan(L.kl_divergence(np.array([[np.nan, -1.0]], np.float32), np.array([[0.5, 0.5]], np.float32)))


def test_log_loss_of_probabilities_has_the_full_gradient_at_p_equal_to_the_label():
    # -log(p) at p = 1 has slope -1, -log(1 - p) at p = 0 slope 1 (float64 by hand); a clip of p to
    # [eps, 1] sat on its bound there and JAX split the gradient of the tie in two (-0.5, 0.5).
    grad = jax.grad(lambda p: L.log_loss(p, jnp.array([1.0, 0.0]), from_logits=False, reduction="sum"))
    np.testing.assert_allclose(grad(jnp.array([1.0, 0.0])), [-1.0, 1.0], rtol=1e-6)


def test_mae_gradient_is_the_sign_of_the_error():
    """``d|p - t| / dp = sign(p - t)``: 0 where the prediction is exact (the
    subgradient the docstring gives; ``jnp.abs``'s derivative is 1 there)."""
    p, t = jnp.array([0.0, 1.0, -2.0, 3.0]), jnp.array([0.0, 0.5, -1.0, 3.0])
    np.testing.assert_array_equal(jax.grad(lambda p: L.mae(p, t, reduction="sum"))(p), [0.0, 1.0, -1.0, 0.0])
    np.testing.assert_array_equal(L.mae(p, t, reduction="none"), np.abs(np.asarray(p) - np.asarray(t)))


def test_gradients_at_zero_targets_are_finite_where_optax_is_not():
    log_q = jnp.log(jnp.array([0.7, 0.3, 1e-30]))
    t = jnp.array([1.0, 0.0, 0.0])
    ours = jax.grad(L.kl_divergence, argnums=(0, 1))(log_q, t)
    assert _finite(*ours)
    np.testing.assert_allclose(ours[0], -np.asarray(t))  # d/dlog_q = -t
    theirs = jax.grad(lambda a, b: optax.losses.kl_divergence(a, b).sum(), argnums=1)(log_q, t)
    assert not _finite(theirs)  # the reason jdl has its own


# --------------------------------------------------------------------------- bad input

X = np.zeros((6, K), np.float32)
F = np.zeros((4,), np.float32)
ERRORS = [
    (lambda: L.cross_entropy(X, np.array([0, 1, 2, 3, 4, 5])),
     r"cross_entropy: integer labels must lie in [0, 5) for logits with 5 classes; "
     r"got 1 of 6 outside, the first 5 at index [5]"),
    (lambda: L.cross_entropy(X, np.array([0, -1, 2, 3, 4, 9])),
     r"got 2 of 6 outside, the first -1 at index [1]"),
    (lambda: L.cross_entropy(X, np.zeros(6, np.float32)),
     r"labels must be integer class labels of shape (6,) or probability targets of shape "
     r"(6, 5) (logits shape); got float32 labels of shape (6,)"),
    (lambda: L.cross_entropy(X, np.zeros((6, 1), np.int32)),
     r"integer labels must have shape (6,) (logits shape (6, 5) minus the class axis); "
     r"got (6, 1)"),
    (lambda: L.cross_entropy(X, np.zeros(6, np.int32), label_smoothing=1.5),
     r"label_smoothing must lie in [0, 1]; got 1.5"),
    (lambda: L.cross_entropy(X, np.eye(K, dtype=np.int32)[np.arange(6) % K]),
     r"got (6, 5) (one-hot or probability targets have the scores' shape and a float dtype: cast them"),
    (lambda: L.cross_entropy(np.float32(1.0), np.int32(0)),
     r"logits need a class axis (ndim >= 1); got shape ()"),
    (lambda: L.log_loss(F, np.array([0.0, 1.0, 1.5, 0.2])),
     r"log_loss: labels must lie in [0, 1]; got 1 of 4 outside, the first 1.5 at index [2]"),
    (lambda: L.log_loss(F, np.array([0.0, np.nan, 1.0, 0.2])),
     r"the first nan at index [1]"),
    (lambda: L.log_loss(np.array([0.5, 1.25]), np.array([0.0, 1.0]), from_logits=False),
     r"log_loss: probabilities must lie in [0, 1]; got 1 of 2 outside, the first 1.25"),
    (lambda: L.cross_entropy(X, np.where(np.arange(K) == 3, 1.5, 0.2) * np.ones((6, 1), np.float32)),
     r"cross_entropy: probability targets must lie in [0, 1]; got 6 of 30 outside, the first 1.5 at index [0 3]"),
    (lambda: L.log_loss(F, F, from_logits="no"), r"log_loss: from_logits must be True or False; got 'no'"),
    (lambda: L.log_loss(F, F, from_logits=1), r"log_loss: from_logits must be True or False; got 1"),
    (lambda: L.kl_divergence(np.full((6, K), 0.2), np.full((6, K), 0.2)),  # probabilities, not their logs
     r"kl_divergence: log_predictions must be log-probabilities (<= 0; for probabilities p pass jnp.log(p), "
     r"for logits jax.nn.log_softmax(logits)); got 30 of 30 outside, the first 0.2 at index [0 0]"),
    (lambda: L.log_loss(np.zeros((4, 1)), F),
     r"log_loss: labels must have the shape of logits (4, 1); got (4,)"),
    (lambda: L.exponential_loss(F, np.array([1.0, 0.0, 1.0, 1.0])),
     r"exponential_loss: labels must be -1 or +1; got 1 of 4 outside, the first 0.0 at index [1]"),
    (lambda: L.hinge_loss(F, np.array([0, 1, 1, 0])),
     r"hinge_loss: labels must be -1 or +1; got 2 of 4 outside, the first 0 at index [0]"),
    (lambda: L.hinge_loss(F, np.ones(3)),
     r"hinge_loss: labels must have the shape of scores (4,); got (3,)"),
    (lambda: L.multiclass_hinge_loss(X, np.full(6, 5)),
     r"multiclass_hinge_loss: integer labels must lie in [0, 5) for scores with 5 classes"),
    (lambda: L.multiclass_hinge_loss(X, np.zeros(6, np.float32)),
     r"multiclass_hinge_loss: integer labels need an integer dtype; got float32"),
    (lambda: L.kl_divergence(X, np.zeros((6, 4))),
     r"kl_divergence: targets must have the shape of log_predictions (6, 5); got (6, 4)"),
    (lambda: L.mse(np.zeros((3, 1)), np.zeros(3)),
     r"mse: targets must have the shape of predictions (3, 1); got (3,)"),
    (lambda: L.mae(np.zeros(3), np.zeros(4)),
     r"mae: targets must have the shape of predictions (3,); got (4,)"),
    (lambda: L.huber(F, F, delta=0.0), r"huber: delta must be positive; got 0.0"),
    (lambda: L.huber(F, F, delta=None), r"huber: delta must be positive; got None"),
    (lambda: L.huber(F, F, delta=np.array([1.0, 2.0])), r"huber: delta must be positive; got array([1., 2.])"),
    (lambda: L.cross_entropy(X, np.zeros(6, np.int32), label_smoothing=None),
     r"cross_entropy: label_smoothing must lie in [0, 1]; got None"),
    (lambda: L.cross_entropy(X, np.zeros(6, np.int32), label_smoothing="0.1"),
     r"cross_entropy: label_smoothing must lie in [0, 1]; got '0.1'"),
    (lambda: L.log_loss(F, F, from_logits=False, eps=-1.0), r"log_loss: eps must lie in (0, 0.5); got -1.0"),
    (lambda: L.mse(F, F, weights=np.ones(3)),
     r"mse: weights must broadcast to the per-element loss shape (4,); got (3,)"),
    (lambda: L.cross_entropy(X, np.zeros(6, np.int32), weights=np.ones(K)),
     r"cross_entropy: weights must broadcast to the per-element loss shape (6,); got (5,)"),
]


@pytest.mark.parametrize(("call", "message"), ERRORS, ids=[str(i) for i in range(len(ERRORS))])
def test_bad_input_raises_value_error_saying_expected_and_got(call, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        call()


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_unknown_reduction(case):
    x, y = case.make(np.random.default_rng(3), 1.0)
    expected = f"{case.fn.__name__}: reduction must be 'mean', 'sum' or 'none'; got 'avg'"
    with pytest.raises(ValueError, match=re.escape(expected)):
        case.fn(x, y, reduction="avg", **case.kwargs)
    with pytest.raises(ValueError, match="reduction"):
        jax.jit(lambda a, b: case.fn(a, b, reduction="avg", **case.kwargs))(x, y)


def test_shape_errors_raise_under_jit():
    with pytest.raises(ValueError, match=re.escape("(3, 1); got (3,)")):
        jax.jit(L.mse)(jnp.zeros((3, 1)), jnp.zeros(3))
    with pytest.raises(ValueError, match=re.escape("must have shape (6,)")):
        jax.jit(L.cross_entropy)(X, jnp.zeros(7, jnp.int32))


# Invalid label values as traced arguments: (loss, predictions, bad targets, bad positions, message)
BAD_TRACED = [
    (L.cross_entropy, X, np.array([0, 1, 5, 3, -2, 4]), [2, 4],
     "cross_entropy: integer labels must lie in [0, 5) for logits with 5 classes; "
     "got 2 of 6 outside, the first 5 at index [2]"),
    (L.multiclass_hinge_loss, X, np.array([0, 1, 2, 7, 4, 4]), [3],
     "multiclass_hinge_loss: integer labels must lie in [0, 5)"),
    (L.log_loss, F, np.array([0.0, 1.0, 2.0, 0.5]), [2],
     "log_loss: labels must lie in [0, 1]; got 1 of 4 outside, the first 2.0 at index [2]"),
    (L.hinge_loss, F, np.array([1.0, 0.0, -1.0, 1.0]), [1],
     "hinge_loss: labels must be -1 or +1; got 1 of 4 outside, the first 0.0 at index [1]"),
    (L.exponential_loss, F, np.array([1.0, -1.0, -1.0, 3.0]), [3],
     "exponential_loss: labels must be -1 or +1; got 1 of 4 outside, the first 3.0 at index [3]"),
]
_TARGETS = np.full((6, K), 0.2, np.float32)
_TARGETS[2, 1] = -0.5
BAD_TRACED.append((L.cross_entropy, X, _TARGETS, [2],
                   "cross_entropy: probability targets must lie in [0, 1]; got 1 of 30 outside, the first -0.5 "
                   "at index [2 1]"))  # fmt: skip
_PROBABILITIES = np.full((6, K), np.log(0.2), np.float32)
_PROBABILITIES[3] = 0.2  # a row of probabilities among log-probabilities


def kl_divergence_targets_first(targets, log_predictions, **kwargs):
    """kl_divergence with the arguments swapped: the table's bad values come second."""
    return L.kl_divergence(log_predictions, targets, **kwargs)


BAD_TRACED.append((kl_divergence_targets_first, np.full((6, K), 0.2, np.float32), _PROBABILITIES, [3],
                   "kl_divergence: log_predictions must be log-probabilities"))  # fmt: skip
BAD_IDS = [b[0].__name__ + ("_targets" if b[2].ndim == 2 and b[0] is L.cross_entropy else "") for b in BAD_TRACED]


@pytest.mark.parametrize(("fn", "x", "y", "bad", "message"), BAD_TRACED, ids=BAD_IDS)
def test_invalid_labels_under_jit_give_nan_not_a_wrong_number(fn, x, y, bad, message):
    per_element = np.asarray(jax.jit(lambda a, b: fn(a, b, reduction="none"))(x, y))
    assert np.all(np.isnan(per_element[bad]))
    assert np.all(np.isfinite(np.delete(per_element, bad, axis=0)))
    assert np.isnan(jax.jit(fn)(x, y))
    grad = np.asarray(jax.jit(jax.grad(fn))(x, y))
    assert np.all(np.isnan(grad[bad]))  # a NaN parameter gradient: training cannot go on silently
    assert np.all(np.isfinite(np.delete(grad, bad, axis=0)))


@pytest.mark.parametrize(("fn", "x", "y", "bad", "message"), BAD_TRACED, ids=BAD_IDS)
def test_checked_mode_reports_bad_labels_under_jit(fn, x, y, bad, message):
    err, value = checkify.checkify(jax.jit(L.checked(fn)))(x, y)
    assert message in err.get()
    with pytest.raises(checkify.JaxRuntimeError, match=re.escape(message)):
        err.throw()
    err, _ = checkify.checkify(jax.jit(jax.grad(L.checked(fn))))(x, y)
    assert message in err.get()


def test_checked_log_loss_probabilities_under_jit():
    fn = L.checked(lambda p, y: L.log_loss(p, y, from_logits=False))
    err, _ = checkify.checkify(jax.jit(fn))(jnp.array([0.5, -0.25]), jnp.array([0.0, 1.0]))
    assert "probabilities must lie in [0, 1]; got 1 of 2 outside, the first -0.25" in err.get()


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_checked_mode_passes_valid_input(case):
    x, y = case.make(np.random.default_rng(4), 1.0)
    fn = lambda a, b: case.fn(a, b, reduction="none", **case.kwargs)
    err, value = checkify.checkify(jax.jit(L.checked(fn)))(x, y)
    assert err.get() is None
    np.testing.assert_allclose(value, _ref(case, x, y), rtol=2e-5, atol=1e-5)


def test_checked_wraps_a_users_training_loss():
    def loss(params, batch):
        logits = batch["x"] @ params["w"]
        return L.cross_entropy(logits, batch["y"])

    params = {"w": jnp.ones((3, K))}
    good = {"x": jnp.ones((4, 3)), "y": jnp.array([0, 1, 2, 3])}
    bad = {"x": jnp.ones((4, 3)), "y": jnp.array([0, 1, 12, 3])}
    step = checkify.checkify(jax.jit(jax.value_and_grad(L.checked(loss))))
    err, (value, grads) = step(params, good)
    assert err.get() is None and _finite(value, grads["w"])
    np.testing.assert_allclose(value, np.log(K), rtol=1e-6)
    err, _ = step(params, bad)
    assert "the first 12 at index [2]" in err.get()
    with pytest.raises(ValueError, match=re.escape("the first 12 at index [2]")):
        loss(params, bad)  # eager: concrete labels are checked without checkify


def test_checked_needs_checkify_when_traced():
    with pytest.raises(Exception, match="checkify"):
        jax.jit(L.checked(L.hinge_loss))(F, jnp.ones(4))
