"""Tests of keras_lrp.explain_text: raw strings in, Explanation with tokens out."""
import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_lrp
from keras_lrp.text import Vocabulary
from keras_lrp.text_explainer import LeftOutWordsWarning

WORDS = ["a", "good", "bad", "movie", "film", "great", "plot", "boring", "fun", "."]
NAMES = ["negative", "neutral", "positive"]
TEXTS = ["a good movie .", "bad", "a boring , bad film", "great fun", "the plot is good .", "bad plot"]


def _perturb_biases(m, seed):
    rng = np.random.default_rng(seed)
    m.set_weights([w + (0.3 * rng.standard_normal(w.shape) if w.ndim == 1 else 0) for w in m.get_weights()])
    return m


@pytest.fixture(scope="module")
def vocab():
    return Vocabulary(WORDS)


@pytest.fixture(scope="module")
def id_model(vocab):
    keras.utils.set_random_seed(11)
    m = keras.Sequential([keras.Input((None,), dtype="int32"), keras.layers.Embedding(len(vocab), 4),
                          keras.layers.Bidirectional(keras.layers.LSTM(3)), keras.layers.Dense(3)])
    return _perturb_biases(m, 11)


def test_bucketing_equals_each_sentence_alone_bit_identical(id_model, vocab):
    e = keras_lrp.explain_text(id_model, TEXTS, vocab=vocab, eps=0.0, bias_factor=1.0, dtype="float64")
    assert len(e) == len(TEXTS) and e.relevance.dtype == np.float64
    assert e.tokens[2] == ["a", "boring", ",", "bad", "film"]
    np.testing.assert_array_equal(e.lengths, [len(t) for t in e.tokens])
    for i, text in enumerate(TEXTS):
        alone = keras_lrp.explain_text(id_model, text, vocab=vocab, eps=0.0, bias_factor=1.0, dtype="float64")
        n = e.lengths[i]
        assert np.array_equal(e.relevance[i, :n], alone.relevance[0])  # bit-identical
        assert np.all(e.relevance[i, n:] == 0.0)  # no padding went through the model
        assert np.array_equal(e.scores[i], alone.scores[0]) and e.rest[i] == alone.rest[0]
        # and the same as explain() on the ids, by hand
        ids, _ = vocab.encode(alone.tokens[0])
        direct = keras_lrp.explain(id_model, ids[None], eps=0.0, bias_factor=1.0, dtype="float64")
        assert np.array_equal(direct.relevance[0], alone.relevance[0])
    # conservation holds per sentence (float64, eps=0, bias_factor=1)
    assert np.all(np.abs(e.convergence_delta) <= 1e-8 * np.abs(e.explained_score).max())


def test_oov_marked_and_target_by_name(id_model, vocab):
    e = keras_lrp.explain_text(id_model, ["a zzyzx movie", "bad"], vocab=vocab, class_names=NAMES,
                               target="positive")
    assert e.oov[0].tolist() == [False, True, False] and not e.oov[1].any()
    np.testing.assert_array_equal(e.target, [2, 2])
    assert "zzyzx" in e.html() and 'data-oov="1"' in e.html()
    mixed = keras_lrp.explain_text(id_model, ["a zzyzx movie", "bad"], vocab=vocab, class_names=NAMES,
                                   target=["negative", 1])
    np.testing.assert_array_equal(mixed.target, [0, 1])
    with pytest.raises(ValueError, match="not a class name; the classes are"):
        keras_lrp.explain_text(id_model, ["bad"], vocab=vocab, class_names=NAMES, target="good")
    with pytest.raises(ValueError, match="class names are unknown"):
        keras_lrp.explain_text(id_model, ["bad"], vocab=vocab, target="positive")


def test_target_all_gives_one_explanation_per_class(id_model, vocab):
    es = keras_lrp.explain_text(id_model, TEXTS[:3], vocab=vocab, class_names=NAMES, target="all",
                                eps=0.0, bias_factor=1.0, dtype="float64")
    assert isinstance(es, list) and len(es) == 3
    for k, e in enumerate(es):
        np.testing.assert_array_equal(e.target, [k] * 3)
        one = keras_lrp.explain_text(id_model, TEXTS[:3], vocab=vocab, target=k, eps=0.0, bias_factor=1.0,
                                     dtype="float64")
        assert np.array_equal(e.relevance, one.relevance)
    # LRP is linear in the explained score: the class relevances differ
    assert not np.allclose(es[0].relevance, es[2].relevance)


def test_word_index_dict_and_unknown_words(id_model):
    """A word_index dict is Keras's: text split as a Keras Tokenizer splits it, unknown words get
    oov_id / an unknown-word entry's id, else they are left out (as texts_to_sequences does), with
    one warning naming them."""
    word_index = {w: i + 2 for i, w in enumerate(WORDS)}  # ids as in the Vocabulary
    with pytest.warns(LeftOutWordsWarning, match="1 word in 1 text .* left out.*'zzyzx'"):
        left = keras_lrp.explain_text(id_model, ["A zzyzx movie!"], vocab=word_index)
    assert left.tokens == [["a", "movie"]]           # split like Keras ('!' filtered), zzyzx left out
    without = keras_lrp.explain_text(id_model, ["a movie"], vocab=Vocabulary(WORDS))
    assert np.array_equal(left.relevance, without.relevance)
    e = keras_lrp.explain_text(id_model, ["a zzyzx movie"], vocab=word_index, oov_id=1)
    ref = keras_lrp.explain_text(id_model, ["a zzyzx movie"], vocab=Vocabulary(WORDS))
    assert np.array_equal(e.relevance, ref.relevance) and e.oov[0].tolist() == [False, True, False]
    e2 = keras_lrp.explain_text(id_model, ["a zzyzx movie"], vocab=dict(word_index, **{"<unk>": 1}))
    assert np.array_equal(e2.relevance, ref.relevance)
    custom = keras_lrp.explain_text(id_model, ["a  good"], vocab=word_index, tokenizer=str.split)
    assert custom.tokens == [["a", "good"]] and not custom.oov[0].any()
    with pytest.raises(ValueError, match="no tokens.*'A', 'GOOD' are not in the tokenizer's word index"):
        keras_lrp.explain_text(id_model, ["A  GOOD"], vocab=word_index, tokenizer=str.split)   # case kept


def test_bad_input_is_refused_early(id_model, vocab):
    with pytest.raises(ValueError, match="needs the word index the model was trained with: tokenizer=.*or vocab="):
        keras_lrp.explain_text(id_model, ["bad"])
    with pytest.raises(TypeError, match="not a str"):
        keras_lrp.explain_text(id_model, ["bad", 3], vocab=vocab)
    with pytest.raises(ValueError, match="texts is empty"):
        keras_lrp.explain_text(id_model, [], vocab=vocab)
    with pytest.raises(ValueError, match="has no tokens"):
        keras_lrp.explain_text(id_model, ["bad", "   "], vocab=vocab)
    with pytest.raises(TypeError, match="unknown argument"):
        keras_lrp.explain_text(id_model, ["bad"], vocab=vocab, epsilon=0.1)
    with pytest.raises(TypeError, match="keras.Model or an object with a .model"):
        keras_lrp.explain_text("model.h5", ["bad"], vocab=vocab)


def test_one_progress_bar_over_all_buckets(id_model, vocab, capsys):
    keras_lrp.explain_text(id_model, TEXTS, vocab=vocab, batch_size=2, verbose=True)
    out = capsys.readouterr().out
    assert out.count("6/6") == 1


# ----------------------------------------------------------------------------- TextVectorization


@pytest.fixture(scope="module")
def vectorizer_models():
    keras.utils.set_random_seed(5)
    tv = keras.layers.TextVectorization(max_tokens=12, output_mode="int")
    tv.adapt(["a good movie", "a bad film", "great fun", "boring plot"])
    seq = keras.Sequential([keras.Input((1,), dtype="string"), tv, keras.layers.Embedding(12, 4),
                            keras.layers.LSTM(3), keras.layers.Dense(2)])
    tv2 = keras.layers.TextVectorization(max_tokens=12, output_mode="int", vocabulary=tv.get_vocabulary()[2:])
    inp = keras.Input((1,), dtype="string")
    h = keras.layers.Embedding(12, 4)(tv2(inp))
    func = keras.Model(inp, keras.layers.Dense(2)(keras.layers.GRU(3)(h)))
    return tv, _perturb_biases(seq, 5), _perturb_biases(func, 6)


@pytest.mark.parametrize("kind", ["sequential", "functional"])
def test_text_vectorization_model_takes_strings(vectorizer_models, kind):
    tv, seq, func = vectorizer_models
    model = seq if kind == "sequential" else func
    texts = ["A good movie!", "zorblax fun", "a bad, boring film"]
    e = keras_lrp.explain_text(model, texts, class_names=["neg", "pos"], eps=0.0, bias_factor=1.0,
                               dtype="float64")
    # tokens are the layer's standardized words; unknown ones marked
    assert e.tokens == [["a", "good", "movie"], ["zorblax", "fun"], ["a", "bad", "boring", "film"]]
    assert e.oov[1].tolist() == [True, False]
    # relevance lands on the embedded tokens: (batch, time, embedding_dim)
    assert e.relevance.shape == (3, 4, 4)
    # each text as the model computes it alone (a batch of strings would be zero-padded by the
    # vectorizer, and this model has no mask: padding would change the two shorter results)
    alone = np.concatenate([np.asarray(model(tf.constant([[t]]))) for t in texts])
    np.testing.assert_allclose(e.scores, alone, rtol=1e-5, atol=1e-6)
    padded = np.asarray(model(tf.constant(texts)[:, None]))
    assert not np.allclose(padded[:2], alone[:2], rtol=1e-3)
    assert np.all(np.abs(e.convergence_delta) <= 1e-8 * np.abs(e.explained_score).max())
    # the user's model is left as it was (no extra calls on its layers)
    assert all(len(l._inbound_nodes) == 1 for l in model.layers if not isinstance(l, keras.layers.InputLayer))
    with pytest.raises(ValueError, match="do not pass tokenizer= or vocab="):
        keras_lrp.explain_text(model, texts, vocab=Vocabulary(WORDS))


def test_text_vectorization_copy_follows_training(vectorizer_models):
    _, seq, _ = vectorizer_models
    before = keras_lrp.explain_text(seq, ["a good movie"])
    dense = seq.layers[-1]
    w, b = dense.get_weights()
    dense.set_weights([w, b + 1.0])
    try:
        after = keras_lrp.explain_text(seq, ["a good movie"])
        np.testing.assert_allclose(after.scores, before.scores + 1.0, rtol=1e-5)
    finally:
        dense.set_weights([w, b])


def test_text_vectorization_with_fixed_length_shows_the_padding():
    keras.utils.set_random_seed(2)
    tv = keras.layers.TextVectorization(max_tokens=8, output_mode="int", output_sequence_length=5)
    tv.adapt(["a good movie", "a bad film"])
    m = keras.Sequential([keras.Input((1,), dtype="string"), tv, keras.layers.Embedding(8, 3),
                          keras.layers.LSTM(2), keras.layers.Dense(2)])
    e = keras_lrp.explain_text(m, ["good movie"])
    assert e.tokens == [["good", "movie", "<pad>", "<pad>", "<pad>"]] and e.relevance.shape == (1, 5, 3)


# ----------------------------------------------------------------------------- shipped model


def test_shipped_sentiment_model_duck_typed():
    m = keras_lrp.load_pretrained("sst2")
    e = keras_lrp.explain_text(m, ["a gorgeous , witty movie .", "i hate it ."], target="positive")
    assert e.tokens[0] == ["a", "gorgeous", ",", "witty", "movie", "."] and e.class_names == list(m.class_names)
    np.testing.assert_array_equal(e.target, [1, 1])
    assert e.output_activation == "softmax"  # the shipped model's metadata: outputs are logits
    assert "p=" in repr(e[0]._repr_html_())
    vectors = m.embeddings[m.vocabulary.encode(e.tokens[1])[0]][None]
    direct = keras_lrp.explain(m.model, vectors, target=1)
    assert np.array_equal(e[1].relevance, direct.relevance)
