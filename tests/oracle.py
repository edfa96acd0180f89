"""Independent, plainly written numpy oracle for LRP on LSTM models (Arras et al. 2017).

One sample at a time, one timestep at a time, written straight from the paper's equations and
the reference implementation's conventions. It shares no code with ``keras_lrp`` and is used only
by the tests as the ground truth for random models.

Weights are in Keras layout: kernel (features, 4*units), recurrent_kernel (units, 4*units),
bias (4*units,), gate order i, f, c (candidate g), o.
"""
import numpy as np


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def eps_rule(hin, w, b, hout, r_out, bias_nb_units, eps, bias_factor):
    """Epsilon-rule for one linear map hout = hin @ w + b (+ other inputs).

    R_k = sum_m (hin_k w_km + bias_factor (b_m + eps sign(hout_m)) / N) / (hout_m + eps sign(hout_m)) R_m
    with sign(0) = +1 and N = bias_nb_units. (A zero denominator, which needs eps = 0 and an exactly
    zero pre-activation, does not occur in the tanh / sigmoid LSTMs this oracle is used for; the
    layer oracles in ``oracle_layers`` cover it.)
    """
    sign = np.where(hout >= 0, 1.0, -1.0)                               # (M,)
    numer = hin[:, None] * w + bias_factor * (b + eps * sign)[None, :] / bias_nb_units  # (D, M)
    denom = hout + eps * sign                                           # (M,)
    assert np.all(denom != 0), "zero denominator: use the oracles of oracle_layers"
    return (numer / denom[None, :] * r_out[None, :]).sum(axis=1)


def lstm_forward(x, kernel, recurrent_kernel, bias):
    """x (T, features) -> dict of per-step arrays; h and c have a row T holding the zero state."""
    T = x.shape[0]
    d = recurrent_kernel.shape[0]
    pre = np.zeros((T, 4 * d))
    gates = np.zeros((T, 4 * d))
    h = np.zeros((T + 1, d))
    c = np.zeros((T + 1, d))
    for t in range(T):
        pre[t] = x[t] @ kernel + h[t - 1] @ recurrent_kernel + bias
        i = sigmoid(pre[t, 0:d])
        f = sigmoid(pre[t, d:2 * d])
        g = np.tanh(pre[t, 2 * d:3 * d])
        o = sigmoid(pre[t, 3 * d:4 * d])
        gates[t] = np.concatenate([i, f, g, o])
        c[t] = f * c[t - 1] + i * g
        h[t] = o * np.tanh(c[t])
    return dict(pre=pre, gates=gates, h=h, c=c)


def lstm_backward(x, fwd, kernel, recurrent_kernel, bias, r_h_last, eps, bias_factor):
    """Signal-take-all LRP through one LSTM direction. Returns (R_x (T, features), rest)."""
    T, e = x.shape
    d = recurrent_kernel.shape[0]
    gi, gf, gg = slice(0, d), slice(d, 2 * d), slice(2 * d, 3 * d)
    r_x = np.zeros((T, e))
    r_h = np.zeros((T + 1, d))
    r_c = np.zeros((T + 1, d))
    r_h[T - 1] = r_h_last
    eye = np.eye(d)
    zero = np.zeros(d)
    for t in reversed(range(T)):
        # h_t = o_t * tanh(c_t): the gate o gets nothing, c_t gets all of R(h_t)
        r_c[t] += r_h[t]
        # c_t = f_t * c_{t-1} + i_t * g_t: epsilon-rule between the two products,
        # each product passes everything to its signal (c_{t-1} and g_t)
        r_c[t - 1] = eps_rule(fwd["gates"][t, gf] * fwd["c"][t - 1], eye, zero, fwd["c"][t],
                              r_c[t], 2 * d, eps, bias_factor)
        r_g = eps_rule(fwd["gates"][t, gi] * fwd["gates"][t, gg], eye, zero, fwd["c"][t],
                       r_c[t], 2 * d, eps, bias_factor)
        # g_t = tanh(x_t W_g + h_{t-1} U_g + b_g): epsilon-rule over x_t and h_{t-1}
        r_x[t] = eps_rule(x[t], kernel[:, gg], bias[gg], fwd["pre"][t, gg], r_g, d + e,
                          eps, bias_factor)
        r_h[t - 1] = eps_rule(fwd["h"][t - 1], recurrent_kernel[:, gg], bias[gg],
                              fwd["pre"][t, gg], r_g, d + e, eps, bias_factor)
    rest = r_h[T].sum() + r_c[T].sum()
    return r_x, rest


def explain_bilstm_dense(x, target, weights, eps, bias_factor, bidirectional=True,
                         go_backwards=False):
    """LRP of score[target] for Input -> [Bidirectional](LSTM) -> Dense, one sample x (T, features).

    ``weights`` as from ``model.get_weights()``: [k, rk, b, (k_bw, rk_bw, b_bw,) W_dense, b_dense].
    Returns (relevance (T, features), rest, scores).
    """
    if bidirectional:
        k, rk, b, kb, rkb, bb, wd, bd = weights
        dirs = [(k, rk, b, x), (kb, rkb, bb, x[::-1])]
    else:
        k, rk, b, wd, bd = weights
        dirs = [(k, rk, b, x[::-1] if go_backwards else x)]
    fwds = [lstm_forward(xs, kk, rr, bb_) for kk, rr, bb_, xs in dirs]
    h_last = np.concatenate([f["h"][x.shape[0] - 1] for f in fwds])
    scores = h_last @ wd + bd
    r_out = np.zeros_like(scores)
    r_out[target] = scores[target]
    r_hlast = eps_rule(h_last, wd, bd, scores, r_out, h_last.shape[0], eps, bias_factor)
    relevance = np.zeros_like(x)
    rest = 0.0
    d_off = 0
    for n, ((kk, rr, bb_, xs), f) in enumerate(zip(dirs, fwds)):
        d = rr.shape[0]
        r_x, r = lstm_backward(xs, f, kk, rr, bb_, r_hlast[d_off:d_off + d], eps, bias_factor)
        d_off += d
        reversed_input = (n == 1) or (not bidirectional and go_backwards)
        relevance += r_x[::-1] if reversed_input else r_x
        rest += r
    return relevance, rest, scores
