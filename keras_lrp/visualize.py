"""Heatmaps of LRP relevance: HTML, Jupyter, terminal (ANSI) and matplotlib figures.

Colour semantics follow the reference heatmaps of Arras et al. 2017: with the default ``"bwr"``
colormap positive relevance is red, negative relevance is blue and zero is white. A relevance ``r``
is mapped to the colormap position ``0.5 + 0.5 * r / scale``, where ``scale`` is the largest
``|r|`` of the sentence unless an explicit ``scale=`` is given. Passing one ``scale`` (for instance
:func:`shared_scale` of a batch) to every call puts several sentences on the same colour scale, so
that their heatmaps can be compared; relevances beyond ``scale`` saturate.

Non-negative maps (sensitivity analysis, ``method="sa"``) are drawn with ``sequential=True``: a
sequential colormap (default: white at 0, then matplotlib's ``"Reds"``) to full colour at ``scale``, position
``r / scale``. Words unknown to the vocabulary (``oov=`` masks) are drawn with a ``*`` after them,
in HTML, figures and the terminal alike. Grids of several heatmaps (:func:`plot_word_heatmaps`,
:func:`plot_time_feature_heatmaps`) always have colour bars and say whether their panels share
one colour scale.

Figures are built as :class:`matplotlib.figure.Figure` objects without ``pyplot``: nothing here
selects a backend, opens a window or calls ``plt.show``, so the module works headless (PNG output
goes through Agg) and does not leak figures into pyplot's global registry. In Jupyter the returned
figures display inline. :func:`to_pyplot` hands one to pyplot (``plt.show()`` then displays it);
:meth:`keras_lrp.Explanation.plot` returns its figures that way.
"""
from __future__ import annotations

import html
import io
import math
import os
import sys
import warnings
from pathlib import Path
from typing import IO, Any, Iterable, Iterator, Optional, Sequence, Tuple, Union

import matplotlib as mpl
import numpy as np
from matplotlib.colors import Colormap, Normalize
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from matplotlib.patches import FancyBboxPatch
from matplotlib.textpath import TextToPath

from .safe_io import atomic_open, atomic_write, printable

__all__ = [
    "ansi_color_supported",
    "ansi_heatmap",
    "display_heatmap",
    "html_heatmap",
    "html_legend",
    "html_page",
    "plot_time_feature_heatmap",
    "plot_time_feature_heatmaps",
    "plot_word_heatmap",
    "plot_word_heatmaps",
    "relevance_to_rgba",
    "rescale_score_by_abs",
    "rgb_to_hex",
    "save_png",
    "shared_scale",
    "text_color_for",
    "write_html_page",
]

CmapLike = Union[None, str, Colormap]
ScaleLike = Optional[float]

#: Default colormaps: diverging (signed relevance, white at 0) and sequential (non-negative maps).
DIVERGING_CMAP = "bwr"
SEQUENTIAL_CMAP = "lrp_reds"   # white at 0 (matplotlib's "Reds" starts at a pink #fff5f0), then "Reds"
#: Appended to words unknown to the vocabulary, as in the terminal output of the CLI.
OOV_MARK = "*"

_BLACK = "#000000"
_WHITE = "#ffffff"


# ----------------------------------------------------------------------------- validation


def _check_words_scores(words: Any, scores: Any) -> Tuple[list, np.ndarray]:
    """Validate a (words, scores) pair; return the words as ``list[str]`` and scores as float64 (T,)."""
    if isinstance(words, (str, bytes)):
        raise TypeError(
            "words must be a sequence of tokens, not a single string; "
            "split the sentence first, e.g. words=sentence.split()"
        )
    try:
        words = [str(w) for w in words]
    except TypeError:
        raise TypeError(
            f"words must be a sequence of tokens (list of str), got {type(words).__name__}"
        ) from None
    try:
        arr = np.asarray(scores, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"scores must be a sequence of numbers, one per word: {exc}") from None
    if arr.ndim == 2 and arr.shape[0] == len(words):
        raise ValueError(
            f"scores must be 1-D (time,), one relevance per word, got shape {arr.shape}; "
            "for an input relevance of shape (time, features) sum over the features first: "
            "relevance.sum(axis=-1)"
        )
    if arr.ndim != 1:
        raise ValueError(
            f"scores must be 1-D (time,), one relevance per word, got shape {arr.shape}"
        )
    if arr.shape[0] != len(words):
        raise ValueError(
            f"words and scores must have the same length, got {len(words)} words and "
            f"{arr.shape[0]} scores"
        )
    _check_finite(arr, "scores")
    return words, arr


def _check_finite(arr: np.ndarray, name: str) -> None:
    bad = np.argwhere(~np.isfinite(arr))
    if bad.size:
        where = ", ".join(str(tuple(int(i) for i in b)) if len(b) > 1 else str(int(b[0]))
                          for b in bad[:5])
        more = f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""
        raise ValueError(
            f"{name} must be finite numbers; found NaN or inf at position(s) {where}{more}. "
            "Non-finite relevance usually means the LRP stabiliser eps was 0 on a zero "
            "denominator; use eps > 0"
        )


def _check_scale(scale: Any) -> Optional[float]:
    if scale is None:
        return None
    if isinstance(scale, str):
        raise ValueError(f"scale must be None or a positive number, got {scale!r}")
    try:
        value = float(scale)
    except (TypeError, ValueError):
        raise ValueError(f"scale must be None or a positive number, got {scale!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"scale must be a positive finite number, got {scale!r}")
    return value


def _white_reds() -> Colormap:
    """Sequential map for non-negative values: exactly white at 0, matplotlib's "Reds" above."""
    from matplotlib.colors import LinearSegmentedColormap

    reds = mpl.colormaps["Reds"]
    stops = [(0.0, (1.0, 1.0, 1.0, 1.0))] + [(p, reds(0.1 + 0.9 * p)) for p in np.linspace(0.1, 1.0, 10)]
    return LinearSegmentedColormap.from_list(SEQUENTIAL_CMAP, stops, N=257)


def _get_cmap(cmap_name: CmapLike, sequential: bool = False) -> Colormap:
    """The named colormap (None: the default diverging or sequential one), resampled so that the
    centre 0.5 maps exactly to the middle colour."""
    if cmap_name is None:
        if sequential:
            return _white_reds()
        cmap_name = DIVERGING_CMAP
    if isinstance(cmap_name, Colormap):
        cmap = cmap_name
    else:
        try:
            cmap = mpl.colormaps[cmap_name]
        except KeyError:
            raise ValueError(
                f"unknown matplotlib colormap {cmap_name!r}; diverging choices that keep "
                "0 white include 'bwr', 'seismic', 'RdBu_r' and 'coolwarm'"
            ) from None
    # A 256-entry lookup table has no entry at exactly 0.5 (bwr(0.5) is slightly pink);
    # an odd number of entries puts one there, so zero relevance is exactly white.
    return cmap.resampled(257) if cmap.N % 2 == 0 else cmap


# ----------------------------------------------------------------------------- colours


def shared_scale(score_lists: Iterable[Any]) -> float:
    """The largest ``|score|`` over several sentences, to pass as ``scale=`` to every heatmap.

    Returns 0.0 when every score is zero (or there are none).
    """
    largest = 0.0
    for i, scores in enumerate(score_lists):
        arr = np.asarray(scores, dtype=np.float64).ravel()
        _check_finite(arr, f"scores of sentence {i}")
        if arr.size:
            largest = max(largest, float(np.max(np.abs(arr))))
    return largest


def _resolve_scale(scores: np.ndarray, scale: Any) -> float:
    given = _check_scale(scale)
    if given is not None:
        return given
    return float(np.max(np.abs(scores))) if scores.size else 0.0


def rescale_score_by_abs(score: float, max_score: float, min_score: float) -> float:
    """Seed-compatible scalar mapping of a score to a colormap position in [0, 1].

    Scores are divided by ``max(|max_score|, |min_score|)``: positive scores land in [0.5, 1],
    negative ones in [0, 0.5], and 0 at 0.5. Returns 0.5 when both extremes are 0.
    """
    scale = max(abs(max_score), abs(min_score))
    if scale == 0:
        return 0.5
    return float(np.clip(0.5 + 0.5 * score / scale, 0.0, 1.0))


def _check_sequential(arr: np.ndarray, sequential: bool) -> None:
    if sequential and arr.size and float(np.min(arr)) < 0:
        raise ValueError(
            f"sequential=True is for non-negative maps (e.g. sensitivity), but the scores go down "
            f"to {float(np.min(arr)):.4g}; draw signed relevance with the diverging default "
            "(sequential=False)"
        )


def _positions(arr: np.ndarray, s: float, sequential: bool) -> np.ndarray:
    """Colormap positions in [0, 1]: ``0.5 + 0.5 r / s`` (diverging) or ``r / s`` (sequential)."""
    if s == 0:
        return np.full(arr.shape, 0.0 if sequential else 0.5)
    if sequential:
        return np.clip(arr / s, 0.0, 1.0)
    return np.clip(0.5 + 0.5 * arr / s, 0.0, 1.0)


def relevance_to_rgba(scores: Any, scale: ScaleLike = None, cmap_name: CmapLike = None,
                      sequential: bool = False) -> np.ndarray:
    """RGBA colours (time, 4) in [0, 1] for relevance scores (time,).

    Each score ``r`` maps to colormap position ``0.5 + 0.5 * r / scale`` (clipped to [0, 1]);
    ``scale`` defaults to ``max |r|``. All-zero scores give the centre colour (white for "bwr",
    the default). With ``sequential=True`` (non-negative maps) the position is ``r / scale`` on
    a sequential colormap (default white at 0, then "Reds").
    """
    arr = np.asarray(scores, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"scores must be 1-D (time,), got shape {arr.shape}")
    _check_finite(arr, "scores")
    _check_sequential(arr, sequential)
    cmap = _get_cmap(cmap_name, sequential)
    s = _resolve_scale(arr, scale)
    pos = _positions(arr, s, sequential)
    return np.asarray(cmap(pos), dtype=np.float64).reshape(arr.shape[0], 4)


def rgb_to_hex(rgb: Sequence[float]) -> str:
    """``"#rrggbb"`` for an RGB(A) colour with channels in [0, 1]."""
    r, g, b = (int(round(float(np.clip(c, 0.0, 1.0)) * 255)) for c in rgb[:3])
    return f"#{r:02x}{g:02x}{b:02x}"


def _relative_luminance(rgb: Sequence[float]) -> float:
    # WCAG 2 relative luminance of an sRGB colour.
    lin = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in rgb[:3]]
    return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]


def text_color_for(rgb: Sequence[float]) -> str:
    """``"#000000"`` or ``"#ffffff"``: the text colour for a word on background ``rgb``.

    White on backgrounds of WCAG relative luminance below 0.25 (saturated red and blue, dark
    colours), black elsewhere. The WCAG 2 contrast-ratio crossover (0.18) would put black
    text on pure red; white reads better there on screen, so the threshold is a little higher.
    """
    return _WHITE if _relative_luminance(rgb) < 0.25 else _BLACK


def _fmt(score: float) -> str:
    return f"{score:+.4g}"


# ----------------------------------------------------------------------------- HTML


def _html_span(word: str, score: float, rgba: Sequence[float], oov: bool = False) -> str:
    bg = rgb_to_hex(rgba)
    fg = text_color_for(rgba)
    note = " (unknown to the vocabulary)" if oov else ""
    title = html.escape(f"{word}: {_fmt(score)}{note}", quote=True)
    # <bdi>: a word's direction (an Arabic word, a U+202E override) never reorders other words
    shown = f"<bdi>{html.escape(word, quote=False)}</bdi>"
    border = ""
    if oov:
        shown += f'<sup class="lrp-oov">{OOV_MARK}</sup>'
        border = "outline:1px dashed #888;"
    return (
        f'<span title="{title}" data-relevance="{score:.6g}"'
        + (' data-oov="1"' if oov else "")
        + f' style="background-color:{bg};'
        f"color:{fg};padding:0.1em 0.3em;margin:0 0.05em;border-radius:0.25em;{border}"
        f'white-space:pre-wrap;">{shown}</span>'
    )


def _check_oov(oov: Any, n: int) -> Optional[np.ndarray]:
    if oov is None:
        return None
    arr = np.asarray(oov)
    if arr.dtype != bool or arr.shape != (n,):
        raise ValueError(f"oov must be a bool mask with one entry per word ({n},), got "
                         f"{arr.dtype} {arr.shape}")
    return arr


def html_heatmap(words: Sequence[str], scores: Any, cmap_name: CmapLike = None,
                 scale: ScaleLike = None, *, oov: Any = None, sequential: bool = False) -> str:
    """HTML fragment colouring each word by its relevance (seed-compatible).

    Args:
        words: tokens, length T.
        scores: relevance per token, shape (T,).
        cmap_name: a matplotlib colormap name (default "bwr": red positive, blue negative).
        scale: the ``|relevance|`` drawn at full colour; default the sentence's largest
            ``|score|``. Give one value (e.g. :func:`shared_scale`) to compare sentences.
        oov: optional bool mask (T,): words unknown to the vocabulary, drawn with a ``*``.
        sequential: non-negative map (e.g. sensitivity): sequential colormap, white at 0.

    Returns:
        A ``<div>`` of ``<span>`` elements with inline styles (background colour, readable text
        colour) and a tooltip ``title="word: +0.1234"``. Words are HTML-escaped and each is
        bidi-isolated (``<bdi>``), so no word (say one with a U+202E override) reorders the others. It can be
        shown with ``IPython.display.HTML`` or embedded in a page (see :func:`html_page`).
    """
    words, arr = _check_words_scores(words, scores)
    mask = _check_oov(oov, len(words))
    colors = relevance_to_rgba(arr, scale=scale, cmap_name=cmap_name, sequential=sequential)
    flags = mask if mask is not None else [False] * len(words)
    spans = " ".join(_html_span(w, float(s), c, bool(o)) for w, s, c, o in zip(words, arr, colors, flags))
    return (
        '<div class="lrp-heatmap" style="line-height:2.1;font-size:1.05em;'
        'font-family:system-ui,-apple-system,\'Segoe UI\',Roboto,\'DejaVu Sans\',sans-serif;">'
        f"{spans}</div>\n"
    )


def html_legend(scale: float, cmap_name: CmapLike = None, *, sequential: bool = False,
                label: str = "") -> str:
    """An HTML colour bar from ``-scale`` (``0`` when ``sequential``) to ``+scale``."""
    cmap = _get_cmap(cmap_name, sequential)
    stops = ", ".join(f"{rgb_to_hex(cmap(p))} {p * 100:.0f}%" for p in np.linspace(0, 1, 11))
    low = "0" if sequential else _fmt(-scale)
    text = f'<span>{html.escape(label)}</span>' if label else ""
    return (
        '<div class="lrp-legend" style="display:flex;align-items:center;gap:0.5em;font-size:0.8em;'
        'color:#555;margin:0.3em 0;">' + text + "<span>" + html.escape(low) + "</span>"
        '<span class="lrp-bar" style="display:inline-block;width:12em;height:0.8em;'
        f'border:1px solid #ccc;border-radius:0.2em;background:linear-gradient(to right, {stops});"></span>'
        "<span>" + html.escape(_fmt(scale)) + "</span></div>"
    )


def _html_legend(scale: float, cmap_name: CmapLike, sequential: bool = False) -> str:
    return html_legend(scale, cmap_name, sequential=sequential)


_PAGE_CSS = """
body { font-family: system-ui, -apple-system, 'Segoe UI', Roboto, 'DejaVu Sans', sans-serif;
       max-width: 60em; margin: 1.5em auto; padding: 0 1em; color: #222; background: #fff; }
h1 { font-size: 1.3em; margin-bottom: 0.2em; }
h2 { font-size: 0.95em; font-weight: 600; color: #555; margin: 0 0 0.3em 0; }
.lrp-sentence { margin: 0.6em 0 1.1em 0; padding: 0.5em 0.8em; border: 1px solid #e3e3e3;
                border-radius: 0.4em; }
.lrp-legend { display: flex; align-items: center; gap: 0.5em; font-size: 0.8em; color: #555;
              margin: 0.3em 0; font-variant-numeric: tabular-nums; }
.lrp-bar { display: inline-block; width: 12em; height: 0.8em; border: 1px solid #ccc;
           border-radius: 0.2em; }
.lrp-note { font-size: 0.85em; color: #666; }
"""


def html_page(
    sentences: Sequence[Tuple[Sequence[str], Any]],
    scale: Union[None, str, float] = None,
    titles: Optional[Sequence[str]] = None,
    cmap_name: CmapLike = None,
    page_title: str = "LRP relevance heatmaps",
    path: Union[None, str, os.PathLike] = None,
    *,
    oov: Optional[Sequence[Any]] = None,
    sequential: bool = False,
) -> str:
    """A standalone HTML page with one heatmap per sentence.

    Args:
        sentences: ``(words, scores)`` pairs, scores of shape (T,) for each.
        scale: ``None`` colours every sentence by its own largest ``|score|``; ``"shared"`` uses
            the largest ``|score|`` of all sentences so they can be compared; a positive number
            uses that value for all.
        titles: one caption per sentence (e.g. the true and predicted label), or None.
        cmap_name: matplotlib colormap name.
        page_title: the page's ``<title>`` and heading.
        path: if given, the page is also written there (UTF-8).
        oov: optional, one bool mask per sentence: words unknown to the vocabulary, drawn with
            a ``*`` (the page then explains the mark).
        sequential: non-negative maps (e.g. sensitivity): sequential colormap, white at 0.

    Returns:
        The page as a string. It says whether the sentences share one colour scale.
    """
    sentences = list(sentences)
    pairs = []
    for i, item in enumerate(sentences):
        try:
            words, scores = item
        except (TypeError, ValueError):
            raise ValueError(
                f"sentences[{i}] must be a (words, scores) pair, got {type(item).__name__}"
            ) from None
        try:
            pairs.append(_check_words_scores(words, scores))
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"sentences[{i}]: {exc}") from None
    if titles is not None:
        titles = [str(t) for t in titles]
        if len(titles) != len(pairs):
            raise ValueError(
                f"titles must have one entry per sentence, got {len(titles)} titles for "
                f"{len(pairs)} sentences"
            )
    if oov is not None:
        oov = list(oov)
        if len(oov) != len(pairs):
            raise ValueError(f"oov must have one mask per sentence, got {len(oov)} masks for "
                             f"{len(pairs)} sentences")
        oov = [_check_oov(o, len(w)) for o, (w, _) in zip(oov, pairs)]
    for i, (_, arr) in enumerate(pairs):
        try:
            _check_sequential(arr, sequential)
        except ValueError as exc:
            raise ValueError(f"sentences[{i}]: {exc}") from None
    if isinstance(scale, str):
        if scale != "shared":
            raise ValueError(f"scale must be None, 'shared' or a positive number, got {scale!r}")
        common: Optional[float] = shared_scale(a for _, a in pairs) or None
    else:
        common = _check_scale(scale)
    has_oov = oov is not None and any(o is not None and o.any() for o in oov)
    page = "\n".join(_page_pieces(pairs, common, titles, cmap_name, page_title, oov, sequential, has_oov)) + "\n"
    if path is not None:
        atomic_write(path, page)
    return page


def write_html_page(file: IO[str], sentences: Iterable[Tuple[Sequence[str], Any]], scale: Optional[float],
                    titles: Optional[Iterable[str]] = None, cmap_name: CmapLike = None,
                    page_title: str = "LRP relevance heatmaps", *, sequential: bool = False) -> int:
    """Write the page of :func:`html_page` to the open text ``file`` piece by piece, reading
    ``sentences`` (and ``titles``) one at a time: for inputs too large to hold, e.g. read back
    from a file. ``scale`` is a number (say the running largest ``|score|``, computed as the
    sentences were made) or None (each sentence its own); returns the number of sentences."""
    common = _check_scale(scale)
    count = 0

    def checked():
        nonlocal count
        for i, (words, scores) in enumerate(sentences):
            try:
                words, arr = _check_words_scores(words, scores)
                _check_sequential(arr, sequential)
            except (TypeError, ValueError) as exc:
                raise type(exc)(f"sentences[{i}]: {exc}") from None
            count += 1
            yield words, arr

    for piece in _page_pieces(checked(), common, titles, cmap_name, page_title, None, sequential, False):
        file.write(piece + "\n")
    return count


def _page_pieces(pairs: Iterable[Tuple[list, np.ndarray]], common: Optional[float], titles: Optional[Iterable[str]],
                 cmap_name: CmapLike, page_title: str, oov: Optional[Sequence[Any]], sequential: bool,
                 has_oov: bool) -> Iterator[str]:
    """The lines of an HTML page of checked ``(words, scores)`` pairs, lazily."""
    what = "Colour: value (white = 0)." if sequential else \
        "Red: relevance for the explained class; blue: against it."
    shared_note = ("All sentences share one colour scale." if common is not None
                   else "Each sentence has its own colour scale.")
    oov_note = f" {OOV_MARK} marks words unknown to the vocabulary." if has_oov else ""
    yield from (
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(page_title)}</title>",
        f"<style>{_PAGE_CSS}</style></head><body>",
        f"<h1>{html.escape(page_title)}</h1>",
        f'<p class="lrp-note">{html.escape(what)} {shared_note} Hover a word for its value.'
        f"{html.escape(oov_note)}</p>",
    )
    if common is not None:
        yield html_legend(common, cmap_name, sequential=sequential)
    title_iter = iter(titles) if titles is not None else None
    for i, (words, arr) in enumerate(pairs):
        yield '<div class="lrp-sentence">'
        if title_iter is not None:
            yield f"<h2><bdi>{html.escape(str(next(title_iter)))}</bdi></h2>"
        yield html_heatmap(words, arr, cmap_name=cmap_name, scale=common,
                           oov=oov[i] if oov is not None else None, sequential=sequential).rstrip("\n")
        if common is None:
            yield html_legend(_resolve_scale(arr, None), cmap_name, sequential=sequential)
        yield "</div>"
    yield "</body></html>"


def display_heatmap(words: Sequence[str], scores: Any, cmap_name: CmapLike = None,
                    scale: ScaleLike = None) -> None:
    """Show a word heatmap inline in Jupyter (via ``IPython.display.HTML``).

    Without IPython installed, prints the ANSI terminal heatmap instead (coloured when stdout
    supports colour). IPython is imported only when this is called.
    """
    fragment = html_heatmap(words, scores, cmap_name=cmap_name, scale=scale)
    try:
        from IPython.display import HTML, display
    except ImportError:
        print(ansi_heatmap(words, scores, scale=scale, color=ansi_color_supported(),
                           cmap_name=cmap_name))
        return
    display(HTML(fragment))


# ----------------------------------------------------------------------------- terminal


def ansi_color_supported(stream: Any = None) -> bool:
    """Whether ``stream`` (default stdout) is a terminal that should get colour.

    Honours the ``NO_COLOR`` convention and ``TERM=dumb``.
    """
    stream = sys.stdout if stream is None else stream
    if os.environ.get("NO_COLOR"):
        return False
    if os.environ.get("TERM") == "dumb":
        return False
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except (ValueError, OSError):  # closed stream
        return False


def ansi_heatmap(words: Sequence[str], scores: Any, scale: ScaleLike = None,
                 color: bool = True, cmap_name: CmapLike = None,
                 show_scores: bool = False, *, oov: Any = None, sequential: bool = False) -> str:
    """Words with 24-bit ANSI background colours (red positive, blue negative) for terminals.

    Args:
        words, scores: tokens and their relevance (T,).
        scale: as in :func:`html_heatmap`.
        color: False gives plain text with the value after each word, ``good[+0.83]``, for
            terminals without colour, logs and pipes (see :func:`ansi_color_supported`).
        show_scores: with colour, also print the value after each word.
        oov: optional bool mask (T,): unknown words get a ``*``.
        sequential: non-negative map: sequential colormap (white at 0).

    Returns:
        One line of text (no trailing newline); control characters in words (escape sequences,
        bidi overrides) are shown as ``\\x1b`` / ``\\u202e`` (:func:`keras_lrp.safe_io.printable`).
    """
    words, arr = _check_words_scores(words, scores)
    mask = _check_oov(oov, len(words))
    words = [printable(w) for w in words]   # no word acts on the terminal
    if mask is not None:
        words = [w + OOV_MARK if o else w for w, o in zip(words, mask)]
    if not color:
        return " ".join(f"{w}[{s:+.3g}]" for w, s in zip(words, arr))
    colors = relevance_to_rgba(arr, scale=scale, cmap_name=cmap_name, sequential=sequential)
    out = []
    for w, s, c in zip(words, arr, colors):
        r, g, b = (int(round(float(v) * 255)) for v in c[:3])
        fg = "0;0;0" if text_color_for(c) == _BLACK else "255;255;255"
        text = f"{w}[{s:+.3g}]" if show_scores else w
        out.append(f"\x1b[48;2;{r};{g};{b}m\x1b[38;2;{fg}m{text}\x1b[0m")
    return " ".join(out)


# ----------------------------------------------------------------------------- figures


class _HeatmapFigure(Figure):
    """A Figure that Jupyter displays inline as PNG even without ``%matplotlib``, once."""

    def _repr_png_(self) -> bytes:
        buf = io.BytesIO()
        self.savefig(buf, format="png")
        return buf.getvalue()

    def _ipython_display_(self) -> None:
        if _open_in_pyplot(self) and _formatting_cell_result() and "inline" in mpl.get_backend():
            return      # a cell's value: pyplot's inline backend shows the figure when the cell ends, not twice
        from IPython.display import display

        display({"image/png": self._repr_png_(), "text/plain": repr(self)}, raw=True)


def _formatting_cell_result() -> bool:
    """Whether Jupyter is formatting a cell's value (ipykernel's display hook holds its message
    while it does), as opposed to a ``display()`` call such as the inline backend's."""
    shell = sys.modules.get("IPython") and sys.modules["IPython"].get_ipython()
    return getattr(getattr(shell, "displayhook", None), "msg", None) is not None


def _open_in_pyplot(fig: Figure) -> bool:
    """Whether ``fig`` is one of pyplot's open figures."""
    manager = fig.canvas.manager
    if "matplotlib.pyplot" not in sys.modules or manager is None:
        return False
    from matplotlib import _pylab_helpers

    return any(m is manager for m in _pylab_helpers.Gcf.get_all_fig_managers())


def to_pyplot(fig: Figure) -> Figure:
    """Make ``fig`` one of pyplot's figures, as if ``plt.figure`` had made it (on pyplot's current
    backend): ``plt.show()`` displays it, ``plt.close(fig)`` frees it, and in Jupyter it shows once.
    Returns ``fig``."""
    import matplotlib.pyplot as plt

    if _open_in_pyplot(fig):
        return fig
    try:
        adopted = plt.figure(fig)     # matplotlib >= 3.10 adopts a figure pyplot does not manage
    except (TypeError, ValueError):
        adopted = None
    if adopted is not fig or fig.canvas.manager is None:
        from matplotlib import _pylab_helpers

        number = max(plt.get_fignums(), default=0) + 1
        manager = plt._get_backend_mod().new_figure_manager_given_figure(number, fig)
        _pylab_helpers.Gcf._set_new_active_manager(manager)
    return fig


def _root_figure(ax: Any) -> Figure:
    try:
        return ax.get_figure(root=True)
    except TypeError:  # matplotlib < 3.10
        fig = ax.figure
        while hasattr(fig, "figure") and fig.figure is not fig and not isinstance(fig, Figure):
            fig = fig.figure
        return fig


def _layout_words(widths: Sequence[float], line_width: float, gap: float) -> list:
    """Greedy line breaking: list of lines, each a list of (index, x offset)."""
    lines: list = [[]]
    x = 0.0
    for i, w in enumerate(widths):
        if lines[-1] and x + w > line_width:
            lines.append([])
            x = 0.0
        lines[-1].append((i, x))
        x += w + gap
    return lines if lines[0] else []


def _layout_tokens(words: Sequence[str], prop: FontProperties, fs: float, line_width: float):
    """Box widths (points), wrapped lines, and the words as drawn (too long ones cut), at font
    size ``fs`` (``prop`` is set to it) for lines ``line_width`` points wide."""
    measurer = TextToPath()
    prop.set_size(fs)

    def text_width(text: str) -> float:
        return measurer.get_text_width_height_descent(text, prop, ismath=False)[0]

    pad = 0.3 * fs
    shown = []
    for w in words:
        # A token wider than a whole line is cut with an ellipsis rather than run off.
        if text_width(w) + 2 * pad > line_width:
            n = len(w)
            while n > 1 and text_width(w[:n] + "\u2026") + 2 * pad > line_width:
                n -= 1
            w = w[:n] + "\u2026"
        shown.append(w)
    box_w = [text_width(w) + 2 * pad for w in shown]
    lines = _layout_words(box_w, line_width, gap=0.3 * fs)
    return box_w, lines, shown


def plot_word_heatmap(
    words: Sequence[str],
    scores: Any,
    ax: Any = None,
    cmap_name: CmapLike = None,
    scale: ScaleLike = None,
    *,
    fontsize: float = 14.0,
    width: float = 8.0,
    title: Optional[str] = None,
    colorbar: bool = True,
    oov: Any = None,
    sequential: bool = False,
) -> Figure:
    """Words drawn as boxes coloured by relevance, wrapped into lines.

    Args:
        words, scores: tokens and their relevance (T,).
        ax: draw into this Axes (its frame is hidden and its limits set); by default a new
            figure ``width`` inches wide and as tall as the wrapped text needs.
        cmap_name, scale: as in :func:`html_heatmap`.
        fontsize: word font size in points. With a given ``ax`` it is reduced if the text
            does not fit.
        width: figure width in inches when ``ax`` is None.
        title: text above the words.
        colorbar: add a horizontal colour scale under the words (new figures only).
        oov: optional bool mask (T,): unknown words are drawn with a ``*``.
        sequential: non-negative map (e.g. sensitivity): sequential colormap, white at 0.

    Returns:
        The Figure; save it with :func:`save_png` or ``fig.savefig``.
    """
    words, arr = _check_words_scores(words, scores)
    mask = _check_oov(oov, len(words))
    if mask is not None:
        words = [w + OOV_MARK if o else w for w, o in zip(words, mask)]
    s = _resolve_scale(arr, scale)
    colors = relevance_to_rgba(arr, scale=s if s > 0 else None, cmap_name=cmap_name,
                               sequential=sequential)
    if not (isinstance(fontsize, (int, float)) and fontsize > 0):
        raise ValueError(f"fontsize must be a positive number of points, got {fontsize!r}")
    if ax is None and not (isinstance(width, (int, float)) and width > 0):
        raise ValueError(f"width must be a positive number of inches, got {width!r}")

    prop = FontProperties(family=mpl.rcParams["font.family"])

    def layout(fs: float, line_width: float):
        return _layout_tokens(words, prop, fs, line_width)

    margin = 0.5 * fontsize  # points, around the word block
    title_h = 2.0 * fontsize if title else 0.0
    if ax is None:
        fig_w_pt = width * 72.0
        box_w, lines, shown = layout(fontsize, fig_w_pt - 2 * margin)
        fs = fontsize
        line_h = 2.0 * fs
        words_h = max(len(lines), 1) * line_h + 2 * margin + title_h
        cbar_h = 0.75 * 72.0 if colorbar else 0.0
        fig_h_pt = words_h + cbar_h
        fig = _HeatmapFigure(figsize=(width, fig_h_pt / 72.0))
        ax = fig.add_axes((0.0, cbar_h / fig_h_pt, 1.0, words_h / fig_h_pt))
        ax_w_pt, ax_h_pt = fig_w_pt, words_h
    else:
        fig = _root_figure(ax)
        fig_w_in, fig_h_in = fig.get_size_inches()
        pos = ax.get_position()
        ax_w_pt, ax_h_pt = pos.width * fig_w_in * 72.0, pos.height * fig_h_in * 72.0
        fs = float(fontsize)
        while True:
            margin = 0.5 * fs
            title_h = 2.0 * fs if title else 0.0
            box_w, lines, shown = layout(fs, ax_w_pt - 2 * margin)
            line_h = 2.0 * fs
            if len(lines) * line_h + 2 * margin + title_h <= ax_h_pt or fs <= 6.0:
                break
            fs = max(6.0, fs * 0.85)
        if len(lines) * line_h + 2 * margin + title_h > ax_h_pt:
            warnings.warn(
                "plot_word_heatmap: the words do not fit in the given axes even at 6 pt; "
                "use a taller axes or ax=None", stacklevel=2,
            )
        cbar_h = 0.0

    # Axes data units are points, y pointing down from the top-left corner.
    ax.set_xlim(0, ax_w_pt)
    ax.set_ylim(ax_h_pt, 0)
    ax.set_axis_off()
    if title:
        ax.text(margin, margin + 0.6 * fs, title, fontsize=fs * 0.95, fontweight="bold",
                va="center", ha="left", parse_math=False, color="#222222")
    y0 = margin + title_h
    box_h = 1.55 * fs
    for row, line in enumerate(lines):
        yc = y0 + (row + 0.5) * line_h
        for i, x in line:
            xl = margin + x
            ax.add_patch(FancyBboxPatch(
                (xl, yc - box_h / 2), box_w[i], box_h,
                boxstyle=f"round,pad=0,rounding_size={0.25 * fs}",
                facecolor=colors[i], edgecolor="#d0d0d0", linewidth=0.5,
            ))
            ax.text(xl + box_w[i] / 2, yc, shown[i], fontproperties=prop.copy(),
                    ha="center", va="center_baseline", color=text_color_for(colors[i]),
                    parse_math=False)

    if cbar_h:
        cax = fig.add_axes((0.3, 0.55 * cbar_h / fig_h_pt, 0.4, 0.18 * 72.0 / fig_h_pt))
        _word_colorbar(fig, cax, s, cmap_name, sequential, "relevance")
    return fig


def _word_colorbar(fig: Figure, cax: Any, s: float, cmap_name: CmapLike, sequential: bool,
                   label: str) -> Any:
    """A horizontal colour bar in ``cax`` from -s (0 if sequential) to s."""
    import matplotlib.cm as cm

    s_bar = s if s > 0 else 1.0
    norm = Normalize(0.0, s_bar) if sequential else Normalize(-s_bar, s_bar)
    smap = cm.ScalarMappable(norm=norm, cmap=_get_cmap(cmap_name, sequential))
    cb = fig.colorbar(smap, cax=cax, orientation="horizontal")
    if s > 0:
        if sequential:
            cb.set_ticks([0.0, s / 2, s], labels=["0", f"{s / 2:.3g}", f"{s:.3g}"])
        else:
            cb.set_ticks([-s, 0.0, s], labels=[f"\u2212{s:.3g}", "0", f"{s:.3g}"])
        cb.set_label(label, fontsize=8, labelpad=1)
    else:
        cb.set_ticks([0.0], labels=["0"])
        cb.set_label(f"{label} (all zero)", fontsize=8, labelpad=1)
    cb.ax.tick_params(labelsize=8)
    cb.outline.set_linewidth(0.5)
    return cb


def plot_time_feature_heatmap(
    relevance: Any,
    feature_names: Optional[Sequence[str]] = None,
    ax: Any = None,
    *,
    cmap_name: CmapLike = None,
    scale: ScaleLike = None,
    time_labels: Optional[Sequence[Any]] = None,
    title: Optional[str] = None,
    colorbar: bool = True,
    time_axis_label: str = "time step",
    feature_axis_label: str = "feature",
    sequential: bool = False,
    colorbar_label: str = "relevance",
) -> Figure:
    """Relevance of a time-series input as a (feature x time) image.

    Args:
        relevance: input relevance of one sample, shape (time, features).
        feature_names: a name per feature (y axis), or None for indices.
        ax: draw into this Axes; by default a new figure sized to the data.
        cmap_name: diverging colormap, centred at 0 (default "bwr").
        scale: the ``|relevance|`` at full colour; default the largest ``|relevance|``.
        time_labels: a label per time step (e.g. dates or the words of a text), or None.
        title: axes title.
        colorbar: add a colour bar labelled "relevance".
        time_axis_label, feature_axis_label: the axis titles.
        sequential: non-negative map (e.g. sensitivity): sequential colormap from 0 (white).
        colorbar_label: the colour bar's label.

    Returns:
        The Figure (time on the x axis, features on the y axis).
    """
    arr = np.asarray(relevance, dtype=np.float64)
    if arr.ndim == 3 and arr.shape[0] == 1:
        raise ValueError(
            f"relevance must be 2-D (time, features) for one sample, got shape {arr.shape}; "
            "pass relevance[0]"
        )
    if arr.ndim == 1:
        raise ValueError(
            f"relevance must be 2-D (time, features), got shape {arr.shape}; for a single "
            "feature use relevance[:, None]"
        )
    if arr.ndim != 2:
        raise ValueError(f"relevance must be 2-D (time, features), got shape {arr.shape}")
    n_time, n_feat = arr.shape
    if n_time == 0 or n_feat == 0:
        raise ValueError(f"relevance is empty, shape {arr.shape}")
    _check_finite(arr, "relevance")
    _check_sequential(arr, sequential)
    if feature_names is not None:
        feature_names = [str(f) for f in feature_names]
        if len(feature_names) != n_feat:
            raise ValueError(
                f"feature_names must have one name per feature: got {len(feature_names)} names "
                f"for {n_feat} features (relevance shape (time, features) = {arr.shape})"
            )
    if time_labels is not None:
        time_labels = [str(t) for t in time_labels]
        if len(time_labels) != n_time:
            raise ValueError(
                f"time_labels must have one label per time step: got {len(time_labels)} "
                f"labels for {n_time} time steps (relevance shape {arr.shape})"
            )
    s = _resolve_scale(arr, scale) or 1.0

    if ax is None:
        w = float(np.clip(2.5 + 0.22 * n_time, 5.0, 14.0))
        h = float(np.clip(1.6 + 0.28 * n_feat, 2.8, 9.0))
        fig = _HeatmapFigure(figsize=(w, h), layout="constrained")
        ax = fig.add_subplot()
    else:
        fig = _root_figure(ax)

    # imshow puts the first array row at the top; features are rows, so transpose.
    im = ax.imshow(arr.T, aspect="auto", interpolation="nearest", cmap=_get_cmap(cmap_name, sequential),
                   norm=Normalize(0.0, s) if sequential else Normalize(-s, s), origin="upper")
    ax.set_xlabel(time_axis_label)
    ax.set_ylabel(feature_axis_label)
    from matplotlib.ticker import MaxNLocator

    if time_labels is not None:
        ax.set_xticks(np.arange(n_time))
        rotate = n_time > 12 or max(len(t) for t in time_labels) > 6
        ax.set_xticklabels(time_labels, rotation=90 if rotate else 0)
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if feature_names is not None and n_feat <= 40:
        ax.set_yticks(np.arange(n_feat))
        ax.set_yticklabels(feature_names)
    else:
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        if feature_names is not None:
            warnings.warn(
                f"plot_time_feature_heatmap: {n_feat} feature names are too many to label; "
                "showing indices", stacklevel=2,
            )
    if title:
        ax.set_title(title)
    if colorbar:
        cb = fig.colorbar(im, ax=ax, shrink=0.9, fraction=0.05, pad=0.02, aspect=25)
        cb.set_label(colorbar_label)
    return fig


def save_png(fig: Figure, path: Union[str, os.PathLike], dpi: float = 150.0,
             close: bool = False) -> Path:
    """Write ``fig`` to ``path`` as PNG, ``width_in * dpi`` by ``height_in * dpi`` pixels.

    ``close=True`` also releases the figure from pyplot if pyplot manages it (useful when
    saving thousands of heatmaps in a loop).
    """
    if not isinstance(fig, Figure):
        raise TypeError(f"fig must be a matplotlib Figure, got {type(fig).__name__}")
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"save_png writes PNG files; give a path ending in .png, got {str(path)!r}")
    if not path.parent.exists():
        raise ValueError(f"directory {str(path.parent)!r} does not exist; create it first")
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=dpi)
    if close and "matplotlib.pyplot" in sys.modules:
        sys.modules["matplotlib.pyplot"].close(fig)
    return path


# ----------------------------------------------------------------------------- grids


def _grid_scales(arrays: Sequence[np.ndarray], scale: Union[None, str, float]) -> Tuple[list, Optional[float]]:
    """Per-panel scales and the common one (None when each panel has its own)."""
    if isinstance(scale, str):
        if scale != "shared":
            raise ValueError(f"scale must be None, 'shared' or a positive number, got {scale!r}")
        common: Optional[float] = shared_scale(arrays)
    else:
        common = _check_scale(scale)
    if common is not None:
        return [common] * len(arrays), common
    return [_resolve_scale(np.asarray(a, dtype=np.float64).ravel(), None) for a in arrays], None


def _scale_note(common: Optional[float], n: int, sequential: bool = False) -> str:
    if n == 1:
        return ""
    if common is not None:
        span = f"0 to {common:.3g}" if sequential else f"\u00b1{common:.3g}"
        return f"all {n} panels share one colour scale ({span})" if common else \
            f"all {n} panels share one colour scale"
    return f"each of the {n} panels has its own colour scale"


def plot_word_heatmaps(
    sentences: Sequence[Tuple[Sequence[str], Any]],
    titles: Optional[Sequence[str]] = None,
    scale: Union[None, str, float] = None,
    *,
    cmap_name: CmapLike = None,
    oov: Optional[Sequence[Any]] = None,
    sequential: bool = False,
    fontsize: float = 12.0,
    width: float = 9.0,
    label: str = "relevance",
) -> Figure:
    """Several word heatmaps stacked in one figure, each with its title.

    Args:
        sentences: ``(words, scores)`` pairs, scores (T,) each.
        titles: one caption per sentence (e.g. prediction and probability), or None.
        scale: None: each panel on its own scale, with its own colour bar; "shared": one
            scale for all, one colour bar at the bottom; a number: that value for all.
            The figure's header says which.
        oov: optional, one bool mask per sentence (unknown words get a ``*``).
        sequential: non-negative maps: sequential colormap, white at 0.
        fontsize, width: word font size (points) and figure width (inches).
        label: what the colours show (colour bar label), e.g. "relevance" or "sensitivity".

    Returns:
        The Figure.
    """
    pairs = []
    for i, item in enumerate(sentences):
        try:
            words, scores = item
        except (TypeError, ValueError):
            raise ValueError(f"sentences[{i}] must be a (words, scores) pair, got {type(item).__name__}") from None
        try:
            words, arr = _check_words_scores(words, scores)
            _check_sequential(arr, sequential)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"sentences[{i}]: {exc}") from None
        pairs.append((words, arr))
    if not pairs:
        raise ValueError("sentences is empty: nothing to plot")
    if titles is not None:
        titles = [str(t) for t in titles]
        if len(titles) != len(pairs):
            raise ValueError(f"titles must have one entry per sentence, got {len(titles)} titles for "
                             f"{len(pairs)} sentences")
    if oov is not None:
        oov = list(oov)
        if len(oov) != len(pairs):
            raise ValueError(f"oov must have one mask per sentence, got {len(oov)} for {len(pairs)}")
        oov = [_check_oov(o, len(w)) for o, (w, _) in zip(oov, pairs)]
    scales, common = _grid_scales([a for _, a in pairs], scale)
    shown_words = [[w + OOV_MARK if (m is not None and m[k]) else w for k, w in enumerate(words)]
                   for (words, _), m in zip(pairs, oov if oov is not None else [None] * len(pairs))]

    fs = float(fontsize)
    margin = 0.5 * fs
    line_h = 2.0 * fs
    fig_w_pt = width * 72.0
    prop = FontProperties(family=mpl.rcParams["font.family"])
    own_bar_h = 0.0 if common is not None else 0.7 * 72.0
    heights = []
    for k, words in enumerate(shown_words):
        _, lines, _ = _layout_tokens(words, prop, fs, fig_w_pt - 2 * margin)
        title_h = 2.0 * fs if titles is not None else 0.0
        # a little slack so that plot_word_heatmap never needs to shrink the font
        heights.append(max(len(lines), 1) * line_h + 2 * margin + title_h + 2.0 + own_bar_h)
    note = _scale_note(common, len(pairs), sequential)
    oov_note = (f"{OOV_MARK} unknown to the vocabulary"
                if oov is not None and any(m is not None and m.any() for m in oov) else "")
    header_h = 1.6 * 10.0 if (note or oov_note) else 0.0
    bottom_h = 0.7 * 72.0 if common is not None else 0.0
    fig_h_pt = header_h + sum(heights) + bottom_h
    fig = _HeatmapFigure(figsize=(width, fig_h_pt / 72.0))
    if header_h:
        fig.text(margin / fig_w_pt, 1.0 - 0.6 * header_h / fig_h_pt,
                 "; ".join(t for t in (note, oov_note) if t), fontsize=9, color="#555555",
                 ha="left", va="center")
    top = fig_h_pt - header_h
    for k, ((words, arr), h) in enumerate(zip(pairs, heights)):
        words_h = h - own_bar_h
        ax = fig.add_axes((0.0, (top - words_h) / fig_h_pt, 1.0, words_h / fig_h_pt))
        plot_word_heatmap(words, arr, ax=ax, cmap_name=cmap_name, scale=scales[k] if scales[k] > 0 else None,
                          fontsize=fs, title=titles[k] if titles is not None else None,
                          oov=oov[k] if oov is not None else None, sequential=sequential)
        if common is None:
            cax = fig.add_axes((0.55, (top - h + 0.55 * own_bar_h) / fig_h_pt, 0.35, 0.1 * 72.0 / fig_h_pt))
            _word_colorbar(fig, cax, scales[k], cmap_name, sequential,
                           f"{label} (this panel)" if len(pairs) > 1 else label)
        if k < len(pairs) - 1:
            fig.add_artist(mpl.lines.Line2D([0.01, 0.99], [(top - h) / fig_h_pt] * 2, color="#dddddd",
                                            linewidth=0.6))
        top -= h
    if common is not None:
        cax = fig.add_axes((0.3, 0.5 * bottom_h / fig_h_pt, 0.4, 0.16 * 72.0 / fig_h_pt))
        _word_colorbar(fig, cax, common, cmap_name, sequential,
                       f"{label} (shared scale)" if len(pairs) > 1 else label)
    return fig


def plot_time_feature_heatmaps(
    maps: Sequence[Any],
    titles: Optional[Sequence[str]] = None,
    scale: Union[None, str, float] = None,
    *,
    feature_names: Optional[Sequence[str]] = None,
    cmap_name: CmapLike = None,
    sequential: bool = False,
    width: Optional[float] = None,
    label: str = "relevance",
) -> Figure:
    """Several (time, features) relevance maps as stacked heatmaps with colour bars.

    Args:
        maps: one (time, features) array per sample (times may differ).
        titles: one caption per map, or None.
        scale: None: each panel on its own scale with its own colour bar; "shared" (or a
            number): one scale and one colour bar for all. The figure's title says which.
        feature_names, cmap_name, sequential: as in :func:`plot_time_feature_heatmap`.
        width: figure width in inches (default from the longest time axis).
        label: what the colours show (colour bar label).

    Returns:
        The Figure.
    """
    arrays = [np.asarray(m, dtype=np.float64) for m in maps]
    if not arrays:
        raise ValueError("maps is empty: nothing to plot")
    for i, a in enumerate(arrays):
        if a.ndim != 2:
            raise ValueError(f"maps[{i}] must be 2-D (time, features), got shape {a.shape}")
    scales, common = _grid_scales(arrays, scale)
    n = len(arrays)
    n_time = max(a.shape[0] for a in arrays)
    n_feat = max(a.shape[1] for a in arrays)
    w = float(width) if width else float(np.clip(3.0 + 0.22 * n_time, 6.0, 14.0))
    panel_h = float(np.clip(1.3 + 0.25 * n_feat, 2.2, 6.0))
    fig = _HeatmapFigure(figsize=(w, panel_h * n + (0.4 if n > 1 else 0.0)), layout="constrained")
    axes = fig.subplots(n, 1, squeeze=False)[:, 0]
    for k, (a, ax) in enumerate(zip(arrays, axes)):
        plot_time_feature_heatmap(a, feature_names=feature_names, ax=ax, cmap_name=cmap_name,
                                  scale=scales[k] if scales[k] > 0 else None,
                                  title=titles[k] if titles is not None else None,
                                  colorbar=common is None, sequential=sequential,
                                  colorbar_label=f"{label} (this panel)" if n > 1 else label)
        ax.set_xlim(-0.5, n_time - 0.5)  # one time axis for all panels, so steps line up
    if common is not None:
        cb = fig.colorbar(axes[0].images[0], ax=list(axes), shrink=0.9, fraction=0.05, pad=0.02,
                          aspect=25 * n)
        cb.set_label(f"{label} (shared scale)" if n > 1 else label)
    note = _scale_note(common, n, sequential)
    if note:
        fig.suptitle(note, fontsize=9, color="#555555")
    return fig
