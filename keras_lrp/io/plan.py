"""Model plans: a Sequential or functional config read into layers and the references between
them, then built into a Keras 3 model by calling the layers on ``keras.Input`` in order."""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Tuple

import keras
import numpy as np

from .cudnn import cudnn_parts
from .errors import ModelFileError, UnsafeModelError, UnsupportedModelError
from .tf_ops import _OP_LAYER_CLASSES, _TFOp, _is_number, _tf_op
from .translate import _one_line, _Ref, _Translator


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
    cudnn: Dict[str, Tuple[Optional[str], ...]] = {}
    for entry in entries:
        layer = translator.layer(entry)
        if layer.name in layers:
            raise ModelFileError(f"{translator.path}: two layers are named {layer.name!r}.")
        layers[layer.name] = layer
        order.append(layer.name)
        parts = cudnn_parts(entry, translator.custom_objects)
        if parts:
            cudnn[layer.name] = parts
    first_class = entries[0].get("class_name") if entries else None
    return _Plan("sequential", body.get("name"), layers, order=order, input_spec=input_spec,
                 first_class=first_class, cudnn=cudnn)


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
            if not constants:
                raise translator._unsupported(
                    f"layer {layer_name!r} is called on a constant, which is not supported.")
            if not _is_number(entry[2]):
                raise translator._unsupported(
                    f"layer {layer_name!r} is called on the constant "
                    f"{_one_line(repr(entry[2]))[:60]}; only finite numbers within 64-bit range "
                    "are rebuilt.")
            refs.append(entry[2])
        else:
            refs.append(_Ref(entry[0], int(entry[1]), int(entry[2])))
        if len(entry) > 3 and entry[3]:
            kwargs = _parse_refs(dict(entry[3]), True)
    args = refs[0] if len(refs) == 1 else refs
    return (args,), kwargs


def _initial_states_as_kwarg(translator: _Translator, layer_name: str, num_constants: Any,
                             call: Tuple[tuple, dict]):
    """An RNN / Bidirectional call of a Keras 2 / tf.keras 2 file: ``rnn(x, initial_state=[h, c])``
    is stored as a call on the list ``[x, h, c]`` (Keras 2 made the states extra inputs, and
    Bidirectional gives the first half of them to the forward layer); Keras 3 takes them as
    ``initial_state``. Constants (``rnn(x, constants=...)``, also extra inputs in Keras 2), which
    Keras 3 recurrent layers do not take, are refused."""
    args, kwargs = call
    kwargs = {k: v for k, v in kwargs.items()
              if not (k in ("initial_state", "constants") and v is None)}
    if num_constants or "constants" in kwargs:
        raise translator._unsupported(
            f"layer {layer_name!r} is called with constants (a Keras 2 cell taking constants); "
            "Keras 3 recurrent layers do not take constants.")
    if len(args) == 1 and isinstance(args[0], list) and len(args[0]) > 1:
        return (args[0][0],), {**kwargs, "initial_state": list(args[0][1:])}
    return args, kwargs


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
    cudnn: Dict[str, Tuple[Optional[str], ...]] = {}
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
        parts = cudnn_parts(entry, translator.custom_objects)
        if parts:
            cudnn[name] = parts
        nodes[name] = [_parse_node(translator, n, name) for n in entry.get("inbound_nodes", [])]
        if isinstance(layer, (keras.layers.RNN, keras.layers.Bidirectional)):
            nodes[name] = [_initial_states_as_kwarg(translator, name, cfg.get("num_constants"),
                                                    call) for call in nodes[name]]
    input_refs = _io_refs(body.get("input_layers", []))
    output_refs = _io_refs(body.get("output_layers", []))
    for ref in input_refs + output_refs:
        if ref.layer not in layers and ref.layer not in inputs and ref.layer not in tf_ops:
            raise ModelFileError(f"{translator.path}: model input/output refers to unknown "
                                 f"layer {ref.layer!r}.")
    return _Plan("functional", body.get("name"), layers, inputs=inputs, nodes=nodes, order=order,
                 input_refs=input_refs, output_refs=output_refs, tf_ops=tf_ops, cudnn=cudnn)


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
                kwargs = {**translator.call_kwargs.get(name, {}), **_resolve(kwargs, outputs)}
                try:
                    result = layer(*_resolve(args, outputs), **kwargs)
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
