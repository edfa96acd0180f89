"""Hostile inputs, second pass: the command line, text and output files.

Outputs are created fresh (a symlink at the target is replaced, never followed) with one mode;
terminal output escapes control characters; HTML isolates each token's direction; saved
explanations are checked before allocating; over-long lines are refused after tokenizing about
--max-length tokens; the CLI streams its input; messages name the file and the problem."""
import io
import json
import os
import subprocess
import sys
import tracemalloc

import keras
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import keras_lrp
from keras_lrp import cli
from keras_lrp.explanation import Explanation
from keras_lrp.text import Tokenizer, Vocabulary

WORDS = "i love hate the movie plot is boring good bad".split()
UMASK = 0o027          # set for the tests that check file modes


class Result:
    def __init__(self, code, out, err):
        self.returncode, self.stdout, self.stderr = code, out, err


@pytest.fixture
def call(capsys, monkeypatch):
    """``keras-lrp`` main() in this process; ``stdin`` as text or bytes."""
    def _call(*args, stdin=None):
        if stdin is not None:
            raw = stdin if isinstance(stdin, bytes) else stdin.encode("utf-8")
            monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(raw), encoding="utf-8",
                                                               errors="surrogateescape"))
        code = cli.main([str(a) for a in args])
        out, err = capsys.readouterr()
        return Result(code, out, err)
    return _call


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("hostile_cli")
    vocab = Vocabulary(WORDS)
    vocab.save(d / "vocab.json")
    keras.utils.set_random_seed(0)
    tokens = keras.Sequential([keras.Input((None,), dtype="int32"), keras.layers.Embedding(len(vocab), 4),
                               keras.layers.LSTM(3), keras.layers.Dense(2)])
    tokens.save(d / "tokens.keras")
    series = keras.Sequential([keras.Input((None, 3)), keras.layers.GRU(3), keras.layers.Dense(2)])
    series.save(d / "series.keras")
    np.save(d / "x.npy", np.random.default_rng(1).standard_normal((2, 5, 3)).astype("float32"))
    return d


def model_args(files):
    return ["--model", files / "tokens.keras", "--vocab", files / "vocab.json"]


@pytest.fixture
def umask():
    old = os.umask(UMASK)
    yield 0o666 & ~UMASK
    os.umask(old)


def plant(path, victim):
    """A symlink at ``path`` to ``victim`` (a file holding "secret")."""
    victim.write_text("secret")
    os.symlink(victim, path)


def assert_fresh(path, victim, mode):
    assert victim.read_text() == "secret", f"{victim} was written through the symlink at {path}"
    assert not os.path.islink(path) and os.path.isfile(path)
    assert os.stat(path).st_mode & 0o777 == mode, oct(os.stat(path).st_mode)


# ---------------------------------------------------------------------------------------- 1. files

def test_cli_text_outputs_replace_symlinks_with_the_umask_mode(files, tmp_path, call, umask):
    outs = {"json": tmp_path / "o.jsonl", "html": tmp_path / "o.html", "png": tmp_path / "o.png"}
    for name, path in outs.items():
        plant(path, tmp_path / f"victim_{name}")
    r = call("explain", "i love the movie", *model_args(files), "--json", outs["json"], "--html", outs["html"],
             "--png", outs["png"])
    assert r.returncode == 0, r.stderr
    for name, path in outs.items():
        assert_fresh(path, tmp_path / f"victim_{name}", umask)
    assert json.loads(outs["json"].read_text())["tokens"] == ["i", "love", "the", "movie"]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []   # no temporaries left


def test_cli_numeric_outputs_replace_symlinks(files, tmp_path, call, umask):
    out, png = tmp_path / "r.npy", tmp_path / "r.png"
    plant(out, tmp_path / "victim_out")
    plant(png, tmp_path / "victim_png")
    r = call("explain", "--model", files / "series.keras", "--npy", files / "x.npy", "--out", out, "--png", png)
    assert r.returncode == 0, r.stderr
    assert_fresh(out, tmp_path / "victim_out", umask)
    assert_fresh(png, tmp_path / "victim_png", umask)
    assert np.load(out).shape == (2, 5, 3)


@pytest.fixture(scope="module")
def explanation():
    e = keras_lrp.Explanation(relevance=np.ones((2, 3, 2)), scores=np.array([[1.0, 0.0], [0.0, 1.0]]),
                              target=np.array([0, 1]), rest=np.zeros(2), tokens=[["a", "b"], ["c", "d", "e"]],
                              class_names=["neg", "pos"])
    return e


@pytest.mark.parametrize("name", ["e.json", "e.html", "e.png"])
def test_explanation_save_replaces_a_symlink(explanation, tmp_path, umask, name):
    plant(tmp_path / name, tmp_path / "victim")
    explanation.save(tmp_path / name)
    assert_fresh(tmp_path / name, tmp_path / "victim", umask)
    if name.endswith(".json"):
        assert Explanation.load(tmp_path / name).tokens == explanation.tokens


def test_library_writers_replace_symlinks(tmp_path, umask):
    from keras_lrp.visualize import html_page, plot_word_heatmap, save_png

    targets = {"page.html": lambda p: html_page([(["a"], [1.0])], path=p),
               "fig.png": lambda p: save_png(plot_word_heatmap(["a"], [1.0]), p),
               "vocab.json": lambda p: Vocabulary(["a"]).save(p)}
    for name, write in targets.items():
        plant(tmp_path / name, tmp_path / f"victim_{name}")
        write(tmp_path / name)
        assert_fresh(tmp_path / name, tmp_path / f"victim_{name}", umask)


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    from keras_lrp.safe_io import atomic_open

    (tmp_path / "f.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_open(tmp_path / "f.txt") as f:
            f.write("half")
            raise RuntimeError("disk full")
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"] and (tmp_path / "f.txt").read_text() == "old"


# ---------------------------------------------------------------------------------------- 2. terminal

HOSTILE = "good \x1b]0;PWNED\x07 bad \x9b31m \x7f movie \u202eevil"


def test_control_characters_never_reach_the_terminal(files, call):
    r = call("explain", HOSTILE, *model_args(files), "--no-color")
    assert r.returncode == 0, r.stderr
    for c in ("\x1b", "\x07", "\x9b", "\x7f", "\u202e"):
        assert c not in r.stdout and c not in r.stderr, repr(c)
    assert "\\x1b" in r.stdout and "pwned\\x07" in r.stdout and "\\u202eevil" in r.stdout   # shown, escaped


def test_warnings_and_errors_escape_and_cut_the_users_text(files, call):
    word = "\x1b[2J" + "z" * 200_000
    r = call("explain", word, *model_args(files), "--json", os.devnull)
    assert r.returncode == 0, r.stderr
    assert "warning: every word" in r.stderr and "\x1b" not in r.stderr
    assert len(r.stderr) < 2000, len(r.stderr)           # was the whole text, twice
    r = call("explain", "i love it", *model_args(files), "--target", "\x1b]0;x\x07")
    assert r.returncode == 2 and "unknown class" in r.stderr and "\x1b" not in r.stderr


def test_ansi_heatmap_escapes_words():
    from keras_lrp.visualize import ansi_heatmap

    for color in (False, True):
        line = ansi_heatmap(["ok", "\x1b]0;x\x07", "\x9b1m"], [1.0, -1.0, 0.5], color=color)
        assert "\x07" not in line and "\x9b" not in line and "\\x1b]0;x\\x07" in line
        assert line.count("\x1b") == (9 if color else 0)     # only our own colour codes


# ---------------------------------------------------------------------------------------- 3. bidi

def _bidi_outside_isolates(page: str):
    """Bidi control characters of ``page`` that are not inside a <bdi> element."""
    import re

    outside = re.sub(r"<bdi>.*?</bdi>", "", page, flags=re.S)
    outside = re.sub(r'title="[^"]*"', "", outside)          # tooltips are drawn on their own
    return [c for c in outside if c in "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"]


def test_each_html_token_is_bidi_isolated():
    from keras_lrp.visualize import html_heatmap, html_page

    words = ["the", "\u202eevil", "film", "\u2067", "is", "good"]
    for page in (html_heatmap(words, [1.0] * 6), html_page([(words, [0.5] * 6)], titles=["\u202etitle"])):
        assert _bidi_outside_isolates(page) == [], page
        assert page.count("<bdi>") >= 6


def test_cli_html_isolates_tokens_and_titles(files, tmp_path, call):
    out = tmp_path / "p.html"
    r = call("explain", *model_args(files), "--html", out, stdin="i \u202elove the movie\nbad plot\n")
    assert r.returncode == 0, r.stderr
    page = out.read_text()
    assert _bidi_outside_isolates(page) == [] and "\u202elove" in page


# ---------------------------------------------------------------------------------------- 4. load

def _saved(tmp_path, **changes):
    data = {"format": "keras_lrp.explanation", "version": 1, "dtype": "float64", "method": "lrp",
            "relevance": [[[0.1], [0.2]]], "multi_input": False, "time": [2], "tokens": [["a", "b"]],
            "oov": None, "texts": None, "lengths": [2], "scores": [[0.5, -0.5]], "target": [0], "rest": [0.0],
            "timestep": None, "class_names": None, "output_activation": None, "convergence_delta": [0.0]}
    data.update(changes)
    path = tmp_path / "e.json"
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize("changes,message", [
    ({"time": [20_000_000]}, "max_bytes"),          # 160 MB from a 0.4 KB file (was allocated)
    ({"time": [10**12]}, "max_bytes"),              # was MemoryError (8 TB)
    ({"time": [2.5]}, "time"),
    ({"time": [1]}, "longer than its"),             # a row of 2 steps
    ({"target": [-1]}, "out of range"),             # was read as the last class
    ({"target": [99]}, "out of range"),             # was an IndexError later
    ({"target": [True]}, "target"),
    ({"dtype": "V100000000"}, "dtype"),
    ({"scores": "x"}, "scores"),
    ({"relevance": [[["x"], [0.2]]]}, "relevance"),
    ({"tokens": [["a", 3]]}, "tokens"),
    ({"lengths": [3]}, "lengths"),
    ({"rest": [0.0, 1.0]}, "rest"),
    ({"timestep": [-2]}, "timestep"),
])
def test_load_refuses_bad_fields_with_a_value_error(tmp_path, changes, message):
    path = _saved(tmp_path, **changes)
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=message) as info:
            Explanation.load(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert str(path) in str(info.value) and peak < 16 * 2**20, peak


def test_load_refuses_deep_nesting(tmp_path):
    path = tmp_path / "deep.json"
    path.write_text('{"format": "keras_lrp.explanation", "version": 1, "x": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(ValueError, match="nested"):
        Explanation.load(path)
    nested = 0
    for _ in range(20):                      # deeper than any saved explanation, far from recursion limits
        nested = [nested]
    path.write_text(json.dumps({"format": "keras_lrp.explanation", "version": 1, "x": nested}))
    with pytest.raises(ValueError, match="nested"):
        Explanation.load(path)


def test_load_max_bytes_admits_a_trusted_file(tmp_path):
    e = Explanation.load(_saved(tmp_path))
    assert e.relevance.shape == (1, 2, 1) and e.tokens == [["a", "b"]]
    path = _saved(tmp_path, time=[5_000_000], lengths=None)
    with pytest.raises(ValueError, match="max_bytes"):
        Explanation.load(path, max_bytes=2**20)
    assert Explanation.load(path, max_bytes=2**27).relevance.shape == (1, 5_000_000, 1)


# ---------------------------------------------------------------------------------------- 5. long lines

_PIECES = list("aAnNtTsSmdlvecoi'`\".,;:?!-*()[]{}$#%0159/ ") + [
    "n't", "'s", "'re", "...", "--", "mr.", "u.s.", "cannot", "ol'", "'70s", "'cause", "etc.", "j.", "10,000", "\n"]


@settings(max_examples=400, deadline=None, derandomize=True)
@given(parts=st.lists(st.sampled_from(_PIECES), min_size=1, max_size=40), repeat=st.integers(1, 30),
       slack=st.integers(-5, 3))
def test_max_tokens_gives_the_tokens_or_refuses_exactly_when_there_are_more(parts, repeat, slack):
    from keras_lrp.text import KerasStyleTokenizer, TooManyTokensError

    text = "".join(parts) * repeat
    for tokenizer in (Tokenizer(), KerasStyleTokenizer()):
        full = tokenizer.tokenize(text)
        limit = max(0, len(full) + slack)
        if len(full) <= limit:
            assert tokenizer.tokenize(text, max_tokens=limit) == full
        else:
            with pytest.raises(TooManyTokensError):
                tokenizer.tokenize(text, max_tokens=limit)


def _keras():
    from keras_lrp.text import KerasStyleTokenizer
    return KerasStyleTokenizer()


@pytest.mark.parametrize("make,line", [
    (Tokenizer, "x" + ".)" * 1_000_000), (Tokenizer, "x" + ")" * 2_000_000), (Tokenizer, "n't" * 700_000),
    (Tokenizer, "(x)'s" * 400_000), (Tokenizer, "a " * 1_000_000), (Tokenizer, "\u0633 " * 1_000_000),
    (_keras, "a " * 1_000_000), (_keras, "x," * 1_000_000), (_keras, "\u0633 " * 1_000_000),
], ids=lambda v: f"{v[:6]!r}x{len(v)}" if isinstance(v, str) else v.__name__)
def test_an_over_long_line_is_refused_after_about_max_tokens(make, line):
    from keras_lrp.text import TooManyTokensError

    tokenizer = make()
    tracemalloc.start()
    try:
        with pytest.raises(TooManyTokensError):
            tokenizer.tokenize(line, max_tokens=1_000)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # a few copies of the text (str.lower() of non-ASCII text takes 6x its size); the million
    # tokens would take 8-16 MB of lists, and 76 MB more as strings for the Arabic ones
    assert peak < (4 if line.isascii() else 10) * sys.getsizeof(line), peak


def test_cli_max_length_refuses_naming_the_option(files, call):
    r = call("explain", *model_args(files), "--max-length", "5", stdin="i love it\ni love the movie the plot\n")
    assert r.returncode == 1
    assert "line 2 of stdin has more than 5 tokens (--max-length 5)" in r.stderr, r.stderr
    r = call("explain", "i love the movie", *model_args(files), "--max-length", "4", "--json", os.devnull)
    assert r.returncode == 0, r.stderr
    r = call("explain", "--model", files / "series.keras", "--npy", files / "x.npy", "--max-length", "4")
    assert r.returncode == 1 and "--max-length 4" in r.stderr


def test_explain_text_max_length_names_its_argument(files):
    model = keras.models.load_model(files / "tokens.keras")
    vocab = Vocabulary.load(files / "vocab.json")
    for tokenizer in (None, str.split):          # a callable without max_tokens: counted after
        with pytest.raises(ValueError, match=r"more than max_length=3 tokens.*explain_text"):
            keras_lrp.explain_text(model, ["i love", "i love the movie"], tokenizer=tokenizer, vocab=vocab,
                                   max_length=3)
        e = keras_lrp.explain_text(model, ["i love the"], tokenizer=tokenizer, vocab=vocab, max_length=3)
        assert e.tokens == [["i", "love", "the"]]


# ---------------------------------------------------------------------------------------- 6. streaming

def test_cli_explains_while_reading(files, tmp_path, call, monkeypatch):
    """Chunk 1 is explained and written before chunk 3 is read: memory stays flat in the lines."""
    calls = {"explain": 0}
    read_when_explained = []
    from keras_lrp import text_explainer

    real = text_explainer.explain_encoded

    def counting(*args, **kwargs):
        calls["explain"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(text_explainer, "explain_encoded", counting)
    monkeypatch.setattr(cli, "_CHUNK", 4)           # chunks of max(4 * batch_size, 4) = 4 sentences

    class Stdin:
        def isatty(self):
            return False

        @property
        def buffer(self):
            for i in range(20):
                read_when_explained.append((i, calls["explain"]))
                yield f"{WORDS[i % 10]} {WORDS[(i + 3) % 10]}\n".encode()

    monkeypatch.setattr(sys, "stdin", Stdin())
    out = tmp_path / "o.jsonl"
    code = cli.main(["explain", *map(str, model_args(files)), "--json", str(out), "--batch-size", "1"])
    assert code == 0
    assert dict(read_when_explained)[12] >= 2          # lines 9..12 (chunk 3) read after two chunks explained
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["text"] for r in recs] == [f"{WORDS[i % 10]} {WORDS[(i + 3) % 10]}" for i in range(20)]


def test_progress_shows_lines_per_second(files, tmp_path, call):
    (tmp_path / "in.txt").write_text("".join(f"{w} movie\n" for w in WORDS))
    r = call("explain", "--input", tmp_path / "in.txt", *model_args(files), "--json", tmp_path / "o.jsonl")
    assert r.returncode == 0 and "10/10 lines" in r.stderr and "lines/s" in r.stderr, r.stderr


def test_streamed_html_page_equals_html_page(tmp_path):
    from keras_lrp.visualize import html_page, write_html_page

    sentences = [(["a", "b"], [0.5, -1.0]), (["c"], [2.0]), (["d", "e", "f"], [0.0, 0.1, -0.2])]
    titles = ["one", "two", "three"]
    with open(tmp_path / "s.html", "w", encoding="utf-8") as f:
        assert write_html_page(f, iter(sentences), 2.0, titles=iter(titles)) == 3
    assert (tmp_path / "s.html").read_text() == html_page(sentences, scale="shared", titles=titles)


def test_shared_scale_of_all_zero_relevance(tmp_path):
    from keras_lrp.visualize import html_page

    assert "<bdi>a</bdi>" in html_page([(["a"], [0.0])], scale="shared")    # was "scale must be positive"


# ---------------------------------------------------------------------------------------- 7. Keras filters

def test_keras_tokenizer_builds_its_filter_table_once():
    from keras_lrp.text import KerasStyleTokenizer

    class CountingFilters(str):
        iterations = 0

        def __iter__(self):
            CountingFilters.iterations += 1
            return super().__iter__()

    tokenizer = KerasStyleTokenizer(filters=CountingFilters("!,.?" * 1000))
    built = CountingFilters.iterations
    for _ in range(20):
        assert tokenizer.tokenize("I love it, really!") == ["i", "love", "it", "really"]
    assert CountingFilters.iterations == built


# ---------------------------------------------------------------------------------------- 8. messages

def _keras_json(path, **config):
    full = {"num_words": None, "filters": "!,.", "lower": True, "split": " ", "char_level": False,
            "oov_token": None, "word_index": json.dumps({w: i + 1 for i, w in enumerate(WORDS)})}
    full.update(config)
    path.write_text(json.dumps({"class_name": "Tokenizer", "config": full}))
    return str(path)


GUARD = """
import sys
class NoTensorFlow:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("tensorflow", "keras"):
            raise ImportError("the CLI imported " + name + " before checking its vocabulary")
sys.meta_path.insert(0, NoTensorFlow())
from keras_lrp.cli import main
print("CODES", [main(argv) for argv in ARGVS])
"""


def test_vocab_errors_name_the_file_before_tensorflow(files, tmp_path):
    (tmp_path / "deep.json").write_text("[" * 1_000_000 + "]" * 1_000_000)
    (tmp_path / "huge.json").write_text('{"good": 10' + "0" * 30 + "}")
    bad = {"deep": str(tmp_path / "deep.json"), "huge": str(tmp_path / "huge.json"),
           "filters": _keras_json(tmp_path / "filters.json", filters=5),
           "split": _keras_json(tmp_path / "split.json", split=""),
           "index": _keras_json(tmp_path / "index.json", word_index=json.dumps({"a": -3}))}
    argvs = [["explain", "x", "--model", str(files / "tokens.keras"), "--vocab", path] for path in bad.values()]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    r = subprocess.run([sys.executable, "-c", f"ARGVS = {argvs!r}" + GUARD], capture_output=True, text=True,
                       env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert eval(r.stdout.split("CODES")[1]) == [1] * len(bad), r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == len(bad) and all(line.startswith("keras-lrp: error: --vocab ") for line in lines), lines
    for line, path, expected in zip(lines, bad.values(), ["nested too deeply", "ids must be integers",
                                                           "config.filters is 5", "config.split is empty",
                                                           "maps 'a' to -3"]):
        assert path in line and expected in line, line


def test_invalid_utf8_on_stdin_is_a_usage_error(files, tmp_path, call):
    for output in ("--json", "--html", "--png"):
        out = tmp_path / f"o{output[2:]}"
        r = call("explain", *model_args(files), output, out, stdin=b"i love it\nbad \xff\xfe plot\n")
        assert r.returncode == 2, r.stderr
        assert "stdin, line 2: not UTF-8" in r.stderr and not out.exists()


def test_non_ascii_digit_target_is_a_usage_error(files, call):
    r = call("explain", "i love it", *model_args(files), "--target", "\u00b2")
    assert r.returncode == 2 and "unknown class '\u00b2'" in r.stderr, r.stderr


def test_explain_text_float_target_says_what_target_may_be(files):
    model = keras.models.load_model(files / "tokens.keras")
    with pytest.raises(TypeError, match="target must be"):
        keras_lrp.explain_text(model, ["i love it"], vocab=Vocabulary.load(files / "vocab.json"), target=1.0)


def test_a_tensorflow_error_prints_its_root_cause(files, tmp_path, call, monkeypatch):
    (tmp_path / "traced.py").write_text(
        "import tensorflow as tf\n\n"
        "@tf.function\n"
        "def fail(x):\n"
        "    if x > 0:\n"
        "        raise ValueError('the real cause: shapes (3,) and (4,)')\n"
        "    return x\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import traced
    import tensorflow as tf

    from keras_lrp import text_explainer

    monkeypatch.setattr(text_explainer, "explain_encoded", lambda *a, **k: traced.fail(tf.constant(1.0)))
    r = call("explain", "i love it", *model_args(files))
    assert r.returncode == 1
    assert "the real cause: shapes (3,) and (4,)" in r.stderr and "in user code" not in r.stderr, r.stderr
