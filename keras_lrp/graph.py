"""Model graph handling: reading a Keras model as its calls (layer calls and ``keras.ops`` op nodes),
and swapping in LRP_LSTMCell.

Keras 3 draws every model (Sequential ones through their internal functional graph) as a graph of
*nodes*: one per layer call and one per ``keras.ops`` call written between layers (``h[:, -1]``,
``ops.concatenate``, ...), with masks as explicit tensors (``Embedding(mask_zero=True)`` and
``Masking`` add ``NotEqual`` / ``Any`` op nodes whose output reaches each RNN's ``mask`` argument).
:func:`model_graph` reads that graph as it is; a layer called twice (a shared encoder) gives one
:class:`Node` per call.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import keras
from keras import tree

from .cells import LRP_LSTMCell

__all__ = ["Graph", "Node", "model_graph", "lrpify_model"]

# Arguments of keras.layers.LSTM that belong to the RNN wrapper rather than the cell.
_RNN_KEYS = ("return_sequences", "return_state", "go_backwards", "stateful", "unroll",
             "zero_output_for_mask", "name", "trainable", "dtype")
# Arguments of keras.layers.LSTM that neither RNN nor LSTMCell takes.
_DROPPED_KEYS = ("use_cudnn", "implementation")


@dataclass(frozen=True)
class Ref:
    """A tensor argument of a call, by the key of the tensor in the :class:`Graph`."""

    key: int


@dataclass
class Node:
    """One call of a layer or of a ``keras.ops`` operation.

    Attributes:
        op: the layer or the op (a ``keras.src.ops.Operation``).
        inputs: keys of the tensors it reads (every tensor argument but ``mask``, in call order).
        outputs: keys of the tensors it writes.
        masks: per input, the key of the mask tensor given through ``mask=`` (or None).
        args / kwargs: the call's arguments, each tensor replaced by its :class:`Ref` (non-tensor
            arguments as given: a slice, an axis, a weight variable of a traced layer).
        output_shapes: the symbolic shape of each output.
        path: where the call was found: ``""`` for the model itself, ``"encoder/"`` inside a nested
            model or a traced layer ``encoder``.
        trace_error: for a layer whose ``call`` could not be traced into simpler calls (see
            :mod:`keras_lrp.canonical`), why, to refuse it with if relevance must pass through it.
    """

    op: Any
    inputs: List[int]
    outputs: List[int]
    masks: List[Optional[int]] = field(default_factory=list)
    args: tuple = ()
    kwargs: Dict[str, Any] = field(default_factory=dict)
    output_shapes: List[tuple] = field(default_factory=list)
    path: str = ""
    trace_error: Optional[str] = None

    @property
    def layer(self):
        return self.op

    @property
    def is_layer(self) -> bool:
        return isinstance(self.op, keras.layers.Layer)

    def fill_in(self, values: Dict[int, Any]):
        """``(args, kwargs)`` with every :class:`Ref` replaced by its value in ``values`` (by key)."""
        def value(a):
            return values[a.key] if isinstance(a, Ref) else a
        return tree.map_structure(value, self.args), tree.map_structure(value, self.kwargs)


@dataclass
class Graph:
    """A model as its calls in topological order; tensors are named by integer keys.

    Attributes:
        nodes: every call but the input layers, producers before consumers.
        inputs: keys of the model inputs, in the order of ``model.inputs``.
        output: key of the explained model output.
        input_shapes / input_dtypes / input_names: per model input.
        dtypes: dtype of every tensor, by key.
        output_shape: the symbolic shape of the explained output.
        outputs / output_names: every model output (a model may have several; ``output`` is one).
        carried_mask_shapes: the shape of the Keras mask a tensor carries in the model's symbolic
            graph, by key (only tensors that carry one).
    """

    nodes: List[Node]
    inputs: List[int]
    output: int
    input_shapes: List[tuple]
    input_dtypes: List[str]
    input_names: List[str]
    dtypes: Dict[int, str] = field(default_factory=dict)
    output_shape: tuple = ()
    outputs: List[int] = field(default_factory=list)
    output_names: List[str] = field(default_factory=list)
    carried_mask_shapes: Dict[int, tuple] = field(default_factory=dict)

    @property
    def input(self) -> int:
        return self.inputs[0]

    @property
    def input_shape(self) -> tuple:
        return self.input_shapes[0]

    @property
    def input_dtype(self) -> str:
        return self.input_dtypes[0]

    def producer(self, key: int) -> Optional[Node]:
        return next((n for n in self.nodes if key in n.outputs), None)

    def shape_of(self, key: int) -> Optional[tuple]:
        """The symbolic shape of tensor ``key`` (a model input or a call's output), None if unknown."""
        if key in self.inputs:
            return tuple(self.input_shapes[self.inputs.index(key)])
        node = self.producer(key)
        return None if node is None else tuple(node.output_shapes[node.outputs.index(key)])

    def is_padding_mask(self, key: int) -> bool:
        """Whether tensor ``key`` is ``ids != 0`` of a model input: the mask of an ``Embedding(mask_zero=True)``,
        as the canonical graph computes it for the calls that take it as ``mask=``."""
        node = self.producer(key)
        if node is None or type(node.op).__name__ != "NotEqual" or len(node.args) != 2:
            return False
        ids, value = node.args
        return isinstance(ids, Ref) and ids.key in self.inputs and isinstance(value, (int, float)) and value == 0

    def consumers(self, key: int) -> List[Node]:
        return [n for n in self.nodes if key in n.inputs]


def model_graph(model: keras.Model, output=None, keep=()) -> Graph:
    """Read a built Keras model (Sequential, functional or subclassed; one or several inputs) as the
    :class:`Graph` of its canonical form (:func:`keras_lrp.canonical.canonicalize`: nested models
    inlined, layers without a propagator traced into their calls), explaining output ``output`` (a
    name or an index; the only output by default). Layers named in ``keep`` are not traced.

    Raises:
        TypeError / ValueError: for non-models, unbuilt models, or an ``output`` that names none.
    """
    from .canonical import canonicalize
    return canonicalize(model, output, keep)


def _lrp_rnn_from_lstm(layer) -> keras.layers.RNN:
    config = layer.get_config()
    rnn_kwargs = {k: config.pop(k) for k in _RNN_KEYS if k in config}
    for k in _DROPPED_KEYS:
        config.pop(k, None)
    cell = LRP_LSTMCell(**config)
    return keras.layers.RNN(cell, **rnn_kwargs)


def _swap(layer):
    if isinstance(layer, keras.layers.LSTM):
        return _lrp_rnn_from_lstm(layer)
    if isinstance(layer, keras.layers.Bidirectional) and isinstance(layer.forward_layer, keras.layers.LSTM):
        backward = _lrp_rnn_from_lstm(layer.backward_layer)
        return keras.layers.Bidirectional(_lrp_rnn_from_lstm(layer.forward_layer),
                                          merge_mode=layer.merge_mode, backward_layer=backward,
                                          name=layer.name)
    return layer.__class__.from_config(layer.get_config())


def lrpify_model(model: keras.Model) -> keras.Model:
    """A new model in which every ``LSTM`` and ``Bidirectional(LSTM)`` is an ``RNN(LRP_LSTMCell)``.

    Same configuration, same weights, same wiring (Sequential and functional models). The original
    model is not modified.
    """
    if not isinstance(model, keras.Model):
        raise TypeError(f"expected a keras.Model, got {type(model).__name__}.")
    if not model.built:
        raise ValueError("the model is not built: call it on data (or give it an Input) first.")
    new = keras.models.clone_model(model, clone_function=_swap)
    new.set_weights(model.get_weights())
    return new
