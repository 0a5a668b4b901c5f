"""experiments/pulse_demo.ipynb runs end to end and shows what it promises."""

from __future__ import annotations

from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

pytestmark = pytest.mark.slow  # a Jupyter kernel and the whole notebook

NOTEBOOK = Path(__file__).resolve().parents[1] / "experiments" / "pulse_demo.ipynb"


def test_notebook_runs(dcgan64):
    del dcgan64  # fetched and converted once here, so the kernel finds the weights ready
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        nb,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},
    )
    client.execute()  # raises CellExecutionError on any failing cell

    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "sample 0: l2=" in text and "success=" in text
    assert "step 49: L2" in text
    assert any("image/png" in o.get("data", {}) for o in outputs), "no inline comparison sheet"
