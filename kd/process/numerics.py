"""What may change the bits of a result besides params, code and data: set here, on purpose.

The top-level param `numerics` names the choice; DVC sees it (every computing stage lists it)
and each stage's MLflow run records it with the settings it stands for (`settings()`).

- `portable` (the default): the same bytes on any x86-64 CPU with AVX2, at any thread count,
  alone or beside queued experiments. On the CPU, three libraries round differently by the
  instruction set they dispatch to and by how they split sums between threads, so:
  - `MKL_CBWR=AVX2,STRICT`: MKL's GEMMs (every Linear layer) take their AVX2 code path on every
    CPU, and STRICT fixes their summation order whatever the thread count;
  - `ONEDNN_MAX_CPU_ISA=AVX2`, `ATEN_CPU_CAPABILITY=avx2`: oneDNN's convolutions and ATen's own
    kernels (BatchNorm, pooling, softmax, the optimiser) stop at AVX2 too, so an AVX-512 CPU
    computes what an AVX2-only one does;
  - the sums that ATen's BatchNorm and oneDNN's convolution gradients split between threads
    (differently for each thread count) are taken in a fixed order by kd/train/fixed_order.py's
    layers instead, still on every thread.
  On CUDA: `torch.use_deterministic_algorithms` and a fixed cuBLAS workspace, so a card model
  repeats its bytes run to run (a GPU's bytes are not the CPU's).
- `native`: the fastest kernels this machine has (AVX-512 where present, the libraries' own
  threaded sums, cuDNN's autotuner): results then depend on the CPU, the thread count and the
  card, and two machines' runs need not agree in the last digits.

MKL, oneDNN and ATen read their variables when first used, not when torch is imported, but
nothing may compute before them: `prepare()` runs first in every stage process (stages/__init__.py
calls it before any stage module imports torch), `apply()` checks and completes the choice once
params.yaml is validated. This module imports torch only inside functions, for that reason.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

MODES = ("portable", "native")
PORTABLE_ENV = {"MKL_CBWR": "AVX2,STRICT", "ONEDNN_MAX_CPU_ISA": "AVX2",
                "ATEN_CPU_CAPABILITY": "avx2"}
# cuBLAS's deterministic mode needs a fixed workspace, set before its first handle.
CUDA_ENV = {"CUBLAS_WORKSPACE_CONFIG": ":4096:8"}

_mode = "portable"  # what apply() set; library code reads it through portable()


class NumericsError(Exception):
    """The chosen numerics cannot hold in this process or on this machine."""


def prepare(argv: list[str] | None = None) -> str:
    """Before torch computes anything: read `numerics` from the params file this stage was given
    (`--params`, else params.yaml) and set the libraries' variables for it. A file that is
    missing or unreadable counts as portable; the stage's own validation reports it."""
    mode = _mode_in(_params_path(sys.argv[1:] if argv is None else argv))
    if mode == "portable":
        set_portable_env()
    return mode


def set_portable_env() -> None:
    os.environ.update({**PORTABLE_ENV, **CUDA_ENV})


def _params_path(argv: list[str]) -> Path:
    for i, arg in enumerate(argv):
        if arg == "--params" and i + 1 < len(argv):
            return Path(argv[i + 1])
        if arg.startswith("--params="):
            return Path(arg.partition("=")[2])
    return Path("params.yaml")


def _mode_in(path: Path) -> str:
    from kd.config import params_file  # read as validation reads it: no traceback from here

    try:
        raw = params_file.read(path)
    except (OSError, params_file.ParamsFileError):
        return "portable"
    mode = raw.get("numerics") if isinstance(raw, dict) else None
    return mode if mode in MODES else "portable"


def apply(mode: str) -> None:
    """Make `mode` hold for the rest of this process, or raise NumericsError saying why not."""
    global _mode
    import torch

    if mode == "portable":
        wrong = {k: os.environ.get(k) for k, v in PORTABLE_ENV.items() if os.environ.get(k) != v}
        if wrong:
            raise NumericsError(
                f"numerics portable needs {_pairs(PORTABLE_ENV)} set before torch computes, but "
                f"this process has {_pairs(wrong)}; run the stage as `python -m stages.<name>`")
        capability = torch.backends.cpu.get_cpu_capability()
        if capability != "AVX2":
            raise NumericsError(
                f"numerics portable needs an x86-64 CPU with AVX2, and torch reports {capability} "
                "here (or computed before the pin); set numerics: native (results then depend on "
                "this machine)")
        if torch.cuda.is_available():
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.benchmark = False
    else:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.benchmark = True
    _mode = mode


def _pairs(env: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in env.items())


def portable() -> bool:
    """Whether this process computes in the portable mode (the default until apply() says)."""
    return _mode == "portable"


def settings() -> dict[str, str]:
    """What this process computes under, for its MLflow run: the mode, the dispatch each library
    took, and the machine that ran it."""
    import torch

    return {"numerics": _mode, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            **{k.lower(): os.environ.get(k, "unset") for k in (*PORTABLE_ENV, *CUDA_ENV)},
            "torch_version": torch.__version__, "cpu": cpu_name()}


def cpu_name() -> str:
    """The CPU's model name (Linux), else the platform's word for it."""
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"
