"""What every benchmark shares: the table row, timing, child processes and the machine line.

Timing rule: warm up first, then run the contenders of one comparison in turns (A B A B ...), and
compare them round by round (the median of the per-round ratios), so a neighbour's job that starts
half-way slows both sides alike and the ratio stays fair on a shared machine. Absolute numbers
still move with the load: the machine line prints the load average for that reason.
"""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from kd.report.tables import markdown_table

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
GIB = 1024 ** 3


@dataclass
class Row:
    """One line of the table: what the pipeline does, what it is compared with, and the target."""

    name: str
    pipeline: str
    reference: str = "—"
    ratio: str = "—"
    target: str = "—"
    met: bool | None = None  # None: a measurement with no target, reported only


def table(rows: list[Row]) -> str:
    mark = {True: "yes", False: "**no**", None: "—"}
    return markdown_table(["measurement", "pipeline", "usual / reference", "ratio", "target", "met?"],
                          [[r.name, r.pipeline, r.reference, r.ratio, r.target, mark[r.met]]
                           for r in rows])


def ratio_row(name: str, pipe: list[float], ref: list[float], unit: str,
              target: float | None = None, at_least: bool = True) -> Row:
    """Medians of both sides; the ratio is the median of the per-round ratios, with their range."""
    ratios = per_round(pipe, ref)
    r = statistics.median(ratios)
    spread = f" ({min(ratios):.2f}–{max(ratios):.2f})" if len(ratios) > 1 else ""
    met = None if target is None else (r >= target if at_least else r <= target)
    target_txt = "—" if target is None else f"{'>=' if at_least else '<='} {target:g}"
    return Row(name, _num(statistics.median(pipe), unit), _num(statistics.median(ref), unit),
               f"{r:.2f}{spread}", target_txt, met)


def _num(v: float, unit: str) -> str:
    return f"{v:,.0f} {unit}" if v >= 100 else f"{v:.3g} {unit}"


def progress(msg: str) -> None:
    """Progress goes to stderr so that stdout holds only the machine lines and the table."""
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def _cpuinfo() -> dict[str, str]:
    """/proc/cpuinfo's keys (one entry per key: the last CPU's); empty where there is none."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return {}
    return {k.strip(): v.strip() for k, v in (line.split(":", 1) for line in lines if ":" in line)}


def vector_isa() -> str:
    """The widest x86 vector instruction set the CPU has: avx512f, avx2, avx or 'no AVX'."""
    flags = _cpuinfo().get("flags", "").split()
    return next((f for f in ("avx512f", "avx2", "avx") if f in flags), "no AVX")


def cpu_description() -> str:
    """Model name, family/model (a hypervisor may shorten the name) and the widest vector ISA."""
    info = _cpuinfo()
    if not info:
        return platform.processor() or "unknown CPU"
    return (f"{info.get('model name', 'unknown CPU')} (family {info.get('cpu family', '?')}, "
            f"model {info.get('model', '?')}, {vector_isa()})")


def machine_lines(dev: torch.device) -> list[str]:
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gpu = f", GPU {torch.cuda.get_device_name(dev)}" if dev.type == "cuda" else ""
    load = ", load average " + " ".join(f"{v:.2f}" for v in os.getloadavg())
    return [f"- machine: {cpu_description()}, {os.cpu_count()} cores ({usable} usable){load}{gpu}",
            f"- torch {torch.__version__}, {torch.get_num_threads()} intra-op threads, "
            f"{torch.get_num_interop_threads()} inter-op threads, device {dev}, "
            f"Python {platform.python_version()}"]


def sync(dev: torch.device) -> None:
    """CUDA runs asynchronously: wait for it before reading the clock."""
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def interleaved(fns: dict[str, Callable[[int], float]], batches: int, warmup: int,
                repeats: int) -> dict[str, list[float]]:
    """Each fn(batches) once per round, the fns taking turns, after fn(warmup) each; returns
    every round's results. Compare contenders round by round (see `per_round`): results taken
    seconds apart share the machine's load, results taken minutes apart need not."""
    for name, fn in fns.items():
        progress(f"warm-up: {name}")
        fn(warmup)
    results: dict[str, list[float]] = {name: [] for name in fns}
    for r in range(repeats):
        for name, fn in fns.items():
            results[name].append(fn(batches))
        progress(f"round {r + 1}/{repeats}: " + ", ".join(f"{k} {v[-1]:.4g}" for k, v in
                                                            results.items()))
    return results


def per_round(a: list[float], b: list[float]) -> list[float]:
    """a / b for each round."""
    return [x / y for x, y in zip(a, b, strict=True)]


@contextlib.contextmanager
def env_vars(**values: str) -> Iterator[None]:
    """Set environment variables for a block, then put back what was there."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def child_env(**extra: str) -> dict[str, str]:
    """Environment for stages and DVC: this interpreter first on PATH, the project importable,
    no telemetry, and no tracking store inherited from the caller."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(PYTHON).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{env.get('PYTHONPATH', '')}".rstrip(os.pathsep)
    for key in ("MLFLOW_TRACKING_URI", "KD_TRACKING", "DVC_ROOT"):
        env.pop(key, None)
    env.update(DVC_NO_ANALYTICS="1", MLFLOW_DISABLE_TELEMETRY="true", GIT_AUTHOR_NAME="bench",
               GIT_AUTHOR_EMAIL="bench@example.com", GIT_COMMITTER_NAME="bench",
               GIT_COMMITTER_EMAIL="bench@example.com", **extra)
    return env


def start_contender(module: str, mode: str, env: dict[str, str]
                    ) -> tuple[subprocess.Popen, list[str]]:
    """`python -m <module> --child <mode>` with `env` (tracking off, the project importable),
    serving measurements line by line on stdin/stdout once it has printed `ready ...`; returns
    the process and the words after `ready`."""
    env = {**env, "KD_TRACKING": "off",
           "PYTHONPATH": f"{ROOT}{os.pathsep}{env.get('PYTHONPATH', '')}".rstrip(os.pathsep)}
    proc = subprocess.Popen([PYTHON, "-m", module, "--child", mode], cwd=ROOT, env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    ready = proc.stdout.readline().split()
    if not ready or ready[0] != "ready":
        raise RuntimeError(f"the {mode!r} contender of {module} did not start")
    return proc, ready[1:]


def default_params(folder: Path) -> Path:
    """conf/ composed by DVC's own function, as `dvc exp run` with no -S writes params.yaml, into
    `folder`; its path."""
    from dvc.utils.hydra import compose_and_dump

    out = folder / "params.yaml"
    compose_and_dump(out, str(ROOT / "conf"), None, "config", str(ROOT), [])
    return out


def composed_params() -> dict:
    """conf/ composed as `dvc exp run` with no -S composes it: the default run's params, whatever
    experiment the working copy's params.yaml holds."""
    with tempfile.TemporaryDirectory() as tmp:
        return yaml.safe_load(default_params(Path(tmp)).read_text())


@dataclass
class Child:
    seconds: float
    max_rss: int  # bytes: the peak resident memory of the command itself
    output: str


# Runs the command and writes "<peak RSS KiB> <seconds> <exit status>" to a file. Why a small
# go-between: Linux carries a process's peak RSS across fork and exec, so a child forked straight
# from this (large) benchmark process would report at least our own RSS; forked from this small
# wrapper it reports its own. os.wait4 gives that one child's rusage (RUSAGE_CHILDREN would be
# the maximum over every child so far).
_WRAPPER = """import os, subprocess, sys, time
t0 = time.perf_counter()
proc = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(proc.pid, 0)
seconds = time.perf_counter() - t0
code = os.waitstatus_to_exitcode(status)
open(sys.argv[1], "w").write(f"{usage.ru_maxrss} {seconds} {code}")
"""


def run_child(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float = 3600) -> Child:
    """Run a command: its wall time, its own peak RSS, its output (stdout and stderr).

    Output goes to a file: a full pipe would block the child."""
    with tempfile.TemporaryDirectory() as tmp:
        stats, log = Path(tmp) / "stats", Path(tmp) / "log"
        with open(log, "w") as out:
            subprocess.run([PYTHON, "-c", _WRAPPER, str(stats), *cmd], cwd=cwd, env=env,
                           stdout=out, stderr=subprocess.STDOUT, timeout=timeout, check=False)
        text = log.read_text()
        if not stats.is_file():
            raise RuntimeError(f"{' '.join(cmd)} (in {cwd}) did not run:\n{text[-3000:]}")
        rss_kib, seconds, code = stats.read_text().split()
    if int(code) != 0:
        raise RuntimeError(f"{' '.join(cmd)} (in {cwd}) exited {code}:\n{text[-3000:]}")
    return Child(float(seconds), int(rss_kib) * 1024, text)  # Linux: ru_maxrss is in KiB
