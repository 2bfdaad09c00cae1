"""Benchmark: how an epoch's time grows with batch size and model width, jdl
against flax+optax (both one epoch per ``lax.scan``, data on the device).

An MLP 784-W-10 with Adam, W in the widths and B in the batch sizes below,
on MNIST-shaped data.  Writes a PNG of seconds per epoch against batch size,
one line per width, jdl solid and flax+optax dashed.

Usage: python benchmarks/scaling.py [--quick]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import flax.linen as fnn
import jax

if __package__ in (None, ""):
    import common  # type: ignore[no-redef]
    import train_epoch  # type: ignore[no-redef]
else:
    from benchmarks import common, train_epoch

from jdl import models


class FlaxWideMLP(fnn.Module):
    width: int

    @fnn.compact
    def __call__(self, x):
        x = x.reshape((x.shape[0], -1))
        return fnn.Dense(10)(fnn.relu(fnn.Dense(self.width)(x)))


def run(quick: bool = False, out: Path | None = None) -> list[dict]:
    on_cpu = jax.devices()[0].platform == "cpu"
    widths = (64, 512) if quick else (64, 256, 1024, 4096)
    batches = (128,) if quick else (32, 128, 512, 2048)
    data, test, source = common.mnist_shaped(2048 if quick else (16384 if on_cpu else 60000))
    test = {key: value[:1000] for key, value in test.items()}
    epochs = 3
    records = []
    for width in widths:
        for batch in batches:
            ours = train_epoch.time_jdl(models.mlp(hidden=(width,)), "scan", data, test, batch, epochs)[0]
            ref = train_epoch.time_flax(FlaxWideMLP(width), "scan", data, test, batch, epochs)[0]
            records.append(common.line(f"scaling/mlp_w{width}/b{batch}", ours, "flax+optax scan", ref, width=width,
                                       batch_size=batch, examples=len(data["label"]), data=source))  # fmt: skip
    # a smoke run's plot is not kept
    folder = Path(tempfile.gettempdir()) if quick else Path(__file__).parent / "results"
    _plot(records, out or folder / f"scaling-{common.device_name().replace(':', '_')}.png")
    return records


def _plot(records: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for width in sorted({r["width"] for r in records}):
        rows = sorted((r for r in records if r["width"] == width), key=lambda r: r["batch_size"])
        x = [r["batch_size"] for r in rows]
        (line,) = ax.plot(x, [r["jdl_s"] for r in rows], marker="o", label=f"jdl, width {width}")
        ax.plot(x, [r["reference_s"] for r in rows], marker="x", linestyle="--", color=line.get_color(),
                label=f"flax+optax, width {width}")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch size")
    ax.set_ylabel("seconds per epoch")
    ax.set_title(f"MLP epoch time, {records[0]['device']}, {records[0]['examples']} examples")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    common.print_lines(run(parser.parse_args().quick))
