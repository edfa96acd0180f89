"""Attention layers: Attention, AdditiveAttention and MultiHeadAttention, attention weights held constant.

An attention layer computes weights ``A = softmax(scores(query, key))`` (masked) and the weighted sum
``out_i = sum_j A_ij v_j`` over values. As gates in signal-take-all (Arras et al. 2017), the weights are
held constant (AttnLRP, Achtibat et al. 2024; Ali et al. 2022, "XAI for Transformers: Better
Explanations through Conservative Propagation"): relevance flows only through the value path, queries
and keys get none. Given A, the value path is linear, and every step is the epsilon-rule:

* MultiHeadAttention value projection ``V = x_v W_v + b_v`` (EinsumDense; N = value features);
* the weighted sum ``C_i = sum_j A_ij V_j`` per head and feature: ``R_{V_j} = sum_i (A_ij V_j +
  bias_factor eps sign(C_i) / N_i) / (C_i + eps sign C_i) R_{C_i}``, the stabiliser share spread over
  the N_i values query i may attend to (its mask row; all values for a fully masked row, over which
  the softmax then spreads);
* MultiHeadAttention output projection ``O = sum_{h, d} C_hd W_o + b_o`` (N = heads x value_dim).

With ``eps = 0, bias_factor = 1`` relevance is conserved. Masks are the ones Keras applies: the Keras
masks of query / value (and key) and ``use_causal_mask``. ``Attention`` zeroes the outputs of masked
queries; relevance reaching those constant zeros is parked in ``rest`` (as for masked Bidirectional
outputs). Dropout is inactive at inference.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Dict, List, Optional

import keras
from keras import ops

from .. import rules
from ..backend import Tensor, einsum
from ..graph import Node, Ref
from .base import Propagator, UnsupportedLayerError, register

__all__ = ["AttentionProp", "MultiHeadAttentionProp", "CallRoles", "call_roles", "weighted_sum_relevance"]

_LARGE = 1.0e9   # what Keras subtracts from / puts at masked scores (float32 and float64)


@dataclass(frozen=True)
class CallRoles:
    """How the layer was called: the position of query / value / key among the node's input tensors
    (``key`` None when it defaults to the value) and ``use_causal_mask``."""

    query: int
    value: int
    key: Optional[int]
    causal: bool


def _call_roles(layer, tensor_names: Dict[str, object], bound: inspect.BoundArguments,
                input_keys: List[int]) -> CallRoles:
    taken = set()

    def position(ref):
        for i, key in enumerate(input_keys):
            if isinstance(ref, Ref) and key == ref.key and i not in taken:
                taken.add(i)
                return i
        raise UnsupportedLayerError(layer, "could not find its query / value tensors among the call's inputs.")

    q, v = position(tensor_names["query"]), position(tensor_names["value"])
    k = position(tensor_names["key"]) if tensor_names.get("key") is not None else None
    if len(taken) != len(input_keys):
        raise UnsupportedLayerError(layer, "it is called with extra tensors (explicit mask or attention_mask "
                                           "tensors); only the Keras masks of query / value (Embedding(mask_zero), "
                                           "Masking) and use_causal_mask are supported.")
    if bound.arguments.get("return_attention_scores", False):
        raise UnsupportedLayerError(layer, "return_attention_scores=True: LRP explains one output tensor; call "
                                           "the layer with return_attention_scores=False.")
    return CallRoles(q, v, k, bool(bound.arguments.get("use_causal_mask", False)))


def call_roles(layer, node) -> CallRoles:
    """Read a call of the layer (``node``, a :class:`~keras_lrp.graph.Node`): which of its input tensors is
    query / value / key, and its call arguments."""
    bound = inspect.signature(layer.call).bind(*node.args, **node.kwargs)
    if isinstance(layer, keras.layers.MultiHeadAttention):
        names = {n: bound.arguments.get(n) for n in ("query", "value", "key")}
    else:
        inputs = bound.arguments["inputs"]
        names = {"query": inputs[0], "value": inputs[1], "key": inputs[2] if len(inputs) > 2 else None}
    return _call_roles(layer, names, bound, list(node.inputs))


def _only_call(layer) -> Node:
    """The layer's only call in the Keras graph, as a :class:`~keras_lrp.graph.Node` (tensors keyed by id)."""
    nodes = getattr(layer, "_inbound_nodes", [])
    if len(nodes) != 1:
        raise UnsupportedLayerError(layer, "an attention layer used on its own must be called exactly once.")
    kn = nodes[0]
    refs = lambda s: keras.tree.map_structure(  # noqa: E731
        lambda t: Ref(id(t)) if isinstance(t, keras.KerasTensor) else t, s)
    kwargs = {k: v for k, v in kn.arguments.kwargs.items() if k != "mask"}
    inputs = [id(t) for t in keras.tree.flatten((kn.arguments.args, kwargs)) if isinstance(t, keras.KerasTensor)]
    return Node(op=layer, inputs=inputs, outputs=[], args=refs(kn.arguments.args), kwargs=refs(kwargs))


def _connections(mask, shape, dtype):
    """(connections / N_i) for the weighted sum: mask (batch, [heads,] Tq, Tv) bool or None -> the
    per-row normalised connectivity, a fully masked row counting as connected to every value."""
    if mask is None:
        return None
    mask = ops.broadcast_to(mask, shape)
    conn = ops.where(ops.any(mask, axis=-1, keepdims=True), mask, True)
    conn = ops.cast(conn, dtype)
    return conn / ops.sum(conn, axis=-1, keepdims=True)


def weighted_sum_relevance(weights: Tensor, values: Tensor, out: Tensor, r_out: Tensor,
                           eps: rules.Epsilon, conn_over_n: Optional[Tensor], equation: str) -> Tensor:
    """Epsilon-rule through ``out = einsum(equation, weights, values)`` with the weights held constant.

    Args:
        weights: attention weights (softmax output); values: the values summed; out: the sum;
        r_out: relevance on out; conn_over_n: connectivity / N_i shaped like ``weights`` (None: all
        Tv values connected); equation: ``"weights,relevance->values"`` einsum, e.g. ``"bqv,bqd->bvd"``.
    """
    s = r_out * rules.inverse_denominator(out, eps)
    r_v = values * einsum(equation, weights, s)
    if eps.has_bias_share:
        if conn_over_n is None:
            n = ops.cast(ops.shape(weights)[-1], weights.dtype)
            conn_over_n = ops.ones_like(weights) / n
        limit = None
        if rules.needs_zero_limit(eps):   # the terms A_ij v_j (A >= 0): sum_j A_ij |v_j|
            operands, result = equation.split("->")
            forward = f"{operands.split(',')[0]},{result}->{operands.split(',')[1]}"
            limit = rules.zero_limit(r_out, out, einsum(forward, weights, ops.abs(values)), eps)
        r_v += eps.bias_factor * einsum(equation, conn_over_n, rules.share_numerator(s, out, None, eps, limit))
    return r_v


def _softmax(scores, mask, subtract: bool):
    """Keras's masked softmax: Attention subtracts 1e9 at masked scores, Softmax (MultiHeadAttention)
    replaces them by -1e9."""
    if mask is not None:
        large = ops.convert_to_tensor(_LARGE, scores.dtype)
        scores = ops.where(mask, scores, scores - large if subtract else -large)
    # Padded with -inf (weight exactly 0) to a multiple of 8 along the softmax axis: TensorFlow's
    # softmax kernel rounds a row differently depending on where it starts in memory unless every
    # row starts at a multiple of the vector width; padded, a sample's weights do not depend on its
    # position in the batch (bit-identical results across batch sizes).
    shape = ops.shape(scores)
    keys = shape[-1]
    padding = ops.full(tuple(shape[:-1]) + (-keys % 8,), -float("inf"), scores.dtype)
    return ops.softmax(ops.concatenate([scores, padding], axis=-1), axis=-1)[..., :keys]


def _value_only(inputs, value_position: int, r_value) -> List[Tensor]:
    """Relevance per input position: the value's, zeros for query and key (weights held constant)."""
    return [r_value if i == value_position else ops.zeros_like(x) for i, x in enumerate(inputs)]


def _causal(tq, tv):
    """(tq, tv) bool: query i may attend to values 0..i."""
    return ops.greater_equal(ops.arange(tq)[:, None], ops.arange(tv)[None, :])


@register(keras.layers.Attention, keras.layers.AdditiveAttention,
          rule="attention weights held constant (AttnLRP, Achtibat et al. 2024): epsilon-rule over the "
               "weighted sum of values (N = attended values); query and key get none")
class AttentionProp(Propagator):
    """``Attention`` (score_mode dot / concat, use_scale) and ``AdditiveAttention``: see module docstring."""

    def bind(self, node, walk) -> None:
        """Called by the walk with this call's graph node: which input is query, value, key."""
        self._roles = call_roles(self.layer, node)

    @property
    def roles(self) -> CallRoles:
        """The call's roles (see :meth:`bind`); for a propagator used on its own, from the layer's only call
        in a functional model."""
        if getattr(self, "_roles", None) is None:
            self._roles = call_roles(self.layer, _only_call(self.layer))
        return self._roles

    def __init__(self, layer, ctx, is_output=False):
        super().__init__(layer, ctx, is_output)
        self.additive = isinstance(layer, keras.layers.AdditiveAttention)
        self._as_keras = self._keras_may_run([layer])

    def _scores(self, q, k):
        layer, w = self.layer, self.ctx.weight
        if self.additive:
            t = ops.tanh(q[..., :, None, :] + k[..., None, :, :])
            return ops.sum((w(layer.scale) if layer.use_scale else 1.0) * t, axis=-1)
        if layer.score_mode == "dot":
            scores = ops.matmul(q, ops.swapaxes(k, -2, -1))
            return scores * w(layer.scale) if layer.use_scale else scores
        qk = q[..., :, None, :] + k[..., None, :, :]
        if layer.use_scale:
            qk = w(layer.scale) * qk
        return w(layer.concat_score_weight) * ops.sum(ops.tanh(qk), axis=-1)

    def forward(self, inputs, masks):
        roles = self.roles
        q, v = inputs[roles.query], inputs[roles.value]
        k = v if roles.key is None else inputs[roles.key]
        q_mask, v_mask = masks[roles.query], masks[roles.value]
        scores = self._scores(q, k)   # (batch, Tq, Tv)
        mask = None if v_mask is None else ops.cast(v_mask, "bool")[:, None, :]
        if roles.causal:
            causal = _causal(ops.shape(scores)[-2], ops.shape(scores)[-1])[None]
            mask = causal if mask is None else ops.logical_and(mask, causal)
        weights = _softmax(scores, mask, subtract=True)
        out = ops.matmul(weights, v)
        y = out
        if q_mask is not None:
            q_mask = ops.cast(q_mask, "bool")[:, :, None]
            y = ops.where(q_mask, out, ops.zeros_like(out))
        conn = _connections(mask, ops.shape(weights), weights.dtype)
        return [y], [q_mask[..., 0] if q_mask is not None else None], (inputs, weights, out, q_mask, conn)

    def relevance(self, cache, r_outs):
        inputs, weights, out, q_mask, conn = cache
        v = inputs[self.roles.value]
        r, rest = r_outs[0], None
        if q_mask is not None:   # masked queries output the constant 0: what reaches them goes to rest
            rest = ops.sum(ops.where(q_mask, ops.zeros_like(r), r), axis=(1, 2))
            r = ops.where(q_mask, r, ops.zeros_like(r))
        r_v = weighted_sum_relevance(weights, v, out, r, self.ctx.eps, conn, "bqv,bqd->bvd")
        return _value_only(inputs, self.roles.value, r_v), rest


@register(keras.layers.MultiHeadAttention,
          rule="attention weights held constant (AttnLRP, Achtibat et al. 2024; Ali et al. 2022): epsilon-rule "
               "through the output projection (N = heads x value_dim), the weighted sum (N = attended values) "
               "and the value projection (N = value features); query and key get none")
class MultiHeadAttentionProp(Propagator):
    """``MultiHeadAttention`` on (batch, time, features) inputs, default ``attention_axes``."""

    bind = AttentionProp.bind
    roles = AttentionProp.roles

    def __init__(self, layer, ctx, is_output=False):
        super().__init__(layer, ctx, is_output)
        if getattr(layer, "_use_gate", False):
            raise UnsupportedLayerError(layer, "use_gate=True is not supported.")
        if getattr(layer, "_sliding_window", None) is not None:
            raise UnsupportedLayerError(layer, "sliding_window is not supported.")
        if tuple(layer._attention_axes or ()) != (1,):
            raise UnsupportedLayerError(layer, f"attention_axes={layer.attention_axes!r}: only attention over "
                                               "the time axis of (batch, time, features) inputs (the default) "
                                               "is supported.")
        for dense, eq in ((layer._query_dense, "abc,cde->abde"), (layer._key_dense, "abc,cde->abde"),
                          (layer._value_dense, "abc,cde->abde"), (layer._output_dense, "abcd,cde->abe")):
            if dense.equation != eq:
                raise UnsupportedLayerError(layer, f"unexpected projection {dense.equation!r}; inputs must be "
                                                   "(batch, time, features).")
        self._as_keras = self._keras_may_run([layer])

    def _project(self, dense, x, eq):
        w = self.ctx.weight(dense.kernel)
        b = self.ctx.weight(dense.bias) if dense.bias is not None else None
        z = einsum(eq, x, w)
        return (z if b is None else z + b), w, b

    def forward(self, inputs, masks):
        layer, roles = self.layer, self.roles
        q_in, v_in = inputs[roles.query], inputs[roles.value]
        k_in = v_in if roles.key is None else inputs[roles.key]
        # the attention mask Keras builds from the query / value / key masks and use_causal_mask
        mask = None
        for m, axis in ((masks[roles.query], -1), (masks[roles.value], -2),
                        (masks[roles.key] if roles.key is not None else None, -2)):
            if m is not None:
                m = ops.expand_dims(ops.cast(m, "bool"), axis)
                mask = m if mask is None else ops.logical_and(mask, m)
        if roles.causal:
            causal = _causal(ops.shape(q_in)[1], ops.shape(v_in)[1])[None]
            mask = causal if mask is None else ops.logical_and(mask, causal)
        if mask is not None:
            mask = mask[:, None]   # (batch, 1 = heads, Tq, Tv)
        q, _, _ = self._project(layer._query_dense, q_in, "abc,cde->abde")   # (batch, Tq, heads, key_dim)
        k, _, _ = self._project(layer._key_dense, k_in, "abc,cde->abde")
        v, w_v, b_v = self._project(layer._value_dense, v_in, "abc,cde->abde")   # (batch, Tv, heads, value_dim)
        q = q * ops.convert_to_tensor(layer._inverse_sqrt_key_dim, q.dtype)
        weights = _softmax(einsum("aecd,abcd->acbe", k, q), mask, subtract=False)   # (batch, heads, Tq, Tv)
        c = einsum("acbe,aecd->abcd", weights, v)                                    # (batch, Tq, heads, value_dim)
        o, w_o, b_o = self._project(layer._output_dense, c, "abcd,cde->abe")
        conn = _connections(mask, ops.shape(weights), weights.dtype)
        out_mask = masks[roles.query]
        return [o], [out_mask], (inputs, v, w_v, b_v, weights, c, w_o, b_o, o, conn)

    def relevance(self, cache, r_outs):
        inputs, v, w_v, b_v, weights, c, w_o, b_o, o, conn = cache
        v_in, eps = inputs[self.roles.value], self.ctx.eps
        # output projection O = sum_{h,d} C_hd W_o[h, d] + b_o  (N = heads x value_dim)
        s = r_outs[0] * rules.inverse_denominator(o, eps)
        r_c = c * einsum("abe,cde->abcd", s, w_o)
        if eps.has_bias_share:
            limit = self._limit(r_outs[0], o, c, w_o, b_o, "abcd,cde->abe")
            r_c += rules.bias_share(s, o, b_o, eps, w_o.shape[0] * w_o.shape[1], limit)[..., None]
        # weighted sum over values, per head (weights held constant)
        r_v = weighted_sum_relevance(weights, v, c, r_c, eps, conn, "acbe,abcd->aecd")
        # value projection V = x_v W_v + b_v  (N = value features)
        s = r_v * rules.inverse_denominator(v, eps)
        r_x = v_in * einsum("abde,cde->abc", s, w_v)
        if eps.has_bias_share:
            a = rules.share_numerator(s, v, b_v, eps, self._limit(r_v, v, v_in, w_v, b_v, "abc,cde->abde"))
            r_x += (eps.bias_factor / w_v.shape[0]) * ops.sum(a, axis=(2, 3))[..., None]
        return _value_only(inputs, self.roles.value, r_x), None

    def _limit(self, r, z, x, w, b, equation: str):
        """:func:`~keras_lrp.rules.zero_limit` of the projection ``z = einsum(equation, x, w) + b``."""
        if not rules.needs_zero_limit(self.ctx.eps):
            return None
        magnitude = einsum(equation, ops.abs(x), ops.abs(w))
        return rules.zero_limit(r, z, magnitude if b is None else magnitude + ops.abs(b), self.ctx.eps)
