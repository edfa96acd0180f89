"""explain() on random models of odd sizes against the independent numpy oracle (tests/oracle.py)."""
import numpy as np
import keras
import pytest

import oracle
import keras_lrp
from conftest import BACKEND, conditioned_bound

FEATURES, UNITS, CLASSES = 7, 11, 3


def random_model(kind, dense_bias=True, activation="softmax", seed=0):
    keras.utils.set_random_seed(seed)
    lstm = keras.layers.LSTM(UNITS, go_backwards=(kind == "backwards"))
    rnn = keras.layers.Bidirectional(lstm) if kind == "bidi" else lstm
    model = keras.Sequential([keras.Input((None, FEATURES)), rnn,
                              keras.layers.Dense(CLASSES, use_bias=dense_bias, activation=activation)])
    # Non-trivial biases (Keras initialises them to zeros / ones).
    rng = np.random.default_rng(seed)
    model.set_weights([w + (0.3 * rng.standard_normal(w.shape) if w.ndim == 1 else 0)
                       for w in model.get_weights()])
    return model


def oracle_weights(model):
    w = model.get_weights()
    if len(w) in (4, 7):  # Dense without bias
        w = w + [np.zeros(CLASSES)]
    return [np.asarray(a, np.float64) for a in w]


def run_oracle(model, kind, x, targets, eps, bf):
    w = oracle_weights(model)
    out = [oracle.explain_bilstm_dense(x[i].astype(np.float64), targets[i], w, eps, bf,
                                       bidirectional=(kind == "bidi"), go_backwards=(kind == "backwards"))
           for i in range(len(x))]
    return (np.stack([o[0] for o in out]), np.array([o[1] for o in out]), np.stack([o[2] for o in out]))


@pytest.mark.parametrize("kind", ["uni", "backwards", "bidi"])
@pytest.mark.parametrize("eps,bf", [(1e-3, 0.0), (0.0, 1.0), (0.01, 1.0), (0.1, 0.5)])
def test_matches_oracle_float64(kind, eps, bf):
    model = random_model(kind, seed=hash((kind, eps)) % 1000)
    x = np.random.default_rng(1).standard_normal((4, 5, FEATURES))
    targets = np.array([0, 1, 2, 1])
    e = keras_lrp.explain(model, x, targets, eps=eps, bias_factor=bf, dtype="float64")
    r, rest, scores = run_oracle(model, kind, x, targets, eps, bf)
    np.testing.assert_allclose(e.scores, scores, rtol=1e-10, atol=1e-12)
    assert np.abs(e.relevance - r).max() <= 1e-8 * np.abs(r).max()
    np.testing.assert_allclose(e.rest, rest, rtol=1e-8, atol=1e-12)
    np.testing.assert_array_equal(e.target, targets)


@pytest.mark.parametrize("kind", ["uni", "backwards", "bidi"])
@pytest.mark.parametrize("dense_bias", [True, False])
def test_conservation(kind, dense_bias):
    """eps = 0, bias_factor = 1: sum(relevance) + rest == explained pre-activation score."""
    model = random_model(kind, dense_bias=dense_bias, seed=3)
    x = np.random.default_rng(2).standard_normal((6, 9, FEATURES))
    e = keras_lrp.explain(model, x, eps=0.0, bias_factor=1.0, dtype="float64")
    np.testing.assert_allclose(e.relevance.sum((1, 2)) + e.rest, e.explained_score, rtol=0, atol=1e-8)
    # the bias really is redistributed: without it, conservation fails
    e0 = keras_lrp.explain(model, x, eps=0.0, bias_factor=0.0, dtype="float64")
    assert np.abs(e0.relevance.sum((1, 2)) + e0.rest - e0.explained_score).max() > 1e-4


def test_scores_are_pre_activation_and_match_model():
    model = random_model("bidi", activation="softmax")
    x = np.random.default_rng(0).standard_normal((5, 6, FEATURES)).astype("float32")
    e = keras_lrp.explain(model, x)
    probs = model.predict(x, verbose=0)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(keras.ops.softmax(e.scores)), probs, atol=1e-6)
    np.testing.assert_array_equal(e.target, probs.argmax(-1))  # None = predicted class


def test_float32_agrees_with_float64():
    model = random_model("bidi")
    x = np.random.default_rng(5).standard_normal((8, 12, FEATURES))
    e32 = keras_lrp.explain(model, x, dtype="float32")
    e64 = keras_lrp.explain(model, x, dtype="float64")
    assert e32.relevance.dtype == np.float32
    assert np.abs(e32.relevance - e64.relevance).max() <= 1e-5 * np.abs(e64.relevance).max()


def assert_batch_independent(got, want, model, x, target):
    """``got`` (a sample explained in one batch) equals ``want`` (in another) bit for bit. On torch within
    the case's float64 rounding bound (``conditioned_bound``) instead: MKL's float64 matrix product there
    rounds a row by its position in the block of rows (with an odd row length, rows 1, 3, 5 of 7 differ
    from the same sample alone by 1e-17, 2e-15 relative, at BATCH_ROWS 4 and 8 alike; measured)."""
    if BACKEND != "torch":
        np.testing.assert_array_equal(got, want)
        return
    weights = model.get_weights()

    def relevance(*arrays):
        model.set_weights(arrays[:-1])
        return keras_lrp.explain(model, arrays[-1], target, dtype="float64").relevance

    try:
        bound = conditioned_bound(relevance, weights + [x])
    finally:
        model.set_weights(weights)
    assert np.abs(got - want).max() <= bound * np.abs(want).max()


def test_targets_int_and_per_sample_and_batching():
    model = random_model("uni")
    x = np.random.default_rng(6).standard_normal((7, 4, FEATURES))
    all2 = keras_lrp.explain(model, x, 2, dtype="float64")
    np.testing.assert_array_equal(all2.target, np.full(7, 2))
    per = keras_lrp.explain(model, x, [2, 0, 1, 2, 0, 1, 2], dtype="float64")
    for i, t in enumerate([2, 0, 1, 2, 0, 1, 2]):
        one = keras_lrp.explain(model, x[i:i + 1], t, dtype="float64")
        assert_batch_independent(per.relevance[i], one.relevance[0], model, x[i:i + 1], t)
    chunked = keras_lrp.explain(model, x, 2, dtype="float64", batch_size=3)
    assert_batch_independent(chunked.relevance, all2.relevance, model, x, 2)
    assert all2.word_relevance.shape == (7, 4)
    np.testing.assert_allclose(all2.word_relevance, all2.relevance.sum(-1))


def test_explainer_reads_live_weights():
    model = random_model("uni")
    x = np.random.default_rng(7).standard_normal((2, 3, FEATURES))
    before = keras_lrp.explain(model, x, 0, dtype="float64")
    model.set_weights([w * 1.5 for w in model.get_weights()])
    after = keras_lrp.explain(model, x, 0, dtype="float64")
    r, _, _ = run_oracle(model, "uni", x, [0, 0], 1e-3, 0.0)
    assert not np.allclose(before.relevance, after.relevance)
    assert np.abs(after.relevance - r).max() <= 1e-8 * np.abs(r).max()


def test_functional_model_and_lrp_cell_model():
    inp = keras.Input((None, FEATURES))
    h = keras.layers.Bidirectional(keras.layers.RNN(keras_lrp.LRP_LSTMCell(UNITS)))(inp)
    out = keras.layers.Dense(CLASSES)(h)
    model = keras.Model(inp, out)
    x = np.random.default_rng(8).standard_normal((3, 5, FEATURES))
    e = keras_lrp.explain(model, x, eps=0.0, bias_factor=1.0, dtype="float64")
    r, rest, scores = run_oracle(model, "bidi", x, e.target, 0.0, 1.0)
    assert np.abs(e.relevance - r).max() <= 1e-8 * np.abs(r).max()


def test_zero_denominator_gives_no_nan():
    """eps = 0 with exact zero pre-activations (all-zero weights): 0/0 := 0, never NaN/inf."""
    model = random_model("bidi")
    model.set_weights([np.zeros_like(w) for w in model.get_weights()])
    x = np.zeros((2, 3, FEATURES))
    e = keras_lrp.explain(model, x, eps=0.0, bias_factor=1.0, dtype="float64")
    assert np.all(np.isfinite(e.relevance)) and np.all(np.isfinite(e.rest))
    assert np.all(e.relevance == 0)


@pytest.mark.parametrize("method", ["gi", "sa", "occlusion"])
def test_gradient_and_perturbation_walks_run_recurrent_layers_as_keras(method, monkeypatch):
    """Without a relevance pass (the gradient and perturbation baselines), recurrent and attention layers
    computing in the explainer's dtype run as Keras runs them (a float64 model explained in float64: masks,
    go_backwards, a returned sequence, an initial state from another layer, masked self-attention): the same
    values as through keras_lrp's own forward passes, to float64 rounding. A float32 model explained in
    float64, a stateful layer and LRP keep the own ones."""
    from keras_lrp.propagators.attention import MultiHeadAttentionProp
    from keras_lrp.propagators.base import Propagator
    from keras_lrp.propagators.recurrent import RecurrentProp

    L = keras.layers
    keras.utils.set_random_seed(7)
    ids = keras.Input((None,), dtype="int32")
    x = L.Embedding(12, 5, mask_zero=True, dtype="float64")(ids)
    seq, h, c = L.LSTM(4, return_sequences=True, return_state=True, dtype="float64")(x)
    y = L.Bidirectional(L.GRU(3, dtype="float64"), dtype="float64")(seq)
    z = L.LSTM(3, go_backwards=True, dtype="float64")(seq, initial_state=[L.Dense(3, dtype="float64")(h), c[:, :3]])
    a = L.GlobalAveragePooling1D(dtype="float64")(L.MultiHeadAttention(2, 3, dtype="float64")(seq, seq))
    model = keras.Model(ids, L.Dense(2, dtype="float64")(L.Concatenate(dtype="float64")([y, z, a])))
    tokens = np.random.default_rng(7).integers(1, 12, (5, 6))
    tokens[2, 4:] = 0
    kwargs = dict(method=method, dtype="float64", eps=0.0, bias_factor=1.0)
    as_keras = keras_lrp.Explainer(model, **kwargs)
    props = [s.prop for s in as_keras._walk.steps if isinstance(s.prop, (RecurrentProp, MultiHeadAttentionProp))]
    assert len(props) == 4 and all(p.runs_as_keras for p in props)
    got = as_keras.attribute(tokens, 1)
    with monkeypatch.context() as m:
        m.setattr(Propagator, "runs_as_keras", property(lambda self: False))
        own = keras_lrp.Explainer(model, **kwargs).attribute(tokens, 1)
    # The same function in another order of operations (Keras's attention masks its softmax by adding a large
    # negative number, its loops and projections differ): measured 1.8e-12 of the largest relevance here, so
    # 1e-9 leaves 500x for other CPUs; a step or mask applied differently errs at the relevance's own scale.
    # On JAX, Keras's own MultiHeadAttention is less exact in float64: 6.0e-9 apart (its recurrent layers: 1e-16).
    bound = 1e-7 if BACKEND == "jax" else 1e-9
    np.testing.assert_allclose(got.relevance, own.relevance, rtol=0, atol=bound * np.abs(own.relevance).max())
    np.testing.assert_allclose(got.scores, own.scores, rtol=0, atol=bound * np.abs(own.scores).max())
    assert not any(isinstance(s.prop, RecurrentProp) and s.prop.runs_as_keras
                   for s in keras_lrp.Explainer(random_model("bidi"), method=method, dtype="float64")._walk.steps)
    keras.utils.set_random_seed(8)
    stateful = keras.Sequential([keras.Input((4, 3), batch_size=2), L.LSTM(3, stateful=True), L.Dense(2)])
    for explainer in (keras_lrp.Explainer(stateful, method=method), keras_lrp.LRP(model, dtype="float64")):
        assert not any(getattr(s.prop, "runs_as_keras", False) for s in explainer._walk.steps)


@pytest.mark.parametrize("kind", ["uni", "bidi"])
def test_gradient_baselines_match_finite_differences(kind):
    """method="gi" / "sa": gradient of the pre-activation target score, checked numerically."""
    model = random_model(kind, activation="softmax")
    x = np.random.default_rng(9).standard_normal((2, 4, FEATURES))
    gi = keras_lrp.explain(model, x, 1, method="gi", dtype="float64")
    sa = keras_lrp.explain(model, x, 1, method="sa", dtype="float64")
    w = oracle_weights(model)
    h = 1e-6
    grad = np.zeros_like(x)
    for idx in np.ndindex(*x.shape):
        xp, xm = x.copy(), x.copy()
        xp[idx] += h
        xm[idx] -= h
        sp = oracle.explain_bilstm_dense(xp[idx[0]], 1, w, 0.0, 0.0, bidirectional=(kind == "bidi"))[2][1]
        sm = oracle.explain_bilstm_dense(xm[idx[0]], 1, w, 0.0, 0.0, bidirectional=(kind == "bidi"))[2][1]
        grad[idx] = (sp - sm) / (2 * h)
    np.testing.assert_allclose(gi.relevance, grad * x, atol=1e-7)
    np.testing.assert_allclose(sa.relevance, grad ** 2, atol=1e-7)
    np.testing.assert_array_equal(gi.rest, 0)
