"""benchmarks/gpu_check.py in its dry mode: the GPU check's code paths (the tests stage, the matmul
peaks, gpt2lab against transformers, the speedrun recipe, HellaSwag timing, the table and JSON) on
the CPU with `micro`, so the script a GPU session runs cannot rot in between."""

import json
import subprocess
import sys

import pytest
from conftest import REPO_ROOT


@pytest.mark.slow
def test_gpu_check_dry_run_fills_every_stage(tmp_path):
    r = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--dry", "--out", str(tmp_path)], cwd=REPO_ROOT,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rows = json.loads((tmp_path / "gpu_check.json").read_text())["rows"]
    assert {row["stage"] for row in rows} == {"tests", "peaks", "hellaswag", "throughput", "speedrun"}
    assert all(row["result"] in ("ok", "passed") for row in rows), rows
    assert sum(row["stage"] == "tests" for row in rows) >= 2  # one row per test, from pytest's junit XML
    models = [row["case"].split(" micro")[0] for row in rows if row["stage"] in ("throughput", "speedrun")]
    assert models.count("gpt2lab") == 2 and models.count("hf") == 2 and "gpt2lab speedrun" in models
    ours = [row for row in rows if row["case"].startswith("gpt2lab micro")]
    assert all(row["figures_json"]["vs_peer"] > 0 and row["figures_json"]["peak_mem_bytes"] > 0 for row in ours)
    table = r.stdout
    assert table.count("\n| ") == len(rows) + 1 and "0 failed" in table  # header + one line per row
