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

from kd.data.raw_files import (
    CorruptFile,
    DataError,
    Raw,
    read_cifar_folder,
    read_digits,
    read_idx_folder,
)

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


# --- IDX (MNIST, Fashion-MNIST) ----------------------------------------------------------------


# --- CIFAR pickles -----------------------------------------------------------------------------




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
