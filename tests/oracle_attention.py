"""Plain numpy oracles for attention, normalization and SimpleRNN LRP (tests only; no keras_lrp code).

Written from the equations, one sample at a time, with explicit loops (clarity over speed, tiny
sizes). Same conventions as tests/oracle_layers.py: no batch axis; sequences (T, features); masks
(T,) bool or None; every layer oracle has ``forward(x, mask) -> (y, out_mask)`` and
``backward(r_y) -> (r_x, rest)`` and reads the rule from its ``ctx`` (eps, bias_factor, gate).

The epsilon-rule for ``z_m = sum_k x_k w_km + b_m`` with fan-in N:
``R_k = sum_m (x_k w_km + bias_factor (b_m + eps sign z_m) / N) / (z_m + eps sign z_m) R_m``,
sign(0) = +1, an output with a zero denominator passes nothing.

Rules (see keras_lrp.propagators.attention / normalization, keras_lrp.recurrent):
* attention: the weights A = softmax(masked scores) are constants; out_i = sum_j A_ij v_j is the
  epsilon-rule with the stabiliser share of query i spread over the N_i values it may attend to
  (all of them if it may attend to none); queries and keys get no relevance. Keras's Attention
  zeroes masked queries' outputs: relevance reaching them is "rest". MultiHeadAttention: epsilon-rule
  through the output projection (N = heads * value_dim), the weighted sum per head, and the value
  projection (N = value features).
* LayerNormalization: std constant, y = x W + beta with W_jk = (delta_jk - 1/D) gamma_k / std (N = D);
  rms_scaling: y_k = x_k gamma_k / std (N = 1).
* BatchNormalization: y = x a + c (N = 1); directly after a Dense / TimeDistributed(Dense) / Conv1D with a
  linear activation it is folded into that layer: one epsilon-rule over W' = W a, b' = b a + c
  (fold_batch_norm). RMSNormalization: y_k = x_k scale_k / rms (N = 1).
* SimpleRNN: z_t = x_t W + h_{t-1} U + b, h_t = act(z_t); epsilon-rule over [x_t, h_{t-1}] (N = d + e).
"""
import contextlib

import numpy as np

import oracle_layers as OL

LARGE = 1.0e9   # Keras's masked-score constant


def eps_map(blocks, bias, z, r_out, fan_in, ctx):
    """The epsilon-rule for z_m = sum over blocks (x (D,), w (D, M)) of x w + bias; one (D,) array per block."""
    return OL.eps_linear(blocks, bias, z, r_out, fan_in, ctx)


def softmax(row):
    e = np.exp(row - row.max())
    return e / e.sum()


def weighted_sum_backward(a, v, out, allowed, r, ctx):
    """out[i, d] = sum_j a[i, j] v[j, d], a constant: epsilon-rule; query i's stabiliser share goes to
    its allowed values (all values if none is allowed). Returns R_v (Tv, dv)."""
    r_v = np.zeros_like(v)
    for i in range(out.shape[0]):
        conn = allowed[i] if allowed[i].any() else np.ones(v.shape[0], bool)
        n = conn.sum()
        for d in range(out.shape[1]):
            inv, share = OL.eps_unit(out[i, d], [a[i, j] * v[j, d] for j in range(v.shape[0])], 0.0, n, ctx)
            for j in range(v.shape[0]):
                r_v[j, d] += (a[i, j] * v[j, d] * inv + (share if conn[j] else 0.0)) * r[i, d]
    return r_v


class AttentionOracle:
    """keras.layers.Attention (score_mode "dot" / "concat", use_scale) and AdditiveAttention, on one
    sample: query (Tq, dim), value (Tv, dim), key = value unless given."""

    def __init__(self, kind, scale=None, concat_weight=None, causal=False):
        self.kind, self.scale, self.cw, self.causal = kind, scale, concat_weight, causal

    def score(self, q, k):
        if self.kind == "dot":
            return q @ k * (1.0 if self.scale is None else self.scale)
        if self.kind == "concat":
            return self.cw * np.tanh((1.0 if self.scale is None else self.scale) * (q + k)).sum()
        return ((1.0 if self.scale is None else self.scale) * np.tanh(q + k)).sum()   # additive

    def attend(self, q, v, k=None, q_mask=None, v_mask=None):
        k = v if k is None else k
        tq, tv = len(q), len(v)
        self.v, self.q_mask = v, q_mask
        self.allowed = np.ones((tq, tv), bool)
        for i in range(tq):
            for j in range(tv):
                if v_mask is not None and not v_mask[j]:
                    self.allowed[i, j] = False
                if self.causal and j > i:
                    self.allowed[i, j] = False
        self.a = np.zeros((tq, tv))
        for i in range(tq):
            row = np.array([self.score(q[i], k[j]) - (0.0 if self.allowed[i, j] else LARGE) for j in range(tv)])
            self.a[i] = softmax(row)
        self.out = self.a @ v
        y = self.out.copy()
        if q_mask is not None:
            y[~q_mask] = 0.0
        return y

    def forward(self, x, mask):   # self-attention layer(h, h)
        return self.attend(x, x, None, mask, mask), mask

    def attend_backward(self, r):
        """Returns (R_value, rest); the query and key get none."""
        r, rest = r.copy(), 0.0
        if self.q_mask is not None:
            rest = r[~self.q_mask].sum()
            r[~self.q_mask] = 0.0
        return weighted_sum_backward(self.a, self.v, self.out, self.allowed, r, self.ctx), rest

    def backward(self, r):
        return self.attend_backward(r)


class MultiHeadAttentionOracle:
    """keras.layers.MultiHeadAttention on (T, dim) inputs, attention over time. Weights in Keras
    layout: W_q / W_k / W_v (dim, heads, head_dim), biases (heads, head_dim) or None, W_o (heads,
    value_dim, out), b_o (out,) or None."""

    def __init__(self, wq, bq, wk, bk, wv, bv, wo, bo, causal=False):
        self.wq, self.bq, self.wk, self.bk, self.wv, self.bv, self.wo, self.bo = wq, bq, wk, bk, wv, bv, wo, bo
        self.causal = causal

    @staticmethod
    def project(x, w, b):   # (T, dim) -> (T, heads, dh)
        out = np.zeros((x.shape[0],) + w.shape[1:])
        for t in range(x.shape[0]):
            for h in range(w.shape[1]):
                for e in range(w.shape[2]):
                    acc = 0.0 if b is None else b[h, e]
                    for c in range(x.shape[1]):
                        acc += x[t, c] * w[c, h, e]
                    out[t, h, e] = acc
        return out

    def attend(self, q_in, v_in, k_in=None, q_mask=None, v_mask=None, k_mask=None):
        k_in = v_in if k_in is None else k_in
        tq, tv = len(q_in), len(v_in)
        self.v_in = v_in
        q = self.project(q_in, self.wq, self.bq) / np.sqrt(self.wq.shape[2])
        k = self.project(k_in, self.wk, self.bk)
        self.v = v = self.project(v_in, self.wv, self.bv)
        self.allowed = np.ones((tq, tv), bool)
        for i in range(tq):
            for j in range(tv):
                for m, idx in ((q_mask, i), (v_mask, j), (k_mask, j)):
                    if m is not None and not m[idx]:
                        self.allowed[i, j] = False
                if self.causal and j > i:
                    self.allowed[i, j] = False
        heads = self.wq.shape[1]
        self.a = np.zeros((heads, tq, tv))
        self.c = np.zeros((tq, heads, v.shape[2]))
        for h in range(heads):
            for i in range(tq):
                row = np.array([q[i, h] @ k[j, h] if self.allowed[i, j] else -LARGE for j in range(tv)])
                self.a[h, i] = softmax(row)
            self.c[:, h] = self.a[h] @ v[:, h]
        flat_c = self.c.reshape(tq, -1)
        self.w_o = self.wo.reshape(-1, self.wo.shape[2])
        self.o = flat_c @ self.w_o + (0.0 if self.bo is None else self.bo)
        return self.o

    def forward(self, x, mask):
        return self.attend(x, x, None, mask, mask), mask

    def attend_backward(self, r):
        ctx, tq = self.ctx, self.o.shape[0]
        heads, dv = self.c.shape[1], self.c.shape[2]
        # output projection (N = heads * value_dim)
        r_c = np.stack([eps_map([(self.c[i].reshape(-1), self.w_o)], self.bo, self.o[i], r[i], heads * dv, ctx)[0]
                        for i in range(tq)]).reshape(self.c.shape)
        # weighted sum per head
        r_v = np.zeros_like(self.v)
        for h in range(heads):
            r_v[:, h] = weighted_sum_backward(self.a[h], self.v[:, h], self.c[:, h], self.allowed, r_c[:, h], ctx)
        # value projection (N = value features)
        dim = self.v_in.shape[1]
        w = self.wv.reshape(dim, -1)
        b = None if self.bv is None else self.bv.reshape(-1)
        z = self.v.reshape(len(self.v), -1)
        r_x = np.stack([eps_map([(self.v_in[j], w)], b, z[j], r_v[j].reshape(-1), dim, ctx)[0]
                        for j in range(len(self.v))])
        return r_x, 0.0

    def backward(self, r):
        return self.attend_backward(r)


class LayerNormOracle:
    """y = (x - mean) / std * gamma + beta over the last axis, std = sqrt(var + epsilon) held constant."""

    def __init__(self, gamma, beta, epsilon, rms_scaling=False):
        self.gamma, self.beta, self.epsilon, self.rms = gamma, beta, epsilon, rms_scaling

    def forward(self, x, mask):
        self.x = x
        self.y = np.zeros_like(x)
        self.std = np.zeros(x.shape[:-1])
        for idx in np.ndindex(*x.shape[:-1]):
            v = x[idx]
            mu = v.mean()
            std = np.sqrt(((v - mu) ** 2).mean() + self.epsilon)
            g = np.ones_like(v) if self.gamma is None else self.gamma
            if self.rms:
                self.y[idx] = v / std * g
            else:
                self.y[idx] = (v - mu) / std * g + (0.0 if self.beta is None else self.beta)
            self.std[idx] = std
        return self.y, mask

    def backward(self, r):
        ctx, r_x = self.ctx, np.zeros_like(self.x)
        D = self.x.shape[-1]
        g = np.ones(D) if self.gamma is None else self.gamma
        for idx in np.ndindex(*self.x.shape[:-1]):
            x, y, std = self.x[idx], self.y[idx], self.std[idx]
            if self.rms:   # diagonal map, N = 1
                for k in range(D):
                    inv, share = OL.eps_unit(y[k], [x[k] * g[k] / std], 0.0, 1, ctx)
                    r_x[idx][k] = (x[k] * g[k] / std * inv + share) * r[idx][k]
                continue
            W = np.array([[((j == k) - 1.0 / D) * g[k] / std for k in range(D)] for j in range(D)])
            r_x[idx] = eps_map([(x, W)], self.beta, y, r[idx], D, ctx)[0]
        return r_x, 0.0


def diagonal_eps(x, w, c, y, r, ctx):
    """Epsilon-rule through an element-wise affine map ``y = x w + c`` (N = 1), element by element."""
    r_x = np.zeros_like(x)
    for idx in np.ndindex(*x.shape):
        inv, share = OL.eps_unit(y[idx], [x[idx] * w[idx]], c[idx], 1, ctx)
        r_x[idx] = (x[idx] * w[idx] * inv + share) * r[idx]
    return r_x


class RMSNormOracle:
    """keras.layers.RMSNormalization on the last axis: y = x / sqrt(mean(x^2) + epsilon) * scale, the RMS
    held constant: y_k = x_k scale_k / rms (N = 1)."""

    def __init__(self, scale, epsilon):
        self.scale, self.epsilon = scale, epsilon

    def forward(self, x, mask):
        self.x, self.y, self.w = x, np.zeros_like(x), np.zeros_like(x)
        for idx in np.ndindex(*x.shape[:-1]):
            rms = np.sqrt((x[idx] ** 2).mean() + self.epsilon)
            self.w[idx] = self.scale / rms
            self.y[idx] = x[idx] * self.w[idx]
        return self.y, mask

    def backward(self, r):
        return diagonal_eps(self.x, self.w, np.zeros_like(self.x), self.y, r, self.ctx), 0.0


class BatchNormOracle:
    """Inference BatchNormalization on the last axis: y = (x - mean) / sqrt(var + epsilon) * gamma + beta."""

    def __init__(self, gamma, beta, mean, var, epsilon):
        self.a = (np.ones_like(mean) if gamma is None else gamma) / np.sqrt(var + epsilon)
        self.c = (np.zeros_like(mean) if beta is None else beta) - mean * self.a

    def forward(self, x, mask):
        self.x = x
        self.y = x * self.a + self.c
        return self.y, mask

    def backward(self, r):
        shape = self.x.shape
        return diagonal_eps(self.x, np.broadcast_to(self.a, shape), np.broadcast_to(self.c, shape), self.y, r,
                            self.ctx), 0.0


class SimpleRNNCellOracle:
    """One SimpleRNN direction over an already ordered sequence (the cell interface of
    oracle_layers.Recurrent: forward(x, mask, initial) -> h (T, d); backward(r_h_seq, ctx, r_final) ->
    (r_x, [r_h0]))."""

    def __init__(self, kernel, recurrent_kernel, bias, activation="tanh"):
        self.W, self.U, self.b = kernel, recurrent_kernel, bias
        self.d = recurrent_kernel.shape[0]
        self.act = OL.ACTIVATIONS[activation]

    def forward(self, x, mask, initial=None):
        T = x.shape[0]
        self.x, self.mask = x, mask
        self.h = np.zeros((T + 1, self.d))
        if initial is not None:
            self.h[0] = initial[0]
        self.z = np.zeros((T, self.d))
        for t in range(T):
            if mask is not None and not mask[t]:
                self.h[t + 1] = self.h[t]
                continue
            self.z[t] = x[t] @ self.W + self.h[t] @ self.U + (0.0 if self.b is None else self.b)
            self.h[t + 1] = self.act(self.z[t])
        self.final = [self.h[T]]
        return self.h[1:]

    def backward(self, r_h_seq, ctx, r_final=None):
        x = self.x
        T, e = x.shape
        r_x = np.zeros_like(x)
        r_h = np.zeros(self.d) if r_final is None else np.array(r_final[0], dtype=float)
        for t in reversed(range(T)):
            r_h = r_h + r_h_seq[t]
            if self.mask is not None and not self.mask[t]:
                continue
            r_x[t], r_h = eps_map([(x[t], self.W), (self.h[t], self.U)], self.b, self.z[t], r_h, self.d + e, ctx)
        return r_x, [r_h]


# --------------------------------------------------------------------------- Keras models

@contextlib.contextmanager
def keras_dtype(dtype):
    """Layers created inside get ``dtype`` (floatx and the global dtype policy, which Keras caches
    at the first layer it creates); both are restored after."""
    import keras
    old_floatx, old_policy = keras.config.floatx(), keras.config.dtype_policy()
    keras.config.set_floatx(dtype)
    keras.config.set_dtype_policy(dtype)
    try:
        yield
    finally:
        keras.config.set_floatx(old_floatx)
        keras.config.set_dtype_policy(old_policy)


def _np(v):
    return None if v is None else np.asarray(v.numpy(), np.float64)


def _simple_rnn_cell(rnn):
    cell = rnn.cell
    return SimpleRNNCellOracle(_np(cell.kernel), _np(cell.recurrent_kernel), _np(cell.bias) if cell.use_bias else None,
                               cell.get_config()["activation"])


def from_keras(layer, is_output=False, causal=False):
    """The oracle of one Keras layer (weights and configuration only); other layers: oracle_layers."""
    import keras
    L = keras.layers
    if isinstance(layer, L.MultiHeadAttention):
        p = [layer._query_dense, layer._key_dense, layer._value_dense]
        args = []
        for dense in p:
            args += [_np(dense.kernel), _np(dense.bias) if dense.bias is not None else None]
        o = layer._output_dense
        return MultiHeadAttentionOracle(*args, _np(o.kernel), _np(o.bias) if o.bias is not None else None, causal)
    if isinstance(layer, L.AdditiveAttention):
        return AttentionOracle("additive", _np(layer.scale) if layer.use_scale else None, causal=causal)
    if isinstance(layer, L.Attention):
        return AttentionOracle(layer.score_mode, _np(layer.scale) if layer.use_scale else None,
                               _np(layer.concat_score_weight) if layer.score_mode == "concat" else None, causal)
    if isinstance(layer, L.LayerNormalization):
        return LayerNormOracle(_np(layer.gamma) if layer.scale else None,
                               _np(layer.beta) if layer.center and not layer.rms_scaling else None,
                               layer.epsilon, layer.rms_scaling)
    if isinstance(layer, L.RMSNormalization):
        return RMSNormOracle(_np(layer.scale), layer.epsilon)
    if isinstance(layer, L.BatchNormalization):
        return BatchNormOracle(_np(layer.gamma) if layer.scale else None, _np(layer.beta) if layer.center else None,
                               _np(layer.moving_mean), _np(layer.moving_variance), layer.epsilon)
    if isinstance(layer, L.Bidirectional) and isinstance(layer.forward_layer.cell, L.SimpleRNNCell):
        f, b = layer.forward_layer, layer.backward_layer
        return OL.Recurrent([_simple_rnn_cell(f), _simple_rnn_cell(b)], [f.go_backwards, b.go_backwards],
                            f.return_sequences, layer.merge_mode or "concat", zero_output_for_mask=f.return_sequences,
                            return_state=layer.return_state)
    if isinstance(layer, L.RNN) and isinstance(layer.cell, L.SimpleRNNCell):
        return OL.Recurrent([_simple_rnn_cell(layer)], [layer.go_backwards], layer.return_sequences, None,
                            zero_output_for_mask=layer.zero_output_for_mask, return_state=layer.return_state)
    return OL.from_keras(layer, is_output)


def _folds(linear, bn):
    """Whether ``bn`` (the next layer of the chain) folds into ``linear``."""
    import keras
    L = keras.layers
    if not isinstance(bn, L.BatchNormalization):
        return False
    rank = len(bn.output.shape)
    if [a % rank for a in np.atleast_1d(bn.axis)] != [rank - 1]:
        return False
    inner = linear.layer if isinstance(linear, L.TimeDistributed) else linear
    ok_type = isinstance(inner, L.Dense) or (isinstance(inner, L.Conv1D) and inner is linear)
    return ok_type and inner.get_config()["activation"] == "linear"


def fold_batch_norm(linear, bn, is_output=False):
    """The oracle of ``linear`` (Dense, TimeDistributed(Dense) or Conv1D, linear activation) followed by
    the inference BatchNormalization ``bn``, as one linear map: W' = W a (per output feature),
    b' = b a + c, a = gamma / sqrt(moving_var + epsilon), c = beta - moving_mean a."""
    import keras
    inner = linear.layer if isinstance(linear, keras.layers.TimeDistributed) else linear
    var, mean = _np(bn.moving_variance), _np(bn.moving_mean)
    a = (_np(bn.gamma) if bn.scale else np.ones_like(var)) / np.sqrt(var + bn.epsilon)
    c = (_np(bn.beta) if bn.center else np.zeros_like(mean)) - mean * a
    kernel = _np(inner.kernel)
    w = np.empty_like(kernel)
    for m in range(kernel.shape[-1]):
        w[..., m] = kernel[..., m] * a[m]
    b = c if not inner.use_bias else _np(inner.bias) * a + c
    if isinstance(inner, keras.layers.Conv1D):
        return OL.Conv1D(w, b, inner.strides[0], inner.padding, inner.dilation_rate[0], "linear", is_output)
    return OL.Dense(w, b, "linear", is_output)


def chain_oracles(layers, causal=False):
    """One oracle per layer of a chain; a BatchNormalization that folds into the layer before it
    shares that layer's oracle (fold_batch_norm)."""
    oracles, n = [], 0
    while n < len(layers):
        last = n == len(layers) - 1
        if not last and _folds(layers[n], layers[n + 1]):
            oracles.append(fold_batch_norm(layers[n], layers[n + 1], is_output=(n + 1 == len(layers) - 1)))
            n += 2
        else:
            oracles.append(from_keras(layers[n], is_output=last, causal=causal))
            n += 1
    return oracles


def explain_layers(layers, inputs, targets, ctx, embedding=None, causal=False):
    """LRP of a chain of layers (a Sequential model's, or a functional model's whose attention layers
    are self-attention ``layer(h, h)``), sample by sample. Returns (relevance, rest, scores)."""
    oracles = chain_oracles(layers, causal=causal)
    for o in oracles:
        o.ctx = ctx
    return OL.run_oracles(oracles, inputs, targets, embedding)
