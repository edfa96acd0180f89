"""Plain-numpy oracles for the op-node rules, written from the equations (shares no code with keras_lrp).

Epsilon-rule (Arras et al. 2017, Bach et al. 2015) for ``z = sum_k c_k + b`` (c_k the contributions):

    R_k = (c_k + bias_factor * (b + eps * sign(z)) / N) * R_z / (z + eps * sign(z)),  sign(0) = +1,

with N the number of contributions. At a zero denominator (eps = 0, z = 0) the eps -> 0 limit: each
contribution gets bias_factor R_z / N when all contributions and b are exactly 0, else nothing
(:func:`zero_limit`). A selection (slice, reshape, transpose,
concatenate, stack) routes each output element's relevance back to the input element it copies.
A gate x signal product (attention weights times values) gives all the relevance to the signal.
"""
import numpy as np


def sign(v):
    return np.where(v >= 0, 1.0, -1.0)


def message(r, z, eps):
    """R / (z + eps sign z), 0 where the denominator is 0."""
    den = z + eps * sign(z)
    return np.divide(r, den, out=np.zeros_like(r), where=den != 0)


def zero_limit(r, z, magnitude, eps):
    """R where the denominator is 0 and so is every contribution (``magnitude``: the sum of their
    absolute values), else 0: what the stabiliser share tends to as eps -> 0."""
    den = z + eps * sign(z)
    return np.where((den == 0) & (magnitude == 0), r, 0.0)


def dense(x, kernel, bias, r_out, eps, bias_factor):
    """z = x @ kernel + bias (last axis): R on x, N = number of inputs."""
    z = x @ kernel + bias
    s = message(r_out, z, eps)
    limit = zero_limit(r_out, z, np.abs(x) @ np.abs(kernel) + np.abs(bias), eps)
    share = bias_factor * ((bias + eps * sign(z)) * s + limit).sum(axis=-1, keepdims=True) / x.shape[-1]
    return x * (s @ kernel.T) + share


def dense_forward(x, kernel, bias):
    return x @ kernel + bias


def route(x, select, r_y):
    """Relevance of a selection ``y = select(x)`` (numpy indexing / reshape / transpose / concatenate
    of pieces of x): each element of ``y`` sends its relevance to the element of ``x`` it copies."""
    index = np.arange(x.size).reshape(x.shape)
    picked = select(index)
    r_x = np.zeros(x.size)
    np.add.at(r_x, picked.ravel(), r_y.ravel())
    return r_x.reshape(x.shape)


def reduce_sum(x, axis, r_y, eps, bias_factor, mean=False):
    """y = sum (or mean) of x over ``axis`` (a tuple): every summed element is a contribution."""
    n = int(np.prod([x.shape[a] for a in axis]))
    terms = x / n if mean else x
    z = terms.sum(axis=axis, keepdims=True)
    r = r_y.reshape(z.shape)
    s = message(r, z, eps)
    limit = zero_limit(r, z, np.abs(terms).sum(axis=axis, keepdims=True), eps)
    return terms * s + bias_factor * (eps * sign(z) * s + limit) / n


def add(terms, const, r_z, eps, bias_factor):
    """z = sum(terms) + const, all of z's shape (terms already signed, e.g. -b for a subtraction)."""
    z = sum(terms) + const
    s = message(r_z, z, eps)
    limit = zero_limit(r_z, z, sum(np.abs(t) for t in terms) + np.abs(const), eps)
    return [t * s + bias_factor * ((const + eps * sign(z)) * s + limit) / len(terms) for t in terms]


def unbroadcast(r, shape):
    """Sum r over the axes an array of ``shape`` was broadcast along."""
    while r.ndim > len(shape):
        r = r.sum(axis=0)
    for axis, d in enumerate(shape):
        if d == 1 and r.shape[axis] != 1:
            r = r.sum(axis=axis, keepdims=True)
    return r


def softmax(v, axis):
    e = np.exp(v - v.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def attention_pool(h, v, bv, r_ctx, eps, bias_factor, mask=None):
    """ctx = sum_t w_t h_t, w = softmax_t(h_t . v + bv) (masked steps get weight 0).

    Returns (ctx, relevance on h): the epsilon-rule over the T terms w_t h_t, then each term's
    relevance goes entirely to h_t (the attention weight w_t is a gate, held constant)."""
    scores = h @ v + bv                                   # (batch, time, 1)
    if mask is not None:
        scores = np.where(mask[:, :, None], scores, -1e9)
    w = softmax(scores, axis=1)
    terms = w * h
    r_terms = reduce_sum(terms, (1,), r_ctx, eps, bias_factor)
    return terms.sum(axis=1), r_terms


def sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))
