"""Propagators: one per Keras layer type, its forward pass (with what LRP needs cached) and its rule.

The registry in :mod:`keras_lrp.propagators.base` is the single list of supported layers:
``supported_layers()`` returns it, the README table is generated from it
(``python -m keras_lrp.propagators``), and unsupported layers are refused with an error naming the
layer before any computation. The output layer's activation is never applied: the explained
score is its pre-activation. Adding a layer type: one propagator class with ``@register``, one
oracle test.
"""
from __future__ import annotations

import keras

from .base import (Context, Propagator, RegistryRow, UnsupportedLayerError, propagator_for, refuse, register,
                   supported_layers, unregister)
# each module registers its propagators; the import order is the order of the README table
from . import linear, recurrent, shape, normalization, attention, ops, wrappers  # noqa: F401
from .shape import IDENTITY_LAYERS

__all__ = ["UnsupportedLayerError", "Context", "Propagator", "RegistryRow", "register", "unregister", "refuse",
           "propagator_for", "supported_layers", "IDENTITY_LAYERS", "markdown_table"]

refuse(keras.layers.Lambda, "a Lambda layer is explained through the keras.ops calls of its function. Rewrite it "
                            "with keras.ops, or, if it is linear (a slice, a sum, a scaling), declare it: "
                            "explain(..., layer_rules={'<lambda name>': 'linear'}).")


def markdown_table() -> str:
    """The supported-layer table of the README, generated from the registry."""
    lines = ["| layer | rule |", "| --- | --- |"]
    for row in supported_layers():
        names = ", ".join(f"`{t.registry_name}`" if hasattr(t, "registry_name")
                          else f"`{ops.op_function_name(t)}`" if not issubclass(t, keras.layers.Layer)
                          else f"`{t.__name__}`" for t in row.layers)
        lines.append(f"| {names} | {row.rule} |")
    return "\n".join(lines)
