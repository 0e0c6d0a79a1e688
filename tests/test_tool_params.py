"""The tools that run training outside DVC (tools/patience.py, benchmarks/numerics.py) start from
the params they are given, or else from conf/ composed as `dvc exp run` composes it: never from
whatever experiment the working copy's params.yaml holds (`dvc exp run -S ...` rewrites it, and
`dvc exp apply` with a commit keeps one there)."""

import shutil

import pytest
import yaml

from benchmarks import common as benchmarks_common
from tests.conftest import ROOT, composed, tiny_params, write_params
from tools import patience


@pytest.fixture
def kept_elsewhere(tmp_path, monkeypatch):
    """A project root whose conf/ is this one's and whose params.yaml holds another experiment;
    the tools' ROOT points at it."""
    shutil.copytree(ROOT / "conf", tmp_path / "conf")
    other = composed("dataset=digits", "T=7", "distill.epochs=3")
    write_params(tmp_path, other)
    monkeypatch.setattr(patience, "ROOT", tmp_path)
    monkeypatch.setattr(benchmarks_common, "ROOT", tmp_path)
    return other


def test_patience_starts_from_conf_not_from_the_working_copy(kept_elsewhere):
    base = patience.base_params(None, None)
    assert base == composed() != kept_elsewhere
    assert patience.base_params(None, "digits") == composed("dataset=digits") != kept_elsewhere


def test_patience_starts_from_the_params_file_it_is_given(tmp_path, monkeypatch):
    given = write_params(tmp_path, tiny_params())
    assert patience.base_params(str(given), None) == tiny_params()
    mnist = patience.base_params(str(given), "mnist")
    assert (mnist["dataset"], mnist["teacher"]["arch"], mnist["student"]["arch"]) == (
        "mnist", "auto", "auto")
    seen = []
    monkeypatch.setattr(patience, "run", lambda args: seen.append(
        patience.base_params(args.params, args.dataset)))
    patience.main(["run", "--params", str(given)])
    assert seen == [tiny_params()]


def test_the_benchmarks_default_to_conf_not_to_the_working_copy(kept_elsewhere, tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    path = benchmarks_common.default_params(folder)  # benchmarks.numerics' and .contention's
    assert yaml.safe_load(path.read_text()) == composed() != kept_elsewhere


def test_the_overheads_benchmarks_workspace_starts_from_conf(kept_elsewhere):
    """benchmarks.overheads (and throughput, through it) time another dataset's stages with the
    default run's params, not the kept experiment's T = 7."""
    from benchmarks import overheads

    p = overheads.workspace_params("digits", None, 1)
    want = composed()
    assert p["T"] == want["T"] != kept_elsewhere["T"]
    assert (p["dataset"], p["teacher"]["epochs"], p["distill"]["epochs"]) == ("digits", 1, 1)
