"""Load and validate params.yaml once, before any data or model is touched.

params.yaml is what `dvc exp run` composed from conf/ (Hydra): the values that run and that
`dvc exp show` displays; nothing here supplies a default. `Params` mirrors the file section by
section (pydantic checks it against the type hints); a bad value is a `ParamsError` whose one line
names the key and what is allowed, which the stages turn into exit status 2.
"""

import re
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, get_origin, get_type_hints

from pydantic import AfterValidator, Field, TypeAdapter, ValidationError, WrapValidator, with_config
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError

from kd import datasets
from kd.config import params_file
from kd.config.archs import ARCH_HELP, parse_arch
from kd.datasets import resolve_arch
from kd.errors import PipelineError
from kd.process.numerics import MODES

# `launch` as a shell will read it: python, or torchrun and its options (`--name`, `--name=value`,
# `--name value`); values of letters, digits and . : , / + - only. No quote, `$`, backtick, `;`,
# `&`, `|`, redirection, glob or line break can pass, so a param never runs a command of its own.
LAUNCH = (r"^ *(python3?|torchrun( +--[A-Za-z][A-Za-z0-9-]*(=[A-Za-z0-9_.:,/+-]+"
          r"| +[A-Za-z0-9_.:,/+][A-Za-z0-9_.:,/+-]*)?)*) *$")


class ParamsError(PipelineError):
    """A params.yaml value is missing, unknown or out of range; the message names the key."""


def _arch(v: str) -> str:
    if v != "auto" and parse_arch(v) is None:
        raise ValueError(v)  # the field's description words the refusal
    return v


def _dataset(v: str) -> str:
    if v not in datasets.names():
        raise PydanticCustomError("allowed", f"one of {', '.join(datasets.names())} (kd/datasets/)")
    return v


def _preset(v: str, info: Any) -> str:
    if v not in datasets.preset_names():
        raise PydanticCustomError("allowed", f"one of {', '.join(datasets.preset_names())} (conf/preset/)")
    dataset = info.data.get("dataset")  # None when the dataset itself was refused
    if dataset is not None and v != "none" and v not in datasets.get(dataset).presets:
        made_for = datasets.made_for(v)
        raise PydanticCustomError("preset", f"preset {v} is made for dataset {' or '.join(made_for)} "
                                  f"(dataset is {dataset!r}); add -S dataset={made_for[0]}")
    return v


def Value(kind: type, allowed: str, *checks: Any, **bounds: Any) -> Any:
    """`kind`, strictly (`epochs: true` is not 1, 2.5 not 2; a float field takes an int as a float),
    within `bounds`; `allowed` is the refusal's wording. inf and nan are refused by Params' config."""
    strict = {} if get_origin(kind) is Literal else {"strict": True}  # a Literal matches exactly
    return Annotated[kind, Field(description=allowed, **strict, **bounds), *checks]


Count, Index = Value(int, "an integer >= 1", ge=1), Value(int, "an integer >= 0", ge=0)
# Seeds go to torch's manual_seed (global, and each torch.Generator's), which takes an unsigned 64-bit
# integer (2**64 overflows; a negative seed wraps round to another), and numpy's default_rng (any
# integer >= 0). `seed` keeps the upper half free: under torchrun rank r seeds seed + r.
SplitSeed = Value(int, "an integer in [0, 2**64 - 1]", ge=0, le=2**64 - 1)
Seed = Value(int, "an integer in [0, 2**63 - 1]", ge=0, le=2**63 - 1)
# The temperature of every loss, where its soft term still teaches in float32. Above 100, float32
# rounds softmax(logits / T) (each probability 1/classes + logit / (T * classes), kept to ~1e-7)
# coarser than the logits' differences: the logged loss goes wrong (ls's by 2% at T = 1000, kd's
# by 3% at 1e4, then below zero) and by 1e7 the gradient is 40% rounding (digits: 71% test
# accuracy, 20% at 1e8); T = 100 is within 7% of the T -> infinity limit (logit matching) anyway.
# Below 0.1 the teacher's softmax is one-hot for most images and the soft term's gradient shrinks
# in proportion to T (alpha = 1 on digits: 28% test accuracy at T = 0.01, chance at 0.001).
# The measurements: docs/numerics.md.
Temperature = Value(float, "a number in [0.1, 100]", ge=0.1, le=100)
Positive, NonNegative = Value(float, "a finite number > 0", gt=0), Value(float, "a finite number >= 0", ge=0)
Rate = Value(float, "a number in [0, 1)", ge=0, lt=1)  # dropout, momentum
Share = Value(float, "a number in [0, 1]", ge=0, le=1)  # a weight or a share of the epochs
Arch = Value(str, f"auto or an architecture ({ARCH_HELP})", AfterValidator(_arch))
Classes = Value(list[Index], "a list of class indices, e.g. [3] or []",
                AfterValidator(lambda v: tuple(sorted(set(v)))))  # [3, 1, 3] -> (1, 3)


def _auto_or_number(v: Any, number: Any) -> Any:
    if isinstance(v, str) and v != "auto":
        raise PydanticCustomError("allowed", "auto or a number >= 0")
    return v if v == "auto" else number(v)


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
    flip: Value(bool, "true or false")
    grad_clip: NonNegative
    mixup: NonNegative  # Beta(a, a) of mixup's weights; 0 = off


@dataclass(frozen=True)
class Net(Train, Model):  # a `teacher` or `student` section: a Model's keys, then a Train's
    pass


@dataclass(frozen=True)
class Distill(Train):  # the `distill` section: a Train's keys, then the paper's section 3 ones
    omit_classes: Classes  # which training images the student learns from
    keep_classes: Classes
    fraction: Value(float, "a number in (0, 1]", gt=0, le=1)
    # the amount added to the logits of classes missing from the transfer set, or "auto"
    bias_correction: Annotated[NonNegative, WrapValidator(_auto_or_number)]
    # the loss: a module of kd/losses/, whose registry validates it and its knobs (the check and
    # distill stages ask it; this schema, which every stage reads, knows no loss by name)
    loss: Value(str, "a loss's name (kd/losses/)", pattern=r"^[a-z][a-z0-9]*$")
    # every other key of the section: `<loss>_<knob>`, e.g. dkd_beta (kd's are the top-level T, alpha)
    knobs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Data:
    root: Value(str | None, "a path")
    val_fraction: Value(float, "a number in (0, 0.5]", gt=0, le=0.5)
    split_seed: SplitSeed  # only torch.Generator(...).manual_seed reads it


@with_config(extra="forbid", allow_inf_nan=False)  # the sections' too
@dataclass(frozen=True)
class Params:
    dataset: Value(str, "a dataset of kd/datasets/", AfterValidator(_dataset))
    preset: Value(str, "a preset of conf/preset/", AfterValidator(_preset))
    seed: Seed
    T: Temperature
    alpha: Share
    # dvc.yaml runs `${launch} -m stages.<name>` through a shell: a launcher and its options only
    launch: Value(str, "python or a torchrun command of --options only (letters, digits and "
                  ". : , / + - =; no shell syntax), such as 'torchrun --standalone --nproc-per-node 2'",
                  pattern=LAUNCH)
    # what may move a result's bits besides params, code and data (kd/process/numerics.py)
    numerics: Value(Literal[MODES], f"one of {', '.join(MODES)}")
    data: Data
    teacher: Net
    student: Net
    distill: Distill


_PARAMS = TypeAdapter(Params)
_DISTILL_KEYS = {f.name for f in fields(Distill)} - {"knobs"}
_KNOB = re.compile(r"^[a-z][a-z0-9]*_[A-Za-z0-9_]+$")  # <loss>_<knob>


def _with_knobs(raw: dict) -> dict:
    """The distill section's `<loss>_<knob>` keys (`dkd_beta`) moved into `knobs`; any other key
    stays, for the schema to refuse (`distill.arch`)."""
    section = raw.get("distill")
    if not isinstance(section, dict) or "knobs" in section:
        return raw
    knobs = {k: v for k, v in section.items()
             if k not in _DISTILL_KEYS and isinstance(k, str) and _KNOB.match(k)}
    return {**raw, "distill": {**{k: v for k, v in section.items() if k not in knobs},
                               "knobs": knobs}}


def allowed(kind: Any) -> str:
    """What a Value allows, in words: `a finite number >= 0`."""
    return FieldInfo.from_annotation(kind).description
_UNKNOWN = ("extra_forbidden", "unexpected_keyword_argument", "invalid_key")


def _keys(cls: type) -> str:
    return ", ".join(f.name for f in fields(cls) if f.name != "knobs")


def _message(e: dict, raw: dict) -> str:
    """Word one pydantic error as one line that names the key: `T must be ... (got 0.0)`."""
    *section, name = loc = tuple(map(str, e["loc"][:2]))  # not a list index (omit_classes.0)
    key, parent = ".".join(loc), get_type_hints(Params)[section[0]] if section else Params
    if e["type"] == "preset":
        return e["msg"]
    if e["type"] in _UNKNOWN:
        return f"{key} is not a known key; allowed: {_keys(parent)}"
    if e["type"] == "missing":
        return f"{key} is missing; {section[0]} needs {_keys(parent)}" if section else \
            f"{key} is missing from params.yaml"
    hint = get_type_hints(parent, include_extras=True)[name]
    if is_dataclass(hint):
        return f"{key} must be a mapping with keys {_keys(hint)}"
    f, v = FieldInfo.from_annotation(hint), raw[section[0]][name] if section else raw[name]
    v = float(v) if f.annotation is float and type(v) is int else v  # the number as it is used
    return f"{key} must be {e['msg'] if e['type'] == 'allowed' else f.description} (got {v!r})"


def validate(raw: Any) -> Params:
    """Check a parsed params.yaml mapping; return `Params` or raise `ParamsError`."""
    if not isinstance(raw, dict):
        raise ParamsError("params.yaml must be a mapping of keys to values")
    raw = _with_knobs(raw)
    try:
        p = _PARAMS.validate_python(raw)
    except ValidationError as e:  # pydantic's order: the sections' as params.yaml lists them
        raise ParamsError(_message(e.errors()[0], raw)) from None
    n, t = datasets.get(p.dataset).classes, p.distill
    for key, classes in (("omit_classes", t.omit_classes), ("keep_classes", t.keep_classes)):
        if any(c >= n for c in classes):
            raise ParamsError(f"distill.{key} must hold class indices 0..{n - 1} (got {list(classes)})")
    if not set(t.keep_classes or range(n)) - set(t.omit_classes):
        raise ParamsError("distill.omit_classes and distill.keep_classes leave no class to train on")
    side = datasets.get(p.dataset).side  # a CNN may not pool its input below one pixel
    for role, arch in (("teacher", p.teacher.arch), ("student", p.student.arch)):
        kind, sizes = parse_arch(resolve_arch(arch, p.dataset, role))
        if kind == "cnn" and len(sizes) > side.bit_length() - 1:
            raise ParamsError(f"{role}.arch {arch} has {len(sizes)} pooling blocks, but {p.dataset} "
                              f"{side}x{side} images allow at most {side.bit_length() - 1} "
                              "(each block halves the side)")
    return p


def load(path: str | Path = "params.yaml") -> Params:
    """Read and validate a params file; a missing or unparsable file is a ParamsError too."""
    path = Path(path)
    try:
        raw = params_file.read(path)  # as DVC reads it: UTF-8, no duplicate key, bounded
    except FileNotFoundError:
        raise ParamsError(f"{path}: no such params file") from None
    except (params_file.ParamsFileError, OSError) as e:
        raise ParamsError(f"{path}: {e.strerror if isinstance(e, OSError) else e}") from None
    try:
        return validate(raw)
    except ParamsError as e:  # every message names the file once, then the key
        raise ParamsError(f"{path}: {e}") from None
