"""Every notebook in notebooks/ runs headless without an error cell, with small parameters.

Convention for notebook authors: put the knobs in a cell tagged ``parameters`` and list small
values for tests in the notebook metadata, e.g. ``"msa_lab": {"test_parameters": {"SEQ_LEN": 4096}}``.
The test inserts a cell assigning them right after the parameters cell (as papermill does).
Notebooks are committed with outputs stripped; that is checked too.
"""
import os
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="needs nbformat: pip install 'msa-lab[dev]'")
nbclient = pytest.importorskip("nbclient", reason="needs nbclient: pip install 'msa-lab[dev]'")

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))

# The kernel must be this interpreter (the venv with msa_lab), not whatever "python" is on PATH.
_KERNEL_CHECK = (
    "import sys\n"
    f"_want = {sys.prefix!r}\n"
    "assert sys.prefix == _want, (f'notebook kernel runs {sys.executable}, not the test venv {_want}; '\n"
    "    'install the venv kernel with: python -m ipykernel install --sys-prefix')"
)


def _prepare(nb):
    params = nb.metadata.get("msa_lab", {}).get("test_parameters", {})
    cells = list(nb.cells)
    where = [i for i, c in enumerate(cells) if "parameters" in c.get("metadata", {}).get("tags", [])]
    if params:
        assert where, "metadata msa_lab.test_parameters is set but no cell is tagged 'parameters'"
        src = "\n".join(f"{k} = {v!r}" for k, v in params.items())
        inj = nbformat.v4.new_code_cell(src, metadata={"tags": ["injected-parameters"]})
        cells.insert(where[0] + 1, inj)
    cells.insert(0, nbformat.v4.new_code_cell(_KERNEL_CHECK))
    nb.cells = cells
    return nb


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_is_committed_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    dirty = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and (c.outputs or c.execution_count)]
    assert not dirty, (f"{path.name}: cells {dirty} have outputs; strip them "
                       f"(e.g. jupyter nbconvert --clear-output --inplace)")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs_without_errors(path):
    nb = _prepare(nbformat.read(path, as_version=4))
    client = nbclient.NotebookClient(
        nb, kernel_name="python3", timeout=600, resources={"metadata": {"path": str(NOTEBOOK_DIR)}},
    )
    # Run as a user would: tests/conftest.py sets TRITON_INTERPRET=1 for the in-process kernel tests,
    # which would put the notebooks on the (slow) Triton interpreter.
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    try:
        client.execute(env=env)
    except nbclient.exceptions.CellExecutionError as e:
        pytest.fail(f"{path.name} failed:\n{str(e)[-3000:]}")
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors, f"{path.name}: error outputs {[(o.ename, o.evalue) for o in errors]}"
    ran = [c for c in nb.cells if c.cell_type == "code" and c.execution_count]
    assert len(ran) == sum(c.cell_type == "code" for c in nb.cells)
