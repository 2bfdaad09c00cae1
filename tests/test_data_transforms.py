"""jdl.data.transforms: host and on-device versions."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jdl.data as jd
from jdl.data import transforms as T


def batch_of(b=6, h=5, w=7, c=3, seed=0):
    rng = np.random.default_rng(seed)
    return {"image": rng.random((b, h, w, c), dtype=np.float32),
            "label": rng.integers(0, 10, b).astype(np.int32)}


def windows(image, padding):
    """All crops of the zero-padded image, keyed by offset."""
    h, w = image.shape[:2]
    padded = np.pad(image, ((padding, padding), (padding, padding), (0, 0)))
    return {(y, x): padded[y:y + h, x:x + w]
            for y in range(2 * padding + 1) for x in range(2 * padding + 1)}


def test_normalize_per_channel():
    batch = batch_of()
    out = T.normalize((0.1, 0.2, 0.3), (0.5, 0.25, 2.0))(batch)
    expected = (batch["image"] - np.array([0.1, 0.2, 0.3])) / np.array([0.5, 0.25, 2.0])
    np.testing.assert_allclose(out["image"], expected, rtol=1e-6, atol=1e-6)
    assert out["image"].dtype == np.float32 and out["label"] is batch["label"]
    with pytest.raises(ValueError, match="channel"):
        T.normalize((0.1, 0.2), (1.0, 1.0))(batch)
    with pytest.raises(ValueError, match="positive"):
        T.normalize(0.0, 0.0)


def test_normalize_takes_scaled_floats_and_gives_float32_and_one_hot_takes_a_vector_of_labels():
    """uint8 pixels against [0, 1] constants came out in the hundreds;
    float64 images came out float64; (B, 1) labels came out (B, 1, K)."""
    batch = batch_of()
    with pytest.raises(ValueError, match=r"normalize: images must be floating point, .*got uint8 images"):
        T.normalize(*T.MNIST_MEAN_STD)({**batch, "image": (255 * batch["image"]).astype(np.uint8)})
    out = T.normalize(0.5, 0.25)({**batch, "image": batch["image"].astype(np.float64)})["image"]
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, (batch["image"].astype(np.float64) - 0.5) / 0.25, rtol=1e-6)
    with pytest.raises(ValueError, match=r"one_hot: labels must have shape \(batch,\); got shape \(6, 1\)"):
        T.one_hot(10)({**batch, "label": batch["label"][:, None]})
    bf16 = batch["image"].astype(jnp.bfloat16)  # a float that NumPy does not count as np.floating
    out = T.normalize(0.5, 0.25)({**batch, "image": bf16})["image"]
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, (bf16.astype(np.float64) - 0.5) / 0.25, rtol=1e-6)
    with pytest.raises(ValueError, match=r"one_hot: labels must be in \[0, 3\); got values 0\.\.9"):
        T.one_hot(3)({**batch, "label": np.arange(6) + 4 * (np.arange(6) > 2)})


def test_normalize_refuses_stds_that_do_not_fit_the_channels():
    gray = {"image": np.random.default_rng(0).random((2, 3, 3, 1), dtype=np.float32), "label": np.zeros(2)}
    with pytest.raises(ValueError, match=r"normalize has 2 channel stds; the images have 1 channels"):
        T.normalize((0.5,), (0.2, 0.3))(gray)
    with pytest.raises(ValueError, match=r"one value each or one per channel, as many of each; got 3 means and 2"):
        T.normalize((0.1, 0.2, 0.3), (0.5, 0.25))
    out = T.normalize(0.5, (0.2,))(gray)["image"]
    np.testing.assert_allclose(out, (gray["image"].astype(np.float64) - 0.5) / 0.2, rtol=1e-6)


@pytest.mark.parametrize(("mean", "std", "message"), [
    (0.1, float("nan"), r"std must be positive and finite; got nan"),
    (0.1, float("inf"), r"std must be positive and finite; got inf"),
    (0.1, (0.3, -0.2, 0.3), r"std must be positive and finite"),
    (float("nan"), 0.3, r"mean must be finite; got nan"),
    ((0.1, float("-inf"), 0.2), 0.3, r"mean must be finite"),
])
def test_normalize_refuses_a_mean_or_std_that_would_ruin_every_image(mean, std, message):
    with pytest.raises(ValueError, match=message):
        T.normalize(mean, std)


def test_normalize_constants_match_the_data():
    images = jd.load("mnist_sample", split="train", batch_size=10).arrays()["image"]
    mean, std = T.channel_mean_std(images)
    np.testing.assert_allclose(mean, T.MEAN_STD["mnist_sample"][0], atol=1e-4)
    np.testing.assert_allclose(std, T.MEAN_STD["mnist_sample"][1], atol=1e-4)
    np.testing.assert_allclose(mean, T.MNIST_MEAN_STD[0], atol=2e-3)


def test_one_hot():
    out = T.one_hot(10)(batch_of())
    assert out["label"].shape == (6, 10) and out["label"].dtype == np.float32
    assert np.array_equal(out["label"].argmax(1), batch_of()["label"])
    assert np.array_equal(out["label"].sum(1), np.ones(6))
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        T.one_hot(3)(batch_of())


@pytest.mark.parametrize("num_classes", [2.5, "10", 0, True])
def test_one_hot_refuses_a_class_count_that_is_not_a_positive_int(num_classes):
    with pytest.raises(ValueError, match=r"one_hot: num_classes must be an int >= 1; got"):
        T.one_hot(num_classes)


@pytest.mark.parametrize("count", [np.int64(10), jnp.int32(10)])
def test_one_hot_and_crops_take_numpy_and_jax_integers(count):
    out = T.one_hot(count)(batch_of())
    assert out["label"].shape == (6, 10)
    assert T.random_crop(count // 5)(batch_of(), np.random.default_rng(0))["image"].shape == (6, 5, 7, 3)
    assert T.random_crop_device(jax.random.key(0), jnp.ones((2, 5, 5, 1)), count // 5).shape == (2, 5, 5, 1)


def test_one_hot_refuses_labels_that_are_not_class_indices():
    once = T.one_hot(10)(batch_of())
    expected = r"labels must be integer class indices; got float32 labels of shape \(6, 10\)"
    with pytest.raises(ValueError, match=expected):
        T.one_hot(10)(once)


@pytest.mark.parametrize("padding", [-1, 1.5, "2"])
def test_crops_refuse_a_padding_that_is_not_a_non_negative_int(padding):
    with pytest.raises(ValueError, match=r"random_crop: padding must be an int >= 0"):
        T.random_crop(padding)
    with pytest.raises(ValueError, match=r"random_crop_device: padding must be an int >= 0"):
        T.random_crop_device(jax.random.key(0), jnp.ones((2, 5, 5, 1)), padding)


def test_augmentations_refuse_one_image_without_a_batch_axis():
    image = np.random.default_rng(0).random((5, 7, 3), dtype=np.float32)
    rng = np.random.default_rng(0)
    expected = r"images must be a batch of shape \(B, H, W, C\); got shape \(5, 7, 3\)"
    with pytest.raises(ValueError, match="random_flip: " + expected):
        T.random_flip()({"image": image}, rng)
    with pytest.raises(ValueError, match="random_crop: " + expected):
        T.random_crop(2)({"image": image}, rng)
    with pytest.raises(ValueError, match="random_flip_device: " + expected):
        T.random_flip_device(jax.random.key(0), jnp.asarray(image))
    with pytest.raises(ValueError, match="random_crop_device: " + expected):
        T.random_crop_device(jax.random.key(0), jnp.asarray(image), 2)


@pytest.mark.parametrize("padding", [0, 1, 4])
def test_random_crop_host_gives_windows_of_the_padded_image(padding):
    batch = batch_of(b=40)
    out = T.random_crop(padding)(batch, np.random.default_rng(0))
    assert out["image"].shape == batch["image"].shape
    seen = set()
    for image, cropped in zip(batch["image"], out["image"], strict=True):
        matches = [k for k, v in windows(image, padding).items() if np.array_equal(v, cropped)]
        assert matches
        seen.update(matches)
    if padding:
        assert len(seen) > 5  # offsets vary between images
    again = T.random_crop(padding)(batch, np.random.default_rng(0))
    assert np.array_equal(out["image"], again["image"])  # same generator, same crops


def test_random_flip_host():
    batch = batch_of(b=64)
    out = T.random_flip()(batch, np.random.default_rng(1))["image"]
    flipped = [np.array_equal(o, i[:, ::-1]) for o, i in zip(out, batch["image"], strict=True)]
    kept = [np.array_equal(o, i) for o, i in zip(out, batch["image"], strict=True)]
    assert all(f or k for f, k in zip(flipped, kept, strict=True))
    assert 10 < sum(flipped) < 54
    with pytest.raises(ValueError, match="Generator"):
        T.random_flip()(batch)


def test_compose_passes_rng_and_plain_functions():
    tag = lambda batch: {**batch, "tagged": True}  # noqa: E731 - a user's one-argument transform
    fn = T.compose(T.random_flip(), tag, T.normalize(0.5, 0.5), T.one_hot(10))
    out = fn(batch_of(), np.random.default_rng(0))
    assert out["tagged"] and out["label"].shape == (6, 10)
    assert T.wants_rng(fn) and not T.wants_rng(tag)
    with pytest.raises(TypeError, match=r"compose: every argument must be a transform \(a callable\); argument 2 "
                                        r"is 0\.5"):
        T.compose(tag, 0.5)


def test_a_transform_whose_second_parameter_has_a_default_keeps_it():
    def scale(batch, factor=2.0):  # a user's transform with an option, not a generator
        return {**batch, "image": batch["image"] * factor}

    def noisy(batch, rng):
        return {**batch, "image": batch["image"] + rng.normal(size=batch["image"].shape)}

    images = np.ones((4, 2, 2, 1), np.uint8) * 255
    loader = jd.Loader(images, np.zeros(4, np.int32), batch_size=4, shuffle=False, transform=scale)
    np.testing.assert_array_equal(next(iter(loader))["image"], np.full((4, 2, 2, 1), 2.0))
    assert not T.wants_rng(scale) and T.wants_rng(noisy) and T.wants_rng(lambda batch, *rest: batch)
    assert T.wants_rng(T.random_flip()) and T.wants_rng(lambda batch, rng=None: batch)


def test_loader_applies_augmentation_reproducibly():
    augment = T.compose(T.random_crop(2), T.random_flip(),
                        T.normalize(*T.MEAN_STD["mnist_sample"]))
    a = jd.load("mnist_sample", split="test", batch_size=100, transform=augment, seed=5)
    b = jd.load("mnist_sample", split="test", batch_size=100, transform=augment, seed=5)
    plain = jd.load("mnist_sample", split="test", batch_size=100, seed=5)
    for x, y, p in zip(a, b, plain, strict=True):
        assert np.array_equal(x["image"], y["image"])
        assert not np.array_equal(x["image"], p["image"])
        assert x["image"].shape == (100, 28, 28, 1)


@pytest.mark.parametrize("padding", [0, 2, 4])
def test_random_crop_device_is_jittable_and_correct(padding):
    images = batch_of(b=32, h=8, w=8, c=3)["image"]
    crop = jax.jit(T.random_crop_device, static_argnums=2)
    out = np.asarray(crop(jax.random.key(0), jnp.asarray(images), padding))
    assert out.shape == images.shape
    seen = set()
    for image, cropped in zip(images, out, strict=True):
        matches = [k for k, v in windows(image, padding).items() if np.array_equal(v, cropped)]
        assert matches
        seen.update(matches)
    if padding:
        assert len(seen) > 5
    same = np.asarray(crop(jax.random.key(0), jnp.asarray(images), padding))
    other = np.asarray(crop(jax.random.key(1), jnp.asarray(images), padding))
    assert np.array_equal(out, same)
    assert padding == 0 or not np.array_equal(out, other)


def test_random_flip_device_is_jittable_and_correct():
    images = batch_of(b=64)["image"]
    out = np.asarray(jax.jit(T.random_flip_device)(jax.random.key(3), jnp.asarray(images)))
    flipped = [np.array_equal(o, i[:, ::-1]) for o, i in zip(out, images, strict=True)]
    kept = [np.array_equal(o, i) for o, i in zip(out, images, strict=True)]
    assert all(f or k for f, k in zip(flipped, kept, strict=True))
    assert 10 < sum(flipped) < 54


def test_device_augmentation_inside_a_step():
    @jax.jit
    def step(key, images):
        k1, k2 = jax.random.split(key)
        images = T.random_flip_device(k1, T.random_crop_device(k2, images, 4))
        return images.mean()

    images = jnp.asarray(batch_of(b=8, h=32, w=32)["image"])
    assert np.isfinite(float(step(jax.random.key(0), images)))
