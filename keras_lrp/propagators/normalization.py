"""Normalization layers: LayerNormalization (the LN-rule), RMSNormalization and BatchNormalization (inference
statistics).

LayerNormalization, ``y = (x - mean(x)) / std(x) * gamma + beta`` over the last axis, follows the
LN-rule of Ali et al. 2022 ("XAI for Transformers: Better Explanations through Conservative
Propagation"): the standard deviation is held constant, so ``x -> y`` is the linear map
``W = C diag(gamma / std)`` (``C = I - 11^T / N`` the centering matrix, N the number of features)
with bias ``beta``, and the epsilon-rule runs through it:

    R_j = x_j [gamma_j s_j - mean_k(gamma_k s_k)] / std + bias_factor / N * sum_k (beta_k + eps sign y_k) s_k,
    s_k = R_k / (y_k + eps sign y_k).

With ``rms_scaling=True`` Keras computes ``y = x / std(x) * gamma`` (no centering, no beta): with std
constant that is the diagonal map ``diag(gamma / std)``, each output connected to one input (N = 1).
RMSNormalization, ``y = x / sqrt(mean(x^2) + epsilon) * scale``, likewise with the RMS held constant.

BatchNormalization at inference is the fixed affine map ``y = x a + c`` per feature, ``a = gamma /
sqrt(moving_variance + epsilon)``, ``c = beta - moving_mean a``. Where it directly follows a linear layer
(Dense, TimeDistributed(Dense) or Conv1D with a linear activation, whose output only this
BatchNormalization reads), the pair is explained as ONE linear map, the canonization of zennit's
``MergeBatchNorm`` (Motzkus et al. 2022, "Measurably Stronger Explanation Reliability via Model
Canonization"): ``W' = W a`` (per output feature), ``b' = b a + c``, and the linear layer's rule (the
epsilon-rule, or its composite rule) runs over ``(W', b')`` with the BatchNormalization's output as
``z``; the BatchNormalization passes relevance through unchanged. The forward values are Keras's: the
linear layer computes ``x W + b``, the BatchNormalization ``(x W + b) a + c``. Folding changes the
relevance only through the bias and stabiliser shares (for ``eps = 0, bias_factor = 0`` both ways agree).
Elsewhere (after a recurrent layer, an input, a Dense with a non-linear activation) the map is explained on
its own: the epsilon-rule with ``c`` as bias and N = 1,
``R_x = (x a + bias_factor (c + eps sign y)) / (y + eps sign y) R_y``.
"""
from __future__ import annotations

import keras
from keras import ops

from .. import rules
from .base import Propagator, UnsupportedLayerError, register
from .linear import batch_norm_affine, folded_batch_norm

__all__ = ["LayerNormalizationProp", "BatchNormalizationProp", "RMSNormalizationProp"]


def _diagonal_relevance(x, y, a, c, r, eps: rules.Epsilon):
    """Epsilon-rule through the element-wise affine map ``y = x a + c`` (each output has one input, N = 1)."""
    s = r * rules.inverse_denominator(y, eps)
    r_x = x * a * s
    if eps.has_bias_share:
        limit = None
        if rules.needs_zero_limit(eps):
            limit = rules.zero_limit(r, y, ops.abs(x * a) + (0.0 if c is None else ops.abs(c)), eps)
        r_x += eps.bias_factor * rules.share_numerator(s, y, c, eps, limit)
    return r_x


class _LastAxisNorm(Propagator):
    """Checks, before any computation, that the layer normalizes over the last axis only."""

    post_padding_safe = True   # over the features of each time step

    def __init__(self, layer, ctx, is_output=False):
        super().__init__(layer, ctx, is_output)
        try:
            rank = len(layer.input.shape)
        except (AttributeError, ValueError):   # not called in a graph: checked in forward
            rank = None
        if rank is not None:
            _check_last_axis(layer, rank)


def _check_last_axis(layer, rank: int) -> None:
    axes = layer.axis if isinstance(layer.axis, (list, tuple)) else [layer.axis]
    if sorted(a % rank for a in axes) != [rank - 1]:
        raise UnsupportedLayerError(layer, f"axis={layer.axis!r}; only normalization over the last (feature) "
                                           "axis, the default axis=-1, is supported.")


@register(keras.layers.LayerNormalization,
          rule="LN-rule (Ali et al. 2022): std held constant, epsilon-rule through the centering and "
               "scaling map with beta as bias (N = features; rms_scaling: diagonal, N = 1)")
class LayerNormalizationProp(_LastAxisNorm):
    """``y = (x - mean) / std * gamma + beta`` with std held constant: epsilon-rule (see module docstring)."""

    def forward1(self, x, mask):
        layer, ctx = self.layer, self.ctx
        _check_last_axis(layer, len(x.shape))
        gamma = ctx.weight(layer.gamma) if layer.scale else None
        beta = ctx.weight(layer.beta) if (layer.center and not layer.rms_scaling) else None
        # the operations of keras.ops.layer_normalization, in the same order: its rms_scaling path takes
        # ops.var (two-pass on every backend), the other ops.moments (E[x^2] - E[x]^2 on torch)
        if layer.rms_scaling:
            mean, variance = None, ops.var(x, axis=-1, keepdims=True)
        else:
            mean, variance = ops.moments(x, axes=[-1], keepdims=True)
        inv = ops.rsqrt(variance + ops.convert_to_tensor(layer.epsilon, x.dtype))   # 1 / std, held constant
        scale = inv if gamma is None else inv * gamma                     # gamma / std, broadcast
        if layer.rms_scaling:
            y = x * inv
            if gamma is not None:
                y = y * gamma
        else:
            res = -mean * scale
            if beta is not None:
                res = res + beta
            y = x * scale + res
        return y, (x, y, scale, beta)

    def relevance1(self, cache, r):
        x, y, scale, beta = cache
        eps = self.ctx.eps
        if self.layer.rms_scaling:     # diagonal map, N = 1
            return _diagonal_relevance(x, y, scale, None, r, eps), None
        s = r * rules.inverse_denominator(y, eps)
        # W^T s for W = C diag(gamma / std): (gamma / std) s minus its mean over the features
        gs = scale * s
        r_x = x * (gs - ops.mean(gs, axis=-1, keepdims=True))
        if eps.has_bias_share:
            limit = None
            if rules.needs_zero_limit(eps):
                # sum_j |x_j W_jk| + |beta_k| with |W_jk| = |delta_jk - 1/N| |gamma_k / std|
                n = x.shape[-1]
                abs_x = ops.abs(x)
                magnitude = ops.abs(scale) * (abs_x * (1 - 2 / n) + ops.mean(abs_x, axis=-1, keepdims=True))
                limit = rules.zero_limit(r, y, magnitude + (0.0 if beta is None else ops.abs(beta)), eps)
            # bias_factor / N * sum over the N normalized units
            r_x += eps.bias_factor * ops.mean(rules.share_numerator(s, y, beta, eps, limit), axis=-1,
                                                    keepdims=True)
        return r_x, None


@register(keras.layers.BatchNormalization,
          rule="inference statistics, y = x a + c per feature: folded into a preceding Dense / "
               "TimeDistributed(Dense) / Conv1D with linear activation whose output only it reads (that layer's "
               "rule over W a, b a + c; R passes through the BN); elsewhere the epsilon-rule on the affine map "
               "with c as bias (N = 1)")
class BatchNormalizationProp(_LastAxisNorm):
    """``y = x a + c`` (moving statistics): folded into the preceding linear layer where one exists
    (relevance passes through), else the epsilon-rule with bias c and N = 1 (see module docstring)."""

    #: True when the preceding linear layer's propagator explains this layer with it (see :meth:`bind`)
    folded = False

    def bind(self, node, walk) -> None:
        """Called by the walk with this call's graph node: decide whether it is folded."""
        producer = walk.graph.producer(node.inputs[0]) if node.inputs else None
        self.folded = producer is not None and folded_batch_norm(producer, walk) is node

    def forward1(self, x, mask):
        _check_last_axis(self.layer, len(x.shape))
        a, c = batch_norm_affine(self.layer, self.ctx, x.dtype)
        y = x * a + c
        return y, (x, y, a, c)

    def relevance1(self, cache, r):
        if self.folded:   # the linear layer before it explains the pair
            return r, None
        x, y, a, c = cache
        return _diagonal_relevance(x, y, a, c, r, self.ctx.eps), None


@register(keras.layers.RMSNormalization,
          rule="RMS held constant: the diagonal map y = x scale / rms, epsilon-rule with N = 1")
class RMSNormalizationProp(_LastAxisNorm):
    """``y = x / sqrt(mean(x^2) + epsilon) * scale`` with the RMS held constant (as the LN-rule holds the
    std): the diagonal map ``diag(scale / rms)``, epsilon-rule with N = 1."""

    def forward1(self, x, mask):
        layer = self.layer
        _check_last_axis(layer, len(x.shape))
        epsilon = layer.epsilon if layer.epsilon is not None else keras.config.epsilon()
        # the operations of keras.ops.rms_normalization
        a = ops.rsqrt(ops.mean(ops.square(x), axis=-1, keepdims=True) + ops.convert_to_tensor(epsilon, x.dtype))
        y = x * a
        if getattr(layer, "scale", None) is not None:
            scale = self.ctx.weight(layer.scale)
            y, a = y * scale, a * scale
        return y, (x, y, a)

    def relevance1(self, cache, r):
        x, y, a = cache
        return _diagonal_relevance(x, y, a, None, r, self.ctx.eps), None
