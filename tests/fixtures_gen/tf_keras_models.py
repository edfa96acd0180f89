"""Tiny tf.keras 2.x (``tf_keras``) models saved as ``.h5``, with their own predictions.

Used by ``tests/test_io.py`` to check that ``keras_lrp.io.load_model`` reproduces tf.keras
predictions. Every weight is set to a random value (biases and moving statistics included) so
that a weight that lands in the wrong place changes the output.

Run as a script to write the files: ``python tests/fixtures_gen/tf_keras_models.py OUTDIR``.
"""
from __future__ import annotations

import os
import sys
from typing import Dict, Tuple

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def _padded_ids(rng, batch, length, vocab):
    """Integer sequences (batch, length), post-padded with 0 to random lengths 1..length."""
    x = rng.integers(1, vocab, size=(batch, length))
    lengths = rng.integers(1, length + 1, size=batch)
    lengths[0] = length
    for i, n in enumerate(lengths):
        x[i, n:] = 0
    return x.astype("int32")


def _randomise(model, rng):
    weights = []
    for w in model.weights:
        value = rng.normal(0.0, 0.5, size=tuple(w.shape))
        if "moving_variance" in w.name:
            value = np.abs(value) + 0.5
        weights.append(value.astype("float32"))
    model.set_weights(weights)


def build_models(rng) -> Dict[str, Tuple[object, np.ndarray]]:
    """name -> (tf_keras model, input batch)."""
    import tf_keras as K

    L = K.layers
    models = {}

    m = K.Sequential([
        L.Embedding(30, 6, mask_zero=True, input_shape=(None,)),
        L.LSTM(5, return_sequences=True),
        L.Dropout(0.3),
        L.LSTM(4),
        L.Dense(3, activation="softmax"),
    ])
    models["seq_stacked_lstm"] = (m, _padded_ids(rng, 4, 7, 30))

    inp = L.Input((None,), dtype="int32")
    h = L.Embedding(25, 6, mask_zero=True)(inp)
    h = L.Bidirectional(L.LSTM(4, return_sequences=True), merge_mode="concat")(h)
    h = L.Bidirectional(L.GRU(3, reset_after=True), merge_mode="sum")(h)
    out = L.Dense(1, activation="sigmoid")(h)
    models["fn_bi_lstm_gru"] = (K.Model(inp, out), _padded_ids(rng, 4, 6, 25))

    m = K.Sequential([
        L.InputLayer(input_shape=(None, 5)),
        L.GRU(4, reset_after=False, return_sequences=True),
        L.Bidirectional(L.GRU(3, reset_after=False, return_sequences=True), merge_mode="ave"),
        L.Bidirectional(L.LSTM(3), merge_mode="mul"),
        L.Dense(2, activation="softmax"),
    ])
    models["seq_gru_reset_before"] = (m, rng.normal(size=(3, 6, 5)).astype("float32"))

    inp = L.Input((12, 5))
    h = L.Conv1D(4, 3, padding="same", activation="relu")(inp)
    h = L.BatchNormalization()(h)
    h = L.MaxPooling1D(2)(h)
    h = L.Conv1D(3, 2, padding="causal")(h)
    pooled = L.Add()([L.GlobalMaxPooling1D()(h), L.GlobalAveragePooling1D()(h)])
    flat = L.Flatten()(L.AveragePooling1D(2)(h))
    out = L.Dense(2, activation="softmax")(L.Concatenate()([pooled, flat]))
    models["fn_conv_pool"] = (K.Model(inp, out), rng.normal(size=(3, 12, 5)).astype("float32"))

    inp = L.Input((None,), dtype="int32")
    h = L.Embedding(20, 5, mask_zero=True)(inp)
    h = L.SpatialDropout1D(0.2)(h)
    h = L.Bidirectional(L.LSTM(3, return_sequences=True))(h)
    out = L.TimeDistributed(L.Dense(4, activation="softmax"))(h)
    models["fn_tagger"] = (K.Model(inp, out), _padded_ids(rng, 3, 6, 20))

    m = K.Sequential([
        L.Masking(0.0, input_shape=(6, 4)),
        L.GaussianNoise(0.1),
        L.SimpleRNN(4, return_sequences=True),
        L.RNN(L.LSTMCell(3), return_sequences=True),
        L.RNN(L.GRUCell(3, reset_after=False), return_sequences=True),
        L.LSTM(3, recurrent_activation="hard_sigmoid"),
        L.Dense(6),
        L.Reshape((2, 3)),
        L.Activation("tanh"),
        L.Flatten(),
        L.Dense(2),
    ])
    x = rng.normal(size=(3, 6, 4)).astype("float32")
    x[1, 4:] = 0.0  # masked timesteps
    models["seq_misc"] = (m, x)

    inp = L.Input((None, 3))
    seq, h_state, c_state = L.LSTM(4, return_state=True)(inp)
    out = L.Dense(2)(L.Concatenate()([seq, h_state]))
    models["fn_return_state"] = (K.Model(inp, [out, c_state]),
                                 rng.normal(size=(2, 5, 3)).astype("float32"))
    return models


def build_lambda_model(rng):
    import tf_keras as K

    m = K.Sequential([K.layers.Dense(2, input_shape=(3,)),
                      K.layers.Lambda(lambda t: t * 2.0 + 1.0)])
    return m, rng.normal(size=(4, 3)).astype("float32")


def build_custom_model(rng):
    import tf_keras as K

    class Scale(K.layers.Layer):
        def __init__(self, factor=1.0, **kwargs):
            super().__init__(**kwargs)
            self.factor = factor

        def call(self, inputs):
            return inputs * self.factor

        def get_config(self):
            return {**super().get_config(), "factor": self.factor}

    inp = K.layers.Input((3,))
    out = K.layers.Dense(2)(Scale(1.5, name="scale")(inp))
    return K.Model(inp, out), rng.normal(size=(4, 3)).astype("float32")


def predict(model, x):
    out = model(x, training=False)
    if isinstance(out, (list, tuple)):
        return [np.asarray(o) for o in out]
    return np.asarray(out)


def write_all(outdir: str, seed: int = 0) -> Dict[str, dict]:
    """Save every model as ``<outdir>/<name>.h5``; return name -> {path, x, y}."""
    import warnings

    rng = np.random.default_rng(seed)
    models = build_models(rng)
    models["lambda"] = build_lambda_model(rng)
    models["custom"] = build_custom_model(rng)
    result = {}
    for name, (model, x) in models.items():
        _randomise(model, rng)
        path = os.path.join(outdir, f"{name}.h5")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.save(path)
        result[name] = {"path": path, "x": x, "y": predict(model, x)}
        if name == "seq_stacked_lstm":  # the same model in tf.keras's own .keras format
            keras_path = os.path.join(outdir, f"{name}.keras")
            model.save(keras_path)
            result[f"{name}_keras"] = {**result[name], "path": keras_path}
    return result


if __name__ == "__main__":
    target = sys.argv[1] if len(sys.argv) > 1 else "."
    os.makedirs(target, exist_ok=True)
    for key, item in write_all(target).items():
        print(key, item["path"])
