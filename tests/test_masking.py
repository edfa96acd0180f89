"""Masks: Embedding(mask_zero=True) and Masking in front of LSTM / GRU / Bidirectional layers.

Masked timesteps carry their states, so with pre- or post-padding the padded positions get exactly
0 relevance and the real tokens get exactly what the unpadded sentence gets. Without a mask the
padding is ordinary input: positions stay aligned with the input and pads may get relevance.
"""
import functools

import numpy as np
import keras
import pytest

import keras_lrp
import oracle_layers as OL

L = keras.layers
VOCAB, EMB, F, CLASSES = 12, 3, 3, 3
N_REAL, N_PAD = 4, 3
TARGETS = np.array([0, 2, 1])


def token_model(layers, seed, mask_zero=True, head=None):
    """Embedding -> ``layers()`` -> ``head()`` (default Dense), built after the seed is set (Keras draws its
    initializers' seeds from Python's random when a layer is constructed)."""
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((None,), dtype="int32"), L.Embedding(VOCAB, EMB, mask_zero=mask_zero)]
                             + layers() + [head() if head else L.Dense(CLASSES)])
    return OL.perturb(model, seed + 1)


def float_model(layers, seed):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((None, F)), L.Masking(0.0)] + layers() + [L.Dense(CLASSES)])
    return OL.perturb(model, seed + 1)


def pad(x, side, value=0):
    shape = (x.shape[0], N_PAD) + x.shape[2:]
    pads = np.full(shape, value, x.dtype)
    return np.concatenate([pads, x] if side == "pre" else [x, pads], axis=1)


def real_slice(side):
    return slice(N_PAD, N_PAD + N_REAL) if side == "pre" else slice(0, N_REAL)


def pad_slice(side):
    return slice(0, N_PAD) if side == "pre" else slice(N_REAL, N_REAL + N_PAD)


def check_padding_invariance(model, x, side, ctx, timesteps=None, shift=0, value=0):
    """The padded batch vs the unpadded one, and vs the oracle on the padded batch."""
    xp = pad(x, side, value)
    steps_p = None if timesteps is None else timesteps + shift
    e_pad = OL.check_explain(model, xp, TARGETS, ctx, timesteps=steps_p)
    e = keras_lrp.explain(model, x, TARGETS, timestep=timesteps, eps=ctx.eps, bias_factor=ctx.bias_factor,
                          rule=ctx.gate, dtype="float64")
    assert e_pad.relevance.shape[1] == N_REAL + N_PAD
    assert np.all(e_pad.relevance[:, pad_slice(side)] == 0)
    scale = np.abs(e.relevance).max()
    np.testing.assert_allclose(e_pad.relevance[:, real_slice(side)], e.relevance, rtol=0, atol=1e-10 * scale)
    np.testing.assert_allclose(e_pad.scores, e.scores, rtol=0, atol=1e-10 * np.abs(e.scores).max())
    np.testing.assert_allclose(e_pad.rest, e.rest, rtol=0, atol=1e-10 * scale)
    return e_pad


RECURRENT = {
    "lstm": lambda: [L.LSTM(3)],
    "lstm_backwards": lambda: [L.LSTM(3, go_backwards=True)],
    "gru": lambda: [L.GRU(3, reset_after=False)],
    "bilstm": lambda: [L.Bidirectional(L.LSTM(2))],
    "bigru_sum": lambda: [L.Bidirectional(L.GRU(3), merge_mode="sum")],
    "lstm_seq_gru_back": lambda: [L.LSTM(3, return_sequences=True), L.GRU(2, go_backwards=True)],
    "lstm_seq_gap": lambda: [L.LSTM(3, return_sequences=True), L.GlobalAveragePooling1D()],
    "bilstm_seq_ave_gap": lambda: [L.Bidirectional(L.LSTM(2, return_sequences=True), merge_mode="ave"),
                                   L.GlobalAveragePooling1D()],
    "bigru_seq_lstm": lambda: [L.Bidirectional(L.GRU(2, return_sequences=True)), L.LSTM(3)],
    # StackedRNNCells: every cell skips the masked steps
    "stacked_lstm_gru": lambda: [L.RNN([L.LSTMCell(3), L.GRUCell(2)])],
    "bi_stacked_gru_lstm_seq_gap": lambda: [L.Bidirectional(L.RNN([L.GRUCell(2), L.LSTMCell(2)], return_sequences=True),
                                                            merge_mode="sum"), L.GlobalAveragePooling1D()],
    # layers in between that pass the mask on
    "td_dense_dropout_lstm": lambda: [L.TimeDistributed(L.Dense(3, activation="tanh")), L.Dropout(0.5),
                                      L.LSTM(3)],
    "lstm_seq_dense_gap": lambda: [L.LSTM(3, return_sequences=True), L.Dense(2, activation="tanh"),
                                   L.GlobalAveragePooling1D()],
}


@functools.lru_cache(maxsize=None)
def cached_token_model(name):
    """One model per architecture for both padding sides (and one compiled explainer)."""
    return token_model(RECURRENT[name], seed=len(name))


@functools.lru_cache(maxsize=None)
def cached_float_model(name):
    return float_model(RECURRENT[name], seed=len(name) + 20)


@pytest.mark.parametrize("side", ["pre", "post"])
@pytest.mark.parametrize("name", sorted(RECURRENT))
def test_embedding_mask_zero(name, side):
    rule = OL.Ctx(0.01, 1.0, ("all", "half", "prop")[len(name) % 3])
    model = cached_token_model(name)
    ids = np.random.default_rng(len(name)).integers(1, VOCAB, (3, N_REAL))
    check_padding_invariance(model, ids, side, rule)


@pytest.mark.parametrize("side", ["pre", "post"])
@pytest.mark.parametrize("name", ["lstm", "bigru_sum", "bilstm_seq_ave_gap"])
def test_masking_layer(name, side):
    model = cached_float_model(name)
    x = np.random.default_rng(3).standard_normal((3, N_REAL, F))
    check_padding_invariance(model, x, side, OL.Ctx(0.0, 1.0, "half" if name == "lstm" else "all"))


def test_masking_layer_non_zero_mask_value():
    keras.utils.set_random_seed(21)
    model = keras.Sequential([keras.Input((None, F)), L.Masking(-1.0), L.Bidirectional(L.GRU(2)),
                              L.Dense(CLASSES)])
    OL.perturb(model, 22)
    x = np.random.default_rng(21).standard_normal((3, N_REAL, F))
    check_padding_invariance(model, x, "post", OL.Ctx(0.01, 1.0, "prop"), value=-1.0)


def test_interior_masked_step_gets_zero_and_matches_oracle():
    """A 0 token inside the sentence is a masked step too."""
    model = token_model(lambda: [L.Bidirectional(L.GRU(2, return_sequences=True)), L.LSTM(2)], seed=5)
    ids = np.random.default_rng(5).integers(1, VOCAB, (3, 6))
    ids[0, 2] = ids[1, 0] = ids[1, 5] = ids[2, 3] = 0
    e = OL.check_explain(model, ids, TARGETS, OL.Ctx(0.0, 1.0, "prop"))
    assert np.all(e.relevance[ids == 0] == 0)
    assert np.all(e.word_relevance[ids != 0] != 0)


def test_float32_pads_are_exactly_zero():
    model = token_model(lambda: [L.Bidirectional(L.LSTM(3))], seed=6)
    ids = pad(np.random.default_rng(6).integers(1, VOCAB, (3, N_REAL)), "pre")
    e = keras_lrp.explain(model, ids)
    assert e.relevance.dtype == np.float32
    assert np.all(e.relevance[:, :N_PAD] == 0)
    assert np.all(e.word_relevance[:, N_PAD:] != 0)


@functools.lru_cache(maxsize=None)
def masked_tagger():
    return token_model(lambda: [L.Bidirectional(L.LSTM(2, return_sequences=True))], seed=7,
                       head=lambda: L.TimeDistributed(L.Dense(CLASSES)))


@pytest.mark.parametrize("side", ["pre", "post"])
def test_masked_tagger_timesteps_shift_with_padding(side):
    """Bidirectional(LSTM(return_sequences)) -> TimeDistributed(Dense) with a mask: explaining
    word k of the padded sentence is explaining word k of the unpadded one."""
    model = masked_tagger()
    ids = np.random.default_rng(7).integers(1, VOCAB, (3, N_REAL))
    steps = np.array([0, 3, 1])
    check_padding_invariance(model, ids, side, OL.Ctx(0.01, 1.0, "half"), timesteps=steps,
                             shift=N_PAD if side == "pre" else 0)


def test_no_mask_padding_is_ordinary_input():
    """Without a mask, pads are real inputs: the output keeps the padded length, every position
    lines up with its input (checked against the oracle) and pads may get relevance."""
    model = token_model(lambda: [L.LSTM(3)], seed=9, mask_zero=False)
    ids = np.random.default_rng(9).integers(1, VOCAB, (3, N_REAL))
    padded = pad(ids, "pre")
    e = OL.check_explain(model, padded, TARGETS, OL.Ctx(0.01, 1.0, "all"))
    assert e.word_relevance.shape == padded.shape
    assert np.all(e.word_relevance[:, :N_PAD] != 0)
    unpadded = keras_lrp.explain(model, ids, TARGETS, eps=0.01, bias_factor=1.0, dtype="float64")
    assert not np.allclose(e.relevance[:, N_PAD:], unpadded.relevance)


def test_masked_global_average_pooling_excludes_pads():
    """GlobalAveragePooling1D after a return_sequences LSTM averages over the real steps only."""
    model = token_model(lambda: [L.LSTM(3, return_sequences=True), L.GlobalAveragePooling1D()], seed=10)
    ids = np.random.default_rng(10).integers(1, VOCAB, (3, N_REAL))
    e_pad = check_padding_invariance(model, ids, "post", OL.Ctx(0.0, 1.0, "all"))
    np.testing.assert_allclose(e_pad.relevance.sum((1, 2)) + e_pad.rest, e_pad.explained_score, atol=1e-10)
    # the same model without its mask averages over the pads too: different scores
    nomask = token_model(lambda: [L.LSTM(3, return_sequences=True), L.GlobalAveragePooling1D()], seed=10,
                         mask_zero=False)
    nomask.set_weights(model.get_weights())
    e_nomask = keras_lrp.explain(nomask, pad(ids, "post"), TARGETS, dtype="float64")
    assert not np.allclose(e_nomask.scores, e_pad.scores)


def test_masked_bidirectional_tagger_at_a_pad_explains_nothing_on_the_tokens():
    """Bidirectional(return_sequences) outputs the constant 0 at masked steps (zero_output_for_mask):
    explaining a pad position gives the real tokens no relevance; what reaches the zeros is in rest."""
    L = keras.layers
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((None,), dtype="int32"), L.Embedding(10, 3, mask_zero=True),
                              L.Bidirectional(L.LSTM(2, return_sequences=True)), L.TimeDistributed(L.Dense(2))])
    rng = np.random.default_rng(0)
    model.set_weights([w + 0.3 * rng.standard_normal(w.shape) for w in model.get_weights()])
    e = keras_lrp.explain(model, np.array([[3, 4, 5, 0, 0]]), [0], timestep=4, eps=0.0, bias_factor=1.0,
                          dtype="float64")
    np.testing.assert_array_equal(e.word_relevance, 0)
    np.testing.assert_allclose(e.relevance.sum() + e.rest, e.explained_score, atol=1e-12)
    real = keras_lrp.explain(model, np.array([[3, 4, 5, 0, 0]]), [0], timestep=1, eps=0.0, bias_factor=1.0,
                             dtype="float64")
    assert np.abs(real.word_relevance[0, :3]).sum() > 0 and np.all(real.word_relevance[0, 3:] == 0)
