"""Weights of ``CuDNNLSTM`` / ``CuDNNGRU`` (Keras 2 and tf.keras 1.x GPU-only layers) in the layout
of the Keras 3 ``LSTM`` / ``GRU(reset_after=True)`` they are rebuilt as.

The layout is the one tf.keras itself converted such files to when loading them into CPU
layers (``hdf5_format._convert_rnn_weights`` in Keras 2 / tf.keras 2):

* input kernel ``(input_dim, gates * units)``: each gate's ``(input_dim, units)`` block holds
  cuDNN's row-major ``(units, input_dim)`` matrix, i.e. the Keras block is
  ``block.reshape(units, input_dim).T``;
* recurrent kernel ``(units, gates * units)``: each gate's ``(units, units)`` block transposed;
* bias ``(2 * gates * units,)``: the input biases then the recurrent biases. An LSTM adds both
  before its gates, so they are summed; a ``GRU(reset_after=True)`` keeps them apart as its
  ``(2, 3 * units)`` bias.

Gates are stored in Keras order (LSTM: i, f, c, o; GRU: z, r, h); the CuDNN layers reordered
them for cuDNN at run time.
"""
from __future__ import annotations

from typing import (Any, Callable, Collection, Dict, List, Mapping, NamedTuple, Optional, Sequence,
                    Tuple)

import keras
import numpy as np

from .errors import ModelFileError

GATES = {"CuDNNLSTM": 4, "CuDNNGRU": 3}

Shape = Tuple[int, ...]


class CuDNNSlot(NamedTuple):
    """Three stored weights (kernel, recurrent kernel, bias) of a CuDNN layer, from ``offset``
    in its top-level layer's weight list."""

    offset: int
    kind: str   # "CuDNNLSTM" or "CuDNNGRU"


def cudnn_parts(entry: Mapping[str, Any], custom: Collection[str]) -> Tuple[Optional[str], ...]:
    """The CuDNN class of each recurrent part of a layer config (``()`` when there is none):
    ``("CuDNNLSTM",)`` for the layer itself, ``(forward, backward)`` for a Bidirectional.
    Classes the user rebuilds with ``custom_objects`` (``custom``) are not converted."""

    def kind(sub: Any) -> Optional[str]:
        name = sub.get("class_name") if isinstance(sub, dict) else None
        return name if name in GATES and name not in custom else None

    cfg = entry.get("config") or {}
    if kind(entry):
        return (entry["class_name"],)
    if entry.get("class_name") == "Bidirectional" and isinstance(cfg, dict):
        forward = kind(cfg.get("layer"))
        backward = kind(cfg.get("backward_layer")) if cfg.get("backward_layer") else forward
        if forward or backward:
            return (forward, backward)
    return ()


def cudnn_slots(layers: Mapping[str, keras.layers.Layer],
                parts: Mapping[str, Tuple[Optional[str], ...]]) -> Dict[str, List[CuDNNSlot]]:
    """Where the CuDNN weights sit in each (built) top-level layer's stored weight list."""
    slots: Dict[str, List[CuDNNSlot]] = {}
    for name, kinds in parts.items():
        layer = layers[name]
        subs = ([layer.forward_layer, layer.backward_layer]
                if isinstance(layer, keras.layers.Bidirectional) else [layer])
        offset, found = 0, []
        for sub, kind in zip(subs, kinds):
            if kind:
                found.append(CuDNNSlot(offset, kind))
            offset += len(sub.weights)
        slots[name] = found
    return slots


def _check_shapes(path: str, layer: str, kind: str, shapes: Sequence[Shape]) -> Tuple[int, int]:
    """``(input_dim, units)`` of CuDNN weights stored with ``shapes``, or a ModelFileError."""
    gates = GATES[kind]
    if len(shapes) == 3 and len(shapes[1]) == 2 and len(shapes[0]) == 2:
        units, input_dim = shapes[1][0], shapes[0][0]
        want = [(input_dim, gates * units), (units, gates * units), (2 * gates * units,)]
        if [tuple(s) for s in shapes] == want:
            return input_dim, units
    raise ModelFileError(
        f"{path}: layer {layer!r} ({kind}) stores weights of shapes "
        f"{[tuple(s) for s in shapes]}, not the kernel, recurrent kernel and double bias of a "
        f"{kind}.")


def canonical_shapes(path: str, layer: str, kind: str, shapes: Sequence[Shape]) -> List[Shape]:
    """The shapes the stored CuDNN weights take as LSTM / GRU weights."""
    _, units = _check_shapes(path, layer, kind, shapes)
    gates = GATES[kind]
    bias = (gates * units,) if kind == "CuDNNLSTM" else (2, gates * units)
    return [tuple(shapes[0]), tuple(shapes[1]), bias]


def canonical_weights(path: str, layer: str, kind: str,
                      arrays: Sequence[np.ndarray]) -> List[np.ndarray]:
    """Stored CuDNN weights -> LSTM / GRU(reset_after=True) weights (see the module docstring)."""
    input_dim, units = _check_shapes(path, layer, kind, [a.shape for a in arrays])
    gates = GATES[kind]
    kernel, recurrent, bias = arrays
    kernel = np.concatenate([block.reshape(units, input_dim).T
                             for block in np.split(kernel, gates, axis=1)], axis=1)
    recurrent = np.concatenate([block.T for block in np.split(recurrent, gates, axis=1)], axis=1)
    halves = np.split(bias, 2)
    bias = halves[0] + halves[1] if kind == "CuDNNLSTM" else np.stack(halves)
    return [kernel, recurrent, bias]


def to_canonical(path: str, slots: Mapping[str, List[CuDNNSlot]], stored: Mapping[str, list],
                 convert: Callable[[str, str, str, list], list]) -> Dict[str, list]:
    """``stored`` (layer name -> weights or shapes, in stored order) with each CuDNN slot passed
    through ``convert`` (:func:`canonical_shapes` or :func:`canonical_weights`)."""
    out = dict(stored)
    for name, found in slots.items():
        values = list(stored.get(name, []))
        for slot in found:
            end = slot.offset + 3
            values[slot.offset:end] = convert(path, name, slot.kind, values[slot.offset:end])
        out[name] = values
    return out
