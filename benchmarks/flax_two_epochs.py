"""The reference for ``jdl train ... --model cnn --optimizer adam --epochs 2``.

flax.linen + optax: the flax examples/mnist CNN, Adam 1e-3, batch 32 (``jdl
train``'s default; ``--batch-size B`` for another), the flax example's loop,
2 epochs on real Fashion-MNIST; prints the test accuracy after each epoch for
each seed (initialization key and batch order), to set beside ``jdl train ...
--seed S``.

Usage: python benchmarks/flax_two_epochs.py [--batch-size B] [SEED ...]   (default 0 1 2 3)
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

if __package__ in (None, ""):
    import common  # type: ignore[no-redef]
    import train_epoch  # type: ignore[no-redef]
else:
    from benchmarks import common, train_epoch


def main(seeds: list[int], batch: int = 32) -> None:
    real = common.fashion_mnist()
    if real is None:
        raise SystemExit("real Fashion-MNIST not found (Debian's dataset-fashion-mnist or JDL_FASHION_MNIST_DIR)")
    train, test, _ = real
    test_images, test_labels = jnp.asarray(test["image"]), jnp.asarray(test["label"])
    n = len(train["label"]) // batch * batch
    for seed in seeds:
        module = train_epoch.FlaxCNN()
        params = module.init(jax.random.key(seed), jnp.zeros((1, 28, 28, 1)))["params"]
        state = train_epoch.train_state.TrainState.create(apply_fn=module.apply, params=params,
                                                          tx=train_epoch.optax.adam(1e-3))  # fmt: skip
        epoch, _ = train_epoch.compile_flax_epoch(state, "loop", train, batch)
        rng = np.random.default_rng(seed)
        accuracies = []
        for _ in range(2):
            state = epoch(state, rng.permutation(len(train["label"]))[:n].reshape(-1, batch))
            accuracies.append(round(float(train_epoch.flax_accuracy(state, test_images, test_labels)), 4))
        print(f"flax+optax batch {batch} seed {seed}: test accuracy after each epoch {accuracies}", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("seeds", type=int, nargs="*", default=[0, 1, 2, 3])
    args = parser.parse_args()
    main(args.seeds, args.batch_size)
