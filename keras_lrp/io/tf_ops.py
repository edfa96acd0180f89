"""tf.keras op layers (``TFOpLambda`` / ``SlicingOpLambda``) rebuilt as ``keras.ops`` calls: an
allow-list of TensorFlow function names, looked up in a table, never imported or evaluated."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Callable, Dict, Mapping, NamedTuple, Tuple

import keras
from keras import ops

from .errors import UnsupportedModelError
from .translate import _one_line

if TYPE_CHECKING:
    from .translate import _Translator


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
_INT64_MIN, _INT64_MAX = -2**63, 2**63 - 1
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
    """A finite float or an int TensorFlow can hold."""
    return (isinstance(value, float) and math.isfinite(value)) or _is_int64(value)


def _is_int64(value: Any) -> bool:
    """An int (not a bool) that TensorFlow can hold: a larger one loads as a Keras op and fails
    only when the model runs (10**30 in ``h[:, 10**30]``: TypeError "in user code")."""
    return isinstance(value, int) and not isinstance(value, bool) and _INT64_MIN <= value <= _INT64_MAX


def _int_list(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and all(_is_int64(v) for v in value)


def _slice_item(where: str, item: Any):
    """One element of a recorded ``slice_spec``: index, slice dict, None (newaxis), Ellipsis."""
    if item is None or _is_int64(item):
        return item
    if isinstance(item, dict) and item.get("class_name") == "__ellipsis__":
        return Ellipsis
    if isinstance(item, dict) and set(item) == {"start", "stop", "step"} and all(
            v is None or _is_int64(v) for v in item.values()):
        if item["step"] == 0:
            raise UnsupportedModelError(f"{where} slices with step 0.")
        return slice(item["start"], item["stop"], item["step"])
    raise UnsupportedModelError(f"{where} slices with {_one_line(repr(item))[:100]}; only "
                                "64-bit integer indices and slices, None and ... are rebuilt.")


def _op_value(where: str, name: str, kind: int, value: Any):
    """Check one argument of a recorded op call against its expected kind."""
    ok = True
    if kind == _T:
        ok = isinstance(value, keras.KerasTensor) or _is_number(value)
    elif kind == _TS:
        value = list(value) if isinstance(value, (list, tuple)) else [value]
        ok = all(isinstance(v, keras.KerasTensor) or _is_number(v) for v in value)
    elif kind == _AXIS:
        ok = value is None or _is_int64(value)
    elif kind in (_AXES, _SHAPE):
        if isinstance(value, list):
            value = tuple(value)
        ok = (value is None and kind == _AXES) or _int_list(value) or _is_int64(value)
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
        values = value if isinstance(value, (list, tuple)) else [value]
        huge = any(isinstance(v, int) and not isinstance(v, bool) and not _is_int64(v)
                   for v in values)
        raise UnsupportedModelError(f"{where}: argument {name}={_one_line(repr(value))[:100]} "
                                    + ("does not fit a 64-bit integer." if huge else
                                       "is not supported."))
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
