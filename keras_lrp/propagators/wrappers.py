"""``TimeDistributed`` around any supported layer or model: its rules on every time step.

``TimeDistributed(layer)`` applies ``layer`` to each time step of a (batch, time, ...) input. Batch and
time are merged into one axis, the layer is explained on (batch x time, ...) by a walk over its own
canonical graph (:mod:`keras_lrp.canonical`: a Conv1D, an LSTM over a sub-sequence, a nested model,
a user's layer), and the relevance is split back. Around a ``Dense`` the Dense propagator does the same
directly (and may fold a following BatchNormalization).
"""
from __future__ import annotations

import keras
from keras import ops

from .base import Propagator, UnsupportedLayerError, register
from .linear import DenseProp

__all__ = ["TimeDistributedProp"]


@register(keras.layers.TimeDistributed,
          rule="the wrapped layer's (or model's) rules on every time step, batch and time merged; around Dense: "
               "the Dense rule")
class TimeDistributedProp(Propagator):
    """``TimeDistributed(layer)``: a walk over the wrapped layer's canonical graph, per time step."""

    accepts_rules = True   # around a Dense (a Composite may give it ZPlus, AlphaBeta, Gamma)

    def __new__(cls, layer, ctx, is_output=False):
        if isinstance(layer.layer, keras.layers.Dense):
            return DenseProp(layer, ctx, is_output)
        return super().__new__(cls)

    def __init__(self, layer, ctx, is_output=False):
        super().__init__(layer, ctx, is_output)
        from ..canonical import canonicalize, restoring_graph_bookkeeping
        from ..walk import Walk
        inner = layer.layer
        shape = getattr(layer, "_build_shapes_dict", None) or {}
        input_shape = next(iter(shape.values()), None)
        if input_shape is None or len(input_shape) < 3:
            raise UnsupportedLayerError(layer, "its input shape is not known: call the model on data first.")
        with restoring_graph_bookkeeping(inner):
            step_input = keras.Input(batch_shape=(None,) + tuple(input_shape[2:]))
            step_model = keras.Model(step_input, inner(step_input))
            graph = canonicalize(step_model)
        self.walk = Walk(graph, ctx)

    def _merge(self, x):
        return ops.reshape(x, (-1,) + tuple(x.shape[2:]))

    def forward(self, inputs, masks):
        x = inputs[0]
        batch, steps = ops.shape(x)[0], ops.shape(x)[1]
        out, _, caches = self.walk.forward([self._merge(x)])
        y = out if self.is_output else self.walk.model_output(out)
        y = ops.reshape(y, (batch, steps) + tuple(y.shape[1:]))
        out_mask = self.layer.compute_mask(x, masks[0]) if masks[0] is not None else None
        return [y], [out_mask], (caches, batch, steps, x.shape)

    def relevance(self, cache, r_outs):
        caches, batch, steps, x_shape = cache
        r = ops.reshape(r_outs[0], (-1,) + tuple(r_outs[0].shape[2:]))
        (r_x,), rest = self.walk.relevance(caches, r)
        r_x = ops.reshape(r_x, (batch, steps) + tuple(x_shape[2:]))
        return [r_x], ops.sum(ops.reshape(rest, (batch, steps)), axis=1)

    @property
    def activation_name(self):
        return self.walk.output_activation

    def activate(self, y):
        return self.walk.model_output(y)
