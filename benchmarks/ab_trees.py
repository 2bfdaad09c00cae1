"""A/B of two versions of jdl on one machine: cold time to 92% and the prefetch feed.

Machines differ (the same flax+optax cold start to 92% took 3.75 s on one
H200 host and 7.1-8.4 s on another), so a change to what happens before the
first epoch is measured against the code before it on the same machine, in
fresh processes, alternating:

* ``t2a``: the flax CNN to 92% on real Fashion-MNIST (``time_to_accuracy``'s
  ``jdl_time`` then ``flax_time``) in a fresh process per tree and round,
  with the XLA compilations jdl's run logged (program, seconds, when);
* ``--feed``: ``prefetch_to_device`` from the first tree against this
  tree's, alternating in one process (``loader._feed``, chunk 64).

A tree is a folder holding a ``jdl`` package, e.g. an earlier commit's::

    mkdir -p ab/before && git archive <commit> jdl | tar -x -C ab/before
    python benchmarks/ab_trees.py --trees ab/before,. --rounds 2 --out "$OUT"

The folder ``ab/`` is not ignored, so the device run carries it; delete it
afterwards.  Writes ``ab.json`` in ``--out``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_COMPILED = re.compile(r"Finished XLA compilation of (?:jit\()?([^ )]+)\)? in ([0-9.]+) sec")


def child(tree: str, max_epochs: int) -> None:
    """One fresh process: ``tree``'s jdl to 92%, then flax+optax; prints a JSON line."""
    sys.path[:0] = [tree, str(ROOT / "benchmarks")]
    import jax

    compiled: list[tuple[str, float, float]] = []

    class Log(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            match = _COMPILED.search(record.getMessage())
            if match:
                compiled.append((match.group(1), float(match.group(2)), time.perf_counter()))

    jax.config.update("jax_log_compiles", True)
    logging.getLogger("jax").addHandler(Log())
    import common
    import time_to_accuracy

    import jdl

    if not jdl.__file__.startswith(tree):
        raise RuntimeError(f"imported {jdl.__file__}, not the jdl in {tree} (an installed jdl shadows it)")
    data, test, _ = common.fashion_mnist()
    time_to_accuracy.warm_backend()
    began = time.perf_counter()
    compiled.clear()
    ours = time_to_accuracy.jdl_time("cnn", data, test, max_epochs)
    jdl_compiles = [(name, seconds, round(at - began, 3)) for name, seconds, at in compiled]
    compiled.clear()
    reference = time_to_accuracy.flax_time("cnn", data, test, max_epochs)
    print(json.dumps({"tree": tree, "jdl": ours, "flax": reference, "jdl_compiles": jdl_compiles,
                      "flax_compile_total": sum(seconds for _, seconds, _ in compiled)}))  # fmt: skip


def feed(before: str, rounds: int) -> list[dict]:
    """The 100 µs step fed by ``before``'s prefetch module and this tree's, alternating."""
    sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
    import device_check
    import loader as loader_bench

    import jdl.data as jd

    spec = importlib.util.spec_from_file_location("before_prefetch", Path(before) / "jdl/data/prefetch.py")
    old = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(old)
    ours, lines = jd.prefetch_to_device, []
    data = device_check._fashion_mnist_loader()
    try:
        for round_ in range(rounds):
            for label, fn in ((before, old.prefetch_to_device), ("this tree", ours)):
                loader_bench.jd.prefetch_to_device = fn
                line = loader_bench._feed(data, "real Fashion-MNIST, uint8", False, chunk=64)
                lines.append({"feed": label, "round": round_, "us": line["jdl_s"] * 1e6,
                              "resident_us": line["reference_s"] * 1e6})  # fmt: skip
                print(json.dumps(lines[-1]), flush=True)
    finally:
        loader_bench.jd.prefetch_to_device = ours
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trees", default="ab/before,.", help="comma-separated folders, each with a jdl package")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--max-epochs", type=int, default=20)
    parser.add_argument("--feed", action="store_true", help="also the prefetch feed, first tree against this one")
    parser.add_argument("--out", default=".")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.max_epochs)
    trees = [str((ROOT / tree).resolve()) for tree in args.trees.split(",")]
    out = Path(args.out) / "ab.json"
    results = {"feed": feed(trees[0], args.rounds) if args.feed else [], "t2a": []}
    for round_ in range(args.rounds):
        for tree in trees:
            done = subprocess.run([sys.executable, __file__, "--child", tree, "--max-epochs", str(args.max_epochs)],
                                  capture_output=True, text=True, cwd=ROOT, timeout=600)  # fmt: skip
            if done.returncode:
                print(done.stderr[-3000:], flush=True)
                continue
            line = json.loads(done.stdout.strip().splitlines()[-1]) | {"round": round_}
            results["t2a"].append(line)
            slow = [c for c in line["jdl_compiles"] if c[1] > 0.2]
            print(json.dumps({"tree": tree, "round": round_, "jdl_wall_s": line["jdl"]["wall_s"],
                              "flax_wall_s": line["flax"]["wall_s"], "jdl_train_s": line["jdl"]["train_s"],
                              "slow_compiles": slow}), flush=True)  # fmt: skip
            out.write_text(json.dumps(results, indent=1))
    out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
