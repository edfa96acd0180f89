"""The entry point: ``explain(model, inputs, target=...)`` and the reusable ``LRP`` explainer."""
from __future__ import annotations

import warnings
from collections import OrderedDict
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import keras
import numpy as np
import tensorflow as tf

from .graph import model_graph
from .propagators import Context
from .recurrent import GATE_RULES
from .rules import Epsilon
from .walk import Walk

__all__ = ["Explanation", "Explainer", "LRP", "explain", "METHODS"]

#: "lrp": layer-wise relevance propagation; "gi": gradient x input; "sa": sensitivity analysis
#: (squared gradient, so word_relevance is the squared gradient norm, Arras et al. 2017).
METHODS = ("lrp", "gi", "sa")

Target = Union[None, int, Sequence[int], np.ndarray]
_DTYPES = ("float32", "float64")
_ROWS = 32   # compiled calls see batches of a multiple of this many rows (see Explainer._call_padded)
# Rows x time steps of one compiled call above which each sample is explained alone (long
# sequences), so one long sample is not copied to _ROWS rows (see Explainer._rows_per_call).
_STEPS_PER_CALL = _ROWS * 2048
#: Default longest input sequence (time steps) explained; raise it with ``max_length=``.
MAX_LENGTH = 100_000
_INT64 = np.iinfo(np.int64)


@dataclass
class Explanation:
    """What :func:`explain` returns (numpy arrays).

    Attributes:
        relevance: input relevance, (batch, time, features); for token-id models, the relevance
            of the embedding vectors, (batch, time, embedding_dim).
        scores: (batch, outputs) pre-activation outputs of the model (at ``timestep`` for models
            whose output has a time axis).
        target: (batch,) the explained output index per sample.
        rest: (batch,) relevance left on the recurrent layers' zero initial states (and on the
            constant zero outputs of masked steps of Bidirectional return_sequences layers). With
            ``eps = 0, bias_factor = 1``: ``relevance.sum() + rest == scores[target]`` per sample;
            otherwise the stabiliser and the dropped bias terms absorb the difference.
        timestep: (batch,) the explained output timestep, or None for models without a time axis.
    """

    relevance: np.ndarray
    scores: np.ndarray
    target: np.ndarray
    rest: np.ndarray
    timestep: Optional[np.ndarray] = None

    @property
    def word_relevance(self) -> np.ndarray:
        """(batch, time): relevance summed over the feature (embedding) axis."""
        return self.relevance.sum(axis=-1)

    @property
    def explained_score(self) -> np.ndarray:
        """(batch,): the score of each sample's target."""
        return np.take_along_axis(self.scores, self.target[:, None], axis=1)[:, 0]


class Explainer:
    """A compiled explainer for one model (Captum-style: build once, ``attribute`` many times).

    Args:
        model: a built single-input single-output Keras model of supported layers
            (see :mod:`keras_lrp.propagators`); the output layer's pre-activation is explained.
        eps: epsilon-rule stabiliser, ``>= 0``.
        bias_factor: share of bias and stabiliser redistributed to the inputs (0 = paper, 1 = conserving).
        dtype: "float32" or "float64"; the computation runs in this dtype from the model's weights
            (read live, so an explainer stays valid after further training).
        rule: gate rule for every gate x signal product: "all" (signal-take-all, Arras et al.
            2017, the default), "half" or "prop" (see :data:`keras_lrp.recurrent.GATE_RULES`).
        method: "lrp" (default), or the gradient baselines "gi" (gradient x input) and "sa"
            (sensitivity analysis: squared gradient) of the same pre-activation score.
        max_length: the longest input sequence (time steps) explained, 100_000 by default;
            longer inputs raise a ValueError before anything is allocated (memory grows with
            time x units). Raise it for long time series.
    """

    def __init__(self, model: keras.Model, eps: float = 1e-3, bias_factor: float = 0.0,
                 dtype: str = "float32", rule: str = "all", method: str = "lrp",
                 max_length: int = MAX_LENGTH):
        if isinstance(max_length, (bool, np.bool_)) or not isinstance(max_length, (int, np.integer)) \
                or max_length < 1:
            raise ValueError(f"max_length must be a positive integer (time steps), got {max_length!r}.")
        self.max_length = int(max_length)
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}.")
        self.method = method
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {_DTYPES}, got {dtype!r}.")
        if rule not in GATE_RULES:
            raise ValueError(f"rule must be one of {GATE_RULES}, got {rule!r}.")
        self.rule = Epsilon(eps=eps, bias_factor=bias_factor)
        self.gate_rule, self.dtype, self.model = rule, dtype, model
        graph = model_graph(model)
        self._walk = Walk(graph, Context(dtype, self.rule, rule))
        self.tokens = self._walk.embedding is not None
        self.input_shape = graph.input_shape
        out_shape = tuple(model.outputs[0].shape)
        if len(out_shape) not in (2, 3) or out_shape[-1] is None:
            raise ValueError(f"model {model.name!r} has output shape {out_shape}; explain needs "
                             "(batch, outputs) or, for sequence outputs, (batch, time, outputs).")
        self.n_outputs = int(out_shape[-1])
        self.has_time_axis = len(out_shape) == 3
        in_dtype = tf.int32 if self.tokens else dtype
        self._fn = tf.function(
            self._run, reduce_retracing=True,
            input_signature=[tf.TensorSpec((None,) + self.input_shape[1:], in_dtype),
                             tf.TensorSpec((None,), tf.int32), tf.TensorSpec((None,), tf.int32)])

    def _scores(self, out, timestep):
        if not self.has_time_axis:
            return out, timestep
        timestep = tf.where(timestep < 0, timestep + tf.shape(out)[1], timestep)
        return tf.gather(out, timestep, axis=1, batch_dims=1), timestep

    def _run(self, x, target, timestep):
        if self.method != "lrp":
            return self._run_gradient(x, target, timestep)
        out, _, caches = self._walk.forward(x)
        scores, timestep = self._scores(out, timestep)
        target = tf.where(target < 0, tf.argmax(scores, axis=-1, output_type=tf.int32), target)
        r_scores = tf.one_hot(target, self.n_outputs, dtype=scores.dtype) * scores
        if self.has_time_axis:
            r_out = r_scores[:, None, :] * tf.one_hot(timestep, tf.shape(out)[1], dtype=scores.dtype)[:, :, None]
        else:
            r_out = r_scores
        relevance, rest = self._walk.relevance(caches, r_out)
        return relevance, scores, target, rest, timestep

    def _run_gradient(self, x, target, timestep):
        start = self._walk.embed(x)
        with tf.GradientTape() as tape:
            tape.watch(start)
            out, _, _ = self._walk.forward(x, start=start)
            scores, timestep = self._scores(out, timestep)
            target = tf.where(target < 0, tf.argmax(scores, axis=-1, output_type=tf.int32), target)
            explained = tf.reduce_sum(tf.one_hot(target, self.n_outputs, dtype=scores.dtype) * scores)
        grad = tape.gradient(explained, start)
        relevance = grad * start if self.method == "gi" else grad * grad
        return relevance, scores, target, tf.zeros_like(scores[:, 0]), timestep

    def attribute(self, inputs, target: Target = None, timestep=None, batch_size: int = 256) -> Explanation:
        """Explain ``inputs`` for ``target`` (None = predicted class, an int, or one int per
        sample), at output ``timestep`` (an int or one per sample; only for models whose output
        has a time axis), ``batch_size`` samples per compiled call."""
        x = self._check_inputs(inputs)
        n = x.shape[0]
        t = self._check_target(target, n)
        steps = self._check_timestep(timestep, n, x)
        if isinstance(batch_size, (bool, np.bool_)) or not isinstance(batch_size, (int, np.integer)) \
                or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
        batch_size = int(batch_size)   # exact: a numpy unsigned value never wraps
        parts = [self._call_padded(x[i:i + batch_size], t[i:i + batch_size], steps[i:i + batch_size])
                 for i in range(0, n, batch_size)]
        relevance, scores, target_out, rest, step_out = (np.concatenate([p[k] for p in parts]) for k in range(5))
        bad = ~np.isfinite(relevance.reshape(n, -1)).all(axis=1)
        if bad.any():
            warnings.warn(f"{int(bad.sum())} of {n} explanations contain inf/NaN: the relevance overflowed "
                          f"{self.dtype} (rule={self.gate_rule!r}, eps={self.rule.eps}); the 'prop' rule divides "
                          "by gate + signal and can amplify relevance step after step. Use dtype='float64', "
                          "a larger eps, or rule='all'.", RuntimeWarning, stacklevel=2)
        return Explanation(relevance=relevance, scores=scores, target=target_out.astype(np.int64), rest=rest,
                           timestep=step_out.astype(np.int64) if self.has_time_axis else None)

    def _call_padded(self, x, t, steps):
        """Compiled calls on a batch padded to a multiple of ``rows`` rows (copies of its last
        sample), sliced back. Matrix-product kernels pick different code paths (and so round
        differently) for small or odd row counts; with every call's row count fixed by the
        sequence length alone (``_rows_per_call``), each sample's result does not depend on the
        batch it was explained in."""
        rows = self._rows_per_call(x.shape[1] if x.ndim > 1 else 1)
        if rows == _ROWS:
            return self._call_rows(x, t, steps, _ROWS)
        parts = [self._call_rows(x[i:i + rows], t[i:i + rows], steps[i:i + rows], rows)
                 for i in range(0, x.shape[0], rows)]
        return [np.concatenate([p[k] for p in parts]) for k in range(len(parts[0]))]

    @staticmethod
    def _rows_per_call(steps: int) -> int:
        """Rows of each compiled call for sequences of ``steps`` time steps: a multiple of
        ``_ROWS`` while ``_ROWS * steps <= _STEPS_PER_CALL``, else exactly one, so that a single
        long sample is never copied ``_ROWS`` times. (Not 2..31 rows: kernels round a row
        differently depending on its position in such small batches; a lone row is always at
        position 0.)"""
        return _ROWS if _ROWS * max(int(steps), 1) <= _STEPS_PER_CALL else 1

    def _call_rows(self, x, t, steps, rows: int):
        """One compiled call on ``x`` padded to a multiple of ``rows`` rows, sliced back."""
        n = x.shape[0]
        pad = -n % rows
        if pad:
            x, t, steps = (np.concatenate([a, np.repeat(a[-1:], pad, axis=0)]) for a in (x, t, steps))
        return [a.numpy()[:n] for a in self._fn(tf.constant(x), tf.constant(t), tf.constant(steps))]

    # ----------------------------------------------------------------------------- validation

    def _check_inputs(self, inputs) -> np.ndarray:
        try:
            x = np.asarray(inputs)
        except Exception as err:  # ragged lists etc.
            raise TypeError(f"inputs must be an array of shape {self._shape_text()}: {err}") from None
        if x.dtype == object or not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)
                                     or x.dtype == bool):
            raise TypeError(f"inputs must be numeric, got dtype {x.dtype}; pad sequences to one length.")
        expected = self.input_shape
        if x.ndim != len(expected):
            hint = " add a batch axis with x[None] for one sequence." if x.ndim == len(expected) - 1 else ""
            raise ValueError(f"inputs must have shape {self._shape_text()}, got shape {x.shape};{hint}")
        for axis, (got, want) in enumerate(zip(x.shape[1:], expected[1:]), start=1):
            if want is not None and got != want:
                name = "features" if axis == len(expected) - 1 and not self.tokens else f"axis {axis}"
                raise ValueError(f"inputs have {got} {name} but the model expects {want} "
                                 f"(input shape {self._shape_text()}).")
        if x.shape[0] == 0:
            raise ValueError("inputs is an empty batch: nothing to explain.")
        if x.ndim > 1 and x.shape[1] == 0:
            raise ValueError("inputs has zero-length sequences: give at least one timestep.")
        if x.ndim > 1 and x.shape[1] > self.max_length:
            raise ValueError(f"inputs have {x.shape[1]:,} time steps, more than max_length={self.max_length:,}; "
                             "memory grows with time x units. Shorten the sequences, or pass a larger "
                             "max_length= to Explainer / explain if this machine has the memory.")
        if self.tokens:
            if not np.issubdtype(x.dtype, np.integer):
                if not np.all(np.isfinite(x)) or np.any(x != np.round(x)):
                    raise TypeError("this model starts with an Embedding: inputs must be integer token ids.")
            vocab = self._walk.embedding.input_dim
            if x.min() < 0 or x.max() >= vocab:
                raise ValueError(f"token ids must be in 0..{vocab - 1} (the Embedding's input_dim), "
                                 f"got values from {x.min()} to {x.max()}.")
            return x.astype(np.int32)
        # checked after the cast: 1e300 is finite in float64 but inf in float32
        with np.errstate(over="ignore", invalid="ignore"):
            x = x.astype(self.dtype, copy=False)
        if not np.all(np.isfinite(x)):
            raise ValueError(f"inputs contain NaN or inf values (or values beyond the {self.dtype} range, "
                             f"|x| > {np.finfo(self.dtype).max:.3g}); rescale the inputs or use dtype='float64'.")
        return x

    def _shape_text(self) -> str:
        dims = ["batch"] + ["time" if d is None else str(d) for d in self.input_shape[1:]]
        if not self.tokens and len(dims) == 3 and self.input_shape[-1] is not None:
            dims[-1] = f"features={self.input_shape[-1]}"
        return "(" + ", ".join(dims) + ")"

    def _check_target(self, target: Target, batch: int) -> np.ndarray:
        if target is None:
            return np.full(batch, -1, np.int32)
        t = _per_sample_ints(target, "target", batch)   # int64, exact
        bad = (t < 0) | (t >= self.n_outputs)
        if bad.any():
            raise ValueError(f"target {t[bad][0]} is out of range: the model has {self.n_outputs} outputs "
                             f"(valid targets 0..{self.n_outputs - 1}).")
        return t.astype(np.int32)

    def _check_timestep(self, timestep, batch: int, x: np.ndarray) -> np.ndarray:
        if not self.has_time_axis:
            if timestep is not None:
                raise ValueError("timestep is only for models whose output has a time axis "
                                 f"(batch, time, outputs); this model's output is (batch, {self.n_outputs}).")
            return np.zeros(batch, np.int32)
        if timestep is None:
            raise ValueError("this model's output has a time axis (batch, time, outputs): pass "
                             "timestep= (an int, or one per sample) to say which output step to explain.")
        t = _per_sample_ints(timestep, "timestep", batch)   # int64, exact
        steps = self._output_steps(x.shape)
        if np.any(t >= steps) or np.any(t < -steps):
            raise ValueError(f"timestep out of range: for inputs of {x.shape[1]} steps the model outputs "
                             f"{steps} steps (valid 0..{steps - 1}, or negative from the end).")
        return t.astype(np.int32)

    def _output_steps(self, input_shape) -> int:
        """Length of the output's time axis for inputs of ``input_shape`` (pooling may shorten it)."""
        try:
            steps = self.model.compute_output_shape((1,) + tuple(input_shape[1:]))[1]
        except Exception:  # a layer without static shape inference: assume time is kept
            steps = None
        return int(steps) if steps is not None else int(input_shape[1])


def _per_sample_ints(value, name: str, batch: int) -> np.ndarray:
    """An int or one int per sample -> int64 array (batch,), or a TypeError/ValueError naming ``name``.

    Values are checked as exact Python integers before any cast, so nothing wraps around
    (``2**32 + 1`` is not 1, ``np.uint64(2**63)`` is not negative); values outside int64 raise a
    ValueError, and the caller range-checks the int64 result before narrowing it."""
    def not_ints() -> TypeError:
        return TypeError(f"{name} must be an int or a sequence of ints (None for the default), got "
                         f"{_short_repr(value)}.")

    try:
        t = np.asarray(value)
    except (ValueError, TypeError, OverflowError):   # ragged nesting
        raise not_ints() from None
    if t.dtype == object:   # Python ints beyond 64 bits (or anything else)
        items = t.ravel().tolist()
        if not items or not all(isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))
                                for v in items):
            raise not_ints()
        values = [int(v) for v in items]
    elif np.issubdtype(t.dtype, np.integer):
        values = [int(t.min()), int(t.max())] if t.size else []
    else:
        raise not_ints()
    outside = [v for v in values if v < _INT64.min or v > _INT64.max]
    if outside:
        raise ValueError(f"{name} {outside[0]} is out of range (not a 64-bit integer).")
    if t.dtype == object:
        t = np.array(values, dtype=np.int64).reshape(t.shape)
    t = t.astype(np.int64)
    if t.ndim == 0:
        t = np.full(batch, int(t), np.int64)
    if t.shape != (batch,):
        raise ValueError(f"{name} has shape {t.shape}, expected one int per sample ({batch},) or a single int.")
    return t


def _short_repr(value, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


class LRP(Explainer):
    """The LRP explainer: :class:`Explainer` with ``method="lrp"``."""

    def __init__(self, model: keras.Model, eps: float = 1e-3, bias_factor: float = 0.0,
                 dtype: str = "float32", rule: str = "all", max_length: int = MAX_LENGTH):
        super().__init__(model, eps=eps, bias_factor=bias_factor, dtype=dtype, rule=rule, method="lrp",
                         max_length=max_length)


# The most recently used explainers, so that repeated explain() calls reuse the compiled function.
# Bounded, because each explainer holds its model alive.
_CACHE: "OrderedDict[tuple, Explainer]" = OrderedDict()
_CACHE_SIZE = 8


def explain(model: keras.Model, inputs, target: Target = None, *, timestep=None, eps: float = 1e-3,
            bias_factor: float = 0.0, rule: str = "all", dtype: str = "float32",
            batch_size: int = 256, method: str = "lrp", max_length: int = MAX_LENGTH) -> Explanation:
    """Explain a model's outputs with LRP (Arras et al. 2017).

    Args:
        model: a built single-input single-output Keras model (LSTM / GRU / Bidirectional, Dense,
            Conv1D, pooling, Embedding, ...; see :mod:`keras_lrp.propagators`).
        inputs: (batch, time, features) floats, or (batch, time) token ids for models that start
            with an Embedding.
        target: None (the predicted class), an int, or one int per sample.
        timestep: for models whose output has a time axis: the output step(s) to explain.
        eps, bias_factor: the epsilon-rule's parameters (see :mod:`keras_lrp.rules`).
        rule: gate rule, "all" (default), "half" or "prop".
        dtype: "float32" or "float64".
        batch_size: samples per compiled call; memory stays flat in the number of inputs.
        method: "lrp" (default), "gi" (gradient x input) or "sa" (squared gradient) baselines.
        max_length: the longest input sequence (time steps) explained (default 100_000); longer
            inputs raise a ValueError before anything is allocated.

    Returns:
        :class:`Explanation` with ``relevance``, ``word_relevance`` (batch, time), ``scores``,
        ``target``, ``rest``.
    """
    key = (id(model), Epsilon(eps=eps, bias_factor=bias_factor), dtype, rule, method, max_length)
    explainer = _CACHE.get(key)
    if explainer is None or explainer.model is not model:
        explainer = Explainer(model, eps=eps, bias_factor=bias_factor, dtype=dtype, rule=rule, method=method,
                              max_length=max_length)
    _CACHE[key] = explainer
    _CACHE.move_to_end(key)
    while len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return explainer.attribute(inputs, target=target, timestep=timestep, batch_size=batch_size)
