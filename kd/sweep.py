"""A temperature sweep read back from DVC: one row per experiment, mean ± std over seeds, a table
and a plot of the distilled student's test accuracy against T.

In:  the parsed output of `dvc exp show --json` (a list of records: the workspace, each baseline
     commit, and under each baseline the experiments DVC ran from it).
Out: `Row`s (one per finished experiment), `Group`s (one per dataset, setting, alpha and T,
     aggregated over seeds), each setting's teacher and student baseline, a markdown string, and
     a PNG written atomically.
tools/sweep.py runs DVC and writes the files; this module only transforms what it is given.
"""

from __future__ import annotations

import json
import statistics
import textwrap
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from kd.io import atomic_path

MODELS = ("teacher", "student", "distilled")
SWEPT = ("dataset", "T", "alpha", "seed")
DONE = "success"  # the executor state of a finished queued experiment


class _Skip(Exception):
    """A record that holds no finished result; the message says why."""


@dataclass(frozen=True)
class Row:
    """One finished experiment: its swept params and the three models' test scores."""

    name: str
    rev: str
    dataset: str
    T: float
    alpha: float
    seed: int
    teacher_acc: float
    teacher_errors: int
    student_acc: float
    student_errors: int
    distilled_acc: float
    distilled_errors: int
    agreement: float | None
    # Every other param, flattened ("distill.epochs"): rows that differ here are not seeds of
    # one setting, and the summary says so.
    config: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True)
class Stat:
    """Mean and sample standard deviation (n - 1; 0.0 for a single value) of n values."""

    mean: float
    std: float
    n: int


@dataclass(frozen=True)
class Group:
    """The rows of one dataset, setting, alpha and T, aggregated over their seeds."""

    dataset: str
    setting: str  # other params where they differ from the sweep's usual value; "" for none
    alpha: float
    T: float
    seeds: tuple[int, ...]
    distilled_acc: Stat
    distilled_errors: Stat
    gain: Stat  # distilled minus student baseline accuracy, paired by experiment
    teacher_acc: Stat
    student_acc: Stat


# --- parsing `dvc exp show --json` ---------------------------------------------------------------


def parse(records: list[dict], include_workspace: bool = True) -> tuple[list[Row], list[str]]:
    """Records of `dvc exp show --json` -> (rows of finished experiments, one note per skip).

    Presets never set the swept keys (T, alpha, seed, dataset), so params.yaml's values are the
    ones the stages used. Experiments come before baselines and the workspace, so when the
    workspace (or a baseline) holds the very params and metrics of an experiment, the
    experiment's name is the one kept.
    """
    rows, notes, seen = [], [], set()
    for fallback, rec, state in _candidates(records, include_workspace):
        name = _name(rec, fallback)
        try:
            row, key = _row(name, rec, state)
        except _Skip as why:
            notes.append(f"skipped {name}: {why}")
            continue
        if key not in seen:
            seen.add(key)
            rows.append(row)
    return sorted(rows, key=lambda r: (r.dataset, r.alpha, r.T, r.seed, r.name)), notes


def _candidates(records: list[dict], include_workspace: bool) -> Iterator[tuple[str | None, dict, str]]:
    """Yield (experiment name, rev record, executor state): experiments, baselines, workspace."""
    baselines, workspace = [], []
    for rec in records:
        for exp in rec.get("experiments") or []:
            # No executor: run in the workspace by `dvc exp run`, which returns when it is done.
            state = (exp.get("executor") or {}).get("state", DONE)
            for rev in exp.get("revs") or []:
                yield exp.get("name"), rev, state
        (workspace if rec.get("rev") == "workspace" else baselines).append(rec)
    for rec in baselines + (workspace if include_workspace else []):
        yield None, rec, DONE


def _name(rec: dict, fallback: str | None) -> str:
    return rec.get("name") or fallback or _short(rec.get("rev"))


def _short(rev: str | None) -> str:
    return "workspace" if rev == "workspace" else (rev or "?")[:7]


def _row(name: str, rec: dict, state: str) -> tuple[Row, str]:
    """One rev record -> (its Row, a key equal for records with the same params and metrics)."""
    # A queued, running or failed experiment still shows files (the baseline's, or half-written
    # ones), which are not its results.
    if state != DONE:
        raise _Skip(state)
    if rec.get("error"):
        raise _Skip(f"DVC could not read it ({rec['error'].get('msg') or 'no message'})")
    data = rec.get("data") or {}
    params = _file(data.get("params"), "params.yaml")
    missing = [k for k in SWEPT if k not in params]
    if missing:
        raise _Skip(f"params.yaml has no {', '.join(missing)}")
    scores = {m: _scores(data.get("metrics"), m) for m in MODELS}
    row = Row(name=name, rev=_short(rec.get("rev")), dataset=str(params["dataset"]),
              T=float(params["T"]), alpha=float(params["alpha"]), seed=int(params["seed"]),
              teacher_acc=scores["teacher"]["test_acc"], teacher_errors=scores["teacher"]["test_errors"],
              student_acc=scores["student"]["test_acc"], student_errors=scores["student"]["test_errors"],
              distilled_acc=scores["distilled"]["test_acc"],
              distilled_errors=scores["distilled"]["test_errors"],
              agreement=scores["distilled"].get("agreement"),
              config={k: v for k, v in _flatten(params).items() if k not in SWEPT})
    return row, _json([params, scores])


def _file(section: dict | None, suffix: str) -> dict:
    """The data of the one file in a params/metrics section whose path ends with `suffix`.

    Matching the end keeps this working when DVC prefixes paths (a project in a subfolder).
    """
    for path, entry in (section or {}).items():
        if path == suffix or path.endswith("/" + suffix):
            return (entry or {}).get("data") or {}
    return {}


def _scores(section: dict | None, model: str) -> dict:
    values = _file(section, f"metrics/{model}.json")
    if "test_acc" not in values or "test_errors" not in values:
        raise _Skip(f"no test_acc/test_errors in metrics/{model}.json")
    return {"test_acc": float(values["test_acc"]), "test_errors": int(values["test_errors"]),
            **({"agreement": float(values["agreement"])} if "agreement" in values else {})}


def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


# --- aggregation over seeds ----------------------------------------------------------------------


def stat(values: Iterable[float]) -> Stat:
    """Mean and sample std (ddof 1) of values; std is 0.0 for a single value."""
    values = list(values)
    return Stat(statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0,
                len(values))


def aggregate(rows: list[Row]) -> list[Group]:
    """Rows -> one Group per (dataset, setting, alpha, T), sorted by those four.

    Rows whose other params differ (an omitted class, a fraction of the transfer set) are kept
    apart, never pooled as if they were seeds of one setting.
    """
    labels = settings(rows)
    by_key: dict[tuple[str, str, float, float], list[Row]] = {}
    for r, label in zip(rows, labels, strict=True):
        by_key.setdefault((r.dataset, label, r.alpha, r.T), []).append(r)
    return [Group(dataset=d, setting=label, alpha=a, T=t, seeds=tuple(sorted(r.seed for r in rs)),
                  distilled_acc=stat(r.distilled_acc for r in rs),
                  distilled_errors=stat(r.distilled_errors for r in rs),
                  gain=stat(r.distilled_acc - r.student_acc for r in rs),
                  teacher_acc=stat(r.teacher_acc for r in rs),
                  student_acc=stat(r.student_acc for r in rs))
            for (d, label, a, t), rs in sorted(by_key.items())]


def settings(rows: list[Row]) -> list[str]:
    """Per row, "key=value, ..." for the other params where it differs from the usual value.

    Usual: the most common value, ties going to the first in sorted order (never to hash order),
    among the rows of the same preset, so a preset's own values are not spelt out on its rows;
    the preset itself is named where it is not the most common one.
    """
    def usual(key: str, pool: list[Row]) -> str:
        values = sorted(_json(r.config.get(key)) for r in pool)
        return max(values, key=values.count)

    varying = varying_params(rows)
    labels = []
    for r in rows:
        same = [o for o in rows if o.config.get("preset") == r.config.get("preset")]
        labels.append(", ".join(f"{k}={_json(r.config.get(k))}" for k in varying
                                if _json(r.config.get(k)) != usual(k, rows if k == "preset" else same)))
    return labels


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def references(rows: list[Row]) -> dict[tuple[str, str], dict[str, Stat]]:
    """(dataset, setting) -> its teacher's and student baseline's test accuracy, over seeds.

    Each setting has its own (a preset trains other networks). Neither depends on T or alpha, so
    each seed counts once however many of the setting's experiments share it.
    """
    per_seed: dict[tuple[str, str], dict[str, dict[int, float]]] = {}
    for r, setting in zip(rows, settings(rows), strict=True):
        accs = per_seed.setdefault((r.dataset, setting), {"teacher": {}, "student": {}})
        accs["teacher"].setdefault(r.seed, r.teacher_acc)
        accs["student"].setdefault(r.seed, r.student_acc)
    return {key: {model: stat(by_seed.values()) for model, by_seed in accs.items()}
            for key, accs in sorted(per_seed.items())}


def varying_params(rows: list[Row]) -> list[str]:
    """Params other than dataset, T, alpha and seed that differ between rows of one dataset."""
    varying = set()
    for dataset in {r.dataset for r in rows}:
        configs = [r.config for r in rows if r.dataset == dataset]
        for key in set().union(*configs):
            if len({_json(c.get(key)) for c in configs}) > 1:
                varying.add(key)
    return sorted(varying)


def repeated_seeds(groups: list[Group]) -> list[str]:
    """Settings ("dataset alpha=a T=t") that hold one seed more than once: not a spread over seeds."""
    return [f"{g.dataset} {g.setting + ' ' if g.setting else ''}alpha={g.alpha:g} T={g.T:g}"
            for g in groups if len(set(g.seeds)) < len(g.seeds)]


# --- markdown ------------------------------------------------------------------------------------


def _pct(s: Stat) -> str:
    return f"{100 * s.mean:.2f}" + (f" ± {100 * s.std:.2f}" if s.n > 1 else "")


def summary_table(groups: list[Group]) -> str:
    """One line per dataset, setting, alpha and T; accuracies in %, mean ± std over seeds."""
    lines = ["| dataset | setting | alpha | T | seeds | distilled acc (%) | distilled errors | "
             "gain over student (points) | student acc (%) | teacher acc (%) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for g in groups:
        errors = f"{g.distilled_errors.mean:.1f}" if g.distilled_errors.n > 1 \
            else f"{g.distilled_errors.mean:.0f}"
        gain = f"{100 * g.gain.mean:+.2f}" + (f" ± {100 * g.gain.std:.2f}" if g.gain.n > 1 else "")
        lines.append(f"| {g.dataset} | {g.setting or '—'} | {g.alpha:g} | {g.T:g} | "
                     f"{', '.join(map(str, g.seeds))} | "
                     f"{_pct(g.distilled_acc)} | {errors} | {gain} | {_pct(g.student_acc)} | "
                     f"{_pct(g.teacher_acc)} |")
    return "\n".join(lines) + "\n"


def experiments_table(rows: list[Row]) -> str:
    """One line per experiment, accuracies in %."""
    lines = ["| experiment | rev | dataset | T | alpha | seed | teacher acc (%) | student acc (%) | "
             "distilled acc (%) | teacher errors | student errors | distilled errors | agreement (%) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        agree = "—" if r.agreement is None else f"{100 * r.agreement:.2f}"
        lines.append(f"| {r.name} | `{r.rev}` | {r.dataset} | {r.T:g} | {r.alpha:g} | {r.seed} | "
                     f"{100 * r.teacher_acc:.2f} | {100 * r.student_acc:.2f} | "
                     f"{100 * r.distilled_acc:.2f} | {r.teacher_errors} | {r.student_errors} | "
                     f"{r.distilled_errors} | {agree} |")
    return "\n".join(lines) + "\n"


def markdown(rows: list[Row], plot_name: str | None = None) -> str:
    """The whole sweep page: summary over seeds, a warning for unseparated params, every row."""
    groups = aggregate(rows)
    parts = ["# Distillation sweep: distilled-student test accuracy against T\n",
             f"{len(rows)} finished experiments. Mean ± sample std over seeds where a setting has "
             "several; gain is the distilled minus the student-baseline accuracy of each "
             "experiment.\n",
             summary_table(groups)]
    varying = varying_params(rows)
    if varying:
        parts.append(f"Experiments also differ in {', '.join(varying)}: each setting has its own "
                     "rows (and panel in the plot, with its own teacher and student), never pooled "
                     "with the others.\n")
    repeated = repeated_seeds(groups)
    if repeated:
        # The usual cause: the same experiment run twice under different names.
        parts.append(f"**Warning:** these settings hold the same seed more than once, so their "
                     f"spread is not over seeds: {'; '.join(repeated)}.\n")
    parts += ["## Experiments\n", experiments_table(rows)]
    if plot_name:
        parts.append(f"![distilled-student test accuracy against T]({plot_name})\n")
    return "\n".join(parts)


# --- plot ----------------------------------------------------------------------------------------


def accuracy_vs_T_plot(rows: list[Row], path: Path) -> None:
    """Write a PNG: one panel per dataset and setting, the distilled test accuracy against T (one
    line per alpha, error bars = std over seeds) with that setting's own teacher and student
    baseline as horizontal references."""
    groups, refs = aggregate(rows), references(rows)
    cols = min(3, len(refs))
    lines = -(-len(refs) // cols)
    # A bare Figure renders with Agg and leaves pyplot's global state alone.
    fig = Figure(figsize=(5 * cols, 3.6 * lines + 0.4), dpi=120)
    for i, ((dataset, setting), ref) in enumerate(refs.items(), start=1):
        ax = fig.add_subplot(lines, cols, i)
        _panel(ax, [g for g in groups if (g.dataset, g.setting) == (dataset, setting)], ref)
        ax.set_title(textwrap.fill(f"{dataset}, {setting or 'usual params'}", 50), fontsize="medium")
    fig.suptitle("Distilled student's test accuracy against T" +
                 (" (mean ± std over seeds)" if max(g.distilled_acc.n for g in groups) > 1 else ""))
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


def _panel(ax, groups: list[Group], refs: dict[str, Stat]) -> None:
    for label, ref, style, color in (("teacher", refs["teacher"], "--", "black"),
                                     ("student baseline", refs["student"], ":", "gray")):
        ax.axhline(100 * ref.mean, linestyle=style, color=color, label=f"{label} ({_pct(ref)}%)")
        if ref.n > 1:
            ax.axhspan(100 * (ref.mean - ref.std), 100 * (ref.mean + ref.std), color=color, alpha=0.12)
    for alpha in sorted({g.alpha for g in groups}):
        line = [g for g in groups if g.alpha == alpha]
        ax.errorbar([g.T for g in line], [100 * g.distilled_acc.mean for g in line],
                    yerr=[100 * g.distilled_acc.std for g in line], marker="o", markersize=4,
                    capsize=3, label=f"distilled, alpha={alpha:g}")
    temps = sorted({g.T for g in groups})
    # Temperatures are swept geometrically (1, 2, 4, 8, 20): a log axis spaces them evenly.
    ax.set_xscale("log", base=2)
    ax.set_xticks(temps, [f"{t:g}" for t in temps])
    ax.minorticks_off()
    ax.set_xlabel("temperature T")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
