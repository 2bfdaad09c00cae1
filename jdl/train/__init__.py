"""Training: jitted steps, whole-epoch on-device training, metrics, checkpoints.

>>> result = jdl.train.fit(model, jdl.losses.cross_entropy, jdl.optim.adam(1e-3),
...                        train_loader, epochs=2, eval_data=test_loader)
>>> result.history[-1]["test_accuracy"]
"""

from jdl.train import checkpoint
from jdl.train.cache import enable_compilation_cache
from jdl.train.fit import NonFiniteLossError, TrainingInterrupted, TrainResult, evaluate, fit, init_model
from jdl.train.step import Carry, accuracy, eval_step, make_train_step, step_key, train_step

__all__ = [
    "fit",
    "evaluate",
    "init_model",
    "TrainResult",
    "NonFiniteLossError",
    "TrainingInterrupted",
    "make_train_step",
    "train_step",
    "eval_step",
    "step_key",
    "accuracy",
    "Carry",
    "checkpoint",
    "enable_compilation_cache",
]
