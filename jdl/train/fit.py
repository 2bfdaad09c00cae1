"""``fit`` and ``evaluate``: model + loss + optimizer + data -> trained model."""

from __future__ import annotations

import collections
import json
import math
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jdl._checks import check_seed, is_int
from jdl.nn import Layer
from jdl.nn.layers import auto_conv_override
from jdl.optim import GradientTransformation
from jdl.train import checkpoint as ckpt
from jdl.train.engine import (
    Placement,
    choose_mode,
    compile_lowered,
    compile_once,
    evaluate_arrays,
    lower_once,
    run_once,
    run_once_placement,
    uses_convolution,
    with_device_transform,
)
from jdl.train.interrupts import DeferredInterrupts
from jdl.train.processes import (
    check_one_model_over_processes,
    check_same_data_everywhere,
    loader_identity,
    process_flags,
    stopping_together,
)
from jdl.train.runner import EpochRunner, Position, timed
from jdl.train.step import Carry, LossFn, eval_step, run_keys, train_step


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
    saved to ``checkpoint`` when ``fit`` had a ``checkpoint_dir``.  After a
    second Ctrl-C that did not wait for a consistent point, ``result``'s
    parameters are None and ``checkpoint`` is the last one saved before it
    (None if none was)."""

    def __init__(self, result: TrainResult, checkpoint=None):
        if result.params is None:
            where = (f"; the last checkpoint saved is {checkpoint} (resume with fit(..., resume=...))" if checkpoint
                     else " (no checkpoint saved)")  # fmt: skip
            message = f"training interrupted at once by a second Ctrl-C: the step under way is lost{where}"
        elif checkpoint:
            message = f"training interrupted; saved a checkpoint to {checkpoint} (resume with fit(..., resume=...))"
        else:
            message = "training interrupted (no checkpoint_dir was given, nothing saved)"
        super().__init__(message)
        self.result, self.checkpoint = result, checkpoint


def _host_arrays(data) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels of a loader (its transform applied) or a dict: a
    ValueError when a dict's images are not float (a Loader scales uint8
    images to [0, 1]; a dict's are taken as they are) or its images and
    labels differ in number."""
    if isinstance(data, dict):
        images, labels = np.asarray(data["image"]), np.asarray(data["label"])
        if not jnp.issubdtype(images.dtype, jnp.floating):  # bfloat16 too, which NumPy does not count
            raise ValueError(
                f"the evaluation data's images must be floats, as the model trained on; got {images.dtype} "
                "(a jdl.data.Loader scales uint8 images to [0, 1]: wrap them in one, or divide by 255)"
            )
        if len(images) != len(labels):
            raise ValueError(f"the evaluation data has {len(images)} images but {len(labels)} labels")
        return images, labels
    arrays = data.batch(np.arange(data.num_examples)) if data.transform is not None else data.arrays()
    return np.asarray(arrays["image"]), np.asarray(arrays["label"])


def _check_model_fits(
    model: Layer, loss_fn: LossFn, params, state, images: np.ndarray, labels: np.ndarray, classes: int,
    data: str = "the dataset",
) -> None:  # fmt: skip
    """Raise a ValueError naming both shapes if the data does not fit the model
    or the model's output does not fit the loss and labels (``data``: what
    the message calls the data)."""
    x = jax.ShapeDtypeStruct((2, *images.shape[1:]), jnp.float32)
    try:
        logits = jax.eval_shape(lambda p, s, x: model.apply(p, s, x)[0], params, state, x)
    except (ValueError, TypeError) as error:
        raise ValueError(f"{data}'s images of shape {images.shape[1:]} do not fit the model: {error}") from error
    y = jax.ShapeDtypeStruct((2, *labels.shape[1:]), labels.dtype)
    binary_scores = logits.ndim == 1 and labels.ndim == 1 and classes <= 2  # one score per example
    if np.issubdtype(labels.dtype, np.integer) and not binary_scores:
        if logits.ndim != 2 or logits.shape[-1] < classes:
            raise ValueError(
                f"the model's output of shape {tuple(logits.shape)} (per batch of 2) does not fit integer labels "
                f"of shape {tuple(y.shape)} with {classes} classes: expected logits of shape (batch, >= {classes})"
                + (" (or, for a binary loss, one score per example: shape (batch,))"
                   if classes <= 2 and logits.shape[-1:] == (1,) else "")
            )
        class_indices = labels.ndim == 1 and logits.ndim == 2 and logits.shape[-1] > 1  # not hinge's +-1 columns
        if class_indices and labels.size and (labels.min() < 0 or labels.max() >= logits.shape[-1]):
            raise ValueError(f"{data}'s integer labels must lie in [0, {logits.shape[-1]}) for the model's "
                             f"{logits.shape[-1]} outputs; got labels from {labels.min()} to {labels.max()}")
    try:
        jax.eval_shape(loss_fn, logits, y)
    except (ValueError, TypeError) as error:
        raise ValueError(
            f"the model's output of shape {tuple(logits.shape)} does not fit the labels of shape {tuple(y.shape)} "
            f"for the loss: {error}"
        ) from error


def init_model(model: Layer, key: jax.Array, image_shape: tuple[int, ...]):
    """``model.init`` for inputs of ``image_shape``, naming the data's shape on
    failure; compiled as a program run once (``jdl.train.engine.run_once``)."""
    return run_once(lambda key: _init_for_images(model, key, image_shape), key)


def _init_for_images(model: Layer, key: jax.Array, image_shape: tuple[int, ...]):
    try:
        return model.init(key, (1, *tuple(image_shape)))
    except ValueError as error:
        raise ValueError(f"the dataset's images of shape {tuple(image_shape)} do not fit the model: {error}") from error


def _evaluation_arrays(model: Layer, loss_fn: LossFn, params, state, data, batch_size) -> tuple[np.ndarray, ...]:
    """``data``'s images and labels on the host, checked to fit the model and
    the loss (integer labels within the model's outputs: the per-example loss
    of one outside them is NaN) before anything compiles."""
    if not is_int(batch_size) or batch_size < 1:
        raise ValueError(f"the evaluation batch size must be a positive int; got {batch_size!r}")
    images, labels = _host_arrays(data)
    if len(images) == 0:
        raise ValueError("evaluate: the evaluation data is empty")
    _check_model_fits(model, loss_fn, params, state, images, labels, 0, data="the evaluation data")
    return images, labels


def evaluate(model: Layer, loss_fn: LossFn, params, state, data, *, batch_size: int = 1000) -> dict[str, float]:
    """Mean loss and accuracy of the model on ``data`` (a jdl loader or a dict
    with ``image`` and ``label`` arrays), in eval mode."""
    _check_model(model, "evaluate")
    images, labels = _evaluation_arrays(model, loss_fn, params, state, data, batch_size)
    images, labels = jnp.asarray(images), jnp.asarray(labels)
    fn = _evaluation_program(model, loss_fn, params, state, images, labels, batch_size)
    return evaluate_arrays(fn, params, state, images, labels, min(batch_size, len(images)))


EVALUATION_PROGRAMS_KEPT = 8
_evaluation_programs: collections.OrderedDict = collections.OrderedDict()


def _evaluation_program(model, loss_fn, params, state, images, labels, batch_size: int) -> jax.stages.Compiled:
    """The compiled evaluation window for these arguments, compiled once
    (with fit's options for it) and kept for the next ``evaluate`` with the
    same model, loss, batch size and argument shapes, dtypes and placements
    (the last ``EVALUATION_PROGRAMS_KEPT``)."""
    key = _evaluation_key(model, loss_fn, min(batch_size, len(images)), (params, state, images, labels))
    if key is not None and key in _evaluation_programs:
        _evaluation_programs.move_to_end(key)
        return _evaluation_programs[key]
    lowered = _lowered_evaluation(model, loss_fn, Carry(params, state, None, None), images, labels, batch_size)
    program = compile_lowered(lowered, evaluation=True)  # fit's options for its evaluation program
    if key is not None:
        _evaluation_programs[key] = program
        while len(_evaluation_programs) > EVALUATION_PROGRAMS_KEPT:
            _evaluation_programs.popitem(last=False)
    return program


def _evaluation_key(model, loss_fn, size: int, arguments) -> tuple | None:
    """What fixes the compiled evaluation: the model and loss, the window
    size, the arguments' structure, shapes, dtypes and placements, and the
    settings a trace reads (the convolution method chosen for 'auto' convs,
    JAX's matmul precision, 64-bit mode, PRNG); None when the model or loss
    cannot be hashed (then nothing is kept)."""
    leaves, treedef = jax.tree_util.tree_flatten(arguments)
    settings = (auto_conv_override(), jax.default_backend(), jax.config.jax_default_matmul_precision,
                jax.config.jax_enable_x64, jax.config.jax_default_prng_impl)  # fmt: skip
    key = (model, loss_fn, size, treedef, settings,
           tuple((jnp.shape(x), jnp.result_type(x), getattr(x, "sharding", None)) for x in leaves))  # fmt: skip
    try:
        hash(key)
    except TypeError:
        return None
    return key


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


# Threads compiling the start and evaluation programs beside the epoch's (0:
# one after another).  On 2 cores they only contend: the flax CNN's cold start
# (benchmarks/cold_start.py's child, 4 alternating rounds) 4.4-4.9 s one after
# another against 4.5-5.1 s side by side.  On a 16-core GPU host side by side
# saved ~1.8 s of ~8 (``_compile_side_by_side``).
COMPILE_THREADS = 2 if _cores() >= 4 else 0


def _compile_side_by_side(lowered_start, start_platform: str | None, lowered_eval, runner: EpochRunner):
    """``(start program, evaluation program or None)`` compiled in threads
    while this thread compiles the runner's epoch (XLA compiles without
    holding Python's lock).  The flax CNN to 92% on an H200, from the call,
    fresh processes: 5.9-6.3 s against 7.5-8.3 s one after another
    (benchmarks/README.md, stop 15).  On an error or Ctrl-C nothing waits for
    the other compilations.  With ``COMPILE_THREADS`` 0 (hosts of fewer than
    4 cores) one after another.  ``start_platform``: where the start program
    runs (None: the default backend)."""
    if not COMPILE_THREADS:
        runner.compile()
        evaluation = compile_lowered(lowered_eval, evaluation=True) if lowered_eval is not None else None
        return compile_once(lowered_start, start_platform), evaluation
    pool = ThreadPoolExecutor(max_workers=COMPILE_THREADS, thread_name_prefix="jdl-compile")
    try:
        start = pool.submit(compile_once, lowered_start, start_platform)
        evaluation = pool.submit(compile_lowered, lowered_eval, True) if lowered_eval is not None else None
        runner.compile()
        return start.result(), evaluation.result() if evaluation is not None else None
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def _lowered_evaluation(model, loss_fn, carry, images, labels, batch_size: int) -> jax.stages.Lowered:
    """The evaluation window (one program for the whole split), lowered for
    ``carry``'s parameters and state (arrays or their shapes)."""
    size = min(batch_size, len(images))
    return jax.jit(eval_step(model, loss_fn, size)).lower(carry.params, carry.state, images, labels, 0, 0)


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
    loader's batches (``mode='stream'``; on an accelerator the batches are
    prefetched to the device and, on one device or with ``drop_remainder``,
    run ``engine.STREAM_CHUNK`` steps per call)
    or as one compiled ``lax.scan`` over
    the split held on the device (``mode='scan'``); ``'auto'`` picks scan
    unless the loader has a host transform or, on the CPU, the model has
    convolutions.  Both see the same batches and keys.

    ``history`` has one dict per epoch: ``epoch`` (from 1), ``train_loss``,
    ``train_accuracy``, ``test_loss`` and ``test_accuracy`` (with
    ``eval_data``), ``time_s`` (training, compilation excluded), ``eval_s``
    and ``compile_s`` (seconds compiling so far: before the first epoch the
    start and evaluation programs compile side by side with the scan
    engine's epoch on hosts of 4 cores or more, counted once as the wall time
    they took together; the stream engine compiles its step at its first
    batch).  Everything random derives from ``seed``: the same seed
    gives the same result.

    With ``checkpoint_dir`` a checkpoint (params, state, optimizer state,
    loader position, seed, history) is written atomically after every epoch
    and on Ctrl-C (which waits for the step under way; a second Ctrl-C stops
    at once); ``resume=True`` (or a path) continues from it and ends
    with exactly the parameters of an uninterrupted run (a checkpoint made
    with another seed, loader or model, or an optimizer whose state has
    another structure, is a ValueError saying what differs, the seed and
    loader before anything compiles; an optimizer with the same state, such
    as adam at another learning rate, takes over from the checkpoint, as it
    may after a divergence).  A
    ``checkpoint_dir`` that already holds a checkpoint needs ``resume``: an
    earlier run's is not overwritten silently.  A non-finite loss
    raises ``NonFiniteLossError`` naming the epoch and step, keeping the last
    good parameters.  With several local devices, batches are sharded over
    them (data parallel, parameters replicated; with ``data_parallel='auto'``
    a batch size that is not a multiple of the device count trains on one
    device, with a warning; ``True`` makes that an error).  For several hosts,
    call ``jax.distributed.initialize()`` in every process and run the same
    script with the same loader in each: the mesh spans every process's
    devices, each process places its own devices' part of each batch (a
    ValueError before training unless the processes hold the same data,
    loader, start parameters and checkpoint to resume from, if given; a
    batch size not divisible by the device count, or ``data_parallel=False``,
    is an error there), and the first process writes the checkpoints and
    shows the progress bar
    (put ``checkpoint_dir`` on a filesystem every host sees, for ``resume``).
    An error in one process before training (a checkpoint folder it alone
    refuses) or at an epoch's end (a checkpoint the first fails to write, a
    ``stop_when`` that fails) stops every process.  A Ctrl-C reaching any
    of the processes stops all of them at the end of the epoch, where they
    agree (a few gathers of one number an epoch), with one checkpoint.
    The accelerator stream engine's prefetching thread starts no program
    over several processes (``jax.thread_guard(True)`` lets ``fit`` run);
    on the CPU it is tested with one device a process (with two, XLA's CPU
    collectives hung with several steps in flight, as a plain jitted loop's
    do).
    ``stop_when(record)`` is asked after each epoch's record (e.g.
    ``lambda r: r['test_accuracy'] >= 0.92``) and ends training early when true
    (with several processes, when true in any of them).
    """
    if not is_int(epochs) or epochs < 1:
        raise ValueError(f"fit: epochs must be a positive int; got {epochs!r}")
    epochs = int(epochs)
    if not is_int(eval_batch_size) or eval_batch_size < 1:
        raise ValueError(f"fit: eval_batch_size must be a positive int; got {eval_batch_size!r}")
    seed = check_seed("fit: seed", seed)
    _check_model(model, "fit")
    _check_data_and_optimizer(train_data, optimizer)
    if stop_when is not None and not callable(stop_when):
        raise TypeError(f"fit: stop_when must be a function of an epoch's record, or None; got {stop_when!r}")
    loader = train_data
    resume_from = (checkpoint_dir if resume is True else resume) if resume else None

    # Errors may differ between processes here (each reads its own filesystem, its own arguments):
    # an error in any of them stops every one, before the first collective.
    with stopping_together("before training"):
        if checkpoint_dir is not None:
            _check_checkpoint_dir(checkpoint_dir, resume)
        # the checkpoint's raw contents, checked against the seed, loader and epochs before anything compiles
        raw_checkpoint = _check_resumable(resume_from, seed, loader, epochs) if resume else None
        placement = Placement(loader.batch_size, data_parallel)
        start_program, start_args, shapes, image_shape = _start_program(model, loss_fn, optimizer, loader, seed,
                                                                        params, state)  # fmt: skip
        # The shapes, placed: the epoch and evaluation programs are lowered from
        # these, to compile side by side with the start program.
        key_shape, *shapes = jax.tree_util.tree_map(
            lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=placement.replicated),
            (*shapes, jax.ShapeDtypeStruct((), jnp.int32)))  # fmt: skip
        carry_shapes = Carry(*shapes)
        run = with_device_transform(train_step(model, loss_fn, optimizer, guard=False), device_transform)
        guarded_step = jax.jit(with_device_transform(train_step(model, loss_fn, optimizer), device_transform))
        image_shape = (1, *image_shape)  # as the model sees them: after the loader's transform
        data_bytes = loader.num_examples * int(np.prod(image_shape)) * 4  # float32 on the device
        mode = choose_mode(mode, has_conv=uses_convolution(model, carry_shapes.params, carry_shapes.state, image_shape),
                           has_host_transform=loader.transform is not None, data_bytes=data_bytes)  # fmt: skip
        # On an accelerator the start program may run on the host (``RUN_ONCE_ON_HOST``);
        # parameters given by the caller stay where they are.
        host = run_once_placement() if params is None and state is None else None
        lowered_start = lower_once(start_program, *start_args, **({"out_shardings": host} if host else {}))
        lowered_eval = None
        if eval_data is not None:
            eval_arrays = _evaluation_arrays(model, loss_fn, carry_shapes.params, carry_shapes.state, eval_data,
                                             eval_batch_size)  # fmt: skip
            eval_images, eval_labels = placement.replicate(eval_arrays)  # host arrays: no program
            lowered_eval = _lowered_evaluation(model, loss_fn, carry_shapes, eval_images, eval_labels, eval_batch_size)
    check_same_data_everywhere(loader, eval_arrays if eval_data is not None else (), (params, state, raw_checkpoint),
                               {"seed": seed, "epochs": epochs, "mode": ("auto", "stream", "scan").index(mode),
                                "resume": bool(resume), "data_parallel": (False, True, "auto").index(data_parallel),
                                "eval_batch_size": eval_batch_size,
                                "whether a device_transform is given": device_transform is not None})  # fmt: skip
    check_one_model_over_processes(data_parallel)
    runner = EpochRunner(run, loader, placement, mode, carry_shapes, key_shape)  # the scan epoch lowered
    compile_began = time.perf_counter()
    start_program, eval_fn = _compile_side_by_side(lowered_start, "cpu" if host else None, lowered_eval, runner)
    runner.compile_s = time.perf_counter() - compile_began  # the wall time, not the sum of the three
    base_key, params, state, opt_state = start_program(*start_args)
    start = _Start(params, state, opt_state, epoch=0, step=0, history=[], partial=_no_steps())
    if resume:
        start = _restore(resume_from, raw_checkpoint, start)
    history, partial = start.history, start.partial
    runner.position = Position(placement.replicate(Carry(start.params, start.state, start.opt_state, np.int32(-1))),
                               start.step, ())  # fmt: skip
    runner.base_key = placement.replicate(base_key)

    def save(epoch: int, step: int, carry: Carry, partial: dict):
        if checkpoint_dir is None:
            return None
        if jax.process_index() != 0:  # several processes hold the same carry: the first writes it
            return ckpt.checkpoint_path(checkpoint_dir)
        return ckpt.save(checkpoint_dir, _payload(carry, epoch, step, seed, loader, history, partial))

    def result(carry: Carry) -> TrainResult:
        return TrainResult(carry.params, carry.state, carry.opt_state, history)

    bar = _progress(range(start.epoch, epochs), progress and jax.process_index() == 0, epochs, start.epoch)
    epoch = start.epoch
    interrupts = DeferredInterrupts()
    # Several processes must stop at one point: there a Ctrl-C waits for the epoch's end, where they agree.
    within_epoch = interrupts.check if jax.process_count() == 1 else (lambda: None)
    runner.at_safe_point = within_epoch  # after each step of the stream engine
    try:
        with interrupts:
            for epoch in bar:
                first_step = start.step if epoch == start.epoch else 0
                if epoch != start.epoch:
                    partial = _no_steps()
                compile_before, epoch_start = runner.compile_s, time.perf_counter()
                start_carry = runner.starting_carry(first_step)  # for a replay if the epoch goes bad
                runner.train_epoch(epoch, first_step)
                within_epoch()
                fetched, bad, finite = runner.fetch()  # one host sync per epoch
                # one store each, no call between them: a second Ctrl-C finds both before or both after
                partial, runner.position = (_append(partial, fetched, runner.pending),
                                            runner.position._replace(pending=()))  # fmt: skip
                time_s = time.perf_counter() - epoch_start - (runner.compile_s - compile_before)
                if bad >= 0 or not finite:
                    carry, first_bad = runner.replay_guarded(guarded_step, start_carry, epoch, first_step, bad)
                    bad_epoch, bad_step = divmod(first_bad, runner.steps_per_epoch)
                    # the epoch's steps before the bad one (partial holds the epoch's steps from its first)
                    before = {k: v[:bad_step] for k, v in partial.items()} if bad_epoch == epoch else _no_steps()
                    path = save(bad_epoch, bad_step, carry, before)
                    raise NonFiniteLossError(bad_epoch + 1, bad_step, runner.steps_per_epoch, result(carry), path)
                record = _epoch_record(epoch, partial, time_s, runner.compile_s)
                if eval_data is not None:
                    scores, record["eval_s"] = timed(evaluate_arrays, eval_fn, runner.carry.params,
                                                     runner.carry.state, eval_images, eval_labels,
                                                     eval_batch_size)  # fmt: skip
                    record["test_loss"], record["test_accuracy"] = scores["loss"], scores["accuracy"]
                history.append(record)
                partial, runner.position = _no_steps(), runner.position._replace(done=0)
                with stopping_together(f"after epoch {epoch + 1}"):  # e.g. the first's write failed
                    save(epoch + 1, 0, runner.carry, partial)
                    _show(bar, record)
                    stop = stop_when is not None and bool(stop_when(record))
                interrupts.check_everywhere()
                if process_flags(stop).any():  # several processes: one asking stops all, where they agree
                    break
    except KeyboardInterrupt as interrupt:
        if not runner.carry_alive():  # a second Ctrl-C landed while a step held the carry
            held = checkpoint_dir is not None and ckpt.holds_checkpoint(checkpoint_dir)
            last = ckpt.checkpoint_path(checkpoint_dir) if held else None
            raise TrainingInterrupted(TrainResult(None, None, None, history), last) from interrupt
        if history and history[-1]["epoch"] == epoch + 1:  # the epoch is recorded: the next one starts
            path = save(epoch + 1, 0, runner.carry, _no_steps())
        else:
            path = save(epoch, runner.done, runner.carry, _append(partial, runner.fetch_pending(), runner.pending))
        raise TrainingInterrupted(result(runner.carry), path) from interrupt
    return result(runner.carry)


class _Start(NamedTuple):
    """Where training starts: a fresh model or a checkpoint's contents."""

    params: Any
    state: Any
    opt_state: Any
    epoch: int
    step: int
    history: list[dict]
    partial: dict


def _start_program(model: Layer, loss_fn: LossFn, optimizer: GradientTransformation, loader, seed: int, params,
                   state) -> tuple[Callable, tuple, Any, tuple[int, ...]]:  # fmt: skip
    """``(start, args, shapes, image_shape)``: ``start(*args) -> (base_key,
    params, state, opt_state)`` of a new run, one program to run once:
    ``key(seed)`` split into the steps' base key and the initialization key,
    the model initialized for the loader's images (unless ``params`` are
    given), the optimizer's state; ``shapes``, the shapes it returns;
    ``image_shape``, one image's shape as the model gets it (after the
    loader's transform).  Checked to fit the loader's images and labels (all
    of its integer labels, when it has no transform) and the loss before
    anything compiles."""
    sample = loader.batch(np.arange(min(2, loader.num_examples)))
    images, labels = np.asarray(sample["image"]), np.asarray(sample["label"])
    if params is None and state is not None:
        raise ValueError("fit: state was given without params: pass both (a TrainResult's params and state) "
                         "or neither")
    if params is not None and state is None:
        _, own_state = jax.eval_shape(lambda: _init_for_images(model, jax.random.key(0), images.shape[1:]))
        if jax.tree_util.tree_leaves(own_state):
            raise ValueError("fit: params were given without state, and this model keeps state (e.g. BatchNorm's "
                             "running statistics): pass the state that goes with the params (a TrainResult's)")
        state = {}

    def start(params, state):
        base_key, init_key = run_keys(seed)
        if params is None:
            params, state = _init_for_images(model, init_key, images.shape[1:])
        return base_key, params, state, optimizer.init(params)

    shapes = jax.eval_shape(start, params, state)
    if loader.transform is None:  # the stored labels are those trained on: all of them checked, not the sample's
        labels = np.asarray(loader.stored()[1])
    _check_model_fits(model, loss_fn, shapes[1], shapes[2], images, labels, loader.num_classes)
    return start, (params, state), shapes, images.shape[1:]


def _check_model(model, where: str) -> None:
    """A TypeError saying what was expected unless ``model`` has a layer's
    ``init`` and ``apply``: a model constructor not called (``models.mlp``)
    is told to be called."""
    if callable(getattr(model, "init", None)) and callable(getattr(model, "apply", None)):
        return
    name, module = getattr(model, "__name__", ""), getattr(model, "__module__", None) or ""
    hint = ""
    if callable(model) and name and module.split(".")[:2] in (["jdl", "models"], ["jdl", "nn"]):
        hint = f" ({name} builds one: call it, e.g. {module.split('.')[1]}.{name}(...))"
    elif isinstance(model, str):
        hint = f" (for a name: jdl.models.get({model!r}))"
    raise TypeError(f"{where}: model must be a jdl.nn layer with init and apply, such as jdl.models.mlp() or "
                    f"jdl.nn.serial(...){hint}; got {type(model).__name__}")  # fmt: skip


def _check_data_and_optimizer(train_data, optimizer) -> None:
    """A TypeError saying what was expected unless ``train_data`` is a jdl
    loader and ``optimizer`` a gradient transformation."""
    if isinstance(train_data, dict) or not all(hasattr(train_data, a) for a in ("batch_size", "permutation")):
        raise TypeError(
            "fit: train_data must be a jdl.data loader (jdl.data.load(...), or arrays wrapped as "
            f"jdl.data.Loader(images, labels, batch_size=...)); got {type(train_data).__name__}"
        )
    if not (callable(getattr(optimizer, "init", None)) and callable(getattr(optimizer, "update", None))):
        hint = f" (for a name: jdl.optim.get({optimizer!r}, learning_rate=...))" if isinstance(optimizer, str) else ""
        raise TypeError(
            "fit: optimizer must be a gradient transformation with init and update, such as "
            f"jdl.optim.adam(1e-3) or optax.adam(1e-3){hint}; got {type(optimizer).__name__}"
        )


def _check_checkpoint_dir(directory, resume) -> None:
    """A ValueError before anything trains unless a checkpoint can be written
    to ``directory``, and unless it holds none or ``resume`` says which run
    continues (an earlier run's checkpoint is not overwritten silently)."""
    ckpt.check_writable(directory)
    if not ckpt.holds_checkpoint(directory):
        return
    if resume is True or (resume and _same_folder(resume, directory)):  # the run in it continues
        return
    raw = ckpt.load_raw(directory)
    if not _written_by_fit(raw):
        raise ValueError(f"fit: checkpoint_dir {directory} holds a checkpoint not written by fit: give another "
                         "checkpoint_dir")
    what = f"a checkpoint (epoch {int(raw['epoch'])}, seed {int(raw['seed'])}) of an earlier run"
    if resume:
        raise ValueError(f"fit: checkpoint_dir {directory} holds {what}, and resume={resume!r} continues another "
                         "one: writing here would overwrite it; give an empty checkpoint_dir, or resume=True to "
                         "continue the run in it")  # fmt: skip
    raise ValueError(f"fit: checkpoint_dir {directory} holds {what}: pass resume=True to continue it, or give "
                     "another checkpoint_dir")


_FIT_KEYS = ("epoch", "step", "seed", "loader", "history", "partial", "params", "state", "opt_state")


def _written_by_fit(raw: dict) -> bool:
    return set(_FIT_KEYS) <= set(raw)


def _same_folder(a, b) -> bool:
    """Whether ``a`` and ``b`` name the same checkpoint (a folder or its file, spelled either way)."""
    return ckpt.checkpoint_path(Path(a).expanduser()).resolve() == ckpt.checkpoint_path(Path(b).expanduser()).resolve()


def _check_resumable(directory, seed: int, loader, epochs: int) -> dict:
    """The raw contents of the checkpoint in ``directory`` (``ckpt.load_raw``);
    a ValueError unless it was made with this ``seed`` and a loader of the
    same order, batches and examples, and holds at most ``epochs`` epochs."""
    if directory is None:
        raise ValueError("fit: resume=True needs checkpoint_dir")
    raw = ckpt.load_raw(directory)
    if not _written_by_fit(raw):
        missing = [key for key in _FIT_KEYS if key not in raw]
        raise ValueError(f"fit: the checkpoint in {directory} was not written by fit (it has no {', '.join(missing)}): "
                         "there is no run to resume in it")  # fmt: skip
    if int(raw["seed"]) != seed:
        raise ValueError(f"fit: the checkpoint in {directory} was made with seed {int(raw['seed'])}, not {seed}")
    if int(raw["epoch"]) > epochs:
        raise ValueError(f"fit: the checkpoint in {directory} is at the end of epoch {int(raw['epoch'])}, beyond "
                         f"epochs={epochs}: resume with epochs >= {int(raw['epoch'])}, or start afresh without resume")
    here = loader_identity(loader)
    for key, value in raw["loader"].items():
        if key in here and int(value) != here[key]:
            raise ValueError(f"fit: the checkpoint in {directory} was made with a loader of {key}={int(value)}, "
                             f"this one has {key}={here[key]}: its position would not be the same batches")
    return raw


def _restore(directory, raw: dict, fresh: _Start) -> _Start:
    """The checkpoint in ``directory`` (``raw``: its contents as
    ``_check_resumable`` read them), read into the structure of ``fresh``:
    an error naming the first array that differs."""
    like = {"params": fresh.params, "state": fresh.state, "opt_state": fresh.opt_state}
    try:
        restored = ckpt.restore(raw, like, ckpt.checkpoint_path(directory))
    except (ValueError, KeyError, TypeError) as error:  # another structure: e.g. another optimizer's state
        raise ValueError(f"fit: the checkpoint in {directory} does not fit this model and optimizer: "
                         f"its state has another structure ({error})") from error
    _check_restored(directory, like, restored)
    return _Start(restored["params"], restored["state"], restored["opt_state"], int(raw["epoch"]),
                  int(raw["step"]), json.loads(bytes(raw["history"]).decode()),
                  json.loads(bytes(raw["partial"]).decode()))  # fmt: skip


def _check_restored(directory, like: dict, restored: dict) -> None:
    """A clear error when the checkpoint's arrays are not the shapes and dtypes of ``like``'s."""
    def described(part: str, tree) -> dict[str, str]:
        leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
        return {part + jax.tree_util.keystr(path): f"{tuple(np.shape(a))} {jnp.result_type(a).name}"
                for path, a in leaves}  # fmt: skip

    for part in like:  # params first
        expected, found = described(part, like[part]), described(part, restored[part])
        for path in [*expected, *(path for path in found if path not in expected)]:
            if expected.get(path) != found.get(path):
                raise ValueError(f"fit: the checkpoint in {directory} does not fit this model and optimizer: "
                                 f"{path} is {found.get(path, 'missing')} there, {expected.get(path, 'absent')} here")


def _payload(carry: Carry, epoch: int, step: int, seed: int, loader, history: list, partial: dict) -> dict:
    """A checkpoint's contents: the carry, where training stands, and the
    history (JSON in bytes: msgpack keeps arrays, not nested lists of dicts)."""
    return {
        "params": carry.params, "state": carry.state, "opt_state": carry.opt_state,
        "epoch": np.int64(epoch), "step": np.int64(step), "seed": np.int64(seed),
        "rng": jax.random.key_data(jax.random.key(seed)),
        "loader": {k: np.int64(v) for k, v in {"epoch": epoch, "step": step, **loader_identity(loader)}.items()},
        "history": np.frombuffer(json.dumps(history).encode(), np.uint8),
        "partial": np.frombuffer(json.dumps(partial).encode(), np.uint8),
    }  # fmt: skip


def _no_steps() -> dict:
    """The per-step metrics of an epoch before its first step."""
    return {"loss": [], "accuracy": [], "size": []}


def _append(partial: dict, fetched: list, pending) -> dict:
    """``partial`` extended by the ``pending`` steps, whose metrics were
    fetched to the host as ``fetched`` (one entry per pending item)."""
    return {
        key: partial[key] + [float(v) for m in fetched for v in np.ravel(m[key])] for key in ("loss", "accuracy")
    } | {"size": partial["size"] + [n for _, sizes in pending for n in sizes]}


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
