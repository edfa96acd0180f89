"""Recurrent layers: LSTM, GRU, RNN(cell) and Bidirectional (the time loops are in keras_lrp.recurrent)."""
from __future__ import annotations

import keras
import tensorflow as tf

from .. import rules
from ..recurrent import gru_forward, gru_relevance, lstm_forward, lstm_relevance
from .base import Propagator, UnsupportedLayerError, register

__all__ = ["RecurrentProp"]


_LSTM, _GRU = "lstm", "gru"


def _rnn_kind(rnn):
    cell = getattr(rnn, "cell", None)
    if isinstance(cell, keras.layers.LSTMCell):
        return _LSTM
    if isinstance(cell, keras.layers.GRUCell):
        return _GRU
    return None


@register(keras.layers.RNN, keras.layers.Bidirectional,
          rule="epsilon-rule on every sum, the gate rule on every gate x signal product; Bidirectional "
               "sum / ave: epsilon-rule over the two directions (concat, sum, ave, None)")
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
