"""The ``jdl`` command: ``jdl train`` and ``jdl compare`` (see ``jdl --help``)."""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import math
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from jdl._checks import registry_key


def _option_type(convert: Callable[[str], Any], is_valid: Callable[[Any], bool], expected: str) -> Callable:
    """An argparse ``type``: ``convert(text)`` if ``is_valid`` holds for it,
    else an error saying what was ``expected`` and what came."""

    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            value = None
        if value is None or not is_valid(value):
            raise argparse.ArgumentTypeError(f"expected {expected}; got {text}")
        return value

    return parse


_positive_int = _option_type(int, lambda v: v >= 1, "a positive integer")
_positive_float = _option_type(float, lambda v: v > 0 and math.isfinite(v), "a positive finite number")
_fraction = _option_type(float, lambda v: 0.0 < v <= 1.0, "a fraction in (0, 1], e.g. 0.9 for 90%")


class _DefaultsFormatter(argparse.HelpFormatter):
    """Help that gives each option's default where it has one (not None or False)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        unset = action.default is None or action.default is False or action.default is argparse.SUPPRESS
        if action.option_strings and not unset and "default" not in text:
            text += " (default: %(default)s)"
        return text


def _data_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", help="tfds data folder (prepared datasets and jdl's caches)")
    parser.add_argument("--manual-dir", help="folder holding a dataset's source files (e.g. Debian's fashion-mnist)")
    parser.add_argument("--out", help="output folder (default: a fresh folder under jdl-runs/); must be new or empty")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                        help="the model's computation dtype; bfloat16: mixed precision (float32 parameters), "
                             "faster on accelerators with bfloat16 units")  # fmt: skip
    parser.add_argument("--compilation-cache", metavar="DIR",
                        help="keep compiled programs here for later runs (default: $JDL_CACHE_DIR, ~/.cache/jdl/xla)")
    parser.add_argument("--no-compilation-cache", action="store_true", help="compile everything afresh")


def build_parser() -> argparse.ArgumentParser:
    from jdl import __version__

    parser = argparse.ArgumentParser(prog="jdl", description="jdl: train models and compare optimizers on JAX.")
    parser.add_argument("--version", action="version", version=f"jdl {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    formatter = _DefaultsFormatter

    train = commands.add_parser("train", help="train one model with one optimizer and write results.json",
                                formatter_class=formatter)  # fmt: skip
    train.add_argument("--dataset", required=True, help="tfds name, e.g. mnist, fashion_mnist, cifar10, mnist_sample")
    train.add_argument("--model", required=True,
                       help="mlp, cnn, mnist_2c2d, fmnist_2c2d, cifar10_3c3d, cifar100_3c3d")  # fmt: skip
    train.add_argument("--optimizer", required=True,
                       help="gd, sgd, minibatch, momentum, nesterov, adagrad, rmsprop, adadelta, adam, adamw, nadam, "
                            "amsgrad, adamax, lion (the "
                            "update rule, fed batches of --batch-size: gd, sgd and minibatch are the same rule here, "
                            "where jdl compare's presets also fix their batch: the whole set, 1, --batch-size), or "
                            "optax.<name>, e.g. optax.lamb")  # fmt: skip
    train.add_argument("--learning-rate", type=_positive_float,
                       help="default: the optimizer's own (jdl.optim.DEFAULT_LEARNING_RATES; 1e-3 for optax.<name>)")
    train.add_argument("--batch-size", type=_positive_int, default=32,
                       help="as Keras's fit (the cnn with Adam on Fashion-MNIST, 2 epochs, seeds 0-3: "
                            "89.2-90.5%% test accuracy at 32, 87.7-89.4%% at 128)")  # fmt: skip
    train.add_argument("--epochs", type=_positive_int, default=1, help="passes over the training set")
    train.add_argument("--seed", type=int, default=0, help="seed of the initialization, the order and any dropout")
    _data_arguments(train)

    compare = commands.add_parser("compare", help="train one model with several optimizers at once and compare them",
                                  formatter_class=formatter)  # fmt: skip
    compare.add_argument("--dataset", default="mnist_sample",
                         help="tfds name, e.g. mnist, fashion_mnist, cifar10, or mnist_sample (ships with jdl)")
    compare.add_argument("--model", default="mlp",
                         help="mlp, cnn, mnist_2c2d, fmnist_2c2d, cifar10_3c3d, cifar100_3c3d")  # fmt: skip
    compare.add_argument("--optimizers", default="gd,sgd,minibatch,momentum,adagrad,rmsprop,adadelta,adam",
                         help="comma-separated presets (gd: the whole training set a step, sgd: one example, the "
                              "others --batch-size), jdl.optim names (adamw, nesterov, nadam, amsgrad, adamax, "
                              "lion) or optax.<name>")  # fmt: skip
    compare.add_argument("--seeds", type=_positive_int, default=2, help="number of seeds per optimizer")
    compare.add_argument("--epochs", type=_positive_int, default=10, help="passes over the training set")
    compare.add_argument("--batch-size", type=_positive_int, default=128,
                         help="the batch of every optimizer but gd and sgd")
    compare.add_argument("--learning-rates",
                         help="comma-separated grid searched per optimizer on a validation split, then the best "
                              "rerun with every seed (DeepOBS protocol); default: each preset's own rate")  # fmt: skip
    compare.add_argument("--target-accuracy", type=_fraction, default=0.9,
                         help="test accuracy whose epochs and seconds to reach the table reports")
    _data_arguments(compare)
    return parser


def _model_dtype(args: argparse.Namespace) -> str | None:
    """``--dtype`` as the models' ``dtype`` argument (None: float32, the layers' own)."""
    return None if args.dtype == "float32" else args.dtype


# Held in an output folder while a run uses it: another run refuses the
# folder (two runs would otherwise both pass the check for earlier results,
# train, and the last to finish would overwrite the other's results).
CLAIM = ".jdl-run-in-progress"


def _claim(out: Path) -> list[Path]:
    """Claim ``out`` for this run: a ValueError if it holds earlier results or
    cannot be written, FileExistsError if another run claimed it first; the
    folders made here, outermost first (``out`` last if it was made)."""
    from jdl.compare import check_out_dir

    in_use = f"output folder {out} is in use by another jdl run (if none is, remove {out / CLAIM})"
    if out.is_dir() and (out / CLAIM).exists():
        raise FileExistsError(in_use)
    check_out_dir(out)
    made = []
    try:
        for folder in [*reversed(out.parents), out]:
            if not folder.exists():
                folder.mkdir()
                made.append(folder)
        os.close(os.open(out / CLAIM, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        raise FileExistsError(in_use) from None
    except OSError as error:
        for folder in reversed(made):
            folder.rmdir()
        raise ValueError(f"cannot write the results to the output folder {out}: {error}") from None
    return made


@contextlib.contextmanager
def _output_folder(out: str | None, kind: str) -> Iterator[Path]:
    """The run's output folder, claimed (``CLAIM``) from before any training
    until its results are written, so that no other run writes there
    meanwhile; ``out`` or, when None, a fresh ``jdl-runs/{kind}-<time>``
    (with a suffix if another run took that name the same second).  When the
    run fails or is interrupted, what it wrote there is removed again (and
    the folder, if it was made here)."""
    if out is not None and not str(out).strip():
        raise ValueError("--out must name a folder; got an empty string")
    stamp = Path("jdl-runs") / _dt.datetime.now().strftime(f"{kind}-%Y%m%d-%H%M%S")
    for attempt in range(1000):
        path = Path(out) if out else (stamp if attempt == 0 else Path(f"{stamp}-{attempt + 1}"))
        try:
            made = _claim(path)
            break
        except (FileExistsError, ValueError):
            if out or not path.exists():  # the folder asked for, or a failure that is not a name taken
                raise  # main reports either as a one-line error
    else:
        raise ValueError(f"no free output folder next to {stamp}")
    before = set(path.iterdir())
    try:
        yield path
    except BaseException:  # an error or Ctrl-C: no half-written results left behind
        _remove_written(path, made, before)
        raise
    finally:
        (path / CLAIM).unlink(missing_ok=True)


def run_train(args: argparse.Namespace) -> int:
    with _output_folder(args.out, "train") as out:
        return _train_into(args, out)


def _train_into(args: argparse.Namespace, out: Path) -> int:
    """``jdl train`` with its results written into ``out`` (claimed for it)."""
    import jdl.data
    from jdl import losses, models, optim, train

    if args.optimizer.startswith("optax."):  # as jdl compare takes it
        from jdl.compare.presets import preset

        found = preset(args.optimizer)
        name, make, default_rate = found.name, found.make, found.learning_rate
    else:
        name = registry_key(args.optimizer)  # as optim.get reads it
        make = lambda rate: optim.get(args.optimizer, learning_rate=rate)  # noqa: E731
        default_rate = optim.DEFAULT_LEARNING_RATES.get(name)
    learning_rate = default_rate if args.learning_rate is None else args.learning_rate
    try:
        optimizer = make(learning_rate)
    except ValueError as error:
        if not str(error).startswith("unknown optimizer"):
            raise
        raise ValueError(f"{error} Or optax.<name>, e.g. optax.lamb.") from None
    models.get(args.model)  # unknown names fail before any data is read
    common = {"batch_size": args.batch_size, "data_dir": args.data_dir, "manual_dir": args.manual_dir}
    train_data = jdl.data.load(args.dataset, split="train", shuffle=True, seed=args.seed, **common)
    test_data = jdl.data.load(args.dataset, split="test", shuffle=False, **common)
    model = models.get(args.model, num_classes=train_data.num_classes, dtype=_model_dtype(args))
    result = train.fit(model, losses.cross_entropy, optimizer, train_data, epochs=args.epochs, eval_data=test_data,
                       seed=args.seed)  # fmt: skip
    record = {"dataset": args.dataset, "model": args.model, "dtype": args.dtype, "runs": [{
        "optimizer": name, "learning_rate": learning_rate, "seed": args.seed,
        "batch_size": args.batch_size,
        "epochs": [{k: e[k] for k in ("epoch", "train_loss", "test_loss", "test_accuracy", "time_s", "compile_s")}
                   for e in result.history]}]}  # fmt: skip
    from jdl.compare.report import jsonable

    (out / "results.json").write_text(json.dumps(jsonable(record), indent=1, allow_nan=False) + "\n")
    last = result.history[-1]
    epochs = f"{last['epoch']} epoch" + ("s" if last["epoch"] != 1 else "")
    print(f"{args.model} on {args.dataset} with {args.optimizer}: test accuracy {last['test_accuracy']:.4f} "
          f"after {epochs}; results in {out / 'results.json'}")  # fmt: skip
    return 0


def run_compare(args: argparse.Namespace) -> int:
    with _output_folder(args.out, "compare") as out:
        return _compare_into(args, out)


def _compare_into(args: argparse.Namespace, out: Path) -> int:
    """``jdl compare`` with its results written into ``out`` (claimed for it)."""
    from jdl import compare

    grid = None
    if args.learning_rates is not None:  # given, even empty: an empty grid is an error, not "no grid"
        try:
            grid = [float(x) for x in args.learning_rates.split(",") if x.strip()]
        except ValueError:
            raise ValueError(f"--learning-rates must be comma-separated numbers; got {args.learning_rates!r}") from None
        if not grid:
            raise ValueError("--learning-rates is empty; give at least one positive rate")
    names = [name.strip() for name in args.optimizers.split(",") if name.strip()]
    if not names:
        raise ValueError(f"--optimizers names none; give comma-separated names, e.g. sgd,adam; got {args.optimizers!r}")
    result = compare.run(
        args.dataset, args.model, names, seeds=args.seeds, epochs=args.epochs, batch_size=args.batch_size,
        learning_rates=grid, target_accuracy=args.target_accuracy, data_dir=args.data_dir,
        manual_dir=args.manual_dir, dtype=_model_dtype(args),
    )  # fmt: skip
    plots = result.plot(out)  # the plots first, results.json last: a folder holding results.json is a finished run
    path = result.save(out)
    print(result.table())
    print(f"\nresults: {path}\nplots:   {', '.join(str(p) for p in plots)}")
    return 0


def _remove_written(out: Path, made: list[Path], before: set[Path]) -> None:
    """The files written into ``out`` since it held ``before`` removed again
    (folders made in it are left: they may hold what the user wanted kept,
    such as a --data-dir), or ``out`` itself if it was made, with the folders
    above it that were ``made`` for it and are empty again (``jdl-runs/``).
    Never raises: the error or Ctrl-C that called for it is what the user sees."""
    if made and made[-1] == out:
        shutil.rmtree(out, ignore_errors=True)
        for folder in reversed(made[:-1]):
            try:
                folder.rmdir()  # only if empty: another run may have written beside it meanwhile
            except OSError:
                break
        return
    for path in set(out.iterdir()) - before:
        if not path.is_dir():
            try:
                path.unlink(missing_ok=True)
            except OSError:
                pass


def _use_compilation_cache(args) -> None:
    """The persistent compilation cache (``jdl.train.cache``): a folder given
    with --compilation-cache must be writable; the default one is skipped with
    a warning when it is not."""
    if args.no_compilation_cache:
        return
    from jdl.train.cache import enable_compilation_cache

    try:
        enable_compilation_cache(args.compilation_cache)
    except ValueError as error:
        if args.compilation_cache is not None:
            raise
        print(f"jdl {args.command}: warning: no compilation cache: {error}", file=sys.stderr)


def _in_the_commands_words(error: Exception) -> str:
    """The error's message, in the command's options where the library's would not apply."""
    loader = sys.modules.get("jdl.data.loader")  # loaded if the error came from there (tfds is slow to import)
    if loader is not None and isinstance(error, loader.BatchLargerThanSplitError):
        return (f"--batch-size {error.batch_size} is larger than the training split, which holds "
                f"{error.num_examples} examples: use --batch-size <= {error.num_examples}")
    if hasattr(error, "in_words"):  # jdl.data's errors that name the options which would fix them
        return error.in_words(manual_dir="--manual-dir FOLDER", data_dir="--data-dir FOLDER",
                              manual_dir_option="--manual-dir", data_dir_option="--data-dir")
    return str(error)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        _use_compilation_cache(args)
        return run_train(args) if args.command == "train" else run_compare(args)
    except (ValueError, OSError, ImportError) as error:  # bad input: names, shapes, files, folders; no TensorFlow
        if isinstance(error, ImportError) and "pip install" not in str(error):
            raise  # a broken install: the traceback says where; jdl's own ImportErrors say what to install
        print(f"jdl {args.command}: error: {_in_the_commands_words(error)}", file=sys.stderr)
        return 2
    except FloatingPointError as error:  # train.NonFiniteLossError: the run diverged
        print(f"jdl {args.command}: error: {error} No results were written.", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # the command keeps no checkpoint: what the run wrote was removed
        print(f"\njdl {args.command}: interrupted; no results were written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
