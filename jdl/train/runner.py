"""Running the epochs of one ``fit``: its compiled programs and where training stands.

``EpochRunner`` owns the compiled step (one per batch shape, for the stream
engine) and the compiled epoch (for the scan engine), the seconds their
compilation took, and the running state: the carry, the steps done in the
current epoch and their metrics still on the device.  That state lives on the
object so that Ctrl-C in the middle of an epoch can save exactly where
training stood.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jdl.data.prefetch import prefetch_to_device
from jdl.train import engine
from jdl.train.engine import Placement, compile_lowered, scan_epoch, scan_unroll, stream_chunk, stream_step
from jdl.train.step import Carry, all_finite, first_non_finite


def timed(fn: Callable, *args):
    """``(fn(*args), seconds it took)``."""
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


def chunk_dividing(steps: int, chunk: int) -> int:
    """Steps per chunk for ``steps`` full batches: the largest divisor of
    ``steps`` from ``chunk / 2`` to ``chunk`` (468 steps, 64: 52), so that
    no shorter chunk of them needs a program of its own; else ``chunk``."""
    return engine.largest_divisor(steps, chunk // 2 + 1, chunk) or chunk


class Position(NamedTuple):
    """Where training stands: the carry, the steps of the current epoch done
    and their ``(metrics on the device, batch sizes)`` not yet fetched, as a
    linked tuple ``(earlier, last)`` (``()`` for none): one more step is one
    more pair, not a copy of all the others."""

    carry: Any
    done: int
    pending: tuple


class EpochRunner:
    """Trains epoch after epoch with ``run(carry, batch, base_key, epoch,
    index, global_step)`` (a step with the key derivation and device transform
    applied), on the ``'stream'`` or ``'scan'`` engine (``jdl.train.engine``).

    Where training stands is one ``Position``, replaced whole after each step
    or scan: a Ctrl-C that Python raises at once (a second one) finds the
    carry, the steps done and their metrics in agreement, before or after
    that step, never between."""

    def __init__(self, run: Callable, loader, placement: Placement, mode: str, carry: Carry, base_key: jax.Array):
        self.run, self.loader, self.placement, self.mode = run, loader, placement, mode
        self.position = Position(carry, 0, ())
        self.base_key = base_key
        self.steps_per_epoch, self.batch_size = len(loader), loader.batch_size
        self.compile_s = 0.0
        # called after each step of the stream engine, where carry, ``done`` and ``pending`` agree (fit
        # raises a deferred Ctrl-C there)
        self.at_safe_point: Callable[[], None] = lambda: None
        self._steps: dict[tuple, Any] = {}
        self._orders: dict[int, tuple[np.ndarray, jax.Array]] = {}  # epoch -> (order, its full steps placed)
        self._finite = jax.jit(all_finite)
        self._on_accelerator = jax.devices()[0].platform != "cpu"
        self._lowered = self._lower_scan() if mode == "scan" else None

    @property
    def carry(self) -> Carry:
        return self.position.carry

    @property
    def done(self) -> int:
        """Steps of the current epoch done."""
        return self.position.done

    @property
    def pending(self) -> list[tuple[dict, list[int]]]:
        """``(metrics on the device, batch sizes)`` of the steps done, not yet fetched, in order."""
        items, node = [], self.position.pending
        while node:
            node, item = node
            items.append(item)
        return items[::-1]

    def _lower_scan(self) -> jax.stages.Lowered:
        """The split on the device and the scan epoch lowered for it (``carry``
        and ``base_key`` may be shapes: ``compile()`` compiles it)."""
        arrays = self.loader.arrays()
        # Host arrays go straight to the device (``jnp.asarray`` first would
        # compile a program for each, a few more for a cold start to wait on).
        self.images = self.placement.replicate(np.asarray(arrays["image"]))
        self.labels = self.placement.replicate(np.asarray(arrays["label"]))
        self.full_steps = self.loader.num_examples // self.batch_size
        order = jax.ShapeDtypeStruct((self.full_steps, self.batch_size), jnp.int32, sharding=self.placement.replicated)
        epoch_fn = scan_epoch(self.run, self.placement, scan_unroll())
        return epoch_fn.lower(self.carry, self.images, self.labels, order, self.base_key, 0, 0)

    def compile(self) -> None:
        """Compiles the scan epoch (the stream engine compiles its step at its first batch)."""
        if self._lowered is not None:
            self._epoch_fn, seconds = timed(compile_lowered, self._lowered)
            self.compile_s += seconds
            self._lowered = None

    def _compiled_step(self, batch: dict, stacked: bool = False) -> Callable:
        """The compiled step for ``batch``'s shapes, or with ``stacked`` the
        compiled scan over a chunk of batches (``engine.stream_chunk``)."""
        # the sharding too: a resumed epoch's last batch comes sharded, the scan epoch's replicated
        signature = (stacked, *((k, v.shape, getattr(v, "sharding", None)) for k, v in batch.items()))
        if signature not in self._steps:
            program = stream_chunk(self.run, self.placement) if stacked else stream_step(self.run)
            lowered = program.lower(self.carry, batch, self.base_key, 0, 0, 0)
            self._steps[signature], seconds = timed(compile_lowered, lowered)
            self.compile_s += seconds
        return self._steps[signature]

    def starting_carry(self, first_step: int) -> Carry:
        """The carry as the epoch starts from ``first_step``, kept for a
        replay if the epoch goes bad.  An epoch run as one scan does not
        donate its input, so that is the carry itself: XLA copies it into the
        loop's buffers inside the program, one pass with no call per leaf
        (on the CPU the mlp's epoch took 1-4% less than donating it and
        copying it beforehand).  The stream engine's steps donate theirs: for
        them a copy (``device_put`` copies buffers without compiling a
        program)."""
        if self.mode == "scan" and first_step == 0:
            return self.carry
        return jax.device_put(self.carry, self.placement.replicated, may_alias=False)  # also across processes

    def train_epoch(self, epoch: int, first_step: int = 0) -> None:
        """Run ``epoch`` from ``first_step``; the metrics stay on the device in ``pending``."""
        self.position = Position(self.carry, first_step, ())
        if first_step >= self.steps_per_epoch:  # resumed after its last step (Ctrl-C in its evaluation)
            return
        if self.mode == "scan" and first_step == 0:
            batches = self._scan_full_steps(epoch)
        else:
            batches = self._stream(epoch, first_step)
        try:
            for index, batch, stacked in batches:
                step = self._compiled_step(batch, stacked)
                carry, metrics = step(self.carry, batch, self.base_key, epoch, index,
                                      epoch * self.steps_per_epoch + index)  # fmt: skip
                count, size = batch["label"].shape[:2] if stacked else (1, len(batch["label"]))
                self.position = Position(carry, index + count, (self.position.pending, (metrics, [size] * count)))
                self.at_safe_point()
        finally:  # a Ctrl-C or a failing step: the prefetching thread stops now, not when the traceback goes
            getattr(batches, "close", lambda: None)()

    def _scan_full_steps(self, epoch: int) -> list[tuple[int, dict, bool]]:
        """The epoch's full batches in one compiled scan; returns the partial
        last batch (unless the loader drops it) for the stream step."""
        loader, size, full_steps = self.loader, self.batch_size, self.full_steps
        order, full = self._orders.pop(epoch) if epoch in self._orders else self._placed_order(epoch)
        carry, metrics = self._epoch_fn(self.carry, self.images, self.labels, full, self.base_key, epoch,
                                        epoch * self.steps_per_epoch)  # fmt: skip
        self.position = Position(carry, full_steps, (self.position.pending, (metrics, [size] * full_steps)))
        self._orders[epoch + 1] = self._placed_order(epoch + 1)  # drawn and moved while the device trains
        rest = order[full_steps * size :]
        if len(rest) == 0 or loader.drop_remainder:
            return []
        return [(full_steps, {"image": self.images[rest], "label": self.labels[rest]}, False)]

    def _placed_order(self, epoch: int) -> tuple[np.ndarray, jax.Array]:
        """The loader's order for ``epoch`` and its full steps' indices
        ``(steps, batch)`` on the device."""
        order, size = self.loader.permutation(epoch), self.batch_size
        full = np.asarray(order[: self.full_steps * size].reshape(self.full_steps, size), np.int32)
        return order, self.placement.replicate(full)

    def _stream(self, epoch: int, first_step: int) -> Iterator[tuple[int, dict, bool]]:
        """``(index, batch, stacked)``: the loader's batches from
        ``first_step``; on an accelerator put on the device ahead by a
        background thread, in chunks of up to ``engine.STREAM_CHUNK`` batches
        (``stacked``: leaves ``(steps, B, ...)``) when it is positive."""
        loader, placement = self.loader, self.placement
        loader.load_state_dict({"epoch": epoch, "step": first_step, "seed": loader.seed})
        if self._on_accelerator and (placement.num_devices == 1 or loader.drop_remainder):
            stacked = engine.STREAM_CHUNK > 0
            chunk = chunk_dividing(loader.num_examples // loader.batch_size - first_step, engine.STREAM_CHUNK)
            # closed with this generator
            with prefetch_to_device(loader, size=2, sharding=placement.batch, chunk=chunk if stacked else None,
                                    stack=stacked) as items:  # fmt: skip
                index = first_step
                for item in items:
                    yield index, item, stacked
                    index += item["label"].shape[0] if stacked else 1
            return
        if placement.num_devices == 1:
            batches = iter(loader)  # host arrays straight into the compiled step: one copy, made in its C++ call
        else:
            batches = (placement.shard_batch(batch) for batch in loader)
        yield from ((first_step + i, batch, False) for i, batch in enumerate(batches))

    def fetch(self) -> tuple[list[dict], int, bool]:
        """One host sync: the pending step metrics, the position among them
        of the first non-finite loss (-1 for none) and whether the parameters
        are all finite (as the scan's epoch program found, when it ran last)."""
        metrics = [m for m, _ in self.pending]
        checked = bool(metrics) and "params_finite" in metrics[-1]
        fetched, finite = jax.device_get((metrics, None if checked else self._finite(self.carry.params)))
        if checked:
            finite = fetched[-1]["params_finite"]
        losses = np.concatenate([np.ravel(m["loss"]) for m in fetched]) if fetched else np.zeros(0)
        return fetched, int(first_non_finite(losses)), bool(finite)

    def fetch_pending(self) -> list[dict]:
        """The pending step metrics on the host, in one transfer."""
        return jax.device_get([m for m, _ in self.pending])

    def carry_alive(self) -> bool:
        """False when Ctrl-C landed after the carry was donated to a step that never returned."""
        return not any(getattr(leaf, "is_deleted", lambda: False)() for leaf in jax.tree_util.tree_leaves(self.carry))

    def replay_guarded(self, guarded_step: Callable, start: Carry, epoch: int, first_step: int,
                       fast_bad: int) -> tuple[Carry, int]:  # fmt: skip
        """Rerun an epoch that went non-finite from its start with the guarded
        step, which stops updating at the first bad step: returns that carry
        (the last good parameters) and the global index of the bad step.  If
        the replay meets no bad step (a transform that is not reproducible),
        the epoch's starting carry and the fast path's step (``fast_bad``
        steps after ``first_step``; -1: the parameters went non-finite with
        finite losses, reported at ``first_step``) are returned."""
        loader, size, steps = self.loader, self.batch_size, self.steps_per_epoch
        order = loader.permutation(epoch)
        carry = start
        for index in range(first_step, steps):
            batch = loader.batch(order[index * size : (index + 1) * size], epoch=epoch, step=index)
            carry, _ = guarded_step(carry, self.placement.shard_batch(batch), self.base_key, epoch, index,
                                    epoch * steps + index)  # fmt: skip
            if int(carry.first_bad) >= 0:
                return carry, int(carry.first_bad)
        return start, epoch * steps + first_step + max(fast_bad, 0)
