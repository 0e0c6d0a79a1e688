"""Load and validate params.yaml once, before any data or model is touched.

In:  a path to params.yaml, which `dvc exp run` composes from conf/ (the base values, a dataset,
     a preset and the `-S key=value` overrides: DVC's Hydra composition), so it holds the values
     that run and that `dvc exp show` displays.
Out: a `Params` object of plain dataclasses, or `ParamsError` with a one-line message that names
     the key and what is allowed. Stages turn that error into exit status 2.

Every knob lives in params.yaml; nothing here supplies a hidden default or overlays other values.
The schema below is the single list of allowed keys, so an unknown key (a typo such as
`teacher.epoch`) is an error too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from kd.archs import ARCH_HELP, parse_arch, resolve_arch
from kd.errors import PipelineError

DATASETS = ("fashion-mnist", "mnist", "cifar10", "cifar100", "digits")
NUM_CLASSES = {"fashion-mnist": 10, "mnist": 10, "cifar10": 10, "cifar100": 100, "digits": 10}
# Image side in pixels: each block of a `cnn:` architecture halves it, so it bounds their number.
IMAGE_SIDE = {"fashion-mnist": 28, "mnist": 28, "cifar10": 32, "cifar100": 32, "digits": 8}
# The presets (conf/preset/<name>.yaml, selected with `-S preset=<name>`) and the datasets each
# is made for; tests/test_params.py pins these names to the files.
PRESETS = {
    "none": DATASETS,
    "hinton-mnist": ("mnist", "fashion-mnist"),
    "cifar100-resnet": ("cifar100", "cifar10"),
    "patient-consistent": ("fashion-mnist", "mnist"),
}


class ParamsError(PipelineError):
    """A params.yaml value is missing, unknown or out of range; the message names the key."""


# --- value checks: each returns the cleaned value or raises ParamsError naming `key` ----------


def _int(key: str, v: Any, lo: int | None = None) -> int:
    # bool is an int subclass in Python; `epochs: true` is a mistake, not 1.
    if isinstance(v, bool) or not isinstance(v, int):
        raise ParamsError(f"{key} must be an integer{_lo(lo)} (got {v!r})")
    if lo is not None and v < lo:
        raise ParamsError(f"{key} must be an integer{_lo(lo)} (got {v!r})")
    return v


def _lo(lo: int | None) -> str:
    return f" >= {lo}" if lo is not None else ""


def _float(key: str, v: Any, lo: float, hi: float, lo_open: bool = False, hi_open: bool = False):
    # `-S T=4` writes the int 4: ints are accepted wherever a float is expected.
    # .inf and .nan are YAML floats: a bound of INF means "no upper bound", never the value inf.
    ok = isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
    if ok:
        v = float(v)
        ok = (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
    if not ok:
        left = "(" if lo_open else "["
        allowed = (f"a finite number {'>' if lo_open else '>='} {lo:g}" if hi == INF else
                   f"a number in {left}{lo:g}, {hi:g}{')' if hi_open else ']'}")
        raise ParamsError(f"{key} must be {allowed} (got {v!r})")
    return v


def _bool(key: str, v: Any) -> bool:
    if not isinstance(v, bool):
        raise ParamsError(f"{key} must be true or false (got {v!r})")
    return v


def _choice(key: str, v: Any, allowed: tuple[str, ...]) -> str:
    if v not in allowed:
        raise ParamsError(f"{key} must be one of {', '.join(allowed)} (got {v!r})")
    return v


def _classes(key: str, v: Any) -> tuple[int, ...]:
    if not isinstance(v, list) or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0
                                          for c in v):
        raise ParamsError(f"{key} must be a list of class indices, e.g. [3] or [] (got {v!r})")
    return tuple(sorted(set(v)))


def _bias(key: str, v: Any) -> float | str:
    if v == "auto":
        return v
    return _float(key, v, 0, INF) if not isinstance(v, str) else _type_error(
        key, v, "auto or a number >= 0")


def _arch(key: str, v: Any) -> str:
    if v == "auto":
        return v
    if not isinstance(v, str) or parse_arch(v) is None:
        raise ParamsError(f"{key} must be auto or an architecture ({ARCH_HELP}) (got {v!r})")
    return v


INF = float("inf")

# Keys of each section and how to check them. Model knobs (arch, dropout, max_norm) belong to the
# network; training knobs to the optimisation. Distillation trains the student's network (from
# `student.*`) with its own training knobs (`distill.*`).
TRAIN_KEYS = {
    "epochs": lambda k, v: _int(k, v, 1),
    "batch_size": lambda k, v: _int(k, v, 1),
    "lr": lambda k, v: _float(k, v, 0, INF, lo_open=True),
    "momentum": lambda k, v: _float(k, v, 0, 1, hi_open=True),
    "weight_decay": lambda k, v: _float(k, v, 0, INF),
    "shift": lambda k, v: _int(k, v, 0),
    "flip": _bool,
    "grad_clip": lambda k, v: _float(k, v, 0, INF),
    "mixup": lambda k, v: _float(k, v, 0, INF),
}
MODEL_KEYS = {
    "arch": _arch,
    "input_dropout": lambda k, v: _float(k, v, 0, 1, hi_open=True),
    "dropout": lambda k, v: _float(k, v, 0, 1, hi_open=True),
    "max_norm": lambda k, v: _float(k, v, 0, INF),
}
# The paper's transfer-set experiments (section 3): which training images the student learns from.
TRANSFER_KEYS = {
    "omit_classes": _classes,
    "keep_classes": _classes,
    "fraction": lambda k, v: _float(k, v, 0, 1, lo_open=True),
    "bias_correction": _bias,
}
DATA_KEYS = {
    "root": lambda k, v: v if v is None or isinstance(v, str) else _type_error(k, v, "a path"),
    "val_fraction": lambda k, v: _float(k, v, 0, 0.5, lo_open=True),
    "split_seed": lambda k, v: _int(k, v, 0),
}


def _type_error(key: str, v: Any, what: str):
    raise ParamsError(f"{key} must be {what} (got {v!r})")


@dataclass(frozen=True)
class Model:
    arch: str
    input_dropout: float
    dropout: float
    max_norm: float


@dataclass(frozen=True)
class Train:
    epochs: int
    batch_size: int
    lr: float
    momentum: float
    weight_decay: float
    shift: int
    flip: bool
    grad_clip: float
    mixup: float  # Beta(a, a) of mixup's weights; 0 = off


@dataclass(frozen=True)
class Transfer:
    omit_classes: tuple[int, ...]
    keep_classes: tuple[int, ...]
    fraction: float
    bias_correction: float | str  # a shift for classes missing from the transfer set, or "auto"


@dataclass(frozen=True)
class Data:
    root: str | None
    val_fraction: float
    split_seed: int


@dataclass(frozen=True)
class Params:
    dataset: str
    seed: int
    T: float
    alpha: float
    data: Data
    teacher_model: Model
    teacher: Train
    student_model: Model
    student: Train
    distill: Train
    transfer: Transfer
    raw: dict  # params.yaml's values, for logging to MLflow


def _section(raw: dict, name: str, schema: dict) -> dict:
    sec = raw.get(name)
    if not isinstance(sec, dict):
        raise ParamsError(f"{name} must be a mapping with keys {', '.join(schema)}")
    unknown = sorted(set(sec) - set(schema))
    if unknown:
        raise ParamsError(f"{name}.{unknown[0]} is not a known key; allowed: {', '.join(schema)}")
    missing = [k for k in schema if k not in sec]
    if missing:
        raise ParamsError(f"{name}.{missing[0]} is missing; {name} needs {', '.join(schema)}")
    return {k: check(f"{name}.{k}", sec[k]) for k, check in schema.items()}


TOP_KEYS = ("dataset", "preset", "seed", "T", "alpha", "launch", "data", "teacher", "student",
            "distill")
# How dvc.yaml starts the training stages (`${launch} -m stages.teacher`): plain Python, or
# torchrun for data-parallel training (kd/distributed.py).
LAUNCHERS = ("python", "python3", "torchrun")


def _launch(key: str, v: Any) -> str:
    if not isinstance(v, str) or not v.split() or v.split()[0] not in LAUNCHERS:
        raise ParamsError(f"{key} must be python or a torchrun command such as "
                          f"'torchrun --standalone --nproc-per-node 2' (got {v!r})")
    return v


def validate(raw: Any) -> Params:
    """Check a parsed params.yaml mapping; return `Params` or raise `ParamsError`."""
    if not isinstance(raw, dict):
        raise ParamsError("params.yaml must be a mapping of keys to values")
    unknown = sorted(set(raw) - set(TOP_KEYS))
    if unknown:
        raise ParamsError(f"{unknown[0]} is not a known key; allowed: {', '.join(TOP_KEYS)}")
    for k in TOP_KEYS:
        if k not in raw:
            raise ParamsError(f"{k} is missing from params.yaml")
    dataset = _choice("dataset", raw["dataset"], DATASETS)
    preset = _choice("preset", raw["preset"], tuple(PRESETS))
    if dataset not in PRESETS[preset]:
        raise ParamsError(f"preset {preset} is made for dataset {' or '.join(PRESETS[preset])} "
                          f"(dataset is {dataset!r}); add -S dataset={PRESETS[preset][0]}")
    seed = _int("seed", raw["seed"], 0)
    T = _float("T", raw["T"], 0, INF, lo_open=True)
    alpha = _float("alpha", raw["alpha"], 0, 1)
    _launch("launch", raw["launch"])
    data = Data(**_section(raw, "data", DATA_KEYS))
    nets = {}
    for role in ("teacher", "student"):
        sec = _section(raw, role, MODEL_KEYS | TRAIN_KEYS)
        nets[role + "_model"] = Model(**{k: sec[k] for k in MODEL_KEYS})
        nets[role] = Train(**{k: sec[k] for k in TRAIN_KEYS})
    sec = _section(raw, "distill", TRAIN_KEYS | TRANSFER_KEYS)
    distill = Train(**{k: sec[k] for k in TRAIN_KEYS})
    transfer = Transfer(**{k: sec[k] for k in TRANSFER_KEYS})
    _check_classes(transfer, NUM_CLASSES[dataset])
    for role in ("teacher", "student"):
        _check_fits(f"{role}.arch", nets[role + "_model"].arch, dataset)
    return Params(dataset=dataset, seed=seed, T=T, alpha=alpha, data=data, distill=distill,
                  transfer=transfer, raw=raw, **nets)


def _check_classes(t: Transfer, n: int) -> None:
    for key, classes in (("omit_classes", t.omit_classes), ("keep_classes", t.keep_classes)):
        if any(c >= n for c in classes):
            raise ParamsError(f"distill.{key} must hold class indices 0..{n - 1} (got {list(classes)})")
    left = set(t.keep_classes or range(n)) - set(t.omit_classes)
    if not left:
        raise ParamsError("distill.omit_classes and distill.keep_classes leave no class to train on")


def _check_fits(key: str, arch: str, dataset: str) -> None:
    """A CNN pools its input below one pixel when it has more blocks than log2(image side)."""
    kind, sizes = parse_arch(resolve_arch(arch, dataset, key.split(".")[0]))
    most = IMAGE_SIDE[dataset].bit_length() - 1
    if kind == "cnn" and len(sizes) > most:
        raise ParamsError(f"{key} {arch} has {len(sizes)} pooling blocks, but {dataset} "
                          f"{IMAGE_SIDE[dataset]}x{IMAGE_SIDE[dataset]} images allow at most "
                          f"{most} (each block halves the side)")


def load(path: str | Path = "params.yaml") -> Params:
    """Read and validate a params file; a missing or unparsable file is a ParamsError too."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ParamsError(f"{path}: no such params file") from None
    except yaml.YAMLError as e:
        raise ParamsError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    try:
        return validate(raw)
    except ParamsError as e:  # every message names the file once, then the key
        raise ParamsError(f"{path}: {e}") from None
