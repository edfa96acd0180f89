"""Tokenizer (PTB / SST style) and Vocabulary (JSON) tests."""
import json

import numpy as np
import pytest

from keras_lrp.text import (PAD_ID, UNK_ID, Tokenizer, Vocabulary, VocabularyError, tokenize)


@pytest.mark.parametrize("text, expected", [
    ("i hate the movie, though the plot's interesting.",
     "i hate the movie , though the plot 's interesting ."),
    ("I Hate The MOVIE, Though the Plot's Interesting.",
     "i hate the movie , though the plot 's interesting ."),
    ("I don't like it and they're bored; I can't, won't, cannot!",
     "i do n't like it and they 're bored ; i ca n't , wo n't , can not !"),
    ("He'd say I'm sure we'll, we've seen it.", "he 'd say i 'm sure we 'll , we 've seen it ."),
    ('He said "great" (really) -- no...', 'he said " great " ( really ) -- no ...'),
    ("``Quoted'' -LRB- aside -RRB- writer\\/director \\*\\*\\*",
     '" quoted " ( aside ) writer/director ***'),
    ("\u201cCurly\u201d quotes and it\u2019s an ellipsis\u2026", '" curly " quotes and it \'s an ellipsis ...'),
    ("`Bowling for Columbine' is a 'good' film.", "' bowling for columbine ' is a ' good ' film ."),
    ("Mr. Smith saw E.T. in the U.S. at 10:30 for $5, 50% off 10,000 tickets.",
     "mr. smith saw e.t. in the u.s. at 10:30 for $ 5 , 50 % off 10,000 tickets ."),
    ("the '70s, rock 'n' roll, kill 'em, ol' man", "the '70s , rock 'n' roll , kill 'em , ol' man"),
    ("a coming-of-age tale?!", "a coming-of-age tale ?!"),
    ("", ""),
])
def test_ptb_tokenization(text, expected):
    assert tokenize(text) == expected.split()


def test_sst_escaped_tokens_are_single_tokens():
    # Leaf words as they appear in the SST trees map to one canonical token each.
    leaves = {"-LRB-": "(", "-RRB-": ")", "``": '"', "''": '"', "`": "'", "'": "'", "'s": "'s",
              "n't": "n't", "'re": "'re", "...": "...", "--": "--", "Mr.": "mr.", "U.S.": "u.s.",
              "2,500": "2,500", "!?": "!?", "\\*\\*": "**", "and\\/or": "and/or"}
    for leaf, token in leaves.items():
        assert tokenize(leaf) == [token], leaf


def test_tokenizer_is_context_free_per_chunk():
    words = "It 's not -LRB- really -RRB- Mr. Smith 's `` best '' movie , is n't it ?".split()
    assert tokenize(" ".join(words)) == [t for w in words for t in tokenize(w)]


@pytest.mark.parametrize("text", [
    "0.'S", "it's.", "(mr.", "'70s,", "'em.", "'good.'", "don't/can't", "a--b...c", "x,y;z", "\u00a0--",
    "\u2018quote\u2019s\u201d", "no.", "'", "`", "''", "`` ''", "ol'.", "$5.50,",
])
def test_tokenization_is_idempotent(text):
    # re-tokenizing the joined tokens changes nothing (what train/explain agreement rests on)
    for tok in (Tokenizer(), Tokenizer(lowercase=False)):
        tokens = tok(text)
        assert all(t and not any(c.isspace() for c in t) for t in tokens)
        assert tok(" ".join(tokens)) == tokens


def test_lowercase_switch_and_config_round_trip():
    tok = Tokenizer(lowercase=False)
    assert tok("The Plot's FINE.") == ["The", "Plot", "'s", "FINE", "."]
    assert Tokenizer.from_config(tok.get_config()) == tok
    with pytest.raises(ValueError, match="unknown tokenizer setting"):
        Tokenizer.from_config({"lowercase": True, "stem": True})
    with pytest.raises(TypeError, match="expects a str"):
        tokenize(["a", "list"])


def _vocab():
    return Vocabulary.from_corpus([["the", "movie", "is", "good"], ["the", "plot", "is", "bad"]])


def test_vocabulary_ids_and_oov_flags():
    vocab = _vocab()
    assert len(vocab) == 2 + 6
    assert vocab.tokens[:2] == ["<pad>", "<unk>"]
    # frequency order, ties alphabetical
    assert vocab.tokens[2:4] == ["is", "the"]
    ids, oov = vocab.encode(["the", "movie", "rocks", "<pad>"])
    assert ids.dtype == np.int32 and oov.dtype == bool
    assert ids[0] == vocab.token_to_id("the") and ids[0] > UNK_ID
    assert list(oov) == [False, False, True, True]
    assert ids[2] == UNK_ID and ids[3] == UNK_ID  # reserved strings are never real words
    assert vocab.decode(ids[:2]) == ["the", "movie"]
    assert "rocks" not in vocab and "movie" in vocab and "<pad>" not in vocab
    assert vocab.id_to_token(PAD_ID) == "<pad>"
    with pytest.raises(TypeError, match="tokenize"):
        vocab.encode("the movie")


def test_vocabulary_min_freq():
    vocab = Vocabulary.from_corpus([["a", "a", "b"], ["a", "c", "c"]], min_freq=2)
    assert vocab.tokens == ["<pad>", "<unk>", "a", "c"]
    with pytest.raises(ValueError, match="min_freq"):
        Vocabulary.from_corpus([["a"]], min_freq=0)


def test_vocabulary_rejects_bad_tokens():
    with pytest.raises(VocabularyError, match="twice"):
        Vocabulary(["a", "b", "a"])
    with pytest.raises(VocabularyError, match="reserved"):
        Vocabulary(["<unk>"])


def test_vocabulary_json_round_trip(tmp_path):
    vocab = Vocabulary.from_corpus([["caf\u00e9", "na\u00efve", "'s", "\"", "caf\u00e9"]])
    path = tmp_path / "vocab.json"
    vocab.save(path)
    back = Vocabulary.load(path)
    assert back == vocab
    assert back.counts == vocab.counts and back.counts["caf\u00e9"] == 2
    assert back.encode(["na\u00efve", "x"])[0].tolist() == [vocab.token_to_id("na\u00efve"), UNK_ID]
    assert json.loads(path.read_text(encoding="utf-8"))["tokens"][:2] == ["<pad>", "<unk>"]


@pytest.mark.parametrize("content, message", [
    ("{not json", "not valid JSON"),
    ("[1, 2, 3]", "expected a JSON object"),
    ('{"format": "something else", "version": 1, "tokens": []}', "'format'"),
    ('{"format": "keras_lrp.vocabulary", "version": 99, "tokens": ["<pad>", "<unk>"]}', "version"),
    ('{"format": "keras_lrp.vocabulary", "version": 1, "tokens": ["<unk>", "<pad>", "a"]}', "ids 0 and 1"),
    ('{"format": "keras_lrp.vocabulary", "version": 1, "tokens": ["<pad>", "<unk>", "a", "a"]}', "twice"),
    ('{"format": "keras_lrp.vocabulary", "version": 1, "tokens": ["<pad>", "<unk>", 7]}', "non-empty str"),
    ('{"format": "keras_lrp.vocabulary", "version": 1, "tokens": ["<pad>", "<unk>", "a"], "counts": [1]}',
     "'counts'"),
])
def test_malformed_vocabulary_json(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(VocabularyError, match=message) as info:
        Vocabulary.load(path)
    assert str(path) in str(info.value)


def test_missing_vocabulary_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="vocabulary file not found"):
        Vocabulary.load(tmp_path / "nope.json")
