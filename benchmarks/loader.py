"""jdl's loader against tfds + tf.data on prepared Fashion-MNIST, and feeding a 100 µs step.

    python benchmarks/loader.py [--quick]

prints one JSON line per measurement:

- `loader/fashion_mnist` vs `tf.data`: one shuffled epoch of the train split
  in batches of 128 (drop_remainder), delivered to Python as NumPy
  (float32 images in [0, 1], int32 labels). jdl: `jdl.data.load(...)` and
  `for batch in loader`. tf.data: `tfds.load` (TFRecord, as tfds prepares for
  tf.data), `map` to float32 / int32, `shuffle(60000)`, `batch(128)`,
  `prefetch(AUTOTUNE)`, `tfds.as_numpy`: it decodes the PNGs every epoch.
- the same against `tf.data+cache`: `.cache()` after the map, so the decoded
  images stay in memory as jdl's do (the fairer comparison).
- `loader/fashion_mnist/prefetch_to_device`: jdl's epoch through
  `prefetch_to_device` (batches on the default device), against tf.data+cache.
- `loader/feed_100us_step`: a jitted step calibrated to take about 100 µs
  on the device, run on batches from `prefetch_to_device(loader)` against the
  same step on batches already resident on the device. `ratio` near 1 means
  the step never waited for the host.
- `loader/feed_100us_step_stacked`: that step run 64 steps per dispatch
  (`lax.scan`) over chunks from `prefetch_to_device(loader, stack=True)`,
  against the same program over a chunk already on the device; the line
  also gives the per-batch resident step (`step_us`) of the line above.

`ratio` is jdl_s / reference_s, as in every benchmark here: below 1, jdl is
faster (0.5: twice tf.data's rate). Times are
the median over the timed epochs (after one warm-up epoch each).

Data: Fashion-MNIST prepared in `$JDL_BENCH_DATA_DIR` (default
`~/.cache/jdl-bench-data`), twice: `array_record/` for jdl and `tfrecord/`
for tf.data, both prepared on first use from Debian's files
(`/usr/share/datasets/fashion-mnist`, verified by jdl). Where they are absent
the benchmark falls back to `mnist_sample` (4,000 train digits) and says so
in each line's `note`; where TensorFlow is absent (the accelerator machines)
the tf.data lines are left out.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jdl.data as jd  # noqa: E402
from jdl.data import idx, sources  # noqa: E402

DEBIAN = Path("/usr/share/datasets/fashion-mnist")
BATCH = 128


def _data_root() -> Path:
    return Path(os.environ.get("JDL_BENCH_DATA_DIR") or "~/.cache/jdl-bench-data").expanduser()


def _prepared(name: str, fmt: str) -> Path | None:
    """The data_dir holding `name` prepared as `fmt`, preparing it from Debian's files if needed."""
    data_dir = _data_root() / fmt
    try:
        source = sources._TfdsSource(name, data_dir)
    except ImportError:
        return None
    if source.prepared_format() == fmt:
        return data_dir
    if name != "fashion_mnist" or idx.find_idx_files(DEBIAN) is None:
        return None
    source.prepare(manual_dir=DEBIAN, download=False, file_format=fmt)
    return data_dir


def _device() -> str:
    d = jax.devices()[0]
    return f"{d.platform}:{getattr(d, 'device_kind', '')}".rstrip(":")


def _time_epochs(run_epoch, epochs: int) -> float:
    run_epoch()  # warm-up: caches, compilation, shuffle buffers
    times = []
    for _ in range(epochs):
        start = time.perf_counter()
        run_epoch()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _jdl_epoch(loader):
    def run():
        for batch in loader:
            batch["image"], batch["label"]  # noqa: B018 - the batch is fully built already

    return run


def _prefetch_epoch(loader):
    def run():
        last = None
        for batch in jd.prefetch_to_device(loader, size=2):
            last = batch
        jax.block_until_ready(last)

    return run


def _tfdata_epoch(name: str, data_dir: Path, cache: bool, n: int, split: str = "train"):
    from jdl.data._tfds_compat import import_tensorflow

    tf = import_tensorflow()  # GPUs hidden from TensorFlow
    import tensorflow_datasets as tfds

    ds = tfds.load(name, split=split, data_dir=os.fspath(data_dir), download=False)
    ds = ds.map(lambda x: {"image": tf.cast(x["image"], tf.float32) / 255.0,
                           "label": tf.cast(x["label"], tf.int32)},
                num_parallel_calls=tf.data.AUTOTUNE)
    if cache:
        ds = ds.cache()
    ds = ds.shuffle(n, seed=0, reshuffle_each_iteration=True)
    ds = ds.batch(BATCH, drop_remainder=True).prefetch(tf.data.AUTOTUNE)

    def run():
        for batch in tfds.as_numpy(ds):
            batch["image"], batch["label"]  # noqa: B018

    return run


def _line(benchmark, jdl_s, reference, reference_s, examples, note, **extra):
    return {
        "benchmark": benchmark, "jdl_s": round(jdl_s, 6), "reference": reference,
        "reference_s": round(reference_s, 6), "ratio": round(jdl_s / reference_s, 4),
        "device": _device(), "jax_version": jax.__version__,
        "examples_per_s_jdl": round(examples / jdl_s),
        "examples_per_s_ref": round(examples / reference_s),
        "batch_size": BATCH, "examples": examples, "note": note, **extra,
    }


def _calibrated_step(target_s: float, loader):
    """A jitted step (x -> loss-like scalar) whose resident-data time is about target_s."""
    d = 256
    key = jax.random.key(0)
    w = jax.random.normal(key, (int(np.prod(loader.image_shape)), d)) / 28.0
    v = jax.random.normal(key, (d, d)) / 16.0

    def make(k):
        @jax.jit
        def step(batch):
            h = batch["image"].reshape(batch["image"].shape[0], -1) @ w
            for _ in range(k):
                h = jnp.tanh(h @ v)
            return jnp.mean(h) + jnp.mean(batch["label"])

        return step

    resident = [jax.device_put(b) for _, b in zip(range(8), loader, strict=False)]
    k, chosen = 1, None
    while k <= 4096:
        step = make(k)
        per_step = _time_steps(step, resident, 200)
        chosen = (step, per_step, k)
        if per_step >= target_s:
            break
        k *= 2
    return chosen, resident


def _time_steps(step, batches, n):
    jax.block_until_ready(step(batches[0]))
    out = None
    start = time.perf_counter()
    for i in range(n):
        out = step(batches[i % len(batches)])
    jax.block_until_ready(out)
    return (time.perf_counter() - start) / n


def _epochs(loader, prefetch: bool = False, **kwargs):
    """Batches of epoch after epoch, host NumPy or through prefetch_to_device per epoch."""
    while True:
        if prefetch:
            with jd.prefetch_to_device(loader, **kwargs) as batches:
                yield from batches
        else:
            yield from loader


def _seconds_per_step(run, items, n, steps_in=lambda item: 1, carry=None):
    """Seconds per step of ``carry = run(carry, item)`` over ``items`` until
    ``n`` steps are done, an item holding ``steps_in(item)`` steps."""
    done = 0
    start = time.perf_counter()
    for item in items:
        carry = run(carry, item)
        done += steps_in(item)
        if done >= n:
            break
    jax.block_until_ready(carry)
    return (time.perf_counter() - start) / done


def _run_steps(step, batches, n):
    """Seconds per step of ``step(batch)`` over ``batches`` until ``n`` are done."""
    return _seconds_per_step(lambda _, batch: step(batch), batches, n)


def _long_epochs(loader, note):
    """``loader`` with epochs of 60,000 examples as Fashion-MNIST's (tiled where shorter), and the note."""
    if loader.num_examples >= 60000:
        return loader, note
    images, labels = loader.stored()
    reps = -(-60000 // loader.num_examples)
    loader = jd.Loader(np.concatenate([images] * reps)[:60000],
                       np.concatenate([labels] * reps)[:60000], batch_size=BATCH, seed=0)
    return loader, note + "; the feed test tiles it to 60,000 examples"


def _feed(loader, note, quick, calibrated=None, **prefetch_kwargs):
    """The calibrated ~100 µs step fed batch by batch by ``prefetch_to_device``
    against the step over batches resident on the device; ``calibrated``: a
    ``_calibrated_step(100e-6, loader)`` made already (it takes seconds)."""
    loader, note = _long_epochs(loader, note)
    (step, _, k), resident = calibrated or _calibrated_step(100e-6, loader)
    steps = 300 if quick else 2000
    resident_s = _time_steps(step, resident, steps)
    direct_s = _run_steps(step, _epochs(loader), steps)  # host NumPy batches, no prefetch
    _run_steps(step, _epochs(loader, prefetch=True, **prefetch_kwargs), 50)  # warm-up: compiles the splitter
    fed_s = _run_steps(step, _epochs(loader, prefetch=True, **prefetch_kwargs), steps)
    return _line("loader/feed_100us_step", fed_s, "data resident on device", resident_s,
                 loader.batch_size, note + "; times are per step, examples per step",
                 step_us=round(resident_s * 1e6, 1), step_matmuls=k, steps=steps,
                 no_prefetch_us=round(direct_s * 1e6, 1),
                 host_batch_us=round(_host_batch_s(loader) * 1e6, 1))


def _run_chunks(run_chunk, chunks, n):
    """Seconds per step of ``run_chunk(total, chunk)`` over ``chunks`` until ``n`` steps are done."""
    return _seconds_per_step(run_chunk, chunks, n, lambda chunk: int(chunk["label"].shape[0]), jnp.float32(0))


def _feed_stacked(loader, note, quick, chunk=64, calibrated=None):
    """The calibrated ~100 µs step run ``chunk`` steps per dispatch (``lax.scan``)
    over chunks from ``prefetch_to_device(loader, stack=True)``, against the same
    program over a chunk resident on the device; also against the step
    dispatched once per resident batch (``_feed``'s reference).  ``calibrated``
    as in ``_feed``."""
    loader, note = _long_epochs(loader, note)
    (step, _, k), resident = calibrated or _calibrated_step(100e-6, loader)
    steps = 6 * chunk if quick else 32 * chunk

    @jax.jit
    def run_chunk(total, batches):
        return jax.lax.scan(lambda t, batch: (t + step(batch), None), total, batches)[0]

    first = [b for _, b in zip(range(chunk), loader, strict=False)]
    resident_chunk = jax.device_put({key: np.stack([b[key] for b in first]) for key in first[0]})
    _run_chunks(run_chunk, [resident_chunk] * 2, 1)  # compiles
    resident_s = _run_chunks(run_chunk, [resident_chunk] * (steps // chunk), steps)
    per_batch_s = _time_steps(step, resident, steps)
    stacked = dict(chunk=chunk, stack=True)
    _run_chunks(run_chunk, _epochs(loader, prefetch=True, **stacked), 2 * len(loader))  # compiles each chunk length
    fed_s = _run_chunks(run_chunk, _epochs(loader, prefetch=True, **stacked), steps)
    return _line("loader/feed_100us_step_stacked", fed_s, "the same scan over a resident chunk", resident_s,
                 loader.batch_size, note + f"; {chunk} steps per dispatch; times are per step, examples per step",
                 step_us=round(per_batch_s * 1e6, 1), scanned_step_us=round(resident_s * 1e6, 1),
                 step_matmuls=k, steps=steps)  # fmt: skip


def _host_batch_s(loader) -> float:
    it = iter(loader)
    next(it)
    start = time.perf_counter()
    for i, _ in enumerate(it):
        if i == 99:
            break
    return (time.perf_counter() - start) / 100


def run(quick: bool = False) -> list[dict]:
    """Runs every measurement; returns one dict per line (see the module docstring)."""
    epochs = 1 if quick else 3
    name, note = "fashion_mnist", "prepared Fashion-MNIST (Debian's files, verified)"
    jdl_dir = _prepared(name, "array_record")
    if jdl_dir is None:
        name, note = "mnist_sample", "Fashion-MNIST not available: fell back to mnist_sample"
    # the smoke run: a tenth of Fashion-MNIST's epoch (mnist_sample's whole 4,000)
    split = "train[:6000]" if quick and name == "fashion_mnist" else "train"
    loader = jd.load(name, split=split, batch_size=BATCH, shuffle=True, seed=0,
                     drop_remainder=True, data_dir=jdl_dir)
    examples = len(loader) * BATCH
    jdl_s = _time_epochs(_jdl_epoch(loader), epochs)
    prefetch_s = _time_epochs(_prefetch_epoch(loader), epochs)
    lines = []
    try:
        import tensorflow  # noqa: F401
        import tensorflow_datasets  # noqa: F401

        have_tf = True
    except ImportError:
        have_tf = False
    if have_tf:
        ref_dir = _prepared(name, "tfrecord") if name == "fashion_mnist" else None
        if ref_dir is None:  # mnist_sample: tfds' builder, prepared as TFRecord
            ref_dir = _data_root() / "tfrecord"
            source = sources._TfdsSource(name, ref_dir)
            if source.prepared_format() != "tfrecord":
                source.prepare(manual_dir=None, download=False, file_format="tfrecord")
        plain = _time_epochs(_tfdata_epoch(name, ref_dir, False, loader.num_examples, split), epochs)
        cached = _time_epochs(_tfdata_epoch(name, ref_dir, True, loader.num_examples, split), epochs)
        bench = f"loader/{name}"
        lines += [
            _line(bench, jdl_s, "tf.data", plain, examples, note),
            _line(bench, jdl_s, "tf.data+cache", cached, examples, note),
            _line(f"{bench}/prefetch_to_device", prefetch_s, "tf.data+cache", cached,
                  examples, note),
        ]
    else:
        lines.append(_line(f"loader/{name}/prefetch_to_device", prefetch_s,
                           "jdl loader, host NumPy", jdl_s, examples,
                           note + "; no TensorFlow here: tf.data not measured"))
    lines += [_feed(loader, note, quick), _feed_stacked(loader, note, quick)]
    return lines


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="one timed epoch, fewer steps")
    args = parser.parse_args(argv)
    for line in run(quick=args.quick):
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
