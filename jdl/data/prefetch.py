"""Feeding an accelerator: batches put on the device ahead of use, in a background thread.

    for batch in prefetch_to_device(loader, size=2):
        state = step(state, batch)          # batch['image'] is already a jax.Array on the device

A daemon thread pulls batches from the host iterator and `jax.device_put`s
them, keeping up to `size` transfers ahead of the consumer (size=2: double
buffering). While the step computes on batch `t`, the host prepares and
transfers the next ones, so the step waits on the host only when the host is
slower than the step.

Each `device_put` has a fixed cost (measured on an H200, jax 0.11.2: about
75 µs per array of up to ~1 MB, so about 150 µs for an image+label batch),
more than a small model's whole step. On accelerators the thread therefore
moves `chunk` consecutive batches (default 64) at a time (the first
transfers of an iteration smaller: 4, 8, 16, ... batches, so the first step
starts sooner). From a Loader
without a host transform it gathers them straight from the stored uint8
images (a quarter of the bytes), transfers images and labels once per chunk,
and on the device turns them into float32 through a 256-entry table computed
by NumPy, so the values are bit for bit the host batches', and splits the
chunk into batches with one jitted call. From any other iterable it stacks
the host batches and does the same without the conversion. The consumer
still receives one batch at a time, in order. On the CPU backend (where a
"transfer" is nearly free) `chunk` defaults to 1. Batches whose shape
differs from the previous ones (the last, smaller batch) go on their own.

Measured on an H200 (mnist-shaped batches of 128 from a Loader, a jitted
step of 108 µs with the data resident; two runs each): host NumPy batches
straight into the step 310-340 µs/step; prefetch_to_device with chunk=1
300-620, chunk=8 180-290, chunk=16 130-170 µs/step. With chunk=8, steps of
56 and 366 µs (resident) took 290 and 588 µs. On an H100 (real
Fashion-MNIST, uint8 Loader, a 108 µs resident step, 2000 steps; one run,
`benchmarks/device_check.py`): chunk=16 214 µs/step, chunk=16 with Python's
thread switch interval at 0.5 ms instead of 5 ms 133 µs, chunk=64 122 µs
(no prefetching: 489 µs). That a shorter switch interval helps says the
cost is the feeding thread holding the GIL while the dispatching thread
waits; fewer, larger transfers hold it less often, so chunk is 64. The
queue holds whole chunks, so the feeding thread wakes once per chunk, not
once per batch the consumer takes. A 100 µs
step still waits about 12% of its time; for the smallest steps keep the
whole split on the device (`Loader.arrays()` + `Loader.permutation(epoch)`,
`fit`'s scan engine).

With several devices the batch axis is split across them
(`NamedSharding(Mesh(devices, ('data',)), P('data'))`): each device holds
B / n examples and a jitted step runs data-parallel. The batch size must then
be a multiple of the device count (use drop_remainder=True). A sharding over
several hosts' devices (``jax.distributed``) works when every process
iterates the same loader: each places its own devices' part of every batch,
and the feeding thread converts and splits each device's part on that device
alone (a program over several processes' devices must start in the same
order in every process; launched from this thread beside the training
steps it would not, and the processes waited on each other).  It does so in
one program over a mesh of this process's own devices.

The loader's position (`state_dict()`) runs ahead of the consumer by the
batches in flight, at most `(size + 2) * chunk` (the chunk being handed
out, `size` queued, one being placed); `close()` moves it back to the first
batch not handed out.  Save positions from the loader only when the
prefetcher is exhausted or closed (a `with` block closes it), or account
for the lookahead.  After an error from the host iterator, close() resumes
the loader at the failing batch.  A prefetcher dropped without `close()`
stops its thread when it is garbage-collected (once no traceback holds it;
its position is then not rewound).
On the CPU backend the background thread competes with the computation for
the same cores: there plain iteration is as fast or faster.

`stack=True` hands each transfer over whole, `(batches, B, ...)` on the
device, for a consumer that runs a chunk of steps per dispatch with
`lax.scan` (see `prefetch_to_device`): the consumer's thread then wakes
once per chunk, not once per batch, and the feeding thread does no
splitting.  Its chunks are all `chunk` batches long (no ramp, so the
consumer compiles one program, two more for an epoch's last full batches
and a last, smaller batch).
"""

from __future__ import annotations

import collections
import functools
import queue
import threading
import warnings
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np

__all__ = ["Prefetcher", "data_sharding", "prefetch_to_device"]

_END = object()


class _Raised:
    def __init__(self, error: BaseException):
        self.error = error


def data_sharding(devices=None):
    """Sharding that splits axis 0 over `devices` (default: all local devices)."""
    import jax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    devices = list(devices) if devices is not None else jax.local_devices()
    return NamedSharding(Mesh(np.array(devices), ("data",)), PartitionSpec("data"))


def put(tree, sharding):
    """``jax.device_put(tree, sharding)``, also where the sharding spans
    several processes' devices (several hosts, ``jax.distributed``): there
    each process places its own devices' parts of its host copy, which must
    hold the same values in every process (``device_put`` would check that
    with a gather of every array across processes; ``fit`` checks its data
    once instead).  Key arrays go as their key data."""
    import jax

    if sharding.is_fully_addressable:
        return jax.device_put(tree, sharding)
    return jax.tree_util.tree_map(lambda leaf: _put_parts(leaf, sharding), tree)


def _put_parts(leaf, sharding):
    """One array on a sharding over several processes' devices, from this process's copy."""
    import jax

    if isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
        data = _put_parts(jax.random.key_data(leaf), sharding)
        return jax.random.wrap_key_data(data, impl=jax.random.key_impl(leaf))
    host = np.asarray(leaf)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def _apply_locally(fn, args: tuple, in_sharding, out_sharding, *local_args):
    """``fn(*args, *local_args)`` on ``out_sharding`` without a program that
    spans processes: one program over a mesh of this process's own devices
    (``_local_mesh``), each device running ``fn`` on its own part of the host
    ``args`` (pytrees of arrays, split by ``in_sharding`` along one axis)
    and on the whole of ``local_args`` (placed by ``_local_replicated``);
    the devices' parts of the outputs make the global arrays.

    For ``fn`` that maps each device's part of the inputs to that device's
    part of the outputs (indexing stacked batches, a lookup per element).
    With several processes every process must start the programs that span
    them in one order (jax's concurrency docs); the feeding thread's,
    started beside the training steps, would interleave differently in each
    process, and the processes waited on each other.  A program on this
    process's devices alone takes no part in that order."""
    import jax
    from jax.sharding import NamedSharding

    leaves, treedef = jax.tree_util.tree_flatten(args)
    leaves = [np.asarray(leaf) for leaf in leaves]
    mesh = _local_mesh(in_sharding)
    in_axis, out_axis = _split_axis(in_sharding), _split_axis(out_sharding)
    parts = []  # each device's part, one after another along the split axis: the local mesh splits them again
    for leaf in leaves:
        index = in_sharding.addressable_devices_indices_map(leaf.shape)
        parts.append(np.concatenate([leaf[index[device]] for device in mesh.devices.flat], axis=in_axis))
    placed = jax.tree_util.tree_unflatten(treedef, jax.device_put(parts, NamedSharding(mesh, _split_spec(in_axis))))
    program = _local_program(fn, mesh, len(args), len(local_args), in_axis, out_axis)
    outputs = jax.tree_util.tree_leaves(program(*placed, *local_args))
    given, given_treedef = jax.tree_util.tree_flatten((*args, *local_args))
    shapes, out_treedef = _output_shapes(fn, given_treedef, tuple((x.shape, x.dtype) for x in given))
    return jax.tree_util.tree_unflatten(out_treedef, [
        jax.make_array_from_single_device_arrays(shape.shape, out_sharding, [s.data for s in out.addressable_shards])
        for out, shape in zip(outputs, shapes, strict=True)])  # fmt: skip


def _split_axis(sharding) -> int:
    """The one axis ``sharding`` splits (0 when it splits none: each device's
    part is then the whole, and the local mesh stacks the copies)."""
    axes = [axis for axis, entry in enumerate(sharding.spec) if entry is not None]
    if len(axes) > 1:
        raise ValueError("prefetch_to_device over several processes' devices splits batches along one axis; "
                         f"got a sharding that splits axes {axes}: {sharding.spec}")  # fmt: skip
    return axes[0] if axes else 0


def _split_spec(axis: int):
    from jax.sharding import PartitionSpec

    return PartitionSpec(*([None] * axis), "local")


@functools.lru_cache(maxsize=16)
def _local_mesh(sharding):
    """A one-axis (``'local'``) mesh of ``sharding``'s devices in this process."""
    from jax.sharding import Mesh

    return Mesh(np.array(sorted(sharding.addressable_devices, key=lambda device: device.id)), ("local",))


def _local_replicated(tree, sharding):
    """``tree`` whole on every device of ``_local_mesh(sharding)``."""
    import jax
    from jax.sharding import NamedSharding, PartitionSpec

    return jax.device_put(tree, NamedSharding(_local_mesh(sharding), PartitionSpec()))


@functools.lru_cache(maxsize=64)
def _local_program(fn, mesh, num_args: int, num_local: int, in_axis: int, out_axis: int):
    """``fn`` jitted over ``mesh`` with ``shard_map``: its first ``num_args``
    arguments split along ``in_axis``, the next ``num_local`` whole, its
    outputs split along ``out_axis``."""
    import jax
    from jax import shard_map
    from jax.sharding import PartitionSpec

    in_specs = (_split_spec(in_axis),) * num_args + (PartitionSpec(),) * num_local
    return jax.jit(shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=_split_spec(out_axis)))


@functools.lru_cache(maxsize=64)
def _output_shapes(fn, treedef, shapes: tuple) -> tuple:
    """``fn``'s output leaves as ShapeDtypeStructs and their treedef, for
    arguments of ``shapes`` (``(shape, dtype)`` leaves of ``treedef``)."""
    import jax

    args = jax.tree_util.tree_unflatten(treedef, [jax.ShapeDtypeStruct(shape, dtype) for shape, dtype in shapes])
    return jax.tree_util.tree_flatten(jax.eval_shape(fn, *args))


def _resolve(sharding):
    """(sharding for one batch, sharding for a stack of batches or None, shards on axis 0)."""
    import jax
    from jax.sharding import NamedSharding, PartitionSpec, SingleDeviceSharding

    if sharding is None:
        devices = jax.local_devices()
        sharding = data_sharding(devices) if len(devices) > 1 else devices[0]
    if isinstance(sharding, jax.Device):
        sharding = SingleDeviceSharding(sharding)
    stacked, num_shards = None, 1
    if isinstance(sharding, SingleDeviceSharding):
        stacked = sharding
    elif isinstance(sharding, NamedSharding):
        spec = tuple(sharding.spec)
        stacked = NamedSharding(sharding.mesh, PartitionSpec(None, *spec))
        if spec:
            num_shards = int(np.prod([sharding.mesh.shape[a] for a in _axes(spec[0])]))
    return sharding, stacked, num_shards


def _axes(entry) -> tuple:
    if entry is None:
        return ()
    return tuple(entry) if isinstance(entry, (tuple, list)) else (entry,)


@functools.cache
def _loader_splitter(count: int | None, convert: bool):
    """Jitted: stacked (count, B, ...) images and labels -> `count` batch
    dicts, or with `count` None one dict of the stacked arrays (`stack=True`).

    With `convert`, uint8 images become float32 through `table` (the 256
    values `np.arange(256) / 255` computed by NumPy), so the values are
    bit for bit those of the Loader's host batches.
    """
    import jax

    @jax.jit
    def split(images, labels, table):
        if convert:
            images = table[images.astype("int32")]
        if count is None:
            return {"image": images, "label": labels}
        return [{"image": images[i], "label": labels[i]} for i in range(count)]

    return split


@functools.cache
def _splitter(count: int):
    """A jitted function: a pytree of stacked leaves (count, ...) -> list of `count` pytrees."""
    import jax

    @jax.jit
    def split(tree):
        return [jax.tree_util.tree_map(lambda x, i=i: x[i], tree) for i in range(count)]

    return split


FIRST_CHUNK = 4


def _chunk_sizes(chunk: int, ramp: bool = True) -> Iterator[int]:
    """Batches per transfer: from `FIRST_CHUNK` doubling up to `chunk`, then `chunk`
    (without ``ramp``: `chunk` from the first).

    The consumer waits for the first transfer; a small one starts it sooner,
    and each doubling is ready before the consumer is through the previous
    one (an epoch's first 64 batches took ~4 ms to gather, move and split),
    once each size's splitting program has compiled (on its first use in a
    process).
    """
    size = min(FIRST_CHUNK, chunk) if ramp else chunk
    while size < chunk:
        yield size
        size *= 2
    while True:
        yield chunk


def _signature(tree) -> tuple:
    import jax

    leaves, treedef = jax.tree_util.tree_flatten(tree)
    return treedef, tuple((np.shape(x), np.asarray(x).dtype) for x in leaves)


class _Feeder:
    """What the feeding thread runs: batches from the source, chunked, put on
    the device and queued for the consumer until ``stop`` is set."""

    def __init__(self, jax, loader, source, chunk: int, sharding, stacked, num_shards: int,
                 out: queue.Queue, stop: threading.Event, stack: bool = False):  # fmt: skip
        self._jax, self._loader, self._source, self._chunk = jax, loader, source, chunk
        self._sharding, self._stacked, self._num_shards = sharding, stacked, num_shards
        self._queue, self._stop, self._stack = out, stop, stack
        # over several processes' devices: no program from this thread may span them (_apply_locally)
        self._across_processes = stacked is not None and not stacked.is_fully_addressable
        # a sharding this cannot split is refused before any batch is taken, in the user's terms (the
        # stacked sharding splits the same axes, one further on)
        if self._across_processes:
            _split_axis(sharding)

    def _check(self, tree) -> None:
        if self._num_shards == 1:
            return
        for leaf in self._jax.tree_util.tree_leaves(tree):
            if np.shape(leaf)[0] % self._num_shards:
                raise ValueError(
                    f"a batch of {np.shape(leaf)[0]} cannot be split evenly over "
                    f"{self._num_shards} devices: use a batch_size that is a multiple of the "
                    "device count and drop_remainder=True"
                )

    def _send(self, batches: list) -> bool:
        jax = self._jax
        if len(batches) == 1 and not self._stack:
            return self._put([put(batches[0], self._sharding)])
        host = jax.tree_util.tree_map(lambda *xs: np.stack(xs), *batches)
        if self._stack:
            return self._put([put(host, self._stacked)])
        split = _splitter(len(batches))
        if self._across_processes:
            return self._put(_apply_locally(split, (host,), self._stacked, self._sharding))
        return self._put(split(put(host, self._stacked)))

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def run(self) -> None:
        if self._loader is not None:
            return self._run_loader(self._loader)

        def signature(batch):
            self._check(batch)
            return _signature(batch) if self._chunk > 1 or self._stack else None

        self._chunks(self._source, signature, lambda batches, target: self._send(batches))

    def _chunks(self, items: Iterator, signature: Callable, send: Callable) -> None:
        """Groups ``items`` into chunks of the ramp's sizes (a change of
        ``signature`` ends a chunk early) and ``send(chunk, size)``s them,
        then the end.  An error from ``items`` reaches the consumer after the
        items before it; an error sending a chunk, in its place."""
        pending, sizes, last = [], _chunk_sizes(self._chunk, ramp=not self._stack), None
        target = next(sizes)
        try:
            for item in items:
                if self._stop.is_set():  # closed: no more items taken from the source
                    return
                key = signature(item)
                if pending and key != last:
                    chunk, pending = pending, []
                    if not send(chunk, target):
                        return
                pending.append(item)
                last = key
                if len(pending) == target:
                    chunk, pending = pending, []  # nothing pending if the send fails
                    if not send(chunk, target):
                        return
                    target = next(sizes)
            if pending:
                chunk, pending = pending, []
                if not send(chunk, target):
                    return
            self._put(_END)
        except BaseException as error:
            try:
                if pending and not send(pending, target):
                    return
            except BaseException:  # the batches before the error are lost; the error still arrives
                pass
            self._put(_Raised(error))

    def _run_loader(self, loader) -> None:
        from jdl.data.loader import _to_float  # the Loader's conversion of images to float32

        images, labels = loader.stored()
        table = None
        if images.dtype == np.uint8:
            table_host = _to_float(np.arange(256, dtype=np.uint8))
            if self._across_processes:
                table = _local_replicated(table_host, self._stacked)
            else:
                replicated = self._stacked
                if hasattr(replicated, "mesh"):
                    from jax.sharding import NamedSharding, PartitionSpec

                    replicated = NamedSharding(replicated.mesh, PartitionSpec())
                table = put(table_host, replicated)

        def send(pending, target) -> bool:
            count, size = len(pending), len(pending[0])
            # A short chunk (the epoch's end) is padded to `target` batches and the
            # padding dropped on arrival: one compiled splitter per chunk size.
            # Stacked chunks go as they are: the consumer sees the real count.
            full = target if size == loader.batch_size and not self._stack else count
            order = np.concatenate(pending + [pending[-1]] * (full - count))
            x = np.take(images, order, axis=0).reshape(full, size, *images.shape[1:])
            if table is None:  # uint8 images are converted on the device, through the table
                x = _to_float(x)
            y = np.take(labels, order, axis=0).reshape(full, size)
            split = _loader_splitter(None if self._stack else full, table is not None)
            if self._across_processes:
                out_sharding = self._stacked if self._stack else self._sharding
                placed = _apply_locally(split, (x, y), self._stacked, out_sharding, table)
            else:
                placed = split(put(x, self._stacked), put(y, self._stacked), table)
            return self._put([placed] if self._stack else placed[:count])

        def signature(indices):
            self._check({"label": indices})
            return len(indices)

        self._chunks((indices for _, _, indices in loader.positions()), signature, send)


class Prefetcher(Iterator):
    """Iterator over device batches; a background thread keeps transfers ahead of the consumer."""

    def __init__(self, iterable: Iterable[Any], size: int = 2, sharding=None,
                 chunk: int | None = None, stack: bool = False):
        import jax

        if size < 1:
            raise ValueError(f"size must be >= 1; got {size}")
        if not isinstance(stack, bool):
            raise TypeError(f"stack must be True or False; got {stack!r}")
        sharding, stacked, num_shards = _resolve(sharding)
        if stack and stacked is None:
            raise ValueError(f"stack=True needs a single device or a NamedSharding; got {sharding!r}")
        if chunk is None:
            on_cpu = all(d.platform == "cpu" for d in sharding.device_set)
            chunk = 1 if on_cpu and not stack else 64
        if chunk < 1:
            raise ValueError(f"chunk must be >= 1; got {chunk}")
        chunk = chunk if stacked is not None else 1
        self._stack = stack
        from jdl.data.loader import Loader

        # A Loader's position is rewound by close() to the first batch not handed out.
        self._rewind = (iterable, iterable.state_dict()) if isinstance(iterable, Loader) else None
        self._handed = 0
        # A Loader without a host transform is fed by gathering `chunk` batches
        # at once from its stored (uint8) arrays; anything else batch by batch.
        loader = (iterable if isinstance(iterable, Loader) and iterable.transform is None
                  and stacked is not None else None)
        # The queue holds whole chunks (lists of device batches): the consumer
        # walks its current chunk without waking the feeding thread, which
        # wakes once per chunk rather than once per batch.
        self._queue: queue.Queue = queue.Queue(maxsize=size)
        self._current: collections.deque = collections.deque()
        self._stop = threading.Event()
        self._done = False
        feeder = _Feeder(jax, loader, iter(iterable) if loader is None else None, chunk, sharding, stacked,
                         num_shards, self._queue, self._stop, stack)  # fmt: skip
        # The thread holds the feeder, not this object: a Prefetcher dropped
        # without close() is collected, and its finalizer stops the thread.
        self._thread = threading.Thread(target=feeder.run, name="jdl-prefetch", daemon=True)
        weakref.finalize(self, self._stop.set)
        self._thread.start()

    # -- consumer --------------------------------------------------------------
    def __next__(self):
        if not self._current:
            if self._done:
                raise StopIteration
            item = self._queue.get()
            if item is _END:
                self._done, self._rewind = True, None  # exhausted: the loader's position is its own
                raise StopIteration
            if isinstance(item, _Raised):
                self._done = True
                raise item.error
            self._current.extend(item)
        batch = self._current.popleft()
        # after the pop: a Ctrl-C between them leaves the batch to the rewind
        self._handed += _leading(batch) if self._stack else 1
        return batch

    def close(self) -> None:
        """Stops the background thread and drops the batches it prepared; a
        Loader's position goes back to the first batch not handed out."""
        self._done = True
        self._stop.set()
        self._current.clear()
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        rewind, self._rewind = self._rewind, None
        if rewind is None:
            return
        if self._thread.is_alive():  # still inside the source (a slow transform): it may move the position yet
            warnings.warn("prefetch_to_device: the feeding thread is still running 5 s after close(); "
                          "the loader's position is not rewound", RuntimeWarning, stacklevel=2)
            return
        loader, start = rewind
        loader.load_state_dict({**start, "step": start["step"] + self._handed})

    def __enter__(self) -> Prefetcher:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _leading(tree) -> int:
    """The length of the leading axis of a stacked chunk's leaves."""
    import jax

    return int(jax.tree_util.tree_leaves(tree)[0].shape[0])


def prefetch_to_device(iterable: Iterable[Any], size: int = 2, sharding=None,
                       chunk: int | None = None, stack: bool = False) -> Prefetcher:
    """Iterates `iterable` (e.g. a Loader) with batches already on the device.

    Args:
      iterable: yields pytrees of host arrays (the Loader's batch dicts).
      size: transfers kept ahead of the consumer (2: double buffering).
      sharding: a `jax.sharding.Sharding` or a device to put each leaf on.
        Default: the batch axis split over all local devices when there are
        several (`data_sharding()`), else the default device.
      chunk: batches moved per transfer (see the module docstring); default
        64 on accelerators, 1 on the CPU backend (64 there too with `stack`).
      stack: hand out each transfer whole instead of batch by batch: pytrees
        whose leaves have a leading axis of up to `chunk` batches, for a
        step that runs `lax.scan` over them (below). Every chunk holds
        `chunk` batches except an iteration's last full ones; a last,
        smaller batch comes as a chunk of one.

    Returns a `Prefetcher`: an iterator, also a context manager; `close()`
    stops its thread early. Errors from the host iterator are raised from
    `next()`.

    With `stack=True` one dispatch runs a whole chunk of steps, as Keras's
    `steps_per_execution` does (the per-step dispatch and the feeding
    thread's per-batch work are what a step shorter than ~100 µs waits on):

        @jax.jit
        def run_chunk(carry, chunk):          # compiled once per chunk length
            return jax.lax.scan(step, carry, chunk)

        for chunk in prefetch_to_device(loader, stack=True):
            carry, metrics = run_chunk(carry, chunk)
    """
    return Prefetcher(iterable, size=size, sharding=sharding, chunk=chunk, stack=stack)
