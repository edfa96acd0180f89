"""The reverse walk over a model graph: forward pass with caches, then relevance from the explained
output back to the inputs (or to the embedding vectors), layer by layer in reverse topological order.

Every layer's rule lives in :mod:`keras_lrp.propagators`; this module only wires them together:
masks travel forward with the tensors (Keras's own ``compute_mask`` semantics), relevance travels
backward and is summed where a tensor feeds several layers.
"""
from __future__ import annotations

from typing import Dict, Tuple

import keras
import tensorflow as tf

from .graph import Graph
from .propagators import IDENTITY_LAYERS, Context, UnsupportedLayerError, propagator_for

__all__ = ["Walk", "UnsupportedLayerError"]


class Walk:
    """Forward pass with caches and reverse relevance walk over a :class:`~keras_lrp.graph.Graph`.

    If the model starts with an ``Embedding``, the walk starts at the embedding vectors: relevance
    is returned for them, (batch, time, embedding_dim).
    """

    def __init__(self, graph: Graph, ctx: Context):
        self.graph, self.ctx = graph, ctx
        nodes = list(graph.nodes)
        if not nodes:
            raise ValueError("the model has no layers to explain.")
        self.embedding = None
        first = nodes[0]
        if isinstance(first.layer, keras.layers.Embedding):
            if sum(graph.input in n.inputs for n in nodes) != 1:
                raise UnsupportedLayerError(first.layer, "the token input must feed only the Embedding.")
            self.embedding = first.layer
            nodes = nodes[1:]
        else:
            for n in nodes:
                if isinstance(n.layer, keras.layers.Embedding):
                    raise UnsupportedLayerError(n.layer, "an Embedding must be the model's first layer.")
        self.start = first.outputs[0] if self.embedding is not None else graph.input
        outputs = self._output_nodes(graph)
        self.nodes = nodes
        self.propagators = [propagator_for(n.layer, ctx, is_output=id(n) in outputs) for n in nodes]

    @staticmethod
    def _output_nodes(graph: Graph) -> set:
        """The output node and, through trailing identity/activation layers, the layer whose
        pre-activation is explained."""
        marked, key = set(), graph.output
        while True:
            node = graph.producer(key)
            if node is None or isinstance(node.layer, keras.layers.Embedding):
                return marked
            marked.add(id(node))
            if not isinstance(node.layer, IDENTITY_LAYERS):
                return marked
            key = node.inputs[0]

    def embed(self, x) -> tf.Tensor:
        """The tensor relevance is computed for: the input itself, or its embedding vectors."""
        if self.embedding is None:
            return x
        return tf.gather(self.ctx.weight(self.embedding.embeddings), x)

    def forward(self, x, start=None) -> Tuple[tf.Tensor, tf.Tensor, Dict]:
        """Returns ``(output, start, caches)``: the model output (pre-activation), the tensor the
        relevance is computed for (the input or the embedding vectors, ``start`` if given), and
        the caches."""
        start = self.embed(x) if start is None else start
        values: Dict[int, tf.Tensor] = {self.graph.input: x, self.start: start}
        masks: Dict[int, tf.Tensor] = {}
        if self.embedding is not None and self.embedding.mask_zero:
            masks[self.start] = tf.not_equal(x, 0)
        caches = []
        for node, prop in zip(self.nodes, self.propagators):
            outs, out_masks, cache = prop.forward([values[k] for k in node.inputs],
                                                  [masks.get(k) for k in node.inputs])
            for k, v, m in zip(node.outputs, outs, out_masks):
                values[k] = v
                if m is not None:
                    masks[k] = m
            caches.append(cache)
        return values[self.graph.output], values[self.start], {"values": values, "layers": caches}

    def relevance(self, caches: Dict, r_out: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
        """Relevance at the start tensor, and ``rest`` (batch,): relevance parked on initial states."""
        values = caches["values"]
        relevance: Dict[int, tf.Tensor] = {self.graph.output: r_out}
        rest = tf.zeros(tf.shape(r_out)[:1], r_out.dtype)
        for node, prop, cache in zip(reversed(self.nodes), reversed(self.propagators),
                                     reversed(caches["layers"])):
            if not any(k in relevance for k in node.outputs):
                continue  # nothing of the explained output flows through this layer
            r_outs = [relevance.get(k, tf.zeros_like(values[k])) for k in node.outputs]
            r_ins, r = prop.relevance(cache, r_outs)
            for k, r_in in zip(node.inputs, r_ins):
                relevance[k] = relevance[k] + r_in if k in relevance else r_in
            if r is not None:
                rest = rest + r
        start = relevance.get(self.start, tf.zeros_like(values[self.start]))
        return start, rest

