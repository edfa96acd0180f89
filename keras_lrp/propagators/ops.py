"""``keras.ops`` op nodes written between layers, ``keras.layers.Multiply``, softmax / sigmoid gates and
Lambda layers declared linear.

Keras 3 records every ``keras.ops`` call on symbolic tensors as an op node of the model graph
(``h[:, -1]`` is a ``GetItem`` node, ``ops.sum(w * h, axis=1)`` a ``Multiply`` and a ``Sum`` node).
Their rules:

* selections and re-arrangements (slicing, reshape, transpose, squeeze, expand_dims, concatenate,
  stack, cast): every output element is one input element, so relevance is routed back unchanged
  (the vector-Jacobian product of the 0/1 selection);
* ``sum`` / ``mean`` over axes and ``add`` / ``subtract`` of tensors: the epsilon-rule over the summed
  terms (``N`` = number of terms; constants added are a bias);
* multiply / divide by a constant, negation: ``y = c x`` passes relevance unchanged;
* the product of two input-dependent tensors where one factor is a softmax / sigmoid (attention
  weights, a gate): the gate is held constant and the signal takes all the relevance (AttnLRP,
  Achtibat et al. 2024; Ali et al. 2022, "XAI for Transformers"; the signal-take-all rule of Arras
  et al. 2017). A product of two input-dependent tensors without such a gate has no rule and is
  refused.

Op propagators receive their graph node through :meth:`OpPropagator.bind` before any computation.
"""
from __future__ import annotations

import re
from typing import List, Optional

import keras
from keras import ops, tree
from keras.src.ops import core as _core, nn as _nn, numpy as _np

from .. import backend, rules
from ..graph import Ref
from .base import Propagator, UnsupportedLayerError, lookup, register
from .linear import gradient_linear

__all__ = ["UnsupportedOpError", "OpPropagator", "RouteProp", "CastProp", "ReduceProp", "SumProp",
           "NegativeProp", "MultiplyProp", "GateProp", "LambdaLinearProp", "op_function_name", "is_op",
           "GATE_OPS", "SHAPE_OPS"]



def is_op(op) -> bool:
    """A ``keras.ops`` operation node (not a layer)."""
    return not isinstance(op, keras.layers.Layer)


def op_function_name(op) -> str:
    """``keras.ops.get_item`` for a ``GetItem`` node (or class): the function that records it."""
    cls = op if isinstance(op, type) else type(op)
    return "keras.ops." + re.sub(r"(?<!^)(?=[A-Z])", "_", cls.__name__).lower()


class UnsupportedOpError(UnsupportedLayerError):
    """An op node (``keras.ops`` call written between layers) without an LRP rule."""

    def __init__(self, op, why: Optional[str] = None):
        if why is None:   # rebuilt from its message (see UnsupportedLayerError)
            ValueError.__init__(self, str(op))
            self.layer = None
            return
        ValueError.__init__(self, f"op node {op.name!r} ({op_function_name(op)}) has no LRP rule; {why}")
        self.layer = op


def _unbroadcast(r, x):
    """Sum ``r`` over the axes ``x`` was broadcast along to reach ``r``'s shape: shape of ``x``."""
    return backend.vjp(lambda t: [t + ops.zeros_like(r)], [x], [r])[0]


def _is_float(t) -> bool:
    return ops.is_tensor(t) and "float" in keras.backend.standardize_dtype(t.dtype)


class OpPropagator(Propagator):
    """Base of the propagators that need their graph node: the op's arguments (a slice, an axis,
    a constant) and which inputs carry relevance."""

    def bind(self, node, walk) -> None:
        """Called once by the walk, before any computation: ``node`` is the :class:`~keras_lrp.graph.Node`,
        ``walk`` answers ``is_relevant(key)`` and ``graph``. Raise here to refuse a call."""
        self.node, self.walk = node, walk
        self.relevant = [walk.is_relevant(k) for k in node.inputs]

    def call_op(self, inputs: List, masks: Optional[List] = None):
        """Run the op (or the layer's ``call``) on concrete tensors, with its recorded arguments."""
        values = dict(zip(self.node.inputs, inputs))
        for key, m in zip(self.node.masks, masks or []):
            if key is not None:
                values[key] = m
        args, kwargs = self.node.fill_in(values)
        if isinstance(self.layer, keras.layers.Layer):
            kwargs.pop("training", None)
        return self.layer.call(*args, **kwargs)


#: ops whose every output element is one input element (a copy, a selection, the winner of a max)
ROUTE_OPS = (_np.GetItem, _np.Reshape, _np.Transpose, _np.Squeeze, _np.ExpandDims, _np.Concatenate, _np.Stack,
             _np.Moveaxis, _np.Swapaxes, _np.Repeat, _np.Tile, _np.Flip, _np.Roll, _np.BroadcastTo, _np.Pad,
             _np.Split, _np.Take, _np.TakeAlongAxis, _np.Where, _np.Maximum, _np.Minimum)


@register(*ROUTE_OPS, rule="identity: each output element is one input element (copied, selected, or the winner of "
                           "a maximum / minimum), R is routed back unchanged; constants it copies get none")
class RouteProp(OpPropagator):
    """Selecting and re-arranging ops: ``R_x`` is the vector-Jacobian product of the 0/1 selection."""

    def forward(self, inputs, masks):
        ys = tree.flatten(self.call_op(inputs, masks))
        return ys, [None] * len(ys), inputs

    def relevance(self, inputs, r_outs):
        grads = iter(_vjp_floats(lambda values: tree.flatten(self.call_op(values)), inputs, list(r_outs)))
        return [next(grads) if _is_float(x) else None for x in inputs], None


@register(_core.Cast, rule="identity: R unchanged (floats stay in the explainer's dtype)")
class CastProp(OpPropagator):
    post_padding_safe = True

    def forward(self, inputs, masks):
        return [inputs[0]], [None], None

    def relevance(self, cache, r_outs):
        return [r_outs[0]], None


@register(_np.Sum, _np.Mean, rule="epsilon-rule over the summed terms (N = number of terms)")
class ReduceProp(OpPropagator):
    """``y = sum_i x_i`` (or the mean) over axes: epsilon-rule, ``N`` the number of summed terms."""

    def _connections(self):
        op = self.layer
        return lambda x: ops.sum(x, axis=op.axis, keepdims=op.keepdims)

    def forward(self, inputs, masks):
        y = self.call_op(inputs)
        return [y], [None], (inputs[0], y)

    def relevance(self, cache, r_outs):
        x, y = cache
        f = lambda t: self.call_op([t])  # noqa: E731
        return [gradient_linear(f, x, y, None, r_outs[0], self.ctx.eps, self._connections())], None


@register(_np.Add, _np.Subtract, keras.layers.Subtract,
          rule="epsilon-rule over the summands (N = number of input-dependent summands; constants are a bias)")
class SumProp(OpPropagator):
    """``z = ±x1 ± x2``: each input-dependent term is a contribution; constants act as a bias. The bias
    ``+ b`` of a traced ``matmul(x, W) + b`` is explained with the product (:func:`folded_bias`)."""

    #: True when the product before it explains this addition with it (see :meth:`bind`)
    folded = False

    def bind(self, node, walk):
        super().bind(node, walk)
        producers = [walk.graph.producer(k) for k, rel in zip(node.inputs, self.relevant) if rel]
        self.folded = len(producers) == 1 and producers[0] is not None and folded_bias(producers[0], walk) is node

    def forward(self, inputs, masks):
        z = self.call_op(inputs)
        return [z], [None], (inputs, z)

    def relevance(self, cache, r_outs):
        if self.folded:
            return [r_outs[0] if rel else None for rel in self.relevant], None
        inputs, z = cache
        eps = self.ctx.eps
        signs = self._signs()
        terms = [sign * x for x, sign, rel in zip(inputs, signs, self.relevant) if rel]
        bias = None
        if eps.has_bias_share:
            broadcast = [t + ops.zeros_like(z) for t in terms]
            bias = z - sum(broadcast[1:], broadcast[0])   # the constants' sum
        relevance = iter(rules.elementwise_sum(terms, z, r_outs[0], eps, bias))
        return [_unbroadcast(next(relevance), x) if rel else None for x, rel in zip(inputs, self.relevant)], None

    def _signs(self):
        """The sign of each tensor argument in ``z`` (Subtract: x1 - x2)."""
        if isinstance(self.layer, keras.layers.Subtract):
            return [1.0, -1.0]
        signs = []
        for pos, a in enumerate(self.node.args):
            if isinstance(a, Ref):
                signs.append(-1.0 if (pos == 1 and isinstance(self.layer, _np.Subtract)) else 1.0)
        return signs


@register(_np.Negative, rule="y = -x: R passes unchanged")
class NegativeProp(OpPropagator):
    post_padding_safe = True

    def forward(self, inputs, masks):
        return [-inputs[0]], [None], None

    def relevance(self, cache, r_outs):
        return [r_outs[0]], None


#: ops and layers whose output is a gate (attention weights): held constant in a product.
GATE_OPS = (_nn.Softmax, _nn.Sigmoid, keras.layers.Softmax)
_GATE_ACTIVATIONS = ("softmax", "sigmoid", "hard_sigmoid")
#: ops and layers that only move elements: a gate stays a gate through them.
SHAPE_OPS = (_np.GetItem, _np.Reshape, _np.Transpose, _np.Squeeze, _np.ExpandDims, _np.Moveaxis, _np.Swapaxes,
             _core.Cast, keras.layers.Reshape, keras.layers.Permute, keras.layers.RepeatVector,
             keras.layers.Flatten)


#: element-wise arithmetic that keeps attention weights attention weights when every input-dependent
#: operand is one (a mask applied, a renormalisation ``a / sum(a)``)
_GATE_ARITHMETIC = (_np.Multiply, _np.Divide, _np.TrueDivide, _np.Add, _np.Subtract, _np.Sum, _np.Mean,
                    keras.layers.Multiply)


def _is_gate(walk, key) -> bool:
    """Whether tensor ``key`` holds attention weights or a gate: the output of a softmax / sigmoid (or of
    ``exp``, the numerator of a softmax written by hand), re-arranged, masked by a constant, or
    renormalised by its own sum."""
    node = walk.graph.producer(key)
    if node is None:
        return False
    op = node.op
    if isinstance(op, GATE_OPS + (_np.Exp,)):
        return True
    inner = op.layer if isinstance(op, keras.layers.TimeDistributed) else op
    if isinstance(inner, (keras.layers.Activation, keras.layers.Dense)):
        return getattr(inner.activation, "__name__", "") in _GATE_ACTIVATIONS
    if isinstance(op, SHAPE_OPS) and node.inputs:
        return _is_gate(walk, node.inputs[0])
    if isinstance(op, _GATE_ARITHMETIC):
        dependent = [k for k in node.inputs if walk.is_relevant(k)]
        return bool(dependent) and all(_is_gate(walk, k) for k in dependent)
    return False


@register(_np.Multiply, _np.Divide, _np.TrueDivide, keras.layers.Multiply,
          rule="times / divided by a constant: R unchanged; gate x signal (one factor attention weights or a "
               "gate: a softmax, sigmoid or exp output, possibly masked or renormalised): the gate is held "
               "constant, the signal takes all (AttnLRP, Achtibat et al. 2024)")
class MultiplyProp(OpPropagator):
    """``y = x1 * x2`` (or ``x1 / x2``, or the ``Multiply`` layer's product of its inputs)."""

    def bind(self, node, walk):
        super().bind(node, walk)
        relevant = [i for i, r in enumerate(self.relevant) if r]
        if isinstance(self.layer, (_np.Divide, _np.TrueDivide)) and len(node.inputs) == 2 and self.relevant[1]:
            raise UnsupportedOpError(self.layer, "dividing by an input-dependent tensor is not linear; "
                                                 "only division by a constant is supported.")
        signals = [i for i in relevant if not _is_gate(walk, node.inputs[i])]
        if len(relevant) > 1 and len(signals) != 1:
            why = ("every factor is a softmax / sigmoid (no signal)" if not signals
                   else "neither factor is a softmax / sigmoid gate" if len(signals) == len(relevant)
                   else "several factors are not softmax / sigmoid gates")
            why = (f"{why}: a product is supported when one factor is a softmax or sigmoid (attention "
                   "weights or a gate, held constant) or a constant.")
            if is_op(self.layer):
                raise UnsupportedOpError(self.layer, f"it multiplies input-dependent tensors and {why}")
            raise UnsupportedLayerError(self.layer, f"it multiplies input-dependent tensors and {why}")
        self.signal = signals[0] if signals else (relevant[0] if relevant else 0)
        self.no_relevance_inputs = tuple(i for i in range(len(node.inputs)) if i != self.signal)

    def forward(self, inputs, masks):
        if isinstance(self.layer, keras.layers.Multiply):
            y = inputs[0]
            for x in inputs[1:]:
                y = y * x
        else:
            y = self.call_op(inputs)
        return [y], [None], inputs[self.signal]

    def relevance(self, signal, r_outs):
        out = [None] * len(self.node.inputs)
        out[self.signal] = _unbroadcast(r_outs[0], signal)
        return out, None


@register(*GATE_OPS, rule="gate: held constant where it multiplies a signal (gets no relevance); "
                          "at the output: the explained score is its input; a sigmoid elsewhere is an element-wise "
                          "activation (R unchanged)")
class GateProp(OpPropagator):
    """Softmax / sigmoid: a gate (attention weights) of a product, or the output activation; a sigmoid
    elsewhere on the relevance path is an element-wise activation (R passes unchanged)."""

    @property
    def gate_only(self) -> bool:
        return not isinstance(self.layer, _nn.Sigmoid)

    def forward(self, inputs, masks):
        if self.is_output:
            return [inputs[0]], [None], None
        if isinstance(self.layer, keras.layers.Layer) and masks and masks[0] is not None:
            return [self.layer.call(inputs[0], mask=masks[0])], [None], None
        return [self.layer.call(inputs[0])], [None], None

    def relevance(self, cache, r_outs):
        return [r_outs[0]], None   # only reached as the output activation (identity)

    @property
    def activation_name(self):
        return "sigmoid" if isinstance(self.layer, _nn.Sigmoid) else "softmax"

    def activate(self, y):
        return self.call_op([y])


#: element-wise activations written as keras.ops calls (in traced layers, or between layers)
ELEMENTWISE_ACTIVATIONS = (_nn.Relu, _nn.Relu6, _np.Tanh, _nn.Gelu, _nn.Elu, _nn.Selu, _nn.Softplus, _nn.Softsign,
                           _nn.Silu, _nn.LeakyRelu, _nn.HardSigmoid, _nn.HardSilu, _nn.Celu, _nn.HardTanh)


@register(*ELEMENTWISE_ACTIVATIONS, rule="element-wise activation: R passes unchanged (as for Activation layers); "
                                         "at the output: the explained score is its input")
class ElementwiseProp(OpPropagator):
    """``y = act(x)`` element-wise (Arras et al. 2017: activations pass relevance unchanged)."""

    post_padding_safe = True

    def forward(self, inputs, masks):
        return [inputs[0] if self.is_output else self.call_op(inputs)], [None], None

    def relevance(self, cache, r_outs):
        return [r_outs[0]] + [None] * (len(self.node.inputs) - 1), None

    @property
    def activation_name(self):
        return re.sub(r"(?<!^)(?=[A-Z])", "_", type(self.layer).__name__).lower()

    def activate(self, y):
        return self.call_op([y])


@register(_np.Matmul, _np.Einsum, _np.Tensordot, _np.Dot,
          rule="a product with weights (a traced layer's add_weight) or with attention weights (held constant): "
               "epsilon-rule over the contracted terms (N = connected inputs); a product of two signals is refused")
class ProductMapProp(OpPropagator):
    """``z = op(x, W)``: linear in the one input-dependent operand ``x`` that is not a gate, the other operands
    (weights, constants, attention weights) held constant; the epsilon-rule over the contraction, each
    output's share spread over the inputs connected to it (non-zero weights)."""

    def bind(self, node, walk):
        super().bind(node, walk)
        relevant = [i for i, r in enumerate(self.relevant) if r]
        signals = [i for i in relevant if not _is_gate(walk, node.inputs[i])]
        if len(signals) != 1:
            raise UnsupportedOpError(self.layer, "it multiplies two input-dependent tensors, neither of them "
                                                 "attention weights (a softmax); LRP has no rule for a product of "
                                                 "two signals." if signals else
                                     "every input-dependent operand is attention weights (no signal).")
        self.signal = signals[0]
        self.no_relevance_inputs = tuple(i for i in range(len(node.inputs)) if i != self.signal)
        self.bias_node = folded_bias(node, walk)

    def _map(self, inputs, transform=None):
        """``t -> op(...)`` with the signal replaced by ``t`` and every other tensor operand by
        ``transform(operand)`` (unchanged when None)."""
        values = dict(zip(self.node.inputs, inputs))
        signal_key = self.node.inputs[self.signal]

        def operand(a):
            if isinstance(a, Ref):
                return _SIGNAL if a.key == signal_key else (values[a.key] if transform is None
                                                            else transform(values[a.key]))
            if transform is not None and (_is_tensor_like(a)):
                return transform(a)
            return a
        args, kwargs = tree.map_structure(operand, self.node.args), tree.map_structure(operand, self.node.kwargs)

        def f(t):
            put = lambda a: t if a is _SIGNAL else a  # noqa: E731
            return self.layer.call(*tree.map_structure(put, args), **tree.map_structure(put, kwargs))
        return f

    def forward(self, inputs, masks):
        z = self.call_op(inputs)
        return [z], [None], (inputs, z)

    def relevance(self, cache, r_outs):
        inputs, z = cache
        x = inputs[self.signal]
        bias = None
        if self.bias_node is not None:   # explained with its "+ b" (which passes R through)
            bias = keras.ops.cast(_bias_of(self.bias_node), z.dtype)
            z = z + bias
        r_x = gradient_linear(self._map(inputs), x, z, bias, r_outs[0], self.ctx.eps,
                              connections=self._map(inputs, lambda w: keras.ops.cast(keras.ops.not_equal(w, 0), x.dtype)),
                              absolute=self._map(inputs, keras.ops.abs))
        out = [None] * len(inputs)
        out[self.signal] = r_x
        return out, None


_SIGNAL = object()


def folded_bias(node, walk):
    """The call ``+ b`` that adds a constant bias to the product ``node`` (``ops.matmul(x, self.W) + self.b``
    in a traced layer), so that the pair is explained as one map with a bias, as a Dense layer is; or None.

    It folds when ``node`` is a matmul / einsum / tensordot / dot whose one output is not the model output
    and is read only by an ``add`` whose other operand is a weight or constant (not a graph tensor)."""
    if not isinstance(node.op, (_np.Matmul, _np.Einsum, _np.Tensordot, _np.Dot)) or len(node.outputs) != 1:
        return None
    key = node.outputs[0]
    readers = walk.graph.consumers(key)
    if key == walk.graph.output or len(readers) != 1:
        return None
    add = readers[0]
    if not isinstance(add.op, _np.Add) or add.inputs != [key] or len(add.args) != 2:
        return None
    return add


def _bias_of(add) -> object:
    """The constant operand of a folded ``+ b`` call (see :func:`folded_bias`)."""
    return next(a for a in add.args if not isinstance(a, Ref))


def _is_tensor_like(a) -> bool:
    return isinstance(a, keras.Variable) or ops.is_tensor(a) or (hasattr(a, "shape") and hasattr(a, "dtype")
                                                                 and not isinstance(a, (str, bytes)))


class LambdaLinearProp(OpPropagator):
    """A ``Lambda`` the user declared linear (``layer_rules={name: "linear"}``): epsilon-rule on its
    Jacobian, ``R_x = x * J^T (R / (y + eps sign y))`` (no bias share: its connections are unknown)."""

    rule = "declared linear (layer_rules): epsilon-rule on its Jacobian"

    def forward(self, inputs, masks):
        y = self.call_op(inputs, masks)
        return [y], [None], (inputs, masks, y)

    def relevance(self, cache, r_outs):
        inputs, masks, y = cache
        s = ops.stop_gradient(r_outs[0] * rules.inverse_denominator(y, self.ctx.eps))
        grads = iter(_vjp_floats(lambda values: [self.call_op(values, masks)], inputs, [s]))
        return [x * next(grads) if _is_float(x) else None for x in inputs], None


def _vjp_floats(f, inputs: List, cotangents: List) -> List:
    """The vector-Jacobian product of ``f(inputs) -> outputs`` with respect to the float ``inputs``
    (the others held as they are): one tensor per float input, zeros where no output depends on it."""
    floats = [i for i, x in enumerate(inputs) if _is_float(x)]

    def of_floats(*values):
        merged = list(inputs)
        for i, v in zip(floats, values):
            merged[i] = v
        return f(merged)
    return backend.vjp(of_floats, [inputs[i] for i in floats], cotangents)


def op_registered(op) -> bool:
    return lookup(op) is not None
