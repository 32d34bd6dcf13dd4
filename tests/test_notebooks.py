"""Execute every notebook in ``notebooks/`` headless, in smoke mode, and fail on any cell error.

The kernel runs with this test's own interpreter (whatever ``python3`` kernelspec happens to be installed) and
finds the package through ``PYTHONPATH`` (the repository root), so the test needs neither an installed kernel
nor an installed pyroprune.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
from jupyter_client import KernelManager  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
CELL_TIMEOUT_S = 300


class _ThisInterpreterKernel(KernelManager):
    """A kernel manager that launches ipykernel with ``sys.executable``."""

    def format_kernel_cmd(self, extra_arguments=None):
        return [
            sys.executable,
            "-m",
            "ipykernel_launcher",
            "-f",
            self.connection_file,
            *(extra_arguments or []),
        ]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path: Path):
    nb = nbformat.read(path, as_version=4)
    # With the Agg backend plt.show() draws nothing inline; check, in the same kernel, that figures were made.
    nb.cells.append(
        nbformat.v4.new_code_cell(
            "import matplotlib.pyplot as _plt\nassert _plt.get_fignums(), 'the notebook drew no figure'"
        )
    )
    env = dict(os.environ)
    env["PYROPRUNE_SMOKE"] = "1"
    env["MPLBACKEND"] = "Agg"
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    client = nbclient.NotebookClient(
        nb,
        timeout=CELL_TIMEOUT_S,
        kernel_name="python3",
        kernel_manager_class=_ThisInterpreterKernel,
        resources={"metadata": {"path": str(path.parent)}},
        allow_errors=False,
    )
    client.execute(env=env)  # raises CellExecutionError on the first failing cell
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors, errors
