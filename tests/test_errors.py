"""Bad input to explain() gets a clear error before any heavy work."""
import numpy as np
import keras
import pytest

import keras_lrp


@pytest.fixture(scope="module")
def model():
    return keras.Sequential([keras.Input((None, 4)), keras.layers.LSTM(3), keras.layers.Dense(2)])


X = np.zeros((2, 5, 4), "float32")


@pytest.mark.parametrize("inputs,exc,match", [
    (np.zeros((5, 4)), ValueError, r"shape \(batch, time, features=4\).*x\[None\]"),
    (np.zeros((2, 5, 3)), ValueError, "3 features but the model expects 4"),
    (np.zeros((0, 5, 4)), ValueError, "empty batch"),
    (np.zeros((2, 0, 4)), ValueError, "zero-length"),
    (np.full((1, 2, 4), np.nan), ValueError, "NaN or inf"),
    (np.array([["a"] * 4]), TypeError, "numeric"),
])
def test_bad_inputs(model, inputs, exc, match):
    with pytest.raises(exc, match=match):
        keras_lrp.explain(model, inputs)


@pytest.mark.parametrize("target,exc,match", [
    (2, ValueError, r"target 2 is out of range.*0\.\.1"),
    (-1, ValueError, "out of range"),
    ([0, 1, 0], ValueError, "one int per sample"),
    (0.5, TypeError, "target must be"),
])
def test_bad_targets(model, target, exc, match):
    with pytest.raises(exc, match=match):
        keras_lrp.explain(model, X, target)


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(eps=-1e-3), ValueError, "eps must be >= 0"),
    (dict(eps=float("nan")), ValueError, "eps must be finite"),
    (dict(bias_factor="1"), TypeError, "bias_factor must be a real number"),
    (dict(dtype="float16"), ValueError, "dtype must be one of"),
    (dict(batch_size=0), ValueError, "batch_size"),
])
def test_bad_options(model, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        keras_lrp.explain(model, X, **kwargs)


def _lambda_model():
    """A Lambda whose function cannot be traced into keras.ops (a TensorFlow function on its input)."""
    import tensorflow as tf
    inp = keras.Input((None, 4))
    h = keras.layers.Lambda(lambda t: tf.math.cumsum(t, axis=1), output_shape=(None, 4))(inp)
    return keras.Model(inp, keras.layers.Dense(2)(keras.layers.LSTM(3)(h)))


def _shared_layer_model():
    inp = keras.Input((None, 4))
    dense = keras.layers.Dense(4)
    return keras.Model(inp, keras.layers.Dense(2)(keras.layers.LSTM(3)(dense(dense(inp)))))


@pytest.mark.parametrize("build,match", [
    (lambda: keras.Sequential([keras.Input((None, 4)), keras.layers.RNN(keras.layers.StackedRNNCells(
        [keras.layers.StackedRNNCells([keras.layers.LSTMCell(3)])])), keras.layers.Dense(2)]),
     r"'rnn.*' \(RNN\).*wraps StackedRNNCells; supported cells: LSTMCell, GRUCell, SimpleRNNCell, ConvLSTMCell "
     r"\(one, or a StackedRNNCells of them\)"),
    (lambda: keras.Sequential([keras.Input((None, 4)), keras.layers.Bidirectional(keras.layers.LSTM(3), merge_mode="mul"),
                               keras.layers.Dense(2)]), "merge_mode='mul'"),
    (_lambda_model, r"could not be traced .*tf.math.cumsum.*declare it: .*layer_rules="),
    (lambda: keras.Sequential([keras.Input((None, 4)), keras.layers.UnitNormalization(), keras.layers.LSTM(3),
                               keras.layers.Dense(2)]),
     r"op node 'normalize.*' \(keras\.ops\.normalize\) has no LRP rule.*\(inside 'unit_normalization"),
])
def test_unsupported_models(build, match):
    with pytest.raises(keras_lrp.UnsupportedLayerError, match=match):
        keras_lrp.explain(build(), X)


def test_shared_layers_are_explained():
    """A layer called twice is two nodes (it was refused before functional graphs were read)."""
    e = keras_lrp.explain(_shared_layer_model(), X + 0.5, eps=0.0, bias_factor=1.0, dtype="float64")
    np.testing.assert_allclose(e.total_relevance() + e.rest, e.explained_score, rtol=1e-8,
                               atol=1e-8 * np.abs(e.explained_score).max())


def _op_model(op):
    inp = keras.Input((None, 4))
    h = keras.layers.LSTM(3, return_sequences=True)(inp)
    return keras.Model(inp, keras.layers.Dense(2)(op(h)))


@pytest.mark.parametrize("op,match", [
    (lambda h: keras.ops.exp(h[:, -1]), r"op node 'exp.*' \(keras\.ops\.exp\) has no LRP rule"),
    (lambda h: keras.ops.sum(h * h, axis=1), "multiplies input-dependent tensors and neither factor is a softmax"),
    (lambda h: keras.ops.sum(h / (h + 2.0), axis=1), "dividing by an input-dependent tensor"),
    (lambda h: keras.ops.softmax(h[:, -1]) + h[:, 0], "softmax / sigmoid on the relevance path"),
])
def test_unsupported_ops(op, match):
    with pytest.raises(keras_lrp.UnsupportedLayerError, match=match):
        keras_lrp.explain(_op_model(op), X)


def test_layer_rules_errors():
    with pytest.raises(keras_lrp.UnsupportedLayerError, match=r"layer_rules=\{'<lambda name>': 'linear'\}"):
        keras_lrp.explain(_lambda_model(), X)
    lam = _lambda_model()
    name = next(l.name for l in lam.layers if isinstance(l, keras.layers.Lambda))
    with pytest.raises(ValueError, match=r"\['nope'\], which are not layers of the model"):
        keras_lrp.explain(lam, X, layer_rules={"nope": "linear"})
    with pytest.raises(ValueError, match="'quadratic' is not a rule name"):
        keras_lrp.explain(lam, X, layer_rules={name: "quadratic"})
    with pytest.raises(ValueError, match=r"declare it: explain\(\.\.\., layer_rules=\{'<lambda name>': 'linear'\}"):
        keras_lrp.explain(lam, X, layer_rules={name: keras_lrp.ZPlus()})


def test_several_inputs_errors():
    tok = keras.Input((None,), dtype="int32", name="tokens")
    num = keras.Input((2,), name="numbers")
    h = keras.layers.LSTM(3)(keras.layers.Embedding(10, 4)(tok))
    model = keras.Model([tok, num], keras.layers.Dense(2)(keras.layers.Concatenate()([h, num])))
    ids, feats = np.ones((2, 5), "int32"), np.zeros((2, 2), "float32")
    with pytest.raises(ValueError, match=r"2 inputs \['tokens', 'numbers'\]: give a list of 2 arrays"):
        keras_lrp.explain(model, ids)
    with pytest.raises(ValueError, match=r"missing: \['numbers'\]"):
        keras_lrp.explain(model, {"tokens": ids})
    with pytest.raises(ValueError, match="different batch sizes"):
        keras_lrp.explain(model, [ids, feats[:1]])
    with pytest.raises(ValueError, match=r"input 'numbers' has 3 features but the model expects 2"):
        keras_lrp.explain(model, [ids, np.zeros((2, 3))])


def test_timestep_errors(model):
    with pytest.raises(ValueError, match="timestep is only for models whose output has a time axis"):
        keras_lrp.explain(model, X, timestep=1)
    tagger = keras.Sequential([keras.Input((None, 4)), keras.layers.LSTM(3, return_sequences=True),
                               keras.layers.TimeDistributed(keras.layers.Dense(2))])
    with pytest.raises(ValueError, match="pass timestep="):
        keras_lrp.explain(tagger, X)
    with pytest.raises(ValueError, match="timestep out of range"):
        keras_lrp.explain(tagger, X, timestep=5)


def test_token_errors():
    model = keras.Sequential([keras.Input((None,), dtype="int32"), keras.layers.Embedding(10, 4),
                              keras.layers.LSTM(3), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match=r"token ids must be in 0\.\.9"):
        keras_lrp.explain(model, np.array([[1, 10]]))
    with pytest.raises(TypeError, match="integer token ids"):
        keras_lrp.explain(model, np.array([[1.5, 2.0]]))


def test_unknown_rule(model):
    with pytest.raises(ValueError, match="rule must be one of"):
        keras_lrp.explain(model, X, rule="bogus")


def test_unbuilt_model():
    with pytest.raises(ValueError, match="not built"):
        keras_lrp.explain(keras.Sequential([keras.layers.LSTM(3), keras.layers.Dense(2)]), X)


def test_a_rule_refusing_while_traced_raises_its_own_error(monkeypatch):
    """An UnsupportedLayerError raised inside the compiled function (a rule that can only refuse once it
    sees its tensors) reaches the user as itself, not wrapped in a TensorFlow StagingError."""
    from keras_lrp.propagators import shape

    def refuse(self, x, mask):
        raise keras_lrp.UnsupportedLayerError(self.layer, "refused while traced")

    monkeypatch.setattr(shape.CopyProp, "forward1", refuse)
    inp = keras.Input((5, 3))
    model = keras.Model(inp, keras.layers.Dense(2)(keras.layers.Flatten()(keras.layers.Permute((2, 1))(inp))))
    with pytest.raises(keras_lrp.UnsupportedLayerError, match=r"'permute.*' \(Permute\).*refused while traced"):
        keras_lrp.explain(model, np.zeros((2, 5, 3), "float32"))
