"""The vocabulary files ``--vocab`` accepts, and the tokenizer that goes with each.

* a keras-lrp vocabulary (:meth:`keras_lrp.text.Vocabulary.save`): the PTB-style
  :class:`keras_lrp.text.Tokenizer`, unknown words -> id 1;
* a Keras ``Tokenizer`` saved with ``tokenizer.to_json()`` (``{"class_name": "Tokenizer",
  "config": {"word_index": "<JSON string>", "filters": ..., "lower": ..., ...}}``);
* a plain ``word_index`` (``{"word": id, ...}``, e.g. ``json.dump(tokenizer.word_index, f)``): split
  like a default Keras ``Tokenizer`` (lowercased, punctuation removed, split at whitespace).

The two Keras formats are read by :class:`keras_lrp.text.KerasTokenizer`, which splits and looks up
words exactly as Keras's ``texts_to_sequences`` does: a word not in the index (or past ``num_words``)
gets the ``oov_token``'s id when the tokenizer has one, else it is left out of the sequence, as Keras
leaves it out (the CLI lists it as dropped). A plain ``word_index`` whose entries include an
unknown-word token (``<OOV>``, ``<unk>``, ``[UNK]``, ...) uses that entry's id.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

from ..text import KerasTokenizer


class VocabFileError(ValueError):
    """A ``--vocab`` file is none of the accepted formats."""


@dataclass
class LoadedVocabulary:
    vocabulary: object     # .encode(tokens) -> (ids, oov); len() = number of ids
    tokenizer: object      # .tokenize(text) -> tokens (a KerasTokenizer also looks them up)
    kind: str              # "keras-lrp vocabulary", "Keras Tokenizer JSON", "word_index JSON"


def load_vocabulary(path: str) -> LoadedVocabulary:
    """Read ``--vocab``: a keras-lrp vocabulary, a Keras ``Tokenizer.to_json()`` file or a plain
    ``word_index`` JSON (see the module docstring). Its settings and ids are checked here, before
    TensorFlow is imported.

    Raises:
        FileNotFoundError, VocabFileError, keras_lrp.text.VocabularyError: naming ``path``.
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
    kind = KerasTokenizer.json_kind(data)
    if kind is None:
        raise VocabFileError(f"--vocab {path}: not a vocabulary; expected a keras-lrp vocabulary (Vocabulary.save), "
                             "a Keras Tokenizer JSON (tokenizer.to_json()) or a word_index JSON ({\"word\": id})")
    tokenizer = KerasTokenizer.from_json(data, source=f"--vocab {path}")
    return LoadedVocabulary(tokenizer, tokenizer, kind)
