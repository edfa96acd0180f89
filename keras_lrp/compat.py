"""Seed-compatible helpers: the batched ``LRP_utils`` API of the original Keras 2 notebooks.

They let the seed notebook's flow run on Keras 3 with only import lines changed::

    acts = cache_lstm_forward_activations_batch(bilstm, x, bidirectional=True, dim=60)
    r_final = lrp_dense_batch(acts["final"], W, b, scores, scores * onehot, 2 * 60, eps, bf, "dense")
    Rx, Rx_rev, rest = lrp_lstm_batch(acts, x, r_final[:, :60], B, T, 60, 60, bilstm.get_weights(),
                                      True, "bilstm", Rout_Right_last=r_final[:, 60:], eps=eps, bias_factor=bf)
    word_relevance = np.sum(Rx + Rx_rev, axis=-1)

The activations come from ONE Keras forward pass through ``LRP_LSTMCell`` (O(T)), and the
relevance from the same vectorised rules as :func:`keras_lrp.explain`; the helpers compute in
float64. Arrays are batch-first; ``_Right`` quantities are in the backward LSTM's processing order
(reversed time), as in the reference implementation.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple, Union

import keras
import numpy as np
import tensorflow as tf

from .cells import lstm_activations
from .recurrent import lstm_relevance
from . import rules

__all__ = ["cache_lstm_forward_activations_batch", "cashe_lstm_forward_activations_batch",
           "lrp_dense_batch", "lrp_lstm_batch", "get_target_activation"]


def _with_initial_state_row(a: np.ndarray) -> np.ndarray:
    """(batch, T, d) -> (batch, T+1, d), the extra last row the zero initial state (index -1)."""
    return np.concatenate([a, np.zeros_like(a[:, :1])], axis=1)


def cache_lstm_forward_activations_batch(lstm_layer, batch_data, bidirectional: bool,
                                         dim: int) -> Dict[str, np.ndarray]:
    """One forward pass of an (optionally Bidirectional) LSTM layer, keeping its internals.

    Args:
        lstm_layer: a built ``LSTM`` / ``RNN(LSTMCell)``, or ``Bidirectional`` of one.
        batch_data: (batch, T, features) inputs.
        bidirectional: whether ``lstm_layer`` is a ``Bidirectional`` layer.
        dim: the LSTM's units (checked).

    The pass runs in float64 (with the layer's weights), so that the LRP that follows is not
    limited by float32 rounding of the activations.

    Returns:
        dict with ``gates_pre_Left`` and ``gates_Left`` (batch, T, 4*dim) (gate order i, f, c, o),
        ``h_Left``, ``c_Left`` (batch, T+1, dim) whose row -1 is the zero initial state, the same
        ``_Right`` keys for the backward direction when bidirectional, and ``final``: the layer's
        output, (batch, dim) or (batch, 2*dim) = ``[h_Left[:, T-1], h_Right[:, T-1]]``.
    """
    x = np.asarray(batch_data)
    if x.ndim != 3:
        raise ValueError(f"batch_data must have shape (batch, T, features), got {x.shape}.")
    is_bidi = isinstance(lstm_layer, keras.layers.Bidirectional)
    if bool(bidirectional) != is_bidi:
        raise ValueError(f"bidirectional={bidirectional} but the layer is a {type(lstm_layer).__name__}.")
    directions = {"Left": lstm_layer.forward_layer, "Right": lstm_layer.backward_layer} if is_bidi \
        else {"Left": lstm_layer}
    out: Dict[str, np.ndarray] = {}
    for side, layer in directions.items():
        if layer.cell.units != dim:
            raise ValueError(f"dim={dim} but layer {layer.name!r} has {layer.cell.units} units.")
        acts = lstm_activations(layer, x, dtype="float64")
        out[f"gates_pre_{side}"] = acts["gates_pre"]
        out[f"gates_{side}"] = acts["gates"]
        out[f"h_{side}"] = _with_initial_state_row(acts["h"])
        out[f"c_{side}"] = _with_initial_state_row(acts["c"])
    T = x.shape[1]
    out["final"] = np.concatenate([out[f"h_{s}"][:, T - 1] for s in directions], axis=-1)
    return out


#: The seed's spelling.
cashe_lstm_forward_activations_batch = cache_lstm_forward_activations_batch


def _f64(a) -> tf.Tensor:
    return tf.constant(np.asarray(a, np.float64))


def _time_major(a) -> tf.Tensor:
    """(batch, T, .) array -> (T, batch, .) float64 tensor."""
    return _f64(np.asarray(a).swapaxes(0, 1))


def lrp_dense_batch(hin, w, b, hout, Rout, bias_nb_units: int, eps: float, bias_factor: float,
                    layer_name: str = "dense", debug: bool = False) -> np.ndarray:
    """Epsilon-rule through a dense layer, for a batch.

    Args:
        hin: (batch, D) inputs; w: (D, M) kernel; b: (M,) bias (or None);
        hout: (batch, M) pre-activation (``hin @ w + b``, plus other inputs if any);
        Rout: (batch, M) relevance on hout; bias_nb_units: N of the bias share.

    Returns:
        Rin (batch, D).
    """
    rule = rules.Epsilon(eps=float(eps), bias_factor=float(bias_factor))
    r_in = rules.linear(_f64(hin), _f64(w), None if b is None else _f64(b), _f64(hout), _f64(Rout), rule,
                        fan_in=int(bias_nb_units)).numpy()
    if debug:
        print(f"{layer_name}: sum(Rout) - sum(Rin) = {np.sum(Rout) - r_in.sum():.3e}")
    return r_in


def lrp_lstm_batch(activations: Dict[str, np.ndarray], hin, Rout_Left_last, batch_size: int,
                   seq_len: int, hidden_dim: int, input_dim: int, lstm_weights: Sequence[np.ndarray],
                   bidirectional: bool, layer_name: str = "lstm", Rout_Right_last=None,
                   eps: float = 0.001, bias_factor: float = 0.0,
                   debug: bool = False) -> Tuple[np.ndarray, Optional[np.ndarray], np.ndarray]:
    """Signal-take-all LRP through an (optionally Bidirectional) LSTM, for a batch.

    Args:
        activations: the dict of :func:`cache_lstm_forward_activations_batch`.
        hin: (batch, T, input_dim) the layer's input.
        Rout_Left_last, Rout_Right_last: (batch, hidden_dim) relevance on the last hidden state
            of each direction (the right one required when bidirectional).
        lstm_weights: ``layer.get_weights()`` (Keras layout: kernel, recurrent_kernel, bias per direction).

    Returns:
        ``(Rx, Rx_rev, rest)``: the forward direction's input relevance (batch, T, input_dim), the
        backward direction's, already back in input order (None when not bidirectional), and the
        relevance left on the initial states (batch,). The total relevance is ``Rx + Rx_rev``.
    """
    x = np.asarray(hin, np.float64)
    expected = (batch_size, seq_len, input_dim)
    if x.shape != expected:
        raise ValueError(f"hin has shape {x.shape}, expected (batch_size, seq_len, input_dim) = {expected}.")
    sides = ["Left", "Right"] if bidirectional else ["Left"]
    r_last = [Rout_Left_last] + ([Rout_Right_last] if bidirectional else [])
    if any(r is None for r in r_last):
        raise ValueError("bidirectional=True needs Rout_Right_last.")
    if len(lstm_weights) not in (3 * len(sides), 2 * len(sides)):
        raise ValueError(f"lstm_weights has {len(lstm_weights)} arrays; expected kernel, recurrent_kernel"
                         f"(, bias) for each of {len(sides)} direction(s).")
    per_dir = len(lstm_weights) // len(sides)
    weights = [lstm_weights[i * per_dir:(i + 1) * per_dir] for i in range(len(sides))]

    d = hidden_dim
    rule = rules.Epsilon(eps=float(eps), bias_factor=float(bias_factor))
    r_x, rest = [], np.zeros(batch_size)
    for side, (kernel, recurrent, *bias), xs, r in zip(sides, weights, [x, x[:, ::-1]], r_last):
        gates = np.asarray(activations[f"gates_{side}"], np.float64)
        c = np.asarray(activations[f"c_{side}"], np.float64)
        acts = {"h": _time_major(activations[f"h_{side}"][:, :seq_len]),
                "c": _time_major(c[:, :seq_len]),
                "fc": _time_major(gates[..., d:2 * d] * c[:, np.r_[-1, 0:seq_len - 1]]),   # f_t c_{t-1}
                "ig": _time_major(gates[..., 0:d] * gates[..., 2 * d:3 * d]),             # i_t g_t
                "z": _time_major(activations[f"gates_pre_{side}"][..., 2 * d:3 * d])}
        r_x_side, rest_side = lstm_relevance(
            _time_major(xs), acts, _f64(kernel), _f64(recurrent), _f64(bias[0]) if bias else None,
            _f64(r), rule)
        r_x.append(r_x_side.numpy().swapaxes(0, 1))
        rest += rest_side.numpy()
    Rx = r_x[0]
    Rx_rev = r_x[1][:, ::-1] if bidirectional else None
    if debug:
        total = Rx.sum() + (0 if Rx_rev is None else Rx_rev.sum()) + rest.sum()
        print(f"{layer_name}: sum(Rout) - sum(Rin) - rest = {np.sum(r_last) - total:.3e}")
    return Rx, Rx_rev, rest


def get_target_activation(model: keras.Model, layer: Union[str, int], inputs) -> np.ndarray:
    """The output of ``layer`` (name or index into ``model.layers``) for ``inputs`` (Keras 3
    replacement of the seed's ``K.function`` helper)."""
    target_layer = model.get_layer(name=layer) if isinstance(layer, str) else model.layers[layer]
    sub = keras.Model(model.inputs, target_layer.output)
    return keras.ops.convert_to_numpy(sub(np.asarray(inputs)))
