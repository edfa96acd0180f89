"""Rule objects (ZPlus, AlphaBeta, Gamma, per-layer Epsilon) and composites, against plain numpy.

The oracle writes each rule on the explicit contribution matrix ``z_kj = x_k w_kj`` of a Dense layer
or of a Conv1D layer unrolled into its (T*C_in, T_out*C_out) matrix; it shares no code with keras_lrp.
"""
import keras
import numpy as np
import pytest

import keras_lrp
from keras_lrp import AlphaBeta, Composite, Epsilon, Gamma, ZPlus

T, C = 5, 3
RNG = np.random.default_rng(7)


# --------------------------------------------------------------------------- numpy oracle

def np_alphabeta(x, w, r, alpha, beta):
    z = x[:, None] * w
    zp, zn = np.maximum(z, 0), np.minimum(z, 0)
    sp, sn = zp.sum(0), zn.sum(0)
    out = np.zeros(len(x))
    for j in range(w.shape[1]):
        if sp[j] != 0:
            out += alpha * zp[:, j] / sp[j] * r[j]
        if beta and sn[j] != 0:
            out -= beta * zn[:, j] / sn[j] * r[j]
    return out


def np_gamma(x, w, b, r, gamma, eps):
    wm = w + gamma * np.maximum(w, 0)
    z = x[:, None] * wm
    den = z.sum(0) + (0 if b is None else b + gamma * np.maximum(b, 0))
    den = den + eps * np.where(den >= 0, 1.0, -1.0)
    return (z / np.where(den == 0, np.inf, den) * r).sum(1)


def np_epsilon(x, w, b, r, eps, bias_factor):
    z = x @ w + (0 if b is None else b)
    sign = np.where(z >= 0, 1.0, -1.0)
    num = x[:, None] * w + bias_factor * ((0 if b is None else b) + eps * sign) / len(x)
    return (num / (z + eps * sign) * r).sum(1)


def np_rule(rule, x, w, b, r):
    if isinstance(rule, Gamma):
        return np_gamma(x, w, b, r, rule.gamma, rule.eps)
    if isinstance(rule, AlphaBeta):
        return np_alphabeta(x, w, r, rule.alpha, rule.beta)
    return np_epsilon(x, w, b, r, rule.eps, rule.bias_factor)


def conv_matrix(kernel, length):
    """Conv1D (valid, stride 1) as a dense matrix on the flattened (length * C_in) input."""
    k, c_in, c_out = kernel.shape
    t_out = length - k + 1
    m = np.zeros((length * c_in, t_out * c_out))
    for t in range(t_out):
        for tap in range(k):
            m[(t + tap) * c_in:(t + tap + 1) * c_in, t * c_out:(t + 1) * c_out] = kernel[tap]
    return m


def oracle(model, x, target, rules, eps=1e-3):
    """conv(relu) -> flatten -> dense(relu) -> dense, one sample; ``rules`` = per layer name."""
    conv, d1, d2 = (model.get_layer(n) for n in ("conv", "hidden", "head"))
    kc, bc = [np.float64(a) for a in conv.get_weights()]
    w1, b1 = [np.float64(a) for a in d1.get_weights()]
    w2, b2 = [np.float64(a) for a in d2.get_weights()]
    mc = conv_matrix(kc, T)
    bcf = np.tile(bc, T - kc.shape[0] + 1)
    a0 = x.reshape(-1)
    a1 = np.maximum(a0 @ mc + bcf, 0)
    a2 = np.maximum(a1 @ w1 + b1, 0)
    scores = a2 @ w2 + b2
    r = np.zeros_like(scores)
    r[target] = scores[target]
    default = Epsilon(eps, 0.0)
    r = np_rule(rules.get(d2.name, default), a2, w2, b2, r)
    r = np_rule(rules.get(d1.name, default), a1, w1, b1, r)
    crule = rules.get(conv.name, default)
    assert not isinstance(crule, Epsilon) or crule.bias_factor == 0   # conv bias share: local fan-in, not modelled
    r = np_rule(crule, a0, mc, bcf, r)
    return r.reshape(x.shape), scores


def make_model(bias=True, activation="relu", seed=7):
    rng = np.random.default_rng(seed)
    inp = keras.Input((T, C))
    h = keras.layers.Conv1D(4, 2, activation=activation, use_bias=bias, name="conv")(inp)
    h = keras.layers.Flatten(name="flat")(h)
    h = keras.layers.Dense(6, activation=activation, use_bias=bias, name="hidden")(h)
    out = keras.layers.Dense(3, use_bias=bias, name="head")(h)
    model = keras.Model(inp, out)
    model.set_weights([rng.normal(size=w.shape) * 0.7 for w in model.get_weights()])
    return model


CASES = [
    {"head": ZPlus()},
    {"hidden": AlphaBeta(2.0, 1.0), "head": ZPlus()},
    {"conv": Gamma(0.25), "hidden": Gamma(0.5, eps=1e-2)},
    {keras.layers.Dense: "alpha1beta0", "conv": "gamma"},
    {"hidden": Epsilon(0.1, 0.0), keras.layers.Conv1D: ZPlus()},
]


@pytest.mark.parametrize("rules", CASES)
def test_rule_objects_match_numpy_oracle(rules):
    model = make_model()
    x = RNG.normal(size=(4, T, C))
    e = keras_lrp.explain(model, x, target=1, dtype="float64", layer_rules=rules)
    comp = Composite(rules)
    names = {l.name: comp.rule_for(l) for l in model.layers}
    names = {k: v for k, v in names.items() if v is not None}
    for i in range(len(x)):
        r, scores = oracle(model, x[i], 1, names)
        np.testing.assert_allclose(e.scores[i], scores, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(e.relevance[i], r, rtol=1e-9, atol=1e-12 * np.abs(r).max())


def mixed_signs(model, x):
    """Whether every output of every linear map has positive and negative contributions (linear net)."""
    conv, d1, d2 = (model.get_layer(n) for n in ("conv", "hidden", "head"))
    a = x.reshape(-1)
    for w in (conv_matrix(conv.get_weights()[0], T), d1.get_weights()[0], d2.get_weights()[0]):
        z = a[:, None] * w
        connected = w != 0
        if not ((z > 0) & connected).any(0).all() or not ((z < 0) & connected).any(0).all():
            return False
        a = a @ w
    return True


def test_conserving_rules_conserve_without_bias():
    """z+, alpha-beta (alpha - beta = 1) and gamma (eps = 0) conserve relevance when no bias takes a
    share and every output has positive and negative contributions (an output without positive
    contributions passes nothing under z+: that is the rule, so such samples are left out here)."""
    model = make_model(bias=False, activation="linear", seed=3)
    x = np.random.default_rng(3).normal(size=(12, T, C))
    keep = np.array([mixed_signs(model, xi) for xi in x])
    assert keep.sum() >= 6
    for rules in ({keras.layers.Dense: ZPlus(), keras.layers.Conv1D: ZPlus()},
                  {keras.layers.Dense: AlphaBeta(2.0, 1.0), "conv": Gamma(0.3)}):
        e = keras_lrp.explain(model, x, target=0, eps=0.0, bias_factor=1.0, dtype="float64", layer_rules=rules)
        total = e.relevance.reshape(len(x), -1).sum(1) + e.rest
        np.testing.assert_allclose(total[keep], e.explained_score[keep], rtol=1e-8)


def test_default_composite_is_todays_behaviour():
    model = make_model()
    x = RNG.normal(size=(3, T, C))
    plain = keras_lrp.explain(model, x, dtype="float64")
    same = keras_lrp.explain(model, x, dtype="float64", layer_rules={"head": Epsilon(1e-3, 0.0)})
    np.testing.assert_array_equal(plain.relevance, same.relevance)
    other = keras_lrp.explain(model, x, dtype="float64", layer_rules={"head": ZPlus()})
    assert not np.allclose(plain.relevance, other.relevance)


def test_composite_name_beats_type_and_subclasses_match():
    comp = Composite({keras.layers.Dense: ZPlus(), "head": Gamma(0.1)})
    model = make_model()
    assert comp.rule_for(model.get_layer("head")) == Gamma(0.1)
    assert comp.rule_for(model.get_layer("hidden")) == ZPlus()
    assert comp.rule_for(model.get_layer("conv")) is None
    assert "head" in repr(comp) and "Dense" in repr(comp)


def test_bad_layer_rules_are_refused_before_computation():
    model = make_model()
    x = RNG.normal(size=(1, T, C))
    with pytest.raises(ValueError, match="not layers of the model"):
        keras_lrp.explain(model, x, layer_rules={"nope": ZPlus()})
    with pytest.raises(ValueError, match="not a rule name"):
        keras_lrp.explain(model, x, layer_rules={"head": "zplusplus"})
    with pytest.raises(TypeError, match="rule object"):
        keras_lrp.explain(model, x, layer_rules={"head": 3})
    with pytest.raises(ValueError, match="cannot take it"):
        keras_lrp.explain(model, x, layer_rules={"flat": ZPlus()})
    with pytest.raises(ValueError, match="'linear' is for Lambda layers"):
        keras_lrp.explain(model, x, layer_rules={"head": "linear"})
    with pytest.raises(ValueError, match="alpha - beta = 1"):
        AlphaBeta(2.0, 0.5)
    with pytest.raises(ValueError, match="Gamma gamma"):
        Gamma(-1.0)
    with pytest.raises(TypeError, match="dict"):
        keras_lrp.explain(model, x, layer_rules=[("head", ZPlus())])


# --------------------------------------------------------------------------- gate rules as objects

def _stack(seed=0):
    rng = np.random.default_rng(seed)
    inp = keras.Input((4, 3))
    h = keras.layers.LSTM(3, return_sequences=True, name="lower")(inp)
    h = keras.layers.Bidirectional(keras.layers.GRU(2), name="upper")(h)
    model = keras.Model(inp, keras.layers.Dense(2, name="head")(h))
    model.set_weights([rng.normal(size=w.shape) * 0.8 for w in model.get_weights()])
    return model, rng.normal(size=(3, 4, 3))


@pytest.mark.parametrize("name,obj", [("all", keras_lrp.SignalTakeAll()), ("half", keras_lrp.Half()),
                                      ("prop", keras_lrp.Proportional())])
def test_gate_rule_objects_are_the_named_rules(name, obj):
    model, x = _stack()
    by_name = keras_lrp.explain(model, x, dtype="float64", rule=name)
    by_object = keras_lrp.explain(model, x, dtype="float64", rule=obj)
    per_layer = keras_lrp.explain(model, x, dtype="float64", layer_rules={keras.layers.RNN: obj,
                                                                          keras.layers.Bidirectional: obj})
    np.testing.assert_array_equal(by_name.relevance, by_object.relevance)
    np.testing.assert_array_equal(by_name.relevance, per_layer.relevance)


def test_gate_rule_per_layer_mixes_and_conserves():
    """lower: half, upper: the default (signal-take-all); the result differs from both uniform
    choices and still conserves relevance (eps = 0, bias_factor = 1)."""
    model, x = _stack(1)
    kw = dict(dtype="float64", eps=0.0, bias_factor=1.0)
    mixed = keras_lrp.explain(model, x, layer_rules={"lower": keras_lrp.Half()}, **kw)
    for uniform in ("all", "half"):
        assert not np.allclose(mixed.relevance, keras_lrp.explain(model, x, rule=uniform, **kw).relevance)
    total = mixed.relevance.reshape(len(x), -1).sum(1) + mixed.rest
    np.testing.assert_allclose(total, mixed.explained_score, rtol=1e-8)


def test_gate_rules_only_on_recurrent_layers():
    model, x = _stack()
    with pytest.raises(ValueError, match="has no gates"):
        keras_lrp.explain(model, x, layer_rules={"head": keras_lrp.Half()})
    with pytest.raises(ValueError, match="rule must be one of"):
        keras_lrp.explain(model, x, rule="most")
