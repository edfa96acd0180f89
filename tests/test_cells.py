"""LRP_LSTMCell: a drop-in LSTMCell that exposes its internals from one forward pass."""
import numpy as np
import keras
import pytest

from keras_lrp import LRP_LSTMCell, lstm_activations
from keras_lrp.backend import compute_scope, to_numpy
from keras_lrp.cells import lstm_step

X = np.random.default_rng(0).standard_normal((3, 6, 5)).astype("float32")


def lstm_and_twin(go_backwards=False, implementation=2, return_sequences=True):
    ref = keras.layers.LSTM(4, return_sequences=return_sequences, go_backwards=go_backwards)
    ref(X)
    rng = np.random.default_rng(1)
    ref.set_weights([w + 0.2 * rng.standard_normal(w.shape) for w in ref.get_weights()])
    twin = keras.layers.RNN(LRP_LSTMCell(4, implementation=implementation),
                            return_sequences=return_sequences, go_backwards=go_backwards)
    twin(X)
    twin.set_weights(ref.get_weights())
    return ref, twin


@pytest.mark.parametrize("go_backwards", [False, True])
@pytest.mark.parametrize("implementation", [1, 2])
def test_same_forward_numbers_as_lstm(go_backwards, implementation):
    ref, twin = lstm_and_twin(go_backwards, implementation)
    np.testing.assert_allclose(to_numpy(twin(X)), to_numpy(ref(X)), rtol=0, atol=1e-6)
    assert [w.shape for w in twin.weights] == [(5, 16), (4, 16), (16,)]


def test_bidirectional_same_as_lstm():
    ref = keras.layers.Bidirectional(keras.layers.LSTM(4))
    ref(X)
    twin = keras.layers.Bidirectional(keras.layers.RNN(LRP_LSTMCell(4)))
    twin(X)
    twin.set_weights(ref.get_weights())
    np.testing.assert_allclose(to_numpy(twin(X)), to_numpy(ref(X)), atol=1e-6)


@pytest.mark.parametrize("go_backwards", [False, True])
def test_activations_from_one_pass_are_consistent(go_backwards):
    ref, _ = lstm_and_twin(go_backwards)
    acts = lstm_activations(ref, X, dtype="float64")
    k, u, b = [w.astype(np.float64) for w in ref.get_weights()]
    xs = X[:, ::-1] if go_backwards else X
    h_prev = np.concatenate([np.zeros_like(acts["h"][:, :1]), acts["h"][:, :-1]], axis=1)
    c_prev = np.concatenate([np.zeros_like(acts["c"][:, :1]), acts["c"][:, :-1]], axis=1)
    # pre-activations, gates, states satisfy the LSTM equations at every step
    np.testing.assert_allclose(acts["gates_pre"], xs @ k + h_prev @ u + b, atol=1e-12)
    sig = 1 / (1 + np.exp(-acts["gates_pre"]))
    i, f, g, o = np.split(acts["gates"], 4, axis=-1)
    np.testing.assert_allclose(i, sig[..., :4], atol=1e-12)
    np.testing.assert_allclose(g, np.tanh(acts["gates_pre"][..., 8:12]), atol=1e-12)
    np.testing.assert_allclose(acts["c"], f * c_prev + i * g, atol=1e-12)
    np.testing.assert_allclose(acts["h"], o * np.tanh(acts["c"]), atol=1e-12)
    # and the hidden states are the layer's own outputs (processing order)
    np.testing.assert_allclose(acts["h"], to_numpy(ref(X)), atol=1e-6)


def test_activation_mode_output_size():
    cell = LRP_LSTMCell(4, return_activations=True)
    assert cell.output_size == 40 and cell.state_size == [4, 4]
    out = keras.layers.RNN(cell, return_sequences=True)(X)
    assert out.shape == (3, 6, 40)


def test_lstm_step_matches_equations():
    z = np.random.default_rng(2).standard_normal((2, 8))
    c_prev = np.random.default_rng(3).standard_normal((2, 2))
    with compute_scope():   # keeps float64 on JAX / torch, as inside explain
        s = lstm_step(z, c_prev, keras.activations.tanh, keras.activations.sigmoid)
    sig = 1 / (1 + np.exp(-z))
    np.testing.assert_allclose(to_numpy(s.fc), sig[:, 2:4] * c_prev, atol=1e-12)
    np.testing.assert_allclose(to_numpy(s.ig), sig[:, 0:2] * np.tanh(z[:, 4:6]), atol=1e-12)
    np.testing.assert_allclose(to_numpy(s.c), to_numpy(s.fc) + to_numpy(s.ig), atol=1e-12)
    np.testing.assert_allclose(to_numpy(s.h), sig[:, 6:8] * np.tanh(to_numpy(s.c)), atol=1e-12)


def test_config_roundtrip_keeps_seed_arguments():
    cell = LRP_LSTMCell(7, recurrent_activation="sigmoid", implementation=1, return_activations=True)
    config = cell.get_config()
    assert config["implementation"] == 1 and config["return_activations"] is True
    clone = LRP_LSTMCell.from_config(config)
    assert clone.implementation == 1 and clone.output_size == 70
    assert keras.saving.get_registered_name(LRP_LSTMCell) == "keras_lrp>LRP_LSTMCell"


@pytest.mark.parametrize("ext", [".keras", ".h5"])
def test_model_with_cell_saves_and_loads(tmp_path, ext):
    model = keras.Sequential([
        keras.Input((None, 5)),
        keras.layers.Bidirectional(keras.layers.RNN(LRP_LSTMCell(4, implementation=1), go_backwards=False)),
        keras.layers.Dense(3),
    ])
    path = tmp_path / f"m{ext}"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded.layers[0].forward_layer.cell, LRP_LSTMCell)
    np.testing.assert_allclose(loaded.predict(X, verbose=0), model.predict(X, verbose=0), atol=1e-6)
