"""LSTM forward pass with cached activations, and LRP backward through time (Arras et al. 2017).

One direction at a time (a Bidirectional layer runs two independent loops, which TensorFlow may
run in parallel), vectorised over the batch and kept time-major: tensors are (time, batch, .),
the sequence in its processing order (reversed time for ``go_backwards``). Only the recurrence
itself is a loop over time (``tf.scan``); everything that does not depend on it (input
projections, denominators, input relevance) is computed for all timesteps at once.

Shapes: x (time, batch, e); states (time, batch, d); kernel (e, 4d); recurrent_kernel (d, 4d);
bias (4d,) or None. Gate order i, f, c (= g), o.
"""
from __future__ import annotations

from typing import Callable, Dict, Optional, Tuple

import tensorflow as tf

from .cells import lstm_step
from .rules import Epsilon, bias_share, inverse_denominator

__all__ = ["lstm_forward", "lstm_relevance"]


def lstm_forward(x: tf.Tensor, kernel: tf.Tensor, recurrent_kernel: tf.Tensor, bias,
                 activation: Callable, recurrent_activation: Callable) -> Dict[str, tf.Tensor]:
    """Run an LSTM over its (already ordered) input sequence from zero states.

    Returns the (time, batch, d) tensors the backward pass needs: hidden states ``h``, cell
    states ``c``, the two products of the cell update ``fc`` = f_t c_{t-1} and ``ig`` = i_t g_t, and
    the cell candidate's pre-activation ``z_g``.
    """
    xz = tf.einsum("tbe,ef->tbf", x, kernel)
    if bias is not None:
        xz = xz + bias
    d = recurrent_kernel.shape[0]
    zeros = tf.zeros_like(xz[0, :, :d])

    def step(carry, xz_t):
        h_tm1, c_tm1 = carry[0], carry[1]
        z = xz_t + tf.matmul(h_tm1, recurrent_kernel)
        s = lstm_step(z, c_tm1, activation, recurrent_activation)
        return s.h, s.c, s.fc, s.ig, z[..., 2 * d:3 * d]

    h, c, fc, ig, z_g = tf.scan(step, xz, initializer=(zeros,) * 5)
    return {"h": h, "c": c, "fc": fc, "ig": ig, "z_g": z_g}


def lstm_relevance(x: tf.Tensor, acts: Dict[str, tf.Tensor], kernel: tf.Tensor,
                   recurrent_kernel: tf.Tensor, bias, r_h_last: tf.Tensor, rule: Epsilon,
                   r_h_seq: Optional[tf.Tensor] = None) -> Tuple[tf.Tensor, tf.Tensor]:
    """Signal-take-all LRP from the hidden states back to the inputs, through time.

    Per step, in reverse (Arras et al. 2017, Sect. 3, with the reference implementation's
    conventions):

    * ``h_t = o_t * tanh(c_t)``: the gate gets nothing, ``c_t`` receives all of R(h_t);
    * ``c_t = f_t * c_{t-1} + i_t * g_t``: epsilon-rule over the two products (fan-in N = 2d),
      each product passes all of its relevance to its signal (``c_{t-1}``, resp. ``g_t``);
    * ``g_t = tanh(x_t W_g + h_{t-1} U_g + b_g)``: the activation passes relevance unchanged,
      then the epsilon-rule over ``[x_t, h_{t-1}]`` (fan-in N = d + e).

    Args:
        x: inputs (time, batch, e) in processing order.
        acts: ``h``, ``c``, ``fc``, ``ig``, ``z_g`` as returned by :func:`lstm_forward`.
        r_h_last: relevance on the last hidden state, (batch, d).
        rule: the epsilon-rule's parameters.
        r_h_seq: optional relevance arriving on every hidden state, (time, batch, d).

    Returns:
        ``(r_x, rest)``: input relevance (time, batch, e) and the relevance left on the zero
        initial states (batch,).
    """
    d = recurrent_kernel.shape[0]
    e = x.shape[-1]
    w_g = kernel[:, 2 * d:3 * d]               # (e, d)
    u_g = recurrent_kernel[:, 2 * d:3 * d]     # (d, d)
    b_g = None if bias is None else bias[2 * d:3 * d]
    h, c, z_g = acts["h"], acts["c"], acts["z_g"]
    share = rule.has_bias_share

    # Everything the recurrence needs that does not depend on it, for all timesteps at once.
    per_step = {"fc": acts["fc"], "ig": acts["ig"],
                "inv_c": inverse_denominator(c, rule), "inv_g": inverse_denominator(z_g, rule),
                "h_prev": tf.concat([tf.zeros_like(h[:1]), h[:-1]], axis=0)}
    if share:
        per_step.update(c=c, z_g=z_g)
    if r_h_seq is not None:
        per_step["r_h"] = r_h_seq
    zeros = tf.zeros_like(r_h_last)

    def step(carry, s):
        r_h, r_c = carry[0], carry[1]
        if r_h_seq is not None:
            r_h = r_h + s["r_h"]
        m_c = (r_h + r_c) * s["inv_c"]
        r_c_prev = s["fc"] * m_c
        r_g = s["ig"] * m_c
        if share:
            share_c = bias_share(m_c, s["c"], None, rule, 2 * d)
            r_c_prev, r_g = r_c_prev + share_c, r_g + share_c
        m_g = r_g * s["inv_g"]
        r_h_prev = s["h_prev"] * tf.matmul(m_g, u_g, transpose_b=True)
        if not share:
            return r_h_prev, r_c_prev, m_g
        share_g = bias_share(m_g, s["z_g"], b_g, rule, d + e)
        return r_h_prev + share_g, r_c_prev, m_g, share_g

    init = (r_h_last, zeros, zeros) + ((zeros[..., :1],) if share else ())
    out = tf.scan(step, per_step, initializer=init, reverse=True)
    # out[0] / out[1] are stacked over time; index 0 holds what reached the initial states.
    rest = tf.reduce_sum(out[0][0] + out[1][0], axis=-1)
    r_x = x * tf.einsum("tbd,ed->tbe", out[2], w_g)
    if share:
        r_x = r_x + out[3]
    return r_x, rest
