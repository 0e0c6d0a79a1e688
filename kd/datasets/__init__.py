"""The datasets: one module each in this folder, named as `dataset` names it (`fashion-mnist.py`),
beside conf/dataset/<name>.yaml (its default teacher and student architectures, which DVC's Hydra
composition writes into params.yaml on `-S dataset=<name>`, so `dvc exp show` shows what ran).

A dataset module registers `DATASET = Dataset(...)`: what the params check needs before any data
is read (the class count for `distill.omit_classes` / `keep_classes`, the image side a CNN may not
pool below, the presets of conf/preset/ made for it) and where its raw files come from (their
format, checksums, a system package's folder, torchvision's downloader, the offline hint). Nothing
else lists the datasets: params validation, the download stage, the docs table and the tests ask
this registry. Data only, no reader: the readers of each format are kd/data/raw_files.py's.

Why one file each: every stage depends on `kd/datasets/${dataset}.py` alone, so adding a dataset
reruns nothing on the others (docs/architecture.md, "Adding a dataset").
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import yaml

FOLDER = Path(__file__).parent
CONF = FOLDER.parents[1] / "conf"
FORMATS = ("idx", "cifar", "sklearn-digits")  # what kd/data/sources.py can read


@dataclass(frozen=True)
class Dataset:
    name: str  # its module's name, which is `dataset`'s value
    classes: int
    side: int  # image side in pixels (square images)
    channels: int  # 1 grey, 3 colour
    train_images: int  # in its training split, before validation is held out (memory estimates)
    presets: tuple[str, ...]  # conf/preset/ files made for it, besides `none`
    format: str  # one of FORMATS
    class_names: tuple[str, ...] = ()  # () where its files name them (CIFAR's meta file)
    checksums: dict[str, str] = field(default_factory=dict)  # file -> SHA-256 of its content
    system_dir: str | None = None  # where a system package installs its raw files
    torchvision: str | None = None  # the torchvision.datasets class that downloads it
    offline: str = ""  # how to get it without a network, for the error that lists what was tried


def names() -> tuple[str, ...]:
    """Every dataset in this folder, sorted."""
    return tuple(sorted(p.stem for p in FOLDER.glob("*.py") if p.stem != "__init__"))


@cache
def get(name: str) -> Dataset:
    """The registered dataset `name` (one of names(): check before asking)."""
    path = FOLDER / f"{name}.py"  # loaded by its path: a dataset's name may hold a '-'
    spec = importlib.util.spec_from_file_location(f"kd.datasets.{name.replace('-', '_')}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    entry = module.DATASET
    if entry.name != name or entry.format not in FORMATS:
        raise ImportError(f"{path}: registers {entry.name!r} in format {entry.format!r}; the name must "
                          f"be the file's, the format one of {', '.join(FORMATS)}")
    return entry


def preset_names() -> tuple[str, ...]:
    """The files of conf/preset/, `none` first."""
    return tuple(sorted((p.stem for p in (CONF / "preset").glob("*.yaml")), key=lambda n: (n != "none", n)))


def made_for(preset: str) -> tuple[str, ...]:
    """The datasets a preset is made for (`none`: all), the one it is named after first
    (cifar100-resnet: cifar100), the one a refusal suggests."""
    if preset == "none":
        return names()
    mine = [d for d in names() if preset in get(d).presets]
    return tuple(sorted(mine, key=lambda d: d not in preset.split("-")))


@cache
def default_arch(dataset: str, role: str) -> str:
    """The dataset's `teacher` or `student` architecture, as conf/dataset/<dataset>.yaml sets it."""
    conf = yaml.safe_load((CONF / "dataset" / f"{dataset}.yaml").read_text())
    return conf[role]["arch"]


def resolve_arch(spec: str, dataset: str, role: str) -> str:
    """Turn `auto` into the dataset's default architecture for `role` (teacher or student)."""
    return default_arch(dataset, role) if spec == "auto" else spec
