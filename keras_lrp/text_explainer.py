"""Text in, explanation out: :func:`explain_text` tokenizes raw strings, maps them to ids,
explains them and returns an :class:`~keras_lrp.explanation.Explanation` that carries the tokens.

Sentences are grouped by length and each group is explained without padding, so a sentence's
relevance never depends on the other sentences of the call (``explain_text(m, texts)[i]`` equals
``explain_text(m, [texts[i]])`` bit for bit). Three kinds of model are accepted:

* a Keras model whose first layer is an ``Embedding`` (token ids in), with ``vocab=`` (a
  :class:`keras_lrp.text.Vocabulary` or a plain ``word_index`` dict) and a tokenizer (default
  :class:`keras_lrp.text.Tokenizer`);
* a Keras model whose first layer is ``keras.layers.TextVectorization``: it takes the strings
  itself. The vectorization runs outside the explained graph; the explained model is the rest
  of the graph after it (a copy with the current weights), so the relevance lands on the
  embedded tokens; tokens are the layer's standardized words, unknown ones marked;
* an object with ``.model``, ``.vocabulary`` (or ``.vocab``), ``.tokenizer``, ``.class_names``
  and optionally ``.embeddings`` (the shipped ``SentimentModel`` of
  :func:`keras_lrp.load_pretrained`): its tokenizer, vocabulary and class names are the
  defaults; with ``.embeddings`` the model takes the embedding vectors of the ids.
"""
from __future__ import annotations

import inspect
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from .explanation import Explanation, concatenate, output_activation as _model_activation
from .safe_io import quote
from .text import TooManyTokensError

__all__ = ["explain_text"]

TargetArg = Union[None, int, str, Sequence[Union[int, str]]]
_EXPLAIN_KEYS = ("eps", "bias_factor", "rule", "dtype", "method", "timestep")
_OOV_KEYS = ("<unk>", "[UNK]", "<UNK>", "<OOV>", "<oov>", "UNK", "[OOV]")


@dataclass
class _Encoded:
    """One text as the model sees it."""

    tokens: List[str]
    ids: np.ndarray      # (time,) int
    oov: np.ndarray      # (time,) bool
    words: int           # number of real words (the rest of ids, if any, is padding)


def explain_text(model: Any, texts: Union[str, Sequence[str]], tokenizer: Any = None, vocab: Any = None,
                 target: Union[TargetArg, str] = None, class_names: Optional[Sequence[str]] = None, *,
                 oov_id: Optional[int] = None, output_activation: Optional[str] = None,
                 batch_size: int = 256, verbose: Optional[bool] = None, max_length: Optional[int] = None,
                 **explain_kwargs) -> Union[Explanation, List[Explanation]]:
    """Explain a text model on raw strings.

    Args:
        model: a Keras model starting with ``Embedding`` (needs ``vocab``) or with
            ``TextVectorization``, or a ``SentimentModel``-like object (``.model``,
            ``.vocabulary``, ``.tokenizer``, ``.class_names``, optional ``.embeddings``).
        texts: one string or a list of strings.
        tokenizer: ``str -> list[str]`` (a callable, or an object with ``.tokenize``); default
            the model object's tokenizer, else :class:`keras_lrp.text.Tokenizer`.
        vocab: :class:`keras_lrp.text.Vocabulary`, or a ``{word: id}`` dict (Keras'
            ``word_index``). Unknown words get the vocabulary's unknown id: ``oov_id=``, else
            the id of an ``<unk>`` / ``[UNK]`` / ``<OOV>`` entry; without one they are an error.
        target: None (the predicted class), a class index, a class name (needs class names),
            one of those per text, or ``"all"``: every class, returned as a list of
            Explanations, element ``k`` explaining class ``k``.
        class_names: one name per output (default the model object's ``class_names``).
        oov_id: the id of unknown words for a ``word_index`` dict.
        output_activation: "softmax" / "sigmoid" when the model's outputs are logits of it
            (gives probabilities in titles); default: the last layer's activation, or "softmax"
            for a model object whose metadata says its outputs are logits.
        batch_size: sentences per compiled call.
        verbose: one progress bar over all texts: True / False, None = only for more than one
            batch on an interactive stdout.
        max_length: the most tokens a text may have (default 100,000, as :func:`keras_lrp.explain`);
            a longer text raises a ValueError, found by tokenizing no further than that (with
            keras_lrp's tokenizers, or any whose ``tokenize`` takes ``max_tokens=``).
        **explain_kwargs: ``eps``, ``bias_factor``, ``rule``, ``dtype``, ``method``,
            ``timestep``, as in :func:`keras_lrp.explain`.

    Returns:
        An :class:`~keras_lrp.explanation.Explanation` in the order of ``texts`` with
        ``tokens``, ``oov`` (unknown words), ``texts``, ``class_names``; ``relevance`` is
        (batch, longest, features), zero beyond each text's length. For ``target="all"``, a
        list with one Explanation per class.
    """
    from .explainer import MAX_LENGTH, explain, progress_wanted

    unknown = set(explain_kwargs) - set(_EXPLAIN_KEYS)
    if unknown:
        raise TypeError(f"explain_text got unknown argument(s) {sorted(unknown)}; it takes "
                        f"tokenizer, vocab, target, class_names, oov_id, output_activation, batch_size, "
                        f"verbose, max_length and the explain arguments {list(_EXPLAIN_KEYS)}.")
    if max_length is None:
        max_length = MAX_LENGTH
    if isinstance(max_length, (bool, np.bool_)) or not isinstance(max_length, (int, np.integer)) or max_length < 1:
        raise ValueError(f"max_length must be a positive integer (tokens), got {max_length!r}.")
    max_length = int(max_length)
    texts_list = _check_texts(texts)
    front = _front_end(model, tokenizer, vocab, class_names, oov_id, output_activation, max_length)
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
    n_out = int(front.model.outputs[0].shape[-1])
    names = front.class_names
    if names is not None and len(names) != n_out:
        raise ValueError(f"class_names has {len(names)} names but the model has {n_out} outputs.")

    if isinstance(target, str) and target == "all":
        return [explain_text(model, texts_list, tokenizer=tokenizer, vocab=vocab, target=k,
                             class_names=class_names, oov_id=oov_id, output_activation=output_activation,
                             batch_size=batch_size, verbose=verbose, max_length=max_length, **explain_kwargs)
                for k in range(n_out)]
    targets = _resolve_targets(target, len(texts_list), names, n_out)
    encoded = []
    for i, text in enumerate(texts_list):
        try:
            e = front.encode(text)
        except TooManyTokensError:
            raise ValueError(f"text {i} ({quote(text)}) has more than max_length={max_length:,} tokens; memory "
                             "grows with tokens x units. Shorten it, or pass a larger max_length= to "
                             "explain_text if this machine has the memory.") from None
        if e.words == 0:
            raise ValueError(f"text {i} ({quote(text)}) has no tokens after tokenization; give at "
                             "least one word.")
        encoded.append(e)

    front.refresh()
    by_length: Dict[int, List[int]] = {}
    for i, e in enumerate(encoded):
        by_length.setdefault(len(e.ids), []).append(i)
    bar = None
    if progress_wanted(verbose, len(texts_list), batch_size):
        import keras

        bar = keras.utils.Progbar(len(texts_list), unit_name="text")
    parts, order, done = [], [], 0
    for length in sorted(by_length):
        rows = by_length[length]
        for start in range(0, len(rows), batch_size):
            chunk = rows[start:start + batch_size]
            ids = np.stack([encoded[i].ids for i in chunk])
            t = None if targets is None else targets[chunk]
            e = explain(front.model, front.inputs(ids), t, batch_size=batch_size, verbose=False,
                        max_length=max_length, **explain_kwargs)
            parts.append(e)
            order.extend(chunk)
            done += len(chunk)
            if bar is not None:
                bar.update(done, finalize=done == len(texts_list))
    inverse = np.empty(len(order), dtype=np.int64)
    inverse[np.asarray(order)] = np.arange(len(order))
    result = concatenate(parts, order=inverse)
    result.tokens = [encoded[i].tokens for i in range(len(encoded))]
    result.oov = [encoded[i].oov for i in range(len(encoded))]
    result.lengths = np.array([len(e.ids) for e in encoded], dtype=np.int64)
    result.texts = texts_list
    result.class_names = list(names) if names is not None else None
    result.output_activation = front.activation
    return result


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


# ----------------------------------------------------------------------------- front ends


class _Front:
    """Turns a text into ids and ids into the explained model's inputs."""

    model: Any
    class_names: Optional[List[str]]
    activation: Optional[str]

    def encode(self, text: str) -> _Encoded:
        raise NotImplementedError

    def inputs(self, ids: np.ndarray) -> np.ndarray:
        """(batch, time) ids -> what ``self.model`` takes."""
        return ids

    def refresh(self) -> None:
        """Bring a copied model's weights up to date."""


class _TokenFront(_Front):
    """Tokenizer + vocabulary in front of an id model (or of an embedding matrix)."""

    def __init__(self, model, tokenize: Callable[[str], List[str]], lookup: Callable, embeddings,
                 class_names, activation, fixed_length: Optional[int]):
        self.model, self.tokenize, self.lookup = model, tokenize, lookup
        self.embeddings, self.class_names, self.activation = embeddings, class_names, activation
        self.fixed_length = fixed_length

    def encode(self, text: str) -> _Encoded:
        tokens = [str(t) for t in self.tokenize(text)]
        ids, oov = self.lookup(tokens)
        return _pad_to(self.fixed_length, _Encoded(tokens, ids, oov, len(tokens)), "<pad>")

    def inputs(self, ids):
        return ids if self.embeddings is None else self.embeddings[ids]


class _VectorizerFront(_Front):
    """A model whose first layer is TextVectorization: it vectorizes, a copy of the rest explains."""

    def __init__(self, model, layer, class_names, activation):
        self.layer, self.source = layer, model
        self.model, self._pairs = _downstream_copy(model, layer)
        self.class_names, self.activation = class_names, activation
        vocab = layer.get_vocabulary()
        self.vocabulary = [str(v) for v in vocab]
        self.oov_ids = {i for i, v in enumerate(self.vocabulary) if v == "[UNK]"}
        shape = self.model.inputs[0].shape
        self.fixed_length = shape[1] if len(shape) > 1 else None

    def refresh(self):
        for original, copy in self._pairs:
            copy.set_weights(original.get_weights())

    def encode(self, text: str) -> _Encoded:
        import tensorflow as tf

        ids = np.asarray(self.layer(tf.constant([text])))[0].astype(np.int32)
        try:  # the standardized, split words (what the vocabulary looked up), unknown ones included
            words = [w.decode("utf-8") for w in self.layer._preprocess(tf.constant([text])).to_list()[0]]
        except Exception:  # a private API of Keras: fall back to the vocabulary's tokens
            words = None
        n = len(words) if words is not None else int(np.count_nonzero(ids))
        if self.fixed_length is None:
            ids = ids[:n]
        n = min(n, len(ids))
        tokens = words[:n] if words is not None else [self.vocabulary[i] for i in ids[:n]]
        oov = np.array([int(i) in self.oov_ids for i in ids[:n]], dtype=bool)
        pad = len(ids) - n  # only for a fixed output_sequence_length: the model sees the padding
        return _Encoded(tokens + ["<pad>"] * pad, ids, np.concatenate([oov, np.zeros(pad, bool)]), n)


def _pad_to(length: Optional[int], e: _Encoded, pad_token: str) -> _Encoded:
    """Models with a fixed time axis need exactly ``length`` ids: pad with id 0 (shown as
    ``pad_token``, so nothing the model saw is hidden) or refuse longer texts."""
    if length is None or len(e.ids) == length:
        return e
    if len(e.ids) > length:
        raise ValueError(f"a text has {len(e.ids)} tokens but the model takes exactly {length} "
                         f"(its input shape is fixed); shorten the text: {quote(' '.join(e.tokens[:40]))}")
    k = length - len(e.ids)
    return _Encoded(e.tokens + [pad_token] * k, np.concatenate([e.ids, np.zeros(k, e.ids.dtype)]),
                    np.concatenate([e.oov, np.zeros(k, bool)]), e.words)


def _front_end(model, tokenizer, vocab, class_names, oov_id, activation, max_tokens: int) -> _Front:
    import keras

    if activation is not None and activation not in ("softmax", "sigmoid"):
        raise ValueError(f"output_activation must be None, 'softmax' or 'sigmoid', got {activation!r}.")
    names = [str(c) for c in class_names] if class_names is not None else None
    embeddings = None
    keras_model = model
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
        _check_vectorizer(layers[0])
        return _VectorizerFront(keras_model, layers[0], names, activation)
    if vocab is None:
        raise ValueError("explain_text needs vocab= (a keras_lrp.text.Vocabulary or a {word: id} dict) "
                         "to map words to ids, unless the model starts with TextVectorization.")
    if embeddings is not None:
        embeddings = np.asarray(embeddings)
        if embeddings.ndim != 2:
            raise ValueError(f"the model object's embeddings must be a (vocabulary, dim) matrix, got "
                             f"shape {embeddings.shape}.")
    shape = keras_model.inputs[0].shape
    fixed = shape[1] if len(shape) > 1 and shape[1] is not None else None
    return _TokenFront(keras_model, _tokenize_fn(tokenizer, max_tokens), _lookup_fn(vocab, oov_id), embeddings,
                       names, activation, fixed)


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
        raise TypeError(f"tokenizer must be a callable str -> list of str or have a .tokenize method, "
                        f"got {type(tokenizer).__name__}.")
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


def _lookup_fn(vocab, oov_id: Optional[int]) -> Callable[[List[str]], Tuple[np.ndarray, np.ndarray]]:
    if hasattr(vocab, "encode") and callable(vocab.encode):
        if oov_id is not None:
            raise ValueError("oov_id is for a {word: id} dict; a Vocabulary has its own unknown id.")
        return lambda tokens: tuple(np.asarray(a) for a in vocab.encode(tokens))
    if not isinstance(vocab, Mapping):
        raise TypeError(f"vocab must be a keras_lrp.text.Vocabulary or a {{word: id}} dict, got "
                        f"{type(vocab).__name__}.")
    if oov_id is None:
        oov_id = next((vocab[k] for k in _OOV_KEYS if k in vocab), None)
    word_index = dict(vocab)

    def lookup(tokens):
        ids = [word_index.get(t) for t in tokens]
        oov = np.array([i is None for i in ids], dtype=bool)
        if oov.any() and oov_id is None:
            missing = ", ".join(quote(t, 40) for t in sorted({t for t, o in zip(tokens, oov) if o})[:5])
            raise ValueError(f"word(s) {missing} are not in the vocabulary and it has no unknown-word "
                             "entry ('<unk>', '[UNK]' or '<OOV>'); pass oov_id= (the id the model was "
                             "trained with for unknown words).")
        return np.array([oov_id if i is None else i for i in ids], dtype=np.int32), oov
    return lookup


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
        kwargs = keras.tree.map_structure(swap, node.arguments.kwargs)
        outputs = copy(*args, **kwargs)
        copy.set_weights(layer.get_weights())
        for old, new in zip(node.output_tensors, keras.tree.flatten(outputs)):
            tensors[id(old)] = new
        pairs.append((layer, copy))
    sub = keras.Model(ids, tensors[id(model.outputs[0])], name=f"{model.name}_after_vectorization")
    _DOWNSTREAM[model] = (vectorizer, sub, pairs)
    return sub, pairs
