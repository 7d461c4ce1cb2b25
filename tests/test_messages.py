"""Error messages that state the actual value beside the expected one and the likely fix, and
modules that check their options when built and show them in their repr (issue #33)."""

import re

import pytest
import torch

import hardloss_cuda as hl
from hardloss_cuda import backends


def test_float64_weight_names_both_dtypes():
    h, W, y = torch.randn(4, 3), torch.randn(5, 3, dtype=torch.float64), torch.randint(0, 5, (4,))
    with pytest.raises(ValueError, match=r"linear_weight is torch\.float64 but input is torch\.float32.*"
                                         r"linear_weight\.to\(input\.dtype\)"):
        hl.linear_cross_entropy(h, W, y)
    with pytest.raises(ValueError, match=r"linear_bias is torch\.float64 but input is torch\.float32"):
        hl.linear_cross_entropy(h, W.float(), y, linear_bias=torch.zeros(5, dtype=torch.float64))


@pytest.mark.parametrize("shape", [(6,), (2, 3)])
def test_float_labels_say_long(shape):
    y = torch.randint(0, 5, shape).float()
    x = torch.randn(*shape[:1], 5, *shape[1:])
    msg = rf"target is a torch\.float32 tensor of shape {re.escape(str(shape))}.*target\.long\(\).*probabilities"
    with pytest.raises(ValueError, match=msg):
        hl.cross_entropy(x, y)
    with pytest.raises(ValueError, match=msg):
        hl.linear_cross_entropy(torch.randn(*shape, 3), torch.randn(5, 3), y)


def test_bad_environment_variable_is_named(monkeypatch):
    monkeypatch.setenv("HARDLOSS_BACKEND", "gpu")
    msg = r"environment variable HARDLOSS_BACKEND='gpu'.*must be one of.*unset it"
    with pytest.raises(ValueError, match=msg):
        hl.cross_entropy(torch.randn(2, 3), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=msg):  # and when a module is built
        hl.HardCrossEntropyLoss()
    hl.HardCrossEntropyLoss(backend="reference")  # a named backend does not read it


def test_lda_similarity_names_a_missing_class():
    torch.manual_seed(0)
    feats, labels = torch.randn(200, 6), torch.randint(0, 5, (200,))
    labels[labels == 3] = 4  # no sample of class 3
    A = hl.mcel.lda_similarity(feats, labels)  # without num_classes: one row per present class
    assert A.shape == (4, 4)
    with pytest.raises(ValueError, match=r"mixture must be C x C = \(5, 5\).*got \(4, 4\).*num_classes="):
        hl.cross_entropy(torch.randn(3, 5), torch.tensor([0, 1, 4]), mixture=hl.mcel.simple_mixture(A, 0.1))
    with pytest.raises(ValueError, match=r"class 3 has no samples.*num_classes=5"):
        hl.mcel.lda_similarity(feats, labels, num_classes=5)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 4\).*\[4\]"):
        hl.mcel.lda_similarity(feats, labels, num_classes=4)
    labels[:5] = 3
    A5 = hl.mcel.lda_similarity(feats, labels, num_classes=5)
    torch.testing.assert_close(A5, hl.mcel.lda_similarity(feats, labels))


@pytest.mark.parametrize("kw,match", [
    ({"trim": 1.5}, r"trim must be a number in \(0, 1\], got 1.5"),
    ({"reduction": "avg"}, r"reduction must be one of \('mean', 'sum', 'none'\), got 'avg'"),
    ({"backend": "tpu"}, r"backend must be one of .*got 'tpu'"),
    ({"label_smoothing": -0.1}, r"label_smoothing must be a number in \[0, 1\], got -0.1"),
    ({"weight": torch.ones(2, 3)}, r"weight must be a float tensor of shape \(C,\), got a torch.float32 tensor of "
                                   r"shape \(2, 3\)"),
    ({"mixture": torch.ones(3, 4)}, r"mixture must be a square C x C matrix, got shape \(3, 4\)"),
    ({"mixture": torch.eye(3), "label_smoothing": 0.1}, "label_smoothing cannot be combined with mixture"),
])
@pytest.mark.parametrize("module", [hl.HardCrossEntropyLoss, hl.HardLinearCrossEntropyLoss])
def test_modules_check_when_built(module, kw, match):
    with pytest.raises(ValueError, match=match):
        module(**kw)


def test_unavailable_backend_says_why_when_built():
    reasons = hl.unavailable_reasons()
    if not reasons:
        pytest.skip("every backend can run here")
    name, why = next(iter(reasons.items()))
    with pytest.raises(RuntimeError, match=rf"backend '{name}' is not available: {re.escape(why)}.*available here"):
        hl.HardCrossEntropyLoss(backend=name)
    with pytest.raises(RuntimeError, match=rf"backend '{name}' is not available"):
        backends.check_backend(name)


def test_repr_shows_the_options():
    trim = hl.MiniBatchTrimming(num_epochs=4, start=0.8)
    loss = hl.HardCrossEntropyLoss(torch.ones(5), ignore_index=0, label_smoothing=0.1, k=0.5, trim=trim, z_loss=1e-4,
                                   backend="reference")
    text = repr(loss)
    for part in ("k=0.5", "reduction='mean'", "ignore_index=0", "label_smoothing=0.1", "z_loss=0.0001",
                 "trim=MiniBatchTrimming(epoch=0/4, fraction=0.800)", "backend='reference'", "weight=<(5,) float32>"):
        assert part in text, (part, text)
    assert repr(hl.HardCrossEntropyLoss()) == "HardCrossEntropyLoss(k=1.0, reduction='mean')"
    learned = hl.HardCrossEntropyLoss(mixture=torch.nn.Parameter(torch.eye(3)))
    assert "mixture=<(3, 3) float32, learned>" in repr(learned)
    head = repr(hl.HardLinearCrossEntropyLoss(reduction="sum", chunk_size=128, softcap=30.0))
    assert head == "HardLinearCrossEntropyLoss(k=1.0, reduction='sum', softcap=30.0, chunk_size=128)"


def test_mixed_loss_checks_when_built():
    A = torch.softmax(torch.randn(4, 4), 1).fill_diagonal_(0)
    A = A / A.sum(1, keepdim=True)
    with pytest.raises(ValueError, match="reduction must be one of"):
        hl.MixedCrossEntropyLoss(A, reduction="avg")
    with pytest.raises(ValueError, match="trim must be a number"):
        hl.MixedCrossEntropyLoss(A, trim=1.5)
    with pytest.raises(TypeError, match=r"unexpected keyword argument\(s\) \['eps_'\]"):
        hl.MixedCrossEntropyLoss(A, eps_=0.1)
    with pytest.raises(ValueError, match="label_smoothing cannot be combined with mixture"):
        hl.MixedCrossEntropyLoss(A, label_smoothing=0.1)
    want = "MixedCrossEntropyLoss(C=4, mode='fixed', reduction='mean', k=0.5)"
    assert repr(hl.MixedCrossEntropyLoss(A, k=0.5)) == want
