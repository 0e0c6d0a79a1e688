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

from pathlib import Path

from kd import datasets
from kd.data.raw_files import (
    CorruptFile,
    DataError,
    Raw,
    read_cifar_folder,
    read_digits,
    read_idx_folder,
)
from kd.datasets import Dataset


def torchvision_class(ds: Dataset) -> type:
    # importing torchvision.datasets costs seconds and ~170 MB: only when a CIFAR folder is read or
    # something must be downloaded
    import torchvision.datasets

    return getattr(torchvision.datasets, ds.torchvision)


def _read_folder(ds: Dataset, folder: Path, cache: Path) -> Raw:
    if ds.format == "idx":
        raw = read_idx_folder(folder, ds.checksums)
        raw.classes = ds.class_names
        return raw
    return read_cifar_folder(folder, torchvision_class(ds), cache)


def _download(ds: Dataset, cache: Path) -> Path:
    """Let torchvision fetch the files; return the folder our reader should read."""
    cls = torchvision_class(ds)
    for train in (True, False):
        cls(str(cache), train=train, download=True)
    if ds.format == "idx":
        return cache / cls.__name__ / "raw"
    return cache / cls.base_folder


def fetch(dataset: str, root: str | None, cache: Path) -> Raw:
    """Load `dataset` (kd/datasets/) from `root`, or (root None) from the first source that has a
    verified copy; DataError lists what was tried."""
    ds = datasets.get(dataset)
    if ds.format == "sklearn-digits":
        return read_digits()
    if root is not None:  # the user's choice: no silent switch to another copy or a download
        folder = Path(root)
        if not folder.is_dir():
            raise DataError(f"{folder}: no such folder (data.root); to search the standard places "
                            f"and download, set data.root to null. To run offline, "
                            f"{ds.offline}.")
        return _read_folder(ds, folder, cache)
    tried = []
    system = Path(ds.system_dir) if ds.system_dir else None
    if system is not None and not system.is_dir():
        tried.append(f"{system} (no such folder)")
    elif system is not None:
        try:
            return _read_folder(ds, system, cache)
        except CorruptFile:
            raise  # a corrupt local copy is an error in its own right, not a reason to go online
        except DataError as e:
            tried.append(str(e))
    try:
        return _read_folder(ds, _download(ds, cache), cache)
    except DataError:
        raise
    except Exception as e:  # torchvision raises URLError, RuntimeError, ... when offline
        tried.append(f"torchvision download into {cache} ({type(e).__name__}: "
                     f"{str(e).splitlines()[0] if str(e) else 'failed'})")
    raise DataError(f"{dataset}: no usable copy found; tried: {'; '.join(tried)}. "
                    f"To run offline, {ds.offline}.")
