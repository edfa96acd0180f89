"""``python -m keras_lrp.cli`` = ``keras-lrp``."""
import sys

from . import main

sys.exit(main())
