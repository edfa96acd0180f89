"""The engine on every Keras backend: weights read live by the compiled function, length buckets that
change nothing, float64 refused rather than silently float32, the CLI on the backend the user chose,
and the same float64 relevance on TensorFlow and JAX (each backend in its own process: Keras fixes
the backend at import). Runs on every backend (tests/conftest.py CORE_FILES)."""
import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

import keras_lrp
from conftest import BACKEND, ROOT, conditioned_bound
from keras_lrp.explainer import cached_explainer
from keras_lrp.text import Vocabulary

L = keras.layers
WORDS = ["a", "good", "bad", "movie", "film", "great", "plot", "boring", "fun", "."]
# lengths 1, 2, 4, 4 and 9: buckets 8 and 16 (few lengths: JAX compiles once per shape)
TEXTS = ["bad", "bad plot", "a good movie .", "a boring bad film", "a good film a good plot a great fun"]


def _installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _env(**extra) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT)] + os.environ.get("PYTHONPATH", "").split(os.pathsep)))
    env.update(extra)
    return env


def _token_model(seed: int, mask_zero: bool = True, conv: bool = False) -> keras.Model:
    keras.utils.set_random_seed(seed)
    inp = keras.Input((None,), dtype="int32")
    x = L.Embedding(len(Vocabulary(WORDS)), 4, mask_zero=mask_zero)(inp)
    if conv:
        x = L.Conv1D(4, 2, padding="same")(x)
    x = L.Bidirectional(L.LSTM(3, return_sequences=True))(x)
    x = L.GRU(3)(L.LayerNormalization()(x))
    return keras.Model(inp, L.Dense(3)(x))


def test_weights_are_read_live_after_the_first_explanation():
    """set_weights after an explanation changes the next one (nothing frozen at compile time): it equals
    a new explainer's, bit for bit."""
    model = _token_model(1)
    ids = np.array([[1, 2, 3, 4], [5, 6, 0, 0]])
    explainer = keras_lrp.LRP(model, dtype="float64")
    before = explainer.attribute(ids, 0)
    rng = np.random.default_rng(1)
    model.set_weights([w + 0.1 * rng.standard_normal(w.shape) for w in model.get_weights()])
    after = explainer.attribute(ids, 0)
    fresh = keras_lrp.LRP(model, dtype="float64").attribute(ids, 0)
    assert np.abs(after.relevance - before.relevance).max() > 1e-3
    np.testing.assert_array_equal(after.relevance, fresh.relevance)
    want = keras.ops.convert_to_numpy(model(ids))   # float32
    np.testing.assert_allclose(after.scores, want, rtol=0, atol=1e-5 * np.abs(want).max())


def test_length_buckets_change_nothing_bit_for_bit_float64():
    """Texts padded to their length bucket (powers of two) explain exactly as without buckets, where the
    model masks the padding (Embedding(mask_zero=True), then per-step and recurrent layers only)."""
    vocab = Vocabulary(WORDS)
    model = _token_model(2)
    assert cached_explainer(model, dtype="float64").post_padding_safe
    kwargs = dict(vocab=vocab, eps=0.0, bias_factor=1.0, dtype="float64")
    plain = keras_lrp.explain_text(model, TEXTS, bucket=False, **kwargs)
    bucketed = keras_lrp.explain_text(model, TEXTS, bucket=True, **kwargs)
    assert plain.relevance.shape == bucketed.relevance.shape
    np.testing.assert_array_equal(bucketed.relevance, plain.relevance)
    np.testing.assert_array_equal(bucketed.scores, plain.scores)
    np.testing.assert_array_equal(bucketed.rest, plain.rest)
    np.testing.assert_array_equal(bucketed.lengths, plain.lengths)


@pytest.mark.filterwarnings("ignore:Layer .conv1d")
def test_length_buckets_only_where_the_padding_is_masked():
    """A convolution over time, or an Embedding without mask_zero, sees the padding: never bucketed."""
    for model in (_token_model(3, conv=True), _token_model(3, mask_zero=False)):
        assert not cached_explainer(model, dtype="float64").post_padding_safe
    vocab = Vocabulary(WORDS)
    model = _token_model(3, conv=True)
    kwargs = dict(vocab=vocab, eps=0.0, bias_factor=1.0, dtype="float64")
    np.testing.assert_array_equal(keras_lrp.explain_text(model, TEXTS, bucket=True, **kwargs).relevance,
                                  keras_lrp.explain_text(model, TEXTS, bucket=False, **kwargs).relevance)


@pytest.mark.skipif(BACKEND != "tensorflow", reason="jit_compile chooses XLA on TensorFlow (JAX always compiles so)")
@pytest.mark.parametrize("method", ["lrp", "gi", "shapley"])
def test_jit_compile_agrees_with_the_graph_and_keeps_samples_independent(method):
    """jit_compile=True (XLA) explains as TensorFlow's graph does, to float64 rounding, LRP and the
    differentiated / perturbed forward passes alike; each sample alone equals it in a batch of 24, bit for
    bit (XLA rounds a row by its place in a block of 8: calls are padded to 8 rows; with 4, LRP fails
    here); and explain_text then buckets lengths by default (XLA compiles once per shape)."""
    model = _token_model(4)
    ids = np.random.default_rng(4).integers(1, len(WORDS) + 2, (24, 6))
    ids[3, 4:] = 0
    kwargs = dict(dtype="float64", eps=0.0, bias_factor=1.0, method=method)
    graph = keras_lrp.explain(model, ids, **kwargs)
    xla = keras_lrp.explain(model, ids, jit_compile=True, **kwargs)
    assert cached_explainer(model, jit_compile=True, **kwargs).compiles_per_shape
    assert np.abs(xla.relevance - graph.relevance).max() <= 1e-12 * np.abs(graph.relevance).max()
    np.testing.assert_allclose(xla.scores, graph.scores, rtol=1e-13)
    for k in range(24):
        alone = keras_lrp.explain(model, ids[k:k + 1], jit_compile=True, **kwargs)
        np.testing.assert_array_equal(alone.relevance[0], xla.relevance[k])
    if method == "lrp":
        explainer = cached_explainer(model, jit_compile=True, **kwargs)
        shapes, call = [], explainer._fn
        explainer._fn = lambda x, *rest: shapes.append(x[0].shape) or call(x, *rest)
        keras_lrp.explain_text(model, TEXTS, vocab=Vocabulary(WORDS), jit_compile=True, **kwargs)
        assert sorted({s[1] for s in shapes}) == [8, 16]   # lengths 1, 2, 4, 4, 9 in two buckets


@pytest.mark.skipif(BACKEND != "torch", reason="the refusal is torch's")
def test_jit_compile_is_refused_on_torch():
    with pytest.raises(ValueError, match="jit_compile=True compiles with XLA.*Keras runs on torch here"):
        keras_lrp.Explainer(_token_model(1), jit_compile=True)


def _vector_model(seed: int, kind: str) -> keras.Model:
    """A model on (batch, time, 4) vectors, built as users write them."""
    keras.utils.set_random_seed(seed)
    inp = keras.Input((None, 4))
    if kind == "bilstm":
        x = L.Bidirectional(L.LSTM(3, return_sequences=True))(L.Dense(4)(inp))
        x = L.GRU(3)(L.LayerNormalization()(x))
    elif kind == "lstm":
        x = L.LSTM(3)(inp)
    elif kind == "gru_backwards":
        x = L.GRU(3, go_backwards=True)(inp)
    elif kind == "conv":                       # sees the padding: a convolution over time
        x = L.LSTM(3)(L.Conv1D(4, 2, padding="same")(inp))
    elif kind == "op_node":                    # a keras.ops call drops the mask before the LSTM
        x = L.LSTM(3)(keras.ops.multiply(inp, 2.0))
    elif kind == "masking":                    # masks by value itself
        x = L.LSTM(3)(L.Masking()(inp))
    elif kind == "time_output":                # an output with a time axis
        return keras.Model(inp, L.Dense(2)(L.LSTM(3, return_sequences=True)(inp)))
    return keras.Model(inp, L.Dense(2)(x))


def _padded_lengths_seen(monkeypatch) -> list:
    """The time axis of every compiled explain call from now on."""
    seen, call_rows = [], keras_lrp.explainer.Explainer._call_rows

    def spy(self, x, *rest):
        seen.append(int(x[0].shape[1]))
        return call_rows(self, x, *rest)
    monkeypatch.setattr(keras_lrp.explainer.Explainer, "_call_rows", spy)
    return seen


def _assert_same(got, want):
    """Bit for bit, but on torch within float64 rounding: MKL rounds a row of a matrix product by its place in
    the block of rows, and a padded sequence has more rows (2.1e-15 of the largest value measured; README,
    Backends)."""
    if BACKEND == "torch":
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-12 * max(np.abs(want).max(), 1e-300))
    else:
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("kind", ["lstm", "gru_backwards"])
def test_vector_padding_masked_by_length_changes_nothing_bit_for_bit_float64(kind):
    """Steps appended to a float sequence and masked by lengths= (whatever their values) explain exactly as
    the sequence alone, the padding getting exactly 0; a zero vector inside a sequence (a deleted word) is
    still the model's input, not masked."""
    model = _vector_model(4, kind)
    kwargs = dict(eps=0.0, bias_factor=1.0, dtype="float64")
    explainer = cached_explainer(model, **kwargs)
    assert explainer.vector_padding_safe and not explainer.post_padding_safe
    rng = np.random.default_rng(4)
    lengths = [2, 5, 8]
    x = rng.standard_normal((3, 8, 4))        # the padding: random values, not zeros
    x[1, 3] = 0.0                             # a deleted word: fed to the model (alone, nothing is masked)
    padded = explainer.attribute(x, lengths=lengths)
    for i, n in enumerate(lengths):
        alone = explainer.attribute(x[i:i + 1, :n])
        _assert_same(padded.relevance[i, :n], alone.relevance[0])
        _assert_same(padded.scores[i], alone.scores[0])
        _assert_same(padded.rest[i], alone.rest[0])
        assert np.all(padded.relevance[i, n:] == 0)
    with pytest.raises(ValueError, match="lengths must be in 1..8"):
        explainer.attribute(x, lengths=[2, 9, 1])


def test_vector_models_bucket_in_explain_text_bit_for_bit_float64(monkeypatch):
    """A model reading embedding vectors (an object with .embeddings, as the shipped SST models) is bucketed
    by explain_text: the texts padded to buckets 8 and 16, masked by length, explain exactly as unpadded."""
    from types import SimpleNamespace

    vocab = Vocabulary(WORDS)
    embeddings = np.random.default_rng(5).standard_normal((len(vocab), 4))   # the padding id 0: not a zero vector
    embeddings[vocab.token_to_id("plot")] = 0.0                                   # a deleted word stays in
    obj = SimpleNamespace(model=_vector_model(5, "bilstm"), vocabulary=vocab, embeddings=embeddings,
                          class_names=["no", "yes"])
    kwargs = dict(eps=0.0, bias_factor=1.0, dtype="float64")
    seen = _padded_lengths_seen(monkeypatch)
    plain = keras_lrp.explain_text(obj, TEXTS, bucket=False, **kwargs)
    assert sorted(set(seen)) == [1, 2, 4, 9]
    seen.clear()
    bucketed = keras_lrp.explain_text(obj, TEXTS, bucket=True, **kwargs)
    assert sorted(set(seen)) == [8, 16]
    _assert_same(bucketed.relevance, plain.relevance)
    _assert_same(bucketed.scores, plain.scores)
    _assert_same(bucketed.rest, plain.rest)
    for r, n in zip(bucketed.relevance, bucketed.lengths):
        assert np.all(r[n:] == 0)


def test_the_shipped_sst5_model_is_bucketed_bit_for_bit_float64(monkeypatch):
    """The shipped SST-5 Bi-LSTM reads embedding vectors without a mask: explain_text buckets it (one compiled
    shape per bucket, not per sentence length) with the relevance of the unpadded sentences, bit for bit."""
    sst = keras_lrp.load_pretrained("sst5")
    texts = ["a fine film .", "the plot is dull", "a good cast , a sharp script and a great deal of fun"]
    assert cached_explainer(sst.model, dtype="float64").vector_padding_safe
    seen = _padded_lengths_seen(monkeypatch)
    plain = keras_lrp.explain_text(sst, texts, bucket=False, dtype="float64")
    assert sorted(set(seen)) == sorted(set(plain.lengths.tolist())) == [4, 13]
    seen.clear()
    bucketed = keras_lrp.explain_text(sst, texts, bucket=True, dtype="float64")
    assert sorted(set(seen)) == [8, 16]
    _assert_same(bucketed.relevance, plain.relevance)
    _assert_same(bucketed.scores, plain.scores)
    _assert_same(bucketed.rest, plain.rest)


@pytest.mark.filterwarnings("ignore:Layer .conv1d")
def test_vector_models_that_see_the_padding_are_not_bucketed(monkeypatch):
    """A convolution over time, a keras.ops call that drops the mask before the LSTM, a Masking layer of the
    model's own, or an output with a time axis: the padding would change the explanation, so explain_text
    never pads, and lengths= is refused with the reason."""
    from types import SimpleNamespace

    for kind in ("conv", "op_node", "masking", "time_output"):
        explainer = cached_explainer(_vector_model(6, kind), dtype="float64")
        assert not explainer.vector_padding_safe, kind
        with pytest.raises(ValueError, match="lengths= is for models that skip the padded steps"):
            explainer.attribute(np.ones((1, 3, 4)), lengths=[2], **({"timestep": 0} if kind == "time_output" else {}))
    vocab = Vocabulary(WORDS)
    obj = SimpleNamespace(model=_vector_model(6, "conv"), vocabulary=vocab,
                          embeddings=np.random.default_rng(6).standard_normal((len(vocab), 4)))
    seen = _padded_lengths_seen(monkeypatch)
    keras_lrp.explain_text(obj, TEXTS[:2], bucket=True, dtype="float64")
    assert sorted(set(seen)) == [1, 2]


@pytest.mark.skipif(not _installed("jax"), reason="JAX is not installed (pip install 'keras-lrp[jax]')")
def test_float64_on_jax_without_x64_is_refused_with_the_fix():
    code = ("import numpy as np, keras, keras_lrp\n"
            "m = keras.Sequential([keras.Input((None, 2)), keras.layers.LSTM(2), keras.layers.Dense(2)])\n"
            "print(keras_lrp.explain(m, np.ones((1, 3, 2)), dtype='float32').relevance.dtype)\n"
            "keras_lrp.explain(m, np.ones((1, 3, 2)), dtype='float64')\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env=_env(KERAS_BACKEND="jax", JAX_ENABLE_X64="0"))
    assert run.returncode != 0 and "float32" in run.stdout
    assert "ValueError" in run.stderr and "JAX_ENABLE_X64=1" in run.stderr, run.stderr[-2000:]


_CLI = textwrap.dedent("""
    import json, runpy, sys
    sys.argv = ["keras-lrp"] + sys.argv[1:]
    try:
        runpy.run_module("keras_lrp.cli", run_name="__main__")
    except SystemExit as exit:
        print(json.dumps({"exit": exit.code, "tensorflow_imported": "tensorflow" in sys.modules}))
""")


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_cli_runs_on_another_backend_in_float64_without_tensorflow(backend, tmp_path):
    """KERAS_BACKEND=jax / torch keras-lrp explain --float64 explains the shipped model without importing
    TensorFlow (Keras's serializer imported it to load the Bi-LSTM; with the CUDA build of torch, TensorFlow's
    libraries loaded before triton crash the process) and without warnings; the CLI enables JAX's float64
    itself (no JAX_ENABLE_X64 set). The same relevance as TensorFlow's CLI within float64 rounding."""
    if not _installed(backend):
        pytest.skip(f"{backend} is not installed (pip install 'keras-lrp[{backend}]')")

    def cli(backend):
        env = _env(KERAS_BACKEND=backend)
        env.pop("JAX_ENABLE_X64", None)
        out = tmp_path / f"{backend}.jsonl"
        run = subprocess.run([sys.executable, "-c", _CLI, "explain", "a fine film .", "--float64", "--json", str(out),
                              "--quiet"], capture_output=True, text=True, timeout=300, env=env)
        assert run.returncode == 0 and json.loads(run.stdout.splitlines()[-1])["exit"] == 0, run.stderr[-2000:]
        return json.loads(out.read_text().splitlines()[0]), json.loads(run.stdout.splitlines()[-1]), run.stderr

    line, status, stderr = cli(backend)
    assert line["tokens"] == ["a", "fine", "film", "."]
    assert not status["tensorflow_imported"]
    assert stderr == ""
    if BACKEND == "tensorflow":
        tf_line = cli("tensorflow")[0]
        scale = np.abs(tf_line["relevance"]).max()
        np.testing.assert_allclose(line["relevance"], tf_line["relevance"], rtol=0, atol=1e-9 * scale)


@pytest.mark.skipif(BACKEND == "tensorflow", reason="tests/test_distributed.py runs the Ray path on TensorFlow")
def test_cli_engine_ray_runs_its_workers_on_this_backend(tmp_path):
    """KERAS_BACKEND=jax / torch keras-lrp explain --engine ray --float64 (JAX_ENABLE_X64 unset: the CLI
    enables it, for its workers too): the Ray workers run on the driver's backend and write the local
    engine's JSON lines, and stderr holds only the command's own line (neither JAX's "os.fork() was
    called" nor Ray Data's deprecation warnings)."""
    pytest.importorskip("ray.data")
    from keras_lrp.cli import main

    (tmp_path / "in.txt").write_text("a fine film .\nthe plot is dull\ni hate it\n")
    options = ["--input", str(tmp_path / "in.txt"), "--float64", "--eps", "0", "--bias-factor", "1"]
    env = _env()
    env.pop("JAX_ENABLE_X64", None)
    run = subprocess.run([sys.executable, "-m", "keras_lrp.cli", "explain", *options, "--engine", "ray",
                          "--out-dir", str(tmp_path / "run"), "--shard-size", "2"],
                         capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("keras-lrp: wrote 3 explanations to "), run.stderr
    assert main(["explain", *options, "--json", str(tmp_path / "local.jsonl"), "--quiet"]) == 0
    rows, local = [[json.loads(line) for line in (tmp_path / name).read_text().splitlines()]
                   for name in ("run/out.jsonl", "local.jsonl")]
    assert [r["tokens"] for r in rows] == [["a", "fine", "film", "."], ["the", "plot", "is", "dull"],
                                           ["i", "hate", "it"]]
    assert rows == local     # shards of 2 hold the local run's batches (by length): the same rows, bit for bit


@pytest.mark.skipif(_installed("torch"), reason="torch is installed: the case needs a missing backend")
def test_cli_names_a_missing_backend_and_the_install_line():
    run = subprocess.run([sys.executable, "-m", "keras_lrp.cli", "explain", "a fine film ."], capture_output=True,
                         text=True, timeout=120, env=_env(KERAS_BACKEND="torch"))
    assert run.returncode == 1
    assert run.stderr.strip().splitlines() == [
        'keras-lrp: error: Keras is set to run on torch (KERAS_BACKEND or keras.json), which is not installed: '
        'pip install "keras-lrp[torch]", or choose another backend, e.g. KERAS_BACKEND=tensorflow.']


_WORKER = textwrap.dedent("""
    import sys, numpy as np, keras, keras_lrp
    out = {}
    data = np.load(sys.argv[1])
    for name in sys.argv[3:]:
        model = keras.saving.load_model(f"{sys.argv[2]}/{name}.keras")
        e = keras_lrp.explain(model, data[name], 1, eps=0.0, bias_factor=1.0, dtype="float64")
        out[name] = e.relevance
        out[name + "_rest"] = e.rest
    np.savez(sys.argv[2] + "/" + keras.config.backend() + ".npz", **out)
""")


def _agreement_models():
    """name -> (model, input): recurrences, masks, attention, a convolution, an op head. float64 weights,
    so that the bound sees the rounding of the weights too."""
    floatx = keras.config.floatx()
    keras.config.set_floatx("float64")
    try:
        return _build_agreement_models()
    finally:
        keras.config.set_floatx(floatx)


def _build_agreement_models():
    keras.utils.set_random_seed(5)
    rng = np.random.default_rng(5)
    ids = rng.integers(1, 12, (3, 7))
    ids[0, 5:] = 0
    x = rng.standard_normal((3, 6, 3))
    models = {}
    inp = keras.Input((None,), dtype="int32")
    h = L.Bidirectional(L.LSTM(4, return_sequences=True))(L.Embedding(12, 4, mask_zero=True)(inp))
    models["bilstm_masked"] = (keras.Model(inp, L.Dense(2)(L.GRU(3)(h))), ids)
    inp = keras.Input((None, 3))
    h = L.LSTM(4, return_sequences=True)(inp)
    w = L.Softmax(axis=1)(L.Dense(1, activation="tanh")(h))
    models["attention_pool"] = (keras.Model(inp, L.Dense(3)(keras.ops.sum(w * h, axis=1))), x)
    inp = keras.Input((None, 3))
    h = L.SimpleRNN(4, return_sequences=True)(L.Conv1D(4, 2, padding="same")(inp))
    h = L.MultiHeadAttention(2, 2)(h, h)
    models["conv_mha"] = (keras.Model(inp, L.Dense(2)(L.GlobalAveragePooling1D()(L.LayerNormalization()(h)))), x)
    return models


@pytest.mark.skipif(BACKEND != "tensorflow", reason="run from the TensorFlow process, which starts the others")
@pytest.mark.parametrize("other", ["jax", "torch"])
def test_same_float64_relevance_as_tensorflow(other, tmp_path):
    """Each model saved as .keras and explained in float64 in a second process on ``other``: equal to
    TensorFlow's explanation within the bound each case's conditioning allows."""
    if not _installed(other):
        pytest.skip(f"{other} is not installed (pip install 'keras-lrp[{other}]')")
    models = _agreement_models()
    inputs = {}
    for name, (model, x) in models.items():
        model.save(tmp_path / f"{name}.keras")
        inputs[name] = x
    np.savez(tmp_path / "inputs.npz", **inputs)
    run = subprocess.run([sys.executable, "-c", _WORKER, str(tmp_path / "inputs.npz"), str(tmp_path), *models],
                         capture_output=True, text=True, timeout=600,
                         env=_env(KERAS_BACKEND=other, JAX_ENABLE_X64="1"))
    assert run.returncode == 0, run.stderr[-3000:]
    theirs = np.load(tmp_path / f"{other}.npz")
    for name, (model, x) in models.items():
        weights = model.get_weights()

        def explained(*arrays):
            """(relevance, rest) with the model's weights and, for float inputs, its input set to ``arrays``."""
            model.set_weights(arrays[:len(weights)])
            x_ = arrays[-1] if len(arrays) > len(weights) else x
            e = keras_lrp.explain(model, x_, 1, eps=0.0, bias_factor=1.0, dtype="float64")
            return np.concatenate([e.relevance.ravel(), e.rest])

        arrays = list(weights) + ([] if x.dtype.kind == "i" else [x])
        ours = explained(*arrays)
        bound = conditioned_bound(explained, arrays)   # rounding of weights and inputs, as across BLAS builds
        model.set_weights(weights)
        got = np.concatenate([theirs[name].ravel(), theirs[name + "_rest"]])
        assert np.abs(got - ours).max() <= bound * np.abs(ours).max(), name
