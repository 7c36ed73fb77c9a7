"""The benchmark harness runs end to end: about a second per target, JSON at c=4.

Uses the built-in Python load generator, so CI needs no wrk. Figures are not
checked (this is not a benchmark), only that every target produced them.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(60)
def test_bench_harness_produces_numbers(tmp_path: Path) -> None:
    out = tmp_path / "smoke.json"
    argv = [
        sys.executable, "-m", "bench.run", "--loadgen", "python", "--scenario", "chat_json",
        "--concurrency", "4", "--duration", "1", "--warmup", "0", "--out", str(out),
        "--no-render", "--max-seconds", "60",
    ]  # fmt: skip
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=55, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(out.read_text())
    rows = {row["target"]: row for row in result["rows"]}
    assert set(rows) == {"direct", "floor", "aibridge"}
    for target, row in rows.items():
        assert row["scenario"] == "chat_json" and row["concurrency"] == 4
        assert row["requests"] > 0, target
        assert row["errors"] == 0, target
        assert row["cpu_s"] > 0 and row["cpu_us_per_req"] > 0, target
        assert row["rss_mib"] > 0, target
        assert row["p50_ms"] > 0, target
