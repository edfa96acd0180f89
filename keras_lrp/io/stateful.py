"""Stateful RNNs in an architecture being measured: a stateful RNN's build fills its
``(batch, units)`` states with zeros, which the shape-only variables of a measuring build cannot
hold, so it is measured built without them and its states are counted apart."""
from __future__ import annotations

from typing import Any, Iterable, NamedTuple, Tuple

import keras
import numpy as np


class StatelessConfig(NamedTuple):
    """An architecture with ``stateful`` switched off, to be measured."""

    config: Any
    stateful: frozenset   # names of the top-level layers that hold a stateful RNN


def stateless(config: Any) -> StatelessConfig:
    """``config`` (a model architecture) with every ``stateful: true`` set to false, and the names of
    the top-level layers that had one."""
    def strip(obj: Any) -> Tuple[Any, bool]:
        if isinstance(obj, dict):
            found = obj.get("stateful") is True
            out = {}
            for key, value in obj.items():
                out[key], inner = strip(value)
                found = found or inner
            if obj.get("stateful") is True:
                out["stateful"] = False
            return out, found
        if isinstance(obj, list):
            pairs = [strip(v) for v in obj]
            return [v for v, _ in pairs], any(f for _, f in pairs)
        return obj, False

    body = config.get("config") if isinstance(config, dict) else None
    layers = body.get("layers") if isinstance(body, dict) else body
    if not isinstance(layers, list):
        return StatelessConfig(config, frozenset())
    names, stripped = set(), []
    for entry in layers:
        entry, found = strip(entry)
        stripped.append(entry)
        if found and isinstance(entry, dict):
            names.add(entry.get("name") or (entry.get("config") or {}).get("name"))
    if not names:
        return StatelessConfig(config, frozenset())
    body = {**body, "layers": stripped} if isinstance(body, dict) else stripped
    return StatelessConfig({**config, "config": body}, frozenset(names))


def state_bytes(layers: Iterable[keras.layers.Layer], stateful: frozenset) -> int:
    """Bytes the states of the stateful RNNs in ``layers`` (built without them) will take:
    ``batch * sum(state sizes)`` values each, the batch from the shape each RNN was built on."""
    total = 0
    for layer in layers:
        if layer.name not in stateful:
            continue
        subs = ([layer.forward_layer, layer.backward_layer]
                if isinstance(layer, keras.layers.Bidirectional) else [layer])
        for sub in subs:
            if not isinstance(sub, keras.layers.RNN) or not sub.built:
                continue
            build = sub.get_build_config() or {}
            shape = build.get("input_shape") or (build.get("shapes_dict") or {}).get(
                "sequences_shape")
            batch = int(shape[0]) if shape and shape[0] is not None else 0
            units = sum(int(n) for n in keras.tree.flatten(sub.cell.state_size))
            total += batch * units * np.dtype(str(sub.variable_dtype)).itemsize
    return total
