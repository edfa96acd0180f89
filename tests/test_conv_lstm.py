"""ConvLSTM1D (inputs (batch, time, length, channels)) in models written with the functional API: the
LSTM's rules with its two convolutions as the linear maps, against the plain-numpy ConvLSTM1D cell oracle
of tests/oracle_layers.py (padding valid / same, even and odd kernels, dilation, return_sequences,
go_backwards, Bidirectional, the three gate rules), against an LSTM run at every position (kernel_size
1), with masks (padded = unpadded), returned and initial states, and the configurations it refuses.
float64; scores = the model's output; conservation with eps = 0, bias_factor = 1.
"""
import numpy as np
import keras
import pytest
from keras import ops

import keras_lrp
import oracle_layers as OL

L = keras.layers
T, LENGTH, C, CLASSES = 4, 7, 2, 3
TARGETS = np.array([0, 2, 1])
X = np.random.default_rng(0).standard_normal((3, T, LENGTH, C))


def functional(make_layer, seed, time_steps=T, mask=False):
    """Input (time, length, channels) -> ``make_layer()`` -> Flatten -> Dense, perturbed weights; with ``mask``
    the layer gets mask= the time steps whose frame is not all zeros. The layer is constructed after the
    seed is set (Keras draws its initializers' seeds from Python's random at construction)."""
    keras.utils.set_random_seed(seed)
    layer = make_layer()
    inp = keras.Input((time_steps, LENGTH, C))
    kwargs = {"mask": ops.any(ops.not_equal(inp, 0), axis=(2, 3))} if mask else {}
    return OL.perturb(keras.Model(inp, L.Dense(CLASSES)(L.Flatten()(layer(inp, **kwargs)))), seed + 1)


CASES = {
    "valid_k3": (lambda: L.ConvLSTM1D(3, 3), OL.Ctx(0.0, 1.0, "all")),
    "same_k2_backwards_sequences": (lambda: L.ConvLSTM1D(3, 2, padding="same", return_sequences=True,
                                                         go_backwards=True), OL.Ctx(1e-3, 0.0, "half")),
    "same_k2_dilated": (lambda: L.ConvLSTM1D(2, 2, padding="same", dilation_rate=2), OL.Ctx(0.01, 1.0, "prop")),
    "valid_k2_dilated_sequences": (lambda: L.ConvLSTM1D(2, 2, dilation_rate=3, return_sequences=True),
                                   OL.Ctx(0.0, 1.0, "half")),
    "relu_hard_sigmoid_no_bias": (lambda: L.ConvLSTM1D(2, 3, padding="same", activation="relu",
                                                       recurrent_activation="hard_sigmoid", use_bias=False),
                                  OL.Ctx(1e-3, 0.0, "prop")),
    "bidirectional_ave": (lambda: L.Bidirectional(L.ConvLSTM1D(2, 3, return_sequences=True), merge_mode="ave"),
                          OL.Ctx(0.0, 1.0, "all")),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_conv_lstm1d_matches_oracle(name):
    layer, ctx = CASES[name]
    OL.check_explain(functional(layer, seed=len(name)), X, TARGETS, ctx)


@pytest.mark.parametrize("rule,eps,bf", [("half", 0.0, 1.0), ("prop", 1e-3, 0.0)])
def test_kernel_size_one_is_an_lstm_at_every_position(rule, eps, bf):
    """ConvLSTM1D(kernel_size=1) is an LSTM run over time at every position (weights shared): the same
    explanation as Permute -> TimeDistributed(LSTM) with the same weights."""
    conv = functional(lambda: L.ConvLSTM1D(3, 1), seed=5)
    inp = keras.Input((T, LENGTH, C))
    lstm = keras.Model(inp, L.Dense(CLASSES)(L.Flatten()(L.TimeDistributed(L.LSTM(3))(L.Permute((2, 1, 3))(inp)))))
    kernel, recurrent_kernel, *rest = conv.get_weights()
    lstm.set_weights([kernel[0], recurrent_kernel[0]] + rest)
    kwargs = dict(eps=eps, bias_factor=bf, rule=rule, dtype="float64")
    a, b = keras_lrp.explain(conv, X, TARGETS, **kwargs), keras_lrp.explain(lstm, X, TARGETS, **kwargs)
    np.testing.assert_allclose(a.scores, b.scores, rtol=0, atol=1e-12 * np.abs(b.scores).max())
    np.testing.assert_allclose(a.relevance, b.relevance, rtol=0, atol=1e-10 * np.abs(b.relevance).max())
    np.testing.assert_allclose(a.rest, b.rest, rtol=0, atol=1e-10 * np.abs(b.relevance).max())


@pytest.mark.parametrize("side,go_backwards,rule,eps,bf", [("pre", False, "all", 0.0, 1.0),
                                                           ("post", True, "half", 1e-3, 0.0)])
@pytest.mark.skipif(keras.config.backend() == "jax", reason="Keras 3.15's own masked ConvLSTM1D fails on JAX (its "
                    "time loop broadcasts the (batch, 1) mask against (batch, length, filters) states)")
def test_masked_conv_lstm1d_padded_equals_unpadded(side, go_backwards, rule, eps, bf):
    """mask= a (batch, time) mask (all-zero frames masked): Keras carries the states over masked steps, so
    padded frames get exactly 0 and the real ones what the unpadded sequence gets (itself checked
    against the oracle)."""
    n_pad = 2
    model = functional(lambda: L.ConvLSTM1D(3, 3, padding="same", go_backwards=go_backwards), seed=7,
                       time_steps=None, mask=True)
    ctx = OL.Ctx(eps, bf, rule)
    e = OL.check_explain(model, X, TARGETS, ctx)
    pads = np.zeros((len(X), n_pad, LENGTH, C))
    padded = np.concatenate([pads, X] if side == "pre" else [X, pads], axis=1)
    e_pad = keras_lrp.explain(model, padded, TARGETS, eps=eps, bias_factor=bf, rule=rule, dtype="float64")
    real = slice(n_pad, None) if side == "pre" else slice(0, T)
    pad_steps = slice(0, n_pad) if side == "pre" else slice(T, None)
    np.testing.assert_array_equal(e_pad.relevance[:, pad_steps], 0)
    scale = np.abs(e.relevance).max()
    np.testing.assert_allclose(e_pad.relevance[:, real], e.relevance, rtol=0, atol=1e-10 * scale)
    np.testing.assert_allclose(e_pad.scores, e.scores, rtol=0, atol=1e-10 * np.abs(e.scores).max())
    np.testing.assert_allclose(e_pad.scores, OL.model_output(model, padded), rtol=0, atol=1e-5)
    np.testing.assert_allclose(e_pad.rest, e.rest, rtol=0, atol=1e-10 * scale)


def test_conv_lstm1d_returned_and_initial_states():
    """An encoder ConvLSTM1D's returned (h, c) start a decoder ConvLSTM1D: relevance flows back onto the
    encoder's input through its returned states (oracle composed by hand)."""
    keras.utils.set_random_seed(9)
    enc_in, dec_in = keras.Input((T, LENGTH, C)), keras.Input((3, LENGTH, C))
    _, h, c = L.ConvLSTM1D(2, 3, padding="same", return_state=True, name="encoder")(enc_in)
    y = L.ConvLSTM1D(2, 2, padding="same", name="decoder")(dec_in, initial_state=[h, c])
    model = OL.perturb(keras.Model([enc_in, dec_in], L.Dense(CLASSES, name="head")(L.Flatten()(y))), 10)
    x_dec = np.random.default_rng(1).standard_normal((3, 3, LENGTH, C))
    ctx = OL.Ctx(0.0, 1.0, "half")
    e = keras_lrp.explain(model, [X, x_dec], TARGETS, eps=0.0, bias_factor=1.0, rule="half", dtype="float64")

    enc, dec = OL.from_keras(model.get_layer("encoder")), OL.from_keras(model.get_layer("decoder"))
    head = OL.from_keras(model.get_layer("head"), is_output=True)
    flat = OL.Reshape()
    for o in (enc, dec, head, flat):
        o.ctx = ctx
    for i in range(len(X)):
        y_enc, _ = enc.forward(X[i], None)
        z, _ = head.forward(flat.forward(dec.forward(x_dec[i], None, enc.states)[0], None)[0], None)
        r = np.zeros_like(z)
        r[TARGETS[i]] = z[TARGETS[i]]
        r_dec, r_states, lost_dec = dec.backward_states(flat.backward(head.backward(r)[0])[0])
        r_enc, r_initial, lost_enc = enc.backward_states(np.zeros_like(y_enc), r_states)
        scale = max(np.abs(r_enc).max(), np.abs(r_dec).max())
        assert np.abs(r_enc).max() > 0
        np.testing.assert_allclose(e.scores[i], z, rtol=0, atol=1e-10 * np.abs(z).max())
        np.testing.assert_allclose(e.relevance[0][i], r_enc, rtol=0, atol=1e-8 * scale)
        np.testing.assert_allclose(e.relevance[1][i], r_dec, rtol=0, atol=1e-8 * scale)
        np.testing.assert_allclose(e.rest[i], lost_dec + lost_enc + sum(a.sum() for a in r_initial), rtol=0,
                                   atol=1e-8 * scale)
    out = keras.ops.convert_to_numpy(model([X.astype("float32"), x_dec.astype("float32")]))
    np.testing.assert_allclose(e.scores, out, rtol=0, atol=1e-5)
    total = e.relevance[0].sum((1, 2, 3)) + e.relevance[1].sum((1, 2, 3)) + e.rest
    np.testing.assert_allclose(total, e.explained_score, rtol=0, atol=1e-10 * np.abs(e.explained_score).max())


def _masking_model():
    inp = keras.Input((None, LENGTH, C))
    return keras.Model(inp, L.Dense(2)(L.Flatten()(L.ConvLSTM1D(3, 3, padding="same")(L.Masking()(inp)))))


def _model_around(layer, shape):
    inp = keras.Input(shape)
    return keras.Model(inp, L.Dense(2)(L.Flatten()(layer(inp))))


@pytest.mark.parametrize("build,match", [
    (lambda: _model_around(L.ConvLSTM1D(3, 3, strides=2), (T, LENGTH, C)), r"strides=2; ConvLSTM1D is supported "
                                                                           r"with strides=1"),
    (lambda: _model_around(L.ConvLSTM2D(2, 3), (T, 5, 5, C)), r"ConvLSTM2D is not supported \(ConvLSTM1D is\)"),
    # Keras applies Masking's (batch, time, length) mask position by position
    (_masking_model, r"its mask has shape \(None, None, 7\).*pass mask= a \(batch, time\) bool tensor"),
])
def test_refused_configurations(build, match):
    with pytest.raises(keras_lrp.UnsupportedLayerError, match=match):
        keras_lrp.Explainer(build())
