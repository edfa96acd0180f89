"""One comparison of ``keras_lrp.explain`` (float64) with the numpy oracle of tests/oracle_attention.py,
shared by the attention, normalization and SimpleRNN tests."""
import numpy as np

import keras_lrp
import oracle_attention as OA
import oracle_layers as OL


def check_against_oracle(model, x, targets, ctx, layers, *, embedding=None, causal=False, check_rest=True):
    """explain vs the oracle chain over ``layers``: scores (1e-10), relevance (1e-8 of max |R|), rest;
    the oracle's scores vs the float32 Keras model; conservation when eps = 0, bias_factor = 1."""
    e = keras_lrp.explain(model, x, targets, eps=ctx.eps, bias_factor=ctx.bias_factor, rule=ctx.gate,
                          dtype="float64")
    r, rest, scores = OA.explain_layers(layers, x, targets, ctx, embedding=embedding, causal=causal)
    OL.assert_close_rel(e.scores, scores, 1e-10, "scores")
    OL.assert_close_rel(e.relevance, r, 1e-8)
    if check_rest:
        np.testing.assert_allclose(e.rest, rest, rtol=0, atol=1e-8 * max(1.0, np.abs(r).max()))
    np.testing.assert_allclose(OL.model_output(model, x), scores, rtol=1e-4, atol=1e-5)
    if ctx.eps == 0 and ctx.bias_factor == 1:
        OL.assert_conserves(e)
    return e
