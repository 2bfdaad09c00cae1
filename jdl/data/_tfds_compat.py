"""The few places where jdl must step around tensorflow-datasets or TensorFlow.

- `import_tensorflow()`: the only way jdl imports TensorFlow (to *prepare* a
  dataset). It hides every GPU from TensorFlow before TensorFlow touches one,
  so TF never reserves accelerator memory that JAX needs (TF otherwise maps
  nearly all GPU memory the moment it initializes its devices).
- `ensure_importlib_resources()`: tfds 4.9 asks for the PyPI backport
  `importlib_resources` (through `etils.epath`) when it locates a builder's
  checksum file, which `download_and_prepare` always does. The backport is
  not installed everywhere tfds is; on Python >= 3.10 the standard library's
  `importlib.resources` offers the same `files`, `as_file` and
  `abc.Traversable`, so jdl registers it under the backport's name when, and
  only when, the backport is missing.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import sys
from types import ModuleType

log = logging.getLogger(__name__)


def ensure_importlib_resources() -> None:
    """Makes `import importlib_resources` work (see the module docstring)."""
    if "importlib_resources" in sys.modules:
        return
    if importlib.util.find_spec("importlib_resources") is not None:
        return
    from importlib import resources
    from importlib.resources import abc  # noqa: F401 - tfds reads .abc.Traversable

    sys.modules["importlib_resources"] = resources


def import_tensorflow() -> ModuleType:
    """Imports TensorFlow with every GPU hidden from it, and returns the module.

    Raises ImportError with the install command when TensorFlow is missing.
    If TensorFlow had already initialized its devices (the caller used it
    before), the GPUs cannot be hidden any more; that is logged, not raised.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TF's C++ info lines, unless asked for
    try:
        import tensorflow as tf
    except ImportError as e:
        raise ImportError(
            "Preparing a tensorflow-datasets dataset (extracting it and writing its "
            "files) needs TensorFlow, which is not installed. Install it with "
            "`pip install tensorflow-cpu` (or, in a checkout of jdl, `pip install '.[prepare]'`); "
            "reading an already prepared dataset, and 'mnist_sample', need no TensorFlow."
        ) from e
    try:
        tf.config.set_visible_devices([], "GPU")
    except (RuntimeError, ValueError) as e:  # devices already initialized
        if tf.config.get_visible_devices("GPU"):
            log.warning("TensorFlow already initialized its GPUs, so jdl could not hide "
                        "them from it: %s", e)
    return tf
