"""MNIST-style IDX files: find them in a folder, verify them, decode them.

`mnist` and `fashion_mnist` ship as four IDX files (LeCun et al., "The MNIST
database", http://yann.lecun.com/exdb/mnist/, section "FILE FORMATS"):

    images: >u4 magic 2051 (0x00000803), >u4 count, >u4 rows, >u4 cols, count*rows*cols u8
    labels: >u4 magic 2049 (0x00000801), >u4 count, count u8

usually gzip-compressed. tensorflow-datasets checks the *compressed* files
against SHA-256 sums it registers for the upstream downloads. Debian's
`dataset-fashion-mnist` package recompressed them (the gzip header lost the
file name: each `.gz` is exactly `len(name) + 1` bytes shorter than upstream's),
so tfds rejects them with `NonMatchingChecksumError` although the data is the
same. jdl does not skip verification to get past that. It verifies in this
order, and stops at the first that applies:

1. the `.gz` file matches the size and SHA-256 that tfds registers for the
   upstream download: verified against upstream;
2. the decompressed content matches a SHA-256 pinned below
   (`PINNED_SHA256`): verified against the pinned content;
3. otherwise the file is only checked for structure (magic number, counts,
   image size, label range). For `fashion_mnist`, where pinned sums exist,
   that is not enough and the files are refused; for `mnist` jdl has no
   pinned sums, so structure is all it can check, and it logs a warning that
   says so, unless the content has another dataset's pinned sum (Fashion-
   MNIST's files given as MNIST's): then they are refused.

The pinned sums were computed on 2026-11-26 from the files of Debian's
`dataset-fashion-mnist` package (`/usr/share/datasets/fashion-mnist/*.gz`,
`zcat FILE | sha256sum`), not taken from an upstream publication: upstream
publishes sums of the compressed files only. They pin "the content Debian
ships", which we believe to be upstream's content (same sizes, same counts,
balanced classes of 6,000/1,000 per label) but cannot prove offline.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import shutil
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

import numpy as np

__all__ = [
    "IDX_FILES",
    "PINNED_SHA256",
    "IdxVerificationError",
    "VerifiedIdx",
    "find_idx_files",
    "read_idx",
    "verify_idx_folder",
]

log = logging.getLogger(__name__)

# Logical name -> file name (without .gz), as upstream and tfds name them.
IDX_FILES: dict[str, str] = {
    "train_data": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_data": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

_COUNTS = {"train": 60000, "test": 10000}
_IMAGE_MAGIC, _LABEL_MAGIC = 2051, 2049
_ROWS = _COLS = 28

# SHA-256 of the *decompressed* IDX files, computed here from Debian's
# dataset-fashion-mnist package (see the module docstring). Sizes in bytes:
# 47040016, 60008, 7840016, 10008.
PINNED_SHA256: dict[str, dict[str, str]] = {
    "fashion_mnist": {
        "train-images-idx3-ubyte":
            "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        "train-labels-idx1-ubyte":
            "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        "t10k-images-idx3-ubyte":
            "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        "t10k-labels-idx1-ubyte":
            "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
    },
}


class IdxVerificationError(ValueError):
    """IDX files are present but are not the dataset they claim to be."""


class VerifiedIdx(NamedTuple):
    """Decompressed, verified IDX files and how each was verified."""

    paths: dict[str, Path]  # logical name ('train_data', ...) -> decompressed file
    how: dict[str, str]  # file name -> 'upstream-sha256' | 'pinned-sha256' | 'structure-only'


def find_idx_files(folder: str | os.PathLike) -> dict[str, Path] | None:
    """Returns logical name -> path of the four IDX files in `folder`.

    Each file may be gzip-compressed (`NAME.gz`) or not (`NAME`). Returns None
    when any of the four is missing.
    """
    folder = Path(folder).expanduser()
    found = {}
    for key, name in IDX_FILES.items():
        for candidate in (folder / (name + ".gz"), folder / name):
            if candidate.is_file():
                found[key] = candidate
                break
        else:
            return None
    return found


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _decompress(src: Path, dst: Path) -> None:
    opener = gzip.open if src.suffix == ".gz" else open
    try:
        with opener(src, "rb") as fin, open(dst, "wb") as fout:
            shutil.copyfileobj(fin, fout, 1 << 20)
    except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError
        raise IdxVerificationError(f"{src}: cannot decompress: {e}") from e


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Decodes one IDX file (plain or .gz) into a uint8 array.

    Images come back as (count, rows, cols), labels as (count,). Raises
    IdxVerificationError on a wrong magic number, a size that does not
    match the header, or a .gz file that is truncated or not gzip.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (EOFError, gzip.BadGzipFile, zlib.error) as error:  # a truncated or corrupt .gz
        raise IdxVerificationError(f"{path}: not a readable gzip file ({error})") from error
    return _parse_idx(data, path)


def _parse_idx(data: bytes, path: Path) -> np.ndarray:
    if len(data) < 8:
        raise IdxVerificationError(f"{path}: {len(data)} bytes is too short for an IDX file")
    magic, count = np.frombuffer(data[:8], dtype=">u4")
    if magic == _IMAGE_MAGIC:
        if len(data) < 16:
            raise IdxVerificationError(f"{path}: truncated image header")
        rows, cols = np.frombuffer(data[8:16], dtype=">u4")
        expected = 16 + int(count) * int(rows) * int(cols)
        shape = (int(count), int(rows), int(cols))
        offset = 16
    elif magic == _LABEL_MAGIC:
        expected = 8 + int(count)
        shape = (int(count),)
        offset = 8
    else:
        raise IdxVerificationError(
            f"{path}: magic number {int(magic)}, expected {_IMAGE_MAGIC} (images) "
            f"or {_LABEL_MAGIC} (labels)"
        )
    if len(data) != expected:
        raise IdxVerificationError(
            f"{path}: {len(data)} bytes, the header promises {expected}"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(shape)


def _check_structure(key: str, path: Path) -> None:
    split, kind = key.split("_")
    array = read_idx(path)
    count = _COUNTS[split]
    if kind == "data":
        expected = (count, _ROWS, _COLS)
        if array.shape != expected:
            raise IdxVerificationError(
                f"{path}: images of shape {array.shape}, expected {expected}"
            )
    else:
        if array.shape != (count,):
            raise IdxVerificationError(f"{path}: {array.shape[0]} labels, expected {count}")
        if array.max() > 9:
            raise IdxVerificationError(f"{path}: label {int(array.max())}, expected 0..9")


def _upstream_url_infos(name: str) -> Mapping[str, tuple[int, str]]:
    """file name (with .gz) -> (size, sha256) that tfds registers for `name`."""
    from jdl.data._tfds_compat import ensure_importlib_resources

    ensure_importlib_resources()
    try:
        import tensorflow_datasets as tfds

        infos = tfds.builder_cls(name).url_infos or {}
    except Exception:  # noqa: BLE001 - no tfds, or no registered checksums
        return {}
    return {info.filename or url.rsplit("/", 1)[-1]: (info.size, info.checksum)
            for url, info in infos.items()}


def _refuse_other_datasets_content(name: str, src: Path, dst: Path) -> None:
    """An IdxVerificationError if the decompressed ``dst`` is, by its pinned
    SHA-256, one of another dataset's files (e.g. Fashion-MNIST's images
    given as MNIST's, which have the same structure)."""
    digest = _sha256(dst)
    for other, sums in PINNED_SHA256.items():
        if other != name and digest in sums.values():
            raise IdxVerificationError(
                f"{name}: {src} is {other}'s file (its content has {other}'s pinned SHA-256), "
                f"not {name}'s: point manual_dir at {name}'s own files"
            )


def verify_idx_folder(name: str, folder: str | os.PathLike,
                      workdir: str | os.PathLike) -> VerifiedIdx:
    """Verifies the four IDX files of `name` in `folder`; decompresses them into `workdir`.

    See the module docstring for the order of checks. Raises
    IdxVerificationError when a file fails, FileNotFoundError when one is
    missing.
    """
    found = find_idx_files(folder)
    if found is None:
        missing = [n for n in IDX_FILES.values()
                   if not (Path(folder) / n).is_file()
                   and not (Path(folder) / (n + ".gz")).is_file()]
        raise FileNotFoundError(
            f"{name}: {folder} lacks {', '.join(missing)} (plain or .gz)"
        )
    upstream = _upstream_url_infos(name)
    pinned = PINNED_SHA256.get(name, {})
    workdir = Path(workdir)
    paths, how = {}, {}
    for key, src in found.items():
        base = IDX_FILES[key]
        dst = workdir / base
        verdict = None
        if src.suffix == ".gz" and src.name in upstream:
            size, checksum = upstream[src.name]
            if src.stat().st_size == size and _sha256(src) == checksum:
                verdict = "upstream-sha256"
        _decompress(src, dst)
        _check_structure(key, dst)
        if verdict is None and base in pinned:
            digest = _sha256(dst)
            if digest != pinned[base]:
                raise IdxVerificationError(
                    f"{name}: {src} decompresses to content with SHA-256 {digest}; "
                    f"expected {pinned[base]} (pinned from Debian's dataset-fashion-mnist), "
                    "and the compressed file does not match tfds' registered checksum either"
                )
            verdict = "pinned-sha256"
        if verdict is None:
            _refuse_other_datasets_content(name, src, dst)
            verdict = "structure-only"
            log.warning(
                "%s: %s has the right structure, but jdl has no checksum to compare its "
                "content with (it matches neither tfds' registered download nor a pinned "
                "sum): using it as is.", name, src)
        paths[key], how[base] = dst, verdict
    return VerifiedIdx(paths=paths, how=how)
