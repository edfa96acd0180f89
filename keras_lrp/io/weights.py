"""HDF5 weights: read by layer name in the order the file stores them, every shape checked
before assignment."""
from __future__ import annotations

from typing import Dict, List, Mapping, NamedTuple, Tuple

import h5py
import keras
import numpy as np

from .. import backend
from .errors import ModelFileError
from .translate import _decode, _one_line


def _attr_list(group: h5py.Group, name: str) -> List[str]:
    """Read a list attribute, also when Keras split it into ``name0``, ``name1``... chunks."""
    if name in group.attrs:
        data = list(group.attrs[name])
    else:
        data, i = [], 0
        while f"{name}{i}" in group.attrs:
            data.extend(group.attrs[f"{name}{i}"])
            i += 1
    return [_decode(x) for x in data]


def _h5_weight_datasets(path: str, group: h5py.Group) -> Dict[str, List[h5py.Dataset]]:
    """The weight datasets of each layer, in stored order, not read yet (``.shape`` is known)."""
    datasets: Dict[str, List[h5py.Dataset]] = {}
    try:
        for layer_name in _attr_list(group, "layer_names"):
            layer_group = group[layer_name]
            found = []
            for weight_name in _attr_list(layer_group, "weight_names"):
                dataset = layer_group[weight_name]
                if not isinstance(dataset, h5py.Dataset) or dataset.dtype.kind not in "fiub":
                    raise ModelFileError(
                        f"{path}: weight {weight_name!r} of layer {layer_name!r} is not a "
                        "numeric array.")
                found.append(dataset)
            datasets[layer_name] = found
    except ModelFileError:
        raise
    except (KeyError, OSError, ValueError, TypeError, UnicodeDecodeError) as exc:
        raise ModelFileError(f"{path}: the weights could not be read (truncated or corrupt "
                             f"file?): {_one_line(exc)[:200]}") from exc
    return datasets


def _weight_key(name: str) -> str:
    """``"/model_weights/mha/mha/query/kernel:0"`` -> ``"query/kernel"``."""
    return "/".join(name.split(":")[0].split("/")[-2:])


def _order_by_sublayer(layers: Mapping[str, keras.layers.Layer],
                       datasets: Mapping[str, List[h5py.Dataset]]
                       ) -> Dict[str, List[h5py.Dataset]]:
    """The stored weights of each ``MultiHeadAttention`` in Keras 3's order of ``layer.weights``,
    matched by sub-layer and variable name (``query/kernel``, ..., ``attention_output/bias``):
    the query, key and value kernels have the same shape, so a different stored order would
    pass every shape check. Stored order is kept where the names do not match one to one."""
    ordered = dict(datasets)
    for name, layer in layers.items():
        stored = datasets.get(name)
        if not isinstance(layer, keras.layers.MultiHeadAttention) or not stored:
            continue
        by_key = {_weight_key(d.name): d for d in stored}
        wanted = [_weight_key(v.path) for v in layer.weights]
        if len(by_key) == len(stored) and sorted(by_key) == sorted(wanted):
            ordered[name] = [by_key[k] for k in wanted]
    return ordered


def _read_h5_weights(path: str, datasets: Mapping[str, List[h5py.Dataset]]
                     ) -> Dict[str, List[np.ndarray]]:
    try:
        return {name: [np.asarray(d[()]) for d in found] for name, found in datasets.items()}
    except (KeyError, OSError, ValueError, TypeError) as exc:
        raise ModelFileError(f"{path}: the weights could not be read (truncated or corrupt "
                             f"file?): {_one_line(exc)[:200]}") from exc


def _check_weight_shapes(path: str, layers: Mapping[str, keras.layers.Layer],
                         shapes: Mapping[str, List[Tuple[int, ...]]]) -> None:
    """Every layer's Keras 3 weights against the shapes stored in the file (number and shape)."""
    for name, layer in layers.items():
        variables = layer.weights
        stored = shapes.get(name, [])
        if name not in shapes and variables:
            raise ModelFileError(f"{path}: the file holds no weights for layer {name!r}.")
        if len(stored) != len(variables):
            raise ModelFileError(
                f"{path}: layer {name!r} ({type(layer).__name__}) has {len(variables)} weights "
                f"in Keras 3 but the file stores {len(stored)}.")
        for var, shape in zip(variables, stored):
            if tuple(var.shape) != tuple(shape):
                raise ModelFileError(
                    f"{path}: layer {name!r}: weight {var.path!r} has shape {tuple(var.shape)} "
                    f"but the file stores shape {tuple(shape)}.")
    unused = sorted(n for n, stored in shapes.items() if stored and n not in layers)
    if unused:
        raise ModelFileError(f"{path}: the file holds weights for layers that are not in its "
                             f"model_config: {', '.join(unused)[:200]}.")


def _assign_weights(path: str, layers: Mapping[str, keras.layers.Layer],
                    weights: Mapping[str, List[np.ndarray]]) -> None:
    _check_weight_shapes(path, layers, {n: [a.shape for a in arrays]
                                        for n, arrays in weights.items()})
    for name, layer in layers.items():
        layer.set_weights(weights.get(name, []))


class NonFiniteWeights(NamedTuple):
    """A layer whose weights hold NaN or inf values."""

    layer: str
    nan: int
    inf: int
    size: int   # floating-point weight values of the layer


def non_finite_weights(model: keras.Model) -> List[NonFiniteWeights]:
    """The top-level layers of ``model`` whose weights are not all finite, in layer order."""
    found = []
    for layer in model.layers:
        nan = inf = size = 0
        for variable in layer.weights:
            values = backend.to_numpy(variable.value)   # (np.asarray fails on a torch Parameter; Variable.numpy
            # warns on JAX with numpy 2)
            if values.dtype.kind not in "fc":
                continue
            size += values.size
            if not np.isfinite(values).all():
                nan += int(np.isnan(values).sum())
                inf += int(np.isinf(values).sum())
        if nan or inf:
            found.append(NonFiniteWeights(layer.name, nan, inf, size))
    return found


def describe_non_finite(found: List[NonFiniteWeights]) -> str:
    """``"layer 'out' 1 NaN and 0 inf of 8 values, ..."`` (at most five layers named)."""
    shown = [f"layer {f.layer!r} {f.nan:,} NaN and {f.inf:,} inf of {f.size:,} values"
             for f in found[:5]]
    more = f" and {len(found) - 5} more layers" if len(found) > 5 else ""
    return ", ".join(shown) + more
