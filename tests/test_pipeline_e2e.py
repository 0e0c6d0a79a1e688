"""End to end through DVC, as a user runs it: `dvc repro`, `dvc exp run -S T=2`, two queued
experiments over seeds (`-S seed=1,2`) run by `dvc queue start -j 2` and a third (`-S seed=1
-S T=2`) that reuses seed 1's teacher from the run cache, all landing in one MLflow
store at the repo root; then `python -m tools.sweep` over those experiments (mean ± std over
seeds 0, 1, 2), and bad params stopped before any output changes.

The queued experiments also prove the numerics: seed 1's, trained side by side with seed 2's,
has exactly the bytes `dvc repro -f` writes for it alone on three threads (a count no queued stage
takes on a machine of up to 5 cores), with a convolutional teacher (kd/train/fixed_order.py).

The tests share one temporary git repository holding a copy of the project (digits, one epoch per
model) and run in file order: each starts from what the one before left.
"""

import subprocess
import sys
import time
from pathlib import Path

import dvc.api
import mlflow
import pytest

from tests.conftest import PNG_MAGIC, hash_tree
from tests.project_repo import env, make_project_repo, sh
from tests.test_numerics import OUTPUTS, digest
from tools import sweep as sweep_cli

pytestmark = pytest.mark.slow  # every test here drives DVC over the whole pipeline: minutes

def runs(repo: Path) -> list:
    mlflow.set_tracking_uri(f"sqlite:///{repo / 'mlflow.db'}")
    exp = mlflow.get_experiment_by_name("knowledge-distillation")
    return mlflow.search_runs([exp.experiment_id], output_format="list")


def count(all_runs, stage: str) -> int:
    return sum(r.info.run_name == stage for r in all_runs)


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("repo")
    make_project_repo(repo, teacher={"arch": "cnn:8-16", "dropout": 0.3})
    return repo


def pipeline_runs(all_runs) -> dict[str, object]:
    """The pipeline runs (one per execution), by run name."""
    found = [r for r in all_runs if r.data.tags.get("run_type") == "pipeline"]
    assert len({r.info.run_name for r in found}) == len(found)
    return {r.info.run_name: r for r in found}


def stage_run_ids(all_runs, stage: str) -> list[str]:
    return [r.info.run_id for r in all_runs if r.data.tags.get("run_type") == "stage"
            and r.info.run_name == stage]


def run_queue(repo: Path, jobs: int) -> None:
    """`dvc queue start -j N`, then wait until nothing is queued or running; none may fail."""
    sh(repo, "dvc", "queue", "start", "-j", str(jobs))
    deadline = time.time() + 600
    while time.time() < deadline:
        status = sh(repo, "dvc", "queue", "status")
        if "Running" not in status and "Queued" not in status:
            break
        time.sleep(3)
    assert "Failed" not in status, status


def experiment(repo: Path, **params) -> str:
    """The one experiment (not the baseline) whose params have these values."""
    (name,) = [r["Experiment"] for r in dvc.api.exp_show(repo=str(repo))
               if r["Experiment"] and r["typ"] != "baseline"
               and all(r[key] == value for key, value in params.items())]
    return name


def test_repro_then_T_change_then_queue(repo):
    # 1. The whole DAG, every stage recorded once, and one pipeline run named after the commit.
    sh(repo, "dvc", "repro")
    for rel in ("model/teacher.pt", "model/student.pt", "model/soft_targets.pt",
                "model/distilled.pt", "metrics/distilled.json", "report/report.md",
                "report/accuracy.png", "dvc.lock"):
        assert (repo / rel).exists(), rel
    first = runs(repo)
    head = sh(repo, "git", "rev-parse", "--short=7", "HEAD").strip()
    assert sorted(r.info.run_name for r in first) == sorted(
        ["download", "teacher", "student", "soft_targets", "distill", head])
    assert all(r.data.metrics for r in first)
    (repro_run,) = pipeline_runs(first).values()
    assert repro_run.info.run_name == head and repro_run.data.params["T"] == "4.0"
    teacher_id = stage_run_ids(first, "teacher")[0]
    assert repro_run.data.tags["teacher_run_id"] == teacher_id
    assert repro_run.data.tags["distill_run_id"] == stage_run_ids(first, "distill")[0]
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-qm", "baseline run")

    # The metrics files hold only what is compared: retraining with the same params changes none.
    sh(repo, "dvc", "repro", "-f", "-s", "distill")
    assert sh(repo, "dvc", "metrics", "diff", "--json").strip() in ("{}", "")

    # 2. A new temperature reruns only distill and report; the teacher is untouched.
    teacher_bytes = (repo / "model/teacher.pt").read_bytes()
    teacher_mtime = (repo / "model/teacher.pt").stat().st_mtime_ns
    out = sh(repo, "dvc", "exp", "run", "-S", "T=2")
    assert "Running stage 'distill'" in out and "Running stage 'report'" in out
    for stage in ("download", "teacher", "student", "soft_targets"):
        assert f"Running stage '{stage}'" not in out
    assert (repo / "model/teacher.pt").read_bytes() == teacher_bytes
    assert (repo / "model/teacher.pt").stat().st_mtime_ns == teacher_mtime
    second = runs(repo)
    assert count(second, "teacher") == 1 and count(second, "distill") == 3
    newest = max((r for r in second if r.info.run_name == "distill"),
                 key=lambda r: r.info.start_time)
    exp_name = newest.data.tags["dvc.exp_name"]
    assert newest.data.params["T"] == "2.0" and exp_name
    # The experiment's pipeline run names the distill run it made and the (older) teacher run.
    t2 = pipeline_runs(second)[exp_name]
    assert t2.data.params["T"] == "2.0" and t2.data.tags["distill_run_id"] == newest.info.run_id
    assert t2.data.tags["teacher_run_id"] == teacher_id

    # 3. Seeds as an axis: two queued experiments (seeds 1 and 2), run two at a time, retrain
    # every model with their seed and land in the same store.
    sh(repo, "dvc", "exp", "run", "--queue", "-S", "seed=1,2")
    run_queue(repo, jobs=2)
    third = runs(repo)
    temps = sorted(r.data.params["T"] for r in third if r.info.run_name == "distill")
    assert temps == ["2.0", "4.0", "4.0", "4.0", "4.0"]
    teachers = {r.data.params["seed"]: r.info.run_id for r in third if r.info.run_name == "teacher"}
    assert sorted(teachers) == ["0", "1", "2"]  # one teacher per seed, the baseline's reused
    piped = pipeline_runs(third)
    queued = {r.data.params["seed"]: r for name, r in piped.items() if name not in (head, exp_name)}
    assert sorted(queued) == ["1", "2"]
    distill_ids = set(stage_run_ids(third, "distill"))
    for seed, r in queued.items():
        assert r.data.tags["dvc.exp_name"] == r.info.run_name
        assert r.data.tags["teacher_run_id"] == teachers[seed]
        assert r.data.tags["distill_run_id"] in distill_ids

    # A queued experiment whose teacher, student and soft targets an earlier one already made
    # (same params and seed) takes them from DVC's run cache: only distill and report run.
    sh(repo, "dvc", "exp", "run", "--queue", "-S", "seed=1", "-S", "T=2")
    run_queue(repo, jobs=1)
    fourth = runs(repo)
    for stage in ("teacher", "student", "soft_targets"):
        assert count(fourth, stage) == count(third, stage), stage
    assert count(fourth, "distill") == count(third, "distill") + 1
    piped = pipeline_runs(fourth)
    (reused,) = [r for name, r in piped.items() if r.data.params["seed"] == "1"
                 and r.data.params["T"] == "2.0"]
    assert reused.data.tags["teacher_run_id"] == teachers["1"]


    # 4. The README's terminal view: the required columns in 120 characters, the same numbers
    # as each experiment's pipeline run.
    table = sh(repo, sys.executable, "-m", "tools.compare").splitlines()
    assert table[0].split() == ["Experiment", "dataset", "preset", "seed", "loss", "teacher%",
                                "student%", "distilled%", "val%"]
    assert max(len(line) for line in table) <= 120
    lines = {line.split()[0]: line.split() for line in table[2:]}
    for name, r in piped.items():
        if name == head:
            continue  # the commit's row shows the forced rerun's files; same numbers, other run
        row = lines[name]
        assert row[4:7] == ["kd", f"T={float(r.data.params['T']):g}", "a=0.9"]
        assert row[-1] == f"{100 * r.data.metrics['distilled_val_acc']:.2f}%"
        assert row[-2] == f"{100 * r.data.metrics['distilled_test_acc']:.2f}%"
        assert row[-4] == f"{100 * r.data.metrics['teacher_test_acc']:.2f}%"


def test_sweep_summarises_the_queued_experiments(repo, tmp_path, capsys):
    """`python -m tools.sweep` over the experiments the test above made: T = 4 with seeds 0 (the
    baseline commit), 1 and 2 (queued) as one setting, mean ± std over the three; T = 2 with seed
    0 (the workspace's experiment) and 1 (queued, its teacher from the run cache). The workspace
    equals the first T = 2 experiment and is left out."""
    if not list((repo / ".git" / "refs" / "exps").rglob("*")):
        pytest.skip("needs the experiments of test_repro_then_T_change_then_queue")
    sweep_cli.main(["--repo", str(repo), "--out", str(tmp_path / "sweep")])
    out = capsys.readouterr().out
    md = (tmp_path / "sweep" / "sweep.md").read_text()
    (three_seeds,) = [line for line in md.splitlines() if line.startswith("| digits | — | 0.9 | 4 |")]
    assert three_seeds.startswith("| digits | — | 0.9 | 4 | 0, 1, 2 | ") and " ± " in three_seeds
    assert "| digits | — | 0.9 | 2 | 0, 1 | " in md
    assert "| workspace |" not in md
    assert md.count("| digits |") == 1 + 2 + 5  # the choice on validation, two settings, five experiments
    assert md in out
    assert (tmp_path / "sweep" / "accuracy_vs_T.png").read_bytes()[:8] == PNG_MAGIC


def test_another_loss_reruns_only_distill_and_report(repo, tmp_path, capsys):
    """`dvc exp run -S distill.loss=dkd` after the experiments above: the teacher, student and soft
    targets stay; the experiment is its own pipeline run holding the loss and its settings; and
    `tools.sweep --losses` compares it with kd."""
    if not list((repo / ".git" / "refs" / "exps").rglob("*")):
        pytest.skip("needs the experiments of test_repro_then_T_change_then_queue")
    before = runs(repo)
    out = sh(repo, "dvc", "exp", "run", "-S", "distill.loss=dkd")
    assert "Running stage 'distill'" in out and "Running stage 'report'" in out
    for stage in ("download", "teacher", "student", "soft_targets"):
        assert f"Running stage '{stage}'" not in out
    after = runs(repo)
    assert count(after, "distill") == count(before, "distill") + 1
    assert count(after, "teacher") == count(before, "teacher")
    (dkd,) = [r for r in pipeline_runs(after).values() if r.data.params.get("loss") == "dkd"]
    # this project's conf/ holds tests.conftest.tiny_params' knobs (dkd_beta 8), not the shipped ones
    assert {k: v for k, v in dkd.data.params.items() if k.startswith(("dkd_", "ls_", "dist_"))
            or k in ("T", "alpha")} == {"dkd_ce": "1.0", "dkd_alpha": "1.0", "dkd_beta": "8.0",
                                        "dkd_T": "4.0", "dkd_warmup": "0.0833"}
    report = (repo / "report/report.md").read_text()
    assert "digits, dkd (ce 1, alpha 1, beta 8, T 4, warmup 0.0833), seed 0" in report
    sweep_cli.main(["--repo", str(repo), "--out", str(tmp_path), "--losses"])
    md = (tmp_path / "losses.md").read_text()
    assert "| digits | KD (Hinton et al. 2015) |" in md and "| digits | DKD (Zhao et al. 2022) | 1 |" in md
    assert (tmp_path / "losses.png").read_bytes()[:8] == PNG_MAGIC


def outputs_hash(repo: Path) -> dict:
    return {folder: hash_tree(repo / folder) for folder in ("model", "metrics", "plots", "report")}


LAUNCH_REFUSED = "params.yaml: launch must be python or a torchrun command"


@pytest.mark.parametrize("how,message", [
    ("append Temp: 8 to params.yaml, dvc repro", "params.yaml: Temp is not a known key"),
    ("dvc exp run -S T=0", "params.yaml: T must be a number in [0.1, 100] (got 0.0)"),
    ("dvc exp run -S T=1e8", "params.yaml: T must be a number in [0.1, 100] (got 100000000.0)"),
    ("dvc exp run -S seed=18446744073709551616",
     "params.yaml: seed must be an integer in [0, 2**63 - 1] (got 18446744073709551616)"),
    ("dvc exp run -S data.split_seed=18446744073709551616",
     "params.yaml: data.split_seed must be an integer in [0, 2**64 - 1]"),
    (f"dvc exp run -n {'x' * 300} -S T=3", f"experiment name '{'x' * 40}...' (DVC_EXP_NAME): it is "
     "300 bytes long; DVC stores it as a git ref file, whose name may hold 250 bytes"),
    ("dvc exp run -S launch='python $(touch pwned)'", LAUNCH_REFUSED),
    ("dvc exp run -S launch='python; touch pwned'", LAUNCH_REFUSED),
    ("conf/config.yaml launch: python `touch pwned`, dvc exp run", LAUNCH_REFUSED),
])
def test_bad_params_stop_dvc_before_it_touches_any_output(repo, how, message):
    """The `check` stage lists the whole params.yaml and every stage depends on it: a typo no
    stage reads is caught, and DVC stops before deleting the outputs of the stage it would run,
    or running any command a param holds (`launch` is pasted into the stages' shell commands)."""
    if not (repo / "model/distilled.pt").exists():
        sh(repo, "dvc", "repro")
    before = outputs_hash(repo)
    if how.startswith("append"):
        with open(repo / "params.yaml", "a") as fh:
            fh.write("Temp: 8\n")
        cmd = ["dvc", "repro"]
    elif how.startswith("conf/"):
        conf = repo / "conf" / "config.yaml"
        conf.write_text(conf.read_text().replace("launch: python", "launch: python `touch pwned`"))
        cmd = ["dvc", "exp", "run"]
    elif how.startswith("dvc exp run -n "):
        cmd = how.split()
    else:
        cmd = ["dvc", "exp", "run", "-S", how.removeprefix("dvc exp run -S ")]
    proc = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, timeout=600,
                          env=env())
    sh(repo, "git", "checkout", "params.yaml", "conf/config.yaml")
    assert proc.returncode != 0
    assert f"error: {message}" in proc.stdout + proc.stderr
    assert "Running stage 'check'" in proc.stdout + proc.stderr
    assert outputs_hash(repo) == before
    assert not list(repo.rglob("pwned"))


def test_a_queued_experiment_has_the_bytes_of_one_run_alone_on_three_threads(repo):
    """Seed 1's experiment, queued by the first test and trained beside seed 2's (`-j 2`: each
    stage on its share of the cores), rerun here by `dvc repro -f` alone on three threads: every
    model, metric and plot the same bytes. Last in the file: it leaves the workspace applied."""
    if not list((repo / ".git" / "refs" / "exps").rglob("*")):
        pytest.skip("needs the experiments of test_repro_then_T_change_then_queue")
    sh(repo, "dvc", "exp", "apply", experiment(repo, seed=1, T=4))
    queued = digest(repo, OUTPUTS)
    alone = subprocess.run(["dvc", "repro", "-f"], cwd=repo, capture_output=True, text=True,
                           timeout=600, env={**env(), "OMP_NUM_THREADS": "3"})
    assert alone.returncode == 0, alone.stdout + alone.stderr
    assert "Running stage 'teacher'" in alone.stdout and "Running stage 'distill'" in alone.stdout
    assert digest(repo, OUTPUTS) == queued
