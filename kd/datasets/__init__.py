"""Every fact about a dataset, written once; the params schema, the stages and the tests read them
from here (no torch, so the params check stays fast).

- Which datasets exist, and each one's default teacher and student architectures: the files
  conf/dataset/<name>.yaml, which DVC's Hydra composition also writes into params.yaml
  (`-S dataset=mnist`), so `dvc exp show` shows the architectures that ran. `auto` in a
  hand-written params.yaml resolves to the same file's value.
- What the params check needs before any data is read: the number of classes (class indices in
  `distill.omit_classes` / `keep_classes`) and the image side (a CNN may not pool below one
  pixel), and which presets (conf/preset/<name>.yaml) are made for the dataset.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

import yaml

CONF = Path(__file__).resolve().parents[2] / "conf"


@dataclass(frozen=True)
class Facts:
    classes: int
    side: int  # image side in pixels (square images)
    presets: tuple[str, ...]  # conf/preset/ files made for it, besides `none`


FACTS = {
    "fashion-mnist": Facts(10, 28, ("hinton-mnist", "patient-consistent")),
    "mnist": Facts(10, 28, ("hinton-mnist", "patient-consistent")),
    "cifar10": Facts(10, 32, ("cifar100-resnet",)),
    "cifar100": Facts(100, 32, ("cifar100-resnet",)),
    "digits": Facts(10, 8, ()),
}
DATASETS = tuple(FACTS)


def _made_for(preset: str) -> tuple[str, ...]:
    # the dataset a preset is named after first (cifar100-resnet: cifar100): the one a refusal
    # suggests
    mine = [d for d, f in FACTS.items() if preset in f.presets]
    return tuple(sorted(mine, key=lambda d: d not in preset.split("-")))


# preset -> the datasets it is made for (`none`: all of them)
PRESETS = {"none": DATASETS, **{preset: _made_for(preset) for preset in
                                dict.fromkeys(p for f in FACTS.values() for p in f.presets)}}


@cache
def default_arch(dataset: str, role: str) -> str:
    """The dataset's `teacher` or `student` architecture, as conf/dataset/<dataset>.yaml sets it."""
    conf = yaml.safe_load((CONF / "dataset" / f"{dataset}.yaml").read_text())
    return conf[role]["arch"]


def resolve_arch(spec: str, dataset: str, role: str) -> str:
    """Turn `auto` into the dataset's default architecture for `role` (teacher or student)."""
    return default_arch(dataset, role) if spec == "auto" else spec
