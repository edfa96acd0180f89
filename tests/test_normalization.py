"""LayerNormalization (LN-rule), RMSNormalization and BatchNormalization (inference affine map): keras_lrp vs the numpy
oracles of tests/oracle_attention.py, conservation in float64, forward vs Keras."""
import numpy as np
import keras
import pytest

import keras_lrp
import oracle_attention as OA
import oracle_layers as OL
from layer_checks import check_against_oracle
from keras_lrp.propagators import UnsupportedLayerError

L = keras.layers
T, F, CLASSES = 4, 3, 3
TARGETS = np.array([0, 2, 1])
SETTINGS = [(1e-3, 0.0), (0.0, 1.0), (0.01, 1.0)]


def sequential(layers, seed, dtype="float32"):
    """Input((T, F)) -> layers() (built in `dtype`), weights perturbed."""
    with OA.keras_dtype(dtype):
        keras.utils.set_random_seed(seed)
        model = keras.Sequential([keras.Input((T, F))] + layers())
    model = OL.perturb(model, seed + 100)
    for layer in model.layers:   # moving variances must stay positive
        if isinstance(layer, L.BatchNormalization):
            layer.moving_variance.assign(np.abs(layer.moving_variance.numpy()) + 0.2)
    return model


def check(model, ctx, seed=1):
    x = OL.random_sequences(seed, 3, T, F)
    return check_against_oracle(model, x, TARGETS, ctx, model.layers, check_rest=False)


MODELS = {
    "layernorm": lambda: [L.Dense(4, activation="tanh"), L.LayerNormalization(), L.Flatten(), L.Dense(CLASSES)],
    "layernorm_no_center": lambda: [L.LayerNormalization(center=False, epsilon=0.1), L.Flatten(), L.Dense(CLASSES)],
    "layernorm_no_scale": lambda: [L.Dense(4), L.LayerNormalization(scale=False), L.GlobalAveragePooling1D(),
                                   L.Dense(CLASSES)],
    "layernorm_rms": lambda: [L.Dense(4), L.LayerNormalization(rms_scaling=True), L.Flatten(), L.Dense(CLASSES)],
    "rmsnorm": lambda: [L.Dense(4), L.RMSNormalization(epsilon=0.01), L.Flatten(), L.Dense(CLASSES)],
    "batchnorm_between_dense": lambda: [L.Flatten(), L.Dense(5, activation="relu"), L.BatchNormalization(),
                                        L.Dense(4), L.BatchNormalization(center=False, scale=False), L.Dense(CLASSES)],
    "batchnorm_sequence": lambda: [L.BatchNormalization(), L.Conv1D(4, 2), L.BatchNormalization(epsilon=0.01),
                                   L.GlobalMaxPooling1D(), L.Dense(CLASSES)],
}


pytestmark = pytest.mark.filterwarnings("ignore:You passed `rms_scaling=True`")


@pytest.mark.parametrize("name,eps,bf", [(n, *s) for i, n in enumerate(sorted(MODELS))
                                          for s in (SETTINGS[2], SETTINGS[i % 2])])
def test_matches_oracle(name, eps, bf):
    check(sequential(MODELS[name], seed=len(name)), OL.Ctx(eps, bf, "all"))


@pytest.mark.parametrize("name", ["layernorm", "layernorm_rms", "rmsnorm", "batchnorm_between_dense"])
def test_conservation_float64(name):
    check(sequential(MODELS[name], seed=3 + len(name)), OL.Ctx(0.0, 1.0, "all"), seed=5)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_forward_equals_keras(name):
    x = OL.random_sequences(7, 3, T, F)
    for dtype, tol in (("float64", 1e-12), ("float32", 1e-6)):
        model = sequential(MODELS[name], seed=len(name), dtype=dtype)
        want = keras.ops.convert_to_numpy(model(x.astype(dtype), training=False))
        e = keras_lrp.explain(model, x, TARGETS, dtype=dtype)
        np.testing.assert_allclose(e.scores, want, rtol=0, atol=tol * np.abs(want).max())


@pytest.mark.parametrize("layer", [lambda: L.LayerNormalization(axis=1), lambda: L.BatchNormalization(axis=1)])
def test_other_axes_refused(layer):
    model = sequential(lambda: [layer(), L.Flatten(), L.Dense(CLASSES)], seed=1)
    with pytest.raises(UnsupportedLayerError, match="axis"):
        keras_lrp.explain(model, OL.random_sequences(0, 1, T, F), 0)
