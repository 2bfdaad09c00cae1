"""The batching iterator: a whole split in host memory, batched through a permutation.

    train = load('mnist', split='train', batch_size=128, seed=0)
    for epoch in range(3):
        for batch in train:                      # one epoch, reshuffled each time
            batch['image'], batch['label']       # float32 (B, H, W, C) in [0, 1], int32 (B,)

Epoch `e` visits the examples in the order `loader.permutation(e)`, which
depends on `(seed, e)` alone (`np.random.default_rng([seed, e])`), so a run
is reproducible, a resumed run continues exactly, and a training engine that
keeps the whole split on the accelerator (`loader.arrays()`) can use the same
permutation and see the same batches. Batch `s` of epoch `e` holds the
examples `permutation(e)[s * B:(s + 1) * B]`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np

from jdl._checks import check_flag, check_seed, is_int, scalar
from jdl.data import sources
from jdl.data.transforms import wants_rng

__all__ = ["Batch", "BatchLargerThanSplitError", "Loader", "Transform", "load"]

Batch = dict[str, Any]
Transform = Callable[..., Batch]  # batch -> batch, or (batch, rng) -> batch


def _to_float(images: np.ndarray) -> np.ndarray:
    """uint8 -> float32 in [0, 1] (x / 255); any other dtype is cast to float32 as it is."""
    if images.dtype == np.uint8:
        return np.divide(images, np.float32(255), dtype=np.float32)
    return np.asarray(images, np.float32)



class Loader:
    """Batches of one split: iterate for an epoch; `len()` is batches per epoch.

    Attributes: `name, split, batch_size, shuffle, seed, drop_remainder,
    num_examples, image_shape, num_classes` (and `class_names` where the
    dataset names its classes).

    Batches are `{'image': float32 (B, H, W, C), 'label': int32 (B,)}`,
    passed through `transform` when one is given.  uint8 images (tfds's
    pixels) come out in [0, 1], as x / 255; images of any other dtype are
    cast to float32 as they are (an int64 array of pixel values stays in
    [0, 255]: store it as uint8, or scale it, for [0, 1]). A transform is
    called as `transform(batch, rng)` when its second positional parameter
    is required or named `rng` (the jdl transforms' is; see
    `transforms.wants_rng`), with `rng = np.random.default_rng([seed, epoch, step +
    1])`, so augmentation is reproducible and resumes exactly too; otherwise
    as `transform(batch)`.

    The loader keeps one position: one iterator at a time. Iterating again
    after a completed epoch starts the next; iterating again after stopping
    early continues where it stopped (`state_dict()` shows where).
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, *, batch_size: int,
                 shuffle: bool = True, seed: int = 0, drop_remainder: bool = True,
                 transform: Transform | None = None, name: str = "arrays",
                 split: str = "train", num_classes: int | None = None,
                 class_names: tuple[str, ...] | None = None):
        images = np.asarray(images)
        labels = np.asarray(labels)
        if images.ndim != 4:
            raise ValueError(f"images must be (N, H, W, C); got shape {images.shape}")
        if labels.shape != images.shape[:1]:
            raise ValueError(f"labels must be ({len(images)},) to match the images; "
                             f"got shape {labels.shape}")
        _check_flags(shuffle=shuffle, drop_remainder=drop_remainder)
        _check_batching(len(labels), batch_size, drop_remainder, f"{name} {split!r}")
        check_seed("seed", seed)
        if transform is not None and not callable(transform):
            raise TypeError(f"transform must be callable or None; got {transform!r}")
        self.name, self.split = name, split
        self.batch_size, self.shuffle, self.drop_remainder = int(batch_size), bool(shuffle), bool(drop_remainder)
        self.seed = int(seed)
        self.transform = transform
        self.num_examples = len(labels)
        self.image_shape = tuple(int(d) for d in images.shape[1:])
        labels = _class_indices(labels, num_classes)
        self.num_classes = int(num_classes if num_classes is not None else labels.max() + 1)
        self.class_names = class_names
        self._images = images
        self._labels = labels
        self._transform_wants_rng = transform is not None and wants_rng(transform)
        self._epoch = 0
        self._step = 0

    # -- sizes and order -----------------------------------------------------
    def __len__(self) -> int:
        """Batches per epoch: N // B with drop_remainder, else ceil(N / B)."""
        if self.drop_remainder:
            return self.num_examples // self.batch_size
        return math.ceil(self.num_examples / self.batch_size)

    def permutation(self, epoch: int) -> np.ndarray:
        """The order of examples in `epoch`: `default_rng([seed, epoch]).permutation(N)`.

        The identity when `shuffle=False`. Depends on `(seed, epoch)` only.
        """
        if not self.shuffle:
            return np.arange(self.num_examples)
        return np.random.default_rng([self.seed, int(epoch)]).permutation(self.num_examples)

    @property
    def epoch(self) -> int:
        """The epoch the next batch belongs to (0 first)."""
        return self._epoch

    # -- iteration -----------------------------------------------------------
    def __iter__(self) -> Iterator[Batch]:
        """Yields the rest of the current epoch, then moves to the next epoch."""
        for epoch, step, indices in self.positions():
            try:
                batch = self.batch(indices, epoch=epoch, step=step)
            except BaseException:  # a failing transform: the batch is not skipped, it comes next
                self._epoch, self._step = epoch, step
                raise
            yield batch

    def positions(self) -> Iterator[tuple[int, int, np.ndarray]]:
        """Yields `(epoch, step, example indices)` for the rest of the current epoch.

        What `__iter__` batches, and it moves the position the same way:
        before each triple is handed over, so `state_dict()` taken while
        holding batch `step` resumes at `step + 1`. `prefetch_to_device` uses
        it to gather several batches at once.
        """
        epoch, start = self._epoch, self._step
        order = self.permutation(epoch)
        count = len(self)
        for step in range(start, count):
            indices = order[step * self.batch_size:(step + 1) * self.batch_size]
            if step + 1 == count:
                self._epoch, self._step = epoch + 1, 0
            else:
                self._epoch, self._step = epoch, step + 1
            yield epoch, step, indices

    def batch(self, indices: np.ndarray, *, epoch: int = 0, step: int = 0) -> Batch:
        """The batch of the given example indices, transformed (rng from `(seed, epoch, step)`)."""
        out = {"image": _to_float(np.take(self._images, indices, axis=0)),
               "label": np.take(self._labels, indices, axis=0)}
        if self.transform is None:
            return out
        if self._transform_wants_rng:
            return self.transform(out, np.random.default_rng([self.seed, epoch, step + 1]))
        return self.transform(out)

    def stored(self) -> tuple[np.ndarray, np.ndarray]:
        """The split as stored: (images, uint8 or float32; int32 labels), both read-only."""
        images, labels = self._images.view(), self._labels.view()
        images.flags.writeable = labels.flags.writeable = False
        return images, labels

    def arrays(self) -> dict[str, np.ndarray]:
        """The whole split, untransformed: `{'image': float32 [0, 1], 'label': int32}`.

        In the stored order (index `i` is example `i`), for training with the
        data on the accelerator: batch `s` of epoch `e` is
        `arrays()[k][permutation(e)[s * B:(s + 1) * B]]`, bit for bit what
        iteration yields before `transform`.
        """
        return {"image": _to_float(self._images), "label": self._labels.copy()}

    # -- position ------------------------------------------------------------
    def state_dict(self) -> dict[str, int]:
        """`{'epoch', 'step', 'seed', 'batch_size', 'num_examples', 'shuffle'}`: the next
        batch is batch `step` of epoch `epoch`; the last three say what `step` counts in."""
        return {"epoch": self._epoch, "step": self._step, "seed": self.seed,
                "batch_size": self.batch_size, "num_examples": self.num_examples, "shuffle": int(self.shuffle)}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        """Restores a position from `state_dict()`; iteration resumes at exactly that batch.

        A state saved by a loader of another batch size, split size or
        shuffling is refused (its `step` would name other examples here); a
        state without those keys (`{'epoch', 'step', 'seed'}`) is taken as
        this loader's own.
        """
        missing = {"epoch", "step", "seed"} - set(state)
        if missing:
            raise ValueError(f"state needs keys epoch, step, seed; missing {sorted(missing)}")
        # integer scalars: Python's, NumPy's, a 0-d array's (as a checkpoint stores them) or JAX's
        keys = [k for k in ("epoch", "step", "seed", *_LAYOUT) if k in state]
        not_whole = {k: state[k] for k in keys if not is_int(scalar(state[k]))}
        if not_whole:
            raise ValueError(f"state {', '.join(keys)} must be integers; got {not_whole}")
        saved = {k: int(state[k]) for k in _LAYOUT if k in state}
        here = {k: int(getattr(self, k)) for k in saved}
        if saved != here:
            raise ValueError(
                f"the state was saved by a loader with {_listed(saved)}; this one has {_listed(here)}: its "
                f"step {int(state['step'])} would name other examples here. Resume with a loader like the one "
                "the state came from (same split, batch_size, shuffle)"
            )
        epoch, step, seed = int(state["epoch"]), int(state["step"]), int(state["seed"])
        if epoch < 0 or not 0 <= step <= len(self):
            raise ValueError(f"state epoch={epoch}, step={step} out of range: expected "
                             f"epoch >= 0 and 0 <= step <= {len(self)} batches per epoch")
        check_seed("seed", seed)
        if step == len(self):  # the end of an epoch is the start of the next
            epoch, step = epoch + 1, 0
        self._epoch, self._step, self.seed = epoch, step, seed

    def __repr__(self) -> str:
        return (f"Loader(name={self.name!r}, split={self.split!r}, batch_size={self.batch_size}, "
                f"shuffle={self.shuffle}, seed={self.seed}, drop_remainder={self.drop_remainder}, "
                f"num_examples={self.num_examples}, image_shape={self.image_shape}, "
                f"num_classes={self.num_classes}, batches={len(self)})")


def _check_flags(allow_none: bool = False, **flags) -> None:
    """A ValueError unless each flag is a bool (or None where ``allow_none``)."""
    for name, value in flags.items():
        check_flag(name, value, allow_none)


def _class_indices(labels: np.ndarray, num_classes: int | None) -> np.ndarray:
    """``labels`` as int32 class indices, after checking that they are whole
    numbers (floats holding them are taken: 8.5 would have become 8), at
    least -1 (tfds' "no label", as in unlabelled splits) and below
    ``num_classes`` when it is given (and below 2**31 when not)."""
    def first(bad: np.ndarray) -> str:
        index = int(np.argmax(bad))
        return f"{labels[index].item()!r} at index {index}"

    values = labels
    if not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == bool):
        try:  # floats, bfloat16, objects holding numbers
            values = labels.astype(np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"labels must be integer class indices; got {labels.dtype} labels") from None
        fractional = ~np.isfinite(values) | (values != np.round(values))
        if fractional.any():
            raise ValueError(f"labels must be integer class indices; got {labels.dtype} labels such as "
                             f"{first(fractional)}")  # fmt: skip
    if (values < -1).any():
        raise ValueError(f"labels must be class indices >= 0 (or -1, tfds' 'no label'); got {first(values < -1)} "
                         "(for a margin loss's -1/+1 labels, store 0/1 and map them in the loss: "
                         "hinge_loss(s, 2 * y - 1))")  # fmt: skip
    limit = num_classes if num_classes is not None else 2**31 - 1
    if (values >= limit).any():
        what = f"num_classes={num_classes}" if num_classes is not None else "2**31 - 1 (int32)"
        raise ValueError(f"labels must be below {what}; got {first(values >= limit)}")
    return values.astype(np.int32, copy=False)


_LAYOUT = ("batch_size", "num_examples", "shuffle")  # what a state's step counts in


def _listed(values: dict[str, int]) -> str:
    return ", ".join(f"{key}={value}" for key, value in values.items())


def _check_batch_size(batch_size: int) -> None:
    if not is_int(batch_size):
        raise ValueError(f"batch_size must be an integer >= 1; got {batch_size!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}")


class BatchLargerThanSplitError(ValueError):
    """A batch size larger than the split it batches, with drop_remainder: no batch at all."""

    def __init__(self, message: str, batch_size: int, num_examples: int):
        super().__init__(message)
        self.batch_size, self.num_examples = batch_size, num_examples


def _check_batching(num_examples: int, batch_size: int, drop_remainder: bool, what: str) -> None:
    _check_batch_size(batch_size)
    if num_examples == 0:
        raise ValueError(f"{what} holds no examples")
    if drop_remainder and batch_size > num_examples:
        raise BatchLargerThanSplitError(
            f"batch_size {batch_size} is larger than {what}, which holds {num_examples} "
            "examples: with drop_remainder=True no batch would be left. Use batch_size <= "
            f"{num_examples}, or drop_remainder=False for one smaller batch.",
            batch_size, num_examples,
        )


def load(name: str, *, split: str, batch_size: int, shuffle: bool | None = None,
         seed: int = 0, drop_remainder: bool | None = None,
         transform: Transform | None = None, data_dir: str | os.PathLike | None = None,
         manual_dir: str | os.PathLike | None = None, download: bool = True) -> Loader:
    """Loads an image-classification dataset by its tfds name and returns its Loader.

    Args:
      name: a tensorflow-datasets name (`mnist`, `fashion_mnist`, `cifar10`,
        `cifar100`, ...; `name:version` and `name/config` work too), or
        `mnist_sample`, the 5,000 MNIST digits that ship inside jdl.
      split: a split (`'train'`, `'test'`) or a tfds split expression
        (`'train[:90%]'`, `'train[50000:]'`, `'train+test'`).
      batch_size: examples per batch, >= 1.
      shuffle: reshuffle every epoch. Default: True for the split `train`
        (and expressions on it alone), False otherwise.
      seed: the permutations derive from `(seed, epoch)`; a non-negative int.
      drop_remainder: drop the last, smaller batch. Default: True for the
        split `train` (every step has B examples), False otherwise (evaluation
        sees every example).
      transform: `batch -> batch` or `(batch, rng) -> batch` applied to each
        batch (see `jdl.data.transforms`).
      data_dir: where tfds datasets are prepared and jdl caches decoded splits
        (default `$TFDS_DATA_DIR` or `~/tensorflow_datasets`).
      manual_dir: a folder of source files already on disk (e.g. Debian's
        `/usr/share/datasets/fashion-mnist`), used to prepare the dataset.
      download: let tfds download when the data is neither prepared nor in
        `manual_dir` and the network answers.

    Errors, all raised before anything is prepared (for a dataset outside
    `sources.KNOWN_SPLITS` the split's size is known only once it is
    prepared, so a bad split or batch size is found then): ValueError for
    an unknown dataset (with close names), an unknown split, batch_size < 1
    or larger than the split with drop_remainder; PermissionError when data_dir
    is not writable and the dataset must be prepared there;
    DatasetUnavailableError (a FileNotFoundError) within seconds when the
    data is not on disk and cannot be downloaded, saying how to provide it.
    """
    _check_batch_size(batch_size)
    check_seed("seed", seed)
    _check_flags(allow_none=True, shuffle=shuffle, drop_remainder=drop_remainder)
    _check_flags(download=download)
    if transform is not None and not callable(transform):
        raise TypeError(f"transform must be callable or None; got {transform!r}")
    sources.check_name(name)
    bases = sources.base_splits(split)
    training = set(bases) == {"train"}
    shuffle = training if shuffle is None else shuffle
    drop_remainder = training if drop_remainder is None else drop_remainder

    def check_size(num_examples: int) -> None:
        _check_batching(num_examples, batch_size, drop_remainder, f"{name} split {split!r}")

    data = sources.read_split(name, split, data_dir=data_dir, manual_dir=manual_dir,
                              download=download, check_size=check_size)
    return Loader(data.images, data.labels, batch_size=batch_size, shuffle=bool(shuffle),
                  seed=seed, drop_remainder=bool(drop_remainder), transform=transform,
                  name=name, split=split, num_classes=data.num_classes,
                  class_names=data.class_names)
