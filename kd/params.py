"""Load and validate params.yaml once, before any data or model is touched.

In:  a path to params.yaml, which `dvc exp run` composes from conf/ (the base values, a dataset,
     a preset and the `-S key=value` overrides: DVC's Hydra composition), so it holds the values
     that run and that `dvc exp show` displays. Nothing here supplies a default or overlays values.
Out: `Params`, plain dataclasses whose type hints are the one list of allowed keys and values
     (pydantic checks a file against them), or `ParamsError` with one line that names the key and
     what is allowed, which the stages turn into exit status 2.
"""

from dataclasses import dataclass, fields, is_dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

import yaml
from pydantic import AfterValidator, Field, TypeAdapter, ValidationError, WrapValidator, with_config
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError

from kd.archs import ARCH_HELP, parse_arch, resolve_arch
from kd.errors import PipelineError

DATASETS = ("fashion-mnist", "mnist", "cifar10", "cifar100", "digits")
NUM_CLASSES = {"fashion-mnist": 10, "mnist": 10, "cifar10": 10, "cifar100": 100, "digits": 10}
# Image side in pixels: each block of a `cnn:` architecture halves it, so it bounds their number.
IMAGE_SIDE = {"fashion-mnist": 28, "mnist": 28, "cifar10": 32, "cifar100": 32, "digits": 8}
# conf/preset/<name>.yaml (`-S preset=<name>`) and the datasets each is made for (pinned by tests)
PRESETS = {"none": DATASETS, "hinton-mnist": ("mnist", "fashion-mnist"),
           "cifar100-resnet": ("cifar100", "cifar10"), "patient-consistent": ("fashion-mnist", "mnist")}
LAUNCHERS = ("python", "python3", "torchrun")  # dvc.yaml runs `${launch} -m stages.<name>`


class ParamsError(PipelineError):
    """A params.yaml value is missing, unknown or out of range; the message names the key."""


def _arch(v: str) -> str:
    if v != "auto" and parse_arch(v) is None:
        raise ValueError(v)  # _message words a refusal from the field's description
    return v


def _launch(v: str) -> str:
    if (v.split() or [""])[0] not in LAUNCHERS:
        raise ValueError(v)
    return v


def _preset(v: str, info: Any) -> str:
    dataset = info.data.get("dataset")  # None when the dataset itself was refused
    if dataset is not None and dataset not in PRESETS[v]:
        raise PydanticCustomError("preset", f"preset {v} is made for dataset {' or '.join(PRESETS[v])} "
                                  f"(dataset is {dataset!r}); add -S dataset={PRESETS[v][0]}")
    return v


# strict: `epochs: true` is not 1, `epochs: 2.5` not 2, `flip: "yes"` not true; a float field
# takes an int (`-S T=4` writes 4) as float(4). inf and nan are refused by _File's config.
Count = Annotated[int, Field(strict=True, ge=1)]
Index = Annotated[int, Field(strict=True, ge=0)]
Positive = Annotated[float, Field(strict=True, gt=0)]
NonNegative = Annotated[float, Field(strict=True, ge=0)]
Rate = Annotated[float, Field(strict=True, ge=0, lt=1)]  # dropout, momentum
Arch = Annotated[str, Field(strict=True, description=f"auto or an architecture ({ARCH_HELP})"),
                 AfterValidator(_arch)]
Classes = Annotated[list[Index], Field(strict=True, description="a list of class indices, e.g. [3] or []"),
                    AfterValidator(lambda v: tuple(sorted(set(v))))]  # [3, 1, 3] -> (1, 3)


@dataclass(frozen=True)
class Model:  # the network's knobs; distillation trains the student's network (`student.*`)
    arch: Arch
    input_dropout: Rate
    dropout: Rate
    max_norm: NonNegative


@dataclass(frozen=True)
class Train:  # the optimisation's knobs, in `teacher`, `student` and `distill`
    epochs: Count
    batch_size: Count
    lr: Positive
    momentum: Rate
    weight_decay: NonNegative
    shift: Index
    flip: Annotated[bool, Field(strict=True, description="true or false")]
    grad_clip: NonNegative
    mixup: NonNegative  # Beta(a, a) of mixup's weights; 0 = off


@dataclass(frozen=True)
class Transfer:  # the paper's section 3: which training images the student learns from
    omit_classes: Classes
    keep_classes: Classes
    fraction: Annotated[float, Field(strict=True, gt=0, le=1)]
    # the amount added to the logits of classes missing from the transfer set, or "auto"
    bias_correction: Annotated[NonNegative, Field(description="auto or a number >= 0"),
                               WrapValidator(lambda v, number: v if v == "auto" else number(v))]


@dataclass(frozen=True)
class Data:
    root: Annotated[str | None, Field(strict=True, description="a path")]
    val_fraction: Annotated[float, Field(strict=True, gt=0, le=0.5)]
    split_seed: Index


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


# params.yaml as written: a teacher or student section holds a Model's keys, then a Train's.
_Net = dataclass(frozen=True)(type("Net", (Train, Model), {}))
_Distill = dataclass(frozen=True)(type("Distill", (Transfer, Train), {}))


@with_config(extra="forbid", allow_inf_nan=False)  # the sections' too
@dataclass(frozen=True)
class _File:
    dataset: Literal[DATASETS]
    preset: Annotated[Literal[tuple(PRESETS)], AfterValidator(_preset)]
    seed: Index
    T: Positive
    alpha: Annotated[float, Field(strict=True, ge=0, le=1)]
    launch: Annotated[str, Field(strict=True, description="python or a torchrun command such as "
                                 "'torchrun --standalone --nproc-per-node 2'"), AfterValidator(_launch)]
    data: Data
    teacher: _Net
    student: _Net
    distill: _Distill


_FILE = TypeAdapter(_File)
_SECTIONS = [f.name for f in fields(_File) if is_dataclass(f.type)]
_UNKNOWN = ("extra_forbidden", "unexpected_keyword_argument", "invalid_key")


def _order(e: dict) -> tuple:
    """The order the checks always had, so a file with several faults names the same one first: the
    top level, then each section; in each, unknown keys (A-Z), then missing keys, then values."""
    loc = tuple(map(str, e["loc"]))
    kind = 0 if e["type"] in _UNKNOWN else 1 if e["type"] == "missing" else 2
    in_section = loc[0] in _SECTIONS and (len(loc) > 1 or kind == 2)  # a missing section is a top key
    return (_SECTIONS.index(loc[0]) + 1 if in_section else 0, kind, loc if kind == 0 else ())


def _keys(cls: type) -> str:
    return ", ".join(f.name for f in fields(cls))


def _message(e: dict, raw: dict) -> str:
    """Word one pydantic error as one line that names the key: `T must be ... (got 0.0)`."""
    *section, name = loc = tuple(map(str, e["loc"][:2]))  # not a list index (omit_classes.0)
    key, hints = ".".join(loc), {f.name: f.type for f in fields(_File)}
    parent = hints[section[0]] if section else _File
    if e["type"] == "preset":
        return e["msg"]
    if e["type"] in _UNKNOWN:
        return f"{key} is not a known key; allowed: {_keys(parent)}"
    if e["type"] == "missing" and section:
        return f"{key} is missing; {section[0]} needs {_keys(parent)}"
    if e["type"] == "missing":
        return f"{key} is missing from params.yaml"
    if not section and is_dataclass(hints[name]):
        return f"{key} must be a mapping with keys {_keys(hints[name])}"
    f = FieldInfo.from_annotation(next(f.type for f in fields(parent) if f.name == name))
    v = raw[section[0]][name] if section else raw[name]
    v = float(v) if f.annotation is float and type(v) is int else v  # the number as it is used
    b = {k: getattr(m, k) for m in f.metadata for k in ("gt", "ge", "lt", "le") if hasattr(m, k)}
    lo, hi = b.get("gt", b.get("ge")), b.get("lt", b.get("le"))
    if f.description and (isinstance(v, str) or not b):
        allowed = f.description
    elif get_origin(f.annotation) is Literal:
        allowed = f"one of {', '.join(get_args(f.annotation))}"
    elif f.annotation is int:
        allowed = f"an integer >= {lo}"
    elif hi is None:
        allowed = f"a finite number {'>' if 'gt' in b else '>='} {lo:g}"
    else:
        allowed = f"a number in {'(' if 'gt' in b else '['}{lo:g}, {hi:g}{')' if 'lt' in b else ']'}"
    return f"{key} must be {allowed} (got {v!r})"


def _part(cls: type, section: Any) -> Any:
    return cls(**{f.name: getattr(section, f.name) for f in fields(cls)})


def validate(raw: Any) -> Params:
    """Check a parsed params.yaml mapping; return `Params` or raise `ParamsError`."""
    if not isinstance(raw, dict):
        raise ParamsError("params.yaml must be a mapping of keys to values")
    try:
        p = _FILE.validate_python(raw)
    except ValidationError as e:
        raise ParamsError(_message(min(e.errors(), key=_order), raw)) from None
    n, t = NUM_CLASSES[p.dataset], p.distill
    for key, classes in (("omit_classes", t.omit_classes), ("keep_classes", t.keep_classes)):
        if any(c >= n for c in classes):
            raise ParamsError(f"distill.{key} must hold class indices 0..{n - 1} (got {list(classes)})")
    if not set(t.keep_classes or range(n)) - set(t.omit_classes):
        raise ParamsError("distill.omit_classes and distill.keep_classes leave no class to train on")
    side = IMAGE_SIDE[p.dataset]  # a CNN may not pool its input below one pixel
    for role, arch in (("teacher", p.teacher.arch), ("student", p.student.arch)):
        kind, sizes = parse_arch(resolve_arch(arch, p.dataset, role))
        if kind == "cnn" and len(sizes) > side.bit_length() - 1:
            raise ParamsError(f"{role}.arch {arch} has {len(sizes)} pooling blocks, but {p.dataset} "
                              f"{side}x{side} images allow at most {side.bit_length() - 1} "
                              "(each block halves the side)")
    return Params(dataset=p.dataset, seed=p.seed, T=p.T, alpha=p.alpha, data=p.data, raw=raw,
                  teacher_model=_part(Model, p.teacher), teacher=_part(Train, p.teacher),
                  student_model=_part(Model, p.student), student=_part(Train, p.student),
                  distill=_part(Train, p.distill), transfer=_part(Transfer, p.distill))


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
