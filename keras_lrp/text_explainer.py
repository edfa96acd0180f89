"""Text in, explanation out: :func:`explain_text` tokenizes raw strings, maps them to ids,
explains them and returns an :class:`~keras_lrp.explanation.Explanation` that carries the tokens.

The texts are encoded exactly as the user's own pipeline encodes them:

* a Keras model whose first layer is an ``Embedding`` (token ids in), with the tokenizer it was
  trained with: a Keras ``Tokenizer`` (the object, its ``to_json()`` text or file; words split and
  looked up as ``texts_to_sequences`` does, unknown words left out unless it has an ``oov_token``),
  a ``TextVectorization`` layer, or a splitting function with ``vocab=`` (a
  :class:`keras_lrp.text.Vocabulary` or a plain ``word_index`` dict, split like a Keras Tokenizer);
  default :class:`keras_lrp.text.Tokenizer` with a Vocabulary;
* a Keras model whose first layer is ``keras.layers.TextVectorization``: it takes the strings
  itself. The vectorization runs outside the explained graph; the explained model is the rest
  of the graph after it (a copy with the current weights), so the relevance lands on the
  embedded tokens; tokens are the layer's standardized words, unknown ones marked;
* an object with ``.model``, ``.vocabulary`` (or ``.vocab``), ``.tokenizer``, ``.class_names``
  and optionally ``.embeddings`` (the shipped ``SentimentModel`` of
  :func:`keras_lrp.load_pretrained`): its tokenizer, vocabulary and class names are the
  defaults; with ``.embeddings`` the model takes the embedding vectors of the ids.

Lengths: a model with a fixed input length (``Input((100,))``), or ``maxlen=``, gets every text
padded and truncated to it as ``keras.utils.pad_sequences(..., maxlen, padding, truncating)`` does
(id 0, at the front by default, shown as ``<pad>``). Otherwise texts are grouped by length and each
group is explained without padding, so a text's relevance never depends on the other texts of the
call (``explain_text(m, texts)[i]`` equals ``explain_text(m, [texts[i]])`` bit for bit).
"""
from __future__ import annotations

import inspect
import os
import warnings
import weakref
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Union

import numpy as np

from .explanation import Explanation, concatenate, output_activation as _model_activation
from .quiet import SummableWarning
from .safe_io import quote
from .text import KerasTokenizer, TooManyTokensError, WordIds

__all__ = ["explain_text", "text_front", "explain_encoded", "TextFront", "Encoded", "LeftOutWordsWarning",
           "PAD_TOKEN"]

TargetArg = Union[None, int, str, Sequence[Union[int, str]]]
_EXPLAIN_KEYS = ("eps", "bias_factor", "rule", "dtype", "method", "method_options", "jit_compile", "timestep")
_SIDES = ("pre", "post")
#: How padding is shown among the tokens (the model sees id 0 there).
PAD_TOKEN = "<pad>"


@dataclass
class Encoded:
    """One text as the model sees it."""

    tokens: List[str]    # one per id; padding shown as PAD_TOKEN
    ids: np.ndarray      # (time,) int
    oov: np.ndarray      # (time,) bool: the word got the unknown-word id
    words: int           # number of real words (the rest of ids, if any, is padding)
    dropped: List[str] = field(default_factory=list)   # words the tokenizer left out (no id, as Keras)
    cut: int = 0         # words truncation removed


class LeftOutWordsWarning(SummableWarning, UserWarning):
    """Words without an id that the tokenizer left out of the sequence, as Keras's
    ``texts_to_sequences`` leaves them out (a word index without an unknown-word entry)."""

    def __init__(self, words: Counter, texts: int):
        self.words, self.texts = Counter(words), texts
        n = sum(self.words.values())
        shown = ", ".join(quote(w, 30) for w, _ in self.words.most_common(5))
        more = f" and {len(self.words) - 5} more" if len(self.words) > 5 else ""
        super().__init__(
            f"{n} word{'s' if n != 1 else ''} in {texts} text{'s' if texts != 1 else ''} "
            f"{'are' if n != 1 else 'is'} not in the tokenizer's word index and {'were' if n != 1 else 'was'} "
            f"left out, as Keras's texts_to_sequences leaves them out (no oov_token): {shown}{more}. "
            "Pass oov_id= if the model was trained with an id for unknown words.")

    def cause(self):
        return "left out"

    @classmethod
    def merge(cls, items):
        return cls(sum((w.words for w in items), Counter()), sum(w.texts for w in items))


def explain_text(model: Any, texts: Union[str, Sequence[str]], tokenizer: Any = None, vocab: Any = None,
                 target: Union[TargetArg, str] = None, class_names: Optional[Sequence[str]] = None, *,
                 oov_id: Optional[int] = None, output_activation: Optional[str] = None,
                 maxlen: Optional[int] = None, padding: Optional[str] = None, truncating: Optional[str] = None,
                 batch_size: int = 256, verbose: Optional[bool] = None, max_length: Optional[int] = None,
                 bucket: Optional[bool] = None, **explain_kwargs) -> Union[Explanation, List[Explanation]]:
    """Explain a text model on raw strings, encoded as the model's own pipeline encodes them.

    Args:
        model: a Keras model starting with ``Embedding`` (needs a tokenizer with a word index, or
            ``vocab``) or with ``TextVectorization``, or a ``SentimentModel``-like object
            (``.model``, ``.vocabulary``, ``.tokenizer``, ``.class_names``, optional ``.embeddings``).
        texts: one string or a list of strings.
        tokenizer: the tokenizer the model was trained with: a Keras ``Tokenizer`` (the object,
            its ``to_json()`` text, or the path of a file holding it; also a plain ``word_index``
            JSON file), a ``keras.layers.TextVectorization`` layer, a
            :class:`keras_lrp.text.KerasTokenizer`; or a splitting function ``str -> list[str]``
            (a callable, or an object with ``.tokenize``) used with ``vocab``. Default: the model
            object's tokenizer; with a ``word_index`` dict, splitting as a default Keras
            Tokenizer; else :class:`keras_lrp.text.Tokenizer`.
        vocab: :class:`keras_lrp.text.Vocabulary`, or a ``{word: id}`` dict (Keras's
            ``word_index``), for a splitting tokenizer. Unknown words of a dict get ``oov_id=``,
            else the id of an ``<unk>`` / ``[UNK]`` / ``<OOV>`` entry, else they are left out as
            Keras leaves them out (a :class:`LeftOutWordsWarning` names them).
        target: None (the predicted class), a class index, a class name (needs class names),
            one of those per text, or ``"all"``: every class, returned as a list of
            Explanations, element ``k`` explaining class ``k``.
        class_names: one name per output (default the model object's ``class_names``).
        oov_id: the id of unknown words for a ``word_index`` dict (or a Keras Tokenizer).
        output_activation: "softmax" / "sigmoid" when the model's outputs are logits of it
            (gives probabilities in titles); default: the last layer's activation, or "softmax"
            for a model object whose metadata says its outputs are logits.
        maxlen: pad / truncate every text to this many ids, as ``pad_sequences(maxlen=)``;
            default: the model's fixed input length, if it has one, else no padding.
        padding: ``"pre"`` (default, as ``pad_sequences``) or ``"post"``: where the id-0 padding
            goes.
        truncating: ``"pre"`` (default, as ``pad_sequences``: the text's start is cut) or
            ``"post"``: which end of a longer text is cut (a warning says how many were cut).
            A ``TextVectorization`` layer pads and cuts at the end itself; these three are for
            tokenizers that do not (Keras's ``Tokenizer`` + ``pad_sequences``).
        batch_size: sentences per compiled call.
        verbose: one progress bar over all texts: True / False, None = only for more than one
            batch on an interactive stdout.
        max_length: the most tokens a text may have (default 100,000, as :func:`keras_lrp.explain`);
            a longer text raises a ValueError, found by tokenizing no further than that (with
            keras_lrp's tokenizers, or any whose ``tokenize`` takes ``max_tokens=``).
        bucket: pad texts to their length bucket (powers of two, at least 8) where the model masks
            that padding so that nothing changes, bit for bit (see :func:`explain_encoded`); None: where
            the explainer compiles once per input shape (JAX, ``jit_compile=True``), so that a corpus
            compiles a few times.
        **explain_kwargs: ``eps``, ``bias_factor``, ``rule``, ``dtype``, ``method``, ``method_options``,
            ``jit_compile``, ``timestep``, as in :func:`keras_lrp.explain`.

    Returns:
        An :class:`~keras_lrp.explanation.Explanation` in the order of ``texts`` with
        ``tokens`` (padding shown as ``<pad>``), ``oov`` (unknown words), ``texts``,
        ``class_names``; ``relevance`` is (batch, longest, features), zero beyond each text's
        length. For ``target="all"``, a list with one Explanation per class.
    """
    unknown = set(explain_kwargs) - set(_EXPLAIN_KEYS)
    if unknown:
        raise TypeError(f"explain_text got unknown argument(s) {sorted(unknown)}; it takes "
                        f"tokenizer, vocab, target, class_names, oov_id, output_activation, maxlen, padding, "
                        f"truncating, batch_size, verbose, max_length and the explain arguments {list(_EXPLAIN_KEYS)}.")
    texts_list = _check_texts(texts)
    front = text_front(model, tokenizer, vocab, class_names, oov_id=oov_id, output_activation=output_activation,
                       maxlen=maxlen, padding=padding, truncating=truncating, max_length=max_length)
    _check_batch_size(batch_size)
    if isinstance(target, str) and target == "all":
        return [explain_text(model, texts_list, tokenizer=tokenizer, vocab=vocab, target=k,
                             class_names=class_names, oov_id=oov_id, output_activation=output_activation,
                             maxlen=maxlen, padding=padding, truncating=truncating, batch_size=batch_size,
                             verbose=verbose, max_length=max_length, bucket=bucket, **explain_kwargs)
                for k in range(front.n_outputs)]
    targets = _resolve_targets(target, len(texts_list), front.class_names, front.n_outputs)
    encoded = []
    for i, text in enumerate(texts_list):
        try:
            e = front.encode(text)
        except TooManyTokensError:
            raise ValueError(f"text {i} ({quote(text)}) has more than max_length={front.max_length:,} tokens; "
                             "memory grows with tokens x units. Shorten it, or pass a larger max_length= to "
                             "explain_text if this machine has the memory.") from None
        if e.words == 0:
            raise ValueError(f"text {i} ({quote(text)}) has no tokens after tokenization{_dropped_note(e)}; "
                             "give at least one word.")
        encoded.append(e)
    front.warn(encoded)
    return explain_encoded(front, encoded, targets, texts_list, batch_size=batch_size, verbose=verbose,
                           bucket=bucket, **explain_kwargs)


def _dropped_note(e: Encoded) -> str:
    if not e.dropped:
        return ""
    return (f" (its words {', '.join(quote(w, 30) for w in e.dropped[:5])} are not in the tokenizer's word "
            "index, which leaves them out as Keras does; pass oov_id= to give them the unknown-word id)")


def explain_encoded(front: "TextFront", encoded: Sequence[Encoded], targets: Optional[np.ndarray],
                    texts: Sequence[str], *, batch_size: int = 256, verbose: Optional[bool] = None,
                    bucket: Optional[bool] = None, **explain_kwargs) -> Explanation:
    """Explain texts already encoded by ``front`` (:func:`explain_text` without its checks; the
    ``keras-lrp`` command encodes each sentence once, naming its line in errors).

    Texts are explained in groups of one length. ``bucket``: group them by :func:`length_bucket`
    instead, each padded at its end with id 0 to its bucket's length, where the model masks that
    padding so that nothing changes, bit for bit: a token model's ``Embedding(mask_zero=True)``
    (``Explainer.post_padding_safe``), or, for a model that reads the embedding vectors, the explainer
    masking them by each text's length (``Explainer.vector_padding_safe``). An explainer that compiles
    once per shape (JAX, or ``jit_compile=True``) then compiles a handful of times for a corpus, not
    once per sentence length. None: for such explainers."""
    from .explainer import cached_explainer, length_bucket, progress_wanted

    front.refresh()
    kwargs = dict(explain_kwargs)
    timestep = kwargs.pop("timestep", None)
    explainer = cached_explainer(front.model, max_length=front.max_length, **kwargs)
    if bucket is None:
        bucket = explainer.compiles_per_shape
    by_lengths = bool(bucket) and explainer.vector_padding_safe   # padding masked by each text's length
    bucket = bool(bucket) and (explainer.post_padding_safe or by_lengths)
    by_length: Dict[int, List[int]] = {}
    for i, e in enumerate(encoded):
        by_length.setdefault(length_bucket(len(e.ids)) if bucket else len(e.ids), []).append(i)
    bar = None
    if progress_wanted(verbose, len(encoded), batch_size):
        import keras

        bar = keras.utils.Progbar(len(encoded), unit_name="text")
    parts, order, done = [], [], 0
    for length in sorted(by_length):
        rows = by_length[length]
        for start in range(0, len(rows), batch_size):
            chunk = rows[start:start + batch_size]
            ids = np.stack([np.pad(encoded[i].ids, (0, length - len(encoded[i].ids))) for i in chunk])
            t = None if targets is None else targets[chunk]
            lengths = np.array([len(encoded[i].ids) for i in chunk], dtype=np.int64)
            e = explainer.attribute(front.inputs(ids), t, timestep=timestep, batch_size=batch_size, verbose=False,
                                    lengths=lengths if by_lengths else None)
            e.lengths = lengths
            parts.append(e)
            order.extend(chunk)
            done += len(chunk)
            if bar is not None:
                bar.update(done, finalize=done == len(encoded))
    inverse = np.empty(len(order), dtype=np.int64)
    inverse[np.asarray(order)] = np.arange(len(order))
    result = concatenate(parts, order=inverse)
    if bucket:   # the padding got exactly 0: cut it, to the longest text (as without buckets)
        longest = int(result.lengths.max())
        cut = [None if r is None else r[:, :longest] for r in result._relevances()]
        result.relevance = cut if result.n_inputs > 1 else cut[0]
    result.tokens = [e.tokens for e in encoded]
    result.oov = [e.oov for e in encoded]
    result.lengths = np.array([len(e.ids) for e in encoded], dtype=np.int64)
    result.texts = list(texts)
    result.class_names = list(front.class_names) if front.class_names is not None else None
    result.output_activation = front.activation
    return result


def _check_batch_size(batch_size) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")


def _check_texts(texts) -> List[str]:
    if isinstance(texts, str):
        return [texts]
    if isinstance(texts, bytes):
        raise TypeError("texts must be str, not bytes; decode them first (texts.decode('utf-8')).")
    try:
        items = list(texts)
    except TypeError:
        raise TypeError(f"texts must be a string or a list of strings, got {type(texts).__name__}.") from None
    if not items:
        raise ValueError("texts is empty: nothing to explain.")
    for i, t in enumerate(items):
        if not isinstance(t, str):
            raise TypeError(f"texts[{i}] is a {type(t).__name__}, not a str; explain_text takes raw "
                            "strings (use keras_lrp.explain for token ids).")
    return items


def _resolve_targets(target, n: int, names: Optional[List[str]], n_out: int) -> Optional[np.ndarray]:
    """None, or (n,) int32 class indices from ints / class names (one or one per text)."""
    if target is None:
        return None

    def one(value) -> int:
        if isinstance(value, str):
            if names is None:
                raise ValueError(f"target {value!r} is a class name but the class names are unknown; "
                                 "pass class_names=[...] or an int target.")
            if value not in names:
                raise ValueError(f"target {value!r} is not a class name; the classes are {names}.")
            return names.index(value)
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"target must be None, 'all', an int, a class name, or one of those per "
                            f"text; got {value!r}.")
        if not 0 <= int(value) < n_out:
            raise ValueError(f"target {value} is out of range: the model has {n_out} outputs "
                             f"(valid 0..{n_out - 1}).")
        return int(value)

    if isinstance(target, (str, int, np.integer)):
        return np.full(n, one(target), dtype=np.int32)
    if isinstance(target, (float, np.floating, np.bool_, bytes)) or not hasattr(target, "__iter__"):
        one(target)   # raises the TypeError that says what target may be
    values = list(target)
    if len(values) != n:
        raise ValueError(f"target has {len(values)} entries for {n} texts; give one per text or a "
                         "single int / class name.")
    return np.array([one(v) for v in values], dtype=np.int32)


# ----------------------------------------------------------------------------- lengths


class TruncatedTextsWarning(SummableWarning, UserWarning):
    """Texts longer than the model's length were cut, as ``pad_sequences`` (or a
    ``TextVectorization`` layer's ``output_sequence_length``) cuts them."""

    def __init__(self, cut: int, total: int, how: str):
        self.cut, self.total, self.how = cut, total, how
        super().__init__(f"{cut} of {total} text{'s' if total != 1 else ''} {'were' if cut != 1 else 'was'} "
                         f"longer than the model's input and {'were' if cut != 1 else 'was'} cut: {how}")

    def cause(self):
        return self.how

    @classmethod
    def merge(cls, items):
        return cls(sum(w.cut for w in items), sum(w.total for w in items), items[0].how)


@dataclass(frozen=True)
class _Length:
    """Padding and truncation as ``keras.utils.pad_sequences(maxlen=, padding=, truncating=)``
    does them (id 0); ``maxlen`` None: every text as long as it is."""

    maxlen: Optional[int]
    padding: str = "pre"
    truncating: str = "pre"

    def fit(self, e: Encoded) -> Encoded:
        n = len(e.ids)
        if self.maxlen is None or n == self.maxlen:
            return e
        if n > self.maxlen:
            keep = slice(n - self.maxlen, n) if self.truncating == "pre" else slice(0, self.maxlen)
            return replace(e, tokens=e.tokens[keep], ids=e.ids[keep], oov=e.oov[keep],
                           words=min(e.words, self.maxlen), cut=e.cut + n - self.maxlen)
        k = self.maxlen - n
        tokens, ids, oov = [PAD_TOKEN] * k, np.zeros(k, e.ids.dtype), np.zeros(k, bool)
        if self.padding == "pre":
            return replace(e, tokens=tokens + e.tokens, ids=np.concatenate([ids, e.ids]),
                           oov=np.concatenate([oov, e.oov]))
        return replace(e, tokens=e.tokens + tokens, ids=np.concatenate([e.ids, ids]),
                       oov=np.concatenate([e.oov, oov]))

    def describe(self) -> str:
        """How a longer text is cut, for the warning."""
        kept, cut = ("last", "start") if self.truncating == "pre" else ("first", "end")
        return (f"maxlen={self.maxlen}, truncating={self.truncating!r} keeps the {kept} {self.maxlen} words (cuts the "
                f"{cut}), as pad_sequences does")


def _check_length_args(maxlen, padding, truncating) -> None:
    for name, value in (("padding", padding), ("truncating", truncating)):
        if value is not None and value not in _SIDES:
            raise ValueError(f"{name} must be 'pre' or 'post' (as in keras.utils.pad_sequences), got {value!r}.")
    if maxlen is not None and (isinstance(maxlen, (bool, np.bool_)) or not isinstance(maxlen, (int, np.integer))
                               or maxlen < 1):
        raise ValueError(f"maxlen must be None or a positive integer (ids per text), got {maxlen!r}.")


def _length(maxlen, padding, truncating, fixed: Optional[int]) -> _Length:
    if maxlen is not None and fixed is not None and maxlen != fixed:
        raise ValueError(f"maxlen={maxlen} but the model takes exactly {fixed} ids per text (its input shape is "
                         "fixed); leave maxlen= out.")
    return _Length(int(maxlen) if maxlen is not None else fixed, padding or "pre", truncating or "pre")


# ----------------------------------------------------------------------------- front ends


class TextFront:
    """How texts become the explained model's inputs, as the user's pipeline makes them:
    :meth:`encode` (a text -> :class:`Encoded`), :meth:`inputs` (ids -> what :attr:`model` takes).
    Made by :func:`text_front`."""

    model: Any
    class_names: Optional[List[str]]
    activation: Optional[str]
    max_length: int
    truncation: str = ""      # how a long text is cut, for the warning
    #: True when the model starts with TextVectorization: :attr:`model` is then a copy of the layers after it
    vectorizes_inside: bool = False

    def _finish(self, class_names, activation, max_length: int) -> None:
        self.class_names, self.activation, self.max_length = class_names, activation, max_length
        self.n_outputs = int(self.model.outputs[0].shape[-1])
        if class_names is not None and len(class_names) != self.n_outputs:
            raise ValueError(f"class_names has {len(class_names)} names but the model has {self.n_outputs} outputs.")

    def encode(self, text: str) -> Encoded:
        raise NotImplementedError

    def inputs(self, ids: np.ndarray) -> np.ndarray:
        """(batch, time) ids -> what ``self.model`` takes."""
        return ids

    def refresh(self) -> None:
        """Bring a copied model's weights up to date."""

    def warn(self, encoded: Sequence[Encoded]) -> None:
        """One warning for the words the tokenizer left out of ``encoded``, one for the texts cut."""
        dropped = Counter(w for e in encoded for w in e.dropped)
        if dropped:
            warnings.warn(LeftOutWordsWarning(dropped, sum(1 for e in encoded if e.dropped)), stacklevel=3)
        cut = sum(1 for e in encoded if e.cut)
        if cut:
            warnings.warn(TruncatedTextsWarning(cut, len(encoded), self.truncation), stacklevel=3)


class _TokenFront(TextFront):
    """A tokenizer + a word index in front of an id model (or of an embedding matrix)."""

    def __init__(self, model, split: Callable[[str], List[str]], lookup: Callable[[List[str]], WordIds],
                 embeddings, length: _Length):
        self.model, self.split, self.lookup, self.embeddings, self.length = model, split, lookup, embeddings, length
        self.truncation = length.describe() if length.maxlen is not None else ""

    def encode(self, text: str) -> Encoded:
        tokens = [str(t) for t in self.split(text)]
        found = self.lookup(tokens)
        kept = [t for t, k in zip(tokens, found.kept) if k]
        dropped = [t for t, k in zip(tokens, found.kept) if not k]
        return self.length.fit(Encoded(kept, found.ids, found.oov, len(kept), dropped))

    def inputs(self, ids):
        return ids if self.embeddings is None else self.embeddings[ids]


class _Vectorizer:
    """A ``TextVectorization`` layer encoding one text: its ids (its own padding and truncation
    included) and its standardized words."""

    def __init__(self, layer):
        self.layer = layer
        self.vocabulary = [str(v) for v in layer.get_vocabulary()]
        self.oov_ids = {i for i, v in enumerate(self.vocabulary) if v == "[UNK]"}
        self.sequence_length = layer.get_config().get("output_sequence_length")

    def encode(self, text: str) -> Encoded:
        import tensorflow as tf   # TextVectorization runs on TensorFlow whatever the backend (Keras needs it)
        from keras import ops

        ids = ops.convert_to_numpy(self.layer(tf.constant([text])))[0].astype(np.int32)
        try:  # the standardized, split words (what the vocabulary looked up), unknown ones included
            words = [w.decode("utf-8") for w in self.layer._preprocess(tf.constant([text])).to_list()[0]]
        except Exception:  # a private API of Keras: fall back to the vocabulary's tokens
            words = None
        n = len(words) if words is not None else int(np.count_nonzero(ids))
        if self.sequence_length is None:
            ids = ids[:n]
        cut, n = max(0, n - len(ids)), min(n, len(ids))
        tokens = words[:n] if words is not None else [self.vocabulary[i] for i in ids[:n]]
        oov = np.array([int(i) in self.oov_ids for i in ids[:n]], dtype=bool)
        pad = len(ids) - n  # only for a fixed output_sequence_length: the model sees the padding
        return Encoded(tokens + [PAD_TOKEN] * pad, ids, np.concatenate([oov, np.zeros(pad, bool)]), n, cut=cut)

    def describe(self) -> str:
        return (f"the TextVectorization layer {self.layer.name!r} keeps the first {self.sequence_length} words "
                f"(output_sequence_length={self.sequence_length})")


class _VectorizedTokenFront(_TokenFront):
    """A ``TextVectorization`` layer given as the tokenizer of an id model."""

    def __init__(self, model, vectorizer: _Vectorizer, length: _Length):
        super().__init__(model, None, None, None, length)
        self.vectorizer = vectorizer
        self.truncation = vectorizer.describe() if vectorizer.sequence_length is not None else self.truncation

    def encode(self, text: str) -> Encoded:
        return self.length.fit(self.vectorizer.encode(text))


class _VectorizerFront(TextFront):
    """A model whose first layer is TextVectorization: it vectorizes, a copy of the rest explains."""

    vectorizes_inside = True

    def __init__(self, model, layer):
        self.source = model
        self.model, self._pairs = _downstream_copy(model, layer)
        self.vectorizer = _Vectorizer(layer)
        self.truncation = self.vectorizer.describe()

    def refresh(self):
        for original, copy in self._pairs:
            copy.set_weights(original.get_weights())

    def encode(self, text: str) -> Encoded:
        return self.vectorizer.encode(text)


def text_front(model: Any, tokenizer: Any = None, vocab: Any = None, class_names: Optional[Sequence[str]] = None, *,
               oov_id: Optional[int] = None, output_activation: Optional[str] = None, maxlen: Optional[int] = None,
               padding: Optional[str] = None, truncating: Optional[str] = None,
               max_length: Optional[int] = None) -> TextFront:
    """The :class:`TextFront` :func:`explain_text` uses for these arguments (same meanings);
    everything is checked here, before any text is encoded."""
    import keras

    from .explainer import MAX_LENGTH

    if max_length is None:
        max_length = MAX_LENGTH
    if isinstance(max_length, (bool, np.bool_)) or not isinstance(max_length, (int, np.integer)) or max_length < 1:
        raise ValueError(f"max_length must be a positive integer (tokens), got {max_length!r}.")
    max_length = int(max_length)
    if output_activation is not None and output_activation not in ("softmax", "sigmoid"):
        raise ValueError(f"output_activation must be None, 'softmax' or 'sigmoid', got {output_activation!r}.")
    _check_length_args(maxlen, padding, truncating)
    activation = output_activation
    names = [str(c) for c in class_names] if class_names is not None else None
    embeddings = None
    keras_model = model
    given_vocab = vocab
    if not isinstance(model, keras.Model):
        inner = getattr(model, "model", None)
        if not isinstance(inner, keras.Model):
            raise TypeError(f"model must be a keras.Model or an object with a .model Keras model "
                            f"(like keras_lrp.load_pretrained(...)), got {type(model).__name__}.")
        keras_model = inner
        vocab = vocab if vocab is not None else getattr(model, "vocabulary", getattr(model, "vocab", None))
        tokenizer = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
        if names is None and getattr(model, "class_names", None) is not None:
            names = [str(c) for c in model.class_names]
        embeddings = getattr(model, "embeddings", None)
        if activation is None:
            described = str((getattr(model, "metadata", None) or {}).get("output", ""))
            activation = "softmax" if "logits" in described.lower() else None
    if activation is None:
        activation = _model_activation(keras_model)
    layers = [l for l in keras_model.layers if not isinstance(l, keras.layers.InputLayer)]
    if layers and isinstance(layers[0], keras.layers.TextVectorization):
        if tokenizer is not None or vocab is not None:
            raise ValueError("this model starts with TextVectorization, which tokenizes and looks up "
                             "words itself: do not pass tokenizer= or vocab=.")
        if (maxlen, padding, truncating) != (None, None, None):
            raise ValueError("this model starts with TextVectorization, which pads and truncates as it was built "
                             "(its output_sequence_length, at the end): do not pass maxlen=, padding= or "
                             "truncating=.")
        _check_vectorizer(layers[0])
        front: TextFront = _VectorizerFront(keras_model, layers[0])
        front._finish(names, activation, max_length)
        return front
    if embeddings is not None:
        embeddings = np.asarray(embeddings)
        if embeddings.ndim != 2:
            raise ValueError(f"the model object's embeddings must be a (vocabulary, dim) matrix, got "
                             f"shape {embeddings.shape}.")
    shape = keras_model.inputs[0].shape
    fixed = shape[1] if len(shape) > 1 and shape[1] is not None else None
    if isinstance(tokenizer, keras.layers.TextVectorization):
        if given_vocab is not None:
            raise ValueError("tokenizer= is a TextVectorization layer, which has its own vocabulary: do not pass "
                             "vocab=.")
        _check_vectorizer(tokenizer)
        vectorizer = _Vectorizer(tokenizer)
        if vectorizer.sequence_length is not None:
            if (maxlen, padding, truncating) != (None, None, None):
                raise ValueError(f"the TextVectorization layer {tokenizer.name!r} pads and truncates to its "
                                 f"output_sequence_length={vectorizer.sequence_length} itself: do not pass maxlen=, "
                                 "padding= or truncating=.")
            if fixed is not None and fixed != vectorizer.sequence_length:
                raise ValueError(f"the TextVectorization layer {tokenizer.name!r} gives "
                                 f"{vectorizer.sequence_length} ids per text but the model takes {fixed}.")
            length = _Length(None)
        else:
            length = _length(maxlen, padding, truncating, fixed)
        front = _VectorizedTokenFront(keras_model, vectorizer, length)
    else:
        keras_tokenizer = _keras_tokenizer(tokenizer, oov_id)
        if keras_tokenizer is not None:
            if given_vocab is not None:
                raise ValueError("tokenizer= is a Keras Tokenizer, which has its own word index: do not pass vocab=.")
            split, lookup = keras_tokenizer.tokenize, keras_tokenizer.lookup
        else:
            if vocab is None:
                raise ValueError("explain_text needs the word index the model was trained with: tokenizer= (a Keras "
                                 "Tokenizer, its to_json() file, or a TextVectorization layer) or vocab= (a "
                                 "keras_lrp.text.Vocabulary or a {word: id} dict), unless the model starts with "
                                 "TextVectorization.")
            lookup = _lookup_fn(vocab, oov_id)
            split = tokenizer
            if split is None and isinstance(vocab, Mapping):   # a Keras word_index: split as Keras splits
                from .text import KerasStyleTokenizer

                split = KerasStyleTokenizer()
        front = _TokenFront(keras_model, _tokenize_fn(split, max_length), lookup, embeddings,
                            _length(maxlen, padding, truncating, fixed))
    front._finish(names, activation, max_length)
    return front


def _keras_tokenizer(tokenizer, oov_id: Optional[int]) -> Optional[KerasTokenizer]:
    """``tokenizer`` as a :class:`KerasTokenizer` when it is one (a Keras Tokenizer object, its
    ``to_json()`` text or file), else None (a splitting function, or None)."""
    if tokenizer is None:
        return None
    if isinstance(tokenizer, KerasTokenizer):
        found = tokenizer
    elif KerasTokenizer.is_keras_tokenizer(tokenizer):
        found = KerasTokenizer.from_keras(tokenizer)
    elif isinstance(tokenizer, str) and tokenizer.lstrip().startswith("{"):
        found = KerasTokenizer.from_json(tokenizer, source="tokenizer= (JSON text)")
    elif isinstance(tokenizer, (str, os.PathLike)):
        found = KerasTokenizer.load(tokenizer)
    else:
        return None
    if oov_id is not None:
        found = KerasTokenizer(found.word_index, num_words=found.num_words, filters=found.splitter.filters,
                               lower=found.splitter.lower, split=found.splitter.split,
                               char_level=found.splitter.char_level, oov_id=oov_id, analyzer=found.analyzer)
    return found


def _check_vectorizer(layer) -> None:
    config = layer.get_config()
    if config.get("output_mode") != "int":
        raise ValueError(f"TextVectorization layer {layer.name!r} has output_mode="
                         f"{config.get('output_mode')!r}; explain_text needs output_mode='int' (one id "
                         "per word), the only mode whose relevance lands on words.")
    if config.get("ngrams") not in (None, 1):
        raise ValueError(f"TextVectorization layer {layer.name!r} uses ngrams={config.get('ngrams')}; "
                         "explain_text supports single words only (ngrams=None).")
    if config.get("split") is None:
        raise ValueError(f"TextVectorization layer {layer.name!r} has split=None; explain_text needs "
                         "it to split texts into words.")


def _tokenize_fn(tokenizer, max_tokens: int) -> Callable[[str], List[str]]:
    """``str -> tokens`` raising :class:`~keras_lrp.text.TooManyTokensError` for more than
    ``max_tokens``: found early by a tokenizer whose ``tokenize`` takes ``max_tokens=``, else by
    counting its tokens."""
    if tokenizer is None:
        from .text import Tokenizer

        tokenizer = Tokenizer()
    if hasattr(tokenizer, "tokenize") and callable(tokenizer.tokenize):
        fn = tokenizer.tokenize
    elif callable(tokenizer):
        fn = tokenizer
    else:
        raise TypeError(f"tokenizer must be a Keras Tokenizer (object, to_json() text or file), a "
                        f"TextVectorization layer, or a callable str -> list of str / an object with a "
                        f".tokenize method; got {type(tokenizer).__name__}.")
    try:
        bounded = "max_tokens" in inspect.signature(fn).parameters
    except (TypeError, ValueError):    # a builtin without a signature
        bounded = False
    if bounded:
        return lambda text: fn(text, max_tokens=max_tokens)

    def counted(text: str) -> List[str]:
        tokens = fn(text)
        if len(tokens) > max_tokens:
            raise TooManyTokensError(max_tokens)
        return tokens
    return counted


def _lookup_fn(vocab, oov_id: Optional[int]) -> Callable[[List[str]], WordIds]:
    """``tokens -> WordIds`` for a Vocabulary (every word gets an id) or a ``word_index`` dict
    (as a Keras Tokenizer's: unknown words get ``oov_id`` or an unknown-word entry's id, else
    they are left out)."""
    if isinstance(vocab, Mapping):
        return KerasTokenizer.from_word_index(vocab, oov_id, source="vocab=").lookup
    if hasattr(vocab, "encode") and callable(vocab.encode):
        if oov_id is not None:
            raise ValueError("oov_id is for a {word: id} dict; a Vocabulary has its own unknown id.")

        def encode(tokens):
            ids, oov = (np.asarray(a) for a in vocab.encode(tokens))
            return WordIds(ids, oov, np.ones(len(tokens), dtype=bool))
        return encode
    raise TypeError(f"vocab must be a keras_lrp.text.Vocabulary or a {{word: id}} dict, got "
                    f"{type(vocab).__name__}.")


# A copy of the layers after a TextVectorization, per model (weights refreshed at each call).
_DOWNSTREAM: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _downstream_copy(model, vectorizer):
    """A new functional model that takes the vectorizer's ids and runs copies of every layer after
    it (same configs and weights), and the (original, copy) layer pairs.

    A copy, not the layers themselves: calling them again would add a second call to each layer
    (keras_lrp refuses shared layers) and change the user's model."""
    import keras

    cached = _DOWNSTREAM.get(model)
    if cached is not None and cached[0] is vectorizer:
        return cached[1], cached[2]
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ValueError("explain_text explains single-input single-output TextVectorization models.")
    out_tensor = vectorizer._inbound_nodes[0].output_tensors[0]
    ids = keras.Input(shape=tuple(out_tensor.shape[1:]), dtype="int32", name="token_ids")
    tensors = {id(out_tensor): ids}
    pairs = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer) or layer is vectorizer:
            continue
        if len(layer._inbound_nodes) != 1:
            raise ValueError(f"layer {layer.name!r} is called {len(layer._inbound_nodes)} times; shared "
                             "layers are not supported.")
        node = layer._inbound_nodes[0]
        copy = layer.__class__.from_config(layer.get_config())

        def swap(x):
            if isinstance(x, keras.KerasTensor):
                if id(x) not in tensors:
                    raise ValueError(f"layer {layer.name!r} reads a tensor that does not come from the "
                                     "TextVectorization layer; explain_text needs one text input.")
                return tensors[id(x)]
            return x

        args = keras.tree.map_structure(swap, node.arguments.args)
        recorded = dict(node.arguments.kwargs)
        mask = recorded.get("mask")
        if isinstance(mask, keras.KerasTensor) and id(mask) not in tensors and \
                any(getattr(a, "_keras_mask", None) is not None for a in keras.tree.flatten(args)):
            # the mask Keras gave the layer from its input (a reloaded model records a copy of it):
            # the copy gets its input's mask from Keras in the same way
            del recorded["mask"]
        kwargs = keras.tree.map_structure(swap, recorded)
        outputs = copy(*args, **kwargs)
        copy.set_weights(layer.get_weights())
        for old, new in zip(node.output_tensors, keras.tree.flatten(outputs)):
            tensors[id(old)] = new
            # Keras passes a layer its input's mask as mask= (recorded in the node): the copy's mask
            old_mask, new_mask = getattr(old, "_keras_mask", None), getattr(new, "_keras_mask", None)
            if old_mask is not None and new_mask is not None:
                tensors[id(old_mask)] = new_mask
        pairs.append((layer, copy))
    sub = keras.Model(ids, tensors[id(model.outputs[0])], name=f"{model.name}_after_vectorization")
    _DOWNSTREAM[model] = (vectorizer, sub, pairs)
    return sub, pairs
