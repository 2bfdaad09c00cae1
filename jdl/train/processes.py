"""Agreement across processes (``jax.distributed``): what every process of
one ``fit`` must see the same way, and errors that stop all of them.

With several processes each runs the same script, and every collective (a
training step over the mesh, a gather) waits for all of them.  A process
that raises alone, or stops sooner, leaves the others waiting in the next
collective for good (gloo on the CPU may abort them instead, on a
mismatched one).  So ``fit`` checks what may differ between processes with
one gather, and runs the blocks whose errors may differ inside
``stopping_together``.
"""

from __future__ import annotations

import contextlib
import zlib
from typing import Any

import jax
import numpy as np


def process_flags(flag: bool) -> np.ndarray:
    """Every process's ``flag`` (``jax.distributed``), in process order, from
    one gather; ``[flag]`` with one process."""
    if jax.process_count() == 1:
        return np.array([flag])
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(np.int32(flag))).astype(bool)


def check_one_model_over_processes(data_parallel: bool | str) -> None:
    """A ValueError for ``data_parallel=False`` with several processes: each
    would train its own copy (``fit`` asks after its cross-process check, so
    that every process raises, also where they disagree)."""
    processes = jax.process_count()
    if data_parallel is False and processes > 1:
        raise ValueError(
            f"fit: data_parallel=False with {processes} processes (jax.distributed) would train {processes} "
            "separate copies, of which the first process alone writes checkpoints: use data_parallel=True "
            "or 'auto' to train one model over every process's devices, or run one process"
        )


@contextlib.contextmanager
def stopping_together(where: str):
    """A block whose errors may differ between processes (fit's preparation:
    a filesystem each host sees its own way, an argument one process alone
    rejects; the first's checkpoint writing, a user's ``stop_when``): with
    several processes an error in any of them, a Ctrl-C included, raises in
    every one after one gather, instead of leaving the others waiting in
    fit's later collectives."""
    try:
        yield
    except BaseException:
        process_flags(True)  # then raised, once every process knows
        raise
    failed = process_flags(False)
    if failed.any():
        raise RuntimeError(f"fit: process {', '.join(map(str, np.flatnonzero(failed)))} of {jax.process_count()} "
                           f"stopped {where} (its output says why), so this one stops too")  # fmt: skip


def check_same_data_everywhere(loader, eval_arrays: tuple, start: Any, arguments: dict[str, int]) -> None:
    """With several processes (``jax.distributed``): a ValueError unless every
    process holds the same training and evaluation data and loader (seed,
    batch size, ...), the same ``start`` (the params and state given, the
    checkpoint's contents resumed from, or none) and passed the same
    ``arguments`` (fit's seed, epochs, mode, resume, ... by name: a process
    that stopped sooner, or ran another program, would leave the others
    waiting).  Each process places only its own devices' part of every
    batch, so different data would train on a mixture, silently; different
    start parameters would make one replicated array of disagreeing copies.
    One gather of as many numbers in every process, whatever each holds:
    the loader's identity, a CRC-32 of each group of arrays, the
    arguments."""
    if jax.process_count() == 1:
        return
    from jax.experimental import multihost_utils

    start = [a for a in jax.tree_util.tree_leaves(start) if getattr(a, "is_fully_addressable", True)]
    identity = loader_identity(loader)
    fingerprint = [*identity.values(), *(_crc32(group) for group in (loader.stored(), eval_arrays, start)),
                   *(int(a) for a in arguments.values())]  # fmt: skip
    gathered = np.asarray(multihost_utils.process_allgather(np.asarray(fingerprint, np.uint32)))  # all < 2**32
    if not (gathered == gathered[0]).all():
        raise ValueError(
            f"fit: with {jax.process_count()} processes, each must hold the same training and evaluation data, "
            "the same loader (seed, batch size, shuffling), the same start (params given, checkpoint resumed) "
            "and the same fit arguments: each places its own devices' part of every batch. "
            f"Process {jax.process_index()} holds {fingerprint}, the processes' ({', '.join(identity)}, "
            "CRC-32 of the training data, of the evaluation data, of the start (given params and state, "
            f"checkpoint), fit's {', '.join(arguments)}) are {gathered.tolist()}"
        )


def _crc32(arrays) -> int:
    """A CRC-32 of the arrays' shapes, dtypes and bytes, in order (0 for none)."""
    crc = 0
    for a in arrays:
        a = np.ascontiguousarray(a)
        crc = zlib.crc32(a.data, zlib.crc32(f"{a.shape} {a.dtype}".encode(), crc))
    return crc


def loader_identity(loader) -> dict[str, int]:
    """What fixes a loader's batches: its seed, batch size, number of
    examples, shuffling and whether it drops the last partial batch."""
    return {"seed": int(loader.seed), "batch_size": int(loader.batch_size), "num_examples": int(loader.num_examples),
            "shuffle": int(bool(loader.shuffle)), "drop_remainder": int(bool(loader.drop_remainder))}  # fmt: skip
