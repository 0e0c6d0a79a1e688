"""Whether a training stage's params can fit in this machine's memory, decided before any stage
runs (the check stage calls `refuse_what_cannot_fit`).

A valid params.yaml can still ask for more memory than exists: `teacher.shift: 1000000` pads
every batch to (2e6 + side)^2 pixels per image (512 TB for a batch of 128), and
`student.arch: mlp:100000000-100000000` a first layer of 25 GB. Found by the stage, that is a
traceback from torch's allocator after DVC has deleted the stage's outputs. Here each training
section (teacher, student, distill) is costed from its params alone, without torch:
- the network: weights and their gradients, plus SGD's momentum buffer, float32 (and, when
  distillation augments, the teacher it then runs online);
- one training batch's activations kept for the backward pass (each layer's output, float32);
- the shifted batch: kd/data/splits.py `random_shift` pads the uint8 batch by `shift` on all sides.
Each term is a lower bound (the batch is capped by the training images the dataset can have,
layers' temporaries are left out), so what is refused can never fit; what passes may still not
(the stage then fails in one line and puts its outputs back). The bound compared with is this
machine's memory as a process here can use it: RAM, a cgroup's memory.max, `ulimit -v` / `-d`.
A GPU's own memory is not checked: that would mean initialising CUDA in the check.
"""

from __future__ import annotations

import math
import os
import resource
import sys
from pathlib import Path

from kd import datasets
from kd.config.archs import parse_arch
from kd.config.params import Params
from kd.datasets import resolve_arch

FLOAT = 4
RESNET_WIDTHS = (32, 64, 128, 256)  # kd/train/nets.py ResNet


def layers(arch: str, channels: int, side: int, classes: int) -> tuple[int, int]:
    """(parameters, activation floats per image) of a resolved architecture, as kd/train/nets.py
    builds it: every weight and bias, every layer output the backward pass keeps."""
    kind, sizes = parse_arch(arch)
    if kind == "mlp":
        widths = (channels * side * side, *sizes, classes)
        params = sum((a + 1) * b for a, b in zip(widths, widths[1:], strict=False))
        return params, sum(widths)
    if kind == "cnn":
        params, acts, c, s = 0, 0, channels, side
        for out in sizes:  # conv3x3 (no bias) + BatchNorm: conv and BN outputs, then the pooled
            params += 9 * c * out + 2 * out  # values (the ReLU works on them in place)
            acts += 2 * out * s * s + out * (s // 2) ** 2
            c, s = out, s // 2
        flat = c * s * s
        return params + (flat + 1) * 256 + 257 * classes, acts + flat + 256 + classes
    n = (sizes[0] - 2) // 6  # resnet: a stem, then n basic blocks per width
    params, acts, c, s = 9 * channels * 32 + 64, 3 * 32 * side * side, 32, side
    for i, out in enumerate(RESNET_WIDTHS[1:]):
        for j in range(n):
            if i > 0 and j == 0:
                s = (s + 1) // 2
            params += 9 * c * out + 9 * out * out + 4 * out
            params += (c * out + 2 * out) if c != out or (i > 0 and j == 0) else 0
            acts += 6 * out * s * s  # two convs, two BNs, two ReLUs
            c = out
    return params + (c + 1) * classes, acts + c + classes


def needs(p: Params, section: str) -> tuple[int, str]:
    """A lower bound on the bytes training `section` needs, and what it is made of."""
    train = getattr(p, section)
    net = p.student if section == "distill" else train
    role = "student" if section == "distill" else section
    ds = datasets.get(p.dataset)
    channels, side, classes = ds.channels, ds.side, ds.classes
    # At most this many images reach one batch (loop.fit takes min(batch_size, training images)).
    images = max(1, math.floor(ds.train_images * (1 - p.data.val_fraction)) - classes)
    if section == "distill":  # the transfer set: a fraction of the images, maybe fewer classes
        kept = len(set(p.distill.keep_classes or range(classes)) - set(p.distill.omit_classes))
        images = max(1, math.floor(images * p.distill.fraction * kept / classes / 2))
    batch = min(train.batch_size, images)
    params, acts = layers(resolve_arch(net.arch, p.dataset, role), channels, side, classes)
    weights = params * FLOAT * (3 if train.momentum > 0 else 2)
    if section == "distill" and (train.shift > 0 or train.flip or train.mixup > 0):
        teacher = resolve_arch(p.teacher.arch, p.dataset, "teacher")
        weights += layers(teacher, channels, side, classes)[0] * FLOAT
    activations = batch * acts * FLOAT
    padded = batch * channels * (side + 2 * train.shift) ** 2 if train.shift else 0
    parts = [("the network", weights), ("a batch's activations", activations),
             (f"the batch padded by shift {train.shift}", padded)]
    biggest = max(parts, key=lambda part: part[1])
    return weights + activations + padded, f"{biggest[0]}: {size(biggest[1])}"


def available() -> tuple[int, str]:
    """The memory a process here can have, and what sets that bound."""
    bounds = [(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), "RAM")]
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 1 << 60:  # "max" or v1's huge number: no limit
            bounds.append((int(text), "the cgroup's memory limit"))
    for limit, name in ((resource.RLIMIT_AS, "ulimit -v"), (resource.RLIMIT_DATA, "ulimit -d")):
        soft = resource.getrlimit(limit)[0]
        if soft != resource.RLIM_INFINITY:
            bounds.append((soft, name))
    return min(bounds)


def size(n: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB", "PB", "EB"):
        if n < 1000 or unit == "EB":
            return f"{n:,.0f} {unit}" if unit == "bytes" else f"{n:,.1f} {unit}"
        n /= 1000
    raise AssertionError  # unreachable: the loop returns at EB


def problem(p: Params) -> str | None:
    """The first training section whose params cannot fit in this machine's memory, as one
    line's message; None when every one may."""
    have, bound = available()
    for section in ("teacher", "student", "distill"):
        need, biggest = needs(p, section)
        if need > have:
            arch = "student.arch" if section == "distill" else f"{section}.arch"
            return (f"{section} needs at least {size(need)} of memory ({biggest}; batch_size "
                    f"{getattr(p, section).batch_size}), and this machine has {size(have)} "
                    f"({bound}); lower {section}.batch_size, {section}.shift or {arch}'s widths")
    return None


def refuse_what_cannot_fit(p: Params, path: str) -> None:
    """The check stage's call: one line and exit status 2 (a params problem, as
    kd/process/cli.py `params_or_exit` reports one) when `problem` finds one."""
    found = problem(p)
    if found:
        print(f"error: {path}: {found}", file=sys.stderr)
        raise SystemExit(2)
