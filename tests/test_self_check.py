"""The self-check: the first call of every explainer compares its forward pass with the model's own
output on that batch, and refuses (naming the first call that computes differently from Keras) rather
than explain another function than the model's."""
import warnings

import numpy as np
import keras
import pytest

import keras_lrp
from keras_lrp import selfcheck
from keras_lrp.propagators import attention

L = keras.layers


def masked_attention_model(seed=0):
    keras.utils.set_random_seed(seed)
    inp = keras.Input((None,), dtype="int32")
    h = L.LSTM(4, return_sequences=True)(L.Embedding(20, 5, mask_zero=True)(inp))
    a = L.MultiHeadAttention(2, 3, name="mha")(h, h)
    model = keras.Model(inp, L.Dense(3, activation="softmax")(L.GlobalAveragePooling1D()(a)))
    rng = np.random.default_rng(seed)
    model.set_weights([w + 0.5 * rng.standard_normal(w.shape).astype(w.dtype) for w in model.get_weights()])
    return model


IDS = np.array([[3, 4, 5, 6, 0, 0], [7, 8, 9, 1, 2, 0]])


def test_a_rule_that_ignores_masks_is_refused_naming_the_layer(monkeypatch):
    """Simulates the bug the self-check exists for: a propagator that drops the masks Keras applies."""
    model = masked_attention_model()
    forward = attention.MultiHeadAttentionProp.forward

    def unmasked(self, inputs, masks):
        return forward(self, inputs, [None] * len(masks))

    monkeypatch.setattr(attention.MultiHeadAttentionProp, "forward", unmasked)
    with pytest.raises(selfcheck.SelfCheckError, match=r"layer 'mha' \(MultiHeadAttention\)"):
        keras_lrp.LRP(model).attribute(IDS)
    # opting out explains (wrongly): the check is what stands between the bug and the user
    e = keras_lrp.LRP(model, self_check=False).attribute(IDS)
    assert np.abs(keras.ops.softmax(e.scores).numpy() - np.asarray(model(IDS))).max() > 1e-3


def test_a_correct_explainer_passes_and_checks_only_its_first_call(monkeypatch):
    model = masked_attention_model(1)
    calls = []
    check = selfcheck.self_check
    monkeypatch.setattr(keras_lrp.explainer, "self_check", lambda *a: calls.append(1) or check(*a))
    lrp = keras_lrp.LRP(model, dtype="float64")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lrp.attribute(IDS)
        lrp.attribute(IDS[:1])
    assert calls == [1]


def test_rounding_that_no_layer_explains_is_a_warning(monkeypatch):
    """When every call agrees with Keras on its own inputs, a difference in the output is rounding
    amplified along the network: a warning, not an error (simulated by offsetting the output)."""
    model = masked_attention_model(2)
    lrp = keras_lrp.LRP(model)
    monkeypatch.setattr(keras_lrp.explainer, "self_check",
                        lambda walk, m, xs, out, multi, index: selfcheck.self_check(walk, m, xs, out + 0.01, multi, index))
    with pytest.warns(RuntimeWarning, match="every layer agrees with Keras"):
        lrp.attribute(IDS)


def test_self_check_argument_is_validated():
    with pytest.raises(TypeError, match="self_check"):
        keras_lrp.LRP(masked_attention_model(), self_check="no")


class _SubclassedLSTM(keras.Model):
    """A subclassed vector model whose call takes no mask: checked once per length, unpadded."""

    def __init__(self):
        super().__init__()
        self.lstm, self.out = L.LSTM(3, name="lstm"), L.Dense(2)

    def call(self, x):
        return self.out(self.lstm(x))


@pytest.mark.parametrize("subclassed", [False, True])
def test_padding_masked_by_length_is_checked_against_the_unpadded_model(subclassed, monkeypatch):
    """With lengths=, the explained outputs are compared with the model on each sample's steps only (a
    functional model called with the mask, any other on its unpadded samples): a recurrent rule that
    ignored the mask would explain the padding too, and is refused naming the layer."""
    from keras_lrp.propagators.recurrent import RecurrentProp

    keras.utils.set_random_seed(7)
    if subclassed:
        model = _SubclassedLSTM()
        model(np.zeros((1, 2, 4)))
    else:
        inp = keras.Input((None, 4))
        model = keras.Model(inp, L.Dense(2)(L.LSTM(3, name="lstm")(inp)))
    x = np.random.default_rng(7).standard_normal((3, 6, 4))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        keras_lrp.LRP(model, dtype="float64").attribute(x, lengths=[2, 4, 6])
    forward = RecurrentProp.forward
    monkeypatch.setattr(RecurrentProp, "forward", lambda self, inputs, masks: forward(self, inputs, [None] * len(masks)))
    with pytest.raises(selfcheck.SelfCheckError, match=r"layer 'lstm' \(LSTM\)"):
        keras_lrp.LRP(model, dtype="float64").attribute(x, lengths=[2, 4, 6])
