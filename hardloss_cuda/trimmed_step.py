"""A training step that trims the batch before the network's backward, not only inside the
loss (Fassold's runtime claim), locally or over the ranks of a data-parallel group.

    step = hl.TrimmedStep(model, loss_fn, trim=0.2)      # or trim=hl.MiniBatchTrimming(...)
    for inputs, target in loader:
        loss = step(inputs, target)                       # backward done; the kept samples' mean
        opt.step(); opt.zero_grad()

The kept samples are ``trimming.keep_mask``'s, the rule of ``trim`` in the loss: the
``r = max(round(f n), 1)`` samples with the highest loss, ties in batch order. Two ways to
get there (``mode``):

- ``"subset"``: score the batch with a no-grad forward, then forward and backward the kept
  samples only. Costs a forward of n plus a forward and backward of r.
- ``"full"``: one forward and backward of the whole batch, the dropped samples weighted 0
  (what ``trim`` in the loss does; no saving, no second forward).
- ``"auto"`` (default): ``"subset"`` when ``f < break_even``, else ``"full"``. The default
  ``BREAK_EVEN`` is measured by ``benchmarks/trimmed_step.py`` (docs/TRIMMED_STEP.md).

``scope="global"`` (a ``DistributedDataParallel`` model) ranks the per-sample losses of every
rank together: one all-gather of the batch sizes, one of the losses (O(n) values), and the
hardest fraction of the global batch trains, each rank on its own kept samples, scaled so that
DDP's average of the gradients is the gradient of the global kept set's mean.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from .options import trim_fraction
from .trimming import keep_mask
from .validation import check_fraction

__all__ = ["TrimmedStep", "ModelLoss", "BREAK_EVEN", "MODES", "SCOPES", "SCORE_MODES"]

# Below this kept fraction "auto" scores first and trains the kept subset. Measured on the CPU
# (benchmarks/trimmed_step.py, docs/TRIMMED_STEP.md): a no-grad forward costs about a third of
# a forward + backward, so the subset path wins while f < ~2/3.
BREAK_EVEN = 0.6
MODES = ("auto", "subset", "full")
SCOPES = ("local", "global")
SCORE_MODES = ("eval", "train")


class ModelLoss:
    """Marks a per-sample loss that runs the model itself: ``TrimmedStep`` calls it as
    ``loss(model, inputs, target)`` (instead of ``loss_fn(model(inputs), target)``), e.g.
    ``CausalLMLoss``, which can compute the losses without the logits."""

    def __call__(self, model: nn.Module, inputs, target) -> Tensor:
        raise NotImplementedError


def _tensors(x):
    """The tensors of a batch (a tensor, a tuple or list, or a dict), in order."""
    if isinstance(x, Tensor):
        return [x] if x.dim() > 0 else []
    if isinstance(x, Mapping):
        return [t for v in x.values() for t in _tensors(v)]
    if isinstance(x, (tuple, list)):
        return [t for v in x for t in _tensors(v)]
    return []


def _take(x, idx: Tensor):
    """The batch's samples ``idx`` (dim 0 of every tensor); anything else passes through."""
    if isinstance(x, Tensor):
        return x[idx.to(x.device)] if x.dim() > 0 else x
    if isinstance(x, Mapping):
        out = {k: _take(v, idx) for k, v in x.items()}
        return out if type(x) is dict else type(x)(out)  # a BatchEncoding, an OrderedDict
    if isinstance(x, tuple) and hasattr(x, "_fields"):  # a namedtuple
        return type(x)(*(_take(v, idx) for v in x))
    if isinstance(x, (tuple, list)):
        return type(x)(_take(v, idx) for v in x)
    return x


def _batch_size(inputs, target) -> int:
    sizes = {(name, i): t.shape[0] for name, x in (("inputs", inputs), ("target", target))
             for i, t in enumerate(_tensors(x))}
    if not any(name == "inputs" for name, _ in sizes):
        raise ValueError(f"inputs must be a tensor, a tuple or list, or a dict holding at least one tensor with the "
                         f"batch on dim 0, got {type(inputs).__name__}")
    n = next(iter(sizes.values()))
    if any(s != n for s in sizes.values()):
        raise ValueError(f"every tensor of inputs and target must have the batch on dim 0 with one size; got dim-0 "
                         f"sizes {sorted(set(sizes.values()))}")
    return n


def _call(model, inputs):
    """``model(**inputs)`` for a dict, ``model(*inputs)`` for a tuple or list, else ``model(inputs)``."""
    if isinstance(inputs, Mapping):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


class _ScoringMode:
    """``model.eval()`` for the scoring pass, then every module's own ``training`` flag back."""

    def __init__(self, model: nn.Module, eval_mode: bool):
        self.model, self.eval_mode, self.flags = model, eval_mode, None

    def __enter__(self):
        if self.eval_mode:
            self.flags = [(m, m.training) for m in self.model.modules()]
            self.model.eval()

    def __exit__(self, *exc):
        for m, flag in self.flags or ():
            m.training = flag


class TrimmedStep:
    """One training step on the hardest fraction of a batch, its backward included.

    ``step(inputs, target)`` runs the backward (gradients accumulate into ``.grad`` as usual;
    call ``opt.step()`` and ``opt.zero_grad()`` yourself) and returns the mean loss of the kept
    samples, detached (in ``scope="global"`` the global kept set's, the same on every rank).

    Arguments:
        model: the network; a ``DistributedDataParallel`` model for ``scope="global"``.
        loss_fn: ``loss_fn(output, target)`` -> per-sample losses of shape (n,), e.g.
            ``F.cross_entropy(..., reduction="none")`` or ``hl.cross_entropy(..., reduction="none",
            k=0.5)``; or a ``ModelLoss`` (``CausalLMLoss``), called as ``loss_fn(model, inputs, target)``.
        trim: the kept fraction in (0, 1], or an object with a ``fraction`` attribute
            (``MiniBatchTrimming``), read on every call.
        mode: "auto", "subset" (score with a no-grad forward, then train the kept samples) or
            "full" (one forward and backward of the whole batch, dropped samples weighted 0).
        break_even: "auto" takes "subset" when the fraction is below it.
        score_mode: "eval" (default): the scoring pass runs in eval mode (no dropout, batch
            norm's running statistics, which it leaves untouched), every module's mode restored
            after it; "train": in the model's own mode (dropout draws other masks than the
            training pass; batch norm updates its running statistics once more).
        scope: "local" (each rank's batch trimmed by itself) or "global" (the hardest fraction
            of all ranks' batches together).
        group: the process group of ``scope="global"`` (default: the world).

    ``inputs`` and ``target`` are a tensor, a tuple or list, or a dict of tensors with the
    batch on dim 0; other values pass through. A dict is passed as ``model(**inputs)``, a
    tuple or list as ``model(*inputs)``.
    """

    def __init__(self, model: nn.Module, loss_fn, trim, *, mode: str = "auto", break_even: float = BREAK_EVEN,
                 score_mode: str = "eval", scope: str = "local", group=None):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not callable(loss_fn):
            raise TypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
        trim_fraction(trim)  # checked now; a schedule is read again on every call
        for name, value, allowed in (("mode", mode, MODES), ("score_mode", score_mode, SCORE_MODES),
                                     ("scope", scope, SCOPES)):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}, got {value!r}")
        self.break_even = check_fraction(break_even, "break_even")
        if scope == "global" and not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            raise ValueError("scope='global' needs an initialised torch.distributed process group")
        self.model, self.loss_fn, self.trim = model, loss_fn, trim
        self.mode, self.score_mode, self.scope, self.group = mode, score_mode, scope, group
        self._warned = False

    def path(self, fraction: float | None = None) -> str:
        """The path a step at this fraction (default: the current one) takes, "subset" or
        "full". It depends on the fraction alone, so every rank of a group takes the same."""
        if self.mode != "auto":
            return self.mode
        f = trim_fraction(self.trim) if fraction is None else fraction
        return "subset" if f < self.break_even else "full"

    def __call__(self, inputs, target) -> Tensor:
        f = trim_fraction(self.trim)
        n = _batch_size(inputs, target)
        if n == 0 and self.scope == "local":  # (in "global" a rank's batch may be empty, not all)
            raise ValueError("inputs is an empty batch (0 samples): there is nothing to keep")
        if self.path(f) == "subset":
            return self._subset_step(inputs, target, n, f)
        return self._full_step(inputs, target, n, f)

    # -- the two paths ---------------------------------------------------------------------

    def _full_step(self, inputs, target, n, f):
        losses = self._losses(self.model, inputs, target, n)
        kept, num, den = self._kept(losses.detach(), n, f)
        total = torch.where(kept, losses, 0).sum()
        (total * num / den).backward()
        return self._mean(total.detach(), kept)

    def _subset_step(self, inputs, target, n, f):
        self._warn_once()
        inner = getattr(self.model, "module", self.model) if self._is_ddp() else self.model
        with torch.no_grad(), _ScoringMode(inner, self.score_mode == "eval"):
            scores = self._losses(inner, inputs, target, n)  # no DDP forward: no collective, no hooks
        kept, num, den = self._kept(scores, n, f)
        idx = kept.nonzero().squeeze(1)
        if idx.numel() == 0:
            # This rank keeps none (scope "global"): one sample weighted 0 still gives every
            # parameter a (zero) gradient, so that the rank joins DDP's all-reduce.
            idx, num = torch.zeros(min(n, 1), dtype=torch.long, device=kept.device), 0
        losses = self._losses(self.model, _take(inputs, idx), _take(target, idx), idx.numel())
        total = losses.sum()
        (total * num / den).backward()
        return self._mean(total.detach() * (num != 0), kept)

    # -- shared pieces ---------------------------------------------------------------------

    def _is_ddp(self) -> bool:
        return isinstance(self.model, nn.parallel.DistributedDataParallel)

    def _losses(self, model, inputs, target, n) -> Tensor:
        if isinstance(self.loss_fn, ModelLoss):
            losses = self.loss_fn(model, inputs, target)
        else:
            losses = self.loss_fn(_call(model, inputs), target)
        if not isinstance(losses, Tensor) or tuple(losses.shape) != (n,):
            got = tuple(losses.shape) if isinstance(losses, Tensor) else type(losses).__name__
            raise ValueError(f"loss_fn must return per-sample losses of shape ({n},) (e.g. reduction='none'), "
                             f"got {got}")
        return losses

    def _kept(self, losses: Tensor, n: int, f: float):
        """(this rank's kept mask, num, den): the backward's loss is the kept losses' sum * num / den."""
        losses = losses.detach()
        if self.scope == "local":
            kept = keep_mask(losses, torch.ones(n, dtype=torch.bool, device=losses.device), f)
            return kept, 1, int(kept.sum())
        dist = torch.distributed
        world = dist.get_world_size(self.group)
        rank = dist.get_rank(self.group)
        sizes = [torch.zeros(1, dtype=torch.long, device=losses.device) for _ in range(world)]
        dist.all_gather(sizes, torch.tensor([n], device=losses.device), group=self.group)
        sizes = [int(s) for s in sizes]
        if sum(sizes) == 0:
            raise ValueError("inputs is an empty batch on every rank (0 samples): there is nothing to keep")
        most = max(sizes)
        padded = [losses.new_zeros(most) for _ in range(world)]  # all_gather wants equal sizes
        dist.all_gather(padded, torch.cat([losses, losses.new_zeros(most - n)]), group=self.group)
        everyone = torch.cat([p[:s] for p, s in zip(padded, sizes)])
        kept_all = keep_mask(everyone, torch.ones(everyone.numel(), dtype=torch.bool, device=losses.device), f)
        start = sum(sizes[:rank])
        self._global_kept = int(kept_all.sum())
        # DDP averages the ranks' gradients: world / R makes it the gradient of the R kept samples' mean.
        return kept_all[start:start + n], world, self._global_kept

    def _mean(self, total: Tensor, kept: Tensor) -> Tensor:
        if self.scope == "local":
            return total / int(kept.sum())
        total = total.detach().clone().reshape(1)
        torch.distributed.all_reduce(total, group=self.group)
        return total[0] / self._global_kept

    def _warn_once(self):
        if self._warned:
            return
        self._warned = True
        bn = [type(m).__name__ for m in self.model.modules()
              if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training]
        if bn:
            warnings.warn(f"TrimmedStep (subset path): the model's {bn[0]} in training mode takes its batch "
                          "statistics from the kept samples only, not the whole batch (Fassold's caveat); "
                          "mode='full' keeps the whole batch's", stacklevel=4)
        drop = [type(m).__name__ for m in self.model.modules()
                if isinstance(m, nn.modules.dropout._DropoutNd) and m.training and m.p > 0]
        if drop:
            how = "without dropout (score_mode='eval')" if self.score_mode == "eval" else "with other dropout masks"
            warnings.warn(f"TrimmedStep (subset path): the model has {drop[0]} in training mode; the scoring pass "
                          f"ranks the samples {how}, the training pass draws its own masks", stacklevel=4)
