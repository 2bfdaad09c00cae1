"""jdl.data: tensorflow-datasets image classification, batched from host memory.

    train = jdl.data.load('mnist', split='train', batch_size=128, shuffle=True, seed=0)
    for batch in train:            # one epoch; iterate again for the next (reshuffled)
        batch['image'], batch['label']     # float32 (B, H, W, C) in [0, 1], int32 (B,)

- `load(name, *, split, batch_size, ...) -> Loader` (loader.py): any tfds
  image-classification dataset by name, plus `mnist_sample` (5,000 MNIST
  digits shipped in the package). `Loader`: `len()`, `permutation(epoch)`,
  `arrays()`, `state_dict()` / `load_state_dict()`.
- `transforms`: `normalize`, `one_hot`, `random_crop`, `random_flip`,
  `compose` on the host; `random_crop_device`, `random_flip_device` jittable.
- `prefetch_to_device(iterable, size=2, sharding=None, chunk=None,
  stack=False)`: background device transfer, sharded over several devices;
  `stack=True` hands over chunks of batches for a `lax.scan` of steps.
- sources.py says where data comes from and goes (`data_dir`, caches,
  `manual_dir`, offline behavior); idx.py how MNIST-style IDX files,
  Debian's Fashion-MNIST included, are verified.

Importing jdl.data registers the tfds builder `mnist_sample` and imports
neither TensorFlow nor anything that reserves accelerator memory.
"""

from jdl.data import mnist_sample as _mnist_sample  # noqa: F401 - registers the tfds builder
from jdl.data.idx import IdxVerificationError
from jdl.data.loader import Batch, Loader, Transform, load
from jdl.data.prefetch import Prefetcher, data_sharding, prefetch_to_device
from jdl.data.sources import DatasetUnavailableError, TensorFlowNeededError, default_data_dir
from jdl.data.transforms import (
    CIFAR10_MEAN_STD,
    CIFAR100_MEAN_STD,
    FASHION_MNIST_MEAN_STD,
    MEAN_STD,
    MNIST_MEAN_STD,
    channel_mean_std,
    compose,
    normalize,
    one_hot,
    random_crop,
    random_crop_device,
    random_flip,
    random_flip_device,
)

__all__ = [
    "CIFAR100_MEAN_STD",
    "CIFAR10_MEAN_STD",
    "FASHION_MNIST_MEAN_STD",
    "MEAN_STD",
    "MNIST_MEAN_STD",
    "Batch",
    "DatasetUnavailableError",
    "TensorFlowNeededError",
    "IdxVerificationError",
    "Loader",
    "Prefetcher",
    "Transform",
    "channel_mean_std",
    "compose",
    "data_sharding",
    "default_data_dir",
    "load",
    "normalize",
    "one_hot",
    "prefetch_to_device",
    "random_crop",
    "random_crop_device",
    "random_flip",
    "random_flip_device",
]
