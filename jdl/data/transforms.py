"""Batch transforms: normalization, one-hot labels, and CIFAR-style augmentation.

Host transforms are small constructors that return `fn(batch, rng=None) ->
batch` on NumPy batch dicts (`{'image': (B, H, W, C), 'label': (B,)}`); they
return a new dict and leave the input alone. Deterministic ones ignore
`rng`; random ones need a `np.random.Generator`, which the Loader passes
(derived from `(seed, epoch, step)`, so augmentation is reproducible).
`compose(*fns)` chains them, passing the same generator along:

    augment = compose(random_crop(4), random_flip(), normalize(*CIFAR10_MEAN_STD))
    train = jdl.data.load('cifar10', split='train', batch_size=128, transform=augment)

The same augmentation runs on the accelerator, inside a jitted step, with an
explicit key: `random_crop_device(key, images, padding)` and
`random_flip_device(key, images)` on a (B, H, W, C) array.

Random crop with padding and horizontal flip are the standard CIFAR
augmentation (He et al., "Deep Residual Learning for Image Recognition",
2016, section 4.2: "4 pixels are padded on each side, and a 32x32 crop is
randomly sampled from the padded image or its horizontal flip").
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence

import numpy as np

from jdl._checks import is_int, scalar

__all__ = [
    "CIFAR100_MEAN_STD",
    "CIFAR10_MEAN_STD",
    "FASHION_MNIST_MEAN_STD",
    "MNIST_MEAN_STD",
    "MEAN_STD",
    "channel_mean_std",
    "compose",
    "normalize",
    "one_hot",
    "random_crop",
    "random_crop_device",
    "random_flip",
    "random_flip_device",
    "wants_rng",
]

HostTransform = Callable[..., dict]

# Per-channel (mean, std) of the training images scaled to [0, 1].
# fashion_mnist and mnist_sample: computed here with channel_mean_std on the
# data (Debian's Fashion-MNIST: 0.28604, 0.35302). mnist: the usual values
# (PyTorch examples/mnist), which mnist_sample agrees with to 3 decimals.
# cifar10/cifar100: the usual values of the 50,000 training images (std over
# all pixels, not the mean of per-image stds), as used e.g. by airbench.
MNIST_MEAN_STD = ((0.1307,), (0.3081,))
FASHION_MNIST_MEAN_STD = ((0.2860,), (0.3530,))
CIFAR10_MEAN_STD = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
CIFAR100_MEAN_STD = ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))
MEAN_STD = {
    "mnist": MNIST_MEAN_STD,
    "mnist_sample": ((0.1309,), (0.3080,)),
    "fashion_mnist": FASHION_MNIST_MEAN_STD,
    "cifar10": CIFAR10_MEAN_STD,
    "cifar100": CIFAR100_MEAN_STD,
}


def channel_mean_std(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation over all images and pixels of (N, H, W, C)."""
    images = np.asarray(images, np.float64)
    return (tuple(images.mean(axis=(0, 1, 2)).tolist()),
            tuple(images.std(axis=(0, 1, 2)).tolist()))


def wants_rng(fn: Callable) -> bool:
    """True when `fn` is to be called as `fn(batch, rng)`: it takes a second
    positional argument that is required or named `rng` (jdl's transforms:
    `fn(batch, rng=None)`). A second parameter with a default under another
    name (`def scale(batch, factor=2.0)`) is left to its default: `fn(batch)`."""
    try:
        signature = inspect.signature(fn)
        signature.bind(None, None)
    except (TypeError, ValueError):  # ValueError: no signature (some builtins)
        return False
    positional = [p for p in signature.parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(positional) < 2:
        return True  # *args takes it
    second = positional[1]
    return second.default is second.empty or second.name == "rng"


def compose(*fns: HostTransform) -> HostTransform:
    """`compose(f, g)(batch, rng) == g(f(batch, rng), rng)`: applies left to right.

    Each function may take `(batch, rng)` or just `(batch)`.
    """
    for position, fn in enumerate(fns, 1):
        if not callable(fn):
            raise TypeError(f"compose: every argument must be a transform (a callable); argument {position} "
                            f"is {fn!r}")
    plan = [(fn, wants_rng(fn)) for fn in fns]

    def composed(batch: dict, rng: np.random.Generator | None = None) -> dict:
        for fn, wants_rng in plan:
            batch = fn(batch, rng) if wants_rng else fn(batch)
        return batch

    return composed


def normalize(mean: float | Sequence[float], std: float | Sequence[float]) -> HostTransform:
    """`image <- (image - mean) / std` per channel (broadcast over the last axis), float32."""
    mean_arr = np.asarray(mean, np.float32).reshape(-1)
    std_arr = np.asarray(std, np.float32).reshape(-1)
    if not np.all(np.isfinite(mean_arr)):
        raise ValueError(f"normalize: mean must be finite; got {mean}")
    if not np.all(np.isfinite(std_arr) & (std_arr > 0)):
        raise ValueError(f"normalize: std must be positive and finite; got {std}")
    if mean_arr.size > 1 and std_arr.size > 1 and mean_arr.size != std_arr.size:
        raise ValueError(f"normalize: mean and std must have one value each or one per channel, as many of "
                         f"each; got {mean_arr.size} means and {std_arr.size} stds")
    inv_std = np.float32(1) / std_arr

    def fn(batch: dict, rng: np.random.Generator | None = None) -> dict:
        del rng
        image = batch["image"]
        dtype = np.asarray(image).dtype
        if np.issubdtype(dtype, np.integer) or dtype == np.bool_:  # 0-255 pixels against [0, 1] constants
            raise ValueError(f"normalize: images must be floating point, scaled as mean and std are (a Loader's "
                             f"are in [0, 1]); got {np.asarray(image).dtype} images")
        for what, values in (("means", mean_arr), ("stds", std_arr)):
            if values.size not in (1, image.shape[-1]):
                raise ValueError(f"normalize has {values.size} channel {what}; the images have "
                                 f"{image.shape[-1]} channels")
        return {**batch, "image": ((image - mean_arr) * inv_std).astype(np.float32)}

    return fn


def one_hot(num_classes: int) -> HostTransform:
    """`label` (B,) int -> (B, num_classes) float32 with a 1 at the label."""
    count = _as_int(num_classes)
    if count is None or count < 1:
        raise ValueError(f"one_hot: num_classes must be an int >= 1; got {num_classes!r}")
    num_classes = count
    eye = np.eye(num_classes, dtype=np.float32)

    def fn(batch: dict, rng: np.random.Generator | None = None) -> dict:
        del rng
        labels = np.asarray(batch["label"])
        if not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"one_hot: labels must be integer class indices; got {labels.dtype} labels of "
                             f"shape {labels.shape} (one-hot already?)")
        if labels.ndim != 1:
            raise ValueError(f"one_hot: labels must have shape (batch,); got shape {labels.shape}")
        if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
            raise ValueError(f"one_hot: labels must be in [0, {num_classes}); got values "
                             f"{int(labels.min())}..{int(labels.max())}")
        return {**batch, "label": eye[labels]}

    return fn


def _as_int(value) -> int | None:
    """``value`` as a Python int when it is an integer (Python's, NumPy's, a
    0-d JAX one; not a bool), else None."""
    value = scalar(value)
    return int(value) if is_int(value) else None


def _check_padding(name: str, padding) -> int:
    number = _as_int(padding)
    if number is None or number < 0:
        raise ValueError(f"{name}: padding must be an int >= 0 (pixels per side); got {padding!r}")
    return number


def _check_batch_of_images(name: str, images) -> None:
    """``images`` is a batch ``(B, H, W, C)``: one image alone would be taken for a batch of rows."""
    if len(np.shape(images)) != 4:
        raise ValueError(f"{name}: images must be a batch of shape (B, H, W, C); got shape {np.shape(images)}"
                         f" (one image: add the batch axis, e.g. image[None])")


def _require_rng(rng, name: str) -> np.random.Generator:
    if rng is None:
        raise ValueError(f"{name} is random and needs a np.random.Generator: call it as "
                         f"fn(batch, rng) (the Loader does)")
    return rng


def random_crop(padding: int) -> HostTransform:
    """Zero-pads each image by `padding` pixels per side and crops a random window of its size.

    Every image of the batch gets its own offset, uniform in [0, 2 * padding]
    along each axis.
    """
    padding = _check_padding("random_crop", padding)

    def fn(batch: dict, rng: np.random.Generator | None = None) -> dict:
        rng = _require_rng(rng, "random_crop")
        images = np.asarray(batch["image"])
        _check_batch_of_images("random_crop", images)
        b, h, w, _ = images.shape
        if padding == 0:
            return dict(batch)
        padded = np.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
        dy = rng.integers(0, 2 * padding + 1, size=b)
        dx = rng.integers(0, 2 * padding + 1, size=b)
        rows = (dy[:, None] + np.arange(h))[:, :, None]          # (B, H, 1)
        cols = (dx[:, None] + np.arange(w))[:, None, :]          # (B, 1, W)
        cropped = padded[np.arange(b)[:, None, None], rows, cols]  # (B, H, W, C)
        return {**batch, "image": cropped}

    return fn


def random_flip() -> HostTransform:
    """Flips each image left-right with probability 1/2."""

    def fn(batch: dict, rng: np.random.Generator | None = None) -> dict:
        rng = _require_rng(rng, "random_flip")
        images = np.asarray(batch["image"])
        _check_batch_of_images("random_flip", images)
        flip = rng.random(images.shape[0]) < 0.5
        return {**batch, "image": np.where(flip[:, None, None, None], images[:, :, ::-1], images)}

    return fn


def random_crop_device(key, images, padding: int):
    """Jittable random crop with zero padding on (B, H, W, C) `images`; `padding` is static.

    Same distribution as `random_crop` (its own offsets per image, uniform in
    [0, 2 * padding]), drawn from the JAX `key`.
    """
    import jax
    import jax.numpy as jnp

    padding = _check_padding("random_crop_device", padding)
    _check_batch_of_images("random_crop_device", images)
    if padding == 0:
        return images
    b, h, w, c = images.shape
    padded = jnp.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    key_y, key_x = jax.random.split(key)
    dy = jax.random.randint(key_y, (b,), 0, 2 * padding + 1)
    dx = jax.random.randint(key_x, (b,), 0, 2 * padding + 1)

    def crop(image, y, x):
        return jax.lax.dynamic_slice(image, (y, x, 0), (h, w, c))

    return jax.vmap(crop)(padded, dy, dx)


def random_flip_device(key, images):
    """Jittable left-right flip of each image of (B, H, W, C) `images` with probability 1/2."""
    import jax
    import jax.numpy as jnp

    _check_batch_of_images("random_flip_device", images)
    flip = jax.random.bernoulli(key, 0.5, (images.shape[0],))
    return jnp.where(flip[:, None, None, None], images[:, :, ::-1], images)
