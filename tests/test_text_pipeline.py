"""explain_text encodes text exactly as the user's own Keras pipeline does.

Each case builds the pipeline a user trained with (tf_keras's ``Tokenizer`` + ``pad_sequences``, or a
``TextVectorization`` layer), a tiny model on top, and checks that ``explain_text`` feeds the model
the very ids that pipeline makes (``text_front(...).encode``) and explains the scores the model gives
on them: ``model(pad_sequences(tokenizer.texts_to_sequences(texts), maxlen=...))``.
"""
import json
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_lrp
from keras_lrp.text import KerasTokenizer, VocabularyError
from keras_lrp.text_explainer import LeftOutWordsWarning, TruncatedTextsWarning, text_front

tf_text = pytest.importorskip("tf_keras.preprocessing.text")
tf_sequence = pytest.importorskip("tf_keras.preprocessing.sequence")

TRAIN = ["I loved this movie!", "A dull, plodding film.", "the plot is interesting; the acting is not",
         "Loved it -- a great FILM", "boring boring boring", "what a wonderful, witty script"]
TEXTS = ["I loved it!", "A dull film, with a boring plot and a dull script that drags on and on.",
         "zorblax frobnicated the plot", "a witty script?"]
# split="," without filters: the words are the comma-separated chunks
TEXTS_SPLIT = ["what a wonderful, zorblax", "A dull,what a wonderful, boring boring boring,a,b,c,d,e,f,g,h", "A dull"]
MAXLEN = 8
EXACT = dict(eps=0.0, bias_factor=1.0, dtype="float64")


def _tokenizer(**kwargs):
    tok = tf_text.Tokenizer(**kwargs)
    tok.fit_on_texts(TRAIN)
    return tok


def _model(vocab_size, maxlen=MAXLEN, mask_zero=False, seed=0):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((maxlen,), dtype="int32"),
                              keras.layers.Embedding(vocab_size, 3, mask_zero=mask_zero),
                              keras.layers.LSTM(2), keras.layers.Dense(2)])
    rng = np.random.default_rng(seed)
    model.set_weights([w + (0.3 * rng.standard_normal(w.shape) if w.ndim == 1 else 0) for w in model.get_weights()])
    return model


def _check_same_as_keras(model, texts, tokenizer_forms, ids, **kwargs):
    """Every form of the tokenizer gives explain_text the ids Keras gives, and the model's scores on
    them; relevance conserves (float64, eps = 0, bias_factor = 1)."""
    expected = np.asarray(model(ids))
    for form in tokenizer_forms:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", (LeftOutWordsWarning, TruncatedTextsWarning))
            front = text_front(model, form, **kwargs)
            got = np.stack([front.encode(t).ids for t in texts])
            np.testing.assert_array_equal(got, ids)
            e = keras_lrp.explain_text(model, texts, tokenizer=form, **kwargs, **EXACT)
        np.testing.assert_allclose(e.scores, expected, rtol=1e-5, atol=1e-6)
        assert np.all(np.abs(e.convergence_delta) <= 1e-8 * np.abs(e.explained_score).max())
        assert [len(t) for t in e.tokens] == [ids.shape[1]] * len(texts)


# one case per setting of Keras's Tokenizer that changes the ids
TOKENIZER_SETTINGS = {
    "defaults": {},
    "filters": {"filters": "!?"},
    "lower": {"lower": False},
    "split": {"split": ",", "filters": ""},
    "char_level": {"char_level": True},
    "oov_token": {"oov_token": "<OOV>"},
    "num_words": {"num_words": 7},
    "num_words_and_oov_token": {"num_words": 7, "oov_token": "<OOV>"},
}


@pytest.mark.parametrize("setting", list(TOKENIZER_SETTINGS), ids=list(TOKENIZER_SETTINGS))
def test_keras_tokenizer_object_json_and_file_encode_as_texts_to_sequences(setting, tmp_path):
    tok = _tokenizer(**TOKENIZER_SETTINGS[setting])
    texts = TEXTS_SPLIT if setting == "split" else TEXTS
    (tmp_path / "tok.json").write_text(tok.to_json())
    ids = tf_sequence.pad_sequences(tok.texts_to_sequences(texts), maxlen=MAXLEN)   # Keras's defaults: "pre"
    model = _model(len(tok.word_index) + 1)
    _check_same_as_keras(model, texts, [tok, tok.to_json(), str(tmp_path / "tok.json"), tmp_path / "tok.json"], ids)
    assert KerasTokenizer.from_keras(tok).texts_to_sequences(texts) == tok.texts_to_sequences(texts)


@pytest.mark.parametrize("padding", ["pre", "post"])
@pytest.mark.parametrize("truncating", ["pre", "post"])
def test_padding_and_truncating_mean_what_they_mean_in_pad_sequences(padding, truncating):
    tok = _tokenizer(oov_token="<OOV>")
    ids = tf_sequence.pad_sequences(tok.texts_to_sequences(TEXTS), maxlen=MAXLEN, padding=padding,
                                    truncating=truncating)
    model = _model(len(tok.word_index) + 1, seed=1)
    _check_same_as_keras(model, TEXTS, [tok], ids, padding=padding, truncating=truncating)
    e = keras_lrp.explain_text(model, ["I loved it!"], tokenizer=tok, padding=padding)
    pads = ["<pad>"] * (MAXLEN - 3)
    assert e.tokens[0] == (pads + ["i", "loved", "it"] if padding == "pre" else ["i", "loved", "it"] + pads)


def test_maxlen_pads_a_model_of_any_length_and_a_cut_is_reported():
    tok = _tokenizer()
    model = _model(len(tok.word_index) + 1, maxlen=None, seed=2)
    ids = tf_sequence.pad_sequences(tok.texts_to_sequences(TEXTS), maxlen=5, padding="post")
    _check_same_as_keras(model, TEXTS, [tok], ids, maxlen=5, padding="post")
    with pytest.warns(TruncatedTextsWarning, match="1 of 4 texts was longer .* keeps the last 5 words"):
        keras_lrp.explain_text(model, TEXTS, tokenizer=tok, maxlen=5)
    # without maxlen a model of any length sees each text as it is (nothing padded)
    with pytest.warns(LeftOutWordsWarning, match="9 words in 2 texts"):
        e = keras_lrp.explain_text(model, TEXTS, tokenizer=tok)
    assert e.tokens[0] == ["i", "loved", "it"] and e.tokens[2] == ["the", "plot"]


def test_unknown_words_are_left_out_as_keras_leaves_them_out():
    tok = _tokenizer()
    model = _model(len(tok.word_index) + 1, maxlen=None, seed=3)
    with pytest.warns(LeftOutWordsWarning, match="2 words in 1 text are not in the tokenizer's word index") as w:
        e = keras_lrp.explain_text(model, ["zorblax frobnicated the plot"], tokenizer=tok, **EXACT)
    assert len(w) == 1
    ids = np.asarray(tok.texts_to_sequences(["zorblax frobnicated the plot"]))
    np.testing.assert_allclose(e.scores, np.asarray(model(ids)), rtol=1e-5, atol=1e-6)
    # a plain word_index dict is split and looked up the same way (the CLI's word_index JSON too)
    with pytest.warns(LeftOutWordsWarning):
        d = keras_lrp.explain_text(model, ["zorblax frobnicated the plot"], vocab=tok.word_index, **EXACT)
    assert d.tokens == e.tokens and np.array_equal(d.relevance, e.relevance)
    with pytest.raises(ValueError, match="no tokens.*'zorblax'.*not in the tokenizer's word index"):
        keras_lrp.explain_text(model, ["zorblax!"], tokenizer=tok)


def test_analyzer_of_a_tokenizer_object_is_used():
    tok = tf_text.Tokenizer(analyzer=lambda text: text.split("|"))
    tok.fit_on_texts(["a b|c", "c|d"])
    model = _model(len(tok.word_index) + 1, maxlen=None, seed=4)
    e = keras_lrp.explain_text(model, ["c|a b"], tokenizer=tok)
    assert e.tokens == [["c", "a b"]]
    np.testing.assert_allclose(e.scores, np.asarray(model(np.asarray(tok.texts_to_sequences(["c|a b"])))),
                               rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- TextVectorization


def _vectorizer(**kwargs):
    tv = keras.layers.TextVectorization(max_tokens=30, **kwargs)
    tv.adapt(TRAIN)
    return tv


def test_text_vectorization_as_the_tokenizer_of_an_id_model():
    fixed_tv = _vectorizer(output_sequence_length=MAXLEN)
    model = _model(30, seed=5)
    ids = np.asarray(fixed_tv(tf.constant(TEXTS)))               # pads and cuts at the end, itself
    _check_same_as_keras(model, TEXTS, [fixed_tv], ids)
    with pytest.raises(ValueError, match="pads and truncates to its output_sequence_length=8 itself"):
        keras_lrp.explain_text(model, TEXTS, tokenizer=fixed_tv, padding="post")
    # without output_sequence_length: each text as long as it is, or padded by explain_text for a fixed model
    tv = _vectorizer()
    free = _model(30, maxlen=None, seed=6)
    e = keras_lrp.explain_text(free, TEXTS, tokenizer=tv, **EXACT)
    alone = np.concatenate([np.asarray(free(np.asarray(tv(tf.constant([t]))))) for t in TEXTS])
    np.testing.assert_allclose(e.scores, alone, rtol=1e-5, atol=1e-6)
    assert e.tokens[2] == ["zorblax", "frobnicated", "the", "plot"] and e.oov[2].tolist() == [True, True, False, False]
    padded = tf_sequence.pad_sequences([np.asarray(tv(tf.constant([t])))[0] for t in TEXTS], maxlen=MAXLEN)
    _check_same_as_keras(model, TEXTS, [tv], padded)


@pytest.mark.parametrize("sequence_length", [None, MAXLEN])
def test_text_vectorization_then_masked_embedding_is_explained(sequence_length):
    """Issue 18: TextVectorization followed by Embedding(mask_zero=True) was refused (the copy of the
    layers after the vectorizer did not map the mask Keras passes as mask=)."""
    keras.utils.set_random_seed(7)
    tv = _vectorizer(output_sequence_length=sequence_length)
    inp = keras.Input((1,), dtype="string")
    h = keras.layers.Embedding(30, 3, mask_zero=True)(tv(inp))
    h = keras.layers.Bidirectional(keras.layers.LSTM(2))(h)
    model = keras.Model(inp, keras.layers.Dense(2, activation="softmax")(h))
    e = keras_lrp.explain_text(model, TEXTS, class_names=["neg", "pos"], **EXACT)
    expected = np.concatenate([np.asarray(model(tf.constant([[t]]))) for t in TEXTS])
    np.testing.assert_allclose(e.probabilities, expected, rtol=1e-5, atol=1e-6)
    assert np.all(np.abs(e.convergence_delta) <= 1e-8 * np.abs(e.explained_score).max())
    if sequence_length is not None:    # the masked padding gets exactly zero relevance
        n = [t.count("<pad>") for t in e.tokens]
        assert n[0] == MAXLEN - 3 and np.all(e.word_relevance[0, 3:] == 0.0)
    with pytest.raises(ValueError, match="do not pass maxlen=, padding= or truncating="):
        keras_lrp.explain_text(model, TEXTS, padding="post")


# ----------------------------------------------------------------------------- refusals


def test_bad_tokenizer_arguments_are_refused_before_explaining(tmp_path):
    tok = _tokenizer()
    model = _model(len(tok.word_index) + 1)
    with pytest.raises(ValueError, match="padding must be 'pre' or 'post'"):
        keras_lrp.explain_text(model, TEXTS, tokenizer=tok, padding="left")
    with pytest.raises(ValueError, match="truncating must be 'pre' or 'post'"):
        keras_lrp.explain_text(model, TEXTS, tokenizer=tok, truncating=True)
    with pytest.raises(ValueError, match="maxlen=5 but the model takes exactly 8"):
        keras_lrp.explain_text(model, TEXTS, tokenizer=tok, maxlen=5)
    with pytest.raises(ValueError, match="has its own word index: do not pass vocab="):
        keras_lrp.explain_text(model, TEXTS, tokenizer=tok, vocab=tok.word_index)
    with pytest.raises(VocabularyError, match="empty word_index: fit it first"):
        keras_lrp.explain_text(model, TEXTS, tokenizer=tf_text.Tokenizer())
    with pytest.raises(FileNotFoundError, match="nope.json"):
        keras_lrp.explain_text(model, TEXTS, tokenizer=str(tmp_path / "nope.json"))
    config = json.loads(tok.to_json())
    config["config"]["oov_token"] = "<OOV>"
    with pytest.raises(VocabularyError, match="oov_token '<OOV>' is not in its word_index"):
        keras_lrp.explain_text(model, TEXTS, tokenizer=json.dumps(config))
    config["config"]["lower"] = "yes"
    with pytest.raises(VocabularyError, match="config.lower is \"yes\"; a Keras Tokenizer has true/false there"):
        keras_lrp.explain_text(model, TEXTS, tokenizer=json.dumps(config))
