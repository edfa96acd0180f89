"""The entry point: ``explain(model, inputs, target=...)`` and the reusable ``LRP`` explainer."""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import keras
import numpy as np
import tensorflow as tf

from .graph import layer_chain
from .rules import Epsilon
from .walk import Walk

__all__ = ["Explanation", "LRP", "explain"]

Target = Union[None, int, Sequence[int], np.ndarray]
_DTYPES = ("float32", "float64")


@dataclass
class Explanation:
    """What :func:`explain` returns (numpy arrays).

    Attributes:
        relevance: (batch, time, features) input relevance.
        scores: (batch, outputs) pre-activation outputs of the model.
        target: (batch,) the explained output index per sample.
        rest: (batch,) relevance left on the recurrent layers' zero initial states. With
            ``eps = 0, bias_factor = 1``: ``relevance.sum((1, 2)) + rest == scores[target]``;
            otherwise the stabiliser and the dropped bias terms absorb the difference.
    """

    relevance: np.ndarray
    scores: np.ndarray
    target: np.ndarray
    rest: np.ndarray

    @property
    def word_relevance(self) -> np.ndarray:
        """(batch, time): relevance summed over the feature (embedding) axis."""
        return self.relevance.sum(axis=-1)

    @property
    def explained_score(self) -> np.ndarray:
        """(batch,): the score of each sample's target."""
        return np.take_along_axis(self.scores, self.target[:, None], axis=1)[:, 0]


class LRP:
    """A compiled LRP explainer for one model (Captum-style: build once, ``attribute`` many times).

    Args:
        model: a built Keras model Input -> LSTM | Bidirectional(LSTM) -> Dense (any activation;
            the Dense pre-activation is explained).
        eps: epsilon-rule stabiliser, ``>= 0``.
        bias_factor: share of bias and stabiliser redistributed to the inputs (0 = paper, 1 = conserving).
        dtype: "float32" or "float64"; the computation runs in this dtype from the model's weights
            (read live, so an explainer stays valid after further training).
    """

    def __init__(self, model: keras.Model, eps: float = 1e-3, bias_factor: float = 0.0,
                 dtype: str = "float32"):
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {_DTYPES}, got {dtype!r}.")
        self.rule = Epsilon(eps=eps, bias_factor=bias_factor)
        self.dtype = dtype
        self.model = model
        self._walk = Walk(layer_chain(model), dtype)
        shape = model.inputs[0].shape if model.inputs else None
        if shape is None or len(shape) != 3 or shape[-1] is None:
            raise ValueError(
                f"model {model.name!r} must take (batch, time, features) inputs with a known "
                f"feature size; its input shape is {shape}.")
        self.n_features = int(shape[-1])
        self.n_outputs = int(model.outputs[0].shape[-1])
        self._fn = tf.function(
            self._run, reduce_retracing=True,
            input_signature=[tf.TensorSpec((None, None, self.n_features), dtype),
                             tf.TensorSpec((None,), tf.int32)])

    def _run(self, x, target):
        scores, caches = self._walk.forward(x)
        target = tf.where(target < 0, tf.argmax(scores, axis=-1, output_type=tf.int32), target)
        r_out = tf.one_hot(target, self.n_outputs, dtype=scores.dtype) * scores
        relevance, rest = self._walk.relevance(caches, r_out, self.rule)
        return relevance, scores, target, rest

    def attribute(self, inputs, target: Target = None, batch_size: int = 256) -> Explanation:
        """Explain ``inputs`` (batch, time, features) for ``target`` (None = predicted class,
        an int, or one int per sample), ``batch_size`` samples at a time."""
        x = self._check_inputs(inputs)
        t = self._check_target(target, x.shape[0])
        if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
        parts = [self._fn(tf.constant(x[i:i + batch_size]), tf.constant(t[i:i + batch_size]))
                 for i in range(0, x.shape[0], batch_size)]
        relevance, scores, target_out, rest = (np.concatenate([p[k].numpy() for p in parts])
                                               for k in range(4))
        return Explanation(relevance=relevance, scores=scores, target=target_out.astype(np.int64),
                           rest=rest)

    def _check_inputs(self, inputs) -> np.ndarray:
        try:
            x = np.asarray(inputs)
        except Exception as err:  # ragged lists etc.
            raise TypeError(f"inputs must be an array of shape (batch, time, features): {err}") from None
        if x.dtype == object or not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
            raise TypeError(f"inputs must be numeric, got dtype {x.dtype}; pad sequences to one length.")
        if x.ndim != 3:
            raise ValueError(f"inputs must have shape (batch, time, features={self.n_features}), "
                             f"got shape {x.shape}; add a batch axis with x[None] for one sequence.")
        if x.shape[-1] != self.n_features:
            raise ValueError(f"inputs have {x.shape[-1]} features but the model expects {self.n_features}.")
        if x.shape[0] == 0:
            raise ValueError("inputs is an empty batch: nothing to explain.")
        if x.shape[1] == 0:
            raise ValueError("inputs has zero-length sequences: give at least one timestep.")
        if not np.all(np.isfinite(x)):
            raise ValueError("inputs contain NaN or inf values.")
        return x.astype(self.dtype, copy=False)

    def _check_target(self, target: Target, batch: int) -> np.ndarray:
        if target is None:
            return np.full(batch, -1, np.int32)
        t = np.asarray(target)
        if t.dtype == object or not np.issubdtype(t.dtype, np.integer):
            raise TypeError(f"target must be None, an int or a sequence of ints, got {target!r}.")
        if t.ndim == 0:
            t = np.full(batch, int(t))
        if t.shape != (batch,):
            raise ValueError(f"target has shape {t.shape}, expected one int per sample ({batch},) or a single int.")
        bad = (t < 0) | (t >= self.n_outputs)
        if bad.any():
            raise ValueError(f"target {t[bad][0]} is out of range: the model has {self.n_outputs} outputs "
                             f"(valid targets 0..{self.n_outputs - 1}).")
        return t.astype(np.int32)


# The most recently used explainers, so that repeated explain() calls reuse the compiled function.
# Bounded, because each explainer holds its model alive.
_CACHE: "OrderedDict[tuple, LRP]" = OrderedDict()
_CACHE_SIZE = 8


def explain(model: keras.Model, inputs, target: Target = None, *, eps: float = 1e-3,
            bias_factor: float = 0.0, dtype: str = "float32", batch_size: int = 256) -> Explanation:
    """Explain a model's outputs with LRP (Arras et al. 2017).

    Args:
        model: Input -> LSTM | Bidirectional(LSTM) -> Dense Keras model.
        inputs: (batch, time, features) array.
        target: None (the predicted class), an int, or one int per sample.
        eps, bias_factor: the epsilon-rule's parameters (see :mod:`keras_lrp.rules`).
        dtype: "float32" or "float64".
        batch_size: samples per compiled call.

    Returns:
        :class:`Explanation` with ``relevance`` (batch, time, features), ``word_relevance``
        (batch, time), ``scores`` (batch, outputs), ``target`` (batch,), ``rest`` (batch,).
    """
    key = (id(model), Epsilon(eps=eps, bias_factor=bias_factor), dtype)
    explainer = _CACHE.get(key)
    if explainer is None or explainer.model is not model:
        explainer = LRP(model, eps=eps, bias_factor=bias_factor, dtype=dtype)
    _CACHE[key] = explainer
    _CACHE.move_to_end(key)
    while len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return explainer.attribute(inputs, target=target, batch_size=batch_size)
