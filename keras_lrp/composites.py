"""Composites: which rule each layer gets (zennit's composites, Captum's per-layer rules).

By default every linear map uses the epsilon-rule of the explainer (``eps``, ``bias_factor``) and
every gate x signal product the explainer's gate rule. A :class:`Composite` overrides the rule of
chosen layers, by layer name (first) or by layer type (most specific class first)::

    from keras_lrp import Composite, Gamma, ZPlus
    e = keras_lrp.explain(model, x, layer_rules={"dense_head": ZPlus(), keras.layers.Conv1D: Gamma(0.25)})

A plain dict is turned into a Composite; rules may be given as objects or by short name
(:data:`RULE_NAMES`). Recurrent layers take a gate rule (``SignalTakeAll()``, ``Half()``,
``Proportional()``) for their gate x signal products.
"""
from __future__ import annotations

from typing import Dict, Mapping, Optional, Union

from .rules import LINEAR_RULES, AlphaBeta, Gamma, GateRule, LinearRule, ZPlus, as_gate_rule

__all__ = ["Composite", "RULE_NAMES", "as_composite", "LAYER_RULE_KEY"]

LAYER_RULE_KEY = Union[str, type]

#: Short names accepted wherever a rule is expected. ``"linear"`` declares a ``Lambda`` layer linear
#: (the epsilon-rule on its Jacobian); ``"epsilon"`` is the explainer's own epsilon-rule.
RULE_NAMES = {
    "epsilon": None,
    "zplus": ZPlus(),
    "alpha1beta0": AlphaBeta(1.0, 0.0),
    "alpha2beta1": AlphaBeta(2.0, 1.0),
    "gamma": Gamma(0.25),
    "linear": "linear",
}


def _as_rule(key, value):
    if isinstance(value, str):
        if value not in RULE_NAMES:
            raise ValueError(f"layer_rules[{key!r}] = {value!r} is not a rule name; use one of "
                             f"{sorted(RULE_NAMES)} or a rule object ({', '.join(c.__name__ for c in LINEAR_RULES)}).")
        return RULE_NAMES[value]
    if isinstance(value, GateRule):
        return as_gate_rule(value)
    if not isinstance(value, LINEAR_RULES):
        raise TypeError(f"layer_rules[{key!r}] must be a rule object ({', '.join(c.__name__ for c in LINEAR_RULES)}, "
                        f"or a gate rule SignalTakeAll / Half / Proportional for recurrent layers) or a rule name, "
                        f"got {type(value).__name__}.")
    return value


class Composite:
    """A mapping from layer names and layer types to rules.

    Args:
        rules: ``{layer name or layer class: rule}``; a rule is a :class:`~keras_lrp.rules.Epsilon`,
            :class:`~keras_lrp.rules.ZPlus`, :class:`~keras_lrp.rules.Gamma` or
            :class:`~keras_lrp.rules.AlphaBeta` object, or a name of :data:`RULE_NAMES`.
    """

    def __init__(self, rules: Optional[Mapping[LAYER_RULE_KEY, Union[str, LinearRule]]] = None):
        self.by_name: Dict[str, object] = {}
        self.by_type: Dict[type, object] = {}
        for key, value in (rules or {}).items():
            rule = _as_rule(key, value)
            if isinstance(key, str):
                self.by_name[key] = rule
            elif isinstance(key, type):
                self.by_type[key] = rule
            else:
                raise TypeError(f"layer_rules keys must be layer names (str) or layer classes, got {key!r}.")

    def rule_for(self, layer) -> Optional[object]:
        """The rule chosen for ``layer``, or None for the explainer's default."""
        if layer.name in self.by_name:
            return self.by_name[layer.name]
        for cls in type(layer).__mro__:
            if cls in self.by_type:
                return self.by_type[cls]
        return None

    def linear_names(self) -> list:
        """The names of the layers declared linear (``"linear"``: Lambda layers kept whole)."""
        return [name for name, rule in self.by_name.items() if rule == "linear"]

    def unknown_names(self, layer_names) -> list:
        """The names this composite mentions that are not in ``layer_names``."""
        return sorted(set(self.by_name) - set(layer_names))

    def key(self) -> tuple:
        """A hashable summary (rule objects are frozen dataclasses), for caching explainers."""
        return (tuple(sorted(self.by_name.items())),
                tuple(sorted(((t.__module__, t.__qualname__), r) for t, r in self.by_type.items())))

    def check_names(self, layer_names) -> None:
        """Refuse names that are not layers of the model (before anything is built)."""
        unknown = self.unknown_names(layer_names)
        if unknown:
            raise ValueError(f"layer_rules names {unknown}, which are not layers of the model; its layers are "
                             f"{list(layer_names)}.")

    def check(self, propagators) -> None:
        """Refuse, before any computation, rules on layers that cannot take them: rule objects apply
        to Dense / TimeDistributed(Dense) / Conv1D, gate rules to recurrent layers. ('linear' is
        checked by the walk, which builds the propagator of a Lambda declared linear.)"""
        for p in propagators:
            rule = self.rule_for(p.layer)
            if rule is None or rule == "linear":
                continue
            if isinstance(rule, GateRule):
                ok, what = getattr(p, "accepts_gate_rules", False), "has no gates: gate rules apply to " \
                    "recurrent layers (LSTM, GRU, RNN, Bidirectional)"
            else:
                ok, what = getattr(p, "accepts_rules", False), "cannot take it: rule objects apply to " \
                    "Dense, TimeDistributed(Dense) and Conv1D layers"
            if not ok:
                raise ValueError(f"layer_rules gives {rule!r} to layer {p.layer.name!r} "
                                 f"({type(p.layer).__name__}), which {what}.")

    def __bool__(self) -> bool:
        return bool(self.by_name or self.by_type)

    def __repr__(self) -> str:
        items = [f"{k!r}: {v!r}" for k, v in self.by_name.items()]
        items += [f"{k.__name__}: {v!r}" for k, v in self.by_type.items()]
        return "Composite({" + ", ".join(items) + "})"


def as_composite(layer_rules) -> Composite:
    """``None``, a dict or a :class:`Composite` -> a :class:`Composite`."""
    if layer_rules is None:
        return Composite()
    if isinstance(layer_rules, Composite):
        return layer_rules
    if isinstance(layer_rules, Mapping):
        return Composite(layer_rules)
    raise TypeError(f"layer_rules must be a dict {{layer name or class: rule}} or a Composite, "
                    f"got {type(layer_rules).__name__}.")
