"""Recurrent layers: LSTM, GRU, SimpleRNN, ConvLSTM1D, RNN(cell), RNN(StackedRNNCells) and
Bidirectional (the time loops are in keras_lrp.recurrent).

Every cell type is one entry of :data:`CELL_RULES` (cell class -> :class:`CellRule`): its forward
pass with caches and its relevance through time, behind one interface, so that
:class:`RecurrentProp` (directions, go_backwards, return_sequences, return_state, initial_state,
masks, merge modes, stacks of cells) is the same for every cell. Adding a cell is one entry.

A ``StackedRNNCells`` (what ``RNN([cell_1, cell_2])`` builds) runs its cells in one time loop, cell
i + 1 reading cell i's new h_t. That is the same function as a chain of RNN layers, cell 1 (with the
layer's go_backwards) returning its sequence to cell 2 and so on, all in processing order, every cell
with the layer's timestep mask, the last one giving the layer's output; it is explained exactly so,
each cell by its own rule. The stack's states are the cells' states in order (returned and initial
states included).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import keras
from keras import ops, tree
from keras.src.layers.rnn.conv_lstm import ConvLSTMCell   # keras.layers exports ConvLSTM1D, not its cell

from .. import rules
from ..backend import Tensor
from ..recurrent import (ConvMaps, DenseMaps, RecurrentMaps, RecurrentRelevance, gru_forward, gru_relevance,
                         lstm_forward, lstm_relevance, simple_rnn_forward, simple_rnn_relevance)
from ..graph import Ref
from .base import Context, Propagator, UnsupportedLayerError, register

__all__ = ["RecurrentProp", "CellWeights", "CellRule", "CELL_RULES", "cell_rule_for", "cells_of"]


@dataclass(frozen=True)
class CellWeights:
    """One direction's cell and its weights in the explainer's dtype (Keras layouts)."""

    cell: keras.layers.Layer
    kernel: Tensor            # (e, gates * d); ConvLSTM: (k, e, 4d)
    recurrent_kernel: Tensor  # (d, gates * d); ConvLSTM: (k, d, 4d)
    bias: Optional[Tensor]    # (gates * d,), GRU reset_after (2, 3d), or None


#: forward(x_tm (time, batch, e), weights, mask_tm (time, batch, 1) bool or None, ctx,
#:         initial_state: one (batch, d) tensor per state, or None for zeros,
#:         sequence: whether the hidden states of every step are read (else only the last states))
#:     -> acts: dict of tensors, at least ``last``, the last carried states in the order of
#:        ``CellRule.states`` (batch, d) each, and (with ``ctx.caches`` or ``sequence``) the hidden
#:        states ``h`` (time, batch, d); with ``ctx.caches`` also every tensor its relevance function reads
#: (ConvLSTM1D: x_tm (time, batch, length, e), mask_tm (time, batch, 1, 1), states (..., length', d))
ForwardFn = Callable[[Tensor, CellWeights, Optional[Tensor], Context, Optional[Sequence[Tensor]], bool],
                     Dict[str, Tensor]]
#: relevance(x_tm, acts, weights, r_last (one (batch, d) per state: the relevance on the last states),
#:           r_seq (time, batch, d) or None, mask_tm, ctx) -> RecurrentRelevance
RelevanceFn = Callable[[Tensor, Dict[str, Tensor], CellWeights, Sequence[Tensor], Optional[Tensor],
                        Optional[Tensor], Context], RecurrentRelevance]


def _any_configuration(cell) -> Optional[str]:
    return None


@dataclass(frozen=True)
class CellRule:
    """A recurrent cell type's forward pass with caches and its LRP rule through time; ``states``
    names the acts of its states in Keras's state order (an RNN's returned / initial states);
    ``refusal(cell)`` says why a cell of this type is not supported as configured (None: it is)."""

    name: str
    forward: ForwardFn
    relevance: RelevanceFn
    states: Tuple[str, ...] = ("h",)
    refusal: Callable[[keras.layers.Layer], Optional[str]] = _any_configuration


def _lstm_maps(x, w: CellWeights) -> RecurrentMaps:
    """The LSTM's matrices, or a ConvLSTM cell's convolutions over inputs x (time, batch, length, e)."""
    cell = w.cell
    if isinstance(cell, ConvLSTMCell):
        return ConvMaps(w.kernel, w.recurrent_kernel, w.bias, cell.padding, cell.dilation_rate[0], x.shape[2])
    return DenseMaps(w.kernel, w.recurrent_kernel, w.bias)


def _lstm_forward(x, w: CellWeights, mask, ctx: Context, initial_state, sequence: bool):
    return lstm_forward(x, _lstm_maps(x, w), w.cell.activation, w.cell.recurrent_activation, mask, ctx.gate_rule,
                        initial_state, caches=ctx.caches, sequence=sequence)


def _lstm_relevance(x, acts, w: CellWeights, r_last, r_seq, mask, ctx: Context):
    r_h_last, r_c_last = r_last
    return lstm_relevance(x, acts, _lstm_maps(x, w), r_h_last, ctx.eps, ctx.gate_rule, r_seq, mask,
                          w.cell.activation, r_c_last)


def _conv_lstm_refusal(cell) -> Optional[str]:
    if cell.rank != 1:
        return f"ConvLSTM{cell.rank}D is not supported (ConvLSTM1D is)."
    if cell.data_format != "channels_last":
        return f"data_format={cell.data_format!r}; ConvLSTM1D is supported with 'channels_last' inputs."
    if tuple(cell.strides) != (1,):
        return f"strides={cell.strides[0]}; ConvLSTM1D is supported with strides=1 (dilation_rate may be > 1)."
    return None


def _gru_forward(x, w: CellWeights, mask, ctx: Context, initial_state, sequence: bool):
    return gru_forward(x, w.kernel, w.recurrent_kernel, w.bias, w.cell.activation, w.cell.recurrent_activation,
                       w.cell.reset_after, mask, ctx.gate_rule, initial_state, caches=ctx.caches, sequence=sequence)


def _gru_relevance(x, acts, w: CellWeights, r_last, r_seq, mask, ctx: Context):
    return gru_relevance(x, acts, w.kernel, w.recurrent_kernel, w.bias, r_last[0], ctx.eps, w.cell.reset_after,
                         ctx.gate_rule, r_seq, mask)


def _simple_rnn_forward(x, w: CellWeights, mask, ctx: Context, initial_state, sequence: bool):
    return simple_rnn_forward(x, w.kernel, w.recurrent_kernel, w.bias, w.cell.activation, mask, initial_state,
                              caches=ctx.caches, sequence=sequence)


def _simple_rnn_relevance(x, acts, w: CellWeights, r_last, r_seq, mask, ctx: Context):
    return simple_rnn_relevance(x, acts, w.kernel, w.recurrent_kernel, w.bias, r_last[0], ctx.eps, r_seq, mask)


#: cell class -> its rule; subclasses (e.g. ``LRP_LSTMCell``) use their nearest registered base.
CELL_RULES: Dict[type, CellRule] = {
    keras.layers.LSTMCell: CellRule("LSTM", _lstm_forward, _lstm_relevance, ("h", "c")),
    keras.layers.GRUCell: CellRule("GRU", _gru_forward, _gru_relevance),
    keras.layers.SimpleRNNCell: CellRule("SimpleRNN", _simple_rnn_forward, _simple_rnn_relevance),
    ConvLSTMCell: CellRule("ConvLSTM1D", _lstm_forward, _lstm_relevance, ("h", "c"), _conv_lstm_refusal),
}


def _rule_of_cell(cell) -> Optional[CellRule]:
    return next((CELL_RULES[c] for c in type(cell).__mro__ if c in CELL_RULES), None)


def cell_rule_for(rnn) -> Optional[CellRule]:
    """The :class:`CellRule` of an RNN layer's cell (most specific registered class), or None (also for
    a ``StackedRNNCells``: see :func:`cells_of`)."""
    return _rule_of_cell(getattr(rnn, "cell", None))


def cells_of(rnn) -> List[keras.layers.Layer]:
    """An RNN layer's cells in the order they run: a ``StackedRNNCells``'s cells, else its one cell."""
    cell = getattr(rnn, "cell", None)
    return list(cell.cells) if isinstance(cell, keras.layers.StackedRNNCells) else [cell]


class _CellPass(NamedTuple):
    """One cell's forward pass over a direction's sequence (the first cell's input, or the previous
    cell's h), in processing order."""

    rule: CellRule
    x: Tensor                  # (time, batch, e) (ConvLSTM1D: (time, batch, length, e))
    acts: Dict[str, Tensor]
    weights: CellWeights


class _Direction(NamedTuple):
    """One direction's forward pass as its relevance needs it, in processing order (reversed time
    for ``go_backwards``)."""

    mask: Optional[Tensor]     # (time, batch, 1) bool, the mask the recurrence applied, or None
    keep: Optional[Tensor]     # (time, batch, 1) bool: where the output is h_t (elsewhere the constant 0)
    cells: Tuple[_CellPass, ...]  # in the order they run (one unless a StackedRNNCells)


def _output_steps(mask_tm: Optional[Tensor], zero_output_for_mask: bool) -> Optional[Tensor]:
    """Where an RNN outputs its hidden state, (time, batch, 1) bool, or None (at every step). At a
    masked step Keras outputs 0 (``zero_output_for_mask``) or its previous output: the carried state
    once a real step has passed, the constant 0 before it (whatever the initial state)."""
    if mask_tm is None:
        return None
    if zero_output_for_mask:
        return mask_tm
    return ops.cumsum(ops.cast(mask_tm, "int32"), axis=0) > 0


def _split_constant_outputs(r: Tensor, keep: Tensor, axis) -> Tuple[Tensor, Tensor]:
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


def _time_major(t: Tensor) -> Tensor:
    """(batch, time, ...) <-> (time, batch, ...)."""
    return ops.transpose(t, (1, 0) + tuple(range(2, len(t.shape))))


def _unit_axes(t: Tensor, first: int = 1) -> Tuple[int, ...]:
    return tuple(range(first, len(t.shape)))


@register(keras.layers.RNN, keras.layers.Bidirectional,
          rule="epsilon-rule on every sum (SimpleRNN: over [x_t, h_{t-1}], N = d + e), the gate rule on every "
               "gate x signal product; ConvLSTM1D: the LSTM's rules with its two convolutions as the linear map "
               "(N = connected inputs), the cell update position by position; StackedRNNCells: its cells' rules "
               "in sequence, as a chain of RNN layers; Bidirectional sum / ave: epsilon-rule over the two "
               "directions (concat, sum, ave, None); returned states: their relevance enters the last step's h "
               "(c); initial states are the first step's h_{t-1} (c_{t-1}): what reaches them goes to the tensors "
               "given (rest for zero or constant states)")
class RecurrentProp(Propagator):
    """LSTM / GRU / SimpleRNN / ConvLSTM1D / RNN(a cell of :data:`CELL_RULES`, or a StackedRNNCells of
    them) and their Bidirectional wrapper.

    Node inputs: the sequence and the initial states given as tensors (Keras's state order, forward
    direction first; a stack's cells in order), in call order (:meth:`bind` finds them). Node outputs:
    the output (two with ``merge_mode=None``), then with ``return_state`` every direction's final
    states (per cell, LSTM: h, c; GRU / SimpleRNN: h).
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
            for cell in cells_of(rnn):
                rule = _rule_of_cell(cell)
                if rule is None:
                    names = ", ".join(c.__name__ for c in CELL_RULES)
                    raise UnsupportedLayerError(
                        layer, f"it wraps {type(cell).__name__}; supported cells: {names} (one, or a "
                               "StackedRNNCells of them).")
                why = rule.refusal(cell)
                if why is not None:
                    raise UnsupportedLayerError(layer, why)
            # (stateful=True: explained from the zero state, whatever state the layer holds)
        rules_per_direction = {tuple(_rule_of_cell(c) for c in cells_of(r)) for r in self.directions}
        if len(rules_per_direction) != 1:
            raise UnsupportedLayerError(layer, "its two directions use different cell types.")
        self.cell_rules: Tuple[CellRule, ...] = rules_per_direction.pop()
        self.stacked = isinstance(self.directions[0].cell, keras.layers.StackedRNNCells)
        self.return_sequences = self.directions[0].return_sequences
        self.return_state = bool(getattr(layer, "return_state", False))
        self.state_counts = [len(rule.states) for rule in self.cell_rules]   # per cell
        self.n_states = sum(self.state_counts)                              # per direction
        self.n_sequence_outputs = 2 if self.merge_mode is None else 1
        self.n_outputs = self.n_sequence_outputs + (len(self.directions) * self.n_states if self.return_state else 0)
        self.layout = _PLAIN_CALL
        # The gradient through Keras's own loop is cheaper than through ours (method="gi" / hand-written
        # gradient x input, Bi-LSTM(60), one core: 1.21 -> 0.89 at T = 20, 1.33 -> 1.02 at T = 100). Not a
        # stateful layer: Keras would start from (and update) the states it holds; explanations start from 0.
        self._as_keras = self._keras_may_run([layer] + self.directions) and not any(
            getattr(rnn, "stateful", False) for rnn in self.directions)

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
                                                    f"({self._state_names()} per direction).")
        if flat and self.stacked:
            self._check_stacked_initial_state(initial)
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
        # it skips the steps its sequence's Keras mask masks (and keeps the others in their places)
        masked = (node.inputs[sequence] in walk.graph.carried_mask_shapes if not given
                  else walk.graph.is_padding_mask(node.masks[given[0]]))
        in_place = not states and not (self.merge_mode == "single" and self.return_sequences
                                       and self.directions[0].go_backwards)
        self.post_padding_safe = self.layout.mask == sequence and masked and in_place
        #: it skips the steps its sequence's Keras mask masks, whichever mask that tensor carries at run
        #: time (also one the walk gives a float input: :meth:`keras_lrp.walk.Walk.vector_padding_safe`)
        self.skips_carried_mask = self.layout.mask == sequence and not self.layout.mask_given and in_place
        if given:
            self._check_mask_rank(walk.graph.shape_of(node.masks[given[0]]))
        elif self.layout.mask == sequence:
            self._check_mask_rank(walk.graph.carried_mask_shapes.get(node.inputs[sequence]))

    def _check_mask_rank(self, shape: Optional[tuple]) -> None:
        """The recurrence applies a (batch, time) mask; Keras applies one of higher rank (Masking in front
        of a ConvLSTM1D: one per time step and position) position by position, which is refused."""
        if shape is not None and len(shape) != 2:
            raise UnsupportedLayerError(
                self.layer, f"its mask has shape {shape} (Masking in front of a ConvLSTM1D gives one per time step "
                            "and position); it is explained with a (batch, time) mask: pass mask= a (batch, time) "
                            "bool tensor, e.g. keras.ops.any(keras.ops.not_equal(x, 0), axis=(2, 3)).")

    def _state_names(self) -> str:
        names = [", ".join(rule.states) for rule in self.cell_rules]
        return names[0] if len(names) == 1 else "; ".join(f"cell {i + 1}: {n}" for i, n in enumerate(names))

    def _check_stacked_initial_state(self, initial) -> None:
        """A StackedRNNCells takes one entry per cell (that cell's states), as Keras needs them."""
        entries = list(initial) if isinstance(initial, (list, tuple)) else [initial]
        counts = self.state_counts * len(self.directions)
        if len(entries) != len(counts) or any(len(tree.flatten(e)) != n for e, n in zip(entries, counts)):
            raise UnsupportedLayerError(
                self.layer, f"initial_state of a StackedRNNCells is one entry per cell ({self._state_names()}), "
                            "each the list of that cell's states, e.g. [[h1, c1], h2] for LSTMCell then GRUCell.")

    def _initial_states(self, inputs: Sequence[Tensor]) -> List[List[Optional[List[Tensor]]]]:
        """Per direction, per cell, its initial states (None: zeros), from the node's inputs and the
        constants."""
        n_cells = len(self.cell_rules)
        if not self.layout.initial:
            return [[None] * n_cells for _ in self.directions]
        sequence = inputs[self.layout.sequence]
        batch, state_rank = ops.shape(sequence)[0], len(sequence.shape) - 2

        def value(s: _InitialState):
            if s.position is not None:
                return inputs[s.position]
            constant = ops.cast(s.constant, self.ctx.dtype)
            return ops.broadcast_to(constant, (batch,) + tuple(constant.shape[-state_rank:]))

        flat = [value(s) for s in self.layout.initial]
        out = []
        for _ in self.directions:
            cells = []
            for n in self.state_counts:
                cells.append(flat[:n])
                flat = flat[n:]
            out.append(cells)
        return out

    def _run(self, rnn, x_tm, mask_tm, initial_states):
        ctx = self.ctx
        if rnn.go_backwards:
            x_tm = ops.flip(x_tm, axis=0)
            mask_tm = None if mask_tm is None else ops.flip(mask_tm, axis=0)
        passes, final_states, x = [], [], x_tm
        cells = cells_of(rnn)
        for k, (cell, rule, initial_state) in enumerate(zip(cells, self.cell_rules, initial_states)):
            weights = CellWeights(cell, ctx.weight(cell.kernel), ctx.weight(cell.recurrent_kernel),
                                  ctx.weight(cell.bias) if cell.use_bias else None)
            # h of every step: the next cell's input, or the output sequence
            acts = rule.forward(x, weights, mask_tm, ctx, initial_state, k + 1 < len(cells) or self.return_sequences)
            passes.append(_CellPass(rule, x, acts, weights))
            final_states += list(acts["last"])
            x = acts.get("h")   # the next cell's input (its masked steps are skipped)
        keep = _output_steps(mask_tm, rnn.zero_output_for_mask)
        h = x
        if self.return_sequences:
            if keep is not None:
                h = ops.where(keep, h, ops.zeros_like(h))
            y = ops.flip(h, axis=0) if (rnn.go_backwards and self.merge_mode != "single") else h
            y = _time_major(y)
        else:
            last = final_states[-len(self.cell_rules[-1].states)]   # the last cell's h_T
            y = last if keep is None else ops.where(keep[-1], last, ops.zeros_like(last))
        return y, final_states, _Direction(mask_tm, keep, tuple(passes))

    def _applied_mask(self, masks, rank: int) -> Optional[Tensor]:
        """The mask the recurrence applies, time-major (time, batch, 1[, 1]) bool, or None."""
        call = self.layout
        applied = None if call.mask is None else masks[call.mask]
        if applied is None:
            return None
        mask_tm = _time_major(ops.cast(applied, "bool"))
        for _ in range(rank - 2):   # broadcast over the state's axes
            mask_tm = mask_tm[..., None]
        return mask_tm

    def forward(self, inputs, masks):
        call = self.layout
        sequence = inputs[call.sequence]
        x_tm = _time_major(sequence)
        mask_tm = self._applied_mask(masks, len(sequence.shape))
        ys, finals, caches = zip(*[self._run(rnn, x_tm, mask_tm, s)
                                   for rnn, s in zip(self.directions, self._initial_states(inputs))])
        if self.merge_mode in ("single", "concat"):
            outputs = [ops.concatenate(ys, axis=-1)]
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
            return ops.split(r_outs[0], len(self.directions), axis=-1)
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
            # per cell, the relevance on its last states: returned states, else zeros
            returned = list(r_states[i * n_s:(i + 1) * n_s]) if self.return_state else None
            r_lasts = []
            for cell in d.cells:
                n = len(cell.rule.states)
                r_lasts.append(returned[:n] if returned else [ops.zeros_like(cell.acts[name][0])
                                                                for name in cell.rule.states])
                returned = returned[n:] if returned else None
            if self.return_sequences:
                r_seq = _time_major(r)
                if rnn.go_backwards and self.merge_mode != "single":
                    r_seq = ops.flip(r_seq, axis=0)
                if d.keep is not None:
                    r_seq, dropped = _split_constant_outputs(r_seq, d.keep, axis=(0,) + _unit_axes(r_seq, 2))
                    rest += dropped
            else:   # the output is the last step's h (or the constant 0)
                r_seq = None
                if d.keep is not None:
                    r, dropped = _split_constant_outputs(r, d.keep[-1], axis=_unit_axes(r))
                    rest += dropped
                r_lasts[-1][0] = r_lasts[-1][0] + r
            r_initial_cells = []
            for cell, r_last in reversed(list(zip(d.cells, r_lasts))):   # last cell first
                out = cell.rule.relevance(cell.x, cell.acts, cell.weights, r_last, r_seq, d.mask, self.ctx)
                r_initial_cells.insert(0, out.states)
                r_seq = out.x   # the relevance on the previous cell's h, every step
            r_x += ops.flip(r_seq, axis=0) if rnn.go_backwards else r_seq
            r_initial += [r for states in r_initial_cells for r in states]
        r_ins: List[Optional[Tensor]] = [None] * (1 + sum(s.position is not None for s in self.layout.initial))
        r_ins[self.layout.sequence] = _time_major(r_x)
        for r, state in zip(r_initial, self.layout.initial or [_InitialState(None, 0.0)] * len(r_initial)):
            if state.position is not None:
                r_ins[state.position] = r
            else:   # zero or constant initial states
                rest += ops.sum(r, axis=_unit_axes(r))
        return r_ins, rest
