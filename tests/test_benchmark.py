"""The benchmark script runs and prints its table (numbers are for people, not asserted here:
speed targets live in the benchmark, never in timed unit tests)."""

import subprocess
import sys

import pytest

from kd.sources import SYSTEM_DIRS
from tests.conftest import ROOT


@pytest.mark.slow  # the quick benchmark itself: minutes
@pytest.mark.skipif(not SYSTEM_DIRS["fashion-mnist"].is_dir(),
                    reason="needs the Debian package dataset-fashion-mnist")
def test_quick_benchmark_prints_every_measurement():
    proc = subprocess.run([sys.executable, "benchmarks/throughput.py", "--quick"], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    table = [line for line in proc.stdout.splitlines() if line.startswith("|")]
    assert table[0].startswith("| measurement |")
    for item in ("1. teacher cnn:32-64 training FLOP rate", "1. teacher training: channels-last",
                 "1. teacher step: optimizer.step", "1. per-epoch evaluation", "1. evaluation: batch",
                 "3. the teacher's 10 epochs at its kernel ceiling"):
        assert any(row.startswith(f"| {item}") for row in table), item
    # Every row with a target says whether it was met.
    assert all(row.split("|")[-2].strip() in ("yes", "**no**") for row in table[2:]
               if row.split("|")[-3].strip() not in ("—", ""))
