"""Hugging Face Transformers: a ``*ForCausalLM`` that trains with ``linear_cross_entropy``, never
materialising its (B, T, V) logits.

    from hardloss_cuda.integrations import transformers as hl_hf
    hl_hf.apply(model, k=0.5, trim=hl.MiniBatchTrimming(num_epochs=3))
    out = model(input_ids=ids, labels=ids)    # out.loss as transformers' own; out.logits is None
    hl_hf.revert(model)

``apply`` gives the one model instance a ``forward`` of its own. When the loss is wanted without
logits (labels given and the model in training mode, or ``skip_logits=True``), that forward runs
the model's own forward without labels while its output layer only records the hidden states it
is given and returns an empty (B, T, 0) tensor: whatever the model does to the logits afterwards
(Gemma's soft-capping, Cohere's scaling) costs nothing on it. The loss is then
``linear_cross_entropy`` on the recorded hidden states and the layer's weight, with the model's
soft-cap and logit scale (``ARCHITECTURES``), labels shifted as transformers' ``ForCausalLMLoss``
does, and its normaliser: the mean over counted tokens, or the sum over ``num_items_in_batch``
(the Trainer's, under gradient accumulation; with ``trim`` the kept tokens' sum, each
micro-batch trimmed by itself). Otherwise (no labels; eval mode, where the Trainer
wants logits) the model runs as it did. ``hardloss_cuda.causal_lm_losses`` asks the patched
forward (``hardloss_per_sequence=True``) for the (B,) per-sequence means instead, in either mode. Nothing but the forward is touched: the parameters, the
state dict and ``save_pretrained`` are as before.
"""

from __future__ import annotations

import functools
import inspect
import types

import torch
from torch import nn
from torch.nn import functional as F
from transformers import PreTrainedModel

from ..causal_lm import sequence_means
from ..linear import linear_cross_entropy

__all__ = ["apply", "revert", "ARCHITECTURES", "OPTIONS"]


def _plain(model):
    return None, None  # (logit scale, soft-cap)


def _final_softcap(model):  # Gemma 2, 3: logits = c tanh(logits / c)
    return None, model.config.final_logit_softcapping


def _times_logit_scale(model):  # Cohere: logits * model.logit_scale
    return model.logit_scale, None


def _over_logits_scaling(model):  # Granite: logits / config.logits_scaling
    return 1 / model.config.logits_scaling, None


# config.model_type -> what the model's forward does to the logits: (scale, softcap) that
# linear_cross_entropy(h * scale, W, softcap=softcap) reproduces. Every entry is tested
# against the unpatched model (tests/test_hf_transformers.py).
ARCHITECTURES = {
    **dict.fromkeys(["llama", "mistral", "ministral", "qwen2", "qwen3", "phi", "phi3", "gemma", "olmo", "olmo2",
                     "olmo3", "starcoder2", "stablelm", "glm", "glm4", "smollm3", "nemotron", "gpt_neox", "helium",
                     "exaone4", "seed_oss", "ernie4_5", "arcee"], _plain),
    "gemma2": _final_softcap, "gemma3_text": _final_softcap,
    "cohere": _times_logit_scale, "cohere2": _times_logit_scale, "granite": _over_logits_scaling,
}

# linear_cross_entropy's keywords that apply to a model's loss, and those that cannot (why).
OPTIONS = ("weight", "ignore_index", "label_smoothing", "k", "mixture", "trim", "z_loss", "chunk_size", "backend")
_REFUSED = {
    "reduction": "the loss is transformers' own: the mean over counted tokens, or their sum / num_items_in_batch",
    "return_lse": "a model's output has no place for the logsumexp",
    "softcap": "the soft-cap is the model's own (config.final_logit_softcapping on Gemma 2 and 3)",
    "linear_bias": "the bias is the output layer's own",
}


def _causal_lm(model):
    """The transformers model inside a PEFT model (``get_base_model``), or the model itself."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) and not isinstance(model, PreTrainedModel) else model


def _check_architecture(model) -> None:
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if not (isinstance(model, PreTrainedModel) and type(model).__name__.endswith("ForCausalLM")
            and model_type in ARCHITECTURES):
        raise TypeError(f"model must be a transformers *ForCausalLM of a supported architecture "
                        f"({', '.join(sorted(ARCHITECTURES))}), got {type(model).__name__} "
                        f"(model_type {model_type!r})")


def _linear(head: nn.Module) -> nn.Linear:
    """The nn.Linear that computes the logits: the head, or the module that a PEFT
    ``modules_to_save`` wrapper runs (its active adapter's copy, or the original)."""
    try:
        from peft.utils.other import ModulesToSaveWrapper
    except ImportError:
        ModulesToSaveWrapper = ()
    if isinstance(head, ModulesToSaveWrapper):
        active = head.active_adapters
        head = head.original_module if head.disable_adapters or not active else head.modules_to_save[active[0]]
    if type(head) is not nn.Linear:  # a LoRA or quantised layer's logits are not h @ W.T + b
        raise TypeError(f"the model's output layer must be a torch.nn.Linear (or PEFT's modules_to_save wrapper of "
                        f"one), got {type(head).__name__}")
    return head


def apply(model, **options):
    """Patch ``model`` (a supported ``*ForCausalLM``, or a PEFT model around one) in place and
    return it: its training loss becomes ``linear_cross_entropy(..., **options)``. ``options``
    are ``OPTIONS`` (``k``, ``trim`` as a fraction or a ``MiniBatchTrimming``, read on every
    call, ``label_smoothing``, ``z_loss``, ...). Applied again, the new options replace the old."""
    lm = _causal_lm(model)
    _check_architecture(lm)
    for name in options:
        if name in _REFUSED:
            raise ValueError(f"{name} cannot be set on a model's loss: {_REFUSED[name]}")
        if name not in OPTIONS:
            raise TypeError(f"apply() got an unexpected keyword argument {name!r}; options are {', '.join(OPTIONS)}")
    W = _linear(lm.get_output_embeddings()).weight
    # The options checked once now, by linear_cross_entropy itself, on one ignored row.
    ignore = torch.full((1,), options.get("ignore_index", -100), device=W.device)
    with torch.no_grad():
        linear_cross_entropy(W.new_zeros(1, W.shape[1]), W, ignore, **options)
    revert(lm)
    inner = lm.__dict__.get("forward")  # an instance forward of its own (accelerate's hooks): kept
    if inner is not None:
        lm._hardloss_inner_forward = inner
    lm._hardloss_options = dict(options)
    lm.forward = types.MethodType(_patched_forward(type(lm).forward), lm)
    return model


def revert(model):
    """Undo ``apply`` (nothing to undo: nothing happens) and return ``model``."""
    lm = _causal_lm(model)
    if getattr(lm.__dict__.get("forward"), "_hardloss_patched", False):
        del lm.forward
        if "_hardloss_inner_forward" in lm.__dict__:
            lm.forward = lm.__dict__.pop("_hardloss_inner_forward")
        del lm._hardloss_options
    return model


def _patched_forward(class_forward):
    """The instance forward: the class's signature (the Trainer inspects it), bound to the model
    (a deep copy of the model gets its own)."""
    names = list(inspect.signature(class_forward).parameters)[1:]  # after self

    @functools.wraps(class_forward)
    def forward(self, *args, **kwargs):
        inner = self.__dict__.get("_hardloss_inner_forward") or functools.partial(class_forward, self)
        kwargs = {**dict(zip(names, args)), **kwargs}  # positional arguments by name: labels among them
        skip_logits = kwargs.pop("skip_logits", None)
        # hardloss_cuda.causal_lm_losses: the loss per sequence (B,), without logits
        per_sequence = kwargs.pop("hardloss_per_sequence", False)
        labels = kwargs.get("labels")
        if per_sequence:
            skip_logits = True
        if skip_logits is None:
            skip_logits = self.training and labels is not None
        if not skip_logits:
            return inner(**kwargs)
        if labels is None:
            raise ValueError("skip_logits=True needs labels: without them there is no loss to compute")
        return _loss_without_logits(self, inner, kwargs, per_sequence)

    forward._hardloss_patched = True
    return forward


def _loss_without_logits(model, inner, kwargs, per_sequence=False):
    labels = kwargs.pop("labels")
    shift_labels = kwargs.pop("shift_labels", None)
    num_items = kwargs.pop("num_items_in_batch", None)
    options = dict(model._hardloss_options)
    if per_sequence:
        for name in ("trim", "weight"):
            if options.get(name) is not None:
                raise ValueError(f"per-sequence losses (hardloss_cuda.causal_lm_losses) of a model patched with "
                                 f"{name}={options[name]!r}: apply() it without {name} (a TrimmedStep trims the "
                                 "sequences; a sequence's loss is the plain mean of its tokens')")
    ignore_index = kwargs.pop("ignore_index", options.pop("ignore_index", -100))
    return_dict = kwargs.pop("return_dict", None)
    if return_dict is None:
        return_dict = getattr(model.config, "return_dict", True)

    head = model.get_output_embeddings()
    seen = []

    def record(h):
        seen.append(h)
        return h.new_empty((*h.shape[:-1], 0))

    saved = head.__dict__.get("forward")
    head.forward = record
    try:
        out = inner(**kwargs, return_dict=True)
    finally:
        del head.forward
        if saved is not None:
            head.forward = saved
    if len(seen) != 1:
        raise RuntimeError(f"{type(model).__name__} called its output layer {len(seen)} times in one forward; "
                           "hardloss_cuda.integrations.transformers expects once")

    if shift_labels is None:  # as ForCausalLMLoss: tokens < n predict n
        shift_labels = F.pad(labels, (0, 1), value=ignore_index)[..., 1:]
    h = seen[0]
    scale, softcap = ARCHITECTURES[model.config.model_type](model)
    if scale is not None:  # (s h) W^T = s (h W^T)
        h = h * scale
    linear = _linear(head)
    if per_sequence:  # the mean token loss of each sequence, (B,)
        tokens = linear_cross_entropy(h, linear.weight, shift_labels.to(h.device), linear_bias=linear.bias,
                                      ignore_index=ignore_index, reduction="none", softcap=softcap, **options)
        loss = sequence_means(tokens.float(), shift_labels.to(h.device), ignore_index)
        num_items = None
    else:
        loss = linear_cross_entropy(h, linear.weight, shift_labels.to(h.device), linear_bias=linear.bias,
                                    ignore_index=ignore_index, reduction="mean" if num_items is None else "sum",
                                    softcap=softcap, **options).float()
    if num_items is not None:
        loss = loss / (num_items.to(loss.device) if torch.is_tensor(num_items) else num_items)

    fields = {name: value for name, value in out.items() if name != "logits"}
    out = type(out)(**{**fields, "loss": loss})
    return out if return_dict else out.to_tuple()
