"""The shipped SST sentiment models: where they are, and how to load one for LRP.

The bundle is ``models/{name}_bilstm.keras`` + ``models/{name}_bilstm.json`` (metadata) +
``embeddings/{name}_vocab.json`` + ``embeddings/{name}_embeddings.npy``, at the top of the source
checkout; ``pip install .`` copies both folders to ``<prefix>/share/keras-lrp/``.
:func:`shipped_models_dir` is the one place that knows where to look.
"""
from __future__ import annotations

import os
import sys
import sysconfig
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple, Union

from ..npy import load_npy
from ..text import Tokenizer, Vocabulary

__all__ = ["SentimentModel", "load_pretrained", "shipped_models_dir", "ShippedModelNotFoundError"]

_METADATA_FORMAT = "keras_lrp.text_classifier"
#: A file every shipped-models folder holds.
_MARKER = "sst5_bilstm.json"


class ShippedModelNotFoundError(FileNotFoundError):
    """The shipped models are neither in the source checkout nor where ``pip install`` puts them."""


def _candidate_dirs() -> List[str]:
    """Folders that may hold the shipped models, in the order they are tried."""
    out = []
    if os.environ.get("KERAS_LRP_HOME"):
        out.append(os.path.join(os.environ["KERAS_LRP_HOME"], "models"))
    # A source checkout (also an editable install): <checkout>/keras_lrp/sst/pretrained.py.
    checkout = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out.append(os.path.join(checkout, "models"))
    # A regular install: setup.cfg's data_files go to <data scheme path>/share/keras-lrp/models,
    # the environment's prefix (venv, conda, system) or, for `pip install --user`, the user base.
    prefixes = [sysconfig.get_path("data"), sys.prefix, sys.exec_prefix]
    try:
        prefixes.append(sysconfig.get_path("data", f"{os.name}_user"))
    except KeyError:  # pragma: no cover - a platform without a user scheme
        pass
    for prefix in prefixes:
        d = os.path.join(prefix, "share", "keras-lrp", "models")
        if d not in out:
            out.append(d)
    return out


def shipped_models_dir() -> str:
    """The folder of the shipped models' metadata files (``sst5_bilstm.json``, ``sst2_bilstm.json``).

    Looked for in ``$KERAS_LRP_HOME/models``, then the source checkout's ``models/``, then
    ``share/keras-lrp/models`` under the installation prefix (``sysconfig.get_path("data")``, the
    user base for ``pip install --user``).

    Raises:
        ShippedModelNotFoundError: naming every folder tried.
    """
    candidates = _candidate_dirs()
    for c in candidates:
        if os.path.isfile(os.path.join(c, _MARKER)):
            return os.path.normpath(c)
    raise ShippedModelNotFoundError(
        "the shipped models were not found (looked in " + ", ".join(candidates) + "); install keras-lrp "
        "with `pip install .` from its source folder, set KERAS_LRP_HOME to a folder holding models/ and "
        "embeddings/, or pass your own model")

@dataclass
class SentimentModel:
    """A trained sentiment classifier split for LRP: tokenizer -> vocabulary -> embeddings -> model.

    Attributes:
        model: Keras model on embedding vectors (batch, time, emb_dim) -> class scores (batch, classes)
            (logits); this is the model to explain.
        vocabulary: token ids (0 = padding, 1 = unknown).
        embeddings: float32 matrix (vocab size, emb_dim); row ``ids[t]`` is the vector of token t.
        tokenizer: the tokenizer the model was trained with.
        class_names: name of each output class.
        metadata: the full metadata JSON (accuracies, training settings).
    """

    model: object
    vocabulary: "Vocabulary"
    embeddings: "object"
    tokenizer: Tokenizer
    class_names: Tuple[str, ...]
    metadata: dict

    def embed(self, text: Union[str, Sequence[str]]):
        """Tokens, vectors and OOV flags of one text.

        Args:
            text: raw text (tokenized here) or an already tokenized list of tokens.

        Returns:
            ``(tokens, vectors, oov)``: list of T tokens, float32 array (1, T, emb_dim), bool (T,).
        """
        tokens = self.tokenizer.tokenize(text) if isinstance(text, str) else list(text)
        if not tokens:
            raise ValueError(f"no tokens in {text!r}; give at least one word")
        ids, oov = self.vocabulary.encode(tokens)
        return tokens, self.embeddings[ids][None], oov

    def predict(self, text: Union[str, Sequence[str]]):
        """Class scores (classes,) of one text."""
        import numpy as np

        _, vectors, _ = self.embed(text)
        return np.asarray(self.model.predict_on_batch(vectors))[0]


def load_pretrained(name: str = "sst5", models_dir: Optional[Union[str, os.PathLike]] = None
                    ) -> SentimentModel:
    """Load a shipped (or :mod:`keras_lrp.sst.train`-trained) sentiment model.

    Args:
        name: ``"sst5"`` / ``"sst2"`` (reads ``{models_dir}/{name}_bilstm.json``), or the path of
            a metadata ``.json`` file.
        models_dir: folder of the metadata files; default :func:`shipped_models_dir` (the source
            checkout's ``models/``, or the installed copy).

    The Keras file is loaded in safe mode; the vocabulary is JSON and the embeddings ``.npy``
    are loaded with ``allow_pickle=False``.
    """
    import json

    import numpy as np

    if str(name).endswith(".json"):
        meta_path = os.fspath(name)
    else:
        folder = os.fspath(models_dir) if models_dir is not None else shipped_models_dir()
        meta_path = os.path.join(folder, f"{name}_bilstm.json")
    if not os.path.isfile(meta_path):
        raise FileNotFoundError(f"model metadata not found: {meta_path}. Shipped models are 'sst5' and "
                                "'sst2'; train others with python -m keras_lrp.sst.train DATA_DIR OUT_DIR")
    try:
        with open(meta_path, encoding="utf-8") as f:
            meta = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{meta_path}: not valid JSON ({e.msg}, line {e.lineno})") from None
    if not isinstance(meta, dict) or meta.get("format") != _METADATA_FORMAT:
        raise ValueError(f"{meta_path}: not a keras_lrp model metadata file (expected "
                         f"\"format\": \"{_METADATA_FORMAT}\")")
    base = os.path.dirname(os.path.abspath(meta_path))
    model_path, vocab_path, emb_path = (os.path.normpath(os.path.join(base, meta[k]))
                                        for k in ("model", "vocabulary", "embeddings"))
    for p in (model_path, vocab_path, emb_path):
        if not os.path.isfile(p):
            raise FileNotFoundError(f"{meta_path} refers to {p}, which does not exist")

    from ..io import load_model

    vocabulary = Vocabulary.load(vocab_path)
    embeddings = load_npy(emb_path)
    if embeddings.ndim != 2 or embeddings.shape[0] != len(vocabulary) or embeddings.dtype != np.float32:
        raise ValueError(f"{emb_path}: expected float32 (vocab size {len(vocabulary)}, emb_dim), found "
                         f"{embeddings.dtype} {embeddings.shape}")
    model = load_model(model_path)     # the checks every model file gets (keras_lrp.io)
    if model.input_shape[-1] != embeddings.shape[1]:
        raise ValueError(f"{model_path} takes {model.input_shape[-1]}-dim vectors but {emb_path} holds "
                         f"{embeddings.shape[1]}-dim embeddings")
    return SentimentModel(model=model, vocabulary=vocabulary, embeddings=embeddings,
                          tokenizer=Tokenizer.from_config(meta.get("tokenizer", {})),
                          class_names=tuple(meta["class_names"]), metadata=meta)
