"""Model graph handling: reading a Keras model as a chain of layers, and swapping in LRP_LSTMCell."""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

import keras

from .cells import LRP_LSTMCell

__all__ = ["Graph", "Node", "model_graph", "lrpify_model"]

# Arguments of keras.layers.LSTM that belong to the RNN wrapper rather than the cell.
_RNN_KEYS = ("return_sequences", "return_state", "go_backwards", "stateful", "unroll",
             "zero_output_for_mask", "name", "trainable", "dtype")
# Arguments of keras.layers.LSTM that neither RNN nor LSTMCell takes.
_DROPPED_KEYS = ("use_cudnn", "implementation")


@dataclass
class Node:
    """One layer call: the keys of the tensors it reads and writes."""

    layer: keras.layers.Layer
    inputs: List[int]
    outputs: List[int]


@dataclass
class Graph:
    """A single-input single-output model as layer calls in topological order."""

    nodes: List[Node]
    input: int
    output: int
    input_shape: tuple
    input_dtype: str

    def producer(self, key: int) -> Optional[Node]:
        return next((n for n in self.nodes if key in n.outputs), None)


def _is_input(layer) -> bool:
    return isinstance(layer, keras.layers.InputLayer)


def _check_model(model):
    if not isinstance(model, keras.Model):
        raise TypeError(f"expected a keras.Model, got {type(model).__name__}.")
    if not model.built or not model.inputs:
        raise ValueError("the model is not built: call it on data (or give it an Input) first.")
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ValueError(f"model {model.name!r} has {len(model.inputs)} inputs and "
                         f"{len(model.outputs)} outputs; keras_lrp explains single-input "
                         "single-output models.")


def model_graph(model: keras.Model) -> Graph:
    """Read a built single-input single-output Sequential or functional model as a :class:`Graph`.

    Raises:
        TypeError / ValueError: for non-models, unbuilt models, several inputs or outputs, or a
            layer called more than once (shared layers).
    """
    _check_model(model)
    inp = model.inputs[0]
    if isinstance(model, keras.Sequential):
        layers = [l for l in model.layers if not _is_input(l)]
        nodes = [Node(l, [i], [i + 1]) for i, l in enumerate(layers)]
        return Graph(nodes, 0, len(layers), tuple(inp.shape), inp.dtype)
    nodes = []
    for op in model.operations:
        if _is_input(op):
            continue
        if len(op._inbound_nodes) != 1:
            raise ValueError(f"layer {op.name!r} ({type(op).__name__}) is called "
                             f"{len(op._inbound_nodes)} times; shared layers are not supported.")
        node = op._inbound_nodes[0]
        nodes.append(Node(op, [id(t) for t in node.input_tensors], [id(t) for t in node.output_tensors]))
    return Graph(nodes, id(inp), id(model.outputs[0]), tuple(inp.shape), inp.dtype)


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
