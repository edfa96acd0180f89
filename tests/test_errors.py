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


@pytest.mark.parametrize("build,match", [
    (lambda: keras.Sequential([keras.Input((None, 4)), keras.layers.GRU(3), keras.layers.Dense(2)]),
     r"'gru.*' \(GRU\).*LSTM"),
    (lambda: keras.Sequential([keras.Input((None, 4)), keras.layers.LSTM(3, return_sequences=True),
                               keras.layers.LSTM(3), keras.layers.Dense(2)]), "return_sequences=True"),
    (lambda: keras.Sequential([keras.Input((None, 4)), keras.layers.Bidirectional(keras.layers.LSTM(3), merge_mode="sum"),
                               keras.layers.Dense(2)]), "merge_mode='sum'"),
    (lambda: keras.Sequential([keras.Input((None, 4)), keras.layers.LSTM(3)]), "must end in a Dense"),
])
def test_unsupported_models(build, match):
    with pytest.raises(keras_lrp.UnsupportedLayerError, match=match):
        keras_lrp.explain(build(), X)


def test_unbuilt_model():
    with pytest.raises(ValueError, match="not built"):
        keras_lrp.explain(keras.Sequential([keras.layers.LSTM(3), keras.layers.Dense(2)]), X)
