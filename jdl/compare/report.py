"""A comparison's results: the table, the JSON file and the plots."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class Comparison:
    """Results of ``jdl.compare.run``: ``runs`` as in DESIGN.md's results.json,
    plus the learning-rate search (if any) and the timings."""

    dataset: str
    model: str
    runs: list[dict[str, Any]]
    target_accuracy: float
    lr_search: list[dict[str, Any]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "model": self.model, "runs": self.runs,
                "target_accuracy": self.target_accuracy, "lr_search": self.lr_search, **self.info}  # fmt: skip

    def save(self, directory: str | Path) -> Path:
        """Write ``directory/results.json`` (the folder is made if need be)."""
        Path(directory).mkdir(parents=True, exist_ok=True)
        path = Path(directory) / "results.json"
        path.write_text(json.dumps(jsonable(self.to_json()), indent=1, allow_nan=False) + "\n")
        return path

    def table(self) -> str:
        return format_table(self)

    def __str__(self) -> str:
        return self.table()

    def plot(self, directory: str | Path) -> list[Path]:
        """Write the PNG plots into ``directory``; returns their paths."""
        return plot(self, directory)


def jsonable(value):
    """``value`` with NumPy scalars as Python numbers and non-finite floats as
    None (JSON's null: ``NaN`` is not JSON), for results.json."""
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def by_optimizer(runs: list[dict]) -> dict[str, list[dict]]:
    grouped: dict[str, list[dict]] = {}
    for run in runs:
        grouped.setdefault(run["optimizer"], []).append(run)
    return grouped


def _to_target(run: dict, target: float) -> tuple[int | None, float | None]:
    seconds = 0.0
    for record in run["epochs"]:
        seconds += record["time_s"]
        if record["test_accuracy"] >= target:
            return record["epoch"], seconds
    return None, None


def format_table(result: Comparison) -> str:
    """Final test accuracy (mean ± sample std over the seeds that did not diverge), learning rate (best of the
    grid where one was searched), epochs and seconds to the target accuracy,
    training time, and diverged runs."""
    target = result.target_accuracy
    searched = {entry["optimizer"] for entry in result.lr_search}
    # searched optimizers whose every rate diverged in the search: rerun at the grid's smallest, not a best
    fallback = {name for name in searched
                if all(e["diverged"] for e in result.lr_search if e["optimizer"] == name)}  # fmt: skip
    percent = f"{100 * target:.4g}%"  # 90%, 90.5%, 99.99%: the threshold the columns count
    header = ["optimizer", "lr", "batch", "test acc", f"epochs to {percent}", f"s to {percent}", "train s", "status"]
    rows = []
    for name, runs in by_optimizer(result.runs).items():
        finals = np.array([r["epochs"][-1]["test_accuracy"] for r in runs if r["epochs"] and not r.get("diverged")])
        reached = [_to_target(r, target) for r in runs]
        epochs_to = [e for e, _ in reached if e is not None]
        secs_to = [s for _, s in reached if s is not None]
        diverged = [r for r in runs if r.get("diverged")]
        lr = runs[0]["learning_rate"]
        status = f"{len(diverged)}/{len(runs)} diverged" if diverged else "ok"
        rows.append([
            name,
            f"{lr:g}" + ("†" if name in fallback else "*" if name in searched else ""),
            str(runs[0]["batch_size"]),
            _mean_and_spread(finals),
            f"{np.mean(epochs_to):.1f}" if len(epochs_to) == len(runs) else (f"{len(epochs_to)}/{len(runs)} runs"
                                                                               if epochs_to else "-"),
            f"{np.mean(secs_to):.2f}" if len(secs_to) == len(runs) else "-",
            _train_seconds(runs),
            status,
        ])  # fmt: skip
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    notes = [f"{result.dataset}, {result.model}; test accuracy after the last epoch, mean ± sample std (ddof=1) "
             "over seeds."]
    if searched - fallback:
        notes.append("* best learning rate of the grid, chosen on a validation split held out from training.")
    if fallback:
        notes.append("† every learning rate of the grid diverged on the validation split: rerun at the smallest.")
    notes.append("Times are of each optimizer's runs trained together with the others of the same batch size.")
    return "\n".join(lines + [""] + notes)


def _band(runs: list[dict], key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Epochs, mean and std of ``key`` over the runs that reached each epoch
    (a run that diverged stops counting after its last complete epoch)."""
    length = max(len(r["epochs"]) for r in runs)
    values = np.full((len(runs), length), np.nan)
    for row, r in zip(values, runs):
        row[: len(r["epochs"])] = [e[key] for e in r["epochs"]]
    return np.arange(1, length + 1), np.nanmean(values, axis=0), _sample_std(values)


def _train_seconds(runs: list[dict]) -> str:
    """Mean training seconds over the runs that completed an epoch ('-' when none did)."""
    seconds = [sum(e["time_s"] for e in r["epochs"]) for r in runs if r["epochs"]]
    return f"{np.mean(seconds):.2f}" if seconds else "-"


def _mean_and_spread(finals: np.ndarray) -> str:
    """'mean ± sample std' of the runs' final accuracies; one run has no spread to give."""
    if finals.size == 0:
        return "-"
    if finals.size == 1:
        return f"{finals[0]:.4f} (1 run)"
    return f"{finals.mean():.4f} ± {_sample_std(finals):.4f}"


def _sample_std(values: np.ndarray) -> np.ndarray:
    """The sample standard deviation (ddof=1) over axis 0 of what is not NaN;
    0 where there is one value (no spread to estimate)."""
    counts = np.sum(~np.isnan(values), axis=0)
    centred = values - np.nanmean(values, axis=0)
    return np.sqrt(np.nansum(centred**2, axis=0) / np.maximum(counts - 1, 1))


def plot(result: Comparison, directory: str | Path) -> list[Path]:
    """training_loss.png and test_accuracy.png (mean over seeds with a band of
    ± the sample std), and lr_sensitivity.png when a grid was searched, in
    ``directory`` (made if need be)."""
    # A Figure of its own, not pyplot: the process's backend (a notebook's
    # inline one) is left alone.
    from matplotlib.figure import Figure

    def subplots():
        fig = Figure(figsize=(7, 4.5))
        return fig, fig.add_subplot()

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for key, label, name, log in (("train_loss", "training loss", "training_loss.png", True),
                                  ("test_accuracy", "test accuracy", "test_accuracy.png", False)):
        fig, ax = subplots()
        for optimizer, runs in by_optimizer(result.runs).items():
            runs = [r for r in runs if r["epochs"]]
            if not runs:
                continue
            x, mean, std = _band(runs, key)
            (line,) = ax.plot(x, mean, marker="o", markersize=3, label=optimizer)
            ax.fill_between(x, mean - std, mean + std, color=line.get_color(), alpha=0.2)
        if log:
            ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.set_title(f"{label}: {result.model} on {result.dataset}")
        if ax.get_legend_handles_labels()[0]:  # not when every run diverged: nothing drawn
            ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(directory / name, dpi=110)
        paths.append(directory / name)
    if result.lr_search:
        fig, ax = subplots()
        for optimizer, entries in by_optimizer(result.lr_search).items():
            entries = sorted(entries, key=lambda e: e["learning_rate"])
            ax.plot([e["learning_rate"] for e in entries], [e["validation_accuracy"] for e in entries],
                    marker="o", label=optimizer)
        ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.set_ylabel("validation accuracy (last epoch)")
        ax.set_title(f"learning-rate sensitivity: {result.model} on {result.dataset}")
        if ax.get_legend_handles_labels()[0]:  # not when every run diverged: nothing drawn
            ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(directory / "lr_sensitivity.png", dpi=110)
        paths.append(directory / "lr_sensitivity.png")
    return paths
