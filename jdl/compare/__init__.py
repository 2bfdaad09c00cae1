"""Optimizer comparison: one model, one dataset, many optimizers, trained at once.

>>> result = jdl.compare.run("mnist_sample", "mlp", ["sgd", "momentum", "adam"], seeds=2, epochs=5)
>>> print(result)              # the table
>>> result.save("out"); result.plot("out")

Every run of an optimizer (seeds x learning rates) is stacked and vmapped in
one compiled program, and the optimizers sharing a batch size are trained
in the same program, with the data resident on the accelerator (see
``jdl.compare.engine``).  With ``learning_rates`` the DeepOBS protocol is
followed (Schneider et al., 2019): each optimizer's grid is trained on the
training split minus a held-out validation split, the learning rate with the
best final validation accuracy is kept, and that one is rerun with every
seed on the whole training split and reported on the test split.
"""

from __future__ import annotations

import datetime as _dt
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import jax
import numpy as np

from jdl import data as jdl_data
from jdl import losses, models
from jdl._checks import is_int, is_real, scalar
from jdl.compare.engine import Group, choose_engine, group_evaluator, init_groups, train_cluster
from jdl.compare.presets import CLASSIC, FULL_BATCH, PRESETS, Preset, preset
from jdl.compare.report import Comparison, format_table, plot
from jdl.data.loader import BatchLargerThanSplitError
from jdl.train.engine import largest_divisor

__all__ = ["run", "Comparison", "CLASSIC", "PRESETS", "preset", "default_out_dir", "check_out_dir", "format_table",
           "plot"]  # fmt: skip

# Full-batch gradient descent accumulates its gradient over chunks of this many examples.
FULL_BATCH_CHUNK = 1000


def default_out_dir() -> Path:
    """A fresh folder name: ``jdl-runs/compare-YYYYmmdd-HHMMSS``."""
    return Path("jdl-runs") / _dt.datetime.now().strftime("compare-%Y%m%d-%H%M%S")


def check_out_dir(out: str | Path) -> Path:
    """Refuse a folder that already holds results (never overwrite silently)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"output folder {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        held = ", ".join(sorted(p.name for p in out.iterdir())[:5])
        raise ValueError(f"output folder {out} already holds earlier results ({held}); "
                         "choose a new --out folder or remove it")
    return out


def _grids(optimizers: Sequence[str], learning_rates) -> dict[str, list[float]] | None:
    if learning_rates is None:
        return None
    if isinstance(learning_rates, Mapping):
        strangers = sorted(set(learning_rates) - set(optimizers))
        if strangers:
            raise ValueError(f"learning rates given for {strangers}, which are not among the optimizers compared "
                             f"({list(optimizers)})")
        missing = [name for name in optimizers if name not in learning_rates]
        if missing:
            raise ValueError(f"a dict of learning-rate grids needs one for every optimizer compared; none for "
                             f"{missing}")  # fmt: skip
        grids = {name: _grid_list(learning_rates[name], name) for name in optimizers}
    else:
        grids = {name: _grid_list(learning_rates, name) for name in optimizers}
    for name, grid in grids.items():
        if not grid:
            raise ValueError(f"the learning-rate grid for {name!r} is empty; give at least one positive rate")
        bad = [lr for lr in grid if not (is_real(lr) and math.isfinite(lr) and lr > 0)]
        if bad:
            raise ValueError(f"learning rates must be positive finite numbers; got {bad} for {name!r}")
        grids[name] = [float(lr) for lr in grid]
    return grids


def _grid_list(grid, name: str) -> list:
    """``grid`` as a list: a ValueError saying what was expected for a string or a single number."""
    if isinstance(grid, (str, bytes)) or not isinstance(grid, Iterable):
        raise ValueError(f"learning_rates is a list of rates, or a dict of such lists by optimizer, e.g. "
                         f"[0.01, 0.1]; got {grid!r} for {name!r}")
    return list(grid)


def _by_preset_name(learning_rates):
    """A dict of grids keyed by the presets' own names ('Adam' -> 'adam'); anything else as it is."""
    if not isinstance(learning_rates, Mapping):
        return learning_rates
    keyed = {}
    for name, grid in learning_rates.items():
        try:
            key = preset(name).name
        except (TypeError, ValueError):
            key = name  # not an optimizer: _grids names it among those not compared
        if key in keyed:
            raise ValueError(f"learning rates are given twice for {key!r} (as {name!r} too)")
        keyed[key] = grid
    return keyed


def _batch(p: Preset, batch_size: int, n: int) -> int:
    size = n if p.batch_size == FULL_BATCH else (p.batch_size or batch_size)
    return min(size, n)


def full_batch_chunk(n: int) -> int | None:
    """The chunk a full-batch step over ``n`` examples sums its gradient in:
    the largest divisor of ``n`` from ``FULL_BATCH_CHUNK / 4`` to
    ``FULL_BATCH_CHUNK`` (3,600 examples: 900; 60,000: 1,000), so every chunk
    runs one compiled program; where none divides it (73,257: 3 x 24,419),
    the fewest chunks of at most ``FULL_BATCH_CHUNK`` made about equal (73
    of 990 and a last one of 987, where chunks of 1,000 would leave 257, and
    1,009 examples 505 and 504, not 1,000 and 9: a model's batch statistics
    come from chunks of like size); past about 500,000 examples, where that
    could leave a last chunk of a few examples, the largest chunk down to
    half of ``FULL_BATCH_CHUNK`` whose last one is at least half as large
    (1,000,001: 1,023 chunks of 977 and a last one of 530); None (one pass
    over all ``n``) when ``n`` is no larger than a chunk."""
    if n <= FULL_BATCH_CHUNK:
        return None
    divisor = largest_divisor(n, FULL_BATCH_CHUNK // 4, FULL_BATCH_CHUNK)
    if divisor is not None:
        return divisor
    chunks = -(-n // FULL_BATCH_CHUNK)
    size = -(-n // chunks)
    if n - (chunks - 1) * size >= size / 2:
        return size
    # more chunks than half a chunk (n past ~500,000: 1,000,001 would be 1,000 x 1,000 and 1): the largest
    # chunk from a whole FULL_BATCH_CHUNK down to half of it that leaves a last chunk of at least half its size
    sizes = range(FULL_BATCH_CHUNK, FULL_BATCH_CHUNK // 2 - 1, -1)
    return next((c for c in sizes if n % c >= c / 2), max(sizes, key=lambda c: n % c / c))


def _train(model, loss_fn, configs, images, labels, eval_images, eval_labels, permutation, epochs, batch_size,
           use_scan, strategy, bar):  # fmt: skip
    """Train ``configs`` (name -> (preset, lrs, seeds)) clustered by batch size; returns per-run records."""
    n = len(images)
    clusters: dict[int, list[tuple[str, Preset, list, list]]] = {}
    for name, (p, lrs, seeds) in configs.items():
        clusters.setdefault(_batch(p, batch_size, n), []).append((name, p, lrs, seeds))
    runs, info = [], {"compile_s": {}, "train_s": {}}
    cluster_groups = {size: [Group(name, p.make, np.asarray(lrs, np.float32), np.asarray(seeds))
                             for name, p, lrs, seeds in members] for size, members in clusters.items()}  # fmt: skip
    # Every run of every cluster initialized in one program (one copy of the model's initialization to compile;
    # every cluster's carries are on the device from the start), and one evaluation function for all.
    carries, base_keys = init_groups(model, [g for groups in cluster_groups.values() for g in groups], images.shape[1:])
    evaluator = group_evaluator(model, loss_fn, min(1000, len(eval_images)), strategy)
    for size, members in clusters.items():
        count, groups = len(members), cluster_groups[size]
        start, (carries, base_keys) = (carries[:count], base_keys[:count]), (carries[count:], base_keys[count:])
        out = train_cluster(
            model, loss_fn, groups, batch_size=size, images=images, labels=labels, permutation=permutation,
            epochs=epochs, eval_images=eval_images, eval_labels=eval_labels, use_scan=use_scan, strategy=strategy,
            microbatch=full_batch_chunk(size) if any(p.batch_size == FULL_BATCH for _, p, _, _ in members) else None,
            on_epoch=(lambda epoch, k=count: bar.update(k)) if bar is not None else None, start=start,
            evaluator=evaluator,
        )  # fmt: skip
        info["compile_s"][str(size)] = out["compile_s"]
        info["train_s"][str(size)] = float(sum(out["times"]))
        for g_index, (group, (_, _, rates, _)) in enumerate(zip(groups, members, strict=True)):
            # the rates as given (the device trains with their float32 copies, group.learning_rates)
            for k, (lr, seed) in enumerate(zip(rates, group.seeds, strict=True)):
                bad = int(out["first_bad"][g_index][k])
                for epoch in range(epochs if bad < 0 else bad // out["steps_per_epoch"]):
                    if not math.isfinite(float(out["history"][epoch][g_index]["test_loss"][k])):
                        # finite losses, a non-finite evaluation: the epoch's last update broke the parameters
                        bad = (epoch + 1) * out["steps_per_epoch"] - 1
                        break
                last = epochs if bad < 0 else bad // out["steps_per_epoch"]  # complete epochs before it
                record = {"optimizer": group.name, "learning_rate": float(lr), "seed": int(seed), "batch_size": size,
                          "epochs": [], "diverged": None,  # its epochs' time_s are of the program these shared too
                          "trained_with": [g.name for g in groups if g.name != group.name]}  # fmt: skip
                for epoch in range(last):
                    h = out["history"][epoch][g_index]
                    record["epochs"].append({
                        "epoch": epoch + 1, "train_loss": float(h["train_loss"][k]),
                        "test_loss": float(h["test_loss"][k]), "test_accuracy": float(h["test_accuracy"][k]),
                        "time_s": float(out["times"][epoch]),
                    })  # fmt: skip
                if bad >= 0:
                    record["diverged"] = {"epoch": bad // out["steps_per_epoch"] + 1,
                                          "step": bad % out["steps_per_epoch"]}  # fmt: skip
                runs.append(record)
    return runs, info


def run(
    dataset: str = "mnist_sample",
    model: str = "mlp",
    optimizers: Sequence[str] = CLASSIC,
    *,
    seeds: int | Sequence[int] = 2,
    epochs: int = 5,
    batch_size: int = 128,
    learning_rates: Sequence[float] | Mapping[str, Sequence[float]] | None = None,
    validation_fraction: float = 0.1,
    target_accuracy: float = 0.9,
    data_dir: str | None = None,
    manual_dir: str | None = None,
    progress: bool = True,
    dtype=None,
) -> Comparison:
    """Train ``model`` on ``dataset`` with each optimizer (and seed, and
    learning rate), all at once; returns a ``Comparison`` that prints as a
    table, plots and saves as JSON.

    ``optimizers`` are preset names (``jdl.compare.CLASSIC``: gd, sgd,
    minibatch, momentum, adagrad, rmsprop, adadelta, adam), other
    ``jdl.optim`` names, or ``optax.<name>``.  ``gd`` sees the whole training
    set each step (its gradient summed over chunks of up to
    ``FULL_BATCH_CHUNK`` examples, ``full_batch_chunk``, so a model's batch
    statistics and dropout masks are per chunk),
    ``sgd`` one example, the rest ``batch_size``.  Without
    ``learning_rates`` each uses its preset's rate; with a grid (one list for
    all, or a dict per optimizer) the DeepOBS protocol picks one per optimizer
    on a validation split (a grid of one rate is simply used): the grid's
    runs train on the training split less ``validation_fraction`` of it (a
    fixed draw, ``default_rng(20190222)``), each epoch in the order
    ``default_rng([seed, epoch, 1]).permutation``, with the first seed; the
    rate of the best final validation accuracy is then rerun with every seed
    on the whole training split, in the loader's orders, and reported on test.
    A run whose loss becomes NaN or infinite is marked diverged and the others
    go on.  The optimizers of one batch size train in one program, timed
    together: each run's ``time_s`` is that program's, and its
    ``trained_with`` names the others in it.  Runs of one seed in a vmapped
    group share their first layer's product, so their last bits depend on
    the group (2e-7 apart in a 2- and a 3-rate grid).  The training split is
    held on the device.  ``dtype``: the model's computation
    dtype (``'bfloat16'``: mixed precision, float32 parameters; see
    ``jdl.nn.Dense``).
    """
    if is_int(seeds):
        seed_list = list(range(int(seeds)))
    elif not isinstance(seeds, (str, bytes)) and hasattr(seeds, "__iter__"):  # a list, range, array, generator
        given = [scalar(s) for s in seeds]  # 0-d arrays as numbers
        seed_list = [int(s) for s in given] if all(is_int(s) for s in given) else []
    else:
        seed_list = []
    if not seed_list or any(s < 0 for s in seed_list) or len(set(seed_list)) < len(seed_list):
        raise ValueError(f"seeds must be a positive count or a non-empty list of distinct int seeds >= 0; "
                         f"got {seeds!r}")  # fmt: skip
    if not is_int(epochs) or epochs < 1:
        raise ValueError(f"epochs must be a positive int; got {epochs!r}")
    epochs = int(epochs)
    if jax.process_count() > 1:  # it places everything on this process's first device
        raise ValueError(f"compare.run trains on one process's devices; this is one of {jax.process_count()} "
                         "processes (jax.distributed): run the comparison in a single process")  # fmt: skip
    if isinstance(optimizers, str):
        raise ValueError(f"optimizers must be a list of names, e.g. [{optimizers!r}]; got the string {optimizers!r}")
    if not optimizers:
        raise ValueError("optimizers is empty; name at least one, e.g. ['sgd', 'adam']")
    if not (is_real(target_accuracy) and 0.0 < target_accuracy <= 1.0):
        raise ValueError(f"target_accuracy is a fraction in (0, 1], e.g. 0.9; got {target_accuracy!r}")
    # each optimizer by its preset's name ('Adam' is 'adam'), named once
    chosen, given_as = {}, {}
    for given in optimizers:
        found = preset(given)
        if found.name in chosen:
            raise ValueError(f"optimizers name {found.name!r} twice (as {given_as[found.name]!r} and {given!r}); "
                             "name each once (several learning rates: learning_rates=)")  # fmt: skip
        chosen[found.name], given_as[found.name] = found, given
    names = list(chosen)
    grids = _grids(names, _by_preset_name(learning_rates))
    if not (is_real(validation_fraction) and 0.0 < validation_fraction < 1.0):
        raise ValueError(f"validation_fraction must lie in (0, 1); got {validation_fraction!r}")
    models.get(model, dtype=dtype)  # fail fast on an unknown model name or dtype, before loading data

    try:
        train = jdl_data.load(dataset, split="train", batch_size=batch_size, shuffle=True, seed=seed_list[0],
                              data_dir=data_dir, manual_dir=manual_dir)  # fmt: skip
    except BatchLargerThanSplitError as error:  # its drop_remainder advice is the loader's, not run()'s
        raise BatchLargerThanSplitError(
            f"batch_size {error.batch_size} is larger than {dataset}'s training split, which holds "
            f"{error.num_examples} examples: use batch_size <= {error.num_examples}",
            error.batch_size, error.num_examples) from None  # fmt: skip
    test = jdl_data.load(dataset, split="test", batch_size=batch_size, shuffle=False, data_dir=data_dir,
                         manual_dir=manual_dir)  # fmt: skip
    train_arrays, test_arrays = train.arrays(), test.arrays()
    images, labels = train_arrays["image"], train_arrays["label"]
    test_images, test_labels = test_arrays["image"], test_arrays["label"]
    net = models.get(model, num_classes=train.num_classes, dtype=dtype)
    use_scan, strategy = choose_engine(net, images)
    loss_fn = losses.cross_entropy
    started = time.perf_counter()

    total = len(names) * epochs + sum(1 for g in (grids or {}).values() if len(g) > 1) * epochs
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc="optimizer-epochs", unit="epoch")

    try:  # the bar closed on an error or Ctrl-C too, before the caller reports it
        lr_search: list[dict] = []
        chosen_lr = {name: p.learning_rate for name, p in chosen.items()}
        chosen_lr.update({name: grid[0] for name, grid in (grids or {}).items() if len(grid) == 1})
        grids = {name: grid for name, grid in (grids or {}).items() if len(grid) > 1}
        if grids:
            order = np.random.default_rng(20190222).permutation(len(images))
            n_val = max(1, int(round(validation_fraction * len(images))))
            val, fit_idx = order[:n_val], np.sort(order[n_val:])
            if batch_size > len(fit_idx):
                raise ValueError(
                    f"the batch size, {batch_size}, is larger than the {len(fit_idx)} examples the learning-rate "
                    f"search trains on (the training split less validation_fraction={validation_fraction} of it): "
                    f"use a batch size of at most {len(fit_idx)}, or a smaller validation_fraction")  # fmt: skip

            def search_permutation(seed: int, epoch: int) -> np.ndarray:
                return np.random.default_rng([seed, epoch, 1]).permutation(len(fit_idx))

            configs = {name: (chosen[name], grid, [seed_list[0]] * len(grid)) for name, grid in grids.items()}
            runs, _ = _train(net, loss_fn, configs, images[fit_idx], labels[fit_idx], images[val], labels[val],
                             search_permutation, epochs, batch_size, use_scan, strategy, bar)  # fmt: skip
            for r in runs:
                last = r["epochs"][-1] if r["epochs"] else {"test_accuracy": math.nan, "test_loss": math.nan}
                ok = r["diverged"] is None
                lr_search.append({"optimizer": r["optimizer"], "learning_rate": r["learning_rate"],
                                  "validation_accuracy": last["test_accuracy"] if ok else math.nan,
                                  "validation_loss": last["test_loss"] if ok else math.nan,
                                  "diverged": r["diverged"]})  # fmt: skip
            for name in grids:
                candidates = [e for e in lr_search if e["optimizer"] == name and e["diverged"] is None]
                if candidates:
                    best = max(candidates, key=lambda e: (e["validation_accuracy"], -e["validation_loss"]))
                    chosen_lr[name] = best["learning_rate"]
                else:
                    chosen_lr[name] = min(grids[name])

        loaders: dict[int, jdl_data.Loader] = {}  # one per seed: a Loader checks every label when built

        def permutation(seed: int, epoch: int) -> np.ndarray:
            """The order ``jdl.data``'s loader gives ``seed`` in ``epoch`` (a loader over the same arrays)."""
            if seed not in loaders:
                loaders[seed] = jdl_data.Loader(images, labels, batch_size=batch_size, seed=seed,
                                                num_classes=train.num_classes)
            return loaders[seed].permutation(epoch)

        configs = {name: (chosen[name], [chosen_lr[name]] * len(seed_list), seed_list) for name in names}
        runs, info = _train(net, loss_fn, configs, images, labels, test_images, test_labels, permutation, epochs,
                            batch_size, use_scan, strategy, bar)  # fmt: skip
    finally:
        if bar is not None:
            bar.close()
    info.update({"device": str(jax.devices()[0].device_kind), "jax_version": jax.__version__,
                 "dtype": "float32" if dtype is None else jax.numpy.dtype(dtype).name,
                 "wall_s": time.perf_counter() - started, "engine": "scan" if use_scan else "loop",
                 "strategy": strategy})  # fmt: skip
    return Comparison(dataset, model, runs, target_accuracy, lr_search, info)
