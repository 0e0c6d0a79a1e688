"""Raw dataset files in their real formats, made small for tests: MNIST-style IDX folders (gzipped
or not), torchvision's CIFAR pickle batches and .tar.gz archives, crafted tar members."""

import gzip
import hashlib
import io
import pickle
import shutil
import tarfile

import numpy as np
import torchvision.datasets as tvd

IDX_NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def idx_bytes(array: np.ndarray) -> bytes:
    """The IDX format: 0x00 0x00, type 0x08 (ubyte), ndim, big-endian dims, then the data."""
    header = bytes([0, 0, 8, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def make_idx_folder(folder, n_train=20, n_test=10, gz=True, dotted=False):
    """Write an MNIST-format folder; return {name: sha256 of the decompressed file}."""
    rng = np.random.default_rng(0)
    arrays = {
        IDX_NAMES[0]: rng.integers(0, 256, (n_train, 28, 28)),
        IDX_NAMES[1]: rng.integers(0, 10, n_train),
        IDX_NAMES[2]: rng.integers(0, 256, (n_test, 28, 28)),
        IDX_NAMES[3]: rng.integers(0, 10, n_test),
    }
    folder.mkdir(parents=True, exist_ok=True)
    sums = {}
    for name, arr in arrays.items():
        data = idx_bytes(arr)
        sums[name] = hashlib.sha256(data).hexdigest()
        fname = name.replace("-idx", ".idx") if dotted else name
        if gz:
            (folder / (fname + ".gz")).write_bytes(gzip.compress(data))
        else:
            (folder / fname).write_bytes(data)
    return arrays, sums


def make_cifar_folder(folder, cls, n_per_batch=6):
    """Write torchvision's CIFAR pickle batches; return {file: md5} as the class lists them."""
    base = folder / cls.base_folder
    base.mkdir(parents=True)
    rng = np.random.default_rng(0)
    label_key = "labels" if cls is tvd.CIFAR10 else "fine_labels"
    classes = 10 if cls is tvd.CIFAR10 else 100
    md5s = {}

    def write(name, obj):
        data = pickle.dumps(obj)
        (base / name).write_bytes(data)
        md5s[name] = hashlib.md5(data).hexdigest()

    for name, _ in cls.train_list + cls.test_list:
        write(name, {"data": rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8),
                     label_key: rng.integers(0, classes, n_per_batch).tolist()})
    write(cls.meta["filename"], {cls.meta["key"]: [f"class{i}" for i in range(classes)]})
    return md5s


def make_cifar_archive(folder, cls, extra=()):
    """Write torchvision's .tar.gz of the batches (its real member names), then the `extra`
    (TarInfo, bytes) members; return ({batch file: md5}, md5 of the archive)."""
    md5s = make_cifar_folder(folder / "src", cls)
    tar = folder / cls.filename
    with tarfile.open(tar, "w:gz") as t:
        t.add(folder / "src" / cls.base_folder, arcname=cls.base_folder)
        for info, data in extra:
            t.addfile(info, io.BytesIO(data))
    shutil.rmtree(folder / "src")
    return md5s, hashlib.md5(tar.read_bytes()).hexdigest()


def member(name, kind=tarfile.REGTYPE, linkname="", data=b"pwned"):
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    return info, data


def use_md5s(monkeypatch, cls, md5s, tgz_md5=None):
    """Point the class's checksums at the files we generated (the real ones are for the real data)."""
    monkeypatch.setattr(cls, "train_list", [[n, md5s[n]] for n, _ in cls.train_list])
    monkeypatch.setattr(cls, "test_list", [[n, md5s[n]] for n, _ in cls.test_list])
    monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": md5s[cls.meta["filename"]]})
    if tgz_md5:
        monkeypatch.setattr(cls, "tgz_md5", tgz_md5)

