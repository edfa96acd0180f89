"""Reader of the Stanford Sentiment Treebank (Socher et al. 2013) in its PTB-tree text format.

One tree per line, every node labelled 0 (very negative) ... 4 (very positive)::

    (3 (2 it) (4 (2 's) (4 (3 a) (4 lovely) (2 film))))

The root label is the sentence label; every inner node labels a phrase (a contiguous span of
words). SST-2 (binary) drops the neutral label 2 and maps 0, 1 -> 0 (negative), 3, 4 -> 1 (positive).

Leaf words are passed through :class:`keras_lrp.text.Tokenizer` one by one, so the tokens of a tree
are exactly the tokens the same tokenizer gives for the sentence typed as plain text.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

from ..text import Tokenizer

__all__ = ["Tree", "SSTSentence", "SSTFormatError", "parse_tree", "read_sst", "to_binary",
           "iter_phrases", "find_sst_dir", "SST5_CLASS_NAMES", "SST2_CLASS_NAMES"]

SST5_CLASS_NAMES = ("very negative", "negative", "neutral", "positive", "very positive")
SST2_CLASS_NAMES = ("negative", "positive")

# Only ASCII whitespace separates tree tokens: three SST leaves contain a no-break space ("8\xa01\/2").
_TOKEN_RE = re.compile(r"\(|\)|[^ \t\r\n\f\v()]+")
_LABELS = frozenset("01234")


class SSTFormatError(ValueError):
    """A line of an SST file is not a well-formed labelled PTB tree."""


class Tree:
    """A node of a labelled PTB tree: a leaf holds ``word``, an inner node holds ``children``."""

    __slots__ = ("label", "children", "word")

    def __init__(self, label: int, children: Optional[List["Tree"]] = None, word: Optional[str] = None):
        self.label = label
        self.children: List["Tree"] = children if children is not None else []
        self.word = word

    def __repr__(self) -> str:
        if self.is_leaf:
            return f"({self.label} {self.word})"
        return f"({self.label} {' '.join(map(repr, self.children))})"

    def __eq__(self, other) -> bool:
        return isinstance(other, Tree) and repr(self) == repr(other)

    @property
    def is_leaf(self) -> bool:
        return self.word is not None

    def leaves(self) -> List[str]:
        """The words under this node, left to right."""
        out: List[str] = []
        stack = [self]
        while stack:
            node = stack.pop()
            if node.is_leaf:
                out.append(node.word)
            else:
                stack.extend(reversed(node.children))
        return out

    def spans(self) -> List[Tuple[int, int, int]]:
        """``(start, end, label)`` over leaf indices (end exclusive) of every node, root first."""
        out: List[Tuple[int, int, int]] = []

        def visit(node: "Tree", start: int) -> int:
            idx = len(out)
            out.append((start, start, node.label))
            if node.is_leaf:
                end = start + 1
            else:
                end = start
                for child in node.children:
                    end = visit(child, end)
            out[idx] = (start, end, node.label)
            return end

        visit(self, 0)
        return out


def parse_tree(line: str, source: str = "<string>", lineno: int = 1) -> Tree:
    """Parse one labelled PTB tree such as ``(3 (2 it) (4 (2 's) (3 fine)))``.

    Raises:
        SSTFormatError: naming ``source`` and ``lineno``, when the tree is malformed.
    """
    tokens = _TOKEN_RE.findall(line)

    def fail(msg: str, index: Optional[int] = None) -> SSTFormatError:
        where = ""
        if index is not None and index < len(tokens):
            col = [m.start() for m in _TOKEN_RE.finditer(line)][index]
            where = f", column {col + 1}"
        return SSTFormatError(f"{source}:{lineno}{where}: malformed SST tree: {msg}. Each line must be "
                              "one tree like '(3 (2 it) (4 (2 works)))' with labels 0-4.")

    if not tokens:
        raise fail("the line is empty")
    n = len(tokens)
    stack: List[Tree] = []   # open inner nodes, innermost last
    root: Optional[Tree] = None
    i = 0
    while i < n:
        tok = tokens[i]
        if root is not None:
            raise fail(f"unexpected text after the tree: {tok!r}", i)
        if tok == "(":
            label_tok = tokens[i + 1] if i + 1 < n else None
            if label_tok is None:
                raise fail("unexpected end of line after '('", i)
            if label_tok not in _LABELS:
                raise fail(f"expected a label 0-4 after '(' but found {label_tok!r}", i + 1)
            nxt = tokens[i + 2] if i + 2 < n else None
            if nxt is None:
                raise fail("unexpected end of line (missing ')')")
            if nxt == ")":
                raise fail("node with a label but no word or children", i + 2)
            node = Tree(int(label_tok))
            if stack:
                stack[-1].children.append(node)
            if nxt == "(":
                stack.append(node)
                i += 2
                continue
            if i + 3 >= n or tokens[i + 3] != ")":
                found = repr(tokens[i + 3]) if i + 3 < n else "end of line"
                raise fail(f"leaf {nxt!r} must be followed by ')', found {found}", i + 2)
            node.word = nxt
            if not stack:
                root = node
            i += 4
        elif tok == ")":
            if not stack:
                raise fail("unexpected ')' (unbalanced parentheses)", i)
            node = stack.pop()
            if not stack:
                root = node
            i += 1
        else:
            raise fail(f"expected '(' but found {tok!r}" if not stack
                       else f"expected '(' or ')' but found {tok!r}", i)
    if root is None:
        raise fail("unexpected end of line (missing ')')")
    return root


def to_binary(label: int) -> Optional[int]:
    """SST-2 label of a five-class label: 0, 1 -> 0; 3, 4 -> 1; 2 (neutral) -> None."""
    if label not in (0, 1, 2, 3, 4):
        raise ValueError(f"SST labels are 0..4, got {label!r}")
    return None if label == 2 else int(label >= 3)


@dataclass
class SSTSentence:
    """One SST sentence.

    Attributes:
        words: the leaf words exactly as in the file (e.g. ``-LRB-``, ``Mr.``).
        tokens: the tokenizer's tokens of the words (``(``, ``mr.``), what the models see.
        label: root label (0..4, or 0/1 for SST-2).
        phrases: when requested, ``(tokens, label)`` of every node of the tree, root first,
            duplicates included (neutral ones dropped for SST-2); else None.
        tree: the parsed tree.
    """

    words: List[str]
    tokens: List[str]
    label: int
    phrases: Optional[List[Tuple[Tuple[str, ...], int]]]
    tree: Tree


def read_sst(path: Union[str, os.PathLike], binary: bool = False, phrases: bool = False,
             tokenizer: Optional[Tokenizer] = None, max_sentences: Optional[int] = None
             ) -> List[SSTSentence]:
    """Read an SST file (``train.txt`` / ``dev.txt`` / ``test.txt``, one PTB tree per line).

    Args:
        path: the file.
        binary: SST-2: drop sentences (and phrases) labelled neutral, map labels to 0/1.
        phrases: also collect every phrase of each tree with its label.
        tokenizer: applied to every leaf word; default ``Tokenizer()`` (lowercased, PTB style).
        max_sentences: read only the first this many trees (before the SST-2 filter).

    Returns:
        the sentences in file order.

    Raises:
        FileNotFoundError: no such file.
        SSTFormatError: a line is not a tree; the message names the file and line.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"SST file not found: {path} (expected train.txt / dev.txt / test.txt "
                                "of the Stanford Sentiment Treebank in PTB tree format)")
    if max_sentences is not None and (not isinstance(max_sentences, int) or max_sentences < 1):
        raise ValueError(f"max_sentences must be None or an int >= 1, got {max_sentences!r}")
    tokenizer = tokenizer or Tokenizer()
    out: List[SSTSentence] = []
    cache: Dict[str, Tuple[str, ...]] = {}
    with open(path, encoding="utf-8") as f:
        n_trees = 0
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            if max_sentences is not None and n_trees >= max_sentences:
                break
            n_trees += 1
            tree = parse_tree(line, source=path, lineno=lineno)
            sent = _sentence_of(tree, binary, phrases, tokenizer, cache)
            if sent is not None:
                out.append(sent)
    return out


def iter_phrases(sentences: Sequence[SSTSentence], unique: bool = True
                 ) -> Iterator[Tuple[Tuple[str, ...], int]]:
    """All ``(tokens, label)`` phrases of sentences read with ``phrases=True``.

    With ``unique`` each distinct token sequence is yielded once, with its first label (the SST
    labels each distinct phrase once, so repeats carry the same label).
    """
    seen = set()
    for sent in sentences:
        if sent.phrases is None:
            raise ValueError("these sentences were read without phrases; use read_sst(..., phrases=True)")
        for toks, label in sent.phrases:
            if unique:
                if toks in seen:
                    continue
                seen.add(toks)
            yield toks, label


def _sentence_of(tree: Tree, binary: bool, want_phrases: bool, tokenizer: Tokenizer,
                 cache: Dict[str, Tuple[str, ...]]) -> Optional[SSTSentence]:
    label = to_binary(tree.label) if binary else tree.label
    if label is None:
        return None
    words = tree.leaves()
    per_word = []
    for w in words:  # memoised: ~160k leaves but ~20k distinct words
        toks = cache.get(w)
        if toks is None:
            toks = cache[w] = tuple(tokenizer.tokenize(w))
        per_word.append(toks)
    tokens = [t for toks in per_word for t in toks]
    phrases = None
    if want_phrases:
        # Leaf index -> token offset (a leaf may give 0 or several tokens, e.g. "No." -> "no .").
        offsets = [0]
        for toks in per_word:
            offsets.append(offsets[-1] + len(toks))
        phrases = []
        for start, end, lab in tree.spans():
            lab = to_binary(lab) if binary else lab
            toks = tuple(tokens[offsets[start]:offsets[end]])
            if lab is not None and toks:
                phrases.append((toks, lab))
    return SSTSentence(words=words, tokens=tokens, label=label, phrases=phrases, tree=tree)


def find_sst_dir() -> Optional[str]:
    """The SST data folder (with ``train.txt``, ``dev.txt``, ``test.txt``): ``$KERAS_LRP_SST_DIR``,
    else ``tests/data/sst`` of a source checkout (a copy of the Stanford Sentiment Treebank shipped
    with the repository, not installed by pip), else None."""
    checkout = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    candidates = [os.environ.get("KERAS_LRP_SST_DIR", ""), os.path.join(checkout, "tests", "data", "sst")]
    for c in candidates:
        if c and os.path.isfile(os.path.join(c, "test.txt")):
            return os.path.normpath(c)
    return None
