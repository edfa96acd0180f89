"""Seed-compatible helpers: the batched ``LRP_utils`` API of the original Keras 2 notebooks.

The seed notebook's calling text runs on Keras 3 unchanged (only its import lines may change)::

    all_activations[bi_lstm_layer.name] = cashe_lstm_forward_activations_batch(bi_lstm_layer, data, bidirectional=True, dim=dim)
    all_activations[dense_layer.name] = get_target_activation(dense_layer.input, dense_layer.output,
                                                              all_activations[bi_lstm_layer.name]['final'])
    viz_dense = lrp_dense_batch(hin, w, b, hout, hout * Rout_mask, bias_nb_units, eps, bias_factor, dense_layer.name)
    Rx = lrp_lstm_batch(all_activations, data, viz_dense[:, :dim], batch, seq_len, dim, dim, lstm_w, True,
                        layer_name, viz_dense[:, dim:], eps, bias_factor)      # one array: Rx + Rx_rev
    R = np.sum(Rx, axis=-1)

Every function here keeps the seed's name, signature and return value. What the seed does not
offer lives under other names: :func:`lrp_lstm_batch_parts` (the two directions' input relevance
separately plus the relevance ``rest`` left on the initial states, needed for conservation
checks) and :func:`layer_activation` (a layer's output from the model's inputs).

The activations come from ONE Keras forward pass through ``LRP_LSTMCell`` (O(T); the seed re-ran
every prefix, O(T^2)), and the relevance from the same vectorised rules as
:func:`keras_lrp.explain`; the helpers compute in float64. Arrays are batch-first; ``_Right``
quantities are in the backward LSTM's processing order (reversed time), as in the seed.
"""
from __future__ import annotations

from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Union

import keras
import numpy as np
from keras import ops

from .cells import lstm_activations
from .recurrent import DenseMaps, lstm_relevance
from . import backend, rules

__all__ = ["cache_lstm_forward_activations_batch", "cashe_lstm_forward_activations_batch",
           "get_target_activation", "lrp_dense_batch", "lrp_lstm_batch", "lrp_concat", "lrp_slice",
           "lrp_lstm_batch_parts", "LSTMRelevanceParts", "layer_activation"]


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


def _f64(a):
    """A float64 tensor of the backend (the helpers compute in float64)."""
    backend.check_float_dtype("float64")
    return ops.convert_to_tensor(np.asarray(a, np.float64))


def _time_major(a):
    """(batch, T, .) array -> (T, batch, .) float64 tensor."""
    return _f64(np.asarray(a).swapaxes(0, 1))


def _print_local_diff(layer_name, r_out_sum: float, r_in_sum: float) -> None:
    """The seed's debug line: relevance entering minus relevance leaving a layer."""
    print("{} local diff: ".format(layer_name), r_out_sum - r_in_sum)


def get_target_activation(input_t, target_t, data) -> List[np.ndarray]:
    """The value of the symbolic tensor(s) ``target_t`` when ``data`` is fed into ``input_t``.

    The seed's helper (a ``K.function`` in Keras 2), on Keras 3 symbolic tensors: ``input_t`` and
    ``target_t`` may be any tensors of a functional model, e.g. ``model.input`` and
    ``layer.output``, or ``dense_layer.input`` and ``dense_layer.output`` to run one layer.

    Args:
        input_t: a Keras tensor, or a list of them (then ``data`` is a list of arrays, one each;
            a single array is accepted for a one-element list such as ``Model(inputs=[x]).input``).
        target_t: a Keras tensor or a list of them.
        data: array(s) matching ``input_t``, e.g. (batch, time, features).

    Returns:
        A list with one float64 array per target tensor (a list even for one target, as in the seed).
        The model runs in inference mode (the seed fed learning phase 1, i.e. dropout on).
    """
    inputs = list(input_t) if isinstance(input_t, (list, tuple)) else [input_t]
    targets = list(target_t) if isinstance(target_t, (list, tuple)) else [target_t]
    for what, tensors in (("input_t", inputs), ("target_t", targets)):
        bad = [type(t).__name__ for t in tensors if not isinstance(t, keras.KerasTensor)]
        if bad or not tensors:
            raise TypeError(f"{what} must be a Keras symbolic tensor (e.g. model.input, layer.output) or a "
                            f"list of them; got {bad or 'an empty list'}. For a model and a layer name, use "
                            "keras_lrp.compat.layer_activation(model, layer, inputs).")
    if isinstance(data, (list, tuple)):
        feeds = [np.asarray(a) for a in data]
    else:
        feeds = [np.asarray(data)]
    if len(feeds) != len(inputs):
        raise ValueError(f"data has {len(feeds)} array(s) but input_t has {len(inputs)} tensor(s); "
                         "give one array per input tensor.")
    for n, (t, a) in enumerate(zip(inputs, feeds)):
        expected = tuple(t.shape)
        if a.ndim != len(expected) or any(e is not None and e != s for e, s in zip(expected, a.shape)):
            raise ValueError(f"data[{n}] has shape {a.shape} but input_t[{n}] expects {expected} "
                             "(None = any size).")
    fn = keras.Function(inputs if isinstance(input_t, (list, tuple)) else inputs[0], targets)
    with backend.compute_scope():   # a float64 model stays float64 on JAX / torch
        out = fn(feeds if isinstance(input_t, (list, tuple)) else feeds[0])
    return [np.asarray(keras.ops.convert_to_numpy(o), np.float64) for o in out]


def lrp_dense_batch(hin, w, b, hout, Rout, bias_nb_units: int, eps: float, bias_factor: float,
                    layer_name, debug: bool = False) -> np.ndarray:
    """Epsilon-rule through a dense layer, for a batch (Arras et al. 2017, Eq. 1).

    Args:
        hin: (batch, D) inputs; w: (D, M) kernel; b: (M,) bias (or None);
        hout: (batch, M) pre-activation (``hin @ w + b``, plus other inputs if any);
        Rout: (batch, M) relevance on hout; bias_nb_units: N of the bias share;
        eps, bias_factor: the rule's stabiliser and bias share (0 ignores the bias, 1 conserves);
        layer_name: shown by ``debug``; debug: print ``sum(Rout) - sum(Rin)`` as the seed does.

    Returns:
        Rin (batch, D), float64.
    """
    hin, w, hout, Rout = (np.asarray(a, np.float64) for a in (hin, w, hout, Rout))
    if hin.ndim < 1 or w.ndim != 2 or hin.shape[-1] != w.shape[0]:
        raise ValueError(f"hin {hin.shape} and w {w.shape} do not fit: need hin (batch, D) and w (D, M).")
    expected = hin.shape[:-1] + (w.shape[1],)
    for name, a in (("hout", hout), ("Rout", Rout)):
        if a.shape != expected:
            raise ValueError(f"{name} has shape {a.shape}, expected (batch, M) = {expected}.")
    if b is not None and np.shape(b) != (w.shape[1],):
        raise ValueError(f"b has shape {np.shape(b)}, expected (M,) = ({w.shape[1]},).")
    rule = rules.Epsilon(eps=float(eps), bias_factor=float(bias_factor))
    with backend.compute_scope():
        r_in = ops.convert_to_numpy(rules.linear(_f64(hin), _f64(w), None if b is None else _f64(b), _f64(hout),
                                                 _f64(Rout), rule, fan_in=int(bias_nb_units)))
    if debug:
        _print_local_diff(layer_name, Rout.sum(), r_in.sum())
    return r_in


class LSTMRelevanceParts(NamedTuple):
    """Input relevance of an (optionally Bidirectional) LSTM, per direction."""

    Rx: np.ndarray                 # (batch, T, input_dim), forward direction
    Rx_rev: Optional[np.ndarray]   # (batch, T, input_dim), backward direction, in INPUT order; None if unidirectional
    rest: np.ndarray               # (batch,), relevance left on the zero initial states


def _layer_activations(activations: Dict[str, Any], layer_name) -> Dict[str, np.ndarray]:
    """The one layer's dict, from the seed's all-layers dict (``activations[layer_name]``) or as given."""
    if layer_name in activations and isinstance(activations[layer_name], dict):
        return activations[layer_name]
    if "gates_Left" in activations:
        return activations
    raise KeyError(f"activations has no entry {layer_name!r} (keys: {sorted(map(str, activations))}). Pass the "
                   "dict of all layers' activations keyed by layer name (all_activations[layer.name] = "
                   "cashe_lstm_forward_activations_batch(layer, ...)), or that layer's dict itself.")


def lrp_lstm_batch_parts(activations: Dict[str, Any], hin, Rout_Left_last, batch_size: int,
                         seq_len: int, hidden_dim: int, input_dim: int, lstm_weights: Sequence[np.ndarray],
                         bidirectional: bool, layer_name="lstm", Rout_Right_last=None,
                         eps: float = 0.001, bias_factor: float = 0.0,
                         debug: bool = False) -> LSTMRelevanceParts:
    """Signal-take-all LRP through an (optionally Bidirectional) LSTM, for a batch, per direction.

    Same arguments as :func:`lrp_lstm_batch` (``bidirectional`` spelled correctly).

    Args:
        activations: the dict of :func:`cache_lstm_forward_activations_batch` for this layer, or
            the seed's dict of all layers' activations holding it under ``layer_name``.
        hin: (batch, T, input_dim) the layer's input.
        Rout_Left_last, Rout_Right_last: (batch, hidden_dim) relevance on the last hidden state
            of each direction (the right one required when bidirectional).
        lstm_weights: ``layer.get_weights()`` (Keras layout: kernel, recurrent_kernel, bias per direction).

    Returns:
        :class:`LSTMRelevanceParts` ``(Rx, Rx_rev, rest)``; the seed's ``Rin`` is ``Rx + Rx_rev``.
    """
    acts_layer = _layer_activations(activations, layer_name)
    x = np.asarray(hin, np.float64)
    expected = (batch_size, seq_len, input_dim)
    if x.shape != expected:
        raise ValueError(f"hin has shape {x.shape}, expected (batch_size, seq_len, input_dim) = {expected}.")
    sides = ["Left", "Right"] if bidirectional else ["Left"]
    r_last = [Rout_Left_last] + ([Rout_Right_last] if bidirectional else [])
    if any(r is None for r in r_last):
        raise ValueError("bidirectional=True needs Rout_Right_last, the relevance on the backward "
                         "direction's last hidden state (batch, hidden_dim).")
    for side, r in zip(sides, r_last):
        if np.shape(r) != (batch_size, hidden_dim):
            raise ValueError(f"Rout_{side}_last has shape {np.shape(r)}, expected (batch_size, hidden_dim) = "
                             f"{(batch_size, hidden_dim)}.")
        for key, width in ((f"gates_{side}", 4 * hidden_dim), (f"gates_pre_{side}", 4 * hidden_dim)):
            if key not in acts_layer:
                raise KeyError(f"activations of {layer_name!r} lack {key!r}; were they cached with "
                               f"bidirectional={bidirectional}?")
            if np.shape(acts_layer[key])[:2] != (batch_size, seq_len) or np.shape(acts_layer[key])[-1] != width:
                raise ValueError(f"activations[{key!r}] has shape {np.shape(acts_layer[key])}, expected "
                                 f"(batch_size, seq_len, 4*hidden_dim) = {(batch_size, seq_len, width)}: "
                                 "were they cached on this hin?")
    if len(lstm_weights) not in (3 * len(sides), 2 * len(sides)):
        raise ValueError(f"lstm_weights has {len(lstm_weights)} arrays; expected kernel, recurrent_kernel"
                         f"(, bias) for each of {len(sides)} direction(s).")
    per_dir = len(lstm_weights) // len(sides)
    weights = [lstm_weights[i * per_dir:(i + 1) * per_dir] for i in range(len(sides))]

    d = hidden_dim
    rule = rules.Epsilon(eps=float(eps), bias_factor=float(bias_factor))
    r_x, rest = [], np.zeros(batch_size)
    for side, (kernel, recurrent, *bias), xs, r in zip(sides, weights, [x, x[:, ::-1]], r_last):
        gates = np.asarray(acts_layer[f"gates_{side}"], np.float64)
        c = np.asarray(acts_layer[f"c_{side}"], np.float64)
        acts = {"h": _time_major(acts_layer[f"h_{side}"][:, :seq_len]),
                "c": _time_major(c[:, :seq_len]),
                "fc": _time_major(gates[..., d:2 * d] * c[:, np.r_[-1, 0:seq_len - 1]]),   # f_t c_{t-1}
                "ig": _time_major(gates[..., 0:d] * gates[..., 2 * d:3 * d]),             # i_t g_t
                "z": _time_major(acts_layer[f"gates_pre_{side}"][..., 2 * d:3 * d])}
        maps = DenseMaps(_f64(kernel), _f64(recurrent), _f64(bias[0]) if bias else None)
        with backend.compute_scope():
            side_relevance = lstm_relevance(_time_major(xs), acts, maps, _f64(r), rule)
        r_x.append(ops.convert_to_numpy(side_relevance.x).swapaxes(0, 1))
        rest += ops.convert_to_numpy(side_relevance.rest)
    parts = LSTMRelevanceParts(Rx=r_x[0], Rx_rev=r_x[1][:, ::-1] if bidirectional else None, rest=rest)
    if debug:
        r_in = parts.Rx.sum() + (0.0 if parts.Rx_rev is None else parts.Rx_rev.sum())
        _print_local_diff(layer_name, float(np.sum([np.sum(r) for r in r_last])), r_in)
    return parts


def lrp_lstm_batch(activations: Dict[str, Any], hin, Rout_Left_last, batch_size: int, seq_len: int,
                   hidden_dim: int, input_dim: int, lstm_weights: Sequence[np.ndarray], bidiractional: bool,
                   layer_name, Rout_Right_last=None, eps: float = 0.001, bias_factor: float = 0,
                   debug: bool = False) -> np.ndarray:
    """The seed's LRP through an (optionally Bidirectional) LSTM: signal-take-all, for a batch.

    Args:
        activations: the seed's dict of all layers' activations, keyed by layer name, holding
            this layer's :func:`cashe_lstm_forward_activations_batch` dict under ``layer_name``
            (this layer's dict itself is accepted too).
        hin: (batch, T, input_dim) the layer's input.
        Rout_Left_last: (batch, hidden_dim) relevance on the forward direction's last hidden state.
        batch_size, seq_len, hidden_dim, input_dim: the sizes (checked against ``hin``).
        lstm_weights: ``layer.get_weights()``.
        bidiractional: (the seed's spelling) whether the layer is a Bidirectional LSTM.
        layer_name: the key of this layer in ``activations``.
        Rout_Right_last: (batch, hidden_dim) relevance on the backward direction's last hidden state.
        eps, bias_factor: the epsilon-rule's stabiliser and bias share.
        debug: print ``sum(Rout) - sum(Rin)`` (what the initial states and eps absorb) as the seed does.

    Returns:
        Rin (batch, T, input_dim): ``Rx + Rx_rev``, both directions' relevance in input order.
        For the two parts separately and the rest, use :func:`lrp_lstm_batch_parts`.
    """
    parts = lrp_lstm_batch_parts(activations, hin, Rout_Left_last, batch_size, seq_len, hidden_dim,
                                 input_dim, lstm_weights, bidiractional, layer_name, Rout_Right_last,
                                 eps, bias_factor, debug)
    return parts.Rx if parts.Rx_rev is None else parts.Rx + parts.Rx_rev


def _shape_of(item) -> tuple:
    """A shape given as a tuple/list/TensorShape, or taken from an array or Keras tensor."""
    if isinstance(item, (np.ndarray, keras.KerasTensor)) or ops.is_tensor(item):
        return tuple(item.shape)
    return tuple(item)


def lrp_concat(hin_shapes, axis: int, Rout, layer_name, debug: bool = False) -> List[np.ndarray]:
    """LRP through a concatenation: each input gets back its own block of the output's relevance.

    Args:
        hin_shapes: the shapes of the concatenated inputs, in order (e.g. ``[t.shape for t in
            concat_layer.input]``); arrays or Keras tensors are accepted for their shape.
        axis: the concatenation axis.
        Rout: relevance of the concatenation; ``Rout.shape[axis]`` is the sum of the inputs' sizes.
        layer_name: shown by ``debug``; debug: print ``sum(Rout) - sum(Rin)`` (always 0).

    Returns:
        ``Rin``: a list with one array per input, ``Rin[k]`` of the k-th input's size on ``axis``.
    """
    Rout = np.asarray(Rout)
    shapes = [_shape_of(s) for s in hin_shapes]
    if not shapes:
        raise ValueError("hin_shapes is empty: give the shape of every concatenated input.")
    try:
        sizes = [s[axis] for s in shapes]
        total = Rout.shape[axis]
    except IndexError:
        raise ValueError(f"axis {axis} is out of range for Rout {Rout.shape} or hin_shapes {shapes}.") from None
    if any(n is None for n in sizes) or sum(sizes) != total:
        raise ValueError(f"the inputs' sizes on axis {axis} ({sizes}) must be known and add up to "
                         f"Rout.shape[{axis}] = {total}.")
    Rin = np.split(Rout, np.cumsum(sizes)[:-1], axis=axis)
    if debug:
        _print_local_diff(layer_name, Rout.sum(), sum(r.sum() for r in Rin))
    return Rin


def lrp_slice(hin_shape, Rout, indices, layer_name, debug: bool = False) -> np.ndarray:
    """LRP through a slice ``hout = hin[..., indices]`` of the last axis: each output's relevance
    goes back to the input position it was read from; unread positions get 0.

    When several slices of one input feed different branches (the seed's production model), the
    input's relevance is the sum of ``lrp_slice`` over the slices.

    Args:
        hin_shape: shape of the sliced input (``None`` entries, e.g. the batch, are taken from Rout).
        Rout: relevance of the slice, ``hin_shape[:-1] + (len(indices),)``.
        indices: positions on the last axis: a list / array of ints (repeats allowed: their
            relevance adds up) or a ``slice``.
        layer_name: shown by ``debug``; debug: print ``sum(Rout) - sum(Rin)`` (always 0).

    Returns:
        Rin of shape ``hin_shape``.
    """
    Rout = np.asarray(Rout)
    shape = _shape_of(hin_shape)
    if len(shape) != Rout.ndim:
        raise ValueError(f"hin_shape {shape} and Rout {Rout.shape} must have the same rank.")
    shape = tuple(r if s is None else s for s, r in zip(shape, Rout.shape))
    positions = np.arange(shape[-1])[indices] if isinstance(indices, slice) else np.asarray(indices)
    if positions.ndim != 1 or (positions.size and not np.issubdtype(positions.dtype, np.integer)):
        raise TypeError(f"indices must be a slice or a 1-D list of ints, got {indices!r}.")
    if np.any(positions >= shape[-1]) or np.any(positions < -shape[-1]):
        raise ValueError(f"indices {positions.tolist()} out of range for the last axis of size {shape[-1]}.")
    if Rout.shape != shape[:-1] + (positions.size,):
        raise ValueError(f"Rout has shape {Rout.shape}, expected hin_shape[:-1] + (len(indices),) = "
                         f"{shape[:-1] + (positions.size,)}.")
    Rin = np.zeros(shape, np.result_type(Rout.dtype, np.float64))
    np.add.at(np.moveaxis(Rin, -1, 0), positions, np.moveaxis(Rout, -1, 0))
    if debug:
        _print_local_diff(layer_name, Rout.sum(), Rin.sum())
    return Rin


def layer_activation(model: keras.Model, layer: Union[str, int], inputs) -> np.ndarray:
    """The output of ``layer`` (name or index into ``model.layers``) for the model's ``inputs``.

    (Before the seed's own :func:`get_target_activation` was restored, keras_lrp's helper of that name.)
    """
    target_layer = model.get_layer(name=layer) if isinstance(layer, str) else model.layers[layer]
    sub = keras.Model(model.inputs, target_layer.output)
    with backend.compute_scope():
        return keras.ops.convert_to_numpy(sub(np.asarray(inputs)))
