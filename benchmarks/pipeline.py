"""The default `dvc repro`'s stage time, and where it goes beyond the training steps.

Runs every stage of the pipeline as DVC would (`python -m stages.<name>`, in DAG order) on the
default params of the code measured, in a temporary copy of the project with its own MLflow
store (the project's data/, model/ and mlflow.db are left alone; Fashion-MNIST comes from the
Debian package, as `bash run.sh pipeline` installs it). With `--against REV`, the same stages of
another commit run too, in turns with this tree's (stage by stage), so that a load that comes and
goes slows both alike, and each stage's time is compared. DVC's own bookkeeping (hashing, the
lock file) is not a stage and is not counted.

Where the time goes, from each stage's MLflow run: the training steps (the epochs' own clocks),
the per-epoch evaluation (validation and test after every epoch), the final scoring with the
cost measurement (kd/train/cost.py), the logged model (MLflow's log_model), start-up (importing
torch, MLflow and the stage: `python -m stages.<name> --help`, timed apart) and the rest (data
loading, the run's bookkeeping, checkpoints, the report's figures).

Run: python -m benchmarks.pipeline [--against REV] [--params FILE]; progress on stderr, the
machine and the tables on stdout. About 5 minutes on 2 idle cores, plus the other commit's time.
`--params` runs both trees on the given params file instead of their own params.yaml.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
from pathlib import Path

from benchmarks.common import (
    GIB,
    PYTHON,
    ROOT,
    Child,
    Row,
    child_env,
    machine_lines,
    progress,
    run_child,
    table,
)
from benchmarks.overheads import copy_project

STAGES = ("check", "download", "teacher", "student", "soft_targets", "distill", "report")
TRAINING = ("teacher", "student", "distill")
TARGET_SECONDS = 300.0  # the default run's stages, on 2 idle cores


def checkout(rev: str | None, folder: Path, params: Path | None) -> Path:
    """This working tree (rev None) or a commit's tree, in `folder`, without earlier outputs;
    with `params`, that file as its params.yaml."""
    folder.mkdir()
    if rev is None:
        copy_project(folder)
    else:
        archive = subprocess.run(["git", "archive", rev], cwd=ROOT, capture_output=True,
                                 check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    if params is not None:
        shutil.copyfile(params, folder / "params.yaml")
    return folder


def run_sides(sides: dict[str, Path]) -> dict[str, dict[str, Child]]:
    """Every stage of every side, stage by stage in turns: each stage process's wall time and
    peak memory, per side."""
    done: dict[str, dict[str, Child]] = {side: {} for side in sides}
    for stage in STAGES:
        for side, folder in sides.items():
            env = child_env(MLFLOW_TRACKING_URI=f"sqlite:///{folder / 'mlflow.db'}")
            progress(f"{side}: stage {stage}")
            done[side][stage] = run_child([PYTHON, "-m", f"stages.{stage}"], folder, env)
            progress(f"{side}: stage {stage} took {done[side][stage].seconds:.1f} s")
    return done


def parts(folder: Path) -> dict[str, float]:
    """Seconds of each part of the training stages, from their MLflow runs in `folder`."""
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    totals = {"steps": 0.0, "epoch_eval": 0.0, "evaluate": 0.0, "log_model": 0.0}
    for stage in TRAINING:
        (run,) = client.search_runs(
            [e.experiment_id for e in client.search_experiments()],
            filter_string=f"attributes.run_name = '{stage}'", max_results=1)
        m = run.data.metrics
        steps = sum(h.value for h in client.get_metric_history(run.info.run_id,
                                                              "epoch/epoch_seconds"))
        totals["steps"] += steps
        totals["epoch_eval"] += m["train_seconds"] - steps
        totals["evaluate"] += m.get("evaluate_seconds", 0.0)
        totals["log_model"] += m.get("log_model_seconds", 0.0)
        totals[f"steps_{stage}"] = steps
    return totals


def startup(folder: Path) -> float:
    """Start-up of all the stages: each one's imports, timed as `--help` (the fastest of 2)."""
    env = child_env()
    return sum(min(run_child([PYTHON, "-m", f"stages.{s}", "--help"], folder, env).seconds
                   for _ in range(2)) for s in STAGES)


def breakdown(walls: dict[str, float], p: dict[str, float], start: float) -> list[Row]:
    total = sum(walls.values())
    known = p["steps"] + p["epoch_eval"] + p["evaluate"] + p["log_model"] + start
    share = lambda s: f"{s / total:.0%}"  # noqa: E731
    rows = [Row(f"training steps ({', '.join(TRAINING)}: " + " / ".join(
                f"{p[f'steps_{s}']:.0f}" for s in TRAINING) + " s)",
                f"{p['steps']:.0f} s", ratio=share(p["steps"])),
            Row("per-epoch evaluation (validation and test after every epoch)",
                f"{p['epoch_eval']:.0f} s", ratio=share(p["epoch_eval"])),
            Row("final scoring and the cost measurement (kd/train/cost.py)", f"{p['evaluate']:.0f} s",
                ratio=share(p["evaluate"])),
            Row("logging the models (MLflow log_model)", f"{p['log_model']:.0f} s",
                ratio=share(p["log_model"])),
            Row(f"start-up: imports of the {len(STAGES)} stage processes", f"{start:.0f} s",
                ratio=share(start)),
            Row("the rest (data loading, runs' bookkeeping, checkpoints, soft targets, report)",
                f"{total - known:.0f} s", ratio=share(total - known))]
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.partition("\n")[0], epilog=__doc__.partition(
        "\n")[2], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--against", metavar="REV", help="also run a commit's stages, in turns, and "
                    "compare each stage's time (e.g. the commit before a speed-up)")
    ap.add_argument("--params", type=Path, help="a params file for both trees (default: each "
                    "tree's own params.yaml)")
    args = ap.parse_args(argv)

    import torch

    with tempfile.TemporaryDirectory() as tmp:
        sides = {"this tree": checkout(None, Path(tmp) / "this", args.params)}
        if args.against:
            sides[args.against] = checkout(args.against, Path(tmp) / "against", args.params)
        done = run_sides(sides)
        start = startup(sides["this tree"])
        p = parts(sides["this tree"])
    walls = {side: {s: c.seconds for s, c in by.items()} for side, by in done.items()}
    here = walls["this tree"]
    rows = []
    for stage in STAGES:
        mine = f"{here[stage]:.1f} s, {done['this tree'][stage].max_rss / GIB:.2f} GiB"
        if args.against:
            old = done[args.against][stage]
            rows.append(Row(f"stage {stage}: wall, peak memory; this tree vs {args.against}", mine,
                            f"{old.seconds:.1f} s, {old.max_rss / GIB:.2f} GiB",
                            f"{here[stage] / old.seconds:.2f}"))
        else:
            rows.append(Row(f"stage {stage}: wall, peak memory", mine))
    total = sum(here.values())
    old_total = sum(walls[args.against].values()) if args.against else None
    rows.append(Row("all stages of the default dvc repro" + (
        f": this tree vs {args.against}" if args.against else ""), f"{total:.0f} s",
        f"{old_total:.0f} s" if old_total else "—",
        f"{total / old_total:.2f}" if old_total else "—", f"<= {TARGET_SECONDS:.0f} s",
        total <= TARGET_SECONDS))
    print("\n".join(machine_lines(torch.device("cpu"))))
    print()
    print(table(rows))
    print()
    print("Where this tree's stage time goes (ratio column: share of all stages' time):")
    print()
    print(table(breakdown(here, p, start)))


if __name__ == "__main__":
    main()
