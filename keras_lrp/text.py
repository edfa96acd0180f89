"""Text front end for the sentiment models: a PTB-style word tokenizer and a JSON vocabulary.

The tokenizer turns raw text into the tokens the Stanford Sentiment Treebank uses ("the plot's
interesting." -> ``the plot 's interesting .``), lowercased, with the treebank's escapes mapped to
plain characters (``-LRB-`` -> ``(``, ``\\/`` -> ``/``, both ````` and ``''`` -> ``"``).

It is *context free per whitespace chunk*: ``tokenize("a b")`` is ``tokenize("a") + tokenize("b")``.
Training applies it to every leaf word of the SST trees and concatenates the results, so a sentence
typed at explain time gets exactly the tokens the model was trained on.

:class:`Vocabulary` maps tokens to integer ids with two reserved ids, 0 = padding and 1 = unknown.
It is stored as plain JSON (never pickle).
"""
from __future__ import annotations

import functools
import itertools
import json
import os
import re
import unicodedata
from collections import Counter
from typing import Dict, Iterable, Iterator, List, Mapping, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np

from .safe_io import quote

__all__ = ["Tokenizer", "tokenize", "KerasStyleTokenizer", "KerasTokenizer", "WordIds", "KERAS_DEFAULT_FILTERS",
           "TooManyTokensError", "OOV_KEYS", "MAX_ID",
           "Vocabulary", "VocabularyError", "PAD_ID", "UNK_ID", "PAD_TOKEN", "UNK_TOKEN"]

PAD_ID = 0
UNK_ID = 1
PAD_TOKEN = "<pad>"
UNK_TOKEN = "<unk>"

# Escapes used by the Penn Treebank / SST files, mapped to the characters they stand for.
_PTB_ESCAPES = (
    ("-LRB-", "("), ("-RRB-", ")"), ("-LSB-", "["), ("-RSB-", "]"), ("-LCB-", "{"), ("-RCB-", "}"),
    ("\\/", "/"), ("\\*", "*"),
)
_PTB_ESCAPE_RE = re.compile("|".join(re.escape(k) for k, _ in _PTB_ESCAPES), re.IGNORECASE)
_PTB_ESCAPE_MAP = {k.lower(): v for k, v in _PTB_ESCAPES}

# Typographic characters folded to their ASCII PTB counterparts.
_CHAR_MAP = str.maketrans({
    "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u00ab": '"', "\u00bb": '"',
    "\u2018": "'", "\u2019": "'", "\u201a": "'", "\u2032": "'",
    "\u2026": " ... ", "\u2014": " -- ", "\u2013": "-", "\u00a0": " ",
})

# Contraction suffixes split off a word, as in the treebank ("do n't", "plot 's", "they 're"):
# the longest stem that ends in a non-apostrophe and is followed by one of these (any case).
_CONTRACTION_SUFFIX_RE = re.compile(r"n't|'s|'re|'ll|'ve|'d|'m", re.IGNORECASE)
# Chunks that start with an apostrophe but are words, not an opening quote.
_APOSTROPHE_WORD_RE = re.compile(
    r"'(\d\d|\d0s|s|re|ll|ve|d|m|em|n|n'|til|cause|tis|twas|bout|round|nuff)", re.IGNORECASE)
_APOSTROPHE_WORD_MAX = 6   # the longest such word ("'cause"); lower() never shortens a string
# Words that end with an apostrophe that is part of the word, not a closing quote.
_TRAILING_APOSTROPHE_WORDS = {"ol'", "'n'", "o'"}
# Abbreviations that keep their period (single letters and dotted forms like "u.s." keep it too).
_ABBREVIATIONS = {
    "mr", "mrs", "ms", "dr", "st", "jr", "sr", "vs", "etc", "inc", "co", "corp", "ltd", "bros",
    "al", "prof", "gen", "lt", "col", "sgt", "capt", "rev", "mt", "ft", "jan", "feb", "mar", "apr",
    "jun", "jul", "aug", "sep", "sept", "oct", "nov", "dec", "wash", "pa", "calif", "vol", "approx",
}
_ABBREVIATION_MAX = max(len(a) for a in _ABBREVIATIONS)
# Leading punctuation peeled off a chunk, longest first (matched at the chunk's start).
_LEADING_RE = re.compile(r"\.{2,}|--|\*+|[(\[{\"`$#\u00bf\u00a1]")
_LEADING_SINGLE = set("([{\"`$#\u00bf\u00a1")   # the one-character tokens of _LEADING_RE
# Trailing punctuation peeled off a chunk (the period and the apostrophe are handled separately):
# runs of ". * ? !" (two dots at least), "--", or one of these characters.
_TRAILING_SINGLE = set(')]}",;:%')
# Punctuation that splits a chunk in its middle; a comma or colon between two digits does not.
_INNER_SPLIT_RE = re.compile(
    r"(\.{2,}|--|[()\[\]{}\"]|[?!]+|;|(?<!\d)[,:]|[,:](?!\d))")
_DOTS_RE = re.compile(r"\.{2,}")
# A word of letters and digits (hyphen- or slash-joined, which no rule splits) with at most one
# opening mark, one contraction suffix and one closing mark (or a run of "?!"): what
# _split_chunk gives for it is spelled out in tokenize.
_SIMPLE_CHUNK_RE = re.compile(r"([(\[{\"$#]?)([^\W_]+(?:[-/][^\W_]+)*)"
                              r"((?i:n't|'s|'re|'ll|'ve|'d|'m)?)([,;:)\]}\"%.]|[?!]+|)")


class TooManyTokensError(ValueError):
    """A text has more tokens than the ``max_tokens`` given to ``tokenize``; raised as soon as
    that is known, so refusing a huge text costs about ``max_tokens`` tokens."""

    def __init__(self, max_tokens: int):
        super().__init__(f"the text has more than {max_tokens:,} tokens")
        self.max_tokens = max_tokens


class _TooMany(Exception):
    """Internal: a chunk is known to give more tokens than its allowance."""


_BLOCK_CHARS = 1 << 16   # text tokenized under a token limit is cut into blocks of about this size


def _blocks(text: str, separator: "re.Pattern[str]", size: int) -> Iterator[str]:
    """``text`` cut into pieces of about ``size`` characters, each cut at a match of
    ``separator`` (so no token straddles two pieces); a piece without one is as long as it is."""
    start, n = 0, len(text)
    while start < n:
        m = separator.search(text, start + size) if start + size < n else None
        stop = m.start() if m else n
        yield text[start:stop]
        start = stop


def _check_max_tokens(max_tokens: Optional[int]) -> None:
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int)
                                   or max_tokens < 0):
        raise ValueError(f"max_tokens must be None or an int >= 0, got {max_tokens!r}")


class Tokenizer:
    """PTB-style word tokenizer matching the Stanford Sentiment Treebank's tokens.

    Args:
        lowercase: lowercase every token (the shipped models are trained lowercased).

    Rules, applied to each whitespace-separated chunk:

    * treebank escapes ``-LRB- -RRB- -LSB- -RSB- -LCB- -RCB- \\/ \\*`` become ``( ) [ ] { } / *``;
    * double quotes (``"``, ``````, ``''``, curly quotes) become the token ``"``; a backtick or
      curly single quote becomes ``'``;
    * opening/closing brackets, quotes, ``, ; : ? ! % $ #``, ``...`` and ``--`` are split off;
      a comma or colon between digits ("10,000", "10:30") is kept;
    * contractions are split like the treebank: ``don't -> do n't``, ``can't -> ca n't``,
      ``it's -> it 's``, ``they're -> they 're`` (also ``'ll 've 'd 'm``); ``cannot -> can not``;
    * a final period is split off unless the word is an abbreviation ("mr.", "u.s.", "j.");
    * hyphenated words ("coming-of-age") and slashes ("writer/director") stay one token.
    """

    def __init__(self, lowercase: bool = True):
        if not isinstance(lowercase, bool):
            raise TypeError(f"lowercase must be True or False, got {lowercase!r}")
        self.lowercase = lowercase

    def __call__(self, text: str) -> List[str]:
        return self.tokenize(text)

    def __repr__(self) -> str:
        return f"Tokenizer(lowercase={self.lowercase})"

    def __eq__(self, other) -> bool:
        return isinstance(other, Tokenizer) and other.get_config() == self.get_config()

    def get_config(self) -> dict:
        """JSON-serialisable settings; ``Tokenizer(**config)`` rebuilds the same tokenizer."""
        return {"lowercase": self.lowercase}

    @classmethod
    def from_config(cls, config: Mapping) -> "Tokenizer":
        unknown = set(config) - {"lowercase"}
        if unknown:
            raise ValueError(f"unknown tokenizer setting(s) {sorted(unknown)}; known: ['lowercase']")
        return cls(**dict(config))

    def tokenize(self, text: str, max_tokens: Optional[int] = None) -> List[str]:
        """Split ``text`` into a list of PTB-style tokens.

        Args:
            text: the text.
            max_tokens: raise :class:`TooManyTokensError` as soon as the text is known to have more
                tokens than this, having split about ``max_tokens`` of them (not the whole text).
        """
        if not isinstance(text, str):
            raise TypeError(f"tokenize expects a str, got {type(text).__name__}; "
                            "for a list of words, tokenize ' '.join(words)")
        text = unicodedata.normalize("NFC", text).translate(_CHAR_MAP)
        text = _PTB_ESCAPE_RE.sub(lambda m: _PTB_ESCAPE_MAP[m.group(0).lower()], text)
        text = text.replace("``", ' " ').replace("''", ' " ')
        if self.lowercase:
            text = text.lower()
        _check_max_tokens(max_tokens)
        if max_tokens is None:
            return _chunks_tokens(text.split(), None)
        tokens: List[str] = []
        for block in _blocks(text, _WHITESPACE_RE, min(_BLOCK_CHARS, max_tokens + 1)):
            try:
                tokens.extend(_chunks_tokens(block.split(), max_tokens - len(tokens)))
            except _TooMany:
                raise TooManyTokensError(max_tokens) from None
            if len(tokens) > max_tokens:
                raise TooManyTokensError(max_tokens)
        return tokens


_WHITESPACE_RE = re.compile(r"\s")   # the characters str.split() splits at


def _chunks_tokens(chunks: List[str], limit: Optional[int]) -> List[str]:
    """The tokens of whitespace-free chunks; with ``limit``, :class:`_TooMany` once they are
    known to be more than ``limit``."""
    if not chunks:
        return []
    if max(map(len, chunks)) <= _CACHED_CHUNK_MAX:   # all cached: one C-level pass
        return list(itertools.chain.from_iterable(map(_split_short_chunk, chunks)))
    tokens: List[str] = []
    for chunk in chunks:
        if len(chunk) <= _CACHED_CHUNK_MAX:
            tokens.extend(_split_short_chunk(chunk))
        else:
            tokens.extend(_chunk_tokens(chunk, None if limit is None else limit - len(tokens)))
        if limit is not None and len(tokens) > limit:
            raise _TooMany
    return tokens


_CACHED_CHUNK_MAX = 40   # chunks up to this length go through the cache _split_short_chunk


def _chunk_tokens(chunk: str, limit: Optional[int] = None) -> Tuple[str, ...]:
    """Tokens of one whitespace-free chunk: most chunks are a word with at most one bracket,
    contraction suffix and punctuation mark, split here; the rest go to :func:`_split_chunk`
    (with ``limit``: :class:`_TooMany` once they are known to be more than ``limit``)."""
    m = _SIMPLE_CHUNK_RE.fullmatch(chunk)
    if m is None or m.group(2).lower() == "cannot":
        return tuple(_split_chunk(chunk, limit))
    lead, word, suffix, trail = m.groups()
    if suffix:   # "don't." -> do n't .: the stem is the word, the period splits off
        tokens: Tuple[str, ...] = (lead, word, suffix, trail)
    elif trail == "." and ((len(word) == 1 and word.isalpha()) or word.lower() in _ABBREVIATIONS):
        tokens = (lead, word + trail)   # "mr." and "j." keep their period
    else:
        tokens = (lead, word, trail)
    return tuple(filter(None, tokens))   # drop the empty lead / trail


# short chunks ("it's", "film.") recur in text: their tokens are cached
_split_short_chunk = functools.lru_cache(maxsize=2**16)(_chunk_tokens)


class _Span(NamedTuple):
    """``chunk[lo:hi]``, still to be split; ``fresh``: it may hold inner punctuation."""

    lo: int
    hi: int
    fresh: bool


def _split_chunk(chunk: str, limit: Optional[int] = None) -> List[str]:
    """Tokens of one whitespace-free chunk (with ``limit``: :class:`_TooMany` once they are known
    to be more than ``limit``, having split about that many).

    Linear in ``len(chunk)`` and never copies the chunk per step: the chunk's outer punctuation
    is peeled by moving the ends of a span ``chunk[lo:hi]`` (:func:`_peel`); the rest is split
    at inner punctuation in one C-level ``re.split``, and each piece (free of inner punctuation,
    so it splits the same on its own) takes its tokens from the cache of short chunks. A chunk
    without inner punctuation goes to :func:`_split_span` (contraction suffixes).
    """
    if len(chunk) <= 1:   # no rule splits or changes one character but the backtick
        return ["'"] if chunk == "`" else ([chunk] if chunk else [])
    head: List[str] = []
    tail: List[str] = []   # outermost first
    lo, hi = _peel(chunk, 0, len(chunk), head, tail, limit)
    rest = None if limit is None else limit - len(head) - len(tail)   # >= 0 after _peel
    if hi - lo == 1 and chunk[lo] == "`":
        middle: List[str] = ["'"]
    elif _DOTS_RE.fullmatch(chunk, lo, hi):
        middle = ["..."]
    else:
        # parts alternate piece, punctuation, piece, ... (pieces may be empty); each punctuation
        # part is a token, so a limit needs at most rest + 1 of them
        parts = _INNER_SPLIT_RE.split(chunk[lo:hi], maxsplit=0 if rest is None else rest + 1)
        if rest is not None and (len(parts) - 1) // 2 > rest:
            raise _TooMany
        if len(parts) > 3 or (len(parts) == 3 and (parts[0] or parts[2])):
            if max(map(len, parts)) <= _CACHED_CHUNK_MAX:
                # a punctuation part alone splits to itself ("..." for a run of dots)
                middle = list(itertools.chain.from_iterable(map(_split_short_chunk, parts)))
            else:
                middle = []
                for i, part in enumerate(parts):
                    if i % 2:
                        middle.append("..." if part.startswith("..") else part)
                    elif part:
                        middle.extend(_split_short_chunk(part) if len(part) <= _CACHED_CHUNK_MAX
                                      else _split_chunk(part, None if rest is None else rest - len(middle)))
                    if rest is not None and len(middle) > rest:
                        raise _TooMany
        else:
            middle = _split_span(chunk, lo, hi, rest)
    if rest is not None and len(middle) > rest:
        raise _TooMany
    if not head and not tail:
        return middle
    tail.reverse()
    head.extend(middle)
    head.extend(tail)
    return head


def _peel(chunk: str, lo: int, hi: int, head: List[str], tail: List[str],
          limit: Optional[int] = None) -> Tuple[int, int]:
    """Peel the outer punctuation of ``chunk[lo:hi]``: leading tokens go to ``head``, trailing
    ones to ``tail`` (outermost first). Returns the new ``(lo, hi)``, never an empty span.

    With ``limit``: :class:`_TooMany` once ``head`` and ``tail`` hold ``limit`` tokens and there
    is more to peel (the span left gives at least one token more)."""
    # how many tokens head and tail may hold (the run loops below stop there)
    room = len(chunk) if limit is None else limit
    while lo < hi and not _is_apostrophe_word(chunk, lo, hi):
        if len(head) + len(tail) >= room:
            raise _TooMany
        if chunk[lo] in _LEADING_SINGLE:
            # a run of opening characters peels one by one (no apostrophe word starts with one)
            while lo + 1 < hi and chunk[lo] in _LEADING_SINGLE and len(head) + len(tail) < room:
                head.append("'" if chunk[lo] == "`" else chunk[lo])
                lo += 1
            if hi - lo > 1 or chunk[lo] not in _LEADING_SINGLE:
                continue
        m = _LEADING_RE.match(chunk, lo, hi)
        if m and m.end() < hi:
            tok = m.group(0)
            head.append("'" if tok == "`" else ("..." if tok.startswith("..") else tok))
            lo = m.end()
            continue
        if chunk[hi - 1] in _TRAILING_SINGLE:
            # a run of closing characters peels one by one; the leading match above cannot
            # start to succeed as hi shrinks, and no apostrophe word ends in one of them
            while hi - 1 > lo and chunk[hi - 1] in _TRAILING_SINGLE and len(head) + len(tail) < room:
                tail.append(chunk[hi - 1])
                hi -= 1
            if hi - lo > 1 or chunk[hi - 1] not in _TRAILING_SINGLE:
                continue
            break
        start = _trailing_start(chunk, lo, hi)
        if start > lo:
            tok = chunk[start:hi]
            tail.append("..." if tok.startswith("..") else tok)
            hi = start
            continue
        if hi - lo > 1 and chunk[hi - 1] == "." and chunk[hi - 2] != ".":
            # linear overall: each later check ends before the dot this one found
            dot_in_stem = chunk.rfind(".", lo, hi - 1) >= 0
            is_abbreviation = (dot_in_stem or (hi - lo == 2 and chunk[lo].isalpha())
                               or (hi - 1 - lo <= _ABBREVIATION_MAX
                                   and chunk[lo:hi - 1].lower() in _ABBREVIATIONS))
            if not is_abbreviation:
                tail.append(".")
                hi -= 1
                continue
        if hi - lo > 1 and chunk[lo] == "'":
            head.append("'")
            lo += 1
            continue
        if hi - lo > 1 and chunk[hi - 1] == "'":
            tail.append("'")
            hi -= 1
            continue
        break
    return lo, hi


# Contraction suffixes by length, lowercased, for the fast loop in _split_span (a miss there
# only falls back to the general path, which uses _CONTRACTION_SUFFIX_RE).
_SUFFIX2 = {"'s", "'d", "'m"}
_SUFFIX3 = {"n't", "'re", "'ll", "'ve"}


def _split_span(chunk: str, lo: int, hi: int, limit: Optional[int] = None) -> List[str]:
    """Tokens of ``chunk[lo:hi]``, a span already peeled and free of inner punctuation (with
    ``limit``: :class:`_TooMany` once they are known to be more than ``limit``).

    Iterative: a stack of spans (``_Span``) and finished tokens (``str``), popped in output
    order; each contraction suffix moves the span's end, and its stem is peeled again.
    """
    out: List[str] = []
    stack: List[Union[str, List[str], _Span]] = [_Span(lo, hi, False)]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            out.append(item)
            continue
        if isinstance(item, list):   # contraction suffixes, innermost first
            out.extend(item)
            continue
        lo, hi, _ = item
        if hi - lo <= 1:
            if hi > lo:
                out.append("'" if chunk[lo] == "`" else chunk[lo])
            continue
        head: List[str] = []
        tail: List[str] = []   # outermost first
        lo, hi = _peel(chunk, lo, hi, head, tail, None if limit is None else limit - len(out))
        stack.extend(tail)              # popped last, innermost first
        if hi - lo == 1 and chunk[lo] == "`":
            stack.append("'")
        elif _DOTS_RE.fullmatch(chunk, lo, hi):
            stack.append("...")
        else:
            cut = _contraction_cut(chunk, lo, hi)
            if cut is None:
                stack.append(chunk[lo:hi])
            elif chunk[cut:hi] != "not":
                # contraction split off: its stem may end in punctuation of its own ("0.'s")
                suffixes = [chunk[cut:hi]]   # outermost first
                hi = cut
                # a long stem ending in a letter or digit peels to itself (its start was
                # peeled already), so its own suffixes ("n'tn'tn't") come off right here;
                # the same suffix again is the same choice, given a stem not ending in "'"
                while hi - lo > _APOSTROPHE_WORD_MAX and chunk[hi - 1].isalnum():
                    if limit is not None and len(out) + len(suffixes) > limit:
                        raise _TooMany
                    suffix = suffixes[-1]
                    if chunk.endswith(suffix, lo, hi) and chunk[hi - len(suffix) - 1] != "'":
                        suffixes.append(suffix)
                        hi -= len(suffix)
                        continue
                    if chunk[hi - 2:hi].lower() in _SUFFIX2 and chunk[hi - 3] != "'":
                        cut = hi - 2
                    elif chunk[hi - 3:hi].lower() in _SUFFIX3 and chunk[hi - 4] != "'":
                        cut = hi - 3
                    else:
                        break
                    suffixes.append(chunk[cut:hi])
                    hi = cut
                suffixes.reverse()
                stack.append(suffixes)
                stack.append(_Span(lo, hi, False))
            else:
                stack.extend((chunk[cut:hi], chunk[lo:cut]))
        stack.extend(reversed(head))    # popped first
    return out


def _trailing_start(chunk: str, lo: int, hi: int) -> int:
    """Start of the trailing punctuation token of ``chunk[lo:hi]`` (-1 if none): the leftmost
    start of a run ``\\.{2,}``, ``\\*+``, ``[?!]+`` or of ``--`` or one closing character
    that ends the span, found by scanning back from ``hi`` (no regex search from ``lo``)."""
    last = chunk[hi - 1]
    if last in _TRAILING_SINGLE:
        return hi - 1
    if last == "-":
        return hi - 2 if hi - lo >= 2 and chunk[hi - 2] == "-" else -1
    if last == ".":
        run = "."
    elif last == "*":
        run = "*"
    elif last in "?!":
        run = "?!"
    else:
        return -1
    start = hi - 1
    while start > lo and chunk[start - 1] in run:
        start -= 1
    if last == "." and hi - start < 2:
        return -1
    return start


def _is_apostrophe_word(chunk: str, lo: int = 0, hi: Optional[int] = None) -> bool:
    """True for words whose leading/trailing apostrophe belongs to them ("'s", "'70s", "ol'")."""
    hi = len(chunk) if hi is None else hi
    if hi - lo > _APOSTROPHE_WORD_MAX:
        return False
    word = chunk[lo:hi]
    lowered = word.lower()
    return (_APOSTROPHE_WORD_RE.fullmatch(word) is not None or lowered == "n't"
            or lowered in _TRAILING_APOSTROPHE_WORDS)


def _contraction_cut(chunk: str, lo: int, hi: int) -> Optional[int]:
    """Where a treebank contraction suffix starts in the word ``chunk[lo:hi]`` (None if none):
    ``cannot`` -> ``can|not``; else the shortest suffix ``n't 's 're 'll 've 'd 'm`` preceded
    by a non-empty stem that does not end in an apostrophe."""
    if hi - lo == 6 and chunk[lo:hi].lower() == "cannot":
        return lo + 3
    if _is_apostrophe_word(chunk, lo, hi):
        return None
    for length in (2, 3):
        cut = hi - length
        if cut - lo >= 1 and chunk[cut - 1] != "'" and _CONTRACTION_SUFFIX_RE.fullmatch(chunk, cut, hi):
            return cut
    return None


_DEFAULT_TOKENIZER = Tokenizer()


def tokenize(text: str, lowercase: bool = True, max_tokens: Optional[int] = None) -> List[str]:
    """Tokenize ``text`` with :class:`Tokenizer` (PTB / SST style, lowercased by default;
    ``max_tokens`` as in :meth:`Tokenizer.tokenize`).

    >>> tokenize("I hate the movie, though the plot's interesting.")
    ['i', 'hate', 'the', 'movie', ',', 'though', 'the', 'plot', "'s", 'interesting', '.']
    """
    if lowercase:
        return _DEFAULT_TOKENIZER.tokenize(text, max_tokens)
    return Tokenizer(lowercase=False).tokenize(text, max_tokens)


#: Keras' default ``Tokenizer(filters=...)``: characters replaced by the split character.
KERAS_DEFAULT_FILTERS = '!"#$%&()*+,-./:;<=>?@[\\]^_`{|}~\t\n'


class KerasStyleTokenizer:
    """Splits text as ``keras.preprocessing.text.Tokenizer`` does with these settings (lowercase,
    replace each character of ``filters`` by ``split``, split at ``split``; or one token per
    character with ``char_level``). The translation table is built once, here."""

    def __init__(self, filters: str = KERAS_DEFAULT_FILTERS, lower: bool = True, split: str = " ",
                 char_level: bool = False):
        for name, value, kind in (("filters", filters, str), ("split", split, str), ("lower", lower, bool),
                                  ("char_level", char_level, bool)):
            if not isinstance(value, kind):
                raise TypeError(f"{name} must be a {kind.__name__}, got {type(value).__name__} {value!r:.40}")
        if not split:
            raise ValueError("split must be a non-empty string (the character words are split at)")
        self.filters, self.lower, self.split, self.char_level = filters, lower, split, char_level
        self._table = dict.fromkeys(map(ord, filters), split)
        self._separator = re.compile(re.escape(split))

    def __repr__(self) -> str:
        return (f"KerasStyleTokenizer(filters={self.filters!r:.60}, lower={self.lower}, split={self.split!r}, "
                f"char_level={self.char_level})")

    def tokenize(self, text: str, max_tokens: Optional[int] = None) -> List[str]:
        """The tokens of ``text``; ``max_tokens`` as in :meth:`Tokenizer.tokenize`."""
        _check_max_tokens(max_tokens)
        if self.lower:
            text = text.lower()
        if self.char_level:
            if max_tokens is not None and len(text) > max_tokens:
                raise TooManyTokensError(max_tokens)
            return list(text)
        text = text.translate(self._table)
        if max_tokens is None:
            return [w for w in text.split(self.split) if w]
        tokens: List[str] = []
        for block in _blocks(text, self._separator, min(_BLOCK_CHARS, max_tokens + 1)):
            tokens.extend(w for w in block.split(self.split) if w)
            if len(tokens) > max_tokens:
                raise TooManyTokensError(max_tokens)
        return tokens


class VocabularyError(ValueError):
    """A vocabulary file or definition is malformed."""


_VOCAB_FORMAT = "keras_lrp.vocabulary"
_VOCAB_VERSION = 1


class Vocabulary:
    """Token <-> integer id map with reserved ids ``0 = <pad>`` and ``1 = <unk>``.

    Args:
        tokens: the vocabulary's words in id order, WITHOUT the two reserved tokens; the first gets
            id 2. Must be unique non-empty strings.
        counts: optional training-corpus frequency of each token (kept in the JSON for reference).

    Build one from a corpus with :meth:`from_corpus`, save with :meth:`save`, load with :meth:`load`.
    """

    def __init__(self, tokens: Iterable[str], counts: Optional[Mapping[str, int]] = None):
        tokens = list(tokens)
        seen: Dict[str, int] = {}
        for i, tok in enumerate(tokens):
            if not isinstance(tok, str) or not tok:
                raise VocabularyError(f"token #{i} is {tok!r}; every token must be a non-empty str")
            if tok in (PAD_TOKEN, UNK_TOKEN):
                raise VocabularyError(f"token #{i} is the reserved token {tok!r}; pass only real words "
                                      f"(ids {PAD_ID} and {UNK_ID} are added automatically)")
            if tok in seen:
                raise VocabularyError(f"token {tok!r} appears twice (#{seen[tok]} and #{i}); "
                                      "tokens must be unique")
            seen[tok] = i
        self._itos: List[str] = [PAD_TOKEN, UNK_TOKEN] + tokens
        self._stoi: Dict[str, int] = {t: i for i, t in enumerate(self._itos)}
        self.counts: Dict[str, int] = dict(counts) if counts else {}

    @classmethod
    def from_corpus(cls, sentences: Iterable[Sequence[str]], min_freq: int = 1,
                    max_size: Optional[int] = None) -> "Vocabulary":
        """Vocabulary of the tokens of ``sentences`` seen at least ``min_freq`` times.

        Tokens are ordered by decreasing frequency, ties alphabetically (deterministic); ``max_size``
        caps the number of real words (reserved ids not counted).
        """
        if not isinstance(min_freq, int) or min_freq < 1:
            raise ValueError(f"min_freq must be an int >= 1, got {min_freq!r}")
        if max_size is not None and (not isinstance(max_size, int) or max_size < 1):
            raise ValueError(f"max_size must be None or an int >= 1, got {max_size!r}")
        counter: Counter = Counter()
        for sent in sentences:
            if isinstance(sent, str):
                raise TypeError("from_corpus expects token lists, got a str; tokenize it first")
            counter.update(sent)
        kept = sorted((t for t, n in counter.items() if n >= min_freq), key=lambda t: (-counter[t], t))
        if max_size is not None:
            kept = kept[:max_size]
        return cls(kept, counts={t: counter[t] for t in kept})

    # ---- mapping ---------------------------------------------------------------------------
    def __len__(self) -> int:
        """Number of ids, reserved ones included (= rows of the embedding matrix)."""
        return len(self._itos)

    def __contains__(self, token: str) -> bool:
        return token in self._stoi and self._stoi[token] > UNK_ID

    def __eq__(self, other) -> bool:
        return isinstance(other, Vocabulary) and other._itos == self._itos

    def __repr__(self) -> str:
        return f"Vocabulary({len(self)} ids incl. {PAD_TOKEN} and {UNK_TOKEN})"

    @property
    def tokens(self) -> List[str]:
        """All tokens in id order, reserved ones included."""
        return list(self._itos)

    def token_to_id(self, token: str) -> int:
        """Id of ``token``; ``UNK_ID`` when it is not in the vocabulary."""
        return self._stoi.get(token, UNK_ID) if token not in (PAD_TOKEN, UNK_TOKEN) else UNK_ID

    def id_to_token(self, idx: int) -> str:
        if not 0 <= int(idx) < len(self._itos):
            raise IndexError(f"id {idx} out of range for a vocabulary of {len(self)} ids")
        return self._itos[int(idx)]

    def encode(self, tokens: Sequence[str]) -> Tuple[np.ndarray, np.ndarray]:
        """Map tokens to ids.

        Returns:
            ``(ids, oov)``: ``ids`` int32 array of shape (time,), ``oov`` bool array of shape
            (time,), True where the token is not in the vocabulary (its id is ``UNK_ID``).
        """
        if isinstance(tokens, str):
            raise TypeError("encode expects a list of tokens, got a str; call tokenize(text) first")
        ids = np.fromiter((self.token_to_id(t) for t in tokens), dtype=np.int32, count=len(tokens))
        return ids, ids == UNK_ID

    def decode(self, ids: Iterable[int]) -> List[str]:
        """Tokens of ``ids`` (padding included as ``<pad>``)."""
        return [self.id_to_token(i) for i in ids]

    # ---- persistence -----------------------------------------------------------------------
    def to_json_dict(self) -> dict:
        return {
            "format": _VOCAB_FORMAT,
            "version": _VOCAB_VERSION,
            "pad_id": PAD_ID, "unk_id": UNK_ID,
            "tokens": self._itos,
            "counts": [self.counts.get(t, 0) for t in self._itos] if self.counts else None,
        }

    def save(self, path: Union[str, os.PathLike]) -> None:
        """Write the vocabulary as UTF-8 JSON (one token per id, reserved ones first), through a
        new temporary file renamed over ``path`` (:class:`keras_lrp.safe_io.AtomicFile`)."""
        from .safe_io import atomic_open

        with atomic_open(path, "w") as f:
            json.dump(self.to_json_dict(), f, ensure_ascii=False, indent=0)
            f.write("\n")

    @classmethod
    def from_json_dict(cls, data, source: str = "vocabulary") -> "Vocabulary":
        def bad(msg: str) -> VocabularyError:
            return VocabularyError(f"{source}: {msg}. Re-create it with Vocabulary(...).save(path).")

        if not isinstance(data, dict):
            raise bad(f"expected a JSON object, found {type(data).__name__}")
        if data.get("format") != _VOCAB_FORMAT:
            raise bad(f"'format' is {data.get('format')!r}, expected {_VOCAB_FORMAT!r}")
        if data.get("version") != _VOCAB_VERSION:
            raise bad(f"unsupported 'version' {data.get('version')!r} (this keras_lrp reads "
                      f"{_VOCAB_VERSION})")
        tokens = data.get("tokens")
        if not isinstance(tokens, list) or len(tokens) < 2:
            raise bad("'tokens' must be a list starting with the reserved tokens "
                      f"[{PAD_TOKEN!r}, {UNK_TOKEN!r}]")
        if data.get("pad_id", PAD_ID) != PAD_ID or data.get("unk_id", UNK_ID) != UNK_ID \
                or tokens[PAD_ID] != PAD_TOKEN or tokens[UNK_ID] != UNK_TOKEN:
            raise bad(f"ids 0 and 1 must be {PAD_TOKEN!r} and {UNK_TOKEN!r}, found "
                      f"{tokens[0]!r} and {tokens[1]!r}")
        counts = data.get("counts")
        if counts is not None and (not isinstance(counts, list) or len(counts) != len(tokens)
                                   or not all(isinstance(c, int) for c in counts)):
            raise bad("'counts' must be null or a list of ints as long as 'tokens'")
        try:
            return cls(tokens[2:], counts=dict(zip(tokens[2:], counts[2:])) if counts else None)
        except VocabularyError as e:
            raise bad(str(e)) from None

    @classmethod
    def load(cls, path: Union[str, os.PathLike]) -> "Vocabulary":
        """Read a vocabulary written by :meth:`save`; raises :class:`VocabularyError` if malformed."""
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"vocabulary file not found: {path}")
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except json.JSONDecodeError as e:
            raise VocabularyError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: "
                                  f"{e.msg}). Is it a vocabulary written by Vocabulary.save?") from None
        except UnicodeDecodeError as e:
            raise VocabularyError(f"{path}: not UTF-8 text ({e.reason}); a vocabulary is a UTF-8 "
                                  "JSON file written by Vocabulary.save") from None
        except RecursionError:   # JSON nested thousands deep: the decoder recurses per level
            raise VocabularyError(f"{path}: JSON nested too deeply; a vocabulary is a flat JSON object "
                                  "written by Vocabulary.save") from None
        return cls.from_json_dict(data, source=path)


# ------------------------------------------------------------------------------------------------
# Keras's Tokenizer (tf_keras / keras.preprocessing.text), read as data

#: Largest id a word index may hold: ids are int32 (an Embedding row each).
MAX_ID = 2**31 - 2
#: Entries a plain word index may have for unknown words, tried in this order.
OOV_KEYS = ("<unk>", "[UNK]", "<UNK>", "<OOV>", "<oov>", "UNK", "[OOV]")

# The settings of a Tokenizer's to_json() that change how text is split or looked up: (types, default).
_KERAS_SETTINGS = {"filters": ((str,), KERAS_DEFAULT_FILTERS), "lower": ((bool,), True), "split": ((str,), " "),
                   "char_level": ((bool,), False), "oov_token": ((str, type(None)), None),
                   "num_words": ((int, type(None)), None)}


class WordIds(NamedTuple):
    """Words looked up in a word index: ``ids`` (k,) int32 and ``oov`` (k,) bool (True where the
    word got the unknown-word id) for the ``k`` words that got an id; ``kept`` (n,) bool says which
    of the ``n`` words those are (Keras leaves the others out)."""

    ids: np.ndarray
    oov: np.ndarray
    kept: np.ndarray


class KerasTokenizer:
    """A Keras ``Tokenizer`` (``tf_keras.preprocessing.text.Tokenizer``, Keras 2's
    ``keras.preprocessing.text.Tokenizer``) as keras_lrp uses it: :meth:`tokenize` splits text and
    :meth:`lookup` maps the words to ids exactly as its ``texts_to_sequences`` does.

    * splitting: lowercase (``lower``), every character of ``filters`` replaced by ``split``, split
      at ``split``, empty strings dropped; ``char_level``: one token per character (no filters);
      a custom ``analyzer`` (a Tokenizer object's) replaces all of this;
    * lookup: a word's id is ``word_index[word]``; ids ``>= num_words`` (when ``num_words`` is set)
      and words not in ``word_index`` get the id of ``oov_token`` when the tokenizer has one, else
      they are **left out** of the sequence, as Keras leaves them out (:attr:`WordIds.kept`).

    Build one from the Tokenizer object (:meth:`from_keras`), its ``to_json()`` text or file
    (:meth:`from_json`, :meth:`load`), or a plain ``word_index`` dict (:meth:`from_word_index`).
    ``len(tokenizer)`` is the number of ids an Embedding needs.
    """

    def __init__(self, word_index: Mapping[str, int], *, num_words: Optional[int] = None,
                 filters: str = KERAS_DEFAULT_FILTERS, lower: bool = True, split: str = " ",
                 char_level: bool = False, oov_token: Optional[str] = None, oov_id: Optional[int] = None,
                 analyzer=None, source: str = "the tokenizer"):
        self.word_index = _checked_word_index(word_index, source, "its word_index")
        if num_words is not None and (isinstance(num_words, bool) or not isinstance(num_words, int)):
            raise VocabularyError(f"{source}: num_words is {num_words!r}; it is None or an integer")
        self.num_words = num_words if num_words else None      # Keras: 0 and None both mean no limit
        self.oov_token = oov_token
        if oov_id is None and oov_token is not None:
            if oov_token not in self.word_index:
                raise VocabularyError(f"{source}: its oov_token {quote(oov_token)} is not in its word_index; was the "
                                      "tokenizer fitted (fit_on_texts) after setting it?")
            oov_id = self.word_index[oov_token]
        if oov_id is not None and (isinstance(oov_id, bool) or not isinstance(oov_id, (int, np.integer))
                                   or not 0 <= oov_id <= MAX_ID):
            raise VocabularyError(f"{source}: the unknown-word id {oov_id!r} is not an integer 0..{MAX_ID:,}")
        self.oov_id = None if oov_id is None else int(oov_id)
        self.splitter = KerasStyleTokenizer(filters=filters, lower=lower, split=split, char_level=char_level)
        if analyzer is not None and not callable(analyzer):
            raise TypeError(f"analyzer must be a callable str -> list of str, got {type(analyzer).__name__}")
        self.analyzer = analyzer
        size = max(self.word_index.values()) + 1
        self._size = min(size, self.num_words) if self.num_words else size

    def __repr__(self) -> str:
        return (f"KerasTokenizer({len(self.word_index):,} words, num_words={self.num_words}, "
                f"oov_token={self.oov_token!r}, lower={self.splitter.lower}, split={self.splitter.split!r}, "
                f"char_level={self.splitter.char_level})")

    def __len__(self) -> int:
        """The number of ids (rows an Embedding needs)."""
        return self._size

    # ---- construction --------------------------------------------------------------------------
    @staticmethod
    def is_keras_tokenizer(obj) -> bool:
        """Whether ``obj`` looks like a Keras ``Tokenizer`` object (fitted or not)."""
        return all(hasattr(obj, name) for name in ("word_index", "texts_to_sequences", "filters", "split"))

    @classmethod
    def from_keras(cls, tokenizer) -> "KerasTokenizer":
        """From a Keras ``Tokenizer`` object (its settings, ``word_index`` and ``analyzer``)."""
        if not cls.is_keras_tokenizer(tokenizer):
            raise TypeError(f"expected a Keras Tokenizer (tf_keras.preprocessing.text.Tokenizer), got "
                            f"{type(tokenizer).__name__}")
        if not tokenizer.word_index:
            raise VocabularyError("the Keras Tokenizer has an empty word_index: fit it first "
                                  "(tokenizer.fit_on_texts(texts)), or load the one the model was trained with")
        settings = {name: getattr(tokenizer, name, default) for name, (_, default) in _KERAS_SETTINGS.items()}
        _check_settings(settings, "the Keras Tokenizer", "")
        return cls(tokenizer.word_index, analyzer=getattr(tokenizer, "analyzer", None),
                   source="the Keras Tokenizer", **settings)

    @classmethod
    def from_word_index(cls, word_index: Mapping[str, int], oov_id: Optional[int] = None,
                        source: str = "the word_index") -> "KerasTokenizer":
        """From a plain ``{word: id}`` dict, split like a default Keras Tokenizer. Unknown words get
        ``oov_id``, else the id of an entry named like an unknown-word token (:data:`OOV_KEYS`),
        else they are left out (a Keras Tokenizer without ``oov_token``)."""
        if oov_id is None and isinstance(word_index, Mapping):
            oov_id = next((word_index[k] for k in OOV_KEYS if k in word_index), None)
        return cls(word_index, oov_id=oov_id, source=source)

    @classmethod
    def from_json(cls, data: Union[str, bytes, Mapping], source: str = "the tokenizer JSON") -> "KerasTokenizer":
        """From a Tokenizer's ``to_json()`` (the text or the parsed dict), or from a plain
        ``word_index`` JSON (``{"word": id, ...}``). Every setting is type-checked.

        Raises:
            VocabularyError: naming ``source`` and what is wrong.
        """
        if isinstance(data, (str, bytes)):
            data = _parse_json(data, source)
        kind = cls.json_kind(data)
        if kind is None:
            raise VocabularyError(f"{source}: not a Keras Tokenizer JSON (tokenizer.to_json()) or a word_index "
                                  "JSON ({\"word\": id, ...})")
        if kind == "word_index JSON":
            return cls.from_word_index(data, source=source)
        config = data["config"]
        settings = {name: config.get(name, default) for name, (_, default) in _KERAS_SETTINGS.items()}
        _check_settings(settings, source, "config.")
        index = config["word_index"]
        if isinstance(index, str):   # to_json() stores the index as a JSON string inside the JSON
            index = _parse_json(index, f"{source}: config.word_index")
        return cls(_checked_word_index(index, source, "config.word_index"), source=source, **settings)

    @staticmethod
    def json_kind(data) -> Optional[str]:
        """``"Keras Tokenizer JSON"``, ``"word_index JSON"`` or None: what parsed JSON ``data`` is."""
        if isinstance(data, dict) and isinstance(data.get("config"), dict) and "word_index" in data["config"]:
            return "Keras Tokenizer JSON"
        if isinstance(data, dict) and data and all(isinstance(v, int) for v in data.values()):
            return "word_index JSON"
        return None

    @classmethod
    def load(cls, path: Union[str, os.PathLike]) -> "KerasTokenizer":
        """From a file holding a Tokenizer's ``to_json()`` (or a plain ``word_index`` JSON)."""
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"tokenizer file not found: {path}")
        with open(path, "rb") as f:
            raw = f.read()
        return cls.from_json(raw, source=path)

    # ---- use -----------------------------------------------------------------------------------
    def tokenize(self, text: str, max_tokens: Optional[int] = None) -> List[str]:
        """The words of ``text`` before lookup (``max_tokens`` as in :meth:`Tokenizer.tokenize`)."""
        if self.analyzer is None:
            return self.splitter.tokenize(text, max_tokens=max_tokens)
        words = [str(w) for w in self.analyzer(text)]
        _check_max_tokens(max_tokens)
        if max_tokens is not None and len(words) > max_tokens:
            raise TooManyTokensError(max_tokens)
        return words

    def lookup(self, words: Sequence[str]) -> WordIds:
        """``words`` mapped to ids as ``texts_to_sequences`` maps them (see the class docstring)."""
        if isinstance(words, str):
            raise TypeError("lookup expects a list of words, got a str; call tokenize(text) first")
        get, limit, oov_id = self.word_index.get, self.num_words, self.oov_id
        found = [get(w) for w in words]
        known = np.array([i is not None and (limit is None or i < limit) for i in found], dtype=bool)
        kept = known if oov_id is None else np.ones(len(found), dtype=bool)
        ids = np.array([i if k else oov_id for i, k in zip(found, known) if k or oov_id is not None],
                       dtype=np.int32).reshape(-1)
        return WordIds(ids, ~known[kept], kept)

    def encode(self, tokens: Sequence[str]) -> Tuple[np.ndarray, np.ndarray]:
        """``(ids, oov)`` of the words that get an id (as :meth:`Vocabulary.encode`); the words
        Keras leaves out are not in them."""
        looked_up = self.lookup(tokens)
        return looked_up.ids, looked_up.oov

    def texts_to_sequences(self, texts: Iterable[str]) -> List[List[int]]:
        """As Keras's ``Tokenizer.texts_to_sequences``."""
        return [self.lookup(self.tokenize(t)).ids.tolist() for t in texts]


def _check_settings(settings: dict, source: str, prefix: str) -> None:
    """Types of a Keras Tokenizer's settings (as ``to_json()`` writes them)."""
    for name, (types, _) in _KERAS_SETTINGS.items():
        value = settings[name]
        if not isinstance(value, types) or (name == "num_words" and isinstance(value, bool)):
            want = " or ".join("null" if t is type(None) else {"str": "a string", "bool": "true/false",
                                                                 "int": "an integer"}[t.__name__] for t in types)
            shown = json.dumps(value)[:40] if isinstance(value, (str, int, float, bool, type(None))) else \
                type(value).__name__
            raise VocabularyError(f"{source}: {prefix}{name} is {shown}; a Keras Tokenizer has {want} there")
    if not settings["split"]:
        raise VocabularyError(f"{source}: {prefix}split is empty; it is the character words are split at")


def _checked_word_index(data, source: str, what: str) -> Dict[str, int]:
    if not isinstance(data, Mapping) or not data:
        raise VocabularyError(f"{source}: {what} must map words to ids >= 0 ({{\"word\": 1, ...}}); "
                              f"got {'an empty one' if isinstance(data, Mapping) else type(data).__name__}")
    for word, i in data.items():
        if not isinstance(word, str):
            raise VocabularyError(f"{source}: {what} has the key {word!r:.40}; words are strings")
        if isinstance(i, (bool, np.bool_)) or not isinstance(i, (int, np.integer)) or not 0 <= i <= MAX_ID:
            shown = repr(i) if not isinstance(i, int) or i.bit_length() < 64 else "a number over 2**63"
            raise VocabularyError(f"{source}: {what} maps {quote(word)} to {shown:.80}; ids must be integers "
                                  f"0..{MAX_ID:,}")
    return {w: int(i) for w, i in data.items()}


def _parse_json(raw: Union[str, bytes], source: str):
    """Parsed JSON, or a VocabularyError naming ``source`` (bad JSON, not UTF-8, nested too deeply)."""
    try:
        return json.loads(raw.decode("utf-8") if isinstance(raw, bytes) else raw)
    except UnicodeDecodeError as e:
        raise VocabularyError(f"{source}: not UTF-8 text ({e.reason})") from None
    except ValueError as e:      # JSONDecodeError, an int of over 4,300 digits
        raise VocabularyError(f"{source}: not a JSON file ({str(e)[:200]}); expected a Keras Tokenizer JSON "
                              "(tokenizer.to_json())") from None
    except RecursionError:
        raise VocabularyError(f"{source}: JSON nested too deeply; a tokenizer is a flat JSON object") from None
