"""Independent float64 formulas, written from the papers with explicit eps arrays (not the
log-domain rewrite the library uses), to test the reference against."""

import numpy as np


def softmax(z):
    z = np.asarray(z, dtype=np.float64)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def keren_grad(z, y, k):
    """Keren et al.: f_y = -|eps_y|^k, f_j = |eps_y|^k eps_j^k / sum_{i != y} eps_i^k."""
    p = softmax(z)
    f = np.zeros_like(p)
    for i, yi in enumerate(y):
        eps = p[i].copy()
        eps[yi] -= 1.0
        others = np.delete(eps, yi)
        f[i] = np.insert(abs(eps[yi]) ** k * others**k / np.sum(others**k), yi, -abs(eps[yi]) ** k)
    return f


def soft_pseudo_grad(z, q, k):
    """t F_k(p - q / t): negatives -|eps|^k, positives eps^k rescaled so the row sums to 0."""
    p = softmax(z)
    f = np.zeros_like(p)
    for i in range(p.shape[0]):
        t = q[i].sum()
        eps = p[i] - q[i] / t
        neg = eps < 0
        s_neg = np.sum(np.abs(eps[neg]) ** k)
        f[i, neg] = -np.abs(eps[neg]) ** k
        f[i, ~neg] = s_neg * eps[~neg] ** k / np.sum(eps[~neg] ** k)
        f[i] *= t
    return f


def mcel_loss(z, y, W):
    """-sum_j W[y, j] log p_j, per row."""
    logp = np.log(softmax(z))
    return -np.sum(W[y] * logp, axis=1)
