"""The optimizers of the course, as chains of `jdl.optim.transforms`.

Every optimizer returns a `GradientTransformation`; a training step is

    updates, opt_state = optimizer.update(grads, opt_state, params)
    params = jdl.optim.apply_updates(params, updates)

Full-batch, stochastic and mini-batch gradient descent are *one* update rule,
`params <- params - lr * grad`: they differ only in the data the gradient is
computed on, N examples (the whole training set), 1 example, or a batch of
B.  So `gd`, `sgd` (without momentum) and `minibatch` build the same
transformation; pick the batch size in the data loader
(`jdl.data.load(..., batch_size=B)`).

Keyword names and defaults are optax's where optax has the optimizer, and
so are the numbers (to float32 rounding).  `learning_rate` may be a float, a
(possibly traced) scalar array, so one compiled program can `jax.vmap` over
learning rates, or a schedule `step -> lr` (`jdl.optim.schedules`).  `g` is
the gradient, `t` counts steps from 1 and `lr` is the learning rate.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable
from types import MappingProxyType
from typing import Any

import jax

from jdl._checks import registry_key
from jdl.optim import _validate, transforms
from jdl.optim.base import GradientTransformation, ScalarOrSchedule, chain

Float = jax.typing.ArrayLike


def gd(learning_rate: ScalarOrSchedule) -> GradientTransformation:
    """Gradient descent: `params <- params - lr * g`.

    The batch decides the name: the gradient of the whole training set gives
    full-batch gradient descent (Cauchy, 1847), the gradient of one random
    example stochastic gradient descent (Robbins and Monro, "A Stochastic
    Approximation Method", 1951), and of a random batch of B examples
    mini-batch gradient descent.  `sgd(lr)` and `minibatch(lr)` are this
    optimizer.
    """
    return transforms.scale_by_learning_rate(learning_rate)


def minibatch(learning_rate: ScalarOrSchedule) -> GradientTransformation:
    """Mini-batch gradient descent: `gd` fed batches of B examples (see `gd`)."""
    return gd(learning_rate)


def sgd(
    learning_rate: ScalarOrSchedule, momentum: Float | None = None, nesterov: bool = False
) -> GradientTransformation:
    """Stochastic gradient descent, optionally with (Nesterov) momentum.

    Without momentum this is `gd`.  With momentum `mu`:

        m_t = g_t + mu * m_{t-1},   m_0 = 0
        params <- params - lr * m_t                  (heavy ball)
        params <- params - lr * (g_t + mu * m_t)     (nesterov=True)

    `nesterov=True` without a momentum raises `ValueError` (optax ignores
    it).  Robbins and Monro, 1951; Polyak, "Some methods of speeding up the
    convergence of iteration methods", 1964; Sutskever et al., "On the
    importance of initialization and momentum in deep learning", ICML 2013.
    """
    if momentum is None:
        if _validate.check_flag("nesterov", nesterov):
            raise ValueError("nesterov=True needs a momentum, e.g. sgd(lr, momentum=0.9)")
        return gd(learning_rate)
    _validate.check_range("momentum", momentum, 0.0, 1.0)
    return chain(
        transforms.trace(decay=momentum, nesterov=nesterov),
        transforms.scale_by_learning_rate(learning_rate),
    )


def momentum(learning_rate: ScalarOrSchedule, momentum: Float = 0.9, nesterov: bool = False) -> GradientTransformation:
    """Gradient descent with momentum: `sgd(learning_rate, momentum, nesterov)`.

        m_t = g_t + momentum * m_{t-1},   params <- params - lr * m_t

    (Nesterov: `params <- params - lr * (g_t + momentum * m_t)`.)  Polyak,
    1964; Sutskever et al., ICML 2013.
    """
    if momentum is None:  # sgd's "no momentum", which this optimizer is not
        raise ValueError("momentum must be a number in [0, 1], got None; for no momentum use gd or sgd")
    return sgd(learning_rate, momentum=momentum, nesterov=nesterov)


def _nesterov(learning_rate: ScalarOrSchedule, momentum: Float = 0.9) -> GradientTransformation:
    """Nesterov momentum: `sgd(learning_rate, momentum, nesterov=True)`."""
    return sgd(learning_rate, momentum=momentum, nesterov=True)


def adagrad(
    learning_rate: ScalarOrSchedule,
    initial_accumulator_value: Float = 0.1,
    eps: Float = 1e-7,
) -> GradientTransformation:
    """Adagrad: per-coordinate steps shrinking with the gradients seen so far.

        s_t = s_{t-1} + g_t^2,    s_0 = initial_accumulator_value
        params <- params - lr * g_t / sqrt(s_t + eps)

    Duchi, Hazan and Singer, "Adaptive Subgradient Methods for Online
    Learning and Stochastic Optimization", JMLR 12, 2011.
    """
    return chain(
        transforms.scale_by_rss(initial_accumulator_value=initial_accumulator_value, eps=eps),
        transforms.scale_by_learning_rate(learning_rate),
    )


def rmsprop(
    learning_rate: ScalarOrSchedule,
    decay: Float = 0.9,
    eps: Float = 1e-8,
    initial_scale: Float = 0.0,
    *,
    centered: bool = False,
    momentum: Float | None = None,
    nesterov: bool = False,
) -> GradientTransformation:
    """RMSProp: steps divided by a moving root mean square of the gradients.

        v_t = decay * v_{t-1} + (1 - decay) * g_t^2,     v_0 = initial_scale
        u_t = -lr * g_t / sqrt(v_t + eps)

    `centered=True` (Graves 2013) divides by the moving standard deviation
    instead, `sqrt(v_t - m_t^2 + eps)` with `m_t = decay * m_{t-1} + (1 -
    decay) * g_t`.  With `momentum`, `u_t` is then accumulated as in `trace`
    (after the learning rate, as in optax and TensorFlow):
    `b_t = u_t + momentum * b_{t-1}`, `params <- params + b_t`.
    `centered`, `momentum` and `nesterov` are keyword-only (optax's fifth
    argument is `eps_in_sqrt`).

    Tieleman and Hinton, "Lecture 6.5 - RMSProp", COURSERA: Neural Networks
    for Machine Learning, 2012; Graves, "Generating Sequences With Recurrent
    Neural Networks", arXiv:1308.0850, 2013.
    """
    steps = [
        transforms.scale_by_rms(decay=decay, eps=eps, initial_scale=initial_scale, centered=centered),
        transforms.scale_by_learning_rate(learning_rate),
    ]
    if momentum is not None:
        _validate.check_range("momentum", momentum, 0.0, 1.0)
        steps.append(transforms.trace(decay=momentum, nesterov=nesterov))
    elif _validate.check_flag("nesterov", nesterov):
        raise ValueError("nesterov=True needs a momentum, e.g. rmsprop(lr, momentum=0.9)")
    return chain(*steps)


def adadelta(learning_rate: ScalarOrSchedule = 1.0, rho: Float = 0.9, eps: Float = 1e-6) -> GradientTransformation:
    """AdaDelta: steps in the units of the parameters, no tuning of lr needed.

        E[g^2]_t  = rho * E[g^2]_{t-1} + (1 - rho) * g_t^2
        d_t       = sqrt(E[dx^2]_{t-1} + eps) / sqrt(E[g^2]_t + eps) * g_t
        E[dx^2]_t = rho * E[dx^2]_{t-1} + (1 - rho) * d_t^2
        params   <- params - lr * d_t

    The paper's rule is `lr = 1`, the default here.  It is optax's
    `adadelta(learning_rate=lr)`; note that optax's `adadelta()` without a
    learning rate adds `+d_t` and so climbs the loss, while this one descends.
    Zeiler, "ADADELTA: An Adaptive Learning Rate Method", arXiv:1212.5701, 2012.
    """
    return chain(
        transforms.scale_by_adadelta(rho=rho, eps=eps),
        transforms.scale_by_learning_rate(learning_rate),
    )


def adam(
    learning_rate: ScalarOrSchedule,
    b1: Float = 0.9,
    b2: Float = 0.999,
    eps: Float = 1e-8,
    eps_root: Float = 0.0,
    *,
    nesterov: bool = False,
) -> GradientTransformation:
    """Adam: momentum divided by a moving RMS, both corrected for their zero start.

        m_t = b1 * m_{t-1} + (1 - b1) * g_t
        v_t = b2 * v_{t-1} + (1 - b2) * g_t^2
        params <- params - lr * (m_t / (1 - b1^t)) / (sqrt(v_t / (1 - b2^t) + eps_root) + eps)

    `nesterov=True` is `nadam`.  Kingma and Ba, "Adam: A Method for
    Stochastic Optimization", ICLR 2015 (Algorithm 1).
    """
    return chain(
        transforms.scale_by_adam(b1=b1, b2=b2, eps=eps, eps_root=eps_root, nesterov=nesterov),
        transforms.scale_by_learning_rate(learning_rate),
    )


def adamw(
    learning_rate: ScalarOrSchedule,
    b1: Float = 0.9,
    b2: Float = 0.999,
    eps: Float = 1e-8,
    eps_root: Float = 0.0,
    *,
    weight_decay: ScalarOrSchedule = 1e-4,
    mask: Any = None,
) -> GradientTransformation:
    """AdamW: Adam with weight decay decoupled from the gradient's moments.

        u_t = (m_t / (1 - b1^t)) / (sqrt(v_t / (1 - b2^t) + eps_root) + eps)
        params <- params - lr * (u_t + weight_decay * params)

    with `m_t`, `v_t` as in `adam`.  `mask` (a tree of booleans or a function
    `params -> tree`) selects the leaves that decay.  `weight_decay` and
    `mask` are keyword-only: optax's sixth and seventh arguments are
    `mu_dtype` and `weight_decay`, so a positional weight decay would land
    elsewhere.  Loshchilov and Hutter, "Decoupled Weight Decay
    Regularization", ICLR 2019.
    """
    return chain(
        transforms.scale_by_adam(b1=b1, b2=b2, eps=eps, eps_root=eps_root),
        transforms.add_decayed_weights(weight_decay, mask),
        transforms.scale_by_learning_rate(learning_rate),
    )


def nadam(
    learning_rate: ScalarOrSchedule,
    b1: Float = 0.9,
    b2: Float = 0.999,
    eps: Float = 1e-8,
    eps_root: Float = 0.0,
) -> GradientTransformation:
    """NAdam: Adam whose momentum looks one step ahead (Nesterov).

        m_t, v_t as in `adam`
        m^_t = b1 * m_t / (1 - b1^(t+1)) + (1 - b1) * g_t / (1 - b1^t)
        params <- params - lr * m^_t / (sqrt(v_t / (1 - b2^t) + eps_root) + eps)

    optax's `nadam` (without Dozat's extra factor `b2` on `v_t`, as other
    implementations).  Dozat, "Incorporating Nesterov Momentum into Adam",
    ICLR 2016 workshop.
    """
    return adam(learning_rate, b1, b2, eps, eps_root, nesterov=True)


def amsgrad(
    learning_rate: ScalarOrSchedule,
    b1: Float = 0.9,
    b2: Float = 0.999,
    eps: Float = 1e-8,
    eps_root: Float = 0.0,
    *,
    bias_correction_mu: bool = True,
    bias_correction_nu: bool = True,
) -> GradientTransformation:
    """AMSGrad: Adam divided by the largest (bias-corrected) second moment so far.

        m_t, v_t as in `adam`;  w_t = max(w_{t-1}, v_t / (1 - b2^t)),  w_0 = 0
        params <- params - lr * (m_t / (1 - b1^t)) / (sqrt(w_t + eps_root) + eps)

    The bias corrections are optax's default; the paper has neither
    (`bias_correction_mu=False, bias_correction_nu=False`; keyword-only here,
    as optax's sixth argument is `mu_dtype`).  Reddi, Kale and Kumar, "On the
    Convergence of Adam and Beyond", ICLR 2018.
    """
    return chain(
        transforms.scale_by_amsgrad(
            b1=b1, b2=b2, eps=eps, eps_root=eps_root,
            bias_correction_mu=bias_correction_mu, bias_correction_nu=bias_correction_nu,
        ),
        transforms.scale_by_learning_rate(learning_rate),
    )  # fmt: skip


def adamax(
    learning_rate: ScalarOrSchedule, b1: Float = 0.9, b2: Float = 0.999, eps: Float = 1e-8
) -> GradientTransformation:
    """AdaMax: Adam with the infinity norm in place of the RMS.

        m_t = b1 * m_{t-1} + (1 - b1) * g_t
        v_t = max(|g_t| + eps, b2 * v_{t-1}),    v_0 = 0
        params <- params - lr * (m_t / (1 - b1^t)) / v_t

    Kingma and Ba, "Adam: A Method for Stochastic Optimization", ICLR 2015
    (Section 7.1, Algorithm 2; its default learning rate is 0.002).
    """
    return chain(transforms.scale_by_adamax(b1=b1, b2=b2, eps=eps), transforms.scale_by_learning_rate(learning_rate))


def lion(
    learning_rate: ScalarOrSchedule,
    b1: Float = 0.9,
    b2: Float = 0.99,
    *,
    weight_decay: ScalarOrSchedule = 1e-3,
    mask: Any = None,
) -> GradientTransformation:
    """Lion: signed steps of one size, with decoupled weight decay.

        u_t = sign(b1 * m_{t-1} + (1 - b1) * g_t)
        m_t = b2 * m_{t-1} + (1 - b2) * g_t
        params <- params - lr * (u_t + weight_decay * params)

    Every coordinate moves by `lr` (plus the decay), so Lion's learning rate
    is typically 3-10 times smaller than AdamW's and its weight decay as
    many times larger.  `weight_decay` and `mask` (as in `adamw`) are
    keyword-only: optax's fourth argument is `mu_dtype`.  Chen et al.,
    "Symbolic Discovery of Optimization Algorithms", NeurIPS 2023.
    """
    return chain(
        transforms.scale_by_lion(b1=b1, b2=b2),
        transforms.add_decayed_weights(weight_decay, mask),
        transforms.scale_by_learning_rate(learning_rate),
    )


OPTIMIZERS: MappingProxyType[str, Callable[..., GradientTransformation]] = MappingProxyType(
    {
        "gd": gd,
        "sgd": sgd,
        "minibatch": minibatch,
        "momentum": momentum,
        "nesterov": _nesterov,
        "adagrad": adagrad,
        "rmsprop": rmsprop,
        "adadelta": adadelta,
        "adam": adam,
        "adamw": adamw,
        "nadam": nadam,
        "amsgrad": amsgrad,
        "adamax": adamax,
        "lion": lion,
    }
)
"""The optimizers `get` knows, by name."""

DEFAULT_LEARNING_RATES: MappingProxyType[str, float] = MappingProxyType(
    {
        "gd": 0.1,
        "sgd": 0.01,
        "minibatch": 0.1,
        "momentum": 0.01,
        "nesterov": 0.01,
        "adagrad": 0.01,
        "rmsprop": 0.001,
        "adadelta": 1.0,
        "adam": 0.001,
        "adamw": 0.001,
        "nadam": 0.001,
        "amsgrad": 0.001,
        "adamax": 0.002,
        "lion": 0.0001,
    }
)
"""The learning rate `get` uses when none is given: common starting points."""


def _suggest(word: str, choices) -> str:
    close = difflib.get_close_matches(word, list(choices), n=3, cutoff=0.5)
    if word in ("lr", "step_size") and "learning_rate" in choices:
        close = ["learning_rate"]
    return f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


def get(name: str, learning_rate: Any = None, **hyperparameters: Any) -> GradientTransformation:
    """Build an optimizer by name, e.g. `get('adam', learning_rate=1e-3, b1=0.8)`
    or `get('adam', 1e-3)` (the learning rate second, as `adam(1e-3)` takes it).

    Names (case-insensitive): gd, sgd, minibatch, momentum, nesterov
    (momentum with `nesterov=True`), adagrad, rmsprop, adadelta, adam,
    adamw, nadam, amsgrad, adamax, lion.  Without `learning_rate` (or with None), `DEFAULT_LEARNING_RATES[name]`
    is used.  An unknown name or hyperparameter raises `ValueError` listing
    the valid ones.
    """
    key = registry_key(str(name))
    if key not in OPTIMIZERS:
        raise ValueError(
            f"unknown optimizer {name!r}; valid names: {', '.join(OPTIMIZERS)}." + _suggest(key, OPTIMIZERS)
        )
    build = OPTIMIZERS[key]
    valid = list(inspect.signature(build).parameters)
    for keyword in hyperparameters:
        if keyword not in valid:
            raise ValueError(
                f"{key} has no hyperparameter {keyword!r}; valid: {', '.join(valid)}." + _suggest(keyword, valid)
            )
    learning_rate = DEFAULT_LEARNING_RATES[key] if learning_rate is None else learning_rate
    return build(learning_rate=learning_rate, **hyperparameters)


__all__ = [
    "DEFAULT_LEARNING_RATES",
    "OPTIMIZERS",
    "adadelta",
    "adagrad",
    "adam",
    "adamax",
    "adamw",
    "amsgrad",
    "gd",
    "get",
    "lion",
    "minibatch",
    "momentum",
    "nadam",
    "rmsprop",
    "sgd",
]
