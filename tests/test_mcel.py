"""MCEL: LDA similarity (against scikit-learn), mixtures, penalties, learned modes."""

import numpy as np
import pytest
import torch

import hardloss_cuda as H
from hardloss_cuda import mcel


def _sklearn_similarity(X, y, n_components):
    LDA = pytest.importorskip("sklearn.discriminant_analysis").LinearDiscriminantAnalysis
    Z = LDA(n_components=n_components, solver="svd").fit(X, y).transform(X)
    v = np.stack([Z[y == c].mean(0) for c in np.unique(y)])
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    s = 1 / (1 + np.exp(1 - v @ v.T))
    np.fill_diagonal(s, 0)
    return s / s.sum(1, keepdims=True)


@pytest.mark.parametrize("n_components", [None, 4])
def test_lda_similarity_matches_sklearn_on_digits(n_components):
    datasets = pytest.importorskip("sklearn.datasets")
    X, y = datasets.load_digits(return_X_y=True)
    A = mcel.lda_similarity(torch.from_numpy(X), torch.from_numpy(y), n_components)
    expected = _sklearn_similarity(X, y, 9 if n_components is None else n_components)
    np.testing.assert_allclose(A.numpy(), expected, rtol=1e-6, atol=1e-9)
    assert A.shape == (10, 10)
    np.testing.assert_allclose(A.sum(1).numpy(), 1.0, rtol=1e-12)
    assert (A.diagonal() == 0).all()


def test_mixtures():
    A = torch.softmax(torch.randn(5, 5), 1).fill_diagonal_(0)
    A /= A.sum(1, keepdim=True)
    W = mcel.simple_mixture(A, 0.2)
    torch.testing.assert_close(W, 0.8 * torch.eye(5) + 0.2 * A)
    torch.testing.assert_close(W.sum(1), torch.ones(5))
    e = torch.tensor([0.0, 0.1, 0.2, 0.3, 0.49])
    Wc = mcel.per_class_mixture(A, e)
    torch.testing.assert_close(Wc.diagonal(), 1 - e)
    torch.testing.assert_close(Wc.sum(1), torch.ones(5))
    for bad in (-0.1, 0.5, float("nan")):
        with pytest.raises(ValueError, match="mixing weight"):
            mcel.simple_mixture(A, bad)
    with pytest.raises(ValueError, match="mixing weight"):
        mcel.per_class_mixture(A, torch.tensor([0.1, 0.1, 0.6, 0.1, 0.1]))
    with pytest.raises(ValueError, match="C x C"):
        mcel.simple_mixture(torch.rand(3, 4), 0.1)


def test_penalties_match_equations():
    C = 4
    A = torch.softmax(torch.randn(C, C, dtype=torch.float64), 1).fill_diagonal_(0)
    A /= A.sum(1, keepdim=True)
    sg = H.MixedCrossEntropyLoss(A, 0.2, "per_class", alpha=0.7, beta=0.3, gamma=0.2, p=3)
    with torch.no_grad():
        sg.eps.copy_(torch.tensor([0.1, 0.2, 0.3, 0.6]))
    W = mcel.per_class_mixture(A, sg.eps)
    e = sg.eps.detach()
    expected = 0.7 * ((W.abs().sum(1) - 1) ** 2).sum() + 0.3 * ((e - 0.5).abs() ** 3).sum() + 0.2 * (e.abs() ** 3).sum()
    torch.testing.assert_close(sg.penalty(), expected)

    g = H.MixedCrossEntropyLoss(A, 0.2, "full", alpha=0.5, beta=0.1, gamma=0.2, eta=0.3, p=2, c=0.6)
    E = g.E.detach() + 0.05 * torch.randn(C, C, dtype=torch.float64)
    with torch.no_grad():
        g.E.copy_(E)
    loops = 0.0
    for i in range(C):
        loops += 0.5 * (E[i].sum() - 1) ** 2
        loops += 0.3 * ((C - 1) * (E[i, i] - 0.6) - (E[i].sum() - E[i, i])) ** 2
    loops += 0.1 * ((E - 1) ** 2).sum() + 0.2 * (E**2).sum()
    torch.testing.assert_close(g.penalty(), loops)


@pytest.mark.parametrize("mode", ["fixed", "per_class", "full"])
def test_learned_modes_train(mode):
    C = 6
    A = torch.softmax(torch.randn(C, C), 1).fill_diagonal_(0)
    A /= A.sum(1, keepdim=True)
    loss_fn = H.MixedCrossEntropyLoss(A, 0.1, mode, k=0.5)
    x = torch.randn(32, C, requires_grad=True)
    y = torch.randint(0, C, (32,))
    (loss_fn(x, y) + loss_fn.penalty()).backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    params = list(loss_fn.parameters())
    assert len(params) == (0 if mode == "fixed" else 1)
    for p in params:
        assert p.grad is not None and p.grad.abs().sum() > 0
