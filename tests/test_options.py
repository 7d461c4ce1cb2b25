"""The shared keywords are checked once, by ``options.loss_options``, for every front end."""

import dataclasses

import pytest
import torch

import hardloss_cuda as hl
from hardloss_cuda import options


def test_loss_options_is_frozen_and_resolved():
    z, y = torch.randn(3, 5), torch.randint(0, 5, (3,))
    opts = options.loss_options(z, y, k=torch.tensor(0.5), trim=hl.MiniBatchTrimming(num_epochs=2, start=0.5),
                                softcap=30, ignore_index=torch.tensor(-1))
    assert (opts.k, opts.trim, opts.softcap, opts.ignore_index) == (0.5, 0.5, 30.0, -1)
    assert opts.backend in hl.available_backends()  # "auto" resolved
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.k = 2.0


@pytest.mark.parametrize("front_end", ["cross_entropy", "linear_cross_entropy", "HardCrossEntropyLoss",
                                       "HardLinearCrossEntropyLoss"])
def test_every_front_end_builds_its_options_once(front_end, monkeypatch):
    calls = []
    real = options.loss_options

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    for module in ("functional", "linear"):
        monkeypatch.setattr(f"hardloss_cuda.{module}.loss_options", spy)
    h, W, y = torch.randn(4, 3), torch.randn(6, 3), torch.randint(0, 6, (4,))
    call = {
        "cross_entropy": lambda: hl.cross_entropy(h @ W.T, y, k=0.5),
        "linear_cross_entropy": lambda: hl.linear_cross_entropy(h, W, y, k=0.5),
        "HardCrossEntropyLoss": lambda: hl.HardCrossEntropyLoss(k=0.5)(h @ W.T, y),
        "HardLinearCrossEntropyLoss": lambda: hl.HardLinearCrossEntropyLoss(k=0.5)(h, W, y),
    }[front_end]
    call()
    assert len(calls) == 1 and calls[0]["k"] == 0.5


def test_modules_check_when_built():
    with pytest.raises(ValueError, match="k must be"):
        hl.HardCrossEntropyLoss(k=0)
    with pytest.raises(ValueError, match="softcap must be None or a number"):
        hl.HardLinearCrossEntropyLoss(softcap=-1)
    with pytest.raises(ValueError, match="z_loss must be"):
        hl.HardCrossEntropyLoss(z_loss=float("inf"))


def test_argument_docs_are_shared():
    for name in ("k", "softcap", "z_loss", "backend"):
        assert options.ARG_DOCS[name] in hl.cross_entropy.__doc__.replace("\n        ", "\n")
