"""Broken data inputs through the real stage entry points: exit status 1, one `error:` line on
stderr naming the broken file or folder, and nothing under the working folder written or changed."""

import gzip
import hashlib
import tarfile

import pytest
import torch
import torchvision.datasets as tvd

from kd.data import sources, splits
from kd.process.files import torch_bytes
from stages import download, teacher
from tests import rawfiles as raw_files
from tests.conftest import fails_cleanly, patch_dataset, tiny_params, write_params


@pytest.fixture(autouse=True)
def no_tracking(monkeypatch):
    monkeypatch.setenv("KD_TRACKING", "off")


def use_root(workdir, dataset, root):
    p = tiny_params()
    p["dataset"], p["data"]["root"] = dataset, str(root)
    write_params(workdir, p)


def idx_root(workdir, monkeypatch, dataset="mnist"):
    """A valid IDX folder (its checksums patched in) as data.root; returns it and the checksums."""
    root = workdir / "raw-in"
    _, sums = raw_files.make_idx_folder(root)
    patch_dataset(monkeypatch, dataset, checksums=sums)
    use_root(workdir, dataset, root)
    return root, sums


def cifar_root(workdir, monkeypatch, extra=(), genuine=True):
    """data.root holding only cifar-10-python.tar.gz; `genuine`: its md5 is the class's."""
    root = workdir / "raw-in"
    root.mkdir()
    md5s, tgz_md5 = raw_files.make_cifar_archive(root, tvd.CIFAR10, extra)
    raw_files.use_md5s(monkeypatch, tvd.CIFAR10, md5s, tgz_md5 if genuine else None)
    use_root(workdir, "cifar10", root)
    return root / tvd.CIFAR10.filename


# --- download: each fault breaks an input and returns what the message must name --------------


def gz_truncated(workdir, monkeypatch):
    path = idx_root(workdir, monkeypatch)[0] / f"{raw_files.IDX_NAMES[0]}.gz"
    path.write_bytes(path.read_bytes()[:300])
    return [str(path), "not a readable gzip file"]


def gz_garbage(workdir, monkeypatch):
    path = idx_root(workdir, monkeypatch)[0] / f"{raw_files.IDX_NAMES[3]}.gz"
    path.write_bytes(b"<html>404 Not Found</html>")
    return [str(path), "not a readable gzip file"]


def gz_of_other_content(workdir, monkeypatch):
    path = idx_root(workdir, monkeypatch)[0] / f"{raw_files.IDX_NAMES[1]}.gz"
    path.write_bytes(gzip.compress(b"other"))
    return [str(path), "sha256 of its content"]


def idx_not_ubyte(workdir, monkeypatch):
    """Passes its (patched) checksum, but parse_idx refuses it: not an IDX file of bytes."""
    root, sums = idx_root(workdir, monkeypatch)
    bad = b"\x00\x00\x0d\x01" + (10).to_bytes(4, "big") + bytes(40)  # type 0x0d: 10 floats
    (root / f"{raw_files.IDX_NAMES[3]}.gz").write_bytes(gzip.compress(bad))
    sums[raw_files.IDX_NAMES[3]] = hashlib.sha256(bad).hexdigest()
    return [f"{raw_files.IDX_NAMES[3]}.gz", "not an IDX file"]


def root_missing(workdir, monkeypatch):
    use_root(workdir, "mnist", workdir / "nowhere")
    monkeypatch.setattr(sources, "_download", lambda *a: pytest.fail("downloaded"))
    return [str(workdir / "nowhere"), "no such folder"]


def root_lacks_a_file(workdir, monkeypatch):
    """A verified copy sits in the standard folder; with data.root set it must not be used."""
    root, sums = idx_root(workdir, monkeypatch, "fashion-mnist")
    raw_files.make_idx_folder(workdir / "system")
    patch_dataset(monkeypatch, "fashion-mnist", checksums=sums, system_dir=str(workdir / "system"))
    monkeypatch.setattr(sources, "_download", lambda *a: pytest.fail("downloaded"))
    (root / f"{raw_files.IDX_NAMES[2]}.gz").unlink()
    return [str(root), raw_files.IDX_NAMES[2]]


def tar_member_escapes(workdir, monkeypatch):
    return [str(cifar_root(workdir, monkeypatch, [raw_files.member("../../../escaped")])),
            "'../../../escaped'"]


def tar_member_symlink(workdir, monkeypatch):
    link = raw_files.member("cifar-10-batches-py/data_batch_1", tarfile.SYMTYPE, "/etc/passwd")
    return [str(cifar_root(workdir, monkeypatch, [link])), "data_batch_1"]


def tar_md5_mismatch(workdir, monkeypatch):
    return [str(cifar_root(workdir, monkeypatch, genuine=False)), "md5 is", "cifar-10-batches-py"]


def extracted_batch_garbage(workdir, monkeypatch):
    root = workdir / "raw-in"
    raw_files.use_md5s(monkeypatch, tvd.CIFAR10, raw_files.make_cifar_folder(root, tvd.CIFAR10))
    path = root / tvd.CIFAR10.base_folder / "data_batch_3"
    path.write_bytes(b"garbage")
    use_root(workdir, "cifar10", root)
    return [str(path), "md5 of its content"]


@pytest.mark.parametrize("setup", [idx_root, cifar_root])
def test_download_reads_the_unbroken_inputs(workdir, monkeypatch, setup):
    """The faults below are the only thing wrong with their inputs."""
    setup(workdir, monkeypatch)
    download.main([])
    assert splits.load(workdir / "data" / ("mnist" if setup is idx_root else "cifar10")).test.y.numel()


@pytest.mark.parametrize("fault", [
    gz_truncated, gz_garbage, gz_of_other_content, idx_not_ubyte, root_missing, root_lacks_a_file,
    tar_member_escapes, tar_member_symlink, tar_md5_mismatch, extracted_batch_garbage,
], ids=lambda f: f.__name__)
def test_download_refuses_broken_raw_data(workdir, monkeypatch, capsys, fault):
    escaped = workdir.parent / "escaped"  # where ../../../escaped from data/raw would land
    assert not escaped.exists()
    names = fault(workdir, monkeypatch)
    msg = fails_cleanly(download.main, [], workdir, capsys)
    assert all(n in msg for n in names), msg
    assert not escaped.exists()


# --- teacher (kd.data.splits.load): a broken prepared folder -------------------------------------------


def prepared(folder):
    s = splits.Split(torch.zeros(6, 1, 4, 4, dtype=torch.uint8), torch.arange(6) % 2)
    splits.save(folder, "digits", s, s, s, ("a", "b"), {})


@pytest.mark.parametrize("file,content", [
    ("train.pt", lambda old: b""),
    ("val.pt", lambda old: old[: len(old) // 2]),
    ("test.pt", lambda old: b"x,y\n1,2\n"),
    ("train.pt", lambda old: torch_bytes({"state_dict": {"w": torch.zeros(2)}})),
    ("train.pt", None),
    ("meta.json", lambda old: old[:-10]),
    ("meta.json", lambda old: b"[]"),
    ("meta.json", lambda old: old.replace(b'"dataset"', b'"name"')),
    ("meta.json", None),
], ids=["zero-byte", "truncated", "not-torch", "other-torch", "no-split", "json-truncated",
        "json-list", "json-no-dataset", "no-meta"])
def test_teacher_refuses_broken_prepared_data(workdir, capsys, file, content):
    folder = workdir / "prepared"
    prepared(folder)
    path = folder / file
    if content is None:
        path.unlink()
    else:
        path.write_bytes(content(path.read_bytes()))
    msg = fails_cleanly(teacher.main, ["--data", str(folder)], workdir, capsys)
    assert str(path) in msg


def test_prepared_folder_is_readable_unbroken(workdir):
    prepared(workdir / "prepared")
    assert len(splits.load(workdir / "prepared").train) == 6
