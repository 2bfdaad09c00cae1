"""Run jdl's benchmarks and write ``benchmarks/results/<device>.json``.

    python benchmarks/run.py [--quick] [--only NAME[,NAME...]]

Each benchmark prints one JSON line per measurement: ``{"benchmark", "jdl_s",
"reference", "reference_s", "ratio", "device", "jax_version", ...}`` with
``ratio = jdl / reference`` (lower is better), timed side by side in this one
process after a warm-up, compile time apart.  ``--quick`` is the smoke test
the test suite runs (well under a minute on the CPU; its numbers are not the
ones to report).  With ``--only`` the results file keeps the earlier lines of
the benchmarks not rerun.  Goals and the latest tables: benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

BENCHMARKS = {
    "train_epoch": "train_epoch",  # (1) epochs against flax+optax, loop and scan
    "optimizers": "optim_update",  # (2) optimizer updates against optax
    "loader": "loader",  # (3) the loader against tf.data
    "comparison": "comparison",  # (4) K vmapped configurations against K sequential runs
    "time_to_accuracy": "time_to_accuracy",  # (5) Fashion-MNIST to 92%
    "scaling": "scaling",  # (6) batch size and width
    "cold_start": "cold_start",  # (7) from the call to the result, compilation included
}
QUICK_ARGS = {
    "train_epoch": {"names": ("mlp",)},
    "optimizers": {"names": ["sgd_momentum", "adam"]},
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: small sizes, few repeats")
    parser.add_argument("--only", help=f"comma-separated subset of {', '.join(BENCHMARKS)}")
    parser.add_argument("--out", help="results file (default benchmarks/results/<device>.json)")
    args = parser.parse_args(argv)
    names = list(BENCHMARKS) if not args.only else [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; choose from {', '.join(BENCHMARKS)}")
    if args.quick and not args.only:
        names = [n for n in names if n not in ("time_to_accuracy",)]

    import common

    records, started = [], time.perf_counter()
    for name in names:
        module = importlib.import_module(BENCHMARKS[name])
        extra = QUICK_ARGS.get(name, {}) if args.quick else {}
        begun = time.perf_counter()
        records += common.print_lines(module.run(args.quick, **extra))
        print(f"{name}: {time.perf_counter() - begun:.1f} s", file=sys.stderr)
    device = common.device_name().replace(":", "_")
    suffix = "-quick" if args.quick else ""
    out = Path(args.out) if args.out else HERE / "results" / f"{device}{suffix}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    kept = _earlier_results(out, {r["benchmark"] for r in records}) if args.only else []
    out.write_text(json.dumps({"device": common.device_name(), "seconds": time.perf_counter() - started,
                               "results": kept + records}, indent=1) + "\n")  # fmt: skip
    print(f"wrote {len(records)} results to {out}" + (f" (kept {len(kept)} earlier ones)" if kept else ""),
          file=sys.stderr)  # fmt: skip
    return 0


def _earlier_results(path: Path, replaced: set[str]) -> list[dict]:
    """The results already in ``path`` that this run did not redo (``--only``
    updates a results file rather than dropping the other benchmarks)."""
    if not path.exists():
        return []
    earlier = json.loads(path.read_text()).get("results", [])
    return [r for r in earlier if r.get("benchmark") not in replaced]


if __name__ == "__main__":
    raise SystemExit(main())
