"""The positional order of PyTorch's functions and modules (issue #33): ``cross_entropy`` and
``HardCrossEntropyLoss`` take ``F.cross_entropy`` / ``nn.CrossEntropyLoss``'s, deprecated
``size_average`` and ``reduce`` included; the library's earlier order still works, with a
FutureWarning; ``linear_cross_entropy`` follows ``F.linear_cross_entropy`` (three tensors, then
keywords; ``ignore_index=None`` is -100)."""

import inspect
import warnings

import pytest
import torch
import torch.nn.functional as F

import hardloss_cuda as hl

OLD_ORDER = "the old one"


def _case():
    torch.manual_seed(0)
    x = torch.randn(7, 5, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3, 4, 1, 2])
    return x, y, torch.rand(5, dtype=torch.float64) + 0.5


def _params(fn, skip=0):
    return [p.name for p in list(inspect.signature(fn).parameters.values())[skip:]
            if p.kind == p.POSITIONAL_OR_KEYWORD]


def test_signatures_start_as_torch():
    assert _params(hl.cross_entropy) == _params(F.cross_entropy)
    assert _params(hl.HardCrossEntropyLoss.__init__) == _params(torch.nn.CrossEntropyLoss.__init__)
    assert _params(hl.HardLinearCrossEntropyLoss.__init__) == _params(torch.nn.CrossEntropyLoss.__init__)
    assert _params(hl.linear_cross_entropy) == _params(F.linear_cross_entropy)  # then keywords only


def test_torch_positional_order():
    x, y, w = _case()
    args = (w, None, 2, None, "sum", 0.1)  # weight, size_average, ignore_index, reduce, reduction, smoothing
    want = F.cross_entropy(x, y, *args)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torch.testing.assert_close(hl.cross_entropy(x, y, *args), want, rtol=1e-12, atol=0)
        torch.testing.assert_close(hl.HardCrossEntropyLoss(*args)(x, y), torch.nn.CrossEntropyLoss(*args)(x, y),
                                   rtol=1e-12, atol=0)


@pytest.mark.parametrize("size_average,reduce", [(False, None), (None, False), (True, True)])
def test_legacy_size_average_and_reduce(size_average, reduce):
    x, y, w = _case()
    with pytest.warns(UserWarning, match="size_average and reduce"):
        want = F.cross_entropy(x, y, w, size_average, -100, reduce)
    with pytest.warns(UserWarning, match="size_average and reduce"):
        got = hl.cross_entropy(x, y, w, size_average, -100, reduce)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)
    with pytest.warns(UserWarning, match="size_average and reduce"):
        module = hl.HardCrossEntropyLoss(w, size_average, reduce=reduce)
    torch.testing.assert_close(module(x, y), want, rtol=1e-12, atol=0)


@pytest.mark.parametrize("old", [(2,), (2, "sum"), (2, "none", 0.1), (torch.tensor(2), "sum")],
                         ids=["ignore_index", "+reduction", "+label_smoothing", "0-dim ignore_index"])
def test_old_order_still_works_with_a_warning(old):
    x, y, w = _case()
    names = ("ignore_index", "reduction", "label_smoothing")
    keywords = dict(zip(names, (int(old[0]),) + old[1:]))
    want = F.cross_entropy(x, y, w, **keywords)
    with pytest.warns(FutureWarning, match=OLD_ORDER) as record:
        got = hl.cross_entropy(x, y, w, *old)
    assert record[0].filename == __file__  # points at the caller
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)
    with pytest.warns(FutureWarning, match=OLD_ORDER):
        module = hl.HardCrossEntropyLoss(w, *old)
    assert (module.ignore_index, module.reduction) == (keywords["ignore_index"], keywords.get("reduction", "mean"))
    torch.testing.assert_close(module(x, y), want, rtol=1e-12, atol=0)
    with pytest.warns(FutureWarning, match=OLD_ORDER):
        assert hl.HardLinearCrossEntropyLoss(w, *old).ignore_index == keywords["ignore_index"]


def test_old_order_and_the_same_keyword_is_refused():
    x, y, _ = _case()
    with pytest.raises(TypeError, match="reduction given twice"):
        hl.cross_entropy(x, y, None, 2, "sum", reduction="none")
    with pytest.raises(TypeError, match="ignore_index given twice"):
        hl.HardCrossEntropyLoss(None, 2, ignore_index=3)
    with pytest.raises(ValueError, match="reduce must be None or a bool"):
        hl.cross_entropy(x, y, reduce="sum")


def test_linear_ignore_index_none_is_minus_100():
    h, W = torch.randn(6, 4, dtype=torch.float64), torch.randn(5, 4, dtype=torch.float64)
    y = torch.tensor([0, 1, -100, 3, 4, -100])
    want = F.linear_cross_entropy(h, W, y, ignore_index=None)
    torch.testing.assert_close(hl.linear_cross_entropy(h, W, y, ignore_index=None), want, rtol=1e-12, atol=0)
    torch.testing.assert_close(hl.linear_cross_entropy(h, W, y), want, rtol=1e-12, atol=0)
