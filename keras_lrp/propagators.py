"""One propagator per Keras layer type: its forward pass (with what LRP needs cached) and its rule.

The rules, in one place (``R`` is relevance, ``eps``/``bias_factor`` the epsilon-rule of
:mod:`keras_lrp.rules`, gate rules as in :mod:`keras_lrp.recurrent`):

==========================================  =====================================================
layer                                       rule
==========================================  =====================================================
Embedding                                   the walk stops at its output (relevance per vector)
Dense, TimeDistributed(Dense)               epsilon-rule over the kernel (N = input units);
                                            the activation passes R unchanged
Conv1D                                      epsilon-rule over the kernel (N = connected inputs)
AveragePooling1D, GlobalAveragePooling1D    epsilon-rule over the (masked) average
MaxPooling1D, GlobalMaxPooling1D            winner-take-all: R goes to the maximum
Add                                         epsilon-rule over the summands (N = number of inputs)
Concatenate, Flatten, Reshape               R is split / reshaped back, unchanged
Activation, Dropout, SpatialDropout1D,      identity at inference: R passes unchanged
GaussianNoise, GaussianDropout, Masking     (Masking: exactly 0 at masked steps)
LSTM, GRU, RNN(LSTMCell / GRUCell),         epsilon-rule on every sum, the gate rule on every
Bidirectional (concat, sum, ave, None)      gate x signal product; sum / ave: epsilon-rule over
                                            the two directions
==========================================  =====================================================

The output layer's activation is never applied: the explained score is its pre-activation.
Anything else raises :class:`UnsupportedLayerError` before any computation.
"""
from __future__ import annotations

from typing import List

import keras
import tensorflow as tf

from . import rules
from .recurrent import GATE_RULES, gru_forward, gru_relevance, lstm_forward, lstm_relevance
from .rules import Epsilon

__all__ = ["UnsupportedLayerError", "Context", "propagator_for", "IDENTITY_LAYERS"]


class UnsupportedLayerError(ValueError):
    """A layer the reverse walk has no propagation rule for (or in a configuration it cannot handle)."""

    def __init__(self, layer, why: str):
        super().__init__(
            f"layer {layer.name!r} ({type(layer).__name__}) is not supported by keras_lrp: {why}")
        self.layer = layer


class Context:
    """What every propagator needs to know: dtype and the rules."""

    def __init__(self, dtype: str, eps: Epsilon, gate_rule: str):
        if gate_rule not in GATE_RULES:
            raise ValueError(f"rule must be one of {GATE_RULES}, got {gate_rule!r}.")
        self.dtype, self.eps, self.gate_rule = dtype, eps, gate_rule

    def weight(self, variable) -> tf.Tensor:
        return tf.cast(variable.value, self.dtype)


IDENTITY_LAYERS = (keras.layers.Dropout, keras.layers.SpatialDropout1D, keras.layers.GaussianNoise,
                   keras.layers.GaussianDropout, keras.layers.AlphaDropout, keras.layers.Activation,
                   keras.layers.ActivityRegularization)


class Propagator:
    """Base: a single-input single-output layer. Subclasses implement ``forward1`` and ``relevance1``."""

    def __init__(self, layer, ctx: Context, is_output: bool = False):
        self.layer, self.ctx, self.is_output = layer, ctx, is_output

    def out_mask(self, x, mask):
        if mask is None or not self.layer.supports_masking:
            return None
        return self.layer.compute_mask(x, mask)

    def forward(self, inputs: List, masks: List):
        y, cache = self.forward1(inputs[0], masks[0])
        return [y], [self.out_mask(inputs[0], masks[0])], cache

    def relevance(self, cache, r_outs: List):
        r_in, rest = self.relevance1(cache, r_outs[0])
        return [r_in], rest

    def forward1(self, x, mask):
        raise NotImplementedError

    def relevance1(self, cache, r):
        raise NotImplementedError


# --------------------------------------------------------------------------- identity / reshaping

class Identity(Propagator):
    """Layers that are the identity (or element-wise) at inference: R passes unchanged."""

    def forward1(self, x, mask):
        if self.is_output or not isinstance(self.layer, keras.layers.Activation):
            return x, None
        return self.layer.activation(x), None

    def relevance1(self, cache, r):
        return r, None


class MaskingProp(Propagator):
    """``y = x * keep`` with keep = 0 at timesteps equal to ``mask_value``: R passes where kept."""

    def out_mask(self, x, mask):
        return self.layer.compute_mask(x, mask)

    def forward1(self, x, mask):
        keep = tf.reduce_any(tf.not_equal(x, tf.cast(self.layer.mask_value, x.dtype)), axis=-1, keepdims=True)
        keep = tf.cast(keep, x.dtype)
        return x * keep, keep

    def relevance1(self, keep, r):
        return r * keep, None


class ReshapeProp(Propagator):
    """Flatten and Reshape: relevance is reshaped back."""

    def forward1(self, x, mask):
        # the static output shape where Keras can resolve it (a -1 or None stays dynamic)
        static = self.layer.compute_output_shape((None,) + tuple(x.shape[1:]))[1:]
        if isinstance(self.layer, keras.layers.Flatten):
            target = [static[0] if static[0] is not None else -1]
        else:
            target = [d if d is not None else -1 for d in static]
        return tf.reshape(x, [tf.shape(x)[0]] + target), tf.shape(x)

    def relevance1(self, shape, r):
        return tf.reshape(r, shape), None


class ConcatenateProp(Propagator):
    def forward(self, inputs, masks):
        y = tf.concat(inputs, axis=self.layer.axis)
        out_mask = self.layer.compute_mask(inputs, masks) if any(m is not None for m in masks) else None
        return [y], [out_mask], [x.shape[self.layer.axis] for x in inputs]

    def relevance(self, sizes, r_outs):
        return tf.split(r_outs[0], sizes, axis=self.layer.axis), None


class AddProp(Propagator):
    """z = sum of the inputs: epsilon-rule, each input a contribution (N = number of inputs)."""

    def forward(self, inputs, masks):
        z = tf.add_n(inputs)
        out_mask = self.layer.compute_mask(inputs, masks) if any(m is not None for m in masks) else None
        return [z], [out_mask], (inputs, z)

    def relevance(self, cache, r_outs):
        inputs, z = cache
        s = r_outs[0] * rules.inverse_denominator(z, self.ctx.eps)
        share = 0.0
        if self.ctx.eps.has_bias_share:
            share = self.ctx.eps.bias_factor * rules.stabilizer(z, self.ctx.eps.eps) * s / len(inputs)
        return [x * s + share for x in inputs], None


# --------------------------------------------------------------------------- linear layers

def _last_axis_matmul(w):
    return lambda t: tf.einsum("...d,dm->...m", t, w)


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


class DenseProp(Propagator):
    """``y = activation(x W + b)`` on the last axis, epsilon-rule over W (N = input units)."""

    def __init__(self, layer, ctx, is_output=False):
        inner = layer.layer if isinstance(layer, keras.layers.TimeDistributed) else layer
        super().__init__(layer, ctx, is_output)
        self.dense = inner

    def forward1(self, x, mask):
        return linear_forward(self, self.dense, _last_axis_matmul, x)

    def relevance1(self, cache, r):
        x, w, b, z = cache
        return rules.linear(x, w, b, z, r, self.ctx.eps, fan_in=w.shape[0]), None


def gradient_linear(f, x, z, bias, r, eps: Epsilon, connections=None):
    """Epsilon-rule through a linear map given as a function ``f(x)`` (no bias), ``z = f(x) + bias``.

    ``R_x = x * (f^T s) + share`` with ``s = R / (z + eps sign z)``; ``f^T s`` is the gradient of
    ``<f(x), s>``. The bias/stabiliser share of output m goes to the N_m inputs connected to it,
    ``connections`` being ``f`` with every weight set to 1 (default: ``f`` itself, right for maps
    with equal positive weights such as average pooling).
    """
    s = tf.stop_gradient(r * rules.inverse_denominator(z, eps))
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = f(x)
    r_x = x * tape.gradient(y, x, output_gradients=s)
    if eps.has_bias_share:
        conn = connections or f
        a = rules.stabilizer(z, eps.eps) + (0 if bias is None else bias)
        counts = conn(tf.ones_like(x))
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = conn(x)
        r_x += tape.gradient(y, x, output_gradients=eps.bias_factor * tf.math.divide_no_nan(a * s, counts))
    return r_x


class Conv1DProp(Propagator):
    """Conv1D (channels_last, groups=1): epsilon-rule over the kernel, N = connected inputs."""

    def __init__(self, layer, ctx, is_output=False):
        super().__init__(layer, ctx, is_output)
        if layer.data_format != "channels_last" or layer.groups != 1:
            raise UnsupportedLayerError(layer, "only channels_last Conv1D with groups=1 is supported.")

    def _conv(self, kernel):
        layer = self.layer

        def f(x):
            if layer.padding == "causal":
                left = layer.dilation_rate[0] * (layer.kernel_size[0] - 1)
                x = tf.pad(x, [[0, 0], [left, 0], [0, 0]])
            padding = "valid" if layer.padding == "causal" else layer.padding
            return keras.ops.conv(x, kernel, strides=layer.strides, padding=padding,
                                  dilation_rate=layer.dilation_rate)
        return f

    def forward1(self, x, mask):
        return linear_forward(self, self.layer, self._conv, x)

    def relevance1(self, cache, r):
        x, w, b, z = cache
        return gradient_linear(self._conv(w), x, z, b, r, self.ctx.eps, self._conv(tf.ones_like(w))), None


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
            return lambda x: tf.reduce_max(x, axis=1, keepdims=layer.keepdims)
        if isinstance(layer, keras.layers.GlobalAveragePooling1D):
            def mean(x):   # the masked mean, as Keras computes it
                m = tf.ones_like(x[..., :1]) if mask is None else tf.cast(mask, x.dtype)[:, :, None]
                return (tf.reduce_sum(x * m, axis=1, keepdims=layer.keepdims)
                        / tf.reduce_sum(m, axis=1, keepdims=layer.keepdims))
            return mean
        pool = keras.ops.max_pool if self.is_max else keras.ops.average_pool
        return lambda x: pool(x, layer.pool_size, layer.strides, layer.padding)

    def forward1(self, x, mask):
        f = self._f(mask)
        return f(x), (x, f)

    def relevance1(self, cache, r):
        x, f = cache
        if self.is_max:
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = f(x)
            # the gradient of a max routes each output's relevance to its (first) maximum
            return tape.gradient(y, x, output_gradients=r), None
        return gradient_linear(f, x, f(x), None, r, self.ctx.eps), None


# --------------------------------------------------------------------------- recurrent layers

_LSTM, _GRU = "lstm", "gru"


def _rnn_kind(rnn):
    cell = getattr(rnn, "cell", None)
    if isinstance(cell, keras.layers.LSTMCell):
        return _LSTM
    if isinstance(cell, keras.layers.GRUCell):
        return _GRU
    return None


class RecurrentProp(Propagator):
    """LSTM / GRU / RNN(LSTMCell | GRUCell) and their Bidirectional wrapper."""

    def __init__(self, layer, ctx, is_output=False):
        super().__init__(layer, ctx, is_output)
        if isinstance(layer, keras.layers.Bidirectional):
            if layer.merge_mode not in ("concat", "sum", "ave", None):
                raise UnsupportedLayerError(
                    layer, f"merge_mode={layer.merge_mode!r}; supported: 'concat', 'sum', 'ave', None.")
            self.directions = [layer.forward_layer, layer.backward_layer]
            self.merge_mode = layer.merge_mode
        else:
            self.directions = [layer]
            self.merge_mode = "single"
        for rnn in self.directions:
            kind = _rnn_kind(rnn)
            if kind is None:
                raise UnsupportedLayerError(
                    layer, f"it wraps {type(getattr(rnn, 'cell', rnn)).__name__}; supported cells are LSTM and GRU.")
            for flag, why in (("stateful", "stateful RNNs carry state between calls"),
                              ("return_state", "return_state=True outputs are not supported")):
                if getattr(rnn, flag, False):
                    raise UnsupportedLayerError(layer, f"{flag}=True ({why}).")
        self.kind = _rnn_kind(self.directions[0])
        if len({_rnn_kind(r) for r in self.directions}) != 1:
            raise UnsupportedLayerError(layer, "its two directions use different cell types.")
        self.return_sequences = self.directions[0].return_sequences
        self.n_outputs = 2 if self.merge_mode is None else 1

    def _run(self, rnn, x_tm, mask_tm):
        cell, ctx = rnn.cell, self.ctx
        k, u = ctx.weight(cell.kernel), ctx.weight(cell.recurrent_kernel)
        b = ctx.weight(cell.bias) if cell.use_bias else None
        if rnn.go_backwards:
            x_tm = tf.reverse(x_tm, [0])
            mask_tm = None if mask_tm is None else tf.reverse(mask_tm, [0])
        if self.kind == _LSTM:
            acts = lstm_forward(x_tm, k, u, b, cell.activation, cell.recurrent_activation, mask_tm,
                                ctx.gate_rule)
        else:
            acts = gru_forward(x_tm, k, u, b, cell.activation, cell.recurrent_activation,
                               cell.reset_after, mask_tm, ctx.gate_rule)
        h = acts["h"]
        if self.return_sequences:
            if mask_tm is not None and rnn.zero_output_for_mask:
                h = tf.where(mask_tm, h, tf.zeros_like(h))
            y = tf.reverse(h, [0]) if (rnn.go_backwards and self.merge_mode != "single") else h
            y = tf.transpose(y, [1, 0, 2])
        else:
            y = h[-1]
        return y, (x_tm, mask_tm, acts, k, u, b)

    def forward(self, inputs, masks):
        x, mask = inputs[0], masks[0]
        x_tm = tf.transpose(x, [1, 0, 2])
        mask_tm = None if mask is None else tf.transpose(tf.cast(mask, tf.bool))[:, :, None]
        ys, caches = zip(*[self._run(rnn, x_tm, mask_tm) for rnn in self.directions])
        if self.merge_mode in ("single", "concat"):
            outputs = [tf.concat(ys, axis=-1)]
        elif self.merge_mode == "sum":
            outputs = [ys[0] + ys[1]]
        elif self.merge_mode == "ave":
            outputs = [(ys[0] + ys[1]) / 2]
        else:
            outputs = list(ys)
        out_mask = mask if (mask is not None and self.return_sequences) else None
        return outputs, [out_mask] * len(outputs), (ys, caches)

    def _split_output_relevance(self, ys, r_outs):
        if self.merge_mode in ("single", "concat"):
            return tf.split(r_outs[0], len(self.directions), axis=-1)
        if self.merge_mode is None:
            return r_outs
        # sum / ave: z = y_f + y_b (times 1/2): epsilon-rule over the two directions (N = 2)
        scale = 0.5 if self.merge_mode == "ave" else 1.0
        parts = [scale * y for y in ys]
        z = parts[0] + parts[1]
        s = r_outs[0] * rules.inverse_denominator(z, self.ctx.eps)
        share = 0.0
        if self.ctx.eps.has_bias_share:
            share = self.ctx.eps.bias_factor * rules.stabilizer(z, self.ctx.eps.eps) * s / 2
        return [p * s + share for p in parts]

    def relevance(self, cache, r_outs):
        ys, caches = cache
        r_in, rest = 0, 0
        for rnn, (x_tm, mask_tm, acts, k, u, b), r in zip(
                self.directions, caches, self._split_output_relevance(ys, r_outs)):
            dropped = 0
            if self.return_sequences:
                r_seq = tf.transpose(r, [1, 0, 2])
                if rnn.go_backwards and self.merge_mode != "single":
                    r_seq = tf.reverse(r_seq, [0])
                if mask_tm is not None and rnn.zero_output_for_mask:
                    # the output is the constant 0 at masked steps: what reaches it is parked in rest
                    dropped = tf.reduce_sum(tf.where(mask_tm, tf.zeros_like(r_seq), r_seq), axis=[0, 2])
                    r_seq = tf.where(mask_tm, r_seq, tf.zeros_like(r_seq))
                r_last = tf.zeros_like(r_seq[0])
            else:
                r_last, r_seq = r, None
            if self.kind == _LSTM:
                r_x, r0 = lstm_relevance(x_tm, acts, k, u, b, r_last, self.ctx.eps, self.ctx.gate_rule,
                                         r_seq, mask_tm, rnn.cell.activation)
            else:
                r_x, r0 = gru_relevance(x_tm, acts, k, u, b, r_last, self.ctx.eps, rnn.cell.reset_after,
                                        self.ctx.gate_rule, r_seq, mask_tm)
            r_in += tf.reverse(r_x, [0]) if rnn.go_backwards else r_x
            rest += r0 + dropped
        return [tf.transpose(r_in, [1, 0, 2])], rest


# --------------------------------------------------------------------------- dispatch

_FEEDFORWARD = [
    ((keras.layers.Dense,), DenseProp),
    ((keras.layers.Conv1D,), Conv1DProp),
    ((keras.layers.MaxPooling1D, keras.layers.AveragePooling1D, keras.layers.GlobalMaxPooling1D,
      keras.layers.GlobalAveragePooling1D), PoolingProp),
    ((keras.layers.Flatten, keras.layers.Reshape), ReshapeProp),
    ((keras.layers.Concatenate,), ConcatenateProp),
    ((keras.layers.Add,), AddProp),
    ((keras.layers.Masking,), MaskingProp),
    (IDENTITY_LAYERS, Identity),
]


def propagator_for(layer, ctx: Context, is_output: bool = False) -> Propagator:
    """The propagator for ``layer``, or :class:`UnsupportedLayerError` saying why there is none."""
    if isinstance(layer, keras.layers.TimeDistributed):
        if isinstance(layer.layer, keras.layers.Dense):
            return DenseProp(layer, ctx, is_output)
        raise UnsupportedLayerError(layer, "TimeDistributed is supported around Dense only.")
    if isinstance(layer, (keras.layers.Bidirectional, keras.layers.RNN)):
        return RecurrentProp(layer, ctx, is_output)
    for classes, prop in _FEEDFORWARD:
        if isinstance(layer, classes):
            return prop(layer, ctx, is_output)
    if isinstance(layer, keras.layers.Lambda):
        why = "Lambda layers run arbitrary code; LRP needs a rule per operation. Rewrite it as Keras layers."
    elif isinstance(layer, keras.Model):
        why = "nested models are not supported; build the model from its layers directly."
    else:
        why = "there is no LRP rule for this layer type (see keras_lrp.propagators for the supported ones)."
    raise UnsupportedLayerError(layer, why)
