"""The registry is the single list of supported layers: the README table is generated from it."""
import pathlib
import re

import keras
import pytest

from keras_lrp.propagators import markdown_table, supported_layers
from keras_lrp.propagators.base import Propagator, UnsupportedLayerError, lookup, propagator_for, register

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_readme_table_is_the_registry():
    text = README.read_text()
    block = re.search(r"<!-- registry-table:begin -->\n(.*?)\n<!-- registry-table:end -->", text, re.S)
    assert block, "README.md lacks the generated registry table markers"
    assert block.group(1).strip() == markdown_table().strip(), (
        "README's supported-layer table differs from the registry: paste `python -m keras_lrp.propagators`")


def test_every_row_names_its_rule_and_each_type_once():
    seen = set()
    for row in supported_layers():
        assert row.rule and row.layers
        for t in row.layers:
            assert t not in seen
            seen.add(t)


def test_lookup_takes_the_most_specific_class():
    assert lookup(keras.layers.LSTM(2)).propagator.__name__ == "RecurrentProp"
    with pytest.raises(ValueError, match="registered twice"):
        register(keras.layers.Dense, rule="again")(type("P", (Propagator,), {}))
    with pytest.raises(TypeError, match="Propagator subclass"):
        register(keras.layers.Dense, rule="again")(type("P", (), {}))


def test_refused_layers_name_themselves_and_the_reason():
    from keras_lrp.propagators import Context
    from keras_lrp.rules import Epsilon
    ctx = Context("float32", Epsilon(), "all")
    with pytest.raises(UnsupportedLayerError, match="explained through the keras.ops calls of its function"):
        propagator_for(keras.layers.Lambda(lambda t: t, name="lam"), ctx)

    class Strange(keras.layers.Layer):
        pass
    with pytest.raises(UnsupportedLayerError, match=r"'odd' \(test_registry\..*Strange\).*Supported: .*Dense"):
        propagator_for(Strange(name="odd"), ctx)
