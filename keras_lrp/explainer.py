"""The entry point: ``explain(model, inputs, target=...)`` and the reusable ``LRP`` explainer."""
from __future__ import annotations

import sys
import warnings
from collections import OrderedDict
from typing import Optional, Sequence, Union

import keras
import numpy as np
from keras import ops, tree

from . import backend
from .baselines import BASELINE_METHODS, OPTIONS, active_steps, make_baseline, options_key
from .composites import Composite, as_composite
from .explanation import Explanation
from .graph import model_graph
from .quiet import SummableWarning
from .propagators import Context
from .rules import Epsilon, as_gate_rule
from .selfcheck import self_check
from .walk import Walk

__all__ = ["Explanation", "Explainer", "LRP", "explain", "METHODS", "cached_explainer", "length_bucket"]

#: "lrp": layer-wise relevance propagation; "gi": gradient x input; "sa": sensitivity analysis
#: (squared gradient, so word_relevance is the squared gradient norm, Arras et al. 2017); "ig",
#: "occlusion", "shapley": Integrated Gradients, occlusion, Shapley sampling (:mod:`keras_lrp.baselines`).
METHODS = ("lrp", "gi", "sa") + BASELINE_METHODS

Target = Union[None, int, Sequence[int], np.ndarray]
_DTYPES = ("float32", "float64")
# Compiled calls see batches of a multiple of backend.BATCH_ROWS rows (backend.XLA_BATCH_ROWS with
# jit_compile; see Explainer._call_padded). Sequences longer than this many time steps are explained
# one row per call, so that one long sample is not copied to that many rows (Explainer._rows_per_call).
_LONG_STEPS = 2048
# Rows x time steps of one compiled call at most (adaptive chunking, Explainer._chunk_rows): keeps
# the (time, rows, 4 units) tensors of long sequences cache- and allocator-friendly, and the peak
# memory below gradient x input's from 50 steps on (bench/bench_memory.py); but at least
# _MIN_CHUNK rows, since every call walks all time steps one after the other.
_ROW_STEPS_PER_CALL = 128 * 50
_MIN_CHUNK = 64
#: Default longest input sequence (time steps) explained; raise it with ``max_length=``.
MAX_LENGTH = 100_000
_INT64 = np.iinfo(np.int64)


def _overflow_cause(explainer: "Explainer") -> str:
    """Why relevance came out inf/NaN: non-finite weights, or an eps / bias_factor beyond the dtype's
    range (both certain causes), else an overflow with what makes one likely (a bias_factor outside
    0..1, the 'prop' gate rule)."""
    from .io.weights import describe_non_finite, non_finite_weights

    found = non_finite_weights(explainer.model)
    if found:
        return f"the model's weights are not all finite ({describe_non_finite(found)}); repair or re-train the model."
    dtype, largest = explainer.dtype, float(np.finfo(explainer.dtype).max)
    rules = [explainer.rule, *explainer.composite.by_name.values(), *explainer.composite.by_type.values()]
    values = {name: [getattr(r, name) for r in rules if isinstance(getattr(r, name, None), float)]
              for name in ("bias_factor", "eps")}
    for name, found_values in values.items():
        beyond = [v for v in found_values if abs(v) > largest]
        if beyond:
            return (f"{name}={beyond[0]!r} is beyond {dtype}'s largest value ({largest:.3g}), so it became inf; "
                    f"use a smaller {name} or dtype='float64'.")
    hints, fixes = [], ["dtype='float64'", "a larger eps"]
    factor = max(values["bias_factor"], key=abs)
    if abs(factor) > 1:
        hints.append(f"bias_factor={factor!r} (meaningful values are 0..1) scales every bias share")
        fixes.append("a bias_factor in [0, 1]")
    if explainer.gate_rule == "prop":
        hints.append("the 'prop' rule divides by gate + signal and can amplify relevance step after step")
        fixes.append("rule='all'")
    return (f"the relevance overflowed {dtype} (rule={explainer.gate_rule!r}, eps={explainer.rule.eps}, "
            f"bias_factor={explainer.rule.bias_factor})" + "".join(f"; {h}" for h in hints)
            + f". Use {', '.join(fixes[:-1])} or {fixes[-1]}.")


class NonFiniteRelevanceWarning(SummableWarning, RuntimeWarning):
    """``bad`` of ``total`` explanations of one call contain inf/NaN, and why (``cause``); those of
    several calls add up (``calls``: a long run reports the total once)."""

    def __init__(self, bad: int, total: int, cause: str, calls: int = 1):
        self.bad, self.total, self.reason, self.calls = bad, total, cause, calls
        where = f"of {total} explanations" if calls == 1 else f"explanations (in {calls} calls)"
        super().__init__(f"{bad} {where} contain inf/NaN: {cause}")

    def cause(self):
        return self.reason

    @classmethod
    def merge(cls, items):
        return cls(sum(w.bad for w in items), sum(w.total for w in items), items[0].reason,
                   sum(w.calls for w in items))


class Explainer:
    """A compiled explainer for one model (Captum-style: build once, ``attribute`` many times).

    Args:
        model: a built single-output Keras model (one or several inputs) of supported layers
            (see :mod:`keras_lrp.propagators`); the output layer's pre-activation is explained.
            Stateful RNNs are explained from the zero state, whatever state they hold.
        eps: epsilon-rule stabiliser, ``>= 0``.
        bias_factor: share of bias and stabiliser redistributed to the inputs (0 = paper, 1 = conserving).
        dtype: "float32" or "float64"; the computation runs in this dtype from the model's weights
            (read live, so an explainer stays valid after further training).
        rule: gate rule for every gate x signal product: "all" (signal-take-all, Arras et al.
            2017, the default), "half" or "prop", or the objects SignalTakeAll(), Half(), Proportional()
            (:mod:`keras_lrp.rules`); a composite may choose it per recurrent layer.
        method: "lrp" (default), or the gradient baselines "gi" (gradient x input) and "sa"
            (sensitivity analysis: squared gradient) of the same pre-activation score, or the
            baselines "ig" (Integrated Gradients), "occlusion" and "shapley" (Shapley sampling over
            time steps) of the same score (:mod:`keras_lrp.baselines`).
        method_options: options of "ig" (``steps``=32, ``baseline``), "occlusion" (``window``=1,
            ``baseline``) and "shapley" (``samples``=32 or "all", ``seed``=0, ``baseline``), e.g.
            ``{"steps": 64}``; ``baseline`` is None (zero), a number or an array broadcastable to one
            sample's embedding vectors / input (a list of those for several inputs).
        layer_rules: per-layer rules, ``{layer name or layer class: rule}`` or a
            :class:`~keras_lrp.composites.Composite` (e.g. ``{"head": ZPlus()}``); the others keep
            the epsilon-rule above. ``{"my_lambda": "linear"}`` declares that ``Lambda`` layer linear:
            it is propagated with the epsilon-rule on its Jacobian (Lambda layers are refused otherwise).
        max_length: the longest input sequence (time steps) explained, 100_000 by default;
            longer inputs raise a ValueError before anything is allocated (memory grows with
            time x units). Raise it for long time series.
        self_check: the first :meth:`attribute` call compares the model output of the explainer's
            forward pass with ``model(x)`` on that batch and raises
            :class:`~keras_lrp.selfcheck.SelfCheckError`, naming the first layer that computes
            differently from Keras, when they disagree (:mod:`keras_lrp.selfcheck`). True by default.
        output: the output to explain, by name (``model.output_names``) or index, for models with
            several outputs; None for single-output models.
        jit_compile: compile the explain function with XLA (TensorFlow), which compiles it again for
            every new input shape (batch rows, time steps; a few seconds each): for inputs of few
            shapes (fixed-length windows, one batch size, text in length buckets), where it runs
            faster than TensorFlow's graph executor (README, Speed). JAX always compiles with XLA;
            torch has no XLA compiler here (True is refused there). Results agree with the
            default to rounding.
    """

    def __init__(self, model: keras.Model, eps: float = 1e-3, bias_factor: float = 0.0,
                 dtype: str = "float32", rule: str = "all", method: str = "lrp",
                 layer_rules: Union[None, dict, Composite] = None, max_length: int = MAX_LENGTH,
                 self_check: bool = True, output: Union[None, int, str] = None,
                 method_options: Optional[dict] = None, jit_compile: bool = False):
        for name, flag in (("self_check", self_check), ("jit_compile", jit_compile)):
            if not isinstance(flag, (bool, np.bool_)):
                raise TypeError(f"{name} must be True or False, got {flag!r}.")
        if jit_compile and not backend.JIT_COMPILES:
            raise ValueError(f"jit_compile=True compiles with XLA, which keras-lrp uses on TensorFlow and JAX; "
                             f"Keras runs on {backend.NAME} here: use jit_compile=False.")
        #: whether the explain function is compiled by XLA (always on JAX)
        self.jit_compile = bool(jit_compile) or backend.COMPILES_PER_SHAPE
        self._rows = backend.XLA_BATCH_ROWS if self.jit_compile else backend.BATCH_ROWS
        #: whether the first attribute() call still has to compare the forward pass with the model's
        self._checked = not self_check
        if isinstance(max_length, (bool, np.bool_)) or not isinstance(max_length, (int, np.integer)) \
                or max_length < 1:
            raise ValueError(f"max_length must be a positive integer (time steps), got {max_length!r}.")
        self.max_length = int(max_length)
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}.")
        self.method = method
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {_DTYPES}, got {dtype!r}.")
        backend.check_float_dtype(dtype)
        if method_options and method not in BASELINE_METHODS:
            raise ValueError(f"method_options are for the methods {', '.join(OPTIONS)}; method={method!r} takes none.")
        rule = as_gate_rule(rule).name
        self.rule = Epsilon(eps=eps, bias_factor=bias_factor)
        largest = float(np.finfo(dtype).max)
        for name in ("eps", "bias_factor"):
            if abs(getattr(self.rule, name)) > largest:
                raise ValueError(f"{name}={getattr(self.rule, name)!r} is beyond the {dtype} range (|x| <= "
                                 f"{largest:.3g}): the relevance would be inf or NaN. Use a smaller {name} or "
                                 "dtype='float64'.")
        self.gate_rule, self.dtype, self.model = rule, dtype, model
        self.composite = as_composite(layer_rules)
        graph = model_graph(model, output, keep=self.composite.linear_names())
        self.composite.check_names(_layer_names(model, graph))
        # the baselines only run (or differentiate) the forward pass: no relevance caches
        self._walk = Walk(graph, Context(dtype, self.rule, rule, self.composite, caches=method == "lrp"))
        self.composite.check(self._walk.propagators)
        self.input_names = list(graph.input_names)
        self.input_shapes = list(graph.input_shapes)
        # per input: read by an Embedding (token ids), integer ids no Embedding reads, or floats
        self._tokens = [e is not None for e in self._walk.embeddings]
        self._ids = [t or not str(d).startswith("float") for t, d in zip(self._tokens, graph.input_dtypes)]
        self.multi_input = len(graph.inputs) > 1
        #: the configured baseline method ("ig", "occlusion", "shapley"), else None
        self._baseline = make_baseline(method, method_options, len(graph.inputs), dtype) \
            if method in BASELINE_METHODS else None
        if self._baseline is not None:
            self._baseline.check_inputs(self._start_shapes(self.input_shapes))
        self.tokens = self._tokens[0]
        self.input_shape = graph.input_shape
        out_shape = graph.output_shape
        #: the explained output: its index among the model's outputs, and its name
        self.output_index = graph.outputs.index(graph.output)
        self.output_name = graph.output_names[self.output_index] if graph.output_names else None
        if len(out_shape) not in (2, 3) or out_shape[-1] is None:
            what = f"output {self.output_name!r}" if len(graph.outputs) > 1 else "output"
            raise ValueError(f"model {model.name!r} has {what} shape {out_shape}; explain needs "
                             "(batch, outputs) or, for sequence outputs, (batch, time, outputs).")
        self.n_outputs = int(out_shape[-1])
        self.has_time_axis = len(out_shape) == 3
        #: whether id-0 steps appended to a token sequence leave its explanation unchanged, bit for bit
        #: (:meth:`keras_lrp.walk.Walk.post_padding_safe`): lengths may then be bucketed
        self.post_padding_safe = self._walk.post_padding_safe()
        #: whether steps appended to a float sequence leave its explanation unchanged, bit for bit, when
        #: ``attribute`` is given the sequences' ``lengths`` (:meth:`keras_lrp.walk.Walk.vector_padding_safe`;
        #: LRP only): lengths may then be bucketed
        self.vector_padding_safe = method == "lrp" and self._walk.vector_padding_safe()
        specs = [backend.TensorSpec((None,) + tuple(shape[1:]), "int32" if ids else dtype)
                 for shape, ids in zip(self.input_shapes, self._ids)]
        per_sample = backend.TensorSpec((None,), "int32")
        plan = [backend.TensorSpec((None, None), "int32")] if method == "shapley" else []   # Baseline.plan
        #: the explain function compiled for this backend: numpy (inputs, target, timestep, lengths) -> numpy
        #: outputs; the weights are read live (see keras_lrp.backend.compile_function)
        self._fn = backend.compile_function(self._run, [specs, per_sample, per_sample, per_sample] + plan,
                                            _variables(model, graph), jit_compile=self.jit_compile)

    @property
    def compiles_per_shape(self) -> bool:
        """Whether the explain function is compiled again for every new input shape (XLA: :attr:`jit_compile`):
        callers then keep the number of shapes small (``explain_text`` buckets lengths)."""
        return self.jit_compile

    @property
    def _probability_activation(self) -> Optional[str]:
        """"softmax" / "sigmoid" when the model outputs probabilities of the explained scores."""
        name = self._walk.output_activation
        return name if name in ("softmax", "sigmoid") else None

    def _scores(self, out, timestep):
        """The explained scores (batch, outputs), and the timestep (negative ones counted from the end)."""
        if not self.has_time_axis:
            return out, timestep
        timestep = ops.where(timestep < 0, timestep + ops.shape(out)[1], timestep)
        return ops.take_along_axis(out, timestep[:, None, None], axis=1)[:, 0], timestep

    @staticmethod
    def _targets(scores, target):
        """target, the predicted class where it is negative."""
        return ops.where(target < 0, ops.cast(ops.argmax(scores, axis=-1), "int32"), target)

    def _step_masks(self, xs, lengths) -> Optional[list]:
        """The Keras mask (batch, time) of the float input, True on each sequence's first ``lengths``
        steps, where the explainer masks padding by length (:attr:`vector_padding_safe`), else None."""
        if not self.vector_padding_safe:
            return None
        steps = ops.arange(ops.shape(xs[0])[1], dtype="int32")
        return [ops.less(steps[None, :], lengths[:, None])]

    def _run(self, xs, target, timestep, lengths, *plan):
        if self._baseline is not None:
            starts = self._walk.embed(xs)
            relevance, *rest = self._baseline.run(xs, starts, active_steps(self._walk, xs, starts), self._forward_score,
                                                  self._gradients, target, timestep, *plan)
            return (self._fill(relevance, rest[0]), *rest)
        if self.method != "lrp":
            return self._run_gradient(xs, target, timestep)
        out, starts, caches = self._walk.forward(xs, input_masks=self._step_masks(xs, lengths))
        scores, timestep = self._scores(out, timestep)
        target = self._targets(scores, target)
        r_scores = ops.one_hot(target, self.n_outputs, dtype=scores.dtype) * scores
        if self.has_time_axis:
            r_out = r_scores[:, None, :] * ops.one_hot(timestep, ops.shape(out)[1], dtype=scores.dtype)[:, :, None]
        else:
            r_out = r_scores
        relevance, rest = self._walk.relevance(caches, r_out)
        return self._fill(relevance, scores), scores, target, rest, timestep, self._walk.model_output(out)

    @staticmethod
    def _fill(relevance, scores):
        """None (an input without relevance) -> an empty (batch, 0) array, so the compiled function
        returns tensors only."""
        return [r if r is not None else ops.zeros((ops.shape(scores)[0], 0), scores.dtype) for r in relevance]

    def _forward_score(self, xs, starts, target, timestep):
        """The explained score from the start tensors ``starts``: ``(explained (batch,), (scores,
        target, timestep, model_out))``, targets < 0 resolved to the predicted class."""
        out, _, _ = self._walk.forward(xs, starts=starts)
        model_out = self._walk.model_output(out)
        scores, timestep = self._scores(out, timestep)
        target = self._targets(scores, target)
        explained = ops.sum(ops.one_hot(target, self.n_outputs, dtype=scores.dtype) * scores, axis=-1)
        return explained, (scores, target, timestep, model_out)

    def _gradients(self, xs, starts, target, timestep):
        """The gradient of the explained score with respect to each start tensor (None for inputs
        without one), and :meth:`_forward_score`'s ``(scores, target, timestep, model_out)``: the one
        place the explainer differentiates (:func:`keras_lrp.backend.value_and_gradient`)."""
        watched = [i for i, s in enumerate(starts) if s is not None]

        def explained(*values):
            given = list(starts)
            for i, v in zip(watched, values):
                given[i] = v
            rows, aux = self._forward_score(xs, given, target, timestep)
            return ops.sum(rows), aux

        aux, grads = backend.value_and_gradient(explained, [starts[i] for i in watched])
        by_input = dict(zip(watched, grads))
        return [by_input.get(i) for i in range(len(starts))], aux

    def _run_gradient(self, xs, target, timestep):
        starts = self._walk.embed(xs)
        grads, (scores, target, timestep, model_out) = self._gradients(xs, starts, target, timestep)
        relevance = [None if s is None else (g * s if self.method == "gi" else g ** 2) for s, g in zip(starts, grads)]
        return self._fill(relevance, scores), scores, target, ops.zeros_like(scores[:, 0]), timestep, model_out

    def attribute(self, inputs, target: Target = None, timestep=None, batch_size: int = 256,
                  verbose: Optional[bool] = None, lengths=None) -> Explanation:
        """Explain ``inputs`` for ``target`` (None = predicted class, an int, or one int per
        sample), at output ``timestep`` (an int or one per sample; only for models whose output
        has a time axis), ``batch_size`` samples per compiled call.

        ``verbose``: True shows one ``keras.utils.Progbar`` over the samples, False never; None
        (default) shows it only when the inputs take more than one batch and stdout is a
        terminal or a Jupyter kernel (see :func:`progress_wanted`).

        ``lengths``: one int per sample, its number of time steps where the rest of the (batch, time,
        features) input is padding appended to it (any values, zero vectors included): the padding is
        masked by length, so each sample's explanation is the one of its unpadded sequence, bit for
        bit, and the padded steps get exactly 0. Only where the model skips such masked steps
        (:attr:`vector_padding_safe`). None: every step is the sequence's."""
        xs = [self._check_inputs(x, i) for i, x in enumerate(self._split_inputs(inputs))]
        n = xs[0].shape[0]
        if any(x.shape[0] != n for x in xs):
            raise ValueError("the inputs have different batch sizes: "
                             + ", ".join(f"{name!r}: {x.shape[0]}" for name, x in zip(self.input_names, xs)) + ".")
        t = self._check_target(target, n)
        steps = self._check_timestep(timestep, n, xs)
        lengths = self._check_lengths(lengths, n, xs)
        if self._baseline is not None:
            self._baseline.check_inputs(self._start_shapes([x.shape for x in xs]))
            self._baseline.check_size(self._players(xs), max(x.shape[1] if x.ndim > 1 else 1 for x in xs))
        if isinstance(batch_size, (bool, np.bool_)) or not isinstance(batch_size, (int, np.integer)) \
                or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
        batch_size = int(batch_size)   # exact: a numpy unsigned value never wraps
        bar = keras.utils.Progbar(n, unit_name="sample") if progress_wanted(verbose, n, batch_size) else None
        parts = []
        for i in range(0, n, batch_size):
            batch = [x[i:i + batch_size] for x in xs]
            parts.append(self._call_padded(batch, t[i:i + batch_size], steps[i:i + batch_size],
                                           lengths[i:i + batch_size], batch_size))
            if not self._checked:
                with backend.compute_scope():
                    padding = {"lengths": lengths[i:i + batch_size]} if self.vector_padding_safe else {}
                    self_check(self._walk, self.model, batch, parts[-1][5], self.multi_input, self.output_index,
                               **padding)
                self._checked = True
            if bar is not None:
                bar.update(min(i + batch_size, n), finalize=i + batch_size >= n)
        relevances = [np.concatenate([p[0][j] for p in parts]) for j in range(len(xs))]
        scores, target_out, rest, step_out = (np.concatenate([p[k] for p in parts]) for k in range(1, 5))
        relevances = [None if (r.ndim == 2 and r.shape[1] == 0 and start is None) else r
                      for r, start in zip(relevances, self._walk.starts)]
        relevance = relevances if self.multi_input else relevances[0]
        flat = np.concatenate([r.reshape(n, -1) for r in relevances if r is not None], axis=1)
        bad = ~np.isfinite(flat).all(axis=1)
        if bad.any():
            warnings.warn(NonFiniteRelevanceWarning(int(bad.sum()), n, _overflow_cause(self)), stacklevel=2)
        return Explanation(relevance=relevance, scores=scores, target=target_out.astype(np.int64), rest=rest,
                           timestep=step_out.astype(np.int64) if self.has_time_axis else None,
                           method=self.method, output_activation=self._probability_activation)

    def _call_padded(self, x, t, steps, lengths, batch_size: int):
        """Compiled calls on chunks of the batch, each padded to a multiple of ``rows`` rows
        (copies of its last sample), sliced back. Matrix-product kernels round a row differently
        when it falls in a partial block of rows (and element-wise kernels at a tensor's ragged
        end); with every call's row count a multiple of ``self._rows`` (or exactly one row for long
        sequences, see ``_rows_per_call``), each sample's result does not depend on the batch it
        was explained in, nor on its position there. ``x`` holds one array per model input; the
        batch is full when it has ``batch_size`` samples."""
        length = max(a.shape[1] if a.ndim > 1 else 1 for a in x)
        rows = self._rows_per_call(length)
        chunk = self._chunk_rows(length) if rows > 1 else 1
        fn = self._fn
        if self.method in ("gi", "sa") and rows > 1:
            # one call per batch, as a hand-written compiled gradient takes it: the chunking above
            # bounds LRP's relevance tensors; a gradient's memory is the model's own
            chunk = max(chunk, t.shape[0])
            if t.shape[0] == batch_size:
                # a full batch (of a corpus, say) runs on a trace for its batch size (on TensorFlow; a
                # gradient's shape arithmetic then folds away); the rest on the one for any batch size.
                # Not for LRP: no faster there (bench/bench_explain.py --tables 5)
                fn = backend.static_batch(fn, batch_size + (-batch_size % rows))
        if self._baseline is not None and rows > 1:   # each sample takes this many model evaluations
            chunk = max(self._rows, chunk // self._baseline.rows_per_sample(self._players(x)) // self._rows * self._rows)
        n = t.shape[0]
        if n <= chunk:
            return self._call_rows(x, t, steps, lengths, rows, fn)
        parts = [self._call_rows([a[i:i + chunk] for a in x], t[i:i + chunk], steps[i:i + chunk],
                                 lengths[i:i + chunk], rows, fn) for i in range(0, n, chunk)]
        return ([[np.concatenate([p[0][j] for p in parts]) for j in range(len(x))]]
                + [np.concatenate([p[k] for p in parts]) for k in range(1, len(parts[0]))])

    def _rows_per_call(self, steps: int) -> int:
        """Row granularity of each compiled call for sequences of ``steps`` time steps: a multiple
        of ``self._rows`` up to ``_LONG_STEPS`` steps, else exactly one, so that a single long sample
        is never copied that many times. (Not other row counts: a kernel rounds the rows of a partial
        block differently; a lone row is always the same partial block.)"""
        return self._rows if max(int(steps), 1) <= _LONG_STEPS else 1

    def _chunk_rows(self, steps: int) -> int:
        """Samples per compiled call for sequences of ``steps`` time steps: a multiple of ``self._rows``
        with ``rows x steps <= _ROW_STEPS_PER_CALL`` (128 rows at 50 steps, 80 at 80), at least
        ``_MIN_CHUNK``. Smaller calls for longer sequences keep each whole-sequence tensor small."""
        return max(_MIN_CHUNK, _ROW_STEPS_PER_CALL // max(int(steps), 1) // self._rows * self._rows)

    def _call_rows(self, x, t, steps, lengths, rows: int, fn):
        """One compiled call of ``fn`` (``self._fn``, or its trace for this batch size) on the inputs
        ``x`` (one array per model input) and the per-sample ``t``, ``steps`` and ``lengths``, padded
        to a multiple of ``rows`` rows (copies of the last sample), sliced back: ``[relevances],
        scores, ...``."""
        n = t.shape[0]
        pad = -n % rows

        def padded(a):
            return np.concatenate([a, np.repeat(a[-1:], pad, axis=0)]) if pad else a
        plan = self._baseline.plan(self._players(x)) if self._baseline is not None else []
        relevance, *rest = fn([padded(a) for a in x], padded(t), padded(steps), padded(lengths), *plan)
        return [[r[:n] for r in relevance]] + [a[:n] for a in rest]

    def _start_shapes(self, shapes: list) -> list:
        """Per model input of shape ``shapes[k]`` (batch first), one sample's start tensor shape
        (embedding vectors: (time, dim)), or None for an input without one."""
        return [None if start is None else tuple(shape[1:]) + ((emb.output_dim,) if emb is not None else ())
                for shape, start, emb in zip(shapes, self._walk.starts, self._walk.embeddings)]

    def _players(self, xs: list) -> int:
        """The steps (players) a perturbation baseline perturbs: axis 1 of every start tensor."""
        return sum(x.shape[1] for x, start in zip(xs, self._walk.starts) if start is not None and x.ndim > 1)

    def _split_inputs(self, inputs) -> list:
        """``inputs`` as one array per model input: an array (single-input models), a list / tuple
        in the order of ``model.inputs``, or a dict by input name (as ``model.predict`` takes them)."""
        k = len(self.input_names)
        if isinstance(inputs, dict):
            unknown = sorted(set(inputs) - set(self.input_names))
            missing = [name for name in self.input_names if name not in inputs]
            if unknown or missing:
                raise ValueError(f"inputs dict keys must be the model's input names {self.input_names}; "
                                 f"unknown: {unknown}, missing: {missing}.")
            return [inputs[name] for name in self.input_names]
        if k == 1:
            if (isinstance(inputs, (list, tuple)) and len(inputs) == 1 and hasattr(inputs[0], "shape")
                    and np.ndim(inputs[0]) == len(self.input_shapes[0])):
                return [inputs[0]]
            return [inputs]
        if not isinstance(inputs, (list, tuple)) or len(inputs) != k:
            raise ValueError(f"the model has {k} inputs {self.input_names}: give a list of {k} arrays in "
                             "that order, or a dict by input name.")
        return list(inputs)

    # ----------------------------------------------------------------------------- validation

    def _check_inputs(self, inputs, index: int = 0) -> np.ndarray:
        """One model input, validated: (batch, ...) as the model expects, in the dtype the walk reads."""
        what = f"input {self.input_names[index]!r}" if self.multi_input else "inputs"
        try:
            x = np.asarray(inputs)
        except Exception as err:  # ragged lists etc.
            raise TypeError(f"{what} must be an array of shape {self._shape_text(index)}: {err}") from None
        if x.dtype == object or not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)
                                     or x.dtype == bool):
            raise TypeError(f"{what} must be numeric, got dtype {x.dtype}; pad sequences to one length.")
        expected = self.input_shapes[index]
        if x.ndim != len(expected):
            hint = " add a batch axis with x[None] for one sequence." if x.ndim == len(expected) - 1 else ""
            raise ValueError(f"{what} must have shape {self._shape_text(index)}, got shape {x.shape};{hint}")
        for axis, (got, want) in enumerate(zip(x.shape[1:], expected[1:]), start=1):
            if want is not None and got != want:
                name = "features" if axis == len(expected) - 1 and not self._ids[index] else f"axis {axis}"
                raise ValueError(f"{what} has {got} {name} but the model expects {want} "
                                 f"(input shape {self._shape_text(index)}).")
        if x.shape[0] == 0:
            raise ValueError("inputs is an empty batch: nothing to explain.")
        if x.ndim > 1 and x.shape[1] == 0:
            raise ValueError("inputs has zero-length sequences: give at least one timestep.")
        if x.ndim > 1 and x.shape[1] > self.max_length:
            raise ValueError(f"{what} have {x.shape[1]:,} time steps, more than max_length={self.max_length:,}; "
                             "memory grows with time x units. Shorten the sequences, or pass a larger "
                             "max_length= to Explainer / explain if this machine has the memory.")
        if self._ids[index] and not self._tokens[index]:
            if not np.issubdtype(x.dtype, np.integer) and np.any(x != np.round(x)):
                raise TypeError(f"{what} must be integer ids (the model input is {self._walk.graph.input_dtypes[index]}).")
            return x.astype(np.int32)
        if self._tokens[index]:
            if not np.issubdtype(x.dtype, np.integer):
                if not np.all(np.isfinite(x)) or np.any(x != np.round(x)):
                    raise TypeError("this model starts with an Embedding: inputs must be integer token ids.")
            vocab = self._walk.embeddings[index].input_dim
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

    def _shape_text(self, index: int = 0) -> str:
        dims = ["batch"] + ["time" if d is None else str(d) for d in self.input_shapes[index][1:]]
        if not self._ids[index] and len(dims) == 3 and self.input_shapes[index][-1] is not None:
            dims[-1] = f"features={self.input_shapes[index][-1]}"
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

    def _check_timestep(self, timestep, batch: int, xs: list) -> np.ndarray:
        if not self.has_time_axis:
            if timestep is not None:
                raise ValueError("timestep is only for models whose output has a time axis "
                                 f"(batch, time, outputs); this model's output is (batch, {self.n_outputs}).")
            return np.zeros(batch, np.int32)
        if timestep is None:
            raise ValueError("this model's output has a time axis (batch, time, outputs): pass "
                             "timestep= (an int, or one per sample) to say which output step to explain.")
        t = _per_sample_ints(timestep, "timestep", batch)   # int64, exact
        steps = self._output_steps([x.shape for x in xs])
        if np.any(t >= steps) or np.any(t < -steps):
            lengths = ", ".join(str(x.shape[1]) for x in xs if x.ndim > 1)
            raise ValueError(f"timestep out of range: for inputs of {lengths} steps the model's output "
                             f"{'' if self.output_name is None else repr(self.output_name) + ' '}has {steps} steps "
                             f"(valid 0..{steps - 1}, or negative from the end).")
        return t.astype(np.int32)

    def _check_lengths(self, lengths, batch: int, xs: list) -> np.ndarray:
        """Per sample, its number of time steps (int32): ``lengths``, or the input's time axis for None."""
        steps = xs[0].shape[1] if xs[0].ndim > 1 else 1
        if lengths is None:
            return np.full(batch, steps, np.int32)
        if not self.vector_padding_safe:
            raise ValueError("lengths= is for models that skip the padded steps of a float sequence input "
                             "(one (batch, time, features) input, per-step layers and recurrent layers that "
                             "skip masked steps, no mask of its own, an output without time axis; LRP): "
                             f"model {self.model.name!r} is not one. Explain each sequence without padding.")
        n = _per_sample_ints(lengths, "lengths", batch)   # int64, exact
        if np.any(n < 1) or np.any(n > steps):
            raise ValueError(f"lengths must be in 1..{steps} (the inputs' time steps), got values from "
                             f"{n.min()} to {n.max()}.")
        return n.astype(np.int32)

    def _output_steps(self, input_shapes) -> int:
        """Length of the explained output's time axis for inputs of ``input_shapes`` (one per model
        input; pooling may shorten it, a second input may set it)."""
        try:
            specs = [keras.KerasTensor((1,) + tuple(shape[1:]), dtype=dtype)
                     for shape, dtype in zip(input_shapes, self._walk.graph.input_dtypes)]
            out = self.model.compute_output_spec(specs if self.multi_input else specs[0])
            steps = tree.flatten(out)[self.output_index].shape[1]
        except Exception:  # a layer without static shape inference: assume the first input's time axis
            steps = None
        return int(steps) if steps is not None else int(input_shapes[0][1])


def _variables(model: keras.Model, graph) -> list:
    """Every Keras variable the explain function may read: the model's, and those of every layer its
    graph calls (layers found inside traced layers included)."""
    found = {id(v): v for v in model.variables}
    for node in graph.nodes:
        for v in getattr(node.op, "variables", ()) if isinstance(node.op, keras.layers.Layer) else ():
            found.setdefault(id(v), v)
    return list(found.values())


def length_bucket(steps: int) -> int:
    """The length a sequence of ``steps`` time steps is padded to where lengths are bucketed (on
    backends that compile once per shape): the next power of two, at least 8."""
    return max(8, 1 << max(int(steps) - 1, 0).bit_length())


def _layer_names(model: keras.Model, graph) -> list:
    """Every layer name ``layer_rules`` may use: the graph's calls and every layer of the model, nested
    and traced ones included."""
    names = [n.op.name for n in graph.nodes if isinstance(n.op, keras.layers.Layer)]
    names += [layer.name for layer in model._flatten_layers(include_self=False)]
    return list(dict.fromkeys(names))


def progress_wanted(verbose: Optional[bool], n: int, batch_size: int) -> bool:
    """The progress-bar rule: ``verbose=True`` always, False never; None only for inputs of more
    than one batch when stdout is interactive (a terminal, or a Jupyter / IPython kernel)."""
    if verbose is not None:
        if not isinstance(verbose, (bool, int, np.integer)):
            raise TypeError(f"verbose must be True, False or None, got {verbose!r}.")
        return bool(verbose)
    if n <= batch_size:
        return False
    if "ipykernel" in sys.modules:
        return True
    isatty = getattr(sys.stdout, "isatty", None)
    try:
        return bool(isatty and isatty())
    except (ValueError, OSError):
        return False


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
                 dtype: str = "float32", rule: str = "all", layer_rules: Union[None, dict, Composite] = None,
                 max_length: int = MAX_LENGTH, self_check: bool = True, output: Union[None, int, str] = None,
                 jit_compile: bool = False):
        super().__init__(model, eps=eps, bias_factor=bias_factor, dtype=dtype, rule=rule, method="lrp",
                         layer_rules=layer_rules, max_length=max_length, self_check=self_check, output=output,
                         jit_compile=jit_compile)


# The most recently used explainers, so that repeated explain() calls reuse the compiled function.
# Bounded, because each explainer holds its model alive.
_CACHE: "OrderedDict[tuple, Explainer]" = OrderedDict()
_CACHE_SIZE = 8


def explain(model: keras.Model, inputs, target: Target = None, *, timestep=None, eps: float = 1e-3,
            bias_factor: float = 0.0, rule: str = "all", dtype: str = "float32",
            batch_size: int = 256, method: str = "lrp",
            layer_rules: Union[None, dict, Composite] = None, verbose: Optional[bool] = None,
            max_length: int = MAX_LENGTH, self_check: bool = True,
            output: Union[None, int, str] = None, method_options: Optional[dict] = None,
            jit_compile: bool = False) -> Explanation:
    """Explain a model's outputs with LRP (Arras et al. 2017).

    Args:
        model: a built single-output Keras model, one or several inputs (LSTM / GRU / Bidirectional, Dense,
            Conv1D, pooling, Embedding, ...; see :mod:`keras_lrp.propagators`).
        inputs: (batch, time, features) floats, or (batch, time) token ids for inputs an Embedding
            reads; for models with several inputs, a list in the order of ``model.inputs`` or a dict
            by input name (as ``model.predict`` takes them).
        target: None (the predicted class), an int, or one int per sample.
        timestep: for models whose output has a time axis: the output step(s) to explain.
        eps, bias_factor: the epsilon-rule's parameters (see :mod:`keras_lrp.rules`).
        rule: gate rule, "all" (default), "half" or "prop".
        dtype: "float32" or "float64".
        batch_size: samples per compiled call; memory stays flat in the number of inputs.
        method: "lrp" (default), "gi" (gradient x input) or "sa" (squared gradient) baselines, or
            "ig", "occlusion", "shapley" (see :class:`Explainer` and :mod:`keras_lrp.baselines`).
        method_options: the options of "ig" / "occlusion" / "shapley", e.g. ``{"steps": 64}``
            (see :class:`Explainer`).
        layer_rules: per-layer rule overrides and Lambda declarations (see :class:`Explainer` and
            :class:`~keras_lrp.composites.Composite`).
        verbose: progress bar: True always, False never, None (default) only for more than one
            batch on an interactive stdout (terminal or Jupyter).
        max_length: the longest input sequence (time steps) explained (default 100_000); longer
            inputs raise a ValueError before anything is allocated.
        self_check: compare the explainer's forward pass with the model's output on the first batch
            an explainer sees (see :class:`Explainer`).
        output: for models with several outputs, the one to explain (its name or index).
        jit_compile: compile with XLA, once per input shape (see :class:`Explainer`).

    Returns:
        :class:`~keras_lrp.explanation.Explanation` with ``relevance``, ``word_relevance``
        (batch, time), ``scores``, ``target``, ``rest`` (see :mod:`keras_lrp.explanation`).
    """
    explainer = cached_explainer(model, eps=eps, bias_factor=bias_factor, dtype=dtype, rule=rule, method=method,
                                 layer_rules=layer_rules, max_length=max_length, self_check=self_check, output=output,
                                 method_options=method_options, jit_compile=jit_compile)
    return explainer.attribute(inputs, target=target, timestep=timestep, batch_size=batch_size, verbose=verbose)


def cached_explainer(model: keras.Model, *, eps: float = 1e-3, bias_factor: float = 0.0, rule: str = "all",
                     dtype: str = "float32", method: str = "lrp", layer_rules: Union[None, dict, Composite] = None,
                     max_length: int = MAX_LENGTH, self_check: bool = True,
                     output: Union[None, int, str] = None, method_options: Optional[dict] = None,
                     jit_compile: bool = False) -> Explainer:
    """The :class:`Explainer` :func:`explain` uses for these arguments: one of the most recently used
    (its compiled function reused), or a new one."""
    composite = as_composite(layer_rules)
    options = None
    if method in BASELINE_METHODS:   # the options by content (the Explainer validates them)
        options = options_key(method_options)
    elif method_options:
        raise ValueError(f"method_options are for the methods {', '.join(OPTIONS)}; method={method!r} takes none.")
    key = (id(model), Epsilon(eps=eps, bias_factor=bias_factor), dtype, rule, method, composite.key(), max_length,
           bool(self_check), output, options, bool(jit_compile))
    explainer = _CACHE.get(key)
    if explainer is None or explainer.model is not model:
        explainer = Explainer(model, eps=eps, bias_factor=bias_factor, dtype=dtype, rule=rule, method=method,
                              layer_rules=composite, max_length=max_length, self_check=self_check,
                              output=output, method_options=method_options, jit_compile=jit_compile)
    _CACHE[key] = explainer
    _CACHE.move_to_end(key)
    while len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return explainer
