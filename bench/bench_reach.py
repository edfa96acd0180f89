"""How many models, written the way keras.io examples, Kaggle notebooks and old tf.keras code write them,
keras-lrp explains: for each, explain in float64 with eps = 0, bias_factor = 1 and check that the score
equals the model's own output and that relevance is conserved.

    python bench/bench_reach.py            # one line per model, then the counts

A model counts as *explained* when both checks hold, *refused* when keras-lrp raises a clear error
before computing, and *wrong* otherwise (a score that differs from the model's, a conservation gap).
The models are small and random (reach is about structure, not training); none is in the test suite as
written here.
"""
from __future__ import annotations

import os
import sys
import time
import traceback

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import keras  # noqa: E402
from keras import layers as L, ops  # noqa: E402

import keras_lrp  # noqa: E402

RNG = np.random.default_rng(0)
V, T, B = 30, 7, 3
IDS = RNG.integers(1, V, (B, T))
IDS[0, 5:] = 0
XF = RNG.standard_normal((B, T, 3))


def emb(mask=True, dim=6):
    return L.Embedding(V, dim, mask_zero=mask)


def tokens(maxlen=None):
    return keras.Input((maxlen,), dtype="int32")


# --------------------------------------------------------------------------------------------- models

def imdb_lstm():
    return keras.Sequential([tokens(), emb(), L.LSTM(8), L.Dropout(0.2), L.Dense(1, activation="sigmoid")]), IDS


def imdb_bilstm_stack():
    i = tokens()
    h = L.Bidirectional(L.LSTM(6, return_sequences=True))(emb()(i))
    return keras.Model(i, L.Dense(2, activation="softmax")(L.Bidirectional(L.LSTM(4))(h))), IDS


def gru_text():
    return keras.Sequential([tokens(), emb(False), L.GRU(8, dropout=0.1), L.Dense(3)]), IDS


def conv1d_text():
    return keras.Sequential([tokens(T), emb(False), L.Conv1D(8, 3, activation="relu"), L.GlobalMaxPooling1D(),
                             L.Dense(2)]), IDS


def cnn_lstm_text():
    return keras.Sequential([tokens(T), emb(False), L.Conv1D(8, 3, padding="same", activation="relu"),
                             L.MaxPooling1D(2), L.LSTM(6), L.Dense(2)]), IDS


def attention_layer_masked():
    i = tokens()
    h = L.LSTM(6, return_sequences=True)(emb()(i))
    return keras.Model(i, L.Dense(2)(L.GlobalAveragePooling1D()(L.Attention()([h, h])))), IDS


def additive_attention_masked():
    i = tokens()
    h = L.Bidirectional(L.GRU(4, return_sequences=True))(emb()(i))
    return keras.Model(i, L.Dense(2)(L.GlobalAveragePooling1D()(L.AdditiveAttention()([h, h])))), IDS


def mha_masked():
    i = tokens()
    h = L.LSTM(6, return_sequences=True)(emb()(i))
    a = L.MultiHeadAttention(2, 3)(h, h)
    return keras.Model(i, L.Dense(2)(L.GlobalAveragePooling1D()(L.LayerNormalization()(h + a)))), IDS


class KaggleAttention(L.Layer):
    def __init__(self, **kw):
        super().__init__(**kw)
        self.supports_masking = True

    def build(self, shape):
        self.W = self.add_weight(shape=(shape[-1], 1), name="W")
        self.b = self.add_weight(shape=(shape[1], 1), initializer="zeros", name="b")

    def call(self, x, mask=None):
        a = ops.softmax(ops.tanh(ops.matmul(x, self.W) + self.b), axis=1)
        if mask is not None:
            a = a * ops.cast(mask, a.dtype)[..., None]
        return ops.sum(x * a, axis=1)

    def compute_mask(self, x, mask=None):
        return None


def kaggle_attention():
    i = tokens(T)
    h = L.Bidirectional(L.LSTM(4, return_sequences=True))(emb()(i))
    return keras.Model(i, L.Dense(1, activation="sigmoid")(KaggleAttention()(h))), IDS


class TokenAndPositionEmbedding(L.Layer):
    def __init__(self, maxlen, vocab, dim):
        super().__init__()
        self.token_emb, self.pos_emb = L.Embedding(vocab, dim), L.Embedding(maxlen, dim)

    def call(self, x):
        return self.token_emb(x) + self.pos_emb(ops.arange(0, ops.shape(x)[-1]))


class TransformerBlock(L.Layer):
    def __init__(self, dim, heads, ff):
        super().__init__()
        self.att = L.MultiHeadAttention(heads, dim)
        self.ffn = keras.Sequential([L.Dense(ff, activation="relu"), L.Dense(dim)])
        self.ln1, self.ln2 = L.LayerNormalization(epsilon=1e-6), L.LayerNormalization(epsilon=1e-6)
        self.d1, self.d2 = L.Dropout(0.1), L.Dropout(0.1)

    def call(self, x, training=False):
        out1 = self.ln1(x + self.d1(self.att(x, x), training=training))
        return self.ln2(out1 + self.d2(self.ffn(out1), training=training))


def keras_io_transformer():
    i = L.Input((T,))
    x = TransformerBlock(6, 2, 8)(TokenAndPositionEmbedding(T, V, 6)(i))
    x = L.Dense(8, activation="relu")(L.Dropout(0.1)(L.GlobalAveragePooling1D()(x)))
    return keras.Model(i, L.Dense(2, activation="softmax")(x)), IDS


class SubclassedClassifier(keras.Model):
    def __init__(self):
        super().__init__()
        self.e, self.r, self.o = L.Embedding(V, 6, mask_zero=True), L.LSTM(5), L.Dense(2)

    def call(self, x, training=False):
        return self.o(self.r(self.e(x)))


def subclassed_model():
    m = SubclassedClassifier()
    m(IDS)
    return m, IDS


def nested_sequential():
    enc = keras.Sequential([emb(), L.LSTM(6, return_sequences=True), L.LSTM(4)])
    i = tokens()
    return keras.Model(i, L.Dense(2)(enc(i))), IDS


def end_to_end_inner_model():
    i = tokens()
    inner = keras.Model(i, L.Dense(2)(L.Bidirectional(L.LSTM(4))(emb()(i))))
    o = tokens()
    return keras.Model(o, L.Activation("softmax")(inner(o))), IDS


def siamese_nested():
    enc = keras.Sequential([emb(), L.GRU(4)])
    a, b = tokens(), tokens()
    return keras.Model([a, b], L.Dense(1, activation="sigmoid")(ops.abs(enc(a) - enc(b)))), [IDS, IDS[::-1]]


def seq2seq_chars():
    ei, di = keras.Input((None, 5)), keras.Input((None, 6))
    _, h, c = L.LSTM(8, return_state=True)(ei)
    y = L.LSTM(8, return_sequences=True)(di, initial_state=[h, c])
    return keras.Model([ei, di], L.Dense(6, activation="softmax")(y)), [XF[..., :1].repeat(5, -1),
                                                                          RNG.standard_normal((B, 4, 6))]


def gru_seq2seq():
    ei, di = keras.Input((None, 3)), keras.Input((None, 3))
    _, h = L.GRU(6, return_state=True)(ei)
    return keras.Model([ei, di], L.Dense(4)(L.GRU(6, return_sequences=True)(di, initial_state=h))), [XF, XF]


def lstm_autoencoder():
    i = keras.Input((T, 3))
    z = L.LSTM(6)(i)
    d = L.LSTM(6, return_sequences=True)(L.RepeatVector(T)(z))
    return keras.Model(i, L.TimeDistributed(L.Dense(3))(d)), XF


def time_series_relu_lstm():
    return keras.Sequential([keras.Input((T, 3)), L.LSTM(16, activation="relu"), L.Dense(1)]), XF


def stacked_lstm_regressor():
    return keras.Sequential([keras.Input((T, 3)), L.LSTM(8, return_sequences=True), L.LSTM(8),
                             L.Dense(4, activation="relu"), L.Dense(1)]), XF


def bidirectional_gru_regressor():
    return keras.Sequential([keras.Input((T, 3)), L.Bidirectional(L.GRU(6)), L.Dense(1)]), XF


def cnn_lstm_windows():
    i = keras.Input((4, T, 3))
    h = L.TimeDistributed(L.GlobalAveragePooling1D())(L.TimeDistributed(L.Conv1D(4, 3, activation="relu"))(i))
    return keras.Model(i, L.Dense(1)(L.LSTM(5)(h))), RNG.standard_normal((B, 4, T, 3))


def masking_float():
    x = XF.copy()
    x[0, :2] = 0
    return keras.Sequential([keras.Input((None, 3)), L.Masking(0.0), L.LSTM(6), L.Dense(2)]), x


def sequence_tagger():
    i = tokens()
    h = L.Bidirectional(L.LSTM(5, return_sequences=True))(emb()(i))
    return keras.Model(i, L.TimeDistributed(L.Dense(4, activation="softmax"))(h)), IDS


def last_step_slice():
    i = keras.Input((None, 3))
    return keras.Model(i, L.Dense(2)(L.LSTM(5, return_sequences=True)(i)[:, -1])), XF


def lambda_slices():
    i = keras.Input((None, 6))
    a = L.Lambda(lambda t: t[:, :, :3])(i)
    b = L.Lambda(lambda t: t[:, :, 3:])(i)
    return keras.Model(i, L.Dense(2)(L.Concatenate()([L.LSTM(3)(a), L.LSTM(3)(b)]))), RNG.standard_normal((B, T, 6))


def two_input_tokens_numeric():
    t, n = tokens(), keras.Input((4,))
    h = L.Concatenate()([L.LSTM(5)(emb()(t)), L.Dense(4, activation="relu")(n)])
    return keras.Model([t, n], L.Dense(2)(h)), [IDS, RNG.standard_normal((B, 4))]


def multi_output():
    i = tokens()
    h = L.LSTM(6)(emb()(i))
    return keras.Model(i, [L.Dense(2, name="sentiment")(h), L.Dense(3, name="topic")(h)]), IDS


def hand_written_dense():
    class MyDense(L.Layer):
        def build(self, shape):
            self.w = self.add_weight(shape=(shape[-1], 4))
            self.b = self.add_weight(shape=(4,), initializer="random_normal")

        def call(self, x):
            return ops.relu(ops.matmul(x, self.w) + self.b)
    i = keras.Input((T, 3))
    return keras.Model(i, L.Dense(2)(MyDense()(L.LSTM(5)(i)))), XF


def batchnorm_dense_head():
    return keras.Sequential([keras.Input((T, 3)), L.LSTM(6), L.Dense(6), L.BatchNormalization(),
                             L.Activation("relu"), L.Dense(2)]), XF


def simple_rnn():
    return keras.Sequential([tokens(), emb(), L.SimpleRNN(6), L.Dense(2)]), IDS


def gated_residual():
    i = keras.Input((T, 3))
    h = L.LSTM(6, return_sequences=True)(i)
    g = L.Dense(6, activation="sigmoid")(h)
    x = L.Add()([L.Multiply()([g, h]), L.Dense(6)(i)])
    return keras.Model(i, L.Dense(2)(L.GlobalAveragePooling1D()(x))), XF


def permute_flatten():
    i = keras.Input((T, 3))
    return keras.Model(i, L.Dense(2)(L.Flatten()(L.Dense(4)(L.Permute((2, 1))(i))))), XF


MODELS = [imdb_lstm, imdb_bilstm_stack, gru_text, conv1d_text, cnn_lstm_text, attention_layer_masked,
          additive_attention_masked, mha_masked, kaggle_attention, keras_io_transformer, subclassed_model,
          nested_sequential, end_to_end_inner_model, siamese_nested, seq2seq_chars, gru_seq2seq, lstm_autoencoder,
          time_series_relu_lstm, stacked_lstm_regressor, bidirectional_gru_regressor, cnn_lstm_windows,
          masking_float, sequence_tagger, last_step_slice, lambda_slices, two_input_tokens_numeric, multi_output,
          hand_written_dense, batchnorm_dense_head, simple_rnn, gated_residual, permute_flatten]


def run(fn):
    keras.utils.set_random_seed(1)
    model, x = fn()
    rng = np.random.default_rng(2)
    model.set_weights([w + 0.3 * rng.standard_normal(w.shape).astype(w.dtype) for w in model.get_weights()])
    outputs = keras.tree.flatten(model(x, training=False))
    kwargs = {}
    if len(outputs) > 1:
        kwargs["output"] = 0
    out = np.asarray(outputs[0])
    if out.ndim == 3:
        kwargs["timestep"] = 2
        out = out[:, 2]
    try:
        e = keras_lrp.explain(model, x, eps=0.0, bias_factor=1.0, dtype="float64", **kwargs)
    except (ValueError, TypeError) as err:   # keras-lrp's clear refusals are ValueError / TypeError subclasses
        return "refused", " ".join(str(err).split())[:160]
    got = e.probabilities if e.probabilities is not None else e.scores
    score_error = float(np.abs(got - out).max() / max(1.0, np.abs(out).max()))
    gap = float(np.abs(e.convergence_delta).max() / max(1e-12, np.abs(e.explained_score).max()))
    if score_error > 1e-5 or gap > 1e-8:
        return "wrong", f"score off by {score_error:.1e}, conservation gap {gap:.1e}"
    return "explained", f"score off by {score_error:.1e}, conservation gap {gap:.1e}"


def main() -> int:
    counts = {"explained": 0, "refused": 0, "wrong": 0, "error": 0}
    start = time.perf_counter()
    for fn in MODELS:
        try:
            status, detail = run(fn)
        except Exception as err:   # noqa: BLE001 - a crash is a result here
            status, detail = "error", f"{type(err).__name__}: {' '.join(str(err).split())[:160]}"
            if "--debug" in sys.argv:
                traceback.print_exc()
        counts[status] += 1
        print(f"{fn.__name__:28s} {status:9s} {detail}", flush=True)
    print(f"\n{len(MODELS)} models: " + ", ".join(f"{k} {v}" for k, v in counts.items())
          + f" ({time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
