"""A trimming schedule under torch.compile(fullgraph=True): the fraction changes every epoch
without a recompile (the losses read the schedule's ``fraction_tensor``, a graph input, not a
Python number Dynamo would guard on: issue #33)."""

import torch

import hardloss_cuda as hl


def _train(step, trim, x, y, epochs):
    losses = []
    for _ in range(epochs):
        losses.append(step(x, y).detach())
        trim.step()
    return torch.stack(losses)


def test_schedule_does_not_recompile():
    torch.manual_seed(0)
    x, y = torch.randn(13, 7, dtype=torch.float64), torch.randint(0, 5, (13,))
    model = torch.nn.Linear(7, 5, dtype=torch.float64)
    epochs = 10
    trim = hl.MiniBatchTrimming(num_epochs=epochs, start=1.0, end=0.1)
    loss_fn = hl.HardCrossEntropyLoss(trim=trim, k=0.5)

    def step(x, y):
        return loss_fn(model(x), y)

    eager = _train(step, trim, x, y, epochs)
    trim.epoch = 0
    torch._dynamo.reset()
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    compiled(x, y)  # the one compile
    with torch.compiler.set_stance("fail_on_recompile"):
        got = _train(compiled, trim, x, y, epochs)
    torch.testing.assert_close(got, eager, rtol=1e-12, atol=0)
    # the kept count did change: 13 rows at 1.0, then fewer
    assert len(set(got.tolist())) > 5


def test_tensor_fraction_does_not_recompile():
    """A fraction the caller computes itself, passed as a 0-dim tensor, compiles once too."""
    x, y = torch.randn(9, 4, dtype=torch.float64), torch.randint(0, 4, (9,))
    frac = torch.tensor(1.0)
    step = torch.compile(lambda x, y, f: hl.cross_entropy(x, y, trim=f), fullgraph=True, backend="eager")
    torch._dynamo.reset()
    step(x, y, frac)
    with torch.compiler.set_stance("fail_on_recompile"):
        for f in (0.9, 0.5, 0.3):
            frac.fill_(f)
            torch.testing.assert_close(step(x, y, frac), hl.cross_entropy(x, y, trim=f), rtol=1e-12, atol=0)
