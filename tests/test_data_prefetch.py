"""jdl.data.prefetch_to_device: background device transfer, sharding over several devices."""

from __future__ import annotations

import os
import textwrap
import threading
import time

import jax
import numpy as np
import pytest

import jdl.data as jd


def test_prefetched_batches_equal_host_batches_and_live_on_device():
    host = list(jd.load("mnist_sample", split="test", batch_size=100, shuffle=True, seed=2))
    loader = jd.load("mnist_sample", split="test", batch_size=100, shuffle=True, seed=2)
    device = list(jd.prefetch_to_device(loader, size=2))
    assert len(device) == len(host) == 10
    for d, h in zip(device, host, strict=True):
        assert isinstance(d["image"], jax.Array) and isinstance(d["label"], jax.Array)
        assert np.array_equal(np.asarray(d["image"]), h["image"])
        assert np.array_equal(np.asarray(d["label"]), h["label"])
    assert loader.state_dict()["epoch"] == 1  # the whole epoch was consumed


@pytest.mark.parametrize("chunk", [2, 3, 8, 16])
def test_chunked_transfers_give_the_same_batches_in_order(chunk):
    kwargs = dict(split="test[:999]", batch_size=64, shuffle=True, seed=4, drop_remainder=False)
    host = list(jd.load("mnist_sample", **kwargs))
    device = list(jd.prefetch_to_device(jd.load("mnist_sample", **kwargs), chunk=chunk))
    assert [len(d["label"]) for d in device] == [64] * 15 + [39]  # the ragged one on its own
    for d, h in zip(device, host, strict=True):
        assert np.array_equal(np.asarray(d["image"]), h["image"])
        assert np.array_equal(np.asarray(d["label"]), h["label"])
        assert d["image"].dtype == np.float32 and d["label"].dtype == np.int32


@pytest.mark.parametrize("transform", [None, lambda batch: batch], ids=["stored", "transformed"])
def test_stacked_chunks_hold_the_host_batches_in_order(transform):
    """``stack=True``: chunks of ``chunk`` batches (no ramp), the epoch's last
    full batches, then the ragged batch as a chunk of one; a scan over them
    sees the loader's batches."""
    kwargs = dict(split="test[:999]", batch_size=64, shuffle=True, seed=4, drop_remainder=False,
                  transform=transform)  # fmt: skip
    host = list(jd.load("mnist_sample", **kwargs))
    chunks = list(jd.prefetch_to_device(jd.load("mnist_sample", **kwargs), chunk=4, stack=True))
    assert [c["image"].shape for c in chunks] == [(4, 64, 28, 28, 1)] * 3 + [(3, 64, 28, 28, 1), (1, 39, 28, 28, 1)]
    batches = [{k: np.asarray(v[i]) for k, v in c.items()} for c in chunks for i in range(len(c["label"]))]
    for d, h in zip(batches, host, strict=True):
        assert d["image"].dtype == np.float32 and d["label"].dtype == np.int32
        np.testing.assert_array_equal(d["image"], h["image"])
        np.testing.assert_array_equal(d["label"], h["label"])

    def total(carry, batch):
        return carry + batch["label"].sum(), None

    run_chunk = jax.jit(lambda carry, chunk: jax.lax.scan(total, carry, chunk)[0])
    summed = 0
    for chunk in jd.prefetch_to_device(jd.load("mnist_sample", **kwargs), chunk=4, stack=True):
        summed = run_chunk(summed, chunk)
    assert int(summed) == int(np.concatenate([h["label"] for h in host]).astype(np.int64).sum())


def test_stacked_chunks_from_any_iterable_and_the_rewind_counts_their_batches():
    def batches():
        for i in range(10):
            yield {"x": np.full((2, 3), i, np.float32)}

    chunks = list(jd.prefetch_to_device(batches(), chunk=4, stack=True))
    assert [np.asarray(c["x"])[:, 0, 0].tolist() for c in chunks] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    loader = jd.load("mnist_sample", split="test", batch_size=100, shuffle=True, seed=5)
    with jd.prefetch_to_device(loader, chunk=3, stack=True) as it:
        first = next(it)
        time.sleep(0.2)  # the thread runs ahead
    assert first["label"].shape == (3, 100)
    assert loader.state_dict() == {"epoch": 0, "step": 3, "seed": 5, "batch_size": 100, "num_examples": 1000,
                                   "shuffle": 1}
    with pytest.raises(TypeError, match="stack must be True or False; got 1"):
        jd.prefetch_to_device(batches(), stack=1)


@pytest.mark.parametrize("dtype", [np.int64, np.uint16, np.float64, np.uint8])
def test_chunks_of_images_of_any_dtype_arrive_as_the_loaders_float32_batches(dtype):
    images = np.random.default_rng(0).integers(0, 256, (100, 4, 4, 1)).astype(dtype)
    labels = np.arange(100) % 10

    def loader():
        return jd.Loader(images, labels, batch_size=16, seed=1, drop_remainder=False)

    expected = np.asarray(images, np.float64) / (255 if dtype == np.uint8 else 1)  # NumPy's float64, the reference
    device = list(jd.prefetch_to_device(loader(), sharding=jax.devices()[0], chunk=4))
    for d, h in zip(device, loader(), strict=True):
        assert d["image"].dtype == h["image"].dtype == np.float32
        np.testing.assert_array_equal(np.asarray(d["image"]), h["image"])
    order = np.concatenate([np.asarray(d["label"]) for d in device])
    assert order.shape == (100,)
    np.testing.assert_allclose(np.concatenate([np.asarray(d["image"]) for d in device]),
                               expected[loader().permutation(0)], rtol=1e-7)  # fmt: skip


def test_loader_with_a_transform_goes_batch_by_batch():
    augment = jd.compose(jd.random_flip(), jd.one_hot(10))
    kwargs = dict(split="test", batch_size=100, seed=2, transform=augment)
    host = list(jd.load("mnist_sample", **kwargs))
    device = list(jd.prefetch_to_device(jd.load("mnist_sample", **kwargs), chunk=4))
    for d, h in zip(device, host, strict=True):
        assert np.array_equal(np.asarray(d["image"]), h["image"])
        assert np.array_equal(np.asarray(d["label"]), h["label"])


@pytest.mark.parametrize("chunk, limit", [(1, 4), (4, 16), (16, 4 + 8 + 16 + 16)])
def test_prefetch_runs_ahead_by_at_most_size_chunks(chunk, limit):
    """The chunk being handed over, two queued, one being placed; the first
    transfers are smaller (4, 8, ... batches up to ``chunk``)."""
    pulled = []

    def source():
        for i in range(100):
            pulled.append(i)
            yield {"x": np.full(4, i)}

    it = jd.prefetch_to_device(source(), size=2, chunk=chunk)
    first = next(it)
    deadline = time.monotonic() + 10
    while len(pulled) < limit and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)
    assert int(first["x"][0]) == 0
    ahead = len(pulled)
    assert ahead == limit
    assert [int(next(it)["x"][0]) for _ in range(ahead - 1)] == list(range(1, ahead))
    it.close()


@pytest.mark.parametrize("chunk", [1, 4])
def test_errors_in_the_host_iterator_reach_the_consumer(chunk):
    def source():
        yield {"x": np.zeros(2)}
        raise RuntimeError("bad batch")

    it = jd.prefetch_to_device(source(), chunk=chunk)
    assert np.array_equal(np.asarray(next(it)["x"]), np.zeros(2))  # the batch before the error
    with pytest.raises(RuntimeError, match="bad batch"):
        next(it)


@pytest.mark.parametrize("chunk", [1, 4])
def test_a_batch_that_cannot_be_transferred_raises_in_the_consumer(chunk):
    """A failing transfer reaches the consumer as an error, never a wait for batches that will not come."""
    def source():
        yield {"x": np.zeros(2)}
        yield {"x": np.array(["not", "numbers"])}

    outcome = {}

    def consume():
        try:
            outcome["batches"] = len(list(jd.prefetch_to_device(source(), chunk=chunk)))
        except Exception as error:  # noqa: BLE001 - what the consumer sees is the point
            outcome["error"] = error

    thread = threading.Thread(target=consume, daemon=True)
    thread.start()
    thread.join(timeout=20)
    assert not thread.is_alive(), "the consumer is still waiting"
    assert "error" in outcome, outcome


def test_close_mid_chunk_stops_the_thread():
    loader = jd.load("mnist_sample", split="train", batch_size=16, shuffle=True, seed=0)
    it = jd.prefetch_to_device(loader, chunk=8)
    next(it)
    it.close()
    assert not it._thread.is_alive()
    with pytest.raises(StopIteration):
        next(it)


def test_close_stops_the_thread():
    def endless():
        while True:
            yield {"x": np.zeros(8)}

    before = threading.active_count()
    with jd.prefetch_to_device(endless(), size=2) as it:
        next(it)
    time.sleep(0.2)
    assert threading.active_count() <= before
    with pytest.raises(StopIteration):
        next(it)


@pytest.mark.parametrize("chunk", [1, 8])
@pytest.mark.parametrize("transform", [None, lambda batch: batch], ids=["stored", "transformed"])
def test_close_rewinds_a_loader_to_the_first_batch_not_handed_out(chunk, transform):
    """Batches fetched ahead and dropped by close() are not skipped: the
    loader resumes at the first one the consumer did not get, and the epoch
    still holds every example once."""
    kwargs = dict(split="test", batch_size=100, shuffle=True, seed=5, transform=transform)
    loader = jd.load("mnist_sample", **kwargs)
    with jd.prefetch_to_device(loader, chunk=chunk) as it:
        taken = [np.asarray(next(it)["label"]) for _ in range(3)]
        time.sleep(0.2)  # the thread runs ahead
    assert loader.state_dict() == {"epoch": 0, "step": 3, "seed": 5, "batch_size": 100, "num_examples": 1000,
                                   "shuffle": 1}
    rest = [np.asarray(batch["label"]) for batch in loader]
    host = [batch["label"] for batch in jd.load("mnist_sample", **kwargs)]
    np.testing.assert_array_equal(np.concatenate(taken + rest), np.concatenate(host))


def test_close_stops_taking_from_a_slow_source_and_still_rewinds():
    """A slow host transform: close() stops the thread after the batch under
    way, not after filling its chunk (the ramp's second, 8 batches: 5.6 s
    here, past close()'s 5 s wait, when the position was left unrewound and
    still moving)."""
    def slow(batch):
        time.sleep(0.7)
        return batch

    loader = jd.load("mnist_sample", split="train", batch_size=10, shuffle=True, seed=0, transform=slow)
    it = jd.prefetch_to_device(loader, chunk=16)
    next(it), next(it)  # the first chunk of the ramp: 4 batches
    it.close()
    assert not it._thread.is_alive()
    assert loader.state_dict() == {"epoch": 0, "step": 2, "seed": 0, "batch_size": 10, "num_examples": 4000,
                                   "shuffle": 1}


def test_a_prefetcher_dropped_without_close_stops_its_thread():
    """Breaking out of a loop over it (or an error in the step) drops the
    prefetcher: its thread must not keep it and its device batches alive."""
    import gc
    import weakref

    loader = jd.load("mnist_sample", split="train", batch_size=16, shuffle=True, seed=0)
    it = jd.prefetch_to_device(loader, chunk=8)
    next(it)
    thread, alive = it._thread, weakref.ref(it)
    del it
    gc.collect()
    thread.join(timeout=5)
    assert alive() is None and not thread.is_alive()


def test_size_must_be_positive():
    with pytest.raises(ValueError, match="size"):
        jd.prefetch_to_device([], size=0)


def test_batches_are_sharded_over_several_devices(run_python):
    code = textwrap.dedent("""
        import numpy as np, jax
        import jdl.data as jd
        assert jax.device_count() == 4, jax.devices()
        host = list(jd.load('mnist_sample', split='test', batch_size=128, seed=0, shuffle=True,
                            drop_remainder=True))
        loader = jd.load('mnist_sample', split='test', batch_size=128, seed=0, shuffle=True,
                         drop_remainder=True)
        n = 0
        for d, h in zip(jd.prefetch_to_device(loader, chunk=3), host, strict=True):
            for key in ('image', 'label'):
                x = d[key]
                assert len(x.sharding.device_set) == 4, x.sharding
                assert [s.data.shape[0] for s in x.addressable_shards] == [32] * 4
                assert np.array_equal(np.asarray(x), h[key])
            n += 1
        assert n == 7
        # a last batch that does not split evenly is refused with a clear message
        ragged = jd.load('mnist_sample', split='test[:998]', batch_size=128, drop_remainder=False)
        try:
            list(jd.prefetch_to_device(ragged, chunk=2))
        except ValueError as e:
            assert 'drop_remainder=True' in str(e), e
        else:
            raise AssertionError('ragged batch was not refused')
        print('ok')
    """)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
               JAX_PLATFORMS="cpu")
    out = run_python(code, timeout=120, env=env)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-3000:]


def test_the_feeding_path_for_several_processes_places_what_the_one_process_path_does(run_python):
    """Across processes the feeding thread runs one program over its own
    process's devices and builds the global arrays from their parts
    (``_apply_locally``).  Forced in one process of 4 CPU devices, it hands
    out the batches of the usual path: the same values, dtypes and
    shardings, over a 1-D mesh, a reversed one and a 2 x 2 one; uint8 and
    float32 Loaders (a ramp of padded chunks and a last, smaller batch) and a
    plain iterable; batch by batch and stacked.  A sharding that splits two
    axes is refused (as the feeder starts)."""
    code = textwrap.dedent("""
        import jax, numpy as np
        import jdl.data as jd
        from jdl.data import prefetch
        from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
        init = prefetch._Feeder.__init__

        def forced(self, *args, **kwargs):  # as with a sharding over several processes
            init(self, *args, **kwargs)
            self._across_processes = True

        def batches(force, make, **kwargs):
            prefetch._Feeder.__init__ = forced if force else init
            try:
                return [jax.tree_util.tree_leaves(b) for b in prefetch.prefetch_to_device(make(), **kwargs)]
            finally:
                prefetch._Feeder.__init__ = init

        devices = jax.devices()
        meshes = [Mesh(np.array(devices), ("data",)), Mesh(np.array(devices[::-1]), ("data",)),
                  Mesh(np.array(devices).reshape(2, 2), ("data", "other"))]
        rng = np.random.default_rng(0)
        floats = rng.normal(size=(200, 4, 4, 1)).astype(np.float32), rng.integers(0, 10, 200).astype(np.int32)
        sources = [
            lambda: jd.load("mnist_sample", split="test", batch_size=48, shuffle=True, seed=1, drop_remainder=False),
            lambda: jd.Loader(*floats, batch_size=8, seed=2, drop_remainder=False),
            lambda: iter([{"x": np.arange(i, i + 24, dtype=np.float32).reshape(8, 3)} for i in range(11)]),
        ]
        checked = 0
        for mesh in meshes:
            sharding = NamedSharding(mesh, P("data"))
            for make in sources:
                for stack in (False, True):
                    usual = batches(False, make, sharding=sharding, chunk=16, stack=stack)
                    local = batches(True, make, sharding=sharding, chunk=16, stack=stack)
                    assert len(usual) == len(local) > 0
                    for a, b in zip(usual, local):
                        for x, y in zip(a, b, strict=True):
                            assert x.sharding == y.sharding and x.dtype == y.dtype, (x.sharding, y.sharding)
                            assert np.array_equal(np.asarray(x), np.asarray(y))
                            checked += 1
        # a sharding over two axes, as if over several processes, is refused as the feeder starts, in the
        # terms the user gave it (not those of the chunks' sharding, one axis further on)
        NamedSharding.is_fully_addressable = property(lambda self: False)
        two_axes = NamedSharding(Mesh(np.array(devices).reshape(2, 2), ("a", "b")), P("a", "b"))
        try:
            prefetch.prefetch_to_device(sources[0](), sharding=two_axes, stack=True)
        except ValueError as error:
            assert f"splits batches along one axis; got a sharding that splits axes [0, 1]: {P('a', 'b')!r}" in (
                str(error)), error  # P('a', 'b') in jax 0.10, PartitionSpec('a', 'b') in 0.9
        else:
            raise AssertionError("a sharding over two axes was not refused")
        print("ok", checked)
    """)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    out = run_python(code, timeout=300, env=env)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-3000:]
