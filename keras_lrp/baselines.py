"""Perturbation and path baselines: Integrated Gradients, occlusion and Shapley sampling.

Each explains the same score as LRP (the pre-activation of the output layer at the explained target
and output step, as ``method="gi"``), as a function of the same *start* tensors: the embedding
vectors of token inputs, the float inputs themselves (see :mod:`keras_lrp.walk`). A *player* is one
slice along axis 1 of a start tensor: a time step's vector (or one feature of a (batch, features)
input). Masked steps (token id 0 read by ``Embedding(mask_zero=True)``, steps a ``Masking`` layer
reading the input masks) are never perturbed and get relevance 0.

* ``"ig"`` (Sundararajan et al. 2017): ``(x - x') * mean_k grad f(x' + a_k (x - x'))`` with the
  midpoint Riemann rule ``a_k = (k + 1/2) / steps``, all ``steps x batch`` points in one batched
  gradient. Relevance per feature of each vector.
* ``"occlusion"`` (Zeiler & Fergus 2014): windows of ``window`` consecutive unmasked steps, sliding
  by one step, are replaced by the baseline; a step's value is the mean score drop
  ``f(x) - f(x with the window at baseline)`` over the windows that cover it.
* ``"shapley"`` (Štrumbelj & Kononenko 2013): permutation sampling over the unmasked steps; a step's
  value is its mean marginal contribution ``f(S + step) - f(S)`` (S: the steps before it in the
  permutation, the others at baseline) over ``samples`` permutations (``"all"``: every permutation,
  the exact Shapley values). Every permutation's contributions add up to ``f(x) - f(x')``.

Occlusion and Shapley values are per step: they are spread equally over the step's vector (each of its
D features gets value / D), so ``word_relevance`` (the sum over the feature axis) is the step's value.

For all three, ``Explanation.rest`` is the score at the baseline ``f(x')`` (every unmasked step at
baseline), so ``convergence_delta = f(x) - f(x') - sum(relevance)`` is IG's completeness gap, Shapley's
efficiency gap (0 up to rounding) and, for occlusion, how far the drops are from adding up.

The baseline ``x'`` is zero by default, or a number, or an array broadcastable to one sample's start
tensor ((time, embedding_dim) for token inputs, e.g. (embedding_dim,) for one vector at every step).

Cost in model evaluations per sample (T: time steps; the rows are evaluated as large batches):
IG ``2 + steps`` (forward and backward), occlusion ``T + 2``, Shapley ``samples x (T - 1) + 2`` (each
permutation's coalitions of 1..T-1 players; the empty and the full coalition are f(x') and f(x), once).
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Sequence, Tuple

import keras
import numpy as np
from keras import ops

__all__ = ["BASELINE_METHODS", "OPTIONS", "Baseline", "make_baseline", "active_steps", "options_key"]

#: the methods of this module
BASELINE_METHODS = ("ig", "occlusion", "shapley")
#: the options each method takes (``method_options=`` of :func:`keras_lrp.explain`), with defaults
OPTIONS = {
    "ig": {"steps": 32, "baseline": None},
    "occlusion": {"window": 1, "baseline": None},
    "shapley": {"samples": 32, "seed": 0, "baseline": None},
}
#: "all" permutations of at most this many of them (8! = 40,320 coalition chains per call)
MAX_PERMUTATIONS = math.factorial(8)
#: one sample's perturbed copies x their time steps at most (all run in one compiled call)
MAX_ROW_STEPS = 2 ** 24


def _positive_int(method: str, name: str, value) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"method={method!r}: {name} must be a positive integer, got {value!r}.")
    return int(value)


@dataclass(frozen=True)
class Baseline:
    """One configured baseline method (validated options); :meth:`run` is traced into the explain function.

    Attributes:
        method: "ig", "occlusion" or "shapley".
        steps, window, samples, seed: the method's options (None where it has no such option);
            ``samples`` is an int or "all".
        baselines: per model input, the baseline of its start tensor as a numpy array (None: zero,
            or an input without start tensor).
    """

    method: str
    steps: Optional[int] = None
    window: Optional[int] = None
    samples: Any = None
    seed: Optional[int] = None
    baselines: Tuple[Optional[np.ndarray], ...] = ()

    # ------------------------------------------------------------------ host side

    def rows_per_sample(self, players: int) -> int:
        """Model evaluations per sample for ``players`` steps (all inputs): the row expansion of a call."""
        if self.method == "ig":
            return self.steps + 2
        if self.method == "occlusion":
            return players + 2
        return self._n_orders(players) * (players - 1) + 2

    def _n_orders(self, players: int) -> int:
        return math.factorial(players) if self.samples == "all" else self.samples

    def check_size(self, players: int, steps: int) -> None:
        """Raise before any computation when ``samples="all"`` would enumerate too many permutations, or
        when one sample's perturbed copies (``players`` steps, sequences of ``steps``) would hold more
        than :data:`MAX_ROW_STEPS` time steps in one compiled call."""
        if self.method == "shapley" and self.samples == "all" and math.factorial(players) > MAX_PERMUTATIONS:
            raise ValueError(f"method='shapley' with samples='all' enumerates {players}! permutations of the "
                             f"{players} steps, more than {MAX_PERMUTATIONS:,} (8!); give samples=<int> to sample "
                             "permutations instead.")
        rows = self.rows_per_sample(players)
        if rows * steps > MAX_ROW_STEPS:
            option = {"ig": "steps", "occlusion": "window (or shorter sequences)", "shapley": "samples"}[self.method]
            raise ValueError(f"method={self.method!r} evaluates {rows:,} perturbed copies of each sample at once "
                             f"({rows * steps:,} time steps, more than {MAX_ROW_STEPS:,}): memory would run out. "
                             f"Use a smaller {option}, or shorter sequences.")

    def check_inputs(self, start_shapes: Sequence[Optional[tuple]]) -> None:
        """Refuse a baseline that does not broadcast to one sample's start tensor, ``start_shapes``
        per model input (without the batch axis, None for an axis of any length; None for inputs
        without start tensor)."""
        for k, (b, shape) in enumerate(zip(self.baselines, start_shapes)):
            if b is None or shape is None:
                continue
            fits = b.ndim <= len(shape) and all(
                have in (1, want) or want is None for have, want in zip(b.shape[::-1], tuple(shape)[::-1]))
            if not fits:
                shape = tuple("time" if d is None else d for d in shape)
                raise ValueError(f"method={self.method!r}: the baseline of input {k} has shape {b.shape}, which does "
                                 f"not broadcast to one sample's {'embedding vectors' if len(shape) > 1 else 'input'} "
                                 f"of shape {tuple(shape)}; give a number, a ({shape[-1]},) vector or a "
                                 f"{tuple(shape)} array.")

    def plan(self, players: int) -> List[np.ndarray]:
        """The compiled call's extra arguments for ``players`` steps: Shapley's permutations of the
        player positions, (orders, players) int32, the same for every sample of the call."""
        if self.method != "shapley":
            return []
        if self.samples == "all":
            orders = np.array(list(itertools.permutations(range(players))), np.int32).reshape(-1, players)
        else:
            rng = np.random.default_rng(self.seed)
            orders = np.stack([rng.permutation(players) for _ in range(self.samples)]).astype(np.int32)
        return [orders]

    # ------------------------------------------------------------------ traced

    def run(self, xs: list, starts: list, active: list, score: Callable, gradients: Callable,
            target, timestep, *plan):
        """The baseline's relevance of the start tensors ``starts`` (one per model input, None for
        inputs without one; (batch, players_k, ...)) with ``active`` (batch, players_k) 0/1 floats
        per start. ``score(xs, starts, target, timestep) -> (explained (rows,), (scores, target,
        timestep, model_out))`` and ``gradients(...) -> ([d explained / d start], aux)`` are the
        explainer's forward score and its one gradient. Returns ``(relevance, scores, target, rest,
        timestep, model_out)`` as the explain function does."""
        idx = [k for k, s in enumerate(starts) if s is not None]
        refs = [self._reference(starts[k], k) for k in range(len(starts))]
        # f(x) first: it resolves the targets (and output steps) every perturbed row explains
        f_x, (scores, target, timestep, model_out) = score(xs, starts, target, timestep)
        n = ops.shape(target)[0]
        f_ref, _ = score(xs, _mix(starts, refs, [None if k not in idx else 1 - active[k] for k in range(len(starts))],
                                  ops.arange(n)), target, timestep)
        args = (xs, starts, refs, active, score, gradients, target, timestep, f_x)
        if self.method == "ig":
            relevance = self._integrated_gradients(*args)
        elif self.method == "occlusion":
            relevance = self._occlusion(*args)
        else:
            relevance = self._shapley(*args, f_ref, *plan)
        return relevance, scores, target, f_ref, timestep, model_out

    def _reference(self, start, k: int):
        if start is None:
            return None
        b = self.baselines[k] if k < len(self.baselines) else None
        if b is None:
            return ops.zeros_like(start[:1])
        return ops.cast(ops.convert_to_tensor(b), start.dtype)[None]

    def _integrated_gradients(self, xs, starts, refs, active, score, gradients, target, timestep, f_x):
        n = ops.shape(target)[0]
        alphas = (ops.cast(ops.arange(self.steps), starts[_first(starts)].dtype) + 0.5) / self.steps
        rows = ops.tile(ops.arange(n), [self.steps])                # row = step * n + sample
        alpha_rows = ops.repeat(alphas, n)
        points = []
        for s, r, a in zip(starts, refs, active):
            if s is None:
                points.append(None)
                continue
            taken = ops.take(s, rows, axis=0)
            path = r + ops.reshape(alpha_rows, (-1,) + (1,) * (len(s.shape) - 1)) * (taken - r)
            points.append(ops.where(_expand(ops.take(a, rows, axis=0), taken) > 0, path, taken))   # masked: kept
        grads, _ = gradients(_rows(xs, rows), points, ops.take(target, rows, axis=0), ops.take(timestep, rows, axis=0))
        out = []
        for s, r, g, a in zip(starts, refs, grads, active):
            if s is None:
                out.append(None)
                continue
            mean = ops.mean(ops.reshape(g, (self.steps, n) + tuple(ops.shape(s)[1:])), axis=0)
            out.append((s - r) * mean * _expand(a, s))
        return out

    def _occlusion(self, xs, starts, refs, active, score, gradients, target, timestep, f_x):
        n = ops.shape(target)[0]
        idx = [k for k, s in enumerate(starts) if s is not None]
        out = [None] * len(starts)
        for k in idx:
            a = active[k]                                           # (n, T)
            t = ops.shape(a)[1]
            rank = ops.cumsum(a, axis=1) - 1.0                      # rank among the unmasked steps
            windows = ops.maximum(ops.sum(a, axis=1) - self.window + 1, ops.minimum(ops.sum(a, axis=1), 1.0))
            r = ops.cast(ops.arange(t), a.dtype)[None, :, None]      # window start (by rank)
            covered = (a[:, None, :] * ops.cast(rank[:, None, :] >= r, a.dtype)
                       * ops.cast(rank[:, None, :] < r + self.window, a.dtype)
                       * ops.cast(r < windows[:, None, None], a.dtype))         # (n, window r, step)
            rows = ops.repeat(ops.arange(n), t)                     # row = sample * T + window
            keep = [None if j not in idx else
                    (ops.reshape(1 - covered, (-1, t)) if j == k else ops.take(ops.ones_like(active[j]), rows, axis=0))
                    for j in range(len(starts))]
            f_occ, _ = score(_rows(xs, rows), _mix(starts, refs, keep, rows), ops.take(target, rows, axis=0),
                             ops.take(timestep, rows, axis=0))
            drops = f_x[:, None] - ops.reshape(f_occ, (n, t))        # (n, windows)
            value = ops.sum(covered * drops[:, :, None], axis=1) / ops.maximum(ops.sum(covered, axis=1), 1.0)
            out[k] = _spread(value, starts[k])
        return out

    def _shapley(self, xs, starts, refs, active, score, gradients, target, timestep, f_x, f_ref, orders):
        n = ops.shape(target)[0]
        idx = [k for k, s in enumerate(starts) if s is not None]
        sizes = [ops.shape(active[k])[1] for k in idx]
        a = ops.concatenate([active[k] for k in idx], axis=1)        # (n, P): every player of every input
        p = ops.shape(a)[1]
        m = ops.shape(orders)[0]
        position = ops.argsort(orders, axis=1)                        # (m, P): where each player comes
        earlier = ops.cast(position[:, None, :] < position[:, :, None], a.dtype)   # (m, P, P) [s, p, q]: q before p
        rank = ops.einsum("nq,mpq->nmp", a, earlier)                  # rank among the sample's unmasked players
        # Each permutation's chain of coalitions 0..P: only 1..P-1 are evaluated here. Coalition 0 (every
        # player at baseline) is f(x') and coalition P (every player present) is f(x), the same rows for
        # every permutation, evaluated once per sample by run(). (A sample with fewer unmasked players than
        # P repeats f(x) at the end of its chain: those rows are still evaluated.)
        k_coal = ops.cast(ops.arange(1, p), a.dtype)[None, None, :, None]
        inside = a[:, None, None, :] * ops.cast(rank[:, :, None, :] < k_coal, a.dtype)   # (n, m, P - 1, P)
        rows = ops.repeat(ops.arange(n), m * (p - 1))
        flat = ops.reshape(1 - a[:, None, None, :] + inside, (-1, p))  # keep: masked players and the coalition
        keep, begin = [None] * len(starts), 0
        for k, size in zip(idx, sizes):
            keep[k] = flat[:, begin:begin + size]
            begin += size
        f_c, _ = score(_rows(xs, rows), _mix(starts, refs, keep, rows), ops.take(target, rows, axis=0),
                       ops.take(timestep, rows, axis=0))
        ends = ops.ones((n, m, 1), f_x.dtype)
        f_c = ops.concatenate([f_ref[:, None, None] * ends, ops.reshape(f_c, (n, m, p - 1)), f_x[:, None, None] * ends],
                              axis=2)                                 # (n, m, P + 1): the whole chain
        gain = f_c[:, :, 1:] - f_c[:, :, :-1]                        # (n, m, P): the (k+1)-th player's gain
        at = ops.cast(ops.minimum(rank, ops.cast(p - 1, rank.dtype)), "int32")
        value = ops.mean(ops.take_along_axis(gain, at, axis=2), axis=1) * a   # (n, P)
        out, begin = [None] * len(starts), 0
        for k, size in zip(idx, sizes):
            out[k] = _spread(value[:, begin:begin + size], starts[k])
            begin += size
        return out


def active_steps(walk, xs: list, starts: list) -> list:
    """Per start tensor, (batch, players) 1.0 where the step takes part, 0.0 where it is masked: token
    id 0 read by ``Embedding(mask_zero=True)``, or all features equal to the ``mask_value`` of a
    ``Masking`` layer reading the input (None for inputs without start tensor)."""
    out = []
    for key, x, s, emb in zip(walk.graph.inputs, xs, starts, walk.embeddings):
        if s is None:
            out.append(None)
            continue
        a = ops.ones(ops.shape(s)[:2], s.dtype)
        if emb is not None and emb.mask_zero:
            a = ops.cast(ops.not_equal(x, 0), s.dtype)
        elif len(s.shape) >= 3:
            for node in walk.graph.nodes:
                if key in node.inputs and isinstance(node.op, keras.layers.Masking):
                    differs = ops.not_equal(s, ops.cast(node.op.mask_value, s.dtype))
                    a = a * ops.cast(ops.any(ops.reshape(differs, tuple(ops.shape(s)[:2]) + (-1,)), axis=-1), s.dtype)
        out.append(a)
    return out


def _first(items: list) -> int:
    return next(i for i, s in enumerate(items) if s is not None)


def _rows(xs: list, rows):
    """The inputs' rows ``rows`` (one index per output row)."""
    return [None if x is None else ops.take(x, rows, axis=0) for x in xs]


def _expand(a, like):
    """(rows, players) -> broadcastable to ``like`` (rows, players, ...)."""
    return ops.reshape(a, tuple(ops.shape(a)) + (1,) * (len(like.shape) - 2))


def _mix(starts: list, refs: list, keep: list, rows) -> list:
    """Per start: row ``i`` is sample ``rows[i]`` with the players where ``keep[i]`` is 0 at the
    baseline (selected, not interpolated: kept values are bit-exact)."""
    out = []
    for s, r, k in zip(starts, refs, keep):
        if s is None:
            out.append(None)
            continue
        taken = ops.take(s, rows, axis=0)
        out.append(ops.where(_expand(k, taken) > 0, taken, ops.broadcast_to(r, ops.shape(taken))))
    return out


def _spread(value, start):
    """(n, players) step values -> (n, players, ...) relevance, each spread equally over its vector."""
    width = 1
    for d in start.shape[2:]:
        width *= int(d)
    return ops.broadcast_to(_expand(value, start), ops.shape(start)) / float(width)


def options_key(options) -> tuple:
    """``method_options`` as a hashable key, arrays by content (the explain() cache): equal keys, equal
    options. Anything unhashable counts by identity."""
    def part(value):
        if isinstance(value, (list, tuple)):
            return tuple(part(v) for v in value)
        if isinstance(value, np.ndarray) or hasattr(value, "shape"):
            a = np.asarray(value)
            return (a.shape, str(a.dtype), a.tobytes())
        try:
            hash(value)
        except TypeError:
            return ("id", id(value))
        return value

    if not isinstance(options, dict):
        return part(options)
    return tuple(sorted((str(k), part(v)) for k, v in options.items()))


def make_baseline(method: str, options: Optional[dict], n_inputs: int, dtype: str) -> Baseline:
    """Validate ``method_options`` for ``method`` (a model of ``n_inputs`` inputs): a :class:`Baseline`,
    or a ValueError / TypeError saying what is wrong."""
    options = {} if options is None else options
    if not isinstance(options, dict):
        raise TypeError(f"method_options must be a dict, got {type(options).__name__}.")
    known = OPTIONS[method]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ValueError(f"method={method!r} takes the options {sorted(known)}; unknown: {unknown}.")
    opts = {**known, **options}
    kwargs: dict = {}
    if method == "ig":
        kwargs["steps"] = _positive_int(method, "steps", opts["steps"])
    if method == "occlusion":
        kwargs["window"] = _positive_int(method, "window", opts["window"])
    if method == "shapley":
        samples = opts["samples"]
        kwargs["samples"] = "all" if samples == "all" else _positive_int(method, "samples (or 'all')", samples)
        seed = opts["seed"]
        if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"method='shapley': seed must be an integer >= 0, got {seed!r}.")
        kwargs["seed"] = int(seed)
    kwargs["baselines"] = _baselines(method, opts["baseline"], n_inputs, dtype)
    return Baseline(method, **kwargs)


def _baselines(method: str, value, n_inputs: int, dtype: str) -> Tuple[Optional[np.ndarray], ...]:
    if value is None:
        return (None,) * n_inputs
    if n_inputs > 1:
        if not isinstance(value, (list, tuple)) or len(value) != n_inputs:
            raise ValueError(f"method={method!r}: this model has {n_inputs} inputs; give baseline as a list of "
                             f"{n_inputs} entries (None for zero), one per input in the order of model.inputs.")
        return tuple(_baselines(method, v, 1, dtype)[0] for v in value)
    try:
        b = np.asarray(keras.ops.convert_to_numpy(value) if hasattr(value, "shape") else value)
    except Exception as err:
        raise TypeError(f"method={method!r}: baseline must be None, a number or an array; got {type(value).__name__} "
                        f"({err}).") from None
    if b.dtype == object or not (np.issubdtype(b.dtype, np.number) or b.dtype == bool):
        raise TypeError(f"method={method!r}: baseline must be None, a number or a numeric array; got dtype {b.dtype}.")
    with np.errstate(over="ignore", invalid="ignore"):
        b = b.astype(dtype)
    if not np.all(np.isfinite(b)):
        raise ValueError(f"method={method!r}: the baseline contains NaN or inf values (in {dtype}).")
    return (b,)
