"""tpu/colab_demo.ipynb: saved clean, and it runs top to bottom at its tiny size in this venv's kernel,
showing the summary table, the plots and the selected-token page inline."""

import os
import sys

import nbformat
import pytest
from nbclient import NotebookClient

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(REPO, "tpu", "colab_demo.ipynb")


def test_notebook_is_valid_and_saved_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == "python3"
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, cell.source[:80]


@pytest.mark.slow
def test_notebook_runs_tiny(tmp_path, monkeypatch):
    workdir = tmp_path / "nb"
    monkeypatch.setenv("RHO_JAX_NOTEBOOK_TINY", "1")
    monkeypatch.setenv("RHO_JAX_NOTEBOOK_WORKDIR", str(workdir))
    monkeypatch.delenv("XLA_FLAGS", raising=False)  # one CPU device, as on a Colab CPU runtime
    nb = nbformat.read(NOTEBOOK, as_version=4)
    # 'python3' resolves to this interpreter: jupyter_client swaps a kernelspec's bare `python` for sys.executable.
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": REPO}}).execute()

    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    stdout = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "nothing installed" in stdout  # everything importable: no pip, no clone
    assert sys.executable in stdout  # the kernel is this venv's Python
    assert f"workdir: {workdir}" in stdout
    shown = [o for o in outputs if o.output_type == "display_data"]
    pngs = [o for o in shown if "image/png" in o.data]
    report = workdir / "report"
    assert len(pngs) == len(list(report.glob("*.png"))) >= 3
    markdown = "".join(o.data.get("text/markdown", "") for o in shown)
    assert "| CLM | SLM | random |" in markdown and "processed tokens" in markdown
    html = "".join(o.data.get("text/html", "") for o in shown)
    assert "<iframe srcdoc=" in html and "class=&quot;sel&quot;" in html  # the selected-token page, escaped
