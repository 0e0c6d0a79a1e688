"""Raw dataset files: real formats generated here, read by the real loaders, checksums enforced."""

import gzip
import pickle
import shutil
import tarfile

import numpy as np
import pytest
import torch
import torchvision.datasets as tvd

from kd.data import sources
from kd.data.raw_files import CorruptFile, DataError, parse_idx, read_cifar_folder, read_idx_folder
from kd.data.sources import fetch
from tests.conftest import patch_dataset
from tests.rawfiles import (
    IDX_NAMES,
    idx_bytes,
    make_cifar_archive,
    make_cifar_folder,
    make_idx_folder,
    member,
    use_md5s,
)


@pytest.mark.parametrize("gz,dotted", [(True, False), (False, False), (True, True), (False, True)])
def test_idx_folder_read_in_every_spelling(tmp_path, gz, dotted):
    arrays, sums = make_idx_folder(tmp_path, gz=gz, dotted=dotted)
    raw = read_idx_folder(tmp_path, sums)
    assert raw.train_x.shape == (20, 1, 28, 28) and raw.train_x.dtype == torch.uint8
    assert raw.test_y.dtype == torch.int64
    np.testing.assert_array_equal(raw.train_x[:, 0].numpy(), arrays[IDX_NAMES[0]])
    np.testing.assert_array_equal(raw.test_y.numpy(), arrays[IDX_NAMES[3]])


def test_recompressed_copy_passes_because_the_content_is_checked(tmp_path):
    _, sums = make_idx_folder(tmp_path)
    name = tmp_path / (IDX_NAMES[0] + ".gz")
    name.write_bytes(gzip.compress(gzip.decompress(name.read_bytes()), compresslevel=1, mtime=123))
    read_idx_folder(tmp_path, sums)


def test_wrong_checksum_is_refused_naming_the_file(tmp_path):
    _, sums = make_idx_folder(tmp_path)
    sums[IDX_NAMES[1]] = "0" * 64
    with pytest.raises(CorruptFile, match="train-labels-idx1-ubyte.gz: sha256 of its content"):
        read_idx_folder(tmp_path, sums)


@pytest.mark.parametrize("broken", [
    lambda gz: gz[: len(gz) // 2],  # truncated: EOFError
    lambda gz: b"not gzip at all" * 8,  # BadGzipFile
    lambda gz: gz[:20] + bytes(b ^ 0xFF for b in gz[20:60]) + gz[60:],  # bad deflate data or CRC
], ids=["truncated", "garbage", "corrupt"])
def test_unreadable_gz_is_refused_naming_the_file(tmp_path, broken):
    _, sums = make_idx_folder(tmp_path)
    path = tmp_path / (IDX_NAMES[0] + ".gz")
    path.write_bytes(broken(path.read_bytes()))
    with pytest.raises(CorruptFile, match="train-images-idx3-ubyte.gz: not a readable gzip file") as e:
        read_idx_folder(tmp_path, sums)
    assert "\n" not in str(e.value)


def test_truncated_idx_is_refused():
    with pytest.raises(ValueError, match="header says"):
        parse_idx(idx_bytes(np.zeros((3, 4, 4)))[:-5])


def test_corrupt_local_copy_stops_the_search(tmp_path, monkeypatch):
    _, sums = make_idx_folder(tmp_path / "mnist")
    patch_dataset(monkeypatch, "mnist", checksums={k: "f" * 64 for k in sums})
    with pytest.raises(CorruptFile):
        fetch("mnist", str(tmp_path / "mnist"), tmp_path / "cache")


def test_fetch_uses_the_local_folder(tmp_path, monkeypatch):
    _, sums = make_idx_folder(tmp_path / "mine")
    patch_dataset(monkeypatch, "mnist", checksums=sums)
    raw = fetch("mnist", str(tmp_path / "mine"), tmp_path / "cache")
    assert raw.source == str(tmp_path / "mine") and raw.classes == tuple("0123456789")


def test_no_source_error_lists_what_was_tried_and_how_to_get_it(tmp_path, monkeypatch):
    def offline(*a, **k):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz")
    monkeypatch.setattr(sources, "_download", offline)
    patch_dataset(monkeypatch, "mnist", system_dir=str(tmp_path / "missing"))
    with pytest.raises(DataError) as err:
        fetch("mnist", None, tmp_path / "cache")
    msg = str(err.value)
    assert "missing (no such folder)" in msg and "torchvision download" in msg
    assert "set data.root" in msg and "\n" not in msg


def test_without_data_root_the_standard_folder_is_used(tmp_path, monkeypatch):
    _, sums = make_idx_folder(tmp_path / "system")
    patch_dataset(monkeypatch, "fashion-mnist", checksums=sums, system_dir=str(tmp_path / "system"))
    assert fetch("fashion-mnist", None, tmp_path / "cache").source == str(tmp_path / "system")


@pytest.mark.parametrize("missing", ["folder", IDX_NAMES[3]])
def test_explicit_data_root_never_falls_back(tmp_path, monkeypatch, missing):
    """A set data.root that lacks the data is an error, not a reason to read another copy."""
    _, sums = make_idx_folder(tmp_path / "system")
    make_idx_folder(tmp_path / "mine")
    patch_dataset(monkeypatch, "fashion-mnist", checksums=sums, system_dir=str(tmp_path / "system"))
    monkeypatch.setattr(sources, "_download", lambda *a: pytest.fail("downloaded"))
    root = tmp_path / "mine"
    if missing == "folder":
        shutil.rmtree(root)
    else:
        (root / (missing + ".gz")).unlink()
    with pytest.raises(DataError, match=f"^{root}: no {'such folder' if missing == 'folder' else missing}"):
        fetch("fashion-mnist", str(root), tmp_path / "cache")


# --- CIFAR -------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [tvd.CIFAR10, tvd.CIFAR100])
def test_cifar_pickles_read_with_md5_verification(tmp_path, monkeypatch, cls):
    use_md5s(monkeypatch, cls, make_cifar_folder(tmp_path, cls))
    raw = read_cifar_folder(tmp_path, cls, tmp_path / "scratch")
    n_train = 6 * len(cls.train_list)
    assert raw.train_x.shape == (n_train, 3, 32, 32) and raw.test_x.shape == (6, 3, 32, 32)
    assert len(raw.classes) == (10 if cls is tvd.CIFAR10 else 100)
    # The batch rows are channel-major 32x32 planes: the first row's first 1024 bytes are red.
    first = pickle.loads((tmp_path / cls.base_folder / cls.train_list[0][0]).read_bytes())
    np.testing.assert_array_equal(raw.train_x[0, 0].flatten().numpy(), first["data"][0][:1024])


def test_cifar_with_the_real_checksums_refuses_other_content(tmp_path):
    make_cifar_folder(tmp_path, tvd.CIFAR10)
    with pytest.raises(CorruptFile, match="data_batch_1: md5 of its content"):
        read_cifar_folder(tmp_path, tvd.CIFAR10, tmp_path / "scratch")


def test_digits_are_bundled():
    raw = fetch("digits", None, None)
    assert raw.train_x.shape == (1500, 1, 8, 8) and raw.test_x.shape == (297, 1, 8, 8)
    assert int(raw.train_x.max()) == 255 and raw.train_x.dtype == torch.uint8


@pytest.mark.parametrize("cls", [tvd.CIFAR10, tvd.CIFAR100])
def test_cifar_archive_is_extracted_into_scratch_and_read(tmp_path, monkeypatch, cls):
    (tmp_path / "root").mkdir()
    use_md5s(monkeypatch, cls, *make_cifar_archive(tmp_path / "root", cls))
    raw = read_cifar_folder(tmp_path / "root", cls, tmp_path / "scratch")
    assert raw.source == str(tmp_path / "scratch" / cls.base_folder)
    assert raw.test_x.shape == (6, 3, 32, 32)


def test_cifar_archive_with_another_md5_is_not_extracted(tmp_path, monkeypatch):
    (tmp_path / "root").mkdir()
    md5s, tgz_md5 = make_cifar_archive(tmp_path / "root", tvd.CIFAR10)
    use_md5s(monkeypatch, tvd.CIFAR10, md5s)
    with pytest.raises(CorruptFile, match=f"cifar-10-python.tar.gz: md5 is {tgz_md5}, expected "
                                          f"{tvd.CIFAR10.tgz_md5} .*extracted cifar-10-batches-py"):
        read_cifar_folder(tmp_path / "root", tvd.CIFAR10, tmp_path / "scratch")
    assert not (tmp_path / "scratch").exists()


@pytest.mark.parametrize("bad", [
    member("../../../escaped"),
    member("cifar-10-batches-py/../../../escaped"),
    member("ABSOLUTE/escaped"),
    member("elsewhere/escaped"),
    member("cifar-10-batches-py/link", tarfile.SYMTYPE, "/etc/passwd"),
    member("cifar-10-batches-py/hard", tarfile.LNKTYPE, "cifar-10-batches-py/data_batch_1"),
    member("cifar-10-batches-py/tty", tarfile.CHRTYPE),
], ids=["dotdot", "inner-dotdot", "absolute", "other-folder", "symlink", "hardlink", "device"])
def test_cifar_archive_member_outside_its_folder_stops_extraction(tmp_path, monkeypatch, bad):
    """Checked before anything is written, with the bad member last (after the genuine ones)."""
    info, data = bad
    info.name = info.name.replace("ABSOLUTE", str(tmp_path))
    (tmp_path / "root").mkdir()
    use_md5s(monkeypatch, tvd.CIFAR10, *make_cifar_archive(tmp_path / "root", tvd.CIFAR10, [bad]))
    scratch = tmp_path / "a" / "b" / "scratch"  # ../../../escaped lands in tmp_path
    with pytest.raises(CorruptFile, match=f"cifar-10-python.tar.gz: member '{info.name}' is not"):
        read_cifar_folder(tmp_path / "root", tvd.CIFAR10, scratch)
    assert not (tmp_path / "a").exists() and not (tmp_path / "escaped").exists()
