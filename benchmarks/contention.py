"""Does a stage keep its fair share of a busy machine? The default teacher's and student's
training rates alone and beside k busy neighbours, under the wait policy every stage sets and
under OpenMP's default.

On n cores beside k busy processes (pure-Python spin loops, as a neighbour's job would be), a
process's fair share is its rate alone x n / (n + k); the target is at least 0.8 of it
(kd/process/wait_policy.py says why threads that spin at every barrier lose that share). Contenders, each
its own process because OpenMP reads its wait policy when torch loads it:
  - stage: as every stage runs, `OMP_WAIT_POLICY=PASSIVE` (kd/process/wait_policy.py);
  - OpenMP's default: the variable unset (waiting threads spin for a while, then sleep).
Both train with kd.train.loop.fit on Fashion-MNIST-shaped random images under portable numerics, at
the thread count a stage takes alone. Each round starts the neighbours, lets every contender
measure in turn, then stops them, so a load that comes and goes affects both alike; a share is
computed from the same round's rate alone. Any OMP_WAIT_POLICY in the caller's environment is
ignored here, so that the two are what they say.

Run: python -m benchmarks.contention [--batches 30] [--repeats 3] [--neighbours 1 2]; progress
on stderr, the machine and the table on stdout. Needs an otherwise quiet machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from kd.process import wait_policy  # imports no torch: the child sets its policy before torch loads

CONTENDERS = ("stage", "OpenMP default")
ROLES = ("teacher", "student")
TARGET = 0.8  # of the fair share


def child(mode: str) -> None:
    """Read the params file's path from stdin's first line, then serve `<role> <batches>` lines:
    that role's training samples/s, one line each."""
    if mode == "stage":
        wait_policy.prepare()  # as stages/__init__.py does, before anything imports torch
    from kd.process import numerics

    numerics.set_portable_env()
    import torch

    from benchmarks import loops
    from kd.config.params import load

    numerics.apply("portable")
    print("ready", torch.get_num_threads(), os.environ.get("OMP_WAIT_POLICY", "unset"), flush=True)
    setup = loops.random_setup(load(sys.stdin.readline().rstrip("\n")))
    rates = {role: loops.fit_rate(setup, loops.role(setup, role, getattr(setup.params, role).arch))
             for role in ROLES}
    for line in sys.stdin:
        role, batches = line.split()
        print(rates[role](int(batches)), flush=True)


def start(mode: str, params: Path) -> subprocess.Popen:
    from benchmarks.common import progress, start_contender

    env = {k: v for k, v in os.environ.items() if k != wait_policy.VARIABLE}
    proc, (threads, policy) = start_contender("benchmarks.contention", mode, env)
    proc.stdin.write(f"{params.resolve()}\n")  # both contenders train with the same knobs
    proc.stdin.flush()
    progress(f"{mode}: {threads} threads, OMP_WAIT_POLICY {policy}")
    return proc


def rate(proc: subprocess.Popen, role: str, batches: int) -> float:
    proc.stdin.write(f"{role} {batches}\n")
    proc.stdin.flush()
    return float(proc.stdout.readline())


def beside(k: int, procs: dict[str, subprocess.Popen], batches: int
           ) -> dict[tuple[str, str], float]:
    """Each contender's rate of each role while k busy neighbours run (the student, many times
    faster a batch, runs 4x the batches)."""
    spin = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(k)]
    try:
        time.sleep(0.5)  # the neighbours are running before the clock starts
        return {(role, mode): rate(proc, role, batches * (4 if role == "student" else 1))
                for role in ROLES for mode, proc in procs.items()}
    finally:
        for p in spin:
            p.kill()
            p.wait()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.partition("\n")[0], epilog=__doc__.partition(
        "\n")[2], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, default=30, help="timed batches per measurement "
                    "(default: 30, at most 64)")
    ap.add_argument("--repeats", type=int, default=3, help="rounds (default: 3)")
    ap.add_argument("--neighbours", type=int, nargs="+", default=[1, 2],
                    help="busy neighbours to measure beside (default: 1 2)")
    ap.add_argument("--params", type=Path, help="params file whose teacher and student knobs "
                    "are timed (default: conf/ composed as `dvc exp run` composes it)")
    ap.add_argument("--child", choices=CONTENDERS, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return child(args.child)

    import torch

    from benchmarks.common import Row, default_params, machine_lines, progress, table
    from kd.config.params import ParamsError, load

    cores = len(os.sched_getaffinity(0))
    # The default params file; the contenders read it once they start, so it lives as long as main.
    folder = tempfile.TemporaryDirectory()
    params = args.params or default_params(Path(folder.name))
    try:
        load(params)  # a bad file stops here, in one line, not in two contenders
    except ParamsError as e:
        raise SystemExit(f"error: {e}") from None
    procs = {mode: start(mode, params) for mode in CONTENDERS}
    loads = [0, *args.neighbours]
    try:
        beside(0, procs, 3)  # warm-up
        rates = {k: {key: [] for key in ((r, m) for r in ROLES for m in CONTENDERS)}
                 for k in loads}
        for r in range(args.repeats):
            for k in loads:
                for key, value in beside(k, procs, args.batches).items():
                    rates[k][key].append(value)
            progress(f"round {r + 1}/{args.repeats}: " + "; ".join(
                f"k={k} " + ", ".join(f"{role} {m} {v[-1]:,.0f}/s" for (role, m), v in by.items())
                for k, by in rates.items()))
    finally:
        for proc in procs.values():
            proc.stdin.close()
            proc.wait()
    rows = []
    for role in ROLES:
        alone = {m: rates[0][(role, m)] for m in CONTENDERS}
        rows.append(Row(f"{role} alone, samples/s: stage vs OpenMP's default",
                        f"{statistics.median(alone['stage']):,.0f}/s",
                        f"{statistics.median(alone['OpenMP default']):,.0f}/s",
                        f"{statistics.median(a / b for a, b in zip(*alone.values(), strict=True)):.2f}"))
        for k in args.neighbours:
            for mode in CONTENDERS:
                got = rates[k][(role, mode)]
                shares = [g / (solo * cores / (cores + k))
                          for g, solo in zip(got, alone[mode], strict=True)]
                share = statistics.median(shares)
                met = share >= TARGET if mode == "stage" else None
                rows.append(Row(f"{role} beside {k} busy: {mode}, share of its fair rate",
                                f"{statistics.median(got):,.0f}/s",
                                f"fair {statistics.median(alone[mode]) * cores / (cores + k):,.0f}/s",
                                f"{share:.2f} ({min(shares):.2f}–{max(shares):.2f})",
                                f">= {TARGET:g}" if met is not None else "—", met))
    print("\n".join(machine_lines(torch.device("cpu"))))
    print()
    print(table(rows))


if __name__ == "__main__":
    main()
