"""Atomic writes: a failure leaves the old file (or none) and no temporary litter."""

import pytest

from kd.process import files


def test_write_files_replaces_them_all_or_none(tmp_path):
    """What a training stage writes (checkpoint, metrics, history): all new files, or the old
    ones when any write fails (here the second target's folder is a file)."""
    model, metrics = tmp_path / "model" / "m.pt", tmp_path / "metrics" / "m.json"
    files.write_files({model: b"weights 1", metrics: files.json_text({"a": 1})})
    files.write_files({model: b"weights 2", metrics: files.json_text({"a": 2})})
    assert model.read_bytes() == b"weights 2" and metrics.read_text() == '{\n  "a": 2\n}\n'
    (tmp_path / "plots").write_text("a file where a folder should be")
    with pytest.raises(files.WriteError, match="a file is where a folder should be"):
        files.write_files({model: b"weights 3", tmp_path / "plots" / "m.csv": "epoch\n"})
    assert model.read_bytes() == b"weights 2"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["m.json", "m.pt", "metrics", "model",
                                                           "plots"]  # no temporaries


def test_failure_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "model.pt"
    target.write_text("old")
    with pytest.raises(RuntimeError), files.atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed mid-write")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]


def test_atomic_dir_replaces_folder_or_leaves_it(tmp_path):
    target = tmp_path / "data"
    with files.atomic_dir(target) as tmp:
        (tmp / "a").write_text("1")
    with pytest.raises(ValueError), files.atomic_dir(target) as tmp:
        (tmp / "b").write_text("2")
        raise ValueError
    assert [p.name for p in target.iterdir()] == ["a"]
    with files.atomic_dir(target) as tmp:
        (tmp / "c").write_text("3")
    assert [p.name for p in target.iterdir()] == ["c"]
    assert [p.name for p in tmp_path.iterdir()] == ["data"]
