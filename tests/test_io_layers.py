"""keras_lrp.load_model on tf.keras 2.x / Keras 2 .h5 files with attention layers, CuDNN layers,
stateful RNNs and RNNs called with initial states (keras.io's character-level seq2seq): each file is
written by tf_keras (small sizes, random weights) and loaded to tf_keras's own predictions."""
import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import h5py
import keras
import numpy as np
import pytest

import keras_lrp
from keras_lrp.io import ModelFileError, UnsupportedModelError, load_model

K = pytest.importorskip("tf_keras")
KL = K.layers
RNG = np.random.default_rng(0)
VOCAB = 9


def _randomise(model, seed):
    rng = np.random.default_rng(seed)
    model.set_weights([rng.normal(0.0, 0.5, w.shape).astype("float32") for w in model.get_weights()])


def _ids(batch=3, steps=6):
    ids = RNG.integers(1, VOCAB, (batch, steps))
    ids[0, -2:] = 0   # padding, masked by mask_zero
    return ids


def _model_config(path):
    with h5py.File(path) as f:
        return json.loads(f.attrs["model_config"])


def _edit_config(path, edit):
    """Rewrite the model_config attribute of an .h5 file with ``edit(config)``."""
    config = _model_config(path)
    edit(config)
    with h5py.File(path, "r+") as f:
        f.attrs["model_config"] = json.dumps(config).encode("utf-8")


def _weight_names(group):
    return [n.decode() if isinstance(n, bytes) else n for n in group.attrs["weight_names"]]


def _layer_entry(config, name):
    return next(l for l in config["config"]["layers"] if l["config"]["name"] == name)


def _layer_config(config, name):
    return _layer_entry(config, name)["config"]


def _close(got, want):
    np.testing.assert_allclose(np.asarray(got), want, rtol=0, atol=1e-5 * max(1.0, np.abs(want).max()))


def _conserves(model, x, **kw):
    e = keras_lrp.explain(model, x, eps=0.0, bias_factor=1.0, dtype="float64", **kw)
    score = e.explained_score
    np.testing.assert_allclose(e.total_relevance() + e.rest, score, rtol=0, atol=1e-8 * np.abs(score).max())
    return e


# ------------------------------------------------------------------------------------------
# Attention layers
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def attention_h5(tmp_path_factory):
    """Attention (concat scores, scale), AdditiveAttention with a key, MultiHeadAttention with
    value_dim != key_dim, an output_shape, a key and a causal mask, LayerNormalization; masked."""
    inp = KL.Input((None,), dtype="int32")
    h = KL.LSTM(4, return_sequences=True)(KL.Embedding(VOCAB, 4, mask_zero=True)(inp))
    k = KL.Dense(4)(h)
    a = KL.Attention(use_scale=True, score_mode="concat", name="att")([h, h])
    b = KL.AdditiveAttention(use_scale=False, name="add_att")([h, h, k])
    m = KL.MultiHeadAttention(num_heads=2, key_dim=3, value_dim=2, output_shape=4, name="mha")(
        h, h, key=k, use_causal_mask=True)
    x = KL.LayerNormalization(name="ln")(KL.Add()([a, b, m]))
    model = K.Model(inp, KL.Dense(2)(KL.GlobalAveragePooling1D()(x)))
    _randomise(model, 1)
    path = str(tmp_path_factory.mktemp("att") / "attention.h5")
    model.save(path)
    return path, model


def test_attention_h5_loads_to_tf_keras_predictions(attention_h5):
    path, tfk_model = attention_h5
    x = _ids()
    model = load_model(path)
    kinds = {type(l).__name__ for l in model.layers}
    assert {"Attention", "AdditiveAttention", "MultiHeadAttention", "LayerNormalization"} <= kinds
    assert model.get_layer("att").score_mode == "concat" and model.get_layer("att").use_scale
    assert not model.get_layer("add_att").use_scale
    _close(model(x), tfk_model.predict(x, verbose=0))
    e = _conserves(model, x)
    assert np.all(e.relevance[x == 0] == 0)


def test_multi_head_attention_weights_matched_by_name(attention_h5, tmp_path):
    """The query, key and value kernels have one shape: a file storing them in another order
    (key before query here) is read by their names, not by position."""
    path, tfk_model = attention_h5
    shuffled = str(tmp_path / "shuffled.h5")
    with open(path, "rb") as src, open(shuffled, "wb") as dst:
        dst.write(src.read())
    with h5py.File(shuffled, "r+") as f:
        group = f["model_weights"]["mha"]
        names = _weight_names(group)
        assert [n.split("/")[1] for n in names[:4]] == ["query", "query", "key", "key"]
        group.attrs["weight_names"] = names[2:4] + names[:2] + names[4:]
    x = _ids()
    _close(load_model(shuffled)(x), tfk_model.predict(x, verbose=0))


def test_causal_attention_of_older_tf_keras(tmp_path):
    """tf.keras up to 2.9 stored Attention(causal=True) in the config; Keras 3 takes
    use_causal_mask=True in the call."""
    inp = KL.Input((None, 3))
    h = KL.GRU(3, return_sequences=True)(inp)
    a = KL.Attention(name="att", causal=True)([h, h])   # tf_keras still honours the deprecated flag
    tfk_model = K.Model(inp, KL.Dense(2)(KL.GlobalAveragePooling1D()(a)))
    _randomise(tfk_model, 2)
    path = str(tmp_path / "causal.h5")
    tfk_model.save(path)
    x = RNG.standard_normal((3, 5, 3)).astype("float32")
    want = tfk_model.predict(x, verbose=0)
    not_causal = np.asarray(load_model(path)(x))   # tf_keras 2.21 no longer writes the flag
    assert np.abs(not_causal - want).max() > 1e-3
    _edit_config(path, lambda c: _layer_config(c, "att").update(causal=True))
    model = load_model(path)
    _close(model(x), want)
    _conserves(model, x)


# ------------------------------------------------------------------------------------------
# CuDNNLSTM / CuDNNGRU
# ------------------------------------------------------------------------------------------
def _cudnn_pair(functional):
    """The same architecture with CuDNN layers and with the LSTM / GRU(reset_after=True) they
    compute; the CuDNN one gets the other's weights in CuDNN layout, converted by tf_keras."""
    from tf_keras.src.layers.rnn.cudnn_gru import CuDNNGRU
    from tf_keras.src.layers.rnn.cudnn_lstm import CuDNNLSTM

    def lstm(units, **kw):
        return KL.LSTM(units, **kw)

    def gru(units, **kw):
        return KL.GRU(units, reset_after=True, **kw)

    def build(lstm_cls, gru_cls):
        if not functional:
            return K.Sequential([KL.Input((None, 3)), lstm_cls(4, return_sequences=True, go_backwards=True),
                                 lstm_cls(3), KL.Dense(2)])
        inp = KL.Input((None, 3))
        h = KL.Bidirectional(gru_cls(3, return_sequences=True))(inp)
        # a CuDNN forward layer with a plain LSTM backward layer: only the first three weights converted
        h = KL.Bidirectional(lstm_cls(2), backward_layer=KL.LSTM(2, go_backwards=True), merge_mode="sum")(h)
        return K.Model(inp, KL.Dense(2)(KL.Concatenate()([h, gru_cls(2)(inp)])))

    return build(CuDNNLSTM, CuDNNGRU), build(lstm, gru)


@pytest.mark.parametrize("functional", [False, True], ids=["sequential_lstm", "bidirectional_gru_lstm"])
def test_cudnn_h5_rebuilt_as_lstm_gru(functional, tmp_path):
    from tf_keras.src.saving.legacy.hdf5_format import _convert_rnn_weights

    cudnn, twin = _cudnn_pair(functional)
    _randomise(twin, 3)
    for c_layer, t_layer in zip(cudnn.layers, twin.layers):
        weights = t_layer.get_weights()
        if isinstance(c_layer, KL.Bidirectional):
            n = len(t_layer.forward_layer.weights)
            weights = (_convert_rnn_weights(c_layer.forward_layer, weights[:n])
                       + _convert_rnn_weights(c_layer.backward_layer, weights[n:]))
        else:
            weights = _convert_rnn_weights(c_layer, weights)
        c_layer.set_weights(weights)
    path = str(tmp_path / "cudnn.h5")
    cudnn.save(path)
    assert "CuDNNLSTM" in json.dumps(_model_config(path))
    x = RNG.standard_normal((3, 5, 3)).astype("float32")
    model = load_model(path)
    rnns = [l for l in model.layers if isinstance(l, (keras.layers.RNN, keras.layers.Bidirectional))]
    for layer in rnns:
        for rnn in ([layer.forward_layer, layer.backward_layer] if isinstance(layer, keras.layers.Bidirectional)
                    else [layer]):
            assert type(rnn) in (keras.layers.LSTM, keras.layers.GRU)
            assert rnn.cell.recurrent_activation is keras.activations.sigmoid
            assert isinstance(rnn, keras.layers.LSTM) or rnn.cell.reset_after
    _close(model(x), twin.predict(x, verbose=0))
    _conserves(model, x)


def test_cudnn_weights_of_wrong_shape_named(tmp_path):
    cudnn, _ = _cudnn_pair(False)
    path = str(tmp_path / "cudnn.h5")
    cudnn.save(path)
    name = cudnn.layers[0].name
    with h5py.File(path, "r+") as f:
        group = f["model_weights"][name]
        bias = [w for w in _weight_names(group) if "bias" in w][0]
        del group[bias]
        group[bias] = np.zeros(16, "float32")   # an LSTM's bias, not CuDNN's (2 x 4 gates x 4 units)
    with pytest.raises(ModelFileError, match=rf"'{name}' \(CuDNNLSTM\).*double bias"):
        load_model(path)


# ------------------------------------------------------------------------------------------
# Stateful RNNs: loaded, explained from the zero state
# ------------------------------------------------------------------------------------------
def _stateful_tf_keras(batch):
    model = K.Sequential([KL.Input(batch_shape=(batch, 5, 3)),
                          KL.LSTM(4, stateful=True, return_sequences=True),
                          KL.Bidirectional(KL.GRU(3, stateful=True)), KL.Dense(2)])
    _randomise(model, 4)
    return model


@pytest.mark.parametrize("ext", ["h5", "keras"])
def test_stateful_files_load_and_explain_from_zero_state(ext, tmp_path):
    tfk_model = _stateful_tf_keras(4)
    x = RNG.standard_normal((4, 5, 3)).astype("float32")
    want = tfk_model.predict(x, verbose=0, batch_size=4)
    if ext == "h5":
        path = str(tmp_path / "stateful.h5")
        tfk_model.save(path)
    else:   # a Keras 3 file, read by Keras's own loader
        k3 = keras.Sequential([keras.Input(batch_shape=(4, 5, 3)),
                               keras.layers.LSTM(4, stateful=True, return_sequences=True),
                               keras.layers.Bidirectional(keras.layers.GRU(3, stateful=True)),
                               keras.layers.Dense(2)])
        k3.set_weights(tfk_model.get_weights())
        path = str(tmp_path / "stateful.keras")
        k3.save(path)
    model = load_model(path)
    assert model.layers[0].stateful and model.inputs[0].shape[0] == 4
    first = np.asarray(model(x))
    _close(first, want)
    second = np.asarray(model(x))    # the model now holds the state its first call left
    assert np.abs(second - first).max() > 1e-3
    held = [v.numpy().copy() for v in model.layers[0].states]
    # explained from the zero state, for any number of rows, leaving the held state alone
    for rows in (4, 3, 6):
        e = _conserves(model, np.concatenate([x, x])[:rows])
        _close(e.scores, np.concatenate([want, want])[:rows])
    assert model.layers[0].stateful
    for h, v in zip(held, model.layers[0].states):
        np.testing.assert_array_equal(v.numpy(), h)


# ------------------------------------------------------------------------------------------
# keras.io's character-level seq2seq: the encoder's states as the decoder's initial_state
# ------------------------------------------------------------------------------------------
def _seq2seq(cell):
    """keras.io's lstm_seq2seq (Keras 2.x): encoder LSTM(return_state=True), its states passed as
    initial_state to the decoder; with ``cell="bigru"``, Bidirectional GRUs."""
    enc_in, dec_in = KL.Input((None, 5)), KL.Input((None, 6))
    if cell == "lstm":
        _, h, c = KL.LSTM(4, return_state=True, name="encoder")(enc_in)
        dec, _, _ = KL.LSTM(4, return_sequences=True, return_state=True, name="decoder")(
            dec_in, initial_state=[h, c])
    else:
        _, forward, backward = KL.Bidirectional(KL.GRU(3, return_state=True), name="encoder")(enc_in)
        dec = KL.Bidirectional(KL.GRU(3, return_sequences=True), name="decoder")(
            dec_in, initial_state=[forward, backward])
    model = K.Model([enc_in, dec_in], KL.Dense(6, activation="softmax")(dec))
    _randomise(model, 5)
    return model


@pytest.mark.parametrize("cell", ["lstm", "bigru"])
def test_seq2seq_initial_state_h5(cell, tmp_path):
    tfk_model = _seq2seq(cell)
    path = str(tmp_path / "s2s.h5")
    tfk_model.save(path)
    # the states are stored as extra inputs of the decoder's call: [x, h, c]
    assert len(_layer_entry(_model_config(path), "decoder")["inbound_nodes"][0]) == 3
    xs = [RNG.standard_normal((3, 4, 5)).astype("float32"), RNG.standard_normal((3, 7, 6)).astype("float32")]
    model = load_model(path)
    _close(model(xs), tfk_model.predict(xs, verbose=0))
    # ... and given to Keras 3 as initial_state
    call = model.get_layer("decoder")._inbound_nodes[0].arguments
    assert len(call.args) == 1 and len(call.kwargs["initial_state"]) == 2
    # explained onto the encoder's and the decoder's inputs
    e = _conserves(model, xs, timestep=2)
    assert all(np.abs(r).max() > 0 for r in e.relevance)


def test_rnn_with_constants_refused(tmp_path):
    path = str(tmp_path / "s2s.h5")
    _seq2seq("lstm").save(path)
    _edit_config(path, lambda c: _layer_config(c, "decoder").update(num_constants=1))
    with pytest.raises(UnsupportedModelError, match="'decoder'.*constants"):
        load_model(path)
