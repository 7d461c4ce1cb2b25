"""hl.TrimmedStep (issue #32) in one process: its gradients against the gradient of the kept
samples' mean, the kept set chosen by an independent rule (Python's sort: r = max(round(f n), 1)
highest losses, ties in batch order) and against ``trim`` in the loss; both paths, every batch
form, the schedule, the modes restored, the cost (rows through the network), bad arguments.
The causal-LM per-sequence losses against the unpatched model's materialised logits."""

import copy
import warnings

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import hardloss_cuda as hl

from ._scripts import load_script

D, C = 6, 5


def mlp(dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(D, 16), nn.Tanh(), nn.Linear(16, C)).to(dtype)


def data(n, dtype=torch.float64, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, D, generator=g, dtype=dtype)
    y = torch.randint(0, C, (n,), generator=g)
    if n >= 6:  # exact ties: the same sample three times
        x[4] = x[2] = x[5]
        y[4] = y[2] = y[5]
    return x, y


def ce(out, y):
    return F.cross_entropy(out, y, reduction="none")


def kept_truth(losses, f):
    """The kept indices by Python's own sort and round (half to even), independent of keep_mask."""
    n = len(losses)
    r = max(round(f * n), 1)
    return sorted(sorted(range(n), key=lambda i: (-float(losses[i]), i))[:r])


def grads(model):
    return [p.grad.clone() for p in model.parameters()]


def truth(model, x, y, f, k=1.0):
    """(gradients, mean) of the kept samples' mean loss, the kept set from a no-grad pass."""
    model = copy.deepcopy(model)
    with torch.no_grad():
        idx = kept_truth(ce(model(x), y), f)
    loss = hl.cross_entropy(model(x[idx]), y[idx], k=k, backend="reference")
    loss.backward()
    return grads(model), loss.detach()


def assert_grads(got, want, tol):
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=tol, atol=tol)


@pytest.mark.parametrize("mode", ["subset", "full", "auto"])
@pytest.mark.parametrize("f", [0.05, 0.2, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("n", [1, 3, 37])
def test_gradient_is_the_kept_samples_mean(mode, f, n):
    model = mlp()
    x, y = data(n)
    want, want_loss = truth(model, x, y, f)
    got_model = copy.deepcopy(model)
    loss = hl.TrimmedStep(got_model, ce, f, mode=mode)(x, y)
    assert not loss.requires_grad
    torch.testing.assert_close(loss, want_loss, rtol=1e-12, atol=1e-12)
    assert_grads(grads(got_model), want, 1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("mode", ["subset", "full"])
def test_same_as_trim_in_the_loss(dtype, mode):
    """k = 0.5, hl.cross_entropy per sample: the same gradient as trim inside the loss."""
    model = mlp(dtype)
    x, y = data(29, dtype)
    ref = copy.deepcopy(model)
    hl.cross_entropy(ref(x), y, k=0.5, trim=0.3).backward()
    step = hl.TrimmedStep(model, lambda o, t: hl.cross_entropy(o, t, k=0.5, reduction="none"), 0.3, mode=mode)
    step(x, y)
    tol = {torch.float32: 1e-6, torch.bfloat16: 2e-2, torch.float16: 2e-3}[dtype]
    assert_grads(grads(model), grads(ref), tol)


def test_batch_forms_tuple_dict_and_passthrough():
    class TwoInputs(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = mlp()

        def forward(self, a, b, scale=1.0, tag=None):
            assert tag == "keep me"
            return self.net(a + b) * scale

    x, y = data(23)
    b = torch.randn(23, D, dtype=torch.float64)
    model = TwoInputs()
    ref = copy.deepcopy(model)
    with torch.no_grad():
        idx = kept_truth(ce(ref(x, b, 2.0, "keep me"), y), 0.3)
    ce(ref(x[idx], b[idx], 2.0, "keep me"), y[idx]).mean().backward()
    for inputs in ((x, b, 2.0, "keep me"), [x, b, 2.0, "keep me"], {"a": x, "b": b, "scale": 2.0, "tag": "keep me"}):
        got = copy.deepcopy(model)
        hl.TrimmedStep(got, lambda o, t: ce(o, t["y"]), 0.3, mode="subset")(inputs, {"y": y, "note": "x"})
        assert_grads(grads(got), grads(ref), 1e-12)


def test_schedule_is_read_on_every_call_and_auto_switches_paths():
    trim = hl.MiniBatchTrimming(num_epochs=3, start=1.0, end=0.2)
    model = mlp()
    step = hl.TrimmedStep(model, ce, trim, break_even=0.5)
    x, y = data(40)
    paths = []
    for _ in range(3):
        paths.append(step.path())
        got = copy.deepcopy(model)
        step.model = got
        step(x, y)
        assert_grads(grads(got), truth(model, x, y, trim.fraction)[0], 1e-12)
        trim.step()
    assert paths == ["full", "full", "subset"]  # f = 1.0, 0.6, 0.2 against break_even 0.5
    assert hl.TrimmedStep(model, ce, 0.1, mode="full").path() == "full"
    assert hl.TrimmedStep(model, ce, 0.9, mode="subset").path() == "subset"
    assert hl.TrimmedStep(model, ce, 0.7, break_even=0.8).path() == "subset"


class Rows(nn.Module):
    """Counts the rows that reach it with and without autograd: the cost of a step."""

    def __init__(self):
        super().__init__()
        self.grad_rows = self.nograd_rows = 0

    def forward(self, x):
        if torch.is_grad_enabled():
            self.grad_rows += x.shape[0]
        else:
            self.nograd_rows += x.shape[0]
        return x


@pytest.mark.parametrize("mode, f, want", [("subset", 0.2, (40, 8)), ("full", 0.2, (0, 40)), ("auto", 0.2, (40, 8)),
                                           ("auto", 0.9, (0, 40))])
def test_the_subset_path_trains_only_the_kept_rows(mode, f, want):
    rows = Rows()
    model = nn.Sequential(rows, mlp())
    hl.TrimmedStep(model, ce, f, mode=mode)(*data(40))
    assert (rows.nograd_rows, rows.grad_rows) == want


def test_modes_restored_and_warnings():
    model = nn.Sequential(nn.Linear(D, 8), nn.BatchNorm1d(8), nn.Dropout(0.3), nn.Linear(8, C)).double().train()
    model[3].eval()  # one module's own mode, restored as it was
    seen = []
    model[1].register_forward_pre_hook(lambda m, a: seen.append(m.training))
    step = hl.TrimmedStep(model, ce, 0.3, mode="subset")
    with pytest.warns(UserWarning) as record:
        step(*data(20))
    text = " ".join(str(w.message) for w in record)
    assert "BatchNorm1d" in text and "kept samples only" in text and "Dropout" in text
    assert seen == [False, True]  # scored in eval mode, trained in training mode
    assert [m.training for m in model] == [True, True, True, False]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        step(*data(20))  # once per step object
    seen.clear()
    with pytest.warns(UserWarning) as record:
        hl.TrimmedStep(model, ce, 0.3, mode="subset", score_mode="train")(*data(20))
    assert "with other dropout masks" in str(record[-1].message)
    assert {w.filename for w in record} == {__file__}  # the caller's line
    assert seen == [True, True]


def test_bad_arguments():
    model = mlp()
    with pytest.raises(ValueError, match="trim must be a number in \\(0, 1\\], got 0"):
        hl.TrimmedStep(model, ce, 0)
    with pytest.raises(ValueError, match="mode must be one of 'auto', 'subset', 'full', got 'fast'"):
        hl.TrimmedStep(model, ce, 0.5, mode="fast")
    with pytest.raises(ValueError, match="scope must be one of 'local', 'global', got 'world'"):
        hl.TrimmedStep(model, ce, 0.5, scope="world")
    with pytest.raises(ValueError, match="score_mode must be one of"):
        hl.TrimmedStep(model, ce, 0.5, score_mode="no_grad")
    with pytest.raises(ValueError, match="break_even must be a number in \\(0, 1\\], got 2"):
        hl.TrimmedStep(model, ce, 0.5, break_even=2)
    with pytest.raises(ValueError, match="scope='global' needs an initialised torch.distributed"):
        hl.TrimmedStep(model, ce, 0.5, scope="global")
    with pytest.raises(TypeError, match="model must be a torch.nn.Module, got function"):
        hl.TrimmedStep(ce, ce, 0.5)
    x, y = data(9)
    with pytest.raises(ValueError, match=r"loss_fn must return per-sample losses of shape \(9,\).*got \(\)"):
        hl.TrimmedStep(model, F.cross_entropy, 0.5)(x, y)
    with pytest.raises(ValueError, match=r"one size; got dim-0 sizes \[8, 9\]"):
        hl.TrimmedStep(model, ce, 0.5)(x, y[:8])
    with pytest.raises(ValueError, match="inputs is an empty batch"):
        hl.TrimmedStep(model, ce, 0.5)(x[:0], y[:0])
    with pytest.raises(ValueError, match="inputs must be a tensor, a tuple or list, or a dict"):
        hl.TrimmedStep(model, ce, 0.5)("text", y)


# -- causal LMs ------------------------------------------------------------------------------

V = 97


def hf():
    """(transformers, the integration); the LM tests skip without transformers."""
    transformers = pytest.importorskip("transformers")
    from hardloss_cuda.integrations import transformers as hl_hf
    return transformers, hl_hf


def tiny_llama():
    transformers, _ = hf()
    config = transformers.LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, pad_token_id=0)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config)
    with torch.no_grad():
        model.lm_head.weight.mul_(30)  # O(10) logits: losses that differ between sequences
    return model.train()


def lm_batch(B=5, T=9):
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(3, V, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, -3:] = 0
    labels = ids.masked_fill(mask == 0, -100)
    labels[0, :4] = -100
    labels[3, 1:] = -100  # no counted token after the shift: loss 0
    return ids, mask, labels


def per_sequence_truth(model, ids, mask, labels):
    """Token by token from the unpatched model's logits, a loop over sequences."""
    logits = model(input_ids=ids, attention_mask=mask).logits.double()
    out = []
    for b in range(ids.shape[0]):
        tgt = labels[b, 1:]
        tok = F.cross_entropy(logits[b, :-1], tgt, ignore_index=-100, reduction="sum")
        out.append(tok / max(int((tgt != -100).sum()), 1))
    return torch.stack(out)


def test_causal_lm_losses_unpatched_and_patched_without_logits():
    model = tiny_llama()
    ids, mask, labels = lm_batch()
    want = per_sequence_truth(model, ids, mask, labels)
    got = hl.causal_lm_losses(model, labels, input_ids=ids, attention_mask=mask)
    assert got.shape == (5,) and got[3] == 0
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)

    patched = hf()[1].apply(copy.deepcopy(model))
    shapes = []
    patched.lm_head.register_forward_hook(lambda m, a, out: shapes.append(tuple(out.shape)))
    for mode in ("train", "eval"):
        getattr(patched, mode)()
        got = hl.causal_lm_losses(patched, labels, input_ids=ids, attention_mask=mask)
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)
    assert shapes == [(5, 9, 0), (5, 9, 0)]  # the head never made logits

    # the gradient of a weighted sum of the per-sequence losses, patched against unpatched
    w = torch.rand(5, generator=torch.Generator().manual_seed(0))
    patched.train()
    (hl.causal_lm_losses(patched, labels, input_ids=ids, attention_mask=mask) @ w).backward()
    (hl.causal_lm_losses(model, labels, input_ids=ids, attention_mask=mask) @ w).backward()
    for (name, p), q in zip(patched.named_parameters(), model.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-5 * q.grad.abs().max().item(), msg=name)


def test_trimmed_step_on_a_patched_lm_equals_the_unpatched_one():
    model = tiny_llama()
    ids, mask, labels = lm_batch(B=7)
    hl_hf = hf()[1]
    patched = hl_hf.apply(copy.deepcopy(model), k=1.0)
    ref = copy.deepcopy(model)
    losses = [hl.TrimmedStep(m, hl.CausalLMLoss(), 0.4, mode="subset")({"input_ids": ids, "attention_mask": mask},
                                                                       labels) for m in (patched, model)]
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        idx = kept_truth(per_sequence_truth(model, ids, mask, labels), 0.4)
    hl.causal_lm_losses(ref, labels[idx], input_ids=ids[idx], attention_mask=mask[idx]).mean().backward()
    for p, q, r in zip(patched.parameters(), model.parameters(), ref.parameters()):
        torch.testing.assert_close(q.grad, r.grad, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(p.grad, r.grad, rtol=1e-4, atol=1e-5 * r.grad.abs().max().item())
    hl_hf.apply(patched, trim=0.5)
    with pytest.raises(ValueError, match="patched with trim=0.5: apply\\(\\) it without trim"):
        hl.causal_lm_losses(patched, labels, input_ids=ids)


def test_benchmark_section_runs():
    """benchmarks/trimmed_step.py (the report's TrimmedStep section) on tiny models, one round."""
    bench = load_script("benchmarks", "trimmed_step")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: no thread hand-offs (CI runs beside other workers)
    try:
        record = bench.run("cpu", tiny=True)
    finally:
        torch.set_num_threads(threads)
    assert [len(r["fractions"]) for r in record["models"]] == [3, 3]
    assert [c["auto"] for c in record["models"][0]["fractions"]] == ["subset", "subset", "full"]
    text = bench.table(record)
    assert "MLP" in text and "TransformerEncoder" in text and "break-even" in text
