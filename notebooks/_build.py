"""Build the notebooks from their sources in ``notebooks/src`` and run them.

    python notebooks/_build.py                 # build and execute all (JDL_QUICK=1), save with outputs
    python notebooks/_build.py 05 07           # only the notebooks whose names start so
    python notebooks/_build.py --no-execute    # write them without outputs

Each notebook runs in a real Jupyter kernel (``python3``, the Python that runs this script) with
``JDL_QUICK=1`` and ``notebooks/`` as its working directory, one after another, and is saved with its
outputs so that it reads well on the web.  Volatile metadata (execution timings) is not recorded.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
from pathlib import Path

import nbformat

HERE = Path(__file__).resolve().parent

NOTEBOOKS = [
    "01_neural_networks",
    "02_gradient_descent",
    "03_optimizers",
    "04_loss_functions",
    "05_backpropagation",
    "06_data_loaders",
    "07_convolutional_networks",
    "08_comparing_optimizers",
]

METADATA = {
    "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
    "language_info": {"name": "python"},
    "accelerator": "GPU",  # Colab opens it on a GPU runtime
    "colab": {"provenance": []},
}


def build(name: str) -> nbformat.NotebookNode:
    """The notebook ``name`` from ``src/n<NN>_....py`` (its list ``CELLS``), without outputs."""
    sys.path.insert(0, str(HERE))
    module = importlib.import_module(f"src.n{name}")
    cells = []
    for kind, text in module.CELLS:
        if kind == "markdown":
            cells.append(nbformat.v4.new_markdown_cell(text))
        else:
            cells.append(nbformat.v4.new_code_cell(text))
    nb = nbformat.v4.new_notebook(cells=cells, metadata=dict(METADATA))
    for index, cell in enumerate(nb.cells):
        cell["id"] = f"{name[:2]}-{index:02d}"  # stable ids: rebuilding does not churn the diff
    return nb


def execute(nb: nbformat.NotebookNode, cwd: Path, timeout: int = 600) -> nbformat.NotebookNode:
    """Run ``nb`` top to bottom in a fresh ``python3`` kernel with ``JDL_QUICK=1``; raises on a cell error."""
    from nbclient import NotebookClient

    env = dict(os.environ, JDL_QUICK="1")
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", record_timing=False,
                            resources={"metadata": {"path": str(cwd)}})
    client.execute(env=env)
    return nb


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("only", nargs="*", help="build only the notebooks whose names start with these")
    parser.add_argument("--no-execute", action="store_true", help="write the notebooks without running them")
    args = parser.parse_args(argv)
    names = [n for n in NOTEBOOKS if not args.only or any(n.startswith(p) for p in args.only)]
    for name in names:
        nb = build(name)
        start = time.perf_counter()
        if not args.no_execute:
            execute(nb, HERE)
        seconds = time.perf_counter() - start
        nbformat.validate(nb)
        nbformat.write(nb, HERE / f"{name}.ipynb")
        print(f"{name}.ipynb: {len(nb.cells)} cells" + ("" if args.no_execute else f", ran in {seconds:.1f} s"),
              flush=True)


if __name__ == "__main__":
    main()
