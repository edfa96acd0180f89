"""The canonical graph: models written the way keras.io and Kaggle write them, with user code around the
layers (custom layers, subclassed and nested models, Lambda), explained through the calls inside them.

Every model is explained in float64 with eps = 0, bias_factor = 1 and checked: the explained score is the
model's own output, relevance is conserved, masked steps get 0 and a padded sample is explained as the
same sample unpadded. The new op rules are checked against independent references: a traced layer against
the same network written with built-in layers (whose rules are checked against the numpy oracles), and the
matmul rule against ``oracle_ops.dense``.
"""
import numpy as np
import keras
import pytest
from keras import layers as L, ops

import keras_lrp
from keras_lrp.backend import to_numpy
import oracle_ops as OO

RNG = np.random.default_rng(0)
IDS = np.array([[3, 4, 5, 6, 0, 0], [7, 8, 9, 1, 2, 3], [5, 1, 0, 0, 0, 0]])
PAD = IDS == 0


def perturb(model, seed=1, scale=0.3):
    rng = np.random.default_rng(seed)
    model.set_weights([w + scale * rng.standard_normal(w.shape).astype(w.dtype) for w in model.get_weights()])
    return model


def explain64(model, x, **kw):
    return keras_lrp.explain(model, x, eps=0.0, bias_factor=1.0, dtype="float64", **kw)


def model_output(model, x, output=0):
    return to_numpy(keras.tree.flatten(model(x, training=False))[output])


def check(model, x, pads=None, output=None, index=0, timestep=None):
    """Explained score = the model's output; conservation; 0 at masked steps; padded = unpadded."""
    e = explain64(model, x, output=output, timestep=timestep)
    out = model_output(model, x, index)
    if out.ndim == 3:
        out = out[:, timestep]
    got = e.probabilities if e.probabilities is not None else e.scores
    np.testing.assert_allclose(got, out, rtol=0, atol=1e-5 * max(1.0, np.abs(out).max()))
    score = e.explained_score
    np.testing.assert_allclose(e.total_relevance() + e.rest, score, rtol=0, atol=1e-9 * np.abs(score).max())
    assert np.abs(e.relevance).max() > 0
    if pads is not None:
        assert np.all(e.relevance[pads] == 0)
        fixed_length = getattr(model, "inputs", None) and model.inputs[0].shape[1] is not None
        for i in range(0 if fixed_length else len(x)):
            if pads[i].any():
                e_i = explain64(model, x[i][~pads[i]][None], target=e.target[i:i + 1], output=output)
                np.testing.assert_allclose(e_i.relevance[0], e.relevance[i][~pads[i]], rtol=0,
                                           atol=1e-10 * np.abs(e.relevance[i]).max())
    return e


# ------------------------------------------------------------------------------------ user code families

class SubclassedLSTM(keras.Model):
    def __init__(self):
        super().__init__()
        self.embedding = L.Embedding(20, 5, mask_zero=True)
        self.lstm = L.LSTM(4)
        self.head = L.Dense(3)

    def call(self, x, training=False):
        return self.head(self.lstm(self.embedding(x)))


def test_subclassed_model_called_on_data():
    keras.utils.set_random_seed(0)
    model = SubclassedLSTM()
    model(IDS)
    perturb(model)
    check(model, IDS, PAD)


def test_nested_sequential_and_inner_model():
    keras.utils.set_random_seed(1)
    encoder = keras.Sequential([L.Embedding(20, 5, mask_zero=True), L.Bidirectional(L.LSTM(3, return_sequences=True)),
                                L.LSTM(4)])
    inp = keras.Input((None,), dtype="int32")
    model = perturb(keras.Model(inp, L.Dense(2)(encoder(inp))))
    check(model, IDS, PAD)
    # keras.io's end-to-end pattern: the trained model called inside a new one
    outer_in = keras.Input((None,), dtype="int32")
    check(keras.Model(outer_in, model(outer_in)), IDS, PAD)


def test_nested_model_called_twice_is_inlined_twice():
    keras.utils.set_random_seed(2)
    encoder = keras.Sequential([L.Embedding(20, 5, mask_zero=True), L.GRU(3)])
    a, b = keras.Input((None,), dtype="int32"), keras.Input((None,), dtype="int32")
    model = perturb(keras.Model([a, b], L.Dense(2)(L.Concatenate()([encoder(a), encoder(b)]))))
    e = explain64(model, [IDS, IDS[::-1]])
    np.testing.assert_allclose(e.total_relevance() + e.rest, e.explained_score, atol=1e-10)
    assert all(np.abs(r).max() > 0 for r in e.relevance)


class SoftmaxAttention(L.Layer):
    """The Kaggle LSTM attention layer, written with keras.ops."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.supports_masking = True

    def build(self, shape):
        self.W = self.add_weight(shape=(shape[-1], 1), name="W")
        self.b = self.add_weight(shape=(shape[1], 1), initializer="zeros", name="b")

    def call(self, x, mask=None):
        e = ops.tanh(ops.matmul(x, self.W) + self.b)
        a = ops.softmax(e, axis=1)
        if mask is not None:
            a = a * ops.cast(mask, a.dtype)[..., None]
        return ops.sum(x * a, axis=1)

    def compute_mask(self, x, mask=None):
        return None


class Attention(L.Layer):
    """The older Kaggle version (exp, mask, renormalise), under the name that clashes with Keras's own."""

    def __init__(self, step_dim, **kwargs):
        super().__init__(**kwargs)
        self.supports_masking = True
        self.step_dim = step_dim

    def build(self, shape):
        self.features = shape[-1]
        self.W = self.add_weight(shape=(shape[-1],), name="W")
        self.b = self.add_weight(shape=(shape[1],), initializer="zeros", name="b")

    def call(self, x, mask=None):
        eij = ops.reshape(ops.dot(ops.reshape(x, (-1, self.features)), ops.reshape(self.W, (self.features, 1))),
                          (-1, self.step_dim))
        a = ops.exp(ops.tanh(eij + self.b))
        if mask is not None:
            a = a * ops.cast(mask, a.dtype)
        a = a / (ops.sum(a, axis=1, keepdims=True) + 1e-7)
        return ops.sum(x * ops.expand_dims(a, -1), axis=1)

    def compute_mask(self, x, mask=None):
        return None


@pytest.mark.parametrize("layer", [lambda: SoftmaxAttention(), lambda: Attention(6)], ids=["softmax", "exp"])
def test_kaggle_attention_layers(layer):
    keras.utils.set_random_seed(3)
    inp = keras.Input((6,), dtype="int32")
    h = L.Bidirectional(L.LSTM(3, return_sequences=True))(L.Embedding(20, 5, mask_zero=True)(inp))
    model = perturb(keras.Model(inp, L.Dense(1, activation="sigmoid")(layer()(h))))
    check(model, IDS, PAD)


class TokenAndPositionEmbedding(L.Layer):
    def __init__(self, maxlen, vocab_size, embed_dim):
        super().__init__()
        self.token_emb = L.Embedding(input_dim=vocab_size, output_dim=embed_dim)
        self.pos_emb = L.Embedding(input_dim=maxlen, output_dim=embed_dim)

    def call(self, x):
        positions = self.pos_emb(ops.arange(start=0, stop=ops.shape(x)[-1], step=1))
        return self.token_emb(x) + positions


class TransformerBlock(L.Layer):
    def __init__(self, embed_dim, num_heads, ff_dim, rate=0.1):
        super().__init__()
        self.att = L.MultiHeadAttention(num_heads=num_heads, key_dim=embed_dim)
        self.ffn = keras.Sequential([L.Dense(ff_dim, activation="relu"), L.Dense(embed_dim)])
        self.layernorm1 = L.LayerNormalization(epsilon=1e-6)
        self.layernorm2 = L.LayerNormalization(epsilon=1e-6)
        self.dropout1, self.dropout2 = L.Dropout(rate), L.Dropout(rate)

    def call(self, inputs, training=False):
        attn_output = self.dropout1(self.att(inputs, inputs), training=training)
        out1 = self.layernorm1(inputs + attn_output)
        return self.layernorm2(out1 + self.dropout2(self.ffn(out1), training=training))


def keras_io_transformer(maxlen=6):
    keras.utils.set_random_seed(4)
    inp = L.Input(shape=(maxlen,))
    x = TransformerBlock(8, 2, 8)(TokenAndPositionEmbedding(maxlen, 20, 8)(inp))
    x = L.Dropout(0.1)(L.GlobalAveragePooling1D()(x))
    x = L.Dropout(0.1)(L.Dense(10, activation="relu")(x))
    return perturb(keras.Model(inp, L.Dense(2, activation="softmax")(x)))


def test_keras_io_transformer_text_classifier():
    """keras.io's "Text classification with Transformer": custom TokenAndPositionEmbedding (positions are a
    constant computed from the input's shape: no relevance) and TransformerBlock (a nested Sequential)."""
    model = keras_io_transformer()
    e = check(model, IDS)
    assert e.word_relevance.shape == IDS.shape
    # the traced graph is the same network as written with built-in layers: every call is one of them
    ops_used = {type(n.op).__name__ for n in keras_lrp.LRP(model)._walk.graph.nodes}
    assert {"MultiHeadAttention", "LayerNormalization", "Dense", "Embedding", "Add"} <= ops_used
    assert not ops_used & {"TransformerBlock", "TokenAndPositionEmbedding", "Sequential"}


# ------------------------------------------------------------------------ traced rules against references

class MatmulDense(L.Layer):
    def __init__(self, units, activation=None):
        super().__init__()
        self.units, self.activation = units, activation

    def build(self, shape):
        self.w = self.add_weight(shape=(shape[-1], self.units))
        self.b = self.add_weight(shape=(self.units,), initializer="random_normal")

    def call(self, x):
        z = ops.matmul(x, self.w) + self.b
        return ops.relu(z) if self.activation == "relu" else z


def test_matmul_with_weights_equals_dense_and_the_numpy_oracle():
    keras.utils.set_random_seed(5)
    inp = keras.Input((5, 3))
    h = L.LSTM(4)(inp)
    custom = perturb(keras.Model(inp, L.Dense(2)(MatmulDense(6, "relu")(h))))
    inp2 = keras.Input((5, 3))
    builtin = keras.Model(inp2, L.Dense(2)(L.Dense(6, activation="relu")(L.LSTM(4)(inp2))))
    builtin.set_weights(custom.get_weights())
    x = RNG.standard_normal((4, 5, 3))
    for eps, bias_factor in ((0.0, 1.0), (0.01, 0.0), (0.01, 1.0)):
        a = keras_lrp.explain(custom, x, eps=eps, bias_factor=bias_factor, dtype="float64")
        b = keras_lrp.explain(builtin, x, eps=eps, bias_factor=bias_factor, dtype="float64")
        np.testing.assert_allclose(a.relevance, b.relevance, rtol=0, atol=1e-12 * np.abs(b.relevance).max())
    # the rule alone against the plain numpy epsilon-rule
    inp3 = keras.Input((4,))
    layer = MatmulDense(3)
    single = keras.Model(inp3, layer(inp3))
    v = RNG.standard_normal((5, 4))
    e = keras_lrp.explain(single, v, target=1, eps=0.01, bias_factor=0.5, dtype="float64")
    w, b = (np.asarray(t, np.float64) for t in layer.get_weights())
    r_out = np.zeros((5, 3))
    r_out[:, 1] = (v @ w + b)[:, 1]
    np.testing.assert_allclose(e.relevance, OO.dense(v, w, b, r_out, 0.01, 0.5), rtol=1e-12, atol=1e-14)


def test_hand_written_dot_product_attention_equals_the_attention_layer():
    """softmax(h h^T) h with ops.matmul (attention weights held constant in the product) is explained as
    keras.layers.Attention()([h, h]) is."""
    keras.utils.set_random_seed(6)
    inp = keras.Input((5, 3))
    h = L.LSTM(4, return_sequences=True)(inp)
    weights = ops.softmax(ops.matmul(h, ops.transpose(h, (0, 2, 1))), axis=-1)
    hand = perturb(keras.Model(inp, L.Dense(2)(ops.sum(ops.matmul(weights, h), axis=1))))
    inp2 = keras.Input((5, 3))
    h2 = L.LSTM(4, return_sequences=True)(inp2)
    layer = keras.Model(inp2, L.Dense(2)(ops.sum(L.Attention()([h2, h2]), axis=1)))
    layer.set_weights(hand.get_weights())
    x = RNG.standard_normal((3, 5, 3))
    a, b = explain64(hand, x), explain64(layer, x)
    np.testing.assert_allclose(a.scores, b.scores, rtol=1e-12)
    np.testing.assert_allclose(a.relevance, b.relevance, rtol=0, atol=1e-11 * np.abs(b.relevance).max())


def test_elementwise_activation_ops_pass_relevance_like_activation_layers():
    keras.utils.set_random_seed(7)
    inp = keras.Input((5, 3))
    hand = keras.Model(inp, L.Dense(2)(ops.tanh(L.Dense(4)(L.LSTM(4)(inp)))))
    inp2 = keras.Input((5, 3))
    layer = keras.Model(inp2, L.Dense(2)(L.Activation("tanh")(L.Dense(4)(L.LSTM(4)(inp2)))))
    perturb(hand)
    layer.set_weights(hand.get_weights())
    x = RNG.standard_normal((3, 5, 3))
    np.testing.assert_array_equal(explain64(hand, x).relevance, explain64(layer, x).relevance)


def test_lambda_slices_are_traced_and_equal_the_declared_linear_rule():
    keras.utils.set_random_seed(8)
    inp = keras.Input((None, 8))
    parts = [L.Lambda(lambda t: t[:, :, :4], name="left")(inp), L.Lambda(lambda t: t[:, :, 4:], name="right")(inp)]
    model = perturb(keras.Model(inp, L.Dense(2)(L.Concatenate()([L.LSTM(3)(p) for p in parts]))))
    x = RNG.standard_normal((3, 5, 8))
    traced = check(model, x)
    declared = keras_lrp.explain(model, x, eps=0.0, bias_factor=1.0, dtype="float64",
                                 layer_rules={"left": "linear", "right": "linear"})
    np.testing.assert_allclose(traced.relevance, declared.relevance, rtol=0, atol=1e-12)


def test_repeat_vector_autoencoder_and_permute():
    keras.utils.set_random_seed(9)
    inp = keras.Input((7, 2))
    z = L.LSTM(4)(inp)
    d = L.LSTM(4, return_sequences=True)(L.RepeatVector(7)(z))
    check(perturb(keras.Model(inp, L.TimeDistributed(L.Dense(2))(d))), RNG.standard_normal((3, 7, 2)), timestep=3)
    inp = keras.Input((7, 2))
    model = perturb(keras.Model(inp, L.Dense(2)(L.Flatten()(L.Dense(3)(L.Permute((2, 1))(inp))))))
    check(model, RNG.standard_normal((3, 7, 2)))


# ------------------------------------------------------------------------------------ what is refused

class Branchy(L.Layer):
    def call(self, x):
        if ops.sum(x) > 0:
            return x * 2.0
        return x

    def compute_output_shape(self, shape):
        return shape


class TensorFlowInside(L.Layer):
    def call(self, x):
        import tensorflow as tf
        return tf.math.cumsum(x, axis=1)

    def compute_output_shape(self, shape):
        return shape


@pytest.mark.parametrize("layer, line", [(Branchy, "if ops.sum(x) > 0:"), (TensorFlowInside, "tf.math.cumsum")])
def test_untraceable_calls_are_refused_naming_layer_and_line(layer, line):
    inp = keras.Input((5, 3))
    model = keras.Model(inp, L.Dense(2)(L.LSTM(3)(layer()(inp))))
    with pytest.raises(keras_lrp.UnsupportedLayerError) as info:
        keras_lrp.explain(model, RNG.standard_normal((2, 5, 3)))
    message = str(info.value)
    assert f"test_canonical.{layer.__name__}" in message and line in message and "keras_lrp.register" in message


def test_a_users_class_named_like_a_keras_layer_is_not_taken_for_it():
    inp = keras.Input((5, 3))

    class Attention(Branchy):
        pass

    model = keras.Model(inp, L.Dense(2)(L.LSTM(3)(Attention()(inp))))
    with pytest.raises(keras_lrp.UnsupportedLayerError, match=r"\(test_canonical\..*Attention\)"):
        keras_lrp.explain(model, RNG.standard_normal((2, 5, 3)))


def test_a_registered_propagator_replaces_tracing():
    class Doubler(L.Layer):
        def call(self, x):
            return x * 2.0

    calls = []

    @keras_lrp.register(Doubler, rule="y = 2 x: R passes unchanged")
    class DoublerProp(keras_lrp.Propagator):
        def forward1(self, x, mask):
            calls.append("forward")
            return 2.0 * x, None

        def relevance1(self, cache, r):
            return r, None

    try:
        inp = keras.Input((5, 3))
        model = perturb(keras.Model(inp, L.Dense(2)(L.LSTM(3)(Doubler()(inp)))))
        check(model, RNG.standard_normal((2, 5, 3)))
        assert calls and any(row.propagator is DoublerProp for row in keras_lrp.propagators.supported_layers())
    finally:
        keras_lrp.propagators.unregister(Doubler)
    assert not any(row.propagator is DoublerProp for row in keras_lrp.propagators.supported_layers())


# ------------------------------------------------------------------------------------ outputs, no mutation

def two_output_model():
    keras.utils.set_random_seed(10)
    tok, feat = keras.Input((None,), dtype="int32", name="tokens"), keras.Input((None, 2), name="feat")
    h = L.LSTM(3, return_sequences=True)(L.Embedding(20, 4)(tok))
    tags = L.TimeDistributed(L.Dense(3), name="tags")(L.Concatenate()([h, L.Dense(3)(feat)]))
    label = L.Dense(2, name="label")(L.GlobalAveragePooling1D()(h))
    return perturb(keras.Model([tok, feat], {"label": label, "tags": tags}))


def test_multi_output_model_explains_the_chosen_output():
    model = two_output_model()
    x = [IDS, RNG.standard_normal((3, 6, 2))]
    with pytest.raises(ValueError, match="output="):
        keras_lrp.explain(model, x)
    with pytest.raises(ValueError, match="not an output"):
        keras_lrp.explain(model, x, output="nope")
    by_name = explain64(model, x, output="label")
    np.testing.assert_allclose(by_name.scores, to_numpy(model(x)["label"]), atol=1e-5)
    np.testing.assert_allclose(by_name.total_relevance() + by_name.rest, by_name.explained_score, atol=1e-10)
    index = model.output_names.index("label")
    np.testing.assert_array_equal(explain64(model, x, output=index).relevance[0], by_name.relevance[0])
    tags = explain64(model, x, output="tags", timestep=4)
    np.testing.assert_allclose(tags.scores, to_numpy(model(x)["tags"])[:, 4], atol=1e-5)


def test_timestep_is_checked_against_the_chosen_outputs_length():
    """A tagger whose output follows its second input: step 6 is valid although the first input has 3 steps."""
    keras.utils.set_random_seed(11)
    a, b = keras.Input((None, 2)), keras.Input((None, 2))
    context = L.LSTM(3)(a)
    steps = L.LSTM(3, return_sequences=True)(b)
    tags = L.TimeDistributed(L.Dense(2))(steps + ops.expand_dims(context, 1))
    model = perturb(keras.Model([a, b], tags))
    x = [RNG.standard_normal((2, 3, 2)), RNG.standard_normal((2, 8, 2))]
    e = explain64(model, x, timestep=6)
    np.testing.assert_allclose(e.scores, to_numpy(model(x))[:, 6], atol=1e-5)
    with pytest.raises(ValueError, match="has 8 steps"):
        keras_lrp.explain(model, x, timestep=8)


def test_the_users_model_is_not_mutated():
    model = keras_io_transformer()
    layers = list(model._flatten_layers(include_self=True))
    before = [(len(l._inbound_nodes), len(l._outbound_nodes)) for l in layers]
    config, out = model.get_config(), model_output(model, IDS)
    keras_lrp.explain(model, IDS)
    keras_lrp.Explainer(model, method="gi").attribute(IDS)
    assert [(len(l._inbound_nodes), len(l._outbound_nodes)) for l in layers] == before
    assert model.get_config() == config
    np.testing.assert_array_equal(model_output(model, IDS), out)


def test_cnn_lstm_time_distributed_conv_and_model():
    """Video / sequence-of-windows models: TimeDistributed around Conv1D, pooling, or a whole model."""
    keras.utils.set_random_seed(12)
    inp = keras.Input((5, 8, 2))
    h = L.TimeDistributed(L.GlobalMaxPooling1D())(L.TimeDistributed(L.Conv1D(3, 3, activation="relu"))(inp))
    x = RNG.standard_normal((3, 5, 8, 2))
    e = check(perturb(keras.Model(inp, L.Dense(2, activation="softmax")(L.LSTM(4)(h)))), x)
    assert e.relevance.shape == x.shape
    window = keras.Sequential([keras.Input((8, 2)), L.Conv1D(3, 2), L.Flatten(), L.Dense(4, activation="tanh")])
    inp = keras.Input((5, 8, 2))
    check(perturb(keras.Model(inp, L.Dense(2)(L.GRU(3)(L.TimeDistributed(window)(inp))))), x)


def test_eps_beyond_the_dtype_range_is_refused():
    keras.utils.set_random_seed(13)
    inp = keras.Input((5, 3))
    model = keras.Model(inp, L.Dense(2)(L.LSTM(3)(inp)))
    with pytest.raises(ValueError, match="beyond the float32 range"):
        keras_lrp.explain(model, RNG.standard_normal((2, 5, 3)), eps=1e300)
    keras_lrp.explain(model, RNG.standard_normal((2, 5, 3)), eps=1e300, dtype="float64")
