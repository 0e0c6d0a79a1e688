"""A sweep read back from DVC for tools/sweep.py: one row per finished experiment, grouped over
seeds.

In:  `dvc.api.exp_show()`'s rows (a flat dict per experiment) and `dvc.api.params_show()`'s params.
Out: `Row`s and `Group`s (per dataset, setting, alpha and T: mean ± sample std over seeds, pandas'
groupby), and per distillation loss the setting chosen on validation (`by_loss`).
"""

from __future__ import annotations

import ast
import json
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any, NamedTuple

import pandas as pd

from kd import losses

MODELS = ("teacher", "student", "distilled")
SWEPT = ("dataset", "T", "alpha", "seed")
DVC_COLUMNS = ("Experiment", "rev", "typ", "Created", "parent", "State", "Executor")
_json = partial(json.dumps, sort_keys=True)  # a param's value as one comparable, hashable text


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
    distilled_val_acc: float | None  # what settings are chosen on; None in older experiments
    # Every other param ("distill.epochs"): rows that differ here are not seeds of one setting.
    config: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


class Stat(NamedTuple):
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
    distilled_val_acc: Stat | None  # None when a row has no validation accuracy


class _Skip(Exception):
    """A row that holds no finished result; the message says why."""


def parse(shown: list[dict], params: dict, include_workspace: bool = True
          ) -> tuple[list[Row], list[str]]:
    """exp_show rows -> (rows of finished experiments, one note per row skipped). Which columns are
    params, a flat row does not say: the workspace's `params` (params_show) do. Experiments go first,
    so a baseline or workspace with the very params and metrics of one keeps the experiment's name."""
    rows, notes, seen = [], [], set()
    workspace = {k: v for k, v in flatten(params).items() if k not in SWEPT}
    shown = [r for r in shown if include_workspace or r["rev"] != "workspace"]
    for rec in sorted(shown, key=lambda r: (r["rev"] == "workspace", r["typ"] == "baseline")):
        name = rec.get("Experiment") or rec["rev"]
        try:
            row = _row(name, rec, workspace)
        except _Skip as why:
            notes.append(f"skipped {name}: {why}")
            continue
        if (key := (replace(row, name="", rev=""), _json(row.config))) not in seen:
            seen.add(key)
            rows.append(row)
    return sorted(rows, key=lambda r: (r.dataset, r.alpha, r.T, r.seed, r.name)), notes


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """{"distill": {"epochs": 15}} -> {"distill.epochs": 15}, as DVC names its columns."""
    return {k: v for key, value in tree.items() for k, v in (flatten(value, f"{prefix}{key}.")
            if isinstance(value, dict) else {prefix + key: value}).items()}


def _row(name: str, rec: dict, workspace: dict[str, Any]) -> Row:
    # A queued, running or failed experiment shows the params it ran with (and maybe half-written
    # metrics), not results. No state: a baseline, or run in the workspace by `dvc exp run`.
    if (rec.get("State") or "Success") != "Success":
        raise _Skip(rec["State"].lower())
    if all(v is None for k, v in rec.items() if k not in DVC_COLUMNS):
        raise _Skip("DVC could not read it")
    if missing := [k for k in SWEPT if rec.get(k) in (None, "!")]:  # "!": DVC could not read the file
        raise _Skip(f"params.yaml has no {', '.join(missing)}")
    # Another loss's knobs do not touch this experiment: left out, they neither split its setting
    # nor keep it from being the same experiment as a row whose unused knobs differ.
    loss = _value(rec.get(LOSS_KEY), "") or "kd"
    return Row(name, rec["rev"], str(rec["dataset"]), float(rec["T"]), float(rec["alpha"]),
               int(rec["seed"]), *(score for m in MODELS for score in _scores(rec, m)),
               _number(_metric(rec, "distilled", "agreement")),
               _number(_metric(rec, "distilled", "val_acc")),
               {k: _value(rec.get(k), like) for k, like in workspace.items()
                if _knob_of(k) in (None, loss)})


def _knob_of(key: str) -> str | None:
    """The loss whose own knob `key` is ("distill.dkd_beta": "dkd"); None for any other param."""
    head = key.removeprefix("distill.").split("_")[0]
    return head if key.startswith("distill.") and head in losses.names() else None


def _metric(rec: dict, model: str, key: str) -> Any:
    # DVC prefixes a name several files hold with the file's path (and the project's folder, when
    # not at the repository root); a name one file alone holds (agreement: distilled) stays bare.
    found = [v for k, v in rec.items() if f"/{k}".endswith(f"/metrics/{model}.json:{key}")]
    return found[0] if found else rec.get(key) if model == "distilled" else None


def _number(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) else None  # None, or "!": unreadable


def _scores(rec: dict, model: str) -> tuple[float, int]:
    acc, errors = _metric(rec, model, "test_acc"), _metric(rec, model, "test_errors")
    if not (isinstance(acc, int | float) and isinstance(errors, int | float)):  # None, or "!"
        raise _Skip(f"no test_acc/test_errors in metrics/{model}.json")
    return float(acc), int(errors)


def _value(value: Any, like: Any) -> Any:
    # A param as params.yaml holds it, as near as a row tells: DVC writes values as Python's text
    # ("[3]", "False", "None") and reads every number back as a float: 5.0 is 5 again unless the
    # workspace's value (`like`) is a float.
    if isinstance(value, float) and value.is_integer() and not isinstance(like, float):
        return int(value)
    try:
        return ast.literal_eval(value) if isinstance(value, str) else value
    except (ValueError, TypeError, SyntaxError):  # "none", "mlp:800-800": plain text
        return value


def stat(values: Iterable[float]) -> Stat:
    return _stat(pd.Series(list(values), dtype=float))


def _stat(s: pd.Series) -> Stat:
    return Stat(float(s.mean()), float(s.std()) if len(s) > 1 else 0.0, len(s))  # std: n - 1


KEYS = ["dataset", "setting", "alpha", "T"]  # one Group each
SCORES = ["distilled_acc", "distilled_errors", "gain", "teacher_acc", "student_acc"]


def aggregate(rows: list[Row]) -> list[Group]:
    """Rows -> one Group per (dataset, setting, alpha, T), sorted by those four; rows whose other
    params differ (an omitted class, a smaller transfer set) are never pooled as seeds."""
    frame = pd.DataFrame([{"dataset": r.dataset, "setting": label, "alpha": r.alpha, "T": r.T,
                           "seed": r.seed, "distilled_acc": r.distilled_acc,
                           "distilled_errors": r.distilled_errors,
                           "gain": r.distilled_acc - r.student_acc,  # paired by experiment
                           "teacher_acc": r.teacher_acc, "student_acc": r.student_acc,
                           "distilled_val_acc": r.distilled_val_acc}
                          for r, label in zip(rows, settings(rows), strict=True)])
    if frame.empty:
        return []
    return [Group(*key, tuple(sorted(g["seed"].tolist())), *(_stat(g[c]) for c in SCORES),
                  None if g["distilled_val_acc"].isna().any() else _stat(g["distilled_val_acc"]))
            for key, g in frame.groupby(KEYS, sort=True)]


def chosen_on_validation(groups: list[Group]) -> list[Group]:
    """Per dataset and setting, the alpha and T whose distilled student has the highest mean
    validation accuracy over seeds (the first in sort order on a tie). The test split plays no
    part in the choice; its accuracy is what gets reported for it. Settings whose experiments
    hold no validation accuracy have no choice."""
    best: dict[tuple[str, str], Group] = {}
    for g in groups:
        key = (g.dataset, g.setting)
        if g.distilled_val_acc is not None and (
                key not in best or g.distilled_val_acc.mean > best[key].distilled_val_acc.mean):
            best[key] = g
    return list(best.values())


LOSS_KEY = "distill.loss"


class Tried(NamedTuple):
    """One setting of a loss, over seeds, and the loss's own knobs in it ({"dkd_beta": 8, ...})."""
    group: Group
    knobs: dict[str, Any]


class LossChoice(NamedTuple):
    """One loss on one dataset: every setting tried, and the one chosen on validation."""
    loss: str
    chosen: Tried
    tried: list[Tried]


def by_loss(rows: list[Row]) -> list[LossChoice]:
    """Per dataset and distill.loss, the setting (the loss's own knobs, alpha and T) with the highest
    mean validation accuracy over seeds, the first in sort order on a tie. Rows from before the
    loss was a param are left out; settings without validation accuracy cannot be chosen."""
    out = []
    for dataset in sorted({r.dataset for r in rows}):
        mine = [r for r in rows if r.dataset == dataset and r.config.get(LOSS_KEY) is not None]
        for loss in sorted({r.config[LOSS_KEY] for r in mine}, key=lambda name: (name != "kd", name)):
            sub = [r for r in mine if r.config[LOSS_KEY] == loss]
            knobs = {(label, r.alpha, r.T): {k.removeprefix("distill."): v for k, v in r.config.items()
                                             if k.startswith(f"distill.{loss}_")}
                     for r, label in zip(sub, settings(sub), strict=True)}
            tried = [Tried(g, knobs[(g.setting, g.alpha, g.T)]) for g in aggregate(sub)]
            scored = [t for t in tried if t.group.distilled_val_acc is not None]
            if scored:
                best = max(scored, key=lambda t: t.group.distilled_val_acc.mean)
                out.append(LossChoice(loss, best, tried))
    return out


def gap_closed(g: Group) -> float:
    """The share of the teacher's lead over the student baseline that distillation won back:
    (distilled - student) / (teacher - student), of the means over seeds."""
    return (g.distilled_acc.mean - g.student_acc.mean) / (g.teacher_acc.mean - g.student_acc.mean)


def settings(rows: list[Row]) -> list[str]:
    """Per row, "key=value, ..." for the other params where it differs from the usual value (the
    most common among its preset's rows, ties to the first sorted, never to hash order); the preset
    itself is named where it is not the most common one."""
    def usual(key: str, pool: list[Row]) -> str:  # of the rows that have it: a loss's knob
        values = sorted(_json(r.config.get(key)) for r in pool if _knob_of(key) is None or key in r.config)
        return max(values, key=values.count)

    varying, labels = varying_params(rows), []
    for r in rows:
        same = [o for o in rows if o.config.get("preset") == r.config.get("preset")]
        labels.append(", ".join(f"{k}={_json(r.config.get(k))}" for k in varying
                                if (_knob_of(k) is None or k in r.config)
                                and _json(r.config.get(k)) != usual(k, rows if k == "preset" else same)))
    return labels


def varying_params(rows: list[Row]) -> list[str]:
    """Params other than dataset, T, alpha and seed that differ between rows of one dataset."""
    per_dataset = [[r.config for r in rows if r.dataset == d] for d in {r.dataset for r in rows}]
    return sorted({k for configs in per_dataset for k in set().union(*configs)
                   if len({_json(c.get(k)) for c in configs}) > 1})
