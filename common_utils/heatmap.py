"""Seed-compatible ``heatmap`` module: ``sys.path.insert(0, "common_utils"); from heatmap import html_heatmap``.

A thin re-export of :mod:`keras_lrp.visualize`; all code lives there.
"""
import sys
from pathlib import Path

try:
    import keras_lrp.visualize as _visualize
except ImportError:  # run from a checkout without keras_lrp installed
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import keras_lrp.visualize as _visualize

from keras_lrp.visualize import *  # noqa: E402,F401,F403
from keras_lrp.visualize import __all__  # noqa: E402,F401

# The seed's name for the colour-to-hex helper.
getRGB = _visualize.rgb_to_hex
