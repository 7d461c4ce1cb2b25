"""backends.py's table: every backend's ops exist and follow one schema, "auto" and the device
checks come from the table alone, and every backend's bwd computes the gradient from the stats it
is given, with the same meaning (the vocab-parallel loss hands it stats its fwd did not write)."""

import pytest
import torch

from hardloss_cuda import backends
from hardloss_cuda._schema import LSE_COL, SCALE_COL, STATS_SOFT_DEFERRED, TAG_COL

from ._backends import backend_names


def test_every_loaded_backend_has_its_four_ops():
    assert backends.BACKENDS == ("cuda", "triton", "cpu", "cuda_emu", "reference")
    for entry in backends.LOADED:
        for kind in backends.OP_KINDS:
            assert entry.op(kind).default._schema.name.startswith("hardloss_cuda::")


def test_auto_and_device_checks():
    reasons = backends.unavailable_reasons()
    want_cpu = "cpu" if "cpu" not in reasons else "reference"
    assert backends.resolve("auto", torch.device("cpu")) == want_cpu
    assert backends.resolve("reference", torch.device("meta")) == "reference"
    for name in ("cpu", "cuda_emu"):
        if name not in reasons:
            with pytest.raises(RuntimeError, match=f"backend '{name}'.* runs on CPU tensors; input is on meta"):
                backends.resolve(name, torch.device("meta"))
    with pytest.raises(ValueError, match="backend must be one of"):
        backends.resolve("nope", torch.device("cpu"))


@pytest.mark.parametrize("soft", [False, True], ids=["onehot", "smoothing"])
@pytest.mark.parametrize("name", backend_names())
def test_bwd_reads_the_stats(name, soft):
    """The bwd op given other stats than the forward's: every backend's gradient moves, and to
    what the reference's bwd makes of the same stats (no backend recomputes them)."""
    entry, ref = backends.get(name), backends.get("reference")
    dev = "cuda" if name == "cuda" else "cpu"
    x = torch.randn(5, 7, dtype=torch.float64, device=dev)
    y = torch.randint(0, 7, (5,), device=dev)
    args = (-100, 0.1 if soft else 0.0, 0.5)
    _loss, stats = entry.op("fwd")(x, y, None, None, *args, True)
    g = torch.ones(5, dtype=torch.float64, device=dev)
    grad = entry.op("bwd")(g, x, y, None, None, stats, *args)
    other = stats.clone()  # the lse, the scale (f_y, t) and columns 3, 4 moved
    other[:, LSE_COL] += 1.0
    other[:, SCALE_COL] *= 2.0
    # a deferred soft row's columns 3, 4 (the max m and log s, the CPU's) hold its lse once more:
    # moved with column 0; the others' (one-hot m, log_c; soft c_pos, f_star) anyhow
    deferred = soft & (stats[:, TAG_COL] >= STATS_SOFT_DEFERRED)
    other[:, 3] += 1.0
    other[:, 4] = torch.where(deferred, other[:, 4], 2 * other[:, 4] - 0.5)
    moved = entry.op("bwd")(g, x, y, None, None, other, *args)
    assert not torch.equal(grad, moved)
    torch.testing.assert_close(moved, ref.op("bwd")(g, x, y, None, None, other, *args), rtol=1e-12, atol=1e-14)
