"""Seed-compatible ``LRP_utils`` module: ``sys.path.insert(0, "common_utils"); from LRP_utils import ...``.

Everything lives in :mod:`keras_lrp.compat`; this module only re-exports it (plus the cell), so the
original notebooks run on Keras 3 with their import lines unchanged.
"""
import os
import sys

try:
    import keras_lrp  # noqa: F401
except ImportError:  # running from a checkout without `pip install .`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from keras_lrp.cells import LRP_LSTMCell  # noqa: E402,F401
from keras_lrp.compat import (  # noqa: E402,F401
    cache_lstm_forward_activations_batch,
    cashe_lstm_forward_activations_batch,
    get_target_activation,
    lrp_dense_batch,
    lrp_lstm_batch,
)
