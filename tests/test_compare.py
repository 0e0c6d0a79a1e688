"""tools.compare: the README's terminal view of experiments, from dvc.api.exp_show records."""

from tools.compare import render, rows


def record(name, rev, T, acc, state=None, preset="hinton-mnist"):
    return {"Experiment": name, "rev": rev, "State": state, "dataset": "fashion-mnist",
            "preset": preset, "seed": 0.0, "T": T, "alpha": 0.9,
            **({"metrics/teacher.json:test_acc": 0.9249, "metrics/student.json:test_acc": 0.8985,
                "metrics/distilled.json:test_acc": acc} if acc is not None else {})}


def test_one_line_per_experiment_with_the_required_columns_in_120_characters():
    records = [record(None, "workspace", 4.0, 0.9052, preset="none"),
               record(None, "a" * 40, 4.0, 0.9052, preset="cifar100-resnet"),
               record("unfed-bass-gloriously-long", "b" * 40, 20.0, 0.90431),
               record("queued-one", "c" * 40, 8.0, None, state="Queued")]
    text = render(rows(records))
    lines = text.splitlines()
    assert lines[0].split() == ["Experiment", "dataset", "preset", "seed", "T", "alpha", "loss",
                                "teacher%", "student%", "distilled%"]
    assert max(len(line) for line in lines) <= 120
    assert lines[2].split() == ["workspace", "fashion-mnist", "none", "0", "4", "0.9", "-",
                                "92.49%", "89.85%", "90.52%"]
    assert lines[3].split()[0] == "aaaaaaa"  # a baseline commit: its short sha
    assert lines[4].split() == ["unfed-bass-gloriously-long", "fashion-mnist", "hinton-mnist",
                                "0", "20", "0.9", "-", "92.49%", "89.85%", "90.43%"]
    assert lines[5].split() == ["queued-one", "(queued)", "fashion-mnist", "hinton-mnist", "0",
                                "8", "0.9", "-", "-", "-", "-"]


def test_the_loss_column_names_the_loss_and_its_own_settings_only():
    dkd = {**record("dkd-one", "d" * 40, 4.0, 0.91), "distill.loss": "dkd", "distill.dkd_alpha": 1.0,
           "distill.dkd_beta": 8.0, "distill.dkd_warmup": 2, "distill.dist_beta": 1.0,
           "distill.dist_gamma": 1.0}
    kd = {**dkd, "Experiment": "kd-one", "distill.loss": "kd"}
    text = render(rows([dkd, kd]))
    assert max(len(line) for line in text.splitlines()) <= 120
    cells = [line.split() for line in text.splitlines()[2:]]
    assert cells[0][6:10] == ["dkd", "a=1", "b=8", "w=2"]
    assert cells[1][6] == "kd" and cells[1][7] == "92.49%"
