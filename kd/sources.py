"""Find, verify and read a dataset's raw files.

In:  a dataset name and an optional local folder.
Out: `Raw` (train/test uint8 images (N, C, H, W), int64 labels, class names, where they came from),
     or `DataError` whose message lists every source tried and how to get the data offline.

Sources: when `data.root` is set, that folder and nothing else (a missing folder or file there is
an error, never a silent switch to another copy). With `data.root: null`, the standard offline
location (the Debian / Ubuntu package `dataset-fashion-mnist`), then torchvision's own download
into a cache folder. Every copy is verified by a checksum of its *decompressed* content, because
recompressed .gz copies (Debian's, mirrors') have other .gz checksums than the ones torchvision
ships. A CIFAR archive is only extracted when it is torchvision's own (its md5), as extracting a
crafted tar can write anywhere.
"""

from __future__ import annotations

import gzip
import hashlib
import pickle
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import torch

from kd.errors import PipelineError

# SHA-256 of the decompressed IDX files.
IDX_SHA256 = {
    "mnist": {
        "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
    },
}
FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                   "Sneaker", "Bag", "Ankle boot")
# Where Debian's and Ubuntu's `dataset-fashion-mnist` package installs the four IDX files.
SYSTEM_DIRS = {"fashion-mnist": Path("/usr/share/datasets/fashion-mnist")}
# torchvision's dataset classes, by name: importing torchvision.datasets costs seconds and ~170 MB,
# so it happens only when a CIFAR folder is read or something must be downloaded.
TORCHVISION = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST", "cifar10": "CIFAR10",
               "cifar100": "CIFAR100"}


def torchvision_class(dataset: str) -> type:
    import torchvision.datasets

    return getattr(torchvision.datasets, TORCHVISION[dataset])
OFFLINE_HELP = {
    "fashion-mnist": "install the Debian/Ubuntu package dataset-fashion-mnist and leave data.root "
                     "null, or put the four IDX files (.gz or not) in a folder and set data.root "
                     "to it",
    "mnist": "put the four MNIST IDX files (.gz or not) in a folder and set data.root to it",
    "cifar10": "put cifar-10-python.tar.gz, or its extracted cifar-10-batches-py folder, in a "
               "folder and set data.root to it",
    "cifar100": "put cifar-100-python.tar.gz, or its extracted cifar-100-python folder, in a "
                "folder and set data.root to it",
}


class DataError(PipelineError):
    """The dataset could not be found, or a file failed verification."""


class CorruptFile(DataError):
    """A file is there but its content is not the dataset's: refused, never skipped silently."""


@dataclass
class Raw:
    train_x: torch.Tensor  # uint8 (N, C, H, W)
    train_y: torch.Tensor  # int64 (N,)
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: tuple[str, ...]
    source: str
    checksums: dict[str, str]


def digest(data: bytes, algo: str = "sha256") -> str:
    return hashlib.new(algo, data).hexdigest()


def _verified(path: Path, data: bytes, expected: str, algo: str) -> bytes:
    got = digest(data, algo)
    if got != expected:
        raise CorruptFile(f"{path}: {algo} of its content is {got}, expected {expected}: "
                        "the file is corrupt or not the dataset it claims to be")
    return data


# --- IDX (MNIST, Fashion-MNIST) ----------------------------------------------------------------


def _find_idx(folder: Path, name: str) -> Path | None:
    """Both spellings circulate (`train-images-idx3-ubyte` and `train-images.idx3-ubyte`)."""
    for stem in (name, name.replace("-idx", ".idx")):
        for suffix in ("", ".gz"):
            if (folder / (stem + suffix)).is_file():
                return folder / (stem + suffix)
    return None


def parse_idx(data: bytes) -> np.ndarray:
    """Decode an IDX file (big-endian, magic 0x00 0x00 <type> <ndim>) of unsigned bytes."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError("not an IDX file of unsigned bytes")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise ValueError(f"IDX header says {shape} but holds {body.size} bytes")
    return body.reshape(shape)


def _gunzip(path: Path) -> bytes:
    try:
        return gzip.decompress(path.read_bytes())
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise CorruptFile(f"{path}: not a readable gzip file (truncated or corrupt: {e})") from None


def read_idx_folder(folder: Path, expected: dict[str, str]) -> Raw:
    """Read the four IDX files named in `expected` (name -> SHA-256 of the decompressed bytes)."""
    arrays, sums = {}, {}
    for name, sha in expected.items():
        path = _find_idx(folder, name)
        if path is None:
            raise DataError(f"{folder}: no {name} (or .gz, or '.idx' spelling)")
        data = _gunzip(path) if path.suffix == ".gz" else path.read_bytes()
        _verified(path, data, sha, "sha256")
        sums[name] = sha
        try:
            arrays[name] = parse_idx(data)
        except ValueError as e:
            raise CorruptFile(f"{path}: {e}") from None
    x = {s: torch.from_numpy(arrays[f"{p}-images-idx3-ubyte"].copy()).unsqueeze(1)
         for s, p in (("train", "train"), ("test", "t10k"))}
    y = {s: torch.from_numpy(arrays[f"{p}-labels-idx1-ubyte"].astype(np.int64))
         for s, p in (("train", "train"), ("test", "t10k"))}
    return Raw(x["train"], y["train"], x["test"], y["test"], (), str(folder), sums)


# --- CIFAR pickles -----------------------------------------------------------------------------


def extract_cifar(tar: Path, cls: type, scratch: Path) -> Path:
    """Extract torchvision's CIFAR archive into `scratch`; return the folder of its batches.

    Only the genuine archive (torchvision's md5 of the .tar.gz) is extracted: Python 3.11's
    tarfile writes `../` and absolute member names where they point. Each member is checked
    before anything is written, and tarfile's "data" filter is a second guard.
    """
    with tar.open("rb") as f:
        got = hashlib.file_digest(f, "md5").hexdigest()
    if got != cls.tgz_md5:
        raise CorruptFile(f"{tar}: md5 is {got}, expected {cls.tgz_md5} (torchvision's "
                          f"{cls.filename}): a modified or recompressed archive is not extracted; "
                          f"give its extracted {cls.base_folder} folder instead (each batch file "
                          "in it is verified)")
    with tarfile.open(tar, "r:gz") as archive:
        for m in archive.getmembers():
            parts = PurePosixPath(m.name).parts
            if not (m.isfile() or m.isdir()) or parts[:1] != (cls.base_folder,) or ".." in parts:
                raise CorruptFile(f"{tar}: member {m.name!r} is not a regular file or folder in "
                                  f"{cls.base_folder}/; nothing extracted")
        archive.extractall(scratch, filter="data")
    return scratch / cls.base_folder


def read_cifar_folder(folder: Path, cls: type, scratch: Path) -> Raw:
    """Read torchvision's CIFAR python-pickle batches, each verified by torchvision's own md5.

    `folder` holds the extracted batches, their parent, or only torchvision's .tar.gz, which is
    extracted into `scratch` (the user's folder may be read-only). The md5s are of the extracted
    batch files, so batches extracted from a recompressed archive are still accepted.
    """
    base = folder / cls.base_folder if (folder / cls.base_folder).is_dir() else folder
    tar = folder / cls.filename
    if not (base / cls.meta["filename"]).is_file() and tar.is_file():
        base = extract_cifar(tar, cls, scratch)
    sums = {}

    def load(name: str, md5: str) -> dict:
        path = base / name
        if not path.is_file():
            raise DataError(f"{base}: no {name}" + ("" if tar.is_file() else f", and no {tar.name}"))
        data = _verified(path, path.read_bytes(), md5, "md5")
        sums[name] = md5
        return pickle.loads(data, encoding="latin1")

    def split(entries: list) -> tuple[torch.Tensor, torch.Tensor]:
        xs, ys = [], []
        for name, md5 in entries:
            d = load(name, md5)
            xs.append(np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            ys.extend(d["labels"] if "labels" in d else d["fine_labels"])
        return torch.from_numpy(np.concatenate(xs)), torch.tensor(ys, dtype=torch.int64)

    tx, ty = split(cls.train_list)
    vx, vy = split(cls.test_list)
    names = tuple(load(cls.meta["filename"], cls.meta["md5"])[cls.meta["key"]])
    return Raw(tx, ty, vx, vy, names, str(base), sums)


# --- digits (scikit-learn) ---------------------------------------------------------------------


def read_digits() -> Raw:
    """scikit-learn's bundled 8x8 digits (1,797 images, 0..16 grey levels): seconds-fast runs.

    The last 297 images are the test split, as in scikit-learn's own digits examples' ordering;
    the file ships inside the installed package, so there is nothing to download or verify.
    """
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy((d.images * 16).clip(0, 255).astype(np.uint8)).unsqueeze(1)
    y = torch.from_numpy(d.target.astype(np.int64))
    n_test = 297
    return Raw(x[:-n_test], y[:-n_test], x[-n_test:], y[-n_test:],
               tuple(str(i) for i in range(10)), "sklearn.datasets.load_digits", {})


# --- the search order --------------------------------------------------------------------------


def _read_folder(dataset: str, folder: Path, cache: Path) -> Raw:
    if dataset in IDX_SHA256:
        raw = read_idx_folder(folder, IDX_SHA256[dataset])
        raw.classes = FASHION_CLASSES if dataset == "fashion-mnist" else tuple(map(str, range(10)))
        return raw
    return read_cifar_folder(folder, torchvision_class(dataset), cache)


def _download(dataset: str, cache: Path) -> Path:
    """Let torchvision fetch the files; return the folder our reader should read."""
    cls = torchvision_class(dataset)
    for train in (True, False):
        cls(str(cache), train=train, download=True)
    if dataset in IDX_SHA256:
        return cache / cls.__name__ / "raw"
    return cache / cls.base_folder


def fetch(dataset: str, root: str | None, cache: Path) -> Raw:
    """Load `dataset` from `root`, or (root None) from the first source that has a verified copy;
    DataError lists what was tried."""
    if dataset == "digits":
        return read_digits()
    if root is not None:  # the user's choice: no silent switch to another copy or a download
        folder = Path(root)
        if not folder.is_dir():
            raise DataError(f"{folder}: no such folder (data.root); to search the standard places "
                            f"and download, set data.root to null. To run offline, "
                            f"{OFFLINE_HELP[dataset]}.")
        return _read_folder(dataset, folder, cache)
    tried = []
    system = SYSTEM_DIRS.get(dataset)
    if system is not None and not system.is_dir():
        tried.append(f"{system} (no such folder)")
    elif system is not None:
        try:
            return _read_folder(dataset, system, cache)
        except CorruptFile:
            raise  # a corrupt local copy is an error in its own right, not a reason to go online
        except DataError as e:
            tried.append(str(e))
    try:
        return _read_folder(dataset, _download(dataset, cache), cache)
    except DataError:
        raise
    except Exception as e:  # torchvision raises URLError, RuntimeError, ... when offline
        tried.append(f"torchvision download into {cache} ({type(e).__name__}: "
                     f"{str(e).splitlines()[0] if str(e) else 'failed'})")
    raise DataError(f"{dataset}: no usable copy found; tried: {'; '.join(tried)}. "
                    f"To run offline, {OFFLINE_HELP[dataset]}.")
