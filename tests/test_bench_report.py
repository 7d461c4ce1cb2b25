"""benchmarks/report.py end to end on a tiny case: the table, the JSON record and the plot,
with speed-ups computed from times of the same run."""

import importlib.util
import json
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")


def _report():
    path = Path(__file__).parents[1] / "benchmarks" / "report.py"
    spec = importlib.util.spec_from_file_location("bench_report", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
