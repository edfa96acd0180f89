"""``python -m keras_lrp.propagators`` prints the README's supported-layer table."""
from . import markdown_table

print(markdown_table())
