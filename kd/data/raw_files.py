"""The raw file formats, read and verified: IDX (MNIST and Fashion-MNIST), torchvision's CIFAR
python archives, scikit-learn's bundled digits. Where the files are found: kd/data/sources.py.

Out: `Raw` (train/test uint8 images (N, C, H, W), int64 labels, class names, where they came
from), or `CorruptFile` naming the file whose content is not the dataset's.
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
