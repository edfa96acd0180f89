"""Faithfulness experiments on explanations (they use the engine and :mod:`keras_lrp.sst`):

* :mod:`keras_lrp.experiments.word_deletion` -- word deletion (Arras et al. 2017):
  :func:`word_deletion`, :func:`sst_word_deletion`;
* :mod:`keras_lrp.experiments.toy` -- the toy arithmetic task (Arras et al. 2019): data, model,
  :func:`toy_evaluation`, :func:`run_toy_experiment`;
* :mod:`keras_lrp.experiments.evaluate` -- the ``keras-lrp evaluate`` command's logic.

Importing this package does not import TensorFlow.
"""
from ._common import DEFAULT_METHODS, DELETION_METHODS, REPLACEMENTS, TOY_METHODS, method_relevance
from .toy import (TOY_OPERATIONS, ToyData, ToyResult, ToyTraining, build_toy_model, make_toy_data,
                  marked_input_metrics, run_toy_experiment, toy_evaluation, train_toy_model)
from .word_deletion import WordDeletionResult, deletion_masks, deletion_order, sst_word_deletion, word_deletion

__all__ = ["DELETION_METHODS", "DEFAULT_METHODS", "TOY_METHODS", "REPLACEMENTS", "method_relevance", "word_deletion",
           "sst_word_deletion", "WordDeletionResult", "deletion_order", "deletion_masks", "TOY_OPERATIONS",
           "ToyData", "ToyTraining", "ToyResult", "make_toy_data", "build_toy_model", "train_toy_model",
           "marked_input_metrics", "toy_evaluation", "run_toy_experiment"]
