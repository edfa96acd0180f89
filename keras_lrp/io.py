"""Load LSTM model files written by Keras 3, Keras 2.x and tf.keras 2.x as Keras 3 models.

``keras.models.load_model`` of Keras 3 cannot read many Keras 2 era ``.h5`` files (Bidirectional
LSTM: "Could not locate class 'LSTM'", keras-team/keras#19898; the ``time_major`` keyword of
tf.keras LSTM/GRU configs; ``batch_input_shape``; seed-era ``RNN(LRP_LSTMCell)`` files).
:func:`load_model` handles them:

* ``.keras`` archives: the architecture (``config.json``) is screened for ``Lambda`` layers and
  unknown classes, then Keras 3 loads the file (``safe_mode`` applies). If Keras 3 cannot
  (e.g. a ``.keras`` written by tf.keras 2.x), the architecture is rebuilt as for ``.h5`` below
  and the weights are read with ``model.load_weights``.
* ``.h5`` files: the ``model_config`` JSON attribute is translated layer by layer into plain
  Keras 3 constructor calls (no Keras deserialisation of class names taken from the file) and
  the weights are assigned by layer name, in the order stored in the file
  (``model_weights/<layer>/weight_names``), with every shape checked.
* tf.keras functional models with tensor syntax between layers (``h[:, -1]``,
  ``tf.reduce_sum(w * h, axis=1)``, ``tf.concat``...), stored as ``TFOpLambda`` /
  ``SlicingOpLambda`` layers that name a TensorFlow function by a string: the graph is rebuilt
  by calling the layers and the equivalent ``keras.ops`` functions on ``keras.Input`` in
  topological order, so the op nodes are Keras 3 ops. Only an allow-list of function names is
  rebuilt (``__operators__.getitem``, ``reduce_sum`` / ``reduce_mean``, ``concat``, ``stack``,
  ``reshape``, ``expand_dims``, ``transpose``, ``squeeze``, ``cast``, ``add`` / ``subtract`` /
  ``multiply`` / ``truediv`` / ``divide``, ``negative``, ``softmax``, ``sigmoid``); the name is
  looked up in that table, never imported or evaluated, and every argument is type-checked.

Nothing goes through ``pickle``. The file type is recognised from its first bytes, not its
extension. Keras 2's ``hard_sigmoid`` (``clip(0.2 x + 0.5, 0, 1)``, not Keras 3's
``clip(x / 6 + 0.5, 0, 1)``) is kept as :func:`keras2_hard_sigmoid` in files written by Keras 2.

Model files are untrusted data: nothing outside the given file is ever read (HDF5 external
storage, external / soft links and virtual datasets are refused), and every declared size is
checked before anything large is read or allocated (see :func:`load_model` for the limits).

Errors (all one line, naming the file, raised before the model is built; all subclasses of
:class:`ModelFileError`):

* :class:`ModelFileNotFoundError` (a ``FileNotFoundError`` and a ``ValueError``): no such file.
* :class:`ModelFileError` (``ValueError``): not a Keras model file (text, truncated or corrupt
  file, ``.h5`` without ``model_config`` such as a weights-only file, broken JSON, weights that
  do not fit the architecture).
* :class:`UnsafeModelError` (``ValueError``): a ``Lambda`` layer (opt in with
  ``safe_mode=False``) or a class / activation that is not built into Keras (opt in with
  ``custom_objects={"Name": cls}``), or a file pointing at data outside itself (no opt-in).
* :class:`UnsupportedModelError` (``ValueError``): a valid file using something this loader
  cannot rebuild faithfully (nested models, ``time_major=True``, a TensorFlow op layer whose
  function is not on the allow-list or whose arguments are not understood, ...).
* :class:`ModelTooLargeError` (``ValueError``): the file declares more data than the limits
  allow (raise them with ``max_bytes=``).
"""
from __future__ import annotations

import contextlib
import errno
import inspect
import io
import json
import math
import os
import re
import stat
import warnings
import zipfile
from typing import Any, Callable, Dict, List, Mapping, NamedTuple, Optional, Tuple, Union

import h5py
import keras
import numpy as np
from keras import ops

from .cells import LRP_LSTMCell

__all__ = [
    "load_model",
    "keras2_hard_sigmoid",
    "ModelFileError",
    "ModelFileNotFoundError",
    "UnsafeModelError",
    "UnsupportedModelError",
    "ModelTooLargeError",
    "MAX_CONFIG_BYTES",
    "MAX_CONFIG_DEPTH",
    "MAX_HDF5_OBJECTS",
    "MAX_LAYERS",
]

PathLike = Union[str, "os.PathLike[str]"]


class ModelFileError(ValueError):
    """The file is missing, unreadable, or is not a Keras model file.

    The base class of every error :func:`load_model` raises for a bad file."""


class ModelFileNotFoundError(ModelFileError, FileNotFoundError):
    """The model file does not exist."""


class UnsafeModelError(ModelFileError):
    """The model holds code (``Lambda``) or custom classes, which are only loaded on request, or
    the file refers to data outside itself (HDF5 external storage, external / soft links,
    virtual datasets, unknown compression filters), which is never read."""


class UnsupportedModelError(ModelFileError):
    """The model uses something that cannot be rebuilt faithfully in Keras 3."""


class ModelTooLargeError(ModelFileError):
    """The file declares more data than :func:`load_model`'s limits allow (``max_bytes=``)."""


@keras.saving.register_keras_serializable(package="keras_lrp")
def keras2_hard_sigmoid(x):
    """Keras 2 / tf.keras 2 hard sigmoid: ``clip(0.2 * x + 0.5, 0, 1)``.

    Keras 3's ``hard_sigmoid`` is ``clip(x / 6 + 0.5, 0, 1)``; Keras 2 LSTMs (default
    ``recurrent_activation`` before Keras 2.3) need this one to give the same predictions.
    """
    return ops.clip(0.2 * x + 0.5, 0.0, 1.0)


_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_ZIP_MAGIC = b"PK\x03\x04"

# Activation names whose function is the same in Keras 2.x, tf.keras 2.x and Keras 3
# (checked numerically against tf_keras by tests/test_io.py). "hard_sigmoid" is handled apart.
KERAS2_ACTIVATIONS = (
    "linear", "relu", "sigmoid", "tanh", "softmax", "softplus", "softsign", "elu", "selu",
    "exponential", "swish", "silu", "gelu", "relu6", "log_softmax", "mish",
)

_MODEL_CLASSES = ("Sequential", "Model", "Functional")
_IGNORED_EVERYWHERE = {
    "name", "trainable", "dtype", "batch_input_shape", "batch_shape", "input_shape",
    "batch_size", "build_config", "input_dtype", "autocast",
}

# Value kinds of constructor arguments.
_PLAIN, _ACT, _INIT, _REG, _CON, _TUPLE, _INT1 = range(7)

_INIT_CLASSES = {
    "Zeros", "Ones", "Constant", "RandomNormal", "RandomUniform", "TruncatedNormal",
    "VarianceScaling", "Orthogonal", "Identity", "GlorotUniform", "GlorotNormal", "HeUniform",
    "HeNormal", "LecunUniform", "LecunNormal",
}
_INIT_ALIASES = {  # Keras 2.0 era names
    "zero": "Zeros", "one": "Ones", "normal": "RandomNormal", "uniform": "RandomUniform",
    "random_normal": "RandomNormal", "random_uniform": "RandomUniform",
    "truncated_normal": "TruncatedNormal", "zeros": "Zeros", "ones": "Ones",
    "constant": "Constant", "orthogonal": "Orthogonal", "identity": "Identity",
    "glorot_uniform": "GlorotUniform", "glorot_normal": "GlorotNormal",
    "he_uniform": "HeUniform", "he_normal": "HeNormal", "lecun_uniform": "LecunUniform",
    "lecun_normal": "LecunNormal", "variance_scaling": "VarianceScaling",
}
_REG_CLASSES = {"L1": ("l1",), "L2": ("l2",), "L1L2": ("l1", "l2")}
_CON_CLASSES = {
    "MaxNorm": ("max_value", "axis"), "NonNeg": (), "UnitNorm": ("axis",),
    "MinMaxNorm": ("min_value", "max_value", "rate", "axis"),
}
_CON_ALIASES = {"maxnorm": "MaxNorm", "max_norm": "MaxNorm", "nonneg": "NonNeg",
                "non_neg": "NonNeg", "unitnorm": "UnitNorm", "unit_norm": "UnitNorm",
                "min_max_norm": "MinMaxNorm"}

_K = {  # shared argument groups: name -> value kind
    "dense": {"units": _PLAIN, "activation": _ACT, "use_bias": _PLAIN,
              "kernel_initializer": _INIT, "bias_initializer": _INIT,
              "kernel_regularizer": _REG, "bias_regularizer": _REG,
              "activity_regularizer": _REG, "kernel_constraint": _CON, "bias_constraint": _CON},
    "rnn": {"return_sequences": _PLAIN, "return_state": _PLAIN, "go_backwards": _PLAIN,
            "stateful": _PLAIN, "unroll": _PLAIN, "zero_output_for_mask": _PLAIN},
    "simple_cell": {"units": _PLAIN, "activation": _ACT, "use_bias": _PLAIN,
                    "kernel_initializer": _INIT, "recurrent_initializer": _INIT,
                    "bias_initializer": _INIT, "kernel_regularizer": _REG,
                    "recurrent_regularizer": _REG, "bias_regularizer": _REG,
                    "kernel_constraint": _CON, "recurrent_constraint": _CON,
                    "bias_constraint": _CON, "dropout": _PLAIN, "recurrent_dropout": _PLAIN,
                    "seed": _PLAIN},
}
_K["gru_cell"] = {**_K["simple_cell"], "recurrent_activation": _ACT, "reset_after": _PLAIN,
                  "implementation": _PLAIN}
_K["lstm_cell"] = {**_K["simple_cell"], "recurrent_activation": _ACT,
                   "unit_forget_bias": _PLAIN, "implementation": _PLAIN}
_K["conv1d"] = {**_K["dense"], "filters": _PLAIN, "kernel_size": _TUPLE, "strides": _TUPLE,
                "padding": _PLAIN, "data_format": _PLAIN, "dilation_rate": _TUPLE,
                "groups": _PLAIN}
del _K["conv1d"]["units"]
_K["pool1d"] = {"pool_size": _INT1, "strides": _INT1, "padding": _PLAIN, "data_format": _PLAIN}
_K["gpool1d"] = {"data_format": _PLAIN, "keepdims": _PLAIN}

# class name -> (Keras 3 constructor, argument kinds, keys ignored because they only matter to
# Keras 2 or to training). RNN / wrapper / Lambda classes are handled by their own methods.
_SIMPLE_LAYERS: Dict[str, Tuple[Callable, Dict[str, int], set]] = {
    "Dense": (keras.layers.Dense, _K["dense"], {"lora_rank", "lora_alpha", "quantization_config"}),
    "Embedding": (keras.layers.Embedding,
                  {"input_dim": _PLAIN, "output_dim": _PLAIN, "embeddings_initializer": _INIT,
                   "embeddings_regularizer": _REG, "activity_regularizer": _REG,
                   "embeddings_constraint": _CON, "mask_zero": _PLAIN},
                  {"input_length", "lora_rank", "lora_alpha", "sparse", "quantization_config"}),
    "Masking": (keras.layers.Masking, {"mask_value": _PLAIN}, set()),
    "Dropout": (keras.layers.Dropout, {"rate": _PLAIN, "noise_shape": _TUPLE, "seed": _PLAIN},
                set()),
    "SpatialDropout1D": (keras.layers.SpatialDropout1D, {"rate": _PLAIN, "seed": _PLAIN},
                         {"noise_shape"}),
    "GaussianNoise": (keras.layers.GaussianNoise, {"stddev": _PLAIN, "seed": _PLAIN}, set()),
    "GaussianDropout": (keras.layers.GaussianDropout, {"rate": _PLAIN, "seed": _PLAIN}, set()),
    "Conv1D": (keras.layers.Conv1D, _K["conv1d"], {"lora_rank", "lora_alpha"}),
    "MaxPooling1D": (keras.layers.MaxPooling1D, _K["pool1d"], set()),
    "AveragePooling1D": (keras.layers.AveragePooling1D, _K["pool1d"], set()),
    "GlobalMaxPooling1D": (keras.layers.GlobalMaxPooling1D, _K["gpool1d"], set()),
    "GlobalAveragePooling1D": (keras.layers.GlobalAveragePooling1D, _K["gpool1d"], set()),
    "Flatten": (keras.layers.Flatten, {"data_format": _PLAIN}, set()),
    "Reshape": (keras.layers.Reshape, {"target_shape": _TUPLE}, set()),
    "RepeatVector": (keras.layers.RepeatVector, {"n": _PLAIN}, set()),
    "Permute": (keras.layers.Permute, {"dims": _TUPLE}, set()),
    "Activation": (keras.layers.Activation, {"activation": _ACT}, set()),
    "Softmax": (keras.layers.Softmax, {"axis": _INT1}, set()),
    "Concatenate": (keras.layers.Concatenate, {"axis": _PLAIN}, set()),
    "Add": (keras.layers.Add, {}, set()),
    "Subtract": (keras.layers.Subtract, {}, set()),
    "Multiply": (keras.layers.Multiply, {}, set()),
    "Average": (keras.layers.Average, {}, set()),
    "Maximum": (keras.layers.Maximum, {}, set()),
    "Minimum": (keras.layers.Minimum, {}, set()),
    "BatchNormalization": (keras.layers.BatchNormalization,
                           {"axis": _INT1, "momentum": _PLAIN, "epsilon": _PLAIN,
                            "center": _PLAIN, "scale": _PLAIN, "beta_initializer": _INIT,
                            "gamma_initializer": _INIT, "moving_mean_initializer": _INIT,
                            "moving_variance_initializer": _INIT, "beta_regularizer": _REG,
                            "gamma_regularizer": _REG, "beta_constraint": _CON,
                            "gamma_constraint": _CON},
                           {"synchronized"}),
    "LayerNormalization": (keras.layers.LayerNormalization,
                           {"axis": _INT1, "epsilon": _PLAIN, "center": _PLAIN,
                            "scale": _PLAIN, "beta_initializer": _INIT,
                            "gamma_initializer": _INIT, "beta_regularizer": _REG,
                            "gamma_regularizer": _REG, "beta_constraint": _CON,
                            "gamma_constraint": _CON},
                           set()),
    "SimpleRNN": (keras.layers.SimpleRNN, {**_K["simple_cell"], **_K["rnn"],
                                           "activity_regularizer": _REG},
                  {"implementation", "use_cudnn"}),
    "GRU": (keras.layers.GRU, {**_K["gru_cell"], **_K["rnn"], "activity_regularizer": _REG},
            {"use_cudnn"}),
    "LSTM": (keras.layers.LSTM, {**_K["lstm_cell"], **_K["rnn"], "activity_regularizer": _REG},
             {"use_cudnn"}),
    "SimpleRNNCell": (keras.layers.SimpleRNNCell, _K["simple_cell"], set()),
    "GRUCell": (keras.layers.GRUCell, _K["gru_cell"], set()),
    "LSTMCell": (keras.layers.LSTMCell, _K["lstm_cell"], set()),
    "LRP_LSTMCell": (LRP_LSTMCell, {**_K["lstm_cell"], "return_activations": _PLAIN}, set()),
}
_ALIASES = {"MaxPool1D": "MaxPooling1D", "AvgPool1D": "AveragePooling1D",
            "GlobalMaxPool1D": "GlobalMaxPooling1D", "GlobalAvgPool1D": "GlobalAveragePooling1D",
            "Convolution1D": "Conv1D", "Merge": "_Merge"}
_RNN_LAYERS = {"SimpleRNN", "GRU", "LSTM", "RNN"}
_NOT_REBUILDABLE = {
    # (rebuilt in functional models only, see _tf_op)
    "TFOpLambda": "a TensorFlow op recorded by tf.keras (e.g. tf.math.add) outside a "
                  "functional model",
    "SlicingOpLambda": "a tensor slice recorded by tf.keras (x[:, 0]) outside a functional model",
    "CuDNNLSTM": "a Keras 2 GPU-only layer",
    "CuDNNGRU": "a Keras 2 GPU-only layer",
    "_Merge": "the Keras 1 Merge layer",
}


def _one_line(text: Any) -> str:
    return " ".join(re.sub(r"\x1b\[[0-9;]*m", "", str(text)).split())


def _decode(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.ndarray) and value.shape == ():
        return _decode(value.item())
    return str(value)


class _Ref(NamedTuple):
    """Reference to output ``tensor`` of call number ``node`` of layer ``layer``."""

    layer: str
    node: int
    tensor: int


# --------------------------------------------------------------------------------------------
# Translation of configs into Keras 3 layers
# --------------------------------------------------------------------------------------------
class _Translator:
    """Turns Keras 2 / tf.keras 2 / Keras 3 layer configs into Keras 3 layer objects."""

    def __init__(self, path: str, keras2: bool, custom_objects: Mapping[str, Any],
                 safe_mode: bool):
        self.path = path
        self.keras2 = keras2
        self.custom_objects = dict(custom_objects)
        self.safe_mode = safe_mode

    # -- errors --------------------------------------------------------------------------
    def _unsafe(self, msg: str) -> UnsafeModelError:
        return UnsafeModelError(f"{self.path}: {msg}")

    def _unsupported(self, msg: str) -> UnsupportedModelError:
        return UnsupportedModelError(f"{self.path}: {msg}")

    # -- values ----------------------------------------------------------------------------
    def dtype(self, value: Any) -> Optional[str]:
        if value is None or isinstance(value, str):
            return None if value in ("_infer", "infer") else value
        if isinstance(value, dict):
            name = (value.get("config") or {}).get("name")
            if value.get("class_name") in ("Policy", "PolicyV1", "DTypePolicy",
                                           "FloatDTypePolicy") and isinstance(name, str):
                return None if name in ("_infer", "infer") else name
        raise self._unsupported(f"dtype policy {value!r} is not supported (quantized model?).")

    def activation(self, value: Any, where: str):
        if value is None:
            return "linear"
        name, registered = value, None
        if isinstance(value, dict):
            if value.get("class_name") != "function" or not isinstance(value.get("config"), str):
                raise self._unsafe(
                    f"{where} uses activation object {value.get('class_name')!r}, which is "
                    "not a built-in Keras activation; pass custom_objects={'Name': obj} if you "
                    "trust this file.")
            name, registered = value["config"], value.get("registered_name")
        if not isinstance(name, str):
            raise self._unsupported(f"{where} has an unreadable activation {value!r}.")
        for key in (registered, name):
            if key and key in self.custom_objects:
                return self.custom_objects[key]
        if name in ("keras2_hard_sigmoid", "keras_lrp>keras2_hard_sigmoid") or (
                registered == "keras_lrp>keras2_hard_sigmoid"):
            return keras2_hard_sigmoid
        if ">" in name and keras.saving.get_registered_object(name) is not None:
            return keras.saving.get_registered_object(name)  # registered by imported code
        if name == "hard_sigmoid":
            return keras2_hard_sigmoid if self.keras2 else "hard_sigmoid"
        if name in KERAS2_ACTIVATIONS or (not self.keras2 and registered in (None, "function")
                                           and self._keras3_activation(name)):
            return name
        raise self._unsafe(
            f"{where} uses activation {name!r}, which is not a built-in Keras activation; pass "
            f"custom_objects={{{name!r}: function}} to load it.")

    @staticmethod
    def _keras3_activation(name: str) -> bool:
        try:
            keras.activations.get(name)
            return True
        except Exception:
            return False

    def _sub_object(self, value: Any, where: str, kind: str):
        """Initializer / regularizer / constraint: only affect training; unknown ones are dropped."""
        if value is None:
            return None
        if isinstance(value, str):
            class_name, config = value, {}
        elif isinstance(value, dict) and "class_name" in value:
            class_name, config = value["class_name"], dict(value.get("config") or {})
        else:
            class_name, config = repr(value), {}
        if class_name in self.custom_objects:
            obj = self.custom_objects[class_name]
            return obj.from_config(config) if hasattr(obj, "from_config") else obj
        try:
            if kind == "initializer":
                class_name = _INIT_ALIASES.get(class_name, class_name)
                if class_name not in _INIT_CLASSES:
                    raise KeyError(class_name)
                if class_name == "VarianceScaling" and config.get("distribution") == "normal":
                    config["distribution"] = "truncated_normal"  # Keras 2 meaning of "normal"
                config.pop("dtype", None)
                return getattr(keras.initializers, class_name)(**config)
            if kind == "regularizer":
                class_name = {"l1": "L1", "l2": "L2", "l1_l2": "L1L2"}.get(class_name, class_name)
                keys = _REG_CLASSES[class_name]
                return getattr(keras.regularizers, class_name)(
                    **{k: float(config[k]) for k in keys if k in config})
            class_name = _CON_ALIASES.get(class_name, class_name)
            keys = _CON_CLASSES[class_name]
            return getattr(keras.constraints, class_name)(**{k: config[k] for k in keys
                                                               if k in config})
        except Exception:
            warnings.warn(
                f"{self.path}: {where}: {kind} {class_name!r} is not a Keras built-in and was "
                "replaced by the Keras default (this does not change predictions).",
                stacklevel=4)
            return None

    def kwargs(self, class_name: str, cfg: Mapping[str, Any], kinds: Mapping[str, int],
               ignored: set) -> Dict[str, Any]:
        name = cfg.get("name", "?")
        where = f"layer {name!r} ({class_name})"
        out: Dict[str, Any] = {}
        for key, value in cfg.items():
            if key in kinds:
                kind = kinds[key]
                if kind == _ACT:
                    value = self.activation(value, where)
                elif kind == _INIT:
                    value = self._sub_object(value, where, "initializer")
                    if value is None:
                        continue
                elif kind == _REG:
                    value = self._sub_object(value, where, "regularizer")
                elif kind == _CON:
                    value = self._sub_object(value, where, "constraint")
                elif kind == _TUPLE and isinstance(value, list):
                    value = tuple(value)
                elif kind == _INT1 and isinstance(value, list) and len(value) == 1:
                    value = value[0]
                out[key] = value
            elif key in ignored or key in _IGNORED_EVERYWHERE:
                continue
            elif key == "time_major":
                if value:
                    raise self._unsupported(
                        f"{where} was saved with time_major=True (inputs shaped (time, batch, "
                        "features)); Keras 3 only supports batch-major RNNs.")
            elif value not in (None, False, 0, "", [], {}):
                warnings.warn(f"{self.path}: {where}: option {key}={value!r} is not known to "
                              "Keras 3 and was ignored.", stacklevel=3)
        if "name" in cfg:
            out["name"] = cfg["name"]
        if "trainable" in cfg:
            out["trainable"] = bool(cfg["trainable"])
        dtype = self.dtype(cfg.get("dtype"))
        if dtype is not None:
            out["dtype"] = dtype
        return out

    # -- layers ----------------------------------------------------------------------------
    def layer(self, entry: Mapping[str, Any]) -> keras.layers.Layer:
        """Build the Keras 3 layer for a ``{"class_name", "config"}`` entry (not InputLayer)."""
        if not isinstance(entry, dict) or "class_name" not in entry:
            raise ModelFileError(f"{self.path}: malformed layer entry in model_config: "
                                 f"{_one_line(repr(entry))[:200]}")
        class_name = entry["class_name"]
        cfg = dict(entry.get("config") or {})
        name = cfg.get("name") or entry.get("name") or "?"
        registered = entry.get("registered_name")
        for key in (registered, class_name):
            if key and key in self.custom_objects:
                return self._custom(self.custom_objects[key], class_name, cfg, name)
        class_name = _ALIASES.get(class_name, class_name)
        if class_name in _MODEL_CLASSES:
            raise self._unsupported(
                f"layer {name!r} is a nested {class_name} model; nested models are not "
                "supported. Flatten the model (one level of layers) before saving.")
        if class_name in _NOT_REBUILDABLE:
            raise self._unsupported(
                f"layer {name!r} ({class_name}) is {_NOT_REBUILDABLE[class_name]} and cannot be "
                "rebuilt in Keras 3; replace it with a Keras layer in the original code and "
                "re-save the model.")
        if class_name == "Lambda":
            return self._lambda(cfg, name)
        if class_name == "Bidirectional":
            return self._bidirectional(cfg, name)
        if class_name == "TimeDistributed":
            kw = self.kwargs(class_name, {k: v for k, v in cfg.items() if k != "layer"}, {},
                             set())
            return self._construct(keras.layers.TimeDistributed, class_name, name,
                                   layer=self.layer(cfg["layer"]), **kw)
        if class_name == "RNN":
            return self._rnn(cfg, name)
        if class_name == "StackedRNNCells":
            cells = [self.layer(c) for c in cfg.get("cells", [])]
            kw = self.kwargs(class_name, {k: v for k, v in cfg.items() if k != "cells"}, {},
                             set())
            return self._construct(keras.layers.StackedRNNCells, class_name, name, cells, **kw)
        if class_name not in _SIMPLE_LAYERS:
            module = entry.get("module")
            origin = f" (module {module!r})" if module else ""
            raise self._unsafe(
                f"layer {name!r} uses class {class_name!r}{origin}, which is not a built-in "
                "Keras layer this loader rebuilds; if you trust this file, pass "
                f"custom_objects={{{class_name!r}: YourClass}} (a Keras 3 class whose "
                "from_config accepts this config).")
        ctor, kinds, ignored = _SIMPLE_LAYERS[class_name]
        kw = self.kwargs(class_name, cfg, kinds, ignored)
        if class_name in ("GRU", "GRUCell") and "reset_after" not in kw:
            kw["reset_after"] = False  # Keras 2.0/2.1 GRUs predate reset_after (and used False)
        if class_name in ("Dense", "Conv1D") and (cfg.get("lora_rank")
                                                  or cfg.get("quantization_config")):
            raise self._unsupported(f"layer {name!r} ({class_name}) uses LoRA or quantization.")
        return self._construct(ctor, class_name, name, **kw)

    def _construct(self, ctor: Callable, class_name: str, layer_name: str, /, *args, **kwargs):
        if isinstance(ctor, type):
            params = inspect.signature(ctor.__init__).parameters
            if not any(p.kind == p.VAR_KEYWORD for p in params.values()):
                # e.g. SpatialDropout1D takes no `trainable` (it has no weights anyway)
                kwargs = {k: v for k, v in kwargs.items() if k in params}
        try:
            with keras.saving.custom_object_scope(self._scope_objects()):
                return ctor(*args, **kwargs)
        except (UnsafeModelError, UnsupportedModelError, ModelFileError):
            raise
        except Exception as exc:
            raise self._unsupported(f"layer {layer_name!r} ({class_name}) could not be rebuilt "
                                    f"in Keras 3: {_one_line(exc)[:300]}") from exc

    def _scope_objects(self) -> Dict[str, Any]:
        return {"LRP_LSTMCell": LRP_LSTMCell, "keras2_hard_sigmoid": keras2_hard_sigmoid,
                **self.custom_objects}

    def _rnn(self, cfg: Dict[str, Any], name: str):
        cell_entry = cfg.get("cell")
        if isinstance(cell_entry, list):
            cell = [self.layer(c) for c in cell_entry]
        else:
            cell = self.layer(cell_entry)
        if isinstance(cell, list):
            cell = self._construct(keras.layers.StackedRNNCells, "StackedRNNCells", name, cell)
        kw = self.kwargs("RNN", {k: v for k, v in cfg.items() if k != "cell"}, _K["rnn"],
                         {"input_dim", "input_length", "use_cudnn"})
        return self._construct(keras.layers.RNN, "RNN", name, cell, **kw)

    def _bidirectional(self, cfg: Dict[str, Any], name: str):
        forward = self.layer(cfg["layer"])
        backward = self.layer(cfg["backward_layer"]) if cfg.get("backward_layer") else None
        rest = {k: v for k, v in cfg.items() if k not in ("layer", "backward_layer")}
        kw = self.kwargs("Bidirectional", rest, {"merge_mode": _PLAIN}, {"num_constants"})
        return self._construct(keras.layers.Bidirectional, "Bidirectional", name, forward,
                               backward_layer=backward, **kw)

    def _lambda(self, cfg: Dict[str, Any], name: str):
        if self.safe_mode:
            raise self._unsafe(
                f"layer {name!r} is a Lambda layer, i.e. Python code stored in the file; it is "
                "refused in safe mode. If you trust this file, call load_model(..., "
                "safe_mode=False) to let Keras load the code.")
        fn = cfg.get("function")
        ftype = cfg.get("function_type", "lambda")
        kw = {k: cfg[k] for k in ("name", "trainable") if k in cfg}
        dtype = self.dtype(cfg.get("dtype"))
        if dtype is not None:
            kw["dtype"] = dtype
        kw["arguments"] = cfg.get("arguments") or {}
        if isinstance(fn, dict):  # Keras 3 format
            fn_conf = fn
        elif ftype == "lambda":
            code, defaults, closure = (list(fn) + [None, None])[:3] if isinstance(
                fn, (list, tuple)) else (fn, None, None)
            fn_conf = {"class_name": "__lambda__",
                       "config": {"code": code, "defaults": defaults, "closure": closure}}
        else:  # a named function: only from custom_objects
            if fn not in self.custom_objects:
                raise self._unsafe(
                    f"Lambda layer {name!r} calls function {fn!r}; pass "
                    f"custom_objects={{{fn!r}: function}} to load it.")
            return self._construct(keras.layers.Lambda, "Lambda", name,
                                   self.custom_objects[fn], **kw)
        try:
            with keras.saving.custom_object_scope(self._scope_objects()):
                return keras.layers.Lambda.from_config({"function": fn_conf, **kw},
                                                       custom_objects=self.custom_objects,
                                                       safe_mode=False)
        except Exception as exc:
            raise self._unsupported(
                f"Lambda layer {name!r} could not be loaded (its code must come from the same "
                f"Python version): {_one_line(exc)[:300]}") from exc

    def _custom(self, obj: Any, class_name: str, cfg: Dict[str, Any], name: str):
        cfg = {k: v for k, v in cfg.items()
               if k not in ("batch_input_shape", "batch_shape", "input_shape", "batch_size")}
        if "dtype" in cfg:
            dtype = self.dtype(cfg["dtype"])
            if dtype is None:
                cfg.pop("dtype")
            else:
                cfg["dtype"] = dtype
        ctor = getattr(obj, "from_config", obj)
        return self._construct(ctor, class_name, name, cfg)


# --------------------------------------------------------------------------------------------
# tf.keras op layers (TFOpLambda / SlicingOpLambda): an allow-list of TensorFlow functions
# --------------------------------------------------------------------------------------------
# tf.keras records tensor syntax between layers (``h[:, -1]``, ``tf.reduce_sum(h, axis=1)``,
# ``a + b``) as layers that name a TensorFlow function by a string. Only the functions below are
# rebuilt, each as the equivalent ``keras.ops`` call on the Keras 3 graph (so the explainer's
# op rules apply); the string is looked up in this table and never imported or evaluated.
_T, _TS, _AXIS, _AXES, _SHAPE, _BOOL, _DTYPE, _SPEC, _NONE = range(9)


class _OpSpec(NamedTuple):
    """An allowed TensorFlow function: its parameters in call order, and the Keras 3 builder."""

    params: Tuple[Tuple[str, int, Any], ...]   # (name, value kind, default; _REQUIRED if none)
    build: Callable[[Dict[str, Any]], Any]


_REQUIRED = object()


def _binary(fn: Callable) -> _OpSpec:
    return _OpSpec((("x", _T, _REQUIRED), ("y", _T, _REQUIRED), ("name", _NONE, None)),
                   lambda a: fn(a["x"], a["y"]))


def _reduce(fn: Callable) -> _OpSpec:
    return _OpSpec((("input_tensor", _T, _REQUIRED), ("axis", _AXES, None),
                    ("keepdims", _BOOL, False), ("name", _NONE, None)),
                   lambda a: fn(a["input_tensor"], axis=a["axis"], keepdims=a["keepdims"]))


def _unary(fn: Callable, arg: str = "x") -> _OpSpec:
    return _OpSpec(((arg, _T, _REQUIRED), ("name", _NONE, None)), lambda a: fn(a[arg]))


def _softmax() -> _OpSpec:
    return _OpSpec((("logits", _T, _REQUIRED), ("axis", _AXIS, None), ("name", _NONE, None)),
                   lambda a: ops.softmax(a["logits"], axis=-1 if a["axis"] is None
                                         else a["axis"]))


def _transpose(v1: bool) -> _OpSpec:
    params = (("a", _T, _REQUIRED), ("perm", _AXES, None))
    params += ((("name", _NONE, None), ("conjugate", _BOOL, False)) if v1 else
               (("conjugate", _BOOL, False), ("name", _NONE, None)))
    return _OpSpec(params, lambda a: ops.transpose(a["a"], axes=a["perm"]))


def _squeeze(v1: bool) -> _OpSpec:
    params = (("input", _T, _REQUIRED), ("axis", _AXES, None), ("name", _NONE, None))
    if v1:
        params += (("squeeze_dims", _AXES, None),)
    return _OpSpec(params, lambda a: ops.squeeze(
        a["input"], axis=a["axis"] if a.get("squeeze_dims") is None else a["squeeze_dims"]))


def _getitem(a: Dict[str, Any]):
    return a["tensor"][a["slice_spec"]]


_TF_OPS: Dict[str, _OpSpec] = {
    "__operators__.getitem": _OpSpec((("tensor", _T, _REQUIRED), ("slice_spec", _SPEC, _REQUIRED),
                                      ("var", _NONE, None)), _getitem),
    "math.reduce_sum": _reduce(ops.sum), "reduce_sum": _reduce(ops.sum),
    "math.reduce_mean": _reduce(ops.mean), "reduce_mean": _reduce(ops.mean),
    "concat": _OpSpec((("values", _TS, _REQUIRED), ("axis", _AXIS, _REQUIRED),
                       ("name", _NONE, None)), lambda a: ops.concatenate(a["values"], a["axis"])),
    "stack": _OpSpec((("values", _TS, _REQUIRED), ("axis", _AXIS, 0), ("name", _NONE, None)),
                     lambda a: ops.stack(a["values"], axis=a["axis"])),
    "reshape": _OpSpec((("tensor", _T, _REQUIRED), ("shape", _SHAPE, _REQUIRED),
                        ("name", _NONE, None)), lambda a: ops.reshape(a["tensor"], a["shape"])),
    "expand_dims": _OpSpec((("input", _T, _REQUIRED), ("axis", _AXIS, _REQUIRED),
                            ("name", _NONE, None)),
                           lambda a: ops.expand_dims(a["input"], a["axis"])),
    "transpose": _transpose(False), "compat.v1.transpose": _transpose(True),
    "squeeze": _squeeze(False), "compat.v1.squeeze": _squeeze(True),
    "cast": _OpSpec((("x", _T, _REQUIRED), ("dtype", _DTYPE, _REQUIRED), ("name", _NONE, None)),
                    lambda a: ops.cast(a["x"], a["dtype"])),
    "__operators__.add": _binary(ops.add), "math.add": _binary(ops.add), "add": _binary(ops.add),
    "math.subtract": _binary(ops.subtract), "subtract": _binary(ops.subtract),
    "math.multiply": _binary(ops.multiply), "multiply": _binary(ops.multiply),
    "math.truediv": _binary(ops.true_divide), "truediv": _binary(ops.true_divide),
    "math.divide": _binary(ops.divide), "divide": _binary(ops.divide),
    "math.negative": _unary(ops.negative), "negative": _unary(ops.negative),
    "nn.softmax": _softmax(), "math.softmax": _softmax(),
    "math.sigmoid": _unary(ops.sigmoid), "nn.sigmoid": _unary(ops.sigmoid),
    "sigmoid": _unary(ops.sigmoid),
}
_OP_LAYER_CLASSES = ("TFOpLambda", "SlicingOpLambda")
_SAFE_DTYPES = {"float16", "bfloat16", "float32", "float64", "int8", "int16", "int32", "int64",
                "uint8", "bool"}


class _TFOp(NamedTuple):
    """A TFOpLambda / SlicingOpLambda of the file: layer ``name`` calls allowed ``function``."""

    name: str
    class_name: str
    function: str

    def call(self, path: str, args: Tuple[Any, ...], kwargs: Mapping[str, Any]):
        """Bind the recorded call like Python would and apply the Keras 3 equivalent."""
        spec = _TF_OPS[self.function]
        where = f"{path}: layer {self.name!r} ({self.class_name} tf.{self.function})"
        names = [p[0] for p in spec.params]
        if len(args) > len(names):
            raise UnsupportedModelError(f"{where} is called with {len(args)} positional "
                                        f"arguments; tf.{self.function} takes {len(names)}.")
        bound = dict(zip(names, args))
        for key, value in kwargs.items():
            if key not in names or key in bound:
                raise UnsupportedModelError(
                    f"{where} is called with argument {key!r}, which this loader does not "
                    f"rebuild (it knows {', '.join(names)}).")
            bound[key] = value
        values: Dict[str, Any] = {}
        for name, kind, default in spec.params:
            if name not in bound:
                if default is _REQUIRED:
                    raise UnsupportedModelError(f"{where} is called without argument {name!r}.")
                values[name] = default
                continue
            values[name] = _op_value(where, name, kind, bound[name])
        return spec.build(values)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _int_list(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and all(
        isinstance(v, int) and not isinstance(v, bool) for v in value)


def _slice_item(where: str, item: Any):
    """One element of a recorded ``slice_spec``: index, slice dict, None (newaxis), Ellipsis."""
    if item is None or (isinstance(item, int) and not isinstance(item, bool)):
        return item
    if isinstance(item, dict) and item.get("class_name") == "__ellipsis__":
        return Ellipsis
    if isinstance(item, dict) and set(item) == {"start", "stop", "step"} and all(
            v is None or (isinstance(v, int) and not isinstance(v, bool)) for v in item.values()):
        return slice(item["start"], item["stop"], item["step"])
    raise UnsupportedModelError(f"{where} slices with {_one_line(repr(item))[:100]}; only "
                                "integer indices, integer slices, None and ... are rebuilt.")


def _op_value(where: str, name: str, kind: int, value: Any):
    """Check one argument of a recorded op call against its expected kind."""
    ok = True
    if kind == _T:
        ok = isinstance(value, keras.KerasTensor) or _is_number(value)
    elif kind == _TS:
        value = list(value) if isinstance(value, (list, tuple)) else [value]
        ok = all(isinstance(v, keras.KerasTensor) or _is_number(v) for v in value)
    elif kind == _AXIS:
        ok = value is None or (isinstance(value, int) and not isinstance(value, bool))
    elif kind in (_AXES, _SHAPE):
        if isinstance(value, list):
            value = tuple(value)
        ok = (value is None and kind == _AXES) or _int_list(value) or (
            isinstance(value, int) and not isinstance(value, bool))
    elif kind == _BOOL:
        ok = isinstance(value, bool)
    elif kind == _DTYPE:
        ok = isinstance(value, str) and value in _SAFE_DTYPES
    elif kind == _SPEC:
        items = value if isinstance(value, (list, tuple)) else [value]
        value = tuple(_slice_item(where, item) for item in items)
    elif kind == _NONE:
        ok = value is None or name == "name"  # tf.keras drops `name`; `var` must be absent
        value = None
    if not ok:
        raise UnsupportedModelError(f"{where}: argument {name}={_one_line(repr(value))[:100]} "
                                    "is not supported.")
    return value


def _tf_op(translator: "_Translator", entry: Mapping[str, Any], name: str) -> _TFOp:
    """The allowed TensorFlow function of a TFOpLambda / SlicingOpLambda entry, or a refusal."""
    cfg = entry.get("config") or {}
    function = cfg.get("function")
    if not isinstance(function, str) or function not in _TF_OPS:
        shown = function if isinstance(function, str) else _one_line(repr(function))[:100]
        raise translator._unsupported(
            f"layer {name!r} ({entry['class_name']}) calls TensorFlow function {shown!r}, which "
            "this loader does not rebuild (it rebuilds only: "
            f"{', '.join(sorted({'tf.' + f for f in _TF_OPS}))}); replace it with a Keras "
            "layer in the original code and re-save the model.")
    return _TFOp(name, entry["class_name"], function)


# --------------------------------------------------------------------------------------------
# Model plans
# --------------------------------------------------------------------------------------------
class _InputSpec(NamedTuple):
    name: Optional[str]
    batch_shape: Optional[Tuple[Optional[int], ...]]
    dtype: Optional[str]
    sparse: bool


def _input_spec(translator: _Translator, cfg: Mapping[str, Any], name: Optional[str]):
    shape = cfg.get("batch_input_shape", cfg.get("batch_shape"))
    if shape is None and "build_input_shape" in cfg:
        shape = cfg["build_input_shape"]
    if cfg.get("ragged"):
        raise translator._unsupported(f"input {name!r} is ragged; Keras 3 has no ragged inputs.")
    dtype = cfg.get("dtype")
    dtype = translator.dtype(dtype) if not isinstance(dtype, str) else dtype
    return _InputSpec(name, None if shape is None else tuple(shape), dtype,
                      bool(cfg.get("sparse", False)))


def _make_input(spec: _InputSpec):
    kw = {"batch_shape": spec.batch_shape, "dtype": spec.dtype}
    if spec.name:
        kw["name"] = spec.name
    if spec.sparse:
        kw["sparse"] = True
    return keras.Input(**kw)


class _Plan:
    """Layers built from the config plus the recipe to wire them into a Keras 3 model."""

    def __init__(self, kind: str, name: Optional[str], layers: Dict[str, keras.layers.Layer],
                 **graph):
        self.kind = kind
        self.name = name
        self.layers = layers
        self.graph = graph


def _plan_model(translator: _Translator, config: Mapping[str, Any]) -> _Plan:
    if not isinstance(config, dict) or "class_name" not in config:
        raise ModelFileError(f"{translator.path}: model_config is not a Keras model config.")
    class_name = config["class_name"]
    body = config.get("config")
    if class_name == "Sequential":
        return _plan_sequential(translator, body)
    if class_name in ("Model", "Functional"):
        return _plan_functional(translator, body)
    for key in (config.get("registered_name"), class_name):
        if key and key in translator.custom_objects:
            raise translator._unsupported(
                f"the model itself is a custom class {class_name!r}; only Sequential and "
                "functional models can be rebuilt from an .h5 file.")
    raise translator._unsupported(
        f"the model is of class {class_name!r}, not Sequential or functional (a subclassed "
        "model); it cannot be rebuilt from the file.")


def _plan_checked(translator: _Translator, config: Any) -> _Plan:
    """:func:`_plan_model`, with malformed JSON structures reported as a ModelFileError."""
    try:
        return _plan_model(translator, config)
    except (KeyError, TypeError, AttributeError, IndexError) as exc:
        raise ModelFileError(f"{translator.path}: model_config is malformed "
                             f"({type(exc).__name__}: {_one_line(exc)[:150]}).") from exc


def _plan_sequential(translator: _Translator, body: Any) -> _Plan:
    if isinstance(body, list):  # Keras <= 2.2.2 stored the layer list directly
        body = {"layers": body}
    if not isinstance(body, dict) or not isinstance(body.get("layers"), list):
        raise ModelFileError(f"{translator.path}: Sequential config has no layer list.")
    entries = list(body["layers"])
    input_spec = None
    if entries and entries[0].get("class_name") == "InputLayer":
        cfg = entries.pop(0).get("config") or {}
        input_spec = _input_spec(translator, cfg, cfg.get("name"))
    elif entries:
        cfg = entries[0].get("config") or {}
        shape = cfg.get("batch_input_shape", cfg.get("batch_shape"))
        if shape is None and "build_input_shape" in body:
            shape = body["build_input_shape"]
        if shape is not None:
            dtype = "int32" if entries[0].get("class_name") == "Embedding" else (
                translator.dtype(cfg.get("dtype")))
            input_spec = _InputSpec(None, tuple(shape), dtype, False)
    layers: Dict[str, keras.layers.Layer] = {}
    order: List[str] = []
    for entry in entries:
        layer = translator.layer(entry)
        if layer.name in layers:
            raise ModelFileError(f"{translator.path}: two layers are named {layer.name!r}.")
        layers[layer.name] = layer
        order.append(layer.name)
    first_class = entries[0].get("class_name") if entries else None
    return _Plan("sequential", body.get("name"), layers, order=order, input_spec=input_spec,
                 first_class=first_class)


def _parse_refs(obj: Any, keras2_kwargs: bool) -> Any:
    """Replace tensor references in node data by :class:`_Ref`."""
    if isinstance(obj, dict):
        if obj.get("class_name") == "__keras_tensor__":
            history = obj["config"]["keras_history"]
            return _Ref(str(history[0]), int(history[1]), int(history[2]))
        if obj.get("class_name") == "__tuple__":
            return tuple(_parse_refs(v, keras2_kwargs) for v in obj["config"]["value"])
        return {k: _parse_refs(v, keras2_kwargs) for k, v in obj.items()}
    if isinstance(obj, list):
        if (keras2_kwargs and len(obj) in (3, 4) and isinstance(obj[0], str)
                and isinstance(obj[1], int) and isinstance(obj[2], int)):
            return _Ref(obj[0], obj[1], obj[2])
        return [_parse_refs(v, keras2_kwargs) for v in obj]
    return obj


def _parse_node(translator: _Translator, node: Any, layer_name: str, constants: bool = False):
    """One call of a layer -> (args, kwargs) holding :class:`_Ref` placeholders.

    ``constants``: a tf.keras op layer may be called on a number (``0.5 * h`` is stored as
    ``["_CONSTANT_VALUE", -1, 0.5, {"y": h}]``); other layers may not."""
    if isinstance(node, dict) and "args" in node:  # Keras 3
        return (tuple(_parse_refs(node.get("args", []), False)),
                _parse_refs(node.get("kwargs", {}), False))
    if isinstance(node, list) and node and isinstance(node[0], str):
        node = [node]
    if not isinstance(node, list) or not all(isinstance(e, list) and len(e) >= 3
                                             and isinstance(e[0], str) for e in node):
        raise translator._unsupported(
            f"layer {layer_name!r} is called with inputs this loader cannot read "
            f"({_one_line(repr(node))[:150]}).")
    refs, kwargs = [], {}
    for entry in node:
        if entry[0] == "_CONSTANT_VALUE":
            if not (constants and _is_number(entry[2])):
                raise translator._unsupported(
                    f"layer {layer_name!r} is called on a constant, which is not supported.")
            refs.append(entry[2])
        else:
            refs.append(_Ref(entry[0], int(entry[1]), int(entry[2])))
        if len(entry) > 3 and entry[3]:
            kwargs = _parse_refs(dict(entry[3]), True)
    args = refs[0] if len(refs) == 1 else refs
    return (args,), kwargs


def _io_refs(spec: Any) -> List[_Ref]:
    if isinstance(spec, dict):  # Keras 3 may store dict-structured inputs
        spec = list(spec.values())
    if spec and isinstance(spec[0], str):
        spec = [spec]
    return [_Ref(s[0], int(s[1]), int(s[2])) for s in spec]


def _plan_functional(translator: _Translator, body: Any) -> _Plan:
    if not isinstance(body, dict) or not isinstance(body.get("layers"), list):
        raise ModelFileError(f"{translator.path}: functional model config has no layer list.")
    layers: Dict[str, keras.layers.Layer] = {}
    inputs: Dict[str, _InputSpec] = {}
    nodes: Dict[str, list] = {}
    tf_ops: Dict[str, _TFOp] = {}
    order: List[str] = []
    for entry in body["layers"]:
        cfg = entry.get("config") or {}
        name = entry.get("name") or cfg.get("name")
        if name in layers or name in inputs or name in tf_ops:
            raise ModelFileError(f"{translator.path}: two layers are named {name!r}.")
        order.append(name)
        if entry.get("class_name") == "InputLayer":
            inputs[name] = _input_spec(translator, cfg, name)
            continue
        if entry.get("class_name") in _OP_LAYER_CLASSES:
            tf_ops[name] = _tf_op(translator, entry, name)
            nodes[name] = [_parse_node(translator, n, name, constants=True)
                           for n in entry.get("inbound_nodes", [])]
            continue
        layer = translator.layer(entry)
        layers[name] = layer
        nodes[name] = [_parse_node(translator, n, name) for n in entry.get("inbound_nodes", [])]
    input_refs = _io_refs(body.get("input_layers", []))
    output_refs = _io_refs(body.get("output_layers", []))
    for ref in input_refs + output_refs:
        if ref.layer not in layers and ref.layer not in inputs and ref.layer not in tf_ops:
            raise ModelFileError(f"{translator.path}: model input/output refers to unknown "
                                 f"layer {ref.layer!r}.")
    return _Plan("functional", body.get("name"), layers, inputs=inputs, nodes=nodes, order=order,
                 input_refs=input_refs, output_refs=output_refs, tf_ops=tf_ops)


def _resolve(obj: Any, outputs: Mapping[Tuple[str, int], Any]):
    if isinstance(obj, _Ref):
        out = outputs[(obj.layer, obj.node)]
        if isinstance(out, (list, tuple)):
            return out[obj.tensor]
        if obj.tensor != 0:
            raise IndexError(obj)
        return out
    if isinstance(obj, dict):
        return {k: _resolve(v, outputs) for k, v in obj.items()}
    if isinstance(obj, tuple):
        return tuple(_resolve(v, outputs) for v in obj)
    if isinstance(obj, list):
        return [_resolve(v, outputs) for v in obj]
    return obj


def _refs_in(obj: Any) -> List[_Ref]:
    if isinstance(obj, _Ref):
        return [obj]
    if isinstance(obj, dict):
        obj = list(obj.values())
    if isinstance(obj, (list, tuple)):
        return [r for v in obj for r in _refs_in(v)]
    return []


def _infer_input_spec(translator: _Translator, first_class: Optional[str],
                      first: Optional[keras.layers.Layer],
                      weights: Mapping[str, List[np.ndarray]]) -> _InputSpec:
    """Keras 2 Sequential models built lazily record no input shape: infer it from weights."""
    arrays = weights.get(first.name) if first is not None else None
    if first_class == "Embedding":
        return _InputSpec(None, (None, None), "int32", False)
    if arrays and first_class in ("LSTM", "GRU", "SimpleRNN", "RNN", "Bidirectional",
                                  "TimeDistributed"):
        return _InputSpec(None, (None, None, int(arrays[0].shape[0])), None, False)
    if arrays and first_class == "Conv1D":
        return _InputSpec(None, (None, None, int(arrays[0].shape[1])), None, False)
    if arrays and first_class == "Dense":
        return _InputSpec(None, (None, int(arrays[0].shape[0])), None, False)
    raise translator._unsupported(
        "the file does not record the model's input shape and it cannot be inferred from the "
        f"first layer ({first_class}); re-save the model after building it with an Input.")


def _build(translator: _Translator, plan: _Plan, weights: Mapping[str, List[np.ndarray]]):
    path = translator.path
    try:
        with keras.saving.custom_object_scope(translator._scope_objects()):
            if plan.kind == "sequential":
                spec = plan.graph["input_spec"]
                order = plan.graph["order"]
                if spec is None:
                    first = plan.layers[order[0]] if order else None
                    spec = _infer_input_spec(translator, plan.graph["first_class"], first,
                                             weights)
                layer_list = [_make_input(spec)] + [plan.layers[n] for n in order]
                return keras.Sequential(layer_list, name=plan.name)
            return _build_functional(translator, plan)
    except (UnsafeModelError, UnsupportedModelError, ModelFileError):
        raise
    except Exception as exc:
        raise UnsupportedModelError(f"{path}: the model could not be rebuilt in Keras 3: "
                                    f"{_one_line(exc)[:300]}") from exc


def _rename_op_node(result: Any, taken: set) -> None:
    """Give the keras.ops node that produced ``result`` a name no layer of the file has: its
    automatic name ("softmax", "add_2") may equal a tf.keras layer's, which Keras 3 refuses."""
    history = getattr(result, "_keras_history", None)
    op = getattr(history, "operation", None)
    if op is None or isinstance(op, keras.layers.Layer):
        return
    base, k = op.name, 0
    while op.name in taken:
        k += 1
        op.name = f"{base}_op{k}"
    taken.add(op.name)


def _build_functional(translator: _Translator, plan: _Plan) -> keras.Model:
    outputs: Dict[Tuple[str, int], Any] = {}
    for name, spec in plan.graph["inputs"].items():
        outputs[(name, 0)] = _make_input(spec)
    tf_ops = plan.graph.get("tf_ops", {})
    taken = set(plan.layers) | set(plan.graph["inputs"])
    pending = [(name, i, call) for name in plan.graph["order"]
               if name in plan.layers or name in tf_ops
               for i, call in enumerate(plan.graph["nodes"][name])]
    while pending:
        still = []
        for name, index, (args, kwargs) in pending:
            needed = _refs_in(args) + _refs_in(kwargs)
            if all((r.layer, r.node) in outputs for r in needed) and name in tf_ops:
                # a tf.keras op layer becomes the keras.ops call itself (an op node)
                op = tf_ops[name]
                try:
                    result = op.call(translator.path, _resolve(args, outputs),
                                     _resolve(kwargs, outputs))
                except ModelFileError:
                    raise
                except Exception as exc:
                    raise translator._unsupported(
                        f"calling tf.{op.function} of layer {name!r} ({op.class_name}) as a "
                        f"Keras 3 op failed: {_one_line(exc)[:300]}") from exc
                _rename_op_node(result, taken)
                outputs[(name, index)] = result
            elif all((r.layer, r.node) in outputs for r in needed):
                layer = plan.layers[name]
                try:
                    result = layer(*_resolve(args, outputs), **_resolve(kwargs, outputs))
                except Exception as exc:
                    raise translator._unsupported(
                        f"calling layer {name!r} ({type(layer).__name__}) failed: "
                        f"{_one_line(exc)[:300]}") from exc
                outputs[(name, index)] = result
            else:
                still.append((name, index, (args, kwargs)))
        if len(still) == len(pending):
            missing = sorted({f"{r.layer}[{r.node}]" for _, _, c in still
                              for r in _refs_in(c) if (r.layer, r.node) not in outputs})
            raise ModelFileError(f"{translator.path}: the layer graph refers to calls that "
                                 f"never happen: {', '.join(missing)[:200]}.")
        pending = still
    try:
        ins = [_resolve(r, outputs) for r in plan.graph["input_refs"]]
        outs = [_resolve(r, outputs) for r in plan.graph["output_refs"]]
    except (KeyError, IndexError) as exc:
        raise ModelFileError(f"{translator.path}: model inputs/outputs refer to missing "
                             f"tensors ({exc}).") from exc
    return keras.Model(ins[0] if len(ins) == 1 else ins,
                       outs[0] if len(outs) == 1 else outs, name=plan.name)


# --------------------------------------------------------------------------------------------
# Untrusted files: limits checked before anything large is read or allocated
# --------------------------------------------------------------------------------------------
#: Largest architecture (``model_config`` attribute, ``config.json``) read, in bytes.
MAX_CONFIG_BYTES = 16 * 2**20
#: Deepest nesting of JSON arrays / objects accepted in an architecture (Keras configs use ~15).
MAX_CONFIG_DEPTH = 100
#: Most HDF5 links (groups and datasets) walked in one file, and most members of a ``.keras`` zip.
MAX_HDF5_OBJECTS = 100_000
#: Most layers in a model's top-level layer list (each costs time to build).
MAX_LAYERS = 5_000
#: Without ``max_bytes=``, a file may declare up to this many bytes of weights (and of unpacked
#: archive members) per byte of its own size, plus :data:`WEIGHT_BYTES_FLOOR`. Keras stores
#: weights uncompressed, so a genuine file declares at most about its own size.
WEIGHT_BYTES_PER_FILE_BYTE = 16
WEIGHT_BYTES_FLOOR = 16 * 2**20

# HDF5 filters that only decode the file's own bytes (deflate, shuffle, fletcher32, szip, n-bit,
# scale-offset, lzf); any other filter would make HDF5 look for a plugin library.
_SAFE_H5_FILTERS = {1, 2, 3, 4, 5, 6, 32000}


def _mib(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB" if n < 2**30 else f"{n / 2**30:,.2f} GiB"


def _weight_budget(file_size: int, max_bytes: Optional[int]) -> int:
    if max_bytes is not None:
        return max_bytes
    return WEIGHT_BYTES_PER_FILE_BYTE * file_size + WEIGHT_BYTES_FLOOR


def _too_large(path: str, what: str, declared: int, budget: int) -> ModelTooLargeError:
    return ModelTooLargeError(
        f"{path}: {what} {_mib(declared)} ({declared:,} bytes), more than the limit of "
        f"{_mib(budget)} for this file; if you trust it, pass load_model(..., "
        f"max_bytes={max(declared, budget + 1)}).")


_JSON_STRING_RE = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')


def _json_depth(text: str) -> int:
    """Deepest nesting of ``[`` / ``{`` in JSON ``text``, without recursion (strings skipped)."""
    codes = np.frombuffer(_JSON_STRING_RE.sub('""', text).encode("utf-8", "replace"), np.uint8)
    opens = (codes == ord("[")) | (codes == ord("{"))
    brackets = opens | (codes == ord("]")) | (codes == ord("}"))
    steps = np.where(opens[brackets], 1, -1).astype(np.int32)
    return int(np.cumsum(steps).max(initial=0))


def _parse_json(path: str, raw: Any, what: str) -> Any:
    """Parse an architecture: size and nesting depth checked before ``json.loads``."""
    if isinstance(raw, np.ndarray) and raw.shape == ():
        raw = raw.item()
    if isinstance(raw, (bytes, bytearray)):
        if len(raw) > MAX_CONFIG_BYTES:
            raise _config_too_large(path, what, len(raw))
        try:
            raw = bytes(raw).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ModelFileError(f"{path}: {what} is not UTF-8 text: {exc.reason}.") from None
    if not isinstance(raw, str):
        raise ModelFileError(f"{path}: {what} is not a JSON text (found {type(raw).__name__}).")
    if len(raw) > MAX_CONFIG_BYTES:
        raise _config_too_large(path, what, len(raw))
    depth = _json_depth(raw)
    if depth > MAX_CONFIG_DEPTH:
        raise ModelFileError(
            f"{path}: {what} is nested {depth} levels deep (limit {MAX_CONFIG_DEPTH}; real Keras "
            "models use about 15); it is not a Keras architecture. To accept it anyway, raise "
            "keras_lrp.io.MAX_CONFIG_DEPTH.")
    try:
        parsed = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise ModelFileError(f"{path}: {what} is not valid JSON: "
                             f"{_one_line(exc)[:200]}") from None
    body = parsed.get("config") if isinstance(parsed, dict) else None
    layers = body.get("layers") if isinstance(body, dict) else body
    if isinstance(layers, list) and len(layers) > MAX_LAYERS:
        raise ModelTooLargeError(f"{path}: {what} lists {len(layers):,} layers (limit {MAX_LAYERS:,}, "
                                 "keras_lrp.io.MAX_LAYERS); raise the limit for a trusted file.")
    return parsed


def _config_too_large(path: str, what: str, size: int) -> ModelTooLargeError:
    return ModelTooLargeError(
        f"{path}: {what} is {_mib(size)}, more than the {_mib(MAX_CONFIG_BYTES)} an architecture "
        "may take (keras_lrp.io.MAX_CONFIG_BYTES); a real one is a few KB.")


def _audit_hdf5(path: str, handle: h5py.File, budget: int, where: str = "") -> int:
    """Refuse an HDF5 file that could make HDF5 read anything but its own bytes, before any
    dataset is read: soft / external / user-defined links, datasets kept in external files,
    virtual datasets, filters that need plugins; and files declaring more than ``budget`` bytes
    of datasets or more than :data:`MAX_HDF5_OBJECTS` links.

    Returns:
        the total declared size of all datasets, in bytes (``prod(shape) * itemsize``).
    """
    state = {"count": 0, "total": 0}

    def visit(name: str, link: Any) -> Optional[ModelFileError]:
        # An exception may not cross HDF5's C iteration: a returned error stops the walk.
        try:
            check(name, link)
        except ModelFileError as exc:
            return exc
        except (OSError, KeyError, ValueError, TypeError, RuntimeError) as exc:
            return ModelFileError(f"{path}: {where}the HDF5 structure cannot be read (truncated "
                                  f"or corrupt file?): {_one_line(exc)[:200]}")
        return None

    def check(name: str, link: Any) -> None:
        state["count"] += 1
        if state["count"] > MAX_HDF5_OBJECTS:
            raise ModelTooLargeError(
                f"{path}: {where}holds more than {MAX_HDF5_OBJECTS:,} HDF5 objects "
                "(keras_lrp.io.MAX_HDF5_OBJECTS); a Keras model file holds a few per layer.")
        shown = _one_line(repr(name))[:120]
        if isinstance(link, h5py.SoftLink):
            raise UnsafeModelError(
                f"{path}: {where}HDF5 entry {shown} is a soft link (to {link.path!r}); "
                "load_model refuses links in model files. Re-save the model with model.save().")
        if isinstance(link, h5py.ExternalLink):
            raise UnsafeModelError(
                f"{path}: {where}HDF5 entry {shown} is an external link to another file "
                f"({_one_line(link.filename)[:120]!r}); load_model never reads outside the file "
                "it is given. Re-save the model with model.save().")
        if not isinstance(link, h5py.HardLink):
            raise UnsafeModelError(f"{path}: {where}HDF5 entry {shown} is a "
                                   f"{type(link).__name__}, not a plain group or dataset.")
        obj = handle.get(name)
        if isinstance(obj, h5py.Dataset):
            state["total"] += _audit_dataset(path, where, shown, obj)
            if state["total"] > budget:
                raise _too_large(path, f"{where}declares datasets of at least", state["total"],
                                 budget)

    try:
        problem = handle.visititems_links(visit)
    except (OSError, KeyError, ValueError, TypeError, RuntimeError) as exc:
        raise ModelFileError(f"{path}: {where}the HDF5 structure cannot be read (truncated or "
                             f"corrupt file?): {_one_line(exc)[:200]}") from exc
    if problem is not None:
        raise problem
    return state["total"]


def _audit_dataset(path: str, where: str, shown: str, dataset: h5py.Dataset) -> int:
    plist = dataset.id.get_create_plist()
    if plist.get_external_count() > 0:
        target = _one_line(_decode(plist.get_external(0)[0]))[:120]
        raise UnsafeModelError(
            f"{path}: {where}dataset {shown} keeps its data in another file ({target!r}, HDF5 "
            "external storage); load_model never reads outside the file it is given. Re-save "
            "the model with model.save().")
    if dataset.is_virtual:
        raise UnsafeModelError(
            f"{path}: {where}dataset {shown} is an HDF5 virtual dataset (its data lives in "
            "other datasets or files); load_model refuses it. Re-save the model with "
            "model.save().")
    for index in range(plist.get_nfilters()):
        code = plist.get_filter(index)[0]
        if code not in _SAFE_H5_FILTERS:
            raise UnsafeModelError(
                f"{path}: {where}dataset {shown} uses HDF5 filter #{code}, which would need a "
                "plugin library; load_model only decodes the standard filters.")
    shape = dataset.shape
    return 0 if shape is None else math.prod(int(d) for d in shape) * dataset.dtype.itemsize


@contextlib.contextmanager
def _variables_without_values():
    """Keras variables created in this block get a shape and a dtype but no memory and no
    initializer call (Keras' deferred initialisation), so an architecture can be built to
    measure its weights before anything is allocated. They are forgotten on exit."""
    from keras.src.backend.common import global_state  # the list of deferred variables

    key = "uninitialized_variables"
    before = list(global_state.get_global_attribute(key, [], set_to_default=True))
    try:
        with keras.StatelessScope(initialize_variables=False):
            yield
    finally:
        global_state.set_global_attribute(key, before)


def _itemsize(dtype: Any) -> int:
    try:
        return np.dtype(str(dtype)).itemsize
    except TypeError:
        return 8


def _variable_bytes(model: Any) -> int:
    """Bytes the variables of a built ``model`` take (deferred variables included)."""
    return sum(math.prod(int(d) for d in v.shape) * _itemsize(v.dtype)
               for v in getattr(model, "variables", []))


# --------------------------------------------------------------------------------------------
# Weights
# --------------------------------------------------------------------------------------------
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


# --------------------------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------------------------
class _ModelPath(NamedTuple):
    path: str
    kind: str   # "h5" or "zip"
    size: int   # bytes


_FILE_KINDS = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
               (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def _check_path(path: PathLike) -> _ModelPath:
    if isinstance(path, (bytes, bytearray)):
        path = os.fsdecode(bytes(path))
    try:
        path = os.fspath(path)
    except TypeError:
        raise TypeError(f"load_model expects a file path, got {type(path).__name__}.") from None
    if isinstance(path, bytes):  # an os.PathLike returning bytes
        path = os.fsdecode(path)
    if not path:
        raise ModelFileNotFoundError("load_model got an empty path; give the model file's path.")
    if "\x00" in path:
        raise ModelFileError(f"{path!r}: a file path cannot contain a NUL character.")
    try:
        info = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            raise ModelFileNotFoundError(f"{path}: is a symbolic link to a missing file "
                                         f"({os.readlink(path)!r}).") from None
        raise ModelFileNotFoundError(f"{path}: no such model file.") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ModelFileError(f"{path}: too many levels of symbolic links (a symlink loop?); "
                                 "point load_model at the model file itself.") from None
        if exc.errno == errno.ENOTDIR:
            raise ModelFileNotFoundError(f"{path}: no such model file (a parent is not a "
                                         "directory).") from None
        raise ModelFileError(f"{path}: cannot be read: {_one_line(exc)}") from None
    except ValueError as exc:  # e.g. a path too long for the platform
        raise ModelFileError(f"{path[:200]}: is not a usable file path: {exc}.") from None
    if stat.S_ISDIR(info.st_mode):
        raise ModelFileError(
            f"{path}: is a directory (a TensorFlow SavedModel?); load_model reads .keras and "
            ".h5 files. Re-save the model with model.save('model.h5') in its original framework.")
    for test, what in _FILE_KINDS:
        if test(info.st_mode):
            raise ModelFileError(f"{path}: is {what}, not a regular file; load_model reads only "
                                 "regular .keras / .h5 files (copy the model to a file first).")
    if not stat.S_ISREG(info.st_mode):
        raise ModelFileError(f"{path}: is not a regular file.")
    try:
        # O_NONBLOCK: a FIFO swapped in after the check above cannot block the open.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise ModelFileError(f"{path}: is not a regular file.")
            head = os.read(fd, 8)
        finally:
            os.close(fd)
    except OSError as exc:
        raise ModelFileError(f"{path}: cannot be read: {_one_line(exc)}") from exc
    if head.startswith(_HDF5_MAGIC):
        return _ModelPath(path, "h5", info.st_size)
    if head.startswith(_ZIP_MAGIC):
        return _ModelPath(path, "zip", info.st_size)
    what = "an empty file" if not head else "neither an HDF5 (.h5) nor a .keras (zip) file"
    raise ModelFileError(f"{path}: is {what}; expected a model saved with model.save().")


def _is_keras2(version: Optional[str]) -> bool:
    return not (version or "").strip().startswith("3")


def _read_model_config(path: str, handle: h5py.File) -> Tuple[Any, Optional[str]]:
    try:
        raw = handle.attrs.get("model_config")
        version = handle.attrs.get("keras_version")
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise ModelFileError(f"{path}: HDF5 attributes cannot be read (corrupt file?): "
                             f"{_one_line(exc)[:200]}") from exc
    if raw is None:
        hint = (" It holds weights only (model.save_weights): build the model in code and "
                "call model.load_weights()." if ("layer_names" in handle.attrs or "layers" in handle
                                                 or "vars" in handle) else
                " It is not a Keras model file.")
        raise ModelFileError(f"{path}: has no 'model_config' attribute.{hint}")
    try:
        version = None if version is None else _decode(version)
    except UnicodeDecodeError:
        version = None
    return _parse_json(path, raw, "model_config"), version


def _measure_plan(translator: _Translator, config: Any, weights: Mapping[str, Any],
                  budget: int, shapes: Optional[Mapping[str, Any]] = None) -> Tuple[_Plan, int]:
    """Build the architecture with shape-only variables (nothing allocated, no initializer run).

    Returns:
        the plan (its layers know their weights' shapes) and the bytes the real model's
        variables would take; raises :class:`ModelTooLargeError` above ``budget``.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the real build warns once
        with _variables_without_values():
            plan = _plan_checked(translator, config)
            if shapes is not None:
                _check_missing(translator.path, plan, shapes)
            needed = _variable_bytes(_build(translator, plan, weights))
    if needed > budget:
        raise _too_large(translator.path, "the architecture's weights would take", needed, budget)
    return plan, needed


def _load_h5(path: str, custom_objects: Dict[str, Any], safe_mode: bool,
             budget: int) -> keras.Model:
    try:
        handle = h5py.File(path, "r")
    except OSError as exc:
        raise ModelFileError(f"{path}: is not a readable HDF5 file (truncated or corrupt?): "
                             f"{_one_line(exc)[:200]}") from exc
    with handle:
        _audit_hdf5(path, handle, budget)
        config, version = _read_model_config(path, handle)
        translator = _Translator(path, _is_keras2(version), custom_objects, safe_mode)
        group = handle["model_weights"] if "model_weights" in handle else handle
        datasets = _h5_weight_datasets(path, group)
        shapes = {name: [d.shape for d in found] for name, found in datasets.items()}
        dry, _ = _measure_plan(translator, config, datasets, budget, shapes)
        # Stored shapes are checked against the architecture before any weight is read.
        _check_weight_shapes(path, dry.layers, shapes)
        del dry
        plan = _plan_checked(translator, config)
        weights = _read_h5_weights(path, datasets)
    model = _build(translator, plan, weights)
    _assign_weights(path, plan.layers, weights)
    return model


def _check_missing(path: str, plan: _Plan, shapes: Mapping[str, Any]) -> None:
    missing = sorted(n for n, layer in plan.layers.items() if n not in shapes and
                     _may_have_weights(layer))
    if missing:
        raise ModelFileError(f"{path}: the file holds no weights for layer(s) "
                             f"{', '.join(missing)[:200]} (saved before the model was built?).")


def _may_have_weights(layer: keras.layers.Layer) -> bool:
    return isinstance(layer, (keras.layers.Dense, keras.layers.Embedding, keras.layers.RNN,
                              keras.layers.Bidirectional, keras.layers.Conv1D,
                              keras.layers.TimeDistributed))


# --- .keras archives --------------------------------------------------------------------------
_INTERNAL_MARKERS = {"__keras_tensor__", "__tuple__", "__numpy__", "__tensor__", "__bytes__",
                     "__typespec__", "__slice__", "__ellipsis__", "__tensorshape__"}


def _screen_keras_config(path: str, config: Any, custom_objects: Mapping[str, Any],
                         safe_mode: bool) -> None:
    """Refuse Lambda layers and non-Keras classes in a ``.keras`` architecture before loading."""

    def known(obj: Mapping[str, Any]) -> bool:
        cls, module = obj.get("class_name"), obj.get("module")
        registered = obj.get("registered_name")
        if cls in custom_objects or (registered and registered in custom_objects):
            return True
        if cls == "function":
            fn_name = str(obj.get("config"))
            short = fn_name.split(">")[-1]
            return (fn_name in custom_objects or short in custom_objects
                    or keras.saving.get_registered_object(fn_name) is not None
                    or (module in (None, "builtins") and _Translator._keras3_activation(fn_name))
                    or (isinstance(module, str) and module.startswith("keras.")))
        if isinstance(module, str) and (module == "keras" or module.startswith("keras.")):
            return True
        if registered and "keras_lrp>" in registered:
            return keras.saving.get_registered_object(registered) is not None
        return bool(registered) and keras.saving.get_registered_object(registered) is not None

    def walk(obj: Any, layer: str) -> None:
        if isinstance(obj, list):
            for item in obj:
                walk(item, layer)
            return
        if not isinstance(obj, dict):
            return
        cls = obj.get("class_name")
        if isinstance(cls, str) and "config" in obj:
            cfg = obj.get("config")
            if isinstance(cfg, dict) and isinstance(cfg.get("name"), str):
                layer = cfg["name"]
            if cls in ("Lambda", "__lambda__") and safe_mode:
                raise UnsafeModelError(
                    f"{path}: layer {layer!r} is a Lambda layer, i.e. Python code stored in the "
                    "file; it is refused in safe mode. If you trust this file, call "
                    "load_model(..., safe_mode=False).")
            if cls == "function" and not known(obj):
                fn_name = str(obj.get("config")).split(">")[-1]
                raise UnsafeModelError(
                    f"{path}: layer {layer!r} uses function {obj.get('config')!r}, which is not "
                    "built into Keras; if you trust this file, pass "
                    f"custom_objects={{{fn_name!r}: function}}.")
            if cls not in _INTERNAL_MARKERS and cls != "__lambda__" and not known(obj):
                what = obj.get("registered_name") or cls
                raise UnsafeModelError(
                    f"{path}: layer {layer!r} uses class {what!r} (module "
                    f"{obj.get('module')!r}), which is not built into Keras; if you trust this "
                    f"file, pass custom_objects={{{cls!r}: YourClass}}.")
        for key, value in obj.items():
            if key not in ("compile_config", "build_config"):
                walk(value, layer)

    walk(config, "?")


class _Archive(NamedTuple):
    """What a ``.keras`` zip holds, read within the limits."""

    config: Any
    version: Optional[str]
    weight_bytes: int   # declared size of the datasets in model.weights.h5


def _read_keras_zip(path: str, budget: int) -> _Archive:
    """Check the members' declared sizes (and so the compression ratio) before reading any,
    parse the JSON members with the size / depth limits, and audit ``model.weights.h5`` like an
    ``.h5`` file (the copy Keras later opens is the same member)."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
            if len(members) > MAX_HDF5_OBJECTS:
                raise ModelTooLargeError(f"{path}: the archive has {len(members):,} members "
                                         f"(limit {MAX_HDF5_OBJECTS:,}); a .keras file has 3.")
            unpacked = sum(m.file_size for m in members)
            if unpacked > budget:
                packed = sum(m.compress_size for m in members)
                raise _too_large(path, f"unpacks (compression ratio {unpacked / max(packed, 1):,.0f}"
                                       ":1) to", unpacked, budget)
            names = {m.filename: m for m in members}
            if "config.json" not in names or "model.weights.h5" not in names:
                raise KeyError("config.json" if "config.json" not in names else "model.weights.h5")
            for name in ("config.json", "metadata.json"):
                if name in names and names[name].file_size > MAX_CONFIG_BYTES:
                    raise _config_too_large(path, name, names[name].file_size)
            config = _parse_json(path, archive.read("config.json"), "config.json")
            metadata = (_parse_json(path, archive.read("metadata.json"), "metadata.json")
                        if "metadata.json" in names else {})
            weights_h5 = archive.read("model.weights.h5")
    except ModelFileError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, KeyError, ValueError, OSError, EOFError,
            NotImplementedError, RuntimeError) as exc:
        raise ModelFileError(f"{path}: is not a valid .keras archive (truncated, or missing "
                             f"config.json / model.weights.h5): {_one_line(exc)[:200]}") from exc
    where = "model.weights.h5: "
    try:
        handle = h5py.File(io.BytesIO(weights_h5), "r")
    except OSError as exc:
        raise ModelFileError(f"{path}: {where}is not a readable HDF5 file: "
                             f"{_one_line(exc)[:200]}") from exc
    with handle:
        weight_bytes = _audit_hdf5(path, handle, budget, where)
    version = metadata.get("keras_version") if isinstance(metadata, dict) else None
    return _Archive(config, version if isinstance(version, str) else None, weight_bytes)


# Variables a Keras 3 model holds besides its saved weights (seed generator states): slack when
# the architecture's variables are compared with the weights the archive stores.
_UNSAVED_VARIABLE_SLACK = 2**20


def _check_needed_bytes(path: str, needed: int, stored: int) -> None:
    if needed > stored + _UNSAVED_VARIABLE_SLACK:
        raise ModelFileError(
            f"{path}: the architecture's weights take {_mib(needed)} but model.weights.h5 "
            f"stores only {_mib(stored)}; the file is not a consistent Keras model.")


def _measure_keras3_config(path: str, config: Any, scope: Mapping[str, Any], safe_mode: bool,
                           budget: int) -> int:
    """Bytes of variables a Keras 3 ``config.json`` builds, measured without allocating them."""
    if isinstance(config, dict):
        config = {k: v for k, v in config.items() if k != "compile_config"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with _variables_without_values():
            model = keras.saving.deserialize_keras_object(config, custom_objects=dict(scope),
                                                          safe_mode=safe_mode)
            needed = _variable_bytes(model)
    if needed > budget:
        raise _too_large(path, "the architecture's weights would take", needed, budget)
    return needed


def _load_keras_zip(path: str, custom_objects: Dict[str, Any], safe_mode: bool,
                    budget: int) -> keras.Model:
    config, version, stored = _read_keras_zip(path, budget)
    if not _is_keras2(version):
        _screen_keras_config(path, config, custom_objects, safe_mode)
    # (a .keras written by tf.keras 2.x is rebuilt by the translator, which only constructs
    # whitelisted classes, like for .h5 files)
    scope = {"LRP_LSTMCell": LRP_LSTMCell, "keras2_hard_sigmoid": keras2_hard_sigmoid,
             **custom_objects}
    first_error: Optional[BaseException] = None
    if not _is_keras2(version):
        try:
            needed = _measure_keras3_config(path, config, scope, safe_mode, budget)
        except ModelFileError:
            raise
        except Exception as exc:  # Keras cannot build it: rebuild it ourselves (below)
            first_error = exc
        else:
            _check_needed_bytes(path, needed, stored)
            try:
                return keras.saving.load_model(path, custom_objects=scope, compile=False,
                                               safe_mode=safe_mode)
            except Exception as exc:  # fall back to rebuilding the architecture ourselves
                first_error = exc
    translator = _Translator(path, _is_keras2(version), custom_objects, safe_mode)
    try:
        _, needed = _measure_plan(translator, config, {}, budget)
        _check_needed_bytes(path, needed, stored)
        model = _build(translator, _plan_checked(translator, config), {})
    except (UnsafeModelError, UnsupportedModelError, ModelTooLargeError):
        raise
    except ModelFileError as exc:
        if first_error is None:
            raise
        raise UnsupportedModelError(
            f"{path}: Keras 3 could not load this .keras file ({_one_line(first_error)[:200]}) "
            f"and it could not be rebuilt either ({_one_line(exc)[:200]}).") from exc
    try:
        model.load_weights(path)
    except Exception as exc:
        reason = f"; Keras 3 load_model said: {_one_line(first_error)[:150]}" if first_error else ""
        raise ModelFileError(f"{path}: the weights of this Keras {version or '?'} .keras file "
                             f"could not be loaded: {_one_line(exc)[:200]}{reason}") from exc
    return model


def load_model(path: PathLike, custom_objects: Optional[Mapping[str, Any]] = None,
               safe_mode: bool = True, *, max_bytes: Optional[int] = None) -> keras.Model:
    """Load a ``.keras`` or ``.h5`` model file as a Keras 3 model with the same predictions.

    Reads files written by Keras 3 (``.keras`` and ``.h5``), Keras 2.x (``.h5``) and tf.keras
    2.x / tf_keras (``.h5``; ``.keras`` where the layers are supported). The file type is
    recognised from its content. The model is returned uncompiled (no optimizer or loss).

    Model files are treated as untrusted data. Before any weight is read or any layer is
    allocated, load_model checks (and refuses with a :class:`ModelFileError` subclass naming the
    file):

    * the path is a regular file (not a FIFO, device, socket, directory or symlink loop);
    * the file never points outside itself: HDF5 external storage, external links, soft links,
      virtual datasets and filters needing plugins are refused (:class:`UnsafeModelError`),
      also inside a ``.keras`` archive's ``model.weights.h5``;
    * sizes (:class:`ModelTooLargeError`): the datasets the file declares, the unpacked size of
      a ``.keras`` archive's members and the weights the architecture would allocate (measured
      by building it with shape-only variables) may not exceed ``max_bytes``, by default
      ``16 * file size + 16 MiB`` (:data:`WEIGHT_BYTES_PER_FILE_BYTE`,
      :data:`WEIGHT_BYTES_FLOOR`); an architecture may take :data:`MAX_CONFIG_BYTES` (16 MiB),
      nest :data:`MAX_CONFIG_DEPTH` (100) levels and list :data:`MAX_LAYERS` (5,000) layers;
      an HDF5 file may hold
      :data:`MAX_HDF5_OBJECTS` (100,000) links. The module constants can be raised for trusted
      files;
    * every stored weight's shape matches what the architecture implies
      (:class:`ModelFileError`).

    Args:
        path: the model file (``str``, ``bytes`` or ``os.PathLike``).
        custom_objects: ``{"ClassName": cls_or_function}`` for custom layers, cells or
            activations you trust. For ``.h5`` files a class is built with
            ``cls.from_config(config)`` (``batch_input_shape`` removed from the config).
        safe_mode: refuse ``Lambda`` layers (Python code stored in the file). Set False only
            for files you trust; the code must come from the same Python version.
        max_bytes: the most bytes of weights (and of unpacked archive members) the file may
            declare; None for the default above. Raise it for a trusted, compressed file.

    Returns:
        a ``keras.Model`` (``Sequential`` or functional) with the file's weights. Layer names
        are those of the file.

    Raises:
        TypeError: ``path`` is not a path, or ``custom_objects`` / ``max_bytes`` has the wrong
            type.
        ModelFileNotFoundError: the file does not exist (also a ``FileNotFoundError``).
        ModelFileError: not a regular file, not a Keras model file, or truncated / corrupt, or
            an ``.h5`` without ``model_config`` (e.g. written by ``save_weights``), or weights
            that do not fit the architecture. The base class of the three below.
        UnsafeModelError: a ``Lambda`` layer in safe mode, a class / activation that is not
            built into Keras and not in ``custom_objects``, or data outside the file.
        UnsupportedModelError: something that cannot be rebuilt faithfully in Keras 3.
        ModelTooLargeError: the file declares more than the limits above.
    """
    if custom_objects is not None and not isinstance(custom_objects, Mapping):
        raise TypeError("custom_objects must be a dict {name: class_or_function}, got "
                        f"{type(custom_objects).__name__}.")
    if max_bytes is not None:
        if isinstance(max_bytes, (bool, np.bool_)) or not isinstance(max_bytes, (int, np.integer)):
            raise TypeError(f"max_bytes must be None or an int, got {max_bytes!r}.")
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be >= 1, got {max_bytes!r}.")
        max_bytes = int(max_bytes)
    custom_objects = dict(custom_objects or {})
    model_path = _check_path(path)
    path = model_path.path
    budget = _weight_budget(model_path.size, max_bytes)
    try:
        if model_path.kind == "zip":
            return _load_keras_zip(path, custom_objects, bool(safe_mode), budget)
        return _load_h5(path, custom_objects, bool(safe_mode), budget)
    except ModelFileError:
        raise
    except RecursionError:
        raise ModelFileError(f"{path}: the model is nested too deeply to be rebuilt.") from None
    except MemoryError:
        raise ModelTooLargeError(f"{path}: ran out of memory while loading; the file declares "
                                 "more data than this machine holds.") from None
    except Exception as exc:  # any other failure on untrusted data: one documented type
        raise ModelFileError(f"{path}: could not be loaded ({type(exc).__name__}: "
                             f"{_one_line(exc)[:200]}).") from exc
