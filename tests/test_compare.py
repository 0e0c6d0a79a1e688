"""tools.compare: the README's terminal view of experiments, from dvc.api.exp_show records."""

from tools.compare import render, rows

# Every loss's knobs as params.yaml holds them (DVC's flat names), the shipped defaults
KNOBS = {"distill.dkd_ce": 1.0, "distill.dkd_alpha": 1.0, "distill.dkd_beta": 8.0, "distill.dkd_T": 4.0,
         "distill.dkd_warmup": 0.0833, "distill.ls_ce": 1.0, "distill.ls_kd": 9.0, "distill.ls_T": 2.0,
         "distill.dist_beta": 1.0, "distill.dist_gamma": 1.0, "distill.dist_tau": 1.0}


def record(name, rev, T, acc, state=None, preset="hinton-mnist", loss="kd", **knobs):
    return {"Experiment": name, "rev": rev, "State": state, "dataset": "fashion-mnist",
            "preset": preset, "seed": 0.0, "T": T, "alpha": 0.9, "distill.loss": loss, **KNOBS,
            **{f"distill.{k}": v for k, v in knobs.items()},
            **({"metrics/teacher.json:test_acc": 0.9249, "metrics/student.json:test_acc": 0.8985,
                "metrics/distilled.json:test_acc": acc, "metrics/distilled.json:val_acc": acc + 0.0071}
               if acc is not None else {})}


def test_one_line_per_experiment_with_the_required_columns_in_120_characters():
    records = [record(None, "workspace", 4.0, 0.9052, preset="none"),
               record(None, "a" * 40, 4.0, 0.9052, preset="cifar100-resnet"),
               record("unfed-bass-gloriously-long", "b" * 40, 20.0, 0.90431),
               record("queued-one", "c" * 40, 8.0, None, state="Queued"),
               record("dkd-long-name-1", "d" * 40, 2.0, 0.9101, preset="cifar100-resnet",
                      loss="dkd", dkd_beta=2.0, dkd_warmup=0.25)]
    text = render(rows(records))
    lines = text.splitlines()
    assert lines[0].split() == ["Experiment", "dataset", "preset", "seed", "loss", "teacher%", "student%",
                                "distilled%", "val%"]
    assert max(len(line) for line in lines) <= 120
    assert lines[2].split() == ["workspace", "fashion-mnist", "none", "0", "kd", "T=4", "a=0.9",
                                "92.49%", "89.85%", "90.52%", "91.23%"]
    assert lines[3].split()[0] == "aaaaaaa"  # a baseline commit: its short sha
    assert lines[4].split() == ["unfed-bass-gloriously-long", "fashion-mnist", "hinton-mnist",
                                "0", "kd", "T=20", "a=0.9", "92.49%", "89.85%", "90.43%", "91.14%"]
    assert lines[5].split() == ["queued-one", "(queued)", "fashion-mnist", "hinton-mnist", "0",
                                "kd", "T=8", "a=0.9", "-", "-", "-", "-"]
    # DVC shows a failed experiment with its baseline's metrics files: none of them is its own
    failed = render(rows([record("hot-dkd", "e" * 40, 4.0, 0.9052, state="Failed", loss="dkd")]))
    assert failed.splitlines()[2].split()[-4:] == ["-", "-", "-", "-"]


def test_the_loss_column_names_the_loss_and_its_own_settings_only():
    dkd = record("dkd-one", "d" * 40, 4.0, 0.91, loss="dkd", dkd_beta=2.0)
    ls = record("ls-one", "e" * 40, 4.0, 0.905, loss="ls", ls_ce=0.1)
    dist = record("dist-one", "f" * 40, 4.0, 0.9, loss="dist", dist_tau=4.0)
    old = {k: v for k, v in record("kd-old", "a" * 40, 2.0, 0.9).items() if not k.startswith("distill.")}
    text = render(rows([dkd, ls, dist, old]))
    assert max(len(line) for line in text.splitlines()) <= 120
    cells = [line.split() for line in text.splitlines()[2:]]
    # T and alpha are kd's alone; a successor's knobs where they depart from its authors' recipe
    assert cells[0][4:6] == ["dkd", "b=2"] and cells[0][6] == "92.49%"
    assert cells[1][4:6] == ["ls", "c=0.1"]
    assert cells[2][4:6] == ["dist", "t=4"]
    assert cells[3][4:7] == ["kd", "T=2", "a=0.9"]  # from before the loss was a param: kd
    assert cells[0][6:] == ["92.49%", "89.85%", "91.00%", "91.71%"]
    recipe = record("dkd-two", "d" * 40, 4.0, 0.91, loss="dkd", dkd_T=1.0, dkd_alpha=0.5)
    assert render(rows([recipe])).splitlines()[2].split()[4:7] == ["dkd", "a=0.5", "T=1"]
    assert render(rows([record("dkd-three", "d" * 40, 4.0, 0.91, loss="dkd")])).splitlines()[2].split()[4:6] \
        == ["dkd", "92.49%"]
