"""Train a small MLP on scikit-learn's digits (8x8 images, 10 classes) with each technique
and print the test accuracy of each: plain cross-entropy, the |eps|^k pseudo-gradient with
k = 0.5 and k = 2, MCEL with an LDA class similarity, learned SG-MCEL and GMCEL, and
mini-batch trimming.

    python examples/digits.py [--epochs 30] [--seed 0]

Run time: 3.5 min of CPU time (7 runs x 30 epochs x 23 batches; measured once on a 2-core
AMD EPYC shared with other jobs, where it took 16 min), so a few minutes on 2 idle cores. The numbers vary with the seed (one run, not a study).
"""

import argparse

import torch
from sklearn.datasets import load_digits
from torch import nn

import hardloss_cuda as hl


def data(seed: int):
    X, y = load_digits(return_X_y=True)
    X = torch.tensor(X, dtype=torch.float32) / 16.0
    y = torch.tensor(y)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    X, y = X[perm], y[perm]
    n_train = int(0.8 * len(y))
    return X[:n_train], y[:n_train], X[n_train:], y[n_train:]


def fit(model: nn.Module, loss_fn, X, y, epochs: int, trim=None, extra_params=()) -> nn.Module:
    """Adam, batches of 64, the loss's penalty added when it has one (learned MCEL), the
    trimming schedule stepped every epoch. examples/study.py trains with it too."""
    opt = torch.optim.Adam([*model.parameters(), *extra_params], lr=3e-3)
    for _ in range(epochs):
        for idx in torch.randperm(len(y)).split(64):
            loss = loss_fn(model(X[idx]), y[idx])
            if hasattr(loss_fn, "penalty"):
                loss = loss + loss_fn.penalty()
            opt.zero_grad()
            loss.backward()
            opt.step()
        if trim is not None:
            trim.step()
    return model


def train(loss_fn, X, y, X_test, y_test, epochs: int, seed: int, trim=None, extra_params=()):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    fit(model, loss_fn, X, y, epochs, trim, extra_params)
    with torch.no_grad():
        return (model(X_test).argmax(1) == y_test).float().mean().item()


def main(epochs: int = 30, seed: int = 0) -> dict:
    X, y, X_test, y_test = data(seed)
    A = hl.mcel.lda_similarity(X, y)  # class similarity from the training features (Eq. 12)
    trim = hl.MiniBatchTrimming(num_epochs=epochs, start=1.0, end=0.2)
    sg = hl.MixedCrossEntropyLoss(A, eps=0.1, mode="per_class")
    gm = hl.MixedCrossEntropyLoss(A, eps=0.1, mode="full")
    runs = {
        "cross-entropy": (nn.CrossEntropyLoss(), {}),
        "k = 0.5": (hl.HardCrossEntropyLoss(k=0.5), {}),
        "k = 2": (hl.HardCrossEntropyLoss(k=2.0), {}),
        "MCEL e = 0.2": (hl.MixedCrossEntropyLoss(A, eps=0.2), {}),
        "SG-MCEL (learned e)": (sg, {"extra_params": list(sg.parameters())}),
        "GMCEL (learned E)": (gm, {"extra_params": list(gm.parameters())}),
        "trimming 1.0 -> 0.2": (hl.HardCrossEntropyLoss(trim=trim), {"trim": trim}),
    }
    results = {}
    for name, (loss_fn, kw) in runs.items():
        results[name] = train(loss_fn, X, y, X_test, y_test, epochs, seed, **kw)
        print(f"{name:22s} test accuracy {results[name]:.3f}")
    return results


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    main(args.epochs, args.seed)
