"""The reverse walk over a model graph: forward pass with caches, then relevance from the explained
output back to the inputs (or to the embedding vectors), call by call in reverse topological order.

Every rule lives in :mod:`keras_lrp.propagators`; this module only wires them together. Which
tensors carry relevance is decided once, before any computation:

* the *start* tensors are the float model inputs and, for token inputs, the output of the
  ``Embedding`` that reads them (relevance is reported for the embedding vectors);
* a tensor is *relevant* if it is a float tensor computed from a start tensor. Everything else
  (token ids, the masks Keras computes with ``NotEqual`` / ``Any`` op nodes, constants) is plumbing:
  computed as Keras computes it, carrying no relevance. Masks reach layers through their ``mask``
  argument, exactly as in the Keras graph;
* relevance flows from the output backwards only into the inputs each rule gives relevance to (a
  gate x signal product gives none to the gate), so the gate's own subgraph (attention scores,
  softmax) is computed but needs no rule. Relevance a rule gives to a non-relevant input (a
  constant) is added to ``rest``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import keras
from keras import ops, tree
from keras.src.backend.common.masking import get_keras_mask, set_keras_mask

from .backend import Tensor
from .canonical import KerasMask
from .graph import Graph, Node
from .propagators import IDENTITY_LAYERS, Context, UnsupportedLayerError, propagator_for
from .propagators.base import lookup, refusal_reason
from .propagators.ops import ELEMENTWISE_ACTIVATIONS, GATE_OPS, LambdaLinearProp, UnsupportedOpError, is_op

__all__ = ["Walk", "UnsupportedLayerError"]

_CONSTANT, _EMBED, _RULE, _FORWARD = "constant", "embed", "rule", "forward"


@dataclass
class _Step:
    """A node and how the walk treats it: ``kind`` is constant / embed / rule / forward (computed, no
    relevance reaches it), ``prop`` its propagator (None: run as Keras runs it)."""

    node: Node
    kind: str
    prop: Optional[object] = None


def _is_float(dtype) -> bool:
    return "float" in str(dtype)   # a dtype name, or a tf / jax / torch dtype


def _has_time(shape) -> bool:
    """Whether a tensor of symbolic ``shape`` (None: unknown) has a time axis of open length."""
    return shape is None or (len(shape) >= 2 and shape[1] is None)


def _where(node: Node) -> str:
    """`` (inside 'encoder/')`` for a call found inside a nested model or a traced layer."""
    return f" (inside {node.path.rstrip('/')!r})" if node.path else ""


class Walk:
    """Forward pass with caches and reverse relevance walk over a :class:`~keras_lrp.graph.Graph`.

    Attributes:
        embeddings: per model input, the ``Embedding`` layer reading it (token inputs) or None.
        starts: per model input, the key of the tensor relevance is reported for (None: an
            integer input no Embedding reads, which gets no relevance).
        embedding: the single input's Embedding (single-input models), else None.
    """

    def __init__(self, graph: Graph, ctx: Context):
        self.graph, self.ctx = graph, ctx
        if not graph.nodes:
            raise ValueError("the model has no layers to explain.")
        self._find_starts()
        self._find_relevant()
        self._plan()

    # ------------------------------------------------------------------------ structure

    def _find_starts(self):
        graph = self.graph
        self.embeddings: List[Optional[keras.layers.Embedding]] = []
        self.starts: List[Optional[int]] = []
        self._embed_nodes: Dict[int, int] = {}   # id(node) -> input index
        for i, key in enumerate(graph.inputs):
            embeds = [n for n in graph.nodes if key in n.inputs and isinstance(n.op, keras.layers.Embedding)]
            if len(embeds) > 1:
                raise UnsupportedLayerError(embeds[1].op, f"input {graph.input_names[i]!r} feeds "
                                            f"{len(embeds)} Embedding calls; one Embedding per token input.")
            if embeds:
                others = [n for n in graph.nodes if key in n.inputs and n is not embeds[0]
                          and any(_is_float(graph.dtypes.get(k)) for k in n.outputs)
                          and not isinstance(n.op, keras.layers.Embedding)]
                if any(not is_op(n.op) for n in others):
                    raise UnsupportedLayerError(embeds[0].op, "the token input must feed only the Embedding "
                                                "(and mask computations).")
                self.embeddings.append(embeds[0].op)
                self.starts.append(embeds[0].outputs[0])
                self._embed_nodes[id(embeds[0])] = i
            else:
                self.embeddings.append(None)
                self.starts.append(key if _is_float(graph.input_dtypes[i]) else None)
        for n in graph.nodes:
            if isinstance(n.op, keras.layers.Embedding) and id(n) not in self._embed_nodes:
                raise UnsupportedLayerError(n.op, "an Embedding must read a model input (token ids) directly.")
        self.embedding = self.embeddings[0] if len(self.embeddings) == 1 else None

    def _find_relevant(self):
        dtypes = self.graph.dtypes
        self._relevant = {k for k in self.starts if k is not None}
        for node in self.graph.nodes:
            if id(node) in self._embed_nodes:
                continue
            if any(k in self._relevant for k in node.inputs):
                self._relevant.update(k for k in node.outputs if _is_float(dtypes.get(k)))

    def post_padding_safe(self) -> bool:
        """Whether id-0 steps appended to the end of the token input (post-padding) change nothing, bit
        for bit, in the explanation of the steps before them, and get exactly 0 relevance: one token
        input read by an ``Embedding(mask_zero=True)``, an output without a time axis, and every call
        on a tensor with a time axis either per time step (Dense, normalization, activations) or a
        recurrent layer that skips the masked steps (:attr:`Propagator.post_padding_safe`). Decided
        from the graph only; anything else (convolutions, pooling, attention, op nodes over time)
        is not."""
        if len(self.graph.inputs) != 1 or self.embeddings[0] is None or not self.embeddings[0].mask_zero:
            return False
        return self._time_calls_safe(lambda step: getattr(step.prop, "post_padding_safe", False))

    def vector_padding_safe(self) -> bool:
        """Whether steps appended to the end of the float sequence input change nothing, bit for bit, in
        the explanation of the steps before them, and get exactly 0 relevance, when :meth:`forward` is
        given their mask (``input_masks``: True on the steps of the sequence, False on the padding),
        whatever the padding's values: one float input of shape (batch, time, features) and no mask
        in the model's graph (no ``Masking``, no ``mask=``), an output without a time axis, and every
        call on a tensor with a time axis either per time step or a recurrent layer that skips the
        steps its sequence's Keras mask masks, with that mask carried to it from the input as Keras
        carries masks (layers that support masking pass it on; op nodes drop it). Decided from the
        graph only, as :meth:`post_padding_safe`."""
        graph = self.graph
        if (len(graph.inputs) != 1 or self.starts[0] != graph.inputs[0] or len(graph.input_shapes[0]) != 3
                or graph.input_shapes[0][1] is not None):
            return False
        if graph.carried_mask_shapes or any(m is not None for n in graph.nodes for m in n.masks):
            return False
        carried = self._mask_carriers(graph.inputs[0])

        def safe(step: _Step) -> bool:
            if getattr(step.prop, "skips_carried_mask", False):
                return step.node.inputs[step.prop.layout.sequence] in carried
            return getattr(step.prop, "post_padding_safe", False)
        return self._time_calls_safe(safe)

    def _time_calls_safe(self, safe) -> bool:
        """Whether the output has no time axis and ``safe(step)`` holds for every call that reads or
        writes a tensor with a time axis (mask plumbing aside)."""
        graph = self.graph
        if _has_time(graph.output_shape):
            return False
        for step in self.steps:
            if step.kind == _EMBED or isinstance(step.node.op, KerasMask) or all(
                    self.graph.is_padding_mask(k) for k in step.node.outputs):
                continue
            keys = list(step.node.inputs) + list(step.node.outputs)
            if any(_has_time(graph.shape_of(k)) for k in keys) and not safe(step):
                return False
        return True

    def _mask_carriers(self, key: int) -> set:
        """The tensors that carry a (batch, time) Keras mask given to tensor ``key``, as :meth:`forward`
        carries it: a layer that ``supports_masking`` gives its outputs the masks its ``compute_mask``
        gives (evaluated on symbolic tensors), an op node none."""
        carried = {key}
        for step in self.steps:
            node, layer = step.node, step.node.op
            if (is_op(layer) or not getattr(layer, "supports_masking", False)
                    or not any(k in carried for k in node.inputs)):
                continue
            try:
                xs = [keras.KerasTensor(self.graph.shape_of(k), dtype=self.graph.dtypes.get(k) or "float32")
                      for k in node.inputs]
                masks = [keras.KerasTensor(self.graph.shape_of(k)[:2], dtype="bool") if k in carried else None
                         for k in node.inputs]
                out = layer.compute_mask(xs[0], masks[0]) if len(xs) == 1 else layer.compute_mask(xs, masks)
            except Exception:  # noqa: BLE001 - a mask Keras cannot tell symbolically: taken as dropped
                continue
            out = tree.flatten(out) if isinstance(out, (list, tuple)) else [out] * len(node.outputs)
            carried.update(k for k, m in zip(node.outputs, out) if m is not None)
        return carried

    def is_relevant(self, key: int) -> bool:
        """Whether tensor ``key`` carries relevance (a float tensor computed from a start tensor)."""
        return key in self._relevant

    def _output_nodes(self) -> set:
        """The output node and, through trailing identity / activation calls (``Activation``,
        ``Dropout``, a softmax op...), the call whose pre-activation is explained."""
        marked, key = set(), self.graph.output
        while True:
            node = self.graph.producer(key)
            if node is None or id(node) in self._embed_nodes:
                return marked
            marked.add(id(node))
            if not isinstance(node.op, IDENTITY_LAYERS + GATE_OPS + ELEMENTWISE_ACTIVATIONS) or not node.inputs:
                return marked
            key = node.inputs[0]

    def _propagator(self, node: Node, is_output: bool):
        op = node.op
        rule = self.ctx.composite.rule_for(op) if not is_op(op) else None
        if rule == "linear":
            if not isinstance(op, keras.layers.Lambda):
                raise ValueError(f"layer_rules declares layer {op.name!r} 'linear', but it is a "
                                 f"{type(op).__name__}; 'linear' is for Lambda layers.")
            prop = LambdaLinearProp(op, self.ctx, is_output)
        elif is_op(op) and lookup(op) is None:
            raise UnsupportedOpError(op, "it is not linear or not known to keras_lrp" + _where(node) + ". "
                                         "Supported op nodes are listed by keras_lrp.propagators.markdown_table().")
        elif node.trace_error is not None:
            advice = (refusal_reason(op) or "Write its call with keras.ops (no Python branches on tensor values, no "
                      f"TensorFlow functions on Keras tensors), or register a propagator for it: keras_lrp.register"
                      f"({type(op).__name__}, rule=...) (see the README).")
            raise UnsupportedLayerError(op, f"it has no propagator and its call could not be traced into Keras layers "
                                            f"and keras.ops calls: {node.trace_error}. {advice}" + _where(node))
        else:
            prop = propagator_for(op, self.ctx, is_output=is_output)
        if hasattr(prop, "bind"):
            prop.bind(node, self)
        return prop

    def _plan(self):
        """Decide, from the output backwards, what each node is; build (or refuse) the rules."""
        outputs = self._output_nodes()
        self._output_ids = outputs
        receives = {self.graph.output}
        steps: List[_Step] = []
        for node in reversed(self.graph.nodes):
            is_output = id(node) in outputs
            if id(node) in self._embed_nodes:
                steps.append(_Step(node, _EMBED))
            elif not any(self.is_relevant(k) for k in node.inputs):
                steps.append(_Step(node, _CONSTANT))
            elif any(k in receives for k in node.outputs):
                prop = self._propagator(node, is_output)
                if getattr(prop, "gate_only", False) and not is_output:
                    what = (f"op node {node.op.name!r}" if is_op(node.op)
                            else f"layer {node.op.name!r} ({type(node.op).__name__})")
                    raise UnsupportedLayerError(node.op, f"{what} is a softmax / sigmoid on the relevance path. "
                                                         "It is supported as attention weights or a gate multiplied "
                                                         "with a signal (held constant), or as the output activation.")
                held = set(getattr(prop, "no_relevance_inputs", ()))
                receives.update(k for j, k in enumerate(node.inputs) if j not in held and self.is_relevant(k))
                steps.append(_Step(node, _RULE, prop))
            else:   # computed from the inputs, but no relevance reaches it (e.g. attention scores)
                try:
                    prop = self._propagator(node, is_output)
                except (UnsupportedLayerError, ValueError):
                    prop = None
                steps.append(_Step(node, _FORWARD, prop))
        self.steps = steps[::-1]
        self.propagators = [step.prop for step in self.steps if step.kind == _RULE]
        missing = [i for i, k in enumerate(self.starts) if k is None]
        if len(missing) == len(self.starts):
            raise ValueError("no model input carries relevance: inputs are integer ids but no Embedding reads them.")

    # ------------------------------------------------------------------------ computation

    def embed(self, xs: List) -> List[Optional[Tensor]]:
        """Per model input, the tensor relevance is computed for: the input itself, or its embedding
        vectors (None for an integer input no Embedding reads)."""
        out = []
        for x, emb, start in zip(xs, self.embeddings, self.starts):
            if emb is not None:
                out.append(ops.take(self.ctx.weight(emb.embeddings), x, axis=0))
            else:
                out.append(x if start is not None else None)
        return out

    def _generic(self, node: Node, values: Dict, masks: List) -> Tuple[List, List]:
        """Run a call as Keras runs it (plumbing: masks, constants, unruled nodes off the relevance
        path): ``(outputs, their Keras masks)``. A layer sees the masks of its inputs as Keras's own
        ``__call__`` does (attached to the tensors, auto-filled into ``mask`` arguments)."""
        args, kwargs = node.fill_in(values)
        if not is_op(node.op):
            if "training" in kwargs:
                kwargs["training"] = False
            for key, m in zip(node.inputs, masks):
                set_keras_mask(values[key], m)
        outs = tree.flatten(node.op(*args, **kwargs))
        out_masks = [get_keras_mask(o) if not is_op(node.op) else None for o in outs]
        if not is_op(node.op):
            for key in node.inputs:
                set_keras_mask(values[key], None)
        return [ops.cast(o, self.ctx.dtype) if _is_float(o.dtype) else o for o in outs], out_masks

    def given_masks(self, input_masks: Optional[List]) -> Dict[int, Tensor]:
        """The masks ``input_masks`` (per model input, a Keras mask or None; or None) by tensor key."""
        return {k: m for k, m in zip(self.graph.inputs, input_masks or ()) if m is not None}

    @staticmethod
    def _input_masks(node: Node, values: Dict, mask_of: Dict) -> List:
        """The mask each input of a call sees: the one passed explicitly (``mask=``), else the Keras
        mask its tensor carries (``Embedding(mask_zero=True)``, ``Masking`` and every layer that
        propagates them), as Keras attaches it to the tensor and fills it into the call's mask
        arguments (``mask``, or ``query_mask`` / ``value_mask`` / ``key_mask``)."""
        return [values[m] if m is not None else mask_of.get(k) for k, m in zip(node.inputs, node.masks)]

    def forward(self, xs: List, starts: Optional[List] = None,
                input_masks: Optional[List] = None) -> Tuple[Tensor, List, Dict]:
        """Returns ``(output, starts, caches)``: the model output (pre-activation), the tensors relevance
        is computed for (one per input, see :meth:`embed`; ``starts`` if given), and the caches.
        ``input_masks``: per model input, a Keras mask (batch, time) bool it carries, or None (as
        ``model(xs, mask=input_masks)``)."""
        starts = self.embed(xs) if starts is None else starts
        values: Dict[int, Tensor] = dict(zip(self.graph.inputs, xs))
        for key, s in zip(self.starts, starts):
            if key is not None:
                values[key] = s
        # Keras masks by tensor key, propagated at run time as Keras propagates them (a layer's
        # compute_mask; keras.ops calls drop them), so every layer sees the masks Keras gives it
        mask_of: Dict[int, Tensor] = self.given_masks(input_masks)
        caches = []
        for step in self.steps:
            node, cache = step.node, None
            if step.kind == _EMBED:
                emb = node.op
                if emb.mask_zero:
                    mask_of[node.outputs[0]] = emb.compute_mask(values[node.inputs[0]])
                caches.append(cache)
                continue
            masks = self._input_masks(node, values, mask_of)
            if isinstance(node.op, KerasMask):   # plumbing: the mask its input carries
                values[node.outputs[0]] = mask_of.get(node.inputs[0])
                caches.append(cache)
                continue
            if step.prop is None or step.prop.runs_as_keras:
                outs, out_masks = self._generic(node, values, masks)
            else:
                outs, out_masks, cache = step.prop.forward([values[k] for k in node.inputs], masks)
            values.update(zip(node.outputs, outs))
            mask_of.update((k, m) for k, m in zip(node.outputs, out_masks) if m is not None)
            caches.append(cache)
        return values[self.graph.output], starts, {"values": values, "steps": caches, "masks": mask_of}

    def model_output(self, out: Tensor) -> Tensor:
        """What the model itself outputs, from the explained pre-activation ``out`` (:meth:`forward`):
        the activations the output calls skip (``Dense(activation="softmax")``, a trailing
        ``Activation`` or softmax op) applied in call order."""
        for step in self.steps:
            if id(step.node) in self._output_ids and step.prop is not None:
                out = step.prop.activate(out)
        return out

    @property
    def output_activation(self) -> Optional[str]:
        """The activation between the explained pre-activation and the model's output ("softmax",
        "sigmoid", ...; the last non-linear one when several), or None."""
        names = [step.prop.activation_name for step in self.steps
                 if id(step.node) in self._output_ids and step.prop is not None]
        names = [n for n in names if n not in (None, "linear")]
        return names[-1] if names else None

    def relevance(self, caches: Dict, r_out: Tensor) -> Tuple[List[Optional[Tensor]], Tensor]:
        """Relevance at each start tensor (None for inputs without one), and ``rest`` (batch,): relevance
        parked on initial states, masked constant outputs and constants."""
        values = caches["values"]
        relevance: Dict[int, Tensor] = {self.graph.output: r_out}
        rest = ops.zeros(ops.shape(r_out)[:1], r_out.dtype)
        for step, cache in zip(reversed(self.steps), reversed(caches["steps"])):
            node = step.node
            if step.kind != _RULE or not any(k in relevance for k in node.outputs):
                continue  # nothing of the explained output flows through this call
            r_outs = [relevance.get(k, ops.zeros_like(values[k])) for k in node.outputs]
            r_ins, r = step.prop.relevance(cache, r_outs)
            for k, r_in in zip(node.inputs, r_ins):
                if r_in is None:
                    continue
                if self.is_relevant(k):
                    relevance[k] = relevance[k] + r_in if k in relevance else r_in
                elif _is_float(r_in.dtype):
                    rest = rest + ops.sum(ops.reshape(r_in, (ops.shape(r_in)[0], -1)), axis=1)
            if r is not None:
                rest = rest + r
        out = []
        for key in self.starts:
            if key is None:
                out.append(None)
            else:
                out.append(relevance[key] if key in relevance else ops.zeros_like(values[key]))
        return out, rest
