"""jdl.optim: optimizers as pure gradient transformations, checked against optax.

    optimizer = jdl.optim.adam(1e-3)                  # or jdl.optim.get('adam')
    opt_state = optimizer.init(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    params = jdl.optim.apply_updates(params, updates)

A `GradientTransformation` is a NamedTuple of two pure functions
`(init, update)`, the same interface as optax, so jdl and optax
transformations chain with each other in both directions.  Modules:

- `base`: the interface, `chain`, `apply_updates`;
- `transforms`: the building blocks (`scale_by_adam`, `trace`, ...);
- `alias`: the optimizers (`gd`, `sgd`, `momentum`, `adagrad`, `rmsprop`,
  `adadelta`, `adam`; `adamw`, `nadam`, `amsgrad`, `adamax`, `lion`) and
  `get(name, **hyperparameters)`;
- `schedules`: learning-rate schedules `step -> lr`.

Full-batch, stochastic and mini-batch gradient descent are one update rule
(`gd`) fed batches of N, 1 and B examples: the data loader's `batch_size`
makes the difference, not the optimizer.
"""

from jdl.optim import schedules
from jdl.optim.alias import (
    DEFAULT_LEARNING_RATES,
    OPTIMIZERS,
    adadelta,
    adagrad,
    adam,
    adamax,
    adamw,
    amsgrad,
    gd,
    get,
    lion,
    minibatch,
    momentum,
    nadam,
    rmsprop,
    sgd,
)
from jdl.optim.base import (
    EmptyState,
    GradientTransformation,
    OptState,
    Params,
    ScalarOrSchedule,
    Schedule,
    Updates,
    apply_updates,
    chain,
    identity,
)
from jdl.optim.schedules import (
    constant,
    cosine_decay,
    exponential_decay,
    piecewise_constant,
    warmup_cosine_decay,
)
from jdl.optim.transforms import (
    ScaleByAdaDeltaState,
    ScaleByAdamState,
    ScaleByAmsgradState,
    ScaleByLionState,
    ScaleByRmsState,
    ScaleByRssState,
    ScaleByRStdDevState,
    ScaleByScheduleState,
    TraceState,
    WeightDecayScheduleState,
    add_decayed_weights,
    clip_by_global_norm,
    scale,
    scale_by_adadelta,
    scale_by_adam,
    scale_by_adamax,
    scale_by_amsgrad,
    scale_by_learning_rate,
    scale_by_lion,
    scale_by_rms,
    scale_by_rss,
    scale_by_schedule,
    trace,
)

__all__ = [
    "DEFAULT_LEARNING_RATES",
    "OPTIMIZERS",
    "EmptyState",
    "GradientTransformation",
    "OptState",
    "Params",
    "ScalarOrSchedule",
    "ScaleByAdaDeltaState",
    "ScaleByAdamState",
    "ScaleByAmsgradState",
    "ScaleByLionState",
    "ScaleByRStdDevState",
    "ScaleByRmsState",
    "ScaleByRssState",
    "ScaleByScheduleState",
    "Schedule",
    "TraceState",
    "Updates",
    "WeightDecayScheduleState",
    "adadelta",
    "adagrad",
    "adam",
    "adamax",
    "adamw",
    "add_decayed_weights",
    "amsgrad",
    "apply_updates",
    "chain",
    "clip_by_global_norm",
    "constant",
    "cosine_decay",
    "exponential_decay",
    "gd",
    "get",
    "identity",
    "lion",
    "minibatch",
    "momentum",
    "nadam",
    "piecewise_constant",
    "rmsprop",
    "scale",
    "scale_by_adadelta",
    "scale_by_adam",
    "scale_by_adamax",
    "scale_by_amsgrad",
    "scale_by_learning_rate",
    "scale_by_lion",
    "scale_by_rms",
    "scale_by_rss",
    "scale_by_schedule",
    "schedules",
    "sgd",
    "trace",
    "warmup_cosine_decay",
]
