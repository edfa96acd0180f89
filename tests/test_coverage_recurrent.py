"""Recurrent layers: keras_lrp.explain vs the numpy GRU / LSTM oracles of tests/oracle_layers.py.

GRU (reset_after True / False) and LSTM, forward / go_backwards / Bidirectional, gate rules
all / half / prop; stacks; Bidirectional merge modes (and merge_mode=None + Concatenate); a
sequence tagger with timestep targets; a regression head. float64, perturbed random weights.
"""
import numpy as np
import keras
import pytest

import keras_lrp
import oracle
import oracle_layers as OL

L = keras.layers
T, F, UNITS, CLASSES = 5, 4, 3, 3
RULES = ["all", "half", "prop"]
TARGETS = np.array([0, 2, 1])


def x_float(seed=0, batch=3, steps=T):
    return OL.random_sequences(seed, batch, steps, F)


def sequential(layers, seed=0, steps=None):
    return OL.sequential_model(layers, F, seed, steps)


def rnn(kind, direction, units=UNITS, **kw):
    layer = {"lstm": L.LSTM, "gru": L.GRU}[kind](units, go_backwards=(direction == "backwards"), **kw)
    return L.Bidirectional(layer) if direction == "bidi" else layer


# (direction, rule, eps, bias_factor): every direction and every rule for each GRU variant, the
# epsilon settings alternating; one compiled explainer per case keeps the file fast.
GRU_CASES = {True: [("forward", "all", 1e-3, 0.0), ("backwards", "half", 0.01, 1.0), ("bidi", "prop", 1e-3, 0.0)],
             False: [("bidi", "all", 0.01, 1.0), ("forward", "half", 1e-3, 0.0), ("backwards", "prop", 0.01, 1.0)]}


@pytest.mark.parametrize("reset_after,direction,rule,eps,bf",
                         [(ra,) + c for ra, cases in GRU_CASES.items() for c in cases])
def test_gru_matches_oracle(reset_after, direction, rule, eps, bf):
    model = sequential(lambda: [rnn("gru", direction, reset_after=reset_after), L.Dense(CLASSES)],
                       seed=3 * reset_after + len(direction))
    OL.check_explain(model, x_float(1), TARGETS, OL.Ctx(eps, bf, rule))


@pytest.mark.parametrize("direction,rule,eps,bf", [("forward", "half", 1e-3, 0.0), ("backwards", "prop", 0.01, 1.0),
                                                   ("bidi", "half", 0.01, 1.0), ("bidi", "prop", 1e-3, 0.0)])
def test_lstm_gate_rules_match_oracle(direction, rule, eps, bf):
    model = sequential(lambda: [rnn("lstm", direction), L.Dense(CLASSES)], seed=len(direction))
    OL.check_explain(model, x_float(2), TARGETS, OL.Ctx(eps, bf, rule))


@pytest.mark.parametrize("kind,rule", [("lstm", "half"), ("lstm", "prop"), ("gru", "all"), ("gru", "prop")])
def test_conservation_float64(kind, rule):
    """eps = 0, bias_factor = 1: sum(relevance) + rest == explained score, for every gate rule."""
    model = sequential(lambda: [rnn(kind, "bidi", return_sequences=True), rnn(kind, "forward"), L.Dense(CLASSES)],
                       seed=9)
    OL.check_explain(model, x_float(3), TARGETS, OL.Ctx(0.0, 1.0, rule))


@pytest.mark.parametrize("kind,rule", [
    ("lstm", "prop"),
    pytest.param("gru", "half", marks=pytest.mark.skipif(
        keras.config.backend() == "jax", reason="Keras 3.15's own GRU(use_bias=False) fails on JAX with float64 "
                                                "enabled (its scan carry changes dtype)"))])
def test_other_activations_and_no_bias(kind, rule):
    """The cell's own activation / recurrent_activation are used (they matter for "prop")."""
    layer = {"lstm": L.LSTM, "gru": L.GRU}[kind]
    model = sequential(lambda: [layer(UNITS, activation="relu", recurrent_activation="hard_sigmoid", use_bias=False),
                                L.Dense(CLASSES)], seed=11)
    OL.check_explain(model, x_float(4), TARGETS, OL.Ctx(0.01, 1.0, rule))


@pytest.mark.parametrize("cell,rule", [("lstm", "half"), ("gru", "prop")])
def test_rnn_wrapping_keras_cells(cell, rule):
    """keras.layers.RNN(LSTMCell / GRUCell), also inside Bidirectional."""
    make = {"lstm": L.LSTMCell, "gru": L.GRUCell}[cell]
    model = sequential(lambda: [L.RNN(make(UNITS), return_sequences=True),
                        L.Bidirectional(L.RNN(make(2))), L.Dense(CLASSES)], seed=13)
    OL.check_explain(model, x_float(13), TARGETS, OL.Ctx(0.01, 1.0, rule))


@pytest.mark.parametrize("direction", ["forward", "backwards", "bidi"])
def test_lstm_oracle_all_rule_agrees_with_arras_oracle(direction):
    """Cross-check of the two independent oracles (tests/oracle.py, tests/oracle_layers.py)."""
    model = sequential(lambda: [rnn("lstm", direction), L.Dense(CLASSES)], seed=5)
    x = x_float(5)
    ctx = OL.Ctx(0.01, 1.0, "all")
    r, rest, scores = OL.explain_chain(model, x, TARGETS, ctx)
    w = [np.asarray(a, np.float64) for a in model.get_weights()]
    for i in range(len(x)):
        r2, rest2, s2 = oracle.explain_bilstm_dense(x[i], TARGETS[i], w, 0.01, 1.0,
                                                    bidirectional=(direction == "bidi"),
                                                    go_backwards=(direction == "backwards"))
        np.testing.assert_allclose(r[i], r2, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(rest[i], rest2, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(scores[i], s2, rtol=1e-12)


# --------------------------------------------------------------------------- stacks

STACKS = {
    "lstm_gru_bilstm": lambda: [L.LSTM(3, return_sequences=True), L.GRU(2, return_sequences=True),
                                L.Bidirectional(L.LSTM(2))],
    "gru_back_lstm": lambda: [L.GRU(3, return_sequences=True, go_backwards=True), L.LSTM(4)],
    "bigru_sum_bilstm_ave": lambda: [L.Bidirectional(L.GRU(3, return_sequences=True, reset_after=False),
                                                     merge_mode="sum"),
                                     L.Bidirectional(L.LSTM(2), merge_mode="ave")],
    "bilstm_lstm_back_gap": lambda: [L.Bidirectional(L.LSTM(2, return_sequences=True)),
                                     L.LSTM(3, return_sequences=True, go_backwards=True),
                                     L.GlobalAveragePooling1D()],
}


@pytest.mark.parametrize("name,rule", [(name, RULES[n % 3]) for n, name in enumerate(sorted(STACKS))]
                         + [("lstm_gru_bilstm", "half")])
def test_stacks_match_composed_oracle(name, rule):
    model = sequential(lambda: STACKS[name]() + [L.Dense(CLASSES)], seed=len(name))
    OL.check_explain(model, x_float(6), TARGETS, OL.Ctx(0.01, 1.0, rule))


# --------------------------------------------------------------------------- merge modes

MERGE_CASES = [(("lstm", "gru")[(i + rs) % 2], merge, rs) for i, merge in enumerate(("concat", "sum", "ave"))
               for rs in (False, True)]


@pytest.mark.parametrize("kind,merge,return_sequences,rule,eps,bf",
                         [c + (RULES[i % 3],) + [(0.01, 1.0), (0.0, 1.0)][i % 2] for i, c in enumerate(MERGE_CASES)])
def test_bidirectional_merge_modes(kind, merge, return_sequences, rule, eps, bf):
    layer = {"lstm": L.LSTM, "gru": L.GRU}[kind]
    head = [L.Flatten()] if return_sequences else []
    model = sequential(lambda: [L.Bidirectional(layer(UNITS, return_sequences=return_sequences), merge_mode=merge)]
                       + head + [L.Dense(CLASSES)],
                       seed=len(merge), steps=T)
    OL.check_explain(model, x_float(7), TARGETS, OL.Ctx(eps, bf, rule))


@pytest.mark.parametrize("return_sequences,rule", [(False, "all"), (True, "prop")])
def test_bidirectional_merge_none_then_concatenate(return_sequences, rule):
    """merge_mode=None + Concatenate is the same function as merge_mode="concat": same relevance."""
    keras.utils.set_random_seed(2)
    inp = keras.Input((T, F))
    y_f, y_b = L.Bidirectional(L.GRU(UNITS, return_sequences=return_sequences), merge_mode=None)(inp)
    h = L.Concatenate()([y_f, y_b])
    if return_sequences:
        h = L.Flatten()(h)
    model = OL.perturb(keras.Model(inp, L.Dense(CLASSES)(h)), 3)
    head = [L.Flatten()] if return_sequences else []
    twin = keras.Sequential([keras.Input((T, F)),
                             L.Bidirectional(L.GRU(UNITS, return_sequences=return_sequences))] + head
                            + [L.Dense(CLASSES)])
    twin.set_weights(model.get_weights())
    x = x_float(8)
    ctx = OL.Ctx(0.01, 1.0, rule)
    e = keras_lrp.explain(model, x, TARGETS, eps=0.01, bias_factor=1.0, rule=rule, dtype="float64")
    r, rest, scores = OL.explain_chain(twin, x, TARGETS, ctx)
    OL.assert_close_rel(e.scores, scores, 1e-10, "scores")
    OL.assert_close_rel(e.relevance, r)
    np.testing.assert_allclose(e.rest, rest, rtol=1e-8, atol=1e-10)


# --------------------------------------------------------------------------- sequence tagger

def tagger(seed=0):
    return sequential(lambda: [L.Bidirectional(L.LSTM(UNITS, return_sequences=True)),
                       L.TimeDistributed(L.Dense(CLASSES))], seed=seed)


@pytest.mark.parametrize("rule", ["half"])
def test_tagger_int_timestep(rule):
    model = tagger()
    x = x_float(9)
    for step in (0, 2, T - 1):
        e = OL.check_explain(model, x, TARGETS, OL.Ctx(0.01, 1.0, rule), timesteps=np.full(3, step))
        np.testing.assert_array_equal(e.timestep, step)
    # an int timestep and a negative one mean the same as the per-sample array
    e_int = keras_lrp.explain(model, x, TARGETS, timestep=T - 1, eps=0.01, bias_factor=1.0, rule=rule,
                              dtype="float64")
    e_neg = keras_lrp.explain(model, x, TARGETS, timestep=-1, eps=0.01, bias_factor=1.0, rule=rule,
                              dtype="float64")
    np.testing.assert_array_equal(e_int.relevance, e.relevance)
    np.testing.assert_array_equal(e_neg.relevance, e.relevance)
    np.testing.assert_array_equal(e_neg.timestep, T - 1)


@pytest.mark.parametrize("eps,bf", [(1e-3, 0.0), (0.0, 1.0)])
def test_tagger_per_sample_timesteps(eps, bf):
    model = tagger(seed=1)
    x = x_float(10, batch=3, steps=6)
    steps = np.array([5, 0, 3])
    OL.check_explain(model, x, TARGETS, OL.Ctx(eps, bf, "all"), timesteps=steps)
    # predicted class at each sample's own timestep
    e = keras_lrp.explain(model, x, timestep=steps, dtype="float64")
    out = OL.model_output(model, x)[np.arange(3), steps]
    np.testing.assert_array_equal(e.target, out.argmax(-1))


def pooled_tagger():
    """The output time axis is shorter than the input's: (batch, T // 2, classes)."""
    return sequential(lambda: [L.MaxPooling1D(2), L.LSTM(UNITS, return_sequences=True),
                       L.TimeDistributed(L.Dense(CLASSES))], seed=6, steps=6)


def test_tagger_after_pooling_output_timesteps():
    model = pooled_tagger()
    x = x_float(14, steps=6)
    OL.check_explain(model, x, TARGETS, OL.Ctx(0.01, 1.0, "all"), timesteps=np.array([2, 0, 1]))
    e = keras_lrp.explain(model, x, TARGETS, timestep=-1, dtype="float64")
    np.testing.assert_array_equal(e.timestep, 2)


@pytest.mark.parametrize("timestep", [3, 5, -4])
def test_tagger_after_pooling_rejects_timestep_beyond_output(timestep):
    model = pooled_tagger()
    with pytest.raises(ValueError, match="timestep"):
        keras_lrp.explain(model, x_float(14, steps=6), TARGETS, timestep=timestep, dtype="float64")


def test_stacked_gru_tagger_half_rule():
    model = sequential(lambda: [L.GRU(UNITS, return_sequences=True), L.Bidirectional(L.GRU(2, return_sequences=True),
                                                                             merge_mode="sum"),
                        L.TimeDistributed(L.Dense(CLASSES, activation="softmax"))], seed=4)
    x = x_float(11)
    OL.check_explain(model, x, TARGETS, OL.Ctx(0.0, 1.0, "half"), timesteps=np.array([1, 4, 2]),
                     against_model=False)


def test_recurrent_layer_as_output():
    """No Dense head: the explained scores are the hidden states themselves."""
    model = sequential(lambda: [L.LSTM(UNITS, return_sequences=True), L.Bidirectional(L.GRU(2, return_sequences=True),
                                                                                merge_mode="ave")], seed=15)
    OL.check_explain(model, x_float(15), np.array([0, 1, 1]), OL.Ctx(0.0, 1.0, "half"),
                     timesteps=np.array([4, 0, 2]))


# --------------------------------------------------------------------------- regression

@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_regression_single_output(kind):
    model = sequential(lambda: [rnn(kind, "forward"), L.Dense(1)], seed=12)
    x = x_float(12, batch=2)
    e = OL.check_explain(model, x, np.zeros(2, int), OL.Ctx(0.0, 1.0, "all"))
    default = keras_lrp.explain(model, x, eps=0.0, bias_factor=1.0, dtype="float64")
    np.testing.assert_array_equal(default.target, 0)
    np.testing.assert_array_equal(default.relevance, e.relevance)
    assert e.scores.shape == (2, 1)
