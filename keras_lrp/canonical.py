"""The canonical graph: any Keras model as a graph of calls that have propagators.

Before explaining, a model is rewritten, without touching it, into simpler calls (the canonization of
zennit, Motzkus et al. 2022, done on Keras's own symbolic graph):

* **nested models** (a ``Sequential`` or functional model used as a layer, ``inner_model(x)``) are
  inlined: their calls become calls of the outer graph;
* **layers without a propagator** (a user's own ``keras.layers.Layer``; built-in layers such as
  ``RepeatVector`` or ``Permute``; ``Lambda``) are *traced*: their ``call`` runs on symbolic inputs, so
  that the layers and ``keras.ops`` calls inside it become calls of the graph, and its weights
  (``add_weight``) constant operands of them. A layer whose ``call`` cannot be traced (Python control
  flow on tensor values, TensorFlow functions on Keras tensors) stays one call, refused, with the
  reason and the line, if relevance must pass through it;
* a **subclassed model** is traced the same way from its ``call``.

Masks stay Keras's: a traced layer whose ``call`` takes ``mask`` gets the mask its input carries
(:class:`KerasMask`), and one that ``supports_masking`` gives its output the mask its
``compute_mask`` gives (:class:`MaskedOutput`). The user's model is never mutated: the graph
bookkeeping tracing adds to its layers is undone.

Tensors are named by integer keys unique to the canonical graph, so a nested model called twice is
inlined twice, as two sets of calls.
"""
from __future__ import annotations

import contextlib
import inspect
import linecache
import traceback
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import keras
from keras import tree
from keras.src.ops.operation import Operation

from .graph import Graph, Node, Ref

__all__ = ["canonicalize", "KerasMask", "MaskedOutput", "OPAQUE_LAYERS", "restoring_graph_bookkeeping"]


class KerasMask(Operation):
    """Plumbing: the Keras mask its input tensor carries (a traced ``call(x, mask=None)`` reads it)."""

    def call(self, x):   # computed by the walk, which holds the masks
        raise NotImplementedError

    def compute_output_spec(self, x):
        return keras.KerasTensor(x.shape[:2], dtype="bool")


class MaskedOutput(Operation):
    """The output of a traced layer that ``supports_masking``: its inputs ``(outputs..., layer
    inputs...)``, its outputs the layer's outputs, with the mask the layer's ``compute_mask`` gives
    where Keras gives one. Relevance passes to the outputs unchanged."""

    registry_name = "the outputs of a traced layer with supports_masking"

    def __init__(self, layer, n_outputs: int, call_args, name=None):
        super().__init__(name=name or f"{layer.name}_mask")
        self.layer, self.n_outputs, self.call_args = layer, n_outputs, call_args

    def call(self, *tensors):
        return tensors[:self.n_outputs]


#: layers that are never traced: read as one call (Embedding ends the walk; preprocessing layers are
#: plumbing on strings / ids).
OPAQUE_LAYERS: Tuple[type, ...] = (keras.layers.InputLayer, keras.layers.Embedding, keras.layers.TextVectorization,
                                   keras.layers.StringLookup, keras.layers.IntegerLookup, keras.layers.Hashing)


def canonicalize(model: keras.Model, output=None, keep: Sequence[str] = ()) -> Graph:
    """The canonical :class:`~keras_lrp.graph.Graph` of a built model (see the module docstring),
    explaining ``output`` (a name or an index among the model's outputs; the only one by default).
    Layers named in ``keep`` (``Lambda`` layers declared linear) stay whole."""
    return _Canonicalizer(keep).read_model(model, output)


def _not_built() -> ValueError:
    return ValueError("the model is not built: call it on data (or give it an Input) first.")


def _functional_of(model: keras.Model):
    """The functional model behind a Sequential one, the model itself if it is functional, else None."""
    if isinstance(model, keras.Sequential):
        functional = getattr(model, "_functional", None)
        if functional is None:
            raise _not_built()
        return functional
    if hasattr(model, "_nodes_by_depth") and getattr(model, "_inputs_struct", None) is not None:
        return model
    return None


@contextlib.contextmanager
def restoring_graph_bookkeeping(layer) -> Iterator[None]:
    """Undo what a symbolic call adds to ``layer`` and its sublayers (their inbound / outbound nodes)."""
    layers = [layer] + list(layer._flatten_layers(include_self=False)) if hasattr(layer, "_flatten_layers") else [layer]
    saved = [(l, len(l._inbound_nodes), len(l._outbound_nodes)) for l in layers]
    try:
        yield
    finally:
        for l, n_in, n_out in saved:
            del l._inbound_nodes[n_in:]
            del l._outbound_nodes[n_out:]


def _where(err: BaseException, layer) -> str:
    """``file:line: code`` of the innermost frame of ``err`` in the layer's own source file (or the last
    frame outside Keras and TensorFlow)."""
    frames = traceback.extract_tb(err.__traceback__)
    try:
        own = inspect.getsourcefile(type(layer))
    except TypeError:
        own = None
    if getattr(layer, "function", None) is not None:   # a Lambda: the function's file
        try:
            own = inspect.getsourcefile(layer.function)
        except TypeError:
            pass
    chosen = [f for f in frames if own and f.filename == own] or \
             [f for f in frames if "/keras/" not in f.filename and "/tensorflow/" not in f.filename
              and "/keras_lrp/" not in f.filename]
    if not chosen:
        return ""
    f = chosen[-1]
    code = (f.line or linecache.getline(f.filename, f.lineno)).strip()
    return f"{f.filename}:{f.lineno}: {code}"


def _short(err: BaseException, limit: int = 300) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text[:limit]}{'...' if len(text) > limit else ''}"


class _Canonicalizer:
    def __init__(self, keep: Sequence[str] = ()):
        self.keep = set(keep)
        self.nodes: List[Node] = []
        self.dtypes: Dict[int, str] = {}
        self._mask_shapes: Dict[int, tuple] = {}
        self.carried_mask_shapes: Dict[int, tuple] = {}
        self._next = 0

    def _key(self, tensor=None) -> int:
        self._next += 1
        if tensor is not None:
            self.dtypes[self._next] = getattr(tensor, "dtype", None)
            mask = getattr(tensor, "_keras_mask", None)
            if mask is not None:
                self.carried_mask_shapes[self._next] = tuple(mask.shape)
        return self._next

    # ------------------------------------------------------------------------------------ the model

    def read_model(self, model: keras.Model, output) -> Graph:
        if not isinstance(model, keras.Model):
            raise TypeError(f"expected a keras.Model, got {type(model).__name__}.")
        if not model.built:
            raise _not_built()
        functional = _functional_of(model)
        if functional is None:
            functional = self._trace_model(model)
        inputs = tree.flatten(functional._inputs_struct)
        in_keys = [self._key(t) for t in inputs]
        outputs = self.read_functional(functional, in_keys, "")
        names = list(getattr(model, "output_names", None) or []) or \
            [getattr(t, "name", f"output_{i}") for i, t in enumerate(tree.flatten(functional._outputs_struct))]
        index = _output_index(model, output, names, len(outputs))
        out_tensor = tree.flatten(functional._outputs_struct)[index]
        return Graph(nodes=self.nodes, inputs=in_keys, output=outputs[index],
                     input_shapes=[tuple(t.shape) for t in inputs], input_dtypes=[t.dtype for t in inputs],
                     input_names=[t.name for t in inputs], dtypes=self.dtypes,
                     output_shape=tuple(out_tensor.shape), outputs=outputs, output_names=names,
                     carried_mask_shapes=self.carried_mask_shapes)

    def _trace_model(self, model: keras.Model):
        """A subclassed model as a functional one, from its ``call`` on symbolic inputs of the shapes it
        was built with (the time axis left open where that traces; integer ids where an Embedding reads
        the input)."""
        shapes = getattr(model, "_build_shapes_dict", None)
        if not shapes:
            raise ValueError(f"the subclassed model {model.name!r} is built but keras_lrp cannot tell its input "
                             "shapes: call it on a batch of data (model(x)) before explaining it.")
        structure = list(shapes.values())[0] if len(shapes) == 1 else list(shapes.values())
        errors = []
        for open_time in (True, False):
            for dtype in ("float32", "int32"):
                try:
                    functional = self._trace_model_with(model, structure, open_time, dtype)
                except Exception as err:   # noqa: BLE001 - reported below
                    errors.append(err)
                    continue
                if dtype == "float32" and _reads_ids(functional):
                    continue   # an Embedding reads the input: trace it as integer ids
                return functional
        err = errors[-1] if errors else None
        where = _where(err, model) if err is not None else ""
        raise ValueError(f"the subclassed model {model.name!r} ({type(model).__name__}) could not be traced into "
                         f"Keras calls: {_short(err) if err else 'unknown'}" + (f" (at {where})" if where else "") +
                         ". Write its call with Keras layers and keras.ops (no Python branches on tensor values), "
                         "or build the same network as a functional model.")

    def _trace_model_with(self, model, structure, open_time: bool, dtype: str):
        def spec(shape):
            shape = tuple(shape)
            if open_time and len(shape) >= 2 and (dtype.startswith("int") or len(shape) >= 3):
                shape = (shape[0], None) + shape[2:]
            return keras.Input(batch_shape=(None,) + shape[1:], dtype=dtype)

        inputs = tree.map_shape_structure(spec, structure)
        kwargs = {"training": False} if "training" in inspect.signature(model.call).parameters else {}
        with restoring_graph_bookkeeping(model):
            outputs = model.call(inputs, **kwargs)
            return keras.Model(inputs, outputs)

    # ------------------------------------------------------------------------------- functional graphs

    def read_functional(self, functional, in_keys: Sequence[int], path: str) -> List[int]:
        """Read a functional model whose inputs are the tensors ``in_keys``: its calls are appended to
        the graph; returns the keys of its outputs."""
        known: Dict[int, int] = {id(t): k for t, k in zip(tree.flatten(functional._inputs_struct), in_keys)}
        for depth in sorted(functional._nodes_by_depth, reverse=True):
            for kn in functional._nodes_by_depth[depth]:
                if isinstance(kn.operation, keras.layers.InputLayer):
                    continue
                outs = self._call(kn.operation, kn.arguments.args, kn.arguments.kwargs, kn.output_tensors,
                                  known, path)
                for t, k in zip(kn.output_tensors, outs):
                    known[id(t)] = k
        return [known[id(t)] for t in tree.flatten(functional._outputs_struct)]

    def _call(self, op, args, kwargs, output_tensors, known: Dict[int, int], path: str) -> List[int]:
        """One call: inlined (a nested model), traced (a layer without a propagator) or kept."""
        if isinstance(op, keras.Model):
            return self._inline(op, args, kwargs, output_tensors, known, path)
        if isinstance(op, keras.layers.Layer) and op.name not in self.keep and _wants_tracing(op):
            traced = self._trace_layer(op, args, kwargs, output_tensors, known, path)
            if isinstance(traced, list):
                return traced
            return self._emit(op, args, kwargs, output_tensors, known, path, trace_error=traced)
        return self._emit(op, args, kwargs, output_tensors, known, path)

    def _refs(self, structure, known: Dict[int, int]):
        return tree.map_structure(lambda a: Ref(known[id(a)]) if isinstance(a, keras.KerasTensor) else a, structure)

    def _emit(self, op, args, kwargs, output_tensors, known, path, trace_error=None) -> List[int]:
        _open_batch_axis(op)
        args, kwargs = self._refs(args, known), self._refs(kwargs, known)
        data_kwargs = {k: v for k, v in kwargs.items() if k != "mask"}
        inputs = [a.key for a in tree.flatten((args, data_kwargs)) if isinstance(a, Ref)]
        outputs = [self._key(t) for t in output_tensors]
        self.nodes.append(Node(op=op, inputs=inputs, outputs=outputs, masks=_masks_for(inputs, kwargs.get("mask")),
                               args=args, kwargs=kwargs, output_shapes=[tuple(t.shape) for t in output_tensors],
                               path=path, trace_error=trace_error))
        return outputs

    def _inline(self, model, args, kwargs, output_tensors, known, path) -> List[int]:
        functional = _functional_of(model) or self._trace_model(model)
        data = args[0] if args else next(v for k, v in kwargs.items() if k not in ("mask", "training"))
        given = tree.flatten(data)
        inner_inputs = tree.flatten(functional._inputs_struct)
        if isinstance(data, dict):   # by input name
            by_name = {k: v for k, v in data.items()}
            given = [by_name.get(t.name, by_name.get(getattr(t, "_keras_history", [None])[0].name, None))
                     for t in inner_inputs]
        if len(given) != len(inner_inputs) or any(not isinstance(t, keras.KerasTensor) for t in given):
            raise ValueError(f"the nested model {model.name!r} is called with {len(given)} tensors but has "
                             f"{len(inner_inputs)} inputs; keras_lrp cannot inline it.")
        outs = self.read_functional(functional, [known[id(t)] for t in given], f"{path}{model.name}/")
        if len(outs) != len(output_tensors):
            raise ValueError(f"the nested model {model.name!r} returns {len(outs)} outputs where its call in the "
                             f"outer model has {len(output_tensors)}.")
        return outs

    # --------------------------------------------------------------------------------------- tracing

    def _trace_layer(self, layer, args, kwargs, output_tensors, known, path):
        """Trace ``layer.call`` on fresh symbolic inputs standing for the call's tensors: the keys of its
        outputs, or (when it cannot be traced) the reason, a string."""
        fresh: Dict[int, int] = {}   # id(fresh symbolic input) -> key of the tensor it stands for

        def stand_in(t, dtype=None):
            x = keras.Input(batch_shape=tuple(t.shape), dtype=dtype or t.dtype)
            fresh[id(x)] = known[id(t)]
            return x

        def mask_stand_in(key):
            x = keras.Input(batch_shape=self._mask_shapes[key], dtype="bool")
            fresh[id(x)] = key
            return x

        def stand_ins(structure):
            return tree.map_structure(lambda a: stand_in(a) if isinstance(a, keras.KerasTensor) else a, structure)

        s_args, s_kwargs = stand_ins(args), stand_ins(dict(kwargs))
        params = inspect.signature(layer.call).parameters
        if "training" in params:
            s_kwargs["training"] = False
        for name, masks in self._carried_masks(layer, args, kwargs, known).items():
            s_kwargs[name] = tree.map_structure(lambda key: None if key is None else mask_stand_in(key), masks)
        with restoring_graph_bookkeeping(layer):
            try:
                outputs = layer.call(*s_args, **s_kwargs)
                flat_out = tree.flatten(outputs)
                if not flat_out or not all(isinstance(o, keras.KerasTensor) for o in flat_out):
                    return ("its call returns values that do not depend on its inputs" if flat_out
                            else "its call returns nothing")
                inputs = _flat_inputs(s_args, s_kwargs)
                sub = keras.Model(inputs, flat_out)
            except Exception as err:   # noqa: BLE001 - any failure to trace is reported, not raised
                where = _where(err, layer)
                return _short(err) + (f" (at {where})" if where else "")
            outs = self.read_functional(sub, [fresh[id(x)] for x in inputs], f"{path}{layer.name}/")
        if len(outs) != len(output_tensors):
            return f"its call returns {len(outs)} tensors where Keras records {len(output_tensors)}"
        if layer.supports_masking and any(getattr(t, "_keras_mask", None) is not None for t in output_tensors):
            outs = self._masked_output(layer, outs, args, kwargs, output_tensors, known, path)
        for t, k in zip(output_tensors, outs):
            self.dtypes[k] = t.dtype
        return outs

    def _carried_masks(self, layer, args, kwargs, known: Dict[int, int]) -> Dict[str, object]:
        """The mask arguments Keras's ``__call__`` fills in for a call of ``layer`` (``mask`` for a layer
        with one tensor argument, ``<argument>_mask`` for several) from the masks its tensors carry,
        where the call does not give them: argument name -> the same structure of keys of
        :class:`KerasMask` nodes (None where a tensor carries no mask). Empty when no tensor has one."""
        params = inspect.signature(layer.call).parameters
        try:
            bound = inspect.signature(layer.call).bind(*args, **kwargs).arguments
        except TypeError:
            return {}
        tensor_args = {name: v for name, v in bound.items()
                       if tree.flatten(v) and all(isinstance(t, keras.KerasTensor) or t is None for t in tree.flatten(v))
                       and any(isinstance(t, keras.KerasTensor) for t in tree.flatten(v))}
        if len(tensor_args) == 1:
            wanted = {"mask": next(iter(tensor_args.values()))} if "mask" in params else {}
        else:
            wanted = {f"{name}_mask": v for name, v in tensor_args.items() if f"{name}_mask" in params}
        out = {}
        for name, value in wanted.items():
            if bound.get(name) is not None:
                continue
            keys = tree.map_structure(lambda t: self._mask_node(t, known), value)
            if any(k is not None for k in tree.flatten(keys)):
                out[name] = keys
        return out

    def _mask_node(self, t, known: Dict[int, int]) -> Optional[int]:
        """The key of a :class:`KerasMask` node computing the mask tensor ``t`` carries (None if none)."""
        if t is None or getattr(t, "_keras_mask", None) is None:
            return None
        key = self._key()
        self.dtypes[key] = "bool"
        self._mask_shapes[key] = tuple(t._keras_mask.shape)
        self.nodes.append(Node(op=KerasMask(), inputs=[known[id(t)]], outputs=[key], masks=[None],
                               args=(Ref(known[id(t)]),), output_shapes=[self._mask_shapes[key]]))
        return key

    def _masked_output(self, layer, outs, args, kwargs, output_tensors, known, path) -> List[int]:
        call_args = (self._refs(args, known), self._refs({k: v for k, v in kwargs.items() if k != "mask"}, known))
        op = MaskedOutput(layer, len(outs), call_args)
        originals = [a.key for a in tree.flatten(call_args) if isinstance(a, Ref)]
        new = [self._key(t) for t in output_tensors]
        self.nodes.append(Node(op=op, inputs=list(outs) + originals, outputs=new, masks=[None] * (len(outs) + len(originals)),
                               args=tuple(Ref(k) for k in list(outs) + originals),
                               output_shapes=[tuple(t.shape) for t in output_tensors], path=path))
        return new


def _open_batch_axis(op) -> None:
    """A ``reshape`` traced from code that read a symbolic shape (``ops.reshape(x, (x.shape[0], 1, d))``)
    holds None for the batch axis: -1 there (it is the only unknown axis)."""
    shape = getattr(op, "newshape", None)
    if isinstance(op, keras.src.ops.numpy.Reshape) and isinstance(shape, (tuple, list)) and \
            sum(d is None for d in shape) == 1 and -1 not in shape:
        op.newshape = tuple(-1 if d is None else d for d in shape)


def _flat_inputs(args, kwargs) -> List:
    """The fresh symbolic inputs of a traced call, each once, in argument order."""
    seen, out = set(), []
    for x in tree.flatten((args, kwargs)):
        if isinstance(x, keras.KerasTensor) and id(x) not in seen and x._keras_history.operation.__class__ is \
                keras.layers.InputLayer:
            seen.add(id(x))
            out.append(x)
    return out


def _reads_ids(functional) -> bool:
    """Whether an Embedding reads one of the model's inputs directly."""
    inputs = {id(t) for t in tree.flatten(functional._inputs_struct)}
    for nodes in functional._nodes_by_depth.values():
        for kn in nodes:
            if isinstance(kn.operation, keras.layers.Embedding) and any(id(t) in inputs for t in kn.input_tensors):
                return True
    return False


def _wants_tracing(layer) -> bool:
    """A layer with no propagator for it (nor a reason to keep it whole) is traced into its calls."""
    from .propagators.base import handles
    return not isinstance(layer, OPAQUE_LAYERS) and not handles(layer)


def _masks_for(inputs: List[int], mask) -> List[Optional[int]]:
    """The ``mask=`` argument of a call, one key (or None) per data input."""
    if mask is None:
        return [None] * len(inputs)
    if isinstance(mask, (list, tuple)) and len(mask) == len(inputs):
        return [m.key if isinstance(m, Ref) else None for m in mask]
    flat = [m for m in tree.flatten(mask) if isinstance(m, Ref)]
    return [flat[0].key if flat else None] + [None] * (len(inputs) - 1)


def _output_index(model, output, names: List[str], n: int) -> int:
    if output is None:
        if n != 1:
            raise ValueError(f"model {model.name!r} has {n} outputs {names}: choose the one to explain with "
                             "output= (its name or index).")
        return 0
    if isinstance(output, str):
        if output not in names:
            raise ValueError(f"output={output!r} is not an output of model {model.name!r}; its outputs are {names}.")
        return names.index(output)
    if isinstance(output, bool) or not isinstance(output, int) or not -n <= output < n:
        raise ValueError(f"output must be an output name {names} or an index in 0..{n - 1}, got {output!r}.")
    return output % n
