"""The reverse walk: one propagator per Keras layer, a forward pass that caches what LRP needs,
then relevance from the explained output back to the inputs, layer by layer.

A propagator wraps one Keras layer and knows two things:

* ``forward(x) -> (y, cache)``: the layer's inference-mode forward pass in the walk's dtype,
  reading the layer's live weights;
* ``relevance(cache, r_out, rule) -> (r_in, rest)``: its propagation rule; ``rest`` (batch,) is the
  relevance parked outside the layer's input (the initial states of a recurrent layer).

The last layer's forward pass returns its pre-activation: that is the explained score.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import keras
import tensorflow as tf

from . import rules
from .recurrent import lstm_forward, lstm_relevance
from .rules import Epsilon

__all__ = ["Walk", "propagator_for", "UnsupportedLayerError"]


class UnsupportedLayerError(ValueError):
    """A layer the reverse walk has no propagation rule for (or in a configuration it cannot handle)."""

    def __init__(self, layer, why: str):
        super().__init__(
            f"layer {layer.name!r} ({type(layer).__name__}) is not supported by keras_lrp: {why}")


def _weight(variable, dtype) -> tf.Tensor:
    return tf.cast(variable.value, dtype)


class DensePropagator:
    """``y = activation(x W + b)``, epsilon-rule over W (fan-in N = input units).

    An activation inside the walk passes relevance unchanged (it is element-wise); at the output
    layer the pre-activation is explained.
    """

    def __init__(self, layer: keras.layers.Dense, is_output: bool, dtype):
        self.layer, self.is_output, self.dtype = layer, is_output, dtype

    def forward(self, x):
        w = _weight(self.layer.kernel, self.dtype)
        b = _weight(self.layer.bias, self.dtype) if self.layer.use_bias else None
        z = tf.einsum("...d,dm->...m", x, w)
        if b is not None:
            z = z + b
        y = z if self.is_output else self.layer.activation(z)
        return y, (x, w, b, z)

    def relevance(self, cache, r_out, rule: Epsilon):
        x, w, b, z = cache
        return rules.linear(x, w, b, z, r_out, rule), None


class LSTMPropagator:
    """An ``LSTM``, ``RNN(LSTMCell)`` or ``Bidirectional`` of those (merge_mode 'concat'),
    returning the last hidden state; signal-take-all + epsilon-rule (see :mod:`.recurrent`)."""

    def __init__(self, layer, dtype):
        self.layer, self.dtype = layer, dtype
        if isinstance(layer, keras.layers.Bidirectional):
            if layer.merge_mode != "concat":
                raise UnsupportedLayerError(
                    layer, f"merge_mode={layer.merge_mode!r}; only 'concat' is supported here.")
            self.directions = [layer.forward_layer, layer.backward_layer]
        else:
            self.directions = [layer]
        for d in self.directions:
            _check_lstm(d, layer)
        cells = [d.cell for d in self.directions]
        if any(_cell_signature(c) != _cell_signature(cells[0]) for c in cells):
            raise UnsupportedLayerError(
                layer, "its forward and backward LSTMs differ in units, activations or use_bias.")
        self.cell = cells[0]

    def _weights(self, rnn):
        cell = rnn.cell
        bias = _weight(cell.bias, self.dtype) if cell.use_bias else None
        return _weight(cell.kernel, self.dtype), _weight(cell.recurrent_kernel, self.dtype), bias

    def forward(self, x):
        x_tm = tf.transpose(x, [1, 0, 2])                                  # (time, batch, e)
        caches = []
        for rnn in self.directions:
            xs = tf.reverse(x_tm, [0]) if rnn.go_backwards else x_tm
            k, u, b = self._weights(rnn)
            acts = lstm_forward(xs, k, u, b, self.cell.activation, self.cell.recurrent_activation)
            caches.append((xs, acts, k, u, b))
        # Each direction's last processed step is its output (Bidirectional concatenates them).
        y = tf.concat([acts["h"][-1] for _, acts, *_ in caches], axis=-1)
        return y, caches

    def relevance(self, caches, r_out, rule: Epsilon):
        r_in, rest = 0, 0
        for rnn, (xs, acts, k, u, b), r_last in zip(
                self.directions, caches, tf.split(r_out, len(self.directions), axis=-1)):
            r_x, r = lstm_relevance(xs, acts, k, u, b, r_last, rule)
            r_in += tf.reverse(r_x, [0]) if rnn.go_backwards else r_x
            rest += r
        return tf.transpose(r_in, [1, 0, 2]), rest


def _cell_signature(cell):
    return (cell.units, cell.use_bias, keras.activations.serialize(cell.activation),
            keras.activations.serialize(cell.recurrent_activation))


def _check_lstm(rnn, outer):
    if not isinstance(getattr(rnn, "cell", None), keras.layers.LSTMCell):
        raise UnsupportedLayerError(outer, f"it wraps {type(rnn).__name__}, not an LSTM.")
    for flag, why in (("stateful", "stateful RNNs carry state between calls"),
                      ("return_state", "return_state=True outputs are not supported"),
                      ("return_sequences", "return_sequences=True is not supported yet: "
                                           "the walk explains a model whose LSTM returns its last state")):
        if getattr(rnn, flag, False):
            raise UnsupportedLayerError(outer, f"{flag}=True ({why}).")


def propagator_for(layer, is_output: bool, dtype):
    """The propagator for ``layer``, or :class:`UnsupportedLayerError` saying why there is none."""
    if isinstance(layer, keras.layers.Dense):
        return DensePropagator(layer, is_output, dtype)
    if is_output:
        raise UnsupportedLayerError(layer, "the model must end in a Dense layer (its pre-activation is explained).")
    if isinstance(layer, (keras.layers.Bidirectional, keras.layers.RNN)):
        return LSTMPropagator(layer, dtype)
    raise UnsupportedLayerError(
        layer, "supported layers are LSTM / RNN(LSTMCell) / Bidirectional(LSTM) followed by Dense.")


class Walk:
    """Forward pass with caches and reverse relevance walk over a chain of layers."""

    def __init__(self, layers: Sequence, dtype):
        if not layers:
            raise ValueError("the model has no layers to explain.")
        self.propagators: List = [propagator_for(l, i == len(layers) - 1, dtype)
                                  for i, l in enumerate(layers)]

    def forward(self, x):
        caches = []
        for p in self.propagators:
            x, cache = p.forward(x)
            caches.append(cache)
        return x, caches

    def relevance(self, caches, r_out, rule: Epsilon) -> Tuple[tf.Tensor, tf.Tensor]:
        rest = tf.zeros_like(r_out[:, 0])
        for p, cache in zip(reversed(self.propagators), reversed(caches)):
            r_out, r = p.relevance(cache, r_out, rule)
            if r is not None:
                rest = rest + r
        return r_out, rest
