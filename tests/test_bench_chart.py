"""benchmarks/chart.py's layout, read back from the drawn figure: every case's bars centred on
its label (a one-backend case among four-backend LM-head cases too), bars that start at 1x
and end at the speed-up, slower ones leftward in their own colour, and a caption that says
what the bandwidth floor and the "mix" rows are."""

from collections import defaultdict

import pytest

from ._scripts import load_script

pytest.importorskip("matplotlib")

SPEEDUPS = {  # case -> backend -> speed-up vs F.cross_entropy
    "8192x1000 fp32 k=0.5": {"cpu": 2.0},
    "16384x128 fp32 k=0.5 smooth=0.1": {"cpu": 0.54},
    "1024x8192 fp32 k=1 lm-head D=256": {"cpu": 1.3, "cpu-linear": 0.8, "reference-linear": 0.1, "torch-chunked": 0.9},
    "8192x1000 fp32 k=1 mix": {"cpu": 5.9},
    "4096x32000 fp32 k=1 lm-head D=512": {"cpu": 1.1, "cpu-linear": 1.5, "reference-linear": 0.2},
    "16384x128 fp32 k=1": {"cpu": 0.78},
}


def _chart():
    return load_script("benchmarks", "chart")


def _result():
    rows = []
    for case, sp in SPEEDUPS.items():
        rows.append({"case": case, "mode": "fwd+bwd", "backend": "torch", "ms": 10.0, "vs_torch": 1.0, "gbps": 1.0,
                     "pct_copy": None, "peak_extra_mb": None})
        rows.append({"case": case, "mode": "fwd+bwd", "backend": "reference", "ms": 99.0, "vs_torch": 0.1,
                     "gbps": 0.1, "pct_copy": None, "peak_extra_mb": None})
        rows += [{"case": case, "mode": "fwd+bwd", "backend": b, "ms": 10.0 / v, "vs_torch": v, "gbps": 3.0 * v,
                  "pct_copy": None, "peak_extra_mb": None} for b, v in sp.items()]
    rows.append({"case": "skipped", "mode": "fwd+bwd", "backend": "cpu", "ms": None, "note": "skipped: memory"})
    return {"copy_gbps": None, "rows": rows}


def test_layout_centres_every_case_and_starts_at_1x():
    bars = _chart().bar_layout(_result())
    assert [b["case"] for b in bars if b["backend"] == "cpu"] == list(SPEEDUPS)  # reference and torch left out
    by_row = defaultdict(list)
    for b in bars:
        by_row[b["row"]].append(b)
        assert b["left"] == 1.0 and b["left"] + b["width"] == pytest.approx(b["speedup"])
        assert b["slower"] == (b["speedup"] < 1)
    for i, case in enumerate(SPEEDUPS):
        ys = sorted(b["y"] for b in by_row[i])
        assert len(ys) == len(SPEEDUPS[case]) and sum(ys) / len(ys) == pytest.approx(i)
        assert ys[-1] - ys[0] < 0.8  # inside its own row
    # a case's bars share its row: a one-backend case's bar is as thick as the row allows
    assert all(b["height"] == pytest.approx(0.8 / len(SPEEDUPS[b["case"]])) for b in bars)


def test_drawn_bars_sit_on_their_labels_from_1x(tmp_path):
    import matplotlib.pyplot as plt

    chart = _chart()
    fig = chart.figure(_result(), "test")
    try:
        ax = fig.axes[0]
        ticks = {t.get_text(): y for t, y in zip(ax.get_yticklabels(), ax.get_yticks())}
        assert set(ticks) == set(SPEEDUPS)
        rects = [p for p in ax.patches if p.get_height() > 0]
        assert len(rects) == sum(len(sp) for sp in SPEEDUPS.values())
        centres = defaultdict(list)
        for r in rects:
            x0, x1 = sorted((r.get_x(), r.get_x() + r.get_width()))
            y = r.get_y() + r.get_height() / 2
            case = min(ticks, key=lambda c: abs(ticks[c] - y))
            centres[case].append(y)
            speedup = x0 if x0 < 1 else x1
            assert 1.0 in (x0, x1), (x0, x1)  # every bar starts at the 1x line
            assert speedup in [pytest.approx(v) for v in SPEEDUPS[case].values()]
            slower_colour = tuple(round(c, 3) for c in r.get_facecolor()[:3]) == tuple(
                round(int(chart.SLOWER[i:i + 2], 16) / 255, 3) for i in (1, 3, 5))
            assert slower_colour == (speedup < 1) and (r.get_width() < 0) == (speedup < 1)
        for case, ys in centres.items():
            assert sum(ys) / len(ys) == pytest.approx(ticks[case])
            if len(ys) == 1:
                assert ys[0] == pytest.approx(ticks[case])
        caption = " ".join(t.get_text() for t in fig.texts)
        assert "2 N C s" in caption and "logits once" in caption and '"mix" rows' in caption and "W[y]" in caption
        fig.savefig(tmp_path / "chart.png")
        assert (tmp_path / "chart.png").stat().st_size > 1000
    finally:
        plt.close(fig)
