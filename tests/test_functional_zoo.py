"""A zoo of functional models written the way keras.io tutorials write them (masks, op nodes between
layers, several inputs, shared layers, attention pooling, Lambda slices), each explained in float64
with conservation checked (eps = 0, bias_factor = 1: relevance of all inputs + rest == score),
masked steps exactly 0, and each saved as ``.keras``, reloaded with ``keras_lrp.load_model`` and
explained equal to the original.
"""
from typing import Any, Dict, NamedTuple, Optional

import numpy as np
import keras
import pytest
from keras import ops

import keras_lrp

L = keras.layers
VOCAB, EMB, B = 12, 4, 3
RNG = np.random.default_rng(0)


def token_ids(steps=6, pad=2):
    """(B, steps) ids in 1..VOCAB-1 with the last ``pad`` steps of the first sample padded (0)."""
    ids = RNG.integers(1, VOCAB, (B, steps))
    ids[0, steps - pad:] = 0
    return ids


def float_steps(steps=5, features=3, pad=2):
    x = RNG.standard_normal((B, steps, features))
    x[1, :pad] = 0.0   # pre-padding of sample 1, masked by Masking(0.0)
    return x


IDS = token_ids()
ID_PAD = (IDS == 0)
XF = float_steps()
XF_PAD = np.all(XF == 0, axis=-1)
NUM = RNG.standard_normal((B, 2))


def imdb_bilstm():
    inp = keras.Input((None,), dtype="int32")
    x = L.Embedding(VOCAB, EMB, mask_zero=True)(inp)
    x = L.Bidirectional(L.LSTM(4, return_sequences=True))(x)
    x = L.Bidirectional(L.LSTM(3))(x)
    return keras.Model(inp, L.Dense(2)(x)), IDS, ID_PAD, {}


def functional_masking():
    inp = keras.Input((None, 3))
    x = L.Masking(mask_value=0.0)(inp)
    x = L.LSTM(4)(x)
    return keras.Model(inp, L.Dense(2, activation="softmax")(x)), XF, XF_PAD, {}


def attention_bigru():
    inp = keras.Input((None,), dtype="int32")
    h = L.Bidirectional(L.GRU(3, return_sequences=True))(L.Embedding(VOCAB, EMB, mask_zero=True)(inp))
    w = ops.softmax(L.Dense(1)(h), axis=1)     # (a Softmax layer would get the (batch, time) mask
    ctx = ops.sum(w * h, axis=1)               #  and fail on (batch, time, 1) scores in Keras itself)
    return keras.Model(inp, L.Dense(2)(ctx)), IDS, ID_PAD, {}


def attention_ops_softmax_output():
    inp = keras.Input((None, 3))
    h = L.LSTM(4, return_sequences=True)(inp)
    w = L.Softmax(axis=1)(L.Dense(1, activation="tanh")(h))
    ctx = ops.sum(w * h, axis=1)
    return keras.Model(inp, ops.softmax(L.Dense(3)(ctx))), XF, None, {}


def last_step_head():
    inp = keras.Input((None, 3))
    h = L.LSTM(4, return_sequences=True)(inp)
    return keras.Model(inp, L.Dense(2)(h[:, -1])), XF, None, {}


def feature_slice_head():
    inp = keras.Input((None, 3))
    h = L.GRU(4, return_sequences=True)(inp)
    h = L.LSTM(3)(h[:, :, 1:3])
    return keras.Model(inp, L.Dense(2)(h)), XF, None, {}


def two_inputs():
    tok = keras.Input((None,), dtype="int32", name="tokens")
    num = keras.Input((2,), name="numeric")
    h = L.LSTM(3)(L.Embedding(VOCAB, EMB, mask_zero=True)(tok))
    x = L.Concatenate()([h, L.Dense(3, activation="relu")(num)])
    return keras.Model([tok, num], L.Dense(2)(x)), [IDS, NUM], [ID_PAD, None], {}


def two_inputs_numeric_first():
    """The Embedding is not the first layer: the numeric input comes first."""
    num = keras.Input((2,), name="numeric")
    tok = keras.Input((None,), dtype="int32", name="tokens")
    n = L.Dense(3)(num)
    h = L.GRU(3)(L.Embedding(VOCAB, EMB, mask_zero=True)(tok))
    return keras.Model([num, tok], L.Dense(2)(ops.concatenate([n, h], axis=-1))), [NUM, IDS], [None, ID_PAD], {}


def shared_encoder():
    """A siamese pair: one Embedding and one LSTM shared by both token inputs."""
    a = keras.Input((None,), dtype="int32", name="left")
    b = keras.Input((None,), dtype="int32", name="right")
    emb, enc = L.Embedding(VOCAB, EMB, mask_zero=True), L.LSTM(3)
    ha, hb = enc(emb(a)), enc(emb(b))
    x = L.Concatenate()([ha, hb, L.Subtract()([ha, hb]) if hasattr(L, "Subtract") else ha - hb])
    ids_b = token_ids()
    return keras.Model([a, b], L.Dense(2)(x)), [IDS, ids_b], [ID_PAD, ids_b == 0], {}


def seed_sliced():
    """The seed's production architecture, small: Lambda slices of one input into three Bi-LSTMs."""
    inp = keras.Input((None, 12))
    # three separate lambdas (a default argument would not survive .keras serialisation)
    slices = [lambda t: t[:, :, 0:4], lambda t: t[:, :, 4:8], lambda t: t[:, :, 8:12]]
    parts = [L.Lambda(f, name=f"slice{i}")(inp) for i, f in enumerate(slices)]
    hs = [L.Bidirectional(L.LSTM(3, return_sequences=True))(p) for p in parts]
    x = L.LSTM(4)(L.Concatenate()(hs))
    x12 = RNG.standard_normal((B, 5, 12))
    return keras.Model(inp, L.Dense(3)(x)), x12, None, {f"slice{i}": "linear" for i in range(3)}


def gap_mask():
    inp = keras.Input((None,), dtype="int32")
    h = L.LSTM(3, return_sequences=True)(L.Embedding(VOCAB, EMB, mask_zero=True)(inp))
    return keras.Model(inp, L.Dense(2)(L.GlobalAveragePooling1D()(h))), IDS, ID_PAD, {}


def stacked_concat_last():
    inp = keras.Input((None, 3))
    h1 = L.LSTM(3, return_sequences=True)(inp)
    h2 = L.LSTM(3, return_sequences=True)(h1)
    x = ops.concatenate([h1[:, -1], h2[:, -1]], axis=-1)
    return keras.Model(inp, L.Dense(2)(x)), XF, None, {}


def mean_over_time():
    inp = keras.Input((None, 3))
    h = L.GRU(3, return_sequences=True)(inp)
    return keras.Model(inp, L.Dense(2)(ops.mean(h, axis=1))), XF, None, {}


def residual_add():
    inp = keras.Input((None, 3))
    p = L.Dense(3)(inp)
    h = L.LSTM(3, return_sequences=True)(p)
    x = ops.add(h, p)
    return keras.Model(inp, L.Dense(2)(x[:, -1] * 0.5)), XF, None, {}


def masked_tagger():
    inp = keras.Input((None,), dtype="int32")
    h = L.Bidirectional(L.LSTM(3, return_sequences=True))(L.Embedding(VOCAB, EMB, mask_zero=True)(inp))
    return keras.Model(inp, L.TimeDistributed(L.Dense(3))(h)), IDS, ID_PAD, {}


def gated_sum():
    inp = keras.Input((None, 3))
    h = L.LSTM(3, return_sequences=True)(inp)
    g = L.Dense(3, activation="sigmoid")(h)
    return keras.Model(inp, L.Dense(2)(ops.sum(L.Multiply()([g, h]), axis=1))), XF, None, {}


def conv_reshape_lstm():
    inp = keras.Input((6, 4))
    x = L.Conv1D(4, 2, padding="same")(inp)
    x = ops.reshape(x, (-1, 3, 8))            # 6 steps x 4 -> 3 steps x 8
    x = ops.transpose(L.LSTM(3, return_sequences=True)(x), (0, 2, 1))
    return keras.Model(inp, L.Dense(2)(ops.sum(x, axis=-1))), RNG.standard_normal((B, 6, 4)), None, {}


def masking_bilstm_sum_mean():
    inp = keras.Input((None, 3))
    h = L.Bidirectional(L.LSTM(3, return_sequences=True), merge_mode="sum")(L.Masking(0.0)(inp))
    h = L.LSTM(3)(h)
    return keras.Model(inp, L.Dense(2)(h)), XF, XF_PAD, {}


def masked_attention():
    """keras.io's pattern: Attention()([h, h]) after Embedding(mask_zero=True): query and key masks."""
    inp = keras.Input((None,), dtype="int32")
    h = L.LSTM(4, return_sequences=True)(L.Embedding(VOCAB, EMB, mask_zero=True)(inp))
    a = L.Attention()([h, h])
    return keras.Model(inp, L.Dense(2)(L.GlobalAveragePooling1D()(a))), IDS, ID_PAD, {}


def masked_additive_attention_query_value():
    inp = keras.Input((None,), dtype="int32")
    e = L.Embedding(VOCAB, EMB, mask_zero=True)(inp)
    q = L.GRU(3, return_sequences=True)(e)
    v = L.LSTM(3, return_sequences=True)(e)
    a = L.AdditiveAttention()([q, v])
    return keras.Model(inp, L.Dense(2, activation="softmax")(L.GlobalAveragePooling1D()(a))), IDS, ID_PAD, {}


def masked_multi_head_attention():
    inp = keras.Input((None,), dtype="int32")
    h = L.Bidirectional(L.LSTM(3, return_sequences=True))(L.Embedding(VOCAB, EMB, mask_zero=True)(inp))
    a = L.MultiHeadAttention(num_heads=2, key_dim=3)(h, h)
    return keras.Model(inp, L.Dense(2)(L.GlobalAveragePooling1D()(a))), IDS, ID_PAD, {}


def masked_causal_self_attention():
    inp = keras.Input((None,), dtype="int32")
    h = L.LSTM(4, return_sequences=True)(L.Embedding(VOCAB, EMB, mask_zero=True)(inp))
    a = L.MultiHeadAttention(num_heads=2, key_dim=2)(h, h, use_causal_mask=True)
    x = L.LayerNormalization()(L.Add()([h, a]))
    return keras.Model(inp, L.Dense(2)(L.GlobalAveragePooling1D()(x))), IDS, ID_PAD, {}


ZOO = [imdb_bilstm, functional_masking, attention_bigru, attention_ops_softmax_output, last_step_head,
       feature_slice_head, two_inputs, two_inputs_numeric_first, shared_encoder, seed_sliced, gap_mask,
       stacked_concat_last, mean_over_time, residual_add, masked_tagger, gated_sum, conv_reshape_lstm,
       masking_bilstm_sum_mean, masked_attention, masked_additive_attention_query_value,
       masked_multi_head_attention, masked_causal_self_attention]


def build(fn, seed=0):
    keras.utils.set_random_seed(seed)
    model, x, pads, rules = fn()
    rng = np.random.default_rng(seed + 1)
    model.set_weights([w + 0.3 * rng.standard_normal(w.shape).astype(w.dtype) for w in model.get_weights()])
    return model, x, pads, rules


def as_list(a):
    return a if isinstance(a, list) else [a]


def explain64(model, x, rules):
    timestep = 2 if len(model.outputs[0].shape) == 3 else None
    return keras_lrp.explain(model, x, eps=0.0, bias_factor=1.0, dtype="float64", layer_rules=rules or None,
                             timestep=timestep)


def check_padded_equals_unpadded(model, x, pads, rules, e, i):
    """Sample i without its masked steps (in every input that has a mask), explained for the same target
    (and the same output step, shifted by the steps removed before it), against its padded explanation;
    where the model itself gives the padded and the unpadded sample the same output (a hand-written
    softmax over time does not apply the mask: there the padding is part of the input)."""
    pads = as_list(pads)
    if all(p is None or not p[i].any() for p in pads):
        return
    keep = [None if p is None else ~p[i] for p in pads]
    x_i = [np.asarray(a)[i][k][None] if k is not None else np.asarray(a)[i:i + 1] for a, k in zip(as_list(x), keep)]
    timestep = None
    if len(model.outputs[0].shape) == 3:
        timestep = 2 - int(np.sum(~keep[0][:2]))
    x_i = x_i if len(x_i) > 1 else x_i[0]
    e_i = keras_lrp.explain(model, x_i, e.target[i:i + 1], eps=0.0, bias_factor=1.0,
                            dtype="float64", layer_rules=rules or None, timestep=timestep)
    if not np.allclose(e_i.scores[0], e.scores[i], rtol=1e-6, atol=0):
        return
    for r, r_i, k in zip(as_list(e.relevance), as_list(e_i.relevance), keep):
        want = r[i][k] if k is not None else r[i]
        np.testing.assert_allclose(r_i[0], want, rtol=0, atol=1e-10 * np.abs(want).max())
    np.testing.assert_allclose(e_i.scores[0], e.scores[i], rtol=0, atol=1e-10 * np.abs(e.scores[i]).max())


@pytest.mark.parametrize("fn", ZOO, ids=[f.__name__ for f in ZOO])
def test_zoo_conserves_masks_and_reloads(fn, tmp_path):
    model, x, pads, rules = build(fn)
    e = explain64(model, x, rules)
    relevances = as_list(e.relevance)
    assert len(relevances) == len(model.inputs)
    # the explained scores are the model's own outputs (before its output activation)
    out = keras.ops.convert_to_numpy(model([np.asarray(a, dtype=i.dtype) for a, i in zip(as_list(x), model.inputs)]
                                           if len(model.inputs) > 1 else np.asarray(x, dtype=model.inputs[0].dtype)))
    if out.ndim == 3:
        out = out[:, 2]
    probabilities = e.probabilities if e.probabilities is not None else e.scores
    np.testing.assert_allclose(probabilities, out, rtol=0, atol=1e-5 * max(1.0, np.abs(out).max()))
    # conservation in float64
    score = e.explained_score
    np.testing.assert_allclose(e.total_relevance() + e.rest, score, rtol=0, atol=1e-8 * np.abs(score).max())
    assert all(np.abs(r).max() > 0 for r in relevances)
    # masked steps get exactly 0
    for r, pad in zip(relevances, as_list(pads)):
        if pad is not None:
            assert pad.any() and np.all(r[pad] == 0)
            assert np.all(np.abs(r[~pad]).sum(axis=-1) > 0)
    # padded = unpadded: each padded sample, explained without its masked steps, gets the same relevance
    for i in range(B):
        check_padded_equals_unpadded(model, x, pads, rules, e, i)
    # word relevance: one (batch, time) array per sequence input
    words = as_list(e.word_relevance)
    for r, w in zip(relevances, words):
        assert (w is None) == (r.ndim < 3)
    # .keras round trip through keras_lrp.load_model, explained equal
    path = tmp_path / "model.keras"
    model.save(path)
    again = keras_lrp.load_model(path, safe_mode=not rules)
    e2 = explain64(again, x, rules)
    for a, b in zip(relevances, as_list(e2.relevance)):
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-12 * np.abs(a).max())
    np.testing.assert_allclose(e2.rest, e.rest, rtol=0, atol=1e-12 * np.abs(score).max())


def test_dict_inputs_and_list_inputs_agree():
    model, x, _, _ = build(two_inputs)
    e_list = keras_lrp.explain(model, x, dtype="float64")
    e_dict = keras_lrp.explain(model, {"numeric": x[1], "tokens": x[0]}, dtype="float64")
    for a, b in zip(e_list.relevance, e_dict.relevance):
        np.testing.assert_array_equal(a, b)
    gi = keras_lrp.explain(model, x, dtype="float64", method="gi")
    assert [r.shape for r in gi.relevance] == [r.shape for r in e_list.relevance]


def test_functional_and_sequential_masking_agree():
    """The same weights as Sequential and as functional model: identical relevance, 0 at masked steps."""
    keras.utils.set_random_seed(4)
    seq = keras.Sequential([keras.Input((None,), dtype="int32"), L.Embedding(VOCAB, EMB, mask_zero=True),
                            L.LSTM(3, return_sequences=True), L.GRU(3), L.Dense(2)])
    inp = keras.Input((None,), dtype="int32")
    h = L.Embedding(VOCAB, EMB, mask_zero=True)(inp)
    func = keras.Model(inp, L.Dense(2)(L.GRU(3)(L.LSTM(3, return_sequences=True)(h))))
    rng = np.random.default_rng(5)
    weights = [w + 0.3 * rng.standard_normal(w.shape).astype(w.dtype) for w in seq.get_weights()]
    seq.set_weights(weights)
    func.set_weights(weights)
    a = keras_lrp.explain(seq, IDS, target=1, dtype="float64")
    b = keras_lrp.explain(func, IDS, target=1, dtype="float64")
    np.testing.assert_array_equal(a.relevance[ID_PAD], 0)
    np.testing.assert_allclose(b.relevance, a.relevance, rtol=0, atol=1e-12 * np.abs(a.relevance).max())


def test_seed_sliced_lambdas_are_traced_or_declared_linear():
    """The seed's slicing Lambdas are traced into get_item calls; declared linear, they give the same."""
    model, x, _, rules = build(seed_sliced)
    traced = keras_lrp.LRP(model, eps=0.0, bias_factor=1.0, dtype="float64").attribute(x)
    e = keras_lrp.LRP(model, eps=0.0, bias_factor=1.0, dtype="float64", layer_rules=rules).attribute(x)
    # each slice's Bi-LSTM sees 4 features: every feature gets relevance through its own slice
    assert np.all(np.abs(e.relevance).sum(axis=(0, 1)) > 0)
    np.testing.assert_allclose(traced.relevance, e.relevance, rtol=0, atol=1e-12 * np.abs(e.relevance).max())


class TfkCase(NamedTuple):
    """One tf.keras model of the zoo: the model, its inputs, padded steps per input, and the
    ``layer_rules`` (with ``safe_mode=False``) a model with Lambda layers needs."""

    model: Any
    x: Any
    pads: Any
    rules: Optional[Dict[str, str]] = None


def _tf_keras_functional_models():
    """tf.keras 2.x twins of the zoo, written as tf.keras users write them (tf ops and tensor syntax
    between layers, which tf.keras records as TFOpLambda / SlicingOpLambda layers): name -> TfkCase."""
    import tensorflow as tf
    import tf_keras as K
    KL = K.layers
    cases = {}

    # --- twins of the Keras 3 builders above, one for one ---
    inp = KL.Input((None,), dtype="int32")
    x = KL.Embedding(VOCAB, EMB, mask_zero=True)(inp)
    x = KL.Bidirectional(KL.LSTM(4, return_sequences=True))(x)
    x = KL.Bidirectional(KL.LSTM(3))(x)
    cases["imdb_bilstm"] = TfkCase(K.Model(inp, KL.Dense(2)(x)), IDS, ID_PAD)

    inp = KL.Input((None, 3))
    x = KL.LSTM(4)(KL.Masking(mask_value=0.0)(inp))
    cases["functional_masking"] = TfkCase(K.Model(inp, KL.Dense(2, activation="softmax")(x)), XF, XF_PAD)

    inp = KL.Input((None,), dtype="int32")
    h = KL.Bidirectional(KL.GRU(3, return_sequences=True))(KL.Embedding(VOCAB, EMB, mask_zero=True)(inp))
    w = tf.nn.softmax(KL.Dense(1)(h), axis=1)
    cases["attention_bigru"] = TfkCase(K.Model(inp, KL.Dense(2)(tf.reduce_sum(w * h, axis=1))), IDS, ID_PAD)

    inp = KL.Input((None, 3))
    h = KL.LSTM(4, return_sequences=True)(inp)
    w = KL.Softmax(axis=1)(KL.Dense(1, activation="tanh")(h))
    ctx = tf.reduce_sum(w * h, axis=1)
    cases["attention_ops_softmax_output"] = TfkCase(K.Model(inp, tf.nn.softmax(KL.Dense(3)(ctx))), XF, None)

    inp = KL.Input((None, 3))
    h = KL.LSTM(4, return_sequences=True)(inp)
    cases["last_step_head"] = TfkCase(K.Model(inp, KL.Dense(2)(h[:, -1])), XF, None)

    inp = KL.Input((None, 3))
    h = KL.GRU(4, return_sequences=True)(inp)
    h = KL.LSTM(3)(h[:, :, 1:3])
    cases["feature_slice_head"] = TfkCase(K.Model(inp, KL.Dense(2)(h)), XF, None)

    tok, num = KL.Input((None,), dtype="int32", name="tokens"), KL.Input((2,), name="numeric")
    h = KL.LSTM(3)(KL.Embedding(VOCAB, EMB, mask_zero=True)(tok))
    x = KL.Concatenate()([h, KL.Dense(3, activation="relu")(num)])
    cases["two_inputs"] = TfkCase(K.Model([tok, num], KL.Dense(2)(x)), [IDS, NUM], [ID_PAD, None])

    num, tok = KL.Input((2,), name="numeric"), KL.Input((None,), dtype="int32", name="tokens")
    n = KL.Dense(3)(num)
    h = KL.GRU(3)(KL.Embedding(VOCAB, EMB, mask_zero=True)(tok))
    cases["two_inputs_numeric_first"] = TfkCase(K.Model([num, tok], KL.Dense(2)(tf.concat([n, h], axis=-1))),
                                                [NUM, IDS], [None, ID_PAD])

    a, b = KL.Input((None,), dtype="int32", name="left"), KL.Input((None,), dtype="int32", name="right")
    emb, enc = KL.Embedding(VOCAB, EMB, mask_zero=True), KL.LSTM(3)
    ha, hb = enc(emb(a)), enc(emb(b))
    x = KL.Concatenate()([ha, hb, KL.Subtract()([ha, hb])])
    ids_b = token_ids()
    cases["shared_encoder"] = TfkCase(K.Model([a, b], KL.Dense(2)(x)), [IDS, ids_b], [ID_PAD, ids_b == 0])

    inp = KL.Input((None, 12))
    slices = [lambda t: t[:, :, 0:4], lambda t: t[:, :, 4:8], lambda t: t[:, :, 8:12]]
    parts = [KL.Lambda(f, name=f"slice{i}")(inp) for i, f in enumerate(slices)]
    hs = [KL.Bidirectional(KL.LSTM(3, return_sequences=True))(p) for p in parts]
    x = KL.LSTM(4)(KL.Concatenate()(hs))
    cases["seed_sliced"] = TfkCase(K.Model(inp, KL.Dense(3)(x)), RNG.standard_normal((B, 5, 12)), None,
                                   {f"slice{i}": "linear" for i in range(3)})

    inp = KL.Input((None, 12))   # the same slices as tensor syntax (SlicingOpLambda, no code in the file)
    hs = [KL.Bidirectional(KL.LSTM(3, return_sequences=True))(inp[:, :, i:i + 4]) for i in (0, 4, 8)]
    x = KL.LSTM(4)(KL.Concatenate()(hs))
    cases["seed_sliced_tensor_syntax"] = TfkCase(K.Model(inp, KL.Dense(3)(x)), RNG.standard_normal((B, 5, 12)),
                                                 None)

    inp = KL.Input((None,), dtype="int32")
    h = KL.LSTM(3, return_sequences=True)(KL.Embedding(VOCAB, EMB, mask_zero=True)(inp))
    cases["gap_mask"] = TfkCase(K.Model(inp, KL.Dense(2)(KL.GlobalAveragePooling1D()(h))), IDS, ID_PAD)

    inp = KL.Input((None, 3))
    h1 = KL.LSTM(3, return_sequences=True)(inp)
    h2 = KL.LSTM(3, return_sequences=True)(h1)
    cases["stacked_concat_last"] = TfkCase(K.Model(inp, KL.Dense(2)(tf.concat([h1[:, -1], h2[:, -1]], axis=-1))),
                                           XF, None)

    inp = KL.Input((None, 3))
    h = KL.GRU(3, return_sequences=True)(inp)
    cases["mean_over_time"] = TfkCase(K.Model(inp, KL.Dense(2)(tf.reduce_mean(h, axis=1))), XF, None)

    inp = KL.Input((None, 3))
    p = KL.Dense(3)(inp)
    x = KL.LSTM(3, return_sequences=True)(p) + p
    cases["residual_add"] = TfkCase(K.Model(inp, KL.Dense(2)(x[:, -1] * 0.5)), XF, None)

    inp = KL.Input((None,), dtype="int32")
    h = KL.Bidirectional(KL.LSTM(3, return_sequences=True))(KL.Embedding(VOCAB, EMB, mask_zero=True)(inp))
    cases["masked_tagger"] = TfkCase(K.Model(inp, KL.TimeDistributed(KL.Dense(3))(h)), IDS, ID_PAD)

    inp = KL.Input((None, 3))
    h = KL.LSTM(3, return_sequences=True)(inp)
    g = KL.Dense(3, activation="sigmoid")(h)
    cases["gated_sum"] = TfkCase(K.Model(inp, KL.Dense(2)(tf.reduce_sum(KL.Multiply()([g, h]), axis=1))), XF, None)

    inp = KL.Input((6, 4))
    x = tf.reshape(KL.Conv1D(4, 2, padding="same")(inp), (-1, 3, 8))   # 6 steps x 4 -> 3 steps x 8
    x = tf.transpose(KL.LSTM(3, return_sequences=True)(x), perm=[0, 2, 1])
    cases["conv_reshape_lstm"] = TfkCase(K.Model(inp, KL.Dense(2)(tf.reduce_sum(x, axis=-1))),
                                         RNG.standard_normal((B, 6, 4)), None)

    inp = KL.Input((None, 3))
    h = KL.Bidirectional(KL.LSTM(3, return_sequences=True), merge_mode="sum")(KL.Masking(0.0)(inp))
    cases["masking_bilstm_sum_mean"] = TfkCase(K.Model(inp, KL.Dense(2)(KL.LSTM(3)(h))), XF, XF_PAD)

    inp = KL.Input((None,), dtype="int32")
    h = KL.LSTM(4, return_sequences=True)(KL.Embedding(VOCAB, EMB, mask_zero=True)(inp))
    cases["masked_attention"] = TfkCase(
        K.Model(inp, KL.Dense(2)(KL.GlobalAveragePooling1D()(KL.Attention()([h, h])))), IDS, ID_PAD)

    inp = KL.Input((None,), dtype="int32")
    e = KL.Embedding(VOCAB, EMB, mask_zero=True)(inp)
    a = KL.AdditiveAttention()([KL.GRU(3, return_sequences=True)(e), KL.LSTM(3, return_sequences=True)(e)])
    cases["masked_additive_attention_query_value"] = TfkCase(
        K.Model(inp, KL.Dense(2, activation="softmax")(KL.GlobalAveragePooling1D()(a))), IDS, ID_PAD)

    inp = KL.Input((None,), dtype="int32")
    h = KL.Bidirectional(KL.LSTM(3, return_sequences=True))(KL.Embedding(VOCAB, EMB, mask_zero=True)(inp))
    a = KL.MultiHeadAttention(num_heads=2, key_dim=3)(h, h)
    cases["masked_multi_head_attention"] = TfkCase(K.Model(inp, KL.Dense(2)(KL.GlobalAveragePooling1D()(a))),
                                                   IDS, ID_PAD)

    inp = KL.Input((None,), dtype="int32")
    h = KL.LSTM(4, return_sequences=True)(KL.Embedding(VOCAB, EMB, mask_zero=True)(inp))
    a = KL.MultiHeadAttention(num_heads=2, key_dim=2)(h, h, use_causal_mask=True)
    x = KL.LayerNormalization()(KL.Add()([h, a]))
    cases["masked_causal_self_attention"] = TfkCase(K.Model(inp, KL.Dense(2)(KL.GlobalAveragePooling1D()(x))),
                                                    IDS, ID_PAD)

    # --- further tf.keras idioms (not in the Keras 3 zoo) ---
    inp = KL.Input((None, 3))
    cases["tfk_masking_gru"] = TfkCase(K.Model(inp, KL.Dense(2)(KL.GRU(3)(KL.Masking(0.0)(inp)))), XF, XF_PAD)
    inp = KL.Input((None, 3))
    h = KL.LSTM(4, return_sequences=True)(inp)
    w = tf.nn.softmax(KL.Dense(1, activation="tanh")(h), axis=1)
    cases["tfk_attention"] = TfkCase(K.Model(inp, KL.Dense(2)(tf.reduce_sum(w * h, axis=1))), XF, None)
    inp = KL.Input((None,), dtype="int32")
    h = KL.Bidirectional(KL.GRU(3, return_sequences=True))(KL.Embedding(VOCAB, EMB, mask_zero=True)(inp))
    w = tf.nn.softmax(KL.Dense(1)(h), axis=1)
    cases["tfk_masked_attention_multiply"] = TfkCase(
        K.Model(inp, KL.Dense(2)(tf.reduce_sum(tf.math.multiply(w, h), axis=1))), IDS, ID_PAD)
    inp = KL.Input((6, 4))
    x = tf.reshape(KL.Conv1D(4, 2, padding="same")(inp), (-1, 3, 8))
    x = tf.transpose(KL.LSTM(3, return_sequences=True)(x), perm=[0, 2, 1])
    x = tf.concat([tf.reduce_sum(x, axis=-1), tf.squeeze(tf.expand_dims(x[:, :, -1], 1), axis=1)], axis=-1)
    cases["tfk_reshape_transpose_squeeze"] = TfkCase(K.Model(inp, KL.Dense(2)(x)), RNG.standard_normal((B, 6, 4)),
                                                     None)
    return cases


# the keras.ops node classes keras_lrp.load_model rebuilds tf.keras op layers as
KERAS_OPS_OF_TF_OPS = {"GetItem", "Sum", "Mean", "Concatenate", "Stack", "Reshape", "ExpandDims", "Transpose",
                       "Squeeze", "Cast", "Add", "Subtract", "Multiply", "TrueDivide", "Divide", "Negative",
                       "Softmax", "Sigmoid"}


# every Keras 3 builder of ZOO has a tf.keras twin of the same name, plus a few tf.keras-only idioms
TFK_EXTRA = ["seed_sliced_tensor_syntax", "tfk_masking_gru", "tfk_attention", "tfk_masked_attention_multiply",
             "tfk_reshape_transpose_squeeze"]
TFK_NAMES = [f.__name__ for f in ZOO] + TFK_EXTRA
# models whose output is a softmax: the explained scores are its logits
TFK_SOFTMAX_OUTPUT = {"functional_masking", "attention_ops_softmax_output", "masked_additive_attention_query_value"}


@pytest.fixture(scope="module")
def tf_keras_models():
    pytest.importorskip("tf_keras")
    cases = _tf_keras_functional_models()
    assert sorted(cases) == sorted(TFK_NAMES)
    rng = np.random.default_rng(9)
    for case in cases.values():
        case.model.set_weights([rng.normal(0, 0.5, w.shape).astype("float32") for w in case.model.get_weights()])
    return cases


def _softmax(z):
    z = np.exp(z - z.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


@pytest.mark.tensorflow_only   # tf.keras file loading; on JAX they pass too but cost ~4 min of the JAX run
@pytest.mark.parametrize("name", TFK_NAMES)
def test_tf_keras_h5_functional_models(name, tf_keras_models, tmp_path):
    """tf.keras .h5 twins of the zoo load and are explained: masked ones (was: loads, then refused), ones
    with tensor syntax between layers (TFOpLambda / SlicingOpLambda, rebuilt as keras.ops nodes) and
    attention layers (Attention, AdditiveAttention, MultiHeadAttention, with LayerNormalization)."""
    tfk_model, x, pads, rules = tf_keras_models[name]
    path = tmp_path / f"{name}.h5"
    tfk_model.save(path)
    want = tfk_model.predict(x, verbose=0)
    if rules:   # Lambda layers: Python code in the file, refused unless the user opts in
        with pytest.raises(keras_lrp.UnsafeModelError, match="Lambda"):
            keras_lrp.load_model(path)
    model = keras_lrp.load_model(path, safe_mode=not rules)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(model(x)), want, rtol=0, atol=1e-5 * np.abs(want).max())
    # every TFOpLambda / SlicingOpLambda became one keras.ops node (no Lambda layer, no layer at all)
    op_layers = [l for l in tfk_model.layers if type(l).__name__ in ("TFOpLambda", "SlicingOpLambda")]
    op_nodes = [op for op in model.operations
                if not isinstance(op, keras.layers.Layer) and type(op).__name__ in KERAS_OPS_OF_TF_OPS]
    assert len(op_nodes) == len(op_layers), op_nodes
    lambdas = [op for op in model.operations if isinstance(op, keras.layers.Lambda)]
    assert len(lambdas) == len(rules or {})
    timestep = 2 if want.ndim == 3 else None
    e = keras_lrp.explain(model, x, eps=0.0, bias_factor=1.0, dtype="float64", layer_rules=rules, timestep=timestep)
    if timestep is not None:
        want = want[:, timestep]
    scores = _softmax(e.scores) if name in TFK_SOFTMAX_OUTPUT else e.scores
    np.testing.assert_allclose(scores, want, rtol=0, atol=1e-4 * np.abs(want).max())
    relevances = as_list(e.relevance)
    assert len(relevances) == len(model.inputs)
    assert all(np.abs(r).max() > 0 for r in relevances)
    score = e.explained_score
    np.testing.assert_allclose(e.total_relevance() + e.rest, score, rtol=0, atol=1e-8 * np.abs(score).max())
    for r, pad in zip(relevances, as_list(pads)):
        if pad is not None:
            assert pad.any() and np.all(r[pad] == 0)
            assert np.all(np.abs(r[~pad]).sum(axis=-1) > 0)


@pytest.mark.tensorflow_only
def test_tf_keras_h5_op_named_like_a_layer(tmp_path):
    """A rebuilt op node whose automatic Keras 3 name equals a layer name of the file (tf.keras's
    ``softmax`` layer and ``tf.nn.softmax``, or here the next automatic name) is renamed, not refused."""
    K = pytest.importorskip("tf_keras")
    import tensorflow as tf
    probe = ops.softmax(keras.KerasTensor((1, 2)))._keras_history.operation.name   # "softmax" or "softmax_k"
    k = int(probe.rsplit("_", 1)[1]) if "_" in probe else 0
    next_name = f"softmax_{k + 1}"
    inp = K.layers.Input((None, 3))
    h = K.layers.Dense(3, name=next_name)(K.layers.LSTM(3)(inp))
    tfk_model = K.Model(inp, K.layers.Dense(2)(tf.nn.softmax(h)))
    path = tmp_path / "clash.h5"
    tfk_model.save(path)
    model = keras_lrp.load_model(path)
    names = [op.name for op in model.operations]
    assert len(set(names)) == len(names) and next_name in names
    np.testing.assert_allclose(keras.ops.convert_to_numpy(model(XF)), tfk_model.predict(XF, verbose=0), rtol=0, atol=1e-5)
