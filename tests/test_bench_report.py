"""benchmarks/report.py end to end on a tiny case: the table, the JSON record and the plot,
with speed-ups computed from times of the same run."""

import json
import re
from pathlib import Path

import pytest

from ._scripts import load_script

pytest.importorskip("matplotlib")


def _report():
    return load_script("benchmarks", "report")


def test_report_writes_table_json_and_plot(tmp_path, capsys):
    result = _report().main(["--device", "cpu", "--out", str(tmp_path), "--repeat", "2", "--fwd", "--no-trimmed-step",
                             "--shape", "64x37:fp32:0.5", "--shape", "32x300:bf16:1", "--shape", "32x300:fp32:1:h16",
                             "--shape", "48x20:fp32:0.5:smooth", "--shape", "48x20:fp32:1:probs"])
    out = capsys.readouterr().out
    (txt,), (js,), (png,) = (list(tmp_path.glob(f"report-*.{ext}")) for ext in ("txt", "json", "png"))
    assert png.stat().st_size > 1000 and "64x37 fp32 k=0.5" in txt.read_text() and "vs torch" in out
    assert "48x20 fp32 k=0.5 smooth=0.1" in txt.read_text() and "48x20 fp32 k=1 probs" in txt.read_text()
    record = json.loads(js.read_text())
    assert record["torch"] and record["device"] and record["build_info"]["runtime_torch"]
    rows = record["rows"]
    assert {r["mode"] for r in rows} == {"fwd", "fwd+bwd"}
    assert {"reference", "torch"} <= {r["backend"] for r in rows}
    for r in rows:
        same = {x["backend"]: x for x in rows if x["case"] == r["case"] and x["mode"] == r["mode"]}
        assert r["ms"] > 0 and r["vs_reference"] == pytest.approx(same["reference"]["ms"] / r["ms"])
        assert r["vs_torch"] == pytest.approx(same["torch"]["ms"] / r["ms"])
        backward = r["mode"] == "fwd+bwd"
        floor = (2 if backward else 1) * r["N"] * r["C"] * (4 if r["dtype"] == "fp32" else 2)
        assert r["gbps"] == pytest.approx(floor / (r["ms"] * 1e-3) / 1e9)
    assert result["rows"] == rows
    lm_head = {r["backend"] for r in rows if r["hidden"] == 16}
    assert {"reference", "torch"} <= lm_head and "32x300 fp32 k=1 lm-head D=16" in txt.read_text()
    assert record["schedule"] == "default" and all(r["calls"] >= 1 for r in rows)


def _calls_of(schedule_module, paces, full, device="cpu", repeat=10):
    """How many calls each fake candidate gets, and how many of them are timed."""
    import time

    calls = {name: 0 for name in paces}

    def step_of(name):
        def step(x):
            calls[name] += 1
            time.sleep(paces[name])
        return step

    samples = schedule_module._timed_calls({n: step_of(n) for n in paces}, [None], device, repeat, full)
    return calls, {n: len(s) for n, s in samples.items()}


def test_default_schedule_spends_fewer_calls_on_long_ones(monkeypatch):
    report = _report()
    monkeypatch.setattr(report, "LONG_S", 0.01)
    monkeypatch.setattr(report, "SLOW_S", 0.05)
    paces = {"cpu": 0.0, "torch": 0.02, "reference": 0.06}
    calls, timed = _calls_of(report, paces, full=False)
    assert timed == {"cpu": 9, "torch": 3, "reference": 1}  # repeat 10: 3 a round; long: 1 a round; slow: once
    assert calls == {"cpu": 9 + 4, "torch": 3 + 1, "reference": 1}  # warm-ups: 1 + 1 + 1 + 1; the first call
    # a slow candidate other than the reference is never timed by its first call alone (it may compile there)
    calls, timed = _calls_of(report, {"cpu": 0.06, "reference": 0.0}, full=False)
    assert timed == {"cpu": 3, "reference": 9} and calls["cpu"] == 4
    # the LM head's reference-linear is the reference too: a slow first call stands for its time
    calls, timed = _calls_of(report, {"torch-chunked": 0.06, "reference-linear": 0.06}, full=False)
    assert timed == {"torch-chunked": 3, "reference-linear": 1} and calls["reference-linear"] == 1
    # --full, and any GPU run: the schedule of the earlier reports, whatever the pace
    for kw in ({"full": True}, {"full": False, "device": "cuda"}):
        if kw.get("device") == "cuda":
            monkeypatch.setattr(report.common, "sync", lambda device: None)
            monkeypatch.setattr(report.common, "time_samples", _cpu_clock(report.common.time_samples))
        calls, timed = _calls_of(report, paces, **kw)
        ref = 9 if kw.get("device") == "cuda" else 3  # the CPU's reference: repeat / 9 a round
        assert timed == {"cpu": 9, "torch": 9, "reference": ref}
        assert calls == {"cpu": 9 + 5, "torch": 9 + 5, "reference": ref + (5 if ref == 9 else 3)}


def _cpu_clock(time_samples):
    def timed(step, xs, device, warmup, repeat):
        return time_samples(step, xs, "cpu", warmup, repeat)
    return timed


def test_progress_lines_and_full_flag(tmp_path, capsys):
    report = _report()
    report.main(["--device", "cpu", "--out", str(tmp_path), "--repeat", "3", "--full",
                 "--shape", "64x37:fp32:0.5", "--shape", "32x30:fp32:1"])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("[")]
    assert len(lines) == 2 and lines[0].startswith("[ 1/2] 64x37 fp32 k=0.5") and lines[1].startswith("[ 2/2]")
    # the estimate itself: test_estimate_of_the_time_left (here the TrimmedStep section is still to run)
    assert all("page faults" in ln and re.search(r"about \d+\.\d min left$", ln) for ln in lines)
    (js,) = tmp_path.glob("report-*-full.json")
    assert json.loads(js.read_text())["schedule"] == "full"
    with pytest.raises(SystemExit):
        report.main(["--quick", "--full"])


def test_mixture_input_is_simple_mixture_built_in_place():
    import sys

    import torch

    import hardloss_cuda as H

    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
    import common

    _, _, W = common.make_inputs(common.Case(16, 37, mixture=True), "cpu", copies=1)
    A = W.clone().fill_diagonal_(0) / 0.2  # the similarity it was built from (zero diagonal)
    assert torch.allclose(A.sum(1), torch.ones(37)) and torch.all(W.diagonal() == 0.8)
    torch.testing.assert_close(W, H.mcel.simple_mixture(A, 0.2), rtol=0, atol=1e-7)


def test_estimate_of_the_time_left():
    """time_left scales the predictions still to come by how the parts done compare with theirs;
    predicted_s counts the calls the default schedule makes (a slow reference: one)."""
    report = _report()
    assert report.time_left(30.0, [10.0, 20.0, 30.0, 5.0], 2) == pytest.approx(35.0)  # ran at 1x
    assert report.time_left(60.0, [10.0, 20.0, 30.0, 5.0], 2) == pytest.approx(70.0)  # at half speed
    assert report.time_left(9.0, [1.0, 2.0], 2) == 0.0
    assert report.time_left(0.0, [0.0, 2.0], 1) == 0.0  # nothing measured yet: no division by zero
    small, big = report.Case(64, 37), report.Case(4096, 32000)
    names = ["cpu", "reference", "torch"]
    p = {n: report._pace_s(big, n) for n in names}
    assert p["reference"] >= report.SLOW_S and report.LONG_S <= p["cpu"] < report.SLOW_S
    assert report.predicted_s(big, names) == pytest.approx(
        report.CASE_S + report.NS_INPUT * 3 * 4096 * 32000 * 1e-9 + p["reference"] + 4 * (p["cpu"] + p["torch"]))
    assert report._calls(report._pace_s(small, "reference"), "reference", False, 10) == 13
    assert report._calls(report._pace_s(small, "cpu"), "cpu", True, 10) == 14  # --full: 3 warm-ups, 3 x 3 timed
    assert report._calls(p["reference"], "reference", True, 10) == 6
    # bigger cases are predicted to take longer (not always harder ones: a reference call over
    # SLOW_S is made once, one under it four times)
    assert report.predicted_s(big, names) > report.predicted_s(report.Case(8192, 1000), names) > \
        report.predicted_s(small, names)
