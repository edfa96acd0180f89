"""The propagator interface, the rule context and the one registry of layer type -> propagator.

A propagator is a Keras layer's forward pass (with what its rule needs cached) and its rule. Every
propagator registers the layer types it handles with :func:`register`; :func:`propagator_for`
looks a layer up (most specific class first), and :func:`supported_layers` lists the registry, so
the README table, the error messages and the code read from the same place.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple, Type

import keras
from keras import ops

from ..recurrent import GATE_RULES
from ..composites import Composite
from ..rules import Epsilon, GateRule, LinearRule

__all__ = ["UnsupportedLayerError", "Context", "Propagator", "register", "unregister", "refuse", "propagator_for",
           "handles",
           "supported_layers", "RegistryRow"]


class UnsupportedLayerError(ValueError):
    """A layer the reverse walk has no propagation rule for (or in a configuration it cannot handle)."""

    def __init__(self, layer, why: Optional[str] = None):
        if why is None:   # rebuilt from its message (TensorFlow re-raises errors from traced code so)
            super().__init__(str(layer))
            self.layer = None
            return
        super().__init__(
            f"layer {layer.name!r} ({class_name(layer)}) is not supported by keras_lrp: {why}")
        self.layer = layer


def class_name(layer) -> str:
    """``LSTM`` for Keras's own classes, ``module.Class`` for a user's (a user's ``Attention`` is not
    ``keras.layers.Attention``)."""
    cls = type(layer)
    return cls.__name__ if _is_library_class(cls) else f"{cls.__module__}.{cls.__qualname__}"


class Context:
    """What every propagator needs to know: dtype and the rules.

    Args:
        dtype: the compute dtype.
        eps: the default epsilon-rule of every linear map.
        gate_rule: the rule of every gate x signal product (one of ``GATE_RULES``).
        composite: per-layer rule overrides (:class:`~keras_lrp.composites.Composite`).
        caches: whether forward passes keep what the relevance pass reads (True); False for a walk
            whose forward pass alone is used (the gradient and perturbation baselines): its
            recurrent loops then stack only their hidden states.
    """

    def __init__(self, dtype: str, eps: Epsilon, gate_rule: str, composite: Optional[Composite] = None,
                 caches: bool = True):
        if gate_rule not in GATE_RULES:
            raise ValueError(f"rule must be one of {GATE_RULES}, got {gate_rule!r}.")
        self.dtype, self.eps, self.gate_rule, self.caches = dtype, eps, gate_rule, caches
        self.composite = composite if composite is not None else Composite()

    def with_gate_rule(self, gate_rule: str) -> "Context":
        """This context with another default gate rule (for one layer's propagator)."""
        if gate_rule == self.gate_rule:
            return self
        return Context(self.dtype, self.eps, gate_rule, self.composite, self.caches)

    def gate_rule_for(self, layer) -> str:
        """The name of the gate rule of ``layer``'s gate x signal products: the composite's choice
        (a :class:`~keras_lrp.rules.GateRule`), else the default."""
        rule = self.composite.rule_for(layer)
        return rule.name if isinstance(rule, GateRule) else self.gate_rule

    def linear_rule(self, layer) -> LinearRule:
        """The rule of ``layer``'s linear map: the composite's choice, else the default epsilon-rule."""
        rule = self.composite.rule_for(layer)
        return self.eps if rule is None else rule

    def weight(self, variable):
        """A Keras variable's current value, in the compute dtype."""
        return ops.cast(variable.value, self.dtype)


class Propagator:
    """Base: a single-input single-output layer. Subclasses implement ``forward1`` and ``relevance1``."""

    #: whether a Composite may give this layer a rule object (ZPlus, AlphaBeta, Gamma, Epsilon)
    accepts_rules = False
    #: whether a Composite may give this layer a gate rule (SignalTakeAll, Half, Proportional)
    accepts_gate_rules = False
    #: whether steps appended at the end of a masked sequence (post-padding) leave this call's outputs at the
    #: steps before them unchanged, bit for bit, and get no relevance: a per-time-step (or element-wise)
    #: layer, or a recurrent layer that skips masked steps (see :meth:`keras_lrp.walk.Walk.post_padding_safe`)
    post_padding_safe = False
    #: see :attr:`runs_as_keras` (a propagator sets it with :meth:`_keras_may_run`)
    _as_keras = False

    def __init__(self, layer, ctx: Context, is_output: bool = False):
        self.layer, self.ctx, self.is_output = layer, ctx, is_output

    @property
    def runs_as_keras(self) -> bool:
        """Whether the walk runs this call as Keras runs it: in a walk without a relevance pass (the
        gradient and perturbation baselines) the same function, where Keras's own code is cheaper to
        differentiate than the propagator's forward pass (recurrences, attention; :meth:`_keras_may_run`)."""
        return self._as_keras

    def _keras_may_run(self, layers) -> bool:
        """Whether a walk without caches may run this call as Keras does: no relevance pass follows, it
        is not the explained output (whose pre-activation the propagator gives), and every one of
        ``layers`` computes in the explainer's dtype."""
        return not self.ctx.caches and not self.is_output and all(
            str(sub.compute_dtype) == self.ctx.dtype == str(sub.variable_dtype) for sub in layers)

    @classmethod
    def handles(cls, layer) -> bool:
        """Whether this propagator explains ``layer`` as configured (a registered layer type it does not
        handle, e.g. ``TimeDistributed`` around another layer, is traced into its calls instead)."""
        return True

    def out_mask(self, x, mask):
        if mask is None or not self.layer.supports_masking:
            return None
        return self.layer.compute_mask(x, mask)

    def forward(self, inputs: List, masks: List):
        y, cache = self.forward1(inputs[0], masks[0])
        return [y], [self.out_mask(inputs[0], masks[0])], cache

    def relevance(self, cache, r_outs: List):
        r_in, rest = self.relevance1(cache, r_outs[0])
        return [r_in], rest

    #: the output activation :meth:`activate` applies ("softmax", "sigmoid", ...), None for identity
    @property
    def activation_name(self) -> Optional[str]:
        return None

    def activate(self, y):
        """The output layer's forward pass stops at the explained pre-activation: this maps it to
        what the layer itself outputs (its activation; identity for most layers). Used only to
        compare the explainer's forward pass with the model's own output."""
        return y

    def forward1(self, x, mask):
        raise NotImplementedError

    def relevance1(self, cache, r):
        raise NotImplementedError


@dataclass(frozen=True)
class RegistryRow:
    """One registry entry: the layer types, the propagator class and the rule in words."""

    layers: Tuple[type, ...]
    propagator: Type[Propagator]
    rule: str


_REGISTRY: Dict[type, RegistryRow] = {}
_ROWS: List[RegistryRow] = []
_REFUSED: Dict[type, str] = {}


def register(*layer_types: type, rule: str) -> Callable[[Type[Propagator]], Type[Propagator]]:
    """Class decorator: ``propagator`` handles ``layer_types`` (and their subclasses, unless a
    subclass has a row of its own); ``rule`` says in words what it does, for the docs.

    This is also how a user gives their own layer a rule (``keras_lrp.register``); registering a user's
    class again (a notebook cell run twice) replaces its propagator."""
    if not layer_types or not all(isinstance(t, type) for t in layer_types):
        raise TypeError(f"register takes layer classes, got {layer_types!r}.")
    if not isinstance(rule, str) or not rule.strip():
        raise TypeError("register needs rule=, a sentence saying what the propagator does (for the docs).")

    def deco(propagator: Type[Propagator]) -> Type[Propagator]:
        if not (isinstance(propagator, type) and issubclass(propagator, Propagator)):
            raise TypeError(f"@register decorates a keras_lrp Propagator subclass, got {propagator!r}.")
        row = RegistryRow(tuple(layer_types), propagator, rule)
        for t in layer_types:
            old = _REGISTRY.get(t)
            if old is not None:
                if _is_library_class(t) or _is_library_class(old.propagator):
                    raise ValueError(f"{t.__name__} is registered twice ({old.propagator.__name__}, "
                                     f"{propagator.__name__}).")
                _ROWS.remove(old)
                for other in old.layers:
                    _REGISTRY.pop(other, None)
            _REGISTRY[t] = row
        _ROWS.append(row)
        return propagator
    return deco


def unregister(*layer_types: type) -> None:
    """Remove a user's layer types from the registry (their layers are traced again)."""
    for t in layer_types:
        if _is_library_class(t):
            raise ValueError(f"{t.__name__} is one of keras_lrp's own rules; it cannot be unregistered.")
        row = _REGISTRY.pop(t, None)
        if row is not None and not any(r is row for r in _REGISTRY.values()):
            _ROWS.remove(row)


def _is_library_class(cls: type) -> bool:
    return cls.__module__.split(".")[0] in ("keras", "keras_lrp")


def refuse(layer_type: type, why: str) -> None:
    """Layers of ``layer_type`` are refused with ``why`` (rather than the generic message)."""
    _REFUSED[layer_type] = why


def lookup(layer) -> Optional[RegistryRow]:
    for cls in type(layer).__mro__:
        if cls in _REFUSED:
            return None
        if cls in _REGISTRY:
            return _REGISTRY[cls]
    return None


def refusal_reason(layer) -> Optional[str]:
    """Why layers of this type have no rule (:func:`refuse`), or None."""
    return next((why for cls, why in _REFUSED.items() if isinstance(layer, cls)), None)


def handles(layer) -> bool:
    """Whether the registry has a propagator that explains ``layer`` as it is configured."""
    row = lookup(layer)
    return row is not None and row.propagator.handles(layer)


def propagator_for(layer, ctx: Context, is_output: bool = False) -> Propagator:
    """The propagator for ``layer``, or :class:`UnsupportedLayerError` saying why there is none."""
    row = lookup(layer)
    if row is not None:
        return row.propagator(layer, ctx, is_output)
    why = next((w for cls, w in _REFUSED.items() if isinstance(layer, cls)), None)
    if why is None:
        names = ", ".join(sorted(t.__name__ for t in _REGISTRY if issubclass(t, keras.layers.Layer)))
        why = f"there is no LRP rule for this layer type. Supported: {names}."
    raise UnsupportedLayerError(layer, why)


def supported_layers() -> List[RegistryRow]:
    """The registry, in registration order: one row per propagator."""
    return list(_ROWS)
