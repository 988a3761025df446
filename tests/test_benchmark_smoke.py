"""The benchmark command runs end to end on a tiny workload and writes a complete report (timings never asserted)."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_smoke_run_writes_a_complete_report(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    completed = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--smoke", "--output", str(tmp_path / "out"),
         "--cache", str(tmp_path / "cache"), "--threads", "1"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]

    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["problems"] == []
    tasks = [(r["task"], r["kwargs"].get("stack") or r["kwargs"].get("method")) for r in results["records"]]
    for stack in ("ours", "ours_padded", "builtin"):
        assert tasks.count(("train", stack)) == len(results["settings"]["cells"])  # each (stage, dtype) once
    for record in results["records"]:
        result = record["result"]
        if record["task"] == "train":
            assert result["samples"] > 0 and result["useful_tokens"] <= result["padded_tokens"]
            assert all(math.isfinite(loss) for loss in result["losses"])
            assert set(result["phases"]) >= {"data", "vision", "llm forward", "head+loss", "optimizer", "total"}
        if record["task"] == "generate":
            assert result["tokens"] == record["kwargs"]["batch"] * record["kwargs"]["new_tokens"]

    report = (tmp_path / "out" / "report.md").read_text()
    for heading in ("### Training", "### Greedy generation", "### Second chat turn", "### Where a stage-2 step"):
        assert heading in report
    for row in ("| stage2 | fp32 | samples/s |", "| stage1 | fp32 | final loss |", "| stage2 | bf16 | peak RSS",
                "| fp32 | 8 |", "| llm backward |"):
        assert row in report
    assert report in completed.stdout
