"""The benchmark harness runs (smoke test: that it ran and produced its lines, never a speed)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIELDS = {"benchmark", "jdl_s", "reference", "reference_s", "ratio", "device", "jax_version"}


def test_quick_benchmarks_produce_their_json_lines(tmp_path):
    out = tmp_path / "results.json"
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--out", str(out)],
                         capture_output=True, text=True, timeout=900, cwd=tmp_path)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    lines = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    names = {line["benchmark"].split("/")[0] for line in lines}
    assert {"train_epoch", "optimizer_update", "loader", "comparison", "scaling", "cold_start"} <= names, names
    assert all(FIELDS <= set(line) for line in lines)
    assert json.loads(out.read_text())["results"] == lines
