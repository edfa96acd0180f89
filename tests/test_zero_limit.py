"""The epsilon-rule at a zero denominator (eps = 0, z = 0): the eps -> 0 limit, not 0/0 := 0.

Where every term of a pre-activation is exactly 0 (a relu output, a saturated hard_sigmoid gate, an
all-zero input step, a zero initial state), ``bias_factor (eps sign z) / N / (z + eps sign z)`` tends to
``bias_factor / N``: the unit's relevance is split equally over its N inputs, and with
``bias_factor = 1`` relevance is conserved. Where non-zero terms cancel to exactly 0 the limit
diverges: the unit passes nothing, and ``convergence_delta`` shows it. Checked on the rules, against the
numpy oracles of ``oracle_layers`` (which implement the limit independently), and on the models the
0/0 convention broke: relu LSTMs (the time-series tutorial) and Keras 2 ``.h5`` LSTMs with saturated
``hard_sigmoid`` gates.
"""
import numpy as np
import keras
import pytest
from keras import ops

import keras_lrp
import oracle_layers as OL
from keras_lrp import backend, rules

L = keras.layers
CONSERVING = rules.Epsilon(eps=0.0, bias_factor=1.0)


@pytest.fixture(autouse=True)
def _float64():
    """The rules called directly compute in float64 on every backend (as inside explain)."""
    backend.check_float_dtype("float64")
    with backend.compute_scope():
        yield


def f64(values):
    return ops.convert_to_tensor(np.asarray(values, np.float64))


def test_linear_rule_splits_a_unit_of_zero_terms_equally():
    x = f64([[0.0, 0.0, 0.0], [1.0, -1.0, 2.0]])
    w = f64([[1.0, 2.0], [1.0, 0.5], [-1.0, 0.0]])
    bias = f64([0.0, 1.0])
    z = ops.matmul(x, w) + bias                  # row 0: (0, 1); row 1: (-2, 2)
    r = f64([[3.0, 0.0], [0.0, 0.0]])
    for bias_factor in (1.0, 0.5):
        got = ops.convert_to_numpy(rules.linear(x, w, bias, z, r, rules.Epsilon(0.0, bias_factor)))
        # unit 0 of row 0: terms and bias all exactly 0 -> bias_factor * 3 / 3 to each input
        np.testing.assert_array_equal(got[0], np.full(3, bias_factor))
        np.testing.assert_array_equal(got[1], 0.0)


def test_linear_rule_drops_a_unit_whose_terms_cancel():
    x = f64([[2.0, 2.0]])
    w = f64([[1.0], [-1.0]])
    z = ops.matmul(x, w)                          # 2 - 2 = 0 exactly, the terms are not 0
    got = ops.convert_to_numpy(rules.linear(x, w, None, z, f64([[5.0]]), CONSERVING))
    np.testing.assert_array_equal(got, 0.0)
    # with a bias that cancels the terms, likewise
    got = ops.convert_to_numpy(rules.linear(f64([[1.0, 0.0]]), f64([[2.0], [1.0]]), f64([-2.0]), f64([[0.0]]),
                                            f64([[5.0]]), CONSERVING))
    np.testing.assert_array_equal(got, 0.0)


def test_elementwise_sum_of_zeros_splits_equally():
    terms = [f64([0.0, 1.0]), f64([0.0, -1.0])]
    z = terms[0] + terms[1]                      # (0: all-zero terms, 0: cancelling terms)
    got = rules.elementwise_sum(terms, z, f64([4.0, 4.0]), CONSERVING)
    np.testing.assert_array_equal(np.stack([ops.convert_to_numpy(g) for g in got]), [[2.0, 0.0], [2.0, 0.0]])


def test_a_positive_eps_is_unchanged():
    """With eps > 0 no denominator is 0: z = 0 is stabilised (sign(0) = +1), the limit plays no part."""
    x = f64(np.zeros((1, 2)))
    w = f64([[1.0], [1.0]])
    got = ops.convert_to_numpy(rules.linear(x, w, None, f64(np.zeros((1, 1))), f64([[2.0]]),
                                            rules.Epsilon(0.01, 1.0)))
    np.testing.assert_allclose(got, [[1.0, 1.0]], rtol=1e-15)   # (0 + 0.01 / 2) / 0.01 * 2


def test_cancellation_shows_in_convergence_delta():
    """z_h = x1 - x2 = 0 exactly with x1 = x2 != 0: the limit does not exist, the unit passes nothing, and
    the relevance it received is the convergence delta. With x1 = x2 = 0 the unit splits it equally."""
    inp = keras.Input((2,))
    h = L.Dense(1, use_bias=False, name="difference")(inp)
    model = keras.Model(inp, L.Dense(1, name="head")(h))
    model.set_weights([np.array([[1.0], [-1.0]]), np.array([[2.0]]), np.array([1.0])])
    e = keras_lrp.explain(model, np.array([[0.5, 0.5], [0.0, 0.0]]), eps=0.0, bias_factor=1.0, dtype="float64")
    np.testing.assert_array_equal(e.scores[:, 0], [1.0, 1.0])
    np.testing.assert_array_equal(e.relevance[0], [0.0, 0.0])
    np.testing.assert_array_equal(e.convergence_delta, [1.0, 0.0])
    np.testing.assert_array_equal(e.relevance[1], [0.5, 0.5])


def zero_step_sequences(seed, batch=3, steps=6, features=3):
    """Random sequences whose first two steps are all-zero (unmasked padding)."""
    x = OL.random_sequences(seed, batch, steps, features)
    x[:, :2] = 0.0
    return x


ORACLE_MODELS = {
    "lstm_relu": lambda: [L.LSTM(4, activation="relu")],
    "lstm_relu_hard_sigmoid": lambda: [L.LSTM(4, activation="relu", recurrent_activation="hard_sigmoid")],
    "gru_relu": lambda: [L.GRU(4, activation="relu")],
    "gru_relu_reset_before": lambda: [L.GRU(4, activation="relu", reset_after=False)],
    "bilstm_relu_seq_dense_relu_gap": lambda: [
        L.Bidirectional(L.LSTM(3, activation="relu", return_sequences=True), merge_mode="sum"),
        L.Dense(3, activation="relu"), L.GlobalAveragePooling1D()],
    "conv_relu_pool_lstm": lambda: [L.Conv1D(3, 2, padding="same", activation="relu"),
                                    L.AveragePooling1D(2), L.LSTM(3, activation="relu")],
}


def first_layer_sequence(model, x):
    """The first layer's output at every step (a recurrent layer rebuilt with return_sequences)."""
    first = model.layers[0]
    first = first.forward_layer if isinstance(first, L.Bidirectional) else first
    if isinstance(first, L.RNN):
        twin = type(first).from_config({**first.get_config(), "return_sequences": True})
        twin.build(x.shape)
        twin.set_weights(first.get_weights())
        first = twin
    return backend.to_numpy(first(x.astype("float32")))


@pytest.mark.parametrize("gate", ["all", "half", "prop"])
@pytest.mark.parametrize("name", sorted(ORACLE_MODELS))
def test_zero_terms_match_the_oracle_and_conserve(name, gate):
    if gate != "all" and not name.startswith(("lstm", "gru")):
        pytest.skip("gate rules vary on the recurrent models only")
    model = OL.sequential_model(lambda: ORACLE_MODELS[name]() + [L.Dense(3)], 3, seed=len(name))
    model = OL.perturb(model, len(name) + 1, scale=0.6)
    x = zero_step_sequences(len(name))
    # the case this test is about: the first layer's outputs are exactly 0 in places (relu), so relevance
    # reaches pre-activations whose terms are all exactly 0
    assert np.any(first_layer_sequence(model, x) == 0.0)
    e = OL.check_explain(model, x, np.array([0, 2, 1]), OL.Ctx(0.0, 1.0, gate))
    if gate != "prop":   # the proportional gate rule has no share: it loses what reaches 0 * 0 products
        np.testing.assert_allclose(e.convergence_delta, 0.0, atol=1e-10 * np.abs(e.explained_score).max())


def time_series_relu_lstm(seed=0):
    """The standard time-series tutorial model: LSTM(relu) on (time, 1) windows, Dense(1)."""
    keras.utils.set_random_seed(seed)
    inp = keras.Input((12, 1))
    model = keras.Model(inp, L.Dense(1)(L.LSTM(16, activation="relu")(inp)))
    rng = np.random.default_rng(seed)
    model.set_weights([w + 0.5 * rng.standard_normal(w.shape).astype("float32") for w in model.get_weights()])
    return model


def test_relu_lstm_time_series_model_conserves():
    model = time_series_relu_lstm()
    x = np.sin(np.linspace(0, 6, 12 * 8)).reshape(8, 12, 1) + 0.1
    x[:, :3] = 0.0
    acts = keras_lrp.lstm_activations(model.layers[1], x.astype("float32"))
    assert np.mean(acts["c"] == 0) > 0.05   # many cell values exactly 0
    e = keras_lrp.explain(model, x, eps=0.0, bias_factor=1.0, dtype="float64")
    np.testing.assert_allclose(e.convergence_delta, 0.0, atol=1e-10 * np.abs(e.explained_score).max())


def test_saturated_hard_sigmoid_h5_lstm_conserves(tmp_path):
    """A tf.keras .h5 Bi-LSTM with Keras 2's hard_sigmoid gates (clip(0.2 x + 0.5, 0, 1)) driven into
    saturation: gates exactly 0 make products exactly 0; the loaded model conserves in float64."""
    K = pytest.importorskip("tf_keras")
    inp = K.layers.Input((None, 4))
    h = K.layers.Bidirectional(K.layers.LSTM(5, recurrent_activation="hard_sigmoid", return_sequences=True))(inp)
    h = K.layers.LSTM(4, recurrent_activation="hard_sigmoid")(h)
    tfk = K.Model(inp, K.layers.Dense(3)(h))
    rng = np.random.default_rng(3)
    tfk.set_weights([rng.normal(0, 2.0, w.shape).astype("float32") for w in tfk.get_weights()])
    path = tmp_path / "saturated.h5"
    tfk.save(path)
    model = keras_lrp.load_model(path)
    x = rng.normal(0, 1.0, (6, 7, 4)).astype("float32")
    x[:, :2] = 0.0
    acts = keras_lrp.lstm_activations(model.layers[1].forward_layer, x)
    gates = acts["gates"]
    assert np.mean(gates == 0.0) > 0.05 and np.mean(gates == 1.0) > 0.05   # saturated both ways
    np.testing.assert_allclose(backend.to_numpy(model(x)), tfk.predict(x, verbose=0), rtol=0, atol=1e-5)
    e = keras_lrp.explain(model, x, eps=0.0, bias_factor=1.0, dtype="float64")
    np.testing.assert_allclose(e.convergence_delta, 0.0, atol=1e-10 * np.abs(e.explained_score).max())
