"""Time to answer: the teacher's training against what the hardware can do, `dvc exp run -S T=4`,
the default `dvc repro`, each stage's memory, and several experiments at once, as one table.

Measures, side by side in one run (ratios are what count on a shared machine):
  1. the default teacher's (the params') training step in kd.train.loop.fit: its FLOP rate over the rate
     the convolution and matrix-multiply kernels of its own layer shapes reach alone (target >=
     0.6); as built (channels-last) vs NCHW; SGD(fused=True) and
     torch.compile (not adopted); the per-epoch evaluation's share of an epoch and its batch size;
  3. what the default `dvc repro` needs at least: the teacher's epochs at the kernel ceiling;
  with --pipeline, in a temporary git copy of the project (digits):
  2. `dvc exp run -S T=4` after a full run, less the distill stage's training (target < 8 s),
     split into DVC, the three stages it runs, and the imports every stage pays; the logged
     model's cost, pickle (adopted) vs torch.export's pt2: log_model, and loading it back in a
     fresh process (target < 3 s);
  with --stages: 4. every stage as a child process on Fashion-MNIST: wall time and peak RSS
     (target < 1.5 GiB); `--stage-epochs 0` is the default `dvc repro`, stage by stage (item 3);
  with --queue: 6. four queued experiments at `dvc queue start -j 1`, at `-j 2` (each stage takes
     its share of the cores) and at `-j 2` with OMP_NUM_THREADS=2 (every stage takes all cores);
  with --tests: 5. `bash run.sh tests` and its quick loop `-m "not slow"`, timed.

A GPU is used when there is one (kd.train.device.pick()); the kernels then run under the loop's bf16
autocast. Seeds are fixed; absolute numbers follow the machine's load, printed at the top.

Run: python benchmarks/throughput.py [--quick] [--pipeline] [--stages] [--queue] [--tests];
progress goes to stderr, the machine and the table to stdout. The project's own data/, model/
and mlflow.db are not touched.
"""
# ruff: noqa: E402  (the imports below need the sys.path line above them when run as a script)

from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `kd` and `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import yaml

from benchmarks import compute, loops, overheads
from benchmarks.common import (
    GIB,
    PYTHON,
    ROOT,
    Row,
    child_env,
    composed_params,
    env_vars,
    interleaved,
    machine_lines,
    progress,
    ratio_row,
    run_child,
    table,
)
from kd.config.params import load as load_params
from kd.data import splits as kd_data
from kd.datasets import resolve_arch
from kd.process import cores
from kd.train import device, loop
from stages import download

FASHION = "/usr/share/datasets/fashion-mnist"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.partition("\n")[0], epilog=__doc__.partition(
        "\n")[2], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, default=20,
                    help="training batches per contender per round (default: 20)")
    ap.add_argument("--warmup", type=int, default=3,
                    help="untimed batches per contender first (default: 3)")
    ap.add_argument("--repeats", type=int, default=5,
                    help="timed rounds; in each, every contender of a comparison runs once, "
                         "in turn; medians count (default: 5)")
    ap.add_argument("--quick", action="store_true",
                    help="4 batches, 1 warm-up, 1 round, no torch.compile: a smoke run "
                         "(numbers are rough)")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch threads for this process and, as OMP_NUM_THREADS, for the stages "
                         "it starts (default: 0 = each stage's share of the cores)")
    ap.add_argument("--data-root", default=FASHION,
                    help=f"folder with the four Fashion-MNIST IDX files (default: {FASHION})")
    ap.add_argument("--pipeline", action="store_true",
                    help="also time `dvc repro` and `dvc exp run -S T=4` in a temporary git copy "
                         "of the project, the imports, and the logged model")
    ap.add_argument("--pipeline-dataset", default="digits",
                    help="dataset of the --pipeline run (default: digits, seconds-fast)")
    ap.add_argument("--stages", action="store_true",
                    help="also run every stage as a child process on Fashion-MNIST (default archs) "
                         "for its wall time and peak RSS (slow: minutes per epoch on a CPU)")
    ap.add_argument("--stage-epochs", type=int, default=1,
                    help="epochs per training stage for --stages and --pipeline (default: 1; 0 = "
                         "the default run's, from conf/)")
    ap.add_argument("--queue", action="store_true",
                    help="also time four queued experiments on Fashion-MNIST at -j 1 and -j 2 "
                         "(about ten minutes on 2 cores)")
    ap.add_argument("--skip-teacher", action="store_true",
                    help="leave out items 1 and 3 (the teacher's step), when only the rows of "
                         "the modes above are wanted")
    ap.add_argument("--tests", action="store_true",
                    help="also time the test suite, whole and its quick loop (minutes)")
    args = ap.parse_args(argv)
    if args.quick:
        args.batches, args.warmup, args.repeats = 4, 1, 1
    return args


def prepare(ws: Path, args: argparse.Namespace, dev: torch.device) -> loops.Setup:
    """Prepared Fashion-MNIST through the download stage's own main(), in this process (a child
    would pay the torch import again), tracking off."""
    params = overheads.workspace_params("fashion-mnist", args.data_root, 1)
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    progress("download stage (prepares data/fashion-mnist in a temporary folder)")
    with env_vars(KD_TRACKING="off"), contextlib.redirect_stdout(io.StringIO()):
        download.main(["--params", str(ws / "params.yaml"), "--out", str(ws / "data"),
                       "--cache", str(ws / "raw")])
    return loops.Setup(dev, kd_data.load(ws / "data").to(dev), load_params(ws / "params.yaml"))


def teacher_rows(s: loops.Setup, args) -> list[Row]:
    """Items 1 and 3: the default teacher's step against its kernels, and what was tried."""
    t = loops.role(s, "teacher", resolve_arch(s.params.teacher.arch, "fashion-mnist",
                                              "teacher"))
    ceiling, flops = compute.kernel_ceiling(s, t)
    fns = {"as built": loops.fit_rate(s, t),
           "NCHW": loops.fit_rate(s, t, lambda: loops.build(s, t, torch.contiguous_format)),
           "kernels": ceiling, "opt_ms": compute.optimizer_step_ms(s, t)}
    with contextlib.suppress(RuntimeError, TypeError):  # fused SGD is not on every device
        compute.optimizer_step_ms(s, t, fused=True)(1)
        fns["fused_opt_ms"] = compute.optimizer_step_ms(s, t, fused=True)
    compiled = {}
    if not args.quick:
        def make_compiled() -> torch.nn.Module:
            # One compiled module for every round: its compile time is measured once, below.
            if "model" not in compiled:
                t0 = time.perf_counter()
                compiled["model"] = torch.compile(loops.build(s, t))
                loops.fit_rate(s, t, lambda: compiled["model"])(2)
                compiled["seconds"] = time.perf_counter() - t0
            return compiled["model"]
        fns["torch.compile"] = loops.fit_rate(s, t, make_compiled)
    progress(f"teacher {t.arch}: kd.train.loop.fit as built / NCHW"
             f"{'' if args.quick else ' / torch.compile'}, its kernels alone, optimizer.step")
    tr = interleaved(fns, args.batches, args.warmup, args.repeats)
    er = interleaved({f"eval@{b}": compute.eval_seconds(s, t, b) for b in (loop.EVAL_BATCH, 4096)},
                     0, 0, args.repeats)
    med = statistics.median
    kind = "bf16" if s.dev.type == "cuda" else "fp32"
    achieved = [flops * v / 1e9 for v in tr["as built"]]
    step_ms = 1000 * t.train.batch_size / med(tr["as built"])
    n, epochs = len(s.ds.train), composed_params()["teacher"]["epochs"]  # the default run's
    epoch_s = [n / v for v in tr["as built"]]
    rows = [
        ratio_row(f"1. teacher {t.arch} training FLOP rate in kd.train.loop.fit ({flops / 1e6:.1f} "
                  f"MFLOP a sample) vs its conv + GEMM kernels alone, {kind}, batch "
                  f"{t.train.batch_size}", achieved, [flops * v / 1e9 for v in tr["kernels"]],
                  "GFLOP/s", 0.6),
        ratio_row("1. teacher training: as the stages build it (channels-last) vs NCHW "
                  "(benchmarks/numerics.py compares the numerics modes)", tr["as built"],
                  tr["NCHW"], "samples/s"),
        Row("1. teacher step: optimizer.step / SGD(fused=True) step (not adopted: the rest of "
            "the step dwarfs it)", f"{med(tr['opt_ms']):.2f} ms of {step_ms:.1f} ms",
            f"{med(tr['fused_opt_ms']):.2f} ms" if "fused_opt_ms" in tr else "unavailable"),
    ]
    if compiled:
        rows.append(ratio_row(f"1. teacher training: torch.compile vs as is (not adopted; "
                              f"compiling took {compiled['seconds']:.0f} s)", tr["torch.compile"],
                              tr["as built"], "samples/s"))
    rows += [
        ratio_row(f"1. per-epoch evaluation (val + test, {len(s.ds.val) + len(s.ds.test):,} "
                  "images) / one training epoch", er[f"eval@{loop.EVAL_BATCH}"], epoch_s, "s"),
        ratio_row(f"1. evaluation: batch {loop.EVAL_BATCH} (as is) / batch 4096",
                  er[f"eval@{loop.EVAL_BATCH}"], er["eval@4096"], "s"),
        Row(f"3. the teacher's {epochs} epochs at its kernel ceiling (nothing but convs and "
            "GEMMs) / as trained now; all of `dvc repro` is to take under 3 min",
            f"{epochs * n / med(tr['kernels']):.0f} s",
            f"{epochs * n / med(tr['as built']):.0f} s"),
    ]
    return rows


def startup_rows(args) -> list[Row]:
    """Item 2's fixed costs: what each stage process pays before it does anything."""
    progress("start-up of fresh interpreters")
    cmds = {"python": "pass", "torch": "import torch",
            "torch.optim": "import torch; torch.optim.SGD([torch.zeros(1, requires_grad=True)])",
            "mlflow": "import mlflow", "matplotlib": "import matplotlib.pyplot"}
    start = overheads.startup_seconds(
        {k: [PYTHON, "-c", v] for k, v in cmds.items()}
        | {f"stages.{s}": [PYTHON, "-m", f"stages.{s}", "--help"] for s in ("distill", "report")},
        1 if args.quick else 3)
    t = start["torch"]
    return [Row("2. start-up: import torch / torch.optim's first use (imports torch._dynamo) / "
                "import mlflow / matplotlib.pyplot",
                f"{t:.2f} / {start['torch.optim'] - t:.2f} / {start['mlflow'] - start['python']:.2f}"
                f" / {start['matplotlib'] - start['python']:.2f} s"),
            Row("2. start-up: stages.distill --help / stages.report --help (their imports)",
                f"{start['stages.distill']:.2f} / {start['stages.report']:.2f} s")]


def model_rows() -> list[Row]:
    costs = overheads.logged_model_costs()
    (log_p, imp_p, load_p), (log_e, imp_e, load_e) = costs["pickle"], costs["pt2"]
    return [Row("2. MLflow log_model of the teacher: pickle + code (adopted) vs torch.export pt2",
                f"{log_p:.2f} s", f"{log_e:.2f} s", f"{log_p / log_e:.2f}"),
            Row("2. the logged model loaded back in a fresh process: mlflow.pytorch.load_model, "
                "pickle vs pt2", f"{load_p:.2f} s", f"{load_e:.2f} s", f"{load_p / load_e:.2f}",
                "< 3 s", load_p < 3),
            Row("2. ... and the imports before it (mlflow, torch): pickle / pt2",
                f"{imp_p:.2f} s / {imp_e:.2f} s")]


def dvc_rows(args) -> list[Row]:
    """Item 2 (DVC part), in a temporary git copy of the project."""
    d = overheads.dvc_overheads(args.pipeline_dataset, args.data_root, args.stage_epochs)
    where = f"{args.pipeline_dataset}, temporary git copy"
    extra = d["exp"] - d["distill_train"]
    stages = d["check"] + d["distill"] - d["distill_train_alone"] + d["report"]
    return [Row(f"5. dvc repro, full / with nothing to do ({where})",
                f"{d['full']:.1f} s / {d['noop']:.1f} s"),
            Row(f"2. dvc exp run -S T=4 after a full run, less the distill stage's training "
                f"({where})", f"{extra:.1f} s", f"{d['exp']:.1f} s in all", "", "< 8 s",
                extra < 8),
            Row("2. ... of which DVC itself / stage check / distill less training / report (the "
                "stages rerun alone)", f"{d['exp'] - stages - d['distill_train']:.1f} / "
                f"{d['check']:.1f} / {d['distill'] - d['distill_train_alone']:.1f} / "
                f"{d['report']:.1f} s")]


def queue_rows(args) -> list[Row]:
    """Item 6: four queued experiments, at one and two jobs."""
    settings = {"-j 1": (1, {}), "-j 2": (2, {}),
                "-j 2, all cores each": (2, {"OMP_NUM_THREADS": str(cores.cores())})}
    q = overheads.queued_experiments("fashion-mnist", args.data_root, 3, settings)
    return [Row("6. four queued experiments (Fashion-MNIST, distill 3 epochs): -j 2 vs -j 1",
                f"{q['-j 2']:.0f} s", f"{q['-j 1']:.0f} s", f"{q['-j 2'] / q['-j 1']:.2f}"),
            Row("6. ... -j 2 with every stage on all cores (OMP_NUM_THREADS=cores) vs -j 2 with "
                "each its share", f"{q['-j 2, all cores each']:.0f} s", f"{q['-j 2']:.0f} s",
                f"{q['-j 2, all cores each'] / q['-j 2']:.2f}")]


def test_rows() -> list[Row]:
    """Item 5: the README's test commands, whole and quick, as child processes (run.sh's installs
    are no-ops by then)."""
    times = {}
    for name, extra in (("quick", ["-m", "not slow"]), ("all", [])):
        progress(f"tests: bash run.sh tests {' '.join(extra)}")
        times[name] = run_child(["bash", "run.sh", "tests", "-q", "-p", "no:cacheprovider", *extra],
                                ROOT, child_env()).seconds
    return [Row("5. the test suite, all of it (`bash run.sh tests`) / the quick loop (`-m \"not "
                "slow\"`)", f"{times['all'] / 60:.1f} / {times['quick'] / 60:.1f} min", "", "",
                "< 4 min", times["all"] < 240)]


def stage_rows(args) -> list[Row]:
    """Items 4 and 3: each stage as a child process: wall time (training part) and peak RSS."""
    epochs = "params.yaml epochs" if args.stage_epochs == 0 else f"{args.stage_epochs} epoch(s)"
    runs = overheads.run_stages("fashion-mnist", args.data_root, args.stage_epochs)
    rows = []
    for name, (c, train_s) in runs.items():
        trained = "" if train_s is None else f" ({train_s:.1f} s training)"
        rows.append(Row(f"4. stage {name} (fashion-mnist, {epochs}): wall, peak RSS",
                        f"{c.seconds:.1f} s{trained}, {c.max_rss / GIB:.2f} GiB",
                        target="< 1.5 GiB", met=c.max_rss < 1.5 * GIB))
    total = sum(c.seconds for c, _ in runs.values())
    rows.append(Row(f"3. all stages in sequence (fashion-mnist, {epochs})", f"{total:.0f} s"))
    return rows


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # the stages run as children inherit it
    torch.manual_seed(0)
    dev = device.pick()
    print("\n".join(machine_lines(dev)), flush=True)
    if os.getloadavg()[0] > 0.75 * (os.cpu_count() or 1) and dev.type == "cpu":
        # torch's threads meet at a barrier after every op: with cores taken by other jobs, one
        # descheduled thread stalls the rest, and small ops slow down several-fold.
        print("- note: the machine is busy (1-minute load average above 3/4 of the cores): absolute "
              "numbers are low and noisy; compare ratios", flush=True)
    print(flush=True)
    t_start = time.perf_counter()
    rows = []
    if not args.skip_teacher:
        with tempfile.TemporaryDirectory(prefix="kd-bench-") as tmp:
            rows = teacher_rows(prepare(Path(tmp), args, dev), args)
    if args.pipeline:
        rows += startup_rows(args) + model_rows() + dvc_rows(args)
    if args.stages:
        rows += stage_rows(args)
    if args.queue:
        rows += queue_rows(args)
    if args.tests:
        rows += test_rows()
    print(table(rows))
    load = " ".join(f"{v:.2f}" for v in os.getloadavg())
    print(f"{args.batches} batches per contender per round, {args.repeats} rounds, after "
          f"{args.warmup} warm-up batches; medians (ratio: median of per-round ratios, range in "
          f"brackets); {time.perf_counter() - t_start:.0f} s in all; load average at the end {load}.")


if __name__ == "__main__":
    main()
