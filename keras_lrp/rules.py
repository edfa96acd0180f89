"""Propagation rules: the epsilon-rule for linear maps (Arras et al. 2017, Bach et al. 2015).

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

A zero denominator (only possible with ``eps = 0``) defines ``0 / 0 := 0``: the output unit passes
no relevance, so the result is never NaN or inf.
"""
from __future__ import annotations

from dataclasses import dataclass

import math
import numbers

import numpy as np
import tensorflow as tf

__all__ = ["Epsilon", "stabilizer", "inverse_denominator", "bias_share", "linear"]


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


def stabilizer(z: tf.Tensor, eps: float) -> tf.Tensor:
    """``eps * sign(z)`` with sign(0) = +1 (the reference implementation's convention)."""
    eps = tf.constant(eps, z.dtype)
    return tf.where(z >= 0, eps, -eps)


def inverse_denominator(z: tf.Tensor, rule: Epsilon) -> tf.Tensor:
    """``1 / (z + eps * sign(z))`` elementwise, with ``1 / 0 := 0`` (a dead unit passes nothing)."""
    return tf.math.reciprocal_no_nan(z + stabilizer(z, rule.eps))


def bias_share(s: tf.Tensor, z: tf.Tensor, bias, rule: Epsilon, fan_in: int) -> tf.Tensor:
    """Per-input-unit share of bias and stabiliser, ``(..., 1)``; zero when ``bias_factor == 0``.

    Args:
        s: message ``R / (z + eps sign(z))``, shape (..., M).
        z: the map's full pre-activation, shape (..., M).
        bias: (M,) or None.
        fan_in: N, the number of input units the share is spread over.
    """
    if not rule.has_bias_share:
        return tf.zeros_like(s[..., :1])
    a = stabilizer(z, rule.eps)
    if bias is not None:
        a = a + bias
    return (rule.bias_factor / fan_in) * tf.reduce_sum(a * s, axis=-1, keepdims=True)


def linear(x: tf.Tensor, w: tf.Tensor, bias, z: tf.Tensor, r_out: tf.Tensor, rule: Epsilon,
           fan_in: int | None = None) -> tf.Tensor:
    """Epsilon-rule through ``z = x @ w + bias``.

    Args:
        x: inputs (..., D); w: (D, M); bias: (M,) or None; z: pre-activation (..., M) (the sum of all
        the map's inputs, if it has several); r_out: relevance on z (..., M);
        fan_in: bias share denominator N, default D.

    Returns:
        relevance on x, (..., D).
    """
    s = r_out * inverse_denominator(z, rule)
    share = bias_share(s, z, bias, rule, x.shape[-1] if fan_in is None else fan_in)
    return x * tf.einsum("...m,dm->...d", s, w) + share
