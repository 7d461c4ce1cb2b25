"""Gradient accumulation (issue #33; docs/RECIPES.md): micro-batches with ``reduction="sum"``,
each divided by the whole batch's total weight (its counted tokens, the Hugging Face Trainer's
``num_items_in_batch``), give the full batch's mean loss and gradient, at k = 1 and k != 1 (the
pseudo-gradient is normalised within each row, over its classes, never across rows). The mean
of the micro-batches' means does not, where their padding differs. With trimming each call
keeps the hardest fraction of its own micro-batch: the accumulated loss is the full batch with
every other row ignored."""

import pytest
import torch

import hardloss_cuda as hl

IGNORE = -100


def _batch(seed=0, N=24, C=9, D=5):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(N, D, dtype=torch.float64, generator=g)
    W = torch.randn(C, D, dtype=torch.float64, generator=g)
    y = torch.randint(0, C, (N,), generator=g)
    for a, pad in ((0, 1), (8, 4), (16, 7)):  # three micro-batches of 8, padded differently
        y[a + 8 - pad:a + 8] = IGNORE
    return h, W, y


def _loss(front, h, W, y, **kw):
    if front == "cross_entropy":
        return hl.cross_entropy(h @ W.T, y, **kw)
    return hl.linear_cross_entropy(h, W, y, chunk_size=3, **kw)


def _grads(front, h, W, y, micro, normaliser=None, **kw):
    """(loss, dh, dW): the full batch (micro=None) or micro-batches of ``micro`` rows, each
    backward on its ``sum`` divided by ``normaliser`` (None: its own mean, divided by their count)."""
    h, W = h.clone().requires_grad_(), W.clone().requires_grad_()
    if micro is None:
        loss = _loss(front, h, W, y, **kw)
        loss.backward()
        return loss.detach(), h.grad, W.grad
    total, parts = 0, range(0, h.shape[0], micro)
    for a in parts:
        sl = slice(a, a + micro)
        if normaliser is None:
            part = _loss(front, h[sl], W, y[sl], **kw) / len(parts)
        else:
            part = _loss(front, h[sl], W, y[sl], reduction="sum", **kw) / normaliser
        part.backward()
        total = total + part.detach()
    return total, h.grad, W.grad


def _close(a, b):
    for x, z in zip(a, b):
        torch.testing.assert_close(x, z, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("front", ["cross_entropy", "linear_cross_entropy"])
@pytest.mark.parametrize("k", [1.0, 0.5, 2.0])
def test_sum_over_counted_tokens_equals_the_full_batch(front, k):
    h, W, y = _batch()
    full = _grads(front, h, W, y, None, k=k)
    counted = (y != IGNORE).sum()  # what the Trainer passes as num_items_in_batch
    _close(_grads(front, h, W, y, 8, counted, k=k), full)
    # the usual mean of micro-batch means weighs the 7 tokens of the first micro-batch like the 1 of the last
    mean_of_means = _grads(front, h, W, y, 8, None, k=k)
    assert (mean_of_means[2] - full[2]).norm() > 0.05 * full[2].norm()


def test_z_loss_without_class_weights():
    h, W, y = _batch(3)
    full = _grads("linear_cross_entropy", h, W, y, None, k=0.5, z_loss=0.1)
    _close(_grads("linear_cross_entropy", h, W, y, 8, (y != IGNORE).sum(), k=0.5, z_loss=0.1), full)


@pytest.mark.parametrize("k", [1.0, 0.5])
def test_class_weights_normalise_by_the_total_weight(k):
    h, W, y = _batch(1)
    w = torch.linspace(0.5, 2, W.shape[0], dtype=torch.float64)
    full = _grads("cross_entropy", h, W, y, None, k=k, weight=w)
    total_weight = w[y[y != IGNORE]].sum()
    _close(_grads("cross_entropy", h, W, y, 8, total_weight, k=k, weight=w), full)


@pytest.mark.parametrize("front", ["cross_entropy", "linear_cross_entropy"])
@pytest.mark.parametrize("k", [1.0, 0.5])
def test_trimming_trims_each_micro_batch(front, k):
    """Accumulated with trim=f, divided by the kept rows of all micro-batches (sum of
    max(round(f n_j), 1)), the loss is the full batch's mean over the rows each micro-batch
    kept: the full batch with every other row ignored. Not full-batch trimming, which here
    keeps only rows of the hard micro-batch."""
    h, W, y = _batch(2)
    h[8:16] *= 0.01  # the second micro-batch: easy rows (near-uniform logits, lower loss than the hard ones)
    h[:8] *= 5
    f, micro = 0.4, 8
    per_row = _loss(front, h, W, y, reduction="none")
    kept_y = torch.full_like(y, IGNORE)
    kept_total = 0
    for a in range(0, h.shape[0], micro):
        valid = (y[a:a + micro] != IGNORE).nonzero().squeeze(1) + a
        r = max(round(f * valid.numel()), 1)
        hardest = valid[per_row[valid].argsort(descending=True, stable=True)[:r]]
        kept_y[hardest] = y[hardest]
        kept_total += r
    want = _grads(front, h, W, kept_y, None, k=k)
    _close(_grads(front, h, W, y, micro, kept_total, k=k, trim=f), want)
    full_trim = _grads(front, h, W, y, None, k=k, trim=f)
    assert (full_trim[0] - want[0]).abs() > 1e-3
