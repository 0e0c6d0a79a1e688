"""Load and validate params.yaml once, before any data or model is touched.

params.yaml is what `dvc exp run` composed from conf/ (Hydra): the values that run and that
`dvc exp show` displays; nothing here supplies a default. `Params` mirrors the file section by
section (pydantic checks it against the type hints); a bad value is a `ParamsError` whose one line
names the key and what is allowed, which the stages turn into exit status 2.
"""

import os
from dataclasses import dataclass, fields, is_dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, get_origin, get_type_hints

from pydantic import AfterValidator, Field, TypeAdapter, ValidationError, WrapValidator, with_config
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError

from kd.config import params_file
from kd.config.archs import ARCH_HELP, parse_arch
from kd.datasets import DATASETS, FACTS, PRESETS, resolve_arch
from kd.errors import PipelineError
from kd.process.numerics import MODES

# distill.loss: the distillation loss (kd/losses/__init__.py writes each one)
LOSSES = ("kd", "dkd", "ls", "dist")
# Each successor's knobs as its authors' code trains it (kd/losses/__init__.py says where each is from);
# the shipped defaults (conf/config.yaml) depart from these only where docs/results.md says why.
RECIPES = {"dkd": {"dkd_ce": 1.0, "dkd_alpha": 1.0, "dkd_beta": 8.0, "dkd_T": 4.0, "dkd_warmup": 0.0833},
           "ls": {"ls_ce": 1.0, "ls_kd": 9.0, "ls_T": 2.0},
           "dist": {"dist_beta": 1.0, "dist_gamma": 1.0, "dist_tau": 1.0}}


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


def _preset(v: str, info: Any) -> str:
    dataset = info.data.get("dataset")  # None when the dataset itself was refused
    if dataset is not None and dataset not in PRESETS[v]:
        raise PydanticCustomError("preset", f"preset {v} is made for dataset {' or '.join(PRESETS[v])} "
                                  f"(dataset is {dataset!r}); add -S dataset={PRESETS[v][0]}")
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
    # the loss (kd/losses/__init__.py), then each successor's own knobs, named after it: its authors' whole
    # recipe, temperature and cross-entropy weight included (kd's knobs are the top-level T, alpha)
    loss: Value(Literal[LOSSES], f"one of {', '.join(LOSSES)}")
    dkd_ce: NonNegative  # weight of DKD's cross-entropy with the labels
    dkd_alpha: NonNegative  # weight of DKD's target-class term (TCKD)
    dkd_beta: NonNegative  # weight of DKD's non-target-class term (NCKD)
    dkd_T: Temperature  # DKD's temperature
    # share of distill.epochs over which DKD's term ramps up linearly (the authors': 20 of 240)
    dkd_warmup: Value(float, "a number in [0, 1]", ge=0, le=1)
    ls_ce: NonNegative  # weight of LS's cross-entropy with the labels
    ls_kd: NonNegative  # weight of LS's KD term on standardised logits
    ls_T: Temperature  # LS's base temperature
    dist_beta: NonNegative  # weight of DIST's inter-class relation (each image)
    dist_gamma: NonNegative  # weight of DIST's intra-class relation (each class over a batch)
    dist_tau: Temperature  # DIST's temperature (the authors': 1, none)


@dataclass(frozen=True)
class Data:
    root: Value(str | None, "a path")
    val_fraction: Value(float, "a number in (0, 0.5]", gt=0, le=0.5)
    split_seed: SplitSeed  # only torch.Generator(...).manual_seed reads it


@with_config(extra="forbid", allow_inf_nan=False)  # the sections' too
@dataclass(frozen=True)
class Params:
    dataset: Value(Literal[DATASETS], f"one of {', '.join(DATASETS)}")
    preset: Value(Literal[tuple(PRESETS)], f"one of {', '.join(PRESETS)}", AfterValidator(_preset))
    seed: Seed
    T: Temperature
    alpha: Value(float, "a number in [0, 1]", ge=0, le=1)
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
_UNKNOWN = ("extra_forbidden", "unexpected_keyword_argument", "invalid_key")


def _keys(cls: type) -> str:
    return ", ".join(f.name for f in fields(cls))


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
    try:
        p = _PARAMS.validate_python(raw)
    except ValidationError as e:  # pydantic's order: the sections' as params.yaml lists them
        raise ParamsError(_message(e.errors()[0], raw)) from None
    n, t = FACTS[p.dataset].classes, p.distill
    for key, classes in (("omit_classes", t.omit_classes), ("keep_classes", t.keep_classes)):
        if any(c >= n for c in classes):
            raise ParamsError(f"distill.{key} must hold class indices 0..{n - 1} (got {list(classes)})")
    if t.loss == "dkd" and t.mixup > 0:
        raise ParamsError("distill.loss dkd splits each image's loss by its true class, which mixup "
                          f"blends (distill.mixup is {t.mixup:g}): set distill.mixup 0 or another loss")
    if not set(t.keep_classes or range(n)) - set(t.omit_classes):
        raise ParamsError("distill.omit_classes and distill.keep_classes leave no class to train on")
    side = FACTS[p.dataset].side  # a CNN may not pool its input below one pixel
    for role, arch in (("teacher", p.teacher.arch), ("student", p.student.arch)):
        kind, sizes = parse_arch(resolve_arch(arch, p.dataset, role))
        if kind == "cnn" and len(sizes) > side.bit_length() - 1:
            raise ParamsError(f"{role}.arch {arch} has {len(sizes)} pooling blocks, but {p.dataset} "
                              f"{side}x{side} images allow at most {side.bit_length() - 1} "
                              "(each block halves the side)")
    return p


def loss_settings(p: Params) -> dict[str, Any]:
    """The distillation loss and the knobs that shape it: {"loss": "dkd", "dkd_ce": 1.0, ...};
    kd's are the top-level T and alpha: {"loss": "kd", "T": 2.0, "alpha": 0.9}."""
    d = p.distill
    own = {"T": p.T, "alpha": p.alpha} if d.loss == "kd" else \
        {f.name: getattr(d, f.name) for f in fields(d) if f.name.startswith(f"{d.loss}_")}
    return {"loss": d.loss, **own}


def other_losses_keys(d: Distill) -> set[str]:
    """The knobs of the losses not in use (`dist_beta` under dkd): left out of the run's params."""
    return {f.name for f in fields(d) if any(f.name.startswith(f"{name}_") for name in LOSSES
                                             if name != d.loss)}


def describe_loss(p: Params) -> str:
    """`kd (T 2, alpha 0.9)`; `dkd (ce 1, alpha 1, beta 8, T 4, warmup 0.0833)`."""
    own = [f"{k.removeprefix(p.distill.loss + '_')} {v:g}" for k, v in loss_settings(p).items()
           if k != "loss"]
    return f"{p.distill.loss} ({', '.join(own)})"


# `dvc exp run -n NAME` (DVC_EXP_NAME in the stages) stores the experiment as the git ref
# refs/exps/<2 hex>/<38 hex>/NAME. DVC refuses a name that git-check-ref-format refuses, or with a
# `/`, before any stage runs; but the ref is a file named NAME, first written as NAME.lock, and a
# file name holds at most 255 bytes, so a longer name fails only once every stage has run.
EXP_NAME_BYTES = 255 - len(".lock")
_REF_FORBIDS = " ~^:?*[\\/"  # and control characters; `/` is DVC's own rule


def experiment_name_error(name: str) -> str | None:
    """Why DVC cannot store an experiment of this name, as one line that does not repeat the name
    ("it is 300 bytes long; ..."); None when it can."""
    size = len(os.fsencode(name))  # its ref's file name, in bytes
    bad = next((c for c in name if c in _REF_FORBIDS or ord(c) < 0x20 or c == "\x7f"), None)
    rules = [
        (not name, "it is empty"),
        (size > EXP_NAME_BYTES, f"it is {size} bytes long; DVC stores it as a git ref file, whose name "
                                f"may hold {EXP_NAME_BYTES} bytes (255 less '.lock')"),
        (bad is not None, f"it holds {bad!r}; a git ref may hold no space, control character or any of "
                          "~ ^ : ? * [ \\ (nor / for DVC)"),
        *[(part in name, f"it holds {part!r}, which a git ref may not") for part in ("..", "@{")],
        (name.startswith("."), "it starts with '.', which a git ref may not"),
        (name.endswith("."), "it ends with '.', which a git ref may not"),
        (name.endswith(".lock"), "it ends with '.lock', which a git ref may not"),
    ]
    return next((why for broken, why in rules if broken), None)


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
