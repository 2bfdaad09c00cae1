"""``fit`` and ``evaluate``: model + loss + optimizer + data -> trained model."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jdl.data.prefetch import prefetch_to_device
from jdl.nn import Layer
from jdl.optim import GradientTransformation
from jdl.train import checkpoint as ckpt
from jdl.train.engine import (
    Placement,
    choose_mode,
    evaluate_arrays,
    scan_epoch,
    stream_step,
    uses_convolution,
    with_device_transform,
)
from jdl.train.step import Carry, LossFn, all_finite, eval_step, train_step


class TrainResult(NamedTuple):
    """What ``fit`` returns: the trained parameters, model state, optimizer
    state, and one dict of metrics per epoch."""

    params: Any
    state: Any
    opt_state: Any
    history: list[dict]


class NonFiniteLossError(FloatingPointError):
    """The loss (or an update) became NaN or infinite.  ``result`` holds the
    parameters from before the offending step."""

    def __init__(self, epoch: int, step: int, steps_per_epoch: int, result: TrainResult, checkpoint=None):
        where = f"epoch {epoch}, step {step} (of {steps_per_epoch}, counting from 0)"
        saved = f"; saved them to {checkpoint}" if checkpoint else ""
        super().__init__(
            f"the loss became non-finite at {where}; kept the parameters from before that step{saved}. "
            "Lower the learning rate or check the data."
        )
        self.epoch, self.step, self.result, self.checkpoint = epoch, step, result, checkpoint


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during ``fit``: ``result`` holds the last consistent parameters,
    saved to ``checkpoint`` when ``fit`` had a ``checkpoint_dir``."""

    def __init__(self, result: TrainResult, checkpoint=None):
        super().__init__(
            f"training interrupted; saved a checkpoint to {checkpoint} (resume with fit(..., resume=...))"
            if checkpoint
            else "training interrupted (no checkpoint_dir was given, nothing saved)"
        )
        self.result, self.checkpoint = result, checkpoint


def _host_arrays(data) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels of a loader (its transform applied) or a dict."""
    if isinstance(data, dict):
        return np.asarray(data["image"]), np.asarray(data["label"])
    arrays = data.batch(np.arange(data.num_examples)) if data.transform is not None else data.arrays()
    return np.asarray(arrays["image"]), np.asarray(arrays["label"])


def _check_model_fits(model: Layer, loss_fn: LossFn, params, state, images: np.ndarray, labels: np.ndarray,
                      classes: int) -> None:
    """Raise a ValueError naming both shapes if the data does not fit the model
    or the model's output does not fit the loss and labels."""
    x = jax.ShapeDtypeStruct((2, *images.shape[1:]), jnp.float32)
    try:
        logits = jax.eval_shape(lambda p, s, x: model.apply(p, s, x)[0], params, state, x)
    except (ValueError, TypeError) as error:
        raise ValueError(f"the dataset's images of shape {images.shape[1:]} do not fit the model: {error}") from error
    y = jax.ShapeDtypeStruct((2, *labels.shape[1:]), labels.dtype)
    if np.issubdtype(labels.dtype, np.integer):
        if logits.ndim != 2 or logits.shape[-1] < classes:
            raise ValueError(
                f"the model's output of shape {tuple(logits.shape)} (per batch of 2) does not fit integer labels "
                f"of shape {tuple(y.shape)} with {classes} classes: expected logits of shape (batch, >= {classes})"
            )
    try:
        jax.eval_shape(loss_fn, logits, y)
    except (ValueError, TypeError) as error:
        raise ValueError(
            f"the model's output of shape {tuple(logits.shape)} does not fit the labels of shape {tuple(y.shape)} "
            f"for the loss: {error}"
        ) from error


def init_model(model: Layer, key: jax.Array, image_shape: tuple[int, ...]):
    """``model.init`` for inputs of ``image_shape``, naming the data's shape on failure."""
    try:
        # Compiled, not run op by op: eager initialization compiles every
        # primitive separately, seconds on an accelerator.
        return jax.jit(model.init, static_argnums=1)(key, (1, *tuple(image_shape)))
    except ValueError as error:
        raise ValueError(f"the dataset's images of shape {tuple(image_shape)} do not fit the model: {error}") from error


def evaluate(
    model: Layer, loss_fn: LossFn, params, state, data, *, batch_size: int = 1000
) -> dict[str, float]:
    """Mean loss and accuracy of the model on ``data`` (a jdl loader or a dict
    with ``image`` and ``label`` arrays), in eval mode."""
    images, labels = _host_arrays(data)
    size = min(batch_size, len(images))
    fn = jax.jit(eval_step(model, loss_fn, size))
    return evaluate_arrays(fn, params, state, jnp.asarray(images), jnp.asarray(labels), size)


def _compiled_evaluation(model, loss_fn, carry, images, labels, batch_size: int):
    """The evaluation window compiled ahead (one program for the whole split),
    and the seconds that took."""
    size = min(batch_size, len(images))
    window = jax.jit(eval_step(model, loss_fn, size))
    return _timed(lambda: window.lower(carry.params, carry.state, images, labels, 0, 0).compile())


def _timed(fn: Callable, *args):
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


def fit(
    model: Layer,
    loss_fn: LossFn,
    optimizer: GradientTransformation,
    train_data,
    *,
    epochs: int,
    eval_data=None,
    seed: int = 0,
    params=None,
    state=None,
    mode: str = "auto",
    device_transform: Callable | None = None,
    data_parallel: bool | str = "auto",
    checkpoint_dir: str | None = None,
    resume: str | bool | None = None,
    progress: bool = True,
    eval_batch_size: int = 1000,
    stop_when: Callable[[dict], bool] | None = None,
) -> TrainResult:
    """Train ``model`` on ``train_data`` (a ``jdl.data`` loader) for ``epochs`` epochs.

    Each epoch runs either as a Python loop of compiled steps over the
    loader's batches (``mode='stream'``) or as one compiled ``lax.scan`` over
    the split held on the device (``mode='scan'``); ``'auto'`` picks scan
    unless the loader has a host transform or, on the CPU, the model has
    convolutions.  Both see the same batches and keys.

    ``history`` has one dict per epoch: ``epoch`` (from 1), ``train_loss``,
    ``train_accuracy``, ``test_loss`` and ``test_accuracy`` (with
    ``eval_data``), ``time_s`` (training, compilation excluded), ``eval_s``
    and ``compile_s``.  Everything random derives from ``seed``: the same seed
    gives the same result.

    With ``checkpoint_dir`` a checkpoint (params, state, optimizer state,
    loader position, seed, history) is written atomically after every epoch
    and on Ctrl-C; ``resume=True`` (or a path) continues from it and ends
    with exactly the parameters of an uninterrupted run.  A non-finite loss
    raises ``NonFiniteLossError`` naming the epoch and step, keeping the last
    good parameters.  With several local devices, batches are sharded over
    them (data parallel, parameters replicated); for several hosts call
    ``jax.distributed.initialize()`` first and give each host its shard.
    ``stop_when(record)`` is asked after each epoch's record (e.g.
    ``lambda r: r['test_accuracy'] >= 0.92``) and ends training early when true.
    """
    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"fit: epochs must be a positive int; got {epochs!r}")
    if eval_batch_size < 1:
        raise ValueError(f"fit: eval_batch_size must be >= 1; got {eval_batch_size}")
    loader = train_data
    base_key, init_key = jax.random.split(jax.random.key(seed))
    image_shape = tuple(loader.image_shape)
    sample = loader.batch(np.arange(min(2, loader.num_examples)))
    sample_images, sample_labels = np.asarray(sample["image"]), np.asarray(sample["label"])
    if params is None:
        params, state = init_model(model, init_key, sample_images.shape[1:])
    state = {} if state is None else state
    classes = loader.num_classes
    _check_model_fits(model, loss_fn, params, state, sample_images, sample_labels, classes)
    opt_state = optimizer.init(params)

    history: list[dict] = []
    start_epoch, start_step, partial = 0, 0, _no_steps()
    resume_dir = checkpoint_dir if resume is True else resume
    if resume:
        if resume_dir is None:
            raise ValueError("fit: resume=True needs checkpoint_dir")
        target = {"params": params, "state": state, "opt_state": opt_state}
        restored = ckpt.load(resume_dir, target)
        raw = ckpt.load_raw(resume_dir)
        params, state, opt_state = restored["params"], restored["state"], restored["opt_state"]
        if int(raw["seed"]) != seed:
            raise ValueError(f"fit: the checkpoint in {resume_dir} was made with seed {int(raw['seed'])}, not {seed}")
        start_epoch, start_step = int(raw["epoch"]), int(raw["step"])
        history = json.loads(bytes(raw["history"]).decode())
        partial = json.loads(bytes(raw["partial"]).decode())

    placement = Placement(loader.batch_size, data_parallel)
    run = with_device_transform(train_step(model, loss_fn, optimizer, guard=False), device_transform)
    guarded_step = jax.jit(with_device_transform(train_step(model, loss_fn, optimizer), device_transform))
    params_finite = jax.jit(all_finite)
    copy_tree = jax.jit(lambda tree: jax.tree_util.tree_map(jnp.copy, tree))
    has_conv = uses_convolution(model, params, state, (1, *image_shape))
    data_bytes = loader.num_examples * int(np.prod(image_shape)) * 4  # float32 on the device
    mode = choose_mode(mode, has_conv=has_conv, has_host_transform=loader.transform is not None, data_bytes=data_bytes)
    carry = placement.replicate(Carry(params, state, opt_state, jnp.int32(-1)))
    base_key = placement.replicate(base_key)
    steps_per_epoch = len(loader)
    batch_size = loader.batch_size

    compile_s = 0.0
    if eval_data is not None:
        eval_images, eval_labels = (placement.replicate(jnp.asarray(a)) for a in _host_arrays(eval_data))
        eval_fn, compile_s = _compiled_evaluation(model, loss_fn, carry, eval_images, eval_labels, eval_batch_size)

    step_fns: dict[tuple, Any] = {}

    def compiled_step(batch) -> Callable:
        nonlocal compile_s
        signature = tuple((k, v.shape) for k, v in batch.items())
        if signature not in step_fns:
            fn, seconds = _timed(lambda: stream_step(run).lower(carry, batch, base_key, 0, 0, 0).compile())
            step_fns[signature], compile_s = fn, compile_s + seconds
        return step_fns[signature]

    if mode == "scan":
        arrays = loader.arrays()
        device_images, device_labels = placement.replicate(jnp.asarray(arrays["image"])), placement.replicate(
            jnp.asarray(arrays["label"]))
        full_steps = loader.num_examples // batch_size
        order_shape = jax.ShapeDtypeStruct((full_steps, batch_size), jnp.int32, sharding=placement.replicated)
        epoch_fn, seconds = _timed(lambda: scan_epoch(run, placement).lower(
            carry, device_images, device_labels, order_shape, base_key, 0, 0).compile())
        compile_s += seconds

    def save(epoch: int, step: int, carry: Carry, partial: dict):
        if checkpoint_dir is None:
            return None
        payload = {
            "params": carry.params, "state": carry.state, "opt_state": carry.opt_state,
            "epoch": np.int64(epoch), "step": np.int64(step), "seed": np.int64(seed),
            "rng": jax.random.key_data(jax.random.key(seed)),
            "loader": {k: np.int64(v) for k, v in {"epoch": epoch, "step": step, "seed": loader.seed}.items()},
            "history": np.frombuffer(json.dumps(history).encode(), np.uint8),
            "partial": np.frombuffer(json.dumps(partial).encode(), np.uint8),
        }  # fmt: skip
        return ckpt.save(checkpoint_dir, payload)

    def result(carry: Carry) -> TrainResult:
        return TrainResult(carry.params, carry.state, carry.opt_state, history)

    orders: dict[int, np.ndarray] = {}
    on_accelerator = jax.devices()[0].platform != "cpu"

    def feed(loader):
        """Host batches; on an accelerator put on the device ahead by a background thread."""
        if on_accelerator and (placement.num_devices == 1 or loader.drop_remainder):
            return prefetch_to_device(loader, size=2, sharding=placement.batch)
        return (placement.shard_batch(batch) for batch in loader)

    bar = _progress(range(start_epoch, epochs), progress, epochs, start_epoch)
    epoch, done, pending = start_epoch, start_step, []
    try:
        for epoch in bar:
            first_step = start_step if epoch == start_epoch else 0
            if epoch != start_epoch:
                partial = _no_steps()
            done, pending, compile_before = first_step, [], compile_s
            epoch_start = time.perf_counter()
            start_carry = copy_tree(carry)  # for a replay if the epoch goes bad
            if mode == "scan" and first_step == 0:
                order = orders.pop(epoch) if epoch in orders else loader.permutation(epoch)
                full = order[: full_steps * batch_size].reshape(full_steps, batch_size)
                carry, metrics = epoch_fn(
                    carry, device_images, device_labels, placement.replicate(jnp.asarray(full, jnp.int32)),
                    base_key, epoch, epoch * steps_per_epoch)
                pending.append((metrics, [batch_size] * full_steps))
                orders[epoch + 1] = loader.permutation(epoch + 1)  # on the host while the device trains
                batches = []
                rest = order[full_steps * batch_size:]
                if len(rest) and not loader.drop_remainder:
                    batches = [(full_steps, {"image": device_images[rest], "label": device_labels[rest]})]
                done = full_steps
            else:
                loader.load_state_dict({"epoch": epoch, "step": first_step, "seed": loader.seed})
                batches = ((first_step + i, b) for i, b in enumerate(feed(loader)))
            for index, batch in batches:
                fn = compiled_step(batch)
                carry, metrics = fn(carry, batch, base_key, epoch, index, epoch * steps_per_epoch + index)
                pending.append((metrics, [len(batch["label"])]))
                done = index + 1
            # One host sync per epoch: the step metrics, the first bad step, whether the parameters are finite.
            fetched, first_bad, finite = jax.device_get(
                ([m for m, _ in pending], carry.first_bad, params_finite(carry.params)))
            partial, pending = _append(partial, fetched, pending), []
            first_bad = int(first_bad)
            time_s = time.perf_counter() - epoch_start - (compile_s - compile_before)
            if first_bad >= 0 or not bool(finite):
                carry, first_bad = _replay_guarded(guarded_step, start_carry, loader, placement, base_key, epoch,
                                                   first_step, steps_per_epoch, first_bad)  # fmt: skip
                bad_epoch, bad_step = divmod(first_bad, steps_per_epoch)
                path = save(bad_epoch, bad_step, carry, _no_steps())
                raise NonFiniteLossError(bad_epoch + 1, bad_step, steps_per_epoch, result(carry), path)
            record = _epoch_record(epoch, partial, time_s, compile_s)
            if eval_data is not None:
                scores, record["eval_s"] = _timed(evaluate_arrays, eval_fn, carry.params, carry.state,
                                                  eval_images, eval_labels, eval_batch_size)
                record["test_loss"], record["test_accuracy"] = scores["loss"], scores["accuracy"]
            history.append(record)
            partial, done = _no_steps(), 0
            save(epoch + 1, 0, carry, partial)
            _show(bar, record)
            if stop_when is not None and stop_when(record):
                break
    except KeyboardInterrupt as interrupt:
        alive = not any(getattr(leaf, "is_deleted", lambda: False)() for leaf in jax.tree_util.tree_leaves(carry))
        path = save(epoch, done, carry, _flush(partial, pending)) if alive else None
        raise TrainingInterrupted(result(carry) if alive else TrainResult(None, None, None, history), path) \
            from interrupt
    return result(carry)


def _no_steps() -> dict:
    """The per-step metrics of an epoch before its first step."""
    return {"loss": [], "accuracy": [], "size": []}


def _append(partial: dict, fetched: list, pending: list) -> dict:
    """``partial`` extended by the ``pending`` steps, whose metrics were
    fetched to the host as ``fetched`` (one entry per pending item)."""
    return {
        key: partial[key] + [float(v) for m in fetched for v in np.ravel(m[key])] for key in ("loss", "accuracy")
    } | {"size": partial["size"] + [n for _, sizes in pending for n in sizes]}


def _replay_guarded(step, carry, loader, placement, base_key, epoch, first_step, steps_per_epoch, fast_first_bad):
    """Rerun an epoch that went non-finite from its start with the guarded step,
    which stops updating at the first bad step: returns that carry (the last
    good parameters) and the global index of the bad step.  If the replay
    meets no bad step (a transform that is not reproducible), the epoch's
    starting carry and the fast path's step are returned."""
    order = loader.permutation(epoch)
    size = loader.batch_size
    start = carry
    for index in range(first_step, steps_per_epoch):
        batch = placement.shard_batch(loader.batch(order[index * size : (index + 1) * size], epoch=epoch, step=index))
        carry, _ = step(carry, batch, base_key, epoch, index, epoch * steps_per_epoch + index)
        if int(carry.first_bad) >= 0:
            return carry, int(carry.first_bad)
    fallback = fast_first_bad if fast_first_bad >= 0 else epoch * steps_per_epoch + first_step
    return start, fallback


def _flush(partial: dict, pending: list) -> dict:
    """Fetch the per-step metrics gathered so far in one transfer."""
    return _append(partial, jax.device_get([m for m, _ in pending]), pending)


def _epoch_record(epoch: int, partial: dict, time_s: float, compile_s: float) -> dict:
    sizes = np.asarray(partial["size"], np.float64)
    total = sizes.sum()

    def mean(values):
        return float(np.dot(np.asarray(values, np.float64), sizes) / total) if total else math.nan

    return {"epoch": epoch + 1, "train_loss": mean(partial["loss"]), "train_accuracy": mean(partial["accuracy"]),
            "time_s": time_s, "compile_s": compile_s}  # fmt: skip


def _progress(epochs_range, enabled: bool, total: int, initial: int):
    if not enabled:
        return epochs_range
    from tqdm.auto import tqdm

    return tqdm(epochs_range, total=total, initial=initial, desc="epochs", unit="epoch")


def _show(bar, record: dict) -> None:
    if hasattr(bar, "set_postfix"):
        shown = {k: f"{v:.4f}" for k, v in record.items() if k in ("train_loss", "test_loss", "test_accuracy")}
        bar.set_postfix(shown)
