"""Propagation rules for linear maps: the epsilon-rule (Arras et al. 2017, Bach et al. 2015), and the
z+ / alpha-beta (Bach et al. 2015; Montavon et al. 2017) and gamma (Montavon et al. 2019) rules that a
:class:`~keras_lrp.composites.Composite` can put on chosen Dense / Conv1D layers.

For a linear map ``z_m = sum_k x_k w_km + b_m`` (``z`` may also collect other inputs, as the LSTM
gates do for x_t and h_{t-1}) with relevance ``R_m`` on its outputs, the epsilon-rule gives

    R_k = sum_m  (x_k w_km + bias_factor * (b_m + eps * sign(z_m)) / N) / (z_m + eps * sign(z_m)) * R_m

with ``sign(0) = +1`` and ``N`` (``bias_nb_units``) the fan-in of the map: the number of input
units over which the bias and stabiliser share is spread (all inputs of the map, e.g. ``d + e`` for
the LSTM cell candidate over ``[x_t, h_{t-1}]``). With ``eps = 0, bias_factor = 1`` the rule
conserves relevance exactly: ``sum_k R_k == sum_m R_m``.

Every rule here is written as two steps so that maps with several inputs share the work:

    s     = R / (z + eps * sign(z))            # "the message", shape (..., M)
    share = bias_factor / N * sum_m (b_m + eps * sign(z_m)) * s_m     # (..., 1)
    R_in  = x * (s @ w.T) + share

A zero denominator (only possible with ``eps = 0``, at ``z_m = 0``) is resolved by the ``eps -> 0``
limit of the rule (:func:`zero_limit`): where every term of ``z_m`` (each ``x_k w_km`` and ``b_m``) is
exactly 0, ``bias_factor (eps sign z_m) / N / (z_m + eps sign z_m) -> bias_factor / N``, so each of the
N inputs gets ``bias_factor R_m / N`` (with ``bias_factor = 1`` the unit splits its relevance equally
and conservation holds); where non-zero terms cancel to exactly 0 the limit does not exist (it
diverges) and the unit passes nothing, which shows in ``convergence_delta``. The result is never NaN
or inf.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Callable, Union

import numpy as np
from keras import ops

from . import backend
from .backend import Tensor

__all__ = ["Epsilon", "ZPlus", "AlphaBeta", "Gamma", "LinearRule", "LINEAR_RULES", "GateRule", "SignalTakeAll",
           "Half", "Proportional", "GATE_RULE_OBJECTS", "as_gate_rule", "stabilizer",
           "inverse_denominator", "bias_share", "share_numerator", "linear", "elementwise_sum", "zero_limit",
           "needs_zero_limit"]


@dataclass(frozen=True)
class Epsilon:
    """The epsilon-rule's parameters.

    Args:
        eps: stabiliser added to each denominator with the sign of the denominator (``>= 0``).
        bias_factor: share of the bias (and of the stabiliser) redistributed onto the inputs;
            0.0 (the paper's setting) drops it, 1.0 conserves relevance when ``eps = 0``.
    """

    eps: float = 1e-3
    bias_factor: float = 0.0

    def __post_init__(self):
        for name in ("eps", "bias_factor"):
            value = getattr(self, name)
            # numpy scalars (np.float32(1e-3), np.int64(0)) are real numbers too; bools are not
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
                raise TypeError(f"{name} must be a real number, got {value!r} ({type(value).__name__}).")
            try:
                value = float(value)
            except OverflowError:   # an int beyond the float range
                value = math.inf
            if not math.isfinite(value):
                raise ValueError(f"{name} must be finite, got {value!r}.")
            object.__setattr__(self, name, value)   # a plain float: hashable, equal across types
        if self.eps < 0:
            raise ValueError(f"eps must be >= 0 (it is added with the sign of the denominator), got {self.eps!r}.")

    @property
    def has_bias_share(self) -> bool:
        return self.bias_factor != 0.0


def stabilizer(z, eps: float):
    """``eps * sign(z)`` with sign(0) = +1 (the reference implementation's convention)."""
    return ops.where(z >= 0, ops.convert_to_tensor(eps, z.dtype), ops.convert_to_tensor(-eps, z.dtype))


def inverse_denominator(z: Tensor, rule: Epsilon) -> Tensor:
    """``1 / (z + eps * sign(z))`` elementwise, with ``1 / 0 := 0`` (a dead unit passes nothing)."""
    return ops.divide_no_nan(ops.convert_to_tensor(1, z.dtype), z + stabilizer(z, rule.eps))


def needs_zero_limit(rule: Epsilon) -> bool:
    """Whether :func:`zero_limit` can be non-zero: a zero denominator needs ``eps = 0``, and the limit
    gives relevance only through the share, so ``bias_factor != 0``. Check it before computing the
    terms' magnitudes a zero limit needs."""
    return rule.eps == 0 and rule.has_bias_share


def zero_limit(r: Tensor, z: Tensor, magnitude: Tensor, rule: Epsilon):
    """The ``eps -> 0`` limit of the epsilon-rule's stabiliser share at ``z_m = 0``: ``R_m`` where ``z_m``
    is exactly 0 and so is every one of its terms (``magnitude_m = sum_k |x_k w_km| + |b_m| = 0``),
    else 0; None when it is 0 everywhere (see :func:`needs_zero_limit`). :func:`bias_share` spreads it
    like the stabiliser: ``bias_factor R_m / N`` to each of the N inputs. Where non-zero terms cancel
    to exactly 0 the limit diverges and the unit passes nothing (0/0 := 0).

    Args:
        r: relevance on z, (..., M); z: the pre-activation (..., M); magnitude: (..., M), >= 0.
    """
    if not needs_zero_limit(rule):
        return None
    dead = ops.logical_and(ops.equal(z, 0), ops.equal(magnitude, 0))
    return ops.where(dead, r, ops.zeros_like(r))


def bias_share(s: Tensor, z: Tensor, bias, rule: Epsilon, fan_in: int, limit=None) -> Tensor:
    """Per-input-unit share of bias and stabiliser, ``(..., 1)``; zero when ``bias_factor == 0``.

    Args:
        s: message ``R / (z + eps sign(z))``, shape (..., M).
        z: the map's full pre-activation, shape (..., M).
        bias: (M,) or None.
        fan_in: N, the number of input units the share is spread over.
        limit: :func:`zero_limit` of the map (the stabiliser share where ``z = 0``), or None.
    """
    if not rule.has_bias_share:
        return ops.zeros_like(s[..., :1])
    return (rule.bias_factor / fan_in) * ops.sum(share_numerator(s, z, bias, rule, limit), axis=-1, keepdims=True)


def share_numerator(s: Tensor, z: Tensor, bias, rule: Epsilon, limit=None) -> Tensor:
    """Per output unit, what its bias / stabiliser share redistributes before the ``bias_factor / N``
    factor: ``(b_m + eps sign z_m) s_m``, plus the :func:`zero_limit` ``limit`` (..., M)."""
    a = stabilizer(z, rule.eps)
    if bias is not None:
        a = a + bias
    out = a * s
    return out if limit is None else out + limit


def elementwise_sum(terms, z: Tensor, r: Tensor, rule: Epsilon, bias=None) -> list:
    """Epsilon-rule through an element-wise sum ``z = sum_i terms[i] (+ bias)`` (``Add``, the two
    directions of a Bidirectional ``sum``): each term of output unit m is one contribution (N = number
    of terms); ``bias`` (broadcastable to z) holds the constants. Returns the relevance of each term."""
    s = r * inverse_denominator(z, rule)
    if not rule.has_bias_share:
        return [t * s for t in terms]
    limit = None
    if needs_zero_limit(rule):
        magnitude = sum(ops.abs(t) for t in terms)
        limit = zero_limit(r, z, magnitude if bias is None else magnitude + ops.abs(bias), rule)
    share = (rule.bias_factor / len(terms)) * share_numerator(s, z, bias, rule, limit)
    return [t * s + share for t in terms]


def linear(x: Tensor, w: Tensor, bias, z: Tensor, r_out: Tensor, rule: Epsilon,
           fan_in: int | None = None) -> Tensor:
    """Epsilon-rule through ``z = x @ w + bias``.

    Args:
        x: inputs (..., D); w: (D, M); bias: (M,) or None; z: pre-activation (..., M) (the sum of all
        the map's inputs, if it has several); r_out: relevance on z (..., M);
        fan_in: bias share denominator N, default D.

    Returns:
        relevance on x, (..., D).
    """
    s = r_out * inverse_denominator(z, rule)
    limit = None
    if needs_zero_limit(rule):
        magnitude = ops.einsum("...d,dm->...m", ops.abs(x), ops.abs(w))
        limit = zero_limit(r_out, z, magnitude if bias is None else magnitude + ops.abs(bias), rule)
    share = bias_share(s, z, bias, rule, x.shape[-1] if fan_in is None else fan_in, limit)
    return x * backend.einsum("...m,dm->...d", s, w) + share


# --------------------------------------------------------------------------- other rules for linear maps
#
# For ``z_j = sum_k x_k w_kj + b_j`` write the contributions ``z_kj = x_k w_kj`` and their positive and
# negative parts ``z_kj^+ = max(z_kj, 0)``, ``z_kj^- = min(z_kj, 0)``. Through a linear map given as a
# function ``f_w(x)`` (Dense, Conv1D), sums over k of such parts are computed without materialising
# z_kj: ``sum_k z_kj^+ = f_{w+}(x+) + f_{w-}(x-)`` (w+ = max(w, 0), x- = min(x, 0), ...), and the
# relevance ``sum_j z_kj^+ s_j`` is ``x+ * f_{w+}^T s + x- * f_{w-}^T s`` (vector-Jacobian products).

def _vjp(f: Callable, x, s):
    """``f^T s`` for a linear map ``f`` at any point: the gradient of ``<f(x), s>``."""
    return backend.vjp(lambda t: [f(t)], [x], [s])[0]


@dataclass(frozen=True)
class AlphaBeta:
    """The alpha-beta rule (Bach et al. 2015, Eq. 60), ``alpha - beta = 1``:

    ``R_k = sum_j (alpha z_kj^+ / sum_k' z_k'j^+  -  beta z_kj^- / sum_k' z_k'j^-) R_j``

    The bias is left out of both sums (it receives no relevance), and an empty sum passes nothing
    (0/0 := 0). With ``R_j >= 0`` and both sums non-empty, ``sum_k R_k = sum_j R_j``.
    """

    alpha: float = 1.0
    beta: float = 0.0

    def __post_init__(self):
        for name in ("alpha", "beta"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise TypeError(f"AlphaBeta {name} must be a finite number, got {value!r}.")
        if self.beta < 0 or abs(self.alpha - self.beta - 1.0) > 1e-12:
            raise ValueError(f"AlphaBeta needs alpha - beta = 1 and beta >= 0 (conservation), got "
                             f"alpha={self.alpha}, beta={self.beta}.")

    def relevance(self, linear_map: Callable, x: Tensor, w: Tensor, bias, r: Tensor) -> Tensor:
        w_pos, w_neg = ops.maximum(w, 0), ops.minimum(w, 0)
        x_pos, x_neg = ops.maximum(x, 0), ops.minimum(x, 0)
        f_pos, f_neg = linear_map(w_pos), linear_map(w_neg)
        z_pos = f_pos(x_pos) + f_neg(x_neg)
        out = self.alpha * _parts(f_pos, f_neg, x_pos, x_neg, ops.divide_no_nan(r, z_pos))
        if self.beta:
            z_neg = f_pos(x_neg) + f_neg(x_pos)
            out -= self.beta * _parts(f_pos, f_neg, x_neg, x_pos, ops.divide_no_nan(r, z_neg))
        return out


def _parts(f_pos, f_neg, a, b, s):
    """``a * f_pos^T s + b * f_neg^T s``: the relevance of one sign part of the contributions."""
    return a * _vjp(f_pos, a, s) + b * _vjp(f_neg, b, s)


@dataclass(frozen=True)
class ZPlus(AlphaBeta):
    """The z+ rule (Montavon et al. 2017, deep Taylor decomposition): AlphaBeta(1, 0), only the
    positive contributions ``z_kj^+`` share ``R_j``."""

    alpha: float = field(default=1.0, init=False)
    beta: float = field(default=0.0, init=False)


@dataclass(frozen=True)
class Gamma:
    """The gamma rule (Montavon et al. 2019, "Layer-Wise Relevance Propagation: An Overview", Eq. 4.3):
    positive weights are boosted,

    ``R_k = sum_j x_k (w_kj + gamma w_kj^+) / (sum_k' x_k' (w_k'j + gamma w_k'j^+) + b_j + gamma b_j^+ + eps sign) R_j``

    The bias term stays in the denominator and keeps its share (conservation holds for b = 0, eps = 0).
    """

    gamma: float = 0.25
    eps: float = 0.0

    def __post_init__(self):
        for name in ("gamma", "eps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"Gamma {name} must be a finite number >= 0, got {value!r}.")

    def relevance(self, linear_map: Callable, x: Tensor, w: Tensor, bias, r: Tensor) -> Tensor:
        w_mod = w + self.gamma * ops.maximum(w, 0)
        f = linear_map(w_mod)
        z = f(x)
        if bias is not None:
            z = z + bias + self.gamma * ops.maximum(bias, 0)
        s = r * ops.divide_no_nan(ops.convert_to_tensor(1, z.dtype), z + stabilizer(z, self.eps))
        return x * _vjp(f, x, s)


LinearRule = Union[Epsilon, AlphaBeta, Gamma]
LINEAR_RULES = (Epsilon, AlphaBeta, Gamma)


# --------------------------------------------------------------------------- gate x signal products

@dataclass(frozen=True)
class GateRule:
    """How the relevance ``R`` of a product ``p = gate * signal`` (LSTM / GRU) is split.

    ``split`` returns ``(R_gate, R_signal)``; ``R_gate`` is None when the gate gets nothing.
    Subclasses: :class:`SignalTakeAll` (the default), :class:`Half`, :class:`Proportional`.
    """

    name = ""

    def split(self, r: Tensor, gate: Tensor, signal: Tensor, eps: Epsilon):
        raise NotImplementedError


@dataclass(frozen=True)
class SignalTakeAll(GateRule):
    """Signal-take-all (Arras et al. 2017): ``R_signal = R``, ``R_gate = 0``."""

    name = "all"

    def split(self, r, gate, signal, eps):
        return None, r


@dataclass(frozen=True)
class Half(GateRule):
    """Half-half (Arjona-Medina et al. 2018): ``R_signal = R_gate = R / 2``."""

    name = "half"

    def split(self, r, gate, signal, eps):
        return 0.5 * r, 0.5 * r


@dataclass(frozen=True)
class Proportional(GateRule):
    """Proportional (Ding et al. 2017): ``R_gate = g / (g + s) R``, ``R_signal = s / (g + s) R`` on the
    forward values, the denominator stabilised by eps like the epsilon-rule (0/0 := 0)."""

    name = "prop"

    def split(self, r, gate, signal, eps):
        k = r * inverse_denominator(gate + signal, eps)
        return gate * k, signal * k


#: gate rule name -> object (the ``rule=`` argument of ``explain`` takes either)
GATE_RULE_OBJECTS = {rule.name: rule for rule in (SignalTakeAll(), Half(), Proportional())}


def as_gate_rule(rule: Union[str, GateRule]) -> GateRule:
    """A gate rule name ("all", "half", "prop") or object -> the object."""
    if isinstance(rule, GateRule) and rule.name in GATE_RULE_OBJECTS:
        return rule
    if isinstance(rule, str) and rule in GATE_RULE_OBJECTS:
        return GATE_RULE_OBJECTS[rule]
    raise ValueError(f"rule must be one of {tuple(GATE_RULE_OBJECTS)} or SignalTakeAll(), Half(), Proportional(); "
                     f"got {rule!r}.")
