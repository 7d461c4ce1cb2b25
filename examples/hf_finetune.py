"""Train a tiny Llama (built from a config: nothing is downloaded) on the words of Python's own
standard library sources, its loss computed by ``hardloss_cuda.integrations.transformers``:
unpatched, patched at k = 1 (the same run), at k = 0.5, and with mini-batch trimming (1.0 down
to 0.3). Prints each run's loss on held-out text (the model's own loss in eval mode) and the
peak extra memory of one training step of a 32k-vocabulary model, patched and unpatched.

    python examples/hf_finetune.py [--steps 48] [--quick]

Run time: 4.3 min of CPU time at the defaults (4 runs x 48 steps of 8 x 64 tokens, then two
fresh processes for the memory; measured once on a 2-core AMD EPYC shared with other jobs,
where it took 20 min), so a few minutes on 2 idle cores. The defaults were 200 steps of 16
sequences: 100 of them took 11 min (examples/results/hf_finetune-amd-epyc-2026-12-06.txt).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

sys.path.insert(0, str(Path(__file__).parent))
from lm_head import _reset_peak, _status_mb, corpus, run_cli  # noqa: E402  (the corpus, the memory probes)

import hardloss_cuda as hl  # noqa: E402
from hardloss_cuda.integrations import transformers as hl_hf  # noqa: E402

# --quick, and the test suite: a few steps on a small corpus, the memory of a small model.
QUICK = dict(steps=16, batch=8, T=32, D=32, max_words=50_000, memory=dict(V=4000, D=64, batch=4, T=128, fresh=False))
RUNS = {"unpatched": None, "k=1": dict(), "k=0.5": dict(k=0.5), "trim": dict(trim="schedule")}


def llama(V: int, D: int, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=V, hidden_size=D, intermediate_size=2 * D, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, pad_token_id=0, bos_token_id=0,
                         eos_token_id=0)
    return LlamaForCausalLM(config)


def windows(ids: torch.Tensor, batch: int, T: int, g: torch.Generator) -> torch.Tensor:
    start = torch.randint(0, len(ids) - T, (batch,), generator=g)
    return torch.stack([ids[s:s + T] for s in start.tolist()])


def train(options, steps: int, batch: int, T: int, D: int, max_words: int, seed: int = 0) -> list[float]:
    """The held-out loss every steps // 8 steps (and after the last)."""
    ids, V = corpus(max_words)
    train_ids, held_out = ids[: len(ids) * 9 // 10], ids[len(ids) * 9 // 10:]
    model = llama(V, D, seed)
    trim = None
    if options is not None:
        if options.get("trim") == "schedule":  # an "epoch" is an eighth of the run
            trim = hl.MiniBatchTrimming(num_epochs=8, start=1.0, end=0.3)
            options = {**options, "trim": trim}
        hl_hf.apply(model, **options)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(seed)
    test = windows(held_out, 32, T, torch.Generator().manual_seed(seed + 1))
    every, curve = max(1, steps // 8), []
    for i in range(steps + 1):
        if i % every == 0 or i == steps:
            model.eval()
            with torch.no_grad():
                curve.append(model(input_ids=test, labels=test).loss.item())
            model.train()
            if trim is not None and i:
                trim.step()
        if i == steps:
            break
        x = windows(train_ids, batch, T, g)
        model(input_ids=x, labels=x).loss.backward()
        opt.step()
        opt.zero_grad()
    return curve


def _peak(patched: bool, V: int, D: int, batch: int, T: int) -> float:
    """Peak extra resident memory (MB) of the third training step (parameters, gradients and
    AdamW's state exist by then)."""
    model = llama(V, D)
    if patched:
        hl_hf.apply(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randint(0, V, (batch, T))
    for step in range(3):
        if step == 2:
            _reset_peak()
            base = _status_mb("VmRSS")
        model(input_ids=x, labels=x).loss.backward()
        opt.step()
        opt.zero_grad()
    return _status_mb("VmHWM") - base


def step_peak_mb(patched: bool, V: int = 32000, D: int = 256, batch: int = 8, T: int = 512, fresh=True) -> float:
    """_peak in a fresh process, where nothing earlier raised the high-water mark nor left freed
    memory for the step to reuse (fresh=False: in this one, as --quick does: a fresh process
    imports transformers again, about 6 s)."""
    if not fresh:
        return _peak(patched, V, D, batch, T)
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import hf_finetune; "
            f"print(hf_finetune._peak({patched}, {V}, {D}, {batch}, {T}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main(steps: int = 48, batch: int = 8, T: int = 64, D: int = 64, max_words: int = 400_000,
         memory: dict | None = None) -> dict:
    curves = {name: train(options, steps, batch, T, D, max_words) for name, options in RUNS.items()}
    every = max(1, steps // 8)
    print("held-out loss (the model's own, in eval mode)")
    print(f"{'step':>6s}" + "".join(f"{name:>11s}" for name in curves))
    for j in range(len(curves["k=1"])):
        print(f"{min(j * every, steps):6d}" + "".join(f"{c[j]:11.3f}" for c in curves.values()))
    peaks = {name: step_peak_mb(name == "patched", **(memory or {})) for name in ("unpatched", "patched")}
    print("peak extra memory of a training step: " + json.dumps({k: round(v) for k, v in peaks.items()}) + " MB")
    return {"curves": curves, "peak_mb": peaks}


if __name__ == "__main__":
    run_cli(main, __doc__, QUICK)
