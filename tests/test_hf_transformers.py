"""hardloss_cuda.integrations.transformers (issue #31): a patched *ForCausalLM against the same
model unpatched (transformers' own loss on materialised logits), on tiny models built from
configs (no downloads)."""

import copy
import subprocess
import sys

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

import hardloss_cuda as hl
from hardloss_cuda.integrations import transformers as hl_hf

V = 128
SIZE = dict(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=8, pad_token_id=0, bos_token_id=1, eos_token_id=2)
# The model quirks set so that they matter: a soft-cap and a logit scaling the logits reach.
QUIRKS = {"gemma2": dict(final_logit_softcapping=2.0), "gemma3_text": dict(final_logit_softcapping=2.0),
          "granite": dict(logits_scaling=4.0)}


def tiny(model_type="llama", dtype=torch.float32, **config):
    """A tiny model whose logits are O(10), so that a soft-cap or a scale changes the loss."""
    config = AutoConfig.for_model(model_type, **{**SIZE, **QUIRKS.get(model_type, {}), **config})
    model = AutoModelForCausalLM.from_config(config).to(dtype)
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(50)
    return model.train()


def batch(B=3, T=10):
    ids = torch.randint(3, V, (B, T))
    labels = ids.clone()
    labels[0, :4] = -100  # rows count different tokens: a mean of means would differ
    labels[1, -3:] = -100
    return ids, labels


def patched_and_unpatched(model, **options):
    ref = copy.deepcopy(model)
    return hl_hf.apply(model, **options), ref


def run(model, **kwargs):
    torch.manual_seed(0)  # the same dropout masks, where a model has any
    out = model(**kwargs)
    out.loss.backward()
    return out


def assert_grads_close(model, ref, rtol, max_rel):
    """Every parameter's gradient: |got - want| <= rtol |want| + max_rel max|want|."""
    for (name, p), (_, q) in zip(model.named_parameters(), ref.named_parameters()):
        if q.grad is None:  # frozen (PEFT)
            assert p.grad is None, name
            continue
        torch.testing.assert_close(p.grad, q.grad, rtol=rtol, atol=max_rel * q.grad.abs().max().item(),
                                   msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("arch", sorted(hl_hf.ARCHITECTURES))
def test_k1_loss_and_every_gradient_equal_the_unpatched_model(arch):
    model, ref = patched_and_unpatched(tiny(arch))
    ids, labels = batch()
    out, want = run(model, input_ids=ids, labels=labels), run(ref, input_ids=ids, labels=labels)
    assert out.logits is None and want.logits.shape == (3, 10, V)
    torch.testing.assert_close(out.loss, want.loss, rtol=1e-6, atol=1e-6)
    assert out.loss.dtype == want.loss.dtype == torch.float32
    assert_grads_close(model, ref, rtol=1e-5, max_rel=1e-5)  # fp32: summation order only


@pytest.mark.parametrize("arch", ["gemma2", "gemma3_text", "granite", "cohere", "cohere2"])
def test_the_model_quirk_matters(arch):
    """The soft-cap / scale is applied: the plain head on the same hidden states gives another loss."""
    model, ref = patched_and_unpatched(tiny(arch))
    ids, labels = batch()
    with torch.no_grad():
        h = ref.model(input_ids=ids).last_hidden_state
        plain = hl.linear_cross_entropy(h[:, :-1], ref.lm_head.weight, labels[:, 1:])
        assert abs(model(input_ids=ids, labels=labels).loss - plain) > 1e-2


@pytest.mark.parametrize("arch", ["llama", "gemma2"])
def test_bf16_is_as_close_to_fp32_as_the_unpatched_model(arch):
    """bf16: the loss rounded to bf16 once (half an ulp, 2^-9, plus the logits' roundings); each
    gradient no farther from the fp32 model's than the unpatched bf16 model's is, within 2x. (Here
    the plain heads gave the unpatched gradients bit for bit; Gemma 2's cap differs by 1-2% of the
    largest entry: the kernel caps in fp32 where transformers rounds after each of three bf16 ops.
    The unpatched bf16 gradients are 1-4% of the largest entry away from fp32.)"""
    model, ref = patched_and_unpatched(tiny(arch, torch.bfloat16))
    fp32 = copy.deepcopy(ref).float()
    ids, labels = batch()
    out, want = run(model, input_ids=ids, labels=labels), run(ref, input_ids=ids, labels=labels)
    run(fp32, input_ids=ids, labels=labels)
    assert out.logits is None
    torch.testing.assert_close(out.loss, want.loss, rtol=4e-3, atol=0)

    def worst(m):
        return max(((p.grad.float() - q.grad).abs().max() / q.grad.abs().max()).item()
                   for p, q in zip(m.parameters(), fp32.parameters()))

    assert worst(model) <= 2 * worst(ref), (worst(model), worst(ref))


def test_tied_embeddings_get_both_gradients():
    model, ref = patched_and_unpatched(tiny("llama", tie_word_embeddings=True))
    assert model.lm_head.weight is model.model.embed_tokens.weight
    ids, labels = batch()
    run(model, input_ids=ids, labels=labels), run(ref, input_ids=ids, labels=labels)
    assert_grads_close(model, ref, rtol=1e-5, max_rel=1e-5)


@pytest.mark.parametrize("kwargs", [
    dict(shift_labels="given"), dict(num_items_in_batch=torch.tensor(11)), dict(num_items_in_batch=7),
    dict(attention_mask="padded"),
])
def test_transformers_loss_keywords(kwargs):
    """shift_labels, num_items_in_batch (tensor or int) and an attention mask: as transformers' loss."""
    model, ref = patched_and_unpatched(tiny())
    ids, labels = batch()
    if kwargs.get("shift_labels") == "given":  # a label per position, not shifted again
        kwargs["shift_labels"] = torch.where(torch.rand(ids.shape) < 0.3, -100, ids.roll(-2, 1))
    if kwargs.get("attention_mask") == "padded":  # right padding: every query sees a key
        kwargs["attention_mask"] = torch.ones_like(ids).index_fill_(1, torch.tensor([7, 8, 9]), 0)
    out = run(model, input_ids=ids, labels=labels, **kwargs)
    want = run(ref, input_ids=ids, labels=labels, **kwargs)
    torch.testing.assert_close(out.loss, want.loss, rtol=1e-6, atol=1e-6)
    assert_grads_close(model, ref, rtol=1e-5, max_rel=1e-5)


def test_eval_no_labels_and_skip_logits():
    model, ref = patched_and_unpatched(tiny())
    ids, labels = batch()
    # training without labels: the logits, as before
    assert torch.equal(model(input_ids=ids).logits, ref(input_ids=ids).logits)
    model.eval()
    ref.eval()
    with torch.no_grad():
        out, want = model(input_ids=ids, labels=labels), ref(input_ids=ids, labels=labels)
        assert torch.equal(out.logits, want.logits) and torch.equal(out.loss, want.loss)  # the model's own path
        fused = model(input_ids=ids, labels=labels, skip_logits=True)
        assert fused.logits is None
        torch.testing.assert_close(fused.loss, want.loss, rtol=1e-6, atol=1e-6)
        loss, *rest = model(input_ids=ids, labels=labels, skip_logits=True, return_dict=False)
        assert loss is not None and torch.equal(loss, fused.loss) and all(t is not None for t in rest)
        with pytest.raises(ValueError, match="skip_logits=True needs labels"):
            model(input_ids=ids, skip_logits=True)
    model.train()
    assert model(input_ids=ids, labels=labels, skip_logits=False).logits is not None


def test_positional_arguments():
    model, ref = patched_and_unpatched(tiny())
    ids, labels = batch()
    out = model(ids, None, None, None, None, labels)  # input_ids, attention_mask, position_ids, cache, embeds
    assert out.logits is None
    torch.testing.assert_close(out.loss, ref(input_ids=ids, labels=labels).loss, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("options", [dict(k=0.5), dict(k=2.0, trim=0.5), dict(trim=0.3, label_smoothing=0.1),
                                     dict(z_loss=1e-2, k=0.7)])
def test_other_options_equal_linear_cross_entropy_on_the_models_hidden_states(options):
    """k != 1, trimming and the others: every gradient as linear_cross_entropy on the unpatched
    model's final hidden states (the body's gradients reach it through them)."""
    model, ref = patched_and_unpatched(tiny("gemma2"), **options)  # with its soft-cap
    ids, labels = batch()
    out = run(model, input_ids=ids, labels=labels)
    h = ref.model(input_ids=ids).last_hidden_state
    want = hl.linear_cross_entropy(h, ref.lm_head.weight, torch.nn.functional.pad(labels[:, 1:], (0, 1), value=-100),
                                   softcap=2.0, **options)
    want.backward()
    torch.testing.assert_close(out.loss, want, rtol=1e-6, atol=1e-6)
    assert_grads_close(model, ref, rtol=1e-5, max_rel=1e-5)


def test_trimming_schedule_is_read_on_every_call():
    trim = hl.MiniBatchTrimming(num_epochs=2, start=1.0, end=0.4)
    model = hl_hf.apply(tiny(), trim=trim)
    ids, labels = batch()
    full = model(input_ids=ids, labels=labels).loss.detach()
    trim.step()
    trimmed = model(input_ids=ids, labels=labels).loss.detach()
    assert trimmed > full  # the hardest 40% of the tokens


def test_revert_and_reapply():
    model = tiny()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    ids, labels = batch()
    hl_hf.apply(model, k=0.5)
    hl_hf.apply(model, k=1.0)  # the new options replace the old
    assert model._hardloss_options == {"k": 1.0}
    copied = copy.deepcopy(model)  # its own forward, bound to the copy
    assert copied.forward.__self__ is copied and copied(input_ids=ids, labels=labels).logits is None
    hl_hf.revert(model)
    assert "forward" not in vars(model) and not hasattr(model, "_hardloss_options")
    assert model(input_ids=ids, labels=labels).logits is not None
    hl_hf.revert(model)  # nothing to undo
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("name,value,match", [
    ("reduction", "sum", "reduction cannot be set"), ("return_lse", True, "return_lse cannot be set"),
    ("softcap", 30.0, "softcap cannot be set"), ("linear_bias", None, "linear_bias cannot be set"),
    ("k", 0.0, "k must be"), ("trim", 1.5, "trim must be"), ("label_smoothing", 2.0, "label_smoothing must be"),
    ("z_loss", -1.0, "z_loss must be"), ("chunk_size", 0, "chunk_size must be"), ("backend", "tpu", "backend must be"),
    ("weight", torch.ones(3), "weight must be"),
])
def test_bad_options_are_named(name, value, match):
    model = tiny()
    with pytest.raises(ValueError, match=match):
        hl_hf.apply(model, **{name: value})
    assert "forward" not in vars(model)


def test_unknown_option_and_unsupported_models():
    with pytest.raises(TypeError, match="'kk'.*options are weight, ignore_index"):
        hl_hf.apply(tiny(), kk=0.5)
    gpt2 = AutoModelForCausalLM.from_config(AutoConfig.for_model("gpt2", vocab_size=V, n_embd=32, n_layer=1, n_head=2,
                                                                  bos_token_id=1, eos_token_id=2))
    for model in (gpt2, torch.nn.Linear(2, 2)):
        with pytest.raises(TypeError, match=r"supported architecture \(arcee, cohere, .*, gemma2, .*, llama, .*\), got"):
            hl_hf.apply(model)


def test_importing_the_package_does_not_import_transformers():
    code = "import sys, hardloss_cuda; sys.exit('transformers' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_trainer_gradient_accumulation_equals_one_step_on_the_whole_batch(tmp_path):
    """Two micro-batches of 2 (the Trainer's num_items_in_batch normaliser) and one batch of 4:
    the same SGD step. The rows count different tokens, so a mean per micro-batch would not do."""
    from transformers import Trainer, TrainingArguments

    model = hl_hf.apply(tiny(), k=0.5)
    whole = copy.deepcopy(model)
    start = [p.detach().clone() for p in model.parameters()]
    ids, labels = batch(B=4)
    data = [{"input_ids": i, "labels": y} for i, y in zip(ids, labels)]
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=2, gradient_accumulation_steps=2,
                             max_steps=1, lr_scheduler_type="constant", max_grad_norm=0.0, use_cpu=True,
                             save_strategy="no", logging_strategy="no", disable_tqdm=True, report_to="none")
    sgd = torch.optim.SGD(model.parameters(), lr=1.0)
    Trainer(model=model, args=args, train_dataset=data, optimizers=(sgd, None)).train()

    run(whole, input_ids=ids, labels=labels)
    torch.optim.SGD(whole.parameters(), lr=1.0).step()
    # the steps, p - start: equal but for the order in which fp32 sums the two halves' gradients
    for (name, p), (_, q), p0 in zip(model.named_parameters(), whole.named_parameters(), start):
        step, want = p.detach() - p0, q.detach() - p0
        assert want.abs().max() > 0, name
        torch.testing.assert_close(step, want, rtol=1e-4, atol=1e-5 * want.abs().max().item(),
                                   msg=lambda m, name=name: f"{name}: {m}")


def test_peft_modules_to_save_head_is_unwrapped():
    """LoRA on the attention, the head trained as a modules_to_save copy: the copy is the head
    (its weight changed apart from the original's), or the original under disable_adapter()."""
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], modules_to_save=["lm_head"], task_type="CAUSAL_LM")
    model = get_peft_model(tiny(), lora)
    with torch.no_grad():
        model.base_model.model.lm_head.modules_to_save["default"].weight.mul_(2)
    model, ref = patched_and_unpatched(model)
    ids, labels = batch()
    out, want = run(model, input_ids=ids, labels=labels), run(ref, input_ids=ids, labels=labels)
    assert out.logits is None
    torch.testing.assert_close(out.loss, want.loss, rtol=1e-6, atol=1e-6)
    assert_grads_close(model, ref, rtol=1e-5, max_rel=1e-5)
    with model.disable_adapter(), ref.disable_adapter(), torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids, labels=labels).loss, ref(input_ids=ids, labels=labels).loss,
                                   rtol=1e-6, atol=1e-6)
    hl_hf.revert(model)
    assert model(input_ids=ids, labels=labels).logits is not None


def test_peft_lora_on_the_head_is_refused():
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny(), LoraConfig(r=4, target_modules=["lm_head"], task_type="CAUSAL_LM"))
    with pytest.raises(TypeError, match="output layer must be a torch.nn.Linear"):
        hl_hf.apply(model)
