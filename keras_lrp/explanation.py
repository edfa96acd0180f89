"""The result of an explanation: :class:`Explanation`, numpy arrays plus what makes them readable.

An :class:`Explanation` holds the input relevance of a batch and the scores it explains, and,
when known, the tokens of each sample and the class names. It indexes like a batch
(``e[0]``, ``e[2:5]``), prints a one-line summary, reports how far each sample is from
conservation (:attr:`Explanation.convergence_delta`), and turns into rows
(:meth:`Explanation.to_records`, :meth:`Explanation.to_pandas`), HTML (:meth:`Explanation.html`,
shown inline in Jupyter), a matplotlib figure (:meth:`Explanation.plot`) or a file
(:meth:`Explanation.save`: ``.png``, ``.html``, ``.json``; :meth:`Explanation.load` reads the JSON).

Models with several inputs give ``relevance`` as a list of arrays, one per input in the order of
``model.inputs``. Methods that draw or tabulate one array take ``input_index=`` and refuse a
list without it.
"""
from __future__ import annotations

import base64
import io
import json
import os
import stat
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np

__all__ = ["Explanation", "output_activation"]

Relevance = Union[np.ndarray, List[np.ndarray]]
ScaleArg = Union[None, str, float]

_JSON_FORMAT = "keras_lrp.explanation"
_JSON_VERSION = 1
_ACTIVATIONS = ("softmax", "sigmoid")


def output_activation(model: Any) -> Optional[str]:
    """``"softmax"`` or ``"sigmoid"`` when the model's last layer applies it (the explained
    scores are the pre-activation, so probabilities are that function of them); None otherwise."""
    try:
        layer = model.layers[-1]
    except (AttributeError, IndexError, TypeError):
        return None
    if type(layer).__name__ == "Softmax":
        return "softmax"
    activation = getattr(layer, "activation", None)
    name = getattr(activation, "__name__", activation)
    return name if name in _ACTIVATIONS else None


@dataclass(repr=False, eq=False)
class Explanation:
    """What :func:`keras_lrp.explain` and :func:`keras_lrp.explain_text` return (numpy arrays).

    Attributes:
        relevance: input relevance, (batch, time, features); for token models, the relevance of
            the embedding vectors, (batch, time, embedding_dim). Multi-input models: a list of
            arrays in the order of ``model.inputs``. For samples of different lengths
            (:func:`keras_lrp.explain_text`) ``time`` is the longest and
            ``relevance[i, lengths[i]:]`` is exactly 0: those steps are not part of sample i
            (it went through the model without padding).
        scores: (batch, outputs) pre-activation outputs of the model (at ``timestep`` for models
            whose output has a time axis).
        target: (batch,) the explained output index per sample.
        rest: (batch,) relevance left on the recurrent layers' zero initial states (and on the
            constant zero outputs of masked steps of Bidirectional return_sequences layers). With
            ``eps = 0, bias_factor = 1``: ``relevance.sum() + rest == scores[target]`` per sample
            (see :attr:`convergence_delta`); otherwise the stabiliser and the dropped bias terms
            absorb the difference. For "ig", "occlusion" and "shapley": the score at the baseline
            (every unmasked step at baseline), so that :attr:`convergence_delta` is the completeness
            / efficiency gap (:mod:`keras_lrp.baselines`).
        timestep: (batch,) the explained output timestep, or None for models without a time axis.
        tokens: optional, one list of tokens per sample (its length is the sample's length).
        class_names: optional, one name per output.
        oov: optional, one bool array per sample, True where the token is unknown to the
            vocabulary (drawn with a ``*``).
        lengths: optional (batch,) number of real timesteps per sample; default from ``tokens``,
            else the full time axis.
        method: "lrp", "gi" (gradient x input), "sa" (sensitivity: squared gradient, >= 0), "ig"
            (Integrated Gradients), "occlusion" or "shapley" (:mod:`keras_lrp.baselines`).
        output_activation: "softmax" / "sigmoid" when the explained scores are logits of that
            function (then :attr:`probabilities` is known), else None.
        texts: optional, the raw text of each sample.
    """

    relevance: Relevance
    scores: np.ndarray
    target: np.ndarray
    rest: np.ndarray
    timestep: Optional[np.ndarray] = None
    tokens: Optional[List[List[str]]] = None
    class_names: Optional[List[str]] = None
    oov: Optional[List[np.ndarray]] = None
    lengths: Optional[np.ndarray] = None
    method: str = "lrp"
    output_activation: Optional[str] = None
    texts: Optional[List[str]] = None

    def __post_init__(self):
        n = len(self.scores)
        if self.tokens is not None:
            self.tokens = [list(map(str, t)) for t in self.tokens]
            if len(self.tokens) != n:
                raise ValueError(f"tokens has {len(self.tokens)} token lists for {n} samples; "
                                 "give one list of tokens per sample.")
            if self.lengths is None:
                self.lengths = np.array([len(t) for t in self.tokens], dtype=np.int64)
        if self.class_names is not None:
            self.class_names = [str(c) for c in self.class_names]
            n_out = self.scores.shape[-1] if self.scores.ndim == 2 else None
            if n_out is not None and len(self.class_names) != n_out:
                raise ValueError(f"class_names has {len(self.class_names)} names but the model has "
                                 f"{n_out} outputs; give one name per output.")
        if self.oov is not None:
            self.oov = [np.asarray(o, dtype=bool) for o in self.oov]
            if len(self.oov) != n:
                raise ValueError(f"oov has {len(self.oov)} masks for {n} samples.")
        if self.lengths is not None:
            self.lengths = np.asarray(self.lengths, dtype=np.int64)
        if self.output_activation not in (None,) + _ACTIVATIONS:
            raise ValueError(f"output_activation must be None, 'softmax' or 'sigmoid', "
                             f"got {self.output_activation!r}.")

    # ------------------------------------------------------------------ arrays

    @property
    def n_inputs(self) -> int:
        """Number of model inputs (1 unless ``relevance`` is a list)."""
        return len(self.relevance) if isinstance(self.relevance, (list, tuple)) else 1

    def _relevances(self) -> List[Optional[np.ndarray]]:
        """One relevance array per model input (None for an integer input that no Embedding reads)."""
        return list(self.relevance) if isinstance(self.relevance, (list, tuple)) else [self.relevance]

    @property
    def word_relevance(self) -> Relevance:
        """(batch, time): relevance summed over the feature (embedding) axis. For several inputs,
        a list: one (batch, time) array per sequence input, None for the others."""
        if isinstance(self.relevance, (list, tuple)):
            return [r.sum(axis=-1) if r is not None and r.ndim >= 3 else None for r in self.relevance]
        return self.relevance.sum(axis=-1)

    def total_relevance(self) -> np.ndarray:
        """(batch,): the relevance summed over every input (``+ rest`` is the explained score when
        ``eps = 0, bias_factor = 1``)."""
        return sum(r.reshape(len(r), -1).sum(axis=1) for r in self._relevances() if r is not None)

    @property
    def explained_score(self) -> np.ndarray:
        """(batch,): the score of each sample's target."""
        return np.take_along_axis(self.scores, self.target[:, None], axis=1)[:, 0]

    @property
    def convergence_delta(self) -> np.ndarray:
        """(batch,): ``explained_score - relevance.sum() - rest`` per sample (all inputs summed).

        0 up to rounding with ``eps=0, bias_factor=1`` (conservation); otherwise the share of
        the score absorbed by the stabiliser and the bias terms. Meaningless for "gi" / "sa".
        For "ig": the completeness gap ``f(x) - f(x') - sum`` of the path integral's quadrature
        (-> 0 as ``steps`` grows); "shapley": the efficiency gap (0 up to rounding); "occlusion":
        how far the step drops are from adding up to ``f(x) - f(x')``."""
        return self.explained_score - self.total_relevance() - self.rest

    @property
    def probabilities(self) -> Optional[np.ndarray]:
        """(batch, outputs): softmax / sigmoid of ``scores`` when ``output_activation`` says the
        scores are logits of it, else None."""
        if self.output_activation == "softmax":
            z = self.scores - self.scores.max(axis=-1, keepdims=True)
            p = np.exp(z)
            return p / p.sum(axis=-1, keepdims=True)
        if self.output_activation == "sigmoid":
            return 1.0 / (1.0 + np.exp(-self.scores))
        return None

    @property
    def prediction(self) -> np.ndarray:
        """(batch,): index of the largest score per sample."""
        return np.argmax(self.scores, axis=-1)

    def length(self, i: int, input_index: int = 0) -> int:
        """Number of real timesteps of sample ``i`` (of input ``input_index``; ``lengths``
        describe single-input explanations)."""
        rel = self._relevances()[input_index]
        if self.lengths is not None and self.n_inputs == 1:
            return int(self.lengths[i])
        return int(rel.shape[1]) if rel.ndim > 1 else 1

    def class_name(self, index: int) -> str:
        """Name of output ``index`` (its number when there are no class names)."""
        index = int(index)
        return self.class_names[index] if self.class_names is not None else str(index)

    # ------------------------------------------------------------------ batch protocol

    def __len__(self) -> int:
        return len(self.scores)

    def __getitem__(self, index) -> "Explanation":
        """``e[i]`` -> an Explanation of batch 1 (so every method works on it); ``e[a:b]``, an
        index array or a bool mask -> an Explanation of those samples, in that order."""
        n = len(self)
        if isinstance(index, (int, np.integer)) and not isinstance(index, bool):
            if not -n <= index < n:
                raise IndexError(f"sample {index} is out of range for an Explanation of {n} samples.")
            rows = np.array([index % n])
        elif isinstance(index, slice):
            rows = np.arange(n)[index]
        else:
            arr = np.asarray(index)
            if arr.dtype == bool:
                if arr.shape != (n,):
                    raise IndexError(f"a boolean mask must have shape ({n},), got {arr.shape}.")
                rows = np.flatnonzero(arr)
            elif arr.ndim == 1 and (arr.size == 0 or np.issubdtype(arr.dtype, np.integer)):
                if arr.size and (arr.max() >= n or arr.min() < -n):
                    raise IndexError(f"sample index out of range for an Explanation of {n} samples.")
                rows = arr.astype(np.int64) % max(n, 1)
            else:
                raise TypeError("index an Explanation with an int, a slice, a list of ints or a "
                                f"boolean mask, got {type(index).__name__}.")

        def take(a):
            return None if a is None else np.asarray(a)[rows]

        def take_list(a):
            return None if a is None else [a[i] for i in rows]

        if isinstance(self.relevance, (list, tuple)):
            relevance = [None if r is None else r[rows] for r in self.relevance]
        else:
            relevance = self.relevance[rows]
            if self.lengths is not None and relevance.ndim >= 2 and len(rows):
                # samples of different lengths: keep the time axis as long as the longest selected
                relevance = relevance[:, : int(self.lengths[rows].max())]
        return replace(self, relevance=relevance, scores=self.scores[rows], target=self.target[rows],
                       rest=self.rest[rows], timestep=take(self.timestep),
                       tokens=take_list(self.tokens), oov=take_list(self.oov),
                       lengths=take(self.lengths), texts=take_list(self.texts))

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    def __repr__(self) -> str:
        n = len(self)
        parts = [f"{n} sample{'s' if n != 1 else ''}"]
        shapes = [(None, "ids") if r is None else r.shape for r in self._relevances()]
        if len(shapes) > 1:
            parts.append(f"inputs={len(shapes)} " + " ".join("(" + ", ".join(map(str, s[1:])) + ")"
                                                             for s in shapes[:4]))
        else:
            s = shapes[0]
            if len(s) == 3:
                if self.lengths is None or n == 0:
                    time = f"time={s[1]}"
                elif len(set(self.lengths.tolist())) == 1:
                    time = f"time={int(self.lengths[0])}"
                else:
                    time = f"time={int(self.lengths.min())}..{int(self.lengths.max())}"
                parts += [time, f"features={s[2]}"]
            else:
                parts.append("shape=(" + ", ".join(map(str, s[1:])) + ")")
        names = [self.class_name(t) for t in self.target[:3]]
        parts.append("target=[" + ", ".join(names) + (", ..." if n > 3 else "") + "]")
        parts.append(f"method={self.method}")
        text = f"Explanation({', '.join(parts)})"
        return text if len(text) < 300 else text[:295] + "...)"

    # ------------------------------------------------------------------ tables

    def _one(self, input_index: Optional[int]) -> np.ndarray:
        """The relevance array of one input: the only one, or ``input_index``."""
        rel = self._relevances()
        if input_index is None:
            if len(rel) > 1:
                raise ValueError(f"this explanation has {len(rel)} inputs (relevance is a list); pass "
                                 f"input_index=0..{len(rel) - 1} to say which one to show.")
            return rel[0]
        if not isinstance(input_index, (int, np.integer)) or not 0 <= input_index < len(rel):
            raise ValueError(f"input_index must be an int in 0..{len(rel) - 1}, got {input_index!r}.")
        if rel[int(input_index)] is None:
            raise ValueError(f"input {input_index} has no relevance: it is integer ids that no Embedding reads.")
        return rel[int(input_index)]

    def _word_scores(self, i: int, rel: np.ndarray) -> np.ndarray:
        """(length,) relevance per timestep of sample ``i`` (summed over features)."""
        r = rel[i]
        r = r.reshape(r.shape[0], -1).sum(axis=1) if r.ndim >= 2 else r
        return np.asarray(r[: self._length_of(i, rel)], dtype=np.float64)

    def _length_of(self, i: int, rel: np.ndarray) -> int:
        if self.lengths is not None and self.n_inputs == 1:
            return int(self.lengths[i])
        return int(rel.shape[1]) if rel.ndim > 1 else 1

    def _labels(self, i: int, marked: bool = False) -> List[str]:
        """Tokens of sample ``i`` (with ``*`` on unknown ones if ``marked``), else step numbers."""
        if self.tokens is None:
            return [str(t) for t in range(self.length(i))]
        toks = list(self.tokens[i])
        if marked and self.oov is not None:
            toks = [t + "*" if o else t for t, o in zip(toks, self.oov[i])]
        return toks

    def to_records(self, input_index: Optional[int] = None) -> List[Dict[str, Any]]:
        """One dict per sample and timestep (token): ``sample``, ``position``, ``token`` (None
        without tokens), ``oov``, ``relevance`` (summed over features), ``target``,
        ``class_name`` (of the target), ``score`` (the target's score)."""
        rel = self._one(input_index)
        rows = []
        scores = self.explained_score
        for i in range(len(self)):
            toks = self.tokens[i] if self.tokens is not None else None
            for pos, r in enumerate(self._word_scores(i, rel)):
                rows.append({"sample": i, "position": pos, "token": toks[pos] if toks else None,
                             "oov": bool(self.oov[i][pos]) if self.oov is not None else False,
                             "relevance": float(r), "target": int(self.target[i]),
                             "class_name": self.class_name(self.target[i]), "score": float(scores[i])})
        return rows

    def to_pandas(self, input_index: Optional[int] = None):
        """:meth:`to_records` as a ``pandas.DataFrame`` (one row per token). Needs pandas."""
        try:
            import pandas as pd
        except ImportError:
            raise ImportError("Explanation.to_pandas needs pandas, which is not installed: "
                              "pip install pandas (or use Explanation.to_records(), a list of dicts)."
                              ) from None
        return pd.DataFrame.from_records(self.to_records(input_index),
                                         columns=["sample", "position", "token", "oov", "relevance",
                                                  "target", "class_name", "score"])

    # ------------------------------------------------------------------ pictures

    def title(self, i: int) -> str:
        """Caption of sample ``i``: predicted class (and probability) and the explained target."""
        pred = int(self.prediction[i])
        tgt = int(self.target[i])
        probs = self.probabilities
        score = float(self.scores[i, tgt])
        if self.scores.shape[1] == 1 and self.class_names is None and self.output_activation is None:
            # a single-output regressor: no class was "predicted"
            step = f" at output step {int(self.timestep[i])}" if self.timestep is not None else ""
            return f"{self._what} for the output (score {score:+.3g}){step}"
        head = f"predicted {self.class_name(pred)}"
        if probs is not None:
            head += f" (p={probs[i, pred]:.2f})"
        tail = f"{self._what} for {self.class_name(tgt)}"
        tail += f" (p={probs[i, tgt]:.2f}, score {score:+.3g})" if probs is not None and tgt != pred \
            else f" (score {score:+.3g})"
        if self.timestep is not None:
            tail += f" at output step {int(self.timestep[i])}"
        return f"{head}; {tail}"

    @property
    def _what(self) -> str:
        """What the values are, for captions and colour bars."""
        return {"lrp": "relevance", "gi": "gradient x input", "sa": "sensitivity"}.get(self.method, self.method)

    @property
    def _sequential(self) -> bool:
        return self.method == "sa"

    def _scale(self, scale: ScaleArg, rows: Sequence[int], rel: np.ndarray) -> Optional[float]:
        if isinstance(scale, str):
            if scale != "shared":
                raise ValueError(f"scale must be None (each sample its own), 'shared' or a positive "
                                 f"number, got {scale!r}.")
            return self._shared_scale(rows, rel)
        return scale

    def _shared_scale(self, rows: Sequence[int], rel: np.ndarray) -> float:
        from .visualize import shared_scale

        if self.tokens is not None:
            return shared_scale(self._word_scores(i, rel) for i in rows) or 1.0
        return shared_scale(rel[i][: self._length_of(i, rel)] for i in rows) or 1.0

    def html(self, scale: ScaleArg = None, *, max_samples: int = 50, input_index: Optional[int] = None,
             full_page: bool = False, page_title: Optional[str] = None) -> str:
        """An HTML heatmap per sample (tokens coloured by relevance; a time x feature image for
        models without tokens), each titled with :meth:`title`.

        Args:
            scale: None: each sample on its own colour scale; "shared": one scale for all (so
                samples can be compared); a number: that ``|relevance|`` at full colour.
            max_samples: draw at most this many samples (a note says how many were left out).
            input_index: which input to show for multi-input models.
            full_page: a standalone ``<!DOCTYPE html>`` page instead of a ``<div>`` fragment.
            page_title: its title (default from the method, e.g. "LRP relevance heatmaps").
        """
        if page_title is None:
            page_title = {"lrp": "LRP relevance heatmaps", "gi": "Gradient x input heatmaps",
                          "sa": "Sensitivity heatmaps"}.get(self.method, "Heatmaps")
        from .visualize import html_heatmap, html_legend, html_page

        rel = self._one(input_index)
        rows = list(range(min(len(self), max_samples)))
        common = self._scale(scale, rows, rel)
        more = len(self) - len(rows)
        note = f"... and {more} more samples (max_samples={max_samples})" if more > 0 else None
        if self.tokens is not None:
            sentences = [(self._labels(i), self._word_scores(i, rel)) for i in rows]
            oov = [self.oov[i] for i in rows] if self.oov is not None else None
            titles = [self._caption(i) for i in rows]
            if full_page:
                page = html_page(sentences, scale=common, titles=titles, page_title=page_title,
                                 oov=oov, sequential=self._sequential)
                return page.replace("</body>", f"<p class=\"lrp-note\">{note}</p></body>") if note else page
            scale_note = ("colour scale shared by all samples" if common is not None
                          else "each sample on its own colour scale")
            parts = ['<div class="lrp-explanation" style="font-family:system-ui,sans-serif;">',
                     f'<div style="font-size:0.85em;color:#555;">{_escape(repr(self))}; {scale_note}; '
                     + ("* unknown to the vocabulary" if oov is not None and any(o.any() for o in oov) else "")
                     + "</div>"]
            if common is not None:
                parts.append(html_legend(common, sequential=self._sequential))
            for k, i in enumerate(rows):
                words, arr = sentences[k]
                parts.append(f'<div style="margin:0.4em 0 0.8em 0;"><div style="font-size:0.9em;'
                             f'font-weight:600;color:#444;"><bdi>{_escape(titles[k])}</bdi></div>')
                parts.append(html_heatmap(words, arr, scale=common, oov=oov[k] if oov else None,
                                          sequential=self._sequential).rstrip("\n"))
                if common is None:
                    parts.append(html_legend(float(np.max(np.abs(arr))) if arr.size else 0.0,
                                             sequential=self._sequential))
                parts.append("</div>")
            if note:
                parts.append(f'<div style="font-size:0.85em;color:#666;">{_escape(note)}</div>')
            parts.append("</div>")
            return "\n".join(parts)
        # No tokens: one time x feature image per sample, embedded as PNG.
        body = [f"<h1>{_escape(page_title)}</h1>" if full_page else "",
                f'<div style="font-size:0.85em;color:#555;">{_escape(repr(self))}</div>']
        fig = self._figure(scale=scale, max_samples=max_samples, input_index=input_index)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100)
        data = base64.b64encode(buf.getvalue()).decode("ascii")
        body.append(f'<img alt="relevance heatmap" style="max-width:100%;" src="data:image/png;base64,{data}">')
        if note:
            body.append(f'<div style="font-size:0.85em;color:#666;">{_escape(note)}</div>')
        fragment = '<div class="lrp-explanation" style="font-family:system-ui,sans-serif;">' \
            + "\n".join(b for b in body if b) + "</div>"
        if not full_page:
            return fragment
        return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
                f"<title>{_escape(page_title)}</title></head><body>{fragment}</body></html>\n")

    def _caption(self, i: int) -> str:
        text = f"sample {i}: " if len(self) > 1 else ""
        return text + self.title(i)

    def _repr_html_(self) -> str:
        return self.html(max_samples=20)

    def plot(self, scale: ScaleArg = None, *, max_samples: int = 8, input_index: Optional[int] = None,
             width: float = 9.0):
        """A matplotlib figure: word heatmaps (one panel per sample) for explanations with tokens,
        else a time x feature heatmap per sample, each titled with :meth:`title`, with colour
        bars; ``scale`` as in :meth:`html` (the figure says whether panels share it).

        Returns:
            ``matplotlib.figure.Figure``, one of pyplot's figures (as if ``plt.figure`` made it):
            ``plt.show()`` displays it in a script, ``fig.savefig("x.png")`` saves it,
            ``plt.close(fig)`` frees it; in Jupyter it shows once. To write a file without a
            figure left open, use :meth:`save` (``e.save("x.png")``).
        """
        from .visualize import to_pyplot

        return to_pyplot(self._figure(scale, max_samples=max_samples, input_index=input_index, width=width))

    def _figure(self, scale: ScaleArg = None, *, max_samples: int = 8, input_index: Optional[int] = None,
                width: float = 9.0):
        """:meth:`plot`'s figure, pyplot-free (for :meth:`save` and :meth:`html`)."""
        from .visualize import plot_time_feature_heatmaps, plot_word_heatmaps

        if len(self) == 0:
            raise ValueError("this Explanation has no samples to plot.")
        rel = self._one(input_index)
        rows = list(range(min(len(self), max_samples)))
        common = self._scale(scale, rows, rel)
        titles = [self._caption(i) for i in rows]
        if len(self) > len(rows):
            titles[-1] += f"   (... {len(self) - len(rows)} more not shown)"
        if self.tokens is not None:
            return plot_word_heatmaps([(self._labels(i), self._word_scores(i, rel)) for i in rows],
                                      titles=titles, scale=common, sequential=self._sequential,
                                      oov=[self.oov[i] for i in rows] if self.oov is not None else None,
                                      width=width, label=self._what)
        maps = []
        for i in rows:
            r = rel[i][: self._length_of(i, rel)]
            maps.append(r if r.ndim == 2 else r.reshape(len(r), -1))
        return plot_time_feature_heatmaps(maps, titles=titles, scale=common, sequential=self._sequential,
                                          label=self._what)

    # ------------------------------------------------------------------ files

    def to_json_dict(self) -> Dict[str, Any]:
        """A JSON-serialisable dict: relevance (per sample, cut to its length), tokens, oov,
        scores, target, rest, timestep, class names, method, convergence delta."""
        rels = self._relevances()
        dtype = str(next(r for r in rels if r is not None).dtype)

        def rows(r):
            if r is None:
                return None
            return [r[i][: self._length_of(i, r)].tolist() if r.ndim >= 2 else r[i].tolist() for i in range(len(self))]

        return {
            "format": _JSON_FORMAT, "version": _JSON_VERSION, "dtype": dtype, "method": self.method,
            "relevance": [rows(r) for r in rels] if self.n_inputs > 1 else rows(rels[0]),
            "multi_input": self.n_inputs > 1,
            "time": [int(r.shape[1]) if r is not None and r.ndim >= 2 else None for r in rels],
            "tokens": self.tokens, "oov": [o.tolist() for o in self.oov] if self.oov is not None else None,
            "texts": self.texts,
            "lengths": self.lengths.tolist() if self.lengths is not None else None,
            "scores": self.scores.tolist(), "target": self.target.tolist(), "rest": self.rest.tolist(),
            "timestep": self.timestep.tolist() if self.timestep is not None else None,
            "class_names": self.class_names, "output_activation": self.output_activation,
            "convergence_delta": self.convergence_delta.tolist(),
        }

    def save(self, path: Union[str, os.PathLike], scale: ScaleArg = None, **kwargs) -> Path:
        """Write the explanation to ``path``, by extension: ``.png`` (:meth:`plot`'s picture; no
        figure is left open, so scripts can save thousands), ``.html``
        (:meth:`html` as a full page) or ``.json`` (:meth:`to_json_dict`; read back with
        :meth:`load`). ``scale`` and ``kwargs`` go to :meth:`plot` / :meth:`html`.

        The file is written under a new temporary name in the same folder and renamed over
        ``path`` (:class:`keras_lrp.safe_io.AtomicFile`): a symlink at ``path`` is replaced, not
        followed, and a failed save leaves ``path`` as it was."""
        from .safe_io import atomic_open

        path = Path(path)
        suffix = path.suffix.lower()
        if suffix not in (".png", ".html", ".htm", ".json"):
            raise ValueError(f"Explanation.save writes .png, .html or .json files; got {str(path)!r}.")
        if not path.parent.exists():
            raise ValueError(f"directory {str(path.parent)!r} does not exist; create it first.")
        if suffix == ".png":
            fig = self._figure(scale=scale, **{k: v for k, v in kwargs.items() if k != "dpi"})
            with atomic_open(path, "wb") as f:
                fig.savefig(f, format="png", dpi=kwargs.get("dpi", 150))
        elif suffix in (".html", ".htm"):
            page = self.html(scale=scale, full_page=True, **kwargs)
            with atomic_open(path, "w") as f:
                f.write(page)
        else:
            with atomic_open(path, "w") as f:
                json.dump(self.to_json_dict(), f)
                f.write("\n")
        return path

    @classmethod
    def load(cls, path: Union[str, os.PathLike], *, max_bytes: Optional[int] = None) -> "Explanation":
        """Read an Explanation written by ``save("....json")`` (plain JSON, never pickle).

        The file is untrusted data: every field is checked (types, one entry per sample, targets
        among the outputs, rows no longer than ``time``), nesting is limited, and the arrays it
        declares may take at most ``max_bytes`` (default 64 x the file's size + 64 MiB: a saved
        explanation pads short rows with zeros, but never declares far more than it holds).

        Raises:
            FileNotFoundError; ValueError naming the file and the field.
        """
        return _read_json(os.fspath(path), max_bytes, cls)


_MAX_JSON_DEPTH = 16     # a saved explanation nests 6 deep (relevance of several inputs, time x features)
_LOAD_DTYPES = ("float16", "float32", "float64")


def _read_json(path: str, max_bytes: Optional[int], cls) -> Explanation:
    """:meth:`Explanation.load`: parse ``path`` and check every field before allocating."""
    def bad(message: str) -> ValueError:
        return ValueError(f"{path}: {message}; expected a file written by Explanation.save('....json').")

    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"explanation file not found: {path}") from None
    if not stat.S_ISREG(info.st_mode):
        raise ValueError(f"{path}: not a regular file; give the path of a .json file written by Explanation.save.")
    with open(path, "rb") as f:
        raw = f.read()
    try:
        data = json.loads(raw.decode("utf-8"))
    except json.JSONDecodeError as e:
        raise bad(f"not valid JSON ({e.msg}, line {e.lineno})") from None
    except UnicodeDecodeError as e:
        raise bad(f"not UTF-8 text ({e.reason} at byte {e.start})") from None
    except RecursionError:
        raise bad(f"JSON nested too deeply (a saved explanation nests {_MAX_JSON_DEPTH} levels at most)") from None
    except ValueError as e:          # an integer of over 4,300 digits
        raise bad(f"not readable JSON ({str(e)[:120]})") from None
    if not isinstance(data, dict) or data.get("format") != _JSON_FORMAT:
        raise ValueError(f"{path}: not an explanation file (expected \"format\": \"{_JSON_FORMAT}\").")
    if data.get("version") != _JSON_VERSION:
        raise ValueError(f"{path}: unsupported version {str(data.get('version'))[:40]!r} (this keras_lrp "
                         f"reads {_JSON_VERSION}).")
    if _json_depth(data, _MAX_JSON_DEPTH) > _MAX_JSON_DEPTH:
        raise bad(f"JSON nested more than {_MAX_JSON_DEPTH} levels deep")
    if data.get("dtype") not in _LOAD_DTYPES:
        raise bad(f"\"dtype\" must be one of {', '.join(_LOAD_DTYPES)}, got {str(data.get('dtype'))[:40]!r}")
    dtype = np.dtype(data["dtype"])

    def numbers(name: str, value, ndim: int) -> np.ndarray:
        try:
            arr = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError, OverflowError):
            arr = None
        if arr is None or arr.ndim != ndim:
            raise bad(f"\"{name}\" must be {'a list' if ndim == 1 else 'a list of lists'} of numbers")
        return arr

    def ints(name: str, value, n: int, low: int, high: Optional[int] = None) -> np.ndarray:
        if not isinstance(value, list) or len(value) != n or not all(
                isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise bad(f"\"{name}\" must be a list of {n} integers, one per sample")
        arr = np.asarray([min(max(v, -1), 2**62) for v in value], dtype=np.int64)   # clipped: no overflow
        if len(arr) and (arr.min() < low or (high is not None and arr.max() >= high)):
            where = int(np.flatnonzero((arr < low) | ((arr >= high) if high is not None else False))[0])
            valid = f"{low}..{high - 1}" if high is not None else f">= {low}"
            raise bad(f"\"{name}\" of sample {where} is {str(value[where])[:40]}, out of range (valid {valid})")
        return arr

    def strings(name: str, value, n: int, nested: bool = False):
        if value is None:
            return None
        ok = isinstance(value, list) and len(value) == n and all(
            isinstance(v, list) and all(isinstance(t, str) for t in v) if nested else isinstance(v, str)
            for v in value)
        if not ok:
            raise bad(f"\"{name}\" must be null or {n} {'lists of strings' if nested else 'strings'}")
        return value

    scores = data.get("scores")
    scores = numbers("scores", scores, 2 if isinstance(scores, list) and scores and isinstance(scores[0], list) else 1)
    scores = scores.reshape(len(scores), -1)
    n, n_out = scores.shape
    target = ints("target", data.get("target"), n, 0, n_out)
    rest = numbers("rest", data.get("rest"), 1)
    if len(rest) != n:
        raise bad(f"\"rest\" must hold {n} numbers, one per sample")
    timestep = None if data.get("timestep") is None else ints("timestep", data["timestep"], n, 0)
    multi = data.get("multi_input")
    if not isinstance(multi, bool):
        raise bad("\"multi_input\" must be true or false")
    rel_rows = data.get("relevance") if multi else [data.get("relevance")]
    times = data.get("time")
    if not isinstance(rel_rows, list) or not rel_rows or not isinstance(times, list) or len(times) != len(rel_rows):
        raise bad("\"relevance\" and \"time\" must hold one entry per model input")
    lengths = data.get("lengths")
    tokens = strings("tokens", data.get("tokens"), n, nested=True)
    texts = strings("texts", data.get("texts"), n)
    class_names = strings("class_names", data.get("class_names"), n_out)
    oov = data.get("oov")
    if oov is not None and not (isinstance(oov, list) and len(oov) == n and all(
            isinstance(o, list) and all(isinstance(b, bool) for b in o) for o in oov)):
        raise bad(f"\"oov\" must be null or {n} lists of true/false")
    if not isinstance(data.get("method"), str) or len(data["method"]) > 40:
        raise bad("\"method\" must be a short string (\"lrp\", \"gi\", \"ig\", ...)")

    cap = 64 * len(raw) + 64 * 2**20 if max_bytes is None else int(max_bytes)
    shapes = []
    for k, (rows, time) in enumerate(zip(rel_rows, times)):
        name = "relevance" if not multi else f"relevance[{k}]"
        if rows is None and multi:     # an integer input that no Embedding reads
            shapes.append(None)
            continue
        if not isinstance(rows, list) or len(rows) != n or not all(isinstance(r, list) for r in rows):
            raise bad(f"\"{name}\" must hold {n} rows, one per sample")
        if time is not None and (not isinstance(time, int) or isinstance(time, bool) or time < 0):
            raise bad(f"\"time\" of input {k} must be null or an integer >= 0")
        tail = next((_row_shape(r, name, bad)[1:] for r in rows if r), ())
        if time is not None:
            longest = max((len(r) for r in rows), default=0)
            if longest > time:
                raise bad(f"\"{name}\" has a row of {longest} steps, longer than its \"time\" {time}")
        shape = (n,) + ((time,) if time is not None else ()) + tuple(tail)
        shapes.append(shape)
    need = sum(int(np.prod(s, dtype=object)) * dtype.itemsize for s in shapes if s is not None)
    if need > cap:
        raise ValueError(f"{path}: the arrays it declares take {need / 2**20:,.0f} MiB, more than max_bytes="
                         f"{cap:,} (default 64 x the file's {len(raw):,} bytes + 64 MiB); a file written by "
                         "Explanation.save declares little more than it holds. For a file you trust, pass "
                         "a larger max_bytes= to Explanation.load.")
    rels = []
    for k, (rows, shape) in enumerate(zip(rel_rows, shapes)):
        if shape is None:
            rels.append(None)
            continue
        name = "relevance" if not multi else f"relevance[{k}]"
        try:
            if len(shape) == 1 or times[k] is None:
                rels.append(np.asarray(rows, dtype=dtype).reshape(shape))
                continue
            out = np.zeros(shape, dtype=dtype)
            for i, r in enumerate(rows):
                if r:
                    out[i, : len(r)] = np.asarray(r, dtype=dtype)
            rels.append(out)
        except (TypeError, ValueError, OverflowError):
            raise bad(f"\"{name}\" must hold numbers, every row of shape (steps, {', '.join(map(str, shape[2:]))})"
                      ) from None
    if lengths is not None:
        lengths = ints("lengths", lengths, n, 0, None if times[0] is None else times[0] + 1)
    try:
        return cls(relevance=rels if multi else rels[0], scores=scores.astype(dtype), target=target,
                   rest=rest.astype(dtype), timestep=timestep, tokens=tokens, class_names=class_names,
                   oov=None if oov is None else [np.asarray(o, bool) for o in oov], lengths=lengths,
                   method=data["method"], output_activation=data.get("output_activation"), texts=texts)
    except ValueError as e:
        raise bad(str(e).rstrip(".")) from None


def _row_shape(row: list, name: str, bad) -> tuple:
    """The shape of one sample's relevance rows (steps, features...), refusing ragged ones."""
    try:
        return np.shape(np.asarray(row, dtype=np.float64))
    except (TypeError, ValueError, OverflowError):
        raise bad(f"\"{name}\" rows must be lists of numbers of one shape") from None


def _json_depth(value, limit: int) -> int:
    """How deep ``value`` (parsed JSON) nests, counted up to ``limit + 1`` (iteratively)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (list, dict)):
            deepest = max(deepest, depth)
            if deepest > limit:
                return deepest
            stack.extend((v, depth + 1) for v in (item.values() if isinstance(item, dict) else item)
                         if isinstance(v, (list, dict)))
    return deepest


def _escape(text: str) -> str:
    import html

    return html.escape(text, quote=True)


def concatenate(parts: Sequence[Explanation], order: Optional[np.ndarray] = None) -> Explanation:
    """Explanations of the same model (maybe of different time lengths) as one, samples in the
    order of ``parts`` (then permuted by ``order``: result row ``k`` is row ``order[k]``).
    Shorter samples are zero-padded on the time axis and keep their ``lengths``."""
    if not parts:
        raise ValueError("nothing to concatenate.")
    first = parts[0]
    n_in = first.n_inputs

    def lengths_of(p):
        if p.lengths is not None:
            return p.lengths
        return np.full(len(p), p.length(0) if len(p) else 0, np.int64)

    rels = []
    for k in range(n_in):
        arrays = [p._relevances()[k] for p in parts]
        if arrays[0] is None:
            rels.append(None)
            continue
        if arrays[0].ndim >= 2:
            time = max(a.shape[1] for a in arrays)
            arrays = [np.pad(a, [(0, 0), (0, time - a.shape[1])] + [(0, 0)] * (a.ndim - 2)) for a in arrays]
        rels.append(np.concatenate(arrays))

    def cat_list(name):
        vals = [getattr(p, name) for p in parts]
        return None if any(v is None for v in vals) else [x for v in vals for x in v]

    timesteps = [p.timestep for p in parts]
    out = replace(first, relevance=rels if n_in > 1 else rels[0],
                  scores=np.concatenate([p.scores for p in parts]),
                  target=np.concatenate([p.target for p in parts]),
                  rest=np.concatenate([p.rest for p in parts]),
                  timestep=None if any(t is None for t in timesteps) else np.concatenate(timesteps),
                  tokens=cat_list("tokens"), oov=cat_list("oov"), texts=cat_list("texts"),
                  lengths=np.concatenate([lengths_of(p) for p in parts]))
    return out if order is None else out[np.asarray(order, dtype=np.int64)]

