"""Under autocast the losses follow autocast's rules, as PyTorch's do (issue #33):
``cross_entropy`` is on autocast's float32 list (half logits: a float32 loss, the gradient in
the logits' dtype); ``linear_cross_entropy`` is ``F.linear`` (the matmul in the autocast dtype)
then that loss, with the classifier's gradient in its own dtype. Compared with PyTorch's own
functions under the same autocast, and with a float64 truth of what autocast computes."""

import pytest
import torch
import torch.nn.functional as F

import hardloss_cuda as hl

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _bf16(t):  # what autocast's cast makes of a float32 tensor, in float64
    return t.to(torch.bfloat16).double()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kw", [{}, {"reduction": "none", "label_smoothing": 0.1}, {"k": 0.5, "trim": 0.5}])
def test_cross_entropy_matches_torch_under_autocast(device, kw):
    torch.manual_seed(0)
    x = torch.randn(37, 11, device=device, dtype=torch.bfloat16) * 3
    y = torch.randint(0, 11, (37,), device=device)
    y[3] = -100
    ours, theirs = x.clone().requires_grad_(), x.clone().requires_grad_()
    with torch.autocast(device, dtype=torch.bfloat16):
        loss = hl.cross_entropy(ours, y, **kw)
        plain = {n: v for n, v in kw.items() if n not in ("k", "trim")}
        want = F.cross_entropy(theirs, y, **plain)
    assert loss.dtype == want.dtype == torch.float32
    g = torch.rand_like(want)
    (loss * g).sum().backward()
    (want * g).sum().backward()
    assert ours.grad.dtype == torch.bfloat16
    if "trim" in kw:  # the kept rows' loss: checked in test_trimming; here the dtypes and that it runs
        return
    torch.testing.assert_close(loss, want, rtol=1e-6, atol=1e-6)  # both float32 math on the same bf16 logits
    torch.testing.assert_close(ours.grad, theirs.grad, rtol=0.02, atol=1e-3)  # one bf16 rounding each


def test_cross_entropy_outside_autocast_keeps_the_dtype():
    x, y = torch.randn(5, 4, dtype=torch.bfloat16), torch.randint(0, 4, (5,))
    assert hl.cross_entropy(x, y).dtype == torch.bfloat16
    with torch.autocast("cpu", dtype=torch.bfloat16):  # float32 and float64 logits are not cast, as in F
        assert hl.cross_entropy(x.float(), y).dtype == torch.float32
        assert hl.cross_entropy(x.double(), y).dtype == torch.float64


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("h_dtype", [torch.bfloat16, torch.float32], ids=["h-bf16", "h-fp32"])
@pytest.mark.parametrize("kw", [{}, {"k": 0.5}, {"reduction": "sum", "trim": 0.6}, {"return_lse": True}])
def test_linear_cross_entropy_under_autocast(device, kw, h_dtype):
    """h and W float32 under bf16 autocast (h may also be bf16, the output of an autocast layer).
    The loss is float32, each gradient in its tensor's dtype, and no further from the float64
    truth of autocast's math (bf16 inputs, bf16 logits, float32 loss) than PyTorch's own."""
    torch.manual_seed(1)
    N, D, C = 29, 16, 13
    h = torch.randn(N, D, device=device).to(h_dtype)  # bf16: the output of an autocast layer (the case)
    W = torch.randn(C, D, device=device) / 4
    b = torch.randn(C, device=device)
    y = torch.randint(0, C, (N,), device=device)
    ours = [t.clone().requires_grad_() for t in (h, W, b)]
    theirs = [t.clone().requires_grad_() for t in (h, W, b)]
    with torch.autocast(device, dtype=torch.bfloat16):
        out = hl.linear_cross_entropy(ours[0], ours[1], y, linear_bias=ours[2], chunk_size=8, **kw)
        if kw.get("k", 1) == 1 and "trim" not in kw:
            want = F.linear_cross_entropy(theirs[0], theirs[1], y, linear_bias=theirs[2],
                                          reduction=kw.get("reduction", "mean"))
    loss, lse = out if kw.get("return_lse") else (out, None)
    assert loss.dtype == torch.float32 and (lse is None or lse.dtype == torch.float32)
    loss.sum().backward()
    assert [t.grad.dtype for t in ours] == [h_dtype, torch.float32, torch.float32]
    if kw.get("k", 1) != 1 or "trim" in kw:
        return
    want.backward()
    # the float64 truth of autocast's math
    h64, W64, b64 = (_bf16(t).requires_grad_() for t in (h, W, b))
    z = (h64 @ W64.T + b64).to(torch.bfloat16).double()  # the autocast matmul's bf16 output
    truth = F.cross_entropy(z, y)
    truth.backward()
    torch.testing.assert_close(loss.double(), truth.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(want.double(), truth.detach(), rtol=1e-5, atol=1e-6)
    for a, t, r in zip(ours, theirs, (h64, W64, b64)):
        err, torch_err = (a.grad.double() - r.grad).abs().max(), (t.grad.double() - r.grad).abs().max()
        assert err <= 2 * torch_err + 1e-3 * r.grad.abs().max(), (err, torch_err)


def test_linear_cross_entropy_float64_weight_message():
    """Autocast leaves float64 alone (as F.linear): a float64 classifier with float32 input is
    refused, naming both dtypes."""
    h, W, y = torch.randn(4, 3), torch.randn(5, 3, dtype=torch.float64), torch.randint(0, 5, (4,))
    with pytest.raises(ValueError, match=r"linear_weight is torch.float64 but input is torch.float32.*\.to\("):
        hl.linear_cross_entropy(h, W, y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with pytest.raises(ValueError, match=r"linear_weight is torch.float64 but input is torch.bfloat16"):
            hl.linear_cross_entropy(h, W, y)
