"""Attention layers (Attention, AdditiveAttention, MultiHeadAttention): keras_lrp vs the numpy oracles of
tests/oracle_attention.py, conservation in float64, and the forward pass vs Keras's own layers.

Whole models (the users' shapes: Bi-LSTM -> MultiHeadAttention(self) -> LayerNormalization ->
GlobalAveragePooling1D -> Dense; Bi-GRU -> Attention([h, h]) -> GlobalMaxPooling1D -> Dense) go through
keras_lrp.explain. Keras masks (Embedding(mask_zero)) in functional models need the functional walk,
so masks are tested on the propagators directly: forward against the Keras layer in a functional
model, relevance against the oracle.
"""
import numpy as np
import keras
import pytest

import keras_lrp
import oracle_attention as OA
import oracle_layers as OL
from layer_checks import check_against_oracle
from keras_lrp.backend import compute_scope
from keras_lrp.propagators import Context, UnsupportedLayerError, propagator_for
from keras_lrp.rules import Epsilon

L = keras.layers
to_numpy = keras.ops.convert_to_numpy
T, F, CLASSES = 5, 3, 3
TARGETS = np.array([0, 2, 1])
SETTINGS = [(1e-3, 0.0), (0.0, 1.0), (0.01, 1.0)]


def tensors(values):
    """numpy arrays (None kept) as the backend's tensors, as the engine hands them to a propagator (a numpy
    array times a torch tensor is a TypeError)."""
    return [None if v is None else keras.ops.convert_to_tensor(v) for v in values]


def x_float(seed=0, batch=3):
    return OL.random_sequences(seed, batch, T, F)


def functional(build, seed=0, dtype="float32"):
    """Input((T, F)) -> build(input) -> output, weights perturbed (non-zero biases, scales != 1)."""
    with OA.keras_dtype(dtype):
        keras.utils.set_random_seed(seed)
        inp = keras.Input((T, F))
        model = keras.Model(inp, build(inp))
    return OL.perturb(model, seed + 100)


def mha_model(heads=2, key_dim=2, causal=False, **kw):
    def build(inp):
        h = L.Bidirectional(L.LSTM(2, return_sequences=True))(inp)
        a = L.MultiHeadAttention(heads, key_dim, **kw)(h, h, use_causal_mask=causal)
        a = L.LayerNormalization()(a)
        return L.Dense(CLASSES)(L.GlobalAveragePooling1D()(a))
    return build


def attention_model(layer_fn, causal=False):
    def build(inp):
        h = L.Bidirectional(L.GRU(2, return_sequences=True))(inp)
        a = layer_fn()([h, h], use_causal_mask=causal)
        return L.Dense(CLASSES)(L.GlobalMaxPooling1D()(a))
    return build


def model_layers(model):
    return [l for l in model.layers if not isinstance(l, keras.layers.InputLayer)]


def check_model(model, ctx, causal=False, seed=1):
    return check_against_oracle(model, x_float(seed), TARGETS, ctx, model_layers(model), causal=causal)


@pytest.mark.parametrize("eps,bf", SETTINGS)
def test_bilstm_mha_layernorm_matches_oracle(eps, bf):
    check_model(functional(mha_model(), seed=1), OL.Ctx(eps, bf, "all"))


@pytest.mark.parametrize("causal,kw", [
    (True, {}),
    pytest.param(False, {"value_dim": 3, "output_shape": 4, "use_bias": False}, marks=pytest.mark.skipif(
        keras.config.backend() == "jax", reason="Keras 3.15's own MultiHeadAttention fails on JAX when value_dim != "
                                                "key_dim (cannot reshape in its dot_product_attention fallback)"))])
def test_mha_causal_and_projection_shapes(causal, kw):
    check_model(functional(mha_model(heads=3, key_dim=2, causal=causal, **kw), seed=2), OL.Ctx(0.01, 1.0, "all"),
                causal=causal)


ATTENTIONS = {
    "dot": lambda: L.Attention(),
    "dot_scale": lambda: L.Attention(use_scale=True),
    "concat": lambda: L.Attention(score_mode="concat"),
    "concat_scale": lambda: L.Attention(use_scale=True, score_mode="concat", dropout=0.3),
    "additive": lambda: L.AdditiveAttention(),
    "additive_no_scale": lambda: L.AdditiveAttention(use_scale=False),
}


@pytest.mark.parametrize("name,causal,eps,bf", [
    ("dot", False, 0.0, 1.0), ("dot_scale", True, 1e-3, 0.0), ("concat", False, 0.01, 1.0),
    ("concat_scale", True, 0.0, 1.0), ("additive", False, 1e-3, 0.0), ("additive_no_scale", True, 0.01, 1.0)])
def test_bigru_attention_matches_oracle(name, causal, eps, bf):
    check_model(functional(attention_model(ATTENTIONS[name], causal), seed=len(name)), OL.Ctx(eps, bf, "all"),
                causal=causal)


def keras_float64_rtol(name):
    """How close Keras's own float64 layer is to float64: MultiHeadAttention on JAX computes its softmax in
    float32 (jax.nn.dot_product_attention, 1e-8 relative off, measured); keras_lrp's float64 attention is
    checked against the numpy oracle above."""
    return 1e-6 if name == "mha" and keras.config.backend() == "jax" else 1e-12


@pytest.mark.parametrize("name", ["mha", "dot_scale", "additive"])
def test_forward_equals_keras_float64(name):
    """explain's scores (its own forward pass, float64) equal the float64 Keras model's outputs.

    key_dim = 4: Keras's float64 MultiHeadAttention rounds 1 / sqrt(key_dim) to float32 (5e-9 relative
    off for key_dim = 2, measured); keras_lrp uses the exact value (the oracle tests check it), and
    1 / sqrt(4) is exact in both."""
    build = mha_model(key_dim=4, causal=True) if name == "mha" else attention_model(ATTENTIONS[name], causal=True)
    model = functional(build, seed=5, dtype="float64")
    x = x_float(6)
    e = keras_lrp.explain(model, x, TARGETS, eps=0.0, bias_factor=1.0, dtype="float64")
    with compute_scope():   # Keras's own float64 layers stay float64 on JAX / torch
        want = keras.ops.convert_to_numpy(model(x))
    np.testing.assert_allclose(e.scores, want, rtol=0, atol=keras_float64_rtol(name) * np.abs(want).max())
    model32 = functional(build, seed=5)
    want32 = OL.model_output(model32, x)
    e32 = keras_lrp.explain(model32, x.astype("float32"), TARGETS, dtype="float32")
    np.testing.assert_allclose(e32.scores, want32, rtol=0, atol=1e-6 * np.abs(want32).max())


# --------------------------------------------------------------------------- masks, on the propagators

VOCAB, EMB = 9, 3
IDS = np.array([[1, 2, 3, 0, 0], [4, 5, 6, 7, 8], [0, 3, 0, 2, 1]])   # padding at the end, none, inside


def masked_self_attention(make_layer, causal, dtype):
    """ids -> Embedding(mask_zero) -> layer(h, h): the Keras model, the embedding and the attention layer."""
    with OA.keras_dtype(dtype):
        keras.utils.set_random_seed(7)
        layer = make_layer()
        inp = keras.Input((T,), dtype="int32")
        emb = L.Embedding(VOCAB, EMB, mask_zero=True)
        h = emb(inp)
        out = layer(h, h, use_causal_mask=causal) if isinstance(layer, L.MultiHeadAttention) else \
            layer([h, h], use_causal_mask=causal)
        model = keras.Model(inp, out)
    return OL.perturb(model, 8), emb, layer


LAYERS = {"mha": lambda: L.MultiHeadAttention(2, 4),   # key_dim 4: see test_forward_equals_keras_float64
          "dot_scale": ATTENTIONS["dot_scale"],
          "concat": ATTENTIONS["concat"], "additive": ATTENTIONS["additive"]}


@pytest.mark.parametrize("name", sorted(LAYERS))
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.usefixtures("float64_kept")   # calls the propagators directly
def test_masked_propagator_forward_and_relevance(name, causal):
    model, emb, layer = masked_self_attention(LAYERS[name], causal, "float64")
    h = np.asarray(to_numpy(emb.embeddings), np.float64)[IDS]
    mask = IDS != 0
    ctx = Context("float64", Epsilon(0.01, 1.0), "all")
    prop = propagator_for(layer, ctx)
    (y,), (out_mask,), cache = prop.forward(tensors([h, h]), tensors([mask, mask]))
    want = keras.ops.convert_to_numpy(model(IDS))
    np.testing.assert_allclose(to_numpy(y), want, rtol=0, atol=keras_float64_rtol(name) * np.abs(want).max())
    np.testing.assert_array_equal(to_numpy(out_mask), mask)
    r = np.random.default_rng(3).standard_normal(y.shape)
    r_ins, rest = prop.relevance(cache, tensors([r]))
    oracle = OA.from_keras(layer, causal=causal)
    oracle.ctx = OL.Ctx(0.01, 1.0, "all")
    for i in range(len(IDS)):
        got = to_numpy(r_ins[0][i]) + to_numpy(r_ins[1][i])
        np.testing.assert_allclose(oracle.attend(h[i], h[i], None, mask[i], mask[i]), want[i], rtol=1e-10, atol=1e-12)
        r_v, rest_i = oracle.attend_backward(r[i])
        OL.assert_close_rel(got, r_v, 1e-10)
        got_rest = 0.0 if rest is None else float(to_numpy(rest[i]))
        assert abs(got_rest - rest_i) <= 1e-10 * np.abs(r[i]).sum()
        # padded value positions get exactly nothing unless a query row has no allowed value
        if name != "mha" and not causal:
            assert np.all(got[~mask[i]] == 0.0)


@pytest.mark.parametrize("name", ["mha", "dot_scale"])
@pytest.mark.usefixtures("float64_kept")   # calls the propagators directly
def test_masked_conservation(name):
    """eps = 0, bias_factor = 1: relevance on the inputs + rest == relevance on the outputs."""
    model, emb, layer = masked_self_attention(LAYERS[name], True, "float64")
    h = np.asarray(to_numpy(emb.embeddings), np.float64)[IDS]
    mask = IDS != 0
    prop = propagator_for(layer, Context("float64", Epsilon(0.0, 1.0), "all"))
    (y,), _, cache = prop.forward(tensors([h, h]), tensors([mask, mask]))
    r = to_numpy(y) * np.random.default_rng(4).uniform(0.5, 1.5, y.shape)
    r_ins, rest = prop.relevance(cache, tensors([r]))
    total = (to_numpy(r_ins[0]) + to_numpy(r_ins[1])).sum(axis=(1, 2)) + (0.0 if rest is None else to_numpy(rest))
    np.testing.assert_allclose(total, r.sum(axis=(1, 2)), rtol=0, atol=1e-9 * np.abs(r).sum(axis=(1, 2)).max())


@pytest.mark.parametrize("name", ["mha", "attention"])
@pytest.mark.usefixtures("float64_kept")   # calls the propagators directly
def test_separate_query_value_key(name):
    """mha(key=k, value=v, query=q) / Attention()([q, v, k]): inputs are matched to their roles whatever the
    call's order; only the value gets relevance, and it matches the oracle."""
    keras.utils.set_random_seed(9)
    qi, vi, ki = (keras.Input((T, F), name=n) for n in ("q", "v", "k"))
    if name == "mha":
        layer = L.MultiHeadAttention(2, 4)
        out = layer(key=ki, value=vi, query=qi)
    else:
        layer = L.Attention(use_scale=True)
        out = layer([qi, vi, ki])
    model = OL.perturb(keras.Model([qi, vi, ki], out), 10)
    rng = np.random.default_rng(11)
    vals = {n: rng.standard_normal((2, T, F)) for n in "qvk"}
    by_id = {id(qi): vals["q"], id(vi): vals["v"], id(ki): vals["k"]}
    node_inputs = layer._inbound_nodes[0].input_tensors
    prop = propagator_for(layer, Context("float64", Epsilon(0.0, 1.0), "all"))
    (y,), _, cache = prop.forward(tensors([by_id[id(t)] for t in node_inputs]), [None] * 3)
    want = keras.ops.convert_to_numpy(model([vals[n].astype("float32") for n in "qvk"]))
    np.testing.assert_allclose(to_numpy(y), want, rtol=0, atol=1e-5 * np.abs(want).max())   # Keras in float32
    r_ins, _ = prop.relevance(cache, [y])
    oracle = OA.from_keras(layer)
    oracle.ctx = OL.Ctx(0.0, 1.0, "all")
    for i in range(2):
        oracle.attend(vals["q"][i], vals["v"][i], vals["k"][i])
        r_v, _ = oracle.attend_backward(to_numpy(y)[i])
        for t, r_in in zip(node_inputs, r_ins):
            if t is vi:
                OL.assert_close_rel(to_numpy(r_in[i]), r_v, 1e-10)
            else:
                np.testing.assert_array_equal(to_numpy(r_in[i]), 0.0)


def test_refusals_name_the_problem():
    inp = keras.Input((T, F))
    layer = L.MultiHeadAttention(2, 2)
    out, _ = layer(inp, inp, return_attention_scores=True)
    model = keras.Model(inp, L.Dense(2)(L.Flatten()(out)))
    with pytest.raises(UnsupportedLayerError, match="return_attention_scores"):
        keras_lrp.explain(model, x_float(0, 1), 0)
    att = L.Attention()
    att([inp, inp], return_attention_scores=True)
    with pytest.raises(UnsupportedLayerError, match="return_attention_scores"):
        propagator_for(att, Context("float64", Epsilon(), "all")).roles
    twice = L.Attention()
    twice([inp, inp])
    twice([inp, inp])
    with pytest.raises(UnsupportedLayerError, match="called exactly once"):
        propagator_for(twice, Context("float64", Epsilon(), "all")).roles
    mask_in = keras.Input((T,), dtype="bool")
    explicit = L.MultiHeadAttention(2, 2)
    explicit(inp, inp, attention_mask=mask_in[:, None, :] & mask_in[:, :, None])
    with pytest.raises(UnsupportedLayerError, match="extra tensors"):
        propagator_for(explicit, Context("float64", Epsilon(), "all")).roles
