"""Mini-batch trimming (Fassold): only the hardest fraction of a batch trains.

The loss of a mini-batch is the mean over the fraction ``f`` of its non-ignored samples
with the highest loss; the others get no gradient. ``f`` falls linearly over the epochs
(docs/CONTRACT.md section 1). Everything here is sync-free on the GPU: the kept count is a tensor
and the kept set a mask built from a sort, never from ``.item()``.
"""

from __future__ import annotations

from numbers import Integral

import torch
from torch import Tensor

from .validation import check_fraction

__all__ = ["fraction", "keep_mask", "MiniBatchTrimming"]


def fraction(epoch: int, num_epochs: int, start: float = 1.0, end: float = 0.2) -> float:
    """``f(e) = start + (end - start) * e / (E - 1)`` for e = 0 .. E-1; ``start`` when E == 1."""
    if isinstance(num_epochs, bool) or not isinstance(num_epochs, Integral) or num_epochs < 1:
        raise ValueError(f"num_epochs must be an int >= 1, got {num_epochs!r}")
    if not 0 <= epoch < num_epochs:
        raise ValueError(f"epoch must be in [0, {num_epochs}), got {epoch}")
    check_fraction(start, "start")
    check_fraction(end, "end")
    if num_epochs == 1:
        return float(start)
    return start + (end - start) * epoch / (num_epochs - 1)


def keep_mask(loss: Tensor, valid: Tensor, fraction: float | Tensor) -> Tensor:
    """Mask of the ``r = max(round(f n), 1)`` valid rows with the largest loss (n valid rows;
    ties kept in row order). Invalid (ignored) rows are never ranked nor kept. ``fraction`` is a
    number or a 0-dim float32 tensor (the same float32 product either way)."""
    n = valid.sum()
    r = torch.clamp(torch.round(n * fraction), min=1)  # round half to even, like Python's round
    ranked = torch.where(valid, loss.detach(), float("-inf"))
    order = torch.argsort(ranked, descending=True, stable=True)
    rank = torch.empty_like(order).scatter_(0, order, torch.arange(order.numel(), device=order.device))
    return valid & (rank < r)


class MiniBatchTrimming:
    """The linear schedule, stepped once per epoch like an LR scheduler.

    >>> trim = MiniBatchTrimming(num_epochs=10)
    >>> loss_fn = HardCrossEntropyLoss(trim=trim)   # reads the fraction on every call
    >>> for epoch in range(10):
    ...     train_one_epoch(loss_fn)
    ...     trim.step()

    The losses read ``fraction_tensor``, a 0-dim float32 CPU tensor that ``step()`` (and any
    change of ``epoch``, ``start``, ``end`` or ``num_epochs``) updates in place: a step compiled
    with ``torch.compile(fullgraph=True)`` takes it as an input and runs every epoch without a
    recompile. (Read as a Python number, the fraction made Dynamo guard on the epoch: a
    recompile per epoch, then ``FailOnRecompileLimitHit`` at the recompile limit.)
    """

    _STATE = ("num_epochs", "start", "end", "epoch")

    def __init__(self, num_epochs: int, start: float = 1.0, end: float = 0.2):
        fraction(0, num_epochs, start, end)  # validates the arguments
        self.fraction_tensor = torch.tensor(float(start), dtype=torch.float32)
        self.num_epochs, self.start, self.end = num_epochs, float(start), float(end)
        self.epoch = 0

    def __setattr__(self, name, value):
        old = self.__dict__.get(name)
        super().__setattr__(name, value)
        if name in self._STATE and all(n in self.__dict__ for n in self._STATE):
            try:
                new = self.fraction
            except ValueError:  # a bad epoch (or schedule) is refused and leaves the state as it was
                super().__setattr__(name, old)
                raise
            with torch.no_grad():
                self.fraction_tensor.fill_(new)

    @property
    def fraction(self) -> float:
        return fraction(min(self.epoch, self.num_epochs - 1), self.num_epochs, self.start, self.end)

    def step(self) -> None:
        self.epoch += 1

    def state_dict(self) -> dict:
        return {n: getattr(self, n) for n in self._STATE}

    def load_state_dict(self, state: dict) -> None:
        for n in self._STATE:
            if n in state:
                setattr(self, n, state[n])

    def __repr__(self) -> str:
        return f"MiniBatchTrimming(epoch={self.epoch}/{self.num_epochs}, fraction={self.fraction:.3f})"
