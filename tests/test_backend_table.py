"""backends.py's table: every backend's four ops exist and follow one schema, "auto" and the
device checks come from the table alone, and each entry's ``bwd_reads_stats`` tells the truth
(the vocab-parallel loss relies on it)."""

import pytest
import torch

from hardloss_cuda import backends
from hardloss_cuda._schema import LSE_COL, LSE_LO_COL

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


@pytest.mark.parametrize("name", backend_names())
def test_bwd_reads_stats_is_true(name):
    """The bwd op given other stats than the forward's: a backend that reads them gives another
    gradient; the reference, which recomputes from the logits, gives the same."""
    entry = backends.get(name)
    x = torch.randn(5, 7, dtype=torch.float64)
    y = torch.randint(0, 7, (5,))
    args = (None, None, -100, 0.0, 0.5)
    _loss, stats = entry.op("fwd")(x, y, *args[:2], *args[2:], True)
    g = torch.ones(5, dtype=torch.float64)
    grad = entry.op("bwd")(g, x, y, None, None, stats, *args[2:])
    other = stats.clone()
    other[:, LSE_COL] += 1.0  # every column but the lse's rounding part moved
    other[:, LSE_LO_COL + 1:] *= 2.0
    moved = entry.op("bwd")(g, x, y, None, None, other, *args[2:])
    assert (not torch.equal(grad, moved)) == entry.bwd_reads_stats
