"""docs/CONTRACT.md section 5: every bad input raises before any kernel runs, naming the argument."""

import pytest
import torch

import hardloss_cuda as H

C = 5


def _x():
    return torch.randn(4, C)


def _y():
    return torch.randint(0, C, (4,))


BAD = {
    "label too large": (lambda: H.cross_entropy(_x(), torch.tensor([0, 1, 5, 2])), "target"),
    "negative label": (lambda: H.cross_entropy(_x(), torch.tensor([0, -1, 2, 2])), "target"),
    "k = 0": (lambda: H.cross_entropy(_x(), _y(), k=0.0), "k"),
    "k < 0": (lambda: H.cross_entropy(_x(), _y(), k=-1.0), "k"),
    "k inf": (lambda: H.cross_entropy(_x(), _y(), k=float("inf")), "k"),
    "k nan": (lambda: H.cross_entropy(_x(), _y(), k=float("nan")), "k"),
    "mixing weight 0.5": (lambda: H.mcel.simple_mixture(torch.rand(C, C), 0.5), "mixing weight"),
    "mixture not C x C": (lambda: H.cross_entropy(_x(), _y(), mixture=torch.rand(C, C + 1)), "mixture"),
    "mixture with probabilities": (lambda: H.cross_entropy(_x(), torch.rand(4, C), mixture=torch.rand(C, C)), "mixture"),
    "mixture with smoothing": (lambda: H.cross_entropy(_x(), _y(), label_smoothing=0.1, mixture=torch.rand(C, C)), "label_smoothing"),
    "target shape": (lambda: H.cross_entropy(_x(), torch.zeros(3, dtype=torch.long)), "target"),
    "probability shape": (lambda: H.cross_entropy(_x(), torch.rand(4, C + 1)), "target"),
    "target dtype": (lambda: H.cross_entropy(_x(), torch.zeros(4, dtype=torch.bool)), "target"),
    "weight shape": (lambda: H.cross_entropy(_x(), _y(), weight=torch.rand(C + 1)), "weight"),
    "trim 0": (lambda: H.cross_entropy(_x(), _y(), trim=0.0), "trim"),
    "trim > 1": (lambda: H.cross_entropy(_x(), _y(), trim=1.5), "trim"),
    "input dtype": (lambda: H.cross_entropy(torch.randint(0, 3, (4, C)), _y()), "input"),
    "input scalar": (lambda: H.cross_entropy(torch.tensor(1.0), torch.tensor(0)), "input"),
    "reduction": (lambda: H.cross_entropy(_x(), _y(), reduction="avg"), "reduction"),
    "label_smoothing": (lambda: H.cross_entropy(_x(), _y(), label_smoothing=1.5), "label_smoothing"),
    "backend name": (lambda: H.cross_entropy(_x(), _y(), backend="tpu"), "backend"),
    "schedule epochs": (lambda: H.MiniBatchTrimming(num_epochs=0), "num_epochs"),
    "schedule end": (lambda: H.MiniBatchTrimming(num_epochs=3, end=0.0), "end"),
    "module k": (lambda: H.HardCrossEntropyLoss(k=0), "k"),
}


@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
def test_bad_input_raises_naming_argument(case):
    call, name = BAD[case]
    with pytest.raises(ValueError, match=name):
        call()


def test_bad_label_checked_on_every_backend(backend, device):
    x = torch.randn(4, C, device=device)
    with pytest.raises(ValueError, match="target"):
        H.cross_entropy(x, torch.tensor([0, 1, 2, 99], device=device), backend=backend)
    # ignore_index itself is fine even though it lies outside [0, C)
    H.cross_entropy(x, torch.tensor([0, 1, 2, -100], device=device), backend=backend)


def test_unavailable_backend_says_why(monkeypatch):
    reasons = H.unavailable_reasons()
    for name, why in reasons.items():
        with pytest.raises(RuntimeError, match=name) as info:
            H.cross_entropy(_x(), _y(), backend=name)
        assert why in str(info.value)


def test_env_var_overrides_auto(monkeypatch):
    monkeypatch.setenv("HARDLOSS_BACKEND", "reference")
    from hardloss_cuda import backends

    assert backends.resolve("auto", torch.device("cpu")) == "reference"
    monkeypatch.setenv("HARDLOSS_BACKEND", "nope")
    with pytest.raises(ValueError, match="backend"):
        H.cross_entropy(_x(), _y())
