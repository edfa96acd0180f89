"""LayerNormalization (LN-rule), RMSNormalization and BatchNormalization (inference affine map, folded into a preceding
linear layer where one exists): keras_lrp vs the numpy oracles of tests/oracle_attention.py, conservation in float64,
forward vs Keras."""
import numpy as np
import keras
import pytest

import keras_lrp
import oracle_attention as OA
import oracle_layers as OL
from layer_checks import check_against_oracle
from keras_lrp.backend import compute_scope
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
    # folded: Dense / Conv1D / TimeDistributed(Dense) with linear activation, then BatchNormalization
    "fold_dense": lambda: [L.Flatten(), L.Dense(5), L.BatchNormalization(), L.Dense(CLASSES)],
    "fold_dense_no_bias": lambda: [L.Dense(4, use_bias=False), L.BatchNormalization(center=False),
                                   L.GlobalAveragePooling1D(), L.Dense(CLASSES)],
    "fold_conv": lambda: [L.Conv1D(4, 2, padding="causal"), L.BatchNormalization(epsilon=0.01), L.Flatten(),
                          L.Dense(CLASSES)],
    "fold_time_distributed": lambda: [L.TimeDistributed(L.Dense(4)), L.BatchNormalization(), L.Flatten(),
                                      L.Dense(CLASSES)],
    "fold_output": lambda: [L.Flatten(), L.Dense(CLASSES), L.BatchNormalization()],
    # not folded: after a recurrent layer
    "batchnorm_after_lstm": lambda: [L.LSTM(4, return_sequences=True), L.BatchNormalization(), L.Flatten(),
                                     L.Dense(CLASSES)],
}
FOLDED = ["fold_dense", "fold_dense_no_bias", "fold_conv", "fold_time_distributed", "fold_output",
          "batchnorm_between_dense", "batchnorm_sequence"]


pytestmark = pytest.mark.filterwarnings("ignore:You passed `rms_scaling=True`")


@pytest.mark.parametrize("name,eps,bf", [(n, *s) for i, n in enumerate(sorted(MODELS))
                                          for s in (SETTINGS[2], SETTINGS[i % 2])])
def test_matches_oracle(name, eps, bf):
    check(sequential(MODELS[name], seed=len(name)), OL.Ctx(eps, bf, "all"))


@pytest.mark.parametrize("name", ["layernorm", "layernorm_rms", "rmsnorm", "batchnorm_between_dense", "fold_dense",
                                  "fold_conv", "fold_time_distributed", "batchnorm_after_lstm"])
def test_conservation_float64(name):
    check(sequential(MODELS[name], seed=3 + len(name)), OL.Ctx(0.0, 1.0, "all"), seed=5)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_forward_equals_keras(name):
    x = OL.random_sequences(7, 3, T, F)
    for dtype, tol in (("float64", 1e-12), ("float32", 1e-6)):
        model = sequential(MODELS[name], seed=len(name), dtype=dtype)
        with compute_scope():   # Keras's own float64 layers stay float64 on JAX / torch
            want = keras.ops.convert_to_numpy(model(x.astype(dtype), training=False))
        e = keras_lrp.explain(model, x, TARGETS, dtype=dtype)
        np.testing.assert_allclose(e.scores, want, rtol=0, atol=tol * np.abs(want).max())


@pytest.mark.parametrize("layer", [lambda: L.LayerNormalization(axis=1), lambda: L.BatchNormalization(axis=1)])
def test_other_axes_refused(layer):
    model = sequential(lambda: [layer(), L.Flatten(), L.Dense(CLASSES)], seed=1)
    with pytest.raises(UnsupportedLayerError, match="axis"):
        keras_lrp.explain(model, OL.random_sequences(0, 1, T, F), 0)


# --------------------------------------------------------------------------- BatchNormalization folding

def functional(name, seed):
    """The Sequential model ``MODELS[name]`` rebuilt as a functional model with the same weights."""
    seq = sequential(MODELS[name], seed)
    x = inp = keras.Input((T, F))
    for layer in seq.layers:
        x = layer(x)
    return keras.Model(inp, x), seq.layers


def batch_norm_props(model):
    """The BatchNormalization propagators of the explainer's walk, in graph order."""
    walk = keras_lrp.Explainer(model)._walk
    return [p for p in walk.propagators if isinstance(p.layer, L.BatchNormalization)]


@pytest.mark.parametrize("name,eps,bf", [(n, e, b) for n in ("fold_dense", "fold_conv", "fold_time_distributed")
                                          for e, b in ((0.05, 0.5), (0.0, 1.0))])
def test_folded_functional_matches_oracle(name, eps, bf):
    model, layers = functional(name, seed=11 + len(name))
    check_against_oracle(model, OL.random_sequences(2, 3, T, F), TARGETS, OL.Ctx(eps, bf, "all"), layers,
                         check_rest=False)


@pytest.mark.parametrize("name", FOLDED)
def test_folding_is_applied(name):
    """Every BatchNormalization right after a linear-activation Dense / Conv1D / TimeDistributed(Dense) is folded,
    and the relevance differs from the unfolded rule (so the oracle comparisons above can tell them apart)."""
    model = sequential(MODELS[name], seed=len(name))
    def linear(layer):
        inner = layer.layer if isinstance(layer, L.TimeDistributed) else layer
        return isinstance(inner, (L.Dense, L.Conv1D)) and inner.get_config()["activation"] == "linear"
    linear_before = [n > 0 and linear(model.layers[n - 1]) for n, layer in enumerate(model.layers)
                     if isinstance(layer, L.BatchNormalization)]
    assert [p.folded for p in batch_norm_props(model)] == linear_before
    assert any(linear_before)
    x, ctx = OL.random_sequences(3, 3, T, F), OL.Ctx(0.05, 1.0, "all")
    e = keras_lrp.explain(model, x, TARGETS, eps=ctx.eps, bias_factor=ctx.bias_factor, dtype="float64")
    unfolded = [OA.from_keras(l, is_output=(n == len(model.layers) - 1)) for n, l in enumerate(model.layers)]
    for o in unfolded:
        o.ctx = ctx
    for i in range(len(x)):
        v = x[i]
        for o in unfolded:
            v, _ = o.forward(v, None)
        r = np.zeros_like(v)
        r[TARGETS[i]] = v[TARGETS[i]]
        for o in reversed(unfolded):
            r, _ = o.backward(r)
        assert np.abs(e.relevance[i] - r).max() > 1e-6 * np.abs(r).max()


def test_not_folded_when_the_linear_output_is_read_twice():
    """Dense -> (BatchNormalization, Add): the Dense output feeds more than the BN, which keeps its own rule."""
    keras.utils.set_random_seed(4)
    inp = keras.Input((T, F))
    h = L.Dense(F)(inp)
    out = L.Dense(CLASSES)(L.Flatten()(L.Add()([L.BatchNormalization()(h), h])))
    model = OL.perturb(keras.Model(inp, out), 9)
    assert [p.folded for p in batch_norm_props(model)] == [False]
    e = keras_lrp.explain(model, OL.random_sequences(1, 3, T, F), TARGETS, eps=0.0, bias_factor=1.0, dtype="float64")
    OL.assert_conserves(e)


def _zplus(x, w, r):
    """The z+ rule for z_m = sum_k x_k w_km (+ bias, left out): R_k = sum_m z_km^+ / sum_k' z_k'm^+ R_m."""
    r_x = np.zeros_like(x)
    for m in range(w.shape[1]):
        pos = np.maximum(x * w[:, m], 0.0)
        if pos.sum() > 0:
            r_x += pos / pos.sum() * r[m]
    return r_x


def test_composite_rule_runs_over_the_folded_map():
    """layer_rules={dense: ZPlus()} applies z+ to W' = W a (b' = b a + c), the BN passing R through. Some
    gamma < 0 (a < 0), so z+ over W' differs from z+ over W followed by the BN's own rule."""
    model = sequential(MODELS["fold_dense"], seed=21)
    flat, dense, bn, head = model.layers
    bn.gamma.assign(bn.gamma.numpy() * np.array([1.0, -1.0, 1.0, -1.0, 1.0], np.float32))
    x = OL.random_sequences(6, 3, T, F)
    e = keras_lrp.explain(model, x, TARGETS, eps=0.0, bias_factor=1.0, dtype="float64",
                          layer_rules={dense.name: keras_lrp.ZPlus()})
    oracle = OA.fold_batch_norm(dense, bn)
    oracle_head = OA.from_keras(head, is_output=True)
    oracle_head.ctx = oracle.ctx = OL.Ctx(0.0, 1.0, "all")
    for i in range(len(x)):
        v = x[i].reshape(-1)
        hidden, _ = oracle.forward(v, None)
        out, _ = oracle_head.forward(hidden, None)
        r = np.zeros_like(out)
        r[TARGETS[i]] = out[TARGETS[i]]
        r_hidden, _ = oracle_head.backward(r)
        want = _zplus(v, oracle.w, r_hidden).reshape(T, F)
        OL.assert_close_rel(e.relevance[i], want, 1e-8)
