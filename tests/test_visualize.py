"""Tests of keras_lrp.visualize: colour semantics, HTML, ANSI, figures, validation."""
import re
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from matplotlib.figure import Figure

from keras_lrp import visualize as viz

REPO = Path(__file__).resolve().parent.parent

WORDS = ["a", "truly", "dreadful", ",", "boring", "film"]
SCORES = [0.0, 0.5, -2.0, 0.0, -1.0, 1.0]


def _span_colors(fragment):
    """(background hex, text hex, title) per span, in order."""
    return re.findall(
        r'<span title="([^"]*)"[^>]*background-color:(#[0-9a-f]{6});color:(#[0-9a-f]{6})',
        fragment,
    )


def _hex_to_rgb(h):
    return tuple(int(h[i:i + 2], 16) for i in (1, 3, 5))


def _png_size(path):
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", head[16:24])


# ----------------------------------------------------------------------------- colours


def test_colour_semantics_sign_zero_and_saturation():
    rgba = viz.relevance_to_rgba([2.0, 1.0, 0.0, -1.0, -2.0])
    full_red, half_red, white, half_blue, full_blue = rgba[:, :3]
    np.testing.assert_allclose(white, [1.0, 1.0, 1.0])
    np.testing.assert_allclose(full_red, [1.0, 0.0, 0.0])  # largest |score|: full saturation
    np.testing.assert_allclose(full_blue, [0.0, 0.0, 1.0])
    assert half_red[0] > half_red[2] and half_red[1] > 0.3  # red dominant, paler than full
    assert half_blue[2] > half_blue[0] and half_blue[0] > 0.3
    # the negative extreme saturates fully when it is the largest |score|
    np.testing.assert_allclose(viz.relevance_to_rgba([0.5, -3.0])[1, :3], [0.0, 0.0, 1.0])


def test_explicit_scale_clips_and_shared_scale_makes_smaller_sentence_paler():
    small, big = [0.5, -0.25], [2.0, -1.0]
    own = viz.relevance_to_rgba(small)
    scale = viz.shared_scale([small, big])
    assert scale == 2.0
    shared = viz.relevance_to_rgba(small, scale=scale)
    np.testing.assert_allclose(own[0, :3], [1.0, 0.0, 0.0])  # alone: full red
    assert shared[0, 1] > 0.5 and shared[0, 0] == 1.0  # shared: pale red
    assert shared[1, 0] > own[1, 0]  # negative word paler too
    # beyond the scale saturates
    np.testing.assert_allclose(viz.relevance_to_rgba([5.0], scale=1.0)[0, :3], [1.0, 0.0, 0.0])


def test_all_zero_scores_are_white_without_division_by_zero():
    np.testing.assert_allclose(viz.relevance_to_rgba([0.0, 0.0])[:, :3], 1.0)
    assert viz.shared_scale([[0.0], []]) == 0.0


def test_rescale_score_by_abs_seed_semantics():
    assert viz.rescale_score_by_abs(2.0, 2.0, -1.0) == 1.0
    assert viz.rescale_score_by_abs(-1.0, 2.0, -1.0) == 0.25
    assert viz.rescale_score_by_abs(-4.0, 1.0, -4.0) == 0.0
    assert viz.rescale_score_by_abs(0.0, 0.0, 0.0) == 0.5


def test_text_colour_is_readable_on_dark_backgrounds():
    assert viz.text_color_for((0.0, 0.0, 1.0)) == "#ffffff"
    assert viz.text_color_for((1.0, 0.0, 0.0)) == "#ffffff"
    assert viz.text_color_for((1.0, 1.0, 1.0)) == "#000000"
    assert viz.text_color_for((1.0, 0.8, 0.8)) == "#000000"
    assert viz.rgb_to_hex((1.0, 0.5, 0.0, 1.0)) == "#ff8000"


def test_other_colormap_and_unknown_colormap():
    rgba = viz.relevance_to_rgba([1.0, -1.0], cmap_name="RdBu_r")
    assert rgba[0, 0] > rgba[0, 2] and rgba[1, 2] > rgba[1, 0]
    with pytest.raises(ValueError, match="unknown matplotlib colormap 'nope'"):
        viz.html_heatmap(["a"], [1.0], cmap_name="nope")


# ----------------------------------------------------------------------------- HTML


def test_html_heatmap_colours_and_tooltips():
    frag = viz.html_heatmap(WORDS, SCORES)
    spans = _span_colors(frag)
    assert [t.split(":")[0] for t, _, _ in spans] == WORDS
    by_word = {t.split(":")[0]: (_hex_to_rgb(bg), fg, t) for t, bg, fg in spans}
    assert by_word["a"][0] == (255, 255, 255)
    assert by_word["dreadful"][0] == (0, 0, 255) and by_word["dreadful"][1] == "#ffffff"
    r, g, b = by_word["film"][0]
    assert r == 255 and g < 255 and b < 255 and g == b  # 1.0 of max 2.0: half red
    r, g, b = by_word["boring"][0]
    assert b == 255 and r < 255
    assert by_word["dreadful"][2] == "dreadful: -2"
    assert by_word["truly"][2] == "truly: +0.5"


def test_html_heatmap_escapes_words():
    frag = viz.html_heatmap(['<script>alert("x")</script>', "a&b", '"q"'], [1.0, -1.0, 0.0])
    assert "<script>" not in frag
    assert "&lt;script&gt;alert" in frag
    assert "a&amp;b" in frag
    assert 'title="&quot;q&quot;: +0"' in frag
    # every tag we emit is ours: div, span, bdi
    assert set(re.findall(r"<(\w+)", frag)) == {"div", "span", "bdi"}


def test_html_page_shared_scale_titles_and_file(tmp_path):
    small = (["ok", "fine"], [0.5, -0.5])
    big = (["great", "awful"], [2.0, -2.0])
    out = tmp_path / "page.html"
    page = viz.html_page([small, big], scale="shared", titles=["<small>", "big"], path=out)
    assert out.read_text(encoding="utf-8") == page
    assert page.startswith("<!DOCTYPE html>") and '<meta charset="utf-8">' in page
    assert "&lt;small&gt;" in page and "<small>" not in page
    spans = {t.split(":")[0]: _hex_to_rgb(bg) for t, bg, _ in _span_colors(page)}
    assert spans["great"] == (255, 0, 0)
    assert spans["ok"][0] == 255 and spans["ok"][1] > 150  # paler: on the shared scale
    own = {t.split(":")[0]: _hex_to_rgb(bg) for t, bg, _ in _span_colors(viz.html_page([small, big]))}
    assert own["ok"] == (255, 0, 0)  # per-sentence scale
    assert page.count('class="lrp-legend"') == 1
    assert viz.html_page([small, big]).count('class="lrp-legend"') == 2


def test_html_page_validation():
    with pytest.raises(ValueError, match="one entry per sentence"):
        viz.html_page([(["a"], [1.0])], titles=["x", "y"])
    with pytest.raises(ValueError, match=r"sentences\[1\]: words and scores must have the same length"):
        viz.html_page([(["a"], [1.0]), (["a", "b"], [1.0])])
    with pytest.raises(ValueError, match="'shared'"):
        viz.html_page([(["a"], [1.0])], scale="global")
    with pytest.raises(ValueError, match=r"sentences\[0\] must be a \(words, scores\) pair"):
        viz.html_page([["a", "b", "c"]])


# ----------------------------------------------------------------------------- validation


@pytest.mark.parametrize("fn", [viz.html_heatmap, viz.ansi_heatmap, viz.plot_word_heatmap])
def test_mismatched_lengths_and_non_finite_scores(fn):
    with pytest.raises(ValueError, match="same length, got 2 words and 3 scores"):
        fn(["a", "b"], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match=r"NaN or inf at position\(s\) 1"):
        fn(["a", "b"], [1.0, float("nan")])
    with pytest.raises(ValueError, match="NaN or inf"):
        fn(["a"], [np.inf])


def test_words_as_single_string_and_2d_scores_and_bad_scale():
    with pytest.raises(TypeError, match="not a single string"):
        viz.html_heatmap("a truly dreadful film", [1.0] * 4)
    with pytest.raises(ValueError, match=r"relevance.sum\(axis=-1\)"):
        viz.html_heatmap(["a", "b"], np.ones((2, 60)))
    with pytest.raises(ValueError, match="scale must be a positive finite number"):
        viz.html_heatmap(["a"], [1.0], scale=0)
    with pytest.raises(ValueError, match="scale must be a positive finite number"):
        viz.ansi_heatmap(["a"], [1.0], scale=float("nan"))
    with pytest.raises(ValueError, match="sequence of numbers"):
        viz.html_heatmap(["a"], ["high"])


def test_empty_sentence_is_allowed():
    assert "<span" not in viz.html_heatmap([], [])
    assert viz.ansi_heatmap([], []) == ""


# ----------------------------------------------------------------------------- ANSI


def test_ansi_heatmap_colour_and_plain():
    out = viz.ansi_heatmap(WORDS, SCORES)
    assert "\x1b[48;2;255;0;0m" not in out  # film is 1.0 of 2.0, not full red
    assert "\x1b[48;2;0;0;255m\x1b[38;2;255;255;255mdreadful\x1b[0m" in out
    assert "\x1b[48;2;255;255;255m\x1b[38;2;0;0;0ma\x1b[0m" in out
    assert out.count("\x1b[0m") == len(WORDS)
    plain = viz.ansi_heatmap(WORDS, SCORES, color=False)
    assert "\x1b" not in plain
    assert plain.split() == ["a[+0]", "truly[+0.5]", "dreadful[-2]", ",[+0]", "boring[-1]", "film[+1]"]
    shared = viz.ansi_heatmap(["x"], [1.0], scale=2.0)
    assert re.search(r"\x1b\[48;2;255;(\d+);\1m", shared).group(1) != "0"
    assert "[+1]" in viz.ansi_heatmap(["x"], [1.0], show_scores=True)


def test_ansi_color_supported(monkeypatch):
    class Tty:
        def isatty(self):
            return True

    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm-256color")
    assert viz.ansi_color_supported(Tty())
    assert not viz.ansi_color_supported(object())
    monkeypatch.setenv("NO_COLOR", "1")
    assert not viz.ansi_color_supported(Tty())


# ----------------------------------------------------------------------------- figures


def test_plot_word_heatmap_png(tmp_path):
    words = "this film is neither funny nor charming , but the cast try hard".split() * 3
    scores = np.linspace(-1.0, 1.5, len(words))
    fig = viz.plot_word_heatmap(words, scores, title="pred: negative")
    assert isinstance(fig, Figure)
    w_in, h_in = fig.get_size_inches()
    assert w_in == 8.0 and 1.5 < h_in < 6.0  # wrapped to a few lines
    path = viz.save_png(fig, tmp_path / "words.png", dpi=100)
    assert path.stat().st_size > 5000
    assert _png_size(path) == (800, round(h_in * 100))
    drawn = [t.get_text() for t in fig.axes[0].texts]
    assert drawn[0] == "pred: negative" and drawn[1:] == words
    colours = [p.get_facecolor() for p in fig.axes[0].patches]
    np.testing.assert_allclose(colours[-1][:3], [1.0, 0.0, 0.0])  # largest score
    assert len(fig.axes) == 2  # words + colour bar
    # more words -> more lines -> taller figure
    assert viz.plot_word_heatmap(words * 3, np.tile(scores, 3)).get_size_inches()[1] > h_in
    assert viz._HeatmapFigure._repr_png_(fig)[:4] == b"\x89PNG"


def test_plot_word_heatmap_into_given_axes_and_special_words(tmp_path):
    fig = Figure(figsize=(4, 2))
    ax = fig.add_subplot()
    out = viz.plot_word_heatmap(["$5", "x" * 200, "ok"], [1.0, 0.0, -1.0], ax=ax)
    assert out is fig
    texts = [t.get_text() for t in ax.texts]
    assert texts[0] == "$5"  # not mathtext
    assert texts[1].endswith("\u2026") and len(texts[1]) < 200  # cut to the line width
    viz.save_png(fig, tmp_path / "ax.png", dpi=50)
    assert _png_size(tmp_path / "ax.png") == (200, 100)


def test_save_png_validation(tmp_path):
    fig = viz.plot_word_heatmap(["a"], [1.0])
    with pytest.raises(ValueError, match=r"ending in \.png"):
        viz.save_png(fig, tmp_path / "x.jpg")
    with pytest.raises(ValueError, match="does not exist"):
        viz.save_png(fig, tmp_path / "missing" / "x.png")
    with pytest.raises(TypeError, match="matplotlib Figure"):
        viz.save_png("fig", tmp_path / "x.png")


def test_plot_time_feature_heatmap_axes(tmp_path):
    rel = np.zeros((20, 3))
    rel[5, 1] = 2.0
    rel[7, 2] = -1.0
    fig = viz.plot_time_feature_heatmap(rel, feature_names=["temp", "rain", "load"], title="t")
    ax = fig.axes[0]
    img = ax.images[0]
    assert img.get_array().shape == (3, 20)  # features on y, time on x
    assert img.norm.vmin == -2.0 and img.norm.vmax == 2.0  # centred at 0
    assert img.get_array()[1, 5] == 2.0
    np.testing.assert_allclose(img.to_rgba(0.0)[:3], 1.0)
    assert ax.get_xlabel() == "time step" and ax.get_ylabel() == "feature"
    assert [t.get_text() for t in ax.get_yticklabels()] == ["temp", "rain", "load"]
    assert len(fig.axes) == 2 and fig.axes[1].get_ylabel() == "relevance"
    path = viz.save_png(fig, tmp_path / "tf.png", dpi=80)
    w, h = fig.get_size_inches()
    assert _png_size(path) == (round(w * 80), round(h * 80))
    fig2 = viz.plot_time_feature_heatmap(rel, time_labels=[str(i) for i in range(20)], scale=4.0,
                                         colorbar=False)
    assert fig2.axes[0].images[0].norm.vmax == 4.0 and len(fig2.axes) == 1


def test_plot_time_feature_heatmap_validation():
    with pytest.raises(ValueError, match=r"pass relevance\[0\]"):
        viz.plot_time_feature_heatmap(np.zeros((1, 5, 3)))
    with pytest.raises(ValueError, match="2-D"):
        viz.plot_time_feature_heatmap(np.zeros(5))
    with pytest.raises(ValueError, match="got 2 names for 3 features"):
        viz.plot_time_feature_heatmap(np.zeros((5, 3)), feature_names=["a", "b"])
    with pytest.raises(ValueError, match=r"NaN or inf at position\(s\) \(2, 0\)"):
        rel = np.zeros((5, 3))
        rel[2, 0] = np.nan
        viz.plot_time_feature_heatmap(rel)


def test_figures_stay_out_of_pyplot():
    import matplotlib.pyplot as plt  # keras imports it anyway; our figures must not be in it

    before = plt.get_fignums()
    viz.plot_word_heatmap(["a"], [1.0])
    viz.plot_time_feature_heatmap([[1.0, -1.0]])
    assert plt.get_fignums() == before
    src = (REPO / "keras_lrp" / "visualize.py").read_text()
    assert not re.search(r"^\s*plt\.show\(", src, re.M) and src.count("import matplotlib.pyplot") == 1   # to_pyplot
    body = src[src.index("def to_pyplot("):]
    assert "import matplotlib.pyplot" in body[:body.index("\ndef ")]


def test_display_heatmap_with_and_without_ipython(monkeypatch, capsys):
    import types

    shown = []
    ipd = types.ModuleType("IPython.display")
    ipd.HTML = lambda s: ("HTML", s)
    ipd.display = shown.append
    monkeypatch.setitem(sys.modules, "IPython", types.ModuleType("IPython"))
    monkeypatch.setitem(sys.modules, "IPython.display", ipd)
    assert viz.display_heatmap(["<a>"], [1.0]) is None
    assert shown[0][0] == "HTML" and "&lt;a&gt;" in shown[0][1]
    monkeypatch.setitem(sys.modules, "IPython.display", None)  # import now fails
    viz.display_heatmap(["word"], [1.0])
    assert capsys.readouterr().out.strip() == "word[+1]"  # captured stdout is no tty: plain


def test_seed_compatible_common_utils_module(tmp_path):
    code = (
        f"import sys; sys.path.insert(0, {str(REPO / 'common_utils')!r})\n"
        "from heatmap import html_heatmap, getRGB, rescale_score_by_abs\n"
        "import keras_lrp.visualize as v\n"
        "assert html_heatmap is v.html_heatmap\n"
        "print(getRGB((1.0, 0.0, 0.0)))\n"
    )
    # Run outside the checkout: the module must find keras_lrp next to common_utils/ by itself.
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                         text=True, timeout=120,
                         env={"TF_CPP_MIN_LOG_LEVEL": "3", "PATH": "/usr/bin:/bin",
                              "HOME": str(tmp_path)})
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip().endswith("#ff0000")


# ----------------------------------------------------------------------------- sequential maps, OOV, grids


def test_sequential_map_white_at_zero_full_at_scale_and_refuses_negatives():
    rgba = viz.relevance_to_rgba([0.0, 1.0, 2.0], sequential=True)
    np.testing.assert_allclose(rgba[0, :3], [1.0, 1.0, 1.0])  # zero is white
    assert rgba[2, 0] > rgba[2, 1] + 0.3 and rgba[2, :3].sum() < rgba[1, :3].sum()  # darkest red at the top
    # the middle value is not the diverging map's "half red" position: r / scale, not 0.5 + r / 2s
    np.testing.assert_allclose(rgba[1], viz.relevance_to_rgba([1.0, 2.0], sequential=True)[0])
    with pytest.raises(ValueError, match="non-negative"):
        viz.relevance_to_rgba([0.5, -0.1], sequential=True)
    with pytest.raises(ValueError, match=r"sentences\[1\].*non-negative"):
        viz.html_page([(["a"], [1.0]), (["b"], [-1.0])], sequential=True)


def test_sequential_figures_have_colour_bars_from_zero():
    fig = viz.plot_time_feature_heatmap(np.abs(np.random.default_rng(0).standard_normal((5, 3))),
                                        sequential=True)
    assert fig.axes[0].images[0].norm.vmin == 0.0
    fig = viz.plot_word_heatmap(["a", "b"], [0.0, 2.0], sequential=True)
    bar = fig.axes[-1]
    assert [t.get_text() for t in bar.get_xticklabels()][0] == "0"


def test_oov_words_marked_in_html_terminal_and_figures():
    frag = viz.html_heatmap(["a", "zzq"], [1.0, -1.0], oov=np.array([False, True]))
    spans = _span_colors(frag)
    assert spans[1][0] == "zzq: -1 (unknown to the vocabulary)" and spans[0][0] == "a: +1"
    assert frag.count('data-oov="1"') == 1 and "<sup class=\"lrp-oov\">*</sup>" in frag
    assert viz.ansi_heatmap(["a", "zzq"], [1.0, -1.0], color=False, oov=np.array([False, True])) \
        == "a[+1] zzq*[-1]"
    fig = viz.plot_word_heatmap(["a", "zzq"], [1.0, -1.0], oov=np.array([False, True]))
    assert "zzq*" in [t.get_text() for t in fig.axes[0].texts]
    page = viz.html_page([(["a", "zzq"], [1.0, -1.0])], oov=[np.array([False, True])])
    assert "* marks words unknown to the vocabulary" in page
    with pytest.raises(ValueError, match="one entry per word"):
        viz.html_heatmap(["a", "b"], [1.0, 2.0], oov=[True])


def test_html_page_says_whether_scale_is_shared():
    pairs = [(["a"], [1.0]), (["b"], [3.0])]
    assert "All sentences share one colour scale." in viz.html_page(pairs, scale="shared")
    own = viz.html_page(pairs)
    assert "Each sentence has its own colour scale." in own and own.count('class="lrp-legend"') == 2


def test_word_heatmap_grid_colour_bars_and_scale_note(tmp_path):
    pairs = [(["a", "good", "film"], [0.1, 1.0, -0.3]), (["bad"], [-2.0])]
    own = viz.plot_word_heatmaps(pairs, titles=["one", "two"])
    bars = [ax for ax in own.axes if ax.get_xlabel().startswith("relevance")]
    assert len(bars) == 2  # one colour bar per panel when scales differ
    assert [b.get_xlim()[1] for b in bars] == [1.0, 2.0]
    assert any("own colour scale" in t.get_text() for t in own.texts)
    shared = viz.plot_word_heatmaps(pairs, titles=["one", "two"], scale="shared")
    bars = [ax for ax in shared.axes if ax.get_xlabel().startswith("relevance")]
    assert len(bars) == 1 and bars[0].get_xlabel() == "relevance (shared scale)" and bars[0].get_xlim() == (-2.0, 2.0)
    assert any("share one colour scale" in t.get_text() for t in shared.texts)
    out = viz.save_png(shared, tmp_path / "grid.png")
    assert _png_size(out)[0] > 500
    with pytest.raises(ValueError, match="one entry per sentence"):
        viz.plot_word_heatmaps(pairs, titles=["one"])


def test_time_feature_grid_shares_one_time_axis():
    maps = [np.ones((7, 2)), -np.ones((4, 2))]
    fig = viz.plot_time_feature_heatmaps(maps, titles=["a", "b"], scale="shared")
    images = [ax for ax in fig.axes if ax.images]
    assert len(images) == 2 and images[0].get_xlim() == images[1].get_xlim()
    assert "share one colour scale" in fig._suptitle.get_text()
    labels = [ax.get_ylabel() for ax in fig.axes]
    assert labels.count("relevance (shared scale)") == 1
    fig = viz.plot_time_feature_heatmaps(maps)
    assert [ax.get_ylabel() for ax in fig.axes].count("relevance (this panel)") == 2
