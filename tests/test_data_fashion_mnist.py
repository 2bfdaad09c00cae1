"""Real Fashion-MNIST from Debian's `dataset-fashion-mnist` package, through tfds and jdl.

Skipped where the package is not installed. The dataset is prepared once
(tfds + TensorFlow, about 35 s on two cores) into a stable folder,
`$JDL_TEST_DATA_DIR` or else `~/.cache/jdl-test-data`, and reused by later
test sessions (then well under a second). Point JDL_TEST_DATA_DIR at an empty
folder to test the preparation from scratch.
"""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import numpy as np
import pytest

import jdl.data as jd
from jdl.data import idx

DEBIAN = Path("/usr/share/datasets/fashion-mnist")
pytestmark = pytest.mark.skipif(
    idx.find_idx_files(DEBIAN) is None,
    reason=f"Debian's Fashion-MNIST is not in {DEBIAN} "
           "(apt-get install dataset-fashion-mnist)",
)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    path = Path(os.environ.get("JDL_TEST_DATA_DIR") or "~/.cache/jdl-test-data").expanduser()
    for split in ("train", "test"):
        jd.load("fashion_mnist", split=split, batch_size=128, data_dir=path, manual_dir=DEBIAN)
    return path


@pytest.fixture(scope="session")
def raw() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The IDX files decoded with NumPy alone."""
    files = idx.find_idx_files(DEBIAN)
    return {split: (idx.read_idx(files[f"{split}_data"]), idx.read_idx(files[f"{split}_labels"]))
            for split in ("train", "test")}


def as_rows(images, labels):
    images = np.asarray(images, np.uint8).reshape(len(images), -1)
    rows = np.concatenate([images, np.asarray(labels, np.uint8)[:, None]], axis=1)
    return np.sort(np.ascontiguousarray(rows).view(f"V{rows.shape[1]}").ravel())


def epoch_rows(loader):
    batches = list(loader)
    images = np.concatenate([b["image"] for b in batches])
    labels = np.concatenate([b["label"] for b in batches])
    return as_rows(np.round(images * 255), labels), len(batches)


def fmnist(data_dir, split="train", **kwargs):
    kwargs.setdefault("batch_size", 128)
    return jd.load("fashion_mnist", split=split, data_dir=data_dir, **kwargs)


def test_debian_files_verify_against_the_pinned_content(tmp_path):
    verified = idx.verify_idx_folder("fashion_mnist", DEBIAN, tmp_path)
    assert verified.how == {name: "pinned-sha256" for name in idx.IDX_FILES.values()}


def test_fashion_mnist_files_given_as_mnist_are_refused(tmp_path):
    """MNIST has no pinned sums (its files pass on structure), but these
    files are Fashion-MNIST's by theirs."""
    with pytest.raises(idx.IdxVerificationError, match="is fashion_mnist's file"):
        idx.verify_idx_folder("mnist", DEBIAN, tmp_path)


@pytest.mark.parametrize("split, n", [("train", 60000), ("test", 10000)])
def test_one_epoch_holds_every_example_exactly_once(data_dir, raw, split, n):
    loader = fmnist(data_dir, split, shuffle=True, seed=0, drop_remainder=False)
    assert loader.num_examples == n and loader.image_shape == (28, 28, 1)
    assert loader.num_classes == 10 and loader.class_names[0] == "T-shirt/top"
    rows, batches = epoch_rows(loader)
    assert batches == len(loader) == -(-n // 128)
    assert np.array_equal(rows, as_rows(*raw[split]))
    assert np.array_equal(np.bincount(raw[split][1]), np.full(10, n // 10))


def test_drop_remainder_true_drops_the_permutations_tail(data_dir):
    loader = fmnist(data_dir, shuffle=True, seed=3)
    assert loader.drop_remainder and len(loader) == 468
    labels = np.concatenate([b["label"] for b in loader])
    assert len(labels) == 468 * 128
    expected = loader.arrays()["label"][loader.permutation(0)[:468 * 128]]
    assert np.array_equal(labels, expected)


def test_same_seed_same_order_next_epoch_reshuffled(data_dir):
    a, b, c = (fmnist(data_dir, seed=s) for s in (0, 0, 1))
    first = [np.concatenate([x["label"] for x in loader]) for loader in (a, b, c)]
    assert np.array_equal(first[0], first[1]) and not np.array_equal(first[0], first[2])
    second = np.concatenate([x["label"] for x in a])
    assert not np.array_equal(first[0], second)
    assert not np.array_equal(a.permutation(0), a.permutation(1))


def test_saved_position_resumes_exactly(data_dir):
    reference = fmnist(data_dir, seed=5)
    want = [b["image"] for _ in range(2) for b in reference][400:520]  # across the epoch end

    run = fmnist(data_dir, seed=5)
    seen = 0
    while seen < 400:
        for _ in run:
            seen += 1
            if seen == 400:
                break
    state = run.state_dict()
    assert state == {"epoch": 0, "step": 400, "seed": 5, "batch_size": 128, "num_examples": 60000, "shuffle": 1}
    resumed = fmnist(data_dir, seed=5)
    resumed.load_state_dict(state)
    got = []
    while len(got) < 120:
        got.extend(b["image"] for b in resumed)
    for w, g in zip(want, got[:120], strict=True):
        assert np.array_equal(w, g)


def test_prepared_fashion_mnist_loads_without_tensorflow_quickly(data_dir, run_python):
    code = textwrap.dedent(f"""
        import sys, time
        start = time.perf_counter()
        import jdl.data
        loader = jdl.data.load('fashion_mnist', split='train', batch_size=128,
                               data_dir={str(data_dir)!r}, download=False)
        elapsed = time.perf_counter() - start
        assert loader.num_examples == 60000
        assert 'tensorflow' not in sys.modules, 'TensorFlow was imported'
        print('ok', elapsed)
    """)
    out = run_python(code, timeout=60)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-3000:]
