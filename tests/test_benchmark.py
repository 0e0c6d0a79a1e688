"""The benchmark script runs and prints its table (numbers are for people, not asserted here:
speed targets live in the benchmark, never in timed unit tests)."""

import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.common import composed_params
from kd import datasets
from tests.conftest import ROOT, tiny_params, write_params


@pytest.mark.slow  # the quick benchmark itself: minutes
@pytest.mark.skipif(not Path(datasets.get("fashion-mnist").system_dir).is_dir(),
                    reason="needs the Debian package dataset-fashion-mnist")
def test_quick_benchmark_prints_every_measurement():
    proc = subprocess.run([sys.executable, "benchmarks/throughput.py", "--quick"], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    table = [line for line in proc.stdout.splitlines() if line.startswith("|")]
    assert table[0].startswith("| measurement |")
    teacher = composed_params()["teacher"]["arch"]  # the default teacher, which it measures
    for item in (f"1. teacher {teacher} training FLOP rate",
                 "1. teacher training: as the stages build it", "1. teacher step: optimizer.step",
                 "1. per-epoch evaluation", "1. evaluation: batch",
                 "3. the teacher's 10 epochs at its kernel ceiling"):
        assert any(row.startswith(f"| {item}") for row in table), item
    # Every row with a target says whether it was met.
    assert all(row.split("|")[-2].strip() in ("yes", "**no**") for row in table[2:]
               if row.split("|")[-3].strip() not in ("—", ""))


@pytest.mark.slow  # three processes, each importing torch and training a few batches
def test_numerics_benchmark_compares_portable_with_native_side_by_side():
    proc = subprocess.run([sys.executable, "-m", "benchmarks.numerics", "--batches", "2",
                           "--repeats", "2"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "native: " in proc.stderr and "ATen dispatch AVX2" in proc.stderr  # portable's pin
    rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ") for line in proc.stdout.splitlines()
            if line.startswith("| ") and " step" in line}
    default = composed_params()  # the default run's architectures, which it measures
    assert set(rows) == {f"teacher ({default['teacher']['arch']}) step: portable vs native",
                         "teacher step: portable vs its pins alone (the fixed-order layers' share)",
                         "teacher step: pins alone vs native (the AVX2 dispatch pins' share)",
                         f"student ({default['student']['arch']}) step: portable vs native"}
    for cells in rows.values():
        assert float(cells[3].split()[0]) > 0  # a measured ratio, median of the rounds


@pytest.mark.slow  # two processes training beside spinning neighbours
def test_contention_benchmark_measures_both_wait_policies_beside_a_neighbour():
    proc = subprocess.run([sys.executable, "-m", "benchmarks.contention", "--batches", "2",
                           "--repeats", "1", "--neighbours", "1"], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "stage: " in proc.stderr and "OMP_WAIT_POLICY PASSIVE" in proc.stderr
    assert "OMP_WAIT_POLICY unset" in proc.stderr  # the default contender runs without it
    rows = [line.split(" | ") for line in proc.stdout.splitlines() if line.startswith("| ")][1:]
    assert [r[0].lstrip("| ") for r in rows] == [
        f"{role}{part}" for role in ("teacher", "student") for part in (
            " alone, samples/s: stage vs OpenMP's default",
            " beside 1 busy: stage, share of its fair rate",
            " beside 1 busy: OpenMP default, share of its fair rate")]
    assert rows[1][4] == ">= 0.8" and float(rows[1][3].split()[0]) > 0


@pytest.mark.slow  # every stage as a process, on digits: a minute
def test_pipeline_benchmark_times_every_stage_and_splits_where_the_time_goes(tmp_path):
    params = write_params(tmp_path, tiny_params())
    proc = subprocess.run([sys.executable, "-m", "benchmarks.pipeline", "--params", str(params)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    cells = {line.split(" | ")[0].lstrip("| "): line.split(" | ")
             for line in proc.stdout.splitlines() if line.startswith("| ")}
    stages = [f"stage {s}: wall, peak memory" for s in ("check", "download", "teacher", "student",
                                                         "soft_targets", "distill", "report")]
    walls = [float(cells[s][1].split()[0]) for s in stages]
    assert all(w > 0 for w in walls)
    assert all(0.01 < float(cells[s][1].split()[2]) < 8 for s in stages)  # GiB
    total = cells["all stages of the default dvc repro"]
    assert float(total[1].split()[0]) == pytest.approx(sum(walls), abs=1)
    assert total[4] == "<= 300 s"
    parts = [name for name in cells if name.startswith(("training steps", "per-epoch",
                                                        "final scoring", "logging the models",
                                                        "start-up", "the rest"))]
    assert len(parts) == 6
    shares = [int(cells[name][3].rstrip("%")) for name in parts]
    assert 95 <= sum(shares) <= 105  # the parts add up to the whole (rounded percentages)


def test_a_ratio_row_is_the_median_of_per_round_ratios_and_judges_its_target():
    """benchmarks/common.ratio_row, on numbers fixed here: what every table row is built from."""
    from benchmarks.common import ratio_row, table

    # rounds: pipeline 10, 12, 30 samples/s against 5, 4, 10: per-round ratios 2, 3, 3
    row = ratio_row("speed-up", [10, 12, 30], [5, 4, 10], "samples/s", target=2.5)
    assert (row.pipeline, row.reference) == ("12 samples/s", "5 samples/s")  # medians of each side
    assert row.ratio == "3.00 (2.00–3.00)" and row.met is True and row.target == ">= 2.5"
    slower = ratio_row("time", [3.0, 3.3], [1.0, 1.0], "s", target=2.0, at_least=False)
    assert slower.ratio.startswith("3.15") and slower.met is False and slower.target == "<= 2"
    assert ratio_row("no target", [1.0], [2.0], "s").met is None
    lines = table([row, slower]).splitlines()
    assert lines[2].endswith("| >= 2.5 | yes |") and lines[3].endswith("| <= 2 | **no** |")


def test_the_cost_benchmark_tables_the_three_checkpoints(workdir, capsys, monkeypatch):
    """benchmarks/cost.py over a digits pipeline's checkpoints: one row each, whose size and
    FLOPs are the metrics files' (the stages' own measurement)."""
    from benchmarks import cost
    from tests.conftest import distill_with, metrics_file, run_stage

    monkeypatch.setenv("KD_TRACKING", "off")
    distill_with(workdir)
    run_stage("student")
    cost.main(["--models", str(workdir / "model"), "--repeats", "1"])
    out = capsys.readouterr().out
    rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ") for line in out.splitlines()
            if line.startswith("| ") and "`" in line}
    assert set(rows) == {"teacher", "student baseline", "distilled student"}
    for label, name in (("teacher", "teacher"), ("student baseline", "student"),
                        ("distilled student", "distilled")):
        m = metrics_file(workdir, name)
        assert rows[label][2] == f"{m['params']:,}"
        assert rows[label][3] == f"{m['flops_per_image'] / 1e6:.2f} M"
        assert float(rows[label][5]) > 0 and float(rows[label][6].replace(",", "")) > 0
    assert "The distilled student runs" in out
