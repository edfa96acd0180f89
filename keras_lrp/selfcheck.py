"""The self-check: an explanation whose score differs from the model's own output is a bug.

The first call of every explainer compares the model output its forward pass computes (the
explained pre-activation, with the output activation applied, :meth:`~keras_lrp.walk.Walk.model_output`)
with ``model(x)`` on that batch. When they differ, :func:`first_disagreeing_call` runs every call of
the graph once more as Keras runs it, on the explainer's own inputs to that call, and names the first
call whose output differs: a rule that computes its layer differently from Keras (a mask it does not
apply, an argument it ignores). When every call agrees with Keras on its own inputs, the difference is
rounding amplified along the network (float32 through a long recurrence): that is only a warning.
"""
from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass
from typing import List, Optional

import numpy as np

__all__ = ["SelfCheckError", "Disagreement", "RTOL", "max_difference", "first_disagreeing_call", "self_check"]

#: The model outputs agree when ``max |explainer - model| <= RTOL * max |model|`` (plus a tiny
#: absolute floor): loose enough for float32 rounding along a network, two orders of magnitude below
#: the errors a wrong mask or rule makes (1e-2 and more on the scores).
RTOL = 1e-4
#: One call, run on the same inputs by keras_lrp and by Keras, agrees to this relative tolerance
#: (looser: a single recurrent call of many steps may amplify the float32 rounding of its inputs).
CALL_RTOL = 1e-3
_ATOL = 1e-7


class SelfCheckError(ValueError):
    """The explainer's forward pass does not reproduce the model's output: the explanation would be
    of another function than the model's, so none is given."""


@dataclass(frozen=True)
class Disagreement:
    """A call whose output, computed by keras_lrp, differs from Keras's on the same inputs."""

    name: str            # "layer 'attention' (Attention)" or "op node 'get_item' (keras.ops.get_item)"
    difference: float    # max |keras_lrp - Keras| over the batch
    scale: float         # max |Keras|


def max_difference(got, want) -> float:
    """max |got - want|; non-finite values count as equal where both are the same (a model with NaN
    weights outputs NaN, and so does its explanation), as infinitely apart elsewhere."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    if got.shape != want.shape:
        return float("inf")
    if not got.size:
        return 0.0
    finite = np.isfinite(got) & np.isfinite(want)
    same = (got == want) | (np.isnan(got) & np.isnan(want))
    if np.any(~finite & ~same):
        return float("inf")
    return float(np.max(np.abs(got[finite] - want[finite]))) if finite.any() else 0.0


def _scale(want) -> float:
    want = np.asarray(want, np.float64)
    finite = want[np.isfinite(want)]
    return float(np.max(np.abs(finite))) if finite.size else 0.0


def _agree(got, want, rtol: float = RTOL) -> bool:
    return max_difference(got, want) <= rtol * _scale(want) + _ATOL


def _describe(op) -> str:
    from .propagators.ops import is_op, op_function_name
    if is_op(op):
        return f"op node {op.name!r} ({op_function_name(op)})"
    return f"layer {op.name!r} ({type(op).__name__})"


def first_disagreeing_call(walk, xs: List, input_masks: Optional[List] = None) -> Optional[Disagreement]:
    """Run the explainer's forward pass on ``xs`` (one array per model input; ``input_masks``: the
    Keras masks they carry, as :meth:`~keras_lrp.walk.Walk.forward` takes them), then every call once
    more as Keras runs it (its ``__call__``, with the masks Keras's own calls attached to their
    outputs) on the explainer's inputs to that call; the first, in call order, whose outputs differ,
    or None."""
    from keras import ops

    from . import backend
    input_masks = None if input_masks is None else [None if m is None else ops.convert_to_tensor(m)
                                                    for m in input_masks]
    _, _, caches = walk.forward([ops.convert_to_tensor(x) for x in xs], input_masks=input_masks)
    values = caches["values"]
    keras_masks = walk.given_masks(input_masks)   # the masks as Keras's own calls compute them
    for step in walk.steps:
        node = step.node
        masks = walk._input_masks(node, values, keras_masks)
        want, out_masks = walk._generic(node, values, masks)
        keras_masks.update((k, m) for k, m in zip(node.outputs, out_masks) if m is not None)
        got = [values[k] for k in node.outputs]
        if id(node) in walk._output_ids and step.prop is not None:
            got = [step.prop.activate(g) for g in got]
        for g, w in zip(got, want):
            g, w = backend.to_numpy(g), backend.to_numpy(w)
            if not _agree(g, w, CALL_RTOL):
                return Disagreement(_describe(node.op), max_difference(g, w), _scale(w))
    return None


@contextlib.contextmanager
def _from_zero_state(model):
    """Inside the block, the model's stateful RNNs run as stateless ones: from the zero state, on
    any batch size, leaving the state they hold untouched (an explanation starts from the zero
    state, see the README's stateful RNN note)."""
    import keras

    stateful, stack = [], list(model.layers)
    while stack:
        layer = stack.pop()
        if isinstance(layer, keras.layers.Bidirectional):
            stack += [layer.forward_layer, layer.backward_layer]
        elif isinstance(layer, keras.Model):
            stack += layer.layers
        elif isinstance(layer, keras.layers.RNN) and layer.stateful:
            stateful.append(layer)
    try:
        for layer in stateful:
            layer.stateful = False
        yield
    finally:
        for layer in stateful:
            layer.stateful = True


def self_check(walk, model, xs: List, explained_output, multi_input: bool, output_index: int = 0,
               lengths: Optional[np.ndarray] = None) -> None:
    """Compare ``explained_output`` (the explainer's model output for the batch ``xs``) with output
    ``output_index`` of ``model(xs)`` (stateful RNNs from the zero state); raise
    :class:`SelfCheckError` naming the first call that disagrees, or warn when none does (rounding).
    ``lengths``: per sample, its steps of the one float input, the rest padding the explainer masked
    (``Explainer.attribute(lengths=)``): compared with the model on each sample's steps only
    (:func:`_model_output`)."""
    with _from_zero_state(model):
        _self_check(walk, model, xs, explained_output, multi_input, output_index, lengths)


def _length_mask(xs: List, lengths: np.ndarray) -> np.ndarray:
    """(batch, time) bool: True on each sample's first ``lengths`` steps of the float input ``xs[0]``."""
    return np.arange(xs[0].shape[1])[None, :] < lengths[:, None]


def _model_output(model, xs: List, multi_input: bool, output_index: int, lengths: Optional[np.ndarray]):
    """Output ``output_index`` of the model on ``xs``, as numpy; with ``lengths``, as if each sample had
    only its first ``lengths`` steps: a functional or Sequential model called with the mask ``step <
    length`` on its input (one call on the batch as the explainer saw it), any other model (whose
    ``call`` may ignore ``mask=``) once per length on the unpadded samples."""
    import keras
    from keras import tree
    from keras.src.models.functional import Functional

    from . import backend

    def run(inputs, mask=None):
        with warnings.catch_warnings():   # Keras: the model's output "does not support masking"
            warnings.filterwarnings("ignore", message=".*does not support masking")
            out = model(list(inputs) if multi_input else inputs[0], training=False,
                        **({} if mask is None else {"mask": mask}))
        return backend.to_numpy(tree.flatten(out)[output_index])
    if lengths is None or np.all(lengths == xs[0].shape[1]):
        return run(xs)
    if isinstance(model, (Functional, keras.Sequential)):
        return run(xs, keras.ops.convert_to_tensor(_length_mask(xs, lengths)))
    rows = {int(n): np.flatnonzero(lengths == n) for n in np.unique(lengths)}
    parts = {n: run([x[r, :n] for x in xs]) for n, r in rows.items()}
    out = np.empty((len(lengths),) + next(iter(parts.values())).shape[1:], next(iter(parts.values())).dtype)
    for n, r in rows.items():
        out[r] = parts[n]
    return out


def _self_check(walk, model, xs: List, explained_output, multi_input: bool, output_index: int,
                lengths: Optional[np.ndarray] = None) -> None:
    reference = _model_output(model, xs, multi_input, output_index, lengths)
    if _agree(explained_output, reference):
        return
    diff = max_difference(explained_output, reference)
    scale = _scale(reference)
    masks = None if lengths is None else [_length_mask(xs, lengths)]
    found = first_disagreeing_call(walk, xs, masks)
    if found is None:
        warnings.warn(f"the explainer's forward pass differs from the model's output by up to {diff:.3g} "
                      f"(outputs up to {scale:.3g}), although every layer agrees with Keras on its own inputs: "
                      "rounding amplified through the network. Explain in dtype='float64' to see whether "
                      "it shrinks.", RuntimeWarning, stacklevel=3)
        return
    raise SelfCheckError(
        f"the explainer's forward pass differs from the model's output by up to {diff:.3g} (outputs up to "
        f"{scale:.3g}), so its relevance would explain another function than the model's. The first call "
        f"that computes differently from Keras is {found.name}: up to {found.difference:.3g} off (its "
        f"outputs up to {found.scale:.3g}). This is a bug in keras_lrp's rule for it; please report it "
        "with the model. Explainer(..., self_check=False) skips this check.")
