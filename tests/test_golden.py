"""Exact agreement with the authors' reference implementation (Arras et al. 2017) on the paper's SST bi-LSTM."""
import numpy as np
import keras
import pytest

import oracle
from conftest import BACKEND, GOLDEN_WEIGHT_KEYS, conditioned_bound, golden_cases

import keras_lrp


def paper_model(dtype="float32"):
    model = keras.Sequential([
        keras.Input((None, 60), dtype=dtype),
        keras.layers.Bidirectional(keras.layers.LSTM(60, dtype=dtype), dtype=dtype),
        keras.layers.Dense(5, use_bias=False, dtype=dtype),
    ])
    return model


def max_rel_err(a, b):
    return np.abs(a - b).max() / np.abs(b).max()


@pytest.fixture(scope="module")
def weights(golden):
    return [golden[k] for k in GOLDEN_WEIGHT_KEYS]


@pytest.mark.tensorflow_only   # numpy alone: the same on every backend
def test_oracle_reproduces_golden(golden, weights):
    """The test oracle itself is validated against the reference implementation's numbers.

    The bound of each case comes from its own conditioning (``conditioned_bound``): the eps = 0
    cases divide by near-cancelling sums, and CPUs / BLAS builds differ there in the last digits
    (case 1_cons differs by 5.2e-12 on AMD EPYC, where a fixed 1e-12 failed; its bound is ~2e-10)."""
    for name, x, target, eps, bf, scores, relevance, rest in golden_cases(golden):
        def relevance_of(x, *w):
            return oracle.explain_bilstm_dense(x, target, list(w), eps, bf)[0]
        bound = conditioned_bound(relevance_of, [x] + weights)
        assert bound <= 1e-9, (name, bound)   # the golden cases are all well enough conditioned
        r, rest_o, scores_o = oracle.explain_bilstm_dense(x, target, weights, eps, bf)
        assert max_rel_err(r, relevance) < bound, (name, max_rel_err(r, relevance), bound)
        assert abs(rest_o - rest) < bound * max(1.0, abs(rest)), name
        assert np.allclose(scores_o, scores, rtol=0, atol=1e-12), name


@pytest.mark.parametrize("jit_compile", [False, True])
def test_explain_float64_matches_golden(golden, weights, jit_compile):
    """Also compiled by XLA (``jit_compile=True``, TensorFlow; JAX always compiles so), on the first six
    sentences' 12 cases (XLA compiles once per sentence length: ~4 s a sentence here)."""
    if jit_compile and BACKEND != "tensorflow":
        pytest.skip("JAX compiles with XLA either way; torch has no XLA compiler here")
    model = paper_model()
    model.set_weights(weights[:-1])
    cases = list(golden_cases(golden))
    assert len(cases) == 48
    for name, x, target, eps, bf, scores, relevance, rest in cases[:12] if jit_compile else cases:
        e = keras_lrp.explain(model, x[None], target, eps=eps, bias_factor=bf, dtype="float64", jit_compile=jit_compile)
        assert e.relevance.dtype == np.float64
        assert max_rel_err(e.relevance[0], relevance) <= 1e-8, name
        assert max_rel_err(e.word_relevance[0], relevance.sum(-1)) <= 1e-8, name
        assert abs(e.rest[0] - rest) <= 1e-8 * max(1.0, abs(rest)), name
        np.testing.assert_allclose(e.scores[0], scores, rtol=1e-10, atol=1e-12)
        if eps == 0.0 and bf == 1.0:
            assert abs(e.relevance[0].sum() + e.rest[0] - scores[target]) <= 1e-8, name


@pytest.mark.tensorflow_only   # the backends' agreement is checked in float64 (above, test_backends)
def test_explain_float32_close_to_golden(golden, weights):
    """float32 in the paper's setting (eps > 0). With eps = 0 the rule divides by cancelling sums
    (c_t = f c_{t-1} + i g near 0) and float32 rounding is amplified: use dtype="float64" there."""
    model = paper_model()
    model.set_weights(weights[:-1])
    for name, x, target, eps, bf, scores, relevance, rest in golden_cases(golden):
        if eps == 0:
            continue
        e = keras_lrp.explain(model, x[None], target, eps=eps, bias_factor=bf)
        assert e.relevance.dtype == np.float32
        assert max_rel_err(e.relevance[0], relevance) <= 1e-4, name
