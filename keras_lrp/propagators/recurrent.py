"""Recurrent layers: LSTM, GRU, SimpleRNN, RNN(cell) and Bidirectional (the time loops are in
keras_lrp.recurrent).

Every cell type is one entry of :data:`CELL_RULES` (cell class -> :class:`CellRule`): its forward
pass with caches and its relevance through time, behind one interface, so that
:class:`RecurrentProp` (directions, go_backwards, return_sequences, masks, merge modes) is the
same for every cell. Adding a cell is one entry.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

import keras
import tensorflow as tf

from .. import rules
from ..recurrent import (gru_forward, gru_relevance, lstm_forward, lstm_relevance, simple_rnn_forward,
                         simple_rnn_relevance)
from .base import Context, Propagator, UnsupportedLayerError, register

__all__ = ["RecurrentProp", "CellWeights", "CellRule", "CELL_RULES", "cell_rule_for"]


@dataclass(frozen=True)
class CellWeights:
    """One direction's cell and its weights in the explainer's dtype (Keras layouts)."""

    cell: keras.layers.Layer
    kernel: tf.Tensor            # (e, gates * d)
    recurrent_kernel: tf.Tensor  # (d, gates * d)
    bias: Optional[tf.Tensor]    # (gates * d,), GRU reset_after (2, 3d), or None


#: forward(x_tm (time, batch, e), weights, mask_tm (time, batch, 1) bool or None, ctx)
#:     -> acts: dict of (time, batch, .) tensors, at least "h" (the hidden states, carried over masked steps)
ForwardFn = Callable[[tf.Tensor, CellWeights, Optional[tf.Tensor], Context], Dict[str, tf.Tensor]]
#: relevance(x_tm, acts, weights, r_last (batch, d), r_seq (time, batch, d) or None, mask_tm, ctx)
#:     -> (r_x (time, batch, e), rest (batch,): relevance left on the zero initial states)
RelevanceFn = Callable[[tf.Tensor, Dict[str, tf.Tensor], CellWeights, tf.Tensor, Optional[tf.Tensor],
                        Optional[tf.Tensor], Context], Tuple[tf.Tensor, tf.Tensor]]


@dataclass(frozen=True)
class CellRule:
    """A recurrent cell type's forward pass with caches and its LRP rule through time."""

    name: str
    forward: ForwardFn
    relevance: RelevanceFn


def _lstm_forward(x, w: CellWeights, mask, ctx: Context):
    return lstm_forward(x, w.kernel, w.recurrent_kernel, w.bias, w.cell.activation, w.cell.recurrent_activation,
                        mask, ctx.gate_rule)


def _lstm_relevance(x, acts, w: CellWeights, r_last, r_seq, mask, ctx: Context):
    return lstm_relevance(x, acts, w.kernel, w.recurrent_kernel, w.bias, r_last, ctx.eps, ctx.gate_rule, r_seq,
                          mask, w.cell.activation)


def _gru_forward(x, w: CellWeights, mask, ctx: Context):
    return gru_forward(x, w.kernel, w.recurrent_kernel, w.bias, w.cell.activation, w.cell.recurrent_activation,
                       w.cell.reset_after, mask, ctx.gate_rule)


def _gru_relevance(x, acts, w: CellWeights, r_last, r_seq, mask, ctx: Context):
    return gru_relevance(x, acts, w.kernel, w.recurrent_kernel, w.bias, r_last, ctx.eps, w.cell.reset_after,
                         ctx.gate_rule, r_seq, mask)


def _simple_rnn_forward(x, w: CellWeights, mask, ctx: Context):
    return simple_rnn_forward(x, w.kernel, w.recurrent_kernel, w.bias, w.cell.activation, mask)


def _simple_rnn_relevance(x, acts, w: CellWeights, r_last, r_seq, mask, ctx: Context):
    return simple_rnn_relevance(x, acts, w.kernel, w.recurrent_kernel, w.bias, r_last, ctx.eps, r_seq, mask)


#: cell class -> its rule; subclasses (e.g. ``LRP_LSTMCell``) use their nearest registered base.
CELL_RULES: Dict[type, CellRule] = {
    keras.layers.LSTMCell: CellRule("LSTM", _lstm_forward, _lstm_relevance),
    keras.layers.GRUCell: CellRule("GRU", _gru_forward, _gru_relevance),
    keras.layers.SimpleRNNCell: CellRule("SimpleRNN", _simple_rnn_forward, _simple_rnn_relevance),
}


def cell_rule_for(rnn) -> Optional[CellRule]:
    """The :class:`CellRule` of an RNN layer's cell (most specific registered class), or None."""
    cell = getattr(rnn, "cell", None)
    return next((CELL_RULES[c] for c in type(cell).__mro__ if c in CELL_RULES), None)


@register(keras.layers.RNN, keras.layers.Bidirectional,
          rule="epsilon-rule on every sum (SimpleRNN: over [x_t, h_{t-1}], N = d + e), the gate rule on every "
               "gate x signal product; Bidirectional "
               "sum / ave: epsilon-rule over the two directions (concat, sum, ave, None)")
class RecurrentProp(Propagator):
    """LSTM / GRU / SimpleRNN / RNN(a cell of :data:`CELL_RULES`) and their Bidirectional wrapper."""

    accepts_gate_rules = True   # a Composite may choose this layer's gate rule

    def __init__(self, layer, ctx, is_output=False):
        super().__init__(layer, ctx.with_gate_rule(ctx.gate_rule_for(layer)), is_output)
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
            if cell_rule_for(rnn) is None:
                names = ", ".join(c.__name__ for c in CELL_RULES)
                raise UnsupportedLayerError(
                    layer, f"it wraps {type(getattr(rnn, 'cell', rnn)).__name__}; supported cells: {names}.")
            # (stateful=True: explained from the zero state, whatever state the layer holds)
            for flag, why in (("return_state", "return_state=True outputs are not supported"),):
                if getattr(rnn, flag, False):
                    raise UnsupportedLayerError(layer, f"{flag}=True ({why}).")
        self.cell_rule = cell_rule_for(self.directions[0])
        if len({cell_rule_for(r) for r in self.directions}) != 1:
            raise UnsupportedLayerError(layer, "its two directions use different cell types.")
        self.return_sequences = self.directions[0].return_sequences
        self.n_outputs = 2 if self.merge_mode is None else 1

    def _run(self, rnn, x_tm, mask_tm):
        cell, ctx = rnn.cell, self.ctx
        weights = CellWeights(cell, ctx.weight(cell.kernel), ctx.weight(cell.recurrent_kernel),
                              ctx.weight(cell.bias) if cell.use_bias else None)
        if rnn.go_backwards:
            x_tm = tf.reverse(x_tm, [0])
            mask_tm = None if mask_tm is None else tf.reverse(mask_tm, [0])
        acts = self.cell_rule.forward(x_tm, weights, mask_tm, ctx)
        h = acts["h"]
        if self.return_sequences:
            if mask_tm is not None and rnn.zero_output_for_mask:
                h = tf.where(mask_tm, h, tf.zeros_like(h))
            y = tf.reverse(h, [0]) if (rnn.go_backwards and self.merge_mode != "single") else h
            y = tf.transpose(y, [1, 0, 2])
        else:
            y = h[-1]
        return y, (x_tm, mask_tm, acts, weights)

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
        return rules.elementwise_sum(parts, parts[0] + parts[1], r_outs[0], self.ctx.eps)

    def relevance(self, cache, r_outs):
        ys, caches = cache
        r_in, rest = 0, 0
        for rnn, (x_tm, mask_tm, acts, weights), r in zip(
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
            r_x, r0 = self.cell_rule.relevance(x_tm, acts, weights, r_last, r_seq, mask_tm, self.ctx)
            r_in += tf.reverse(r_x, [0]) if rnn.go_backwards else r_x
            rest += r0 + dropped
        return [tf.transpose(r_in, [1, 0, 2])], rest
