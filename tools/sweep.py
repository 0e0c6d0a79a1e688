"""Gather every DVC experiment into one table and one plot: distilled-student accuracy against T.

After a sweep such as `dvc exp run --queue -S T=1,2,4,8,20 -S seed=0,1,2` and
`dvc queue start -j 2`, run from the repository root:

    python -m tools.sweep [--out sweep/]
    python -m tools.sweep --losses [--out results/]   # distill.loss compared: losses.md, losses.png

Reads `dvc.api.exp_show()`: params.yaml's dataset, T, alpha and seed and metrics/{teacher,student,
distilled}.json. Writes <out>/sweep.md (per dataset and setting, the alpha and T chosen on mean
validation accuracy over seeds with the test accuracy of that choice; then mean ± std over seeds per
dataset, setting, alpha and T; then one line per experiment) and <out>/accuracy_vs_T.png (a panel
per dataset and setting, with that setting's own teacher and student, the chosen T starred), and
prints the table. Queued, running and failed
experiments are skipped with a note on stderr; the workspace is left out when it repeats an
experiment, or when `dvc status` says its metrics are out of date with its params or code.
Exit status 1, with a one-line message, when DVC fails or no experiment has metrics yet.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path
from typing import NoReturn

import dvc.api
from dvc.exceptions import DvcException
from dvc.repo import Repo
from matplotlib.figure import Figure

from kd import losses
from kd.process import files
from kd.report.tables import code_span, markdown_table
from tools.sweep_rows import (
    LOSS_KEY,
    Group,
    LossChoice,
    Row,
    Stat,
    Tried,
    aggregate,
    by_loss,
    chosen_on_validation,
    gap_closed,
    parse,
    settings,
    stat,
    varying_params,
)

PLOT = "accuracy_vs_T.png"


def fail(message: str) -> NoReturn:
    """Print `error: message` as one line on stderr and exit with status 1."""
    print(f"error: {' '.join(message.split())}", file=sys.stderr)
    raise SystemExit(1)


def show(repo: Path, all_commits: bool, revs: list[str] | None = None) -> tuple[list[dict], dict, bool]:
    """DVC's rows of the workspace, HEAD (or every commit, or the commits `revs`) and their
    experiments; the workspace's params; and whether `dvc status` finds every output up to date."""
    try:
        with Repo(str(repo)) as project:  # first: outside a DVC project this says so in plain words
            # Every commit, as `dvc exp show --all-commits` takes them; the commits asked for; else
            # HEAD alone.
            revs = list(project.scm.list_all_commits()) if all_commits else revs
            rows = dvc.api.exp_show(repo=project.root_dir, revs=revs)
            params = dvc.api.params_show(repo=project.root_dir)
            current = project.status() == {}
            for row in rows:  # exp_show names a branch's commit by the branch: name it, show the commit
                if row["typ"] == "baseline" and row["rev"] != "workspace":
                    row["Experiment"], row["rev"] = row["rev"], project.scm.resolve_rev(row["rev"])[:7]
    except DvcException as e:
        fail(f"dvc exp show failed in {repo}: {e}")
    return rows, params, current


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


def repeated_seeds(groups: list[Group]) -> list[str]:
    """Settings ("dataset alpha=a T=t") that hold one seed more than once: not a spread over seeds."""
    return [f"{g.dataset} {g.setting + ' ' if g.setting else ''}alpha={g.alpha:g} T={g.T:g}"
            for g in groups if len(set(g.seeds)) < len(g.seeds)]


def _pct(s: Stat, sign: str = "") -> str:
    return f"{100 * s.mean:{sign}.2f}" + (f" ± {100 * s.std:.2f}" if s.n > 1 else "")


def summary_table(groups: list[Group]) -> str:
    """One line per dataset, setting, alpha and T; accuracies in %, mean ± std over seeds."""
    return markdown_table(
        ["dataset", "setting", "alpha", "T", "seeds", "distilled val acc (%)", "distilled acc (%)",
         "distilled errors", "gain over student (points)", "student acc (%)", "teacher acc (%)"],
        [[g.dataset, g.setting or "—", f"{g.alpha:g}", f"{g.T:g}", ", ".join(map(str, g.seeds)),
          "—" if g.distilled_val_acc is None else _pct(g.distilled_val_acc), _pct(g.distilled_acc),
          f"{g.distilled_errors.mean:.1f}" if g.distilled_errors.n > 1 else f"{g.distilled_errors.mean:.0f}",
          _pct(g.gain, "+"), _pct(g.student_acc), _pct(g.teacher_acc)] for g in groups])


def chosen_table(chosen: list[Group]) -> str:
    """Each setting's choice on validation, and what the test split says of that choice."""
    return markdown_table(
        ["dataset", "setting", "chosen alpha", "chosen T", "seeds", "distilled val acc (%)",
         "distilled test acc (%)", "gain over student (points)"],
        [[g.dataset, g.setting or "—", f"{g.alpha:g}", f"{g.T:g}", ", ".join(map(str, g.seeds)),
          _pct(g.distilled_val_acc), _pct(g.distilled_acc), _pct(g.gain, "+")] for g in chosen])


def experiments_table(rows: list[Row]) -> str:
    """One line per experiment, accuracies in %."""
    return markdown_table(
        ["experiment", "rev", "dataset", "T", "alpha", "seed", "teacher acc (%)", "student acc (%)",
         "distilled acc (%)", "teacher errors", "student errors", "distilled errors", "agreement (%)"],
        [[code_span(r.name), f"`{r.rev}`", r.dataset, f"{r.T:g}", f"{r.alpha:g}", r.seed,
          *(f"{100 * acc:.2f}" for acc in (r.teacher_acc, r.student_acc, r.distilled_acc)),
          r.teacher_errors, r.student_errors, r.distilled_errors,
          "—" if r.agreement is None else f"{100 * r.agreement:.2f}"] for r in rows])


def markdown(rows: list[Row], plot_name: str | None = None) -> str:
    """The whole sweep page: summary over seeds, a warning for unseparated params, every row."""
    groups = aggregate(rows)
    parts = ["# Distillation sweep: distilled-student test accuracy against T\n",
             f"{len(rows)} finished experiments. Mean ± sample std over seeds where a setting has "
             "several; gain is the distilled minus the student-baseline accuracy of each "
             "experiment.\n",
             "## Chosen on validation\n",
             "Per dataset and setting, the alpha and T whose distilled student has the highest mean "
             "validation accuracy over seeds, and the test accuracy of that choice: the test split "
             "chooses nothing.\n",
             chosen_table(chosen_on_validation(groups)) if chosen_on_validation(groups) else
             "No experiment holds a distilled validation accuracy (metrics/distilled.json: val_acc)."
             "\n",
             "## Every setting\n",
             summary_table(groups)]
    if varying := varying_params(rows):
        parts.append(f"Experiments also differ in {', '.join(varying)}: each setting has its own "
                     "rows (and panel in the plot, with its own teacher and student), never pooled "
                     "with the others.\n")
    if repeated := repeated_seeds(groups):  # the usual cause: one experiment run under two names
        parts.append(f"**Warning:** these settings hold the same seed more than once, so their "
                     f"spread is not over seeds: {'; '.join(repeated)}.\n")
    parts += ["## Experiments\n", experiments_table(rows)]
    if plot_name:
        parts.append(f"![distilled-student test accuracy against T]({plot_name})\n")
    return "\n".join(parts)


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
        for label, r, style, color in (("teacher", ref["teacher"], "--", "black"),
                                       ("student baseline", ref["student"], ":", "gray")):
            ax.axhline(100 * r.mean, linestyle=style, color=color, label=f"{label} ({_pct(r)}%)")
            if r.n > 1:
                ax.axhspan(100 * (r.mean - r.std), 100 * (r.mean + r.std), color=color, alpha=0.12)
        mine = [g for g in groups if (g.dataset, g.setting) == (dataset, setting)]
        for alpha in sorted({g.alpha for g in mine}):
            line = [g for g in mine if g.alpha == alpha]
            ax.errorbar([g.T for g in line], [100 * g.distilled_acc.mean for g in line],
                        yerr=[100 * g.distilled_acc.std for g in line], marker="o", markersize=4,
                        capsize=3, label=f"distilled, alpha={alpha:g}")
        for g in chosen_on_validation(mine):
            ax.plot([g.T], [100 * g.distilled_acc.mean], marker="*", markersize=14, color="gold",
                    markeredgecolor="black", linestyle="none",
                    label=f"chosen on validation (T={g.T:g}, alpha={g.alpha:g})")
        temps = sorted({g.T for g in mine})
        # Temperatures are swept geometrically (1, 2, 4, 8, 20): a log axis spaces them evenly.
        ax.set_xscale("log", base=2)
        ax.set_xticks(temps, [f"{t:g}" for t in temps])
        ax.minorticks_off()
        ax.set(xlabel="temperature T", ylabel="test accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
        ax.set_title(textwrap.fill(f"{dataset}, {setting or 'usual params'}", 50), fontsize="medium")
    title = "Distilled student's test accuracy against T" + (
        " (mean ± std over seeds)" if max(g.distilled_acc.n for g in groups) > 1 else "")
    fig.suptitle(textwrap.fill(title, 45 * cols), fontsize="medium")  # one panel is narrow
    fig.tight_layout()
    with files.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


LOSS_PLOT = "losses.png"
def _label(loss: str) -> str:
    """The loss's short label from its registry entry (its name, for a loss this code lacks)."""
    return losses.get(loss).label if loss in losses.names() else loss


def _settings(knobs: dict) -> list[str]:
    """`dkd_beta=8`, ..., sorted: a loss's own knobs as the tables print them."""
    return [f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(knobs.items())]


def _knobs(loss: str, t: Tried) -> str:
    """kd's setting is its alpha and T; a successor's, its own knobs (it reads no T or alpha)."""
    if loss == "kd":
        return f"alpha={t.group.alpha:g}, T={t.group.T:g}"
    return ", ".join(_settings(t.knobs))


def losses_markdown(choices: list[LossChoice], plot_name: str | None = None,
                    failed: str | None = None) -> str:
    """The loss comparison: each loss's setting chosen on validation and its test accuracy, then
    every setting tried."""
    chosen = markdown_table(
        ["dataset", "loss", "settings tried", "chosen on validation", "seeds", "distilled val acc (%)",
         "distilled test acc (%)", "gain over student (points)", "gap closed (%)"],
        [[c.chosen.group.dataset, _label(c.loss), len(c.tried), _knobs(c.loss, c.chosen),
          ", ".join(map(str, c.chosen.group.seeds)), _pct(c.chosen.group.distilled_val_acc),
          _pct(c.chosen.group.distilled_acc), _pct(c.chosen.group.gain, "+"),
          f"{100 * gap_closed(c.chosen.group):.0f}"] for c in choices])
    every = markdown_table(
        ["dataset", "loss", "setting", "seeds", "distilled val acc (%)", "distilled test acc (%)",
         "gap closed (%)"],
        [[t.group.dataset, c.loss, _knobs(c.loss, t) + (" **(chosen)**" if t is c.chosen else ""),
          ", ".join(map(str, t.group.seeds)),
          "—" if t.group.distilled_val_acc is None else _pct(t.group.distilled_val_acc),
          _pct(t.group.distilled_acc), f"{100 * gap_closed(t.group):.0f}"]
         for c in choices for t in c.tried])
    refs = sorted({(c.chosen.group.dataset, _pct(c.chosen.group.teacher_acc),
                    _pct(c.chosen.group.student_acc)) for c in choices})
    parts = ["# Distillation losses compared\n",
             "Each loss's settings (kd's alpha and T; each successor's own knobs, its whole recipe as "
             "its authors train it) are chosen on the distilled student's mean "
             "validation accuracy over seeds; the test accuracy of that choice is what is reported "
             "(mean ± sample std over seeds). Gap closed: (distilled - student) / (teacher - student), "
             "of the means. " + " ".join(f"{d}: teacher {t}%, student baseline {s}%." for d, t, s in refs)
             + "\n",
             "## Chosen on validation\n", chosen, "## Every setting tried\n", every]
    if failed:
        parts += ["## Experiments that failed\n",
                  "Not in the tables above: their stage stopped (`dvc queue logs <experiment>` says "
                  "why; a diverged loss says `training loss became nan`).\n", failed]
    if plot_name:
        parts.append(f"![distilled test accuracy per loss]({plot_name})\n")
    return "\n".join(parts)


def failed_table(shown: list[dict]) -> str | None:
    """The experiments that failed (a loss that diverged, say), with the loss settings they ran;
    None when none did."""
    failed = [r for r in shown if r.get("State") == "Failed" and r.get(LOSS_KEY)]
    if not failed:
        return None

    def knobs(r: dict) -> str:
        if r[LOSS_KEY] == "kd":
            return f"alpha={r.get('alpha'):g}, T={r.get('T'):g}"
        return ", ".join(_settings({k.removeprefix("distill."): v for k, v in r.items()
                                    if k.startswith(f"distill.{r[LOSS_KEY]}_")}))
    return markdown_table(
        ["experiment", "dataset", "loss", "settings", "seed"],
        [[code_span(r.get("Experiment") or r["rev"]), r.get("dataset"), r[LOSS_KEY], knobs(r),
          f"{r.get('seed'):g}"]
         for r in sorted(failed, key=lambda r: (str(r.get("dataset")), r[LOSS_KEY], knobs(r),
                                                r.get("seed")))])


def losses_plot(choices: list[LossChoice], path: Path) -> None:
    """Per dataset: each loss's chosen setting (test accuracy, mean ± std over seeds) and its other
    settings as small points, with the teacher, the student baseline and half their gap."""
    datasets = sorted({c.chosen.group.dataset for c in choices})
    fig = Figure(figsize=(7.5, 4.4 * len(datasets)), dpi=120)
    for i, dataset in enumerate(datasets, start=1):
        ax = fig.add_subplot(len(datasets), 1, i)
        mine = [c for c in choices if c.chosen.group.dataset == dataset]
        ref = mine[0].chosen.group
        for label, r, style, color in (("teacher", ref.teacher_acc, "--", "black"),
                                       ("student baseline", ref.student_acc, ":", "gray")):
            ax.axhline(100 * r.mean, linestyle=style, color=color, label=f"{label} ({_pct(r)}%)")
        half = 50 * (ref.teacher_acc.mean + ref.student_acc.mean)
        ax.axhline(half, linestyle="-.", color="tab:red", alpha=0.6, label="half the gap closed")
        for x, c in enumerate(mine):
            others = [t for t in c.tried if t is not c.chosen]
            ax.plot([x + 0.18] * len(others), [100 * t.group.distilled_acc.mean for t in others],
                    "o", color="gray", alpha=0.5, markersize=4,
                    label="other settings (mean over seeds)" if x == 0 else None)
            g = c.chosen.group
            ax.errorbar([x], [100 * g.distilled_acc.mean], yerr=[100 * g.distilled_acc.std],
                        marker="*", markersize=13, capsize=4, color="tab:blue", linestyle="none",
                        label="chosen on validation (test, mean ± std)" if x == 0 else None)
        ax.set_xticks(range(len(mine)), [c.loss for c in mine])
        ax.set_xlim(-0.5, len(mine) - 0.3)
        ax.set(ylabel="distilled test accuracy (%)", title=f"{dataset}: distillation losses")
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize="small", loc="upper right")  # the points sit between student and half-gap
    fig.tight_layout()
    with files.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


def main(argv: list[str] | None = None) -> None:
    summary, _, details = __doc__.partition("\n")
    ap = argparse.ArgumentParser(prog="python -m tools.sweep", description=summary, epilog=details,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("sweep"),
                    help="folder for sweep.md and accuracy_vs_T.png (default: sweep)")
    ap.add_argument("--repo", type=Path, default=Path("."),
                    help="the DVC repository to read (default: the current directory)")
    ap.add_argument("--losses", action="store_true",
                    help="compare distillation losses instead: losses.md and losses.png, each "
                         "loss's settings chosen on validation")
    ap.add_argument("--all-commits", action="store_true",
                    help="also gather experiments based on older commits, not only HEAD's "
                         "(they may have run other code)")
    ap.add_argument("--rev", action="append", metavar="COMMIT",
                    help="gather the experiments based on this commit, and its own results "
                         "(repeat it for several; default: HEAD's)")
    args = ap.parse_args(argv)

    if args.all_commits and args.rev:
        fail("--all-commits and --rev both choose the commits: give one of them")
    shown, params, current = show(args.repo, args.all_commits, args.rev)
    rows, notes = parse(shown, params, include_workspace=current)
    if not current:
        notes.append("skipped workspace: not reproduced since its params or code changed (dvc status)")
    for note in notes:
        print(note, file=sys.stderr)
    if not rows:
        fail("no experiment has metrics yet: run `dvc repro`, or queue a sweep "
             "(`dvc exp run --queue -S T=1,2,4,8`) and `dvc queue start`")

    if args.losses:
        if not (choices := by_loss(rows)):
            fail("no finished experiment sets distill.loss with a distilled val_acc: queue some "
                 "(`dvc exp run --queue -S distill.loss=kd,dkd,ls,dist`) and `dvc queue start`")
        md = losses_markdown(choices, LOSS_PLOT, failed_table(shown))
        files.write_text(args.out / "losses.md", md)
        losses_plot(choices, args.out / LOSS_PLOT)
        written = (args.out / "losses.md", args.out / LOSS_PLOT)
    else:
        md = markdown(rows, PLOT)
        files.write_text(args.out / "sweep.md", md)
        accuracy_vs_T_plot(rows, args.out / PLOT)
        written = (args.out / "sweep.md", args.out / PLOT)
    print(md)
    print(f"wrote {written[0]} and {written[1]}", file=sys.stderr)


if __name__ == "__main__":
    main()
