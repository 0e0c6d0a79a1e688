"""What every benchmark shares: the table row, timing, child processes and the machine line.

Timing rule: warm up first, then run the contenders of one comparison in turns (A B A B ...) and
take each one's median, so a neighbour's job that starts half-way slows both sides alike and the
ratio stays fair on a shared machine.
"""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

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
    head = "| measurement | pipeline | usual / reference | ratio | target | met? |\n"
    head += "|---|---|---|---|---|---|\n"
    mark = {True: "yes", False: "**no**", None: "—"}
    return head + "".join(f"| {r.name} | {r.pipeline} | {r.reference} | {r.ratio} | {r.target} | "
                          f"{mark[r.met]} |\n" for r in rows)


def progress(msg: str) -> None:
    """Progress goes to stderr so that stdout holds only the machine lines and the table."""
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def machine_lines(dev: torch.device) -> list[str]:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gpu = f", GPU {torch.cuda.get_device_name(dev)}" if dev.type == "cuda" else ""
    load = ", load average " + " ".join(f"{v:.2f}" for v in os.getloadavg())
    return [f"- machine: {cpu}, {os.cpu_count()} cores ({usable} usable){load}{gpu}",
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


@dataclass
class Child:
    seconds: float
    max_rss: int  # bytes: the peak resident memory of that one child (its own rusage)
    output: str


def run_child(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float = 3600) -> Child:
    """Run a command; os.wait4 gives that child's own peak RSS (RUSAGE_CHILDREN would be the
    maximum over every child so far). Output goes to a file: a full pipe would block the child."""
    with tempfile.TemporaryFile("w+") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
        # A blocking wait4 keeps the timing exact; the timer only guards against a hung child.
        guard = threading.Timer(timeout, proc.kill)
        guard.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            guard.cancel()
        seconds = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} (in {cwd}) exited {proc.returncode}:\n{text[-3000:]}")
    return Child(seconds, usage.ru_maxrss * 1024, text)  # Linux reports ru_maxrss in KiB
