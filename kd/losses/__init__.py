"""The distillation losses: one module each in this folder, named as `distill.loss` names it.

A loss module holds the whole training loss as its authors train it, cross-entropy with the
labels included, and registers it where it is written: `LOSS = Loss(...)` with its paper, its
knobs (their kinds: kd.config.params' Values) and its authors' values of them. Nothing else lists
the losses: params validation, the distill stage, the docs table and the tests ask this registry.

- kd.py: Hinton, Vinyals & Dean (2015); its knobs are params.yaml's top-level `T` and `alpha`.
- dkd.py, ls.py, dist.py: three successors that read nothing but the teacher's logits, so they fit
  the cached soft targets and the online teacher alike; their knobs are `distill.<loss>_<knob>`.
- common.py: the pieces several losses share (the softened KL).

Why one file each: dvc.yaml's distill stage depends on `kd/losses/${distill.loss}.py`, so adding
or editing a loss reruns distillation with that loss alone (docs/architecture.md, "Adding a loss").
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from pydantic import ConfigDict, TypeAdapter, ValidationError

from kd.config.params import Distill, Params, ParamsError, allowed
from kd.train.cross_entropy import hard_loss

FOLDER = Path(__file__).parent
NOT_LOSSES = {"__init__", "common"}  # the registry and the shared pieces
FINITE = ConfigDict(allow_inf_nan=False)  # as params.yaml's schema: no inf, no nan

Hard = Callable[[], torch.Tensor]  # the cross-entropy with the labels, computed when asked for
# (student logits, teacher logits, labels, cross-entropy, knobs by name, epoch from 1, epochs)
LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, Hard, SimpleNamespace, int, int],
                  torch.Tensor]


@dataclass(frozen=True)
class Loss:
    name: str  # its module's name, which is `distill.loss`'s value
    label: str  # short, for result tables: "DKD (Zhao et al. 2022)"
    paper: str  # authors, year, title, venue: what the docs table shows
    source: str  # the authors' code it follows, for the knobs' values and how terms combine
    fn: LossFn
    knobs: dict[str, Any]  # knob -> its kind (a kd.config.params Value), in the order they print
    recipe: dict[str, float]  # the authors' values of the knobs
    top_level: bool = False  # kd: its knobs are params.yaml's top-level keys (`-S T=4`)
    splits_by_label: bool = False  # needs each image's one true class, which mixup blends
    _kinds: dict[str, TypeAdapter] = field(default_factory=dict, repr=False, compare=False)

    def key(self, knob: str) -> str:
        """The knob's key in params.yaml: `T`, `distill.dkd_beta`."""
        return knob if self.top_level else f"distill.{self.name}_{knob}"

    def values(self, p: Params) -> dict[str, float]:
        """{knob: value} in `p`: {"T": 2.0, "alpha": 0.9}, {"ce": 1.0, "beta": 8.0, ...}."""
        return {k: getattr(p, k) if self.top_level else p.distill.knobs[f"{self.name}_{k}"]
                for k in self.knobs}

    def check(self, knob: str, value: Any) -> Any:
        """The value as its kind holds it (`9` as 9.0); refuse one the kind does not allow, in one
        line naming its key."""
        kind = self._kinds.setdefault(knob, TypeAdapter(self.knobs[knob], config=FINITE))
        try:
            return kind.validate_python(value)
        except ValidationError:
            shown = float(value) if type(value) is int else value  # the number as it is used
            raise ParamsError(f"{self.key(knob)} must be {allowed(self.knobs[knob])} "
                              f"(got {shown!r})") from None


def names() -> tuple[str, ...]:
    """Every loss in this folder, sorted (kd first: the paper this project is about)."""
    found = {p.stem for p in FOLDER.glob("*.py")} - NOT_LOSSES
    return tuple(sorted(found, key=lambda n: (n != "kd", n)))


def get(name: str) -> Loss:
    """The registered loss `name`; ParamsError, naming distill.loss and the losses there are."""
    if name not in names():
        raise ParamsError(f"distill.loss must be one of {', '.join(names())} (got {name!r}); a new "
                          "loss is a module in kd/losses/ (docs/architecture.md)")
    loss = importlib.import_module(f"kd.losses.{name}").LOSS
    if loss.name != name:
        raise ImportError(f"kd/losses/{name}.py registers its loss as {loss.name!r}")
    return loss


def validate(p: Params) -> Loss:
    """The knobs' checks params.yaml's schema leaves to the losses: `distill.loss` is one of them,
    every `distill.<loss>_<knob>` key is a knob of that loss and holds a value its kind allows,
    and a loss that splits by label gets no mixup. Returns the loss in use."""
    loss, every = get(p.distill.loss), names()  # the folder listed once, not once a knob
    for key, value in p.distill.knobs.items():
        owner = next((n for n in every if key.startswith(f"{n}_")), None)
        other = get(owner) if owner is not None else None
        knob = key.removeprefix(f"{owner}_")
        if other is None or other.top_level or knob not in other.knobs:
            own = ", ".join(f.name for f in fields(Distill) if f.name != "knobs")
            raise ParamsError(f"distill.{key} is not a known key; allowed: {own}, and each loss's "
                              f"knobs ({'; '.join(_knob_list(get(n)) for n in every)})")
        p.distill.knobs[key] = other.check(knob, value)  # as params' own values: 9 is 9.0
    for knob in loss.knobs:
        if not loss.top_level and f"{loss.name}_{knob}" not in p.distill.knobs:
            raise ParamsError(f"{loss.key(knob)} is missing; loss {loss.name} needs "
                              f"{', '.join(loss.key(k) for k in loss.knobs)}")
    if loss.splits_by_label and p.distill.mixup > 0:
        raise ParamsError(f"distill.loss {loss.name} splits each image's loss by its true class, "
                          f"which mixup blends (distill.mixup is {p.distill.mixup:g}): set "
                          "distill.mixup 0 or another loss")
    return loss


def _knob_list(loss: Loss) -> str:
    return f"{loss.name}: {', '.join(loss.key(k) for k in loss.knobs)}"


def settings(p: Params) -> dict[str, Any]:
    """The loss in use and the knobs that shape it, by their params keys' last part:
    {"loss": "kd", "T": 2.0, "alpha": 0.9}; {"loss": "dkd", "dkd_ce": 1.0, ...}."""
    loss = get(p.distill.loss)
    return {"loss": loss.name, **{loss.key(k).removeprefix("distill."): v
                                  for k, v in loss.values(p).items()}}


def describe(p: Params) -> str:
    """`kd (T 2, alpha 0.9)`; `dkd (ce 1, alpha 1, beta 8, T 4, warmup 0.0833)`."""
    loss = get(p.distill.loss)
    return f"{loss.name} ({', '.join(f'{k} {v:g}' for k, v in loss.values(p).items())})"


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                      labels: torch.Tensor, loss: Loss, knobs: Mapping[str, float], *,
                      epoch: int = 1, epochs: int = 1, partner_labels: torch.Tensor | None = None,
                      lam: torch.Tensor | None = None) -> torch.Tensor:
    """`loss`'s whole training loss at these knob values. The cross-entropy is mixup's mix of the
    two labels' where the batch is mixed."""
    def ce() -> torch.Tensor:
        return hard_loss(student_logits, labels, partner_labels, lam)
    return loss.fn(student_logits, teacher_logits, labels, ce, SimpleNamespace(**knobs), epoch,
                   epochs)
