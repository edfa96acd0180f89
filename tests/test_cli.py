"""The keras-lrp command line, run as a subprocess on tiny models made here."""
import io
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from keras_lrp import cli
from keras_lrp.text import Vocabulary

WORDS = "i hate the movie though plot is interesting love boring".split()


def run(*args, stdin=None):
    """The command as a user runs it: a new process."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run([sys.executable, "-m", "keras_lrp.cli", *args], input=stdin, capture_output=True,
                          text=True, env=env, timeout=180)


class Result:
    def __init__(self, returncode, stdout, stderr):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


@pytest.fixture
def call(capsys, monkeypatch):
    """The command's main() in this process (fast: TensorFlow is already loaded)."""
    def _call(*args, stdin=None):
        if stdin is not None:
            monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        code = cli.main(list(args))
        out, err = capsys.readouterr()
        return Result(code, out, err)
    return _call


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    vocab = Vocabulary(WORDS)
    vocab.save(d / "vocab.json")
    keras.utils.set_random_seed(0)
    tokens = keras.Sequential([keras.Input((None,), dtype="int32"), keras.layers.Embedding(len(vocab), 4, mask_zero=True),
                               keras.layers.Bidirectional(keras.layers.LSTM(3)), keras.layers.Dense(2)])
    tokens.save(d / "tokens.keras")
    vectors = keras.Sequential([keras.Input((None, 4)), keras.layers.LSTM(3), keras.layers.Dense(2)])
    vectors.save(d / "vectors.h5")
    np.save(d / "emb.npy", np.random.default_rng(0).standard_normal((len(vocab), 4)).astype("float32"))
    series = keras.Sequential([keras.Input((None, 3)), keras.layers.GRU(3), keras.layers.Dense(1)])
    series.save(d / "series.keras")
    np.save(d / "x.npy", np.random.default_rng(1).standard_normal((2, 5, 3)).astype("float32"))
    return d


def test_text_with_token_model_json_html_png(files):
    out = files / "out.jsonl"
    r = run("explain", "I hate the movie, though the plot is interesting.", "--model", str(files / "tokens.keras"),
            "--vocab", str(files / "vocab.json"), "--classes", "neg,pos", "--json", str(out),
            "--html", str(files / "h.html"), "--png", str(files / "h.png"), "--no-color")
    assert r.returncode == 0, r.stderr
    assert "prediction:" in r.stdout and "Traceback" not in r.stderr
    rec = json.loads(out.read_text().splitlines()[0])
    assert rec["tokens"] == ["i", "hate", "the", "movie", ",", "though", "the", "plot", "is", "interesting", "."]
    assert len(rec["relevance"]) == len(rec["tokens"]) and rec["oov_tokens"] == [",", "."]
    assert set(rec["scores"]) == {"neg", "pos"} and rec["prediction"] in ("neg", "pos")
    assert "<span" in (files / "h.html").read_text()
    assert (files / "h.png").read_bytes()[:4] == b"\x89PNG"


def test_stdin_many_sentences_in_order_and_target_name(files):
    text = "i love the movie\n\nboring\nthe plot is interesting though i hate it\n"
    out = files / "many.jsonl"
    r = run("explain", "--model", str(files / "vectors.h5"), "--vocab", str(files / "vocab.json"),
            "--embeddings", str(files / "emb.npy"), "--classes", "neg,pos", "--target", "pos",
            "--json", str(out), "--batch-size", "1", stdin=text)
    assert r.returncode == 0, r.stderr
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert [x["text"] for x in recs] == ["i love the movie", "boring", "the plot is interesting though i hate it"]
    assert all(x["target"] == "pos" for x in recs)


def test_input_file_shows_progress_and_writes_every_line(files, tmp_path):
    sentences = [" ".join(WORDS[i % 7:i % 7 + 1 + i % 4]) for i in range(40)]
    (tmp_path / "in.txt").write_text("\n".join(sentences) + "\n")
    r = run("explain", "--input", str(tmp_path / "in.txt"), "--model", str(files / "tokens.keras"),
            "--vocab", str(files / "vocab.json"), "--json", str(tmp_path / "o.jsonl"), "--batch-size", "8")
    assert r.returncode == 0, r.stderr
    assert "40/40" in r.stderr and "sentence" in r.stderr          # keras.utils.Progbar, on stderr
    assert f"wrote 40 explanations to {tmp_path / 'o.jsonl'}" in r.stderr
    assert "40/40" not in r.stdout
    recs = [json.loads(line) for line in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert [x["text"] for x in recs] == sentences


def test_methods_and_rules(files, call):
    for extra in (["--method", "gi"], ["--method", "sa"], ["--rule", "half"], ["--eps", "0", "--bias-factor", "1"]):
        r = call("explain", "i love it", "--model", str(files / "tokens.keras"), "--vocab", str(files / "vocab.json"),
                "--json", str(files / "m.jsonl"), *extra)
        assert r.returncode == 0, (extra, r.stderr)


def test_numeric_npy(files):
    r = run("explain", "--model", str(files / "series.keras"), "--npy", str(files / "x.npy"),
            "--png", str(files / "tf.png"), "--out", str(files / "r.npy"))
    assert r.returncode == 0, r.stderr
    assert np.load(files / "r.npy").shape == (2, 5, 3)
    assert (files / "tf.png").stat().st_size > 1000


@pytest.mark.parametrize("n,printed", [(11, 11), (12, 10)])
def test_npy_prints_every_sample_or_says_how_many_it_left_out(files, tmp_path, call, n, printed):
    np.save(tmp_path / "x.npy", np.random.default_rng(2).standard_normal((n, 4, 3)).astype("float32"))
    r = call("explain", "--model", str(files / "series.keras"), "--npy", str(tmp_path / "x.npy"))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert [line.split(":")[0] for line in lines[:printed]] == [f"sample {k}" for k in range(printed)]
    if printed < n:
        assert lines[printed] == f"... and {n - printed} more samples (all {n} are in {tmp_path / 'x_relevance.npy'})"
    assert len(lines) == printed + (printed < n)


def test_all_unknown_words_warns_but_succeeds(files, call):
    r = call("explain", "zzz qqq", "--model", str(files / "tokens.keras"), "--vocab", str(files / "vocab.json"))
    assert r.returncode == 0, r.stderr
    assert "warning: every word" in r.stderr


@pytest.mark.parametrize("args,stdin,message", [
    (["", "--model", "{d}/tokens.keras", "--vocab", "{d}/vocab.json"], None, "the text is empty"),
    (["x", "--model", "{d}/missing.h5", "--vocab", "{d}/vocab.json"], None, "missing.h5"),
    (["x", "--model", "{d}/vocab.json", "--vocab", "{d}/vocab.json"], None, "vocab.json"),
    (["x", "--model", "{d}/tokens.keras", "--vocab", "{d}/emb.npy"], None, "emb.npy"),
    (["x", "--model", "{d}/tokens.keras", "--vocab", "{d}/vocab.json", "--target", "great"], None, "unknown class"),
    (["x", "--model", "{d}/tokens.keras", "--vocab", "{d}/vocab.json", "--target", "7"], None, "out of range"),
    (["--input", "{d}/nope.txt", "--model", "{d}/tokens.keras", "--vocab", "{d}/vocab.json"], None, "cannot read --input"),
    (["x", "--model", "{d}/tokens.keras", "--vocab", "{d}/vocab.json", "--json", "{d}/no/such/dir/o.jsonl"], None,
     "does not exist"),
    (["x", "--model", "{d}/tokens.keras", "--vocab", "{d}/vocab.json", "--html", "{d}"], None, "is a folder"),
    (["x", "--model", "{d}/tokens.keras", "--vocab", "{d}/vocab.json", "--json", "/proc/version"], None,
     "/proc/version"),
    (["x", "--model", "{d}/tokens.keras", "--vocab", "{d}/vocab.json", "--json", "{d}/a.json", "--html",
      "{d}/a.json"], None, "same file"),
    (["x", "--model", "{d}/tokens.keras", "--vocab", "{d}/vocab.json", "--out", "{d}/r.npy"], None, "--out is for --npy"),
    (["x", "--vocab", "{d}/vocab.json"], None, "need --model"),
    (["x", "--input", "{d}/vocab.json", "--model", "{d}/tokens.keras", "--vocab", "{d}/vocab.json"], None,
     "not both"),
    (["x", "--model", "{d}/tokens.keras", "--vocab", "{d}/x.npy"], None, "x.npy"),
    (["x", "--model", "{d}/vectors.h5", "--vocab", "{d}/vocab.json"], None, "pass --embeddings"),
    (["--model", "{d}/tokens.keras", "--vocab", "{d}/vocab.json"], "\n\n", "no sentences"),
    (["x", "--padding", "post"], None, "--padding/--truncating/--maxlen are for --model"),
    (["--model", "{d}/series.keras", "--npy", "{d}/x.npy", "--maxlen", "3"], None, "--maxlen is for text"),
])
def test_errors_are_one_line_without_traceback(files, args, stdin, message, call):
    r = call("explain", *[a.format(d=files) for a in args], stdin=stdin)
    assert r.returncode != 0
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert lines[0].startswith("keras-lrp: error:") and message in lines[0], lines[0]


@pytest.mark.parametrize("padding,truncating", [(None, None), ("post", "post")])
def test_fixed_length_model_is_padded_and_cut_as_pad_sequences(tmp_path, call, padding, truncating):
    """A model with a fixed time axis gets each sentence padded with id 0 (shown as <pad>: the model
    sees it) and cut as keras's pad_sequences does: --padding / --truncating, default "pre"; the
    scores are the model's on the user's own pipeline."""
    sequence = pytest.importorskip("tf_keras.preprocessing.sequence")
    tok = _keras_tokenizer(["I hate the movie!", "the plot is interesting, though.", "Loved it; boring? never"],
                           oov_token="<OOV>")
    (tmp_path / "tok.json").write_text(tok.to_json())
    keras.utils.set_random_seed(0)
    fixed = keras.Sequential([keras.Input((6,), dtype="int32"), keras.layers.Embedding(len(tok.word_index) + 1, 4),
                              keras.layers.LSTM(3), keras.layers.Dense(2)])
    fixed.save(tmp_path / "fixed.keras")
    lines = ["i loved it", "the movie is boring though i hate the plot"]
    out = tmp_path / "f.jsonl"
    options = ["--padding", padding, "--truncating", truncating] if padding else []
    r = call("explain", "--model", str(tmp_path / "fixed.keras"), "--vocab", str(tmp_path / "tok.json"),
             "--json", str(out), *options, stdin="\n".join(lines) + "\n")
    assert r.returncode == 0, r.stderr
    assert "warning: 1 of 2 texts was longer than the model's input and was cut" in r.stderr
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    pads = ["<pad>"] * 3
    assert recs[0]["tokens"] == (pads + ["i", "loved", "it"] if padding is None else ["i", "loved", "it"] + pads)
    assert recs[1]["tokens"] == (["boring", "though", "i", "hate", "the", "plot"] if padding is None
                                 else ["the", "movie", "is", "boring", "though", "i"])
    assert all(len(rec["relevance"]) == 6 for rec in recs)
    ids = sequence.pad_sequences(tok.texts_to_sequences(lines), maxlen=6, padding=padding or "pre",
                                 truncating=truncating or "pre")
    np.testing.assert_allclose([list(rec["scores"].values()) for rec in recs], np.asarray(fixed(ids)),
                               rtol=1e-5, atol=1e-6)


def test_text_vectorization_model_needs_no_vocab(files, tmp_path, call):
    """A .keras model starting with TextVectorization (followed by a masked Embedding) explains the
    sentences it tokenizes itself; its scores are the model's on the strings."""
    import tensorflow as tf

    keras.utils.set_random_seed(2)
    tv = keras.layers.TextVectorization(max_tokens=20)
    tv.adapt(["i hate the movie", "the plot is interesting", "loved it"])
    inp = keras.Input((1,), dtype="string")
    h = keras.layers.LSTM(3)(keras.layers.Embedding(20, 4, mask_zero=True)(tv(inp)))
    model = keras.Model(inp, keras.layers.Dense(2, activation="softmax")(h))
    model.save(tmp_path / "tv.keras")
    out = tmp_path / "tv.jsonl"
    r = call("explain", "I LOVED the zorblax plot!", "--model", str(tmp_path / "tv.keras"), "--classes", "neg,pos",
             "--json", str(out))
    assert r.returncode == 0, r.stderr
    rec = json.loads(out.read_text())
    assert rec["tokens"] == ["i", "loved", "the", "zorblax", "plot"] and rec["oov_tokens"] == ["zorblax"]
    probs = np.asarray(model(tf.constant([["I LOVED the zorblax plot!"]])))[0]
    logits = np.array(list(rec["scores"].values()))
    np.testing.assert_allclose(np.exp(logits) / np.exp(logits).sum(), probs, rtol=1e-5, atol=1e-6)
    r = call("explain", "x", "--model", str(tmp_path / "tv.keras"), "--vocab", str(files / "vocab.json"))
    assert r.returncode == 2 and "starts with TextVectorization" in r.stderr and "leave out --vocab" in r.stderr


def test_sentence_without_tokens_is_refused_before_explaining(files, tmp_path, call, monkeypatch):
    from keras_lrp import text_explainer

    def no_explaining(*args, **kwargs):
        raise AssertionError("explained before the input was checked")
    monkeypatch.setattr(text_explainer, "explain_encoded", no_explaining)
    # a word_index JSON splits as Keras' Tokenizer does, whose filters drop punctuation
    (tmp_path / "wi.json").write_text(json.dumps({w: i + 1 for i, w in enumerate(WORDS)}))
    r = call("explain", "--model", str(files / "tokens.keras"), "--vocab", str(tmp_path / "wi.json"),
             stdin="i love it\n?!\n")
    assert r.returncode == 2 and "line 2 of stdin has no tokens" in r.stderr, r.stderr


def test_vocabulary_larger_than_embedding_is_refused(files, tmp_path, call):
    Vocabulary(WORDS + [f"w{i}" for i in range(50)]).save(tmp_path / "big.json")
    r = call("explain", "i love it", "--model", str(files / "tokens.keras"), "--vocab", str(tmp_path / "big.json"))
    assert r.returncode == 2 and "do not belong together" in r.stderr


def test_truncated_model_file(files, tmp_path, call):
    data = (files / "vectors.h5").read_bytes()
    (tmp_path / "cut.h5").write_bytes(data[: len(data) // 3])
    r = call("explain", "x", "--model", str(tmp_path / "cut.h5"), "--vocab", str(files / "vocab.json"))
    assert r.returncode != 0 and "Traceback" not in r.stderr and "cut.h5" in r.stderr


def test_debug_shows_traceback(files, call):
    with pytest.raises(Exception, match="missing.h5"):
        call("explain", "x", "--model", str(files / "missing.h5"), "--vocab", str(files / "vocab.json"), "--debug")


# ----------------------------------------------------------------------------- fast, helpful command line

GUARD = """
import sys
class NoTensorFlow:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("tensorflow", "keras"):
            raise ImportError("the CLI imported " + name + " before checking its arguments")
sys.meta_path.insert(0, NoTensorFlow())
from keras_lrp.cli import main
codes = [main(argv) for argv in ARGVS]
assert "tensorflow" not in sys.modules and "keras" not in sys.modules, sorted(sys.modules)
print("CODES", codes)
"""


def test_argument_errors_are_answered_before_tensorflow(files, tmp_path):
    d = str(files)
    argvs = [["explain", "--eps", "-1", "x"], ["explain", "--batch-size", "0", "x"], ["explain", "--rule", "x", "x"],
             ["explain", ""], ["explain", "x", "--json", d], ["explain", "x", "--json", "/proc/version"],
             ["explain", "x", "--model", d + "/tokens.keras", "--vocab", d + "/nothere.json"],
             ["explain", "--npy", d + "/x.npy"], ["evaluate", "--methods", "lrp,nope"],
             ["evaluate", "--max-sentences", "0"], ["evaluate", "--data", d + "/missing.txt"],
             ["explain", "x", "--steps", "4"], ["explain", "x", "--method", "ig", "--baseline", "y"],
             ["--version"], ["--help"], ["explain", "--help"], ["evaluate", "--help"], []]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    r = subprocess.run([sys.executable, "-c", f"ARGVS = {argvs!r}" + GUARD], capture_output=True, text=True,
                       env=env, timeout=120, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    codes = eval(r.stdout.split("CODES")[1])
    assert codes == [2, 2, 2, 2, 2, 2, 1, 2, 2, 2, 2, 2, 2, 0, 0, 0, 0, 2], (codes, r.stderr)
    assert "/proc/version" in r.stderr and "argument --eps: must be >= 0" in r.stderr
    assert not list(tmp_path.iterdir())                       # nothing written anywhere


def test_usage_error_in_a_new_process_is_fast(tmp_path):
    import time

    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "keras_lrp.cli", "explain", "--eps", "-1", "x"], capture_output=True,
                       text=True, timeout=60, cwd=tmp_path, env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    seconds = time.perf_counter() - t0
    assert r.returncode == 2 and "--eps" in r.stderr
    assert seconds < 8, f"{seconds:.1f} s: TensorFlow (~10 s) must not be imported for a usage error"


def test_version_and_help(capsys):
    import keras_lrp

    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"keras-lrp {keras_lrp.__version__}"
    assert cli.main(["--help"]) == 0
    text = capsys.readouterr().out
    assert "examples:" in text and "keras-lrp explain" in text and "130 interrupted" in text
    assert cli.main(["explain", "--help"]) == 0
    text = capsys.readouterr().out
    assert "tokenizer.to_json()" in text and "word_index" in text and "exit codes" in text


def test_failed_run_leaves_no_file(files, tmp_path, call):
    (tmp_path / "old.html").write_text("keep me")
    r = call("explain", "i love it", "--model", str(files / "tokens.keras"), "--vocab", str(files / "vocab.json"),
             "--json", str(tmp_path / "o.jsonl"), "--html", str(tmp_path / "old.html"), "--png", str(tmp_path / "p.png"),
             "--target", "9")       # fails after the model is loaded
    assert r.returncode == 2 and "out of range" in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.html"]        # no partial files, no temporaries
    assert (tmp_path / "old.html").read_text() == "keep me"


def test_numeric_outputs_named_as_given(files, tmp_path, call):
    r = call("explain", "--model", str(files / "series.keras"), "--npy", str(files / "x.npy"), "--out",
             str(tmp_path / "relevance.bin"))
    assert r.returncode == 0, r.stderr
    assert np.load(tmp_path / "relevance.bin").shape == (2, 5, 3)
    assert f"to {tmp_path / 'relevance.bin'}" in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["relevance.bin"]


def _keras_tokenizer(texts, **kwargs):
    text_module = pytest.importorskip("tf_keras.preprocessing.text")
    tokenizer = text_module.Tokenizer(**kwargs)
    tokenizer.fit_on_texts(texts)
    return tokenizer


@pytest.mark.parametrize("oov_token", [None, "<OOV>"])
def test_vocab_from_a_keras_tokenizer_json(tmp_path, call, oov_token):
    texts = ["I hate the movie!", "the plot is interesting, though.", "Loved it; boring? never"]
    tok = _keras_tokenizer(texts, oov_token=oov_token)
    (tmp_path / "tok.json").write_text(tok.to_json())
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((None,), dtype="int32"),
                              keras.layers.Embedding(len(tok.word_index) + 1, 4, mask_zero=True),
                              keras.layers.LSTM(3), keras.layers.Dense(2)])
    model.save(tmp_path / "m.keras")
    sentence = "The PLOT, is zzz-unknown interesting!"
    out = tmp_path / "o.jsonl"
    r = call("explain", sentence, "--model", str(tmp_path / "m.keras"), "--vocab", str(tmp_path / "tok.json"),
             "--json", str(out))
    assert r.returncode == 0, r.stderr
    rec = json.loads(out.read_text())
    # split as Keras splits; unknown words get the oov_token's id, or are left out as Keras leaves them out
    if oov_token is None:
        assert rec["tokens"] == ["the", "plot", "is", "interesting"]
        assert rec["oov_tokens"] == [] and rec["dropped_tokens"] == ["zzz", "unknown"]
        assert "left out" in r.stdout and "zzz, unknown" in r.stdout
    else:
        assert rec["tokens"] == ["the", "plot", "is", "zzz", "unknown", "interesting"]
        assert rec["oov_tokens"] == ["zzz", "unknown"] and rec["dropped_tokens"] == []
    # the scores are the model's on Keras' own encoding
    ids = np.array(tok.texts_to_sequences([sentence]))
    np.testing.assert_allclose(list(rec["scores"].values()), np.asarray(model(ids))[0], rtol=1e-5, atol=1e-6)
    # a plain word_index JSON gives the same tokens
    (tmp_path / "wi.json").write_text(json.dumps(tok.word_index))
    r = call("explain", sentence, "--model", str(tmp_path / "m.keras"), "--vocab", str(tmp_path / "wi.json"),
             "--json", str(out))
    assert r.returncode == 0, r.stderr
    assert json.loads(out.read_text())["tokens"] == rec["tokens"]


def test_vocab_file_of_no_known_format(tmp_path, files, call):
    (tmp_path / "v.json").write_text(json.dumps({"words": ["a", "b"]}))
    r = call("explain", "x", "--model", str(files / "tokens.keras"), "--vocab", str(tmp_path / "v.json"))
    assert r.returncode == 1 and "Keras Tokenizer JSON" in r.stderr and "v.json" in r.stderr


def test_baseline_options_reach_the_explainer_and_are_recorded(files, call, tmp_path):
    """--steps / --window / --samples / --seed / --baseline give what explain_text gives with the same
    method_options (--baseline unk: the Embedding's row of the unknown id 1); the JSON lines record
    every option of the method, defaults included."""
    import keras_lrp

    model = keras_lrp.load_model(files / "tokens.keras")
    unk = model.layers[0].embeddings.numpy()[1]
    np.save(tmp_path / "base.npy", np.full(4, 0.25))
    sentence = "i love the plot"
    cases = [(["--method", "shapley", "--samples", "3", "--seed", "2", "--baseline", "unk"],
              {"samples": 3, "seed": 2, "baseline": unk}, {"samples": 3, "seed": 2, "baseline": "unk"}),
             (["--method", "ig", "--steps", "4", "--baseline", "0.5"],
              {"steps": 4, "baseline": 0.5}, {"steps": 4, "baseline": "0.5"}),
             (["--method", "occlusion", "--window", "2", "--baseline", str(tmp_path / "base.npy")],
              {"window": 2, "baseline": np.full(4, 0.25)}, {"window": 2, "baseline": str(tmp_path / "base.npy")}),
             (["--method", "shapley"], None, {"samples": 32, "seed": 0, "baseline": "zero"})]
    for argv, options, recorded in cases:
        r = call("explain", sentence, "--model", str(files / "tokens.keras"), "--vocab", str(files / "vocab.json"),
                 "--float64", "--json", str(tmp_path / "out.jsonl"), *argv)
        assert r.returncode == 0, (argv, r.stderr)
        line = json.loads((tmp_path / "out.jsonl").read_text())
        assert line["method_options"] == recorded
        e = keras_lrp.explain_text(model, [sentence], vocab=Vocabulary.load(files / "vocab.json"), method=argv[1],
                                   method_options=options, dtype="float64")
        np.testing.assert_allclose(line["relevance"], e.word_relevance[0], rtol=1e-12, atol=1e-15)
    # the default options differ from those given: the flags are not ignored
    assert not np.allclose(json.loads((tmp_path / "out.jsonl").read_text())["relevance"],
                           keras_lrp.explain_text(model, [sentence], vocab=Vocabulary.load(files / "vocab.json"),
                                                  method="shapley", dtype="float64", method_options={
                                                      "samples": 3, "seed": 2, "baseline": unk}).word_relevance[0])
    r = call("explain", sentence, "--model", str(files / "tokens.keras"), "--vocab", str(files / "vocab.json"),
             "--json", str(tmp_path / "lrp.jsonl"))
    assert r.returncode == 0 and json.loads((tmp_path / "lrp.jsonl").read_text())["method_options"] is None


def test_baseline_options_with_npy(files, call, tmp_path):
    import keras_lrp

    x = np.load(files / "x.npy")
    r = call("explain", "--model", str(files / "series.keras"), "--npy", str(files / "x.npy"), "--out",
             str(tmp_path / "r.npy"), "--method", "occlusion", "--window", "2", "--baseline", "-1", "--float64")
    assert r.returncode == 0, r.stderr
    e = keras_lrp.explain(keras_lrp.load_model(files / "series.keras"), x, method="occlusion", dtype="float64",
                          method_options={"window": 2, "baseline": -1.0})
    np.testing.assert_allclose(np.load(tmp_path / "r.npy"), e.relevance, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("extra,message", [
    (["--steps", "3"], "--steps is an option of --method ig, not of --method lrp"),
    (["--method", "gi", "--window", "2"], "--window is an option of --method occlusion, not of --method gi"),
    (["--method", "ig", "--samples", "all"], "--samples is an option of --method shapley, not of --method ig"),
    (["--method", "occlusion", "--seed", "1"], "--seed is an option of --method shapley"),
    (["--method", "sa", "--baseline", "0"], "--baseline is an option of --method ig / --method occlusion / "
                                            "--method shapley, not of --method sa"),
    (["--method", "ig", "--baseline", "nothing"], "argument --baseline: expected zero, unk, a number or a .npy"),
    (["--method", "ig", "--baseline", "nan"], "argument --baseline: must be finite"),
    (["--method", "shapley", "--samples", "0"], "argument --samples: must be >= 1 (or 'all')"),
    (["--method", "shapley", "--samples", "some"], "argument --samples: expected an integer or 'all'"),
    (["--method", "ig", "--steps", "0"], "argument --steps: must be >= 1"),
    (["--method", "ig", "--baseline", "OBJECTS"], "holds Python objects"),
    (["--method", "ig", "--baseline", "MATRIX3D"], "expected numbers of shape (features,) or (time, features)"),
    (["--method", "ig", "--baseline", "WIDE"], "does not broadcast"),
])
def test_baseline_option_errors(files, call, tmp_path, extra, message):
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    np.save(tmp_path / "matrix3d.npy", np.zeros((1, 2, 4)))
    np.save(tmp_path / "wide.npy", np.zeros(5))
    extra = [str(tmp_path / (e.lower() + ".npy")) if e in ("OBJECTS", "MATRIX3D", "WIDE") else e for e in extra]
    r = call("explain", "i love it", "--model", str(files / "tokens.keras"), "--vocab", str(files / "vocab.json"),
             *extra)
    assert r.returncode in (1, 2) and message in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_baseline_unk_needs_text_and_an_unknown_word(files, call, tmp_path):
    r = call("explain", "--model", str(files / "series.keras"), "--npy", str(files / "x.npy"), "--method", "ig",
             "--baseline", "unk")
    assert r.returncode == 2 and "--baseline unk is the unknown word's embedding, for text" in r.stderr
    (tmp_path / "tok.json").write_text(json.dumps({"i": 1, "love": 2, "it": 3}))    # no <OOV> entry
    r = call("explain", "i love it", "--model", str(files / "tokens.keras"), "--vocab", str(tmp_path / "tok.json"),
             "--method", "occlusion", "--baseline", "unk")
    assert r.returncode == 2 and "this vocabulary has no unknown-word token" in r.stderr, r.stderr


def test_the_flags_are_the_options_of_the_baselines():
    """The CLI's flag -> methods table (kept free of Keras, for the early checks) is keras_lrp.baselines.OPTIONS."""
    from keras_lrp.baselines import OPTIONS
    from keras_lrp.cli.method_options import TAKEN_BY

    names = {name for options in OPTIONS.values() for name in options}
    assert TAKEN_BY == {name: tuple(m for m in OPTIONS if name in OPTIONS[m]) for name in sorted(names)}
