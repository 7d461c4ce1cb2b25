"""The reference against formulas computed independently in float64 (tests/oracle.py)."""

import numpy as np
import pytest
import torch

from hardloss_cuda import reference

from . import oracle

KS = [1 / 16, 1 / 4, 1 / 2, 1, 2, 4, 8]


def _rows(z, y, **kw):
    args = dict(weight=None, mixture=None, ignore_index=-100, label_smoothing=0.0, k=1.0)
    args.update(kw)
    return reference.rows(z, y, args["weight"], args["mixture"], args["ignore_index"],
                          args["label_smoothing"], args["k"])


@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("C", [2, 3, 17, 1000])
def test_onehot_pseudo_gradient_matches_keren(k, C):
    z = torch.randn(6, C, dtype=torch.float64) * 2
    y = torch.randint(0, C, (6,))
    loss, grad, lse = _rows(z, y, k=k)
    np.testing.assert_allclose(grad.numpy(), oracle.keren_grad(z.numpy(), y.numpy(), k), rtol=1e-10, atol=1e-300)
    torch.testing.assert_close(lse, torch.logsumexp(z, 1))
    torch.testing.assert_close(loss, torch.nn.functional.cross_entropy(z, y, reduction="none"))


@pytest.mark.parametrize("k", KS)
def test_soft_pseudo_gradient_matches_formula(k):
    C = 11
    z = torch.randn(5, C, dtype=torch.float64)
    probs = torch.softmax(torch.randn(5, C, dtype=torch.float64) * 3, 1)
    w = torch.rand(C, dtype=torch.float64) + 0.5
    _, grad, _ = _rows(z, probs, weight=w, k=k)
    np.testing.assert_allclose(grad.numpy(), oracle.soft_pseudo_grad(z.numpy(), (probs * w).numpy(), k), rtol=1e-9)
    # label smoothing on class indices is the soft path with q = (1 - s) onehot + s / C
    y = torch.randint(0, C, (5,))
    _, grad, _ = _rows(z, y, label_smoothing=0.2, k=k)
    q = torch.nn.functional.one_hot(y, C).double() * 0.8 + 0.2 / C
    np.testing.assert_allclose(grad.numpy(), oracle.soft_pseudo_grad(z.numpy(), q.numpy(), k), rtol=1e-9)


@pytest.mark.parametrize("k", [0.5, 1, 3])
def test_mixture_rows_match_formula(k):
    C = 9
    A = torch.rand(C, C, dtype=torch.float64).fill_diagonal_(0)
    W = 0.7 * torch.eye(C, dtype=torch.float64) + 0.3 * A / A.sum(1, keepdim=True)
    z = torch.randn(8, C, dtype=torch.float64)
    y = torch.randint(0, C, (8,))
    loss, grad, _ = _rows(z, y, mixture=W, k=k)
    np.testing.assert_allclose(loss.numpy(), oracle.mcel_loss(z.numpy(), y.numpy(), W.numpy()), rtol=1e-12)
    np.testing.assert_allclose(grad.numpy(), oracle.soft_pseudo_grad(z.numpy(), W[y].numpy(), k), rtol=1e-9)


def test_soft_path_with_onehot_target_equals_onehot_path():
    """A probability row that is one-hot must give Keren's formula too."""
    z = torch.randn(7, 13, dtype=torch.float64)
    y = torch.randint(0, 13, (7,))
    for k in (0.25, 2.0):
        _, g_soft, _ = _rows(z, torch.nn.functional.one_hot(y, 13).double(), k=k)
        _, g_hot, _ = _rows(z, y, k=k)
        torch.testing.assert_close(g_soft, g_hot, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("k", [1 / 16, 1, 8])
def test_extreme_numerics_stay_finite(dtype, k):
    C = 50
    z = torch.randn(6, C, dtype=dtype)
    y = torch.randint(0, C, (6,))
    z[0] *= 1e4  # logits of +-1e4
    z[1, y[1]] = 1e4  # p_y -> 1
    z[2] = -1e4
    z[2, y[2]] = 1e4
    z[3, :] = 0
    z[3, y[3]] = -1e4  # p_y -> 0
    z[4, :25] = -1e4  # classes whose probability underflows
    for kw in ({}, {"label_smoothing": 0.1}):
        loss, grad, lse = _rows(z, y, k=k, **kw)
        assert torch.isfinite(loss).all() and torch.isfinite(grad).all() and torch.isfinite(lse).all()
        # exp(x) inherits a relative error |x| eps from the rounding of its argument x ~ k z,
        # and the summation adds C eps, both relative to the row's absolute sum
        cond = C + k * z.abs().max().item()
        atol = cond * torch.finfo(dtype).eps * grad.abs().sum(1).max().item()
        torch.testing.assert_close(grad.sum(1), torch.zeros(6, dtype=dtype), atol=atol, rtol=0)
    _, grad, _ = _rows(z, y, k=k)
    assert grad[1].abs().max() < 1e-30 or k < 1  # p_y == 1 in fp: no gradient
    assert grad[3, y[3]] == -1.0  # |eps_y| = 1 - p_y == 1 exactly, in the log domain


def test_small_k_keeps_underflowing_classes():
    """exp(z - lse) underflows in float32 but |eps|^k with k = 1/16 does not."""
    z = torch.zeros(1, 4)
    z[0, 3] = -200.0  # p_3 ~ 1e-87: 0 in float32
    y = torch.tensor([0])
    _, grad, _ = _rows(z, y, k=1 / 16)
    truth = oracle.keren_grad(z.double().numpy(), [0], 1 / 16)
    assert grad[0, 3] > 0
    np.testing.assert_allclose(grad.numpy(), truth, rtol=1e-5)
    q = torch.tensor([[0.5, 0.5, 0.0, 0.0]])  # class 3 has no target mass: positive, log domain
    _, grad_soft, _ = _rows(z, q, k=1 / 16)
    assert grad_soft[0, 3] > 0
    np.testing.assert_allclose(grad_soft.numpy(), oracle.soft_pseudo_grad(z.double().numpy(), q.double().numpy(), 1 / 16), rtol=1e-5)


def test_c_equals_one():
    z = torch.randn(4, 1)
    y = torch.zeros(4, dtype=torch.long)
    for kw in ({}, {"label_smoothing": 0.3}, {"k": 0.5}):
        loss, grad, _ = _rows(z, y, **kw)
        assert (loss == 0).all() and (grad == 0).all()


def test_ignored_and_bad_rows():
    z = torch.randn(4, 5)
    z[1] = float("nan")  # an ignored row with NaN logits still gives exactly 0
    y = torch.tensor([1, -100, 7, 2])
    loss, grad, _ = _rows(z, y)
    assert loss[1] == 0 and (grad[1] == 0).all()
    assert torch.isnan(loss[2]) and torch.isnan(grad[2]).all()  # out of range: NaN, not a read
    assert torch.isfinite(loss[[0, 3]]).all()


def test_nan_logits_give_nan_row_only():
    z = torch.randn(3, 6)
    z[1, 2] = float("nan")
    loss, grad, _ = _rows(z, torch.tensor([0, 1, 2]))
    assert torch.isnan(loss[1]) and torch.isfinite(loss[[0, 2]]).all()
    assert torch.isfinite(grad[[0, 2]]).all()
