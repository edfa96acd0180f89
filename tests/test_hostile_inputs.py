"""Hostile inputs: text paths linear and iterative, long sequences refused before allocating,
integer options checked exactly (no int32 wrap-around), finiteness checked in the compute dtype,
numpy scalars accepted for eps / bias_factor."""
import json
import os
import resource
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np
import pytest
import re
from typing import List
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import keras_lrp
import keras_lrp.explainer as kex
from keras_lrp import Epsilon
from keras_lrp.text import Tokenizer, Vocabulary, VocabularyError, tokenize

CPU_SECONDS = 5.0   # CPU time (not wall time: the test machine is shared)


def _cpu(fn, *args):
    start = time.process_time()
    result = fn(*args)
    return result, time.process_time() - start


# ------------------------------------------------------------------------------------------
# Reference: the previous, recursive tokenizer (quadratic on long chunks), kept verbatim to
# check on short chunks that the linear rewrite gives exactly the same tokens.
# ------------------------------------------------------------------------------------------
# Contraction suffixes split off a word, as in the treebank ("do n't", "plot 's", "they 're").
_REF_CONTRACTION_RE = re.compile(r"^(?P<stem>.*[^'])(?P<suffix>n't|'s|'re|'ll|'ve|'d|'m)$", re.IGNORECASE)
# Chunks that start with an apostrophe but are words, not an opening quote.
_REF_APOSTROPHE_WORD_RE = re.compile(
    r"^'(\d\d|\d0s|s|re|ll|ve|d|m|em|n|n'|til|cause|tis|twas|bout|round|nuff)$", re.IGNORECASE)
# Words that end with an apostrophe that is part of the word, not a closing quote.
_REF_TRAILING_APOSTROPHE_WORDS = {"ol'", "'n'", "o'"}
# Abbreviations that keep their period (single letters and dotted forms like "u.s." keep it too).
_REF_ABBREVIATIONS = {
    "mr", "mrs", "ms", "dr", "st", "jr", "sr", "vs", "etc", "inc", "co", "corp", "ltd", "bros",
    "al", "prof", "gen", "lt", "col", "sgt", "capt", "rev", "mt", "ft", "jan", "feb", "mar", "apr",
    "jun", "jul", "aug", "sep", "sept", "oct", "nov", "dec", "wash", "pa", "calif", "vol", "approx",
}
# Leading punctuation peeled off a chunk, longest first.
_REF_LEADING_RE = re.compile(r"^(\.{2,}|--|\*+|[(\[{\"`$#\u00bf\u00a1])")
# Trailing punctuation peeled off a chunk (the period and the apostrophe are handled separately).
_REF_TRAILING_RE = re.compile(r"(\.{2,}|--|\*+|[?!]+|[)\]}\",;:%])$")
# Punctuation that splits a chunk in its middle; a comma or colon between two digits does not.
_REF_INNER_SPLIT_RE = re.compile(
    r"(\.{2,}|--|[()\[\]{}\"]|[?!]+|;|(?<!\d)[,:]|[,:](?!\d))")


def _ref_split_chunk(chunk: str) -> List[str]:
    """Tokens of one whitespace-free chunk (recursive on inner punctuation)."""
    if not chunk:
        return []
    head: List[str] = []
    tail: List[str] = []
    while chunk and not _ref_is_apostrophe_word(chunk):
        m = _REF_LEADING_RE.match(chunk)
        if m and m.end() < len(chunk):
            tok = m.group(0)
            head.append("'" if tok == "`" else ("..." if tok.startswith("..") else tok))
            chunk = chunk[m.end():]
            continue
        m = _REF_TRAILING_RE.search(chunk)
        if m and m.start() > 0:
            tok = m.group(0)
            tail.append("..." if tok.startswith("..") else tok)
            chunk = chunk[:m.start()]
            continue
        if len(chunk) > 1 and chunk.endswith(".") and not chunk.endswith(".."):
            stem = chunk[:-1]
            is_abbreviation = ("." in stem or (len(stem) == 1 and stem.isalpha())
                               or stem.lower() in _REF_ABBREVIATIONS)
            if not is_abbreviation:
                tail.append(".")
                chunk = stem
                continue
        if len(chunk) > 1 and chunk.startswith("'"):
            head.append("'")
            chunk = chunk[1:]
            continue
        if len(chunk) > 1 and chunk.endswith("'"):
            tail.append("'")
            chunk = chunk[:-1]
            continue
        break
    middle: List[str]
    if chunk == "`":
        middle = ["'"]
    elif re.fullmatch(r"\.{2,}", chunk):
        middle = ["..."]
    else:
        pieces = [p for p in _REF_INNER_SPLIT_RE.split(chunk) if p]
        if len(pieces) > 1:
            middle = [t for p in pieces for t in _ref_split_chunk(p)]
        else:
            middle = _ref_split_word(chunk)
            if len(middle) == 2 and middle[1] != "not":
                # contraction split off: its stem may end in punctuation of its own ("0.'s")
                middle = _ref_split_chunk(middle[0]) + [middle[1]]
    return head + middle + tail[::-1]


def _ref_is_apostrophe_word(chunk: str) -> bool:
    """True for words whose leading/trailing apostrophe belongs to them ("'s", "'70s", "ol'")."""
    return (_REF_APOSTROPHE_WORD_RE.match(chunk) is not None or chunk.lower() == "n't"
            or chunk.lower() in _REF_TRAILING_APOSTROPHE_WORDS)


def _ref_split_word(word: str) -> List[str]:
    """Split treebank contractions off a word without outer punctuation."""
    if word.lower() == "cannot":
        return [word[:3], word[3:]]
    m = _REF_CONTRACTION_RE.match(word)
    if m and not _ref_is_apostrophe_word(word):
        return [m.group("stem"), m.group("suffix")]
    return [word]




# ------------------------------------------------------------------------------------------
# Tokenizer: linear, iterative, same tokens
# ------------------------------------------------------------------------------------------
_PIECES = list("aAnNtTsSmdlvecoi'`\".,;:?!-*()[]{}$#%0159/") + [
    "n't", "'s", "'re", "...", "--", "mr.", "u.s.", "cannot", "Cannot", "\u017f", "ol'", "'70s",
    "'cause", "etc.", "j.", "10,000", "10:30"]


@settings(max_examples=400, deadline=None, derandomize=True)
@given(parts=st.lists(st.sampled_from(_PIECES), min_size=1, max_size=12))
def test_linear_tokenizer_gives_the_reference_tokens(parts):
    chunk = "".join(parts)
    assume("''" not in chunk and "``" not in chunk)   # the tokenizer maps those to '"' first
    for lowercase in (False, True):
        text = chunk.lower() if lowercase else chunk
        assert Tokenizer(lowercase=lowercase).tokenize(chunk) == _ref_split_chunk(text), chunk


@pytest.mark.parametrize("line", [
    "x" + ")" * 40_000,                    # was 73-92 s (quadratic peeling)
    "x" + ".)" * 50_000,
    "'" * 100_000 + "a.b.",
    "n't" * 100_000,                       # was RecursionError at 1000
    "(x)'s" * 40_000,
    "a" + "." * 200_000 + "b",
    "x" + "?!" * 100_000,
    "1," * 100_000 + "x",
], ids=lambda line: f"{line[:8]!r}x{len(line)}")
def test_hostile_lines_tokenize_in_linear_time(line):
    tokens, seconds = _cpu(tokenize, line)
    assert seconds < CPU_SECONDS, f"{seconds:.1f} s CPU for a {len(line):,}-character line"
    if ".." not in line and "''" not in line:   # nothing dropped or invented
        assert "".join(tokens) == line


def test_contractions_do_not_recurse():
    assert tokenize("n't" * 1000) == ["n't"] * 1000
    assert tokenize("x" + "'s" * 3000)[:3] == ["x", "'s", "'s"]


def test_one_megabyte_line_is_fast():
    prose = ("It's a well-made, often funny film (the best of 2002) -- don't miss it. " * 14_000)[:1_000_000]
    tokens, seconds = _cpu(tokenize, prose)
    assert len(tokens) > 250_000 and seconds < CPU_SECONDS, f"{seconds:.2f} s CPU"
    assert tokens[:8] == ["it", "'s", "a", "well-made", ",", "often", "funny", "film"]


def test_vocabulary_rejects_deep_json(tmp_path):
    path = tmp_path / "vocab.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(VocabularyError, match="vocab.json"):
        Vocabulary.load(path)


# ------------------------------------------------------------------------------------------
# Explainer: exact integers, finiteness in the compute dtype, long sequences
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((None, 3)), keras.layers.LSTM(3), keras.layers.Dense(2)])


@pytest.fixture(scope="module")
def tagger():
    keras.utils.set_random_seed(1)
    return keras.Sequential([keras.Input((None, 3)), keras.layers.LSTM(2, return_sequences=True),
                             keras.layers.TimeDistributed(keras.layers.Dense(2))])


X = np.random.default_rng(0).standard_normal((2, 4, 3))


@pytest.mark.parametrize("target", [2**32 + 1, -(2**32) + 2, np.uint64(2**63), np.int64(2**32),
                                    2**70, [2**32 + 1, 0], np.array([0, 2**33], np.int64),
                                    np.array([1, 2**64 - 1], np.uint64)])
def test_targets_never_wrap_around(model, target):
    with pytest.raises(ValueError, match="out of range"):
        keras_lrp.explain(model, X, target)


def test_valid_targets_of_any_integer_type(model):
    ref = keras_lrp.explain(model, X, 1).relevance
    for target in (np.uint8(1), np.int64(1), [1, 1], np.array([1, 1], np.uint64), (True and 1)):
        np.testing.assert_array_equal(keras_lrp.explain(model, X, target).relevance, ref)
    with pytest.raises(TypeError, match="target must be"):
        keras_lrp.explain(model, X, [1, "1"])
    with pytest.raises(TypeError, match="target must be"):
        keras_lrp.explain(model, X, [[1], [1, 2]])


@pytest.mark.parametrize("timestep", [2**32 + 3, -(2**32) - 1, np.uint64(2**63), 2**80])
def test_timesteps_never_wrap_around(tagger, timestep):
    with pytest.raises(ValueError, match="out of range"):
        keras_lrp.explain(tagger, X, 0, timestep=timestep)
    assert keras_lrp.explain(tagger, X, 0, timestep=np.uint64(3)).timestep.tolist() == [3, 3]


def test_batch_size_as_numpy_integers(model):
    ref = keras_lrp.explain(model, X, 0, dtype="float64").relevance
    for bs in (np.uint64(2**63), np.int32(1), 2**40):
        np.testing.assert_array_equal(keras_lrp.explain(model, X, 0, dtype="float64", batch_size=bs).relevance, ref)
    with pytest.raises(ValueError, match="batch_size"):
        keras_lrp.explain(model, X, 0, batch_size=np.bool_(True))


def test_finiteness_checked_in_the_compute_dtype(model):
    x = X.copy()
    x[0, 1, 2] = 1e300          # finite in float64, inf in float32
    with pytest.raises(ValueError, match="float32 range"):
        keras_lrp.explain(model, x, 0)
    x[0, 1, 2] = 1e30           # fine in both
    assert np.isfinite(keras_lrp.explain(model, x, 0).scores).all()


def _with_weight(model, layer_index, weight_index, value):
    copy = keras.models.clone_model(model)
    weights = [w.copy() for w in model.get_weights()]
    copy.set_weights(weights)
    layer = copy.layers[layer_index]
    own = layer.get_weights()
    own[weight_index].flat[0] = value
    layer.set_weights(own)
    return copy


def test_eps_or_bias_factor_beyond_the_dtype_is_refused(model):
    """bias_factor=1e300 is inf in float32: refused before anything is computed (was: NaN relevance)."""
    for kwargs in ({"bias_factor": 1e300}, {"eps": 1e300}):
        with pytest.raises(ValueError, match="beyond the float32 range"):
            keras_lrp.explain(model, X, 0, **kwargs)
    with pytest.warns(RuntimeWarning, match=r"bias_factor=1e\+300 is beyond float32's largest value"):
        keras_lrp.explain(model, X, 0, layer_rules={keras.layers.Dense: keras_lrp.Epsilon(0.0, 1e300)})


@pytest.mark.parametrize("case, pattern", [
    ("bias_factor_far_above_one", r"bias_factor=1e\+30 \(meaningful values are 0..1\)"),
    ("nan_weight", r"weights are not all finite \(layer 'dense\w*' 1 NaN and 0 inf of 8 values\)"),
])
def test_overflow_warning_names_its_cause(model, case, pattern):
    """The inf/NaN warning blamed the 'prop' rule whatever the cause; it names the real one."""
    kwargs = {"bias_factor": 1e30} if case == "bias_factor_far_above_one" else {}
    explained = _with_weight(model, 1, 1, np.nan) if case == "nan_weight" else model
    with pytest.warns(RuntimeWarning, match="contain inf/NaN") as record:
        keras_lrp.explain(explained, X, 0, **kwargs)
    message = next(str(w.message) for w in record if "inf/NaN" in str(w.message))
    assert re.search(pattern, message), message
    assert "'prop' rule" not in message


def test_eps_and_bias_factor_accept_numpy_scalars(model):
    ref = keras_lrp.explain(model, X, 0, eps=1e-3, bias_factor=0.0, dtype="float64").relevance
    e = keras_lrp.explain(model, X, 0, eps=np.float64(1e-3), bias_factor=np.int64(0), dtype="float64")
    np.testing.assert_array_equal(e.relevance, ref)
    rule = Epsilon(eps=np.float32(1e-3), bias_factor=np.int64(1))
    assert type(rule.eps) is float and type(rule.bias_factor) is float and rule.bias_factor == 1.0
    assert Epsilon(eps=np.float32(0.5)) == Epsilon(eps=0.5)
    for bad in (np.float64("inf"), np.float32("nan"), -np.inf, 10**400):
        with pytest.raises(ValueError, match="finite"):
            Epsilon(eps=bad)
        with pytest.raises(ValueError, match="finite"):
            Epsilon(bias_factor=bad)
    for bad in (np.bool_(True), True, "0.1", None, 1j):
        with pytest.raises(TypeError, match="real number"):
            Epsilon(eps=bad)


def _peak_rss():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def test_over_long_inputs_refused_before_allocating():
    emb = keras.Sequential([keras.Input((None,), dtype="int32"), keras.layers.Embedding(10, 4),
                            keras.layers.LSTM(3), keras.layers.Dense(2)])
    ids = np.ones((1, 1_200_000), np.int64)   # a 5 MB line of one-token words
    before, start = _peak_rss(), time.perf_counter()
    with pytest.raises(ValueError, match=r"1,200,000 time steps, more than max_length=100,000"):
        keras_lrp.explain(emb, ids)
    assert time.perf_counter() - start < 20 and _peak_rss() - before < 200 * 2**20
    explainer = keras_lrp.Explainer(emb, max_length=5)
    with pytest.raises(ValueError, match="max_length=5"):
        explainer.attribute(np.ones((1, 6), np.int64))
    assert explainer.attribute(np.ones((1, 5), np.int64)).relevance.shape == (1, 5, 4)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="max_length"):
            keras_lrp.Explainer(emb, max_length=bad)


def test_long_sequences_use_fewer_rows_per_call_and_stay_batch_independent(model, monkeypatch):
    monkeypatch.setattr(kex, "_LONG_STEPS", 19)   # T = 20 -> one row per call instead of 4
    x = np.random.default_rng(3).standard_normal((7, 20, 3))
    explainer = keras_lrp.Explainer(model, dtype="float64")
    rows = []
    real = explainer._fn

    def spy(x_, *per_sample):                 # x_: one tensor per model input
        rows.append(int(x_[0].shape[0]))
        return real(x_, *per_sample)

    explainer._fn = spy
    ref = explainer.attribute(x, 1, batch_size=7)
    assert rows and set(rows) == {1}, rows        # never 4 copies of a long sample
    for bs in (1, 2, 5):
        e = explainer.attribute(x, 1, batch_size=bs)
        np.testing.assert_array_equal(e.relevance, ref.relevance, err_msg=f"batch_size={bs}")
        np.testing.assert_array_equal(e.rest, ref.rest)
    assert set(rows) == {1}
    assert explainer._rows_per_call(19) == 4 and explainer._rows_per_call(20) == 1
    monkeypatch.setattr(kex, "_LONG_STEPS", 2048)
    assert explainer._rows_per_call(2048) == 4 and explainer._rows_per_call(2049) == 1


def test_longer_sequences_get_smaller_calls_and_stay_batch_independent(model):
    """Adaptive chunking: rows x steps of one call stay under 6,400 (128 rows at 50 steps, 80 at 80),
    but at least 64 rows."""
    x = np.random.default_rng(5).standard_normal((100, 150, 3))
    explainer = keras_lrp.Explainer(model, dtype="float64")
    assert [explainer._chunk_rows(t) for t in (20, 50, 80, 200, 5000)] == [320, 128, 80, 64, 64]
    rows = []
    real = explainer._fn

    def spy(x_, *per_sample):
        rows.append(int(x_[0].shape[0]))
        return real(x_, *per_sample)

    explainer._fn = spy
    e = explainer.attribute(x, 1, batch_size=256)
    assert rows == [64, 36], rows               # 64 samples, then 36 (a multiple of 4)
    alone = keras_lrp.Explainer(model, dtype="float64").attribute(x, 1, batch_size=1)
    np.testing.assert_array_equal(e.relevance, alone.relevance)


# ------------------------------------------------------------------------------------------
# .npy files: the header is checked against the file size before anything is allocated
# ------------------------------------------------------------------------------------------
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED_MODEL = os.path.join(ROOT, "models", "sst5_bilstm.keras")
SHIPPED_VOCAB = os.path.join(ROOT, "embeddings", "sst5_vocab.json")


def _npy_declaring(path, shape, descr="<f4"):
    """A .npy of 144 bytes whose header declares ``shape`` (10**12 x 3 float32 = 10.9 TiB)."""
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": descr, "fortran_order": False, "shape": shape})
        f.write(bytes(16))
    return str(path)


def _read_with(reader, bomb, tmp_path, capsys):
    """Read ``bomb`` through one of the project's .npy readers; returns the error message."""
    from keras_lrp import cli

    if reader.startswith("cli"):
        args = (["--npy", bomb, "--out", str(tmp_path / "r.npy")] if reader == "cli --npy" else
                ["--vocab", SHIPPED_VOCAB, "--embeddings", bomb, "a fine film"])
        assert cli.main(["explain", "--model", SHIPPED_MODEL] + args) == 1
        return capsys.readouterr().err
    if reader == "load_pretrained":
        meta = tmp_path / "meta.json"
        meta.write_text(json.dumps({"format": "keras_lrp.text_classifier", "model": SHIPPED_MODEL,
                                    "vocabulary": SHIPPED_VOCAB, "embeddings": bomb}))
        with pytest.raises(ValueError) as info:
            keras_lrp.load_pretrained(str(meta))
        return str(info.value)
    pytest.importorskip("ray")
    with pytest.raises(ValueError) as info:
        keras_lrp.explain_corpus(SHIPPED_MODEL, bomb, tmp_path / "out") if reader == "explain_corpus inputs" \
            else keras_lrp.explain_corpus(SHIPPED_MODEL, bomb, tmp_path / "out", embeddings=bomb)
    return str(info.value)


@pytest.mark.parametrize("reader", ["cli --npy", "cli --embeddings", "load_pretrained", "explain_corpus inputs",
                                    "explain_corpus embeddings"])
def test_npy_declaring_more_than_it_holds_is_refused_naming_the_file(tmp_path, capsys, reader):
    """np.load answered "Unable to allocate 10.9 TiB" (or an mmap error) for a 144-byte file."""
    shape = (10**12, 3) if "embeddings" not in reader and reader != "load_pretrained" else (10**12, 60)
    bomb = _npy_declaring(tmp_path / "bomb.npy", shape)
    before, start = _peak_rss(), time.process_time()
    message = _read_with(reader, bomb, tmp_path, capsys)
    assert time.process_time() - start < 60 and _peak_rss() - before < 500 * 2**20
    assert "bomb.npy" in message and "\n" not in message.strip(), message
    assert re.search(r"declares float32 \(1000000000000, (3|60)\) \((10\.9|218\.3) TiB\) but holds only 16 bytes",
                     message), message


def test_npy_reader_refuses_objects_and_reads_genuine_files(tmp_path):
    from keras_lrp.npy import NpyFileError, load_npy

    x = np.arange(12, dtype="float32").reshape(3, 4)
    np.save(tmp_path / "x.npy", x)
    np.testing.assert_array_equal(load_npy(tmp_path / "x.npy"), x)
    np.testing.assert_array_equal(load_npy(tmp_path / "x.npy", mmap_mode="r"), x)
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(NpyFileError, match=r"objects\.npy: holds Python objects"):
        load_npy(tmp_path / "objects.npy")
    (tmp_path / "text.npy").write_text("not numpy")
    with pytest.raises(NpyFileError, match=r"text\.npy: not a valid \.npy file"):
        load_npy(tmp_path / "text.npy")
    with pytest.raises(NpyFileError, match=r"--npy short\.npy: declares int64 \(5,\) \(40 bytes\) but holds only 16"):
        load_npy(_npy_declaring(tmp_path / "short.npy", (5,), "<i8"), name="--npy short.npy")
