"""jdl.compare: vmapped groups against separate jdl.train.fit runs, divergence,
the report, the command line and its errors.  Data: the real mnist_sample."""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jdl.compare
import jdl.data
from jdl import cli, losses, models, optim, train
from jdl.compare import preset
from jdl.data import sources


def test_vmapped_group_gives_the_same_curves_as_separate_runs():
    # gd is a cluster of its own (the whole split per step), minibatch and adam share one (batch 100).
    result = jdl.compare.run("mnist_sample", "mlp", ["gd", "minibatch", "adam"], seeds=[0, 1], epochs=2,
                             batch_size=100, progress=False)  # fmt: skip
    test = jdl.data.load("mnist_sample", split="test", batch_size=500)
    assert len(result.runs) == 6
    for run in result.runs:
        p = preset(run["optimizer"])
        loader = jdl.data.load("mnist_sample", split="train", batch_size=run["batch_size"], shuffle=True,
                               seed=run["seed"], drop_remainder=True)  # fmt: skip
        alone = train.fit(models.mlp(), losses.cross_entropy, p.make(run["learning_rate"]), loader, epochs=2,
                          eval_data=test, seed=run["seed"], mode="scan", progress=False)
        for ours, theirs in zip(run["epochs"], alone.history, strict=True):
            assert ours["train_loss"] == pytest.approx(theirs["train_loss"], rel=2e-4)
            assert ours["test_loss"] == pytest.approx(theirs["test_loss"], rel=2e-4)
            assert ours["test_accuracy"] == pytest.approx(theirs["test_accuracy"], abs=2e-3)
    seeds = {(r["optimizer"], r["seed"]): r["epochs"][-1]["test_loss"] for r in result.runs}
    assert seeds[("adam", 0)] != seeds[("adam", 1)]
    # one program per batch size, timed as one: each run names the optimizers it shared it with
    assert {r["optimizer"]: tuple(r["trained_with"]) for r in result.runs} == {
        "gd": (), "minibatch": ("adam",), "adam": ("minibatch",)}
    assert {(r["optimizer"], tuple(e["time_s"] for e in r["epochs"])) for r in result.runs if r["seed"] == 0} \
        == {(r["optimizer"], tuple(e["time_s"] for e in r["epochs"])) for r in result.runs if r["seed"] == 1}


def test_full_batch_steps_sum_their_gradient_in_chunks_of_at_most_a_thousand(monkeypatch):
    """gd over the search's 3,600 examples was one pass over all of them (1,000 does not divide 3,600); it
    is 4 chunks of 900, and 4 of 1,000 over the whole 4,000."""
    seen, real = [], jdl.compare.train_cluster

    def spy(*args, **kwargs):
        seen.append((kwargs["batch_size"], kwargs["microbatch"]))
        return real(*args, **kwargs)

    monkeypatch.setattr(jdl.compare, "train_cluster", spy)
    jdl.compare.run("mnist_sample", "mlp", ["gd"], seeds=1, epochs=1, learning_rates=[0.1, 0.5], progress=False)
    assert seen == [(3600, 900), (4000, 1000)]
    # no divisor from 250 to 1,000: chunks of about one size (73,257 = 73 x 990 + 987; 1,009 = 505 + 504)
    sizes = [jdl.compare.full_batch_chunk(n) for n in (1000, 60000, 51000, 73257, 1009)]
    assert sizes == [None, 1000, 1000, 990, 505]
    # past ~500,000 examples too, no last chunk under half the others' size (1,000,001 was 1,000 x 1,000 and 1)
    for n in (1_000_001, 2_000_003, *range(400_001, 3_000_000, 99_991)):
        size = jdl.compare.full_batch_chunk(n)
        assert 250 <= size <= 1000 and (n % size == 0 or n % size >= size / 2), (n, size, n % size)


def test_a_batch_larger_than_what_trains_is_refused_in_the_comparisons_terms():
    with pytest.raises(jdl.data.loader.BatchLargerThanSplitError,
                       match=r"^batch_size 5000 is larger than mnist_sample's training split, which holds 4000 "
                             r"examples: use batch_size <= 4000$"):  # fmt: skip
        jdl.compare.run("mnist_sample", "mlp", ["adam"], batch_size=5000, progress=False)
    with pytest.raises(ValueError, match=r"the batch size, 3700, is larger than the 3600 examples the learning-rate "
                                         r"search trains on"):
        jdl.compare.run("mnist_sample", "mlp", ["adam"], batch_size=3700, learning_rates=[1e-3, 1e-2],
                        progress=False)


def test_a_diverged_run_is_reported_and_the_others_finish():
    result = jdl.compare.run("mnist_sample", "mlp", ["minibatch", "adam"], seeds=1, epochs=2,
                             learning_rates={"minibatch": [1e12], "adam": [1e-3]}, progress=False)
    runs = {r["optimizer"]: r for r in result.runs}
    assert runs["minibatch"]["diverged"] is not None and runs["minibatch"]["diverged"]["epoch"] == 1
    assert runs["adam"]["diverged"] is None and len(runs["adam"]["epochs"]) == 2
    assert runs["adam"]["epochs"][-1]["test_accuracy"] > 0.8
    assert "1/1 diverged" in result.table()


def test_parameters_broken_by_the_last_step_mark_the_run_diverged():
    """gd takes one full-batch step per epoch: with a huge rate its only
    step's loss is finite, but the parameters it leaves are not usable."""
    result = jdl.compare.run("mnist_sample", "mlp", ["gd", "adam"], seeds=1, epochs=1,
                             learning_rates={"gd": [1e30], "adam": [1e-3]}, progress=False)  # fmt: skip
    runs = {r["optimizer"]: r for r in result.runs}
    assert runs["gd"]["diverged"] == {"epoch": 1, "step": 0} and runs["gd"]["epochs"] == []
    assert runs["adam"]["diverged"] is None


def test_parameters_broken_at_the_end_of_an_earlier_epoch_mark_the_run_there():
    """gd's one step of epoch 1 at rate 1e30 leaves NaN parameters with a finite loss: the run diverged at
    epoch 1, step 0, whether 1 or 2 epochs were asked for (with 2 it was marked at epoch 2 and kept
    epoch 1's NaN test loss)."""
    def gd_beside_adam(epochs):
        result = jdl.compare.run("mnist_sample", "mlp", ["gd", "adam"], seeds=1, epochs=epochs,
                                 learning_rates={"gd": [1e30], "adam": [1e-3]}, progress=False)  # fmt: skip
        return {r["optimizer"]: r for r in result.runs}

    one, two = gd_beside_adam(1), gd_beside_adam(2)
    assert one["gd"]["diverged"] == two["gd"]["diverged"] == {"epoch": 1, "step": 0}
    assert one["gd"]["epochs"] == two["gd"]["epochs"] == []
    assert [e["epoch"] for e in two["adam"]["epochs"]] == [1, 2] and two["adam"]["diverged"] is None


def test_a_run_is_initialized_as_fit_is_whatever_the_other_runs():
    """Every run starts from fit(seed)'s initial parameters bit for bit, however many runs are compared
    (initialized vmapped over runs, some weights came out 1 ulp apart), so that a learning-rate search does
    not depend on which other optimizers are compared."""
    from jdl.compare.engine import Group, init_groups
    from jdl.compare.presets import PRESETS
    from jdl.train.engine import run_once
    from jdl.train.step import run_keys

    model = models.get("mlp", num_classes=10)
    for seed in (0, 4):
        fit_start = run_once(lambda seed=seed: model.init(run_keys(seed)[1], (1, 28, 28, 1))[0])
        groups = [Group(name, PRESETS[name].make, np.full(3, PRESETS[name].learning_rate, np.float32),
                        np.array([0, 4, 7])) for name in ("gd", "sgd", "adam")]  # fmt: skip
        carries, _ = init_groups(model, groups, (28, 28, 1))
        for carry in carries:
            run = [np.asarray(leaf)[[0, 4, 7].index(seed)] for leaf in jax.tree_util.tree_leaves(carry.params)]
            for ours, theirs in zip(run, jax.tree_util.tree_leaves(fit_start), strict=True):
                np.testing.assert_array_equal(ours, theirs)


def test_learning_rate_search_picks_a_rate_from_the_grid_on_validation_data():
    grid = [1e-5, 1e-3, 1e4]
    result = jdl.compare.run("mnist_sample", "mlp", ["adam"], seeds=2, epochs=1, learning_rates=grid, progress=False)
    searched = [e for e in result.lr_search if e["optimizer"] == "adam"]
    assert sorted(e["learning_rate"] for e in searched) == pytest.approx(grid)
    best = max((e for e in searched if e["diverged"] is None), key=lambda e: e["validation_accuracy"])
    assert all(r["learning_rate"] == pytest.approx(best["learning_rate"]) for r in result.runs)
    assert best["learning_rate"] == pytest.approx(1e-3)
    assert len(result.runs) == 2


def test_cli_compare_writes_table_json_and_plots(tmp_path, capsys):
    out = tmp_path / "cmp"
    code = cli.main(["compare", "--optimizers", "gd,sgd,adam", "--epochs", "1", "--seeds", "1", "--out", str(out),
                     "--no-compilation-cache"])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    for name in ("gd", "sgd", "adam", "test acc"):
        assert name in printed
    data = json.loads((out / "results.json").read_text())
    assert data["dataset"] == "mnist_sample" and data["model"] == "mlp"
    batch = {r["optimizer"]: r["batch_size"] for r in data["runs"]}
    assert batch == {"gd": 4000, "sgd": 1, "adam": 128}
    for run in data["runs"]:
        assert set(run) >= {"optimizer", "learning_rate", "seed", "batch_size", "epochs"}
        assert set(run["epochs"][0]) >= {"epoch", "train_loss", "test_loss", "test_accuracy", "time_s"}
    for png in ("training_loss.png", "test_accuracy.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_train_writes_results(tmp_path):
    out = tmp_path / "run"
    assert cli.main(["train", "--dataset", "mnist_sample", "--model", "mlp", "--optimizer", "Adam", "--epochs", "1",
                     "--out", str(out), "--no-compilation-cache"]) == 0
    run = json.loads((out / "results.json").read_text())["runs"][0]
    assert run["optimizer"] == "adam" and run["epochs"][0]["test_accuracy"] > 0.8
    assert run["batch_size"] == 32  # the documented default


def test_cli_train_takes_an_optax_optimizer_and_counts_its_epochs_in_words(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["train", "--dataset", "mnist_sample", "--model", "mlp", "--optimizer", "optax.lion", "--epochs",
                     "1", "--out", str(out), "--no-compilation-cache"]) == 0  # fmt: skip
    run = json.loads((out / "results.json").read_text())["runs"][0]
    assert run["optimizer"] == "optax.lion" and run["learning_rate"] == 1e-3  # jdl compare's rate for optax names
    assert run["epochs"][0]["test_accuracy"] > 0.8
    assert "after 1 epoch; results in" in capsys.readouterr().out  # not "1 epochs"


def test_cli_help_gives_each_options_default_and_the_version(capsys):
    for command, defaults in (("compare", ["(default: 10)", "(default: 128)", "(default: mnist_sample)"]),
                              ("train", ["(default: 1)", "(default: 0)", "(default: 32)"])):  # fmt: skip
        with pytest.raises(SystemExit) as exit_:
            cli.main([command, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert exit_.value.code == 0 and all(d in text for d in defaults), (command, text)
        assert "(default: None)" not in text
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out == f"jdl {jdl.__version__}\n"


def test_cli_errors_use_the_commands_options_and_a_missing_tensorflow_is_one_line(tmp_path, capsys, monkeypatch):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["compare", "--target-accuracy", "90"])
    assert exit_.value.code == 2
    assert "--target-accuracy: expected a fraction in (0, 1], e.g. 0.9 for 90%; got 90" in capsys.readouterr().err

    # A dataset not on disk and no network: the library's message, naming the command's options.
    monkeypatch.setattr(sources, "_any_reachable", lambda hosts, timeout=3.0: False)
    argv = ["train", "--dataset", "fashion_mnist", "--model", "mlp", "--optimizer", "adam", "--data-dir",
            str(tmp_path / "data"), "--out", str(tmp_path / "new"), "--no-compilation-cache"]  # fmt: skip
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"jdl train: error: fashion_mnist is not prepared in {tmp_path / 'data'}"), err
    assert "Either pass --manual-dir FOLDER holding its source files" in err
    assert "or pass --data-dir FOLDER where it is already prepared" in err
    assert "manual_dir" not in err and "data_dir" not in err
    assert cli.main([*argv, "--manual-dir", str(tmp_path / "absent")]) == 2
    assert capsys.readouterr().err == f"jdl train: error: --manual-dir {tmp_path / 'absent'} is not a folder\n"
    with pytest.raises(sources.DatasetUnavailableError, match=r"^manual_dir /.*absent is not a folder$"):
        jdl.data.load("fashion_mnist", split="train", batch_size=8, data_dir=tmp_path / "data",
                      manual_dir=tmp_path / "absent")

    def no_tensorflow(*args, **kwargs):
        raise ImportError("Preparing needs TensorFlow, which is not installed: `pip install tensorflow-cpu`.")

    monkeypatch.setattr(jdl.data, "load", no_tensorflow)
    assert cli.main(argv) == 2  # was a traceback
    assert capsys.readouterr().err == ("jdl train: error: Preparing needs TensorFlow, which is not installed: "
                                       "`pip install tensorflow-cpu`.\n")

    def broken_install(*args, **kwargs):
        raise ImportError("cannot import name 'x' from 'jdl.data'")  # not jdl's own message: the traceback helps

    monkeypatch.setattr(jdl.data, "load", broken_install)
    with pytest.raises(ImportError, match="cannot import name"):
        cli.main(argv)
    assert not (tmp_path / "new").exists()


def test_cli_train_and_compare_in_mixed_precision(tmp_path):
    """``--dtype bfloat16``: the model computes in bfloat16 (other numbers than
    float32's, as good), and the results say so."""
    accuracy, loss = {}, {}
    for dtype in ("float32", "bfloat16"):
        out = tmp_path / dtype
        assert cli.main(["train", "--dataset", "mnist_sample", "--model", "mlp", "--optimizer", "adam", "--epochs",
                         "1", "--dtype", dtype, "--out", str(out), "--no-compilation-cache"]) == 0
        record = json.loads((out / "results.json").read_text())
        assert record["dtype"] == dtype
        accuracy[dtype] = record["runs"][0]["epochs"][0]["test_accuracy"]
        loss[dtype] = record["runs"][0]["epochs"][0]["test_loss"]
    assert accuracy["bfloat16"] > 0.8 and loss["bfloat16"] != loss["float32"]
    result = jdl.compare.run("mnist_sample", "mlp", ["adam"], seeds=1, epochs=1, dtype="bfloat16", progress=False)
    assert result.info["dtype"] == "bfloat16" and result.runs[0]["epochs"][0]["test_accuracy"] > 0.8


@pytest.mark.parametrize(
    "argv, message",
    [
        (["compare", "--optimizers", "adam,adamm"], r"unknown optimizer 'adamm'.*Did you mean 'adam'"),
        (["compare", "--model", "resnet"], r"unknown model 'resnet'; expected one of cifar100_3c3d"),
        (["compare", "--learning-rates", "0.1,-1"], r"learning rates must be positive.*-1"),
        (["compare", "--learning-rates", ""], r"--learning-rates is empty; give at least one positive rate"),
        (["compare", "--learning-rates", ","], r"--learning-rates is empty"),
        (["compare", "--optimizers", "optax.apply_updates"], r"'optax.apply_updates' is not an optax optimizer taking"),
        (["train", "--dataset", "mnist_sample", "--model", "mlp", "--optimizer", "adamx"],
         r"unknown optimizer 'adamx'; valid names: gd, .*Or optax.<name>, e.g. optax.lamb."),
        (["compare", "--optimizers", " , "], r"--optimizers names none; give comma-separated names, e.g. sgd,adam"),
        (["train", "--dataset", "mnist_sample", "--model", "mlp", "--optimizer", "adam", "--batch-size", "100000"],
         r"--batch-size 100000 is larger than the training split, which holds 4000 examples: use --batch-size <= 4000"),
    ],
)
def test_cli_bad_input_gives_a_clear_error(argv, message, tmp_path, capsys):
    assert cli.main([*argv, "--out", str(tmp_path / "new"), "--no-compilation-cache"]) == 2
    assert __import__("re").search(message, capsys.readouterr().err)
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("folder_exists", [False, True])
def test_cli_interrupted_while_writing_its_results_leaves_none_behind(tmp_path, capsys, monkeypatch, folder_exists):
    out = tmp_path / "new"
    if folder_exists:
        out.mkdir()

    def interrupted(self, directory):
        (Path(directory) / "training_loss.png").write_bytes(b"half a plot")
        raise KeyboardInterrupt

    monkeypatch.setattr(jdl.compare.Comparison, "plot", interrupted)
    argv = ["compare", "--optimizers", "adam", "--seeds", "1", "--epochs", "1", "--out", str(out),
            "--no-compilation-cache"]  # fmt: skip
    assert cli.main(argv) == 130
    assert "jdl compare: interrupted" in capsys.readouterr().err
    assert (out.exists() and list(out.iterdir()) == []) if folder_exists else not out.exists()


def test_cli_says_which_options_want_numbers(tmp_path, capsys):
    for option, value, expected in (("--batch-size", "1.5", "expected a positive integer; got 1.5"),
                                    ("--learning-rate", "abc", "expected a positive finite number; got abc")):
        with pytest.raises(SystemExit):
            cli.main(["train", "--dataset", "mnist_sample", "--model", "mlp", option, value, "--out", str(tmp_path)])
        err = capsys.readouterr().err
        assert f"argument {option}: {expected}" in err and "_positive" not in err


def test_results_hold_null_for_non_finite_numpy_values_and_plots_of_diverged_runs_warn_nothing(tmp_path):
    runs = [{"optimizer": "gd", "learning_rate": 1e30, "seed": 0, "batch_size": 128, "diverged": {"epoch": 1,
             "step": 0}, "epochs": []},
            {"optimizer": "adam", "learning_rate": 1e-3, "seed": 0, "batch_size": 128, "diverged": None,
             "epochs": [{"epoch": 1, "train_loss": np.float64("nan"), "test_loss": np.float32("inf"),
                         "test_accuracy": np.float64(0.5), "time_s": 1.0}]}]  # fmt: skip
    comparison = jdl.compare.Comparison("d", "m", runs, target_accuracy=0.9)
    text = comparison.save(tmp_path).read_text()
    epoch = json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} is not JSON"))["runs"][1]["epochs"][0]
    assert epoch["train_loss"] is None and epoch["test_loss"] is None and epoch["test_accuracy"] == 0.5
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # not the plots' warnings: matplotlib before 3.10.7 calls pyparsing 3.3's deprecated names
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=r"'\w+' (argument is )?deprecated")
        jdl.compare.Comparison("d", "m", runs[:1], target_accuracy=0.9).plot(tmp_path / "diverged")


def test_cli_refuses_a_learning_rate_that_is_not_finite(tmp_path, capsys):
    with pytest.raises(SystemExit) as exited:
        cli.main(["train", "--dataset", "mnist_sample", "--model", "mlp", "--learning-rate", "inf",
                  "--out", str(tmp_path / "new")])  # fmt: skip
    assert exited.value.code == 2
    assert "--learning-rate: expected a positive finite number; got inf" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()


def test_cli_refuses_an_output_folder_with_earlier_results(tmp_path, capsys):
    (tmp_path / "results.json").write_text("{}")
    assert cli.main(["compare", "--epochs", "1", "--out", str(tmp_path), "--no-compilation-cache"]) == 2
    assert "already holds earlier results" in capsys.readouterr().err
    assert (tmp_path / "results.json").read_text() == "{}"


def test_cli_refuses_an_output_folder_another_run_is_using(tmp_path, capsys, monkeypatch):
    """A run claims its output folder before training: another run given the
    same folder meanwhile refuses it instead of overwriting its results when
    both finish (found by review)."""
    monkeypatch.setattr(jdl.train, "fit", lambda *a, **k: pytest.fail("trained in a folder in use"))
    (tmp_path / cli.CLAIM).write_text("")
    argv = ["train", "--dataset", "mnist_sample", "--model", "mlp", "--optimizer", "adam", "--out", str(tmp_path),
            "--no-compilation-cache"]  # fmt: skip
    assert cli.main(argv) == 2
    assert "is in use by another jdl run" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == [cli.CLAIM]


def test_cli_refuses_an_optimizer_it_cannot_step_and_an_empty_out_and_leaves_no_empty_runs_folder(
        tmp_path, capsys, monkeypatch):  # fmt: skip
    """optax.lbfgs's update wants the loss too: a one-line error (it was a
    traceback and exit 1, the diverged code).  ``--out ""`` is an error, not
    the default folder.  A failed run leaves no empty ``jdl-runs/`` behind."""
    monkeypatch.chdir(tmp_path)
    argv = ["train", "--dataset", "mnist_sample", "--model", "mlp", "--no-compilation-cache"]
    assert cli.main([*argv, "--optimizer", "optax.lbfgs"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("jdl train: error: 'optax.lbfgs' cannot be trained by jdl: its update needs more than "
                          "the gradients") and err.count("\n") == 1, err
    assert cli.main(["compare", "--optimizers", "adam,optax.lbfgs", "--no-compilation-cache"]) == 2
    assert "'optax.lbfgs' cannot be trained by jdl" in capsys.readouterr().err
    assert cli.main([*argv, "--optimizer", "adam", "--out", ""]) == 2
    assert capsys.readouterr().err == "jdl train: error: --out must name a folder; got an empty string\n"
    assert list(tmp_path.iterdir()) == []

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(jdl.train, "fit", interrupted)
    assert cli.main([*argv, "--optimizer", "adam"]) == 130
    assert capsys.readouterr().err == "\njdl train: interrupted; no results were written\n"
    assert list(tmp_path.iterdir()) == []


def test_cli_interrupted_keeps_folders_it_made_in_an_existing_out_and_says_it_was_interrupted(
        tmp_path, capsys, monkeypatch):  # fmt: skip
    """Ctrl-C after the run made a folder (a --data-dir) in an --out that
    existed: the files it wrote are removed, the folder is left, and the
    interrupt, not a cleanup error, is what the user sees."""
    out = tmp_path / "out"
    out.mkdir()

    def interrupted(*args, **kwargs):
        (out / "data").mkdir()
        (out / "data" / "prepared.bin").write_bytes(b"kept")
        (out / "results.json").write_text("{half")
        raise KeyboardInterrupt

    monkeypatch.setattr(jdl.train, "fit", interrupted)
    argv = ["train", "--dataset", "mnist_sample", "--model", "mlp", "--optimizer", "adam", "--out", str(out),
            "--no-compilation-cache"]  # fmt: skip
    assert cli.main(argv) == 130
    assert "jdl train: interrupted" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["data"]
    assert (out / "data" / "prepared.bin").read_bytes() == b"kept"


def test_cli_runs_started_in_the_same_second_get_their_own_folders(tmp_path, monkeypatch):
    """The default folder is named by the second: a second run in the same
    second takes the next free name, and each run's claim is gone when it
    has written its results."""
    import datetime

    class Frozen(datetime.datetime):
        @classmethod
        def now(cls, tz=None):
            return cls(2026, 1, 2, 3, 4, 5)

    monkeypatch.setattr(cli._dt, "datetime", Frozen)
    monkeypatch.chdir(tmp_path)
    taken = tmp_path / "jdl-runs" / "train-20260102-030405"
    taken.mkdir(parents=True)
    (taken / "results.json").write_text("{}")
    argv = ["train", "--dataset", "mnist_sample", "--model", "mlp", "--optimizer", "adam", "--epochs", "1",
            "--no-compilation-cache"]  # fmt: skip
    assert cli.main(argv) == 0
    assert (taken / "results.json").read_text() == "{}"
    second = tmp_path / "jdl-runs" / "train-20260102-030405-2"
    assert sorted(p.name for p in second.iterdir()) == ["results.json"]


@pytest.mark.parametrize("option", ["--out", "--data-dir"])
def test_cli_refuses_a_folder_it_cannot_write_before_training(option, tmp_path, capsys, monkeypatch):
    """An --out or --data-dir under a file: a one-line error (exit 2), no
    traceback, before anything trains; the output folder is not made."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setattr(jdl.train, "fit", lambda *a, **k: pytest.fail("trained before the error"))
    out = blocker / "out" if option == "--out" else tmp_path / "new"
    argv = ["train", "--dataset", "mnist", "--model", "mlp", "--optimizer", "adam", "--out", str(out),
            "--no-compilation-cache"]  # fmt: skip
    if option == "--data-dir":
        argv += ["--data-dir", str(blocker / "data")]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("jdl train: error: ") and "Traceback" not in err
    assert str(blocker) in err
    assert not (tmp_path / "new").exists()


def test_cli_reports_a_diverged_training_in_one_line(tmp_path, capsys):
    argv = ["train", "--dataset", "mnist_sample", "--model", "mlp", "--optimizer", "gd", "--learning-rate", "1e30",
            "--out", str(tmp_path / "new"), "--no-compilation-cache"]  # fmt: skip
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert re.search(r"^jdl train: error: the loss became non-finite at epoch 1, step \d+", err, re.M)
    assert "Traceback" not in err


def test_cli_keeps_compiled_programs_and_a_second_run_gives_the_same_results(tmp_path):
    """Each run in its own process (the cache is a process-wide JAX option)."""
    import subprocess
    import sys

    cache = tmp_path / "cache"
    outs = []
    for name in ("first", "second"):
        outs.append(tmp_path / name)
        argv = ["train", "--dataset", "mnist_sample", "--model", "mlp", "--optimizer", "adam", "--epochs", "1",
                "--out", str(outs[-1]), "--compilation-cache", str(cache)]  # fmt: skip
        done = subprocess.run([sys.executable, "-m", "jdl", *argv], capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
        if name == "first":
            kept = sorted(p.name for p in cache.iterdir())
            assert any(n.startswith("jit_epoch_fn") for n in kept), kept  # fit's epoch program among them
    first, second = (json.loads((out / "results.json").read_text())["runs"][0]["epochs"] for out in outs)
    assert [e["test_accuracy"] for e in first] == [e["test_accuracy"] for e in second]
    assert [e["train_loss"] for e in first] == [e["train_loss"] for e in second]


def test_cli_refuses_a_compilation_cache_it_cannot_write(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    argv = ["train", "--dataset", "mnist_sample", "--model", "mlp", "--optimizer", "adam", "--epochs", "1",
            "--out", str(tmp_path / "new"), "--compilation-cache", str(blocker / "cache")]  # fmt: skip
    assert cli.main(argv) == 2
    assert "cannot write to" in capsys.readouterr().err and not (tmp_path / "new").exists()


@pytest.mark.parametrize("kwargs, message", [
    ({"optimizers": "adam"}, r"a list of names, e.g. \['adam'\]"),
    ({"target_accuracy": 90}, r"target_accuracy is a fraction in \(0, 1\]"),
    ({"seeds": [0, -1]}, r"seeds >= 0"),
    ({"learning_rates": {"adam": [1e-3], "sgd": [0.1]}}, r"given for \['sgd'\], which are not among"),
    ({"learning_rates": [True]}, r"positive finite numbers"),
    ({"seeds": [0.7]}, r"non-empty list of distinct int seeds >= 0; got \[0.7\]"),
    ({"seeds": [1, 1]}, r"distinct int seeds >= 0; got \[1, 1\]"),
    ({"validation_fraction": "0.1"}, r"validation_fraction must lie in \(0, 1\); got '0.1'"),
    ({"optimizers": ["optax.GradientTransformation"]}, r"is not an optax optimizer"),
    ({"optimizers": ["adam", "sgd"], "learning_rates": {"adam": [1e-3]}},
     r"a dict of learning-rate grids needs one for every optimizer compared; none for \['sgd'\]"),
    ({"learning_rates": {"adam": [1e-3], "Adam": [1e-2]}}, r"learning rates are given twice for 'adam' \(as 'Adam'"),
    ({"optimizers": ["Adam", "sgd", "adam"]}, r"optimizers name 'adam' twice \(as 'Adam' and 'adam'\); name each once"),
])
def test_run_refuses_bad_arguments_before_loading_data(kwargs, message, monkeypatch):
    monkeypatch.setattr(jdl.compare.jdl_data, "load", lambda *a, **k: pytest.fail("loaded data before the error"))
    with pytest.raises(ValueError, match=message):
        jdl.compare.run("mnist_sample", "mlp", **{"optimizers": ["adam"], **kwargs})


def test_optimizers_are_named_in_any_case_and_an_optimizer_object_is_told_to_use_a_name(monkeypatch):
    assert jdl.compare.preset("Adam") == jdl.compare.preset("adam")
    assert jdl.compare.preset("AdamW").name == "adamw" and jdl.compare.preset("MiniBatch").batch_size is None
    optax = pytest.importorskip("optax")
    monkeypatch.setattr(jdl.compare.jdl_data, "load", lambda *a, **k: pytest.fail("loaded data before the error"))
    with pytest.raises(TypeError, match=r"optimizers are named, e.g. 'adam' or 'optax.adam' .*got a "
                                        r"GradientTransformationExtraArgs"):
        jdl.compare.run("mnist_sample", "mlp", [optax.adam(1e-3)])
    monkeypatch.undo()
    result = jdl.compare.run("mnist_sample", "mlp", ["Adam", "SGD"],
                             learning_rates={"ADAM": [1e-3], "Sgd": [0.02]}, seeds=1, epochs=1, progress=False)
    assert [r["optimizer"] for r in result.runs] == ["adam", "sgd"]
    assert [r["learning_rate"] for r in result.runs] == [1e-3, 0.02]
    for seeds in (np.arange(1, 3), jnp.arange(1, 3), (s for s in (1, 2))):
        seeded = jdl.compare.run("mnist_sample", "mlp", ["adam"], seeds=seeds, epochs=1, progress=False)
        assert [r["seed"] for r in seeded.runs] == [1, 2]


def test_results_record_the_learning_rates_as_given():
    """NumPy numbers are rates too; the JSON holds the values given (and the
    presets'), not the float32 copies the device trains with."""
    result = jdl.compare.run("mnist_sample", "mlp", ["adam", "momentum"], seeds=np.int64(1), epochs=np.int64(1),
                             learning_rates={"adam": [np.float64(0.003)], "momentum": [0.01, 0.1]}, progress=False)
    rates = {r["optimizer"]: r["learning_rate"] for r in result.runs}
    assert rates["adam"] == 0.003 and rates["momentum"] in (0.01, 0.1)
    assert sorted(e["learning_rate"] for e in result.lr_search) == [0.01, 0.1]
    default = jdl.compare.run("mnist_sample", "mlp", ["adam"], seeds=1, epochs=1, progress=False)
    assert default.runs[0]["learning_rate"] == jdl.compare.preset("adam").learning_rate


def test_curves_average_the_runs_that_reached_each_epoch():
    """A seed that diverged after one epoch leaves the other seed's second epoch on the curve."""
    from jdl.compare.report import _band

    runs = [{"epochs": [{"train_loss": 2.0}, {"train_loss": 1.0}]}, {"epochs": [{"train_loss": 4.0}]}]
    epochs, mean, std = _band(runs, "train_loss")
    np.testing.assert_array_equal(epochs, [1, 2])
    np.testing.assert_array_equal(mean, [3.0, 1.0])
    np.testing.assert_allclose(std, [np.std([2.0, 4.0], ddof=1), 0.0])


def _two_seed_comparison():
    runs = [{"optimizer": "adam", "learning_rate": 1e-3, "seed": s, "batch_size": 128, "diverged": None,
             "epochs": [{"epoch": 1, "train_loss": 1.0, "test_loss": 1.0, "test_accuracy": acc, "time_s": 1.0}]}
            for s, acc in enumerate([0.80, 0.90])]  # fmt: skip
    return jdl.compare.Comparison("d", "m", runs, target_accuracy=0.85)


def test_table_reports_mean_and_std_over_seeds():
    table = _two_seed_comparison().table()
    assert f"{np.mean([0.8, 0.9]):.4f} ± {np.std([0.8, 0.9], ddof=1):.4f}" in table
    assert "mean ± sample std (ddof=1) over seeds" in table
    assert "1/2 runs" in table


def test_table_names_the_target_it_counts_and_marks_a_grid_that_all_diverged():
    """The columns' header gives the target as counted (90.5%, not a rounded
    90%); an optimizer whose every searched rate diverged shows its rerun rate
    as a fallback (†), not as the grid's best (*)."""
    runs = [dict(r, optimizer=name) for name in ("adam", "minibatch") for r in _two_seed_comparison().runs]
    search = [{"optimizer": "adam", "learning_rate": 1e-3, "validation_accuracy": 0.9, "validation_loss": 0.3,
               "diverged": None},
              {"optimizer": "minibatch", "learning_rate": 1e-3, "validation_accuracy": math.nan,
               "validation_loss": math.nan, "diverged": {"epoch": 1, "step": 2}}]  # fmt: skip
    table = jdl.compare.Comparison("d", "m", runs, target_accuracy=0.905, lr_search=search).table()
    assert "epochs to 90.5%" in table and "s to 90.5%" in table
    rows = {line.split()[0]: line.split()[1] for line in table.splitlines()[2:] if line.startswith(("adam", "mini"))}
    assert rows == {"adam": "0.001*", "minibatch": "0.001†"}
    assert "† every learning rate of the grid diverged on the validation split: rerun at the smallest." in table


@pytest.mark.parametrize("rates", [0.01, "0.1,0.01", {"adam": 0.01}])
def test_learning_rates_that_are_not_lists_are_refused_saying_what_was_expected(rates):
    with pytest.raises(ValueError, match=r"learning_rates is a list of rates, or a dict of such lists by optimizer"):
        jdl.compare.run("mnist_sample", "mlp", ["adam"], learning_rates=rates, progress=False)


def test_a_single_run_shows_no_spread():
    comparison = _two_seed_comparison()
    one = jdl.compare.Comparison("d", "m", comparison.runs[1:], target_accuracy=0.85)
    row = next(line for line in one.table().splitlines() if line.startswith("adam"))
    assert "0.9000 (1 run)" in row and "±" not in row
    lost = dict(comparison.runs[0], epochs=[], diverged={"epoch": 1, "step": 3})  # diverged in its first epoch
    row = next(line for line in jdl.compare.Comparison("d", "m", [lost], target_accuracy=0.85).table().splitlines()
               if line.startswith("adam"))  # fmt: skip
    assert row.split()[3:] == ["-", "-", "-", "-", "1/1", "diverged"]  # no accuracy, time or epochs to give


def test_a_comparison_saves_and_plots_into_a_folder_it_makes(tmp_path):
    comparison = _two_seed_comparison()
    saved = comparison.save(tmp_path / "new" / "results")
    assert json.loads(saved.read_text())["runs"][1]["epochs"][0]["test_accuracy"] == 0.9
    plots = comparison.plot(tmp_path / "other" / "plots")
    assert sorted(p.name for p in plots) == ["test_accuracy.png", "training_loss.png"]
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in plots)


@pytest.mark.parametrize("microbatch", [32, 40])
@pytest.mark.parametrize("strategy", ["unroll", "vmap"])
def test_full_batch_steps_of_a_cnn_match_optax_on_the_whole_batch(strategy, microbatch, monkeypatch):
    """gd's full-batch step, gradient summed over chunks: as a host loop of
    compiled chunks ('unroll', the CPU's way for convolutions) and as a scan
    inside the program ('vmap'), against optax.sgd on the gradient of the
    whole batch at once; 3 chunks of 32, or 2 of 40 and a last one of 16
    (weighted by its size: averaging the three chunks' means alike missed
    by up to 120%)."""
    import jax
    import optax

    from jdl import nn
    from jdl.compare import engine
    from jdl.compare.engine import Group, train_cluster

    chunked, host_loop, in_program = [], engine.chunked_steps, sys.modules["jdl.train.step"]._accumulated
    monkeypatch.setattr(engine, "chunked_steps", lambda *a: chunked.append(a[3:]) or host_loop(*a))
    monkeypatch.setattr(sys.modules["jdl.train.step"], "_accumulated",
                        lambda add, size: chunked.append(size) or in_program(add, size))  # fmt: skip

    images, labels = jdl.data.mnist_sample.read_split("train")
    images = (images[:96].reshape(-1, 28, 28, 1) / 255.0).astype(np.float32)
    labels = labels[:96].astype(np.int32)
    model = nn.serial(nn.Conv(4, (3, 3)), nn.relu, nn.MaxPool((2, 2)), nn.Flatten(), nn.Dense(10))
    learning_rates, seeds = np.asarray([0.5, 0.1], np.float32), np.asarray([0, 1])
    group = Group("gd", optim.gd, learning_rates, seeds)
    out = train_cluster(model, losses.cross_entropy, [group], batch_size=96, images=images, labels=labels,
                        permutation=lambda seed, epoch: np.random.default_rng([seed, epoch]).permutation(96),
                        epochs=2, eval_images=images, eval_labels=labels, use_scan=False, microbatch=microbatch,
                        strategy=strategy)

    # the gradient was summed in chunks: (chunks, strategy, the last one's fraction), or the chunk's size
    assert chunked[0] == ((96 // microbatch, "unroll", 96 % microbatch / microbatch) if strategy == "unroll"
                          else microbatch)  # fmt: skip

    def loss(params, x, y):
        return optax.softmax_cross_entropy_with_integer_labels(model.apply(params, {}, x)[0], y).mean()

    for run, lr in enumerate(learning_rates):
        # fit(seed=seed)'s initialization
        params, _ = model.init(jax.random.split(jax.random.key(int(seeds[run])))[1], (1, *images.shape[1:]))
        tx = optax.sgd(float(lr))
        opt_state = tx.init(params)
        for _ in range(2):
            updates, opt_state = tx.update(jax.grad(loss)(params, images, labels), opt_state)
            params = optax.apply_updates(params, updates)
        ours = jax.tree_util.tree_map(lambda a, run=run: a[run], out["carries"][0].params)
        for a, b in zip(jax.tree_util.tree_leaves(ours), jax.tree_util.tree_leaves(params), strict=True):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("microbatch", [32, 40])
def test_full_batch_chunks_thread_batch_norm_state_the_same_in_a_host_loop_as_in_a_scan(microbatch):
    """With model state (BatchNorm statistics) threaded through the chunks, the
    CPU's host loop of chunk calls ends where the in-program scan does; also
    through a last, smaller chunk (96 = 2 x 40 + 16)."""
    import jax

    from jdl import nn
    from jdl.compare.engine import Group, train_cluster

    images, labels = jdl.data.mnist_sample.read_split("train")
    images = (images[:96].reshape(-1, 28, 28, 1) / 255.0).astype(np.float32)
    labels = labels[:96].astype(np.int32)
    model = nn.serial(nn.Conv(4, (3, 3)), nn.BatchNorm(), nn.relu, nn.Flatten(), nn.Dense(10))
    group = Group("gd", optim.gd, np.asarray([0.1, 0.1], np.float32), np.asarray([0, 1]))
    ends = []
    for strategy in ("unroll", "vmap"):
        out = train_cluster(model, losses.cross_entropy, [group], batch_size=96, images=images, labels=labels,
                            permutation=lambda seed, epoch: np.random.default_rng([seed, epoch]).permutation(96),
                            epochs=2, eval_images=images, eval_labels=labels, use_scan=False, microbatch=microbatch,
                            strategy=strategy)
        ends.append(out["carries"][0])
    assert jax.tree_util.tree_leaves(ends[0].state)  # the statistics are there and were threaded
    for a, b in zip(jax.tree_util.tree_leaves(ends[0]), jax.tree_util.tree_leaves(ends[1]), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


def test_vmapped_runs_trace_convolutions_by_the_backend_table(monkeypatch):
    """``vmap_runs`` traces ``Conv(method='auto')`` as ``VMAPPED_CONV_METHODS``
    says for the backend (on a GPU, matrix products instead of grouped cuDNN
    convolutions); with no entry, as the layer's own rule."""
    from jdl import nn
    from jdl.compare import engine

    layer = nn.Conv(4, 3)
    params = jax.vmap(lambda k: layer.init(k, (1, 6, 6, 2))[0])(jax.random.split(jax.random.key(0), 3))
    x = jnp.ones((5, 6, 6, 2))

    def primitives():  # a new function each time: jax caches traces by function
        run = engine.vmap_runs(lambda p: layer.apply(p, {}, x)[0])
        return {str(e.primitive) for e in jax.make_jaxpr(run)(params).jaxpr.eqns}

    assert "conv_general_dilated" not in primitives() and "dot_general" in primitives()  # the CPU's own rule
    monkeypatch.setitem(engine.VMAPPED_CONV_METHODS, jax.default_backend(), "lax")
    assert "conv_general_dilated" in primitives()
    by_lax = engine.vmap_runs(lambda p: layer.apply(p, {}, x)[0])(params)
    by_matmul = jax.vmap(lambda p: nn.Conv(4, 3, method="matmul").apply(p, {}, x)[0])(params)
    np.testing.assert_allclose(by_lax, by_matmul, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("strategy, seeds", [("unroll", [0, 1]), ("vmap", [0, 1]), ("vmap", [1, 1])])
def test_runs_of_a_convolutional_model_train_as_fit_does_alone(strategy, seeds):
    """The CPU's way for convolutional models ('unroll' with the scan: the runs
    take turns in one program, each its whole epoch), vmapped runs, and
    vmapped runs of one seed (a learning-rate grid: one batch for all) against
    ``fit`` of each run."""
    from jdl import nn
    from jdl.compare.engine import Group, train_cluster

    kwargs = dict(split="train[:512]", batch_size=64, shuffle=True, drop_remainder=True)
    train_data = jdl.data.load("mnist_sample", seed=0, **kwargs)
    test_data = jdl.data.load("mnist_sample", split="test", batch_size=500)
    images, labels = train_data.arrays()["image"], train_data.arrays()["label"]
    model = nn.serial(nn.Conv(4, (3, 3)), nn.relu, nn.AvgPool((2, 2)), nn.Flatten(), nn.Dense(10))
    learning_rates, seeds = np.asarray([1e-3, 3e-3], np.float32), np.asarray(seeds)
    test = test_data.arrays()
    out = train_cluster(model, losses.cross_entropy, [Group("adam", optim.adam, learning_rates, seeds)], batch_size=64,
                        images=images, labels=labels, epochs=2, eval_images=test["image"], eval_labels=test["label"],
                        permutation=lambda seed, epoch: jdl.data.load("mnist_sample", seed=seed, **kwargs)
                        .permutation(epoch), use_scan=True, strategy=strategy)  # fmt: skip
    for run, (lr, seed) in enumerate(zip(learning_rates, seeds, strict=True)):
        loader = jdl.data.load("mnist_sample", seed=int(seed), **kwargs)
        alone = train.fit(model, losses.cross_entropy, optim.adam(float(lr)), loader, epochs=2, eval_data=test_data,
                          seed=int(seed), mode="scan", progress=False)  # fmt: skip
        for ours, theirs in zip(out["history"], alone.history, strict=True):
            assert ours[0]["train_loss"][run] == pytest.approx(theirs["train_loss"], rel=2e-4)
            assert ours[0]["test_loss"][run] == pytest.approx(theirs["test_loss"], rel=2e-4)
        ours = jax.tree_util.tree_map(lambda a, run=run: a[run], out["carries"][0].params)
        for a, b in zip(jax.tree_util.tree_leaves(ours), jax.tree_util.tree_leaves(alone.params), strict=True):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
    assert list(out["first_bad"][0]) == [-1, -1]


@pytest.mark.parametrize("use_scan", [True, False])
@pytest.mark.parametrize("seeds, gathered", [([2, 2, 2], "16x8x8x1"), ([2, 3, 2], "3x16x8x8x1")])
def test_vmapped_runs_of_one_seed_gather_one_batch_for_all(monkeypatch, seeds, gathered, use_scan):
    """A vmapped group whose runs share a seed gathers each step's batch once, not once per run."""
    from jdl.compare import engine

    lowered = []

    class Recording:
        def __init__(self, fn):
            self.fn = fn

        def lower(self, *args):
            lowered.append(self.fn.lower(*args))
            return lowered[-1]

    real = engine.cluster_epoch
    monkeypatch.setattr(engine, "cluster_epoch", lambda *a, **k: Recording(real(*a, **k)))
    model = models.mlp(hidden=(4,))
    images, labels = np.zeros((64, 8, 8, 1), np.float32), np.zeros((64,), np.int32)
    group = engine.Group("adam", optim.adam, np.full(3, 1e-3, np.float32), np.asarray(seeds))
    out = engine.train_cluster(model, losses.cross_entropy, [group], batch_size=16, images=images, labels=labels,
                               epochs=1, eval_images=images, eval_labels=labels, use_scan=use_scan, strategy="vmap",
                               permutation=lambda seed, epoch: np.random.default_rng(seed).permutation(64))
    gathers = re.findall(r"stablehlo.gather.*-> tensor<([0-9x]+x8x8x1)xf32>", lowered[0].as_text())
    assert gathers == [gathered]
    assert out["history"][0][0]["test_accuracy"].shape == (3,)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the CPU's rule (accelerators vmap every model)")
def test_compare_unrolls_convolutional_models_on_the_cpu_and_vmaps_the_rest():
    from jdl.compare.engine import choose_engine

    images = np.zeros((64, 28, 28, 1), np.float32)
    assert choose_engine(models.cnn(), images) == (True, "unroll")  # matrix-product convolutions: still conv layers
    assert choose_engine(models.cnn(conv_method="lax"), images) == (False, "unroll")  # XLA convolutions: no scan
    assert choose_engine(models.mlp(), images) == (True, "vmap")


def test_the_comparisons_progress_bar_is_closed_before_an_interrupt_reaches_the_caller(monkeypatch):
    from tqdm import tqdm

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(jdl.compare, "_train", interrupted)
    before = len(tqdm._instances)
    with pytest.raises(KeyboardInterrupt) as caught:
        jdl.compare.run("mnist_sample", "mlp", ["adam"], seeds=1, epochs=1, progress=True)
    assert len(tqdm._instances) == before and caught.value is not None
