"""Word deletion: how faithful an explanation of a sentence classifier is.

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
``sa`` (sensitivity analysis, squared gradient norm), ``ig``, ``occlusion``, ``shapley``
(:mod:`keras_lrp.baselines`, default options) and ``random`` (a seeded random order).

On every sentence (correct or not), with ``p`` the model's probability of the true class (softmax
of the scores unless the model outputs probabilities) and words deleted most relevant first:

* **AOPC** (Samek et al. 2017): ``mean over k = 0..max_deletions of p(x) - p(x without its k most
  relevant words)``, averaged over the sentences (higher = more faithful);
* **deletion / insertion AUC** (Petsiuk et al. 2018), on the fraction of a sentence's words:
  ``p`` after deleting ``round(q L)`` of its ``L`` words, most relevant first (deletion; lower =
  more faithful), or after deleting all but the ``round(q L)`` most relevant (insertion; higher =
  more faithful), for q = 0, 0.1, ..., 1, integrated over q by the trapezoid rule;
* **time per sentence**: the wall time of the method's explain calls (compilation included)
  divided by the number of sentences.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
import time
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from ._common import (DEFAULT_METHODS, DELETION_METHODS, LABELS, REPLACEMENTS, STYLES, ProgressBar, check_int,
                      check_methods, inline_figure, method_relevance, quiet_run)

__all__ = ["DELETION_METHODS", "REPLACEMENTS", "deletion_order", "deletion_masks", "word_deletion",
           "WordDeletionResult", "sst_word_deletion"]


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
        aopc, deletion_auc, insertion_auc: method -> the mean over all sentences (see the module
            docstring).
        seconds_per_sentence: method -> explain wall time per sentence (compilation included; 0
            for ``random``).
    """

    methods: Tuple[str, ...]
    deletions: np.ndarray
    correct: Dict[str, np.ndarray]
    misclassified: Dict[str, np.ndarray]
    n_correct: int
    n_misclassified: int
    nonfinite: Dict[str, int] = field(default_factory=dict)
    settings: Dict[str, object] = field(default_factory=dict)
    aopc: Dict[str, float] = field(default_factory=dict)
    deletion_auc: Dict[str, float] = field(default_factory=dict)
    insertion_auc: Dict[str, float] = field(default_factory=dict)
    seconds_per_sentence: Dict[str, float] = field(default_factory=dict)

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
                "accuracy": self.accuracy, "nonfinite": dict(self.nonfinite), "settings": dict(self.settings),
                "aopc": dict(self.aopc), "deletion_auc": dict(self.deletion_auc),
                "insertion_auc": dict(self.insertion_auc), "seconds_per_sentence": dict(self.seconds_per_sentence)}

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
                out.append(f"| {LABELS.get(m, m)} | {vals} |")
            out.append("")
        if self.aopc:
            n = self.n_correct + self.n_misclassified
            out += [f"**All sentences (n = {n}), true class, most relevant words first: AOPC over "
                    f"0..{len(self.deletions) - 1} deletions (higher = more faithful), deletion AUC (lower), "
                    "insertion AUC (higher), explain time per sentence**", "",
                    "| method | AOPC | deletion AUC | insertion AUC | ms / sentence |",
                    "| --- | ---: | ---: | ---: | ---: |"]
            for m in self.methods:
                out.append(f"| {LABELS.get(m, m)} | {self.aopc[m]:.4f} | {self.deletion_auc[m]:.4f} | "
                           f"{self.insertion_auc[m]:.4f} | {1000 * self.seconds_per_sentence[m]:.2f} |")
            out.append("")
        broken = {m: n for m, n in self.nonfinite.items() if n}
        if broken:
            out.append("Sentences with non-finite (overflowing) relevance: " +
                       ", ".join(f"{LABELS.get(m, m)} {n}" for m, n in broken.items()))
            out.append("")
        return "\n".join(out)

    def plot(self, title: Optional[str] = None):
        """Two panels (correct, misclassified) of accuracy vs number of deleted words; a Figure."""
        fig = inline_figure(figsize=(10.0, 4.2), layout="constrained")
        axes = fig.subplots(1, 2)
        for ax, curves, n, name in ((axes[0], self.correct, self.n_correct, "correctly classified"),
                                    (axes[1], self.misclassified, self.n_misclassified, "misclassified")):
            for m in self.methods:
                ax.plot(self.deletions, 100 * curves[m], label=LABELS.get(m, m), ms=4, **STYLES.get(m, {}))
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
                  methods: Union[str, Sequence[str]] = DEFAULT_METHODS,
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

    from ..explainer import Explainer

    methods = check_methods(methods, DELETION_METHODS)
    extra = dict(extra_methods or {})
    for name, fn in extra.items():
        if not isinstance(name, str) or name in methods or not callable(fn):
            raise ValueError(f"extra_methods must map new names to functions fn(inputs, targets); got {name!r}")
    methods = methods + tuple(extra)
    max_deletions = check_int("max_deletions", max_deletions, 0)
    batch_size = check_int("batch_size", batch_size, 1)
    seed = check_int("seed", seed, 0)
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
        check_int(name, value, 0)
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
    probabilities = probe._probability_activation is not None

    def predict_proba(x: np.ndarray) -> np.ndarray:
        """(N, classes): the model's probabilities (softmax of its scores unless it outputs them)."""
        out = np.concatenate([np.asarray(forward(tf.constant(x[i:i + batch_size])), np.float64)
                              for i in range(0, len(x), batch_size)])
        if probabilities:
            return out
        e = np.exp(out - out.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)

    def predict(x: np.ndarray) -> np.ndarray:
        return predict_proba(x).argmax(-1)

    def deleted(x: np.ndarray, masks: np.ndarray) -> np.ndarray:
        """(K, B, ...) -> (K * B, ...): ``x`` with the words of ``masks`` (K, B, T) replaced."""
        out = np.where(masks, fill, x[None]) if tokens else np.where(masks[..., None], fill, x[None])
        return out.reshape((-1,) + x.shape[1:])

    fractions = np.linspace(0.0, 1.0, 11)
    sums = {m: np.zeros(3) for m in methods}                                  # [aopc, deletion, insertion]
    seconds = {m: 0.0 for m in methods}

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
            started = time.perf_counter()
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
            if m != "random":
                seconds[m] += time.perf_counter() - started
            masks = deletion_masks(deletion_order(rel, correct), max_deletions)[1:]   # (K, B, T)
            right = [correct]
            if max_deletions:
                right += list(predict(deleted(x, masks)).reshape(max_deletions, -1) == g_y[None])
            right = np.stack(right)                                                     # (K + 1, B)
            hits[m][0] += right[:, correct].sum(axis=1)
            hits[m][1] += right[:, ~correct].sum(axis=1)
            sums[m] += _curve_metrics(predict_proba, deleted, x, rel, g_y, max_deletions, fractions)

    lengths = np.array([len(a) for a in ids])
    bar = ProgressBar(len(ids), "sentence", enabled=progress)
    with quiet_run():
        for group in _equal_length_groups(lengths, batch_size):
            delete_group(group)
            bar.add(len(group))
    n_correct, n_wrong = int(counts[0]), int(counts[1])

    def rate(h, n):
        return h / n if n else np.full(h.shape, np.nan)

    return WordDeletionResult(
        methods=methods, deletions=k_range,
        correct={m: rate(hits[m][0], n_correct) for m in methods},
        misclassified={m: rate(hits[m][1], n_wrong) for m in methods},
        n_correct=n_correct, n_misclassified=n_wrong, nonfinite=nonfinite,
        aopc={m: sums[m][0] / len(ids) for m in methods}, deletion_auc={m: sums[m][1] / len(ids) for m in methods},
        insertion_auc={m: sums[m][2] / len(ids) for m in methods},
        seconds_per_sentence={m: seconds[m] / len(ids) for m in methods},
        settings=dict(replacement=replacement, eps=eps, bias_factor=bias_factor, dtype=dtype, seed=seed,
                      max_deletions=max_deletions, n_sentences=len(ids), relevance_target="true class"))


def _curve_metrics(predict_proba, deleted, x: np.ndarray, relevance: np.ndarray, labels: np.ndarray,
                   max_deletions: int, fractions: np.ndarray) -> np.ndarray:
    """Sums over one group of equal-length sentences of AOPC, deletion AUC and insertion AUC (see the
    module docstring): most relevant words first, true class ``labels``."""
    b, length = relevance.shape
    order = deletion_order(relevance, True)
    every = deletion_masks(order, max(max_deletions, length))                    # (max(K, L) + 1, B, L)
    rows = np.arange(b)
    p0 = predict_proba(x)[rows, labels]
    aopc = 0.0
    if max_deletions:
        p = predict_proba(deleted(x, every[1:max_deletions + 1])).reshape(max_deletions, b, -1)[:, rows, labels]
        aopc = (p0[None] - p).sum(axis=0) / (max_deletions + 1)
    counts = np.rint(fractions * length).astype(int)
    curve = predict_proba(deleted(x, every[counts])).reshape(len(counts), b, -1)[:, rows, labels]
    insert = predict_proba(deleted(x, ~every[counts])).reshape(len(counts), b, -1)[:, rows, labels]
    area = np.trapezoid if hasattr(np, "trapezoid") else np.trapz
    return np.array([np.sum(aopc), area(curve, fractions, axis=0).sum(), area(insert, fractions, axis=0).sum()])


def sst_word_deletion(sentiment_model, path: Union[str, os.PathLike], *, max_sentences: Optional[int] = None,
                      subset_seed: int = 0, **kwargs) -> WordDeletionResult:
    """:func:`word_deletion` of a :class:`keras_lrp.sst.SentimentModel` (the shipped model) on an SST
    file (e.g. ``test.txt``), with the zero-vector replacement by default.

    SST-2 models (two classes) are evaluated on the non-neutral sentences with binary labels.
    ``max_sentences`` evaluates a random subset of that many sentences, drawn with ``subset_seed``
    (the SST files are ordered by sentiment, so their first lines are no fair sample).
    Other keyword arguments go to :func:`word_deletion`.
    """
    from ..sst.reader import read_sst
    from ..text import PAD_ID, UNK_ID

    if max_sentences is not None:
        check_int("max_sentences", max_sentences, 1)
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
