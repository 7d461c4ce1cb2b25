"""The benchmark chart: for every case of a report, the speed-up of each backend against
F.cross_entropy (grouped horizontal bars, log axis, the 1x line drawn), and beside it the
bandwidth (% of the device copy on a GPU, GB/s on the 2 N C s floor on the CPU) and, where it
was measured (GPUs), the peak extra memory.

    python benchmarks/chart.py benchmarks/results/report-....json [out.png]

report.py calls ``plot`` on every run; this script redraws a committed JSON record.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def plot(result: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker  # noqa: F401  (matplotlib.ticker below)

    rows = [r for r in result["rows"] if r["ms"] is not None and r["mode"] == "fwd+bwd"]
    cases = list(dict.fromkeys(r["case"] for r in rows))
    backends = [b for b in dict.fromkeys(r["backend"] for r in rows) if b not in ("torch", "reference")]
    by = {(r["case"], r["backend"]): r for r in rows}
    gpu = result.get("copy_gbps") is not None
    memory = any(r.get("peak_extra_mb") for r in rows)  # measured on GPUs only
    height = 0.8 / max(len(backends), 1)
    panels = 3 if memory else 2
    fig, axes = plt.subplots(1, panels, figsize=(11 + 3 * memory, 0.42 * len(cases) * max(1, len(backends) / 2) + 1.6),
                             sharey=True, gridspec_kw={"width_ratios": [3, 2, 2][:panels]})
    ax, bx = axes[0], axes[1]
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, b in enumerate(backends):
        ys = [c_i + (i - (len(backends) - 1) / 2) * height for c_i, c in enumerate(cases) if (c, b) in by]
        cs = [c for c in cases if (c, b) in by]
        sp = [by[c, b]["vs_torch"] or 0 for c in cs]
        ax.barh(ys, sp, height, label=b, color=colors[i % len(colors)])
        for y, v in zip(ys, sp):
            ax.text(v, y, f" {v:.2f}x", va="center", fontsize=7)
        bw = [by[c, b]["pct_copy"] if gpu else by[c, b]["gbps"] for c in cs]
        bx.barh(ys, [v or 0 for v in bw], height, color=colors[i % len(colors)])
        if memory:
            axes[2].barh(ys, [by[c, b].get("peak_extra_mb") or 0 for c in cs], height, color=colors[i % len(colors)])
    ax.axvline(1.0, color="black", lw=1)
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(matplotlib.ticker.FixedLocator([0.25, 0.5, 1, 2, 4, 8]))
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}x"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_yticks(range(len(cases)), cases, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("speed-up vs F.cross_entropy, forward+backward (log; > 1 is faster)")
    ax.legend(fontsize=8, loc="lower right")
    bx.set_xlabel("% of the device copy bandwidth" if gpu else "GB/s on the 2 N C s floor")
    ax.grid(axis="x", which="both", alpha=0.3)
    bx.grid(axis="x", alpha=0.3)
    if memory:
        axes[2].set_xlabel("peak extra memory (MB)")
        axes[2].grid(axis="x", alpha=0.3)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    src = Path(sys.argv[1])
    result = json.loads(src.read_text())
    out = Path(sys.argv[2]) if len(sys.argv) > 2 else src.with_suffix(".png")
    plot(result, out, f"hardloss_cuda {result['hardloss_cuda']} on {result['device']}, torch {result['torch']}, "
                      f"{result['date']}")
    print(f"wrote {out}")
