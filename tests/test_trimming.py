"""Mini-batch trimming: schedule, kept count, and that only kept rows train."""

import pytest
import torch

import hardloss_cuda as H
from hardloss_cuda.trimming import MiniBatchTrimming, fraction, keep_mask


def test_linear_schedule():
    assert fraction(0, 10) == 1.0
    assert fraction(9, 10) == pytest.approx(0.2)
    assert fraction(3, 7, start=0.9, end=0.3) == pytest.approx(0.9 - 0.6 * 3 / 6)
    assert fraction(0, 1, start=0.7) == 0.7
    sched = MiniBatchTrimming(num_epochs=5)
    seen = []
    for _ in range(7):  # steps past the end hold the last value
        seen.append(sched.fraction)
        sched.step()
    assert seen == pytest.approx([1.0, 0.8, 0.6, 0.4, 0.2, 0.2, 0.2])
    restored = MiniBatchTrimming(num_epochs=5)
    restored.load_state_dict(sched.state_dict())
    assert restored.fraction == sched.fraction
    assert sched.state_dict() == {"num_epochs": 5, "start": 1.0, "end": 0.2, "epoch": 7}


def test_schedule_tensor_follows_the_epoch():
    """The tensor the losses read (fraction_tensor) follows step(), a set epoch and a loaded state."""
    sched = MiniBatchTrimming(num_epochs=5)
    t = sched.fraction_tensor
    for epoch in range(6):
        assert t.item() == pytest.approx(sched.fraction) and t.dtype == torch.float32
        sched.step()
    sched.epoch = 1
    assert t.item() == pytest.approx(0.8)
    sched.load_state_dict({"num_epochs": 5, "start": 1.0, "end": 0.2, "epoch": 3})
    assert t.item() == pytest.approx(0.4) and sched.fraction_tensor is t  # updated in place
    with pytest.raises(ValueError, match="epoch must be"):
        sched.epoch = -1
    assert sched.epoch == 3 and t.item() == pytest.approx(0.4)


@pytest.mark.parametrize("n,f", [(10, 0.2), (10, 0.25), (10, 0.35), (7, 0.5), (3, 0.01), (5, 1.0)])
def test_kept_count(n, f):
    loss = torch.rand(n + 4)
    valid = torch.ones(n + 4, dtype=torch.bool)
    valid[:4] = False  # ignored rows are never counted nor ranked
    loss[:4] = 100.0
    kept = keep_mask(loss, valid, f)
    assert kept.sum().item() == max(round(f * n), 1)
    assert not kept[:4].any()
    dropped = loss[valid & ~kept]
    assert dropped.numel() == 0 or loss[kept].min() >= dropped.max()


def test_only_kept_rows_get_gradient(backend, device):
    C = 6
    x = torch.randn(20, C, device=device, requires_grad=True)
    y = torch.randint(0, C, (20,), device=device)
    y[:5] = -100
    loss = H.cross_entropy(x, y, trim=0.4, k=0.5, backend=backend)
    loss.backward()
    per_row = H.cross_entropy(x.detach(), y, reduction="none")
    kept_rows = x.grad.abs().sum(1) > 0
    assert kept_rows.sum().item() == round(0.4 * 15)
    assert not kept_rows[:5].any()
    assert per_row[kept_rows].min() >= per_row[5:][~kept_rows[5:]].max()
    # the value is the mean over the kept rows
    torch.testing.assert_close(loss, per_row[kept_rows].mean())
    # reduction="none" zeroes the trimmed rows
    none = H.cross_entropy(x.detach(), y, trim=0.4, reduction="none", backend=backend)
    torch.testing.assert_close(none, torch.where(kept_rows, per_row, 0))


def test_module_reads_schedule(backend, device):
    sched = MiniBatchTrimming(num_epochs=3, start=1.0, end=0.5)
    loss_fn = H.HardCrossEntropyLoss(trim=sched, backend=backend)
    x = torch.randn(8, 4, device=device)
    y = torch.randint(0, 4, (8,), device=device)
    full = loss_fn(x, y)
    sched.step()
    sched.step()
    per_row = H.cross_entropy(x, y, reduction="none")
    torch.testing.assert_close(full, per_row.mean())
    torch.testing.assert_close(loss_fn(x, y), per_row.topk(4).values.mean())
