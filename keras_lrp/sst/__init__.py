"""The SST sentiment application: the treebank reader, the shipped models and their training.

* :mod:`keras_lrp.sst.reader` -- :func:`read_sst` (PTB trees of the Stanford Sentiment Treebank);
* :mod:`keras_lrp.sst.pretrained` -- :func:`load_pretrained` / :class:`SentimentModel` (the shipped
  bi-LSTMs) and :func:`shipped_models_dir` (where they are, installed or not);
* :mod:`keras_lrp.sst.train` -- ``python -m keras_lrp.sst.train DATA_DIR OUT_DIR`` retrains them.

This package uses only the engine (:mod:`keras_lrp.text`, and Keras to load models); it never
imports :mod:`keras_lrp.experiments` or :mod:`keras_lrp.cli`.
"""
from .pretrained import SentimentModel, ShippedModelNotFoundError, load_pretrained, shipped_models_dir
from .reader import (SST2_CLASS_NAMES, SST5_CLASS_NAMES, SSTFormatError, SSTSentence, Tree, find_sst_dir,
                     iter_phrases, parse_tree, read_sst, to_binary)

__all__ = ["read_sst", "parse_tree", "to_binary", "iter_phrases", "find_sst_dir", "Tree", "SSTSentence",
           "SSTFormatError", "SST5_CLASS_NAMES", "SST2_CLASS_NAMES", "SentimentModel", "load_pretrained",
           "shipped_models_dir", "ShippedModelNotFoundError"]
