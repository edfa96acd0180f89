"""RNN(StackedRNNCells([...])) (also what ``keras.layers.RNN([cell_1, cell_2])`` builds), in models written
with the functional API: explained as the chain of its cells, each by its own rule, against the plain-numpy
LSTM / GRU oracles of tests/oracle_layers.py chained (``StackedCells``), and against the same network
written as a chain of RNN layers (also for SimpleRNN cells). float64; scores = the model's output;
conservation with eps = 0, bias_factor = 1. Masks, returned and initial states: tests/test_masking.py,
tests/test_states.py.
"""
import numpy as np
import keras
import pytest

import keras_lrp
import oracle_layers as OL

L = keras.layers
T, F, CLASSES = 5, 3, 3
TARGETS = np.array([0, 2, 1])
X = OL.random_sequences(0, 3, T, F)


def functional(recurrent, seed, head=()):
    """Input -> a new layer from ``recurrent()`` -> head layers -> Dense, perturbed weights."""
    keras.utils.set_random_seed(seed)
    inp = keras.Input((T, F))
    h = recurrent()(inp)
    for layer in head:
        h = layer(h)
    return OL.perturb(keras.Model(inp, L.Dense(CLASSES)(h)), seed + 1)


CASES = {
    "lstm_gru": (lambda: L.RNN([L.LSTMCell(3), L.GRUCell(2)]), (), OL.Ctx(0.0, 1.0, "all")),
    "gru_lstm_backwards_sequences": (
        lambda: L.RNN(L.StackedRNNCells([L.GRUCell(3, reset_after=False), L.LSTMCell(2)]), return_sequences=True,
                      go_backwards=True), (L.Flatten(),), OL.Ctx(1e-3, 0.0, "half")),
    "three_cells": (lambda: L.RNN([L.GRUCell(2), L.GRUCell(3), L.LSTMCell(2, activation="relu")]), (),
                    OL.Ctx(0.0, 1.0, "half")),
    "bidirectional_sum": (lambda: L.Bidirectional(L.RNN([L.LSTMCell(2), L.LSTMCell(2)], return_sequences=True),
                                                  merge_mode="sum"), (L.Flatten(),), OL.Ctx(0.01, 1.0, "prop")),
    "bidirectional_concat": (lambda: L.Bidirectional(L.RNN([L.GRUCell(2), L.LSTMCell(3)])), (),
                             OL.Ctx(1e-3, 0.0, "all")),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_stacked_cells_match_chained_oracles(name):
    recurrent, head, ctx = CASES[name]
    model = functional(recurrent, seed=len(name), head=head)
    OL.check_explain(model, X, TARGETS, ctx)


CHAINS = {   # a stack of cells, and the same network as a chain of RNN layers
    "lstm_gru": (lambda: [L.LSTMCell(3), L.GRUCell(2)], lambda: [L.LSTM(3, return_sequences=True), L.GRU(2)]),
    "simple_rnn_lstm": (lambda: [L.SimpleRNNCell(3), L.LSTMCell(2)],
                        lambda: [L.SimpleRNN(3, return_sequences=True), L.LSTM(2)]),
}


@pytest.mark.parametrize("name,rule,eps,bf", [("lstm_gru", "half", 0.0, 1.0), ("lstm_gru", "all", 1e-3, 0.0),
                                              ("simple_rnn_lstm", "prop", 0.0, 1.0)])
def test_stacked_cells_equal_a_chain_of_layers(name, rule, eps, bf):
    """RNN([cell_1, cell_2]) is RNN layer 1 (return_sequences=True) -> RNN layer 2 with the same weights:
    the same explanation (the single-cell rules, oracle-checked elsewhere)."""
    cells, layers = CHAINS[name]
    stacked = functional(lambda: L.RNN(cells()), seed=3)
    h = inp = keras.Input((T, F))
    for layer in layers():
        h = layer(h)
    chain = keras.Model(inp, L.Dense(CLASSES)(h))
    assert [w.shape for w in chain.get_weights()] == [w.shape for w in stacked.get_weights()]
    chain.set_weights(stacked.get_weights())
    kwargs = dict(eps=eps, bias_factor=bf, rule=rule, dtype="float64")
    a, b = keras_lrp.explain(stacked, X, TARGETS, **kwargs), keras_lrp.explain(chain, X, TARGETS, **kwargs)
    np.testing.assert_allclose(a.scores, b.scores, rtol=0, atol=1e-12 * np.abs(b.scores).max())
    np.testing.assert_allclose(a.relevance, b.relevance, rtol=0, atol=1e-12 * np.abs(b.relevance).max())
    np.testing.assert_allclose(a.rest, b.rest, rtol=0, atol=1e-12 * np.abs(b.relevance).max())


def test_stacked_initial_state_needs_one_entry_per_cell():
    """Keras runs a StackedRNNCells from initial_state=[[h1, c1], h2] and fails at run time on a flat
    [h1, c1, h2]: refused, saying the structure it needs."""
    seq, h1, c1, h2 = keras.Input((None, F)), keras.Input((3,)), keras.Input((3,)), keras.Input((2,))
    y = L.RNN([L.LSTMCell(3), L.GRUCell(2)])(seq, initial_state=[h1, c1, h2])
    model = keras.Model([seq, h1, c1, h2], L.Dense(CLASSES)(y))
    with pytest.raises(keras_lrp.UnsupportedLayerError, match=r"one entry per cell \(cell 1: h, c; cell 2: h\)"):
        keras_lrp.explain(model, [X, X[:, 0], X[:, 0], X[:, 0, :2]])
