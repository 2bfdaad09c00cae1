"""Each optimizer minimizes standard test functions from a fixed start.

Rosenbrock's banana valley from (-1.2, 1) (minimum 0 at (1, 1)) and a
rotated quadratic with condition number 100 (minimum 0 at (1, ..., 1)); the
minima are known analytically, so no reference implementation is needed.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jdl.optim as jo

_Q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(10, 10)))
HESSIAN = jnp.asarray(_Q @ np.diag(np.logspace(0, 2, 10)) @ _Q.T, jnp.float32)


def rosenbrock(params):
    x, y = params["x"], params["y"]
    return (1 - x) ** 2 + 100 * (y - x**2) ** 2


def quadratic(params):
    d = params["z"] - 1.0
    return 0.5 * jnp.dot(d, jnp.dot(HESSIAN, d, precision="highest"), precision="highest")


ROSENBROCK_START = {"x": jnp.float32(-1.2), "y": jnp.float32(1.0)}
QUADRATIC_START = {"z": jnp.zeros(10, jnp.float32)}


def minimize(tx, f, params, steps):
    def body(carry, _):
        p, state = carry
        updates, state = tx.update(jax.grad(f)(p), state, p)
        return (jo.apply_updates(p, updates), state), None

    return jax.lax.scan(body, (params, tx.init(params)), None, length=steps)[0][0]


# (optimizer on Rosenbrock, optimizer on the quadratic)
CASES = {
    "gd": (jo.gd(1.5e-3), jo.gd(0.019)),
    "sgd_momentum": (jo.sgd(2e-4, momentum=0.9), jo.sgd(5e-3, momentum=0.9)),
    "nesterov": (jo.momentum(2e-4, 0.9, nesterov=True), jo.momentum(5e-3, 0.9, nesterov=True)),
    "adagrad": (jo.adagrad(0.5), jo.adagrad(0.5)),
    "rmsprop": (jo.rmsprop(3e-3), jo.rmsprop(2e-3)),
    "rmsprop_centered": (jo.rmsprop(1e-3, centered=True), jo.rmsprop(1e-3, centered=True)),
    # Zeiler's rule (learning rate 1); a small eps lets it settle at the bottom
    "adadelta": (jo.adadelta(rho=0.9, eps=1e-8), jo.adadelta(rho=0.9, eps=1e-8)),
    "adam": (jo.adam(0.02), jo.adam(0.05)),
    "adamw": (jo.adamw(0.02, weight_decay=0.0), jo.adamw(0.05, weight_decay=1e-6)),
    "nadam": (jo.nadam(0.01), jo.nadam(0.05)),
    # the largest second moment is kept: Rosenbrock's first gradients (~200) hold steps small for long
    "amsgrad": (jo.amsgrad(0.2), jo.amsgrad(0.05)),
    "adamax": (jo.adamax(0.02), jo.adamax(0.05)),
    # steps of exactly lr: they settle only as the learning rate decays
    "lion": (jo.lion(jo.cosine_decay(0.02, 5000), weight_decay=0.0),
             jo.lion(jo.cosine_decay(0.02, 3000), weight_decay=0.0)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_minimizes_rosenbrock_and_an_ill_conditioned_quadratic(name):
    on_rosenbrock, on_quadratic = CASES[name]

    @jax.jit
    def run():
        return (
            minimize(on_rosenbrock, rosenbrock, ROSENBROCK_START, 5000),
            minimize(on_quadratic, quadratic, QUADRATIC_START, 3000),
        )

    p_rosenbrock, p_quadratic = run()
    assert float(rosenbrock(ROSENBROCK_START)) == pytest.approx(24.2)
    assert float(rosenbrock(p_rosenbrock)) < 0.02
    assert abs(float(p_rosenbrock["x"]) - 1.0) < 0.1
    assert float(quadratic(p_quadratic)) < 1e-4 * float(quadratic(QUADRATIC_START))
    np.testing.assert_allclose(p_quadratic["z"], np.ones(10), atol=0.01)
