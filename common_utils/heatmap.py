"""Seed-compatible ``heatmap`` module: ``sys.path.insert(0, "common_utils"); from heatmap import html_heatmap``.

A thin re-export of :mod:`keras_lrp.visualize`; all code lives there.
"""
import sys
from pathlib import Path

# Use the keras_lrp of the checkout this file belongs to (its matching version), else the installed one.
_ROOT = Path(__file__).resolve().parent.parent
if (_ROOT / "keras_lrp" / "__init__.py").is_file() and str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

import keras_lrp.visualize as _visualize  # noqa: E402

from keras_lrp.visualize import *  # noqa: E402,F401,F403
from keras_lrp.visualize import __all__  # noqa: E402,F401

# The seed's name for the colour-to-hex helper.
getRGB = _visualize.rgb_to_hex
