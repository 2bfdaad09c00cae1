"""Checkpoints: one msgpack file written atomically with ``flax.serialization``.

flax is already a dependency and its msgpack format round-trips every pytree
jdl trains (dicts of arrays, optimizer-state NamedTuples) against a target
structure.  orbax would add an asynchronous multi-file format and tensorstore
for what is here a single small file; what a checkpoint library must give us
is atomicity, and that is a temporary file, ``fsync`` and ``os.replace``: a
crash mid-write leaves the previous checkpoint intact.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import serialization

FILENAME = "checkpoint.msgpack"


def _to_host(tree: Any) -> Any:
    def convert(leaf):
        if isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            leaf = jax.random.key_data(leaf)
        return np.asarray(leaf)

    return jax.tree_util.tree_map(convert, serialization.to_state_dict(tree))


def checkpoint_path(directory: str | os.PathLike) -> Path:
    """The checkpoint file inside ``directory`` (a file path is taken as is)."""
    path = Path(directory)
    return path if path.suffix == ".msgpack" else path / FILENAME


def save(directory: str | os.PathLike, payload: dict[str, Any]) -> Path:
    """Write ``payload`` (a dict of pytrees) to ``directory/checkpoint.msgpack``
    atomically: into a temporary file in the same folder, flushed to disk,
    then renamed over the old one."""
    path = checkpoint_path(directory)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = serialization.msgpack_serialize(_to_host(payload))
    fd, tmp = tempfile.mkstemp(prefix=".checkpoint-", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _existing(directory: str | os.PathLike) -> Path:
    """The checkpoint file in ``directory``: a FileNotFoundError saying what was expected if there is none."""
    path = checkpoint_path(directory)
    if not holds_checkpoint(directory):
        raise FileNotFoundError(f"no checkpoint at {path}: expected one written by fit(checkpoint_dir=...)")
    return path


def load(directory: str | os.PathLike, target: dict[str, Any]) -> dict[str, Any]:
    """Read a checkpoint into the structure of ``target`` (same keys and pytrees)."""
    return restore(load_raw(directory), target, checkpoint_path(directory))


def restore(raw: dict[str, Any], target: dict[str, Any], path: str | os.PathLike) -> dict[str, Any]:
    """A checkpoint's raw contents (``load_raw``, read from ``path``) in the
    structure of ``target`` (same keys and pytrees)."""
    missing = set(target) - set(raw)
    if missing:
        raise ValueError(f"checkpoint {path} lacks {sorted(missing)}; it holds {sorted(raw)}")
    return {name: serialization.from_state_dict(target[name], raw[name]) for name in target}


def load_raw(directory: str | os.PathLike) -> dict[str, Any]:
    """The checkpoint's contents as nested dicts of NumPy arrays; a ValueError
    naming the file when it is not a checkpoint (truncated, corrupt)."""
    path = _existing(directory)
    data = path.read_bytes()  # an unreadable file is an OSError of its own, not a corrupt checkpoint
    try:
        raw = serialization.msgpack_restore(data)
    except Exception as error:  # noqa: BLE001 - msgpack raises its own kinds for each way a file is broken
        raise ValueError(f"{path} is not a jdl checkpoint (truncated or corrupt?): {error}") from error
    if not isinstance(raw, dict):
        raise ValueError(f"{path} is not a jdl checkpoint: it holds a {type(raw).__name__}, not a dict")
    return raw


def holds_checkpoint(directory: str | os.PathLike) -> bool:
    """Whether ``directory`` has a checkpoint file."""
    return checkpoint_path(directory).is_file()


def check_writable(directory: str | os.PathLike) -> None:
    """A ValueError saying why unless a checkpoint could be written to
    ``directory`` (a folder, existing or to be made, or its nearest existing
    parent, writable); creates nothing."""
    path = checkpoint_path(directory)
    if path.exists() and not path.is_file():
        raise ValueError(f"checkpoint_dir: {path} exists and is not a file")
    folder = path.parent
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        raise ValueError(f"checkpoint_dir: {folder} is a file, not a folder; got checkpoint_dir={str(directory)!r}")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"checkpoint_dir: {folder} is not writable; got checkpoint_dir={str(directory)!r}")
