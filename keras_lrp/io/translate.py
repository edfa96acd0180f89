"""Keras 2 / tf.keras 2 / Keras 3 layer configs translated into plain Keras 3 constructor calls:
no class name read from a file is ever deserialised, every argument is checked."""
from __future__ import annotations

import inspect
import re
import warnings
from typing import Any, Callable, Dict, Mapping, NamedTuple, Optional, Tuple

import keras
import numpy as np
from keras import ops

from ..cells import LRP_LSTMCell
from .errors import ModelFileError, UnsafeModelError, UnsupportedModelError


@keras.saving.register_keras_serializable(package="keras_lrp")
def keras2_hard_sigmoid(x):
    """Keras 2 / tf.keras 2 hard sigmoid: ``clip(0.2 * x + 0.5, 0, 1)``.

    Keras 3's ``hard_sigmoid`` is ``clip(x / 6 + 0.5, 0, 1)``; Keras 2 LSTMs (default
    ``recurrent_activation`` before Keras 2.3) need this one to give the same predictions.
    """
    return ops.clip(0.2 * x + 0.5, 0.0, 1.0)


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
_K["mha"] = {"num_heads": _PLAIN, "key_dim": _PLAIN, "value_dim": _PLAIN, "dropout": _PLAIN,
             "use_bias": _PLAIN, "output_shape": _TUPLE, "attention_axes": _TUPLE,
             "kernel_initializer": _INIT, "bias_initializer": _INIT, "kernel_regularizer": _REG,
             "bias_regularizer": _REG, "activity_regularizer": _REG, "kernel_constraint": _CON,
             "bias_constraint": _CON, "use_gate": _PLAIN, "seed": _PLAIN,
             "flash_attention": _PLAIN}
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
    # tf.keras 2.x's deprecated `causal=True` becomes the call's use_causal_mask=True (below)
    "Attention": (keras.layers.Attention, {"use_scale": _PLAIN, "score_mode": _PLAIN,
                                           "dropout": _PLAIN, "seed": _PLAIN}, {"causal"}),
    "AdditiveAttention": (keras.layers.AdditiveAttention, {"use_scale": _PLAIN,
                                                           "dropout": _PLAIN}, {"causal"}),
    # query/key/value_shape: tf.keras's record of the shapes it was built on
    "MultiHeadAttention": (keras.layers.MultiHeadAttention, _K["mha"],
                           {"query_shape", "key_shape", "value_shape",
                            "softmax_robust_masking"}),
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
        # layer name -> keyword arguments every call of the layer gets (what a Keras 2 config
        # stored as a constructor option and Keras 3 takes in the call)
        self.call_kwargs: Dict[str, Dict[str, Any]] = {}

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
        if class_name in ("CuDNNLSTM", "CuDNNGRU"):
            return self._cudnn(class_name, cfg, name)
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
        if class_name == "MultiHeadAttention" and cfg.get("softmax_robust_masking"):
            raise self._unsupported(
                f"layer {name!r} (MultiHeadAttention) was saved with softmax_robust_masking=True, "
                "which Keras 3 does not offer (fully masked rows would differ); re-save it with "
                "the default masking.")
        if class_name in ("Attention", "AdditiveAttention") and cfg.get("causal"):
            self.call_kwargs[name] = {"use_causal_mask": True}
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

    def _cudnn(self, class_name: str, cfg: Dict[str, Any], name: str):
        """CuDNNLSTM / CuDNNGRU as the LSTM / GRU cuDNN computes: tanh, sigmoid gates, biases
        (GRU: reset_after=True). Their weights are converted on load (:mod:`.cudnn`)."""
        target = class_name[len("CuDNN"):]
        ctor, kinds, ignored = _SIMPLE_LAYERS[target]
        fixed = ("activation", "recurrent_activation", "use_bias", "reset_after",
                 "implementation", "dropout", "recurrent_dropout", "unroll")
        kw = self.kwargs(class_name, cfg, {k: v for k, v in kinds.items() if k not in fixed},
                         ignored)
        kw.update(activation="tanh", recurrent_activation="sigmoid", use_bias=True)
        if target == "GRU":
            kw["reset_after"] = True
        return self._construct(ctor, class_name, name, **kw)

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
