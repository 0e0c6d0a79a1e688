"""Throughput and overheads of the distillation pipeline on Fashion-MNIST, as one markdown table.

Measures, side by side in one run (ratios are what count on a shared machine):
  1. training samples/s of the teacher MLP (784-1200-1200-10) and the student MLP (784-800-800-10):
     kd.loop.fit against torchvision + DataLoader + the same step (target: >= 3x);
  2. the teacher's achieved FLOP rate (6 x parameters x samples/s) over the GEMM rate of its own
     layer shapes measured here (target >= 0.9), and where the rest of a step goes;
  3. one distillation epoch over one student-baseline epoch, cached soft targets (target <= 1.05)
     and teacher run online;
  4. the teacher's evaluation samples/s on the test split (kd.loop.predict);
  5. start-up (python, torch, torchvision, mlflow, each stage's --help), data load, MLflow cost
     per epoch (target < 2% of an epoch) and per stage (run set-up, log_model); with --pipeline
     also `dvc repro` with nothing to do and `dvc exp run -S T=4` less distill training, in a
     temporary git copy of the project;
  6./7. with --stages: every stage as a child process on Fashion-MNIST: wall time and peak RSS
     (target < 1.5 GiB); `--stages --stage-epochs 0` is the default `dvc repro`, stage by stage.

A GPU is used when there is one (kd.device.pick()); ratios there use the same bf16 autocast as the
loop. Seeds are fixed; absolute numbers follow the machine's load, printed at the top.

Run: python benchmarks/throughput.py [--quick] [--stages] [--pipeline]; progress goes to stderr,
the machine and the table to stdout. The project's own data/, model/ and mlflow.db are not touched.
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
from benchmarks.common import GIB, Row, env_vars, interleaved, machine_lines, progress, ratio_row, table
from kd import data as kd_data
from kd import device, loop, models
from kd.params import load as load_params
from stages import download

FASHION = "/usr/share/datasets/fashion-mnist"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.partition("\n")[0], epilog=__doc__.partition(
        "\n")[2], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, default=50,
                    help="training batches per contender per round (default: 50)")
    ap.add_argument("--warmup", type=int, default=5,
                    help="untimed batches per contender first (default: 5)")
    ap.add_argument("--repeats", type=int, default=5,
                    help="timed rounds; in each, every contender of a comparison runs once, "
                         "in turn; medians count (default: 5)")
    ap.add_argument("--quick", action="store_true",
                    help="5 batches, 1 warm-up, 1 round, fewer start-up probes: a smoke run "
                         "under a minute (numbers are rough)")
    ap.add_argument("--workers", type=int, default=0,
                    help="DataLoader workers of the usual way (default: 0, the DataLoader default)")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch threads for this process and, as OMP_NUM_THREADS, for the stages "
                         "it starts (default: 0 = torch's choice, one per core)")
    ap.add_argument("--data-root", default=FASHION,
                    help=f"folder with the four Fashion-MNIST IDX files (default: {FASHION})")
    ap.add_argument("--teacher-arch", default=loops.TEACHER_ARCH,
                    help=f"teacher MLP (default: {loops.TEACHER_ARCH})")
    ap.add_argument("--student-arch", default=loops.STUDENT_ARCH,
                    help=f"student MLP (default: {loops.STUDENT_ARCH})")
    ap.add_argument("--stages", action="store_true",
                    help="also run every stage as a child process on Fashion-MNIST (default archs) "
                         "for its wall time and peak RSS (slow: minutes per epoch on a CPU)")
    ap.add_argument("--stage-epochs", type=int, default=1,
                    help="epochs per training stage for --stages and --pipeline (default: 1; 0 = "
                         "params.yaml's own, i.e. the default `dvc repro`)")
    ap.add_argument("--pipeline", action="store_true",
                    help="also time `dvc repro` (full, then with nothing to do) and "
                         "`dvc exp run -S T=4` in a temporary git copy of the project")
    ap.add_argument("--pipeline-dataset", default="digits",
                    help="dataset of the --pipeline run (default: digits, seconds-fast)")
    args = ap.parse_args(argv)
    if args.quick:
        args.batches, args.warmup, args.repeats = 5, 1, 1
    return args


def prepare(ws: Path, args: argparse.Namespace, dev: torch.device) -> tuple[loops.Setup, list[Row]]:
    """Prepared data through the download stage's own main(), and torchvision's copy."""
    params = overheads.workspace_params("fashion-mnist", args.data_root, 1)
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    progress("download stage (prepares data/fashion-mnist in a temporary folder)")
    t0 = time.perf_counter()
    # In this process (a child would pay the torch import again); tracking off: no store needed.
    with env_vars(KD_TRACKING="off"), contextlib.redirect_stdout(io.StringIO()):
        download.main(["--params", str(ws / "params.yaml"), "--out", str(ws / "data"),
                       "--cache", str(ws / "raw")])
    dl_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    ds = kd_data.load(ws / "data").to(dev)
    load_s = time.perf_counter() - t0
    tv_train, tv_test, tv_s = loops.torchvision_copy(Path(args.data_root), ws / "tv", ds)
    setup = loops.Setup(dev, ds, tv_train, tv_test, load_params(ws / "params.yaml"), args.workers,
                        args.teacher_arch, args.student_arch)
    rows = [Row("5. download stage main(): read, verify, split, save (in this process)",
                f"{dl_s:.1f} s"),
            Row("5. data load: kd.data.load (all splits, to device) vs torchvision FashionMNIST "
                "(train + test)", f"{load_s:.2f} s", f"{tv_s:.2f} s", f"{tv_s / load_s:.2f}")]
    return setup, rows


def training_rows(s: loops.Setup, args) -> tuple[list[Row], dict[str, list[float]]]:
    """Items 1 and 3 (student side): usual vs pipeline; distillation vs the student baseline."""
    st, dr = loops.role(s, "student"), loops.distill_role(s)
    cached, online = loops.distill_losses(s, max(args.batches, args.warmup))
    progress(f"student {s.student_arch}: usual, pipeline, distill (cached, online), "
             f"{args.batches} batches of {st.train.batch_size}, {args.repeats} rounds")
    sr = interleaved({"usual": loops.usual_train(s, st), "pipeline": loops.pipeline_train(s, st),
                      "cached": loops.pipeline_train(s, dr, cached),
                      "online": loops.pipeline_train(s, dr, online)},
                     args.batches, args.warmup, args.repeats)
    n = len(s.ds.train)
    epoch = lambda rates: [n / v for v in rates]  # noqa: E731  (seconds of one training epoch)
    rows = [
        ratio_row(f"1. student {s.student_arch} training", sr["pipeline"], sr["usual"],
                  "samples/s", 3),
        ratio_row("3. distill epoch (cached soft targets) / student-baseline epoch",
                  epoch(sr["cached"]), epoch(sr["pipeline"]), "s", 1.05, at_least=False),
        ratio_row("3. distill epoch (teacher online every batch) / student-baseline epoch",
                  epoch(sr["online"]), epoch(sr["pipeline"]), "s"),
    ]
    return rows, sr


def teacher_rows(s: loops.Setup, args) -> tuple[list[Row], dict[str, list[float]]]:
    """Items 1 and 2: teacher usual vs pipeline, and the pipeline's FLOP rate over the GEMM rate
    of the same layer shapes, in the same rounds; then what one step spends besides GEMMs."""
    t = loops.role(s, "teacher")
    bs = t.train.batch_size
    shapes = compute.layer_shapes(s.teacher_arch, s.ds.in_shape[0] * s.ds.in_shape[1] *
                                  s.ds.in_shape[2], s.ds.num_classes)
    fns = {"usual": loops.usual_train(s, t), "pipeline": loops.pipeline_train(s, t),
           "gemm": compute.gemm_rate(s.dev, bs, shapes), "opt_ms": compute.optimizer_step_ms(s, t)}
    try:
        fns["fused_opt_ms"] = compute.optimizer_step_ms(s, t, fused=True)
        fns["pipeline_fused"] = loops.pipeline_train_fused(s, t)
    except (RuntimeError, TypeError):  # fused SGD is not available on every device
        pass
    progress(f"teacher {s.teacher_arch}: usual, pipeline, GEMMs, optimizer.step")
    tr = interleaved(fns, args.batches, args.warmup, args.repeats)
    n_params = models.count_params(loops.build(s, t))
    achieved = [6 * n_params * v for v in tr["pipeline"]]
    kind = "bf16" if s.dev.type == "cuda" else "fp32"
    layers = "->".join(str(i) for i, _ in shapes) + f"->{shapes[-1][1]}"
    return [ratio_row(f"1. teacher {s.teacher_arch} training", tr["pipeline"], tr["usual"],
                      "samples/s", 3),
            ratio_row(f"2. teacher achieved FLOP rate (6 x {n_params:,} params x samples/s) vs "
                      f"{kind} GEMMs of {layers}, batch {bs}", [a / 1e9 for a in achieved],
                      [g / 1e9 for g in tr["gemm"]], "GFLOP/s", 0.9),
            step_split_row(tr, shapes, bs),
            *([ratio_row("2. what-if: teacher training in kd.loop.fit with SGD(fused=True) vs "
                         "as is", tr["pipeline_fused"], tr["pipeline"], "samples/s")]
              if "pipeline_fused" in tr else [])], tr


def step_split_row(tr: dict[str, list[float]], shapes: list[tuple[int, int]], bs: int) -> Row:
    """One teacher step = GEMMs (at the reference rate of the same round) + optimizer.step + the
    rest (bias, ReLU, dropout masks, loss, autograd bookkeeping, batch cut, schedule)."""
    # The GEMMs training really runs: the first layer needs no input gradient.
    flops = sum(6 * bs * i * o for i, o in shapes) - 2 * bs * shapes[0][0] * shapes[0][1]
    step = [1000 * bs / v for v in tr["pipeline"]]
    gemm = [1000 * flops / g for g in tr["gemm"]]
    rest = [a - b - c for a, b, c in zip(step, gemm, tr["opt_ms"], strict=True)]
    med = statistics.median
    fused = (f"optimizer.step with SGD(fused=True): {med(tr['fused_opt_ms']):.2f} ms"
             if "fused_opt_ms" in tr else "fused SGD unavailable here")
    return Row("2. teacher step split: GEMMs (at the reference rate) / optimizer.step / rest",
               f"{med(gemm):.1f} / {med(tr['opt_ms']):.1f} / {med(rest):.1f} ms of "
               f"{med(step):.1f} ms", fused)


def input_rows(s: loops.Setup, student: dict, teacher: dict, args) -> list[Row]:
    """Item 1, explained: the input path alone, and the best training ratio it allows here.

    A usual step is model time + loader time; the pipeline can at most remove the loader time,
    so usual / (usual - loader) bounds the item-1 ratio on this device, whatever the loop does.
    """
    r = loops.role(s, "student")
    progress("input path alone: DataLoader vs batch_inputs")
    ir = interleaved({"usual": loops.usual_inputs(s, r), "pipeline": loops.pipeline_inputs(s, r)},
                     args.batches, args.warmup, args.repeats)
    loader_s = 1 / statistics.median(ir["usual"])  # seconds per sample

    def ceiling(usual_rates: list[float]) -> str:
        usual_s = 1 / statistics.median(usual_rates)
        return f"{usual_s / (usual_s - loader_s):.2f}" if usual_s > loader_s else "n/a (noise)"
    return [ratio_row(f"1. input path alone, batch {r.train.batch_size}: batch_inputs vs "
                      "DataLoader (ToTensor + Normalize)", ir["pipeline"], ir["usual"],
                      "samples/s"),
            Row("1. best item-1 ratio possible here with a free input path: teacher / student",
                f"{ceiling(teacher['usual'])} / {ceiling(student['usual'])}",
                "usual step / its model part")]


def eval_rows(s: loops.Setup, args) -> list[Row]:
    """Item 4: kd.loop.predict on the test split at the loop's EVAL_BATCH vs a DataLoader loop,
    and vs other batch sizes (a smaller batch holds fewer activations at once)."""
    n = min(len(s.ds.test), 1000) if args.quick else len(s.ds.test)
    progress(f"teacher evaluation on {n:,} test images")
    others = [b for b in (256, 4096) if b != loop.EVAL_BATCH]
    er = interleaved(compute.eval_rates(s, loops.role(s, "teacher"), n, (loop.EVAL_BATCH, *others)),
                     0, 0, args.repeats)
    main = er[f"predict@{loop.EVAL_BATCH}"]
    return [ratio_row(f"4. teacher eval on {n:,} test images: predict (batch {loop.EVAL_BATCH}) vs "
                      "DataLoader (batch 1000)", main, er["usual"], "samples/s"),
            *(ratio_row(f"4. teacher eval: predict batch {loop.EVAL_BATCH} vs batch {b}", main,
                        er[f"predict@{b}"], "samples/s") for b in others)]


def mlflow_rows(s: loops.Setup, student_rates: list[float], args) -> list[Row]:
    """Item 5: MLflow per epoch as a share of the shortest epoch (the student's), and per stage."""
    progress("MLflow: new SQLite store, log_metrics of one epoch's dict, log_model")
    teacher = loops.build(s, loops.role(s, "teacher"))
    # As training.record logs it: the net behind its normalisation, fed stored uint8 images.
    servable = models.Servable(teacher, s.ds.mean, s.ds.std)
    example = s.ds.test.x[:2]
    c = overheads.mlflow_costs(loops.student_epoch_row(s), 3 if args.quick else 20, servable,
                               example)
    epoch_s = len(s.ds.train) / statistics.median(student_rates)
    share = c.log_epoch / epoch_s
    return [Row("5. MLflow log_metrics of one epoch's dict / one student epoch (training only)",
                f"{1000 * c.log_epoch:.1f} ms", f"{epoch_s:.1f} s", f"{100 * share:.3f}%",
                "< 2%", share < 0.02),
            Row("5. MLflow run set-up per stage: existing store / new store (import mlflow, "
                "create tables, experiment)", f"{c.existing_store:.2f} s / {c.new_store:.2f} s"),
            Row(f"5. MLflow log_model of the teacher ({s.teacher_arch}, torch.export), once per "
                "training stage: import mlflow.pytorch + log_model",
                f"{c.import_pytorch_flavor:.2f} s + {c.log_model:.2f} s")]


def startup_rows(args) -> list[Row]:
    """Item 5: fresh interpreters; each stage's --help is its imports and nothing else."""
    progress("start-up of fresh interpreters")
    start = overheads.startup_seconds(overheads.startup_commands(args.quick),
                                      1 if args.quick else 2)
    base, torch_s = start.pop("python -c pass"), start.pop("import torch")
    rows = [Row("5. start-up: import torch (vs bare python)", f"{torch_s:.2f} s", f"{base:.2f} s")]
    for name, sec in start.items():
        what = f"python -m {name}" if name.startswith("stages.") else name
        rows.append(Row(f"5. start-up: {what} (vs import torch)", f"{sec:.2f} s",
                        f"{torch_s:.2f} s", f"{sec / torch_s:.2f}"))
    return rows


def stage_rows(args) -> list[Row]:
    """Items 6 and 7: each stage as a child process: wall time (training part) and peak RSS."""
    epochs = "params.yaml epochs" if args.stage_epochs == 0 else f"{args.stage_epochs} epoch(s)"
    runs = overheads.run_stages("fashion-mnist", args.data_root, args.stage_epochs)
    rows = []
    for name, (c, train_s) in runs.items():
        trained = "" if train_s is None else f" ({train_s:.1f} s training)"
        rows.append(Row(f"6/7. stage {name} (fashion-mnist, {epochs}): wall, peak RSS",
                        f"{c.seconds:.1f} s{trained}, {c.max_rss / GIB:.2f} GiB",
                        target="< 1.5 GiB", met=c.max_rss < 1.5 * GIB))
    total = sum(c.seconds for c, _ in runs.values())
    rows.append(Row(f"7. all stages in sequence (fashion-mnist, {epochs})", f"{total:.0f} s"))
    return rows


def dvc_rows(args) -> list[Row]:
    """Item 5 (DVC part), in a temporary git copy of the project."""
    d = overheads.dvc_overheads(args.pipeline_dataset, args.data_root, args.stage_epochs)
    where = f"{args.pipeline_dataset}, temporary git copy"
    return [Row(f"5. dvc repro, full ({where})", f"{d['full']:.1f} s"),
            Row(f"5. dvc repro with nothing to do ({where})", f"{d['noop']:.1f} s"),
            Row(f"5. dvc exp run -S T=4 minus distill training ({where})",
                f"{d['exp'] - d['distill_train']:.1f} s", f"{d['exp']:.1f} s in all, "
                f"{d['distill_train']:.1f} s training")]


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
              "numbers are low and noisy; compare ratios, or try --threads 1", flush=True)
    print(flush=True)
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="kd-bench-") as tmp:
        s, data_rows = prepare(Path(tmp), args, dev)
        t_rows, teacher = teacher_rows(s, args)
        s_rows, student = training_rows(s, args)
        rows = (t_rows[:1] + s_rows[:1] + input_rows(s, student, teacher, args) + t_rows[1:]
                + s_rows[1:] + eval_rows(s, args) + data_rows
                + mlflow_rows(s, student["pipeline"], args)
                + startup_rows(args))
    if args.pipeline:
        rows += dvc_rows(args)
    if args.stages:
        rows += stage_rows(args)
    print(table(rows))
    load = " ".join(f"{v:.2f}" for v in os.getloadavg())
    print(f"{args.batches} batches per contender per round, {args.repeats} rounds, after "
          f"{args.warmup} warm-up batches; medians (ratio: median of per-round ratios, range in "
          f"brackets); {time.perf_counter() - t_start:.0f} s in all; load average at the end {load}.")


if __name__ == "__main__":
    main()
