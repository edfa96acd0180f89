"""Plain numpy LRP oracles for every layer keras_lrp covers (tests only; shares no code with it).

Written from the rules as the library documents them (keras_lrp.rules, keras_lrp.propagators,
keras_lrp.recurrent), one sample at a time, with explicit loops: clarity over speed, for tiny sizes.

Conventions: no batch axis. Sequences are (T, features); relevance arrays have the shape of the
values they belong to; masks are (T,) bool or None. Every layer oracle has

    forward(x, mask) -> (y, out_mask)      (caches what it needs)
    backward(r_y)    -> (r_x, rest)        (rest: relevance left on recurrent initial states)

and :func:`explain_chain` composes them for Sequential models (built by :func:`from_keras`).
Recurrent cells have ``forward(x, mask, initial=None) -> h`` (initial: one array per state, zeros when
None; ``final`` holds the last states) and ``backward(r_h_seq, ctx, r_final=None) -> (r_x, r_initial)``
(r_final / r_initial: relevance on the last / initial states, one array per state); ``n_states`` says
how many states they have. A stack of cells (``StackedCells``) is the cells chained.

The epsilon-rule (``Ctx.eps``, ``Ctx.bias_factor``) for ``z_m = sum_k x_k w_km + b_m`` with fan-in N:

    R_k = sum_m (x_k w_km + bias_factor (b_m + eps sign z_m) / N) / (z_m + eps sign z_m) R_m,

sign(0) = +1. A zero denominator (eps = 0, z_m = 0) takes the eps -> 0 limit: when every term of z_m
(each x_k w_km, and b_m) is exactly 0, each of the N inputs gets bias_factor R_m / N; when non-zero
terms cancel, the unit passes nothing (:func:`eps_unit`). Fully connected maps
(Dense, the LSTM / GRU maps, the two-term state updates) spread each output's bias share over all
their N inputs; maps with local connectivity (Conv1D, pooling, Add, Bidirectional sum / ave) spread
it over the inputs actually connected to that output.
"""
from collections import namedtuple

import numpy as np

#: eps, bias_factor: the epsilon-rule; gate: "all" / "half" / "prop" for gate x signal products.
Ctx = namedtuple("Ctx", "eps bias_factor gate")


def sgn(v):
    return 1.0 if v >= 0 else -1.0


def sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


ACTIVATIONS = {
    "linear": lambda v: v,
    "tanh": np.tanh,
    "sigmoid": sigmoid,
    "relu": lambda v: np.maximum(v, 0.0),
    "hard_sigmoid": lambda v: np.clip(v / 6.0 + 0.5, 0.0, 1.0),
    "softmax": lambda v: v,   # only ever on an output layer, whose activation is not applied
}


# --------------------------------------------------------------------------- the rules

def eps_unit(z, terms, bias, n, ctx):
    """One output unit ``z = sum(terms) + bias`` whose share goes to n inputs: ``(1 / den, share)`` such
    that term k's input gets ``(term_k / den + share) R`` and every other of the n inputs ``share R``.
    At den = 0 (eps = 0, z = 0): the eps -> 0 limit of ``bias_factor eps / n / eps``, i.e. share =
    bias_factor / n, when all terms and the bias are exactly 0; else the unit passes nothing."""
    den = z + ctx.eps * sgn(z)
    if den != 0.0:
        return 1.0 / den, ctx.bias_factor * (bias + ctx.eps * sgn(z)) / n / den
    if bias == 0.0 and all(t == 0.0 for t in terms):
        return 0.0, ctx.bias_factor / n
    return 0.0, 0.0


def eps_linear(blocks, bias, z, r_out, fan_in, ctx):
    """Epsilon-rule for a fully connected map ``z_m = sum over blocks of sum_k x_k w_km + b_m``.

    blocks: list of (x (D,), w (D, M)); bias (M,) or None; z (M,) the full pre-activation;
    r_out (M,). Each output's bias/stabiliser share goes to every input of every block (1/N each).
    Returns one (D,) relevance array per block.
    """
    out = [np.zeros(len(x)) for x, _ in blocks]
    for m in range(len(z)):
        b = 0.0 if bias is None else bias[m]
        terms = [x[k] * w[k, m] for x, w in blocks for k in range(len(x))]
        inv, share = eps_unit(z[m], terms, b, fan_in, ctx)
        for (x, w), rx in zip(blocks, out):
            for k in range(len(x)):
                rx[k] += (x[k] * w[k, m] * inv + share) * r_out[m]
    return out


def eps_elementwise_sum(parts, z, r_out, ctx):
    """Epsilon-rule for an element-wise sum ``z = sum_i parts[i]`` (any shape): output unit m's
    share is spread over the len(parts) summands of unit m."""
    n = len(parts)
    res = [np.zeros_like(p) for p in parts]
    for idx in np.ndindex(*z.shape):
        inv, share = eps_unit(z[idx], [p[idx] for p in parts], 0.0, n, ctx)
        for p, rp in zip(parts, res):
            rp[idx] = (p[idx] * inv + share) * r_out[idx]
    return res


def gate_split(r, gate, signal, ctx):
    """Relevance of ``gate * signal`` (element-wise) -> (R_gate, R_signal) by the gate rule."""
    r_gate, r_sig = np.zeros_like(r), np.zeros_like(r)
    for j in range(len(r)):
        if ctx.gate == "all":
            r_sig[j] = r[j]
        elif ctx.gate == "half":
            r_gate[j] = r[j] / 2.0
            r_sig[j] = r[j] / 2.0
        elif ctx.gate == "prop":
            tot = gate[j] + signal[j]
            den = tot + ctx.eps * sgn(tot)
            if den != 0.0:
                r_gate[j] = gate[j] / den * r[j]
                r_sig[j] = signal[j] / den * r[j]
        else:
            raise ValueError(ctx.gate)
    return r_gate, r_sig


# --------------------------------------------------------------------------- feed-forward layers

class Dense:
    """y = act(x W + b) on the last axis (any leading axes); epsilon-rule, N = input units."""

    def __init__(self, kernel, bias, activation="linear", is_output=False):
        self.w, self.b = kernel, bias
        self.act = ACTIVATIONS["linear" if is_output else activation]

    def forward(self, x, mask):
        self.x = x
        self.z = np.zeros(x.shape[:-1] + (self.w.shape[1],))
        for idx in np.ndindex(*x.shape[:-1]):
            self.z[idx] = x[idx] @ self.w + (0.0 if self.b is None else self.b)
        return self.act(self.z), mask

    def backward(self, r):
        r_x = np.zeros_like(self.x)
        for idx in np.ndindex(*self.x.shape[:-1]):
            r_x[idx] = eps_linear([(self.x[idx], self.w)], self.b, self.z[idx], r[idx],
                                  self.x.shape[-1], self.ctx)[0]
        return r_x, 0.0


def conv_windows(length, k, stride, padding, dilation=1):
    """Input indices of every output position's window (indices outside 0..length-1 are padding),
    with TensorFlow's conventions ("same": total padding split left = total // 2)."""
    eff = dilation * (k - 1) + 1
    if padding == "valid":
        left, n_out = 0, (length - eff) // stride + 1
    elif padding == "causal":
        left = eff - 1
        n_out = (length + left - eff) // stride + 1
    elif padding == "same":
        n_out = -(-length // stride)
        left = max((n_out - 1) * stride + eff - length, 0) // 2
    else:
        raise ValueError(padding)
    return [[p * stride - left + j * dilation for j in range(k)] for p in range(n_out)]


class Conv1D:
    """z[p, m] = sum over the real inputs of window p of x[q, c] W[j, c, m] + b[m];
    epsilon-rule with output (p, m)'s share spread over N = (real window inputs) x in_channels."""

    def __init__(self, kernel, bias, strides, padding, dilation, activation="linear", is_output=False):
        self.w, self.b = kernel, bias
        self.strides, self.padding, self.dilation = strides, padding, dilation
        self.act = ACTIVATIONS["linear" if is_output else activation]

    def forward(self, x, mask):
        T, C = x.shape
        k, _, M = self.w.shape
        self.x = x
        self.windows = conv_windows(T, k, self.strides, self.padding, self.dilation)
        self.z = np.zeros((len(self.windows), M))
        for p, win in enumerate(self.windows):
            for m in range(M):
                acc = 0.0 if self.b is None else self.b[m]
                for j, q in enumerate(win):
                    if 0 <= q < T:
                        for c in range(C):
                            acc += x[q, c] * self.w[j, c, m]
                self.z[p, m] = acc
        return self.act(self.z), None   # Conv1D drops the mask

    def backward(self, r):
        x, w, ctx = self.x, self.w, self.ctx
        T, C = x.shape
        r_x = np.zeros_like(x)
        for p, win in enumerate(self.windows):
            real = [(j, q) for j, q in enumerate(win) if 0 <= q < T]
            n = len(real) * C
            for m in range(w.shape[2]):
                terms = [x[q, c] * w[j, c, m] for j, q in real for c in range(C)]
                inv, share = eps_unit(self.z[p, m], terms, 0.0 if self.b is None else self.b[m], n, ctx)
                for j, q in real:
                    for c in range(C):
                        r_x[q, c] += (x[q, c] * w[j, c, m] * inv + share) * r[p, m]
        return r_x, 0.0


class Pool1D:
    """MaxPooling1D (winner-take-all, the first maximum of the window) or AveragePooling1D
    (mean over the window's real inputs: epsilon-rule with weights 1/n, share spread over the n).

    ``replicate_uneven``: Keras on torch pads an uneven "same" padding (left != right) with copies of the edge
    step (``keras/src/backend/torch/nn.py``, ``_apply_same_padding``, mode "replicate") and averages over the
    whole window, TensorFlow over the real inputs only: [5, 6] -> 5.5 on TensorFlow, [5, 6, 6] -> 5.667 on
    torch. With it set, a window's padded positions are the edge step again (it gets their terms and shares)."""

    def __init__(self, kind, pool_size, strides, padding, replicate_uneven=False):
        self.kind, self.k, self.s, self.padding = kind, pool_size, strides, padding
        self.replicate_uneven = replicate_uneven

    def forward(self, x, mask):
        T, C = x.shape
        self.x = x
        windows = conv_windows(T, self.k, self.s, self.padding)
        total_padding = (len(windows) - 1) * self.s + self.k - T
        if self.replicate_uneven and self.padding == "same" and total_padding % 2:
            self.windows = [[min(max(q, 0), T - 1) for q in win] for win in windows]
        else:
            self.windows = [[q for q in win if 0 <= q < T] for win in windows]
        y = np.zeros((len(self.windows), C))
        for p, win in enumerate(self.windows):
            for c in range(C):
                vals = [x[q, c] for q in win]
                y[p, c] = max(vals) if self.kind == "max" else sum(vals) / len(vals)
        self.y = y
        return y, None

    def backward(self, r):
        x, ctx = self.x, self.ctx
        r_x = np.zeros_like(x)
        for p, win in enumerate(self.windows):
            for c in range(x.shape[1]):
                if self.kind == "max":
                    winner = next(q for q in win if x[q, c] == self.y[p, c])
                    r_x[winner, c] += r[p, c]
                    continue
                n = len(win)
                inv, share = eps_unit(self.y[p, c], [x[q, c] / n for q in win], 0.0, n, ctx)
                for q in win:
                    r_x[q, c] += (x[q, c] / n * inv + share) * r[p, c]
        return r_x, 0.0


class GlobalPool1D:
    """GlobalAveragePooling1D (masked mean: weights 1/n_real on real steps) or GlobalMaxPooling1D."""

    def __init__(self, kind):
        self.kind = kind

    def forward(self, x, mask):
        self.x = x
        T, C = x.shape
        self.real = [t for t in range(T) if mask is None or mask[t]]
        steps = range(T) if self.kind == "max" else self.real
        y = np.zeros(C)
        for c in range(C):
            vals = [x[t, c] for t in steps]
            y[c] = max(vals) if self.kind == "max" else sum(vals) / len(vals)
        self.y = y
        return y, None

    def backward(self, r):
        x, ctx = self.x, self.ctx
        r_x = np.zeros_like(x)
        for c in range(x.shape[1]):
            if self.kind == "max":
                winner = next(t for t in range(x.shape[0]) if x[t, c] == self.y[c])
                r_x[winner, c] = r[c]
                continue
            n = len(self.real)
            inv, share = eps_unit(self.y[c], [x[t, c] / n for t in self.real], 0.0, n, ctx)
            for t in self.real:
                r_x[t, c] = (x[t, c] / n * inv + share) * r[c]
        return r_x, 0.0


class Reshape:
    """Flatten / Reshape: relevance is reshaped back."""

    def __init__(self, target_shape=None):
        self.target_shape = target_shape

    def forward(self, x, mask):
        self.shape = x.shape
        return x.reshape(self.target_shape if self.target_shape is not None else -1), None

    def backward(self, r):
        return r.reshape(self.shape), 0.0


class Identity:
    """Dropout & co. at inference; an Activation (not applied on the output layer)."""

    def __init__(self, activation="linear", is_output=False):
        self.act = ACTIVATIONS["linear" if is_output else activation]

    def forward(self, x, mask):
        return self.act(x), mask

    def backward(self, r):
        return r, 0.0


class Masking:
    """y = x with masked timesteps (all features == mask_value) set to 0; R passes where kept."""

    def __init__(self, mask_value):
        self.v = mask_value

    def forward(self, x, mask):
        self.keep = np.array([np.any(x[t] != self.v) for t in range(x.shape[0])])
        return x * self.keep[:, None], self.keep

    def backward(self, r):
        return r * self.keep[:, None], 0.0


def add_relevance(inputs, r, ctx):
    """Add: epsilon-rule over the summands (N = number of summands, per output unit)."""
    z = sum(inputs)
    return eps_elementwise_sum(list(inputs), z, r, ctx)


# --------------------------------------------------------------------------- recurrent cells

class LSTMCellOracle:
    """One LSTM direction over an already ordered sequence (Keras layout, gates i, f, g, o)."""

    n_states = 2

    def __init__(self, kernel, recurrent_kernel, bias, activation="tanh", recurrent_activation="sigmoid"):
        self.W, self.U = kernel, recurrent_kernel
        self.d = recurrent_kernel.shape[0]
        self.b = np.zeros(4 * self.d) if bias is None else bias
        self.act, self.ract = ACTIVATIONS[activation], ACTIVATIONS[recurrent_activation]

    def forward(self, x, mask, initial=None):
        """Returns h (T, d); h[t] is the state after step t (carried over masked steps)."""
        T, d = x.shape[0], self.d
        self.x, self.mask = x, mask
        self.h = np.zeros((T + 1, d))   # row 0: the initial state; row t+1: after step t
        self.c = np.zeros((T + 1, d))
        if initial is not None:
            self.h[0], self.c[0] = initial
        self.pre = np.zeros((T, 4 * d))
        self.gates = np.zeros((T, 4 * d))
        for t in range(T):
            if mask is not None and not mask[t]:
                self.h[t + 1], self.c[t + 1] = self.h[t], self.c[t]
                continue
            z = x[t] @ self.W + self.h[t] @ self.U + self.b
            i, f = self.ract(z[:d]), self.ract(z[d:2 * d])
            g, o = self.act(z[2 * d:3 * d]), self.ract(z[3 * d:])
            self.pre[t], self.gates[t] = z, np.concatenate([i, f, g, o])
            self.c[t + 1] = f * self.c[t] + i * g
            self.h[t + 1] = o * self.act(self.c[t + 1])
        self.final = [self.h[T], self.c[T]]
        return self.h[1:]

    def backward(self, r_h_seq, ctx, r_final=None):
        """r_h_seq (T, d): relevance arriving on every h_t; r_final: on the last (h, c).
        Returns (r_x (T, e), [r_h0, r_c0])."""
        x, d = self.x, self.d
        T, e = x.shape
        eye = np.eye(d)
        r_x = np.zeros_like(x)
        r_h, r_c = np.zeros(d), np.zeros(d)     # carried from step t+1 to the states of step t
        if r_final is not None:
            r_h, r_c = r_h + r_final[0], r_c + r_final[1]
        for t in reversed(range(T)):
            r_h = r_h + r_h_seq[t]
            if self.mask is not None and not self.mask[t]:
                continue   # states copied: their relevance goes back unchanged, x_t gets 0
            i, f, g, o = (self.gates[t, n * d:(n + 1) * d] for n in range(4))
            c_prev, c_t = self.c[t], self.c[t + 1]
            # h_t = o * act(c_t)
            r_o, r_act = gate_split(r_h, o, self.act(c_t), ctx)
            r_ct = r_c + r_act
            # c_t = f c_{t-1} + i g: epsilon-rule over the two products (N = 2d)
            r_fc, r_ig = eps_linear([(f * c_prev, eye), (i * g, eye)], None, c_t, r_ct, 2 * d, ctx)
            r_f, r_c = gate_split(r_fc, f, c_prev, ctx)
            r_i, r_g = gate_split(r_ig, i, g, ctx)
            # all four pre-activations over [x_t, h_{t-1}] (N = d + e); "all" gives the gates 0
            r_pre = np.concatenate([r_i, r_f, r_g, r_o])
            r_x[t], r_h = eps_linear([(x[t], self.W), (self.h[t], self.U)], self.b, self.pre[t],
                                     r_pre, d + e, ctx)
        return r_x, [r_h, r_c]


class GRUCellOracle:
    """One GRU direction (Keras GRUCell equations, gates z, r, h; both reset_after values)."""

    n_states = 1

    def __init__(self, kernel, recurrent_kernel, bias, reset_after, activation="tanh",
                 recurrent_activation="sigmoid"):
        self.W, self.U = kernel, recurrent_kernel
        d = self.d = recurrent_kernel.shape[0]
        self.reset_after = reset_after
        if bias is None:
            self.b_in, self.b_rec = np.zeros(3 * d), np.zeros(3 * d)
        elif bias.ndim == 2:
            self.b_in, self.b_rec = bias[0], bias[1]
        else:
            self.b_in, self.b_rec = bias, np.zeros(3 * d)
        self.act, self.ract = ACTIVATIONS[activation], ACTIVATIONS[recurrent_activation]

    def forward(self, x, mask, initial=None):
        T, d = x.shape[0], self.d
        W, U, bi, br = self.W, self.U, self.b_in, self.b_rec
        self.x, self.mask = x, mask
        self.h = np.zeros((T + 1, d))
        if initial is not None:
            self.h[0] = initial[0]
        self.st = [None] * T
        for t in range(T):
            hp = self.h[t]
            if mask is not None and not mask[t]:
                self.h[t + 1] = hp
                continue
            pre_z = x[t] @ W[:, :d] + bi[:d] + hp @ U[:, :d] + br[:d]
            pre_r = x[t] @ W[:, d:2 * d] + bi[d:2 * d] + hp @ U[:, d:2 * d] + br[d:2 * d]
            z, r = self.ract(pre_z), self.ract(pre_r)
            if self.reset_after:
                s_h = hp @ U[:, 2 * d:] + br[2 * d:]           # h U_h + b_rec
                rec = r * s_h                                   # P
            else:
                s_h = r * hp                                    # r * h
                rec = s_h @ U[:, 2 * d:]
            pre_h = x[t] @ W[:, 2 * d:] + bi[2 * d:] + rec
            hh = self.act(pre_h)
            self.h[t + 1] = z * hp + (1 - z) * hh
            self.st[t] = dict(pre_z=pre_z, pre_r=pre_r, z=z, r=r, s_h=s_h, pre_h=pre_h, hh=hh)
        self.final = [self.h[T]]
        return self.h[1:]

    def backward(self, r_h_seq, ctx, r_final=None):
        x, d, W, U = self.x, self.d, self.W, self.U
        T, e = x.shape
        eye = np.eye(d)
        r_x = np.zeros_like(x)
        r_h = np.zeros(d) if r_final is None else np.array(r_final[0], dtype=float)
        for t in reversed(range(T)):
            r_h = r_h + r_h_seq[t]
            if self.mask is not None and not self.mask[t]:
                continue
            s, hp, h_t = self.st[t], self.h[t], self.h[t + 1]
            z, r, hh = s["z"], s["r"], s["hh"]
            # h_t = z h_{t-1} + (1 - z) hh (N = 2d)
            r_zh, r_zhh = eps_linear([(z * hp, eye), ((1 - z) * hh, eye)], None, h_t, r_h, 2 * d, ctx)
            r_z1, r_hp = gate_split(r_zh, z, hp, ctx)
            r_z2, r_hh = gate_split(r_zhh, 1 - z, hh, ctx)
            if self.reset_after:
                # pre_h = x W_h + b_in_h + P (N = e + d); P = r * s_h; s_h = h U_h + b_rec_h (N = d)
                p = r * s["s_h"]
                r_xh, r_p = eps_linear([(x[t], W[:, 2 * d:]), (p, eye)], self.b_in[2 * d:], s["pre_h"],
                                       r_hh, e + d, ctx)
                r_r, r_s = gate_split(r_p, r, s["s_h"], ctx)
                r_hp = r_hp + eps_linear([(hp, U[:, 2 * d:])], self.b_rec[2 * d:], s["s_h"], r_s, d, ctx)[0]
            else:
                # pre_h = x W_h + (r h) U_h + b_h (N = e + d); r h split by the gate rule
                r_xh, r_rh = eps_linear([(x[t], W[:, 2 * d:]), (s["s_h"], U[:, 2 * d:])], self.b_in[2 * d:],
                                        s["pre_h"], r_hh, e + d, ctx)
                r_r, r_hp2 = gate_split(r_rh, r, hp, ctx)
                r_hp = r_hp + r_hp2
            # gates: [x_t, h_{t-1}] -> (pre_z, pre_r) (N = e + d); zero relevance under "all"
            r_gates = np.concatenate([r_z1 + r_z2, r_r])
            pre_zr = np.concatenate([s["pre_z"], s["pre_r"]])
            b_zr = self.b_in[:2 * d] + self.b_rec[:2 * d]
            r_xg, r_hg = eps_linear([(x[t], W[:, :2 * d]), (hp, U[:, :2 * d])], b_zr, pre_zr, r_gates,
                                    e + d, ctx)
            r_x[t] = r_xh + r_xg
            r_h = r_hp + r_hg
        return r_x, [r_h]


class ConvLSTMCellOracle:
    """One ConvLSTM1D direction over an already ordered sequence x (T, L, C) (channels_last, strides 1),
    written from Keras's ConvLSTMCell equations: at each step and output position p,

        z[p, m] = b[m] + sum over x's window of p (the layer's padding, dilation) of x[q, c] W[j, c, m]
                       + sum over h's window of p ("same", undilated) of h_{t-1}[q, f] U[j, f, m]

    gates i, f, g, o as the LSTM, states h, c (L', F). LRP: the LSTM's rules position by position (the
    gate rule on every product; c_t = f c_{t-1} + i g by the epsilon-rule over the 2F products of
    position p, N = 2F), the epsilon-rule on z[p, m] with its share spread over the real inputs of its
    two windows, N = (real x window) C + (real h window) F."""

    n_states = 2

    def __init__(self, kernel, recurrent_kernel, bias, padding, dilation, activation="tanh",
                 recurrent_activation="sigmoid"):
        self.W, self.U = kernel, recurrent_kernel          # (k, C, 4F), (k, F, 4F)
        self.k, self.d = kernel.shape[0], recurrent_kernel.shape[1]
        self.b = np.zeros(4 * self.d) if bias is None else bias
        self.padding, self.dilation = padding, dilation
        self.act, self.ract = ACTIVATIONS[activation], ACTIVATIONS[recurrent_activation]

    def _connections(self, p):
        """The inputs of z[p, :]: [("x" or "h", position q, window index j)] over the real positions."""
        out = [("x", q, j) for j, q in enumerate(self.x_windows[p]) if 0 <= q < self.x.shape[1]]
        return out + [("h", q, j) for j, q in enumerate(self.h_windows[p]) if 0 <= q < self.n_pos]

    def forward(self, x, mask, initial=None):
        T, L, C = x.shape
        d = self.d
        self.x, self.mask = x, mask
        self.x_windows = conv_windows(L, self.k, 1, self.padding, self.dilation)
        self.n_pos = len(self.x_windows)
        self.h_windows = conv_windows(self.n_pos, self.k, 1, "same")
        self.h = np.zeros((T + 1, self.n_pos, d))
        self.c = np.zeros((T + 1, self.n_pos, d))
        if initial is not None:
            self.h[0], self.c[0] = initial
        self.pre = np.zeros((T, self.n_pos, 4 * d))
        self.gates = np.zeros((T, self.n_pos, 4 * d))
        for t in range(T):
            if mask is not None and not mask[t]:
                self.h[t + 1], self.c[t + 1] = self.h[t], self.c[t]
                continue
            for p in range(self.n_pos):
                z = self.b.copy()
                for kind, q, j in self._connections(p):
                    a, w = (x[t], self.W) if kind == "x" else (self.h[t], self.U)
                    for m in range(4 * d):
                        z[m] += sum(a[q, ch] * w[j, ch, m] for ch in range(a.shape[1]))
                i, f = self.ract(z[:d]), self.ract(z[d:2 * d])
                g, o = self.act(z[2 * d:3 * d]), self.ract(z[3 * d:])
                self.pre[t, p], self.gates[t, p] = z, np.concatenate([i, f, g, o])
                self.c[t + 1, p] = f * self.c[t, p] + i * g
                self.h[t + 1, p] = o * self.act(self.c[t + 1, p])
        self.final = [self.h[T], self.c[T]]
        return self.h[1:]

    def backward(self, r_h_seq, ctx, r_final=None):
        x, d = self.x, self.d
        eye = np.eye(d)
        r_x = np.zeros_like(x)
        r_h, r_c = np.zeros((self.n_pos, d)), np.zeros((self.n_pos, d))
        if r_final is not None:
            r_h, r_c = r_h + r_final[0], r_c + r_final[1]
        for t in reversed(range(x.shape[0])):
            r_h = r_h + r_h_seq[t]
            if self.mask is not None and not self.mask[t]:
                continue
            r_pre = np.zeros((self.n_pos, 4 * d))
            r_c_prev = np.zeros((self.n_pos, d))
            for p in range(self.n_pos):
                i, f, g, o = (self.gates[t, p, n * d:(n + 1) * d] for n in range(4))
                c_prev, c_t = self.c[t, p], self.c[t + 1, p]
                r_o, r_act = gate_split(r_h[p], o, self.act(c_t), ctx)
                r_fc, r_ig = eps_linear([(f * c_prev, eye), (i * g, eye)], None, c_t, r_c[p] + r_act, 2 * d, ctx)
                r_f, r_c_prev[p] = gate_split(r_fc, f, c_prev, ctx)
                r_i, r_g = gate_split(r_ig, i, g, ctx)
                r_pre[p] = np.concatenate([r_i, r_f, r_g, r_o])
            r_h_prev = np.zeros((self.n_pos, d))
            parts = {"x": (x[t], self.W, r_x[t]), "h": (self.h[t], self.U, r_h_prev)}   # value, weights, relevance
            for p in range(self.n_pos):
                conns = [parts[kind] + (q, j) for kind, q, j in self._connections(p)]
                n = sum(a.shape[1] for a, *_ in conns)
                for m in range(4 * d):
                    terms = [a[q, ch] * w[j, ch, m] for a, w, _, q, j in conns for ch in range(a.shape[1])]
                    inv, share = eps_unit(self.pre[t, p, m], terms, self.b[m], n, ctx)
                    for a, w, r_a, q, j in conns:
                        for ch in range(a.shape[1]):
                            r_a[q, ch] += (a[q, ch] * w[j, ch, m] * inv + share) * r_pre[p, m]
            r_h, r_c = r_h_prev, r_c_prev
        return r_x, [r_h, r_c]


class StackedCells:
    """A StackedRNNCells: its cells chained, cell i + 1 reading cell i's h (the same mask for all);
    states (initial, final) are the cells' states in order."""

    def __init__(self, cells):
        self.cells = cells
        self.n_states = sum(c.n_states for c in cells)

    def _split(self, states):
        out = []
        for c in self.cells:
            out.append(None if states is None else states[:c.n_states])
            states = None if states is None else states[c.n_states:]
        return out

    def forward(self, x, mask, initial=None):
        for cell, start in zip(self.cells, self._split(initial)):
            x = cell.forward(x, mask, start)
        self.final = [s for c in self.cells for s in c.final]
        return x

    def backward(self, r_h_seq, ctx, r_final=None):
        r_initial = []
        for cell, r_last in reversed(list(zip(self.cells, self._split(r_final)))):
            r_h_seq, r0 = cell.backward(r_h_seq, ctx, r_last)
            r_initial = r0 + r_initial
        return r_h_seq, r_initial


def keras_step_outputs(h, mask, zero_output_for_mask):
    """What a Keras RNN outputs at each step, from its states h (T, ...): h_t at real steps; at a masked
    step 0 (zero_output_for_mask) or the previous step's output (0 before the first step)."""
    out, prev = np.zeros_like(h), np.zeros(h.shape[1:])
    for t in range(len(h)):
        if mask is None or mask[t]:
            out[t] = h[t]
        elif not zero_output_for_mask:
            out[t] = prev
        prev = out[t]
    return out


def step_outputs_backward(r_out, mask, zero_output_for_mask):
    """Relevance on the step outputs (T, ...) of :func:`keras_step_outputs` -> (relevance on h_t at the
    real steps (T, ...), what reached outputs that are the constant 0)."""
    r_h, dropped, passed = np.zeros_like(r_out), 0.0, np.zeros(r_out.shape[1:])
    for t in reversed(range(len(r_out))):
        r = r_out[t] + passed
        passed = np.zeros(r_out.shape[1:])
        if mask is None or mask[t]:
            r_h[t] = r
        elif zero_output_for_mask or t == 0:
            dropped += r.sum()
        else:
            passed = r            # the output copied the previous step's
    return r_h, dropped


class Recurrent:
    """LSTM / GRU / ConvLSTM1D / stacked-cells layer, or Bidirectional of two, with go_backwards,
    return_sequences, masks and the merge modes concat / sum / ave (merge_mode None followed by
    Concatenate is concat), initial states and returned states (Keras's flat order: each direction's
    states, forward first)."""

    def __init__(self, cells, go_backwards, return_sequences, merge=None, zero_output_for_mask=False,
                 return_state=False):
        self.cells = cells                  # one cell oracle, or two (forward, backward) when merge
        self.go_backwards = go_backwards    # per cell
        self.rs, self.merge, self.zero_out = return_sequences, merge, zero_output_for_mask
        self.return_state = return_state

    def _order(self, a, back):
        return a if a is None or not back else a[::-1]

    def forward(self, x, mask, initial_state=None):
        """Returns (output, its mask); the final states (flat) are in ``self.states``."""
        self.T, self.x_shape = x.shape[0], x.shape
        self.mask = mask
        self.ys, self.states = [], []
        n = len(initial_state) // len(self.cells) if initial_state is not None else 0
        for i, (cell, back) in enumerate(zip(self.cells, self.go_backwards)):
            initial = None if initial_state is None else initial_state[i * n:(i + 1) * n]
            m = self._order(mask, back)
            h = keras_step_outputs(cell.forward(self._order(x, back), m, initial), m, self.zero_out)
            if self.rs:
                y = h[::-1] if (back and self.merge is not None) else h   # Bidirectional re-reverses
            else:
                y = h[-1]
            self.ys.append(y)
            self.states += cell.final
        if self.merge is None or self.merge == "concat":
            out = np.concatenate(self.ys, axis=-1)
        elif self.merge == "sum":
            out = self.ys[0] + self.ys[1]
        elif self.merge == "ave":
            out = (self.ys[0] + self.ys[1]) / 2
        else:
            raise ValueError(self.merge)
        return out, (mask if self.rs else None)

    def backward_states(self, r, r_states=None):
        """r: relevance of the output; r_states: of the returned states (flat) or None.
        Returns (r_x, relevance of the initial states (flat), what reached constant-0 outputs)."""
        ctx = self.ctx
        if self.merge is None or self.merge == "concat":
            sizes = np.cumsum([y.shape[-1] for y in self.ys])[:-1]
            parts = np.split(r, sizes, axis=-1)
        else:
            scale = 0.5 if self.merge == "ave" else 1.0
            ps = [scale * y for y in self.ys]
            parts = eps_elementwise_sum(ps, ps[0] + ps[1], r, ctx)
        r_x, r_initial, dropped = np.zeros(self.x_shape), [], 0.0
        n = len(self.states) // len(self.cells)
        for i, (cell, back, rp) in enumerate(zip(self.cells, self.go_backwards, parts)):
            if self.rs:
                r_out = rp[::-1] if (back and self.merge is not None) else rp   # processing order
            else:
                r_out = np.zeros((self.T,) + rp.shape)
                r_out[-1] = rp
            seq, lost = step_outputs_backward(r_out, self._order(self.mask, back), self.zero_out)
            r_final = None if r_states is None else r_states[i * n:(i + 1) * n]
            rx, r0 = cell.backward(seq, ctx, r_final)
            r_x += rx[::-1] if back else rx
            r_initial += r0
            dropped += lost
        return r_x, r_initial, dropped

    def backward(self, r):
        """Chain interface: zero initial states, whose relevance is rest."""
        r_x, r_initial, dropped = self.backward_states(r)
        return r_x, dropped + sum(a.sum() for a in r_initial)


# --------------------------------------------------------------------------- Keras models

def _f64(a):
    return None if a is None else np.asarray(a, np.float64)


def _act_name(layer):
    return layer.get_config().get("activation", "linear")


def _cell_oracle(rnn):
    return _oracle_of_cell(rnn.cell)


def _oracle_of_cell(cell):
    import keras
    if isinstance(cell, keras.layers.StackedRNNCells):
        return StackedCells([_oracle_of_cell(c) for c in cell.cells])
    cfg = cell.get_config()
    k, u = _f64(cell.kernel.numpy()), _f64(cell.recurrent_kernel.numpy())
    b = _f64(cell.bias.numpy()) if cell.use_bias else None
    if isinstance(cell, keras.layers.LSTMCell):
        return LSTMCellOracle(k, u, b, cfg["activation"], cfg["recurrent_activation"])
    if type(cell).__name__ == "ConvLSTMCell":
        assert cfg["strides"] in (1, (1,), [1]), cfg["strides"]
        return ConvLSTMCellOracle(k, u, b, cfg["padding"], cfg["dilation_rate"][0], cfg["activation"],
                                  cfg["recurrent_activation"])
    if isinstance(cell, keras.layers.GRUCell):
        return GRUCellOracle(k, u, b, cfg["reset_after"], cfg["activation"], cfg["recurrent_activation"])
    raise NotImplementedError(type(cell).__name__)


def from_keras(layer, is_output=False):
    """The oracle for one Keras layer (read weights and configuration only)."""
    import keras
    L = keras.layers
    if isinstance(layer, L.TimeDistributed):
        layer = layer.layer
    if isinstance(layer, L.Dense):
        return Dense(_f64(layer.kernel.numpy()), _f64(layer.bias.numpy()) if layer.use_bias else None,
                     _act_name(layer), is_output)
    if isinstance(layer, L.Conv1D):
        return Conv1D(_f64(layer.kernel.numpy()), _f64(layer.bias.numpy()) if layer.use_bias else None,
                      layer.strides[0], layer.padding, layer.dilation_rate[0], _act_name(layer), is_output)
    if isinstance(layer, (L.MaxPooling1D, L.AveragePooling1D)):
        return Pool1D("max" if isinstance(layer, L.MaxPooling1D) else "avg", layer.pool_size[0],
                      layer.strides[0], layer.padding, replicate_uneven=keras.config.backend() == "torch")
    if isinstance(layer, L.GlobalMaxPooling1D):
        return GlobalPool1D("max")
    if isinstance(layer, L.GlobalAveragePooling1D):
        return GlobalPool1D("avg")
    if isinstance(layer, L.Flatten):
        return Reshape()
    if isinstance(layer, L.Reshape):
        return Reshape(tuple(layer.target_shape))
    if isinstance(layer, L.Masking):
        return Masking(layer.mask_value)
    if isinstance(layer, L.Activation):
        return Identity(_act_name(layer), is_output)
    if isinstance(layer, (L.Dropout, L.SpatialDropout1D, L.GaussianNoise, L.GaussianDropout, L.AlphaDropout,
                          L.ActivityRegularization)):
        return Identity()
    if isinstance(layer, L.Bidirectional):
        f, b = layer.forward_layer, layer.backward_layer
        return Recurrent([_cell_oracle(f), _cell_oracle(b)], [f.go_backwards, b.go_backwards],
                         f.return_sequences, layer.merge_mode or "concat",
                         zero_output_for_mask=f.return_sequences, return_state=layer.return_state)
    if isinstance(layer, L.RNN):
        return Recurrent([_cell_oracle(layer)], [layer.go_backwards], layer.return_sequences, None,
                         zero_output_for_mask=layer.zero_output_for_mask, return_state=layer.return_state)
    raise NotImplementedError(type(layer).__name__)


def run_oracles(oracles, inputs, targets, embedding=None, timesteps=None):
    """Forward then backward through a chain of layer oracles, sample by sample; the relevance of
    the target score (at ``timesteps[i]`` for outputs with a time axis) starts the backward pass.
    Returns (relevance, rest (batch,), scores (batch, outputs))."""
    rels, rests, scores = [], [], []
    for i in range(len(inputs)):
        if embedding is not None:
            ids = np.asarray(inputs[i])
            v = _f64(embedding.embeddings.numpy())[ids]
            mask = (ids != 0) if embedding.mask_zero else None
        else:
            v, mask = np.asarray(inputs[i], np.float64), None
        for o in oracles:
            v, mask = o.forward(v, mask)
        r = np.zeros_like(v)
        if v.ndim == 2:
            step = timesteps[i]
            r[step, targets[i]] = v[step, targets[i]]
            scores.append(v[step])
        else:
            r[targets[i]] = v[targets[i]]
            scores.append(v)
        rest = 0.0
        for o in reversed(oracles):
            r, rs = o.backward(r)
            rest += rs
        rels.append(r)
        rests.append(rest)
    return np.stack(rels), np.array(rests), np.stack(scores)


def explain_chain(model, inputs, targets, ctx, timesteps=None):
    """LRP of a Sequential model, or a functional one that is a chain of layers (optionally starting with
    an Embedding), sample by sample.

    inputs: (batch, T, features) floats or (batch, T) token ids; targets: one int per sample;
    timesteps: one int per sample for models whose output has a time axis.
    Returns (relevance (batch, T, features or emb_dim), rest (batch,), scores (batch, outputs)).
    """
    import keras
    layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]   # functional
    emb = None
    if isinstance(layers[0], keras.layers.Embedding):
        emb, layers = layers[0], layers[1:]
    # the output layer is the last one that is not an identity / activation layer
    out_idx = len(layers) - 1
    while isinstance(layers[out_idx], (keras.layers.Activation, keras.layers.Dropout)):
        out_idx -= 1
    oracles = [from_keras(l, is_output=(n >= out_idx)) for n, l in enumerate(layers)]
    for o in oracles:
        o.ctx = ctx
    return run_oracles(oracles, inputs, targets, emb, timesteps)


# --------------------------------------------------------------------------- test helpers

def random_sequences(seed, batch, steps, features):
    """Standard-normal float inputs (batch, steps, features)."""
    return np.random.default_rng(seed).standard_normal((batch, steps, features))


def sequential_model(layers, features, seed=0, steps=None):
    """Input((steps, features)) -> layers, with Keras's initial weights perturbed (non-zero biases).

    ``layers``: a list, or a function returning one. Keras draws an initializer's seed from Python's
    ``random`` when the layer is constructed, so only layers that the function constructs here, after
    ``seed`` is set, start from the same weights in every process (a list built by the caller starts
    from whatever ``random`` held then)."""
    import keras
    keras.utils.set_random_seed(seed)
    if callable(layers):
        layers = layers()
    return perturb(keras.Sequential([keras.Input((steps, features))] + layers), seed + 100)


def perturb(model, seed, scale=0.3):
    """Add Gaussian noise to every weight (Keras initialises biases to zeros / ones)."""
    rng = np.random.default_rng(seed)
    model.set_weights([w + scale * rng.standard_normal(w.shape).astype(w.dtype) for w in model.get_weights()])
    return model


def model_output(model, x):
    """The model's own (float32) forward pass, as numpy."""
    import keras
    x = np.asarray(x)
    x = x.astype("int32") if np.issubdtype(x.dtype, np.integer) else x.astype("float32")
    return keras.ops.convert_to_numpy(model(x, training=False))


def assert_close_rel(got, want, tol=1e-8, what="relevance"):
    """max |got - want| <= tol * max |want| (and exact agreement when want is all zeros)."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, (what, got.shape, want.shape)
    scale = np.abs(want).max()
    err = np.abs(got - want).max()
    assert err <= tol * scale, f"{what}: max error {err:.3e} > {tol:g} x {scale:.3e}"


def check_explain(model, x, targets, ctx, timesteps=None, tol=1e-8, against_model=True):
    """keras_lrp.explain (float64) vs :func:`explain_chain` for a Sequential model: scores,
    targets, relevance (``tol`` relative to max |relevance|), rest; the scores also against the
    model's own forward pass (``against_model``, when its output layer has no activation), and
    conservation when eps = 0, bias_factor = 1: with the "prop" gate rule, up to what the oracle loses
    (the proportional rule passes nothing through a product whose gate + signal is exactly 0, e.g. a
    saturated hard_sigmoid gate of 0 times a zero state: :func:`gate_split`). Returns the Explanation."""
    import keras_lrp
    e = keras_lrp.explain(model, x, targets, timestep=timesteps, eps=ctx.eps, bias_factor=ctx.bias_factor,
                          rule=ctx.gate, dtype="float64")
    r, rest, scores = explain_chain(model, x, targets, ctx, timesteps)
    np.testing.assert_array_equal(e.target, targets)
    assert_close_rel(e.scores, scores, 1e-10, "scores")
    assert_close_rel(e.relevance, r, tol)
    scale = max(np.abs(r).max(), np.abs(rest).max())
    assert np.abs(e.rest - rest).max() <= tol * scale, ("rest", e.rest, rest)
    if against_model:
        out = model_output(model, x)
        if out.ndim == 3:
            out = out[np.arange(len(out)), timesteps]
        np.testing.assert_allclose(out, scores, rtol=1e-4, atol=1e-5 * max(1.0, np.abs(scores).max()))
    if ctx.eps == 0 and ctx.bias_factor == 1:
        lost = 0.0
        if ctx.gate == "prop":   # what the oracle loses at gate + signal = 0, the engine must lose too
            lost = e.explained_score - (np.reshape(r, (len(r), -1)).sum(1) + rest)
        assert_conserves(e, lost)
    return e


def assert_conserves(e, lost=0.0):
    """sum(relevance) + rest == explained score - ``lost`` (per sample, what the rule is known to drop), to
    1e-8 of the score, or of 1e-6 x the mass that the sum cancels (eps = 0 divides by near-zero sums:
    relevance up to 2e7 summing to a score of 1 carries 1e-8 of float64 rounding, measured)."""
    n = len(e.explained_score)
    relevance = np.concatenate([np.reshape(r, (n, -1)) for r in (e.relevance if isinstance(e.relevance, list)
                                                                 else [e.relevance])], axis=1)
    total = relevance.sum(1) + e.rest
    mass = np.abs(relevance).sum(1) + np.abs(e.rest)
    np.testing.assert_allclose(total, e.explained_score - lost, rtol=0,
                               atol=1e-8 * max(1.0, np.abs(e.explained_score).max(), 1e-6 * mass.max()))
