"""Helpers shared by the notebook sources: cell constructors and the first (setup) cell."""

from __future__ import annotations

import textwrap


def md(text: str) -> tuple[str, str]:
    """A markdown cell."""
    return ("markdown", textwrap.dedent(text).strip("\n"))


def code(text: str) -> tuple[str, str]:
    """A code cell."""
    return ("code", textwrap.dedent(text).strip("\n"))


SETUP = r'''
# Setup: jdl, the accelerator, the sizes.
# Where to install jdl from when it is missing (on Colab): jdl (distribution `jdl-learn`) is not on
# PyPI, and PyPI's `jdl` is another project. Set JDL_SOURCE to the jdl repository
# ("git+https://.../jdl.git") or to a checkout uploaded to the runtime ("./jdl").
JDL_SOURCE = ""
import os

try:
    import jdl
except ImportError:
    if not JDL_SOURCE:
        raise ImportError("jdl is not installed: set JDL_SOURCE in this cell to the jdl repository "
                          "(git+https://...) or an uploaded checkout (./jdl), and run the cell again") from None
    %pip install -q {JDL_SOURCE}
    import jdl

import jax

%matplotlib inline

print(f"jdl {jdl.__version__}, jax {jax.__version__}, devices: {jax.devices()}")
ACCELERATOR = jax.devices()[0].platform in ("gpu", "tpu")
QUICK = os.environ.get("JDL_QUICK") == "1"  # the test suite's smoke run: the smallest sizes
SIZE = "quick" if QUICK else "full" if ACCELERATOR else "small"  # full on a GPU/TPU, small on a CPU
'''


def setup(sizes: str) -> tuple[str, str]:
    """The first code cell: install jdl if missing, print the devices, choose the sizes.

    ``sizes`` is code that sets this notebook's sizes from ``SIZE`` (``'full'``, ``'small'`` or ``'quick'``).
    """
    return code(SETUP.strip("\n") + "\n" + textwrap.dedent(sizes).strip("\n") + '\nprint(f"sizes: {SIZE}")')
