"""Shared pieces of the benchmarks: the device name, medians, JSON lines, data.

Every benchmark times jdl and its reference side by side in one process,
after a warm-up, with ``block_until_ready``, compile time kept apart, and
reports ``ratio = jdl / reference`` (lower is better): single times on these
noisy machines do not hold, ratios do.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
from pathlib import Path

import jax
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

FASHION_MNIST_DIRS = [os.environ.get("JDL_FASHION_MNIST_DIR", ""), str(ROOT / ".device-data" / "fashion-mnist"),
                      "/usr/share/datasets/fashion-mnist"]  # fmt: skip


def device_name() -> str:
    device = jax.devices()[0]
    return f"{device.platform}:{device.device_kind}".replace(" ", "_")


def line(benchmark: str, jdl_s: float, reference: str, reference_s: float, **extra) -> dict:
    """One result (``ratio = jdl_s / reference_s``, lower is better)."""
    record = {"benchmark": benchmark, "jdl_s": jdl_s, "reference": reference, "reference_s": reference_s,
              "ratio": jdl_s / reference_s if reference_s else None, "device": device_name(),
              "jax_version": jax.__version__, **extra}  # fmt: skip
    return record


def print_lines(records: list[dict]) -> list[dict]:
    """Print each record as one JSON line."""
    for record in records:
        print(json.dumps(record), flush=True)
    return records


def median(values) -> float:
    return float(statistics.median(values))


def fashion_mnist_files() -> dict:
    """Real Fashion-MNIST's IDX files (``jdl.data.idx.find_idx_files``) in the
    first of ``FASHION_MNIST_DIRS`` that holds them; empty when absent."""
    from jdl.data import idx

    for folder in FASHION_MNIST_DIRS:
        if folder and Path(folder).is_dir():
            files = idx.find_idx_files(folder)
            if files:
                return files
    return {}


def fashion_mnist() -> tuple[dict, dict, str] | None:
    """Real Fashion-MNIST (train, test) as float32 NHWC in [0, 1] and int32
    labels, read from IDX files verified by jdl.data.idx; None when absent."""
    from jdl.data import idx

    files = fashion_mnist_files()
    if not files:
        return None
    arrays = {name: idx.read_idx(path) for name, path in files.items()}

    def split(prefix):
        images = arrays[f"{prefix}_data"].astype(np.float32)[..., None] / 255.0
        return {"image": images, "label": arrays[f"{prefix}_labels"].astype(np.int32)}

    return split("train"), split("test"), "fashion_mnist (real)"


def mnist_shaped(n_train: int = 60000) -> tuple[dict, dict, str]:
    """Fashion-MNIST when present, else mnist_sample's real digits repeated to
    ``n_train`` examples (named so in the results)."""
    real = fashion_mnist()
    if real is not None:
        train, test, name = real
        return {k: v[:n_train] for k, v in train.items()}, test, name
    from jdl.data import mnist_sample

    images, labels = mnist_sample.read_split("train")
    test_images, test_labels = mnist_sample.read_split("test")
    reps = -(-n_train // len(images))
    to_float = lambda a: a.astype(np.float32).reshape(-1, 28, 28, 1) / 255.0  # noqa: E731
    train = {"image": np.tile(to_float(images), (reps, 1, 1, 1))[:n_train],
             "label": np.tile(labels.astype(np.int32), reps)[:n_train]}  # fmt: skip
    return train, {"image": to_float(test_images), "label": test_labels.astype(np.int32)}, "mnist_sample (tiled)"
