"""lrpify_model swaps every LSTM / Bidirectional(LSTM) for RNN(LRP_LSTMCell), keeping everything else."""
import numpy as np
import keras
import pytest

from keras_lrp import LRP_LSTMCell, lrpify_model

X = np.random.default_rng(0).standard_normal((4, 7, 5)).astype("float32")


def sequential():
    return keras.Sequential([
        keras.Input((None, 5)),
        keras.layers.Bidirectional(keras.layers.LSTM(6, return_sequences=True, recurrent_activation="hard_sigmoid")),
        keras.layers.LSTM(4, go_backwards=True),
        keras.layers.Dense(3, activation="softmax"),
    ])


def functional():
    inp = keras.Input((None, 5), name="tokens")
    h = keras.layers.Bidirectional(keras.layers.LSTM(6), merge_mode="sum", name="bi")(inp)
    h = keras.layers.Dense(8, activation="relu", name="hidden")(h)
    out = keras.layers.Dense(2, name="out")(h)
    return keras.Model(inp, out, name="func")


def lstm_cells(model):
    cells = []
    for layer in model.layers:
        for sub in ([layer.forward_layer, layer.backward_layer] if isinstance(layer, keras.layers.Bidirectional) else [layer]):
            if isinstance(getattr(sub, "cell", None), keras.layers.LSTMCell):
                cells.append(sub.cell)
    return cells


@pytest.mark.parametrize("build", [sequential, functional])
def test_lrpify_same_predictions_weights_and_wiring(build):
    keras.utils.set_random_seed(0)
    model = build()
    rng = np.random.default_rng(1)
    model.set_weights([w + 0.1 * rng.standard_normal(w.shape) for w in model.get_weights()])
    before = [w.copy() for w in model.get_weights()]
    types_before = [type(c) for c in lstm_cells(model)]

    new = lrpify_model(model)
    assert new is not model
    assert all(type(c) is LRP_LSTMCell for c in lstm_cells(new))
    assert len(lstm_cells(new)) == len(lstm_cells(model))
    assert [l.name for l in new.layers] == [l.name for l in model.layers]
    np.testing.assert_allclose(new.predict(X, verbose=0), model.predict(X, verbose=0), rtol=0, atol=1e-6)
    # the original is untouched
    assert [type(c) for c in lstm_cells(model)] == types_before
    for a, b in zip(model.get_weights(), before):
        np.testing.assert_array_equal(a, b)
    # configuration kept
    for a, b in zip(lstm_cells(model), lstm_cells(new)):
        assert a.units == b.units
        assert keras.activations.serialize(a.recurrent_activation) == keras.activations.serialize(b.recurrent_activation)


def test_lrpify_keeps_rnn_flags():
    new = lrpify_model(sequential())
    bi, uni = new.layers[0], new.layers[1]
    assert bi.forward_layer.return_sequences and bi.backward_layer.go_backwards
    assert uni.go_backwards and not uni.return_sequences


def test_lrpify_rejects_non_models():
    with pytest.raises(TypeError, match="keras.Model"):
        lrpify_model(keras.layers.LSTM(3))
