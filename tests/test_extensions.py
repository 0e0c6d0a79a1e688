"""Extending the library as docs/architecture.md says: a loss is one module in kd/losses/ and its
knobs' defaults in conf/, a dataset one module in kd/datasets/ and one conf/dataset/ file; the
registries are the only lists, and everything else (params validation, docs/extensions.md, these
generic tests) reads them."""

import math
import os
import shutil
import subprocess
import sys

import pytest
import torch
import yaml

from kd import datasets, losses
from kd.config.params import validate
from tests.conftest import ROOT, shipped_knobs, tiny_params
from tests.rawfiles import make_idx_folder
from tests.test_presets import REGENERATE
from tools import extensions

CONFIG = yaml.safe_load((ROOT / "conf" / "config.yaml").read_text())


def test_the_extensions_page_is_what_the_registries_say():
    assert (ROOT / "docs" / "extensions.md").read_text() == extensions.page(), \
        "docs/extensions.md is stale: run python -m tools.extensions"


def test_conf_ships_a_default_for_every_knob_and_no_other():
    for loss in map(losses.get, losses.names()):
        for knob in loss.knobs:
            key = loss.key(knob)
            shipped = CONFIG[key] if loss.top_level else CONFIG["distill"][key.removeprefix("distill.")]
            loss.check(knob, shipped)  # a value its kind allows
    known = {f"{n}_{k}" for n in losses.names() if not losses.get(n).top_level for k in losses.get(n).knobs}
    assert set(shipped_knobs()) == known


@pytest.mark.parametrize("name", losses.names())
def test_every_registered_loss_trains_on_the_teachers_logits(name):
    """Any loss: a finite scalar, with a finite gradient that moves the student; its knobs are
    its own; with mixup's partner labels it still is finite (unless it refuses mixup)."""
    loss = losses.get(name)
    raw = tiny_params()
    raw["distill"]["loss"] = name
    p = validate(raw)
    assert losses.validate(p) is loss and set(loss.values(p)) == set(loss.knobs)
    assert not loss.top_level or all(k in raw for k in loss.knobs)
    assert set(loss.recipe) <= set(loss.knobs)
    g = torch.Generator().manual_seed(0)
    s = (torch.randn(16, 10, generator=g) * 3).requires_grad_(True)
    t, y = torch.randn(16, 10, generator=g) * 3, torch.randint(0, 10, (16,), generator=g)
    value = losses.distillation_loss(s, t, y, loss, loss.values(p), epoch=2, epochs=p.distill.epochs)
    assert value.ndim == 0 and math.isfinite(value.item())
    value.backward()
    assert s.grad.isfinite().all() and s.grad.abs().sum() > 0
    if not loss.splits_by_label:
        mixed = losses.distillation_loss(s, t, y, loss, loss.values(p), partner_labels=y.roll(1),
                                         lam=torch.full((16,), 0.3))
        assert math.isfinite(mixed.item())
    assert loss.name in losses.describe(p) and losses.settings(p)["loss"] == loss.name


@pytest.mark.parametrize("name", datasets.names())
def test_every_registered_dataset_is_whole(name):
    """Its conf/dataset/ file sets the same name and builds both roles' architectures; its
    presets exist; its facts agree with each other."""
    ds = datasets.get(name)
    conf = yaml.safe_load((ROOT / "conf" / "dataset" / f"{name}.yaml").read_text())
    assert conf["dataset"] == name and {"teacher", "student"} <= set(conf)
    assert set(ds.presets) <= set(datasets.preset_names()) - {"none"}
    assert not ds.class_names or len(ds.class_names) == ds.classes
    assert ds.format != "idx" or len(ds.checksums) == 4
    assert {p.stem for p in (ROOT / "conf" / "dataset").glob("*.yaml")} == set(datasets.names())


# --- a toy loss and a toy dataset, added by the documented steps alone ------------------------

TOY_LOSS = '''"""mse: the student's logits regressed on the teacher's (Ba & Caruana 2014), plus CE."""

from kd.config.params import NonNegative
from kd.losses import Loss


def mse(s, t, y, ce, k, epoch, epochs):
    return ce() + k.weight * ((s - t) ** 2).mean()


LOSS = Loss(name="mse", label="MSE on logits (Ba & Caruana 2014)",
            paper="Ba & Caruana (2014), Do Deep Nets Really Need to be Deep?",
            source="the paper, section 2", fn=mse, knobs={"weight": NonNegative},
            recipe={"weight": 1.0})
'''

TOY_DATASET = '''"""toy: random 28x28 images in MNIST's format, for this test."""

from kd.datasets import Dataset

DATASET = Dataset(name="toy", classes=10, side=28, channels=1, train_images=300, presets=(),
                  format="idx",
                  class_names=tuple("abcdefghij"), checksums={sums!r},
                  offline="put the four IDX files in a folder and set data.root to it")
'''

_SKIP = shutil.ignore_patterns(".venv", ".git", "node_modules", "build", "*.db", "mlartifacts", ".tmp",
                               "cache", "tmp", "__pycache__", ".*_cache")


def _ignore(folder: str, names: list[str]) -> set[str]:
    """The code and docs, not the outputs, caches or environments."""
    top = {"data", "model", "checks"} if folder == str(ROOT) else set()
    return set(_SKIP(folder, names)) | (top & set(names))


def _run(repo, *argv, **env):
    proc = subprocess.run([sys.executable, *argv], cwd=repo, capture_output=True, text=True,
                          env={**os.environ, "KD_TRACKING": "off", **env})
    assert proc.returncode == 0, f"{' '.join(argv)}:\n{proc.stdout[-1500:]}\n{proc.stderr[-1500:]}"
    return proc.stdout


@pytest.mark.slow
def test_a_toy_loss_and_a_toy_dataset_added_the_documented_way(tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(ROOT, repo, ignore=_ignore)
    # A loss: its module in kd/losses/, its knob's default under `distill` in conf/config.yaml.
    (repo / "kd/losses/mse.py").write_text(TOY_LOSS)
    config = (repo / "conf/config.yaml").read_text()
    assert config.rstrip().splitlines()[-1].startswith("  ")  # distill is the file's last section
    (repo / "conf/config.yaml").write_text(config.rstrip() + "\n  mse_weight: 1.0  # mse: weight\n")
    # A dataset: its module in kd/datasets/ and its conf/dataset/ file.
    _, sums = make_idx_folder(tmp_path / "toy-raw", n_train=300, n_test=60)
    (repo / "kd/datasets/toy.py").write_text(TOY_DATASET.format(sums=sums))
    (repo / "conf/dataset/toy.yaml").write_text(
        "# @package _global_\ndataset: toy\nteacher:\n  arch: mlp:64\nstudent:\n  arch: mlp:16\n")
    # Then params.yaml composed anew (what `dvc exp run` does first), and the docs table.
    _run(repo, "-c", REGENERATE.removeprefix("python -c ").strip('"'))
    _run(repo, "-m", "tools.extensions")
    assert "`mse`" in (repo / "docs/extensions.md").read_text()

    # The suite's registry-driven tests take both in (this one aside).
    _run(repo, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly", "-m", "not slow",
         "-k", "not toy", "tests/test_extensions.py", "tests/test_params.py", "tests/test_presets.py",
         "tests/test_models.py", "tests/test_dvc_yaml.py", "tests/test_readme.py",
         "tests/test_losses.py", "tests/test_sources.py", "tests/test_architecture.py")

    # The stages train with the new loss, and on the new dataset.
    raw = tiny_params()
    raw["distill"].update(loss="mse", mse_weight=0.5)
    (repo / "params.yaml").write_text(yaml.safe_dump(raw))
    for stage in ("check", "download", "teacher", "soft_targets", "distill"):
        _run(repo, "-m", f"stages.{stage}")
    assert yaml.safe_load((repo / "metrics/distilled.json").read_text())["test_acc"] > 0.5
    raw = tiny_params()
    raw.update(dataset="toy", data={**raw["data"], "root": str(tmp_path / "toy-raw")})
    (repo / "params.yaml").write_text(yaml.safe_dump(raw))
    for stage in ("check", "download", "teacher"):
        _run(repo, "-m", f"stages.{stage}")
    meta = yaml.safe_load((repo / "data/toy/meta.json").read_text())
    assert meta["classes"] == list("abcdefghij") and meta["sizes"]["test"] == 60
