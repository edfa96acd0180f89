"""Recurrent layers: LSTM, GRU, SimpleRNN, RNN(cell) and Bidirectional (the time loops are in
keras_lrp.recurrent).

Every cell type is one entry of :data:`CELL_RULES` (cell class -> :class:`CellRule`): its forward
pass with caches and its relevance through time, behind one interface, so that
:class:`RecurrentProp` (directions, go_backwards, return_sequences, return_state, initial_state,
masks, merge modes) is the same for every cell. Adding a cell is one entry.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import keras
import tensorflow as tf
from keras import ops, tree

from .. import rules
from ..recurrent import (RecurrentRelevance, gru_forward, gru_relevance, lstm_forward, lstm_relevance,
                         simple_rnn_forward, simple_rnn_relevance)
from ..graph import Ref
from .base import Context, Propagator, UnsupportedLayerError, register

__all__ = ["RecurrentProp", "CellWeights", "CellRule", "CELL_RULES", "cell_rule_for"]


@dataclass(frozen=True)
class CellWeights:
    """One direction's cell and its weights in the explainer's dtype (Keras layouts)."""

    cell: keras.layers.Layer
    kernel: tf.Tensor            # (e, gates * d)
    recurrent_kernel: tf.Tensor  # (d, gates * d)
    bias: Optional[tf.Tensor]    # (gates * d,), GRU reset_after (2, 3d), or None


#: forward(x_tm (time, batch, e), weights, mask_tm (time, batch, 1) bool or None, ctx,
#:         initial_state: one (batch, d) tensor per state, or None for zeros)
#:     -> acts: dict of tensors, at least the carried states of ``CellRule.states`` (time, batch, d)
ForwardFn = Callable[[tf.Tensor, CellWeights, Optional[tf.Tensor], Context, Optional[Sequence[tf.Tensor]]],
                     Dict[str, tf.Tensor]]
#: relevance(x_tm, acts, weights, r_last (one (batch, d) per state: the relevance on the last states),
#:           r_seq (time, batch, d) or None, mask_tm, ctx) -> RecurrentRelevance
RelevanceFn = Callable[[tf.Tensor, Dict[str, tf.Tensor], CellWeights, Sequence[tf.Tensor], Optional[tf.Tensor],
                        Optional[tf.Tensor], Context], RecurrentRelevance]


@dataclass(frozen=True)
class CellRule:
    """A recurrent cell type's forward pass with caches and its LRP rule through time; ``states``
    names the acts of its states in Keras's state order (an RNN's returned / initial states)."""

    name: str
    forward: ForwardFn
    relevance: RelevanceFn
    states: Tuple[str, ...] = ("h",)


def _lstm_forward(x, w: CellWeights, mask, ctx: Context, initial_state):
    return lstm_forward(x, w.kernel, w.recurrent_kernel, w.bias, w.cell.activation, w.cell.recurrent_activation,
                        mask, ctx.gate_rule, initial_state)


def _lstm_relevance(x, acts, w: CellWeights, r_last, r_seq, mask, ctx: Context):
    r_h_last, r_c_last = r_last
    return lstm_relevance(x, acts, w.kernel, w.recurrent_kernel, w.bias, r_h_last, ctx.eps, ctx.gate_rule, r_seq,
                          mask, w.cell.activation, r_c_last)


def _gru_forward(x, w: CellWeights, mask, ctx: Context, initial_state):
    return gru_forward(x, w.kernel, w.recurrent_kernel, w.bias, w.cell.activation, w.cell.recurrent_activation,
                       w.cell.reset_after, mask, ctx.gate_rule, initial_state)


def _gru_relevance(x, acts, w: CellWeights, r_last, r_seq, mask, ctx: Context):
    return gru_relevance(x, acts, w.kernel, w.recurrent_kernel, w.bias, r_last[0], ctx.eps, w.cell.reset_after,
                         ctx.gate_rule, r_seq, mask)


def _simple_rnn_forward(x, w: CellWeights, mask, ctx: Context, initial_state):
    return simple_rnn_forward(x, w.kernel, w.recurrent_kernel, w.bias, w.cell.activation, mask, initial_state)


def _simple_rnn_relevance(x, acts, w: CellWeights, r_last, r_seq, mask, ctx: Context):
    return simple_rnn_relevance(x, acts, w.kernel, w.recurrent_kernel, w.bias, r_last[0], ctx.eps, r_seq, mask)


#: cell class -> its rule; subclasses (e.g. ``LRP_LSTMCell``) use their nearest registered base.
CELL_RULES: Dict[type, CellRule] = {
    keras.layers.LSTMCell: CellRule("LSTM", _lstm_forward, _lstm_relevance, ("h", "c")),
    keras.layers.GRUCell: CellRule("GRU", _gru_forward, _gru_relevance),
    keras.layers.SimpleRNNCell: CellRule("SimpleRNN", _simple_rnn_forward, _simple_rnn_relevance),
}


def cell_rule_for(rnn) -> Optional[CellRule]:
    """The :class:`CellRule` of an RNN layer's cell (most specific registered class), or None."""
    cell = getattr(rnn, "cell", None)
    return next((CELL_RULES[c] for c in type(cell).__mro__ if c in CELL_RULES), None)


class _Direction(NamedTuple):
    """One direction's forward pass as its relevance needs it, in processing order (reversed time
    for ``go_backwards``)."""

    x: tf.Tensor                  # (time, batch, e)
    mask: Optional[tf.Tensor]     # (time, batch, 1) bool, the mask the recurrence applied, or None
    keep: Optional[tf.Tensor]     # (time, batch, 1) bool: where the output is h_t (elsewhere the constant 0)
    acts: Dict[str, tf.Tensor]
    weights: CellWeights


def _output_steps(mask_tm: Optional[tf.Tensor], zero_output_for_mask: bool) -> Optional[tf.Tensor]:
    """Where an RNN outputs its hidden state, (time, batch, 1) bool, or None (at every step). At a
    masked step Keras outputs 0 (``zero_output_for_mask``) or its previous output: the carried state
    once a real step has passed, the constant 0 before it (whatever the initial state)."""
    if mask_tm is None:
        return None
    if zero_output_for_mask:
        return mask_tm
    return ops.cumsum(ops.cast(mask_tm, "int32"), axis=0) > 0


def _split_constant_outputs(r: tf.Tensor, keep: tf.Tensor, axis) -> Tuple[tf.Tensor, tf.Tensor]:
    """``(r where the output is h_t (0 elsewhere), the rest summed over axis (batch,))``: relevance
    that reaches an output that is the constant 0 goes to rest."""
    zeros = ops.zeros_like(r)
    return ops.where(keep, r, zeros), ops.sum(ops.where(keep, zeros, r), axis=axis)


def _is_tensor(value) -> bool:
    return isinstance(value, (keras.KerasTensor, Ref)) or ops.is_tensor(value)


class _InitialState(NamedTuple):
    """Where one initial state comes from: the node input at ``position``, or (position None) a ``constant``."""

    position: Optional[int]
    constant: Any = None


class _CallLayout(NamedTuple):
    """A call's arguments as the propagator reads them from the node's inputs and masks."""

    sequence: int                  # position of the sequence among the node's inputs
    initial: List[_InitialState]   # Keras's flat order (forward direction first); empty: zero states
    mask: Optional[int]            # position of the mask the recurrence applies (None: none applies)
    mask_given: bool               # whether that mask was passed explicitly (mask=)


_PLAIN_CALL = _CallLayout(sequence=0, initial=[], mask=0, mask_given=False)


@register(keras.layers.RNN, keras.layers.Bidirectional,
          rule="epsilon-rule on every sum (SimpleRNN: over [x_t, h_{t-1}], N = d + e), the gate rule on every "
               "gate x signal product; Bidirectional sum / ave: epsilon-rule over the two directions (concat, "
               "sum, ave, None); returned states: their relevance enters the last step's h (c); initial states "
               "are the first step's h_{t-1} (c_{t-1}): what reaches them goes to the tensors given (rest for "
               "zero or constant states)")
class RecurrentProp(Propagator):
    """LSTM / GRU / SimpleRNN / RNN(a cell of :data:`CELL_RULES`) and their Bidirectional wrapper.

    Node inputs: the sequence and the initial states given as tensors (Keras's state order, forward
    direction first), in call order (:meth:`bind` finds them). Node outputs: the output (two with
    ``merge_mode=None``), then with ``return_state`` every direction's final states (LSTM: h, c;
    GRU / SimpleRNN: h).
    """

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
        self.cell_rule = cell_rule_for(self.directions[0])
        if len({cell_rule_for(r) for r in self.directions}) != 1:
            raise UnsupportedLayerError(layer, "its two directions use different cell types.")
        self.return_sequences = self.directions[0].return_sequences
        self.return_state = bool(getattr(layer, "return_state", False))
        self.n_states = len(self.cell_rule.states)
        self.n_sequence_outputs = 2 if self.merge_mode is None else 1
        self.n_outputs = self.n_sequence_outputs + (len(self.directions) * self.n_states if self.return_state else 0)
        self.layout = _PLAIN_CALL

    def bind(self, node, walk) -> None:
        """Called by the walk with this call's graph node: where the sequence, the initial states (node
        inputs, or constants) and the applied mask are. Keras fills ``mask`` from the sequence's mask
        only when the sequence is the call's one tensor argument: with tensor initial states only an
        explicit ``mask=`` applies."""
        args, kwargs = node.args, node.kwargs
        sequences = args[0] if args else kwargs.get("sequences")
        initial = args[1] if len(args) > 1 else kwargs.get("initial_state")
        flat = [] if initial is None else list(tree.flatten(initial))
        expected = len(self.directions) * self.n_states
        if flat and len(flat) != expected:
            raise UnsupportedLayerError(self.layer, f"initial_state has {len(flat)} tensors; expected {expected} "
                                                    f"({', '.join(self.cell_rule.states)} per direction).")
        unused: Dict[int, List[int]] = {}   # tensor key -> its positions among the node's inputs
        for position, key in enumerate(node.inputs):
            unused.setdefault(key, []).append(position)

        def position_of(ref) -> Optional[int]:
            positions = unused.get(ref.key) if isinstance(ref, Ref) else None
            return positions.pop(0) if positions else None

        sequence = position_of(sequences)
        states = [_InitialState(position_of(t)) if isinstance(t, Ref) else _InitialState(None, t) for t in flat]
        if sequence is None or any(s.position is None and s.constant is None for s in states) or any(
                unused.values()):
            raise UnsupportedLayerError(self.layer, "its tensor arguments are not a sequence and its initial_state: "
                                                    "call it as layer(x), layer(x, initial_state=[...]).")
        given = [p for p, m in enumerate(node.masks) if m is not None]
        fills = not any(_is_tensor(t) for t in flat)
        self.layout = _CallLayout(sequence, states, given[0] if given else (sequence if fills else None), bool(given))

    def _initial_states(self, inputs: Sequence[tf.Tensor]) -> List[Optional[List[tf.Tensor]]]:
        """Per direction, its initial states (None: zeros), from the node's inputs and the constants."""
        if not self.layout.initial:
            return [None] * len(self.directions)
        batch = ops.shape(inputs[self.layout.sequence])[0]
        flat = [inputs[s.position] if s.position is not None
                else ops.broadcast_to(ops.cast(s.constant, self.ctx.dtype), (batch, ops.shape(s.constant)[-1]))
                for s in self.layout.initial]
        n = self.n_states
        return [flat[i * n:(i + 1) * n] for i in range(len(self.directions))]

    def _run(self, rnn, x_tm, mask_tm, initial_state):
        cell, ctx = rnn.cell, self.ctx
        weights = CellWeights(cell, ctx.weight(cell.kernel), ctx.weight(cell.recurrent_kernel),
                              ctx.weight(cell.bias) if cell.use_bias else None)
        if rnn.go_backwards:
            x_tm = tf.reverse(x_tm, [0])
            mask_tm = None if mask_tm is None else tf.reverse(mask_tm, [0])
        acts = self.cell_rule.forward(x_tm, weights, mask_tm, ctx, initial_state)
        keep = _output_steps(mask_tm, rnn.zero_output_for_mask)
        h = acts["h"]
        if self.return_sequences:
            if keep is not None:
                h = ops.where(keep, h, ops.zeros_like(h))
            y = tf.reverse(h, [0]) if (rnn.go_backwards and self.merge_mode != "single") else h
            y = tf.transpose(y, [1, 0, 2])
        else:
            y = h[-1] if keep is None else ops.where(keep[-1], h[-1], ops.zeros_like(h[-1]))
        final_states = [acts[name][-1] for name in self.cell_rule.states]
        return y, final_states, _Direction(x_tm, mask_tm, keep, acts, weights)

    def forward(self, inputs, masks):
        call = self.layout
        x_tm = tf.transpose(inputs[call.sequence], [1, 0, 2])
        applied = None if call.mask is None else masks[call.mask]
        mask_tm = None if applied is None else tf.transpose(tf.cast(applied, tf.bool))[:, :, None]
        ys, finals, caches = zip(*[self._run(rnn, x_tm, mask_tm, s)
                                   for rnn, s in zip(self.directions, self._initial_states(inputs))])
        if self.merge_mode in ("single", "concat"):
            outputs = [tf.concat(ys, axis=-1)]
        elif self.merge_mode == "sum":
            outputs = [ys[0] + ys[1]]
        elif self.merge_mode == "ave":
            outputs = [(ys[0] + ys[1]) / 2]
        else:
            outputs = list(ys)
        # Keras's output mask: the mask given, else the sequence's (applied or not)
        mask = masks[call.mask] if call.mask_given else masks[call.sequence]
        out_mask = mask if (mask is not None and self.return_sequences) else None
        out_masks = [out_mask] * len(outputs)
        if self.return_state:
            states = [s for final in finals for s in final]
            outputs += states
            out_masks += [None] * len(states)
        return outputs, out_masks, (ys, caches)

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
        """``r_outs``: one per node output. Returns the sequence's relevance, then one (batch, d) per
        initial state given as a tensor; ``rest``: what reaches zero or constant initial states, and
        the outputs that are the constant 0 (masked steps)."""
        ys, caches = cache
        n_y, n_s = self.n_sequence_outputs, self.n_states
        r_states = r_outs[n_y:]
        r_x, rest, r_initial = 0, 0, []
        for i, (rnn, d, r) in enumerate(zip(self.directions, caches, self._split_output_relevance(ys, r_outs[:n_y]))):
            zeros = ops.zeros_like(d.acts["h"][0])
            r_last = list(r_states[i * n_s:(i + 1) * n_s]) if self.return_state else [zeros] * n_s
            if self.return_sequences:
                r_seq = tf.transpose(r, [1, 0, 2])
                if rnn.go_backwards and self.merge_mode != "single":
                    r_seq = tf.reverse(r_seq, [0])
                if d.keep is not None:
                    r_seq, dropped = _split_constant_outputs(r_seq, d.keep, axis=(0, 2))
                    rest += dropped
            else:   # the output is the last step's h (or the constant 0)
                r_seq = None
                if d.keep is not None:
                    r, dropped = _split_constant_outputs(r, d.keep[-1], axis=-1)
                    rest += dropped
                r_last[0] = r_last[0] + r
            out = self.cell_rule.relevance(d.x, d.acts, d.weights, r_last, r_seq, d.mask, self.ctx)
            r_x += tf.reverse(out.x, [0]) if rnn.go_backwards else out.x
            r_initial += out.states
        r_ins: List[Optional[tf.Tensor]] = [None] * (1 + sum(s.position is not None for s in self.layout.initial))
        r_ins[self.layout.sequence] = tf.transpose(r_x, [1, 0, 2])
        for r, state in zip(r_initial, self.layout.initial or [_InitialState(None, 0.0)] * len(r_initial)):
            if state.position is not None:
                r_ins[state.position] = r
            else:   # zero or constant initial states
                rest += ops.sum(r, axis=-1)
        return r_ins, rest
