"""What reproducible numerics cost: training steps under `numerics: portable` against `native`.

Each contender is its own process, because the kernel libraries read their settings when torch
first computes (kd/process/numerics.py):
  - native: no pins; oneDNN's and ATen's own threaded convolution and BatchNorm kernels, AVX-512
    where the CPU has it; bits that depend on the CPU and the thread count;
  - portable: the default; MKL, oneDNN and ATen pinned to AVX2 (MKL in strict mode), and the
    fixed-order convolution gradients and BatchNorm sums of kd/train/fixed_order.py;
  - portable, plain layers: the pins alone, with nn.Conv2d's and nn.BatchNorm2d's own kernels,
    to tell the pins' cost from the fixed-order layers' (not reproducible across thread counts,
    measured only to split the cost).
Every contender runs channels-last, as the stages do.
Each runs kd.train.loop.fit itself on the params' teacher and student architectures with their
batch size and optimiser knobs, on random 28x28 images (speed does not depend on the
pixels). The params are the file given (--params) or else conf/ composed as `dvc exp run`
composes it: the default run's, not whatever experiment the working copy's params.yaml holds.
The contenders take turns, round by round, and each ratio is the median of the per-round ratios
(benchmarks/common.py), so a neighbour's load slows every side alike.

Run: python -m benchmarks.numerics [--batches 20] [--repeats 7] [--params FILE]; progress on
stderr, the machine and the table on stdout.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.common import (
    Row,
    default_params,
    machine_lines,
    progress,
    ratio_row,
    start_contender,
    table,
    vector_isa,
)
from kd.process.numerics import CUDA_ENV, PORTABLE_ENV

CONTENDERS = ("native", "portable", "portable-plain-layers")
ROLES = ("teacher", "student")
# The portable step may take at most 10% longer than the native one where the CPU's own kernels
# are AVX2's anyway; on an AVX-512 CPU the pin to AVX2 itself costs something.
TARGETS = {"avx512f": 1.35, "avx2": 1.10}


def child(mode: str) -> None:
    """Read the params file's path from stdin's first line, then serve `<role> <batches>` lines:
    ms per training batch, one line each."""
    import torch

    from benchmarks import loops
    from kd.config.params import load
    from kd.process import numerics
    from kd.train import fixed_order

    numerics.apply("native" if mode == "native" else "portable")
    if mode == "portable-plain-layers":  # oneDNN's and ATen's own threaded sums
        fixed_order.Conv2d.forward = torch.nn.Conv2d.forward
        fixed_order.BatchNorm2d.forward = torch.nn.BatchNorm2d.forward
    print("ready", torch.get_num_threads(), torch.backends.cpu.get_cpu_capability(), flush=True)
    setup = loops.random_setup(load(sys.stdin.readline().rstrip("\n")))
    rates = {name: loops.fit_rate(setup, loops.role(setup, name, getattr(setup.params, name).arch))
             for name in ROLES}
    for line in sys.stdin:
        name, batches = line.split()
        rate = rates[name](int(batches))  # samples/s of the training steps alone
        print(1000 * getattr(setup.params, name).batch_size / rate, flush=True)


def start(mode: str, params: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in {**PORTABLE_ENV, **CUDA_ENV}}
    if mode != "native":
        env.update({**PORTABLE_ENV, **CUDA_ENV})
    proc, (threads, dispatch) = start_contender("benchmarks.numerics", mode, env)
    proc.stdin.write(f"{params.resolve()}\n")  # every contender trains with the same knobs
    proc.stdin.flush()
    progress(f"{mode}: {threads} threads, ATen dispatch {dispatch}")
    return proc


def measure(procs: dict[str, subprocess.Popen], role: str, batches: int) -> dict[str, float]:
    out = {}
    for mode, proc in procs.items():
        proc.stdin.write(f"{role} {batches}\n")
        proc.stdin.flush()
        out[mode] = float(proc.stdout.readline())
    return out


def rounds(procs: dict[str, subprocess.Popen], batches: int, repeats: int
           ) -> dict[str, dict[str, list[float]]]:
    """role -> contender -> ms per batch, one per round, the contenders taking turns."""
    times = {role: {mode: [] for mode in CONTENDERS} for role in ROLES}
    for role in ROLES:  # warm-up: the first batches pay for allocation and kernel choice
        measure(procs, role, 3)
    for r in range(repeats):
        for role in ROLES:
            for mode, ms in measure(procs, role, batches).items():
                times[role][mode].append(ms)
        progress(f"round {r + 1}/{repeats}: " + "; ".join(
            f"{role} " + ", ".join(f"{m} {v[-1]:.1f} ms" for m, v in t.items())
            for role, t in times.items()))
    return times


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.partition("\n")[0], epilog=__doc__.partition(
        "\n")[2], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, default=20, help="timed batches per contender per "
                    "round (default: 20, at most 64)")
    ap.add_argument("--repeats", type=int, default=7, help="timed rounds (default: 7)")
    ap.add_argument("--params", type=Path, help="params file whose teacher and student knobs "
                    "the steps use (default: conf/ composed as `dvc exp run` composes it)")
    ap.add_argument("--child", choices=CONTENDERS, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return child(args.child)

    import torch

    from kd.config.params import ParamsError, load

    with tempfile.TemporaryDirectory() as tmp:  # the default params file, read by each contender
        params = args.params or default_params(Path(tmp))
        try:
            p = load(params)  # a bad file stops here, in one line, not in three contenders
        except ParamsError as e:
            raise SystemExit(f"error: {e}") from None
        procs = {mode: start(mode, params) for mode in CONTENDERS}
        try:
            times = rounds(procs, args.batches, args.repeats)
        finally:
            for proc in procs.values():
                proc.stdin.close()
                proc.wait()
    rows: list[Row] = []
    for role in ROLES:
        t, arch = times[role], getattr(p, role).arch
        rows.append(ratio_row(f"{role} ({arch}) step: portable vs native", t["portable"],
                              t["native"], "ms", TARGETS.get(vector_isa()), at_least=False))
        if role == "teacher":
            rows.append(ratio_row(f"{role} step: portable vs its pins alone (the fixed-order "
                                  "layers' share)", t["portable"],
                                  t["portable-plain-layers"], "ms"))
            rows.append(ratio_row(f"{role} step: pins alone vs native (the AVX2 dispatch pins' "
                                  "share)", t["portable-plain-layers"], t["native"], "ms"))
    print("\n".join(machine_lines(torch.device("cpu"))))
    print()
    print(table(rows))


if __name__ == "__main__":
    main()
