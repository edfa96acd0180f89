"""Every notebook in notebooks/ runs end to end (in fast mode, KERAS_LRP_NB_FAST=1) and shows figures."""
import pathlib

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

ROOT = pathlib.Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
SHIPPED = (ROOT / "models" / "sst5_bilstm.json").is_file()
NEEDS_SHIPPED_MODEL = {"sentiment_lrp.ipynb", "evaluation.ipynb"}


def test_the_four_notebooks_are_there():
    assert {p.name for p in NOTEBOOKS} >= {"sentiment_lrp.ipynb", "keras_imdb_style.ipynb", "time_series.ipynb",
                                           "evaluation.ipynb"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_and_shows_figures(path, monkeypatch):
    if path.name in NEEDS_SHIPPED_MODEL and not SHIPPED:
        pytest.skip("the shipped SST model is not in models/")
    monkeypatch.setenv("KERAS_LRP_NB_FAST", "1")
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "3")
    nb = nbformat.read(path, as_version=4)
    # Raises CellExecutionError (with the failing cell and its traceback) on any error.
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}}).execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert images, f"{path.name} displayed no figure"


@pytest.mark.skipif(not SHIPPED, reason="the shipped SST model is not in models/")
def test_explain_text_cell_shows_a_heatmap_with_tokens_and_class_names():
    """The sentiment notebook's `e = keras_lrp.explain_text(sst, [...]); e[0]` cell renders as HTML with
    the tokens and the class names, and `e.to_pandas()` gives one row per token."""
    path = ROOT / "notebooks" / "sentiment_lrp.ipynb"
    nb = nbformat.read(path, as_version=4)
    cells = [c for c in nb.cells if c.cell_type == "code" and "explain_text(" in c.source]
    assert cells, "the notebook has no explain_text cell"
    first = next(i for i, c in enumerate(nb.cells) if c is cells[0])
    setup = [c for c in nb.cells[:first] if c.cell_type == "code"][:2]     # imports, load_pretrained
    nb.cells = setup + cells + [nb.cells[first + 1]]
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}}).execute()
    html = "".join(o.get("data", {}).get("text/html", "") for o in nb.cells[-2].outputs)
    for token in ("gorgeous", "witty", "movie"):
        assert token in html
    assert "positive" in html          # the predicted class's name in the title
    table = "".join(o.get("data", {}).get("text/plain", "") for o in nb.cells[-1].outputs)
    assert "gorgeous" in table and "relevance" in table
