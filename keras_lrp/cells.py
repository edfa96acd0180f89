"""``LRP_LSTMCell``: a drop-in ``keras.layers.LSTMCell`` that can expose its internals.

In its default mode the cell is numerically the ``LSTMCell`` it subclasses (same weights layout,
same forward numbers). With ``return_activations=True`` each step's output is the concatenation

    [h_t (u), c_t (u), pre-activations z_t (4u), gate activations (i, f, g, o)_t (4u)]

so that ``keras.layers.RNN(cell, return_sequences=True)`` yields every timestep's internals from ONE
pass over the sequence (O(T) work). :func:`lstm_activations` does exactly that for an existing
``LSTM`` / ``RNN(LSTMCell)`` layer, sharing its weights.
"""
from __future__ import annotations

from typing import Dict, NamedTuple, Optional

import keras
import numpy as np
from keras import ops

from . import backend

__all__ = ["LRP_LSTMCell", "LSTMStep", "lstm_activations", "lstm_step", "split_activations"]


class LSTMStep(NamedTuple):
    """One LSTM step: gate activations, the two products of the cell update, and the new states."""

    i: object
    f: object
    g: object
    o: object
    fc: object  # f_t * c_{t-1}
    ig: object  # i_t * g_t
    c: object   # c_t = fc + ig
    h: object   # h_t = o_t * activation(c_t)


def lstm_step(z, c_tm1, activation, recurrent_activation) -> LSTMStep:
    """One LSTM step from its pre-activations ``z = x_t W + h_{t-1} U + b``, shape (..., 4u),
    gate order i, f, c (= g), o, and the previous cell state ``c_tm1`` (..., u)."""
    z_i, z_f, z_g, z_o = ops.split(z, 4, axis=-1)
    i = recurrent_activation(z_i)
    f = recurrent_activation(z_f)
    g = activation(z_g)
    o = recurrent_activation(z_o)
    fc = f * c_tm1
    ig = i * g
    c = fc + ig
    return LSTMStep(i, f, g, o, fc, ig, c, o * activation(c))


@keras.saving.register_keras_serializable(package="keras_lrp")
class LRP_LSTMCell(keras.layers.LSTMCell):
    """LSTM cell whose per-step gate activations can be read from the Keras forward pass.

    Args:
        units: dimensionality of the hidden and cell state.
        return_activations: if True, the step output is ``[h, c, z, gates]`` of size ``10 * units``
            (see the module docstring) instead of ``h``. The recurrent state is unchanged.
        implementation: accepted for compatibility with Keras 2 era code (1 = per-gate matmuls,
            2 = one fused matmul); the result is the same up to float rounding.
        **kwargs: every other ``keras.layers.LSTMCell`` argument.

    Weights: ``kernel`` (features, 4u), ``recurrent_kernel`` (u, 4u), ``bias`` (4u,), gate order
    i, f, c, o, exactly as ``LSTMCell``.
    """

    def __init__(self, units: int, return_activations: bool = False, **kwargs):
        super().__init__(units, **kwargs)
        self.return_activations = bool(return_activations)
        if self.return_activations:
            self.output_size = 10 * self.units

    def call(self, inputs, states, training=False):
        if not self.return_activations:
            return super().call(inputs, states, training=training)
        h_tm1, c_tm1 = states[0], states[1]
        z = ops.matmul(inputs, self.kernel) + ops.matmul(h_tm1, self.recurrent_kernel)
        if self.use_bias:
            z = z + self.bias
        s = lstm_step(z, c_tm1, self.activation, self.recurrent_activation)
        out = ops.concatenate([s.h, s.c, z, s.i, s.f, s.g, s.o], axis=-1)
        return out, [s.h, s.c]

    def get_config(self) -> dict:
        config = super().get_config()
        config["implementation"] = self.implementation
        config["return_activations"] = self.return_activations
        return config


def split_activations(seq: np.ndarray, units: int) -> Dict[str, np.ndarray]:
    """Split the ``(batch, time, 10*units)`` output of an activation-mode cell into named parts."""
    u = units
    return {
        "h": seq[..., 0:u],
        "c": seq[..., u:2 * u],
        "gates_pre": seq[..., 2 * u:6 * u],
        "gates": seq[..., 6 * u:10 * u],
    }


def _lstm_cell_of(layer) -> keras.layers.LSTMCell:
    cell = getattr(layer, "cell", None)
    if not isinstance(cell, keras.layers.LSTMCell):
        raise TypeError(
            f"layer {getattr(layer, 'name', layer)!r} ({type(layer).__name__}) is not an LSTM layer: "
            "pass a keras.layers.LSTM or keras.layers.RNN(LSTMCell / LRP_LSTMCell)."
        )
    if not cell.built:
        raise ValueError(f"layer {layer.name!r} is not built yet: call the model on data first.")
    return cell


def lstm_activations(layer, inputs, dtype: Optional[str] = None) -> Dict[str, np.ndarray]:
    """Run ``layer`` (LSTM or RNN(LSTMCell)) once over ``inputs`` and return its internals.

    Args:
        layer: a built ``keras.layers.LSTM`` or ``keras.layers.RNN`` with an LSTM cell.
        inputs: array of shape (batch, time, features).
        dtype: compute in this dtype (e.g. "float64") instead of the layer's own.

    Returns:
        dict with ``gates_pre`` and ``gates`` (batch, time, 4u) and ``h``, ``c`` (batch, time, u),
        all in processing order (reversed time when ``layer.go_backwards``).
    """
    cell = _lstm_cell_of(layer)
    if dtype is not None:
        backend.check_float_dtype(keras.backend.standardize_dtype(dtype))
    config = cell.get_config()
    config.pop("return_activations", None)
    config["dtype"] = dtype or cell.dtype_policy
    twin_cell = LRP_LSTMCell(return_activations=True, **config)
    twin = keras.layers.RNN(twin_cell, return_sequences=True, go_backwards=layer.go_backwards,
                            dtype=config["dtype"])
    x = np.asarray(inputs)
    twin.build(x.shape)
    twin.set_weights(cell.get_weights())
    with backend.compute_scope():   # float64 stays float64 on JAX / torch
        seq = keras.ops.convert_to_numpy(twin(x))
    # Keras returns the go_backwards sequence in processing order (reversed time).
    return split_activations(seq, cell.units)
