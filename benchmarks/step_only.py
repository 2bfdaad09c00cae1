"""The training step alone, jdl against the flax example's, interleaved.

Times 20 consecutive steps (batch 128, random data) of: flax+optax's lean
step (the one `train_epoch` times), the same with loss and accuracy returned
(what jdl's step computes), jdl's step with the carry donated (as `fit` runs
it) and without.  Separates the step's own cost from `fit`'s loop around it.

Usage: python benchmarks/step_only.py [MODEL] [REPEATS]   (MODEL: mlp, cnn, fmnist_2c2d)
"""

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
import train_epoch as te  # noqa: E402

from jdl import losses, optim  # noqa: E402
from jdl.train.engine import with_device_transform  # noqa: E402
from jdl.train.step import Carry, train_step  # noqa: E402


def main() -> None:
    name = sys.argv[1] if len(sys.argv) > 1 else "cnn"
    repeats = int(sys.argv[2]) if len(sys.argv) > 2 else 15
    size, count = 128, 20
    rng = np.random.default_rng(0)
    images = rng.random((size * count, 28, 28, 1), dtype=np.float32)
    labels = rng.integers(0, 10, size * count).astype(np.int32)
    batches = [(images[i * size : (i + 1) * size], labels[i * size : (i + 1) * size]) for i in range(count)]
    state = te._flax_state(te.FLAX[name](), (28, 28, 1))

    @jax.jit
    def flax_metrics_step(state, x, y):
        def loss_fn(params):
            logits = state.apply_fn({"params": params}, x)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), logits

        (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        return state.apply_gradients(grads=grads), {"loss": loss, "accuracy": jnp.mean(jnp.argmax(logits, -1) == y)}

    model, tx = te.JDL[name](), optim.adam(1e-3)
    params, model_state = model.init(jax.random.key(0), (1, 28, 28, 1))
    run = with_device_transform(train_step(model, losses.cross_entropy, tx, guard=False), None)
    key = jax.random.key(0)
    donated, plain = jax.jit(run, donate_argnums=0), jax.jit(run)

    def fresh_carry():
        return Carry(jax.tree_util.tree_map(jnp.copy, params), model_state, tx.init(params), jnp.int32(-1))

    def flax_loop(step, returns_metrics):
        s = state
        for x, y in batches:
            s = step(s, x, y)
            s = s[0] if returns_metrics else s
        return jax.block_until_ready(s)

    def jdl_loop(step):
        carry = fresh_carry()
        for i, (x, y) in enumerate(batches):
            carry, _ = step(carry, {"image": x, "label": y}, key, 0, i, i)
        return jax.block_until_ready(carry)

    variants = {
        "flax lean": lambda: flax_loop(te.flax_step, False),
        "flax +metrics": lambda: flax_loop(flax_metrics_step, True),
        "jdl donated": lambda: jdl_loop(donated),
        "jdl no donation": lambda: jdl_loop(plain),
    }
    for variant in variants.values():  # compile and warm up
        variant()
        variant()
    times: dict[str, list[float]] = {k: [] for k in variants}
    for r in range(repeats):
        order = list(variants)
        for k in order[r % 4 :] + order[: r % 4]:
            start = time.perf_counter()
            variants[k]()
            times[k].append(time.perf_counter() - start)
    base = statistics.median(times["flax lean"])
    for k, v in times.items():
        print(f"{k:18s} {statistics.median(v) / count * 1e3:7.2f} ms/step  ratio {statistics.median(v) / base:.3f}")


if __name__ == "__main__":
    main()
