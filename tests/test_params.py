"""params.yaml validation: every bad value stops a stage with exit 2 and a message naming the key."""

import subprocess

import pytest
import yaml

from kd import datasets, losses
from kd.config.experiment_names import experiment_name_error
from kd.config.params import ParamsError, load, validate
from tests.conftest import ROOT, committed, composed, tiny_params, write_params


def test_the_shipped_params_file_and_conf_s_defaults_are_valid():
    # Whatever experiment HEAD's params.yaml holds (`dvc exp apply`, then a commit): its values are
    # the user's, its validity is the project's. conf/'s own composition is what `dvc exp run`
    # starts from; tests/test_presets.py checks each dataset's and preset's.
    for raw in (yaml.safe_load(committed("params.yaml")), composed()):
        validate(raw)  # raises ParamsError naming the key


def test_int_accepted_where_a_float_is_expected():
    raw = tiny_params()
    raw["T"], raw["alpha"], raw["teacher"]["lr"] = 4, 1, 1  # what `dvc exp run -S T=4` writes
    p = validate(raw)
    assert p.T == 4.0 and isinstance(p.T, float) and p.alpha == 1.0


def _set(raw, dotted, value):
    *path, last = dotted.split(".")
    node = raw
    for k in path:
        node = node[k]
    if value is _DELETE:
        del node[last]
    else:
        node[last] = value


class _Delete:
    """Marks a key to remove; its repr names the test case the same in every process."""

    def __repr__(self) -> str:
        return "<deleted>"


_DELETE = _Delete()

BAD = [
    ("T", 0, "T must be a number in [0.1, 100] (got 0.0)"),
    ("T", float("inf"), "T must be a number in [0.1, 100] (got inf)"),
    ("T", float("nan"), "T must be a number in [0.1, 100] (got nan)"),
    ("T", 0.0999, "T must be a number in [0.1, 100] (got 0.0999)"),
    ("T", 100.001, "T must be a number in [0.1, 100] (got 100.001)"),
    ("T", 1e8, "T must be a number in [0.1, 100] (got 100000000.0)"),
    ("teacher.weight_decay", float("inf"), "teacher.weight_decay must be a finite number >= 0"),
    ("distill.grad_clip", float("inf"), "distill.grad_clip must be a finite number >= 0"),
    ("student.max_norm", float("-inf"), "student.max_norm must be a finite number >= 0"),
    ("T", -1, "T must be"),
    ("T", "hot", "T must be"),
    ("alpha", 1.5, "alpha must be a number in [0, 1]"),
    ("alpha", -0.1, "alpha must be"),
    ("teacher.epochs", 0, "teacher.epochs must be an integer >= 1"),
    ("distill.epochs", 2.5, "distill.epochs must be an integer >= 1"),
    ("student.epochs", True, "student.epochs must be an integer"),
    ("dataset", "imagenet", f"dataset must be one of {', '.join(datasets.names())} (kd/datasets/)"),
    ("teacher.arch", "vgg16", "teacher.arch must be auto or an architecture"),
    ("student.arch", "mlp:0", "student.arch must be auto or an architecture"),
    ("teacher.lr", 0, "teacher.lr must be"),
    ("student.dropout", 1.0, "student.dropout must be"),
    ("distill.flip", "yes", "distill.flip must be true or false"),
    ("data.val_fraction", 0.9, "data.val_fraction must be"),
    ("seed", -3, "seed must be an integer in [0, 2**63 - 1] (got -3)"),
    ("seed", 2**63, "seed must be an integer in [0, 2**63 - 1] (got 9223372036854775808)"),
    ("seed", 2**64, "seed must be an integer in [0, 2**63 - 1] (got 18446744073709551616)"),
    ("data.split_seed", -1, "data.split_seed must be an integer in [0, 2**64 - 1] (got -1)"),
    ("data.split_seed", 2**64,
     "data.split_seed must be an integer in [0, 2**64 - 1] (got 18446744073709551616)"),
    ("data.split_seed", 1.0, "data.split_seed must be an integer in [0, 2**64 - 1] (got 1.0)"),
    ("teacher.epoch", 3, "teacher.epoch is not a known key; allowed: arch,"),
    ("temperature", 3, "temperature is not a known key"),
    ("distill.arch", "mlp:10", "distill.arch is not a known key"),
    ("teacher.lr", _DELETE, "teacher.lr is missing"),
    ("alpha", _DELETE, "alpha is missing"),
    ("launch", "srun -n 2", "launch must be python or a torchrun command"),
    *[("launch", v, "launch must be python or a torchrun command") for v in (
        "python $(touch pwned)", "python `touch pwned`", "python; touch pwned",
        "torchrun --standalone && touch pwned", "python | tee log", "python\ntouch pwned",
        "torchrun --master-addr x\ntouch pwned", "python 'x'", 'torchrun --nproc-per-node="2"',
        "python > log", "torchrun --rdzv-endpoint=$HOST", "python3 -c pwned", "torchrun -x 1")],
    ("launch", "", "launch must be python or a torchrun command"),
    ("launch", _DELETE, "launch is missing"),
]


@pytest.mark.parametrize("key,value", [("T", 0.1), ("T", 100), ("seed", 0), ("seed", 2**63 - 1),
                                       ("data.split_seed", 0), ("data.split_seed", 2**64 - 1),
                                       ("distill.fraction", 1.0), ("distill.fraction", 1e-6)])
def test_the_edges_of_each_range_are_allowed(key, value):
    raw = tiny_params()
    _set(raw, key, value)
    validate(raw)


@pytest.mark.parametrize("launch", [
    "python", "python3", "torchrun --standalone --nproc-per-node 2",
    "torchrun --standalone --nproc-per-node=2",
    "torchrun --nnodes 2 --node-rank 0 --nproc-per-node 8 --master-addr node-a --master-port 29500",
    "torchrun --rdzv-backend=c10d --rdzv-endpoint=10.0.0.1:29400 --nnodes 1:4"])
def test_launch_accepts_the_launchers_the_readme_shows(launch):
    raw = tiny_params()
    raw["launch"] = launch
    assert validate(raw).launch == launch


@pytest.mark.parametrize("key,value,message", BAD, ids=[f"{k}={v!r}" for k, v, _ in BAD])
def test_bad_value_is_refused_with_its_key(key, value, message):
    raw = tiny_params()
    _set(raw, key, value)
    with pytest.raises(ParamsError) as err:
        validate(raw)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("stage", ["download", "teacher", "student", "soft_targets", "distill",
                                   "report"])
def test_stage_exits_2_before_touching_anything(stage, workdir, capsys, monkeypatch):
    import importlib

    monkeypatch.setenv("KD_TRACKING", "off")
    raw = tiny_params()
    raw["teacher"]["epochs"] = 0
    write_params(workdir, raw)
    with pytest.raises(SystemExit) as exc:
        importlib.import_module(f"stages.{stage}").main([])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and "teacher.epochs must be an integer >= 1" in err
    assert sorted(p.name for p in workdir.iterdir()) == ["params.yaml"]  # nothing written


def test_missing_or_broken_params_file(tmp_path):
    with pytest.raises(ParamsError, match="no such params file"):
        load(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("T: [1,\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load(tmp_path / "bad.yaml")


def test_preset_names_are_the_conf_preset_files():
    # `-S preset=<name>` selects conf/preset/<name>.yaml; kd/config/params.py must know the same names.
    assert set(datasets.preset_names()) == {f.stem for f in (ROOT / "conf" / "preset").glob("*.yaml")}
    # every preset a dataset claims is one of them, and each but none is made for some dataset
    claimed = {p for d in datasets.names() for p in datasets.get(d).presets}
    assert claimed == set(datasets.preset_names()) - {"none"}


@pytest.mark.parametrize("preset,dataset,message", [
    ("paper", "mnist",
     "preset must be one of none, cifar100-resnet, hinton-mnist, patient-consistent (conf/preset/) "
     "(got 'paper')"),
    ("cifar100-resnet", "fashion-mnist",
     "preset cifar100-resnet is made for dataset cifar100 or cifar10 (dataset is 'fashion-mnist')"),
    ("hinton-mnist", "digits",
     "preset hinton-mnist is made for dataset mnist or fashion-mnist (dataset is 'digits')"),
])
def test_bad_preset_is_refused(preset, dataset, message):
    raw = tiny_params()
    raw.update(preset=preset, dataset=dataset)
    with pytest.raises(ParamsError) as err:
        validate(raw)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_preset_is_a_name_only_the_values_in_the_file_run():
    # conf/ composes a preset's values into params.yaml; nothing is overlaid at load time.
    raw = tiny_params()
    raw.update(dataset="mnist", preset="hinton-mnist")
    p = validate(raw)
    assert p.teacher.arch == "auto" and p.teacher.epochs == raw["teacher"]["epochs"]
    assert p.preset == "hinton-mnist"


def checked(raw):
    """What the check stage runs: the schema, then the loss registry's own checks."""
    p = validate(raw)
    losses.validate(p)
    return p


@pytest.mark.parametrize("key,value,message", [
    ("omit_classes", [10], "distill.omit_classes must hold class indices 0..9"),
    ("omit_classes", "3", "distill.omit_classes must be a list of class indices"),
    ("keep_classes", [-1], "distill.keep_classes must be a list of class indices"),
    ("fraction", 0, "distill.fraction must be a number in (0, 1]"),
    # more than the whole transfer set: it would run as 1.0 and be logged as 1.5
    ("fraction", 1.5, "distill.fraction must be a number in (0, 1] (got 1.5)"),
    ("fraction", 1.0001, "distill.fraction must be a number in (0, 1] (got 1.0001)"),
    ("bias_correction", "big", "distill.bias_correction must be auto or a number >= 0"),
    ("bias_correction", -1, "distill.bias_correction must be a finite number >= 0"),
    ("loss", "crd", f"distill.loss must be one of {', '.join(losses.names())} (got 'crd')"),
    ("loss", None, "distill.loss must be a loss's name (kd/losses/) (got None)"),
    ("dkd_bta", 1.0, "distill.dkd_bta is not a known key; allowed: epochs, "),
    ("dkd_beta", -1, "distill.dkd_beta must be a finite number >= 0 (got -1.0)"),
    ("dkd_warmup", 1.5, "distill.dkd_warmup must be a number in [0, 1] (got 1.5)"),
    ("dist_gamma", "two", "distill.dist_gamma must be a finite number >= 0 (got 'two')"),
])
def test_bad_transfer_settings(key, value, message):
    raw = tiny_params()
    raw["distill"][key] = value
    with pytest.raises(ParamsError, match=message.replace("(", r"\(").replace(")", r"\)")
                       .replace("[", r"\[").replace("]", r"\]").replace(".", r"\.")):
        checked(raw)


def test_dkd_refuses_mixup_whose_labels_it_cannot_split():
    raw = tiny_params()
    raw["distill"].update(loss="dkd", mixup=0.2)
    with pytest.raises(ParamsError, match=r"distill.loss dkd splits .* set distill.mixup 0 or another loss"):
        checked(raw)
    raw["distill"]["loss"] = "dist"
    assert validate(raw).distill.loss == "dist"


def test_transfer_set_must_keep_a_class():
    raw = tiny_params()
    raw["distill"].update(keep_classes=[3], omit_classes=[3])
    with pytest.raises(ParamsError, match="leave no class"):
        validate(raw)


@pytest.mark.parametrize("arch,ok", [("cnn:8-8-8", True), ("cnn:8-8-8-8", False), ("mlp:8", True)])
def test_cnn_may_not_pool_the_image_below_one_pixel(arch, ok):
    raw = tiny_params()  # digits: 8x8 images, so at most 3 halvings
    raw["teacher"]["arch"] = arch
    if ok:
        validate(raw)
        return
    with pytest.raises(ParamsError, match=r"teacher.arch cnn:8-8-8-8 has 4 pooling blocks, but "
                                          r"digits 8x8 images allow at most 3"):
        validate(raw)


def test_error_names_the_file_once(workdir, capsys):
    from stages import check

    for argv, message in ((["--params", "nope.yaml"], "error: nope.yaml: no such params file\n"),
                          ([], "error: params.yaml: T must be a number in [0.1, 100] (got inf)\n")):
        raw = tiny_params()
        raw["T"] = float("inf")
        write_params(workdir, raw)
        with pytest.raises(SystemExit) as exc:
            check.main(argv)
        assert exc.value.code == 2 and capsys.readouterr().err == message
    assert not (workdir / "checks").exists()


def test_check_stage_writes_the_same_marker_for_any_valid_params(workdir):
    from stages import check

    check.main([])
    first = (workdir / "checks/params.ok").read_bytes()
    raw = tiny_params()
    raw["T"] = 8
    write_params(workdir, raw)
    check.main([])
    # the same bytes: DVC then reruns only the stages whose own params changed
    assert (workdir / "checks/params.ok").read_bytes() == first


# `dvc exp run -n NAME` tried for real (DVC 3.67, ext4): names up to 250 bytes are stored, longer ones
# fail with "File name too long" on NAME.lock after every stage ran; the characters git refuses
# are refused by DVC before any stage runs; `-`, `@`, `<`, `>` and the like are stored as they are.
NAMES_REFUSED = [
    ("a" * 251, "it is 251 bytes long; DVC stores it as a git ref file, whose name may hold 250 bytes "
                "(255 less '.lock')"),
    ("a" * 255, "it is 255 bytes long"),
    ("a" * 300, "it is 300 bytes long"),
    ("\u00e9" * 126, "it is 252 bytes long"),  # é is two bytes in UTF-8
    ("a b", "it holds ' '; a git ref may hold no space, control character or any of ~ ^ : ? * [ \\ "
            "(nor / for DVC)"),
    *[(f"a{c}b", f"it holds {c!r}; a git ref may hold no") for c in "~^:?*[\\/\t\x7f"],
    ("a..b", "it holds '..', which a git ref may not"),
    ("a@{b", "it holds '@{', which a git ref may not"),
    (".ab", "it starts with '.', which a git ref may not"),
    ("ab.", "it ends with '.', which a git ref may not"),
    ("ab.lock", "it ends with '.lock', which a git ref may not"),
    ("", "it is empty"),
]
NAMES_STORED = ["a" * 240, "a" * 250, "\u00e9" * 125, "-ab", "-", "@", "a@b", "a<b>c", "a.b", "a.lock.x",
                "T=4,alpha=0.5", "a'b\"c$d#e%f", "workspace", "smoke-exp"]


def _name_id(name: str) -> str:
    return f"{name[:8]!r}" + (f"...({len(name)})" if len(name) > 8 else "")


@pytest.mark.parametrize("name,message", NAMES_REFUSED, ids=[_name_id(n) for n, _ in NAMES_REFUSED])
def test_experiment_name_dvc_cannot_store_is_refused_in_one_line(name, message):
    error = experiment_name_error(name)
    assert error is not None and message in error and "\n" not in error


@pytest.mark.parametrize("name", NAMES_STORED, ids=[_name_id(n) for n in NAMES_STORED])
def test_experiment_name_dvc_stores_is_accepted(name):
    assert experiment_name_error(name) is None


def test_experiment_name_error_agrees_with_dvc(tmp_path):
    # What `dvc exp run -n NAME` does with NAME, without running a stage: DVC's own check, then the
    # ref written where the experiment's commit goes. ("" is not a name: DVC makes one up.)
    from dvc.exceptions import InvalidArgumentError
    from dvc.repo.experiments.refs import ExpRefInfo
    from dvc.repo.experiments.utils import check_ref_format
    from scmrepo.git import Git

    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    subprocess.run(["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t", "commit",
                    "-q", "--allow-empty", "-m", "baseline"], check=True)
    scm = Git(str(tmp_path))
    sha = scm.get_rev()

    def dvc_stores(name: str) -> bool:
        ref = ExpRefInfo(baseline_sha=sha, name=name)
        try:
            check_ref_format(scm, ref)
            scm.set_ref(str(ref), sha)
        except (InvalidArgumentError, OSError):
            return False
        return scm.get_ref(str(ref)) == sha

    names = [n for n, _ in NAMES_REFUSED if n] + NAMES_STORED
    assert {n: experiment_name_error(n) is None for n in names} == {n: dvc_stores(n) for n in names}


def test_a_loss_knob_given_as_an_integer_is_held_as_a_float():
    """`-S distill.ls_kd=9` runs, and is logged, as the 9.0 conf/ writes: one setting, one name."""
    raw = tiny_params()
    raw["distill"].update(loss="ls", ls_kd=9)
    settings = losses.settings(checked(raw))
    assert settings["ls_kd"] == 9.0 and type(settings["ls_kd"]) is float
