"""The benchmark command runs end to end on tiny workloads, on the CPU through its `--device` path, and writes a
complete report: every part's rows, the same results from both sides of each comparison (timings never asserted)."""

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
        [sys.executable, "-m", "benchmarks.run", "--smoke", "--device", "cpu", "--output", str(tmp_path / "out"),
         "--cache", str(tmp_path / "cache"), "--threads", "1"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]

    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["problems"] == []
    tasks = [(r["task"], r["kwargs"].get("stack") or r["kwargs"].get("method")) for r in results["records"]]
    for stack in ("ours", "ours_padded", "builtin"):
        assert tasks.count(("train", stack)) == len(results["settings"]["cells"])  # each (stage, dtype) once
    for stack in ("ours", "ours_dense", "ours_padded", "builtin"):
        assert tasks.count(("train_7b", stack)) == len(results["settings"]["seven_b"]["cells"])
    assert results["machine"]["cpu"] and "bf16_flags" in results["machine"]
    for record in results["records"]:
        result = record["result"]
        if record["task"] == "train":
            assert result["samples"] > 0 and result["useful_tokens"] <= result["padded_tokens"]
            assert all(math.isfinite(loss) for loss in result["losses"])
            assert set(result["phases"]) >= {"data", "vision", "llm forward", "head+loss", "optimizer", "total"}
        if record["task"] == "generate":
            assert result["tokens"] == record["kwargs"]["batch"] * record["kwargs"]["new_tokens"]
            assert result["weight_bytes"] > 0 and len(result["prefill_seconds"]) == len(result["seconds"])
        if record["task"] == "train_7b":  # the 7B-proportioned workload: 576-token images shrunk, same recipe
            assert result["useful_tokens"] <= result["padded_tokens"] and all(map(math.isfinite, result["losses"]))
        if record["task"] == "bandwidth":
            assert result["bytes_per_s"] > 0
    evaluations = {r["kwargs"]["method"]: r["result"] for r in results["records"] if r["task"] == "evaluate"}
    assert evaluations["one_at_a_time"]["answers"] == evaluations["shared"]["answers"]  # identical greedy answers
    assert evaluations["shared"]["images_encoded"] * 3 == evaluations["one_at_a_time"]["images_encoded"]
    served = [r for r in results["records"] if r["task"] == "serve"]
    assert {(r["kwargs"]["clients"], r["kwargs"]["max_batch"]) for r in served} == {(1, 1), (1, 4), (4, 1), (4, 4)}
    for clients in (1, 4):
        one, batched = (next(r["result"] for r in served if r["kwargs"]["clients"] == clients
                             and r["kwargs"]["max_batch"] == b) for b in (1, 4))
        assert one["texts"] == batched["texts"] and len(one["latencies"]) == one["requests"]

    report = (tmp_path / "out" / "report.md").read_text()
    for heading in ("### 7B proportions", "### Evaluation throughput", "### Server throughput", "### Training",
                    "### Greedy generation", "### Second chat turn", "### Where a stage-2 step"):
        assert heading in report
    for row in ("| 7B proportions: ", "| evaluation throughput: ", "| server throughput: ",
                "| stage2 | fp32 | samples/s |", "| stage1 | fp32 | final loss |", "| stage2 | bf16 | peak RSS",
                "| fp32 | 8 |", "| llm backward |", "| questions/s |", "| 4 | ", "bf16 instructions: "):
        assert row in report
    assert "NOT identical" not in report
    assert report in completed.stdout
