"""jdl.train: steps, the two epoch engines, resume, checkpoints, NaN, devices, shapes.

The data is the real mnist_sample shipped with jdl; references are optax and
jax.grad computed independently, and runs of the same training done another way.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jdl.data
from jdl import losses, models, nn, optim, train
from jdl.train import checkpoint


def _loader(batch_size=100, seed=0, **kwargs):
    return jdl.data.load("mnist_sample", split="train", batch_size=batch_size, shuffle=True, seed=seed, **kwargs)


def _test_data():
    return jdl.data.load("mnist_sample", split="test", batch_size=500)


def _small_mlp():
    return models.mlp(hidden=(32,))


def _assert_trees_equal(a, b):
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _assert_trees_close(a, b, rtol=1e-5, atol=1e-6):
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


def test_make_train_step_matches_grad_and_optax():
    model = _small_mlp()
    batch = next(iter(_loader(batch_size=64)))
    params, state = model.init(jax.random.key(0), (1, 28, 28, 1))

    def objective(p):
        return optax.softmax_cross_entropy_with_integer_labels(model.apply(p, state, batch["image"])[0],
                                                               batch["label"]).mean()

    reference = optax.adam(1e-2)
    ref_params, ref_state = params, reference.init(params)
    for _ in range(3):
        updates, ref_state = reference.update(jax.grad(objective)(ref_params), ref_state, ref_params)
        ref_params = optax.apply_updates(ref_params, updates)

    step = train.make_train_step(model, losses.cross_entropy, optim.adam(1e-2))
    ours, opt_state = jax.tree_util.tree_map(jnp.copy, params), optim.adam(1e-2).init(params)
    losses_seen = []
    for _ in range(3):
        ours, state, opt_state, metrics = step(ours, state, opt_state, batch, jax.random.key(1))
        losses_seen.append(float(metrics["loss"]))
        assert bool(metrics["finite"])
    _assert_trees_close(ours, ref_params, rtol=1e-5, atol=1e-6)
    assert losses_seen[0] == pytest.approx(float(objective(params)), rel=1e-5)
    assert losses_seen[2] < losses_seen[0]


@pytest.mark.parametrize("mode, unroll", [("scan", 1), ("scan", 2), ("stream", 1)])
def test_fit_trains_as_optax_over_the_loaders_documented_orders(monkeypatch, mode, unroll):
    """Two epochs of ``fit`` against ``optax.adam`` and ``jax.grad`` stepping
    through the loader's documented order, ``default_rng([seed, epoch]).permutation(N)``,
    in batches (the last partial one dropped), from the same initial
    parameters: each engine trains on exactly those batches, reshuffled each
    epoch, with optax's update; so does the scan engine unrolled two steps
    per iteration (``engine.SCAN_UNROLL``, 31 steps: a remainder step too)."""
    monkeypatch.setitem(train.engine.SCAN_UNROLL, jax.default_backend(), unroll)
    unrolls_lowered = []

    def recording_scan_epoch(run, placement, unroll=1):
        unrolls_lowered.append(unroll)
        return train.engine.scan_epoch(run, placement, unroll)

    monkeypatch.setattr(sys.modules["jdl.train.runner"], "scan_epoch", recording_scan_epoch)
    model, loader = _small_mlp(), _loader(batch_size=128, drop_remainder=True)
    params, state = model.init(jax.random.key(3), (1, 28, 28, 1))
    result = train.fit(model, losses.cross_entropy, optim.adam(1e-3), loader, epochs=2, params=params, state=state,
                       mode=mode, progress=False)  # fmt: skip
    assert unrolls_lowered == ([unroll] if mode == "scan" else [])

    @jax.jit
    def reference_step(p, opt_state, images, labels):
        def objective(p):
            return optax.softmax_cross_entropy_with_integer_labels(model.apply(p, state, images)[0], labels).mean()

        updates, opt_state = optax.adam(1e-3).update(jax.grad(objective)(p), opt_state, p)
        return optax.apply_updates(p, updates), opt_state

    ref_params, opt_state = params, optax.adam(1e-3).init(params)
    for epoch in range(2):
        order = np.random.default_rng([0, epoch]).permutation(loader.num_examples)  # _loader's seed is 0
        for start in range(0, len(order) // 128 * 128, 128):
            batch = loader.batch(order[start : start + 128])
            ref_params, opt_state = reference_step(ref_params, opt_state, batch["image"], batch["label"])
    _assert_trees_close(result.params, ref_params, rtol=1e-4, atol=1e-5)
    assert not np.allclose(np.asarray(result.params["dense_0"]["w"]), np.asarray(params["dense_0"]["w"]))


def test_fit_learns_mnist_sample():
    result = train.fit(_small_mlp(), losses.cross_entropy, optim.adam(1e-3), _loader(), epochs=3,
                       eval_data=_test_data(), progress=False)
    history = result.history
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert history[-1]["test_accuracy"] > 0.85
    score = train.evaluate(_small_mlp(), losses.cross_entropy, result.params, result.state, _test_data())
    assert score["accuracy"] == pytest.approx(history[-1]["test_accuracy"], abs=1e-6)
    assert all(h["time_s"] > 0 and h["compile_s"] > 0 for h in history)


def test_mixed_precision_trains_like_float32_with_float32_parameters():
    """``dtype=jnp.bfloat16`` layers: float32 parameters and optimizer state
    throughout, float32 losses, and the accuracy of the same run in float32."""
    runs = {dtype: train.fit(models.mlp(hidden=(32,), dtype=dtype), losses.cross_entropy, optim.adam(1e-3),
                             _loader(), epochs=3, eval_data=_test_data(), progress=False)
            for dtype in (None, jnp.bfloat16)}  # fmt: skip
    half, full = runs[jnp.bfloat16], runs[None]
    leaves = jax.tree_util.tree_leaves((half.params, half.opt_state))
    assert all(leaf.dtype in (jnp.float32, jnp.int32) for leaf in leaves)
    assert half.history[-1]["test_accuracy"] > 0.85
    assert half.history[-1]["test_accuracy"] == pytest.approx(full.history[-1]["test_accuracy"], abs=0.03)
    assert not np.allclose(np.asarray(half.params["dense_0"]["w"]), np.asarray(full.params["dense_0"]["w"]))


@pytest.mark.parametrize("mode", ["scan", "stream"])
def test_compiling_side_by_side_or_one_after_another_trains_the_same(monkeypatch, mode):
    """``fit``'s first programs compiled in threads (hosts of 4 cores or more) or in turn: the same run."""
    fit_module = sys.modules["jdl.train.fit"]
    runs = {}
    for threads in (0, 2):
        monkeypatch.setattr(fit_module, "COMPILE_THREADS", threads)
        runs[threads] = train.fit(_small_mlp(), losses.cross_entropy, optim.adam(1e-3), _loader(), epochs=2, seed=3,
                                  mode=mode, eval_data=_test_data(), progress=False)  # fmt: skip
    _assert_trees_equal(runs[0].params, runs[2].params)
    assert [h["test_loss"] for h in runs[0].history] == [h["test_loss"] for h in runs[2].history]


def test_start_program_on_the_host_trains_the_same(monkeypatch):
    """``engine.RUN_ONCE_ON_HOST`` with the backend reported as a GPU: the
    start program (initialization, optimizer state) is lowered for the host's
    CPU device and compiled as a CPU program run once, and the run is the
    one the CPU gives without it.  On a CPU-only machine the host is the
    device, so this checks the plumbing; the copy to a real accelerator is
    checked by ``benchmarks/cold_start.py --lab`` there (its accuracy against
    the default's) before the setting is turned on."""
    fit_module = sys.modules["jdl.train.fit"]
    platforms = []

    def recording_compile_once(lowered, platform=None):
        platforms.append(platform)
        return train.engine.compile_once(lowered, platform)

    def run():
        return train.fit(_small_mlp(), losses.cross_entropy, optim.adam(1e-3), _loader(), epochs=1, seed=5,
                         eval_data=_test_data(), progress=False)  # fmt: skip

    monkeypatch.setattr(fit_module, "compile_once", recording_compile_once)
    on_cpu = run()
    monkeypatch.setattr(train.engine, "RUN_ONCE_ON_HOST", True)
    with monkeypatch.context() as patch:
        patch.setattr(jax, "default_backend", lambda: "gpu")
        placement = train.engine.run_once_placement()
        on_host = run()
    assert platforms == [None, "cpu"]
    assert placement.device_set == {jax.devices("cpu")[0]}
    _assert_trees_equal(on_cpu.params, on_host.params)
    assert on_cpu.history[0]["test_loss"] == on_host.history[0]["test_loss"]


def test_evaluation_programs_compile_with_their_own_gpu_options(monkeypatch):
    """On a GPU, ``engine.GPU_EVALUATION_COMPILER_OPTIONS`` go over
    ``GPU_COMPILER_OPTIONS`` for evaluation programs only; on the CPU neither applies."""

    class Lowered:
        def compile(self, compiler_options=None):
            return compiler_options

    monkeypatch.setattr(train.engine, "GPU_COMPILER_OPTIONS", {"a": 1, "b": 2})
    monkeypatch.setattr(train.engine, "GPU_EVALUATION_COMPILER_OPTIONS", {"b": 3})
    assert train.engine.compile_lowered(Lowered(), evaluation=True) is None  # the CPU
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert train.engine.compile_lowered(Lowered()) == {"a": 1, "b": 2}
    assert train.engine.compile_lowered(Lowered(), evaluation=True) == {"a": 1, "b": 3}


def test_programs_run_once_lower_random_draws_to_the_gpu_kernel(monkeypatch):
    """``engine.lower_once`` (fit's start program, compare's initialization)
    traces with JAX's threefry GPU-kernel lowering on when the backend is a
    GPU and ``RUN_ONCE_THREEFRY_KERNEL`` is set, and leaves it as it was on
    the CPU, when unset and after lowering; lowered for a GPU in that context
    the draw is JAX's kernel call.  The values are the CPU's either way."""
    from jax._src import config as jax_config

    before = jax_config.threefry_gpu_kernel_lowering.value
    seen = []

    def draw(seed):
        seen.append(jax_config.threefry_gpu_kernel_lowering.value)  # read while tracing
        return jax.random.normal(jax.random.key(seed), (3,))

    def gpu_text():  # a new function each time: traced and lowered again
        return jax.jit(lambda seed: draw(seed)).trace(4).lower(lowering_platforms=("cuda",)).as_text()

    expected = np.asarray(jax.random.normal(jax.random.key(4), (3,)))
    np.testing.assert_array_equal(train.engine.run_once(draw, 4), expected)
    with monkeypatch.context() as patch:
        patch.setattr(jax, "default_backend", lambda: "gpu")
        lowered = train.engine.lower_once(draw, 4)
        with train.engine._threefry_kernel_lowering():
            kernel_text = gpu_text()
        patch.setattr(train.engine, "RUN_ONCE_THREEFRY_KERNEL", False)
        train.engine.lower_once(lambda seed: draw(seed), 5)
        with train.engine._threefry_kernel_lowering():
            unrolled_text = gpu_text()
    assert seen == [before, True, True, before, before]
    assert jax_config.threefry_gpu_kernel_lowering.value == before
    assert "threefry2x32_ffi" in kernel_text and "threefry2x32_ffi" not in unrolled_text
    np.testing.assert_array_equal(lowered.compile()(4), expected)  # lowered for the CPU all the same


def test_fit_and_compare_lower_their_initialization_with_lower_once(monkeypatch):
    """The programs that draw the initial weights go through ``lower_once``:
    fit's start program and the comparison's per-seed initialization."""
    from jdl.compare.engine import Group, init_groups

    calls = []

    def spy(fn, *args, **kwargs):
        calls.append(fn)
        return train.engine.lower_once(fn, *args, **kwargs)

    monkeypatch.setattr(sys.modules["jdl.train.fit"], "lower_once", spy)
    monkeypatch.setattr(sys.modules["jdl.compare.engine"], "lower_once", spy)
    train.fit(_small_mlp(), losses.cross_entropy, optim.adam(1e-3), _loader(), epochs=1, progress=False)
    assert [fn.__name__ for fn in calls] == ["start"]
    init_groups(_small_mlp(), [Group("adam", optim.adam, np.array([1e-3], np.float32), np.array([0]))], (28, 28, 1))
    assert [fn.__name__ for fn in calls] == ["start", "init_one"]


def test_evaluate_compiles_as_fits_evaluation_does(monkeypatch):
    """``train.evaluate`` compiles its window through ``compile_lowered`` as an
    evaluation program (so with fit's GPU options), and scores as before."""
    fit_module = sys.modules["jdl.train.fit"]
    kinds = []

    def spy(lowered, evaluation=False):
        kinds.append(evaluation)
        return train.engine.compile_lowered(lowered, evaluation)

    model = _small_mlp()
    params, state = model.init(jax.random.key(0), (1, 28, 28, 1))
    data = {"image": np.random.default_rng(0).random((250, 28, 28, 1), np.float32),
            "label": np.arange(250, dtype=np.int32) % 10}  # fmt: skip
    monkeypatch.setattr(fit_module, "compile_lowered", spy)
    scores = train.evaluate(model, losses.cross_entropy, params, state, data, batch_size=100)
    logits, _ = model.apply(params, state, jnp.asarray(data["image"]))
    expected = np.mean(np.argmax(np.asarray(logits, np.float64), -1) == data["label"])
    assert kinds == [True]
    assert scores["accuracy"] == pytest.approx(expected)
    # The program is kept: the same call compiles nothing more (it compiled every time, 0.2-0.9 s), another
    # batch size or other shapes compile their own.
    again = train.evaluate(model, losses.cross_entropy, params, state, data, batch_size=100)
    assert kinds == [True] and again == scores
    train.evaluate(model, losses.cross_entropy, params, state, data, batch_size=50)
    assert kinds == [True, True]
    fewer = {key: value[:200] for key, value in data.items()}
    assert train.evaluate(model, losses.cross_entropy, params, state, fewer, batch_size=100)["accuracy"] == \
        pytest.approx(np.mean(np.argmax(np.asarray(logits, np.float64), -1)[:200] == fewer["label"]))
    assert kinds == [True, True, True]
    with nn.layers.auto_conv_method_as("lax"):  # a setting the trace reads: a program of its own
        train.evaluate(model, losses.cross_entropy, params, state, data, batch_size=100)
    assert kinds == [True, True, True, True]

    class Unhashable:  # a callable loss that cannot key a cache (a dataclass, say): evaluated, not kept
        __hash__ = None

        def __call__(self, logits, labels):
            return losses.cross_entropy(logits, labels)

    assert train.evaluate(model, Unhashable(), params, state, data, batch_size=100) == scores
    assert train.evaluate(model, Unhashable(), params, state, data, batch_size=100) == scores
    assert kinds == [True] * 6


def test_training_programs_compile_with_autotuning_level_1_on_a_gpu(monkeypatch):
    """``GPU_COMPILER_OPTIONS``' default: XLA times candidate kernels without
    cross-checking their buffers (level 1), for training and evaluation, and
    evaluation programs take cuBLAS's matrix products, not Triton's
    (``GPU_EVALUATION_COMPILER_OPTIONS``' default), unless the user's
    ``XLA_FLAGS`` set those options (compiler options would override them)."""

    class Lowered:
        def compile(self, compiler_options=None):
            return compiler_options

    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    assert train.engine.compile_lowered(Lowered()) == {"xla_gpu_autotune_level": 1}
    assert train.engine.compile_lowered(Lowered(), evaluation=True) == {"xla_gpu_autotune_level": 1,
                                                                         "xla_gpu_enable_triton_gemm": False}
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=8 --xla_gpu_autotune_level=4")
    assert train.engine.compile_lowered(Lowered()) is None  # compiled with the user's flags alone
    assert train.engine.compile_lowered(Lowered(), evaluation=True) == {"xla_gpu_enable_triton_gemm": False}
    monkeypatch.setenv("XLA_FLAGS", "--xla_gpu_enable_triton_gemm=true")
    assert train.engine.compile_lowered(Lowered(), evaluation=True) == {"xla_gpu_autotune_level": 1}
    monkeypatch.setenv("XLA_FLAGS", "--xla_gpu_autotune_level_extra=1")  # another flag of which it is a prefix
    assert train.engine.compile_lowered(Lowered()) == {"xla_gpu_autotune_level": 1}


def test_epochs_may_be_a_numpy_integer():
    result = train.fit(_small_mlp(), losses.cross_entropy, optim.sgd(0.1), _loader(), epochs=np.int64(2),
                       progress=False)  # fmt: skip
    assert [h["epoch"] for h in result.history] == [1, 2]


def test_stream_and_scan_engines_agree():
    runs = {
        mode: train.fit(_small_mlp(), losses.cross_entropy, optim.momentum(0.05), _loader(batch_size=96), epochs=2,
                        mode=mode, progress=False)
        for mode in ("stream", "scan")
    }
    _assert_trees_close(runs["stream"].params, runs["scan"].params, rtol=1e-4, atol=1e-5)
    for a, b in zip(runs["stream"].history, runs["scan"].history):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)


def test_same_seed_same_result_and_other_seed_differs():
    def run(seed):
        return train.fit(_small_mlp(), losses.cross_entropy, optim.sgd(0.1), _loader(seed=seed), epochs=1,
                         seed=seed, progress=False).params

    _assert_trees_equal(run(3), run(3))
    assert not np.allclose(run(3)["dense_0"]["w"], run(4)["dense_0"]["w"])


def test_dropout_and_batchnorm_model_trains_with_state():
    model = nn.serial(nn.Flatten(), nn.Dense(64), nn.BatchNorm(momentum=0.9), nn.relu, nn.Dropout(0.2), nn.Dense(10))
    result = train.fit(model, losses.cross_entropy, optim.adam(1e-3), _loader(), epochs=2, eval_data=_test_data(),
                       progress=False)
    running_mean = np.asarray(result.state["batch_norm_0"]["mean"])
    assert np.abs(running_mean).max() > 0.01
    assert result.history[-1]["test_accuracy"] > 0.8


def test_resume_after_an_epoch_is_exact(tmp_path):
    def fit(epochs, **kwargs):
        return train.fit(_small_mlp(), losses.cross_entropy, optim.adam(1e-3), _loader(), epochs=epochs, seed=5,
                         progress=False, **kwargs)

    uninterrupted = fit(3)
    fit(1, checkpoint_dir=str(tmp_path))
    resumed = fit(3, checkpoint_dir=str(tmp_path), resume=True)
    _assert_trees_equal(resumed.params, uninterrupted.params)
    _assert_trees_equal(resumed.opt_state, uninterrupted.opt_state)
    assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in uninterrupted.history]


@pytest.mark.parametrize("mode", ["scan", "stream"])
def test_resuming_a_checkpoint_of_another_model_fails_before_training(tmp_path, mode):
    kwargs = dict(epochs=2, seed=5, progress=False, checkpoint_dir=str(tmp_path), mode=mode)
    train.fit(models.mlp(hidden=(32,)), losses.cross_entropy, optim.adam(1e-3), _loader(), **{**kwargs, "epochs": 1})
    message = (r"does not fit this model.*params\['dense_0'\]\['b'\] is \(32,\) float32 there, "
               r"\(16,\) float32 here")
    with pytest.raises(ValueError, match=message):
        train.fit(models.mlp(hidden=(16,)), losses.cross_entropy, optim.adam(1e-3), _loader(), resume=True,
                  eval_data=_test_data(), **kwargs)


def test_resuming_with_another_optimizer_fails_before_training(tmp_path):
    kwargs = dict(epochs=1, seed=5, progress=False, checkpoint_dir=str(tmp_path))
    train.fit(_small_mlp(), losses.cross_entropy, optim.adam(1e-3), _loader(), **kwargs)
    with pytest.raises(ValueError, match="does not fit this model and optimizer: its state has another structure"):
        train.fit(_small_mlp(), losses.cross_entropy, optim.momentum(0.1), _loader(), resume=True,
                  **{**kwargs, "epochs": 2})  # fmt: skip


def test_interrupt_mid_epoch_saves_and_resumes_exactly(tmp_path):
    calls = {"n": 0}

    def identity(batch):
        return batch

    def interrupt_at_seventh(batch):
        calls["n"] += len(batch["label"]) == 100  # count training batches, not fit's 2-example shape check
        if calls["n"] == 7:
            raise KeyboardInterrupt
        return batch

    def fit(transform, **kwargs):
        return train.fit(_small_mlp(), losses.cross_entropy, optim.adam(1e-3), _loader(transform=transform),
                         epochs=2, seed=1, progress=False, **kwargs)

    uninterrupted = fit(identity)
    with pytest.raises(train.TrainingInterrupted) as caught:
        fit(interrupt_at_seventh, checkpoint_dir=str(tmp_path))
    assert caught.value.checkpoint is not None
    saved = checkpoint.load_raw(tmp_path)
    assert (int(saved["epoch"]), int(saved["step"])) == (0, 6)
    resumed = fit(identity, checkpoint_dir=str(tmp_path), resume=True)
    _assert_trees_equal(resumed.params, uninterrupted.params)
    assert resumed.history[0]["train_loss"] == pytest.approx(uninterrupted.history[0]["train_loss"], rel=1e-12)


def _sigint_after_step(at: int, times: int = 1):
    """An ``EpochRunner._compiled_step`` that sends this process ``times``
    SIGINTs right after the ``at``-th step of the run returns."""
    compiled_step, calls = sys.modules["jdl.train.runner"].EpochRunner._compiled_step, []

    def interrupting(self, batch, stacked=False):
        step = compiled_step(self, batch, stacked)

        def run(*args):
            out = step(*args)
            calls.append(1)
            if len(calls) == at:
                for _ in range(times):
                    os.kill(os.getpid(), signal.SIGINT)  # handled before ``out`` reaches fit
            return out

        return run

    return interrupting


def test_ctrl_c_landing_while_a_step_holds_the_carry_waits_for_the_step(tmp_path, monkeypatch):
    """A real SIGINT delivered just after a compiled step returns, before
    fit has its result (the step consumed the old carry): fit raises
    ``TrainingInterrupted`` at the next consistent point with the parameters
    and a checkpoint, and the resumed run ends on the uninterrupted run's
    parameters.  Python's own handling would raise inside the call and lose
    the parameters (about half of real Ctrl-Cs, found by review)."""
    runner_module = sys.modules["jdl.train.runner"]

    def fit(**kwargs):
        return train.fit(_small_mlp(), losses.cross_entropy, optim.adam(1e-3), _loader(), epochs=2, seed=1,
                         progress=False, mode="stream", **kwargs)

    uninterrupted = fit()
    monkeypatch.setattr(runner_module.EpochRunner, "_compiled_step", _sigint_after_step(5))
    with pytest.raises(train.TrainingInterrupted) as caught:
        fit(checkpoint_dir=str(tmp_path))
    monkeypatch.undo()
    assert caught.value.result.params is not None and caught.value.checkpoint is not None
    saved = checkpoint.load_raw(tmp_path)
    assert (int(saved["epoch"]), int(saved["step"])) == (0, 5)
    resumed = fit(checkpoint_dir=str(tmp_path), resume=True)
    _assert_trees_equal(resumed.params, uninterrupted.params)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # Python's handler is back


def test_a_checkpoint_dir_is_checked_before_anything_trains(tmp_path):
    """A checkpoint_dir that cannot be written, or that holds an earlier run's
    checkpoint when resume is not given, and a stop_when that is not a
    function: errors before the first step, not after the first epoch."""
    def fit(**kwargs):
        return train.fit(_small_mlp(), losses.cross_entropy, optim.sgd(0.1), _loader(), epochs=1, progress=False,
                         **kwargs)

    a_file = tmp_path / "a_file"
    a_file.write_text("")
    with pytest.raises(ValueError, match=r"checkpoint_dir: .*a_file is a file, not a folder"):
        fit(checkpoint_dir=str(a_file / "run"))
    with pytest.raises(TypeError, match=r"stop_when must be a function of an epoch's record, or None; got 'yes'"):
        fit(stop_when="yes")
    fit(checkpoint_dir=str(tmp_path / "run"), seed=3)
    before = (tmp_path / "run" / checkpoint.FILENAME).read_bytes()
    with pytest.raises(ValueError, match=r"holds a checkpoint \(epoch 1, seed 3\) of an earlier run: pass resume=True"):
        fit(checkpoint_dir=str(tmp_path / "run"), seed=5)
    assert (tmp_path / "run" / checkpoint.FILENAME).read_bytes() == before


def test_a_second_ctrl_c_stops_at_once_and_names_the_last_checkpoint(tmp_path, monkeypatch):
    """Two SIGINTs before fit reaches a consistent point: the second raises
    at once (the step under way is lost), the error says so and names the
    checkpoint of the last finished epoch, and Python's handler is back."""
    runner_module = sys.modules["jdl.train.runner"]
    steps = len(_loader(batch_size=500))
    # twice, in the second epoch
    monkeypatch.setattr(runner_module.EpochRunner, "_compiled_step", _sigint_after_step(steps + 3, times=2))
    with pytest.raises(train.TrainingInterrupted, match=r"second Ctrl-C: the step under way is lost; the last "
                                                        r"checkpoint saved is .*checkpoint.msgpack") as caught:
        train.fit(_small_mlp(), losses.cross_entropy, optim.sgd(0.1), _loader(batch_size=500), epochs=3,
                  progress=False, mode="stream", checkpoint_dir=str(tmp_path))  # fmt: skip
    assert caught.value.result.params is None
    assert caught.value.checkpoint == tmp_path / checkpoint.FILENAME
    assert (int(checkpoint.load_raw(tmp_path)["epoch"]), int(checkpoint.load_raw(tmp_path)["step"])) == (1, 0)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_second_ctrl_c_right_after_a_scan_epoch_saves_where_training_stands(tmp_path, monkeypatch):
    """Two SIGINTs just after the scan epoch's result is taken, while the next
    epoch's order is drawn: the checkpoint saved holds the carry and the
    steps done as they agree (the epoch done, not the carry after it with
    the epoch's steps undone), and resuming from it ends where an
    uninterrupted run does."""
    runner_module = sys.modules["jdl.train.runner"]
    placed_order, calls = runner_module.EpochRunner._placed_order, []

    def fit(**kwargs):
        return train.fit(_small_mlp(), losses.cross_entropy, optim.adam(1e-3), _loader(batch_size=500), epochs=2,
                         seed=1, progress=False, mode="scan", checkpoint_dir=str(tmp_path), **kwargs)  # fmt: skip

    def interrupted_twice(self, epoch):
        calls.append(epoch)
        if len(calls) == 2:  # the first epoch's scan has returned; the order of the second is drawn
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
        return placed_order(self, epoch)

    uninterrupted = train.fit(_small_mlp(), losses.cross_entropy, optim.adam(1e-3), _loader(batch_size=500),
                              epochs=2, seed=1, progress=False, mode="scan")  # fmt: skip
    monkeypatch.setattr(runner_module.EpochRunner, "_placed_order", interrupted_twice)
    with pytest.raises(train.TrainingInterrupted):
        fit()
    monkeypatch.undo()
    saved = checkpoint.load_raw(tmp_path)
    assert (int(saved["epoch"]), int(saved["step"])) == (0, len(_loader(batch_size=500)))
    resumed = fit(resume=True)
    _assert_trees_close(resumed.params, uninterrupted.params, rtol=0, atol=0)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def _as_on_an_accelerator(monkeypatch, chunk: int) -> None:
    """The stream engine's accelerator path taken on the CPU: batches
    prefetched to the device, ``chunk`` steps per call (0: one)."""
    runner_module = sys.modules["jdl.train.runner"]
    init = runner_module.EpochRunner.__init__

    def on_accelerator(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self._on_accelerator = True

    monkeypatch.setattr(runner_module.EpochRunner, "__init__", on_accelerator)
    monkeypatch.setattr(train.engine, "STREAM_CHUNK", chunk)


@pytest.mark.parametrize("drop_remainder", [False, True])
def test_the_stream_engine_in_chunks_of_steps_trains_as_step_by_step(monkeypatch, drop_remainder):
    """On an accelerator the stream engine runs ``STREAM_CHUNK`` steps per
    call (a scan over prefetched chunks): the same parameters and history as
    one call per step, with chunks of 3 of 13 full batches (then 1) and a
    last, smaller one."""
    def run(chunk):
        _as_on_an_accelerator(monkeypatch, chunk)
        loader = _loader(batch_size=300, drop_remainder=drop_remainder)
        out = train.fit(_small_mlp(), losses.cross_entropy, optim.adam(1e-3), loader, epochs=2, seed=3,
                        progress=False, mode="stream")  # fmt: skip
        monkeypatch.undo()
        return out

    chunked, stepwise = run(3), run(0)
    _assert_trees_close(chunked.params, stepwise.params, rtol=1e-6, atol=1e-7)
    for a, b in zip(chunked.history, stepwise.history, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-6)
        assert a["train_accuracy"] == pytest.approx(b["train_accuracy"], rel=1e-6)


def test_the_stream_engines_chunks_divide_the_epoch_so_one_program_runs_them(monkeypatch):
    """40 steps with chunks of up to 16: four chunks of 10 (one program), not 16, 16 and 8 (two)."""
    _as_on_an_accelerator(monkeypatch, 16)
    runner_module = sys.modules["jdl.train.runner"]
    compiled_step, lengths = runner_module.EpochRunner._compiled_step, []

    def spy(self, batch, stacked=False):
        lengths.append(batch["label"].shape[0] if stacked else None)
        return compiled_step(self, batch, stacked)

    monkeypatch.setattr(runner_module.EpochRunner, "_compiled_step", spy)
    train.fit(_small_mlp(), losses.cross_entropy, optim.sgd(0.1), _loader(batch_size=100), epochs=1,
              progress=False, mode="stream")  # fmt: skip
    assert lengths == [10, 10, 10, 10]
    assert [runner_module.chunk_dividing(n, 64) for n in (468, 40, 13, 67)] == [52, 40, 64, 64]


def test_ctrl_c_in_a_chunked_stream_epoch_saves_after_the_chunk_and_resumes_exactly(tmp_path, monkeypatch):
    def fit(**kwargs):
        return train.fit(_small_mlp(), losses.cross_entropy, optim.adam(1e-3), _loader(batch_size=100), epochs=2,
                         seed=1, progress=False, mode="stream", checkpoint_dir=str(tmp_path), **kwargs)  # fmt: skip

    _as_on_an_accelerator(monkeypatch, 4)
    uninterrupted = train.fit(_small_mlp(), losses.cross_entropy, optim.adam(1e-3), _loader(batch_size=100),
                              epochs=2, seed=1, progress=False, mode="stream")  # fmt: skip
    monkeypatch.setattr(sys.modules["jdl.train.runner"].EpochRunner, "_compiled_step", _sigint_after_step(3))
    with pytest.raises(train.TrainingInterrupted):
        fit()
    saved = checkpoint.load_raw(tmp_path)
    assert (int(saved["epoch"]), int(saved["step"])) == (0, 12)  # three chunks of 4 steps
    monkeypatch.undo()
    _as_on_an_accelerator(monkeypatch, 4)
    resumed = fit(resume=True)
    _assert_trees_close(resumed.params, uninterrupted.params, rtol=0, atol=0)


def test_ctrl_c_in_a_prefetched_stream_epoch_stops_the_feeding_thread(tmp_path, monkeypatch):
    """The stream engine's prefetcher (an accelerator's path, taken here on
    the CPU) is closed when Ctrl-C stops the epoch: no feeding thread lives on
    with the TrainingInterrupted, and the loader is back where training
    stood."""
    runner_module = sys.modules["jdl.train.runner"]
    _as_on_an_accelerator(monkeypatch, 0)
    monkeypatch.setattr(runner_module.EpochRunner, "_compiled_step", _sigint_after_step(5))
    loader = _loader(batch_size=100)
    with pytest.raises(train.TrainingInterrupted):
        train.fit(_small_mlp(), losses.cross_entropy, optim.adam(1e-3), loader, epochs=2, progress=False,
                  mode="stream", checkpoint_dir=str(tmp_path))  # fmt: skip
    feeding = [t for t in threading.enumerate() if t.name == "jdl-prefetch" and t.is_alive()]
    assert feeding == []
    assert loader.state_dict()["step"] == 5 and int(checkpoint.load_raw(tmp_path)["step"]) == 5


def test_a_checkpoint_dir_holding_another_programs_checkpoint_is_refused_by_name(tmp_path):
    checkpoint.save(tmp_path, {"params": {"w": np.zeros(3, np.float32)}})  # no epoch or seed: not fit's
    for resume in (None, True):  # resume=True once raised a KeyError on its missing seed
        with pytest.raises(ValueError, match=r"holds a checkpoint not written by fit: give another checkpoint_dir"
                           if resume is None else r"was not written by fit \(it has no epoch, step, seed"):
            train.fit(_small_mlp(), losses.cross_entropy, optim.sgd(0.1), _loader(), epochs=1, progress=False,
                      checkpoint_dir=str(tmp_path), resume=resume)  # fmt: skip


def test_resuming_another_run_into_a_checkpoint_dir_holding_a_third_is_refused(tmp_path):
    """resume=A with checkpoint_dir=B, where B holds another run's checkpoint:
    B's was overwritten silently."""
    first, second = tmp_path / "a", tmp_path / "b"
    kwargs = dict(progress=False, seed=0)
    train.fit(_small_mlp(), losses.cross_entropy, optim.sgd(0.1), _loader(), epochs=1, checkpoint_dir=str(first),
              **kwargs)  # fmt: skip
    train.fit(_small_mlp(), losses.cross_entropy, optim.sgd(0.1), _loader(), epochs=3, checkpoint_dir=str(second),
              **kwargs)  # fmt: skip
    with pytest.raises(ValueError, match=r"holds a checkpoint \(epoch 3, seed 0\) of an earlier run, and "
                                         r"resume=.* continues another one: writing here would overwrite it"):
        train.fit(_small_mlp(), losses.cross_entropy, optim.sgd(0.1), _loader(), epochs=2,
                  checkpoint_dir=str(second), resume=str(first), **kwargs)  # fmt: skip
    assert int(checkpoint.load_raw(second)["epoch"]) == 3
    same_folder = str(second / ".")  # spelled otherwise
    resumed = train.fit(_small_mlp(), losses.cross_entropy, optim.sgd(0.1), _loader(), epochs=4,
                        checkpoint_dir=str(second), resume=same_folder, **kwargs)  # fmt: skip
    assert [r["epoch"] for r in resumed.history] == [1, 2, 3, 4]
    the_file = str(checkpoint.checkpoint_path(second))  # the checkpoint named by its file
    resumed = train.fit(_small_mlp(), losses.cross_entropy, optim.sgd(0.1), _loader(), epochs=5,
                        checkpoint_dir=str(second), resume=the_file, **kwargs)  # fmt: skip
    assert [r["epoch"] for r in resumed.history] == [1, 2, 3, 4, 5]


def test_fit_refuses_a_seed_that_is_not_a_whole_number_and_state_without_params():
    for seed in (1.5, None, "0", -1, 2**32):
        with pytest.raises(ValueError, match=r"fit: seed must be an integer in \[0, 2\*\*32\); got"):
            train.fit(_small_mlp(), losses.cross_entropy, optim.sgd(0.1), _loader(), epochs=1, seed=seed,
                      progress=False)  # fmt: skip
    model = nn.serial(nn.Flatten(), nn.Dense(8), nn.BatchNorm(), nn.relu, nn.Dense(10))
    params, state = model.init(jax.random.key(0), (1, 28, 28, 1))
    with pytest.raises(ValueError, match=r"params were given without state, and this model keeps state"):
        train.fit(model, losses.cross_entropy, optim.sgd(0.1), _loader(), epochs=1, params=params, progress=False)
    with pytest.raises(ValueError, match=r"state was given without params"):
        train.fit(model, losses.cross_entropy, optim.sgd(0.1), _loader(), epochs=1, state=state, progress=False)


def test_a_corrupt_checkpoint_is_named_in_the_error(tmp_path):
    (tmp_path / checkpoint.FILENAME).write_bytes(b"\x93\x01")  # a truncated msgpack array
    with pytest.raises(ValueError, match=r"checkpoint.msgpack is not a jdl checkpoint"):
        checkpoint.load_raw(tmp_path)


def test_training_labels_beyond_the_models_outputs_are_refused_before_training():
    images, labels = jdl.data.mnist_sample.read_split("train")
    labels = labels.astype(np.int64)
    labels[40] = 12  # beyond the 10 outputs, far from the 2 examples fit builds its sample from
    with pytest.raises(ValueError, match=r"labels must be below num_classes=10; got 12 at index 40"):
        jdl.data.Loader(images, labels, batch_size=100, shuffle=False, num_classes=10)  # the loader's own check
    loader = jdl.data.Loader(images, labels, batch_size=100, shuffle=False)  # 13 classes, then
    with pytest.raises(ValueError, match=r"output of shape \(2, 10\) .* does not fit integer labels of shape \(2,\) "
                                         r"with 13 classes: expected logits of shape \(batch, >= 13\)"):
        train.fit(_small_mlp(), losses.cross_entropy, optim.sgd(0.1), loader, epochs=1, progress=False)


def test_a_transform_that_changes_the_image_shape_trains_on_the_shape_it_gives():
    crop = lambda batch: {**batch, "image": batch["image"][:, 2:26, 2:26]}  # noqa: E731
    result = train.fit(_small_mlp(), losses.cross_entropy, optim.sgd(0.1), _loader(transform=crop), epochs=1,
                       progress=False)  # fmt: skip
    assert result.params["dense_0"]["w"].shape == (24 * 24, 32)


@pytest.mark.parametrize("loss", ["log_loss", "hinge_loss"])
def test_a_model_of_one_score_per_example_trains_with_a_binary_loss(loss):
    """A binary classifier whose output is one score per example, shape
    (batch,), as log_loss (from logits) and hinge_loss take: fit trains it
    and reports as accuracy the fraction of scores whose sign is the label's
    (checked against NumPy on the final parameters)."""
    images, labels = jdl.data.mnist_sample.read_split("train")
    test_images, test_labels = jdl.data.mnist_sample.read_split("test")
    zeros_and_ones, test_zeros_and_ones = labels <= 1, test_labels <= 1
    loader = jdl.data.Loader(images[zeros_and_ones], labels[zeros_and_ones], batch_size=50, seed=0)
    test = {"image": test_images[test_zeros_and_ones].astype(np.float32) / 255,
            "label": test_labels[test_zeros_and_ones].astype(np.int32)}  # fmt: skip
    one_score = nn.make_layer("one_score", lambda key, shape: ({}, {}), lambda p, s, x, key=None, train=False:
                              (x[:, 0], s))  # fmt: skip
    model = nn.serial(nn.Flatten(), nn.Dense(16), nn.relu, nn.Dense(1), one_score)
    loss_fn = losses.log_loss if loss == "log_loss" else (lambda s, y: losses.hinge_loss(s, 2 * y - 1))
    result = train.fit(model, loss_fn, optim.sgd(0.05), loader, epochs=2, eval_data=test, progress=False)
    scores, _ = model.apply(result.params, result.state, jnp.asarray(test["image"]))
    expected = np.mean((np.asarray(scores) > 0) == (test["label"] > 0))
    assert result.history[-1]["test_accuracy"] == pytest.approx(expected)
    assert expected > 0.95 and 0.0 < result.history[-1]["train_accuracy"] <= 1.0


@pytest.mark.parametrize(("scores", "labels"), [
    ([-2.0, -0.5, 0.5, 2.0], [0, 1, 1, 0]),                       # 0/1 labels
    ([-2.0, -0.5, 0.5, 2.0], [-1, 1, 1, -1]),                     # -1/+1 labels
    ([-2.0, -0.5, 0.5, 2.0], [0.1, 0.2, 0.6, 0.3]),               # soft targets in [0, 1]
    ([[-2.0], [-0.5], [0.5], [2.0]], [[0.0], [1.0], [1.0], [0.0]]),  # (batch, 1) scores and labels
    ([[-2.0], [-0.5], [0.5], [2.0]], [0, 1, 1, 0]),               # (batch, 1) scores, (batch,) labels
])
def test_accuracy_of_one_score_per_example_is_the_sign_agreeing_with_the_label(scores, labels):
    """Right when the score is positive exactly where the label is above 1/2
    (NumPy's count, not the code's), whatever the labels' convention; a
    (batch, 1) output is one score per example, not a 1-way argmax (which
    would always count right)."""
    s, y = np.asarray(scores, np.float64).reshape(-1), np.asarray(labels, np.float64).reshape(-1)
    expected = np.mean((s > 0) == (y > 0.5))
    assert 0 < expected < 1  # some right, some wrong
    from jdl.train.step import accuracy

    assert float(accuracy(jnp.asarray(scores), jnp.asarray(labels))) == expected


def test_evaluation_dicts_of_integer_images_or_unequal_lengths_are_refused():
    model = _small_mlp()
    params, state = model.init(jax.random.key(0), (1, 28, 28, 1))
    images, labels = jdl.data.mnist_sample.read_split("test")
    with pytest.raises(ValueError, match=r"images must be floats, as the model trained on; got uint8"):
        train.evaluate(model, losses.cross_entropy, params, state, {"image": images, "label": labels})
    floats = images.astype(np.float32) / 255
    with pytest.raises(ValueError, match=r"the evaluation data has 10 images but 1000 labels"):
        train.evaluate(model, losses.cross_entropy, params, state, {"image": floats[:10], "label": labels})
    halves = train.evaluate(model, losses.cross_entropy, params, state,
                            {"image": jnp.asarray(floats, jnp.bfloat16), "label": labels})  # fmt: skip
    logits, _ = model.apply(params, state, jnp.asarray(floats, jnp.bfloat16))
    assert halves["accuracy"] == pytest.approx(np.mean(np.argmax(np.asarray(logits, np.float32), -1) == labels))


@pytest.mark.parametrize("where", ["evaluation", "after_record"])
def test_interrupt_between_epochs_resumes_exactly(tmp_path, monkeypatch, where):
    """Ctrl-C in an epoch's evaluation (after its last step) or after its
    record (in ``stop_when``): the resumed run trains no step twice and ends
    on the uninterrupted run's parameters and history."""
    fit_module = sys.modules["jdl.train.fit"]

    def fit(folder=tmp_path, **kwargs):
        return train.fit(_small_mlp(), losses.cross_entropy, optim.adam(1e-3), _loader(batch_size=500), epochs=3,
                         seed=2, eval_data=_test_data(), progress=False, checkpoint_dir=str(folder), **kwargs)

    uninterrupted = fit(tmp_path / "uninterrupted")
    if where == "evaluation":
        evaluate, calls = fit_module.evaluate_arrays, []

        def interrupted_once(*args):
            calls.append(1)
            if len(calls) == 2:
                raise KeyboardInterrupt
            return evaluate(*args)

        monkeypatch.setattr(fit_module, "evaluate_arrays", interrupted_once)
        kwargs = {}
    else:
        def interrupt_after_second(record):
            if record["epoch"] == 2:
                raise KeyboardInterrupt
            return False

        kwargs = {"stop_when": interrupt_after_second}
    with pytest.raises(train.TrainingInterrupted):
        fit(**kwargs)
    monkeypatch.undo()
    saved = checkpoint.load_raw(tmp_path)
    steps = len(_loader(batch_size=500))
    assert (int(saved["epoch"]), int(saved["step"])) == ((1, steps) if where == "evaluation" else (2, 0))
    resumed = fit(resume=True)
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]
    _assert_trees_equal(resumed.params, uninterrupted.params)
    for ours, theirs in zip(resumed.history, uninterrupted.history, strict=True):
        assert ours["train_loss"] == pytest.approx(theirs["train_loss"], rel=1e-12)
        assert ours["test_loss"] == theirs["test_loss"]


@pytest.mark.parametrize("change", [{"seed": 7}, {"batch_size": 250}, {"shuffle": False}])
def test_resuming_with_another_loader_fails_naming_what_differs_before_compiling(tmp_path, monkeypatch, change):
    kwargs = dict(epochs=1, seed=5, progress=False, checkpoint_dir=str(tmp_path))
    train.fit(_small_mlp(), losses.cross_entropy, optim.adam(1e-3), _loader(batch_size=500), **kwargs)
    other = jdl.data.load("mnist_sample", split="train", **{"batch_size": 500, "shuffle": True, "seed": 0, **change})
    monkeypatch.setattr(sys.modules["jdl.train.fit"], "_compile_side_by_side",
                        lambda *a: pytest.fail("compiled before the error"))  # fmt: skip
    key, value = next(iter(change.items()))
    with pytest.raises(ValueError, match=rf"loader of {key}=.*this one has {key}={int(value)}"):
        train.fit(_small_mlp(), losses.cross_entropy, optim.adam(1e-3), other, resume=True,
                  **{**kwargs, "epochs": 2})  # fmt: skip


def test_checkpoint_interrupted_mid_write_leaves_previous_readable(tmp_path, monkeypatch):
    target = {"params": {"w": np.zeros(3, np.float32)}}
    checkpoint.save(tmp_path, {"params": {"w": np.arange(3, dtype=np.float32)}})

    def crash(*args, **kwargs):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(OSError, match="simulated"):
        checkpoint.save(tmp_path, {"params": {"w": np.full(3, 9.0, np.float32)}})
    monkeypatch.undo()
    np.testing.assert_array_equal(checkpoint.load(tmp_path, target)["params"]["w"], [0.0, 1.0, 2.0])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.msgpack"]


def test_non_finite_loss_stops_naming_epoch_and_step_and_keeps_good_params(tmp_path):
    images, labels = jdl.data.mnist_sample.read_split("train")
    images = images.astype(np.float32) / 255.0
    images[450] = np.nan  # shuffle=False, batch 100: batch 4 of epoch 1 holds it
    loader = jdl.data.Loader(images, labels, batch_size=100, shuffle=False)
    with pytest.raises(train.NonFiniteLossError, match=r"epoch 1, step 4 \(of 40") as caught:
        train.fit(_small_mlp(), losses.cross_entropy, optim.sgd(0.1), loader, epochs=2, progress=False,
                  checkpoint_dir=str(tmp_path))
    good = caught.value.result.params
    # The last good parameters are those after exactly the 4 clean batches.
    clean = jdl.data.Loader(images[:400], labels[:400], batch_size=100, shuffle=False)
    four_steps = train.fit(_small_mlp(), losses.cross_entropy, optim.sgd(0.1), clean, epochs=1, progress=False)
    _assert_trees_close(good, four_steps.params, rtol=1e-6, atol=1e-7)
    saved = checkpoint.load_raw(tmp_path)
    assert int(saved["step"]) == 4
    # the epoch's metrics so far are the 4 good steps' (it once kept none): resuming reports the whole epoch
    partial = json.loads(bytes(saved["partial"]).decode())
    assert partial["size"] == [100] * 4
    assert np.mean(partial["loss"]) == pytest.approx(four_steps.history[0]["train_loss"], rel=1e-6)


@pytest.mark.parametrize("mode", ["scan", "stream"])
@pytest.mark.parametrize("examples", [4000, 3500])  # 3500: the last step is a partial batch after the scan
def test_parameters_going_non_finite_at_an_epochs_last_step_stop_training(mode, examples):
    # The learning rate is infinite at the 4th and last step of epoch 1: its loss, computed before the
    # update, is finite, only the parameters it leaves are not (found at the epoch's end, not in a loss).
    images, labels = jdl.data.mnist_sample.read_split("train")
    loader = jdl.data.Loader(images[:examples], labels[:examples], batch_size=1000, shuffle=False, drop_remainder=False)
    blows_up = optim.sgd(lambda count: jnp.where(count == 3, jnp.inf, 0.1))
    with pytest.raises(train.NonFiniteLossError, match=r"epoch 1, step 3 \(of 4") as caught:
        train.fit(_small_mlp(), losses.cross_entropy, blows_up, loader, epochs=2, progress=False, mode=mode)
    good = caught.value.result.params
    three = jdl.data.Loader(images[:3000], labels[:3000], batch_size=1000, shuffle=False)
    three_steps = train.fit(_small_mlp(), losses.cross_entropy, optim.sgd(0.1), three, epochs=1, progress=False)
    _assert_trees_close(good, three_steps.params, rtol=1e-6, atol=1e-7)


def test_init_model_matches_the_models_own_init_and_names_the_shape_on_failure():
    key = jax.random.key(3)
    ours = train.init_model(models.cnn(), key, (28, 28, 1))  # one program compiled without LLVM's passes
    eager = models.cnn().init(key, (1, 28, 28, 1))
    _assert_trees_close(ours, eager, rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match=r"images of shape \(28, 28\) do not fit the model"):
        train.init_model(models.cnn(), key, (28, 28))


@pytest.mark.parametrize("state", [None, {}])
def test_given_parameters_train_as_fits_own_initialization_and_stay_usable(state):
    model = _small_mlp()
    init_key = jax.random.split(jax.random.key(7))[1]  # fit(seed=7)'s initialization key
    params, _ = model.init(init_key, (1, 28, 28, 1))
    given = train.fit(model, losses.cross_entropy, optim.adam(1e-3), _loader(), epochs=1, seed=7, params=params,
                      state=state, progress=False)  # fmt: skip
    own = train.fit(model, losses.cross_entropy, optim.adam(1e-3), _loader(), epochs=1, seed=7, progress=False)
    _assert_trees_close(given.params, own.params, rtol=1e-5, atol=1e-6)
    # The arrays passed in are not donated to the training programs.
    _assert_trees_close(params, model.init(init_key, (1, 28, 28, 1))[0], rtol=0, atol=0)


def test_shape_mismatches_fail_before_the_first_step():
    with pytest.raises(ValueError, match=r"images of shape \(28, 28, 1\) do not fit the model.*Conv"):
        train.fit(nn.serial(nn.Flatten(), nn.Conv(4, 3)), losses.cross_entropy, optim.sgd(0.1), _loader(),
                  epochs=1, progress=False)
    with pytest.raises(ValueError, match=r"output of shape \(2, 5\).*labels of shape \(2,\) with 10 classes"):
        train.fit(models.mlp(num_classes=5), losses.cross_entropy, optim.sgd(0.1), _loader(), epochs=1,
                  progress=False)


def test_evaluation_data_that_does_not_fit_fails_before_training_saying_so(monkeypatch):
    model = _small_mlp()
    params, state = model.init(jax.random.key(0), (1, 28, 28, 1))
    arrays = _test_data().arrays()
    out_of_range = {"image": arrays["image"][:50], "label": arrays["label"][:50].copy()}
    out_of_range["label"][3] = 12
    message = r"the evaluation data's integer labels must lie in \[0, 10\) for the model's 10 outputs; got labels " \
              r"from 0 to 12"
    with pytest.raises(ValueError, match=message):
        train.evaluate(model, losses.cross_entropy, params, state, out_of_range)
    out_of_range["label"][3] = -1
    with pytest.raises(ValueError, match=r"got labels from -1 to 9"):
        train.evaluate(model, losses.cross_entropy, params, state, out_of_range)
    with pytest.raises(ValueError, match=r"the evaluation batch size must be a positive int; got 0"):
        train.evaluate(model, losses.cross_entropy, params, state, arrays, batch_size=0)
    monkeypatch.setattr(sys.modules["jdl.train.fit"].EpochRunner, "compile", None)  # nothing compiles before it
    with pytest.raises(ValueError, match=r"the evaluation data's integer labels must lie in \[0, 10\) .* -1 to 9"):
        train.fit(model, losses.cross_entropy, optim.sgd(0.1), _loader(), epochs=1, eval_data=out_of_range,
                  progress=False)
    wrong_images = {"image": np.zeros((10, 32, 32, 3), np.float32), "label": np.zeros(10, np.int32)}
    with pytest.raises(ValueError, match=r"the evaluation data's images of shape \(32, 32, 3\) do not fit the model"):
        train.fit(model, losses.cross_entropy, optim.sgd(0.1), _loader(), epochs=1, eval_data=wrong_images,
                  progress=False)


def test_evaluation_with_plus_minus_one_labels_for_the_hinge_loss_is_not_a_class_range_error():
    model = nn.serial(nn.Flatten(), nn.Dense(1))
    params, state = model.init(jax.random.key(0), (1, 28, 28, 1))
    arrays = _test_data().arrays()
    labels = np.where(arrays["label"] % 2 == 0, 1, -1).astype(np.int32)[:, None]  # even digits: +1
    score = train.evaluate(model, losses.hinge_loss, params, state, {"image": arrays["image"], "label": labels})
    scores = np.asarray(model.apply(params, state, arrays["image"])[0], np.float64)
    assert score["loss"] == pytest.approx(np.mean(np.maximum(0.0, 1.0 - labels * scores)), rel=1e-5)


def test_training_data_and_optimizer_of_the_wrong_kind_say_what_is_expected():
    arrays = _test_data().arrays()
    with pytest.raises(TypeError, match=r"train_data must be a jdl.data loader .*jdl.data.Loader\(images, labels, "
                                        r"batch_size=...\)\); got dict"):
        train.fit(_small_mlp(), losses.cross_entropy, optim.sgd(0.1), arrays, epochs=1, progress=False)
    with pytest.raises(TypeError, match=r"optimizer must be a gradient transformation .*jdl.optim.get\('adam', "
                                        r"learning_rate=...\)\); got str"):
        train.fit(_small_mlp(), losses.cross_entropy, "adam", _loader(), epochs=1, progress=False)
    with pytest.raises(TypeError, match=r"model must be a jdl.nn layer .*\(mlp builds one: call it, e.g. "
                                        r"models.mlp\(...\)\); got function"):
        train.fit(models.mlp, losses.cross_entropy, optim.sgd(0.1), _loader(), epochs=1, progress=False)
    with pytest.raises(TypeError, match=r"model must be a jdl.nn layer .* or jdl.nn.serial\(...\); got function$"):
        train.fit(losses.cross_entropy, _small_mlp(), optim.sgd(0.1), _loader(), epochs=1, progress=False)  # swapped
    with pytest.raises(TypeError, match=r"evaluate: model must be .*\(for a name: jdl.models.get\('mlp'\)\)"):
        train.evaluate("mlp", losses.cross_entropy, {}, {}, arrays)


def test_resuming_without_a_checkpoint_or_beyond_its_epochs_says_so(tmp_path):
    def fit(epochs, **kwargs):
        return train.fit(_small_mlp(), losses.cross_entropy, optim.sgd(0.1), _loader(), epochs=epochs,
                         progress=False, **kwargs)

    with pytest.raises(FileNotFoundError, match=r"no checkpoint at .*new.*expected one written by fit\(checkpoint_dir"):
        fit(1, checkpoint_dir=str(tmp_path / "new"), resume=True)
    fit(2, checkpoint_dir=str(tmp_path))
    with pytest.raises(ValueError, match=r"is at the end of epoch 2, beyond epochs=1: resume with epochs >= 2"):
        fit(1, checkpoint_dir=str(tmp_path), resume=True)
    assert len(fit(2, checkpoint_dir=str(tmp_path), resume=True).history) == 2  # a finished run resumes as it is


def test_a_batch_not_divisible_by_the_devices_trains_on_one_with_a_warning(monkeypatch):
    from jdl.train.engine import Placement

    one = jax.devices()[0]
    monkeypatch.setattr(jax, "devices", lambda: [one] * 8)
    monkeypatch.setattr(jax, "local_devices", lambda: [one] * 8)
    with pytest.warns(UserWarning, match=r"batch_size 100 is not divisible by the 8 local devices: training on one"):
        placement = Placement(100, "auto")
    assert placement.num_devices == 1
    with pytest.raises(ValueError, match=r"needs a batch size divisible by 8; got batch_size=100"):
        Placement(100, True)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert Placement(100, False).num_devices == 1
    for wrong, error in ((0, TypeError), (1, TypeError), (None, TypeError), ("yes", ValueError)):
        with pytest.raises(error, match=rf"fit: data_parallel must be True, False or 'auto'; got {wrong!r}"):
            Placement(96, wrong)


def test_eight_cpu_devices_train_to_the_same_parameters_as_one(run_python):
    script = textwrap.dedent("""
        import json, sys, jax, numpy as np
        import jdl.data
        from jdl import losses, models, optim, train
        assert len(jax.devices()) == int(sys.argv[1]), jax.devices()
        out = {}
        for mode in ("stream", "scan"):
            loader = jdl.data.load("mnist_sample", split="train", batch_size=64, shuffle=True, seed=0)
            test = jdl.data.load("mnist_sample", split="test", batch_size=100)
            result = train.fit(models.mlp(hidden=(32,)), losses.cross_entropy, optim.adam(1e-3), loader, epochs=1,
                               mode=mode, eval_data=test, progress=False)
            out[mode] = {k: np.asarray(v).tolist() for k, v in result.params["dense_1"].items()}
            out[mode]["test_loss"] = result.history[-1]["test_loss"]
        print(json.dumps(out))
    """)

    def run(devices):
        env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu")
        out = run_python(script, devices, timeout=300, env=env)
        assert out.returncode == 0, out.stderr[-3000:]
        return json.loads(out.stdout.strip().splitlines()[-1])

    one, eight = run(1), run(8)
    for mode in ("stream", "scan"):
        for name in one[mode]:
            np.testing.assert_allclose(eight[mode][name], one[mode][name], rtol=1e-4, atol=1e-5)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        return sock.getsockname()[1]


# a process that hangs shows where: _results asks for every thread's stack before it kills
_DUMP_STACKS_ON_SIGUSR1 = "import faulthandler, signal; faulthandler.register(signal.SIGUSR1, all_threads=True)\n"


def _launch(script: str, args: tuple, devices: int) -> subprocess.Popen:
    """``python -c script *args`` on ``devices`` CPU devices, its output into
    temporary files (a pipe nobody reads while another process is awaited
    could fill and stop it)."""
    import tempfile

    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu")
    out, err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
    script = _DUMP_STACKS_ON_SIGUSR1 + script
    process = subprocess.Popen([sys.executable, "-c", script, *map(str, args)], env=env, stdout=out, stderr=err,
                               text=True)  # fmt: skip
    process.out, process.err = out, err
    return process


def _results(processes: list, timeout: float = 150) -> list:
    """The JSON line each process printed last.  The first process to fail
    is reported (the others, left waiting in a collective, would only time
    out), and every process is killed when one fails or hangs."""
    import time

    def output(process, name):
        stream = getattr(process, name)
        stream.seek(0)
        return stream.read()

    deadline = time.monotonic() + timeout
    try:
        while any(process.poll() is None for process in processes):
            failed = [process for process in processes if process.poll() not in (None, 0)]
            if failed:
                break
            if time.monotonic() > deadline:
                for process in processes:
                    if process.poll() is None:
                        process.send_signal(signal.SIGUSR1)  # its threads' stacks, into its stderr
                time.sleep(2)
                pytest.fail(f"the processes did not finish in {timeout} s:\n"
                            + "\n".join(output(process, "err")[-4000:] for process in processes))  # fmt: skip
            time.sleep(0.05)
        failed = [process for process in processes if process.poll() not in (None, 0)]
        assert not failed, f"a process failed:\n{output(failed[0], 'err')[-3000:]}"
        return [json.loads(output(process, "out").strip().splitlines()[-1]) for process in processes]
    finally:
        for process in processes:
            process.kill()
            process.wait()
            process.out.close()
            process.err.close()


def test_a_scan_run_resumed_mid_epoch_on_two_devices_ends_as_the_uninterrupted_one(tmp_path):
    """Two devices, a split of 41 batches of 96 and a last one of 64: a run
    stopped by Ctrl-C after step 5 and resumed with ``mode='scan'`` streams
    the rest of its first epoch (batches sharded over the devices, the last
    one too) and scans the next (its last batch gathered from the resident,
    replicated split); the step compiled for the sharded 64 was once reused
    for the replicated one, and the call failed on their shardings."""
    script = textwrap.dedent("""
        import json, os, signal, sys
        import jax, numpy as np
        import jdl.data
        from jdl import losses, models, optim, train
        runner, folder = sys.modules["jdl.train.runner"], sys.argv[1]
        compiled_step, calls = runner.EpochRunner._compiled_step, []

        def interrupting(self, batch, stacked=False):  # Ctrl-C after the fifth step
            step = compiled_step(self, batch, stacked)

            def run(*args):
                out = step(*args)
                calls.append(1)
                if len(calls) == 5:
                    os.kill(os.getpid(), signal.SIGINT)
                return out

            return run

        def fit(mode, **kwargs):
            loader = jdl.data.load("mnist_sample", split="train", batch_size=96, shuffle=True, seed=0,
                                   drop_remainder=False)
            return train.fit(models.mlp(hidden=(32,)), losses.cross_entropy, optim.adam(1e-3), loader, epochs=2,
                             mode=mode, progress=False, **kwargs)

        whole = fit("scan")
        runner.EpochRunner._compiled_step = interrupting
        try:
            fit("stream", checkpoint_dir=folder)
        except train.TrainingInterrupted:
            pass
        runner.EpochRunner._compiled_step = compiled_step
        stopped = train.checkpoint.load_raw(folder)
        resumed = fit("scan", checkpoint_dir=folder, resume=True)
        print(json.dumps({"devices": len(jax.devices()), "stopped": [int(stopped["epoch"]), int(stopped["step"])],
                          "whole": np.asarray(whole.params["dense_1"]["w"]).tolist(),
                          "resumed": np.asarray(resumed.params["dense_1"]["w"]).tolist()}))
    """)
    (out,) = _results([_launch(script, (tmp_path,), 2)])
    assert out["devices"] == 2 and out["stopped"] == [0, 5]
    np.testing.assert_allclose(out["resumed"], out["whole"], rtol=1e-5, atol=1e-6)


def test_two_processes_train_data_parallel_to_the_same_parameters_as_one_device(tmp_path):
    """Two hosts simulated on the CPU: two processes joined by
    ``jax.distributed.initialize`` (gloo collectives), one device each, one
    mesh over the two (with two devices a process, XLA's CPU collectives may
    hang with several steps in flight: CI lost this test to it once; the
    feeding path for several local devices a process is checked in
    test_data_prefetch.py).  Each process trains with the same loader and places
    its own devices' part of every batch; both end with the parameters of one
    process on one device (stream and scan engines), the first process alone
    writes the checkpoint, and processes that would not run the same
    programs on the same data are refused in both, before training: other
    data, other evaluation data or none, other start parameters or
    checkpoints, other arguments, or asked to train separately
    (``data_parallel=False``)."""
    script = textwrap.dedent("""
        import json, sys
        import jax, numpy as np
        process, port, folder = int(sys.argv[1]), sys.argv[2], sys.argv[3]
        if port != "none":
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
            jax.distributed.initialize(coordinator_address=f"localhost:{port}", num_processes=2, process_id=process)
        import jdl.data
        from jdl import losses, models, optim, train
        out = {"devices": len(jax.devices()), "local": len(jax.local_devices())}
        for mode in ("stream", "scan"):
            loader = jdl.data.load("mnist_sample", split="train", batch_size=64, shuffle=True, seed=0)
            test = jdl.data.load("mnist_sample", split="test", batch_size=100)
            result = train.fit(models.mlp(hidden=(32,)), losses.cross_entropy, optim.adam(1e-3), loader, epochs=1,
                               mode=mode, eval_data=test, progress=False, checkpoint_dir=f"{folder}/{mode}")
            out[mode] = {k: np.asarray(v).tolist() for k, v in result.params["dense_1"].items()}
            out[mode]["test_loss"] = result.history[-1]["test_loss"]
            out[mode + "_devices"] = len(result.params["dense_1"]["w"].sharding.device_set)  # trained on
        if port != "none":
            def refusal(loader, epochs=1, **arguments):  # the ValueError fit raises
                try:
                    train.fit(models.mlp(hidden=(32,)), losses.cross_entropy, optim.adam(1e-3), loader, epochs=epochs,
                              progress=False, **arguments)
                except ValueError as error:
                    return str(error)

            other = jdl.data.load("mnist_sample", split="train", batch_size=64, shuffle=True, seed=process)
            out["refused"] = refusal(other)
            out["separate"] = refusal(loader, data_parallel=False)
            # processes that disagree all raise (the first alone would leave the other waiting)
            out["disagree"] = refusal(loader, data_parallel=False if process == 0 else "auto")
            out["eval_windows"] = refusal(loader, eval_data=test, eval_batch_size=100 if process == 0 else 50)
            out["eval_in_one"] = refusal(loader, eval_data=test if process == 0 else None)
            params, state = models.mlp(hidden=(32,)).init(jax.random.key(process), (1, 28, 28, 1))
            out["own_params"] = refusal(loader, params=params, state=state)
            for epochs in (1, 2):  # checkpoints after the first and the second epoch (the first process writes)
                train.fit(models.mlp(hidden=(32,)), losses.cross_entropy, optim.adam(1e-3), loader, epochs=epochs,
                          progress=False, checkpoint_dir=f"{folder}/after{epochs}")
            # each resumes from another checkpoint (a host's own copy): refused, not trained apart
            out["own_checkpoint"] = refusal(loader, epochs=3, resume=f"{folder}/after{process + 1}")
        print(json.dumps(out))
    """)
    port = _free_port()
    first, second = _results([_launch(script, (process, port, tmp_path / "two"), 1) for process in (0, 1)])
    (alone,) = _results([_launch(script, (0, "none", tmp_path / "one"), 1)])
    assert (first["devices"], first["local"], alone["devices"]) == (2, 1, 1)
    for mode in ("stream", "scan"):
        # one computation over the two devices (not each process training alone on its own)
        assert first[mode + "_devices"] == second[mode + "_devices"] == 2
        assert first[mode] == second[mode]  # every process holding its result
        for name in alone[mode]:
            np.testing.assert_allclose(first[mode][name], alone[mode][name], rtol=1e-4, atol=1e-5)
        saved = checkpoint.load_raw(tmp_path / "two" / mode)["params"]["dense_1"]["w"]
        np.testing.assert_array_equal(np.asarray(saved), np.asarray(first[mode]["w"], np.float32))
        assert [p.name for p in (tmp_path / "two" / mode).iterdir()] == ["checkpoint.msgpack"]
    for out in (first, second):
        assert "fit: data_parallel=False with 2 processes (jax.distributed) would train 2 separate copies" in (
            out["separate"])
        assert "each must hold the same training and evaluation data" in out["refused"]
        assert "the same fit arguments" in out["disagree"]
        assert "resume, data_parallel, eval_batch_size," in out["disagree"]
        assert "[[0, 64, 4000, 1, 1," in out["refused"] and "[1, 64, 4000, 1, 1," in out["refused"]
        for case in ("eval_windows", "eval_in_one", "own_params", "own_checkpoint"):  # the rest the same
            assert "each must hold the same training and evaluation data" in out[case], out[case]


def test_an_error_in_one_of_two_processes_stops_both(tmp_path):
    """Two processes of one CPU device each (gloo): where one process
    raises or stops alone, before training or at an epoch's end, the other
    stops there too (a RuntimeError naming the process) instead of waiting
    in the next collective for good (or gloo aborting both on a mismatched
    one): an argument one alone rejects, its own checkpoint folder, a
    ``stop_when`` that one alone has (both stop) or that fails in one, a
    checkpoint the first fails to write."""
    script = textwrap.dedent("""
        import json, sys
        import jax, numpy as np
        process, port, folder = int(sys.argv[1]), sys.argv[2], sys.argv[3]
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(coordinator_address=f"localhost:{port}", num_processes=2, process_id=process)
        import jdl.data
        from jdl import losses, models, optim, train
        loader = jdl.data.load("mnist_sample", split="train", batch_size=64, shuffle=True, seed=0)

        def outcome(**arguments):
            try:
                result = train.fit(models.mlp(hidden=(32,)), losses.cross_entropy, optim.adam(1e-3), loader,
                                   progress=False, **arguments)
            except Exception as error:
                return f"{type(error).__name__}: {error}"
            return f"{len(result.history)} epochs"

        def no_space(*args):
            raise OSError("no space left")

        out = {"typo": outcome(epochs=1, data_parallel="Auto" if process == 1 else "auto")}
        own = f"{folder}/own{process}"  # a folder each host sees its own way: the second's is taken
        if process == 1:
            train.checkpoint.save(own, {"params": {"w": np.zeros(3, np.float32)}})
        out["own_folder"] = outcome(epochs=1, checkpoint_dir=own)
        out["stop_in_one"] = outcome(epochs=3, stop_when=(lambda record: True) if process == 0 else None)
        out["stop_failed"] = outcome(epochs=3, stop_when=lambda record: 1 / process > 0)
        if process == 0:
            train.checkpoint.save = no_space
        out["write_failed"] = outcome(epochs=3, checkpoint_dir=f"{folder}/full")
        print(json.dumps(out))
    """)
    port = _free_port()
    first, second = _results([_launch(script, (process, port, tmp_path), 1) for process in (0, 1)])
    assert first["typo"].startswith("RuntimeError: fit: process 1 of 2 stopped before training")
    assert second["typo"] == "ValueError: fit: data_parallel must be True, False or 'auto'; got 'Auto'"
    assert first["own_folder"].startswith("RuntimeError: fit: process 1 of 2 stopped before training")
    assert second["own_folder"].startswith("ValueError: fit: checkpoint_dir") and "not written by fit" in (
        second["own_folder"])
    assert first["stop_in_one"] == second["stop_in_one"] == "1 epochs"  # of 3
    assert first["stop_failed"] == "ZeroDivisionError: division by zero"
    assert second["stop_failed"].startswith("RuntimeError: fit: process 0 of 2 stopped after epoch 1")
    assert first["write_failed"] == "OSError: no space left"
    assert second["write_failed"].startswith("RuntimeError: fit: process 0 of 2 stopped after epoch 1")


def test_ctrl_c_reaching_one_of_two_processes_stops_both_at_the_epochs_end(tmp_path):
    """Two processes of one CPU device each (with two, XLA's CPU collectives
    may hang with several steps in flight): a Ctrl-C that reaches only the
    second, after its fifth step, stops both at the end of the first epoch
    (they agree there), with one checkpoint at the start of the second
    epoch; before, the second stopped at once and the first waited in the
    next step's collective for good."""
    script = textwrap.dedent("""
        import json, os, signal, sys
        import jax, numpy as np
        process, port, folder = int(sys.argv[1]), sys.argv[2], sys.argv[3]
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(coordinator_address=f"localhost:{port}", num_processes=2, process_id=process)
        import jdl.data
        from jdl import losses, models, optim, train
        runner = sys.modules["jdl.train.runner"]
        compiled_step, calls = runner.EpochRunner._compiled_step, []

        def interrupting(self, batch, stacked=False):  # Ctrl-C after the fifth step, in the second process only
            step = compiled_step(self, batch, stacked)

            def run(*args):
                out = step(*args)
                calls.append(1)
                if len(calls) == 5 and process == 1:
                    os.kill(os.getpid(), signal.SIGINT)
                return out

            return run

        runner.EpochRunner._compiled_step = interrupting
        loader = jdl.data.load("mnist_sample", split="train", batch_size=64, shuffle=True, seed=0)
        try:
            train.fit(models.mlp(hidden=(32,)), losses.cross_entropy, optim.adam(1e-3), loader, epochs=3,
                      mode="stream", progress=False, checkpoint_dir=folder)
            out = {"stopped": False}
        except train.TrainingInterrupted as error:
            out = {"stopped": True, "steps": len(calls), "checkpoint": str(error.checkpoint),
                   "w": np.asarray(error.result.params["dense_1"]["w"]).tolist()}
        print(json.dumps(out))
    """)
    port = _free_port()
    first, second = _results([_launch(script, (process, port, tmp_path), 1) for process in (0, 1)])
    steps = len(jdl.data.load("mnist_sample", split="train", batch_size=64))
    assert first["stopped"] and second["stopped"]
    assert first["steps"] == second["steps"] == steps  # the whole first epoch, in both
    assert first["w"] == second["w"]
    saved = checkpoint.load_raw(tmp_path)
    assert (int(saved["epoch"]), int(saved["step"])) == (1, 0)
    np.testing.assert_array_equal(np.asarray(saved["params"]["dense_1"]["w"]), np.asarray(first["w"], np.float32))


def test_the_prefetching_thread_starts_no_program_over_several_processes():
    """Several hosts, the stream engine's accelerator path (taken on the CPU,
    one device a process): its feeding thread places, converts and splits
    each device's part on that device alone, so ``jax.thread_guard``, which
    refuses a program over several processes started from another thread
    (those must start in the same order in every process, jax's concurrency
    docs), lets it train; in chunks of steps and one step a call, to the one
    device's parameters; and ``prefetch_to_device`` over any iterable."""
    script = textwrap.dedent("""
        import json, sys
        import jax, numpy as np
        process, port = int(sys.argv[1]), sys.argv[2]
        if port != "none":
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
            jax.distributed.initialize(coordinator_address=f"localhost:{port}", num_processes=2, process_id=process)
        import jdl.data
        from jdl import losses, models, optim, train
        from jdl.data.prefetch import data_sharding, prefetch_to_device
        runner = sys.modules["jdl.train.runner"]
        init = runner.EpochRunner.__init__

        def on_accelerator(self, *args, **kwargs):  # as on a GPU: batches prefetched by a thread
            init(self, *args, **kwargs)
            self._on_accelerator = True

        runner.EpochRunner.__init__ = on_accelerator
        out = {}
        for chunk in (8, 0):  # 250 steps: 50 chunks of 5; one step a call
            train.engine.STREAM_CHUNK = chunk
            loader = jdl.data.load("mnist_sample", split="train", batch_size=16, shuffle=True, seed=0,
                                   drop_remainder=True)
            with jax.thread_guard(True):
                result = train.fit(models.mlp(hidden=(32,)), losses.cross_entropy, optim.adam(1e-3), loader,
                                   epochs=1, mode="stream", progress=False)
            out[str(chunk)] = np.asarray(result.params["dense_1"]["w"]).tolist()
        host = [{"x": np.arange(i, i + 24, dtype=np.float32).reshape(8, 3)} for i in range(10)]
        with jax.thread_guard(True):
            placed = list(prefetch_to_device(iter(host), sharding=data_sharding(jax.devices()), chunk=4))
        out["placed"] = [len(batch["x"].sharding.device_set) for batch in placed]
        out["values"] = all(np.array_equal(shard.data, batch["x"][shard.index])
                            for placed_batch, batch in zip(placed, host)
                            for shard in placed_batch["x"].addressable_shards)
        print(json.dumps(out))
    """)
    port = _free_port()
    first, second = _results([_launch(script, (process, port), 1) for process in (0, 1)])
    (alone,) = _results([_launch(script, (0, "none"), 1)])
    for out in (first, second):
        assert out["placed"] == [2] * 10 and out["values"]
        for chunk in ("8", "0"):
            np.testing.assert_allclose(out[chunk], alone[chunk], rtol=1e-4, atol=1e-5)
    assert first["8"] == second["8"] and first["0"] == second["0"]


def test_auto_mode_scans_jdl_convolutions_on_the_cpu_but_not_xla_ones():
    """On the CPU XLA's convolutions in a scan are ~25x slower (FACTS): ``auto``
    streams a model holding one, and scans jdl's own cnn, whose ``Conv`` is a
    matrix product there."""
    from jdl.train.engine import choose_mode, uses_convolution

    shape = (1, 28, 28, 1)
    for method, expected in (("lax", True), ("matmul", False), ("auto", jax.default_backend() != "cpu")):
        model = models.cnn(conv_method=method)
        params, state = model.init(jax.random.key(0), shape)
        assert uses_convolution(model, params, state, shape) is expected, method
    on_cpu = jax.default_backend() == "cpu"
    assert choose_mode("auto", has_conv=True, has_host_transform=False, data_bytes=1 << 20) == (
        "stream" if on_cpu else "scan")
    assert choose_mode("auto", has_conv=False, has_host_transform=False, data_bytes=1 << 20) == "scan"
    assert choose_mode("auto", has_conv=False, has_host_transform=True, data_bytes=1 << 20) == "stream"
    with pytest.raises(ValueError, match="mode must be 'auto', 'stream' or 'scan'; got 'loop'"):
        choose_mode("loop", has_conv=False, has_host_transform=False, data_bytes=0)
