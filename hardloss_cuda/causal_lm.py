"""Per-sequence losses of a causal language model (a Hugging Face ``*ForCausalLM``), so that a
``TrimmedStep`` trains it on its hardest sequences.

    step = hl.TrimmedStep(model, hl.CausalLMLoss(), trim=0.5)
    loss = step({"input_ids": ids, "attention_mask": mask}, labels)

A sequence's loss is the mean of its counted tokens' losses (labels shifted as transformers'
``ForCausalLMLoss`` does, ``ignore_index`` -100), 0 for a sequence without counted tokens. A
model patched by ``hardloss_cuda.integrations.transformers.apply`` computes them with
``linear_cross_entropy(..., reduction="none")`` on its hidden states (no (B, T, V) logits; its
``k``, ``label_smoothing``, ``z_loss``... apply); any other model from its own logits.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor
from torch.nn import functional as F

from .trimmed_step import ModelLoss

__all__ = ["causal_lm_losses", "CausalLMLoss", "sequence_means"]


def sequence_means(token_losses: Tensor, shift_labels: Tensor, ignore_index: int) -> Tensor:
    """(B, T) token losses (0 where ignored) -> (B,) their mean over each row's counted tokens."""
    counted = (shift_labels != ignore_index).sum(-1)
    return token_losses.sum(-1) / counted.clamp_min(1).to(token_losses.dtype)


def causal_lm_losses(model, labels: Tensor, *, ignore_index: int | None = None, **inputs) -> Tensor:
    """The (B,) per-sequence losses (float32) of ``model(**inputs)`` against ``labels`` (B, T),
    differentiable. ``ignore_index``: default the patched model's option, else -100."""
    if not isinstance(labels, Tensor) or labels.dim() != 2:
        raise ValueError(f"labels must be a (B, T) tensor of token ids, got "
                         f"{tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__}")
    if getattr(model, "_hardloss_options", None) is not None:  # patched (through a PEFT wrapper too)
        extra = {} if ignore_index is None else {"ignore_index": ignore_index}
        return model(**inputs, labels=labels, hardloss_per_sequence=True, **extra).loss
    ignore_index = -100 if ignore_index is None else ignore_index
    out = model(**inputs)
    logits = out.logits if hasattr(out, "logits") else out[0]
    shift = F.pad(labels, (0, 1), value=ignore_index)[..., 1:].to(logits.device)
    tokens = F.cross_entropy(logits.float().flatten(0, 1), shift.flatten(), ignore_index=ignore_index,
                             reduction="none").view(shift.shape)
    return sequence_means(tokens, shift, ignore_index)


class CausalLMLoss(ModelLoss):
    """``causal_lm_losses`` as a ``TrimmedStep`` loss: ``inputs`` a dict of the model's
    arguments (``input_ids``, ``attention_mask``, ...) or the ``input_ids`` tensor, ``target``
    the labels."""

    def __init__(self, ignore_index: int | None = None):
        self.ignore_index = ignore_index

    def __call__(self, model, inputs, target) -> Tensor:
        inputs = dict(inputs) if isinstance(inputs, Mapping) else {"input_ids": inputs}
        return causal_lm_losses(model, target, ignore_index=self.ignore_index, **inputs)
