"""Files checked against the md5 dvc.lock records for them (kd/process/recorded_hashes.py): the
hashes are DVC's own, a mismatch is one line, and nothing unrecorded is refused."""

import json
import os
import subprocess
import sys

import pytest

from kd.process.recorded_hashes import Mismatch, manifest, manifest_md5, md5_file, verify


@pytest.fixture(autouse=True)
def under_dvc(monkeypatch):
    """These checks are what a stage does when DVC runs it (DVC sets DVC_STAGE)."""
    monkeypatch.setenv("DVC_STAGE", "next")


def test_a_folder_s_md5_is_the_one_dvc_records(tmp_path):
    """Computed here without DVC's cache (a queued experiment's copy may have none of its own),
    it must be exactly what `dvc add` writes."""
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=tmp_path,
                   check=True, env=env)
    folder = tmp_path / "data"
    (folder / "sub").mkdir(parents=True)
    (folder / "a-b").mkdir()
    (folder / "a").mkdir()
    for rel, data in {"meta.json": b"{}", "sub/x.pt": b"\x00\x01", "a-b/y": b"y", "a/z": b"z",
                      "train.pt": b"t" * 5000}.items():
        (folder / rel).write_bytes(data)
    subprocess.run([sys.executable, "-m", "dvc", "add", "-q", "data"], cwd=tmp_path, check=True,
                   env=env)
    recorded = (tmp_path / "data.dvc").read_text()
    md5 = manifest_md5(manifest(folder))
    assert f"md5: {md5}" in recorded
    # Recorded as a stage's output, with its manifest in the cache: a changed file is named.
    lock(tmp_path, download=("data", md5))
    verify(folder)
    (folder / "sub/x.pt").write_bytes(b"\x00\x02")
    with pytest.raises(Mismatch, match=r"data/sub/x.pt: its content does not match the md5 "
                                       r"dvc.lock records for .*data \(corrupt"):
        verify(folder)


def lock(root, **outs):
    (root / "dvc.lock").write_text(json.dumps({"schema": "2.0", "stages": {
        stage: {"outs": [{"path": path, "hash": "md5", "md5": md5}]}
        for stage, (path, md5) in outs.items()}}))


def test_a_recorded_file_must_match_and_an_unrecorded_one_is_read_as_it_is(tmp_path):
    (tmp_path / ".dvc").mkdir()
    model = tmp_path / "model/teacher.pt"
    model.parent.mkdir()
    model.write_bytes(b"weights")
    lock(tmp_path, teacher=("model/teacher.pt", md5_file(model)))
    verify(model)
    (tmp_path / "other.pt").write_bytes(b"anything")
    verify(tmp_path / "other.pt")  # no stage records it
    model.write_bytes(b"weightz")
    with pytest.raises(Mismatch, match=r"teacher.pt: its content does not match .* `dvc checkout "
                                       r"-f .*teacher.pt` or rerun its stage with `dvc repro -f "
                                       r"-s teacher`$"):
        verify(model)


def test_a_stage_run_by_hand_reads_what_it_is_given(tmp_path, monkeypatch):
    """Outside DVC the lock may describe an earlier run (the teacher retrained by hand with other
    params): its md5 is no reason to refuse, and `dvc checkout -f` would undo the user's work."""
    (tmp_path / ".dvc").mkdir()
    model = tmp_path / "model/teacher.pt"
    model.parent.mkdir()
    model.write_bytes(b"retrained by hand")
    lock(tmp_path, teacher=("model/teacher.pt", "0" * 32))
    monkeypatch.delenv("DVC_STAGE")
    verify(model)
    monkeypatch.setenv("DVC_STAGE", "soft_targets")
    with pytest.raises(Mismatch):
        verify(model)


def test_only_the_project_s_own_dvc_lock_counts(tmp_path):
    """A project nested in another (a test's folder under a checkout) is not checked against
    the outer project's dvc.lock."""
    inner = tmp_path / "inner"
    (inner / ".dvc").mkdir(parents=True)
    (inner / "model.pt").write_bytes(b"weights")
    lock(tmp_path, teacher=("inner/model.pt", "0" * 32))
    verify(inner / "model.pt")
    (inner / ".dvc").rmdir()
    with pytest.raises(Mismatch):
        verify(inner / "model.pt")
