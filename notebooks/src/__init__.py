"""Sources of the notebooks: one module per notebook, each a list ``CELLS`` of markdown and code cells.

``notebooks/_build.py`` turns them into ``.ipynb`` files and runs them.
"""
