"""Identity, masking, reshaping and merging layers."""
from __future__ import annotations

import keras
from keras import ops, tree

from .. import backend, rules
from ..canonical import MaskedOutput
from ..graph import Ref
from .base import Propagator, register

__all__ = ["IDENTITY_LAYERS", "Identity", "MaskingProp", "ReshapeProp", "ConcatenateProp", "AddProp", "MaskedOutputProp"]


IDENTITY_LAYERS = (keras.layers.Dropout, keras.layers.SpatialDropout1D, keras.layers.GaussianNoise,
                   keras.layers.GaussianDropout, keras.layers.AlphaDropout, keras.layers.Activation,
                   keras.layers.ActivityRegularization)


@register(*IDENTITY_LAYERS, rule="identity at inference: R passes unchanged (Activation: element-wise, R unchanged)")
class Identity(Propagator):
    """Layers that are the identity (or element-wise) at inference: R passes unchanged."""

    post_padding_safe = True

    def forward1(self, x, mask):
        if self.is_output or not isinstance(self.layer, keras.layers.Activation):
            return x, None
        return self.layer.activation(x), None

    def relevance1(self, cache, r):
        return r, None

    @property
    def activation_name(self):
        if isinstance(self.layer, keras.layers.Activation):
            return getattr(self.layer.activation, "__name__", None)
        return None

    def activate(self, y):
        return self.layer.activation(y) if isinstance(self.layer, keras.layers.Activation) else y


@register(keras.layers.Masking, rule="R passes where kept, exactly 0 at masked steps")
class MaskingProp(Propagator):
    """``y = x * keep`` with keep = 0 at timesteps equal to ``mask_value``: R passes where kept."""

    def out_mask(self, x, mask):
        return self.layer.compute_mask(x, mask)

    def forward1(self, x, mask):
        keep = ops.any(ops.not_equal(x, ops.cast(self.layer.mask_value, x.dtype)), axis=-1, keepdims=True)
        keep = ops.cast(keep, x.dtype)
        return x * keep, keep

    def relevance1(self, keep, r):
        return r * keep, None


@register(keras.layers.Flatten, keras.layers.Reshape, rule="R is reshaped back, unchanged")
class ReshapeProp(Propagator):
    """Flatten and Reshape: relevance is reshaped back."""

    def forward1(self, x, mask):
        # the static output shape where Keras can resolve it (a -1 or None stays dynamic)
        static = self.layer.compute_output_shape((None,) + tuple(x.shape[1:]))[1:]
        if isinstance(self.layer, keras.layers.Flatten):
            target = [static[0] if static[0] is not None else -1]
        else:
            target = [d if d is not None else -1 for d in static]
        shape = ops.shape(x)
        return ops.reshape(x, (shape[0],) + tuple(target)), shape

    def relevance1(self, shape, r):
        return ops.reshape(r, shape), None


@register(keras.layers.RepeatVector, keras.layers.Permute, keras.layers.Cropping1D, keras.layers.ZeroPadding1D,
          keras.layers.UpSampling1D,
          rule="identity: each output element is a copy of one input element (or a zero), R is routed back")
class CopyProp(Propagator):
    """Layers that copy elements: relevance is the vector-Jacobian product of the copying."""

    def forward1(self, x, mask):
        return self.layer.call(x), x

    def relevance1(self, x, r):
        return backend.vjp(lambda t: [self.layer.call(t)], [x], [r])[0], None


@register(keras.layers.Concatenate, rule="R is split back onto the inputs, unchanged")
class ConcatenateProp(Propagator):
    def forward(self, inputs, masks):
        y = ops.concatenate(inputs, axis=self.layer.axis)
        out_mask = self.layer.compute_mask(inputs, masks) if any(m is not None for m in masks) else None
        return [y], [out_mask], [x.shape[self.layer.axis] for x in inputs]

    def relevance(self, sizes, r_outs):
        r = r_outs[0]
        axis = self.layer.axis % len(r.shape)
        starts = [sum(sizes[:i]) for i in range(len(sizes))]
        return [r[(slice(None),) * axis + (slice(a, a + n),)] for a, n in zip(starts, sizes)], None


@register(keras.layers.Add, rule="epsilon-rule over the summands (N = number of inputs)")
class AddProp(Propagator):
    """z = sum of the inputs: epsilon-rule, each input a contribution (N = number of inputs)."""

    def forward(self, inputs, masks):
        z = sum(inputs[1:], inputs[0])
        out_mask = self.layer.compute_mask(inputs, masks) if any(m is not None for m in masks) else None
        return [z], [out_mask], (inputs, z)

    def relevance(self, cache, r_outs):
        inputs, z = cache
        return rules.elementwise_sum(inputs, z, r_outs[0], self.ctx.eps), None


@register(MaskedOutput, rule="identity: R passes unchanged; the outputs get the mask the traced layer's "
                             "compute_mask gives, where its own calls did not set one (as Keras does)")
class MaskedOutputProp(Propagator):
    """The outputs of a traced layer that ``supports_masking`` (see :class:`~keras_lrp.canonical.MaskedOutput`)."""

    post_padding_safe = True

    def bind(self, node, walk) -> None:
        self.node = node

    def forward(self, inputs, masks):
        op = self.layer
        n = op.n_outputs
        by_key = dict(zip(self.node.inputs[n:], zip(inputs[n:], masks[n:])))
        (args, kwargs) = op.call_args
        first = args[0] if args else next(iter(kwargs.values()))
        first_values = tree.map_structure(lambda r: by_key[r.key][0] if isinstance(r, Ref) else r, first)
        previous = tree.map_structure(lambda r: by_key[r.key][1] if isinstance(r, Ref) else None, first)
        computed = None
        if any(m is None for m in masks[:n]):
            computed = op.layer.compute_mask(first_values, previous)
        computed = tree.flatten(computed) if computed is not None else [None] * n
        out_masks = [own if own is not None else (computed[i] if i < len(computed) else None)
                     for i, own in enumerate(masks[:n])]
        return list(inputs[:n]), out_masks, None

    def relevance(self, cache, r_outs):
        return list(r_outs) + [None] * (len(self.node.inputs) - len(r_outs)), None
