"""Linear layers (Dense, TimeDistributed(Dense), Conv1D) and pooling: the epsilon-rule.

A BatchNormalization that directly follows a Dense / TimeDistributed(Dense) / Conv1D with a linear
activation is folded into it (the canonization of zennit's ``MergeBatchNorm``; see
:mod:`keras_lrp.propagators.normalization`): the linear layer's rule
runs over ``W' = W a``, ``b' = b a + c`` with the BatchNormalization's output as ``z``.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import keras
from keras import ops

from .. import backend, rules
from ..backend import Tensor
from ..rules import Epsilon
from .base import Context, Propagator, UnsupportedLayerError, register

__all__ = ["DenseProp", "Conv1DProp", "PoolingProp", "linear_forward", "gradient_linear", "BatchNormAffine",
           "batch_norm_affine", "folded_batch_norm", "transpose"]


# --------------------------------------------------------------------------- BatchNormalization folding

class BatchNormAffine(NamedTuple):
    """Inference BatchNormalization as ``y = x a + c``; ``a``, ``c``: (features,)."""

    a: Tensor
    c: Tensor


def batch_norm_affine(layer, ctx: Context, dtype) -> BatchNormAffine:
    """``a = gamma rsqrt(moving_variance + epsilon)``, ``c = beta - moving_mean a`` in ``dtype``, with the
    operations of keras.ops.batch_normalization (so ``x * a + c`` is Keras's output)."""
    a = ops.rsqrt(ctx.weight(layer.moving_variance) + ops.convert_to_tensor(layer.epsilon, dtype))
    if layer.scale:
        a = a * ctx.weight(layer.gamma)
    c = -ctx.weight(layer.moving_mean) * a
    if layer.center:
        c = c + ctx.weight(layer.beta)
    return BatchNormAffine(a, c)


def _is_last_axis_bn(layer, rank: int) -> bool:
    axes = layer.axis if isinstance(layer.axis, (list, tuple)) else [layer.axis]
    return sorted(a % rank for a in axes) == [rank - 1]


def folded_batch_norm(node, walk) -> Optional[object]:
    """The BatchNormalization call (a graph node) that folds into the linear call ``node``, or None.

    ``node`` folds when its layer is a Dense, TimeDistributed(Dense) or Conv1D with a linear activation,
    its one output is not the model output and is read by exactly one call, a BatchNormalization over the
    last axis. The linear propagator and the BatchNormalization propagator both ask this, so they agree.
    """
    layer = node.op
    if isinstance(layer, keras.layers.TimeDistributed):
        inner = layer.layer if isinstance(layer.layer, keras.layers.Dense) else None
    else:
        inner = layer if isinstance(layer, (keras.layers.Dense, keras.layers.Conv1D)) else None
    if inner is None:
        return None
    if inner.activation is not keras.activations.linear or len(node.outputs) != 1:
        return None
    key = node.outputs[0]
    if key == walk.graph.output:
        return None
    readers = walk.graph.consumers(key)
    if len(readers) != 1 or len(readers[0].inputs) != 1:
        return None
    bn = readers[0]
    if not isinstance(bn.op, keras.layers.BatchNormalization):
        return None
    rank = len(bn.output_shapes[0])
    return bn if _is_last_axis_bn(bn.op, rank) else None


# --------------------------------------------------------------------------- linear layers

def _last_axis_matmul(w):
    return lambda t: backend.einsum("...d,dm->...m", t, w)


def linear_forward(prop: Propagator, layer, linear_map, x):
    """``y = activation(f(x) + b)`` for a layer with ``kernel`` / ``bias`` / ``activation``, where
    ``linear_map(kernel)`` gives ``f``; the output layer returns the pre-activation.
    Returns ``(y, (x, kernel, bias, z))``."""
    w = prop.ctx.weight(layer.kernel)
    b = prop.ctx.weight(layer.bias) if layer.use_bias else None
    z = linear_map(w)(x)
    if b is not None:
        z = z + b
    return (z if prop.is_output else layer.activation(z)), (x, w, b, z)


class _FoldsBatchNorm(Propagator):
    """A linear layer that may explain a following BatchNormalization with it (``W a``, ``b a + c``)."""

    #: the BatchNormalization layer folded into this one (set by :meth:`bind`), or None
    batch_norm = None

    def bind(self, node, walk) -> None:
        """Called by the walk with this call's graph node: find a BatchNormalization to fold."""
        bn = folded_batch_norm(node, walk)
        self.batch_norm = None if bn is None else bn.op

    @property
    def _inner(self):
        return self.layer.layer if isinstance(self.layer, keras.layers.TimeDistributed) else self.layer

    @property
    def activation_name(self):
        return getattr(self._inner.activation, "__name__", None)

    def activate(self, y):
        return self._inner.activation(y)

    def linear_forward(self, layer, linear_map, x):
        """:func:`linear_forward`; with a folded BatchNormalization the cache holds the folded map
        ``(x, W a, b a + c, y)``, ``y`` the BatchNormalization's output, computed as it computes it."""
        out, (x, w, b, z) = linear_forward(self, layer, linear_map, x)
        if self.batch_norm is None:
            return out, (x, w, b, z)
        a, c = batch_norm_affine(self.batch_norm, self.ctx, z.dtype)
        return out, (x, w * a, c if b is None else b * a + c, z * a + c)


@register(keras.layers.Dense, rule="epsilon-rule over the kernel (N = input units); the activation passes R "
                                  "unchanged; a following BatchNormalization is folded in")
class DenseProp(_FoldsBatchNorm):
    """``y = activation(x W + b)`` on the last axis, epsilon-rule over W (N = input units)."""

    accepts_rules = True   # a Composite may give it ZPlus, AlphaBeta, Gamma or its own Epsilon
    post_padding_safe = True   # the last axis only: time step by time step

    def __init__(self, layer, ctx, is_output=False):
        inner = layer.layer if isinstance(layer, keras.layers.TimeDistributed) else layer
        if not isinstance(inner, keras.layers.Dense):
            raise UnsupportedLayerError(layer, "TimeDistributed is supported around Dense only.")
        super().__init__(layer, ctx, is_output)
        self.dense = inner

    def forward1(self, x, mask):
        return self.linear_forward(self.dense, _last_axis_matmul, x)

    def relevance1(self, cache, r):
        x, w, b, z = cache
        rule = self.ctx.linear_rule(self.layer)
        if isinstance(rule, Epsilon):
            return rules.linear(x, w, b, z, r, rule, fan_in=w.shape[0]), None
        return rule.relevance(_last_axis_matmul, x, w, b, r), None


def gradient_linear(f, x, z, bias, r, eps: Epsilon, connections=None, absolute=None):
    """Epsilon-rule through a linear map given as a function ``f(x)`` (no bias), ``z = f(x) + bias``.

    ``R_x = x * (f^T s) + share`` with ``s = R / (z + eps sign z)``; ``f^T s`` is the gradient of
    ``<f(x), s>``. The bias/stabiliser share of output m goes to the N_m inputs connected to it,
    ``connections`` being ``f`` with every weight set to 1 (default: ``f`` itself, right for maps
    with equal positive weights such as average pooling). ``absolute`` is ``f`` with every weight
    replaced by its absolute value (default ``f``: maps with non-negative weights), for the zero limit
    (:func:`~keras_lrp.rules.zero_limit`).
    """
    s = ops.stop_gradient(r * rules.inverse_denominator(z, eps))
    r_x = x * transpose(f, x, s)
    if eps.has_bias_share:
        conn = connections or f
        limit = None
        if rules.needs_zero_limit(eps):
            magnitude = (absolute or f)(ops.abs(x))
            limit = rules.zero_limit(r, z, magnitude if bias is None else magnitude + ops.abs(bias), eps)
        a = rules.share_numerator(s, z, bias, eps, limit)
        counts = conn(ops.ones_like(x))
        r_x += transpose(conn, x, eps.bias_factor * ops.divide_no_nan(a, counts))
    return r_x


def transpose(f, x, s):
    """``f^T s`` for a linear map ``f`` (at ``x``, any point: its Jacobian): a vector-Jacobian product."""
    return backend.vjp(lambda t: [f(t)], [x], [s])[0]


@register(keras.layers.Conv1D, rule="epsilon-rule over the kernel (N = connected inputs); a following BatchNormalization is folded in")
class Conv1DProp(_FoldsBatchNorm):
    """Conv1D (channels_last, groups=1): epsilon-rule over the kernel, N = connected inputs."""

    accepts_rules = True

    def __init__(self, layer, ctx, is_output=False):
        super().__init__(layer, ctx, is_output)
        if layer.data_format != "channels_last" or layer.groups != 1:
            raise UnsupportedLayerError(layer, "only channels_last Conv1D with groups=1 is supported.")

    def _conv(self, kernel):
        layer = self.layer

        def f(x):
            if layer.padding == "causal":
                left = layer.dilation_rate[0] * (layer.kernel_size[0] - 1)
                x = ops.pad(x, [[0, 0], [left, 0], [0, 0]])
            padding = "valid" if layer.padding == "causal" else layer.padding
            return ops.conv(x, kernel, strides=layer.strides, padding=padding,
                                  dilation_rate=layer.dilation_rate)
        return f

    def forward1(self, x, mask):
        return self.linear_forward(self.layer, self._conv, x)

    def relevance1(self, cache, r):
        x, w, b, z = cache
        rule = self.ctx.linear_rule(self.layer)
        if isinstance(rule, Epsilon):
            return gradient_linear(self._conv(w), x, z, b, r, rule, self._conv(ops.ones_like(w)),
                                   self._conv(ops.abs(w))), None
        return rule.relevance(self._conv, x, w, b, r), None


@register(keras.layers.MaxPooling1D, keras.layers.AveragePooling1D, keras.layers.GlobalMaxPooling1D,
          keras.layers.GlobalAveragePooling1D,
          rule="average: epsilon-rule over the (masked) average; max: winner-take-all, R goes to the maximum")
class PoolingProp(Propagator):
    """Average pooling (epsilon-rule over the average) and max pooling (winner-take-all)."""

    def __init__(self, layer, ctx, is_output=False):
        super().__init__(layer, ctx, is_output)
        if getattr(layer, "data_format", "channels_last") != "channels_last":
            raise UnsupportedLayerError(layer, "only channels_last pooling is supported.")
        self.is_max = isinstance(layer, (keras.layers.MaxPooling1D, keras.layers.GlobalMaxPooling1D))

    def _f(self, mask):
        layer = self.layer
        if isinstance(layer, keras.layers.GlobalMaxPooling1D):
            return lambda x: ops.max(x, axis=1, keepdims=layer.keepdims)
        if isinstance(layer, keras.layers.GlobalAveragePooling1D):
            def mean(x):   # the masked mean, as Keras computes it
                m = ops.ones_like(x[..., :1]) if mask is None else ops.cast(mask, x.dtype)[:, :, None]
                return (ops.sum(x * m, axis=1, keepdims=layer.keepdims)
                        / ops.sum(m, axis=1, keepdims=layer.keepdims))
            return mean
        pool = ops.max_pool if self.is_max else ops.average_pool
        return lambda x: pool(x, layer.pool_size, layer.strides, layer.padding)

    def forward1(self, x, mask):
        f = self._f(mask)
        return f(x), (x, f)

    def relevance1(self, cache, r):
        x, f = cache
        if self.is_max:
            # the gradient of a max routes each output's relevance to its (first) maximum
            return transpose(f, x, r), None
        return gradient_linear(f, x, f(x), None, r, self.ctx.eps), None
