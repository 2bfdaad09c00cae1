"""jdl.data.Loader and load(): batching, order, position, errors (no TensorFlow, fast)."""

from __future__ import annotations

import json
import textwrap

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jdl.data as jd
from jdl.data import Loader

LAYOUT = {"batch_size": 10, "num_examples": 103, "shuffle": 1}  # make_loader's, as its state_dict says them


def make_loader(n=103, batch_size=10, **kwargs):
    images = np.arange(n, dtype=np.uint8).reshape(n, 1, 1, 1) * np.ones((1, 2, 3, 1), np.uint8)
    labels = np.arange(n) % 7
    return Loader(images, labels, batch_size=batch_size, **kwargs)


def epoch_ids(loader):
    """Example ids of one epoch, per batch (the synthetic images hold their own index)."""
    return [b["image"][:, 0, 0, 0].round(6) * 255 for b in loader]


def flat(batches):
    return np.concatenate(batches).round().astype(int)


# -- batches and epochs ----------------------------------------------------------


def test_batch_dtypes_shapes_and_range():
    loader = jd.load("mnist_sample", split="train", batch_size=128, seed=0)
    batch = next(iter(loader))
    assert batch["image"].shape == (128, 28, 28, 1) and batch["image"].dtype == np.float32
    assert batch["label"].shape == (128,) and batch["label"].dtype == np.int32
    assert 0.0 <= batch["image"].min() and batch["image"].max() <= 1.0
    assert loader.image_shape == (28, 28, 1) and loader.num_classes == 10
    assert loader.num_examples == 4000 and len(loader) == 4000 // 128


@pytest.mark.parametrize("drop_remainder, expected_len, last", [(True, 10, 10), (False, 11, 3)])
def test_drop_remainder_both_ways(drop_remainder, expected_len, last):
    loader = make_loader(103, 10, drop_remainder=drop_remainder, shuffle=True)
    batches = epoch_ids(loader)
    assert len(loader) == len(batches) == expected_len
    assert len(batches[-1]) == last
    ids = flat(batches)
    assert len(set(ids)) == len(ids)  # no example twice
    if not drop_remainder:
        assert sorted(ids) == list(range(103))  # every example exactly once
    else:  # the dropped ones are the tail of the permutation
        assert sorted(ids) == sorted(loader.permutation(0)[:100])


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 60), b=st.integers(1, 70), drop=st.booleans(), shuffle=st.booleans(),
       seed=st.integers(0, 2**31))
def test_epoch_is_the_permutation_in_batches(n, b, drop, shuffle, seed):
    if drop and b > n:
        with pytest.raises(ValueError, match="drop_remainder"):
            make_loader(n, b, drop_remainder=drop, shuffle=shuffle, seed=seed)
        return
    loader = make_loader(n, b, drop_remainder=drop, shuffle=shuffle, seed=seed)
    ids = flat(epoch_ids(loader))
    perm = loader.permutation(0)
    assert sorted(perm) == list(range(n))
    assert list(ids) == list(perm[: len(loader) * b if drop else n])


def test_same_seed_same_order_and_next_epoch_reshuffles():
    a, b, c = (make_loader(seed=s, drop_remainder=False) for s in (3, 3, 4))
    first_a, first_b, first_c = flat(epoch_ids(a)), flat(epoch_ids(b)), flat(epoch_ids(c))
    assert np.array_equal(first_a, first_b)
    assert not np.array_equal(first_a, first_c)
    second_a = flat(epoch_ids(a))  # iterating again is the next epoch
    assert a.epoch == 2 and not np.array_equal(first_a, second_a)
    assert sorted(first_a) == sorted(second_a)
    assert np.array_equal(a.permutation(1), np.random.default_rng([3, 1]).permutation(103))


def test_no_shuffle_is_stored_order():
    loader = make_loader(shuffle=False, drop_remainder=False)
    assert list(flat(epoch_ids(loader))) == list(range(103))
    assert list(flat(epoch_ids(loader))) == list(range(103))


def test_defaults_shuffle_train_only():
    train = jd.load("mnist_sample", split="train", batch_size=100)
    test = jd.load("mnist_sample", split="test", batch_size=300)
    assert train.shuffle and train.drop_remainder
    assert not test.shuffle and not test.drop_remainder and len(test) == 4
    shuffled_test = jd.load("mnist_sample", split="test", batch_size=300, shuffle=True)
    assert shuffled_test.shuffle and not shuffled_test.drop_remainder


def test_arrays_match_batches_through_the_permutation():
    loader = jd.load("mnist_sample", split="test", batch_size=64, shuffle=True, seed=1,
                     drop_remainder=False)
    arrays = loader.arrays()
    assert arrays["image"].dtype == np.float32 and arrays["label"].dtype == np.int32
    assert arrays["image"].shape == (1000, 28, 28, 1)
    perm = loader.permutation(0)
    for step, batch in enumerate(loader):
        idx = perm[step * 64:(step + 1) * 64]
        assert np.array_equal(batch["image"], arrays["image"][idx])  # bit for bit
        assert np.array_equal(batch["label"], arrays["label"][idx])


def test_split_expressions():
    part = jd.load("mnist_sample", split="train[:25%]", batch_size=10)
    both = jd.load("mnist_sample", split="train[3990:]+test[:10]", batch_size=5, shuffle=False)
    assert part.num_examples == 1000 and both.num_examples == 20
    train = jd.load("mnist_sample", split="train", batch_size=10, shuffle=False).arrays()
    test = jd.load("mnist_sample", split="test", batch_size=10, shuffle=False).arrays()
    got = both.arrays()["label"]
    assert np.array_equal(got, np.concatenate([train["label"][3990:], test["label"][:10]]))


# -- position ---------------------------------------------------------------------


@pytest.mark.parametrize("stop_after", [0, 4, 9, 10, 13, 25])
def test_saved_position_resumes_exactly(stop_after):
    def transform(batch, rng):  # random, so the resumed rng must match too
        return {**batch, "noise": rng.random(3)}

    reference = make_loader(seed=7, transform=transform)
    stream = [b for _ in range(3) for b in reference]  # three epochs of 10 batches

    run = make_loader(seed=7, transform=transform)
    taken = []
    while len(taken) < stop_after:  # train on `stop_after` batches, then save
        for batch in run:
            taken.append(batch)
            if len(taken) == stop_after:
                break
    state = run.state_dict()
    assert state == {"epoch": stop_after // 10, "step": stop_after % 10, "seed": 7, **LAYOUT}

    resumed = make_loader(seed=0, transform=transform)  # the seed comes from the state
    resumed.load_state_dict(state)
    rest = []
    while len(taken) + len(rest) < len(stream):
        rest.extend(resumed)
    for want, got in zip(stream, taken + rest, strict=True):
        assert np.array_equal(want["image"], got["image"])
        assert np.array_equal(want["noise"], got["noise"])


def test_break_then_iterate_again_continues():
    loader = make_loader(seed=1)
    it = iter(loader)
    first = [next(it) for _ in range(3)]
    del it
    rest = list(loader)
    ids = flat([b["image"][:, 0, 0, 0] * 255 for b in first + rest])
    assert list(ids) == list(loader.permutation(0)[:100])
    assert loader.state_dict() == {"epoch": 1, "step": 0, "seed": 1, **LAYOUT}


def test_a_position_saved_in_a_checkpoint_loads_back(tmp_path):
    """jdl's checkpoints store numbers as 0-d arrays: the position round-trips."""
    from jdl.train import checkpoint

    loader = make_loader()
    loader.load_state_dict({"epoch": 1, "step": 3, "seed": 0})
    checkpoint.save(tmp_path, {"loader": loader.state_dict()})
    resumed = make_loader()
    resumed.load_state_dict(checkpoint.load_raw(tmp_path)["loader"])
    assert resumed.state_dict() == {"epoch": 1, "step": 3, "seed": 0, **LAYOUT}
    np.testing.assert_array_equal(next(iter(resumed))["label"], next(iter(loader))["label"])


def test_load_state_dict_validates():
    loader = make_loader()
    with pytest.raises(ValueError, match="missing"):
        loader.load_state_dict({"epoch": 0})
    with pytest.raises(ValueError, match="step"):
        loader.load_state_dict({"epoch": 0, "step": 11, "seed": 0})
    with pytest.raises(ValueError, match=r"must be integers; got \{'epoch': 0.5, 'step': 1.7\}"):
        loader.load_state_dict({"epoch": 0.5, "step": 1.7, "seed": 0})
    loader.load_state_dict({"epoch": np.int64(2), "step": 10, "seed": 0})  # end of epoch 2 = start of 3
    assert loader.state_dict() == {"epoch": 3, "step": 0, "seed": 0, **LAYOUT}

    # A state saved under another batch size, split size or order: its step names other examples here.
    saved = make_loader(batch_size=3, n=9)
    next(iter(saved))
    with pytest.raises(ValueError, match=r"saved by a loader with batch_size=3, num_examples=9, shuffle=1; this "
                                         r"one has batch_size=10, num_examples=103, shuffle=1: its step 1"):
        make_loader().load_state_dict(saved.state_dict())
    with pytest.raises(ValueError, match=r"shuffle=1; this one has .*shuffle=0"):
        make_loader(shuffle=False).load_state_dict(make_loader().state_dict())
    with pytest.raises(ValueError, match=r"must be integers; got \{'batch_size': 'ten'\}"):
        loader.load_state_dict({**loader.state_dict(), "batch_size": "ten"})


def test_a_position_is_json_for_sizes_and_seeds_given_as_numpy_integers():
    loader = make_loader(batch_size=np.int32(10), seed=np.int64(4))
    assert json.loads(json.dumps(loader.state_dict())) == {"epoch": 0, "step": 0, "seed": 4, **LAYOUT}


def test_a_failing_transform_does_not_skip_its_batch():
    """The position moves past a batch only once it is made: after a
    transform's error, iterating again gives that batch, and the epoch still
    holds every example once."""
    calls = []

    def flaky(batch):
        calls.append(len(calls))
        if len(calls) == 2:
            raise OSError("a transient failure")
        return batch

    loader = make_loader(seed=3, transform=flaky)
    taken = []
    with pytest.raises(OSError, match="transient"):
        for batch in loader:
            taken.append(batch)
    assert loader.state_dict()["step"] == 1
    taken += list(loader)
    ids = flat([b["image"][:, 0, 0, 0] * 255 for b in taken])
    assert list(ids) == list(make_loader(seed=3).permutation(0)[:100])


# -- errors -------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, match", [
    (dict(name="mnsit"), r"unknown dataset 'mnsit'.*'mnist'"),
    (dict(name="fashion-mnist"), r"unknown dataset.*'fashion_mnist'"),
    (dict(split="validation"), r"no split 'validation'.*\['test', 'train'\]"),
    (dict(split="train[:x]"), r"split"),
    (dict(batch_size=0), r"batch_size must be >= 1; got 0"),
    (dict(batch_size=2.5), r"batch_size must be an integer"),
    (dict(batch_size=4001), r"batch_size 4001 is larger than .*4000 examples"),
    (dict(seed=-1), r"seed must be an integer in \[0, 2\*\*32\); got -1"),
    (dict(seed=2**32), r"seed must be an integer in \[0, 2\*\*32\); got 4294967296"),
    (dict(shuffle="no"), r"shuffle must be True, False or None; got 'no'"),
    (dict(drop_remainder="False"), r"drop_remainder must be True, False or None; got 'False'"),
])
def test_bad_input_is_refused_clearly(kwargs, match):
    args = dict(name="mnist_sample", split="train", batch_size=32)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        jd.load(args.pop("name"), **args)


def test_download_must_be_a_boolean():
    with pytest.raises(ValueError, match=r"download must be True or False; got 'no'"):
        jd.load("mnist_sample", split="train", batch_size=32, download="no")


def test_the_stored_split_is_read_only():
    loader = jd.load("mnist_sample", split="test", batch_size=100)
    before = loader.arrays()["label"].copy()
    images, labels = loader.stored()
    for array in (images, labels):
        with pytest.raises(ValueError, match="read-only"):
            array[:] = 7
    np.testing.assert_array_equal(loader.arrays()["label"], before)


def test_a_loaders_flags_must_be_booleans():
    images, labels = np.zeros((10, 2, 2, 1), np.uint8), np.zeros(10, np.int32)
    with pytest.raises(ValueError, match=r"shuffle must be True or False; got 'no'"):
        jd.Loader(images, labels, batch_size=2, shuffle="no")
    with pytest.raises(ValueError, match=r"drop_remainder must be True or False; got 1"):
        jd.Loader(images, labels, batch_size=3, drop_remainder=1)
    assert jd.Loader(images, labels, batch_size=2, shuffle=np.bool_(False)).shuffle is False


@pytest.mark.parametrize(("labels", "kwargs", "match"), [
    (np.arange(10) + 0.5, {}, r"labels must be integer class indices; got float64 labels such as 0.5 at index 0"),
    (np.r_[np.arange(9.0), np.nan], {}, r"such as nan at index 9"),
    (np.array(["cat"] * 10), {}, r"labels must be integer class indices; got <U3 labels"),
    (np.arange(10) - 2, {}, r"labels must be class indices >= 0 \(or -1, tfds' 'no label'\); got -2 at index 0 "
                            r"\(for a margin loss"),
    (np.r_[np.arange(9), 2**32], {}, r"labels must be below 2\*\*31 - 1 \(int32\); got 4294967296 at index 9"),
    (np.arange(10), {"num_classes": 5}, r"labels must be below num_classes=5; got 5 at index 5"),
])
def test_labels_that_are_not_class_indices_are_refused(labels, kwargs, match):
    """8.5 became class 8, -1 and labels beyond num_classes went through."""
    with pytest.raises(ValueError, match=match):
        jd.Loader(np.zeros((10, 2, 2, 1), np.uint8), labels, batch_size=2, **kwargs)


@pytest.mark.parametrize("labels", [np.arange(10.0) % 3, (np.arange(10) % 3).astype(ml_dtypes.bfloat16),
                                    (np.arange(10) % 3).astype(object)], ids=["float64", "bfloat16", "object"])
def test_labels_stored_as_whole_numbers_of_another_dtype_are_class_indices(labels):
    loader = jd.Loader(np.zeros((10, 2, 2, 1), np.uint8), labels, batch_size=2)
    np.testing.assert_array_equal(loader.arrays()["label"], np.arange(10) % 3)
    assert loader.arrays()["label"].dtype == np.int32 and loader.num_classes == 3


def test_unlabelled_examples_marked_minus_one_as_tfds_does_are_taken():
    labels = np.r_[np.full(5, -1), np.arange(5)]
    loader = jd.Loader(np.zeros((10, 2, 2, 1), np.uint8), labels, batch_size=2)
    np.testing.assert_array_equal(loader.arrays()["label"], labels)


def test_batch_larger_than_split_without_drop_remainder_is_one_batch():
    loader = jd.load("mnist_sample", split="test", batch_size=5000, drop_remainder=False)
    (batch,) = list(loader)
    assert batch["image"].shape[0] == 1000


def test_mnist_sample_loads_offline_without_tensorflow(run_python):
    code = textwrap.dedent("""
        import socket, sys
        def refuse(*a, **k):
            raise OSError('network disabled by the test')
        socket.socket.connect = refuse
        socket.create_connection = refuse
        import jdl.data
        train = jdl.data.load('mnist_sample', split='train', batch_size=100)
        test = jdl.data.load('mnist_sample', split='test', batch_size=100)
        assert (train.num_examples, test.num_examples) == (4000, 1000)
        n = sum(len(b['label']) for b in train)
        assert n == 4000, n
        import numpy as np
        counts = np.bincount(test.arrays()['label'], minlength=10)
        assert (counts == 100).all(), counts
        assert 'tensorflow' not in sys.modules
        print('ok')
    """)
    out = run_python(code, timeout=60)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-2000:]
