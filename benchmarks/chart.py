"""The benchmark chart: for every case of a report, the speed-up of each backend against
F.cross_entropy (horizontal bars from the 1x line, log axis: faster ones rightward in the
backend's colour, slower ones leftward in red), and beside it the bandwidth (% of the device
copy on a GPU, GB/s on the bytes floor on the CPU) and, where it was measured (GPUs), the
peak extra memory. Each case's bars are centred on its label, however many backends it has.

    python benchmarks/chart.py benchmarks/results/report-....json [out.png]

report.py calls ``plot`` on every run; this script redraws a committed JSON record.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

SLOWER = "#d62728"  # bars of the cases slower than F.cross_entropy
HEIGHT = 0.8  # of a row, shared by the bars of a case
CAPTION = (
    "Speed-up: F.cross_entropy's time over the backend's, forward+backward, median of the timed calls. "
    "\"mix\" rows: F.cross_entropy is given the mixture's probability rows W[y] as soft targets "
    "(what PyTorch needs for the same loss).\n"
    "GB/s on the 2 N C s floor: the least memory traffic of forward+backward, reading the N x C logits once and "
    "writing their gradient once (s bytes an element), over the measured time{gpu}; "
    "LM-head rows: the same floor, the matmuls' time included.")
GPU_CAPTION = ", shown as % of a device-to-device copy's GB/s measured in the same run"


def bar_layout(result: dict) -> list[dict]:
    """One bar per (case, backend) of the forward+backward rows, the reference and torch
    themselves left out: its row in the chart (case i's label sits at y = i), its y (the bars
    of a case centred on i), and its extent on the speed-up axis, from 1x to the speed-up."""
    rows = [r for r in result["rows"] if r["ms"] is not None and r["mode"] == "fwd+bwd"]
    cases = list(dict.fromkeys(r["case"] for r in rows))
    backends = [b for b in dict.fromkeys(r["backend"] for r in rows) if b not in ("torch", "reference")]
    by = {(r["case"], r["backend"]): r for r in rows}
    per_case = {c: [b for b in backends if (c, b) in by] for c in cases}
    bars = []
    for i, c in enumerate(cases):
        bs = per_case[c]
        height = HEIGHT / max(len(bs), 1)  # a case's bars share its row
        for j, b in enumerate(bs):
            v = by[c, b]["vs_torch"]
            bars.append({"case": c, "backend": b, "row": i, "y": i + (j - (len(bs) - 1) / 2) * height,
                         "height": height, "speedup": v, "left": 1.0, "width": (v - 1.0) if v else 0.0,
                         "slower": bool(v) and v < 1.0, "record": by[c, b]})
    return bars


def figure(result: dict, title: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.colors
    import matplotlib.ticker
    from matplotlib.patches import Patch

    bars = bar_layout(result)
    cases = list(dict.fromkeys(b["case"] for b in bars))
    backends = list(dict.fromkeys(b["backend"] for b in bars))
    gpu = result.get("copy_gbps") is not None
    memory = any(b["record"].get("peak_extra_mb") for b in bars)  # measured on GPUs only
    per_row = max([sum(b["row"] == i for b in bars) for i in range(len(cases))] + [1])
    panels = 3 if memory else 2
    fig, axes = plt.subplots(1, panels, figsize=(11 + 3 * memory, 0.42 * len(cases) * max(1, per_row / 3) + 2.4),
                             sharey=True, gridspec_kw={"width_ratios": [3, 2, 2][:panels]})
    ax, bx = axes[0], axes[1]
    palette = [c for c in map(matplotlib.colors.to_hex, plt.rcParams["axes.prop_cycle"].by_key()["color"])
               if c != SLOWER]
    color = {b: palette[i % len(palette)] for i, b in enumerate(backends)}
    several = per_row > 1
    for bar in bars:
        y, h, v, rec = bar["y"], bar["height"], bar["speedup"], bar["record"]
        ax.barh(y, bar["width"], h, left=bar["left"], color=SLOWER if bar["slower"] else color[bar["backend"]])
        if v:
            name = f" {bar['backend']}" if several and sum(b["row"] == bar["row"] for b in bars) > 1 else ""
            ax.text(v, y, f" {v:.2f}x{name} ", va="center", ha="right" if bar["slower"] else "left", fontsize=7)
        bw = rec["pct_copy"] if gpu else rec["gbps"]
        bx.barh(y, bw or 0, h, color=color[bar["backend"]])
        if memory:
            axes[2].barh(y, rec.get("peak_extra_mb") or 0, h, color=color[bar["backend"]])
    ax.axvline(1.0, color="black", lw=1)
    ax.set_xscale("log")
    speedups = [b["speedup"] for b in bars if b["speedup"]] or [1.0]
    ax.set_xlim(min(0.25, min(speedups) / 2), max(8.0, max(speedups) * 2))
    ax.xaxis.set_major_locator(matplotlib.ticker.FixedLocator([0.125, 0.25, 0.5, 1, 2, 4, 8, 16, 32]))
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}x"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_yticks(range(len(cases)), cases, fontsize=8)
    ax.set_ylim(len(cases) - 0.5, -0.5)  # the first case on top
    ax.set_xlabel("speed-up vs F.cross_entropy, forward+backward (log; right of 1x is faster)")
    handles = [Patch(color=color[b], label=b) for b in backends] + [Patch(color=SLOWER, label="slower than torch")]
    ax.legend(handles=handles, fontsize=8, loc="upper right")
    bx.set_xlabel("% of the device copy bandwidth" if gpu else "GB/s on the 2 N C s floor (caption)")
    ax.grid(axis="x", which="both", alpha=0.3)
    bx.grid(axis="x", alpha=0.3)
    if memory:
        axes[2].set_xlabel("peak extra memory (MB)")
        axes[2].grid(axis="x", alpha=0.3)
    fig.suptitle(title, fontsize=9)
    fig.text(0.01, 0.01, CAPTION.format(gpu=GPU_CAPTION if gpu else ""), fontsize=7, ha="left", va="bottom", wrap=True)
    fig.tight_layout(rect=(0, 0.9 / fig.get_figheight(), 1, 1 - 0.3 / fig.get_figheight()))
    return fig


def plot(result: dict, path: Path, title: str) -> None:
    import matplotlib.pyplot as plt

    fig = figure(result, title)
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    src = Path(sys.argv[1])
    result = json.loads(src.read_text())
    out = Path(sys.argv[2]) if len(sys.argv) > 2 else src.with_suffix(".png")
    plot(result, out, f"hardloss_cuda {result['hardloss_cuda']} on {result['device']}, torch {result['torch']}, "
                      f"{result['date']}")
    print(f"wrote {out}")
