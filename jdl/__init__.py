"""jdl: a functional deep-learning library on JAX.

Models and losses are pure functions, optimizers are hand-written gradient
transformations that agree with optax, and data comes through
tensorflow-datasets.  See README.md and shared/DESIGN.md for the tour.
"""

__version__ = "0.1.0"
