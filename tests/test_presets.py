"""conf/ is the source of params.yaml: DVC's Hydra composition (`hydra.enabled` in .dvc/config)
writes conf/config.yaml, the chosen dataset and preset and the `-S` overrides into params.yaml at
every `dvc exp run`, so `dvc exp show` displays the values that ran, a preset's included.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import dvc.api
import pytest
import yaml
from dvc.utils.hydra import compose_and_dump

from kd import datasets
from kd.config.archs import parse_arch
from kd.config.params import validate
from kd.datasets import resolve_arch
from tests.conftest import ROOT, committed

CONF = ROOT / "conf"
REGENERATE = ("python -c \"from pathlib import Path; from dvc.utils.hydra import compose_and_dump; "
              "compose_and_dump('params.yaml', str(Path('conf').resolve()), None, 'config', "
              "str(Path('.').resolve()), [])\"")


def compose(tmp_path: Path, *overrides: str, conf: Path = CONF) -> str:
    """What `dvc exp run -S <override>...` writes into params.yaml (DVC's own function)."""
    out = tmp_path / "params.yaml"
    compose_and_dump(out, str(conf), None, "config", str(ROOT), list(overrides))
    return out.read_text()


def leaves(mapping: dict, prefix: str = "") -> dict:
    """{dotted key: value} of a nested mapping; a list is one value."""
    out = {}
    for k, v in mapping.items():
        out.update(leaves(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def override(value) -> str:
    """A value in Hydra's override grammar, as a user types it after -S."""
    if isinstance(value, str):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if isinstance(value, list):
        return "[" + ",".join(override(v) for v in value) + "]"
    return json.dumps(value)  # numbers, true, false, null


def assert_composed(text: str, tmp_path: Path, conf: Path = CONF) -> None:
    """`text` is a params.yaml that `dvc exp run` could have written from `conf`: the defaults, or
    an experiment's (its dataset and preset, then `-S key=value` for each value that differs from
    what those compose), byte for byte. Whatever experiment was kept, its keys, their order and
    the layout are conf/'s."""
    raw = yaml.safe_load(text)
    groups = [f"dataset={raw['dataset']}", f"preset={raw['preset']}"]
    base = leaves(yaml.safe_load(compose(tmp_path, *groups, conf=conf)))
    mine = leaves(raw)
    assert list(mine) == list(base), (
        f"params.yaml's keys are not conf/'s (extra {sorted(set(mine) - set(base))}, missing "
        f"{sorted(set(base) - set(mine))}): edit conf/config.yaml, then regenerate with {REGENERATE}")
    sets = [f"{k}={override(v)}" for k, v in mine.items()
            if type(v) is not type(base[k]) or v != base[k]]  # 4 and 4.0 are written differently
    assert text == compose(tmp_path, *groups, *sets, conf=conf), (
        f"params.yaml is not what conf/ composes with -S {' '.join(groups + sets)}: edit "
        f"conf/config.yaml, then regenerate with {REGENERATE}")


def committed_conf(tmp_path: Path) -> Path:
    """conf/ as HEAD has it, in a folder of its own."""
    for path in CONF.rglob("*.yaml"):
        rel = path.relative_to(ROOT)
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(committed(str(rel)))
    return tmp_path / "conf"


def test_params_yaml_is_what_conf_composes(tmp_path):
    # Otherwise the first `dvc exp run` shows param changes nobody asked for. Both as committed:
    # a user's `dvc exp run -S T=3` rewrites the working copy's params.yaml, and that is fine; an
    # experiment kept with `dvc exp apply` and a commit is fine too (a value conf/config.yaml
    # changed without regenerating params.yaml looks the same, and passes).
    assert_composed(committed("params.yaml"), tmp_path, committed_conf(tmp_path))


@pytest.mark.parametrize("kept", [
    (), ("T=4",), ("dataset=digits",), ("dataset=digits", "T=4", "alpha=1"),
    ("dataset=mnist", "preset=patient-consistent", "seed=2", "distill.epochs=120"),
    ("teacher.arch=mlp:1200-1200", "distill.omit_classes=[3]", "distill.bias_correction=2.5",
     "launch='torchrun --nproc-per-node=2'", "data.root=/srv/data", "distill.flip=true"),
])
def test_a_kept_experiments_params_yaml_passes_and_a_hand_edit_does_not(tmp_path, kept):
    """The check above on what `dvc exp run -S ...` writes (then kept with `dvc exp apply` and a
    commit): it passes for any experiment, and fails once the file is edited by hand."""
    text = compose(tmp_path, *kept)
    assert_composed(text, tmp_path)
    lines = text.splitlines(keepends=True)
    seed, T = (next(i for i, line in enumerate(lines) if line.startswith(key)) for key in ("seed:", "T:"))
    lines[seed], lines[T] = lines[T], lines[seed]
    for edited in (text.replace("\nalpha:", "\nalpha_typo:"),  # a key conf/ does not have
                   text.replace("\nT: ", "\nT:  "),  # the layout
                   "".join(lines)):  # the order
        with pytest.raises(AssertionError, match="regenerate"):
            assert_composed(edited, tmp_path)


def test_each_dataset_spells_out_its_architectures(tmp_path):
    """`-S dataset=<name>` writes the architectures that `auto` resolves to (kd/datasets/ reads
    the same file), and each is one that builds."""
    assert {f.stem for f in (CONF / "dataset").glob("*.yaml")} == set(datasets.names())
    for ds in datasets.names():
        p = validate(yaml.safe_load(compose(tmp_path, f"dataset={ds}")))
        assert p.dataset == ds
        assert p.teacher.arch == resolve_arch("auto", ds, "teacher") != "auto"
        assert p.student.arch == resolve_arch("auto", ds, "student") != "auto"
        assert parse_arch(p.teacher.arch) and parse_arch(p.student.arch)


@pytest.mark.parametrize("preset", [p for p in datasets.preset_names() if p != "none"])
def test_each_preset_composes_valid_params_and_never_sets_T_alpha_seed(tmp_path, preset):
    for ds in datasets.made_for(preset):
        base = yaml.safe_load(compose(tmp_path, f"dataset={ds}", "T=7", "alpha=0.5", "seed=3"))
        raw = yaml.safe_load(compose(tmp_path, f"dataset={ds}", f"preset={preset}", "T=7",
                                     "alpha=0.5", "seed=3"))
        p = validate(raw)
        assert raw["preset"] == preset and p.dataset == ds
        assert (p.T, p.alpha, p.seed) == (7, 0.5, 3)  # a sweep over them under a preset is real
        # the preset's own values are in the file, and they change something
        own = yaml.safe_load((CONF / "preset" / f"{preset}.yaml").read_text())
        for section, values in own.items():
            if isinstance(values, dict):
                assert {k: raw[section][k] for k in values} == values, (preset, section)
        assert {k: v for k, v in raw.items() if k != "preset"} != {
            k: v for k, v in base.items() if k != "preset"}


def test_override_grammar_for_architectures_and_class_lists(tmp_path):
    # What users type after -S: a colon and brackets need no escaping from Hydra (quote the
    # brackets for the shell).
    raw = yaml.safe_load(compose(tmp_path, "teacher.arch=mlp:1200-1200", "distill.omit_classes=[3]",
                                 "preset=hinton-mnist", "teacher.epochs=3"))
    assert raw["teacher"]["arch"] == "mlp:1200-1200" and raw["distill"]["omit_classes"] == [3]
    assert raw["teacher"]["epochs"] == 3  # the command line wins over the preset


def _dvc(repo: Path, *args: str) -> str:
    env = dict(os.environ, DVC_NO_ANALYTICS="1", GIT_AUTHOR_NAME="t",
               GIT_AUTHOR_EMAIL="t@example.com", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@example.com")
    proc = subprocess.run(args, cwd=repo, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, f"{' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


@pytest.mark.slow  # DVC queues experiments in a temporary git repo
def test_queued_experiments_show_the_values_that_will_run(tmp_path):
    repo = tmp_path / "repo"
    for rel in ("dvc.yaml", "params.yaml", "conf", ".dvc/config"):
        src, dst = ROOT / rel, repo / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst)
        elif src.exists():
            shutil.copy2(src, dst)
    cli = (sys.executable, "-m", "dvc")
    _dvc(repo, "git", "init", "-q", "-b", "main")
    _dvc(repo, "git", "add", "-A")
    _dvc(repo, "git", "commit", "-qm", "project")
    _dvc(repo, *cli, "exp", "run", "--queue", "-n", "paper", "-S", "preset=hinton-mnist",
         "-S", "T=20")
    _dvc(repo, *cli, "exp", "run", "--queue", "-n", "small", "-S", "dataset=digits")
    try:
        shown = {row["Experiment"]: row for row in dvc.api.exp_show(repo=str(repo))}
    finally:
        _dvc(repo, *cli, "queue", "remove", "--all")
    paper, small = shown["paper"], shown["small"]
    assert (paper["preset"], paper["T"]) == ("hinton-mnist", 20)
    assert (paper["teacher.arch"], paper["teacher.epochs"]) == ("mlp:1200-1200", 30)
    assert (paper["student.arch"], paper["distill.lr"]) == ("mlp:800-800", 0.02)
    # conf/'s values under -S dataset=digits, not params.yaml's (an experiment may have been kept)
    digits = yaml.safe_load(compose(tmp_path, "dataset=digits"))
    assert (small["dataset"], small["teacher.arch"], small["student.arch"]) == (
        "digits", digits["teacher"]["arch"], digits["student"]["arch"])
    assert (small["preset"], small["T"]) == (digits["preset"], digits["T"])
