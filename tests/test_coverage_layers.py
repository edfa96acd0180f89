"""Feed-forward layers: keras_lrp.explain vs the plain numpy oracles of tests/oracle_layers.py.

Each layer in a tiny model (Input((T, F)) -> layer -> Flatten / pooling -> Dense(3)), float64, random
perturbed weights, for two of three epsilon-rule settings; plus the seed's text CNN, functional models with
Concatenate / Add (a tensor feeding two layers), TimeDistributed(Dense) and Reshape.
"""
import numpy as np
import keras
import pytest

import keras_lrp
import oracle_layers as OL

L = keras.layers
T, F, CLASSES = 6, 3, 3
SETTINGS = [(1e-3, 0.0), (0.0, 1.0), (0.01, 1.0)]
TARGETS = np.array([0, 2, 1])


def x_float(seed=0, batch=3, steps=T):
    return OL.random_sequences(seed, batch, steps, F)


def sequential(layers, seed=0, steps=T):
    return OL.sequential_model(layers, F, seed, steps)


LAYERS = {
    "dense_3d": lambda: [L.Dense(4, activation="tanh"), L.Flatten()],
    "dense_3d_no_bias": lambda: [L.Dense(4, use_bias=False), L.Flatten()],
    "conv_valid_k3": lambda: [L.Conv1D(4, 3), L.Flatten()],
    "conv_valid_k2_s2": lambda: [L.Conv1D(4, 2, strides=2), L.Flatten()],
    "conv_same_k3": lambda: [L.Conv1D(4, 3, padding="same", activation="tanh"), L.Flatten()],
    "conv_same_k2_s2": lambda: [L.Conv1D(4, 2, strides=2, padding="same"), L.Flatten()],
    "conv_same_k4_s3": lambda: [L.Conv1D(2, 4, strides=3, padding="same"), L.Flatten()],
    "conv_same_k3_d2": lambda: [L.Conv1D(4, 3, padding="same", dilation_rate=2), L.Flatten()],
    "conv_causal_k2_d2": lambda: [L.Conv1D(4, 2, padding="causal", dilation_rate=2), L.Flatten()],
    "conv_causal_k3_s2": lambda: [L.Conv1D(4, 3, padding="causal", strides=2), L.Flatten()],
    "conv_no_bias_gap": lambda: [L.Conv1D(4, 3, padding="same", use_bias=False), L.GlobalAveragePooling1D()],
    "maxpool_2": lambda: [L.MaxPooling1D(2), L.Flatten()],
    "maxpool_3_s2_same": lambda: [L.MaxPooling1D(3, strides=2, padding="same"), L.Flatten()],
    "maxpool_2_s1_overlap": lambda: [L.MaxPooling1D(2, strides=1), L.Flatten()],
    "maxpool_4_same": lambda: [L.MaxPooling1D(4, padding="same"), L.Flatten()],
    "avgpool_2": lambda: [L.AveragePooling1D(2), L.Flatten()],
    "avgpool_3_s2_same": lambda: [L.AveragePooling1D(3, strides=2, padding="same"), L.Flatten()],
    "avgpool_4_same": lambda: [L.AveragePooling1D(4, padding="same"), L.Flatten()],
    "avgpool_2_s1": lambda: [L.AveragePooling1D(2, strides=1), L.Flatten()],
    "global_avg": lambda: [L.GlobalAveragePooling1D()],
    "global_max": lambda: [L.GlobalMaxPooling1D()],
    "global_avg_keepdims": lambda: [L.GlobalAveragePooling1D(keepdims=True), L.Flatten()],
    "global_max_keepdims": lambda: [L.GlobalMaxPooling1D(keepdims=True), L.Flatten()],
    "time_distributed_dense": lambda: [L.TimeDistributed(L.Dense(4, activation="tanh")), L.Flatten()],
    "reshape_9x2_conv": lambda: [L.Reshape((9, 2)), L.Conv1D(3, 2), L.Flatten()],
    "reshape_3x6_dense": lambda: [L.Reshape((3, 6)), L.Dense(2), L.Flatten()],
    "reshape_auto_dim": lambda: [L.Reshape((-1, 2)), L.Conv1D(2, 3, padding="same"), L.Flatten()],
    "identities": lambda: [L.Dropout(0.5), L.SpatialDropout1D(0.3), L.GaussianNoise(1.0), L.GaussianDropout(0.2),
                           L.AlphaDropout(0.2), L.ActivityRegularization(0.1), L.Activation("tanh"), L.Flatten()],
    "conv_pool_conv_chain": lambda: [L.Conv1D(4, 2, padding="causal", activation="tanh"),
                                     L.AveragePooling1D(2, padding="same"),
                                     L.Conv1D(3, 2, padding="same"), L.MaxPooling1D(2), L.Flatten()],
}


def _layer_cases():
    """Every layer with (0.01, 1) (stabiliser and bias share) and, alternating, the paper's setting
    (1e-3, 0) or the conserving one (0, 1)."""
    for n, name in enumerate(sorted(LAYERS)):
        for eps, bf in [SETTINGS[2], SETTINGS[n % 2]]:
            yield pytest.param(name, eps, bf, id=f"{name}-{eps}-{bf}")


@pytest.mark.parametrize("name,eps,bf", list(_layer_cases()))
def test_layer_matches_oracle(name, eps, bf):
    model = sequential(lambda: LAYERS[name]() + [L.Dense(CLASSES)], seed=len(name))
    OL.check_explain(model, x_float(seed=len(name) + 1), TARGETS, OL.Ctx(eps, bf, "all"))


def test_dense_hidden_relu_and_output_activation_not_applied():
    """A hidden Dense applies its activation forward; the output Dense's is not applied."""
    model = sequential(lambda: [L.Flatten(), L.Dense(5, activation="relu"), L.Dense(CLASSES, activation="sigmoid")])
    x = x_float(3)
    e = OL.check_explain(model, x, TARGETS, OL.Ctx(0.0, 1.0, "all"), against_model=False)
    probs = OL.model_output(model, x)
    np.testing.assert_allclose(1 / (1 + np.exp(-e.scores)), probs, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- the seed's text CNN

VOCAB, EMB, LEN = 20, 4, 8


def text_cnn(seed=0):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([
        keras.Input((LEN,), dtype="int32"),
        L.Embedding(VOCAB, EMB),
        L.Conv1D(5, 3, activation="relu"),
        L.Dropout(0.5),
        L.MaxPooling1D(2),
        L.Flatten(),
        L.Dense(6, activation="relu"),
        L.Dropout(0.5),
        L.Dense(CLASSES),
        L.Activation("softmax"),
    ])
    return OL.perturb(model, seed + 7)


@pytest.mark.parametrize("eps,bf", SETTINGS)
def test_text_cnn(eps, bf):
    model = text_cnn()
    ids = np.random.default_rng(4).integers(0, VOCAB, (3, LEN))
    e = OL.check_explain(model, ids, TARGETS, OL.Ctx(eps, bf, "all"), against_model=False)
    assert e.relevance.shape == (3, LEN, EMB)
    assert e.word_relevance.shape == (3, LEN)
    # scores are the pre-softmax logits of the model's own forward pass
    logits = OL.model_output(keras.Model(model.inputs[0], model.layers[-2].output), ids)
    np.testing.assert_allclose(e.scores, logits, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(keras.ops.softmax(e.scores)),
                               OL.model_output(model, ids), atol=1e-6)
    if bf == 1.0 and eps == 0.0:
        np.testing.assert_allclose(e.relevance.sum((1, 2)) + e.rest, e.explained_score, atol=1e-10)
        np.testing.assert_array_equal(e.rest, 0)


def test_text_cnn_predicted_class_by_default():
    model = text_cnn(seed=1)
    ids = np.random.default_rng(5).integers(0, VOCAB, (3, LEN))
    e = keras_lrp.explain(model, ids, dtype="float64")
    np.testing.assert_array_equal(e.target, OL.model_output(model, ids).argmax(-1))


def test_max_pool_tie_goes_to_first_maximum():
    """Equal values in a pooling window (ReLU zeros): the relevance goes to the first one."""
    model = sequential(lambda: [L.MaxPooling1D(3), L.Flatten(), L.Dense(CLASSES)])
    x = x_float(6, batch=2)
    x[:, 0:3, :] = 0.5       # whole first window tied
    x[:, 4:6, 1] = -2.0      # tie behind a different maximum at step 3
    x[:, 3, 1] = -2.0
    e = OL.check_explain(model, x, [0, 1], OL.Ctx(0.0, 1.0, "all"))
    assert np.all(e.relevance[:, 1:3, :] == 0)
    assert np.all(e.relevance[:, 4:6, 1] == 0)


# --------------------------------------------------------------------------- functional models

def _functional(build, seed):
    keras.utils.set_random_seed(seed)
    inp = keras.Input((T, F))
    model = keras.Model(inp, build(inp))
    return OL.perturb(model, seed + 50)


def _oracles(model, names, ctx):
    out = {}
    for n in names:
        o = OL.from_keras(model.get_layer(n), is_output=(n == "out"))
        o.ctx = ctx
        out[n] = o
    return out


def _compare(model, x, targets, ctx, per_sample):
    """per_sample(oracles, x_i, target_i) -> (relevance, score vector)."""
    e = keras_lrp.explain(model, x, targets, eps=ctx.eps, bias_factor=ctx.bias_factor, dtype="float64")
    res = [per_sample(x[i], targets[i]) for i in range(len(x))]
    r = np.stack([a for a, _ in res])
    scores = np.stack([s for _, s in res])
    OL.assert_close_rel(e.scores, scores, 1e-10, "scores")
    np.testing.assert_allclose(OL.model_output(model, x), scores, rtol=1e-4, atol=1e-5)
    OL.assert_close_rel(e.relevance, r)
    np.testing.assert_array_equal(e.rest, 0)
    if ctx.eps == 0 and ctx.bias_factor == 1:
        np.testing.assert_allclose(e.relevance.sum((1, 2)), e.explained_score, atol=1e-10)
    return e


def _one_hot_score(v, t):
    r = np.zeros_like(v)
    r[t] = v[t]
    return r


@pytest.mark.parametrize("axis", [-1, 1])
@pytest.mark.parametrize("eps,bf", SETTINGS)
def test_concatenate_branches(axis, eps, bf):
    """The input feeds a Conv1D and a Dense branch, concatenated on features or on time."""
    def build(inp):
        if axis == -1:
            a = L.Conv1D(2, 3, padding="same", name="conv")(inp)
            b = L.Dense(4, activation="tanh", name="dense")(inp)
        else:   # concatenation along time: equal feature sizes, different lengths
            a = L.Conv1D(3, 2, name="conv")(inp)
            b = L.Dense(3, activation="tanh", name="dense")(inp)
        h = L.Concatenate(axis=axis)([a, b])
        return L.Dense(CLASSES, name="out")(L.Flatten()(h))

    model = _functional(build, seed=3)
    ctx = OL.Ctx(eps, bf, "all")
    orc = _oracles(model, ["conv", "dense", "out"], ctx)
    flat = OL.Reshape()
    ax = -1 if axis == -1 else 0   # the oracle has no batch axis

    def per_sample(x, t):
        a, _ = orc["conv"].forward(x, None)
        b, _ = orc["dense"].forward(x, None)
        h = np.concatenate([a, b], axis=ax)
        v, _ = orc["out"].forward(flat.forward(h, None)[0], None)
        r_h = flat.backward(orc["out"].backward(_one_hot_score(v, t))[0])[0]
        r_a, r_b = np.split(r_h, [a.shape[ax]], axis=ax)
        return orc["conv"].backward(r_a)[0] + orc["dense"].backward(r_b)[0], v

    _compare(model, x_float(7), TARGETS, ctx, per_sample)


@pytest.mark.parametrize("eps,bf", SETTINGS)
def test_add_residual_three_summands(eps, bf):
    """Add([x, Dense(x), Conv1D(x)]) (N = 3 summands), the input used three times."""
    def build(inp):
        a = L.Dense(F, name="dense")(inp)
        b = L.Conv1D(F, 3, padding="same", activation="tanh", name="conv")(inp)
        h = L.Add(name="add")([inp, a, b])
        return L.Dense(CLASSES, name="out")(L.GlobalAveragePooling1D(name="gap")(h))

    model = _functional(build, seed=4)
    ctx = OL.Ctx(eps, bf, "all")
    orc = _oracles(model, ["dense", "conv", "out"], ctx)
    gap = OL.GlobalPool1D("avg")
    gap.ctx = ctx

    def per_sample(x, t):
        a, _ = orc["dense"].forward(x, None)
        b, _ = orc["conv"].forward(x, None)
        h = x + a + b
        v, _ = orc["out"].forward(gap.forward(h, None)[0], None)
        r_h = gap.backward(orc["out"].backward(_one_hot_score(v, t))[0])[0]
        r_x, r_a, r_b = OL.add_relevance([x, a, b], r_h, ctx)
        return r_x + orc["dense"].backward(r_a)[0] + orc["conv"].backward(r_b)[0], v

    _compare(model, x_float(8), TARGETS, ctx, per_sample)


@pytest.mark.parametrize("eps,bf", SETTINGS)
def test_add_two_dense_branches(eps, bf):
    def build(inp):
        a = L.Dense(4, activation="tanh", name="dense_a")(L.Flatten()(inp))
        b = L.Dense(4, name="dense_b")(L.Flatten()(inp))
        return L.Dense(CLASSES, name="out")(L.Add()([a, b]))

    model = _functional(build, seed=5)
    ctx = OL.Ctx(eps, bf, "all")
    orc = _oracles(model, ["dense_a", "dense_b", "out"], ctx)

    def per_sample(x, t):
        flat = x.reshape(-1)
        a, _ = orc["dense_a"].forward(flat, None)
        b, _ = orc["dense_b"].forward(flat, None)
        v, _ = orc["out"].forward(a + b, None)
        r_a, r_b = OL.add_relevance([a, b], orc["out"].backward(_one_hot_score(v, t))[0], ctx)
        return (orc["dense_a"].backward(r_a)[0] + orc["dense_b"].backward(r_b)[0]).reshape(x.shape), v

    _compare(model, x_float(9), TARGETS, ctx, per_sample)


def test_oracle_add_is_element_wise():
    """The oracle's Add spreads output m's share over the summands of unit m only."""
    ctx = OL.Ctx(0.1, 1.0, "all")
    a, b = np.array([1.0, -2.0]), np.array([0.5, 0.25])
    r = np.array([1.0, 0.0])
    ra, rb = OL.add_relevance([a, b], r, ctx)
    np.testing.assert_allclose(ra, [(1.0 + 0.05) / 1.6, 0.0])
    np.testing.assert_allclose(rb, [(0.5 + 0.05) / 1.6, 0.0])
