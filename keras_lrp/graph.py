"""Model graph handling: reading a Keras model as a chain of layers, and swapping in LRP_LSTMCell."""
from __future__ import annotations

from typing import List

import keras

from .cells import LRP_LSTMCell

__all__ = ["layer_chain", "lrpify_model"]

# Arguments of keras.layers.LSTM that belong to the RNN wrapper rather than the cell.
_RNN_KEYS = ("return_sequences", "return_state", "go_backwards", "stateful", "unroll",
             "zero_output_for_mask", "name", "trainable", "dtype")
# Arguments of keras.layers.LSTM that neither RNN nor LSTMCell takes.
_DROPPED_KEYS = ("use_cudnn", "implementation")


def _is_input(layer) -> bool:
    return isinstance(layer, keras.layers.InputLayer)


def layer_chain(model: keras.Model) -> List[keras.layers.Layer]:
    """The model's layers from input to output, for a single-input single-output plain chain.

    Raises:
        ValueError: if the model is not built, has several inputs or outputs, or branches.
    """
    if not isinstance(model, keras.Model):
        raise TypeError(f"expected a keras.Model, got {type(model).__name__}.")
    if not model.built:
        raise ValueError("the model is not built: call it on data (or give it an Input) first.")
    if isinstance(model, keras.Sequential):
        return [l for l in model.layers if not _is_input(l)]
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ValueError(f"model {model.name!r} has {len(model.inputs)} inputs and "
                         f"{len(model.outputs)} outputs; keras_lrp explains single-input "
                         "single-output models.")
    chain, previous = [], model.inputs[0]
    for op in model.operations:
        if _is_input(op):
            continue
        if len(op._inbound_nodes) != 1 or op.input is not previous:
            raise ValueError(
                f"layer {op.name!r} ({type(op).__name__}) is not fed by the layer before it: "
                "only plain chains of layers are supported for now.")
        chain.append(op)
        previous = op.output
    if previous is not model.outputs[0]:
        raise ValueError(f"model {model.name!r} is not a plain chain of layers.")
    return chain


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
