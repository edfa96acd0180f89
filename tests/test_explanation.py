"""Tests of keras_lrp.explanation.Explanation: indexing, summary, convergence delta, tables,
HTML, figures and files, and the progress bar of explain()."""
import json
import os
import struct
import subprocess
import sys

import keras
import numpy as np
import pytest
from matplotlib.figure import Figure

import keras_lrp
from keras_lrp.explanation import Explanation, concatenate

T, FEATURES, UNITS, CLASSES = 6, 4, 5, 3
NAMES = ["negative", "neutral", "positive"]


@pytest.fixture(autouse=True)
def _close_figures():
    """Explanation.plot() hands its figures to pyplot: close them after each test."""
    yield
    import matplotlib.pyplot as plt

    plt.close("all")


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(7)
    m = keras.Sequential([keras.Input((None, FEATURES)), keras.layers.LSTM(UNITS),
                          keras.layers.Dense(CLASSES, activation="softmax")])
    rng = np.random.default_rng(7)
    m.set_weights([w + (0.3 * rng.standard_normal(w.shape) if w.ndim == 1 else 0) for w in m.get_weights()])
    return m


@pytest.fixture(scope="module")
def x():
    return np.random.default_rng(3).standard_normal((5, T, FEATURES))


@pytest.fixture(scope="module")
def conserving(model, x):
    return keras_lrp.explain(model, x, eps=0.0, bias_factor=1.0, dtype="float64")


def _with_tokens(e):
    toks = [[f"w{i}_{t}" for t in range(T)] for i in range(len(e))]
    oov = [np.arange(T) == 2 for _ in range(len(e))]
    e2 = Explanation(e.relevance, e.scores, e.target, e.rest, tokens=toks, class_names=NAMES, oov=oov,
                     method=e.method, output_activation=e.output_activation)
    return e2


def _png_size(path):
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", head[16:24])


# ----------------------------------------------------------------------------- numbers


def test_convergence_delta_is_zero_when_conserving(conserving, x):
    e = conserving
    assert e.relevance.dtype == np.float64
    delta = e.convergence_delta
    assert delta.shape == (len(x),)
    # the definition, written out: score of the target - relevance sum - rest
    by_hand = e.scores[np.arange(len(x)), e.target] - e.relevance.sum(axis=(1, 2)) - e.rest
    np.testing.assert_allclose(delta, by_hand, rtol=0, atol=1e-12)
    assert np.all(np.abs(delta) <= 1e-8 * np.abs(e.explained_score))


def test_convergence_delta_is_the_absorbed_share_otherwise(model, x):
    e = keras_lrp.explain(model, x, eps=0.1, bias_factor=0.0, dtype="float64")
    # eps > 0 and dropped biases absorb part of the score: the delta says how much
    assert np.abs(e.convergence_delta).max() > 1e-3


def test_method_and_probabilities_recorded(model, x, conserving):
    assert conserving.method == "lrp" and conserving.output_activation == "softmax"
    np.testing.assert_allclose(conserving.probabilities, model.predict(x, verbose=0), rtol=1e-5, atol=1e-6)
    gi = keras_lrp.explain(model, x, method="gi")
    assert gi.method == "gi"


# ----------------------------------------------------------------------------- batch protocol


def test_indexing_int_slice_list_mask(conserving):
    e = conserving
    one = e[1]
    assert isinstance(one, Explanation) and len(one) == 1
    np.testing.assert_array_equal(one.relevance[0], e.relevance[1])
    np.testing.assert_array_equal(e[-1].scores[0], e.scores[-1])
    part = e[1:4]
    assert len(part) == 3
    np.testing.assert_array_equal(part.target, e.target[1:4])
    np.testing.assert_array_equal(part.word_relevance, e.word_relevance[1:4])
    picked = e[[4, 0]]
    np.testing.assert_array_equal(picked.rest, e.rest[[4, 0]])
    mask = np.array([True, False, True, False, False])
    np.testing.assert_array_equal(e[mask].explained_score, e.explained_score[mask])
    assert [len(s) for s in e] == [1] * len(e)
    with pytest.raises(IndexError, match="out of range"):
        e[5]
    with pytest.raises(TypeError, match="index an Explanation"):
        e["a"]


def test_indexing_carries_tokens_and_trims_to_length():
    rel = np.zeros((2, 4, 3))
    rel[0, :2] = 1.0
    rel[1] = 2.0
    e = Explanation(rel, np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([0, 1]), np.zeros(2),
                    tokens=[["a", "b"], ["c", "d", "e", "f"]], class_names=["n", "p"])
    np.testing.assert_array_equal(e.lengths, [2, 4])
    first = e[0]
    assert first.tokens == [["a", "b"]] and first.relevance.shape == (1, 2, 3)
    assert e[1].relevance.shape == (1, 4, 3) and e[1].tokens == [["c", "d", "e", "f"]]


def test_repr_is_short_and_names_classes(conserving):
    e = _with_tokens(conserving)
    text = repr(e)
    assert len(text) < 300
    assert text.startswith("Explanation(5 samples, time=6, features=4, target=[")
    assert NAMES[int(e.target[0])] in text and "..." in text and "method=lrp" in text
    big = Explanation(np.zeros((10000, 50, 60), np.float32), np.zeros((10000, 5)), np.zeros(10000, int),
                      np.zeros(10000))
    assert len(repr(big)) < 300 and "10000 samples" in repr(big)


def test_bad_metadata_is_refused(conserving):
    e = conserving
    with pytest.raises(ValueError, match="one list of tokens per sample"):
        Explanation(e.relevance, e.scores, e.target, e.rest, tokens=[["a"]])
    with pytest.raises(ValueError, match="one name per output"):
        Explanation(e.relevance, e.scores, e.target, e.rest, class_names=["a", "b"])


def test_multi_input_relevance_list():
    """Multi-input models give relevance as a list: sums cover all inputs, pictures ask which."""
    r1, r2 = np.ones((2, 3, 4)), np.full((2, 5, 1), 2.0)
    e = Explanation([r1, r2], np.array([[20.0, 0.0], [0.0, 22.0]]), np.array([0, 1]), np.array([0.0, 1.0]))
    assert e.n_inputs == 2
    np.testing.assert_allclose(e.convergence_delta, [20 - 12 - 10, 22 - 12 - 10 - 1])
    assert [w.shape for w in e.word_relevance] == [(2, 3), (2, 5)]
    assert [r.shape for r in e[1].relevance] == [(1, 3, 4), (1, 5, 1)]
    assert "inputs=2" in repr(e)
    with pytest.raises(ValueError, match="input_index"):
        e.to_records()
    assert len(e.to_records(input_index=1)) == 2 * 5


def test_concatenate_pads_and_reorders():
    a = Explanation(np.ones((1, 2, 3)), np.array([[1.0, 2.0]]), np.array([1]), np.zeros(1), tokens=[["x", "y"]])
    b = Explanation(np.full((2, 4, 3), 2.0), np.array([[3.0, 4.0], [5.0, 6.0]]), np.array([0, 1]), np.zeros(2),
                    tokens=[list("abcd"), list("efgh")])
    c = concatenate([a, b], order=np.array([1, 0, 2]))
    assert c.relevance.shape == (3, 4, 3)
    assert c.tokens == [list("abcd"), ["x", "y"], list("efgh")]
    np.testing.assert_array_equal(c.lengths, [4, 2, 4])
    np.testing.assert_array_equal(c.relevance[1, 2:], 0.0)


# ----------------------------------------------------------------------------- tables


def test_to_records_one_row_per_token(conserving):
    e = _with_tokens(conserving)
    rows = e.to_records()
    assert len(rows) == len(e) * T
    r = rows[T + 2]  # sample 1, position 2
    assert (r["sample"], r["position"], r["token"], r["oov"]) == (1, 2, "w1_2", True)
    assert r["relevance"] == pytest.approx(float(e.word_relevance[1, 2]))
    assert r["class_name"] == NAMES[r["target"]] and r["target"] == int(e.target[1])
    plain = conserving.to_records()
    assert plain[0]["token"] is None and plain[0]["class_name"] == str(int(conserving.target[0]))


def test_to_pandas(conserving):
    pd = pytest.importorskip("pandas")
    df = _with_tokens(conserving).to_pandas()
    assert isinstance(df, pd.DataFrame) and len(df) == len(conserving) * T
    assert {"sample", "position", "token", "relevance", "target", "class_name"} <= set(df.columns)


def test_to_pandas_without_pandas_says_how(conserving, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "pandas", None)  # import fails
    with pytest.raises(ImportError, match="pip install pandas"):
        conserving.to_pandas()


# ----------------------------------------------------------------------------- pictures and files


def test_html_has_tokens_classes_probabilities_and_oov(conserving):
    e = _with_tokens(conserving)
    page = e.html()
    for i in range(len(e)):
        assert f"w{i}_0" in page
    pred = int(e.prediction[0])
    p = e.probabilities[0, pred]
    assert f"predicted {NAMES[pred]} (p={p:.2f})" in page
    assert 'data-oov="1"' in page and "unknown to the vocabulary" in page
    assert "each sample on its own colour scale" in page
    assert "shared by all samples" in e.html(scale="shared")
    one = e[0]._repr_html_()
    assert "w0_0" in one and "w1_0" not in one
    with pytest.raises(ValueError, match="scale must be"):
        e.html(scale="same")


def test_html_caps_samples_and_escapes():
    e = Explanation(np.ones((3, 1, 1)), np.zeros((3, 2)), np.zeros(3, int), np.zeros(3),
                    tokens=[["<b>"]] * 3, class_names=["<x>", "y"])
    page = e.html(max_samples=2)
    assert "<b>" not in page.replace("<b>", "", 0) or "&lt;b&gt;" in page
    assert "&lt;x&gt;" in page and "1 more samples" in page


def test_plot_word_and_time_feature(conserving):
    fig = _with_tokens(conserving).plot()
    assert isinstance(fig, Figure)
    texts = [t.get_text() for ax in fig.axes for t in ax.texts] + [t.get_text() for t in fig.texts]
    assert any("w0_2*" == t for t in texts)  # unknown words marked as in the terminal
    assert any("own colour scale" in t for t in texts)
    assert any("predicted" in t and "p=" in t for t in texts)
    labels = [ax.get_xlabel() for ax in fig.axes]
    assert "relevance (this panel)" in labels  # every panel has its colour bar
    fig = conserving.plot(scale="shared", max_samples=2)
    assert "share one colour scale" in fig._suptitle.get_text()
    assert any(ax.get_ylabel() == "relevance (shared scale)" for ax in fig.axes)


# A matplotlib backend that records what plt.show() shows (a script's window, without a display).
RECORDER_BACKEND = """
from matplotlib.backend_bases import FigureManagerBase
from matplotlib.backends.backend_agg import FigureCanvasAgg
shown = []
class FigureManager(FigureManagerBase):
    def show(self):
        shown.append(self.canvas.figure)
class FigureCanvas(FigureCanvasAgg):
    manager_class = FigureManager
"""

SCRIPT = """
import sys
import numpy as np, matplotlib
matplotlib.use("module://recorder_backend")
import matplotlib.pyplot as plt
import recorder_backend
from keras_lrp import Explanation
e = Explanation(relevance=np.ones((2, 3, 2)), scores=np.ones((2, 2)), target=np.zeros(2, int),
                rest=np.zeros(2), tokens=[["a", "b", "c"], ["d", "e", "f"]])
fig = e[0].plot()
plt.show()
assert recorder_backend.shown == [fig], recorder_backend.shown
fig.savefig(sys.argv[1] + "/fig.png")
plt.close(fig)
e.save(sys.argv[1] + "/saved.png")          # a script that only writes files: nothing left open
assert plt.get_fignums() == [], plt.get_fignums()
print("OK")
"""


def test_plot_in_a_script_is_shown_by_plt_show_and_saved_by_savefig(tmp_path):
    """Issue 22: e[0].plot() in a script showed nothing: the figure was not known to pyplot."""
    (tmp_path / "recorder_backend.py").write_text(RECORDER_BACKEND)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path)] + sys.path))
    env.pop("MPLBACKEND", None)
    r = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], capture_output=True, text=True, env=env,
                       timeout=120)
    assert r.returncode == 0 and "OK" in r.stdout, r.stderr
    for name in ("fig.png", "saved.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"


def test_plot_shows_once_in_jupyter(tmp_path, monkeypatch):
    """In Jupyter (inline backend) the figure shows once whether it is the cell's value, shown with
    plt.show(), or only made; a figure from an earlier cell shows again as a value."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    setup = ("import numpy as np\nfrom keras_lrp import Explanation\n"
             "e = Explanation(relevance=np.ones((2, 3, 2)), scores=np.ones((2, 2)), target=np.zeros(2, int), "
             "rest=np.zeros(2), tokens=[['a', 'b', 'c'], ['d', 'e', 'f']])")
    cells = [setup, "e[0].plot()", "import matplotlib.pyplot as plt\ne[0].plot(); plt.show()", "fig = e.plot()",
             "fig", "e.save('e.png'); len(plt.get_fignums())"]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    monkeypatch.delenv("MPLBACKEND", raising=False)      # the kernel's own backend, as a user has it
    nbclient.NotebookClient(nb, timeout=120, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    pngs = [sum("image/png" in o.get("data", {}) for o in c.outputs) for c in nb.cells]
    assert pngs == [0, 1, 1, 1, 1, 0], pngs
    assert nb.cells[-1].outputs[0]["data"]["text/plain"] == "0" and (tmp_path / "e.png").is_file()


def test_sensitivity_uses_a_sequential_map(model, x):
    e = keras_lrp.explain(model, x[:2], method="sa")
    assert (e.relevance >= 0).all()
    fig = e.plot()
    image = fig.axes[0].images[0]
    assert image.norm.vmin == 0.0 and image.cmap.name == "lrp_reds"


def test_save_png_html_json_round_trip(conserving, tmp_path):
    e = _with_tokens(conserving)
    png = e.save(tmp_path / "e.png")
    w, h = _png_size(png)
    assert w > 500 and h > 200
    html = e.save(tmp_path / "e.html", scale="shared")
    text = html.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>") and "w4_5" in text and "All sentences share one colour scale" in text
    path = e.save(tmp_path / "e.json")
    data = json.loads(path.read_text())
    assert data["class_names"] == NAMES and data["tokens"][0][0] == "w0_0"
    assert {"relevance", "scores", "target", "rest", "convergence_delta"} <= set(data)
    back = Explanation.load(path)
    np.testing.assert_array_equal(back.relevance, e.relevance)  # float64 survives JSON exactly
    np.testing.assert_array_equal(back.scores, e.scores)
    np.testing.assert_array_equal(back.target, e.target)
    np.testing.assert_array_equal(back.rest, e.rest)
    assert back.tokens == e.tokens and back.class_names == NAMES and back.method == "lrp"
    assert [o.tolist() for o in back.oov] == [o.tolist() for o in e.oov]
    with pytest.raises(ValueError, match=r"\.png, \.html or \.json"):
        e.save(tmp_path / "e.txt")
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="not an explanation file"):
        Explanation.load(tmp_path / "bad.json")


def test_json_round_trip_of_ragged_float32(tmp_path):
    rel = np.zeros((2, 3, 2), np.float32)
    rel[0, :1] = 0.1
    rel[1] = 0.3
    e = Explanation(rel, np.ones((2, 2), np.float32), np.array([0, 1]), np.zeros(2, np.float32),
                    tokens=[["a"], ["b", "c", "d"]])
    back = Explanation.load(e.save(tmp_path / "r.json"))
    assert back.relevance.dtype == np.float32
    np.testing.assert_array_equal(back.relevance, rel)
    np.testing.assert_array_equal(back.lengths, [1, 3])


# ----------------------------------------------------------------------------- progress


def test_progress_bar_rule(model, x, capsys, monkeypatch):
    from keras_lrp.explainer import progress_wanted

    assert not progress_wanted(None, 10, 256)  # one batch: never by default
    assert progress_wanted(True, 10, 256) and not progress_wanted(False, 10**6, 1)
    monkeypatch.setattr("sys.stdout.isatty", lambda: True, raising=False)
    assert progress_wanted(None, 300, 256)
    keras_lrp.explain(model, x, batch_size=2, verbose=True)
    out = capsys.readouterr().out
    assert "5/5" in out and out.count("5/5") == 1  # one bar, finished once
    keras_lrp.explain(model, x, batch_size=2, verbose=False)
    assert capsys.readouterr().out == ""
    with pytest.raises(TypeError, match="verbose"):
        keras_lrp.explain(model, x, verbose="yes")


def test_titles_of_classifiers_and_regressors():
    cls = Explanation(np.zeros((1, 2, 1)), np.array([[0.0, 2.0]]), np.array([0]), np.zeros(1),
                      class_names=["neg", "pos"], output_activation="softmax")
    p = np.exp(2.0) / (1 + np.exp(2.0))
    assert cls.title(0) == f"predicted pos (p={p:.2f}); relevance for neg (p={1 - p:.2f}, score +0)"
    reg = Explanation(np.zeros((1, 2, 1)), np.array([[0.25]]), np.array([0]), np.zeros(1))
    assert reg.title(0) == "relevance for the output (score +0.25)"
