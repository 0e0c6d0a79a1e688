"""Prepared splits in memory, and batched augmentation in torch.

The download stage stores each split once as uint8 images (N, C, H, W) + int64 labels, with
per-channel mean/std of the training split in meta.json. Training holds a whole split in memory
(on the GPU when there is one) and cuts batches by index; shifting, flipping and normalising run
on the whole batch at once, with no per-sample Python, no PIL and no DataLoader workers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from kd.process.files import UnreadableFile, atomic_dir, load_json, load_torch, torch_bytes
from kd.process.recorded_hashes import verify

SPLITS = ("train", "val", "test")
META_KEYS = ("dataset", "classes", "mean", "std")


@dataclass
class Split:
    x: torch.Tensor  # uint8 (N, C, H, W)
    y: torch.Tensor  # int64 (N,)

    def __len__(self) -> int:
        return len(self.y)


@dataclass
class Dataset:
    name: str
    train: Split
    val: Split
    test: Split
    classes: tuple[str, ...]
    mean: torch.Tensor  # float (C,), of train pixels scaled to [0, 1]
    std: torch.Tensor
    split: dict = field(default_factory=dict)  # how val was cut from train: split_seed, val_fraction

    @property
    def in_shape(self) -> tuple[int, int, int]:
        return tuple(self.train.x.shape[1:])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def lineage(self) -> dict:
        """Which rows each split holds: the dataset and how validation was cut from train."""
        return {"dataset": self.name, **self.split}

    def to(self, device: torch.device) -> Dataset:
        move = lambda s: Split(s.x.to(device), s.y.to(device))  # noqa: E731
        return Dataset(self.name, move(self.train), move(self.val), move(self.test), self.classes,
                       self.mean.to(device), self.std.to(device), self.split)


def stratified_sample(labels: torch.Tensor, fraction: float, seed: int,
                      rows: torch.Tensor | None = None) -> torch.Tensor:
    """A random `fraction` of `rows` (default: all) taken class by class, at least one image of
    each class present, as sorted row numbers; it depends only on the labels and `seed`."""
    g = torch.Generator().manual_seed(seed)
    rows = torch.arange(len(labels)) if rows is None else rows
    parts = []
    for c in torch.unique(labels[rows]):
        members = rows[labels[rows] == c]
        take = max(1, round(fraction * len(members)))
        parts.append(members[torch.randperm(len(members), generator=g)[:take]])
    return torch.cat(parts).sort().values


def split_off_validation(x: torch.Tensor, y: torch.Tensor, fraction: float, seed: int
                         ) -> tuple[Split, Split]:
    """Hold out `fraction` of the training images, stratified by class, for model selection.

    Stratified so that small sets (digits) still see every class in validation; the split depends
    only on `seed` (data.split_seed), so changing the training seed keeps the same data.
    """
    val = stratified_sample(y, fraction, seed)
    keep = torch.ones(len(y), dtype=torch.bool)
    keep[val] = False
    return Split(x[keep].contiguous(), y[keep].contiguous()), Split(x[val].contiguous(), y[val])


def channel_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std of uint8 images, in [0, 1] units (float64 sums: no drift)."""
    xf = x.double().div_(255).transpose(0, 1).reshape(x.shape[1], -1)
    return xf.mean(1).float(), xf.std(1).float()


def save(folder: Path, name: str, train: Split, val: Split, test: Split,
         classes: tuple[str, ...], extra: dict) -> None:
    """Write train/val/test .pt files and meta.json into `folder`, replacing it atomically."""
    mean, std = channel_stats(train.x)
    meta = {"dataset": name, "classes": list(classes), "shape": list(train.x.shape[1:]),
            "mean": mean.tolist(), "std": std.tolist(),
            "sizes": {"train": len(train), "val": len(val), "test": len(test)}, **extra}
    with atomic_dir(folder) as tmp:
        for split_name, s in zip(SPLITS, (train, val, test), strict=True):
            # Plain file I/O for the bytes: a full disk then names the file (see io.torch_bytes).
            (tmp / f"{split_name}.pt").write_bytes(torch_bytes({"x": s.x, "y": s.y}))
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")


def load(folder: Path) -> Dataset:
    """Read what `save` wrote; a missing, truncated or corrupt file is an UnreadableFile naming it,
    a folder that is not what dvc.lock records a recorded_hashes.Mismatch."""
    path = Path(folder) / "meta.json"
    if not path.is_file():
        raise UnreadableFile(f"{path}: no such file, so {folder} is not a prepared dataset; run "
                             "the download stage, or pass the folder it wrote")
    verify(folder)
    meta = load_json(path, "prepared dataset's meta.json")
    missing = [k for k in META_KEYS if k not in meta]
    if missing:
        raise UnreadableFile(f"{path}: not a prepared dataset's meta.json (no {', '.join(missing)}); "
                             "rerun the download stage")
    splits = {}
    for s in SPLITS:
        d = load_torch(path.parent / f"{s}.pt", required=("x", "y"), what="prepared split")
        splits[s] = _checked(path.parent / f"{s}.pt", d, len(meta["classes"]))
    return Dataset(meta["dataset"], splits["train"], splits["val"], splits["test"],
                   tuple(meta["classes"]), torch.tensor(meta["mean"]), torch.tensor(meta["std"]),
                   meta.get("split", {}))


def _checked(path: Path, d: dict, classes: int) -> Split:
    """A split as training needs it: uint8 images (N, C, H, W) and one label in [0, classes) per
    image. A label past the class count would fail deep in cross_entropy as an IndexError."""
    x, y = d["x"], d["y"]
    if not (isinstance(x, torch.Tensor) and x.dtype == torch.uint8 and x.dim() == 4):
        raise UnreadableFile(f"{path}: x is not uint8 images (N, C, H, W); rerun the download stage")
    if not (isinstance(y, torch.Tensor) and y.dim() == 1 and not y.is_floating_point()
            and len(y) == len(x)):
        raise UnreadableFile(f"{path}: y is not one integer label per image; rerun the download "
                             "stage")
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= classes):
        raise UnreadableFile(f"{path}: labels run from {int(y.min())} to {int(y.max())}, but "
                             f"meta.json names {classes} classes (0 to {classes - 1}); rerun the "
                             "download stage")
    return Split(x, y.long())


def normalize(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 (N, C, H, W) -> float32, per-channel standardised."""
    scale = (1.0 / (255.0 * std)).view(1, -1, 1, 1)
    shift = (mean / std).view(1, -1, 1, 1)
    return x.float().mul_(scale).sub_(shift)


def random_shift(x: torch.Tensor, max_px: int, gen: torch.Generator) -> torch.Tensor:
    """Translate every image by its own random (dy, dx) in [-max_px, max_px], zero-filled.

    Hinton et al.'s "jitter" of up to 2 px on MNIST; with max_px=4 it is the usual CIFAR
    pad-4-and-random-crop. One gather for the whole batch: pad, then index each image's window.
    """
    if max_px <= 0:
        return x
    n, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (max_px,) * 4)
    off = torch.randint(0, 2 * max_px + 1, (2, n), generator=gen, device=gen.device).to(x.device)
    rows = (off[0, :, None] + torch.arange(h, device=x.device))[:, :, None]  # (N, H, 1)
    cols = (off[1, :, None] + torch.arange(w, device=x.device))[:, None, :]  # (N, 1, W)
    batch = torch.arange(n, device=x.device)[:, None, None]
    # Advanced indexing puts the indexed dims first: (N, H, W, C) -> back to (N, C, H, W).
    return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2).contiguous()


def random_flip(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Mirror a random half of the batch left-right."""
    mask = torch.rand(len(x), generator=gen, device=gen.device).to(x.device) < 0.5
    return torch.where(mask.view(-1, 1, 1, 1), x.flip(3), x)


def mixup(x: torch.Tensor, alpha: float, gen: torch.Generator, rng: np.random.Generator
          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mix every image of a normalised float batch with a random partner from the same batch:
    image i becomes lam_i * x_i + (1 - lam_i) * x_partner(i), lam_i ~ Beta(alpha, alpha), one
    weight per image (Zhang et al. 2018). Returns (mixed batch, partner index, lam (N,)).

    The partners come from the loop's torch generator; the Beta draws from numpy's (torch cannot
    draw Beta variates from a given generator), both seeded, so a run is reproducible.
    """
    n = len(x)
    partner = torch.randperm(n, generator=gen, device=gen.device).to(x.device)
    lam = torch.from_numpy(rng.beta(alpha, alpha, size=n)).float().to(x.device)
    w = lam.view(-1, *([1] * (x.dim() - 1)))
    return w * x + (1 - w) * x[partner], partner, lam
