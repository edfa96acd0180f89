"""The vocabulary files ``--vocab`` accepts, and the tokenizer that goes with each.

* a keras-lrp vocabulary (:meth:`keras_lrp.text.Vocabulary.save`): the PTB-style
  :class:`keras_lrp.text.Tokenizer`, unknown words -> id 1;
* a Keras ``Tokenizer`` saved with ``tokenizer.to_json()`` (``{"class_name": "Tokenizer",
  "config": {"word_index": "<JSON string>", "filters": ..., "lower": ..., ...}}``): text is split as
  that Keras tokenizer splits it (``lower``, ``filters``, ``split``, ``char_level``), ids are its
  ``word_index`` (``num_words`` respected);
* a plain ``word_index`` (``{"word": id, ...}``, e.g. ``json.dump(tokenizer.word_index, f)``): split
  like a default Keras ``Tokenizer`` (lowercased, punctuation removed, split at whitespace).

For the two Keras formats a word not in the index gets the id of the tokenizer's ``oov_token``
when it has one, else id 0: Keras' ``texts_to_sequences`` drops such words, and with
``Embedding(mask_zero=True)`` id 0 is a masked step, which the model skips in the same way
(LRP gives it zero relevance). Such words are reported as unknown.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Dict, Mapping, Optional, Sequence, Tuple

import numpy as np

from ..safe_io import quote
from ..text import KERAS_DEFAULT_FILTERS, KerasStyleTokenizer

#: Largest id a vocabulary may hold: ids are int32 (an Embedding row each).
MAX_ID = 2**31 - 2


class VocabFileError(ValueError):
    """A ``--vocab`` file is none of the accepted formats."""


class WordIndex:
    """Token -> id map of a Keras tokenizer: ``encode`` gives ``(ids (time,), oov (time,))``."""

    def __init__(self, word_index: Mapping[str, int], oov_token: Optional[str] = None,
                 num_words: Optional[int] = None):
        self.word_index = dict(word_index)
        self.num_words = num_words
        self.oov_id = self.word_index.get(oov_token, 0) if oov_token is not None else 0
        size = max(self.word_index.values(), default=0) + 1
        self.size = min(size, num_words) if num_words else size

    def __len__(self) -> int:
        """The number of ids (rows an embedding needs)."""
        return self.size

    def encode(self, tokens: Sequence[str]) -> Tuple[np.ndarray, np.ndarray]:
        ids = np.array([self.word_index.get(t, -1) for t in tokens], np.int64).reshape(-1)
        oov = (ids < 0) | ((ids >= self.num_words) if self.num_words else False)
        return np.where(oov, self.oov_id, ids).astype(np.int32), np.asarray(oov, bool)


@dataclass
class LoadedVocabulary:
    vocabulary: object     # .encode(tokens) -> (ids, oov); len() = number of ids
    tokenizer: object      # .tokenize(text) -> tokens
    kind: str              # "keras-lrp vocabulary", "Keras Tokenizer JSON", "word_index JSON"


def _word_index(data, path: str, what: str) -> Dict[str, int]:
    if not isinstance(data, dict) or not data:
        raise VocabFileError(f"--vocab {path}: {what} must map words to ids >= 0 ({{\"word\": 1, ...}})")
    for word, i in data.items():
        if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i <= MAX_ID:
            shown = repr(i) if not isinstance(i, int) or i.bit_length() < 64 else "a number over 2**63"
            raise VocabFileError(f"--vocab {path}: {what} maps {quote(word)} to {shown:.80}; ids must be integers "
                                 f"0..{MAX_ID:,}")
    return data


# The settings of a Keras Tokenizer JSON that change how text is split or looked up: (types, default).
_KERAS_SETTINGS = {"filters": ((str,), KERAS_DEFAULT_FILTERS), "lower": ((bool,), True), "split": ((str,), " "),
                   "char_level": ((bool,), False), "oov_token": ((str, type(None)), None),
                   "num_words": ((int, type(None)), None)}


def _keras_settings(config: dict, path: str) -> dict:
    settings = {}
    for name, (types, default) in _KERAS_SETTINGS.items():
        value = config.get(name, default)
        if not isinstance(value, types) or (name == "num_words" and isinstance(value, bool)):
            want = " or ".join("null" if t is type(None) else {"str": "a string", "bool": "true/false",
                                                                 "int": "an integer"}[t.__name__] for t in types)
            raise VocabFileError(f"--vocab {path}: config.{name} is {json.dumps(value)[:40]}; a Keras Tokenizer "
                                 f"JSON has {want} there")
        settings[name] = value
    if not settings["split"]:
        raise VocabFileError(f"--vocab {path}: config.split is empty; it is the character words are split at")
    return settings


def load_vocabulary(path: str) -> LoadedVocabulary:
    """Read ``--vocab``: a keras-lrp vocabulary, a Keras ``Tokenizer.to_json()`` file or a plain
    ``word_index`` JSON (see the module docstring). Its settings and ids are checked here, before
    TensorFlow is imported.

    Raises:
        FileNotFoundError, VocabFileError: naming ``path``.
    """
    from ..text import Tokenizer, Vocabulary

    if not os.path.isfile(path):
        raise FileNotFoundError(f"--vocab {path}: no such file")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except ValueError as err:      # JSONDecodeError, UnicodeDecodeError, an int of over 4,300 digits
        raise VocabFileError(f"--vocab {path}: not a JSON file ({str(err)[:200]}); expected a keras-lrp vocabulary, a Keras "
                             "Tokenizer JSON (tokenizer.to_json()) or a word_index JSON") from None
    except RecursionError:
        raise VocabFileError(f"--vocab {path}: JSON nested too deeply; a vocabulary is a flat JSON object") from None
    if isinstance(data, dict) and data.get("format") == "keras_lrp.vocabulary":
        return LoadedVocabulary(Vocabulary.from_json_dict(data, source=path), Tokenizer(), "keras-lrp vocabulary")
    if isinstance(data, dict) and isinstance(data.get("config"), dict) and "word_index" in data["config"]:
        config = data["config"]
        settings = _keras_settings(config, path)
        index = config["word_index"]
        if isinstance(index, str):   # to_json() stores the index as a JSON string inside the JSON
            try:
                index = json.loads(index)
            except ValueError:
                raise VocabFileError(f"--vocab {path}: config.word_index is not valid JSON") from None
            except RecursionError:
                raise VocabFileError(f"--vocab {path}: config.word_index is JSON nested too deeply") from None
        num_words = settings["num_words"]
        tokenizer = KerasStyleTokenizer(filters=settings["filters"], lower=settings["lower"], split=settings["split"],
                                        char_level=settings["char_level"])
        vocabulary = WordIndex(_word_index(index, path, "config.word_index"), settings["oov_token"],
                               num_words if num_words is not None and num_words > 0 else None)
        return LoadedVocabulary(vocabulary, tokenizer, "Keras Tokenizer JSON")
    if isinstance(data, dict) and data and all(isinstance(v, int) for v in data.values()):
        return LoadedVocabulary(WordIndex(_word_index(data, path, "a word_index")), KerasStyleTokenizer(),
                                "word_index JSON")
    raise VocabFileError(f"--vocab {path}: not a vocabulary; expected a keras-lrp vocabulary (Vocabulary.save), "
                         "a Keras Tokenizer JSON (tokenizer.to_json()) or a word_index JSON ({\"word\": id})")
