"""SimpleRNN / RNN(SimpleRNNCell): keras_lrp vs the numpy oracle of tests/oracle_attention.py (epsilon-rule
over [x_t, h_{t-1}], N = d + e), with masks, go_backwards, return_sequences and Bidirectional; float64
conservation; forward vs Keras; the cell interface (one entry per cell type)."""
import numpy as np
import keras
import pytest

import keras_lrp
import oracle_attention as OA
import oracle_layers as OL
from layer_checks import check_against_oracle
from keras_lrp.backend import compute_scope
from keras_lrp.propagators import UnsupportedLayerError
from keras_lrp.propagators.recurrent import CELL_RULES, cell_rule_for

L = keras.layers
T, F, UNITS, CLASSES = 5, 3, 3, 3
TARGETS = np.array([0, 2, 1])
VOCAB, EMB = 9, 3
IDS = np.array([[1, 2, 3, 0, 0], [4, 5, 6, 7, 8], [0, 3, 0, 2, 1]])


def sequential(layers, seed, tokens=False, dtype="float32"):
    """Input -> layers() (built in `dtype`), weights perturbed."""
    with OA.keras_dtype(dtype):
        keras.utils.set_random_seed(seed)
        first = [keras.Input((T,), dtype="int32")] if tokens else [keras.Input((T, F))]
        model = keras.Sequential(first + layers())
    return OL.perturb(model, seed + 100)


def check(model, x, ctx, tokens=False):
    layers = model.layers[1:] if tokens else model.layers
    return check_against_oracle(model, x, TARGETS, ctx, layers, embedding=model.layers[0] if tokens else None)


MODELS = {
    "forward": lambda: [L.SimpleRNN(UNITS), L.Dense(CLASSES)],
    "backwards_relu_no_bias": lambda: [L.SimpleRNN(UNITS, go_backwards=True, activation="relu", use_bias=False),
                                       L.Dense(CLASSES)],
    "bidi_stack": lambda: [L.Bidirectional(L.SimpleRNN(2, return_sequences=True)), L.SimpleRNN(UNITS),
                           L.Dense(CLASSES)],
    "bidi_sum": lambda: [L.Bidirectional(L.SimpleRNN(UNITS), merge_mode="sum"), L.Dense(CLASSES)],
    "rnn_cell_sequences": lambda: [L.RNN(L.SimpleRNNCell(UNITS), return_sequences=True, go_backwards=True),
                                   L.Flatten(), L.Dense(CLASSES)],
}
SETTINGS = [(1e-3, 0.0), (0.0, 1.0), (0.01, 1.0)]


@pytest.mark.parametrize("name,eps,bf", [(n, *SETTINGS[i % 3]) for i, n in enumerate(sorted(MODELS))])
def test_matches_oracle(name, eps, bf):
    model = sequential(MODELS[name], seed=len(name))
    check(model, OL.random_sequences(1, 3, T, F), OL.Ctx(eps, bf, "all"))


TOKEN_MODELS = {
    "masked": lambda: [L.Embedding(VOCAB, EMB, mask_zero=True), L.SimpleRNN(UNITS), L.Dense(CLASSES)],
    "masked_bidi_sequences": lambda: [L.Embedding(VOCAB, EMB, mask_zero=True),
                                      L.Bidirectional(L.SimpleRNN(2, return_sequences=True)),
                                      L.SimpleRNN(UNITS, go_backwards=True), L.Dense(CLASSES)],
}


@pytest.mark.parametrize("name", sorted(TOKEN_MODELS))
@pytest.mark.parametrize("eps,bf", [(0.0, 1.0), (0.01, 1.0)])
def test_embedding_mask_zero(name, eps, bf):
    model = sequential(TOKEN_MODELS[name], seed=4, tokens=True)
    e = check(model, IDS, OL.Ctx(eps, bf, "all"), tokens=True)
    assert np.all(e.word_relevance[IDS == 0] == 0.0)   # padded steps get exactly nothing


@pytest.mark.parametrize("name", ["bidi_stack", "rnn_cell_sequences"])
def test_forward_equals_keras(name):
    x = OL.random_sequences(3, 3, T, F)
    for dtype, tol in (("float64", 1e-12), ("float32", 1e-6)):
        model = sequential(MODELS[name], seed=len(name), dtype=dtype)
        with compute_scope():   # Keras's own float64 layers stay float64 on JAX / torch
            want = keras.ops.convert_to_numpy(model(x.astype(dtype)))
        e = keras_lrp.explain(model, x, TARGETS, dtype=dtype)
        np.testing.assert_allclose(e.scores, want, rtol=0, atol=tol * np.abs(want).max())


def test_gate_rules_do_not_change_a_gateless_cell():
    """SimpleRNN has no gate x signal products: "all", "half" and "prop" give the same relevance."""
    model = sequential(MODELS["bidi_stack"], seed=6)
    x = OL.random_sequences(2, 3, T, F)
    r = [keras_lrp.explain(model, x, TARGETS, eps=0.01, bias_factor=1.0, rule=g, dtype="float64").relevance
         for g in ("all", "half", "prop")]
    np.testing.assert_array_equal(r[0], r[1])
    np.testing.assert_array_equal(r[0], r[2])


def test_cell_interface_one_entry_per_cell():
    """LSTM, GRU and SimpleRNN (and LRP_LSTMCell, through its base class) are entries of CELL_RULES;
    an unknown cell is refused by name."""
    assert {c.__name__ for c in CELL_RULES} >= {"LSTMCell", "GRUCell", "SimpleRNNCell"}
    assert cell_rule_for(L.RNN(keras_lrp.LRP_LSTMCell(2))) is CELL_RULES[L.LSTMCell]
    assert cell_rule_for(L.SimpleRNN(2)).name == "SimpleRNN"

    class MyCell(L.Layer):
        state_size = 2

        def call(self, x, states):
            return x[..., :2], states

    model = keras.Sequential([keras.Input((T, F)), L.RNN(MyCell()), L.Dense(CLASSES)])
    with pytest.raises(UnsupportedLayerError, match="MyCell; supported cells: LSTMCell, GRUCell, SimpleRNNCell"):
        keras_lrp.explain(model, OL.random_sequences(0, 1, T, F), 0)
