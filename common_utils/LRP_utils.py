"""Seed-compatible ``LRP_utils`` module: ``sys.path.insert(0, "common_utils"); from LRP_utils import ...``.

The original notebooks' calls run on Keras 3 unchanged: every name below has the seed's signature
and return value (``lrp_lstm_batch`` returns one array ``Rin``; ``get_target_activation`` takes
symbolic tensors and returns a list of float64 arrays). All code lives in :mod:`keras_lrp`
(:mod:`keras_lrp.compat`, :mod:`keras_lrp.cells`, :mod:`keras_lrp.graph`); this module only
re-exports it. Richer variants keep their own names there, e.g.
``keras_lrp.compat.lrp_lstm_batch_parts`` (both directions and the rest separately).
"""
import os
import sys

# Use the keras_lrp of the checkout this file belongs to (its matching version), else the installed one.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if os.path.isfile(os.path.join(_ROOT, "keras_lrp", "__init__.py")) and _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from keras_lrp.cells import LRP_LSTMCell  # noqa: E402,F401
from keras_lrp.graph import lrpify_model  # noqa: E402,F401
from keras_lrp.compat import (  # noqa: E402,F401
    cache_lstm_forward_activations_batch,
    cashe_lstm_forward_activations_batch,
    get_target_activation,
    lrp_concat,
    lrp_dense_batch,
    lrp_lstm_batch,
    lrp_slice,
)

__all__ = ["LRP_LSTMCell", "lrpify_model", "cache_lstm_forward_activations_batch",
           "cashe_lstm_forward_activations_batch", "get_target_activation", "lrp_concat",
           "lrp_dense_batch", "lrp_lstm_batch", "lrp_slice"]
