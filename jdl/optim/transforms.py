"""Building blocks: gradient transformations that optimizers chain together.

Each constructor checks its concrete hyperparameters and returns a
`GradientTransformation`.  The arithmetic follows optax (0.2.8) operation by
operation, so a chain of these blocks gives optax's numbers to float32
rounding.  Notation: `g` is the incoming update (the gradient), `t` counts
steps from 1, and every operation is elementwise.  The learning rate is
applied by `scale_by_learning_rate` with its sign flipped (descent): last in
every optimizer but `rmsprop` with momentum, whose `trace` comes after it, as
in optax.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jdl.optim import _validate
from jdl.optim.base import (
    NO_PARAMS_MSG,
    EmptyState,
    GradientTransformation,
    Params,
    ScalarOrSchedule,
    Updates,
    identity,
    init_empty_state,
    safe_increment,
    tree_full_like,
    tree_map_multi,
    tree_zeros_like,
    zero_count,
)


class ScaleByScheduleState(NamedTuple):
    """The step count a schedule is evaluated at (int32, starts at 0)."""

    count: jax.Array


class TraceState(NamedTuple):
    """The momentum buffer."""

    trace: Updates


class ScaleByRssState(NamedTuple):
    """The sum of squared gradients (Adagrad's accumulator)."""

    sum_of_squares: Updates


class ScaleByRmsState(NamedTuple):
    """The moving average of squared gradients."""

    nu: Updates


class ScaleByRStdDevState(NamedTuple):
    """Moving averages of the gradients (`mu`) and their squares (`nu`)."""

    mu: Updates
    nu: Updates


class ScaleByAdaDeltaState(NamedTuple):
    """Moving averages of squared gradients and of squared updates."""

    e_g: Updates
    e_x: Updates


class ScaleByAdamState(NamedTuple):
    """Adam's step count and first (`mu`) and second (`nu`) moments."""

    count: jax.Array
    mu: Updates
    nu: Updates


class ScaleByAmsgradState(NamedTuple):
    """AMSGrad's step count, moments, and the running maximum of the second."""

    count: jax.Array
    mu: Updates
    nu: Updates
    nu_max: Updates


class ScaleByLionState(NamedTuple):
    """Lion's step count and momentum."""

    count: jax.Array
    mu: Updates


class WeightDecayScheduleState(NamedTuple):
    """The step count a weight-decay schedule is evaluated at."""

    count: jax.Array


def scale(step_size: jax.typing.ArrayLike) -> GradientTransformation:
    """Multiply updates by a fixed scalar: `u = step_size * g`."""
    _validate.check_number("step_size", step_size)

    def update_fn(updates, state, params=None):
        del params
        return jax.tree_util.tree_map(lambda g: step_size * g, updates), state

    return GradientTransformation(init_empty_state, update_fn)


def scale_by_schedule(step_size_fn: Callable[[jax.Array], Any]) -> GradientTransformation:
    """Multiply updates by `step_size_fn(count)`; `count` is 0 at the first step."""

    def init_fn(params):
        del params
        return ScaleByScheduleState(count=zero_count())

    def update_fn(updates, state, params=None):
        del params
        step_size = step_size_fn(state.count)
        updates = jax.tree_util.tree_map(lambda g: jnp.array(step_size, dtype=g.dtype) * g, updates)
        return updates, ScaleByScheduleState(count=safe_increment(state.count))

    return GradientTransformation(init_fn, update_fn)


def scale_by_learning_rate(learning_rate: ScalarOrSchedule, *, flip_sign: bool = True) -> GradientTransformation:
    """Multiply by `-learning_rate` (by `+learning_rate` if not `flip_sign`).

    `learning_rate` is a number, a (possibly traced) scalar array, or a
    schedule `step -> value` evaluated at the step count before the step
    (0, 1, 2, ...).  Unlike optax, `None` raises `ValueError`; use
    `identity()` for no scaling.
    """
    _validate.check_learning_rate(learning_rate)
    sign = -1 if _validate.check_flag("flip_sign", flip_sign) else 1
    if callable(learning_rate):
        return scale_by_schedule(lambda count: sign * learning_rate(count))
    return scale(sign * learning_rate)


def trace(decay: jax.typing.ArrayLike, nesterov: bool = False) -> GradientTransformation:
    """Momentum (heavy ball), or Nesterov's momentum when `nesterov`.

        m_t = g_t + decay * m_{t-1},    m_0 = 0
        u_t = m_t                       (heavy ball)
        u_t = g_t + decay * m_t         (Nesterov)

    No dampening, as in optax and PyTorch.  Polyak, "Some methods of
    speeding up the convergence of iteration methods", 1964; Sutskever et
    al., "On the importance of initialization and momentum in deep
    learning", ICML 2013 (the Nesterov form).
    """
    _validate.check_range("decay", decay, 0.0, 1.0)
    nesterov = _validate.check_flag("nesterov", nesterov)

    def init_fn(params):
        return TraceState(trace=tree_zeros_like(params))

    def leaf(g, m):
        m = g + decay * m
        return (g + decay * m if nesterov else m), m

    def update_fn(updates, state, params=None):
        del params
        updates, new_trace = tree_map_multi(leaf, 2, updates, state.trace)
        return updates, TraceState(trace=new_trace)

    return GradientTransformation(init_fn, update_fn)


def scale_by_rss(
    initial_accumulator_value: jax.typing.ArrayLike = 0.1,
    eps: jax.typing.ArrayLike = 1e-7,
) -> GradientTransformation:
    """Adagrad's scaling by the root of the sum of squared gradients.

        s_t = s_{t-1} + g_t^2,          s_0 = initial_accumulator_value
        u_t = g_t / sqrt(s_t + eps)     (0 where s_t = 0)

    Duchi, Hazan and Singer, "Adaptive Subgradient Methods for Online
    Learning and Stochastic Optimization", JMLR 2011.
    """
    _validate.check_range("initial_accumulator_value", initial_accumulator_value, 0.0)
    _validate.check_range("eps", eps, 0.0)

    def init_fn(params):
        return ScaleByRssState(sum_of_squares=tree_full_like(params, initial_accumulator_value))

    def leaf(g, s):
        s = g * g + s
        return jnp.where(s > 0, jax.lax.rsqrt(s + eps), 0.0) * g, s

    def update_fn(updates, state, params=None):
        del params
        updates, sum_of_squares = tree_map_multi(leaf, 2, updates, state.sum_of_squares)
        return updates, ScaleByRssState(sum_of_squares=sum_of_squares)

    return GradientTransformation(init_fn, update_fn)


def scale_by_rms(
    decay: jax.typing.ArrayLike = 0.9,
    eps: jax.typing.ArrayLike = 1e-8,
    initial_scale: jax.typing.ArrayLike = 0.0,
    centered: bool = False,
) -> GradientTransformation:
    """RMSProp's scaling by a moving root mean square of the gradients.

        v_t = decay * v_{t-1} + (1 - decay) * g_t^2,     v_0 = initial_scale
        u_t = g_t / sqrt(v_t + eps)

    Centered (Graves 2013) also tracks the mean gradient and divides by the
    moving standard deviation instead:

        m_t = decay * m_{t-1} + (1 - decay) * g_t,       m_0 = 0
        u_t = g_t / sqrt(v_t - m_t^2 + eps)

    Tieleman and Hinton, Lecture 6.5 of "Neural Networks for Machine
    Learning", 2012; Graves, "Generating Sequences With Recurrent Neural
    Networks", arXiv:1308.0850, 2013.
    """
    _validate.check_range("decay", decay, 0.0, 1.0)
    _validate.check_denominator_eps(eps)
    _validate.check_range("initial_scale", initial_scale, 0.0)
    centered = _validate.check_flag("centered", centered)

    def init_fn(params):
        nu = tree_full_like(params, initial_scale)
        return ScaleByRStdDevState(tree_zeros_like(params), nu) if centered else ScaleByRmsState(nu)

    def leaf(g, v):
        v = (1 - decay) * (g**2) + decay * v
        return jax.lax.rsqrt(v + eps) * g, v

    def centered_leaf(g, m, v):
        m = (1 - decay) * g + decay * m
        v = (1 - decay) * (g**2) + decay * v
        return jax.lax.rsqrt(v - m * m + eps) * g, m, v

    def update_fn(updates, state, params=None):
        del params
        if centered:
            updates, mu, nu = tree_map_multi(centered_leaf, 3, updates, state.mu, state.nu)
            return updates, ScaleByRStdDevState(mu=mu, nu=nu)
        updates, nu = tree_map_multi(leaf, 2, updates, state.nu)
        return updates, ScaleByRmsState(nu=nu)

    return GradientTransformation(init_fn, update_fn)


def scale_by_adadelta(rho: jax.typing.ArrayLike = 0.9, eps: jax.typing.ArrayLike = 1e-6) -> GradientTransformation:
    """AdaDelta's unit-correcting scaling.

        E[g^2]_t = rho * E[g^2]_{t-1} + (1 - rho) * g_t^2
        d_t      = sqrt(E[dx^2]_{t-1} + eps) / sqrt(E[g^2]_t + eps) * g_t
        E[dx^2]_t = rho * E[dx^2]_{t-1} + (1 - rho) * d_t^2

    The output `d_t` points uphill, like the gradient: a descent step is
    `-lr * d_t` (see `jdl.optim.adadelta`).  Zeiler, "ADADELTA: An Adaptive
    Learning Rate Method", arXiv:1212.5701, 2012.

    `d_t^2` is computed as `(E[dx^2]_{t-1} + eps) * g_t * (g_t / (E[g^2]_t + eps))`,
    equal in exact arithmetic and to float32 rounding in practice (in that
    order, so that neither overflows nor underflows where `d_t^2` does not:
    a `g_t^2` that overflows to inf leaves `d_t = 0`, as in optax).  Squaring
    `d_t` itself (as optax does) shares the two square roots between the step
    and the new `E[dx^2]`, and XLA then writes each root to memory as an array
    of its own: five passes over every leaf instead of three, and a compiled
    step 30% slower on the CPU (benchmarks/README.md, optimizer updates).
    """
    _validate.check_range("rho", rho, 0.0, 1.0)
    _validate.check_denominator_eps(eps)

    def init_fn(params):
        return ScaleByAdaDeltaState(e_g=tree_zeros_like(params), e_x=tree_zeros_like(params))

    def leaf(g, e_g, e_x):
        e_g = (1 - rho) * (g**2) + rho * e_g
        d = (jnp.sqrt(e_x + eps) / jnp.sqrt(e_g + eps)) * g
        d_squared = (e_x + eps) * (g * (g / (e_g + eps)))  # g / (E[g^2] + eps) first: no g^2 to overflow
        return d, e_g, (1 - rho) * d_squared + rho * e_x

    def update_fn(updates, state, params=None):
        del params
        updates, e_g, e_x = tree_map_multi(leaf, 3, updates, state.e_g, state.e_x)
        return updates, ScaleByAdaDeltaState(e_g=e_g, e_x=e_x)

    return GradientTransformation(init_fn, update_fn)


def _check_adam_hyperparameters(b1, b2, eps, eps_root) -> None:
    """Adam's and AMSGrad's: betas in [0, 1), eps_root >= 0, and eps > 0 unless eps_root is."""
    _validate.check_beta("b1", b1)
    _validate.check_beta("b2", b2)
    _validate.check_range("eps_root", eps_root, 0.0)
    _validate.check_denominator_eps(eps, eps_root, "eps_root")


def _init_adam_state(params: Params) -> ScaleByAdamState:
    """Adam's and AdaMax's first state: count 0, both moments 0."""
    return ScaleByAdamState(count=zero_count(), mu=tree_zeros_like(params), nu=tree_zeros_like(params))


def scale_by_adam(
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-8,
    eps_root: jax.typing.ArrayLike = 0.0,
    *,
    nesterov: bool = False,
) -> GradientTransformation:
    """Adam's scaling by bias-corrected moment estimates.

        m_t = b1 * m_{t-1} + (1 - b1) * g_t
        v_t = b2 * v_{t-1} + (1 - b2) * g_t^2
        u_t = (m_t / (1 - b1^t)) / (sqrt(v_t / (1 - b2^t) + eps_root) + eps)

    With `nesterov` (NAdam), `m_t / (1 - b1^t)` becomes
    `b1 * m_t / (1 - b1^(t+1)) + (1 - b1) * g_t / (1 - b1^t)`: the momentum
    looks one step ahead, as optax's `nesterov=True` (without Dozat's extra
    factor `b2` on `v_t`).  Kingma and Ba, "Adam: A Method for Stochastic
    Optimization", ICLR 2015 (Algorithm 1); Dozat, "Incorporating Nesterov
    Momentum into Adam", ICLR 2016 workshop.
    """
    _check_adam_hyperparameters(b1, b2, eps, eps_root)
    nesterov = _validate.check_flag("nesterov", nesterov)

    def update_fn(updates, state, params=None):
        del params
        count = safe_increment(state.count)
        correction1 = 1 - b1**count
        correction2 = 1 - b2**count
        next_correction1 = 1 - b1 ** safe_increment(count) if nesterov else None

        def leaf(g, m, v):
            m = (1 - b1) * g + b1 * m
            v = (1 - b2) * (g**2) + b2 * v
            if nesterov:
                m_hat = b1 * (m / next_correction1.astype(m.dtype)) + (1 - b1) * (g / correction1.astype(g.dtype))
            else:
                m_hat = m / correction1.astype(m.dtype)
            v_hat = v / correction2.astype(v.dtype)
            return m_hat / (jnp.sqrt(v_hat + eps_root) + eps), m, v

        updates, mu, nu = tree_map_multi(leaf, 3, updates, state.mu, state.nu)
        return updates, ScaleByAdamState(count=count, mu=mu, nu=nu)

    return GradientTransformation(_init_adam_state, update_fn)


def scale_by_amsgrad(
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-8,
    eps_root: jax.typing.ArrayLike = 0.0,
    *,
    bias_correction_mu: bool = True,
    bias_correction_nu: bool = True,
) -> GradientTransformation:
    """AMSGrad: Adam divided by the largest second moment seen so far.

        m_t = b1 * m_{t-1} + (1 - b1) * g_t,      m^_t = m_t / (1 - b1^t)
        v_t = b2 * v_{t-1} + (1 - b2) * g_t^2,    v^_t = v_t / (1 - b2^t)
        w_t = max(w_{t-1}, v^_t),                 w_0 = 0
        u_t = m^_t / (sqrt(w_t + eps_root) + eps)

    so a coordinate's step never grows because its gradients shrank.  The
    paper corrects neither moment (`bias_correction_mu=False`,
    `bias_correction_nu=False`); optax corrects both by default, and so does
    this.  Reddi, Kale and Kumar, "On the Convergence of Adam and Beyond",
    ICLR 2018.
    """
    _check_adam_hyperparameters(b1, b2, eps, eps_root)
    correct_mu = _validate.check_flag("bias_correction_mu", bias_correction_mu)
    correct_nu = _validate.check_flag("bias_correction_nu", bias_correction_nu)

    def init_fn(params):
        zeros = lambda: tree_zeros_like(params)
        return ScaleByAmsgradState(count=zero_count(), mu=zeros(), nu=zeros(), nu_max=zeros())

    def update_fn(updates, state, params=None):
        del params
        count = safe_increment(state.count)
        correction1 = 1 - b1**count
        correction2 = 1 - b2**count

        def leaf(g, m, v, v_max):
            m = (1 - b1) * g + b1 * m
            v = (1 - b2) * (g**2) + b2 * v
            m_hat = m / correction1.astype(m.dtype) if correct_mu else m
            v_max = jnp.maximum(v_max, v / correction2.astype(v.dtype) if correct_nu else v)
            return m_hat / (jnp.sqrt(v_max + eps_root) + eps), m, v, v_max

        updates, mu, nu, nu_max = tree_map_multi(leaf, 4, updates, state.mu, state.nu, state.nu_max)
        return updates, ScaleByAmsgradState(count=count, mu=mu, nu=nu, nu_max=nu_max)

    return GradientTransformation(init_fn, update_fn)


def scale_by_adamax(
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-8,
) -> GradientTransformation:
    """AdaMax: Adam with the infinity norm of the gradients in place of the RMS.

        m_t = b1 * m_{t-1} + (1 - b1) * g_t
        v_t = max(|g_t| + eps, b2 * v_{t-1}),    v_0 = 0
        u_t = (m_t / (1 - b1^t)) / v_t

    `v_t` needs no bias correction, so `b2 = 1` (a running maximum that
    never decays) is allowed.  `eps` inside the maximum (optax's place for
    it) keeps a coordinate that has seen only zero gradients at 0 / eps = 0,
    so it must be > 0 (and representable in the parameters' dtype: float16
    rounds the default 1e-8 to 0, and 0 / 0 is NaN, as in optax).  Kingma
    and Ba, "Adam: A Method for Stochastic Optimization", ICLR 2015 (Section
    7.1, Algorithm 2).
    """
    _validate.check_beta("b1", b1)
    _validate.check_range("b2", b2, 0.0, 1.0)
    _validate.check_denominator_eps(eps)

    def update_fn(updates, state, params=None):
        del params
        count = safe_increment(state.count)
        correction1 = 1 - b1**count

        def leaf(g, m, v):
            m = (1 - b1) * g + b1 * m
            v = jnp.maximum(jnp.abs(g) + eps, b2 * v)
            return (m / correction1.astype(m.dtype)) / v, m, v

        updates, mu, nu = tree_map_multi(leaf, 3, updates, state.mu, state.nu)
        return updates, ScaleByAdamState(count=count, mu=mu, nu=nu)

    return GradientTransformation(_init_adam_state, update_fn)


def scale_by_lion(b1: jax.typing.ArrayLike = 0.9, b2: jax.typing.ArrayLike = 0.99) -> GradientTransformation:
    """Lion: the sign of an interpolation between momentum and gradient.

        u_t = sign(b1 * m_{t-1} + (1 - b1) * g_t)
        m_t = b2 * m_{t-1} + (1 - b2) * g_t

    Every coordinate moves by exactly the learning rate (0 where the
    interpolation is 0), so Lion's learning rate is typically 3-10 times
    smaller than AdamW's.  Nothing is divided by `1 - b1^t` or `1 - b2^t`,
    so both may be 1 (`b1 = 1`: the sign of the momentum alone; `b2 = 1`: a
    momentum that stays 0, sign descent).  Chen et al., "Symbolic Discovery
    of Optimization Algorithms", NeurIPS 2023 (Program 1).
    """
    _validate.check_range("b1", b1, 0.0, 1.0)
    _validate.check_range("b2", b2, 0.0, 1.0)

    def init_fn(params):
        return ScaleByLionState(count=zero_count(), mu=tree_zeros_like(params))

    def update_fn(updates, state, params=None):
        del params

        def leaf(g, m):
            return jnp.sign((1.0 - b1) * g + b1 * m), (1 - b2) * g + b2 * m

        updates, mu = tree_map_multi(leaf, 2, updates, state.mu)
        return updates, ScaleByLionState(count=safe_increment(state.count), mu=mu)

    return GradientTransformation(init_fn, update_fn)


def _full_mask(mask: Any, params: Params) -> Any:
    """Broadcast a mask (a tree prefix of booleans, or `params -> tree`) to
    one bool per leaf; a ValueError for a tree that is no prefix of the
    parameters', or for entries that are not True or False ('no' would count
    as True).  A traced entry (a mask function of jnp booleans under jit)
    raises JAX's own error."""
    mask_tree = mask(params) if callable(mask) else mask
    try:
        flags = jax.tree_util.tree_map(
            lambda flag, subtree: jax.tree_util.tree_map(lambda _: flag, subtree), mask_tree, params
        )
    except (ValueError, TypeError, KeyError) as error:
        structure, expected = jax.tree_util.tree_structure(mask_tree), jax.tree_util.tree_structure(params)
        raise ValueError(
            "mask must be a tree of True/False matching a prefix of the parameters' tree (or a function of the "
            f"parameters giving one); got {structure} for parameters {expected}"
        ) from error
    return jax.tree_util.tree_map(lambda flag: _validate.check_flag("a mask entry", flag), flags)


def add_decayed_weights(weight_decay: ScalarOrSchedule = 0.0, mask: Any = None) -> GradientTransformation:
    """Add decoupled weight decay: `u = g + weight_decay * params`.

    `weight_decay` may be a schedule.  `mask` (a tree of booleans matching a
    prefix of the parameters, or a function `params -> such a tree`) limits
    the decay to the leaves marked True, e.g. weights but not biases.
    Loshchilov and Hutter, "Decoupled Weight Decay Regularization", ICLR 2019.
    """
    if callable(weight_decay):
        schedule = weight_decay
    else:
        _validate.check_range("weight_decay", weight_decay, 0.0)
        schedule = None

    def init_fn(params):
        if mask is not None:
            _full_mask(mask, params)  # a mask that does not fit fails here, not at the first update
        return EmptyState() if schedule is None else WeightDecayScheduleState(zero_count())

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError(NO_PARAMS_MSG)
        if schedule is None:
            new_state, rate = state, weight_decay
            if isinstance(weight_decay, (int, float)) and weight_decay == 0:
                return updates, new_state
        else:
            new_state = WeightDecayScheduleState(safe_increment(state.count))
            rate = schedule(state.count)
        if mask is None:
            updates = jax.tree_util.tree_map(lambda g, p: g + rate * p, updates, params)
        else:
            updates = jax.tree_util.tree_map(
                lambda g, p, on: g + rate * p if on else g,
                updates,
                params,
                _full_mask(mask, params),
            )
        return updates, new_state

    return GradientTransformation(init_fn, update_fn)


def clip_by_global_norm(max_norm: jax.typing.ArrayLike) -> GradientTransformation:
    """Rescale the updates when their global norm exceeds `max_norm`.

        n = sqrt(sum over all leaves of sum(g^2))
        u = g if n < max_norm else g / n * max_norm

    Pascanu, Mikolov and Bengio, "On the difficulty of training recurrent
    neural networks", ICML 2013.
    """
    _validate.check_range("max_norm", max_norm, 0.0, include_low=False)

    def update_fn(updates, state, params=None):
        del params
        leaves = jax.tree_util.tree_leaves(updates)
        norm = jnp.sqrt(sum(jnp.sum(jnp.square(g)) for g in leaves))
        keep = norm < max_norm
        updates = jax.tree_util.tree_map(
            lambda g: jax.lax.select(keep, g, (g / norm.astype(g.dtype)) * max_norm), updates
        )
        return updates, state

    return GradientTransformation(init_empty_state, update_fn)


__all__ = [
    "ScaleByAdaDeltaState",
    "ScaleByAdamState",
    "ScaleByAmsgradState",
    "ScaleByLionState",
    "ScaleByRStdDevState",
    "ScaleByRmsState",
    "ScaleByRssState",
    "ScaleByScheduleState",
    "TraceState",
    "WeightDecayScheduleState",
    "add_decayed_weights",
    "clip_by_global_norm",
    "identity",
    "scale",
    "scale_by_adadelta",
    "scale_by_adam",
    "scale_by_adamax",
    "scale_by_amsgrad",
    "scale_by_learning_rate",
    "scale_by_lion",
    "scale_by_rms",
    "scale_by_rss",
    "scale_by_schedule",
    "trace",
]
