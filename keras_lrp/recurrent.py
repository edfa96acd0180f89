"""LSTM, GRU, SimpleRNN and ConvLSTM1D: forward pass with cached activations, and LRP backward through time.

One direction at a time (a Bidirectional layer runs two independent loops, which TensorFlow may
run in parallel), vectorised over the batch and kept time-major: tensors are (time, batch, .),
the sequence in its processing order (reversed time for ``go_backwards``). Only the recurrence
itself is a loop over time (:data:`keras_lrp.backend.time_loop`: a ``tf.while_loop`` on TensorFlow,
``keras.ops.scan`` elsewhere); everything that does not depend on it (input projections,
denominators, input relevance) is computed for all timesteps at once, in ``keras.ops``.

Shapes: x (time, batch, e); states (time, batch, d); mask (time, batch, 1) bool or None; initial
states (batch, d) each, or None for zeros (an encoder's returned states, say).
LSTM: kernel (e, 4d), recurrent_kernel (d, 4d), bias (4d,) or None, gate order i, f, c (= g), o.
GRU: kernel (e, 3d), recurrent_kernel (d, 3d), bias (3d,), (2, 3d) with ``reset_after``, or None;
gate order z, r, h.
SimpleRNN: kernel (e, d), recurrent_kernel (d, d), bias (d,) or None.
ConvLSTM1D: the LSTM with convolutions for its two maps (:class:`ConvMaps`): x (time, batch, length, e),
states (time, batch, length', d), kernel (k, e, 4d), recurrent_kernel (k, d, 4d); every element-wise
rule acts per position exactly as for the LSTM (a ConvLSTM1D with kernel_size 1 explains as an LSTM at
each position), its linear maps spread each output's bias share over the inputs it is connected to.

The rules (Arras et al. 2017; gate rules from Arras et al. 2019, "Evaluating Recurrent Neural
Network Explanations"):

* every sum of contributions (a linear map, the cell update ``c_t = f c_{t-1} + i g``, the GRU
  update ``h_t = z h_{t-1} + (1 - z) hh``) uses the epsilon-rule of :mod:`keras_lrp.rules`, with
  fan-in N = the number of units summed (2d for a two-term update, d + e for ``[x_t, h_{t-1}]``);
* element-wise activations (tanh, sigmoid) pass relevance unchanged;
* every gate x signal product ``p = gate * signal`` follows the gate rule (:class:`GateRule`).
* a masked timestep copies its states, so it passes the relevance of its states back unchanged
  and gives its input exactly 0;
* the initial states are the first step's ``h_{t-1}``, ``c_{t-1}``, under the same rules; the
  relevance that reaches them is returned per unit (:class:`RecurrentRelevance`).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Dict, NamedTuple, Optional, Sequence, Tuple

from keras import ops

from .backend import Tensor, einsum, time_loop
from .cells import lstm_step
from .rules import GATE_RULE_OBJECTS, Epsilon, bias_share, inverse_denominator, needs_zero_limit, zero_limit

__all__ = ["GATE_RULES", "RecurrentRelevance", "RecurrentMaps", "DenseMaps", "ConvMaps", "gate_split",
           "lstm_forward", "lstm_relevance", "gru_forward", "gru_relevance", "simple_rnn_forward",
           "simple_rnn_relevance"]

#: Gate rules for a product p = gate * signal carrying relevance R, by name (the objects are
#: :class:`keras_lrp.rules.SignalTakeAll` "all", :class:`~keras_lrp.rules.Half` "half" and
#: :class:`~keras_lrp.rules.Proportional` "prop"). The functions below take the name: with "all"
#: they skip the gates' relevance entirely (nothing flows there).
GATE_RULES = tuple(GATE_RULE_OBJECTS)


def gate_split(r, gate, signal, rule: str, eps: Epsilon):
    """Split the relevance ``r`` of ``gate * signal`` into ``(r_gate, r_signal)`` by the named rule."""
    return GATE_RULE_OBJECTS[rule].split(r, gate, signal, eps)


class RecurrentRelevance(NamedTuple):
    """The LRP pass through one recurrent direction: the input relevance and the relevance that
    reached each initial state (in the cell's state order: ``(h0, c0)`` for an LSTM, ``(h0,)`` else)."""

    x: Tensor                    # (time, batch, e), processing order
    states: Tuple[Tensor, ...]   # (batch, d) each

    @property
    def rest(self) -> Tensor:
        """(batch,): the relevance on all initial states, summed (what zero initial states absorb)."""
        return sum(ops.sum(r, axis=tuple(range(1, len(r.shape)))) for r in self.states)


def _shift(t: Tensor, first: Optional[Tensor] = None) -> Tensor:
    """The value at t-1 for every t: ``first`` (the initial state, (batch, d); zeros when None) at
    t = 0; time axis 0."""
    first = ops.zeros_like(t[:1]) if first is None else ops.expand_dims(ops.cast(first, t.dtype), 0)
    return ops.concatenate([first, t[:-1]], axis=0)


def _initial_states(like: Tensor, initial_state: Optional[Sequence[Tensor]], n: int) -> Tuple[Tensor, ...]:
    """The ``n`` initial states (batch, d) in ``like``'s dtype: ``initial_state``, or zeros like ``like``."""
    if initial_state is None:
        return (ops.zeros_like(like),) * n
    if len(initial_state) != n:
        raise ValueError(f"expected {n} initial state(s), got {len(initial_state)}.")
    return tuple(ops.cast(s, like.dtype) for s in initial_state)


# With ``caches=False`` (a walk whose forward pass alone is run or differentiated: the gradient and
# perturbation baselines) the forward loops stack only the hidden states, not what the relevance pass
# reads, and not even those where nothing reads them (``sequence=False``: an RNN's last cell without
# return_sequences): each stacked tensor costs its writes and, differentiated, a gradient read back every
# step (a stacked output nothing reads: a list of zeros made for it). Gradient x input of a Bi-LSTM(60)
# at T = 50: 1.28x the Keras model's own compiled gradient with the caches, 1.15x without
# (bench/bench_explain.py, table 4); at T = 20, one pinned core, 1.39x -> 1.23x without the stacked h.

def _forward_outputs(caches: bool, n_caches: int, sequence: bool = True) -> int:
    """How many per-step outputs a forward loop stacks: every cache the relevance pass reads, the
    hidden states alone (``caches=False``), or nothing (neither caches nor the sequence wanted)."""
    return n_caches if caches else int(sequence)


def _step_elements(xz: Tensor, mask: Optional[Tensor]) -> Dict[str, Tensor]:
    """The per-step tensors of a forward loop: the input terms ``xz`` (time, batch, ...) and the mask."""
    return {"xz": xz} if mask is None else {"xz": xz, "mask": mask}


def _carry_where_masked(mask, new, old):
    return new if mask is None else ops.where(mask, new, old)


# ---------------------------------------------------------------------------------------------
# The two linear maps of a pre-activation  z = x_t W + h_{t-1} U + b
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RecurrentMaps:
    """The two linear maps of a pre-activation ``z = x_t W + h_{t-1} U + b`` with their transposes and
    how their bias shares reach the inputs: :class:`DenseMaps` (matrices) or :class:`ConvMaps`
    (convolutions). The output units (m) are the kernels' last axis, the gates side by side."""

    kernel: Tensor
    recurrent_kernel: Tensor
    bias: Optional[Tensor]

    @property
    def units(self) -> int:
        """d, the state size (channels of h)."""
        return self.recurrent_kernel.shape[-2]

    def select(self, columns: slice) -> "RecurrentMaps":
        """The maps of the output units ``columns`` only."""
        return replace(self, kernel=self.kernel[..., columns], recurrent_kernel=self.recurrent_kernel[..., columns],
                       bias=None if self.bias is None else self.bias[columns])


@dataclass(frozen=True)
class DenseMaps(RecurrentMaps):
    """``z = x_t W + h_{t-1} U + b`` with matrices (LSTM, GRU, SimpleRNN): kernel (e, m),
    recurrent_kernel (d, m), bias (m,) or None. Fully connected: every output's bias share goes to
    all N = e + d inputs, so a share is one number per step, (..., 1), the same for every input."""

    def fan_in(self):
        """N, the inputs each output unit's bias share is spread over: e + d."""
        return self.kernel.shape[-2] + self.units

    def inputs(self, x):
        """``x_t W + b`` for all timesteps at once: (time, batch, e) -> (time, batch, m)."""
        # backend.einsum: on TensorFlow its rounding does not depend on the batch size
        z = einsum("tbe,em->tbm", x, self.kernel)
        return z if self.bias is None else z + self.bias

    def recurrent(self, h):
        """``h U``: (batch, d) -> (batch, m)."""
        return ops.matmul(h, self.recurrent_kernel)

    def input_magnitude(self, x):
        """``sum_k |x_k w_km| + |b_m|`` for all timesteps (time, batch, m): with :meth:`recurrent_magnitude`
        it tells a pre-activation whose terms are all zero (:func:`~keras_lrp.rules.zero_limit`)."""
        magnitude = ops.einsum("tbe,em->tbm", ops.abs(x), ops.abs(self.kernel))
        return magnitude if self.bias is None else magnitude + ops.abs(self.bias)

    def recurrent_magnitude(self, h):
        return ops.matmul(ops.abs(h), ops.abs(self.recurrent_kernel))

    def input_transpose(self, m):
        """``m W^T`` for all timesteps: (time, batch, m) -> (time, batch, e)."""
        return einsum("tbm,em->tbe", m, self.kernel)   # (see inputs)

    def recurrent_transpose(self, m):
        """``m U^T``: (batch, m) -> (batch, d)."""
        return ops.matmul(m, ops.transpose(self.recurrent_kernel))

    def share_to_inputs(self, share):
        """What every input x_t gets of the outputs' shares (:func:`~keras_lrp.rules.bias_share`): all of it."""
        return share

    def share_to_previous(self, share):
        """What every unit of h_{t-1} gets of the outputs' shares: all of it."""
        return share


def _per_sequence(f: Callable, x):
    """``f`` (on (n, length, channels)) applied to x (..., length, channels), leading axes merged."""
    lead = ops.shape(x)[:-2]
    y = f(ops.reshape(x, (-1,) + tuple(x.shape[-2:])))
    return ops.reshape(y, tuple(lead) + tuple(y.shape[-2:]))


def _conv_adjoint(y, kernel, padding: str, dilation: int, length: int):
    """The transpose of ``x -> conv(x, kernel)`` (strides 1; ``padding`` "valid" or "same" with
    TensorFlow's split, left = total // 2) applied to y (n, length', m): (n, length, e). It is the
    correlation of y, padded so that every window sees the outputs its input feeds, with the kernel
    flipped in space and transposed in channels."""
    span = dilation * (kernel.shape[0] - 1)
    left = span // 2 if padding == "same" else 0   # the forward conv's left padding
    y = ops.pad(y, [[0, 0], [span - left, length - y.shape[1] + left], [0, 0]])
    return ops.conv(y, ops.transpose(ops.flip(kernel, axis=0), (0, 2, 1)), padding="valid", dilation_rate=dilation)


@dataclass(frozen=True)
class ConvMaps(RecurrentMaps):
    """``z = conv(x_t, W) + conv(h_{t-1}, U) + b`` of a ConvLSTM1D cell (channels_last, strides 1): the
    input convolution with the layer's ``padding`` ("valid" / "same") and ``dilation``, the recurrent
    one "same" and undilated, as Keras's ConvLSTMCell. kernel (k, e, m), recurrent_kernel (k, d, m);
    x_t (batch, length, e), h (batch, length', d). Each output unit (p, m) is connected to the real
    (not padding) positions of its windows: N_p = (its x window) x e + (its h window) x d inputs, and its
    bias share goes to those; shares are one number per position, (..., length', 1)."""

    padding: str = "valid"
    dilation: int = 1
    length: int = 0          # of x_t

    def _ones(self):
        return ops.ones((self.kernel.shape[0], 1, 1), self.kernel.dtype)

    def _input_conv(self, x, kernel):
        return _per_sequence(lambda v: ops.conv(v, kernel, padding=self.padding, dilation_rate=self.dilation), x)

    @staticmethod
    def _recurrent_conv(h, kernel):
        return ops.conv(h, kernel, padding="same")

    def fan_in(self):
        """N_p per output position (length', 1): the real positions of its windows times the channels."""
        n_x = ops.conv(ops.ones((1, self.length, 1), self.kernel.dtype), self._ones(), padding=self.padding,
                       dilation_rate=self.dilation)[0]
        n_h = self._recurrent_conv(ops.ones_like(n_x)[None], self._ones())[0]
        return n_x * self.kernel.shape[-2] + n_h * self.units

    def inputs(self, x):
        z = self._input_conv(x, self.kernel)
        return z if self.bias is None else z + self.bias

    def recurrent(self, h):
        return self._recurrent_conv(h, self.recurrent_kernel)

    def input_magnitude(self, x):
        magnitude = self._input_conv(ops.abs(x), ops.abs(self.kernel))
        return magnitude if self.bias is None else magnitude + ops.abs(self.bias)

    def recurrent_magnitude(self, h):
        return self._recurrent_conv(ops.abs(h), ops.abs(self.recurrent_kernel))

    def _input_adjoint(self, m, kernel):
        return _per_sequence(lambda v: _conv_adjoint(v, kernel, self.padding, self.dilation, self.length), m)

    def input_transpose(self, m):
        return self._input_adjoint(m, self.kernel)

    def recurrent_transpose(self, m):
        return _conv_adjoint(m, self.recurrent_kernel, "same", 1, m.shape[-2])

    def share_to_inputs(self, share):
        """(..., length', 1) per position -> (..., length, 1): what each input position's units get."""
        return self._input_adjoint(share, self._ones())

    def share_to_previous(self, share):
        return _conv_adjoint(share, self._ones(), "same", 1, share.shape[-2])


def _to_previous_state(m_z, h_prev, maps: RecurrentMaps, z, eps: Epsilon, fan_in, limit=None):
    """Epsilon-rule of a pre-activation ``z = x_t W + h_{t-1} U + b`` onto ``h_{t-1}``, given its
    message ``m_z = R / (z + eps sign(z))``: ``(relevance of h_{t-1}, the outputs' bias shares or
    None)``. The shares go to ``x_t`` too (see :func:`_input_relevance`); ``fan_in`` is
    ``maps.fan_in()``, ``limit`` the map's :func:`~keras_lrp.rules.zero_limit`."""
    r_h_prev = h_prev * maps.recurrent_transpose(m_z)
    if not eps.has_bias_share:
        return r_h_prev, None
    share = bias_share(m_z, z, maps.bias, eps, fan_in, limit)
    return r_h_prev + maps.share_to_previous(share), share


def _step_limit(r, z, input_magnitude, h_prev, maps: RecurrentMaps, eps: Epsilon):
    """:func:`~keras_lrp.rules.zero_limit` of ``z = x_t W + h_{t-1} U + b`` at one step, given the input
    part's magnitude (``maps.input_magnitude``, or None when no zero limit is needed)."""
    if input_magnitude is None:
        return None
    return zero_limit(r, z, input_magnitude + maps.recurrent_magnitude(h_prev), eps)


def _sum_limit(r, z, terms, eps: Epsilon):
    """:func:`~keras_lrp.rules.zero_limit` of an element-wise sum of ``terms`` (a two-term update)."""
    if not needs_zero_limit(eps):
        return None
    return zero_limit(r, z, sum(ops.abs(t) for t in terms), eps)


def _input_relevance(x, m, maps: RecurrentMaps, share, mask):
    """``x * (m W^T) + (the shares x_t gets)`` for all timesteps at once; exactly 0 at masked steps."""
    r = x * maps.input_transpose(m)
    if share is not None:
        r = r + maps.share_to_inputs(share)
    return r if mask is None else ops.where(mask, r, ops.zeros_like(r))


# ---------------------------------------------------------------------------------------------
# LSTM
# ---------------------------------------------------------------------------------------------

def lstm_forward(x: Tensor, maps: RecurrentMaps, activation: Callable, recurrent_activation: Callable,
                 mask: Optional[Tensor] = None, gate_rule: str = "all",
                 initial_state: Optional[Sequence[Tensor]] = None, caches: bool = True,
                 sequence: bool = True) -> Dict[str, Tensor]:
    """Run an LSTM (``maps``: :class:`DenseMaps`) or a ConvLSTM1D (:class:`ConvMaps`) over its (already
    ordered) input sequence from ``initial_state`` = (h0, c0) (zeros when None).

    Returns (time, batch, ..., .) tensors: hidden states ``h``, cell states ``c`` (both carried over
    masked steps), the two products of the cell update ``fc`` = f_t c_{t-1} and ``ig`` = i_t g_t,
    and the pre-activations ``z`` of the maps that receive relevance under ``gate_rule``: the cell
    candidate's (d) for "all"; all four (4d), plus the gate activations ``gates`` [i, f, g, o],
    otherwise; the initial states ``h0``, ``c0`` and the last states ``last`` = (h_T, c_T)
    (batch, ..., d). With ``caches=False`` only ``h`` and ``last``, and with ``sequence=False`` too
    only ``last`` (see :func:`_forward_outputs`).
    """
    d = maps.units
    keep = slice(2 * d, 3 * d) if gate_rule == "all" else slice(0, 4 * d)
    xz = maps.inputs(x)
    h0, c0 = _initial_states(xz[0][..., :d], initial_state, 2)
    elems = _step_elements(xz, mask)
    n_out = _forward_outputs(caches, 5 if gate_rule == "all" else 6, sequence)

    def step(carry, e):
        h_tm1, c_tm1 = carry
        z = e["xz"] + maps.recurrent(h_tm1)
        s = lstm_step(z, c_tm1, activation, recurrent_activation)
        m = e.get("mask")
        h, c = _carry_where_masked(m, s.h, h_tm1), _carry_where_masked(m, s.c, c_tm1)
        if not caches:
            return (h, c), (h,)[:n_out]
        out = (h, c, s.fc, s.ig, z[..., keep])
        return (h, c), (out if gate_rule == "all" else out + (ops.concatenate([s.i, s.f, s.g, s.o], axis=-1),))

    last, out = time_loop(step, elems, (h0, c0), n_out, differentiable=True)
    return dict(zip(("h", "c", "fc", "ig", "z", "gates"), out), h0=h0, c0=c0, last=last)


def lstm_relevance(x: Tensor, acts: Dict[str, Tensor], maps: RecurrentMaps, r_h_last: Tensor,
                   eps: Epsilon, gate_rule: str = "all", r_h_seq: Optional[Tensor] = None,
                   mask: Optional[Tensor] = None, activation: Callable = ops.tanh,
                   r_c_last: Optional[Tensor] = None) -> RecurrentRelevance:
    """LRP from the hidden states back to the inputs, through time.

    Per step, in reverse (Arras et al. 2017, Sect. 3, with the reference implementation's
    conventions for ``gate_rule="all"``):

    * ``h_t = o_t * tanh(c_t)``: a product; with "all" the gate gets nothing and ``c_t`` all;
    * ``c_t = f_t * c_{t-1} + i_t * g_t``: epsilon-rule over the two products (N = 2d; a ConvLSTM's
      position by position), then each product is split by the gate rule (to ``c_{t-1}`` / ``f_t``
      and ``g_t`` / ``i_t``);
    * ``g_t = tanh(x_t W_g + h_{t-1} U_g + b_g)`` (and, for the "half" / "prop" rules, the three
      gates likewise): the activation passes relevance unchanged, then the epsilon-rule over
      ``[x_t, h_{t-1}]`` (N = d + e; a ConvLSTM's: the inputs connected to the unit, ``maps.fan_in``).

    Args:
        x: inputs (time, batch, e) (ConvLSTM1D: (time, batch, length, e)) in processing order.
        acts: the dict of :func:`lstm_forward` for the same ``gate_rule`` (without ``h0`` / ``c0``:
            zero initial states).
        maps: the cell's two linear maps, :class:`DenseMaps` or :class:`ConvMaps`.
        r_h_last: relevance on the last hidden state, (batch, ..., d).
        eps: the epsilon-rule's parameters.
        gate_rule: one of :data:`GATE_RULES`.
        r_h_seq: optional relevance arriving on every output h_t, (time, batch, ..., d).
        mask: optional bool, (time, batch, 1) (ConvLSTM1D: (time, batch, 1, 1)); masked steps copy
            their states.
        activation: the cell's activation (for the "half" / "prop" gate rules).
        r_c_last: optional relevance on the last cell state (a returned state), (batch, ..., d).

    Returns:
        :class:`RecurrentRelevance`: input relevance and the relevance on (h0, c0).
    """
    d = maps.units
    # With signal-take-all only the cell candidate's linear map carries relevance.
    maps = maps.select(slice(2 * d, 3 * d) if gate_rule == "all" else slice(0, 4 * d))
    fan_in = maps.fan_in()
    h, c, z = acts["h"], acts["c"], acts["z"]
    share = eps.has_bias_share

    per_step = {"fc": acts["fc"], "ig": acts["ig"], "inv_c": inverse_denominator(c, eps),
                "inv_z": inverse_denominator(z, eps), "h_prev": _shift(h, acts.get("h0"))}
    if share:
        per_step.update(c=c, z=z)
    if needs_zero_limit(eps):
        per_step["mag_x"] = maps.input_magnitude(x)
    if gate_rule != "all":
        per_step.update(gates=acts["gates"], c_prev=_shift(c, acts.get("c0")), tanh_c=activation(c))
    if r_h_seq is not None:
        per_step["r_h"] = r_h_seq
    if mask is not None:
        per_step["mask"] = mask
    if r_c_last is None:
        r_c_last = ops.zeros_like(r_h_last)

    def step(carry, s):
        r_h, r_c = carry
        if r_h_seq is not None:
            r_h = r_h + s["r_h"]
        if gate_rule != "all":
            i, f, g, o = ops.split(s["gates"], 4, axis=-1)
        # h_t = o_t * tanh(c_t)
        if gate_rule == "all":
            r_o, r_c_t = None, r_c + r_h
        else:
            r_o, r_tanh = gate_split(r_h, o, s["tanh_c"], gate_rule, eps)
            r_c_t = r_c + r_tanh
        # c_t = f_t c_{t-1} + i_t g_t: epsilon-rule over the two products
        m_c = r_c_t * s["inv_c"]
        r_fc, r_ig = s["fc"] * m_c, s["ig"] * m_c
        if share:
            limit = _sum_limit(r_c_t, s["c"], (s["fc"], s["ig"]), eps)
            share_c = bias_share(m_c, s["c"], None, eps, 2 * d, limit)
            r_fc, r_ig = r_fc + share_c, r_ig + share_c
        if gate_rule == "all":
            r_c_prev, r_pre = r_fc, r_ig
        else:
            r_f, r_c_prev = gate_split(r_fc, f, s["c_prev"], gate_rule, eps)
            r_i, r_g = gate_split(r_ig, i, g, gate_rule, eps)
            r_pre = ops.concatenate([r_i, r_f, r_g, r_o], axis=-1)
        # pre-activations -> [x_t, h_{t-1}]
        m_z = r_pre * s["inv_z"]
        limit = _step_limit(r_pre, s.get("z"), s.get("mag_x"), s["h_prev"], maps, eps)
        r_h_prev, share_z = _to_previous_state(m_z, s["h_prev"], maps, s.get("z"), eps, fan_in, limit)
        if mask is not None:
            m = s["mask"]
            r_h_prev = ops.where(m, r_h_prev, r_h)
            r_c_prev = ops.where(m, r_c_prev, r_c)
        return (r_h_prev, r_c_prev), ((m_z, share_z) if share else (m_z,))

    (r_h0, r_c0), out = time_loop(step, per_step, (r_h_last, r_c_last), 2 if share else 1, reverse=True)
    return RecurrentRelevance(_input_relevance(x, out[0], maps, out[1] if share else None, mask), (r_h0, r_c0))


# ---------------------------------------------------------------------------------------------
# GRU (Keras GRUCell equations)
#   z = sig(x W_z + h U_z + b),  r = sig(x W_r + h U_r + b)
#   reset_after:      hh = tanh(x W_h + b_in + r * (h U_h + b_rec))
#   not reset_after:  hh = tanh(x W_h + (r * h) U_h + b)
#   h_t = z * h_{t-1} + (1 - z) * hh
# ---------------------------------------------------------------------------------------------

def _gru_biases(bias, d):
    """(input bias (3d,) or None, recurrent bias (3d,) or None)."""
    if bias is None:
        return None, None
    if len(bias.shape) == 2:
        return bias[0], bias[1]
    return bias, None


def gru_forward(x, kernel, recurrent_kernel, bias, activation, recurrent_activation,
                reset_after: bool, mask=None, gate_rule: str = "all",
                initial_state: Optional[Sequence[Tensor]] = None, caches: bool = True,
                sequence: bool = True) -> Dict[str, Tensor]:
    """Run a GRU over its (already ordered) input sequence from ``initial_state`` = (h0,) (zeros
    when None).

    Returns (time, batch, .) tensors: ``h`` (carried over masked steps), gates ``zg``, ``rg``,
    candidate ``hh`` and its pre-activation ``pre_h``, the recurrent candidate term ``s_h``
    (``h U_h + b_rec`` with reset_after, ``r * h`` without), the update's two products ``zh`` =
    z h_{t-1} and ``zhh`` = (1 - z) hh, and the gates' pre-activations ``pre_zr`` (2d); ``zg``,
    ``hh`` and ``pre_zr`` only for the gate rules that give gates relevance; the initial state
    ``h0`` and the last state ``last`` = (h_T,) (batch, d). With ``caches=False`` only ``h`` and
    ``last``, and with ``sequence=False`` too only ``last`` (see :func:`_forward_outputs`).
    """
    gates = gate_rule != "all"
    d = recurrent_kernel.shape[0]
    b_in, b_rec = _gru_biases(bias, d)
    xz = einsum("tbe,ef->tbf", x, kernel)
    if b_in is not None:
        xz = xz + b_in
    h0, = _initial_states(xz[0, :, :d], initial_state, 1)
    elems = _step_elements(xz, mask)
    n_out = _forward_outputs(caches, 9 if gates else 6, sequence)

    def step(carry, e):
        h_tm1 = carry[0]
        x_z, x_r, x_h = ops.split(e["xz"], 3, axis=-1)
        if reset_after:
            rec = ops.matmul(h_tm1, recurrent_kernel)
            if b_rec is not None:
                rec = rec + b_rec
            r_z, r_r, s_h = ops.split(rec, 3, axis=-1)
            pre_z, pre_r = x_z + r_z, x_r + r_r
            rg = recurrent_activation(pre_r)
            pre_h = x_h + rg * s_h
        else:
            pre_zr = x_z + ops.matmul(h_tm1, recurrent_kernel[:, :d]), x_r + ops.matmul(h_tm1, recurrent_kernel[:, d:2 * d])
            pre_z, pre_r = pre_zr
            rg = recurrent_activation(pre_r)
            s_h = rg * h_tm1
            pre_h = x_h + ops.matmul(s_h, recurrent_kernel[:, 2 * d:])
        zg = recurrent_activation(pre_z)
        hh = activation(pre_h)
        zh, zhh = zg * h_tm1, (1 - zg) * hh
        h = zh + zhh
        h = _carry_where_masked(e.get("mask"), h, h_tm1)
        if not caches:
            return (h,), (h,)[:n_out]
        out = (h, rg, pre_h, s_h, zh, zhh)
        return (h,), out + ((zg, hh, ops.concatenate([pre_z, pre_r], axis=-1)) if gates else ())

    last, out = time_loop(step, elems, (h0,), n_out, differentiable=True)
    names = ("h", "rg", "pre_h", "s_h", "zh", "zhh", "zg", "hh", "pre_zr")
    return dict(zip(names, out), h0=h0, last=last)


def gru_relevance(x, acts, kernel, recurrent_kernel, bias, r_h_last, eps: Epsilon,
                  reset_after: bool, gate_rule: str = "all", r_h_seq=None,
                  mask=None) -> RecurrentRelevance:
    """LRP through a GRU, in reverse over time (same conventions as :func:`lstm_relevance`).

    * ``h_t = z h_{t-1} + (1 - z) hh``: epsilon-rule over the two products (N = 2d), each split by
      the gate rule (gate ``1 - z`` counts as gate z);
    * ``hh = tanh(pre_h)`` passes relevance unchanged; reset_after:
      ``pre_h = x W_h + b_in + P`` with ``P = r * s_h``, ``s_h = h U_h + b_rec``: epsilon-rule over
      ``[x_t, P]`` (N = e + d), P split by the gate rule, then epsilon-rule ``s_h -> h`` (N = d);
      not reset_after: ``pre_h = x W_h + (r * h) U_h + b``: epsilon-rule over ``[x_t, r * h]``
      (N = e + d), ``r * h`` split by the gate rule;
    * gate relevance (rules "half" / "prop") goes through the gates' maps
      ``[x_t, h_{t-1}] -> (pre_z, pre_r)`` by the epsilon-rule (N = e + d).

    Returns:
        :class:`RecurrentRelevance`: input relevance and the relevance on (h0,).
    """
    d = recurrent_kernel.shape[0]
    e = x.shape[-1]
    b_in, b_rec = _gru_biases(bias, d)
    w_h, u_h = kernel[:, 2 * d:], recurrent_kernel[:, 2 * d:]
    w_zr, u_zr = kernel[:, :2 * d], recurrent_kernel[:, :2 * d]
    b_h = None if b_in is None else b_in[2 * d:]
    b_zr = None
    if b_in is not None:
        b_zr = b_in[:2 * d] + (b_rec[:2 * d] if b_rec is not None else 0)
    b_rh = None if b_rec is None else b_rec[2 * d:]
    maps_h, maps_zr = DenseMaps(w_h, u_h, b_h), DenseMaps(w_zr, u_zr, b_zr)
    u_h_t, u_zr_t = ops.transpose(u_h), ops.transpose(u_zr)   # the maps' transposes, for every step
    share = eps.has_bias_share
    gates = gate_rule != "all"

    h = acts["h"]
    h_t = acts["zh"] + acts["zhh"]
    per_step = {"zh": acts["zh"], "zhh": acts["zhh"], "inv_h": inverse_denominator(h_t, eps),
                "inv_pre_h": inverse_denominator(acts["pre_h"], eps), "h_prev": _shift(h, acts.get("h0")),
                "rg": acts["rg"], "s_h": acts["s_h"]}
    if reset_after:
        per_step["inv_s_h"] = inverse_denominator(acts["s_h"], eps)
    if gates:
        per_step.update(zg=acts["zg"], hh=acts["hh"], inv_zr=inverse_denominator(acts["pre_zr"], eps),
                        pre_zr=acts["pre_zr"])
    if share:
        per_step.update(h_t=h_t, pre_h=acts["pre_h"])
    limits = needs_zero_limit(eps)
    if limits:   # the input parts' magnitudes, for the zero limits of pre_h and the gates' map
        per_step["mag_xh"] = maps_h.input_magnitude(x)
        if gates:
            per_step["mag_xzr"] = maps_zr.input_magnitude(x)
    mag_s_h = (0.0 if b_rh is None else ops.abs(b_rh)) if limits else None
    if r_h_seq is not None:
        per_step["r_h"] = r_h_seq
    if mask is not None:
        per_step["mask"] = mask

    def step(carry, s):
        r_h = carry[0]
        if r_h_seq is not None:
            r_h = r_h + s["r_h"]
        # h_t = z h_{t-1} + (1 - z) hh
        m = r_h * s["inv_h"]
        r_zh, r_zhh = s["zh"] * m, s["zhh"] * m
        if share:
            sh = bias_share(m, s["h_t"], None, eps, 2 * d, _sum_limit(r_h, s["h_t"], (s["zh"], s["zhh"]), eps))
            r_zh, r_zhh = r_zh + sh, r_zhh + sh
        r_z1, r_h_direct = gate_split(r_zh, s["zg"] if gates else None, s["h_prev"], gate_rule, eps)
        r_z2, r_hh = gate_split(r_zhh, (1 - s["zg"]) if gates else None, s["hh"] if gates else None,
                                gate_rule, eps)
        # pre_h = x W_h + [b_in] + (P = r * s_h)   or   x W_h + (r h) U_h + b
        m_h = r_hh * s["inv_pre_h"]
        if reset_after:
            p = s["rg"] * s["s_h"]
            r_p = p * m_h
            if share:
                limit = zero_limit(r_hh, s["pre_h"], s["mag_xh"] + ops.abs(p), eps) if limits else None
                share_h = bias_share(m_h, s["pre_h"], b_h, eps, d + e, limit)
                r_p = r_p + share_h
            r_r, r_s = gate_split(r_p, s["rg"] if gates else None, s["s_h"], gate_rule, eps)
            m_s = r_s * s["inv_s_h"]
            r_h_prev = s["h_prev"] * ops.matmul(m_s, u_h_t)
            if share:
                limit = _step_limit(r_s, s["s_h"], mag_s_h, s["h_prev"], maps_h, eps)
                r_h_prev = r_h_prev + bias_share(m_s, s["s_h"], b_rh, eps, d, limit)
        else:
            r_rh = s["s_h"] * ops.matmul(m_h, u_h_t)
            if share:
                limit = _step_limit(r_hh, s["pre_h"], s.get("mag_xh"), s["s_h"], maps_h, eps)
                share_h = bias_share(m_h, s["pre_h"], b_h, eps, d + e, limit)
                r_rh = r_rh + share_h
            r_r, r_h_prev = gate_split(r_rh, s["rg"] if gates else None, s["h_prev"], gate_rule, eps)
        r_h_prev = r_h_prev + r_h_direct
        # gates (half / prop): [x_t, h_{t-1}] -> (pre_z, pre_r)
        if gates:
            r_zr = ops.concatenate([r_z1 + r_z2, r_r], axis=-1)
            m_zr = r_zr * s["inv_zr"]
            r_h_prev = r_h_prev + s["h_prev"] * ops.matmul(m_zr, u_zr_t)
            if share:
                limit = _step_limit(r_zr, s["pre_zr"], s.get("mag_xzr"), s["h_prev"], maps_zr, eps)
                share_zr = bias_share(m_zr, s["pre_zr"], b_zr, eps, d + e, limit)
                r_h_prev = r_h_prev + share_zr
        if mask is not None:
            r_h_prev = ops.where(s["mask"], r_h_prev, r_h)
        outs = (m_h,)
        if share:   # x_t's bias share: from pre_h's map, plus the gates' map (half / prop)
            outs += (share_h + share_zr if gates else share_h,)
        return (r_h_prev,), outs + ((m_zr,) if gates else ())

    (r_h0,), out = time_loop(step, per_step, (r_h_last,), 1 + int(share) + int(gates), reverse=True)
    r_x = _input_relevance(x, out[0], maps_h, out[1] if share else None, mask)
    if gates:
        r_x = r_x + _input_relevance(x, out[-1], maps_zr, None, mask)
    return RecurrentRelevance(r_x, (r_h0,))


# ---------------------------------------------------------------------------------------------
# SimpleRNN (Keras SimpleRNNCell):  h_t = act(x_t W + h_{t-1} U + b)
# ---------------------------------------------------------------------------------------------

def simple_rnn_forward(x: Tensor, kernel: Tensor, recurrent_kernel: Tensor, bias,
                       activation: Callable, mask: Optional[Tensor] = None,
                       initial_state: Optional[Sequence[Tensor]] = None, caches: bool = True,
                       sequence: bool = True) -> Dict[str, Tensor]:
    """Run a SimpleRNN over its (already ordered) input sequence from ``initial_state`` = (h0,)
    (zeros when None).

    Args:
        x: (time, batch, e); kernel (e, d); recurrent_kernel (d, d); bias (d,) or None;
        mask: (time, batch, 1) bool or None (masked steps copy the state).

    Returns:
        (time, batch, d) tensors: hidden states ``h`` (carried over masked steps) and the
        pre-activations ``z = x_t W + h_{t-1} U + b``; the initial state ``h0`` and the last state
        ``last`` = (h_T,) (batch, d). With ``caches=False`` only ``h`` and ``last``, and with
        ``sequence=False`` too only ``last``.
    """
    xz = einsum("tbe,ed->tbd", x, kernel)
    if bias is not None:
        xz = xz + bias
    elems = _step_elements(xz, mask)
    n_out = _forward_outputs(caches, 2, sequence)

    def step(carry, e):
        h_tm1 = carry[0]
        z = e["xz"] + ops.matmul(h_tm1, recurrent_kernel)
        h = _carry_where_masked(e.get("mask"), activation(z), h_tm1)
        return (h,), ((h, z) if caches else (h,)[:n_out])

    h0, = _initial_states(xz[0], initial_state, 1)
    last, out = time_loop(step, elems, (h0,), n_out, differentiable=True)
    return dict(zip(("h", "z"), out), h0=h0, last=last)


def simple_rnn_relevance(x: Tensor, acts: Dict[str, Tensor], kernel: Tensor,
                         recurrent_kernel: Tensor, bias, r_h_last: Tensor, eps: Epsilon,
                         r_h_seq: Optional[Tensor] = None,
                         mask: Optional[Tensor] = None) -> RecurrentRelevance:
    """LRP through a SimpleRNN, in reverse over time (Arras et al. 2017, Sect. 3: the epsilon-rule
    on every linear map, element-wise activations pass relevance unchanged).

    Per step: ``h_t = act(z_t)`` passes R unchanged to ``z_t = x_t W + h_{t-1} U + b``, then the
    epsilon-rule over ``[x_t, h_{t-1}]`` with fan-in N = d + e. Masked steps copy their state: its
    relevance goes back unchanged and x_t gets exactly 0.

    Args:
        x: inputs (time, batch, e) in processing order; acts: the dict of :func:`simple_rnn_forward`;
        r_h_last: relevance on the last hidden state (batch, d); r_h_seq: optional relevance arriving
        on every output h_t (time, batch, d); mask: (time, batch, 1) bool or None.

    Returns:
        :class:`RecurrentRelevance`: input relevance and the relevance on (h0,).
    """
    maps = DenseMaps(kernel, recurrent_kernel, bias)
    fan_in = maps.fan_in()
    z = acts["z"]
    share = eps.has_bias_share
    per_step = {"inv_z": inverse_denominator(z, eps), "h_prev": _shift(acts["h"], acts.get("h0"))}
    if share:
        per_step["z"] = z
    if needs_zero_limit(eps):
        per_step["mag_x"] = maps.input_magnitude(x)
    if r_h_seq is not None:
        per_step["r_h"] = r_h_seq
    if mask is not None:
        per_step["mask"] = mask

    def step(carry, s):
        r_h = carry[0]
        if r_h_seq is not None:
            r_h = r_h + s["r_h"]
        m_z = r_h * s["inv_z"]
        limit = _step_limit(r_h, s.get("z"), s.get("mag_x"), s["h_prev"], maps, eps)
        r_h_prev, share_z = _to_previous_state(m_z, s["h_prev"], maps, s.get("z"), eps, fan_in, limit)
        if mask is not None:
            r_h_prev = ops.where(s["mask"], r_h_prev, r_h)
        return (r_h_prev,), ((m_z, share_z) if share else (m_z,))

    (r_h0,), out = time_loop(step, per_step, (r_h_last,), 2 if share else 1, reverse=True)
    return RecurrentRelevance(_input_relevance(x, out[0], maps, out[1] if share else None, mask), (r_h0,))
