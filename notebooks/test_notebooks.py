"""Runs every notebook of this folder top to bottom with its small settings, each in a fresh kernel in a
temporary working directory, under a time limit per notebook (CI: ``python -m pytest notebooks``).  A cell
that raises fails the notebook's test; so does a notebook stored with outputs (strip them before
committing: ``python -m pytest notebooks`` says which)."""
import os
import pathlib
import time

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted(pathlib.Path(__file__).parent.glob("*.ipynb"))
TIME_LIMIT_S = 180  # per notebook, kernel start included; each takes well under a minute on a 2-core CPU


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[path.stem for path in NOTEBOOKS])
def test_notebook_runs_top_to_bottom(path, tmp_path):
    notebook = nbformat.read(path, as_version=4)
    stored = [index for index, cell in enumerate(notebook.cells)
              if cell.cell_type == "code" and (cell.get("outputs") or cell.get("execution_count"))]
    assert not stored, f"{path.name}: cells {stored} hold stored outputs; strip them before committing"
    client = NotebookClient(notebook, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    deadline = time.monotonic() + TIME_LIMIT_S
    # as a user runs it: the devices JAX finds, not the virtual CPU devices CI forces for the test suite
    env = {name: value for name, value in os.environ.items() if name != "XLA_FLAGS"}
    with client.setup_kernel(env=env):
        for index, cell in enumerate(notebook.cells):
            client.timeout = max(1, int(deadline - time.monotonic()))  # what is left of the notebook's limit
            client.execute_cell(cell, index)
