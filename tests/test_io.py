"""Tests for keras_lrp.io.load_model: Keras 2 / tf.keras 2 / Keras 3 files -> Keras 3 models."""
import importlib.util
import json
import os
import re
import zipfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import h5py
import keras
import numpy as np
import pytest

from keras_lrp.cells import LRP_LSTMCell
from keras_lrp.io import (
    KERAS2_ACTIVATIONS,
    ModelFileError,
    ModelFileNotFoundError,
    UnsafeModelError,
    UnsupportedModelError,
    keras2_hard_sigmoid,
    load_model,
)

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "data", "fixtures")
SST_H5 = os.path.join(FIXTURES, "keras2_sst_bilstm.h5")
GOLDEN = os.path.join(FIXTURES, "arras2017_golden.npz")


def _load_generator():
    spec = importlib.util.spec_from_file_location(
        "tf_keras_models", os.path.join(HERE, "fixtures_gen", "tf_keras_models.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _outputs(model, x):
    out = model(x, training=False)
    if isinstance(out, (list, tuple)):
        return [keras.ops.convert_to_numpy(o) for o in out]
    return [keras.ops.convert_to_numpy(out)]


def _as_list(y):
    return y if isinstance(y, list) else [y]


@pytest.fixture(scope="module")
def tfk(tmp_path_factory):
    """tf.keras 2.x .h5 files written by tf_keras, with tf_keras's own predictions."""
    pytest.importorskip("tf_keras")
    return _load_generator().write_all(str(tmp_path_factory.mktemp("tfk")))


# ------------------------------------------------------------------------------------------
# tf.keras 2.x files: same predictions
# ------------------------------------------------------------------------------------------
TF_KERAS_MODELS = ["seq_stacked_lstm", "fn_bi_lstm_gru", "seq_gru_reset_before", "fn_conv_pool",
                   "fn_tagger", "seq_misc", "fn_return_state"]


@pytest.mark.parametrize("name", TF_KERAS_MODELS)
def test_tf_keras_h5_same_predictions(tfk, name):
    item = tfk[name]
    model = load_model(item["path"])
    got = _outputs(model, item["x"])
    want = _as_list(item["y"])
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape
        np.testing.assert_allclose(g, w, atol=1e-5, rtol=0)
    # The comparison is sensitive to the weights: fresh random weights do not match.
    fresh = keras.models.clone_model(model)
    assert any(np.abs(f - w).max() > 1e-3 for f, w in zip(_outputs(fresh, item["x"]), want))


def test_tf_keras_architecture_translated(tfk):
    model = load_model(tfk["fn_bi_lstm_gru"]["path"])
    emb, bi_lstm, bi_gru, dense = [l for l in model.layers
                                   if not isinstance(l, keras.layers.InputLayer)]
    assert isinstance(emb, keras.layers.Embedding) and emb.mask_zero
    assert isinstance(bi_lstm.forward_layer, keras.layers.LSTM) and bi_lstm.merge_mode == "concat"
    assert bi_lstm.forward_layer.return_sequences and bi_lstm.backward_layer.go_backwards
    assert isinstance(bi_gru.forward_layer, keras.layers.GRU) and bi_gru.merge_mode == "sum"
    assert bi_gru.forward_layer.cell.reset_after is True
    assert dense.activation is keras.activations.sigmoid

    seq = load_model(tfk["seq_gru_reset_before"]["path"])
    assert isinstance(seq, keras.Sequential)
    assert seq.layers[0].cell.reset_after is False
    assert seq.layers[1].forward_layer.cell.reset_after is False
    assert [l.merge_mode for l in seq.layers[1:3]] == ["ave", "mul"]

    misc = load_model(tfk["seq_misc"]["path"])
    lstm = [l for l in misc.layers if isinstance(l, keras.layers.LSTM)][0]
    assert lstm.cell.recurrent_activation is keras2_hard_sigmoid  # Keras 2 meaning kept


def test_keras2_activation_names_mean_the_same_in_keras3():
    tf_keras = pytest.importorskip("tf_keras")
    import tensorflow as tf

    x = np.linspace(-4.0, 4.0, 17, dtype="float32").reshape(1, 17)
    tx = tf.constant(x)
    checked = 0
    for name in KERAS2_ACTIVATIONS:
        try:
            old = tf_keras.activations.get(name)
        except ValueError:
            continue  # not in this tf.keras version
        new = keras.activations.get(name)
        np.testing.assert_allclose(keras.ops.convert_to_numpy(new(x)), np.asarray(old(tx)),
                                   atol=1e-6, err_msg=name)
        checked += 1
    assert checked >= 12
    np.testing.assert_allclose(keras.ops.convert_to_numpy(keras2_hard_sigmoid(x)),
                               np.asarray(tf_keras.activations.hard_sigmoid(tx)), atol=1e-7)
    # ... and Keras 3's hard_sigmoid really is different, hence keras2_hard_sigmoid.
    assert np.abs(keras.ops.convert_to_numpy(keras.activations.hard_sigmoid(x))
                  - np.asarray(tf_keras.activations.hard_sigmoid(tx))).max() > 0.05


def test_tf_keras_dot_keras_file(tfk):
    """A .keras written by tf.keras 2.x (Keras 3 cannot read it) is rebuilt and loads."""
    item = tfk["seq_stacked_lstm_keras"]
    assert item["path"].endswith(".keras")
    np.testing.assert_allclose(_outputs(load_model(item["path"]), item["x"])[0], item["y"],
                               atol=1e-5, rtol=0)


def _strip_keras3_keys(obj):
    if isinstance(obj, dict):
        return {k: _strip_keras3_keys(v) for k, v in obj.items()
                if k not in ("module", "registered_name", "build_config")}
    if isinstance(obj, list):
        return [_strip_keras3_keys(v) for v in obj]
    return obj


def _rewrite_config(src, dst, edit, version="2.3.1"):
    with open(src, "rb") as f_in, open(dst, "wb") as f_out:
        f_out.write(f_in.read())
    with h5py.File(dst, "r+") as f:
        config = _strip_keras3_keys(json.loads(f.attrs["model_config"]))
        f.attrs["model_config"] = np.bytes_(json.dumps(edit(config)))
        f.attrs["keras_version"] = np.bytes_(version)


def test_older_keras2_config_layouts(tfk, tmp_path):
    """Keras 2.3 functional "Model" configs and Keras <= 2.2.2 Sequential layer lists."""
    def as_model(config):
        config["class_name"] = "Model"
        return config

    item = tfk["fn_bi_lstm_gru"]
    path = str(tmp_path / "model_class.h5")
    _rewrite_config(item["path"], path, as_model)
    np.testing.assert_allclose(_outputs(load_model(path), item["x"])[0], item["y"], atol=1e-5)

    def as_layer_list(config):
        layers = config["config"]["layers"]
        first = layers.pop(0)  # InputLayer -> batch_input_shape on the first layer
        assert first["class_name"] == "InputLayer"
        layers[0]["config"]["batch_input_shape"] = first["config"]["batch_input_shape"]
        return {"class_name": "Sequential", "config": layers}

    item = tfk["seq_stacked_lstm"]
    path = str(tmp_path / "layer_list.h5")
    _rewrite_config(item["path"], path, as_layer_list, version="2.1.6")
    model = load_model(path)
    assert model.input_shape == (None, None)
    np.testing.assert_allclose(_outputs(model, item["x"])[0], item["y"], atol=1e-5)


# ------------------------------------------------------------------------------------------
# The real Keras 2.3.1 file
# ------------------------------------------------------------------------------------------
def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def _numpy_lstm_last(x, kernel, recurrent_kernel, bias, recurrent_activation=_sigmoid):
    """Final hidden state of a Keras LSTM (gate order i, f, c, o) over x (T, features)."""
    units = recurrent_kernel.shape[0]
    h = np.zeros(units)
    c = np.zeros(units)
    for x_t in x:
        z = x_t @ kernel + h @ recurrent_kernel + bias
        i = recurrent_activation(z[:units])
        f = recurrent_activation(z[units:2 * units])
        g = np.tanh(z[2 * units:3 * units])
        o = recurrent_activation(z[3 * units:])
        c = f * c + i * g
        h = o * np.tanh(c)
    return h


def _read_h5_layer(path, layer):
    with h5py.File(path, "r") as f:
        group = f["model_weights"][layer]
        return [np.asarray(group[n], dtype=np.float64) for n in group.attrs["weight_names"]]


def test_keras2_sst_bilstm_file():
    model = load_model(SST_H5)
    assert isinstance(model, keras.Sequential)
    assert model.input_shape == (None, None, 60)
    bi, dense = model.layers
    assert isinstance(bi, keras.layers.Bidirectional) and bi.merge_mode == "concat"
    assert isinstance(bi.forward_layer, keras.layers.LSTM) and bi.forward_layer.units == 60
    assert not bi.forward_layer.return_sequences
    assert isinstance(dense, keras.layers.Dense) and dense.units == 5 and not dense.use_bias
    assert model.output_shape == (None, 5)

    kf, rf, bf, kb, rb, bb = _read_h5_layer(SST_H5, "bidirectional_3")
    (wd,) = _read_h5_layer(SST_H5, "dense_2")
    golden = np.load(GOLDEN)
    for got, key in zip(model.get_weights(), ["kernel_fw", "recurrent_kernel_fw", "bias_fw",
                                              "kernel_bw", "recurrent_kernel_bw", "bias_bw",
                                              "dense_kernel"]):
        np.testing.assert_allclose(got, golden[key], rtol=0, atol=1e-7, err_msg=key)

    rng = np.random.default_rng(0)
    for length in (1, 4, 9):
        x = rng.normal(size=(length, 60))
        h = np.concatenate([_numpy_lstm_last(x, kf, rf, bf), _numpy_lstm_last(x[::-1], kb, rb, bb)])
        want = h @ wd
        got = _outputs(model, x[None].astype("float32"))[0][0]
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)

    # Scores of the authors' reference implementation on the same weights.
    for case in (0, 7):
        x = golden[f"{case}_eps_x"].astype("float32")
        np.testing.assert_allclose(_outputs(model, x[None])[0][0], golden[f"{case}_eps_scores"],
                                   atol=1e-4)


# ------------------------------------------------------------------------------------------
# LRP_LSTMCell files
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("ext", ["h5", "keras"])
def test_keras3_lrp_cell_file_roundtrip(tmp_path, ext):
    rng = np.random.default_rng(4)
    inp = keras.Input((None, 4))
    h = keras.layers.Bidirectional(keras.layers.RNN(LRP_LSTMCell(3), return_sequences=True))(inp)
    h = keras.layers.RNN(LRP_LSTMCell(2, implementation=1))(h)
    model = keras.Model(inp, keras.layers.Dense(2)(h))
    model.set_weights([rng.normal(size=w.shape) for w in model.get_weights()])
    x = rng.normal(size=(2, 5, 4)).astype("float32")
    path = str(tmp_path / f"lrp.{ext}")
    model.save(path)
    loaded = load_model(path)
    np.testing.assert_allclose(_outputs(loaded, x)[0], _outputs(model, x)[0], atol=1e-6)
    rnns = [l for l in loaded.layers if isinstance(l, keras.layers.RNN)]
    assert rnns and all(isinstance(l.cell, LRP_LSTMCell) for l in rnns)
    assert isinstance(loaded.layers[1].forward_layer.cell, LRP_LSTMCell)


def _dense_cfg(name, units):
    return {"class_name": "Dense", "config": {
        "name": name, "trainable": True, "units": units, "activation": "linear",
        "use_bias": True, "kernel_initializer": {"class_name": "VarianceScaling", "config": {
            "scale": 1.0, "mode": "fan_avg", "distribution": "uniform", "seed": None}},
        "bias_initializer": {"class_name": "Zeros", "config": {}}, "kernel_regularizer": None,
        "bias_regularizer": None, "activity_regularizer": None, "kernel_constraint": None,
        "bias_constraint": None}}


def _seed_era_config(units=3, features=4, recurrent_activation="hard_sigmoid"):
    """A Keras 2.2-style Sequential[Bidirectional(RNN(LRP_LSTMCell)), Dense] model_config."""
    cell = {"class_name": "LRP_LSTMCell", "config": {
        "name": "lrp_lstm_cell_1", "trainable": True, "units": units, "activation": "tanh",
        "recurrent_activation": recurrent_activation, "use_bias": True,
        "kernel_initializer": {"class_name": "VarianceScaling", "config": {
            "scale": 1.0, "mode": "fan_avg", "distribution": "normal", "seed": None}},
        "recurrent_initializer": {"class_name": "Orthogonal", "config": {"gain": 1.0,
                                                                          "seed": None}},
        "bias_initializer": {"class_name": "Zeros", "config": {}}, "unit_forget_bias": True,
        "kernel_regularizer": {"class_name": "L1L2", "config": {"l1": 0.0, "l2": 0.01}},
        "recurrent_regularizer": None, "bias_regularizer": None, "kernel_constraint": None,
        "recurrent_constraint": None, "bias_constraint": None, "dropout": 0.0,
        "recurrent_dropout": 0.0, "implementation": 1}}
    rnn = {"class_name": "RNN", "config": {
        "name": "rnn_1", "trainable": True, "return_sequences": False, "return_state": False,
        "go_backwards": False, "stateful": False, "unroll": False, "cell": cell}}
    bi = {"class_name": "Bidirectional", "config": {
        "name": "bidirectional_1", "trainable": True, "batch_input_shape": [None, None, features],
        "dtype": "float32", "layer": rnn, "merge_mode": "concat"}}
    return {"class_name": "Sequential", "config": {"name": "sequential_1",
                                                   "layers": [bi, _dense_cfg("dense_1", 2)]}}


def _write_keras2_h5(path, config, layer_weights, version="2.2.4"):
    """Write an .h5 in the Keras 2 layout: model_config + model_weights/<layer>/weight_names."""
    with h5py.File(path, "w") as f:
        f.attrs["keras_version"] = np.bytes_(version)
        f.attrs["backend"] = np.bytes_("tensorflow")
        f.attrs["model_config"] = np.bytes_(json.dumps(config))
        g = f.create_group("model_weights")
        g.attrs["layer_names"] = np.array([n.encode() for n in layer_weights])
        for layer, named in layer_weights.items():
            lg = g.create_group(layer)
            lg.attrs["weight_names"] = np.array([n.encode() for n, _ in named])
            for n, value in named:
                lg.create_dataset(n, data=value)


def _seed_era_weights(rng, units=3, features=4):
    def lstm(prefix):
        return [(f"bidirectional_1/{prefix}_rnn_1/kernel:0",
                 rng.normal(size=(features, 4 * units)).astype("float32")),
                (f"bidirectional_1/{prefix}_rnn_1/recurrent_kernel:0",
                 rng.normal(size=(units, 4 * units)).astype("float32")),
                (f"bidirectional_1/{prefix}_rnn_1/bias:0",
                 rng.normal(size=(4 * units,)).astype("float32"))]
    return {"bidirectional_1": lstm("forward") + lstm("backward"),
            "dense_1": [("dense_1/kernel:0", rng.normal(size=(2 * units, 2)).astype("float32")),
                        ("dense_1/bias:0", rng.normal(size=(2,)).astype("float32"))]}


def test_handmade_seed_era_lrp_lstmcell_h5(tmp_path):
    rng = np.random.default_rng(5)
    weights = _seed_era_weights(rng)
    path = str(tmp_path / "seed.h5")
    _write_keras2_h5(path, _seed_era_config(), weights)
    model = load_model(path)
    bi = model.layers[0]
    assert isinstance(bi.forward_layer.cell, LRP_LSTMCell)
    assert bi.forward_layer.cell.recurrent_activation is keras2_hard_sigmoid

    def hard_sigmoid(z):  # Keras 2 definition
        return np.clip(0.2 * z + 0.5, 0.0, 1.0)

    fw = [w.astype(np.float64) for _, w in weights["bidirectional_1"][:3]]
    bw = [w.astype(np.float64) for _, w in weights["bidirectional_1"][3:]]
    wd, bd = [w.astype(np.float64) for _, w in weights["dense_1"]]
    x = rng.normal(size=(2, 6, 4))
    want = np.stack([np.concatenate([_numpy_lstm_last(s, *fw, hard_sigmoid),
                                     _numpy_lstm_last(s[::-1], *bw, hard_sigmoid)]) @ wd + bd
                     for s in x])
    np.testing.assert_allclose(_outputs(model, x.astype("float32"))[0], want, atol=1e-5)


def test_weight_shape_mismatch_is_reported(tmp_path):
    rng = np.random.default_rng(6)
    weights = _seed_era_weights(rng)
    weights["dense_1"][0] = ("dense_1/kernel:0", np.zeros((5, 2), "float32"))
    path = str(tmp_path / "bad_shape.h5")
    _write_keras2_h5(path, _seed_era_config(), weights)
    with pytest.raises(ModelFileError, match=r"dense_1.*shape"):
        load_model(path)


def test_time_major_and_unknown_activation_refused(tmp_path):
    rng = np.random.default_rng(7)
    config = _seed_era_config()
    config["config"]["layers"][0]["config"]["layer"]["config"]["time_major"] = True
    path = str(tmp_path / "time_major.h5")
    _write_keras2_h5(path, config, _seed_era_weights(rng))
    with pytest.raises(UnsupportedModelError, match="time_major"):
        load_model(path)

    path = str(tmp_path / "act.h5")
    _write_keras2_h5(path, _seed_era_config(recurrent_activation="my_gate"),
                     _seed_era_weights(rng))
    with pytest.raises(UnsafeModelError, match="my_gate.*custom_objects"):
        load_model(path)
    model = load_model(path, custom_objects={"my_gate": keras.activations.sigmoid})
    assert model.layers[0].forward_layer.cell.recurrent_activation is keras.activations.sigmoid


def test_loaded_keras2_model_resaves_in_keras3(tfk, tmp_path):
    """keras2_hard_sigmoid is registered: the translated model round-trips through .keras/.h5."""
    item = tfk["seq_misc"]
    model = load_model(item["path"])
    for ext in ("keras", "h5"):
        path = str(tmp_path / f"resaved.{ext}")
        model.save(path)
        again = load_model(path)
        np.testing.assert_allclose(_outputs(again, item["x"])[0], item["y"], atol=1e-5)
        lstm = [l for l in again.layers if isinstance(l, keras.layers.LSTM)][0]
        assert lstm.cell.recurrent_activation is keras2_hard_sigmoid


@pytest.mark.parametrize("entry, pattern", [
    ({"class_name": "Sequential", "config": {"name": "inner", "layers": []}},
     r"'inner'.*nested Sequential"),
    ({"class_name": "TFOpLambda", "config": {"name": "tf.math.add", "function": "math.add"}},
     r"'tf.math.add' \(TFOpLambda\)"),
    ({"class_name": "MultiHeadAttention", "config": {"name": "mha", "num_heads": 1, "key_dim": 2,
                                                     "softmax_robust_masking": True}},
     r"'mha' \(MultiHeadAttention\).*softmax_robust_masking"),
])
def test_unsupported_layers_refused_by_name(tmp_path, entry, pattern):
    config = _seed_era_config()
    config["config"]["layers"].insert(1, entry)
    path = str(tmp_path / "unsupported.h5")
    _write_keras2_h5(path, config, _seed_era_weights(np.random.default_rng(8)))
    with pytest.raises(UnsupportedModelError, match=pattern) as info:
        load_model(path)
    assert "\n" not in str(info.value)


# ------------------------------------------------------------------------------------------
# Safety: Lambda and custom classes
# ------------------------------------------------------------------------------------------
def test_lambda_h5_refused_unless_safe_mode_off(tfk):
    item = tfk["lambda"]
    with pytest.raises(UnsafeModelError, match=r"'lambda'.*Lambda.*safe_mode=False") as info:
        load_model(item["path"])
    assert "\n" not in str(info.value)
    model = load_model(item["path"], safe_mode=False)
    np.testing.assert_allclose(_outputs(model, item["x"])[0], item["y"], atol=1e-5)


class _Scale(keras.layers.Layer):
    """Keras 3 twin of the tf_keras custom layer of the fixture generator."""

    def __init__(self, factor=1.0, **kwargs):
        super().__init__(**kwargs)
        self.factor = factor

    def call(self, inputs):
        return inputs * self.factor

    def get_config(self):
        return {**super().get_config(), "factor": self.factor}


def test_custom_class_h5_refused_unless_given(tfk):
    item = tfk["custom"]
    with pytest.raises(UnsafeModelError, match=r"'scale'.*'Scale'.*custom_objects"):
        load_model(item["path"])
    model = load_model(item["path"], custom_objects={"Scale": _Scale})
    np.testing.assert_allclose(_outputs(model, item["x"])[0], item["y"], atol=1e-5)


def test_keras3_file_with_lambda_or_custom_class_refused(tmp_path):
    inp = keras.Input((3,))
    lam = keras.Model(inp, keras.layers.Lambda(lambda t: t * 3.0, name="times3")(inp))
    path = str(tmp_path / "lambda.keras")
    lam.save(path)
    with pytest.raises(UnsafeModelError, match=r"'times3'.*safe_mode=False"):
        load_model(path)
    x = np.ones((1, 3), "float32")
    np.testing.assert_allclose(_outputs(load_model(path, safe_mode=False), x)[0], 3 * x)

    custom = keras.Model(inp, _Scale(2.0, name="scale2")(inp))
    path = str(tmp_path / "custom.keras")
    custom.save(path)
    with pytest.raises(UnsafeModelError, match=r"'scale2'.*_Scale.*custom_objects"):
        load_model(path)
    np.testing.assert_allclose(
        _outputs(load_model(path, custom_objects={"_Scale": _Scale}), x)[0], 2 * x)


# ------------------------------------------------------------------------------------------
# Broken files: one-line errors naming the file
# ------------------------------------------------------------------------------------------
def _assert_one_line(exc_info, path):
    message = str(exc_info.value)
    assert "\n" not in message
    assert os.fspath(path) in message


def test_missing_file(tmp_path):
    path = tmp_path / "nope.h5"
    with pytest.raises(ModelFileNotFoundError) as info:
        load_model(path)
    assert isinstance(info.value, FileNotFoundError) and isinstance(info.value, ValueError)
    _assert_one_line(info, path)


def test_text_and_empty_files(tmp_path):
    text = tmp_path / "notes.h5"
    text.write_text("this is not a model\n")
    with pytest.raises(ModelFileError, match="neither an HDF5") as info:
        load_model(text)
    _assert_one_line(info, text)
    empty = tmp_path / "empty.keras"
    empty.write_bytes(b"")
    with pytest.raises(ModelFileError, match="empty") as info:
        load_model(empty)
    _assert_one_line(info, empty)


def test_truncated_files(tmp_path):
    data = open(SST_H5, "rb").read()
    path = tmp_path / "truncated.h5"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError) as info:
        load_model(path)
    _assert_one_line(info, path)

    good = tmp_path / "good.keras"
    inp = keras.Input((2,))
    keras.Model(inp, keras.layers.Dense(1)(inp)).save(good)
    cut = tmp_path / "truncated.keras"
    cut.write_bytes(good.read_bytes()[:200])
    with pytest.raises(ModelFileError, match="not a valid .keras") as info:
        load_model(cut)
    _assert_one_line(info, cut)


def test_h5_without_model_config(tmp_path):
    plain = tmp_path / "data.h5"
    with h5py.File(plain, "w") as f:
        f.create_dataset("x", data=np.arange(3))
    with pytest.raises(ModelFileError, match="model_config") as info:
        load_model(plain)
    _assert_one_line(info, plain)

    weights_only = tmp_path / "only.weights.h5"
    inp = keras.Input((2,))
    model = keras.Model(inp, keras.layers.Dense(1)(inp))
    model.save_weights(weights_only)
    with pytest.raises(ModelFileError, match="model_config") as info:
        load_model(weights_only)
    _assert_one_line(info, weights_only)


def test_corrupt_keras_archive_without_config(tmp_path):
    path = tmp_path / "odd.keras"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("readme.txt", "hello")
    with pytest.raises(ModelFileError) as info:
        load_model(path)
    _assert_one_line(info, path)


# ------------------------------------------------------------------------------------------
# tf.keras op layers (TFOpLambda / SlicingOpLambda): an allow-list rebuilt as keras.ops nodes
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tfk_ops(tmp_path_factory):
    """A tf.keras .h5 using every allowed TensorFlow function between layers, with its predictions."""
    pytest.importorskip("tf_keras")
    import tensorflow as tf
    import tf_keras as K
    K.utils.set_random_seed(3)
    inp = K.Input((5, 3))
    h = K.layers.LSTM(4, return_sequences=True)(inp)
    last, mean = h[:, -1], tf.math.reduce_mean(h, axis=1)
    w = tf.nn.softmax(K.layers.Dense(1)(h), axis=1)
    pooled = tf.reduce_sum(tf.math.multiply(w, h), axis=1, keepdims=True)[:, 0]
    square = tf.squeeze(tf.expand_dims(tf.transpose(tf.reshape(pooled + last, (-1, 2, 2)), perm=[0, 2, 1]), 1),
                        axis=1)
    parts = [tf.concat([last, mean], axis=-1), tf.reshape(square, (-1, 4)),
             tf.math.truediv(tf.cast(last, "float32") - mean, 2.0), 1.0 - last, 0.5 * last, -h[:, 0],
             tf.reduce_sum(tf.stack([last, mean], axis=1), axis=1), tf.math.sigmoid(mean), h[:, 1:4:2, 0],
             tf.math.subtract(last, mean) / 3.0]
    out = K.layers.Dense(2)(tf.concat(parts, axis=-1))
    model = K.Model(inp, [out, h[..., 0], h[:, None, -1]])
    folder = tmp_path_factory.mktemp("tfk_ops")
    path, keras_path = str(folder / "ops.h5"), str(folder / "ops.keras")
    model.save(path)
    K.Model(inp, [out, model.outputs[2]]).save(keras_path)  # tf.keras cannot write `...` in a .keras
    x = np.random.default_rng(4).standard_normal((2, 5, 3)).astype("float32")
    functions = sorted({l.get_config()["function"] for l in model.layers
                        if type(l).__name__ in ("TFOpLambda", "SlicingOpLambda")})
    return {"path": path, "keras_path": keras_path, "x": x, "keras_outputs": [0, 2], "y": [np.asarray(y) for y in model(x)], "functions": functions}


def _edit_model_config(src, dst, edit):
    """Copy an .h5 model file and rewrite its model_config JSON with ``edit(config)``."""
    with open(src, "rb") as f, open(dst, "wb") as g:
        g.write(f.read())
    with h5py.File(dst, "r+") as f:
        config = json.loads(f.attrs["model_config"])
        edit(config)
        f.attrs["model_config"] = json.dumps(config)


def _op_entries(config, function=None):
    return [e for e in config["config"]["layers"]
            if e["class_name"] in ("TFOpLambda", "SlicingOpLambda")
            and (function is None or e["config"]["function"] == function)]


@pytest.mark.parametrize("key", ["path", "keras_path"])
def test_tf_keras_op_layers_rebuilt_as_keras_ops(tfk_ops, key):
    """Every allowed function (getitem with ..., None and steps; constants on either side) predicts as
    tf.keras did, and each op layer is a keras.ops node, not a layer (.h5 and tf.keras's .keras)."""
    assert len(tfk_ops["functions"]) >= 15, tfk_ops["functions"]
    model = load_model(tfk_ops[key])
    wants = tfk_ops["y"] if key == "path" else [tfk_ops["y"][i] for i in tfk_ops["keras_outputs"]]
    assert len(model.outputs) == len(wants)
    for got, want in zip(_outputs(model, tfk_ops["x"]), wants):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max())
    names = {type(op).__name__ for op in model.operations if not isinstance(op, keras.layers.Layer)}
    assert {"GetItem", "Mean", "Sum", "Softmax", "Multiply", "Concatenate", "Reshape", "Transpose",
            "ExpandDims", "Squeeze", "Cast", "Subtract", "TrueDivide", "Negative", "Stack", "Sigmoid",
            "Add"} <= names, names
    assert not any(isinstance(op, keras.layers.Lambda) for op in model.operations)


@pytest.mark.parametrize("function", ["math.cumsum", "io.write_file", "nn.relu6", "compat.v1.py_func"])
def test_tf_keras_op_outside_allow_list_refused_by_name(tfk_ops, tmp_path, function):
    def edit(config):
        _op_entries(config, "math.reduce_mean")[0]["config"]["function"] = function

    path = str(tmp_path / "other_op.h5")
    _edit_model_config(tfk_ops["path"], path, edit)
    with pytest.raises(UnsupportedModelError, match=rf"'tf.math.reduce_mean(_\d+)?' \(TFOpLambda\).*"
                                                    rf"'{function}'.*rebuilds only") as info:
        load_model(path)
    assert "\n" not in str(info.value)


def test_tf_keras_op_naming_os_system_runs_nothing(tfk_ops, tmp_path, monkeypatch):
    """A crafted TFOpLambda naming os.system (or eval, __import__) is refused before anything runs."""
    calls = []
    monkeypatch.setattr(os, "system", lambda *a, **k: calls.append(a) or 0)
    marker = tmp_path / "pwned"
    for function in ("os.system", "builtins.eval", "__import__", "__operators__.getitem.__globals__"):
        def edit(config, function=function):
            entry = _op_entries(config, "math.reduce_mean")[0]
            entry["config"]["function"] = function
            entry["inbound_nodes"][0][3] = {"command": f"touch {marker}", "source": "1"}

        path = str(tmp_path / "os_system.h5")
        _edit_model_config(tfk_ops["path"], path, edit)
        with pytest.raises(UnsupportedModelError, match=rf"'{function}'.*rebuilds only"):
            load_model(path)
    assert calls == [] and not marker.exists()


@pytest.mark.parametrize("function, kwargs, pattern", [
    ("math.reduce_mean", {"axis": 1, "command": "ls"}, r"argument 'command'"),
    ("math.reduce_mean", {"axis": "os.system"}, r"argument axis="),
    ("__operators__.getitem", {"slice_spec": [{"class_name": "__lambda__"}, -1]}, r"slices with"),
    ("__operators__.getitem", {"slice_spec": [{"start": "a", "stop": None, "step": None}]}, r"slices with"),
    ("cast", {"dtype": "object"}, r"argument dtype="),
])
def test_tf_keras_op_with_unexpected_arguments_refused(tfk_ops, tmp_path, function, kwargs, pattern):
    def edit(config):
        _op_entries(config, function)[0]["inbound_nodes"][0][3] = kwargs

    path = str(tmp_path / "bad_args.h5")
    _edit_model_config(tfk_ops["path"], path, edit)
    with pytest.raises(UnsupportedModelError, match=pattern) as info:
        load_model(path)
    assert "\n" not in str(info.value)


@pytest.fixture(scope="module")
def tfk_any_length(tmp_path_factory):
    """A tf.keras .h5 over sequences of any length: h[:, -1] and reduce_sum(h, axis=1), concatenated."""
    pytest.importorskip("tf_keras")
    import tensorflow as tf
    import tf_keras as K
    K.utils.set_random_seed(5)
    inp = K.Input((None, 3))
    h = K.layers.LSTM(4, return_sequences=True)(inp)
    out = K.layers.Dense(2)(tf.concat([h[:, -1], 0.5 * tf.reduce_sum(h, axis=1)], axis=-1))
    path = str(tmp_path_factory.mktemp("tfk_any_length") / "any_length.h5")
    K.Model(inp, out).save(path)
    return path


@pytest.mark.parametrize("function, kwargs, pattern", [
    ("__operators__.getitem", {"slice_spec": [{"start": None, "stop": None, "step": None}, 10**30]},
     r"slices with 10{30}; only 64-bit integer"),
    ("__operators__.getitem", {"slice_spec": [{"start": None, "stop": None, "step": None}, -2**63 - 1]},
     r"slices with -9223372036854775809"),
    ("__operators__.getitem", {"slice_spec": [{"start": None, "stop": None, "step": None},
                                              {"start": 0, "stop": 2**64, "step": None}, 0]},
     r"slices with \{'start': 0, 'stop': 18446744073709551616"),
    ("__operators__.getitem", {"slice_spec": [{"start": None, "stop": None, "step": None},
                                              {"start": 1, "stop": None, "step": 0}, 0]}, r"slices with step 0"),
    ("math.reduce_sum", {"axis": 10**30}, r"argument axis=10{30} does not fit a 64-bit integer"),
])
def test_tf_keras_op_with_out_of_range_integers_refused_at_load(tfk_any_length, tmp_path, function, kwargs,
                                                                pattern):
    """On an axis of unknown length Keras cannot bound an index, so h[:, 10**30] loaded and explain then
    failed with TypeError "in user code"; integers must fit int64 (and steps be non-zero) at load."""
    x = np.random.default_rng(6).standard_normal((1, 4, 3)).astype("float32")
    assert np.isfinite(_outputs(load_model(tfk_any_length), x)[0]).all()

    def edit(config):
        _op_entries(config, function)[0]["inbound_nodes"][0][3].update(kwargs)

    path = str(tmp_path / "huge_index.h5")
    _edit_model_config(tfk_any_length, path, edit)
    with pytest.raises(UnsupportedModelError, match=rf"huge_index.h5: layer 'tf\.{re.escape(function)}.*{pattern}") \
            as info:
        load_model(path)
    assert "\n" not in str(info.value)


def test_tf_keras_constant_beyond_int64_refused(tfk_any_length, tmp_path):
    def edit(config):
        node = next(e for e in config["config"]["layers"] if e["name"].startswith("tf.math.multiply"))
        node["inbound_nodes"][0][2] = 10**30      # ["_CONSTANT_VALUE", -1, 0.5, {"y": h}]

    path = str(tmp_path / "huge_constant.h5")
    _edit_model_config(tfk_any_length, path, edit)
    with pytest.raises(UnsupportedModelError, match=r"'tf\.math\.multiply.*constant 10{30}; only finite numbers"):
        load_model(path)
