"""Loss functions: pure, differentiable with ``jax.grad``, compilable with ``jax.jit``.

Every loss has the signature ``fn(predictions, targets, *, reduction='mean',
weights=None, ...)``.

``reduction``
    ``'none'`` returns the per-element losses: the input shape for the elementwise
    losses (`log_loss`, `exponential_loss`, `hinge_loss`, `mse`, `mae`, `huber`)
    and the input shape minus the last (class) axis for the distribution losses
    (`cross_entropy`, `multiclass_hinge_loss`, `kl_divergence`). ``'sum'`` and
    ``'mean'`` reduce those to a scalar.
``weights``
    Optional array that broadcasts to the per-element loss shape; each loss
    element is multiplied by its weight. ``'mean'`` is then the mean of
    ``weights * loss`` over all elements (Keras' ``sum_over_batch_size``, i.e.
    ``jnp.mean(weights * loss)``), not a weighted average. For a weighted
    average, e.g. with a padding mask, use
    ``fn(..., reduction='sum', weights=w) / w.sum()``; padded positions still
    need a valid label (0, say): an invalid one makes its loss NaN under
    ``jit``, and a weight of 0 does not cancel a NaN.

Bad input. Shapes, ``reduction`` and hyper-parameters are static, so a wrong one
raises ``ValueError`` (naming what was expected and what came) even under
``jax.jit``. Label *values* (integer labels outside ``[0, num_classes)``,
labels outside ``{-1, +1}`` for the margin losses, labels or probabilities
outside ``[0, 1]`` for `log_loss`, probability targets outside ``[0, 1]``
for `cross_entropy`) are checked whenever they are concrete, i.e.
in eager calls, including under ``jax.grad`` of the predictions (``kl_divergence``
checks its ``log_predictions`` too, but under ``jax.grad`` of them they are traced). Under
``jax.jit``/``vmap`` they are tracers and cannot be inspected, so the check is
skipped and every loss element with an invalid label becomes NaN, in value
and in gradient, instead of a silently wrong number. (Eager calls copy the
labels to the host for the check; jit the training step to avoid that.) To find the offending
batch, use the checked mode: `checked` wraps a loss (or any function that
calls jdl losses) so that its label checks become
``jax.experimental.checkify`` checks::

    from jax.experimental import checkify
    loss = jdl.losses.checked(jdl.losses.cross_entropy)
    err, value = checkify.checkify(jax.jit(loss))(logits, labels)
    err.throw()  # raises: cross_entropy: integer labels must lie in [0, 10) ...

A checked function must be called under ``checkify.checkify`` when traced
(otherwise JAX refuses to stage the check). ``jax.grad`` may sit inside or
outside ``checked``.
"""

from __future__ import annotations

import contextvars
import functools
from collections.abc import Callable
from typing import Literal, TypeVar

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify

from jdl._checks import check_flag, is_real

__all__ = [
    "checked",
    "cross_entropy",
    "exponential_loss",
    "hinge_loss",
    "huber",
    "kl_divergence",
    "log_loss",
    "mae",
    "mse",
    "multiclass_hinge_loss",
]

Reduction = Literal["mean", "sum", "none"]
F = TypeVar("F", bound=Callable)

_CHECKED: contextvars.ContextVar[bool] = contextvars.ContextVar("jdl_losses_checked", default=False)


def checked(loss_fn: F) -> F:
    """Return ``loss_fn`` with its label-value checks staged as ``checkify`` checks.

    Works for the losses here and for any function that calls them (e.g. a
    user's ``loss(params, batch)``). The checks are added while the returned
    function is traced, so jit the *returned* function (a function jitted
    before wrapping keeps its old, unchecked trace). Run it under
    ``jax.experimental.checkify.checkify``; ``err.throw()`` then raises with
    the same message that the eager ``ValueError`` gives.
    """

    @functools.wraps(loss_fn)
    def wrapper(*args, **kwargs):
        token = _CHECKED.set(True)
        try:
            return loss_fn(*args, **kwargs)
        finally:
            _CHECKED.reset(token)

    return wrapper  # type: ignore[return-value]


# --------------------------------------------------------------------------- helpers


def _concrete(x) -> np.ndarray | None:
    """``x`` as a NumPy array, or ``None`` when it is a tracer."""
    try:
        return np.asarray(x)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None


def _is_traced(x) -> bool:
    return _concrete(x) is None


def _check_values(x, is_valid: Callable, message: str) -> jax.Array:
    """Validate the values of ``x``; return the elementwise validity mask.

    ``is_valid`` maps an array (NumPy or jax) to a boolean array. ``message``
    says what was expected. Concrete values raise ``ValueError``; traced ones
    are checked with ``checkify`` in checked mode and skipped otherwise.
    """
    x_np = _concrete(x)
    if x_np is not None:
        bad = ~np.asarray(is_valid(x_np), dtype=bool)
        if bad.any():
            index = np.argwhere(bad)[0]
            raise ValueError(
                f"{message}; got {int(bad.sum())} of {bad.size} outside, "
                f"the first {x_np[tuple(index)]!s} at index {index}"
            )
    x = jnp.asarray(x)
    valid = is_valid(x)
    if x_np is None and _CHECKED.get():
        first = jnp.argmin(valid.ravel())  # index of the first False
        checkify.check(
            jnp.all(valid),
            message + "; got {} of {} outside, the first {} at index {}",
            jnp.sum(~valid),
            jnp.asarray(valid.size),
            x.ravel()[first],
            jnp.stack([*jnp.unravel_index(first, x.shape), first])[:-1],
        )
    return valid


def _nan_where_invalid(loss: jax.Array, valid: jax.Array) -> jax.Array:
    """NaN (in value and gradient) where ``valid`` is False."""
    return loss * jnp.where(valid, 1.0, jnp.nan).astype(loss.dtype)


def _float(x) -> jax.Array:
    """``x`` as a float array of at least float32: integers become floats,
    and half precision (a mixed-precision model's bfloat16 outputs) is
    computed with in float32, as the losses' logs and exponentials need."""
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.inexact):
        return x.astype(jnp.result_type(float))
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _check_hyperparameter(name: str, what: str, value, expected: str, is_valid: Callable[[float], bool]) -> None:
    """A ValueError unless ``value`` is a real number (or 0-d array) for which
    ``is_valid`` holds; traced values pass unchecked."""
    if _is_traced(value):
        return
    number = is_real(value)
    if not number or not is_valid(float(value)):
        raise ValueError(f"{name}: {what} must {expected}; got {value if number else repr(value)}")


def _check_reduction(name: str, reduction: str) -> None:
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"{name}: reduction must be 'mean', 'sum' or 'none'; got {reduction!r}")


def _same_shape(name: str, a, b, what_a: str, what_b: str) -> None:
    if a.shape != b.shape:
        raise ValueError(
            f"{name}: {what_b} must have the shape of {what_a} {a.shape}; got {b.shape}"
        )


def _class_axis(name: str, x, what: str) -> int:
    if x.ndim < 1:
        raise ValueError(f"{name}: {what} need a class axis (ndim >= 1); got shape {x.shape}")
    return x.shape[-1]


def _integer_labels(name: str, scores, labels, num_classes: int, what: str, takes_targets: bool = False) -> jax.Array:
    """Check integer class labels of shape ``scores.shape[:-1]``; return their validity mask.
    ``takes_targets``: the loss also takes probability targets (of the scores' shape, a float dtype)."""
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise ValueError(f"{name}: integer labels need an integer dtype; got {labels.dtype}")
    if labels.shape != scores.shape[:-1]:
        hint = (" (one-hot or probability targets have the scores' shape and a float dtype: cast them, "
                "e.g. labels.astype(jnp.float32))" if takes_targets and labels.shape == scores.shape else "")
        raise ValueError(
            f"{name}: integer labels must have shape {scores.shape[:-1]} "
            f"({what} shape {scores.shape} minus the class axis); got {labels.shape}{hint}"
        )
    # A class count beyond the labels' dtype (300 classes, uint8 labels) would
    # wrap around when jnp compares in that dtype: every label is below it.
    fits = num_classes <= jnp.iinfo(labels.dtype).max
    return _check_values(
        labels,
        (lambda y: (y >= 0) & (y < num_classes)) if fits else (lambda y: y >= 0),
        f"{name}: integer labels must lie in [0, {num_classes}) for {what} with "
        f"{num_classes} classes",
    )


def _sign_labels(name: str, scores, labels) -> jax.Array:
    _same_shape(name, scores, labels, "scores", "labels")
    return _check_values(labels, lambda y: (y == 1) | (y == -1), f"{name}: labels must be -1 or +1")


def _reduce(name: str, loss: jax.Array, reduction: str, weights) -> jax.Array:
    if weights is not None:
        weights = jnp.asarray(weights, dtype=loss.dtype)
        try:
            fits = np.broadcast_shapes(weights.shape, loss.shape) == loss.shape
        except ValueError:
            fits = False
        if not fits:
            raise ValueError(
                f"{name}: weights must broadcast to the per-element loss shape "
                f"{loss.shape}; got {weights.shape}"
            )
        loss = loss * weights
    if reduction == "mean":
        return jnp.mean(loss)
    if reduction == "sum":
        return jnp.sum(loss)
    return loss


# --------------------------------------------------------------------------- classification


# Up to this many classes, ``_label_entry`` selects over the classes: its
# gradient is a select that fuses with the softmax's (the mlp's CPU step has 5
# kernels fewer than with a gather, whose gradient is a scatter into zeros).
# Above it the gather: the select reads every class, and for the value alone
# (an evaluation) at 1,000 classes it took twice as long on the CPU.
SELECT_MAX_CLASSES = 128


def _label_entry(log_p: jax.Array, labels: jax.Array, num_classes: int) -> jax.Array:
    """``log_p[..., labels]``: each row's entry at its (valid) integer label."""
    if num_classes <= SELECT_MAX_CLASSES:
        is_label = jnp.arange(num_classes) == labels[..., None]
        return jnp.sum(jnp.where(is_label, log_p, 0.0), axis=-1)
    return jnp.take_along_axis(log_p, labels[..., None], axis=-1)[..., 0]


def cross_entropy(
    logits: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    *,
    label_smoothing: float = 0.0,
    reduction: Reduction = "mean",
    weights: jax.typing.ArrayLike | None = None,
) -> jax.Array:
    """Softmax cross-entropy between logits and class labels.

    ``loss = -sum_k t_k * log_softmax(logits)_k`` over the last axis, computed
    as ``logsumexp(logits) - logits`` (stable for logits of any magnitude).

    Labels: integer class indices of shape ``logits.shape[:-1]`` in
    ``[0, K)`` (integer dtype; ``t`` is then one-hot), or probability targets
    ``t`` in ``[0, 1]`` of the same shape as ``logits`` (floating dtype; rows
    are not required to sum to 1).
    ``label_smoothing`` ``a`` replaces ``t`` by ``(1 - a) * t + a / K``, as
    ``optax.smooth_labels`` does.

    Source: Goodfellow, Bengio & Courville, *Deep Learning* (2016), §6.2.2.3;
    label smoothing: Szegedy et al., *Rethinking the Inception Architecture*
    (CVPR 2016), §7.
    """
    name = "cross_entropy"
    _check_reduction(name, reduction)
    logits, labels = _float(logits), jnp.asarray(labels)
    num_classes = _class_axis(name, logits, "logits")
    _check_hyperparameter(name, "label_smoothing", label_smoothing, "lie in [0, 1]", lambda a: 0.0 <= a <= 1.0)
    log_p = jax.nn.log_softmax(logits, axis=-1)
    a = label_smoothing
    if not jnp.issubdtype(labels.dtype, jnp.integer) and labels.shape != logits.shape:
        raise ValueError(
            f"{name}: labels must be integer class labels of shape {logits.shape[:-1]} or "
            f"probability targets of shape {logits.shape} (logits shape); "
            f"got {labels.dtype} labels of shape {labels.shape}"
        )
    if jnp.issubdtype(labels.dtype, jnp.integer):
        valid = _integer_labels(name, logits, labels, num_classes, "logits", takes_targets=True)
        safe = jnp.where(valid, labels, 0)
        log_p_label = _label_entry(log_p, safe, num_classes)
        loss = -(1.0 - a) * log_p_label
        # the smoothing term only where a != 0 (concrete or traced): 0 * a masked logit's -inf would be NaN
        loss = loss - jnp.where(a == 0, 0.0, a * jnp.mean(log_p, axis=-1))
        loss = _nan_where_invalid(loss, valid)
    else:
        in_range = _check_values(labels, lambda t: (t >= 0) & (t <= 1),
                                 f"{name}: probability targets must lie in [0, 1]")  # fmt: skip
        targets = (1.0 - a) * labels.astype(log_p.dtype) + a / num_classes
        # 0 log 0 = 0: a class of target 0 adds nothing, even where its logit is masked (-inf);
        # elsewhere log_p as it is, so that the gradient with respect to the targets stays -log_p
        finite_log_p = jnp.where((targets == 0) & jnp.isneginf(log_p), 0.0, log_p)
        loss = _nan_where_invalid(-jnp.sum(targets * finite_log_p, axis=-1), jnp.all(in_range, axis=-1))
    return _reduce(name, loss, reduction, weights)


def log_loss(
    logits: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    *,
    from_logits: bool = True,
    eps: float = 1e-7,
    reduction: Reduction = "mean",
    weights: jax.typing.ArrayLike | None = None,
) -> jax.Array:
    """Binary cross-entropy (logistic loss), elementwise.

    ``loss = -y * log(p) - (1 - y) * log(1 - p)`` with labels ``y`` in
    ``[0, 1]`` (hard 0/1 labels or soft ones). With ``from_logits=True``
    (default) ``p = sigmoid(logits)`` and the loss is computed as
    ``y * softplus(-x) + (1 - y) * softplus(x)``, stable for any logit. With
    ``from_logits=False`` the first argument holds probabilities ``p`` in
    ``[0, 1]``; ``p`` and ``1 - p`` are clipped below at ``eps`` (in ``(0, 0.5)``)
    so that the loss stays finite (at most ``-log(eps)``; the gradient is zero where the
    clip applies).

    Source: Bishop, *Pattern Recognition and Machine Learning* (2006),
    §4.3.2, eq. (4.90).
    """
    name = "log_loss"
    _check_reduction(name, reduction)
    from_logits = check_flag(f"{name}: from_logits", from_logits)
    x, y = _float(logits), jnp.asarray(labels)
    _same_shape(name, x, y, "logits" if from_logits else "probabilities", "labels")
    if not from_logits:
        _check_hyperparameter(name, "eps", eps, "lie in (0, 0.5)", lambda e: 0.0 < e < 0.5)
    valid = _check_values(y, lambda v: (v >= 0) & (v <= 1), f"{name}: labels must lie in [0, 1]")
    y = y.astype(x.dtype)
    if from_logits:
        loss = y * jax.nn.softplus(-x) + (1.0 - y) * jax.nn.softplus(x)
    else:
        valid = valid & _check_values(
            x, lambda v: (v >= 0) & (v <= 1), f"{name}: probabilities must lie in [0, 1]"
        )
        # x <= 1 for valid input: a bound below only (a clip's upper bound at p = 1 would halve the gradient there)
        log_p = jnp.log(jnp.maximum(x, eps))
        log_not_p = jnp.log(jnp.maximum(1.0 - x, eps))
        loss = -y * log_p - (1.0 - y) * log_not_p
    return _reduce(name, _nan_where_invalid(loss, valid), reduction, weights)


def exponential_loss(
    scores: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    *,
    reduction: Reduction = "mean",
    weights: jax.typing.ArrayLike | None = None,
) -> jax.Array:
    """Exponential loss, elementwise: ``loss = exp(-y * f)``, labels ``y`` in ``{-1, +1}``.

    The loss AdaBoost minimises. It grows exponentially in the negative
    margin, so by nature it overflows to ``inf`` for margins ``y * f`` below
    about -88 in float32 (-709 in float64); it is not clipped.

    Source: Hastie, Tibshirani & Friedman, *The Elements of Statistical
    Learning* (2nd ed., 2009), §10.4; Freund & Schapire (1997).
    """
    name = "exponential_loss"
    _check_reduction(name, reduction)
    f, y = _float(scores), jnp.asarray(labels)
    valid = _sign_labels(name, f, y)
    loss = jnp.exp(-y.astype(f.dtype) * f)
    return _reduce(name, _nan_where_invalid(loss, valid), reduction, weights)


def hinge_loss(
    scores: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    *,
    reduction: Reduction = "mean",
    weights: jax.typing.ArrayLike | None = None,
) -> jax.Array:
    """Hinge loss, elementwise: ``loss = max(0, 1 - y * f)``, labels ``y`` in ``{-1, +1}``.

    Source: Cortes & Vapnik, *Support-Vector Networks* (1995); Hastie,
    Tibshirani & Friedman, *The Elements of Statistical Learning* (2009), §12.3.2.
    """
    name = "hinge_loss"
    _check_reduction(name, reduction)
    f, y = _float(scores), jnp.asarray(labels)
    valid = _sign_labels(name, f, y)
    loss = jnp.maximum(0.0, 1.0 - y.astype(f.dtype) * f)
    return _reduce(name, _nan_where_invalid(loss, valid), reduction, weights)


def multiclass_hinge_loss(
    scores: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    *,
    reduction: Reduction = "mean",
    weights: jax.typing.ArrayLike | None = None,
) -> jax.Array:
    """Crammer-Singer multiclass hinge loss over the last axis.

    ``loss = max(0, max_{j != y} (1 + s_j - s_y))``, computed as
    ``max_j (s_j - s_y + 1 - [j == y])`` (what ``optax.multiclass_hinge_loss``
    computes, arranged so that rounding cannot make it negative). Labels:
    integer class indices of shape ``scores.shape[:-1]`` in ``[0, K)``.

    Source: Crammer & Singer, *On the Algorithmic Implementation of Multiclass
    Kernel-based Vector Machines*, JMLR 2 (2001), eq. (7).
    """
    name = "multiclass_hinge_loss"
    _check_reduction(name, reduction)
    s, y = _float(scores), jnp.asarray(labels)
    num_classes = _class_axis(name, s, "scores")
    valid = _integer_labels(name, s, y, num_classes, "scores")
    safe = jnp.where(valid, y, 0)
    one_hot = jax.nn.one_hot(safe, num_classes, dtype=s.dtype)
    s_label = jnp.take_along_axis(s, safe[..., None], axis=-1)[..., 0]
    # The j == y term is exactly 0, so the loss is >= 0 even after rounding.
    loss = jnp.max(s - s_label[..., None] + (1.0 - one_hot), axis=-1)
    return _reduce(name, _nan_where_invalid(loss, valid), reduction, weights)


# log(p) of a probability rounded up to just above 1 (float32: 1.2e-7) is still a log-probability;
# for half precision the slack is 4 of its epsilons (float16: 3.9e-3).
LOG_PROBABILITY_SLACK = 1e-6


def kl_divergence(
    log_predictions: jax.typing.ArrayLike,
    targets: jax.typing.ArrayLike,
    *,
    reduction: Reduction = "mean",
    weights: jax.typing.ArrayLike | None = None,
) -> jax.Array:
    """Kullback-Leibler divergence ``KL(targets || predictions)`` over the last axis.

    ``loss = sum_k t_k * (log t_k - log q_k)`` with ``log_predictions = log q``
    (e.g. ``jax.nn.log_softmax(logits)``) and target probabilities ``t``
    (same shape). ``0 * log 0 = 0``; the ``t log t`` term uses a safe log
    (double ``where``), so gradients with respect to ``log_predictions`` and
    ``targets`` stay finite where ``t == 0`` (there the ``t log t`` term
    contributes a zero gradient), also where ``log q`` is ``-inf`` (a masked
    class, as ``scipy.special.rel_entr(0, 0) = 0``). ``log_predictions``
    must be log-probabilities, at most 0 (up to a rounding:
    ``LOG_PROBABILITY_SLACK``, or 4 epsilons of a half-precision input's
    dtype): concrete values above raise (probabilities
    given by mistake: ``kl_divergence(softmax(x), t)`` came out negative),
    traced ones make their row NaN. Targets are not value-checked. KL is
    non-negative for distributions; in floating point it can come out
    negative by a rounding error near its minimum (it is not clamped).

    Source: Kullback & Leibler, *On Information and Sufficiency*, Ann. Math.
    Statist. 22 (1951); Cover & Thomas, *Elements of Information Theory*
    (2006), §2.3.
    """
    name = "kl_divergence"
    _check_reduction(name, reduction)
    log_predictions = jnp.asarray(log_predictions)  # once: its dtype as given, then as computed in
    given_dtype = log_predictions.dtype
    log_q, t = _float(log_predictions), _float(targets)
    _class_axis(name, log_q, "log_predictions")
    _same_shape(name, log_q, t, "log_predictions", "targets")
    # a rounding of the dtype given (a float16 softmax can sum to 1.001), not the float32 computed in
    slack = max(LOG_PROBABILITY_SLACK, 4 * float(jnp.finfo(given_dtype).eps)) \
        if jnp.issubdtype(given_dtype, jnp.floating) else LOG_PROBABILITY_SLACK
    valid = _check_values(log_q, lambda v: ~(v > slack),  # NaN passes: its loss is NaN as it was
                          f"{name}: log_predictions must be log-probabilities (<= 0; for probabilities p pass "
                          "jnp.log(p), for logits jax.nn.log_softmax(logits))")  # fmt: skip
    positive = t > 0
    t_log_t = jnp.where(positive, t * jnp.log(jnp.where(positive, t, 1.0)), 0.0)
    # a class of target 0 adds nothing even where log q is -inf (a masked logit's log_softmax)
    finite_log_q = jnp.where((t == 0) & jnp.isneginf(log_q), 0.0, log_q)
    loss = _nan_where_invalid(jnp.sum(t_log_t - t * finite_log_q, axis=-1), jnp.all(valid, axis=-1))
    return _reduce(name, loss, reduction, weights)


# --------------------------------------------------------------------------- regression


def _errors(name: str, predictions, targets) -> jax.Array:
    p, t = _float(predictions), _float(targets)
    _same_shape(name, p, t, "predictions", "targets")
    return p - t


def mse(
    predictions: jax.typing.ArrayLike,
    targets: jax.typing.ArrayLike,
    *,
    reduction: Reduction = "mean",
    weights: jax.typing.ArrayLike | None = None,
) -> jax.Array:
    """Mean squared error; elementwise ``loss = (p - t)**2`` (no factor 1/2).

    Targets ``t``: real values of the same shape as the predictions ``p``.
    Equals ``optax.squared_error``. Source: Hastie, Tibshirani & Friedman,
    *The Elements of Statistical Learning* (2009), §2.4.
    """
    _check_reduction("mse", reduction)
    return _reduce("mse", jnp.square(_errors("mse", predictions, targets)), reduction, weights)


def mae(
    predictions: jax.typing.ArrayLike,
    targets: jax.typing.ArrayLike,
    *,
    reduction: Reduction = "mean",
    weights: jax.typing.ArrayLike | None = None,
) -> jax.Array:
    """Mean absolute error; elementwise ``loss = |p - t|`` (gradient 0 at ``p == t``).

    Targets ``t``: real values of the same shape as the predictions ``p``.

    Source: Hastie, Tibshirani & Friedman, *The Elements of Statistical
    Learning* (2009), §2.4 and §10.6.
    """
    _check_reduction("mae", reduction)
    errors = _errors("mae", predictions, targets)
    # |d| as d * sign(d): the same values, and the gradient sign(d), 0 at d == 0 (jnp.abs's is 1 there)
    return _reduce("mae", errors * jax.lax.stop_gradient(jnp.sign(errors)), reduction, weights)


def huber(
    predictions: jax.typing.ArrayLike,
    targets: jax.typing.ArrayLike,
    *,
    delta: float = 1.0,
    reduction: Reduction = "mean",
    weights: jax.typing.ArrayLike | None = None,
) -> jax.Array:
    """Huber loss, elementwise, with ``e = p - t``.

    ``loss = e**2 / 2`` if ``|e| <= delta``, else ``delta * (|e| - delta / 2)``
    (quadratic near zero, linear beyond ``delta``; equals
    ``optax.huber_loss``). ``delta`` must be positive. Targets ``t``: real
    values of the same shape as the predictions ``p``.

    Source: Huber, *Robust Estimation of a Location Parameter*, Ann. Math.
    Statist. 35 (1964).
    """
    name = "huber"
    _check_reduction(name, reduction)
    _check_hyperparameter(name, "delta", delta, "be positive", lambda d: d > 0)
    abs_e = jnp.abs(_errors(name, predictions, targets))
    quadratic = jnp.minimum(abs_e, delta)
    loss = 0.5 * quadratic**2 + delta * (abs_e - quadratic)
    return _reduce(name, loss, reduction, weights)
