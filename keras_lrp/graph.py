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


@dataclass
class Node:
    """One call of a layer or of a ``keras.ops`` operation.

    Attributes:
        op: the layer or the op (a ``keras.src.ops.Operation``).
        inputs: keys of the tensors it reads (every tensor argument but ``mask``, in call order).
        outputs: keys of the tensors it writes.
        masks: per input, the key of the mask tensor given through ``mask=`` (or None).
        call: the Keras node (its ``arguments`` hold the non-tensor arguments, e.g. a slice).
    """

    op: Any
    inputs: List[int]
    outputs: List[int]
    masks: List[Optional[int]] = field(default_factory=list)
    call: Any = None

    @property
    def layer(self):
        return self.op

    @property
    def is_layer(self) -> bool:
        return isinstance(self.op, keras.layers.Layer)


@dataclass
class Graph:
    """A model as its calls in topological order; tensors are named by integer keys.

    Attributes:
        nodes: every call but the input layers, producers before consumers.
        inputs: keys of the model inputs, in the order of ``model.inputs``.
        output: key of the (single) model output.
        input_shapes / input_dtypes / input_names: per model input.
        dtypes: dtype of every tensor, by key.
    """

    nodes: List[Node]
    inputs: List[int]
    output: int
    input_shapes: List[tuple]
    input_dtypes: List[str]
    input_names: List[str]
    dtypes: Dict[int, str] = field(default_factory=dict)

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

    def consumers(self, key: int) -> List[Node]:
        return [n for n in self.nodes if key in n.inputs]


def _is_input(layer) -> bool:
    return isinstance(layer, keras.layers.InputLayer)


def _check_model(model):
    if not isinstance(model, keras.Model):
        raise TypeError(f"expected a keras.Model, got {type(model).__name__}.")
    try:
        inputs = model.inputs
    except (AttributeError, ValueError):
        inputs = None
    if not model.built or not inputs:
        raise ValueError("the model is not built: call it on data (or give it an Input) first.")
    if len(model.outputs) != 1:
        raise ValueError(f"model {model.name!r} has {len(model.outputs)} outputs; keras_lrp explains "
                         "single-output models (build one Model per output to explain).")


def _functional(model):
    if isinstance(model, keras.Sequential):
        functional = getattr(model, "_functional", None)
        if functional is None:
            raise ValueError("the model is not built: call it on data (or give it an Input) first.")
        return functional
    return model


def _masks_for(inputs: List, mask) -> List[Optional[int]]:
    """The ``mask=`` argument of a call, one key (or None) per data input."""
    if mask is None:
        return [None] * len(inputs)
    if isinstance(mask, (list, tuple)) and len(mask) == len(inputs):
        return [id(m) if isinstance(m, keras.KerasTensor) else None for m in mask]
    flat = [m for m in tree.flatten(mask) if isinstance(m, keras.KerasTensor)]
    first = id(flat[0]) if flat else None
    return [first] + [None] * (len(inputs) - 1)


def _node(keras_node) -> Node:
    arguments = keras_node.arguments
    kwargs = {k: v for k, v in arguments.kwargs.items() if k != "mask"}
    inputs = [t for t in tree.flatten((arguments.args, kwargs)) if isinstance(t, keras.KerasTensor)]
    return Node(op=keras_node.operation, inputs=[id(t) for t in inputs],
                outputs=[id(t) for t in keras_node.output_tensors],
                masks=_masks_for(inputs, arguments.kwargs.get("mask")), call=keras_node)


def model_graph(model: keras.Model) -> Graph:
    """Read a built Sequential or functional model (one or several inputs, one output) as a
    :class:`Graph`.

    Raises:
        TypeError / ValueError: for non-models, unbuilt models or several outputs.
    """
    _check_model(model)
    functional = _functional(model)
    nodes, dtypes = [], {}
    # Keras's depth: a producer is always deeper than its consumers, so deepest first is topological.
    for depth in sorted(functional._nodes_by_depth, reverse=True):
        for keras_node in functional._nodes_by_depth[depth]:
            for t in keras_node.output_tensors:
                dtypes[id(t)] = t.dtype
            if _is_input(keras_node.operation):
                continue
            nodes.append(_node(keras_node))
    ins = list(functional.inputs)
    for t in ins:
        dtypes[id(t)] = t.dtype
    return Graph(nodes=nodes, inputs=[id(t) for t in ins], output=id(functional.outputs[0]),
                 input_shapes=[tuple(t.shape) for t in ins], input_dtypes=[t.dtype for t in ins],
                 input_names=[t.name for t in ins], dtypes=dtypes)


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
