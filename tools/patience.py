"""The patience-and-consistency experiments (issue 11), where DVC is not installed (a GPU box).

`run`: for each seed, the default teacher and its cached soft targets, then in parallel: the
student baseline, default KD, consistent KD (the `patient-consistent` preset's augmentation) at
each distillation budget, function matching (the same with alpha = 1) and a student trained with
the same augmentation and schedule but no teacher. Each job runs the real stages
(`python -m stages.<name>`) in its own folder with its own params.yaml, tracking off, exactly what
`dvc exp run --queue -S preset=patient-consistent -S distill.epochs=15,30,60,120 -S seed=0,1,2`
runs where DVC is; one CSV row per finished job, written as each finishes. Every job starts
from the params given (`--params FILE`) or, by default, from conf/ composed as `dvc exp run`
composes it (with `-S dataset=<--dataset>`): the project's defaults, not whatever experiment the
working copy's params.yaml holds.

`plot`: that CSV -> the patience figure (distilled test accuracy against distillation epochs,
mean and std over seeds) and a markdown table of mean ± std with the share of the
teacher-student gap each recipe closes.

  python -m tools.patience run --data-root DIR --out results/patience.csv [--budgets 15,30,60,120]
                                [--params FILE] [--dataset NAME]
  python -m tools.patience plot results/patience.csv --png results/patience.png
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
FIELDS = ("job", "seed", "epochs", "test_acc", "test_errors", "agreement", "val_acc")


def preset_distill() -> dict:
    return yaml.safe_load((ROOT / "conf/preset/patient-consistent.yaml").read_text())["distill"]


def jobs(budgets: list[int]) -> dict[str, tuple[list[str], dict]]:
    """name -> (stages to run, params changes as {section: {key: value}} or {key: value})."""
    aug = {k: v for k, v in preset_distill().items() if k != "epochs"}
    out = {"student": (["student"], {}), "kd": (["distill"], {})}
    for e in budgets:
        out[f"consistent-{e}"] = (["distill"], {"distill": {**aug, "epochs": e}})
    top = max(budgets)
    out[f"function-matching-{top}"] = (["distill"], {"alpha": 1.0,
                                                     "distill": {**aug, "epochs": top}})
    out[f"mixup-student-{top}"] = (["student"], {"student": {**aug, "epochs": top}})
    return out


def base_params(path: str | None, dataset: str | None) -> dict:
    """The params every job starts from: the file at `path` (with `dataset`'s default
    architectures, `auto`, if one is named), else conf/ composed by DVC's own function, as
    `dvc exp run [-S dataset=<dataset>]` writes params.yaml."""
    if path:
        base = yaml.safe_load(Path(path).read_text())
        if dataset:
            base["dataset"] = dataset
            base["teacher"]["arch"] = base["student"]["arch"] = "auto"
        return base
    try:
        from dvc.utils.hydra import compose_and_dump
    except ImportError:
        raise SystemExit("error: composing conf/ takes DVC's Python package (uv sync); or pass "
                         "--params FILE") from None
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "params.yaml"
        compose_and_dump(out, str(ROOT / "conf"), None, "config", str(ROOT),
                         [f"dataset={dataset}"] if dataset else [])
        return yaml.safe_load(out.read_text())


def params_for(base: dict, seed: int, changes: dict) -> dict:
    p = copy.deepcopy(base)
    p["seed"] = seed
    for k, v in changes.items():
        if isinstance(v, dict):
            p[k].update(v)
        else:
            p[k] = v
    return p


def stage(folder: Path, name: str, log) -> None:
    path = os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH"))))
    env = {**os.environ, "KD_TRACKING": "off", "PYTHONPATH": path}
    proc = subprocess.run([sys.executable, "-m", f"stages.{name}"], cwd=folder, env=env,
                          capture_output=True, text=True)
    log(f"{folder.name}/{name}: exit {proc.returncode}; {proc.stdout.strip().splitlines()[-1:]}"
        f"{proc.stderr.strip().splitlines()[-1:] if proc.returncode else ''}")
    if proc.returncode:
        raise RuntimeError(f"{folder}: stages.{name} failed: {proc.stderr.strip()[-500:]}")


def run(args) -> None:
    base = base_params(args.params, args.dataset)
    if args.data_root:
        base["data"]["root"] = str(Path(args.data_root).resolve())
    work = Path(args.work).resolve()
    budgets = [int(b) for b in args.budgets.split(",")]
    lock = threading.Lock()

    def log(msg: str) -> None:
        with lock:
            print(msg, flush=True)

    def prepare(seed: int) -> None:
        """The seed's teacher and soft targets; the first seed's folder also prepares the data,
        which the others link to."""
        folder = work / f"seed{seed}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "params.yaml").write_text(yaml.safe_dump(params_for(base, seed, {})))
        if seed == seeds[0]:
            stage(folder, "download", log)
        elif not (folder / "data").exists():
            (folder / "data").symlink_to(work / f"seed{seeds[0]}" / "data")
        for name in ("teacher", "soft_targets"):
            stage(folder, name, log)

    def job(seed: int, name: str, stages: list[str], changes: dict) -> None:
        folder = work / f"seed{seed}-{name}"
        (folder / "model").mkdir(parents=True, exist_ok=True)
        (folder / "params.yaml").write_text(yaml.safe_dump(params_for(base, seed, changes)))
        for link, target in (("data", "data"), ("model/teacher.pt", "model/teacher.pt"),
                             ("model/soft_targets.pt", "model/soft_targets.pt")):
            if not (folder / link).exists():
                (folder / link).symlink_to(work / f"seed{seed}" / target)
        for s in stages:
            stage(folder, s, log)
        model = "student" if stages[-1] == "student" else "distilled"
        m = json.loads((folder / f"metrics/{model}.json").read_text())
        epochs = params_for(base, seed, changes)["student" if model == "student" else "distill"]
        row = {"job": name, "seed": seed, "epochs": epochs["epochs"], "test_acc": m["test_acc"],
               "test_errors": m["test_errors"], "agreement": m.get("agreement", ""),
               "val_acc": m["val_acc"]}
        with lock, open(args.out, "a", newline="") as fh:
            csv.DictWriter(fh, FIELDS).writerow(row)

    seeds = [int(s) for s in args.seeds.split(",")]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    if not Path(args.out).exists():
        with open(args.out, "w", newline="") as fh:
            csv.DictWriter(fh, FIELDS).writeheader()
    with open(args.out, newline="") as fh:
        if tuple(next(csv.reader(fh), ())) != FIELDS:  # appending would shift the columns
            raise SystemExit(f"error: {args.out}: its columns are not {', '.join(FIELDS)} (an "
                             "older tools.patience wrote it); pass another --out")
    prepare(seeds[0])  # downloads the data once
    with ThreadPoolExecutor(args.jobs) as pool:
        list(pool.map(prepare, seeds[1:]))
        for seed in seeds:  # the teachers are scored like the other jobs
            m = json.loads((work / f"seed{seed}" / "metrics/teacher.json").read_text())
            with open(args.out, "a", newline="") as fh:
                csv.DictWriter(fh, FIELDS).writerow({"job": "teacher", "seed": seed,
                                                     "epochs": base["teacher"]["epochs"],
                                                     "test_acc": m["test_acc"],
                                                     "test_errors": m["test_errors"],
                                                     "agreement": "",
                                                     "val_acc": m["val_acc"]})
        futures = [pool.submit(job, seed, name, stages, changes)
                   for name, (stages, changes) in jobs(budgets).items() for seed in seeds
                   if name.startswith(tuple(args.only.split(",")))]
        for f in futures:
            f.result()


def summary(rows: list[dict]) -> dict[str, tuple[float, float, int, int, float | None]]:
    """job -> (mean test acc, std, epochs, seeds, mean val acc or None where a row lacks one:
    files written before val_acc was recorded)."""
    by: dict[str, list[dict]] = {}
    for r in rows:
        by.setdefault(r["job"], []).append(r)
    out = {}
    for job, rs in by.items():
        accs = [float(r["test_acc"]) for r in rs]
        vals = [float(r["val_acc"]) for r in rs if r.get("val_acc")]
        out[job] = (statistics.mean(accs), statistics.stdev(accs) if len(accs) > 1 else 0.0,
                    int(rs[0]["epochs"]), len(rs),
                    statistics.mean(vals) if len(vals) == len(rs) else None)
    return out


def plot(args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(args.csv, newline="") as fh:
        rows = list(csv.DictReader(fh))
    s = summary(rows)
    teacher, student = s["teacher"][0], s["student"][0]
    # Choose a recipe or budget on the validation column; the test column reports it.
    print("| recipe | distill epochs | seeds | val accuracy (mean) | test accuracy (mean ± std) "
          "| gap closed |")
    print("|---|---|---|---|---|---|")
    for job, (mean, std, epochs, n, val) in sorted(s.items(), key=lambda kv: kv[1][0]):
        gap = "" if job == "teacher" else f"{(mean - student) / (teacher - student):+.0%}"
        shown = "—" if val is None else f"{100 * val:.2f}%"
        print(f"| {job} | {epochs} | {n} | {shown} | {100 * mean:.2f} ± {100 * std:.2f}% | {gap} |")
    curve = sorted((v[2], v[0], v[1]) for k, v in s.items() if k.startswith("consistent-"))
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    ax.errorbar([c[0] for c in curve], [100 * c[1] for c in curve],
                yerr=[100 * c[2] for c in curve], marker="o", capsize=3,
                label="consistent KD (shift, flip, mixup; teacher online)")
    for job, color, ls in (("teacher", "k", "--"), ("kd", "C1", ":"), ("student", "C2", "-.")):
        ax.axhline(100 * s[job][0], color=color, ls=ls, label=f"{job} ({s[job][2]} epochs)")
    for job in s:  # nudged sideways so that they do not hide the curve's point at that budget
        if job.startswith(("function-matching-", "mixup-student-")):
            fm = job.startswith("function")
            ax.errorbar([s[job][2] * (1.05 if fm else 0.95)], [100 * s[job][0]],
                        yerr=[100 * s[job][1]], marker="s" if fm else "^", capsize=3, ls="none",
                        label=job)
    ax.set_xscale("log", base=2)
    ax.set_xticks([c[0] for c in curve], [str(c[0]) for c in curve])
    ax.set_xlabel("distillation epochs")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"Patience: distilled student vs. budget (mean ± std, {s['teacher'][3]} seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(0.0, 0.93))  # under the teacher
    fig.tight_layout()
    fig.savefig(args.png)
    print(f"-> {args.png}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--data-root", help="raw dataset folder (data.root); default: the params' "
                                       "(conf/'s: null, the standard places, then a download)")
    r.add_argument("--params", help="params file the jobs start from (default: conf/ composed "
                                    "as `dvc exp run` composes it, not the working copy's "
                                    "params.yaml)")
    r.add_argument("--dataset", help="another dataset than the params' (e.g. digits), with its "
                                     "default architectures")
    r.add_argument("--seeds", default="0,1,2")
    r.add_argument("--budgets", default="15,30,60,120", help="distillation epochs to try")
    r.add_argument("--jobs", type=int, default=12, help="stage processes at once")
    r.add_argument("--only", default="", help="comma-separated job-name prefixes to run "
                                              "(default: all), e.g. consistent,function-matching")
    r.add_argument("--work", default="patience-work", help="folder for the jobs' files")
    r.add_argument("--out", default="results/patience.csv")
    pl = sub.add_parser("plot")
    pl.add_argument("csv")
    pl.add_argument("--png", default="results/patience.png")
    args = ap.parse_args(argv)
    run(args) if args.cmd == "run" else plot(args)


if __name__ == "__main__":
    main()
