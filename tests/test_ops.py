"""Op nodes (keras.ops calls between layers) against the plain-numpy oracles of oracle_ops.py, and
float64 conservation.

Each case is ``Input((T, F)) -> op -> [Flatten] -> Dense(C, name="head")``; the oracle runs the same
forward pass in numpy, the epsilon-rule through the head, then the op's rule.
"""
import numpy as np
import keras
import pytest
from keras import ops

import keras_lrp
import oracle_ops as O

L = keras.layers
T, F, C = 4, 3, 3
EPS, BF = 1e-3, 0.5


def _route(keras_fn, np_fn):
    return keras_fn, np_fn, lambda x, r, eps, bf, m: O.route(x, np_fn, r)


def _scaled(keras_fn, c):
    """y = c * x[:, -1]: the epsilon-rule with one term passes R unchanged."""
    return keras_fn, lambda a: c * a[:, -1], lambda x, r, eps, bf, m: O.route(x, lambda a: a[:, -1], r)


def _reduce(keras_fn, np_fn, axis, mean):
    return keras_fn, np_fn, lambda x, r, eps, bf, m: O.reduce_sum(x, axis, r, eps, bf, mean=mean)


def _add_oracle(x, r, eps, bf, m):
    r0, r1 = O.add([x[:, 0], x[:, 1]], 0.0, r, eps, bf)
    out = np.zeros_like(x)
    out[:, 0] += r0
    out[:, 1] += r1
    return out


def _subtract_oracle(x, r, eps, bf, m):
    r0, r2 = O.add([x[:, 0], -x[:, 2]], 0.0, r, eps, bf)
    out = np.zeros_like(x)
    out[:, 0] += r0
    out[:, 2] += r2
    return out


def _add_const_oracle(x, r, eps, bf, m):
    (r0,) = O.add([x[:, 0]], 1.5, r, eps, bf)
    out = np.zeros_like(x)
    out[:, 0] = r0
    return out


def _add_broadcast_oracle(x, r, eps, bf, m):
    first = np.broadcast_to(x[:, :1], x.shape)
    r_x, r_first = O.add([x, first], 0.0, r, eps, bf)
    r_x = r_x.copy()
    r_x[:, :1] += O.unbroadcast(r_first, (x.shape[0], 1, x.shape[2]))
    return r_x


def _attention_oracle(x, r, eps, bf, m):
    v, bv = m.get_layer("score").get_weights()
    return O.attention_pool(x, v.astype("float64"), bv.astype("float64"), r, eps, bf)[1]


def _attention_np(m):
    def f(x):
        v, bv = m.get_layer("score").get_weights()
        return O.attention_pool(x, v.astype("float64"), bv.astype("float64"), np.zeros((x.shape[0], F)), 0, 0)[0]
    return f


def _gate_np(m):
    def f(x):
        w, b = m.get_layer("gate").get_weights()
        return O.sigmoid(x @ w + b) * x
    return f


CASES = {
    "getitem_last": _route(lambda h: h[:, -1], lambda a: a[:, -1]),
    "getitem_slice": _route(lambda h: h[:, :, 1:3], lambda a: a[:, :, 1:3]),
    "getitem_step": _route(lambda h: h[:, ::2, 0], lambda a: a[:, ::2, 0]),
    "reshape": _route(lambda h: ops.reshape(h, (-1, T * F)), lambda a: a.reshape(-1, T * F)),
    "transpose": _route(lambda h: ops.transpose(h, (0, 2, 1)), lambda a: np.transpose(a, (0, 2, 1))),
    "expand_squeeze": _route(lambda h: ops.squeeze(ops.expand_dims(h[:, 1], 1), axis=1), lambda a: a[:, 1]),
    "concatenate": _route(lambda h: ops.concatenate([h[:, 0], h[:, -1]], axis=-1),
                          lambda a: np.concatenate([a[:, 0], a[:, -1]], axis=-1)),
    "stack": _route(lambda h: ops.stack([h[:, 0], h[:, 2]], axis=1), lambda a: np.stack([a[:, 0], a[:, 2]], axis=1)),
    "times_const": _scaled(lambda h: h[:, -1] * 2.0, 2.0),
    "divide_const": _scaled(lambda h: h[:, -1] / 4.0, 0.25),
    "negative": _scaled(lambda h: -h[:, -1], -1.0),
    "cast": _route(lambda h: ops.cast(h[:, 1], "float32"), lambda a: a[:, 1]),
    "sum_time": _reduce(lambda h: ops.sum(h, axis=1), lambda a: a.sum(axis=1), (1,), False),
    "mean_time": _reduce(lambda h: ops.mean(h, axis=1), lambda a: a.mean(axis=1), (1,), True),
    "sum_keepdims": _reduce(lambda h: ops.sum(h, axis=1, keepdims=True), lambda a: a.sum(axis=1, keepdims=True),
                            (1,), False),
    "mean_features": _reduce(lambda h: ops.mean(h, axis=-1), lambda a: a.mean(axis=-1), (2,), True),
    "add": (lambda h: h[:, 0] + h[:, 1], lambda a: a[:, 0] + a[:, 1], _add_oracle),
    "subtract": (lambda h: h[:, 0] - h[:, 2], lambda a: a[:, 0] - a[:, 2], _subtract_oracle),
    "subtract_layer": (lambda h: L.Subtract()([h[:, 0], h[:, 2]]), lambda a: a[:, 0] - a[:, 2], _subtract_oracle),
    "add_const": (lambda h: h[:, 0] + 1.5, lambda a: a[:, 0] + 1.5, _add_const_oracle),
    "add_broadcast": (lambda h: h + h[:, :1], lambda a: a + a[:, :1], _add_broadcast_oracle),
    "attention_op": (lambda h: ops.sum(ops.softmax(L.Dense(1, name="score")(h), axis=1) * h, axis=1),
                     _attention_np, _attention_oracle),
    "attention_layer": (lambda h: ops.sum(L.Softmax(axis=1)(L.Dense(1, name="score")(h)) * h, axis=1),
                        _attention_np, _attention_oracle),
    "sigmoid_gate_layer": (lambda h: L.Multiply()([L.Dense(F, activation="sigmoid", name="gate")(h), h]),
                           _gate_np, lambda x, r, eps, bf, m: r),
}


def build(name, seed=0):
    keras.utils.set_random_seed(seed)
    fn = CASES[name][0]
    inp = keras.Input((T, F))
    y = fn(inp)
    if len(y.shape) > 2:
        y = L.Flatten()(y)
    model = keras.Model(inp, L.Dense(C, name="head")(y), name=name)
    rng = np.random.default_rng(seed + 1)
    model.set_weights([w + 0.3 * rng.standard_normal(w.shape).astype(w.dtype) for w in model.get_weights()])
    return model


def numpy_forward(name, model, x):
    np_fn = CASES[name][1]
    if np_fn in (_attention_np, _gate_np):
        np_fn = np_fn(model)
    return np_fn(x)


def oracle(name, model, x, targets, eps, bf):
    y = numpy_forward(name, model, x)
    flat = y.reshape(y.shape[0], -1)
    kernel, bias = (w.astype("float64") for w in model.get_layer("head").get_weights())
    scores = O.dense_forward(flat, kernel, bias)
    r_scores = np.zeros_like(scores)
    r_scores[np.arange(len(targets)), targets] = scores[np.arange(len(targets)), targets]
    r_y = O.dense(flat, kernel, bias, r_scores, eps, bf).reshape(y.shape)
    return scores, CASES[name][2](x, r_y, eps, bf, model)


X = np.random.default_rng(7).standard_normal((5, T, F))
TARGETS = np.array([0, 1, 2, 1, 0])


@pytest.mark.parametrize("name", sorted(CASES))
def test_op_rule_matches_oracle_and_conserves(name):
    model = build(name)
    e = keras_lrp.explain(model, X, TARGETS, eps=EPS, bias_factor=BF, dtype="float64")
    scores, want = oracle(name, model, X, TARGETS, EPS, BF)
    np.testing.assert_allclose(e.scores, scores, rtol=0, atol=1e-10 * np.abs(scores).max())
    np.testing.assert_allclose(e.relevance, want, rtol=0, atol=1e-9 * np.abs(want).max())
    # the forward pass is the model's own
    np.testing.assert_allclose(e.scores, model.predict(X.astype("float32"), verbose=0), rtol=0, atol=1e-4)
    # float64 conservation: eps = 0, bias_factor = 1
    e = keras_lrp.explain(model, X, TARGETS, eps=0.0, bias_factor=1.0, dtype="float64")
    total = e.relevance.reshape(len(X), -1).sum(axis=1) + e.rest
    score = e.explained_score
    np.testing.assert_allclose(total, score, rtol=0, atol=1e-8 * np.abs(score).max())
    assert np.abs(e.relevance).max() > 0


def test_gate_gets_no_relevance_and_signal_takes_all():
    """Changing the attention scores' weights changes the output but the relevance of each step
    is still its term w_t h_t's share: holding w fixed, R_h equals the epsilon-rule over the terms."""
    model = build("attention_op")
    e = keras_lrp.explain(model, X, TARGETS, eps=0.0, bias_factor=1.0, dtype="float64")
    assert np.all(e.rest == 0)   # nothing parked: the gate subgraph received nothing
    _, want = oracle("attention_op", model, X, TARGETS, 0.0, 1.0)
    np.testing.assert_allclose(e.relevance, want, rtol=0, atol=1e-9 * np.abs(want).max())


class _DeclaredLinearSliceOracle:
    """y = 2 x[:, 1:4] (a Lambda the user declared linear): the epsilon-rule on its Jacobian,
    R_x = x * J^T (R / (y + eps sign y)), no bias share (plain numpy, one sample)."""

    def forward(self, x, mask):
        self.x = x
        self.y = 2.0 * x[:, 1:4]
        return self.y, mask

    def backward(self, r):
        den = self.y + self.ctx.eps * np.where(self.y >= 0, 1.0, -1.0)
        s = np.divide(r, den, out=np.zeros_like(r), where=den != 0)
        r_x = np.zeros_like(self.x)
        r_x[:, 1:4] = self.x[:, 1:4] * 2.0 * s
        return r_x, 0.0


@pytest.mark.parametrize("eps,bias_factor", [(1e-3, 0.0), (0.0, 1.0), (0.05, 1.0)])
def test_lambda_declared_linear_matches_numpy_oracle(eps, bias_factor):
    """Lambda -> LSTM -> Dense with the Lambda declared linear: relevance equals a plain numpy chain
    (the Lambda's Jacobian rule, then the LSTM and Dense oracles of tests/oracle_layers.py)."""
    import oracle_layers as OL
    keras.utils.set_random_seed(4)
    inp = keras.Input((5, 6))
    h = keras.layers.Lambda(lambda t: 2.0 * t[:, :, 1:4], name="pick")(inp)
    lstm = keras.layers.LSTM(3, name="lstm")
    dense = keras.layers.Dense(2, name="head")
    model = keras.Model(inp, dense(lstm(h)))
    x = np.random.default_rng(4).standard_normal((3, 5, 6))
    targets = np.array([0, 1, 0])
    e = keras_lrp.explain(model, x, targets, eps=eps, bias_factor=bias_factor, dtype="float64",
                          layer_rules={"pick": "linear"})
    oracles = [_DeclaredLinearSliceOracle(), OL.from_keras(lstm), OL.from_keras(dense, is_output=True)]
    for o in oracles:
        o.ctx = OL.Ctx(eps, bias_factor, "all")
    r, rest, scores = OL.run_oracles(oracles, x, targets)
    np.testing.assert_allclose(e.scores, scores, rtol=1e-10, atol=1e-12)
    OL.assert_close_rel(e.relevance, r, 1e-8)
    if eps == 0.0:
        np.testing.assert_allclose(e.relevance.sum(axis=(1, 2)) + e.rest, e.explained_score, rtol=1e-8)
