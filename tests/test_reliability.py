"""Determinism, numerics and robustness (issue: reliability)."""
import io
import json
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, given, settings, strategies as st

import keras_lrp
from keras_lrp import backend
from keras_lrp import cli
from keras_lrp.text import Tokenizer, Vocabulary
from keras_lrp.visualize import ansi_heatmap, html_heatmap

from conftest import rounding_sensitivity

L = keras.layers


def _perturbed(model, seed=0):
    rng = np.random.default_rng(seed)
    model.set_weights([w + 0.3 * rng.standard_normal(w.shape) for w in model.get_weights()])
    return model


ARCHITECTURES = {
    "bilstm": lambda: keras.Sequential([keras.Input((None, 5)), L.Bidirectional(L.LSTM(4)), L.Dense(3)]),
    "gru_stack": lambda: keras.Sequential([keras.Input((None, 5)), L.GRU(4, return_sequences=True),
                                           L.Bidirectional(L.GRU(3), merge_mode="sum"), L.Dense(3)]),
    "conv": lambda: keras.Sequential([keras.Input((6, 5)), L.Conv1D(4, 3, padding="same", activation="relu"),
                                      L.MaxPooling1D(2), L.Flatten(), L.Dense(3)]),
    "tokens": lambda: keras.Sequential([keras.Input((None,), dtype="int32"), L.Embedding(30, 5, mask_zero=True),
                                        L.LSTM(4), L.Dense(3)]),
}


def _inputs(name, n, seed=0):
    rng = np.random.default_rng(seed)
    if name == "tokens":
        return rng.integers(0, 30, (n, 6))
    return rng.standard_normal((n, 6, 5))


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_bit_identical_across_runs_and_batch_sizes_float64(name):
    model = _perturbed(ARCHITECTURES[name]())
    x = _inputs(name, 40)
    ref = keras_lrp.explain(model, x, 1, dtype="float64", batch_size=40)
    again = keras_lrp.explain(model, x, 1, dtype="float64", batch_size=40)
    np.testing.assert_array_equal(again.relevance, ref.relevance)
    for bs in (1, 3, 7, 33):
        e = keras_lrp.LRP(model, dtype="float64").attribute(x, 1, batch_size=bs)
        np.testing.assert_array_equal(e.relevance, ref.relevance, err_msg=f"batch_size={bs}")
        np.testing.assert_array_equal(e.rest, ref.rest)


@pytest.mark.parametrize("method", ["gi", "sa"])
def test_full_batches_on_their_own_trace_equal_samples_explained_alone_float64(method):
    """A full batch of the gradient methods runs on a trace with a static batch axis (TensorFlow,
    keras_lrp.backend.static_batch), the rest on the dynamic one: two graphs. A sample's float64
    result must not depend on which one explained it."""
    model = _perturbed(ARCHITECTURES["bilstm"]())
    x = _inputs("bilstm", 11, seed=2)
    explainer = keras_lrp.Explainer(model, method=method, dtype="float64")
    batched = explainer.attribute(x, 1, batch_size=8)        # 8 rows (full), then 3 (padded to 4)
    if backend.NAME == "tensorflow":
        assert set(explainer._fn.static) == {8}              # the full batch took the static trace
    for i in range(len(x)):
        alone = explainer.attribute(x[i:i + 1], 1, batch_size=8)
        np.testing.assert_array_equal(batched.relevance[i], alone.relevance[0], err_msg=f"sample {i}")
        np.testing.assert_array_equal(batched.scores[i], alone.scores[0])
    assert set(getattr(explainer._fn, "static", {8: None})) == {8}


@pytest.mark.skipif(backend.NAME != "tensorflow", reason="JAX compiles per shape; torch runs eagerly")
def test_static_batch_traces_a_bounded_number_of_batch_sizes():
    from keras_lrp.backend import tensorflow as tfb
    call = tfb.compile_function(lambda x: [x * 2.0], [backend.TensorSpec((None, None), "float64")], [])
    fixed = [tfb.static_batch(call, rows) for rows in range(1, tfb.STATIC_BATCHES + 2)]
    assert fixed[0] is tfb.static_batch(call, 1) and fixed[-1] is call      # cached; beyond the bound: dynamic
    assert [f.concrete_function.inputs[0].shape.as_list() for f in fixed[:2]] == [[1, None], [2, None]]
    np.testing.assert_array_equal(fixed[1](np.ones((2, 3)))[0], np.full((2, 3), 2.0))

def test_bit_identical_across_batch_sizes_with_attention_over_odd_lengths():
    """Softmax rows of 33 keys start at odd memory offsets; each sample's weights, and so its
    relevance, must still not depend on its position in the batch (float64)."""
    keras.utils.set_random_seed(3)
    inp = keras.Input((None, 16))
    h = L.Bidirectional(L.LSTM(12, return_sequences=True))(inp)
    a = L.MultiHeadAttention(num_heads=2, key_dim=8)(h, h)
    model = keras.Model(inp, L.Dense(3)(L.GlobalAveragePooling1D()(L.LayerNormalization()(a))))
    x = np.random.default_rng(4).standard_normal((40, 33, 16))
    ref = keras_lrp.explain(model, x, 1, dtype="float64", batch_size=40)
    explainer = keras_lrp.LRP(model, dtype="float64")
    for bs in (1, 3, 7):
        e = explainer.attribute(x, 1, batch_size=bs)
        np.testing.assert_array_equal(e.relevance, ref.relevance, err_msg=f"batch_size={bs}")


def test_flat_call_equals_the_public_call_and_reads_weights_live():
    """The compiled function is called through ConcreteFunction._call_flat (a private TensorFlow API,
    for latency): with two inputs it must give what the public call gives, bit for bit, and see
    weights changed after the explainer was built."""
    keras.utils.set_random_seed(5)
    a, b = keras.Input((None, 4), name="a"), keras.Input((None, 3), name="b")
    h = L.Concatenate()([L.LSTM(5)(a), L.GRU(4)(b)])
    model = keras.Model([a, b], L.Dense(3)(h))
    rng = np.random.default_rng(6)
    xs = [rng.standard_normal((5, 7, 4)), rng.standard_normal((5, 7, 3))]
    explainer = keras_lrp.LRP(model, dtype="float64")
    concrete = explainer._fn.concrete_function
    if not hasattr(concrete, "_call_flat"):
        pytest.skip("this TensorFlow has no ConcreteFunction._call_flat: explain uses the public call")
    args = ([np.concatenate([x, x[-3:]]) for x in xs], np.full(8, 1, np.int32), np.zeros(8, np.int32),
            np.full(8, 7, np.int32))  # 8 rows
    flat = explainer._fn(*args)                                             # through _call_flat
    public = concrete(*tf.nest.map_structure(tf.constant, args))
    for got, want in zip(tf.nest.flatten(flat), tf.nest.flatten(public)):
        np.testing.assert_array_equal(got, want.numpy())
    before = explainer.attribute(xs, 1)
    model.set_weights([w * 1.5 for w in model.get_weights()])
    after = explainer.attribute(xs, 1)
    fresh = keras_lrp.LRP(model, dtype="float64").attribute(xs, 1)
    np.testing.assert_array_equal(after.scores, fresh.scores)
    for got, want, old in zip(after.relevance, fresh.relevance, before.relevance):
        np.testing.assert_array_equal(got, want)
        assert not np.allclose(got, old)


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_float32_agrees_with_float64(name):
    """float32 within what its rounding allows: the float64 result's sensitivity to relative 2**-52
    perturbations of the weights and float inputs, scaled to float32 rounding (2**29 more), with the 16x margin of
    the golden bounds; never below 1e-6 (the test's own floor)."""
    keras.utils.set_random_seed(1)     # the weights must not depend on the tests run before
    model = _perturbed(ARCHITECTURES[name](), seed=1)
    x = _inputs(name, 8, seed=2)
    weights = model.get_weights()
    e64 = keras_lrp.explain(model, x, 0, dtype="float64")
    e32 = keras_lrp.explain(model, x, 0, dtype="float32")

    exact_inputs = name == "tokens"          # token ids are exact; float inputs are rounded as well

    def relevance64(*arrays):
        model.set_weights(arrays[:len(weights)])
        inputs = x if exact_inputs else arrays[-1]
        return keras_lrp.explain(model, inputs, 0, dtype="float64").relevance
    perturbed = weights + ([] if exact_inputs else [x])
    bound = max(1e-6, 16 * 2.0 ** 29 * rounding_sensitivity(relevance64, perturbed))
    model.set_weights(weights)
    error = np.abs(e32.relevance - e64.relevance).max() / np.abs(e64.relevance).max()
    assert error <= bound, (error, bound)


@pytest.mark.parametrize("name", ["bilstm", "gru_stack", "conv"])
@pytest.mark.parametrize("rule", ["all", "half", "prop"])
def test_exact_zero_denominators_give_finite_zero_relevance(name, rule):
    """All-zero weights and inputs: every denominator is exactly 0 with eps = 0; 0/0 := 0."""
    model = ARCHITECTURES[name]()
    model.set_weights([np.zeros_like(w) for w in model.get_weights()])
    e = keras_lrp.explain(model, np.zeros((2, 6, 5)), eps=0.0, bias_factor=1.0, dtype="float64", rule=rule)
    assert np.all(np.isfinite(e.relevance)) and np.all(np.isfinite(e.rest))
    assert np.all(e.relevance == 0)


@settings(max_examples=30, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(batch=st.integers(1, 4), time=st.integers(1, 7), scale=st.floats(1e-3, 1e3),
       eps=st.sampled_from([0.0, 1e-6, 1e-3, 0.5]), bias_factor=st.sampled_from([0.0, 0.5, 1.0]),
       seed=st.integers(0, 2 ** 16))
def test_explain_random_shapes_and_values(batch, time, scale, eps, bias_factor, seed):
    model = _MODEL
    x = scale * np.random.default_rng(seed).standard_normal((batch, time, 5))
    e = keras_lrp.explain(model, x, eps=eps, bias_factor=bias_factor, dtype="float64")
    assert e.relevance.shape == (batch, time, 5) and e.word_relevance.shape == (batch, time)
    assert np.all(np.isfinite(e.relevance)) and np.all(np.isfinite(e.rest))
    # Conservation, where no gate saturates to exactly 0 (with |x| in the hundreds, sigmoid(z)
    # underflows to 0.0, c_t = i_t g_t = 0 exactly, and the defined 0/0 := 0 drops that relevance).
    if eps == 0.0 and bias_factor == 1.0 and scale <= 10:
        total = e.relevance.sum((1, 2)) + e.rest
        np.testing.assert_allclose(total, e.explained_score, rtol=1e-7, atol=1e-7 * scale)


_MODEL = _perturbed(ARCHITECTURES["bilstm"](), seed=3)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(st.lists(st.tuples(st.text(min_size=1, max_size=8), st.floats(-1e6, 1e6)), min_size=0, max_size=12))
def test_heatmaps_never_crash_on_text_and_scores(pairs):
    words = [w for w, _ in pairs]
    scores = np.array([s for _, s in pairs])
    out = html_heatmap(words, scores)
    assert out.count("<span") == len(words)
    assert "<script" not in out.lower()   # words are escaped
    plain = ansi_heatmap(words, scores, color=False)
    assert "\x1b[" not in plain


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.text())
def test_tokenizer_total_on_arbitrary_text(text):
    tokens = Tokenizer().tokenize(text)
    assert all(isinstance(t, str) and t and not any(c.isspace() for c in t) for t in tokens)
    assert Tokenizer().tokenize(" ".join(tokens)) == tokens


@pytest.fixture(scope="module")
def tiny_text_model(tmp_path_factory):
    d = tmp_path_factory.mktemp("rel")
    vocab = Vocabulary(list("abcdefgh") + ["good", "bad"])
    vocab.save(d / "vocab.json")
    model = keras.Sequential([keras.Input((None,), dtype="int32"), L.Embedding(len(vocab), 3), L.LSTM(2), L.Dense(2)])
    model.save(d / "m.keras")
    return d


@settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40))
def test_cli_never_crashes_on_arbitrary_utf8(tiny_text_model, text, capsys):
    code = cli.main(["explain", text, "--model", str(tiny_text_model / "m.keras"), "--vocab",
                     str(tiny_text_model / "vocab.json"), "--no-color"])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    if text.strip() and Tokenizer().tokenize(text):
        assert code == 0, err
    else:
        assert code == 2 and err.startswith("keras-lrp: error:")


def test_ctrl_c_keeps_written_json_lines(tiny_text_model, tmp_path, monkeypatch, capsys):
    from keras_lrp import text_explainer
    calls = {"n": 0}
    real = text_explainer.explain_encoded

    def interrupted_in_the_second_chunk(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 1:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(text_explainer, "explain_encoded", interrupted_in_the_second_chunk)
    monkeypatch.setattr(cli, "_CHUNK", 2)
    # chunks of max(4 * batch_size, _CHUNK) = 4 sentences, one explain_encoded call per chunk
    monkeypatch.setattr(sys, "stdin", io.StringIO("a b\nc d\ne f\ng h\ngood bad\nb a\n"))
    out = tmp_path / "o.jsonl"
    code = cli.main(["explain", "--model", str(tiny_text_model / "m.keras"), "--vocab",
                     str(tiny_text_model / "vocab.json"), "--json", str(out), "--batch-size", "1", "--quiet"])
    err = capsys.readouterr().err
    assert code == 130 and "interrupted" in err and "Traceback" not in err
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["text"] for r in lines] == ["a b", "c d", "e f", "g h"]   # the first chunk, in order
