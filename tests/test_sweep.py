"""The sweep summary: parsing real `dvc.api.exp_show()` rows, mean ± std over seeds, the table,
the plot, and `python -m tools.sweep`'s command line (its run over a real queued sweep is in
tests/test_pipeline_e2e.py, on that module's repository).

tests/data/exp_show.json holds what `dvc.api.exp_show()` and `dvc.api.params_show()` return for
experiments DVC 3.67 ran on digits (epochs 1): `dvc exp show --json` output captured and trimmed to
params and metrics, then put through DVC's own tabulate and _postprocess, the last two steps of
exp_show. Rows: the workspace (equal to the experiment dizzy-bish), the baseline `main` (T=4),
finished experiments over T=1, 2, 8, seeds 0 and 1 and alpha 0.5, one failed experiment
(brash-kegs, alpha=1.5, still showing the files it started from) and one running (dicey-mate,
showing half-written metrics). As DVC returns them, every number is a float. The digits test
split has 297 images.
"""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import PNG_MAGIC
from tests.project_repo import sh
from tools import sweep as sweep_cli
from tools import sweep_rows as sweep

ROOT = Path(__file__).resolve().parents[1]
CAPTURED = Path(__file__).parent / "data" / "exp_show.json"
FINISHED = {"main", "dizzy-bish", "every-dirk", "joint-ages", "acerb-mine", "muley-seam", "tenty-eggs"}


@pytest.fixture
def shown() -> list[dict]:
    return json.loads(CAPTURED.read_text())["exp_show"]


@pytest.fixture
def params() -> dict:
    return json.loads(CAPTURED.read_text())["params_show"]


def row(shown: list[dict], name: str) -> dict:
    return next(r for r in shown if (r["Experiment"] or r["rev"]) == name)


# --- parsing -------------------------------------------------------------------------------------


def test_parse_keeps_finished_experiments_and_the_baseline(shown, params):
    rows, notes = sweep.parse(shown, params)
    assert {r.name for r in rows} == FINISHED
    assert sorted(notes) == ["skipped brash-kegs: failed",
                             "skipped dicey-mate: running"]


def test_row_holds_params_and_all_three_scores(shown, params):
    row(shown, "every-dirk")["data/digits"] = "1f0e.dir"  # a dependency's column: not a param
    rows, _ = sweep.parse(shown, params)
    r = next(r for r in rows if r.name == "every-dirk")
    assert (r.rev, r.dataset, r.T, r.alpha, r.seed) == ("1d9a430", "digits", 1.0, 0.9, 0)
    assert isinstance(r.T, float)  # `-S T=1` writes the int 1
    assert (r.teacher_errors, r.student_errors, r.distilled_errors) == (65, 62, 215)
    assert r.distilled_acc == pytest.approx(1 - 215 / 297)
    assert r.agreement == pytest.approx(0.35353535)
    assert r.config["distill.epochs"] == 1 and "T" not in r.config
    # The workspace's params say which columns are params: not the bare metric, nor a dependency.
    assert set(r.config) == set(sweep.flatten(params)) - {"dataset", "T", "alpha", "seed"}
    assert (r.config["teacher.flip"], r.config["data.root"], r.config["teacher.lr"]) == (False, None, 0.05)


def test_workspace_equal_to_an_experiment_is_dropped_but_a_new_one_is_kept(shown, params):
    rows, _ = sweep.parse(shown, params)
    assert "workspace" not in {r.name for r in rows}  # it repeats dizzy-bish
    row(shown, "workspace")["T"] = 3.0
    rows, _ = sweep.parse(shown, params)
    assert next(r for r in rows if r.name == "workspace").T == 3.0
    rows, _ = sweep.parse(shown, params, include_workspace=False)
    assert "workspace" not in {r.name for r in rows}


def test_queued_unreadable_and_metricless_records_are_skipped(shown, params):
    # As DVC shows a queued experiment: state "Queued", params set, no metrics.
    queued = row(shown, "tenty-eggs")
    queued.update({"State": "Queued", **{k: None for k in queued if k.startswith("metrics/")}})
    # A rev DVC could not read: nothing but its name (exp_show drops DVC's message).
    unread = row(shown, "dizzy-bish")
    unread.update({k: None for k in unread if k not in ("Experiment", "rev", "typ")})
    row(shown, "main")["metrics/teacher.json:test_acc"] = None
    row(shown, "main")["metrics/teacher.json:test_errors"] = None
    rows, notes = sweep.parse(shown, params)
    # The workspace no longer repeats a kept experiment, so it is a row of its own.
    assert {r.name for r in rows} == FINISHED - {"tenty-eggs", "main", "dizzy-bish"} | {"workspace"}
    assert "skipped tenty-eggs: queued" in notes
    assert "skipped dizzy-bish: DVC could not read it" in notes
    assert "skipped main: no test_acc/test_errors in metrics/teacher.json" in notes


# The hinton-mnist preset's values, as params.yaml holds them when an experiment selects it.
HINTON = {"teacher": {"arch": "mlp:1200-1200", "input_dropout": 0.2, "dropout": 0.5,
                      "max_norm": 3.873, "shift": 2, "epochs": 30},
          "student": {"arch": "mlp:800-800", "epochs": 30}, "distill": {"epochs": 30, "lr": 0.02}}


def two_presets(shown: list[dict], params: dict) -> list[dict]:
    """The captured sweep as two settings of three experiments each, a tie for the usual values:
    main, dizzy-bish and every-dirk (seed 0) on preset none; acerb-mine (seed 0), muley-seam and
    joint-ages (seed 1) on hinton-mnist, with its own teacher (50 and 52 errors) and student (70).
    tenty-eggs failed."""
    params["preset"] = "none"
    for r in shown:
        r["preset"] = "none"
    row(shown, "tenty-eggs")["State"] = "Failed"
    for name, teacher_errors in (("acerb-mine", 50), ("muley-seam", 52), ("joint-ages", 52)):
        r = row(shown, name)
        r["preset"] = "hinton-mnist"
        r.update({f"{section}.{k}": v if isinstance(v, str) else float(v)  # as DVC returns them
                  for section, values in HINTON.items() for k, v in values.items()})
        for model, errors in (("teacher", teacher_errors), ("student", 70)):
            r[f"metrics/{model}.json:test_acc"] = 1 - errors / 297
            r[f"metrics/{model}.json:test_errors"] = float(errors)
    return shown


def test_no_experiments_at_all_gives_no_rows(params):
    assert sweep.parse([], params) == ([], [])


# --- aggregation (golden values from the captured errors: acc = 1 - errors / 297) --------------


def test_stat_is_mean_and_sample_std():
    assert sweep.stat([1.0, 2.0, 3.0, 4.0]) == sweep.Stat(2.5, pytest.approx(1.2909944487), 4)
    assert sweep.stat([0.7]) == sweep.Stat(0.7, 0.0, 1)


def test_aggregate_over_seeds_golden(shown, params):
    rows, _ = sweep.parse(shown, params)
    groups = {(g.alpha, g.T): g for g in sweep.aggregate(rows)}
    assert list(groups) == [(0.5, 2.0), (0.9, 1.0), (0.9, 2.0), (0.9, 4.0), (0.9, 8.0)]
    g = groups[0.9, 1.0]  # seed 0: 215 errors, seed 1: 186
    assert g.seeds == (0, 1)
    assert g.distilled_errors == sweep.Stat(200.5, pytest.approx(20.5060967), 2)
    assert g.distilled_acc.mean == pytest.approx(1 - 200.5 / 297)
    assert g.distilled_acc.std == pytest.approx(20.5060967 / 297)
    assert g.gain.mean == pytest.approx(((62 - 215) + (91 - 186)) / 2 / 297)
    assert groups[0.5, 2.0].distilled_acc == sweep.Stat(pytest.approx(1 - 105 / 297), 0.0, 1)


def test_references_count_each_seed_once(shown, params):
    rows, _ = sweep.parse(shown, params)
    refs = sweep_cli.references(rows)
    assert list(refs) == [("digits", "")]
    refs = refs["digits", ""]
    # Seed 0 appears in five experiments, seed 1 in two; each counts once.
    assert refs["teacher"] == sweep.Stat(pytest.approx(1 - 66.5 / 297), pytest.approx(3 / 297 / 2 ** 0.5), 2)
    assert refs["student"].mean == pytest.approx(1 - 76.5 / 297)


def test_each_setting_has_its_own_teacher_and_student(shown, params):
    rows, _ = sweep.parse(two_presets(shown, params), params)
    refs = sweep_cli.references(rows)
    # Three experiments each: the tie goes to the first in sorted order, "hinton-mnist", which is
    # then the usual setting (""); the values the preset sets are not spelt out on its rows.
    assert list(refs) == [("digits", ""), ("digits", 'preset="none"')]
    hinton, default = refs["digits", ""], refs["digits", 'preset="none"']
    assert hinton["teacher"] == sweep.Stat(pytest.approx(1 - 51 / 297), pytest.approx(2 ** 0.5 / 297), 2)
    assert hinton["student"] == sweep.Stat(pytest.approx(1 - 70 / 297), 0.0, 2)
    assert default["teacher"] == sweep.Stat(pytest.approx(1 - 65 / 297), 0.0, 1)
    assert default["student"] == sweep.Stat(pytest.approx(1 - 62 / 297), 0.0, 1)
    # The table's teacher and student columns are each row's own experiments'.
    md = sweep_cli.markdown(rows)
    assert '| digits | preset="none" | 0.9 | 1 | 0 | — | 27.61 | 215 | -51.52 | 79.12 | 78.11 |' in md
    assert "| digits | — | 0.9 | 1 | 1 | — | 37.37 | 186 | -39.06 | 76.43 | 82.49 |" in md


# A fresh interpreter per PYTHONHASHSEED: string hashes, so set order, differ between them.
SWEEP_OUTPUT = """
import hashlib, json, sys
from pathlib import Path
from tools import sweep_rows as sweep
from tools import sweep as cli
shown = json.loads(Path(sys.argv[1]).read_text())
rows, notes = sweep.parse(shown["exp_show"], shown["params_show"])
cli.accuracy_vs_T_plot(rows, Path(sys.argv[2]))
print(cli.markdown(rows), notes, hashlib.sha256(Path(sys.argv[2]).read_bytes()).hexdigest())
"""


def test_output_is_the_same_under_any_hash_seed(shown, params, tmp_path):
    path = tmp_path / "exp_show.json"
    path.write_text(json.dumps({"exp_show": two_presets(shown, params), "params_show": params}))
    outputs = []
    for seed in ("0", "12345"):
        proc = subprocess.run([sys.executable, "-c", SWEEP_OUTPUT, str(path), str(tmp_path / f"{seed}.png")],
                              cwd=ROOT, capture_output=True, text=True, timeout=120,
                              env={**os.environ, "PYTHONHASHSEED": seed})
        assert proc.returncode == 0, proc.stderr
        outputs.append(proc.stdout)
    assert 'preset="none"' in outputs[0]  # the tie is there to be broken
    assert outputs[0] == outputs[1]


# --- table and plot ------------------------------------------------------------------------------


def test_markdown_has_a_line_per_setting_and_per_experiment(shown, params):
    rows, _ = sweep.parse(shown, params)
    md = sweep_cli.markdown(rows, "accuracy_vs_T.png")
    assert "| digits | — | 0.9 | 1 | 0, 1 | — | 32.49 ± 6.90 | 200.5 | -41.75 ± 13.81 |" in md
    assert "| digits | — | 0.5 | 2 | 0 | — | 64.65 | 105 | -14.48 | 79.12 | 78.11 |" in md
    assert "| `every-dirk` | `1d9a430` | digits | 1 | 0.9 | 0 | 78.11 | 79.12 | 27.61 |" in md
    assert "Warning" not in md and "differ in" not in md and "](accuracy_vs_T.png)" in md
    assert sweep_cli.repeated_seeds(sweep.aggregate(rows)) == []


def with_val_acc(shown: list[dict], val: dict[str, float]) -> list[dict]:
    """The captured rows with metrics/distilled.json:val_acc set (the capture predates it)."""
    for name, acc in val.items():
        row(shown, name)["metrics/distilled.json:val_acc"] = acc
    return shown


def test_validation_chooses_the_setting_and_the_test_split_only_reports_it(shown, params):
    # At alpha 0.9 the test split ranks T = 1 first (200.5 errors over two seeds, T = 2: 227);
    # validation prefers T = 2.
    # The workspace repeats dizzy-bish (and is dropped as its double); brash-kegs failed.
    with_val_acc(shown, {"main": 0.30, "dizzy-bish": 0.50, "workspace": 0.50, "every-dirk": 0.20,
                         "joint-ages": 0.40, "acerb-mine": 0.35, "muley-seam": 0.35, "tenty-eggs": 0.90})
    rows, _ = sweep.parse(shown, params)
    groups = sweep.aggregate(rows)
    best_test = max((g for g in groups if g.alpha == 0.9), key=lambda g: g.distilled_acc.mean)
    (chosen,) = sweep.chosen_on_validation(groups)
    assert (best_test.T, chosen.alpha, chosen.T) == (1.0, 0.5, 2.0)  # tenty-eggs: alpha 0.5
    assert chosen.distilled_val_acc == sweep.Stat(0.90, 0.0, 1)
    md = sweep_cli.markdown(rows)
    assert "| digits | — | 0.5 | 2 | 0 | 90.00 | 64.65 | -14.48 |" in md  # the test acc of the pick
    row(shown, "tenty-eggs")["metrics/distilled.json:val_acc"] = 0.10
    rows, _ = sweep.parse(shown, params)
    (chosen,) = sweep.chosen_on_validation(sweep.aggregate(rows))
    assert (chosen.alpha, chosen.T) == (0.9, 2.0) and chosen.seeds == (0,)
    assert "| digits | — | 0.9 | 2 | 0 | 50.00 | 23.57 |" in sweep_cli.markdown(rows)


def test_no_choice_without_validation_accuracy(shown, params):
    rows, _ = sweep.parse(shown, params)
    assert sweep.chosen_on_validation(sweep.aggregate(rows)) == []
    assert "No experiment holds a distilled validation accuracy" in sweep_cli.markdown(rows)


def test_other_params_make_their_own_setting_never_pooled(shown, params):
    row(shown, "muley-seam")["distill.epochs"] = 5.0
    rows, _ = sweep.parse(shown, params)
    assert sweep.varying_params(rows) == ["distill.epochs"]
    odd = [g for g in sweep.aggregate(rows) if g.setting]
    assert [(g.setting, g.seeds) for g in odd] == [("distill.epochs=5", (1,))]
    md = sweep_cli.markdown(rows)
    assert "differ in distill.epochs" in md and "| distill.epochs=5 |" in md


def test_plot_is_a_png_written_atomically(shown, params, tmp_path):
    rows, _ = sweep.parse(shown, params)
    rows.append(dataclasses.replace(rows[0], name="other", dataset="mnist"))  # a second panel
    sweep_cli.accuracy_vs_T_plot(rows, tmp_path / "out" / "plot.png")
    assert (tmp_path / "out" / "plot.png").read_bytes()[:8] == PNG_MAGIC
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["plot.png"]


# --- the command ---------------------------------------------------------------------------------


def fake_dvc(monkeypatch, shown: list, params: dict, current: bool) -> None:
    """DVC's rows and params as `show` returns them; `current`: `dvc status` finds nothing to do."""
    monkeypatch.setattr(sweep_cli, "show", lambda repo, all_commits, revs: (shown, params, current))


def test_main_writes_table_and_plot(shown, params, tmp_path, monkeypatch, capsys):
    fake_dvc(monkeypatch, shown, params, True)
    sweep_cli.main(["--out", str(tmp_path / "sweep")])
    out, err = capsys.readouterr()
    assert (tmp_path / "sweep" / "sweep.md").read_text() in out
    assert (tmp_path / "sweep" / "accuracy_vs_T.png").read_bytes()[:8] == PNG_MAGIC
    assert "skipped brash-kegs" in err and "skipped workspace" not in err


def test_main_leaves_out_a_stale_workspace(shown, params, tmp_path, monkeypatch, capsys):
    row(shown, "workspace")["T"] = 3.0  # edited, not reproduced
    fake_dvc(monkeypatch, shown, params, False)
    sweep_cli.main(["--out", str(tmp_path)])
    out, err = capsys.readouterr()
    assert "| workspace |" not in out and "skipped workspace" in err


def test_main_fails_in_one_line_without_results(params, tmp_path, monkeypatch, capsys):
    fake_dvc(monkeypatch, [], params, True)
    with pytest.raises(SystemExit) as exit_:
        sweep_cli.main(["--out", str(tmp_path)])
    assert exit_.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: no experiment has metrics yet") and err.count("\n") == 1
    assert not list(tmp_path.iterdir())


def test_show_asks_dvc_and_names_the_baseline_by_its_branch_and_commit(tmp_path):
    sh(tmp_path, "git", "init", "-q", "-b", "main")
    sh(tmp_path, sys.executable, "-m", "dvc", "init", "-q")
    (tmp_path / "params.yaml").write_text("T: 4\nteacher:\n  epochs: 2\n  flip: false\n")
    (tmp_path / "dvc.yaml").write_text("stages:\n  s:\n    cmd: echo\n    params: [T, teacher]\n")
    sh(tmp_path, "git", "add", "-A")
    sh(tmp_path, "git", "commit", "-qm", "project")
    shown, params, current = sweep_cli.show(tmp_path, all_commits=False)
    head = sh(tmp_path, "git", "rev-parse", "--short=7", "HEAD").strip()
    assert [(r["Experiment"], r["rev"], r["typ"]) for r in shown] == [
        (None, "workspace", "baseline"), ("main", head, "baseline")]
    # As exp_show returns values: numbers as floats, the rest as Python's text.
    assert (shown[1]["T"], shown[1]["teacher.epochs"], shown[1]["teacher.flip"]) == (4.0, 2.0, "False")
    assert params == {"T": 4, "teacher": {"epochs": 2, "flip": False}}
    assert current is False  # stage s never ran
    # --rev: the experiments of the commits asked for, not HEAD's
    (tmp_path / "params.yaml").write_text("T: 8\nteacher:\n  epochs: 2\n  flip: false\n")
    sh(tmp_path, "git", "commit", "-qam", "T 8")
    shown, _, _ = sweep_cli.show(tmp_path, all_commits=False, revs=[head])
    assert [(r["rev"], r["T"]) for r in shown if r["rev"] != "workspace"] == [(head, 4.0)]


def test_all_commits_and_rev_are_refused_together(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        sweep_cli.main(["--repo", str(tmp_path), "--all-commits", "--rev", "abc1234"])
    assert exit_.value.code == 1
    assert capsys.readouterr().err == \
        "error: --all-commits and --rev both choose the commits: give one of them\n"


def test_main_fails_in_one_line_outside_a_dvc_repo(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        sweep_cli.main(["--repo", str(tmp_path), "--out", str(tmp_path / "sweep")])
    assert exit_.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: dvc exp show failed") and err.count("\n") == 1


# --- the loss comparison (--losses) ---------------------------------------------------------------


def _loss_row(loss, seed, val, test, T=2.0, alpha=0.9, **knobs):
    config = {"distill.loss": loss, "distill.epochs": 15, "distill.dkd_beta": 8.0,
              "distill.dist_beta": 1.0, **{f"distill.{k}": v for k, v in knobs.items()}}
    return sweep.Row(f"{loss}-{seed}-{T}-{knobs}", "abc1234", "fashion-mnist", T, alpha, seed,
                     0.92 + seed / 1000, 800, 0.89 + seed / 1000, 1100, test, 0, 0.95, val, config)


def test_each_loss_is_chosen_on_mean_validation_and_reported_on_test():
    rows = [
        # dkd: beta 8 wins on validation (mean 0.905) though beta 2 is better on test
        *(_loss_row("dkd", s, 0.905, 0.900, dkd_beta=8.0) for s in (0, 1, 2)),
        *(_loss_row("dkd", s, 0.900, 0.910, dkd_beta=2.0) for s in (0, 1, 2)),
        *(_loss_row("kd", s, 0.90 + s / 100, 0.905, T=T) for s in (0, 1) for T in (2.0, 4.0)),
        _loss_row("kd", 0, 0.99, 0.5, T=8.0, **{"epochs": 1}),  # another setting: not pooled
    ]
    rows.append(dataclasses.replace(rows[0], config={**rows[0].config, "distill.loss": None},
                                    name="from-before-losses"))
    choices = sweep.by_loss(rows)
    assert [c.loss for c in choices] == ["kd", "dkd"]  # Hinton's first
    kd, dkd = choices
    assert dkd.chosen.knobs == {"dkd_beta": 8.0} and dkd.chosen.group.seeds == (0, 1, 2)
    assert dkd.chosen.group.distilled_acc.mean == pytest.approx(0.900)
    assert len(dkd.tried) == 2
    assert kd.chosen.group.T == 8.0 and kd.chosen.knobs == {}  # the one-epoch setting: val 0.99
    assert len(kd.tried) == 3
    # gap closed: (distilled - student) / (teacher - student) of the means
    g = dkd.chosen.group
    assert sweep.gap_closed(g) == pytest.approx((0.900 - 0.891) / (0.921 - 0.891))
    md = sweep_cli.losses_markdown(choices, "losses.png")
    # kd's setting is its alpha and T; a successor's, its own knobs alone (it reads no T or alpha)
    assert "| fashion-mnist | DKD (Zhao et al. 2022) | 2 | dkd_beta=8 | 0, 1, 2 | " \
           "90.50 ± 0.00 | 90.00 ± 0.00 |" in md
    assert "| dkd | dkd_beta=2 | 0, 1, 2 | 90.00 ± 0.00 | 91.00 ± 0.00" in md
    assert "| KD (Hinton et al. 2015) | 3 | alpha=0.9, T=8 |" in md
    assert md.count("**(chosen)**") == 2 and "![distilled test accuracy per loss](losses.png)" in md


def test_the_losses_plot_is_a_png(tmp_path):
    rows = [_loss_row(loss, s, 0.9, 0.9 + s / 100) for loss in ("kd", "ls") for s in (0, 1)]
    sweep_cli.losses_plot(sweep.by_loss(rows), tmp_path / "losses.png")
    assert (tmp_path / "losses.png").read_bytes().startswith(PNG_MAGIC)


def test_failed_experiments_are_listed_with_their_loss_settings():
    shown = [{"Experiment": "hot-dkd", "rev": "a" * 7, "State": "Failed", "dataset": "fashion-mnist",
              "distill.loss": "dkd", "distill.dkd_beta": 8.0, "distill.dkd_alpha": 1.0,
              "distill.dist_beta": 1.0, "T": 2.0, "alpha": 0.9, "seed": 1.0},
             {"Experiment": "fine", "rev": "b" * 7, "State": "Success", "distill.loss": "kd"},
             {"Experiment": "old-failure", "rev": "c" * 7, "State": "Failed"}]  # before losses
    table = sweep_cli.failed_table(shown)
    assert table.splitlines()[2] == \
        "| `hot-dkd` | fashion-mnist | dkd | dkd_alpha=1, dkd_beta=8 | 1 |"
    assert len(table.splitlines()) == 3
    assert sweep_cli.failed_table(shown[1:]) is None
    md = sweep_cli.losses_markdown(sweep.by_loss([_loss_row("kd", 0, 0.9, 0.9)]), failed=table)
    assert "## Experiments that failed" in md and "| `hot-dkd` |" in md


def test_another_losss_knobs_neither_split_a_setting_nor_repeat_an_experiment(shown, params):
    """A kd experiment run before and after `distill.dkd_beta`'s default moved is the same
    experiment and the same setting: dkd's knobs do not touch it. dkd experiments that differ in
    dkd_beta are two settings."""
    params = {**params, "distill": {**params.get("distill", {}), "loss": "kd", "dkd_beta": 8.0}}
    base = dict(row(shown, "every-dirk"), **{"distill.loss": "kd", "distill.dkd_beta": 8.0})
    moved = dict(base, Experiment="after-the-move", rev="workspace", **{"distill.dkd_beta": 1.0})
    dkd = [dict(base, Experiment=f"dkd-{b}", **{"distill.loss": "dkd", "distill.dkd_beta": b})
           for b in (8.0, 1.0)]
    rows, _ = sweep.parse([base, moved, *dkd], params)
    assert sorted(r.name for r in rows) == ["dkd-1.0", "dkd-8.0", "every-dirk"]
    labels = dict(zip((r.name for r in rows), sweep.settings(rows), strict=True))
    assert "dkd_beta" not in labels["every-dirk"]
    assert labels["dkd-1.0"] != labels["dkd-8.0"]
