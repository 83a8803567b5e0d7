"""The exploration notebook runs top to bottom, unedited, on what a run materialized (as a
newcomer would after the README's first command), in its own Jupyter kernel; and it is stored
without outputs."""

import json
from pathlib import Path

import dagster as dg
import pytest

from fruits_assets_tests.helpers import materialize, run_config

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "explore.ipynb"


def test_notebook_is_stored_without_outputs():
    cells = json.loads(NOTEBOOK.read_text())["cells"]
    code = [c for c in cells if c["cell_type"] == "code"]
    assert code and all(not c["outputs"] and c["execution_count"] is None for c in code)


@pytest.mark.slow
def test_notebook_runs_top_to_bottom_on_materialized_assets(materialized, tmp_path, monkeypatch):
    nbclient = pytest.importorskip("nbclient")
    import nbformat

    # Where `DAGSTER_HOME=... dagster dev` (the README's UI route) puts the assets: the notebook
    # finds them by the same default as a run, with no FRUITS_OUTPUT_ROOT.
    images, materialized_out = materialized
    out = tmp_path / "home" / "fruits_output"
    out.parent.mkdir()
    materialized_out.rename(out)
    # PCA re-fitted for a target other than the default: the notebook must show the stored one.
    refit = dg.AssetSelection.assets("pca_model").downstream()
    assert materialize(out, run_config(images, pca_variance=0.9), selection=refit).success
    monkeypatch.delenv("FRUITS_OUTPUT_ROOT", raising=False)
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("FRUITS_IMAGE_SIZE", "96")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK.parent)}}
    )
    client.execute()  # raises CellExecutionError, with the cell and its traceback, if one fails
    text = "\n".join(
        output.get("text", "") + json.dumps(output.get("data", {}).get("text/plain", ""))
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
    )
    assert f"assets under {out}" in text
    assert "usable images" in text and "Test accuracy" in text
    assert "(target 90%)" in text  # the run's variance target, from the stored model
    diff = float(text.split("re-projected vs CSV, max abs diff:")[1].split()[0].strip('\\n"'))
    assert diff <= 1e-4, diff
    assert "nearest Training images" in text
    images = sum("image/png" in output.get("data", {}) for cell in notebook.cells for output in cell.get("outputs", []))
    assert images >= 3  # the scree plot, the scatter, the confusion matrix (and the images' figure)
