"""Every notebook in notebooks/ runs top to bottom in a real Jupyter kernel with JDL_QUICK=1.

Each is executed from a fresh copy (committed outputs discarded) in a temporary working directory, fails on
any cell error, and must render at least one PNG plot.  The kernel is ``python3``, which jupyter_client
starts with the Python running pytest (checked by the first test).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOKS_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOKS_DIR.glob("[0-9][0-9]_*.ipynb"))
CELL_TIMEOUT_S = 600


def run_notebook(nb, cwd: Path):
    client = nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3", record_timing=False,
                                     resources={"metadata": {"path": str(cwd)}})
    return client.execute()


def test_all_eight_notebooks_are_there():
    assert [p.name[:2] for p in NOTEBOOKS] == [f"{k:02d}" for k in range(1, 9)], [p.name for p in NOTEBOOKS]


def test_the_kernel_runs_the_python_of_the_tests(tmp_path):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("import sys; print(sys.executable)")])
    run_notebook(nb, tmp_path)
    printed = nb.cells[0].outputs[0]["text"].strip()
    assert Path(printed).resolve() == Path(sys.executable).resolve()


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_and_plots(path, tmp_path, monkeypatch):
    monkeypatch.setenv("JDL_QUICK", "1")  # the kernel inherits the environment: smallest sizes
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:  # a fresh copy: no committed outputs can count
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    before = sorted(p.name for p in NOTEBOOKS_DIR.iterdir())
    run_notebook(nb, tmp_path)  # raises CellExecutionError on any error
    assert sorted(p.name for p in NOTEBOOKS_DIR.iterdir()) == before, "the notebook wrote into notebooks/"
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    pngs = [o for o in outputs if o.output_type in ("display_data", "execute_result") and "image/png" in o.data]
    assert pngs, f"{path.name} rendered no PNG plot"
    assert "sizes: quick" in "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
