"""The benchmark report (the README's main job, `make bench`): every candidate of
benchmarks/common.py on every case, side by side in one run.

    python benchmarks/report.py [--quick | --full] [--device cpu|cuda] [--out DIR] [--repeat N]

Prints a table (ms, GB/s on the bytes floor, % of the copy bandwidth on a GPU, speed-up vs
the reference and vs F.cross_entropy, peak extra memory, timed calls) and writes it with a
JSON record and a PNG plot to DIR (default benchmarks/results/), named for the device and the
date, stamped with device, torch, CUDA and library versions. A progress line per case goes to
stderr, with the case's CPU time (user, system, page faults) and an estimate of the time left.

On the CPU the default report (`make bench`: 3 min 34 s wall, 234 s user + 155 s system time
on 2 idle cores; 9 min 25 s at load 4-6) times every case family of --full, but
spends fewer calls where calls are long: where a warm call takes over
LONG_S seconds, one timed call per round and no further warm-up, and where a reference's first
call takes over SLOW_S seconds (the 32000-class shapes: 7-30 s a call; the LM head's
"reference-linear" too) that call alone. Its slowest cases are smaller than --full's (#33:
the report took 8 min 12 s with them): the 2048 x 32000 soft targets at 1024 rows (15-36 s a
case, the reference's call at k = 0.5 up to 33 s), their mixtures at C = 8192 too (the C x C
mixture matrix was 4 GB: building it and paging in the reference's temporaries took 69-76 s a
case), and the D = 512 LM head at 1024 rows, not 4096 (93 s); docs/BENCHMARKS.md has the
figures. --full (`make bench-full`) keeps the cases and the schedule of the reports committed
before 2026-12-06: three warm-up calls and repeat / 3 calls per round, the reference
repeat / 9. The header names the schedule that ran.

The estimate of the time left on the progress lines: each case's seconds predicted from its
size, its candidates and the calls the schedule gives them (predicted_s), scaled by how long
the cases done took against their prediction (time_left), the TrimmedStep section included.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import re
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from chart import plot  # noqa: E402
from common import Case  # noqa: E402
import trimmed_step  # noqa: E402

import hardloss_cuda as H  # noqa: E402


def soft_cases(N: int, C: int) -> list[Case]:
    """Soft targets at k = 1 and 0.5: label smoothing, probabilities, a mixture (torch: the
    probability rows W[y])."""
    return [Case(N, C, k=k, **kind) for k in (1.0, 0.5)
            for kind in ({"target": "smooth"}, {"target": "probs"}, {"mixture": True})]


ROUNDS = 3  # timing rounds per case, alternating between its candidates
# The default CPU schedule (module docstring): after a call of LONG_S or more, no further
# warm-up and one timed call per round; a reference call of SLOW_S or more is timed once.
LONG_S, SLOW_S = 0.25, 2.0


def cases(device: str, quick: bool, full: bool = False) -> list[Case]:
    if device == "cpu" and quick:
        return [Case(2048, 1000, k=0.5), Case(2048, 1000, k=1.0), Case(512, 8192, k=0.5),
                Case(2048, 1000, k=0.5, mixture=True), Case(2048, 1000, k=0.5, trim=0.5),
                Case(2048, 1000, k=1.0, target="smooth"), Case(2048, 1000, k=0.5, target="probs")]
    if device == "cpu":  # the CPU speed targets: 8192 x 1000 and 4096 x 32000, fp32, k = 0.5 and 1;
        # soft targets at 8192 x 1000, 16384 x 128 and 2048 x 32000
        big = soft_cases(2048, 32000)
        if not full:  # make bench in about 5 min (#33): the slowest cases made smaller (docstring)
            big = [Case(1024, 8192 if c.mixture else 32000, k=c.k, mixture=c.mixture, target=c.target)
                   for c in big]
        head_rows = 4096 if full else 1024
        return [Case(8192, 1000, k=0.5), Case(8192, 1000, k=1.0), Case(4096, 32000, k=0.5),
                Case(4096, 32000, k=1.0), Case(8192, 1000, k=0.5, trim=0.5), Case(4096, 32000, "bf16", k=0.5),
                Case(16384, 128, k=0.5), Case(16384, 128, k=1.0), Case(1024, 8192, k=0.5),
                *soft_cases(8192, 1000), *soft_cases(16384, 128), *big,
                Case(1024, 8192, k=1.0, hidden=256), Case(head_rows, 32000, k=1.0, hidden=512)]
    if quick:
        return [Case(16384, 32000, "bf16", k=1.0), Case(16384, 32000, "bf16", k=0.5)]
    return [Case(16384, 131072, "bf16", k=1.0), Case(16384, 131072, "bf16", k=0.5),
            Case(8192, 32000, "fp16", k=1.0), Case(8192, 32000, "fp16", k=0.5),
            Case(65536, 1000, "fp32", k=1.0, mixture=True), Case(65536, 1000, "fp32", k=0.5, mixture=True),
            Case(65536, 1000, "fp32", k=0.5), Case(262144, 128, "bf16", k=0.5),
            Case(65536, 4096, "bf16", k=0.5), Case(16384, 32000, "bf16", k=0.5, trim=0.5),
            Case(16384, 32000, "bf16", k=1.0, target="smooth"), Case(16384, 32000, "bf16", k=0.5, target="smooth"),
            Case(65536, 1000, "fp32", k=1.0, target="probs"),
            Case(8192, 128256, "bf16", k=1.0, hidden=4096), Case(8192, 128256, "bf16", k=0.5, hidden=4096)]


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    model = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                  if ln.startswith("model name")), platform.processor())
    return f"{model}, {torch.get_num_threads()} threads"


def fits(case: Case, name: str, device: str) -> bool:
    """The reference materialises several fp32 (N, C) temporaries: skip it where they would
    not fit in GPU memory (reported as 'skipped: memory')."""
    if device != "cuda" or name != "reference":
        return True
    return 12 * case.N * case.C * 4 < torch.cuda.get_device_properties(0).total_memory


def _is_reference(name: str) -> bool:
    """The library's reference backend, on the logits or as the LM head's "reference-linear":
    plain eager PyTorch, nothing compiled on its first call, which can stand for its time."""
    return name in ("reference", "reference-linear")


def _timed_calls(steps: dict, xs: list, device: str, repeat: int, full: bool) -> dict:
    """name -> the times (ms) of its timed calls, taken in ROUNDS rounds that alternate between
    the candidates: a slow spell of a shared machine (seen here: one candidate 5x slower for a
    whole run of calls) falls on all of them."""
    samples = {name: [] for name in steps}
    pace = {}  # name -> a warm call, in s (the default CPU schedule)
    for rnd in range(ROUNDS):
        for name, step in steps.items():
            if full or device != "cpu":
                slow = name == "reference" and device == "cpu"  # seconds a call at the big shapes
                n = max(1, repeat // (3 * ROUNDS)) if slow else max(1, repeat // ROUNDS)
                samples[name] += common.time_samples(step, xs, device, warmup=(1 if slow else 3) if rnd == 0 else 1,
                                                     repeat=n)
                continue
            n = max(1, repeat // ROUNDS)
            if rnd == 0:
                # The first call warms up. Only the reference's (both) can stand for its time: other
                # candidates may compile on it (PyTorch's chunked F.linear_cross_entropy: 9 s).
                (first,) = common.time_samples(step, xs, device, warmup=0, repeat=1)
                if _is_reference(name) and first >= 1e3 * SLOW_S:
                    samples[name], pace[name] = [first], first / 1e3  # timed once
                    continue
                (ms,) = common.time_samples(step, xs, device, warmup=0, repeat=1)
                samples[name].append(ms)
                pace[name] = ms / 1e3
                n -= 1
            if pace[name] >= SLOW_S and _is_reference(name):
                continue
            if pace[name] >= LONG_S:
                samples[name] += common.time_samples(step, xs, device, warmup=0, repeat=1 if rnd else 0)
            elif n:
                samples[name] += common.time_samples(step, xs, device, warmup=1, repeat=n)
    return samples


# The progress line's estimate of the time left. A case's predicted seconds on 2 idle cores:
# per candidate, the calls its schedule gives it times a pace per logit, fitted to the default
# reports of 2026-12-06 on a 2-core AMD EPYC (ns per logit of a forward+backward call); the
# reference's (N, C) temporaries fault in more pages per logit as they grow (1 + N C / 25M).
NS_FAST = 3.0  # the library's kernel, F.cross_entropy (and an LM head's loss part)
NS_HEAD = 0.032  # an LM head's three matmuls, per logit and hidden unit
NS_REF = {("index", True): 22.0, ("index", False): 30.0,  # (targets, k == 1) -> the reference
          ("soft", True): 50.0, ("soft", False): 130.0}
NS_REF_HEAD = 60.0  # the reference on an LM head, above the matmuls
NS_INPUT = 6.0  # building the inputs, per element written (randn, softmax, the C x C mixture)
CALL_S = 1e-3  # a call's fixed overhead
CASE_S = 0.5  # a case's (its candidates, its inputs' Python)
# The TrimmedStep section after the cases (--quick: a third): the idle report of 2026-12-06
# spent about 40 s outside the cases' calls and inputs; 90 s on a machine at load 5.
TRIMMED_STEP_S = 30.0


def _pace_s(case: Case, name: str) -> float:
    """Predicted seconds of one forward+backward call of candidate `name` on 2 idle cores."""
    n = case.N * case.C
    fast = NS_FAST + NS_HEAD * case.hidden
    if not _is_reference(name):
        ns = fast
    elif case.hidden:
        ns = fast + NS_REF_HEAD
    else:
        soft = case.mixture or case.target != "index"
        ns = NS_REF[("soft" if soft else "index", case.k == 1)] * (1 + n / 25e6)
    return CALL_S + ns * n * 1e-9


def _calls(pace: float, name: str, full: bool, repeat: int) -> int:
    """Calls _timed_calls makes of a candidate of this pace, warm-ups included."""
    if full:  # the CPU reference: repeat / 9 a round, one warm-up a round; others repeat / 3
        n = max(1, repeat // (3 * ROUNDS)) if name == "reference" else max(1, repeat // ROUNDS)
        return ROUNDS * (1 + n) + (0 if name == "reference" else 2)
    if _is_reference(name) and pace >= SLOW_S:
        return 1
    if pace >= LONG_S:
        return 1 + ROUNDS
    return 1 + ROUNDS * (1 + max(1, repeat // ROUNDS))


def predicted_s(case: Case, names, full: bool = False, repeat: int = 10) -> float:
    """A case's predicted seconds on 2 idle cores: its inputs, then each candidate's calls."""
    width = case.hidden or case.C
    inputs = 3 * case.N * width + case.C * case.hidden + (case.N * case.C if case.target == "probs" else 0) \
        + (4 * case.C * case.C if case.mixture else 0)
    return CASE_S + NS_INPUT * inputs * 1e-9 + sum(
        _calls(p, name, full, repeat) * p for name in names for p in [_pace_s(case, name)])


def time_left(elapsed: float, costs: list, done: int) -> float:
    """Seconds left after the first `done` of the parts whose predicted costs are `costs`,
    `elapsed` seconds into the run: the predictions still to come, scaled by how the parts
    done compare with theirs (a loaded machine, another CPU)."""
    return elapsed * sum(costs[done:]) / max(sum(costs[:done]), 1e-9)


def _usage():
    u = resource.getrusage(resource.RUSAGE_SELF)
    return time.perf_counter(), u.ru_utime, u.ru_stime, u.ru_minflt


def run(device: str, quick: bool, repeat: int, modes=("fwd+bwd",), case_list=None, full: bool = False,
        progress=None, tail_s: float = 0.0) -> dict:
    """The cases' rows; `tail_s`: the predicted seconds of what runs after them (the estimate)."""
    copy = common.copy_gbps(device)
    rows = []
    todo = case_list or cases(device, quick, full)
    costs = [predicted_s(c, common.candidates(c, device), full or device != "cpu", repeat) for c in todo]
    costs.append(tail_s)  # what runs after the cases
    start = _usage()
    for i, case in enumerate(todo):
        before = _usage()
        xs, y, W = common.make_inputs(case, device, copies=3)
        for mode in modes:
            backward = mode == "fwd+bwd"
            for x in xs:
                x.requires_grad_(backward)
            results, steps = {}, {}
            for name, fn in common.candidates(case, device).items():
                row = {"case": case.label(), **vars(case), "mode": mode, "backend": name}
                if not fits(case, name, device):
                    rows.append({**row, "ms": None, "note": "skipped: memory"})
                    continue
                steps[name], results[name] = common.make_step(fn, y, W, backward), row
            samples = _timed_calls(steps, xs, device, repeat, full)
            for name, row in results.items():
                step = steps[name]
                ms = statistics.median(samples[name])
                gbps = case.floor_bytes(backward) / (ms * 1e-3) / 1e9
                row.update(ms=ms, gbps=gbps, pct_copy=100 * gbps / copy if copy else None,
                           peak_extra_mb=common.peak_extra_mb(step, xs[0], device), calls=len(samples[name]))
                rows.append(row)
            for row in results.values():
                for base in ("reference", "torch"):
                    b = results.get(base)
                    row[f"vs_{base}"] = b["ms"] / row["ms"] if b else None
        del xs
        if device == "cuda":
            torch.cuda.empty_cache()
        if progress:
            now = _usage()
            wall, user, sys_s, faults = (a - b for a, b in zip(now, before))
            left = time_left(now[0] - start[0], costs, i + 1)
            progress(f"[{i + 1:2d}/{len(todo)}] {case.label():34s} {wall:6.1f} s (user {user:5.1f} s, "
                     f"system {sys_s:5.1f} s, {faults / 1e6:5.2f}M page faults); about {left / 60:.1f} min left")
    return {"copy_gbps": copy, "rows": rows}


def stamp(device: str, argv: list[str]) -> dict:
    return {
        "device": device_name(device), "date": datetime.date.today().isoformat(),
        "torch": torch.__version__, "cuda": torch.version.cuda, "hardloss_cuda": H.__version__,
        "build_info": H.build_info(), "python": platform.python_version(), "command": " ".join(argv),
    }


def _f(v, fmt):
    return "-" if v is None else format(v, fmt)


def table(result: dict) -> str:
    head = (f"{'case':34s} {'mode':7s} {'backend':9s} {'ms':>9s} {'GB/s':>7s} {'%copy':>6s} {'vs ref':>7s} "
            f"{'vs torch':>8s} {'peak MB':>8s} {'calls':>5s}")
    lines = [head, "-" * len(head)]
    for r in result["rows"]:
        if r["ms"] is None:
            lines.append(f"{r['case']:34s} {r['mode']:7s} {r['backend']:9s} {r['note']}")
            continue
        lines.append(f"{r['case']:34s} {r['mode']:7s} {r['backend']:9s} {r['ms']:9.3f} {r['gbps']:7.1f} "
                     f"{_f(r['pct_copy'], '6.1f')} {_f(r['vs_reference'], '7.2f')} {_f(r['vs_torch'], '8.2f')} "
                     f"{_f(r['peak_extra_mb'], '8.0f')} {_f(r.get('calls'), '5d')}")
    return "\n".join(lines)


def summary(result: dict, device: str) -> str:
    """The speed targets of the issues that this run can evaluate."""
    fast = "cpu" if device == "cpu" else "cuda"
    lines = [] if result["copy_gbps"] is None else [f"device-to-device copy: {result['copy_gbps']:.0f} GB/s"]
    for r in result["rows"]:
        if r["backend"] not in (fast, "triton") or r["ms"] is None or r["mode"] != "fwd+bwd":
            continue
        parts = [f"{r['backend']} {r['case']} fwd+bwd:"]
        if r["vs_reference"]:
            parts.append(f"{r['vs_reference']:.2f}x reference")
        if r["vs_torch"]:
            parts.append(f"{r['vs_torch']:.2f}x F.cross_entropy")
        if r["pct_copy"]:
            parts.append(f"{r['pct_copy']:.0f}% of copy")
        lines.append(" ".join(parts))
    return "\n".join(lines)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    size = ap.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="fewer, smaller cases (CPU: under two minutes)")
    size.add_argument("--full", action="store_true",
                      help="the timing schedule of the reports before 2026-12-06 (CPU: 2-3x the default's time)")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    ap.add_argument("--repeat", type=int, default=None, help="timed calls per candidate (median)")
    ap.add_argument("--fwd", action="store_true", help="also time the forward pass alone")
    ap.add_argument("--shape", action="append", default=None, metavar="NxC:dtype:k[:hD|:smooth|:probs|:mix]",
                    help="run only these cases, e.g. 4096x1000:fp32:0.5, 1024x8192:bf16:1:h256 for an "
                         "LM head with hidden size 256, 4096x1000:fp32:1:smooth for soft targets (repeatable)")
    ap.add_argument("--no-trimmed-step", action="store_true", help="leave out the TrimmedStep section (~10-30 s)")
    args = ap.parse_args(argv)
    case_list = None
    if args.shape:
        case_list = []
        for s in args.shape:
            n, c, dt, k, h, soft = re.fullmatch(r"(\d+)x(\d+):(\w+):([\d.]+)(?::h(\d+))?(?::(smooth|probs|mix))?",
                                                s).groups()
            kind = {None: {}, "mix": {"mixture": True}}.get(soft, {"target": soft})
            case_list.append(Case(int(n), int(c), dt, float(k), hidden=int(h or 0), **kind))
    repeat = args.repeat or (5 if args.quick else 10 if args.device == "cpu" else 50)
    modes = ("fwd+bwd", "fwd") if args.fwd else ("fwd+bwd",)
    result = {**stamp(args.device, [Path(sys.argv[0]).name] + list(argv if argv is not None else sys.argv[1:])),
              "schedule": "full" if args.full or args.device != "cpu" else "default",
              **run(args.device, args.quick, repeat, modes, case_list, full=args.full,
                    progress=lambda line: print(line, file=sys.stderr, flush=True),
                    tail_s=0 if args.no_trimmed_step else TRIMMED_STEP_S / (3 if args.quick else 1))}
    text = table(result) + "\n\n" + summary(result, args.device)
    if not args.no_trimmed_step:  # benchmarks/trimmed_step.py: hl.TrimmedStep against a plain step
        result["trimmed_step"] = trimmed_step.run(args.device, args.quick)
        text += "\n\n" + trimmed_step.table(result["trimmed_step"])
    header = f"hardloss_cuda {result['hardloss_cuda']} on {result['device']}, torch {result['torch']}, " \
             f"CUDA {result['cuda']}, {result['date']}, {result['schedule']} schedule"
    print(header + "\n\n" + text)
    args.out.mkdir(parents=True, exist_ok=True)
    slug = re.sub(r"[^a-z0-9]+", "-", result["device"].lower().split(",")[0]).strip("-")
    base = args.out / f"report-{slug}-{result['date']}{'-quick' if args.quick else '-full' if args.full else ''}"
    base.with_suffix(".txt").write_text(header + "\n\n" + text + "\n")
    base.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    plot(result, base.with_suffix(".png"), header)
    print(f"\nwrote {base}.txt, .json, .png")
    return result


if __name__ == "__main__":
    main()
