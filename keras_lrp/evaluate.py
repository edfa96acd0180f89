"""Faithfulness evaluation of explanations: word deletion and the toy arithmetic task.

**Word deletion** (Arras et al. 2017, "Explaining Recurrent Neural Network Predictions in Sentiment
Analysis"). Every sentence is explained once, for its *true* class. On the sentences the model
classifies correctly, words are deleted in *decreasing* order of relevance and the accuracy is
recorded after 0, 1, 2, ... deletions: a faithful explanation deletes the evidence for the true
class first, so the accuracy falls fast. On the misclassified sentences words are deleted in
*increasing* order of relevance (the evidence against the true class first), so the accuracy rises.
Deleting a word means replacing its input (``replacement``):

* ``"zero"`` (default for models on embedding vectors, as in the paper): the zero vector;
* ``"unk"`` (default for models that start with an ``Embedding``): the unknown token id
  (``unk_id``), or for vector models the unknown token's embedding row;
* ``"pad"``: the padding id (``pad_id``); with ``Embedding(mask_zero=True)`` this masks the word out.

A sentence with fewer words than ``k`` has all its words deleted after ``k`` deletions. Ties in
relevance are broken by position (first word first). Methods (:data:`DELETION_METHODS`): ``lrp``
(signal-take-all), ``lrp_prop`` and ``lrp_half`` (the other gate rules), ``gi`` (gradient x input),
``sa`` (sensitivity analysis, squared gradient norm) and ``random`` (a seeded random order).

**Toy arithmetic task** (Arras et al. 2019, "Evaluating Recurrent Neural Network Explanations";
data and model in :mod:`keras_lrp.toy`). The target is the sum (or difference) of two marked
numbers, so the ideal relevance of each timestep is known. :func:`marked_input_metrics` measures

* ``top2_accuracy``: the fraction of samples whose two timesteps of largest ``|relevance|`` are
  exactly the two marked ones;
* ``corr_first`` / ``corr_second``: Pearson correlation, over samples, between the relevance of the
  first (second) marked timestep and its contribution to the target (``n_a``; ``n_b`` for "add",
  ``-n_b`` for "subtract");
* ``marked_share``: the mean fraction of the total ``|relevance|`` that falls on the marked timesteps
  (over the samples whose relevance is finite).

The relevance of a timestep is its relevance summed over the three input features.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Mapping, Optional, Sequence, TextIO, Tuple, Union

import numpy as np

__all__ = [
    "DELETION_METHODS", "TOY_METHODS", "REPLACEMENTS", "method_relevance", "deletion_order",
    "deletion_masks", "word_deletion", "WordDeletionResult", "sst_word_deletion", "find_sst_dir",
    "marked_input_metrics", "toy_evaluation", "ToyResult", "run_toy_experiment",
    "add_evaluate_parser", "run_evaluate",
]

#: method name -> keyword arguments of :func:`keras_lrp.explain` (``random`` needs none).
_METHOD_KWARGS = {
    "lrp": dict(method="lrp", rule="all"),
    "gi": dict(method="gi"),
    "sa": dict(method="sa"),
    "random": None,
    "lrp_prop": dict(method="lrp", rule="prop"),
    "lrp_half": dict(method="lrp", rule="half"),
}
#: The methods compared by word deletion, in the order of the tables.
DELETION_METHODS = tuple(_METHOD_KWARGS)
#: The methods compared on the toy task.
TOY_METHODS = DELETION_METHODS
#: How a deleted word is replaced (see the module docstring).
REPLACEMENTS = ("zero", "unk", "pad")

_LABELS = {"lrp": "LRP (all)", "gi": "GI", "sa": "SA", "random": "random",
           "lrp_prop": "LRP (prop)", "lrp_half": "LRP (half)"}
_STYLES = {"lrp": dict(color="#d62728", lw=2.2, marker="o"),
           "gi": dict(color="#1f77b4", lw=1.8, marker="s"),
           "sa": dict(color="#2ca02c", lw=1.8, marker="^"),
           "random": dict(color="#555555", lw=1.5, ls="--", marker="x"),
           "lrp_prop": dict(color="#ff7f0e", lw=1.5, ls=":", marker="d"),
           "lrp_half": dict(color="#9467bd", lw=1.5, ls=":", marker="v")}


# ----------------------------------------------------------------------------- shared helpers

def _check_methods(methods: Union[str, Sequence[str]], known: Sequence[str]) -> Tuple[str, ...]:
    if isinstance(methods, str):
        methods = [m.strip() for m in methods.split(",") if m.strip()]
    methods = tuple(methods)
    if not methods:
        raise ValueError(f"give at least one method; known: {', '.join(known)}")
    unknown = [m for m in methods if m not in known]
    if unknown:
        raise ValueError(f"unknown method(s) {', '.join(map(repr, unknown))}; known: {', '.join(known)}")
    if len(set(methods)) != len(methods):
        raise ValueError(f"methods are listed twice: {methods}")
    return methods


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def method_relevance(model, inputs, target, method: str, *, eps: float = 1e-3,
                     bias_factor: float = 0.0, dtype: str = "float32", batch_size: int = 256,
                     rng: Optional[np.random.Generator] = None) -> np.ndarray:
    """Relevance per timestep, (batch, time), of ``method`` (one of :data:`DELETION_METHODS`).

    ``inputs`` are (batch, time, features) floats or (batch, time) token ids; ``target`` is an
    int or one per sample. ``random`` draws uniform numbers from ``rng`` (required for it).
    """
    if method not in _METHOD_KWARGS:
        raise ValueError(f"unknown method {method!r}; known: {', '.join(DELETION_METHODS)}")
    x = np.asarray(inputs)
    if method == "random":
        if rng is None:
            raise ValueError("method 'random' needs rng=np.random.default_rng(seed)")
        return rng.random(x.shape[:2])
    from .explainer import explain

    e = explain(model, x, target, eps=eps, bias_factor=bias_factor, dtype=dtype,
                batch_size=batch_size, **_METHOD_KWARGS[method])
    with np.errstate(over="ignore", invalid="ignore"):   # an exploding rule (prop) may overflow
        return e.word_relevance


def deletion_order(relevance: np.ndarray, descending) -> np.ndarray:
    """Order in which to delete the words: (batch, time) timestep indices.

    Args:
        relevance: (batch, time).
        descending: a bool, or one bool per sample: True = most relevant word first (for correctly
            classified sentences), False = least relevant first (misclassified ones).

    Ties are broken by position (earlier timestep first). NaN relevance (an overflow of the
    method) ranks like 0; +-inf rank as the largest / smallest values.
    """
    r = np.asarray(relevance, dtype=np.float64)
    if r.ndim != 2:
        raise ValueError(f"relevance must be (batch, time), got shape {r.shape}")
    r = np.where(np.isnan(r), 0.0, r)
    desc = np.broadcast_to(np.asarray(descending, dtype=bool), (r.shape[0],))
    key = np.where(desc[:, None], -r, r)
    return np.argsort(key, axis=1, kind="stable")


def deletion_masks(order: np.ndarray, max_deletions: int) -> np.ndarray:
    """(max_deletions + 1, batch, time) bool: ``masks[k, b, t]`` is True when timestep ``t`` of
    sample ``b`` is among its first ``k`` deletions in ``order`` (all of them once k >= time)."""
    order = np.asarray(order)
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(order.shape[1])[None, :].repeat(order.shape[0], 0), axis=1)
    k = np.arange(max_deletions + 1)[:, None, None]
    return ranks[None] < k


@contextlib.contextmanager
def _quiet_retracing():
    """Silence TensorFlow's "triggered tf.function retracing" warnings while the explainers of
    several methods are compiled (expected here, and harmless) and sequence lengths vary."""
    import tensorflow as tf

    logger = tf.get_logger()
    level = logger.level
    logger.setLevel("ERROR")
    try:
        yield
    finally:
        logger.setLevel(level)


def _figure(**kwargs):
    """A pyplot-free matplotlib Figure that Jupyter shows inline (as PNG) without ``%matplotlib``."""
    import io

    from matplotlib.figure import Figure

    class _InlineFigure(Figure):
        def _repr_png_(self) -> bytes:
            buf = io.BytesIO()
            self.savefig(buf, format="png")
            return buf.getvalue()

    return _InlineFigure(**kwargs)


class _Progress:
    """A one-line progress report on a stream (stderr by default)."""

    def __init__(self, what: str, total: int, enabled: bool, stream: Optional[TextIO] = None):
        self.what, self.total, self.enabled = what, total, enabled
        self.stream = stream if stream is not None else sys.stderr
        self.done, self.t0, self.last = 0, time.perf_counter(), 0.0

    def update(self, n: int) -> None:
        self.done += n
        now = time.perf_counter()
        if self.enabled and (now - self.last > 0.5 or self.done >= self.total):
            self.last = now
            end = "\n" if self.done >= self.total else ""
            self.stream.write(f"\r{self.what}: {self.done}/{self.total} ({100 * self.done // max(self.total, 1)}%, "
                              f"{now - self.t0:.0f} s){end}")
            self.stream.flush()


# ----------------------------------------------------------------------------- word deletion

@dataclass
class WordDeletionResult:
    """Accuracy curves of :func:`word_deletion`.

    Attributes:
        methods: the compared methods.
        deletions: (max_deletions + 1,) the numbers of deleted words, 0, 1, ...
        correct: method -> (max_deletions + 1,) accuracy on the initially correctly classified
            sentences, most relevant words deleted first (starts at 1.0).
        misclassified: method -> accuracy on the initially misclassified sentences, least
            relevant words deleted first (starts at 0.0).
        n_correct, n_misclassified: the number of sentences in each group.
        nonfinite: method -> number of sentences whose relevance had NaN or inf values (an
            overflowing rule; such words are ordered as described in :func:`deletion_order`).
        settings: replacement, eps, bias_factor, seed, ... (for the record).
    """

    methods: Tuple[str, ...]
    deletions: np.ndarray
    correct: Dict[str, np.ndarray]
    misclassified: Dict[str, np.ndarray]
    n_correct: int
    n_misclassified: int
    nonfinite: Dict[str, int] = field(default_factory=dict)
    settings: Dict[str, object] = field(default_factory=dict)

    @property
    def accuracy(self) -> float:
        """The model's accuracy on all evaluated sentences (before any deletion)."""
        n = self.n_correct + self.n_misclassified
        return self.n_correct / n if n else float("nan")

    def to_dict(self) -> dict:
        """JSON-serialisable copy."""
        return {"methods": list(self.methods), "deletions": self.deletions.tolist(),
                "correct": {m: v.tolist() for m, v in self.correct.items()},
                "misclassified": {m: v.tolist() for m, v in self.misclassified.items()},
                "n_correct": self.n_correct, "n_misclassified": self.n_misclassified,
                "accuracy": self.accuracy, "nonfinite": dict(self.nonfinite), "settings": dict(self.settings)}

    def table(self) -> str:
        """Markdown tables (accuracy in %) of both experiments."""
        head = "| method | " + " | ".join(str(int(k)) for k in self.deletions) + " |"
        rule = "| --- | " + " | ".join("---:" for _ in self.deletions) + " |"
        out = []
        for title, curves, n in (
                (f"Initially correct sentences (n = {self.n_correct}), most relevant words deleted first: "
                 "accuracy (%) after k deletions (lower = more faithful)", self.correct, self.n_correct),
                (f"Initially misclassified sentences (n = {self.n_misclassified}), least relevant words "
                 "deleted first: accuracy (%) after k deletions (higher = more faithful)",
                 self.misclassified, self.n_misclassified)):
            out += [f"**{title}**", "", head, rule]
            for m in self.methods:
                vals = " | ".join("–" if n == 0 else f"{100 * v:.1f}" for v in curves[m])
                out.append(f"| {_LABELS.get(m, m)} | {vals} |")
            out.append("")
        broken = {m: n for m, n in self.nonfinite.items() if n}
        if broken:
            out.append("Sentences with non-finite (overflowing) relevance: " +
                       ", ".join(f"{_LABELS.get(m, m)} {n}" for m, n in broken.items()))
            out.append("")
        return "\n".join(out)

    def plot(self, title: Optional[str] = None):
        """Two panels (correct, misclassified) of accuracy vs number of deleted words; a Figure."""
        fig = _figure(figsize=(10.0, 4.2), layout="constrained")
        axes = fig.subplots(1, 2)
        for ax, curves, n, name in ((axes[0], self.correct, self.n_correct, "correctly classified"),
                                    (axes[1], self.misclassified, self.n_misclassified, "misclassified")):
            for m in self.methods:
                ax.plot(self.deletions, 100 * curves[m], label=_LABELS.get(m, m), ms=4, **_STYLES.get(m, {}))
            order = "decreasing" if curves is self.correct else "increasing"
            ax.set_title(f"{name} (n = {n}): delete in {order} relevance", fontsize=10)
            ax.set_xlabel("number of deleted words")
            ax.set_ylabel("accuracy (%)")
            ax.set_xticks(self.deletions)
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=8)
        if title:
            fig.suptitle(title, fontsize=11)
        return fig


def _replacement_rows(replacement: str, tokens: bool, embeddings: Optional[np.ndarray],
                      unk_id: int, pad_id: int):
    """What a deleted word becomes: a token id, or a (features,) vector."""
    if tokens:
        if replacement == "zero":
            raise ValueError("replacement='zero' is for models on embedding vectors; this model starts with an "
                             "Embedding: use replacement='unk' (the unknown token id) or 'pad'")
        return unk_id if replacement == "unk" else pad_id
    if replacement == "zero":
        return np.zeros(embeddings.shape[1], embeddings.dtype)
    return embeddings[unk_id if replacement == "unk" else pad_id]


def _equal_length_groups(lengths: np.ndarray, batch_size: int) -> List[np.ndarray]:
    order = np.argsort(lengths, kind="stable")
    groups, start = [], 0
    while start < len(order):
        stop = start
        while stop < len(order) and lengths[order[stop]] == lengths[order[start]] and stop - start < batch_size:
            stop += 1
        groups.append(order[start:stop])
        start = stop
    return groups


def word_deletion(model, sentences: Sequence[Sequence[int]], labels: Sequence[int], *,
                  embeddings: Optional[np.ndarray] = None,
                  methods: Union[str, Sequence[str]] = DELETION_METHODS,
                  extra_methods: Optional[Mapping[str, Callable[[np.ndarray, np.ndarray], np.ndarray]]] = None,
                  max_deletions: int = 5,
                  replacement: Optional[str] = None, unk_id: int = 1, pad_id: int = 0,
                  eps: float = 1e-3, bias_factor: float = 0.0, dtype: str = "float32",
                  batch_size: int = 256, seed: int = 0, progress: bool = False) -> WordDeletionResult:
    """Word-deletion experiment of Arras et al. 2017 (see the module docstring).

    Args:
        model: a text classifier, on embedding vectors (batch, time, emb_dim) -> (batch, classes)
            (pass ``embeddings``) or on token ids (batch, time) when it starts with an Embedding.
        sentences: token ids of each sentence (1-D int sequences, at least one id each).
        labels: the true class of each sentence.
        embeddings: (vocab size, emb_dim) matrix for vector models; None for token-id models.
        methods: names from :data:`DELETION_METHODS` (a list or a comma-separated string).
        extra_methods: your own methods, ``name -> fn(inputs, targets) -> (batch, time) relevance``,
            called with one batch of equal-length sentences (the model's inputs: vectors or ids)
            and their true classes; evaluated after ``methods``.
        max_deletions: the curves run from 0 to this many deleted words.
        replacement: "zero", "unk" or "pad" (default "zero" for vector models, "unk" for token ones).
        unk_id, pad_id: the unknown and padding ids of the vocabulary.
        eps, bias_factor, dtype: passed to :func:`keras_lrp.explain`.
        batch_size: sentences per explain call; every call holds sentences of one length, and all
            ``max_deletions`` deleted variants of a group are predicted in batches of this size.
        seed: seed of the ``random`` baseline (each sentence draws its order from ``(seed, index)``,
            so the result does not depend on ``batch_size``).
        progress: show a progress line on stderr.

    Returns:
        :class:`WordDeletionResult`.
    """
    import tensorflow as tf

    from .explainer import Explainer

    methods = _check_methods(methods, DELETION_METHODS)
    extra = dict(extra_methods or {})
    for name, fn in extra.items():
        if not isinstance(name, str) or name in methods or not callable(fn):
            raise ValueError(f"extra_methods must map new names to functions fn(inputs, targets); got {name!r}")
    methods = methods + tuple(extra)
    max_deletions = _check_int("max_deletions", max_deletions, 0)
    batch_size = _check_int("batch_size", batch_size, 1)
    seed = _check_int("seed", seed, 0)
    probe = Explainer(model, eps=eps, bias_factor=bias_factor, dtype=dtype)
    if probe.has_time_axis:
        raise ValueError("word deletion needs a sentence classifier with output (batch, classes); "
                         "this model's output has a time axis")
    tokens = probe.tokens
    n_classes = probe.n_outputs
    if tokens and embeddings is not None:
        raise ValueError("this model starts with an Embedding and takes token ids: do not pass embeddings")
    if not tokens:
        if embeddings is None:
            raise ValueError("this model takes embedding vectors: pass embeddings= (the (vocab size, emb_dim) "
                             "matrix that maps token ids to its inputs)")
        embeddings = np.asarray(embeddings)
        if embeddings.ndim != 2 or embeddings.shape[1] != probe.input_shape[-1]:
            raise ValueError(f"embeddings must be (vocab size, {probe.input_shape[-1]}) for this model, "
                             f"got shape {embeddings.shape}")
        embeddings = embeddings.astype(dtype, copy=False)
    vocab_size = probe._walk.embedding.input_dim if tokens else embeddings.shape[0]
    replacement = replacement or ("unk" if tokens else "zero")
    if replacement not in REPLACEMENTS:
        raise ValueError(f"replacement must be one of {REPLACEMENTS}, got {replacement!r}")
    for name, value in (("unk_id", unk_id), ("pad_id", pad_id)):
        _check_int(name, value, 0)
        if value >= vocab_size:
            raise ValueError(f"{name}={value} is outside the vocabulary (ids 0..{vocab_size - 1})")
    fill = _replacement_rows(replacement, tokens, embeddings, unk_id, pad_id)

    ids = []
    for i, s in enumerate(sentences):
        a = np.asarray(s)
        if a.ndim != 1 or a.size == 0 or not np.issubdtype(a.dtype, np.integer):
            raise ValueError(f"sentence {i} must be a non-empty 1-D sequence of integer token ids, "
                             f"got {a.dtype} array of shape {a.shape}")
        if a.min() < 0 or a.max() >= vocab_size:
            raise ValueError(f"sentence {i} has token ids outside 0..{vocab_size - 1}")
        ids.append(a.astype(np.int64))
    if not ids:
        raise ValueError("no sentences to evaluate")
    y = np.asarray(labels)
    if y.shape != (len(ids),) or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels must be one integer class per sentence ({len(ids)},), got {y.dtype} {y.shape}")
    if y.min() < 0 or y.max() >= n_classes:
        raise ValueError(f"labels must be classes 0..{n_classes - 1} of the model, got {y.min()}..{y.max()}")

    forward = tf.function(lambda x: model(x, training=False), reduce_retracing=True)

    def predict(x: np.ndarray) -> np.ndarray:
        return np.concatenate([np.asarray(forward(tf.constant(x[i:i + batch_size]))).argmax(-1)
                               for i in range(0, len(x), batch_size)])

    k_range = np.arange(max_deletions + 1)
    hits = {m: np.zeros((2, max_deletions + 1), np.int64) for m in methods}  # [correct, misclassified]
    counts = np.zeros(2, np.int64)                                            # [correct, misclassified]
    nonfinite = {m: 0 for m in methods}

    def delete_group(group: np.ndarray) -> None:
        """All methods and all deletion counts for one batch of equal-length sentences."""
        g_ids = np.stack([ids[i] for i in group])                     # (B, T)
        x = g_ids.astype(np.int32) if tokens else embeddings[g_ids]   # (B, T) or (B, T, D)
        g_y = y[group]
        correct = predict(x) == g_y
        counts[0] += correct.sum()
        counts[1] += (~correct).sum()
        for m in methods:
            if m == "random":
                rel = np.stack([np.random.default_rng([seed, int(i)]).random(len(ids[i])) for i in group])
            elif m in extra:
                rel = np.asarray(extra[m](x, g_y.astype(np.int64)), dtype=np.float64)
                if rel.shape != g_ids.shape:
                    raise ValueError(f"extra method {m!r} returned shape {rel.shape}, expected (batch, time) = "
                                     f"{g_ids.shape}")
            else:
                rel = method_relevance(model, x, g_y.astype(np.int64), m, eps=eps, bias_factor=bias_factor,
                                       dtype=dtype, batch_size=batch_size)
                nonfinite[m] += int((~np.isfinite(rel)).any(axis=1).sum())
            masks = deletion_masks(deletion_order(rel, correct), max_deletions)[1:]   # (K, B, T)
            if tokens:
                xk = np.where(masks, fill, x[None])                                     # (K, B, T)
            else:
                xk = np.where(masks[..., None], fill, x[None])                          # (K, B, T, D)
            right = [correct]
            if max_deletions:
                right += list(predict(xk.reshape((-1,) + x.shape[1:])).reshape(max_deletions, -1) == g_y[None])
            right = np.stack(right)                                                     # (K + 1, B)
            hits[m][0] += right[:, correct].sum(axis=1)
            hits[m][1] += right[:, ~correct].sum(axis=1)

    lengths = np.array([len(a) for a in ids])
    bar = _Progress("word deletion", len(ids), progress)
    with _quiet_retracing():
        for group in _equal_length_groups(lengths, batch_size):
            delete_group(group)
            bar.update(len(group))
    n_correct, n_wrong = int(counts[0]), int(counts[1])

    def rate(h, n):
        return h / n if n else np.full(h.shape, np.nan)

    return WordDeletionResult(
        methods=methods, deletions=k_range,
        correct={m: rate(hits[m][0], n_correct) for m in methods},
        misclassified={m: rate(hits[m][1], n_wrong) for m in methods},
        n_correct=n_correct, n_misclassified=n_wrong, nonfinite=nonfinite,
        settings=dict(replacement=replacement, eps=eps, bias_factor=bias_factor, dtype=dtype, seed=seed,
                      max_deletions=max_deletions, n_sentences=len(ids), relevance_target="true class"))


def find_sst_dir() -> Optional[str]:
    """The SST data folder: ``$KERAS_LRP_SST_DIR``, else ``tests/data/sst`` of the source checkout
    (a copy of the Stanford Sentiment Treebank shipped with the repository), else None."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    candidates = [os.environ.get("KERAS_LRP_SST_DIR", ""), os.path.join(here, "tests", "data", "sst")]
    for c in candidates:
        if c and os.path.isfile(os.path.join(c, "test.txt")):
            return os.path.normpath(c)
    return None


def sst_word_deletion(sentiment_model, path: Union[str, os.PathLike], *, max_sentences: Optional[int] = None,
                      subset_seed: int = 0, **kwargs) -> WordDeletionResult:
    """:func:`word_deletion` of a :class:`keras_lrp.sst.SentimentModel` (the shipped model) on an SST
    file (e.g. ``test.txt``), with the zero-vector replacement by default.

    SST-2 models (two classes) are evaluated on the non-neutral sentences with binary labels.
    ``max_sentences`` evaluates a random subset of that many sentences, drawn with ``subset_seed``
    (the SST files are ordered by sentiment, so their first lines are no fair sample).
    Other keyword arguments go to :func:`word_deletion`.
    """
    from .sst import read_sst
    from .text import PAD_ID, UNK_ID

    if max_sentences is not None:
        _check_int("max_sentences", max_sentences, 1)
    binary = len(sentiment_model.class_names) == 2
    sents = read_sst(path, binary=binary, tokenizer=sentiment_model.tokenizer)
    sents = [s for s in sents if s.tokens]
    if max_sentences is not None and max_sentences < len(sents):
        keep = np.sort(np.random.default_rng(subset_seed).choice(len(sents), max_sentences, replace=False))
        sents = [sents[i] for i in keep]
    ids = [sentiment_model.vocabulary.encode(s.tokens)[0] for s in sents]
    kwargs.setdefault("unk_id", UNK_ID)
    kwargs.setdefault("pad_id", PAD_ID)
    result = word_deletion(sentiment_model.model, ids, np.array([s.label for s in sents], np.int64),
                           embeddings=sentiment_model.embeddings, **kwargs)
    result.settings["data"] = os.fspath(path)
    if max_sentences is not None:
        result.settings["subset"] = f"{len(sents)} sentences drawn with seed {subset_seed}"
    return result


# ----------------------------------------------------------------------------- toy task

def marked_input_metrics(relevance: np.ndarray, positions: np.ndarray, contributions: np.ndarray
                         ) -> Dict[str, float]:
    """How well a relevance recovers the two marked inputs of the toy task (see the module docstring).

    Args:
        relevance: (n, time) relevance per timestep (or (n, time, features), summed here).
        positions: (n, 2) the marked timesteps.
        contributions: (n, 2) what each marked input adds to the target (``ToyData.contributions``).

    Returns:
        dict with ``top2_accuracy``, ``corr_first``, ``corr_second``, ``marked_share`` and
        ``nonfinite`` (the fraction of samples with NaN or inf relevance; the correlations are NaN
        when there are any).
    """
    r = np.asarray(relevance, dtype=np.float64)
    if r.ndim == 3:
        r = r.sum(axis=-1)
    pos = np.asarray(positions)
    c = np.asarray(contributions, dtype=np.float64)
    if r.ndim != 2 or pos.shape != (r.shape[0], 2) or c.shape != (r.shape[0], 2):
        raise ValueError(f"need relevance (n, time), positions (n, 2), contributions (n, 2); got "
                         f"{r.shape}, {pos.shape}, {c.shape}")
    if r.shape[1] < 2 or pos.min() < 0 or pos.max() >= r.shape[1]:
        raise ValueError(f"positions must be timesteps 0..{r.shape[1] - 1}")
    rows = np.arange(r.shape[0])
    with np.errstate(invalid="ignore", over="ignore"):
        a = np.nan_to_num(np.abs(r), nan=0.0)
    # The two largest |relevance| positions (a stable sort: ties go to the earlier timestep).
    top2 = np.sort(np.argsort(-a, axis=1, kind="stable")[:, :2], axis=1)
    hit = np.all(top2 == np.sort(pos, axis=1), axis=1)
    finite = np.isfinite(r).all(axis=1)
    marked = a[rows, pos[:, 0]] + a[rows, pos[:, 1]]
    with np.errstate(invalid="ignore", over="ignore"):
        total = a.sum(axis=1)
    # Share on the rows with finite relevance (0 where all relevance is 0).
    share = np.divide(marked, total, out=np.zeros_like(marked), where=finite & (total > 0))[finite]

    def corr(u, v):
        if r.shape[0] < 2 or np.std(u) == 0 or np.std(v) == 0 or not np.all(np.isfinite(u)):
            return float("nan")
        return float(np.corrcoef(u, v)[0, 1])

    return {"top2_accuracy": float(hit.mean()), "corr_first": corr(r[rows, pos[:, 0]], c[:, 0]),
            "corr_second": corr(r[rows, pos[:, 1]], c[:, 1]),
            "marked_share": float(share.mean()) if share.size else float("nan"),
            "nonfinite": float((~finite).mean())}


@dataclass
class ToyResult:
    """What :func:`toy_evaluation` returns.

    Attributes:
        methods: the compared methods.
        metrics: method -> :func:`marked_input_metrics` dict.
        relevance: method -> (n, time) relevance per timestep (kept for plots).
        mse: the model's mean squared error on the evaluated data.
        target_variance: the variance of the targets (an MSE far below it = the task is solved).
        operation: "add" or "subtract".
        settings: eps, bias_factor, seed, ...
    """

    methods: Tuple[str, ...]
    metrics: Dict[str, Dict[str, float]]
    relevance: Dict[str, np.ndarray]
    positions: np.ndarray
    contributions: np.ndarray
    mse: float
    target_variance: float
    operation: str
    settings: Dict[str, object] = field(default_factory=dict)

    def to_dict(self) -> dict:
        """JSON-serialisable summary (without the relevance arrays)."""
        return {"methods": list(self.methods), "metrics": self.metrics, "mse": self.mse,
                "target_variance": self.target_variance, "operation": self.operation,
                "n": int(self.positions.shape[0]), "settings": dict(self.settings)}

    def table(self) -> str:
        """Markdown table of the metrics per method."""
        second = "n_b" if self.operation == "add" else "−n_b"
        lines = [f"**Toy task '{self.operation}'** (n = {self.positions.shape[0]} test sequences, "
                 f"model MSE {self.mse:.2e}, target variance {self.target_variance:.3f})", "",
                 f"| method | top-2 accuracy (%) | ρ(R_a, n_a) | ρ(R_b, {second}) | relevance share on marked (%) |",
                 "| --- | ---: | ---: | ---: | ---: |"]
        for m in self.methods:
            d = self.metrics[m]
            lines.append(f"| {_LABELS.get(m, m)} | {100 * d['top2_accuracy']:.1f} | {d['corr_first']:.3f} | "
                         f"{d['corr_second']:.3f} | {100 * d['marked_share']:.1f} |")
        return "\n".join(lines) + "\n"

    def plot(self, max_points: int = 300):
        """Relevance of the two marked timesteps against their contribution, one panel per method."""
        n = len(self.methods)
        cols = min(n, 3)
        rows = (n + cols - 1) // cols
        fig = _figure(figsize=(3.3 * cols, 3.0 * rows), layout="constrained")
        axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
        idx = np.arange(min(max_points, self.positions.shape[0]))
        r_rows = np.arange(self.positions.shape[0])[idx]
        for ax, m in zip(axes, self.methods):
            r = self.relevance[m]
            for j, (color, name) in enumerate((("#d62728", "first"), ("#1f77b4", "second"))):
                ax.scatter(self.contributions[idx, j], r[r_rows, self.positions[idx, j]], s=6, alpha=0.5,
                           linewidths=0, color=color, label=f"{name} marked")
            d = self.metrics[m]
            ax.set_title(f"{_LABELS.get(m, m)}: top-2 {100 * d['top2_accuracy']:.0f}%, "
                         f"ρ {d['corr_first']:.2f}/{d['corr_second']:.2f}", fontsize=9)
            ax.set_xlabel("contribution to the target", fontsize=8)
            ax.set_ylabel("relevance", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
            # Heavy outliers (the prop rule can explode) would flatten everything else: clip the view.
            vals = np.concatenate([r[r_rows, self.positions[idx, 0]], r[r_rows, self.positions[idx, 1]]])
            vals = vals[np.isfinite(vals)]
            if vals.size:
                lo, hi = np.percentile(vals, [1, 99])
                pad = 0.1 * max(hi - lo, 1e-6)
                ax.set_ylim(lo - pad, hi + pad)
        for ax in axes[n:]:
            ax.set_axis_off()
        axes[0].legend(fontsize=7, loc="upper left")
        fig.suptitle(f"toy task '{self.operation}': relevance of the marked inputs (1st-99th percentile view)",
                     fontsize=10)
        return fig


def toy_evaluation(model, data, methods: Union[str, Sequence[str]] = TOY_METHODS, *, eps: float = 1e-3,
                   bias_factor: float = 0.0, dtype: str = "float32", batch_size: int = 256,
                   seed: int = 0) -> ToyResult:
    """Explain a toy-task model on ``data`` (:class:`keras_lrp.toy.ToyData`) with every method and
    score how well each recovers the marked inputs (:func:`marked_input_metrics`)."""
    methods = _check_methods(methods, TOY_METHODS)
    seed = _check_int("seed", seed, 0)
    pred = np.asarray(model.predict(data.x, batch_size=1024, verbose=0)).reshape(len(data), -1)
    if pred.shape[1] != 1:
        raise ValueError(f"the toy model must have one output (a regression), this one has {pred.shape[1]}")
    metrics, relevance = {}, {}
    with _quiet_retracing():
        for m in methods:
            r = method_relevance(model, data.x, 0, m, eps=eps, bias_factor=bias_factor, dtype=dtype,
                                 batch_size=batch_size, rng=np.random.default_rng(seed))
            relevance[m] = r
            metrics[m] = marked_input_metrics(r, data.positions, data.contributions)
    return ToyResult(methods=methods, metrics=metrics, relevance=relevance, positions=data.positions,
                     contributions=data.contributions, mse=float(np.mean((pred[:, 0] - data.y) ** 2)),
                     target_variance=float(np.var(data.y)), operation=data.operation,
                     settings=dict(eps=eps, bias_factor=bias_factor, dtype=dtype, seed=seed))


def run_toy_experiment(operation: str = "add", length: int = 10, n_train: int = 20000, n_test: int = 2000,
                       units: int = 16, bidirectional: bool = False, epochs: int = 20,
                       methods: Union[str, Sequence[str]] = TOY_METHODS, seed: int = 0,
                       max_seconds: Optional[float] = None, verbose: bool = False):
    """Generate data, train the toy model and evaluate every method on fresh test data.

    Returns:
        ``(training, result)``: :class:`keras_lrp.toy.ToyTraining` and :class:`ToyResult`.
    """
    from .toy import make_toy_data, train_toy_model

    methods = _check_methods(methods, TOY_METHODS)
    seed = _check_int("seed", seed, 0)
    train = make_toy_data(n_train, length, operation, seed=seed)
    val = make_toy_data(max(n_test // 2, 1), length, operation, seed=seed + 1)
    test = make_toy_data(n_test, length, operation, seed=seed + 2)
    training = train_toy_model(train, val, units=units, bidirectional=bidirectional, epochs=epochs, seed=seed,
                               max_seconds=max_seconds, verbose=verbose)
    result = toy_evaluation(training.model, test, methods, seed=seed)
    result.settings.update(length=length, n_train=n_train, units=units, bidirectional=bidirectional,
                           epochs_trained=training.epochs, training_seconds=round(training.seconds, 1))
    return training, result


# ----------------------------------------------------------------------------- command line

def add_evaluate_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``evaluate`` subcommand to an argparse ``subparsers`` object; returns its parser."""
    p = subparsers.add_parser(
        "evaluate", help="faithfulness evaluation: word deletion on the shipped model, or --toy",
        description="Word deletion (Arras et al. 2017) on SST sentences with the shipped model, or with --toy "
                    "the toy arithmetic task of Arras et al. 2019. Prints markdown tables; --out-dir also "
                    "writes PNG plots, the tables (.md) and the numbers (.json).")
    p.add_argument("--methods", default=",".join(DELETION_METHODS),
                   help=f"comma-separated methods (default all: {','.join(DELETION_METHODS)})")
    p.add_argument("--out-dir", help="folder for the plots, tables and JSON (created if missing)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random baseline (and of the toy task)")
    p.add_argument("--eps", type=float, default=1e-3, help="epsilon-rule stabiliser (default 0.001)")
    p.add_argument("--bias-factor", type=float, default=0.0, help="bias share, 0 (default) to 1")
    p.add_argument("--batch-size", type=int, default=256, help="sentences per batch (default 256)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument("--debug", action="store_true", help="show Python tracebacks")
    g = p.add_argument_group("word deletion")
    g.add_argument("--shipped", default="sst5", choices=["sst5", "sst2"], help="shipped model (default sst5)")
    g.add_argument("--data", help="SST file or folder (default: test.txt in $KERAS_LRP_SST_DIR or tests/data/sst)")
    g.add_argument("--split", default="test", choices=["train", "dev", "test"], help="SST split when --data is "
                   "a folder (default test)")
    g.add_argument("--max-sentences", type=int, help="use a random subset of N sentences, drawn with --seed "
                   "(default all)")
    g.add_argument("--max-deletions", type=int, default=5, help="delete up to this many words (default 5)")
    g.add_argument("--replacement", default="zero", choices=list(REPLACEMENTS),
                   help="a deleted word becomes the zero vector (default), the unknown token's or the padding's vector")
    t = p.add_argument_group("toy task")
    t.add_argument("--toy", action="store_true", help="run the toy arithmetic task instead")
    t.add_argument("--operation", default="add", choices=["add", "subtract"], help="toy target (default add)")
    t.add_argument("--length", type=int, default=10, help="toy sequence length (default 10)")
    t.add_argument("--n-train", type=int, default=20000, help="toy training sequences (default 20000)")
    t.add_argument("--n-test", type=int, default=2000, help="toy test sequences (default 2000)")
    t.add_argument("--units", type=int, default=16, help="toy LSTM units (default 16)")
    t.add_argument("--bidirectional", action="store_true", help="toy model Bidirectional(LSTM)")
    t.add_argument("--epochs", type=int, default=20, help="toy training epochs (default 20)")
    return p


def _write_outputs(out_dir: Optional[str], stem: str, result, title: str) -> List[str]:
    if not out_dir:
        return []
    from .visualize import save_png

    os.makedirs(out_dir, exist_ok=True)
    png = os.path.join(out_dir, f"{stem}.png")
    if stem.startswith("toy"):
        save_png(result.plot(), png, dpi=110)
    else:
        save_png(result.plot(title=title), png)
    md = os.path.join(out_dir, f"{stem}.md")
    with open(md, "w", encoding="utf-8") as f:
        f.write(f"# {title}\n\n{result.table()}\n")
    js = os.path.join(out_dir, f"{stem}.json")
    with open(js, "w", encoding="utf-8") as f:
        json.dump(result.to_dict(), f, indent=1)
    return [png, md, js]


def run_evaluate(args: argparse.Namespace) -> int:
    """Run the ``evaluate`` subcommand parsed by :func:`add_evaluate_parser`; returns the exit code.

    Bad arguments raise ``ValueError``/``FileNotFoundError`` (with a message saying what to fix)
    before any heavy work.
    """
    methods = _check_methods(args.methods, DELETION_METHODS)
    for name in ("batch_size", "seed"):
        _check_int("--" + name.replace("_", "-"), getattr(args, name), 0 if name == "seed" else 1)
    if args.out_dir and os.path.exists(args.out_dir) and not os.path.isdir(args.out_dir):
        raise ValueError(f"--out-dir {args.out_dir} exists and is not a folder")
    t0 = time.perf_counter()
    if args.toy:
        for name in ("length", "n_train", "n_test", "units", "epochs"):
            _check_int("--" + name.replace("_", "-"), getattr(args, name), 2 if name == "length" else 1)
        training, result = run_toy_experiment(args.operation, args.length, args.n_train, args.n_test, args.units,
                                              args.bidirectional, args.epochs, methods, args.seed,
                                              verbose=not args.quiet)
        print(result.table())
        stem = f"toy_{args.operation}" + ("_bilstm" if args.bidirectional else "")
        layer = f"Bidirectional(LSTM({args.units}))" if args.bidirectional else f"LSTM({args.units})"
        title = f"Toy task '{args.operation}' (Arras et al. 2019), {layer} -> Dense(1)"
    else:
        if args.max_sentences is not None:
            _check_int("--max-sentences", args.max_sentences, 1)
        _check_int("--max-deletions", args.max_deletions, 0)
        path = _sst_path(args.data, args.split)
        from .sst import load_pretrained
        try:
            from .cli import models_dir
            folder = models_dir()
        except ImportError:  # pragma: no cover - the CLI module is part of the package
            folder = None
        model = load_pretrained(args.shipped, models_dir=folder)
        result = sst_word_deletion(model, path, max_sentences=args.max_sentences, subset_seed=args.seed,
                                   methods=methods,
                                   max_deletions=args.max_deletions, replacement=args.replacement,
                                   eps=args.eps, bias_factor=args.bias_factor, batch_size=args.batch_size,
                                   seed=args.seed, progress=not args.quiet)
        print(f"model accuracy on the {result.n_correct + result.n_misclassified} sentences: "
              f"{100 * result.accuracy:.1f}%\n")
        print(result.table())
        stem = f"word_deletion_{args.shipped}" + ("" if args.replacement == "zero" else f"_{args.replacement}")
        title = (f"Word deletion, shipped {args.shipped} model, {os.path.basename(path)}, deleted word = "
                 + {"zero": "zero vector", "unk": "unknown token", "pad": "padding token"}[args.replacement])
    for path in _write_outputs(args.out_dir, stem, result, title):
        print(f"wrote {path}")
    if not args.quiet:
        print(f"({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    return 0


def _sst_path(data: Optional[str], split: str) -> str:
    if data is None:
        folder = find_sst_dir()
        if folder is None:
            raise FileNotFoundError("SST data not found: pass --data (an SST file such as test.txt, or its folder) "
                                    "or set KERAS_LRP_SST_DIR")
        return os.path.join(folder, f"{split}.txt")
    if os.path.isdir(data):
        path = os.path.join(data, f"{split}.txt")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"--data {data}: no {split}.txt in that folder")
        return path
    if not os.path.isfile(data):
        raise FileNotFoundError(f"--data {data}: no such file or folder")
    return data


def _main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m keras_lrp.evaluate ...`` (the same options as ``keras-lrp evaluate``)."""
    parser = argparse.ArgumentParser(prog="python -m keras_lrp.evaluate")
    sub = parser.add_subparsers(dest="command", required=True)
    add_evaluate_parser(sub)
    args = parser.parse_args(["evaluate", *(sys.argv[1:] if argv is None else argv)])
    return run_evaluate(args)


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.exit(_main())
