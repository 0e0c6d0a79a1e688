"""Throughput and overheads of the distillation pipeline on Fashion-MNIST, as one markdown table.

Measures, side by side in one run (ratios are what count on a shared machine):
  1. training samples/s of the teacher MLP (784-1200-1200-10) and the student MLP (784-800-800-10):
     kd.loop.fit against torchvision + DataLoader + the same step (target: >= 3x);
  2. the teacher's achieved FLOP rate (6 x parameters x samples/s) over the GEMM rate of its own
     layer shapes measured here (target >= 0.9), and where the rest of a step goes;
  3. one distillation epoch over one student-baseline epoch, cached soft targets (target <= 1.05)
     and teacher run online;
  4. the teacher's evaluation samples/s on the test split (kd.loop.predict);
  5. start-up (python, torch, mlflow, each stage's --help), data load, MLflow cost per epoch
     (target < 2% of an epoch); with --pipeline also `dvc repro` with nothing to do and
     `dvc exp run -S T=4` less distill training, in a temporary git copy;
  6./7. with --stages: every stage as a child process on Fashion-MNIST: wall time and peak RSS
     (target < 1.5 GiB).

Run: python benchmarks/throughput.py [--quick] [--stages] [--pipeline]; progress goes to stderr,
the machine and the table to stdout. The project's own data/, model/ and mlflow.db are not touched.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `kd` and `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import yaml  # noqa: E402

from benchmarks import compute, loops, overheads  # noqa: E402
from benchmarks.common import GIB, Row, env_vars, interleaved, machine_lines, progress, table  # noqa: E402
from kd import data as kd_data  # noqa: E402
from kd import device, loop, models  # noqa: E402
from kd.params import load as load_params  # noqa: E402
from stages import download  # noqa: E402

FASHION = "/usr/share/datasets/fashion-mnist"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.partition("\n")[0], epilog=__doc__.partition(
        "\n")[2], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, default=100,
                    help="training batches per timed repeat (default: 100)")
    ap.add_argument("--warmup", type=int, default=10, help="untimed batches first (default: 10)")
    ap.add_argument("--repeats", type=int, default=5,
                    help="timed repeats per contender; the median counts (default: 5)")
    ap.add_argument("--quick", action="store_true",
                    help="8 batches, 2 warm-up, 1 repeat, fewer start-up probes: a smoke run "
                         "under a minute (numbers are rough)")
    ap.add_argument("--workers", type=int, default=0,
                    help="DataLoader workers of the usual way (default: 0, the DataLoader default)")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch.set_num_threads for this process (default: 0 = torch's choice)")
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
        args.batches, args.warmup, args.repeats = 8, 2, 1
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


def ratio_row(name: str, pipe: float, ref: float, unit: str, target: float | None = None,
              at_least: bool = True, ratio: float | None = None) -> Row:
    ratio = pipe / ref if ratio is None else ratio
    met = None if target is None else (ratio >= target if at_least else ratio <= target)
    target_txt = "—" if target is None else f"{'>=' if at_least else '<='} {target:g}"
    return Row(name, f"{pipe:,.0f} {unit}" if pipe >= 100 else f"{pipe:.3g} {unit}",
               f"{ref:,.0f} {unit}" if ref >= 100 else f"{ref:.3g} {unit}", f"{ratio:.2f}",
               target_txt, met)


def training_rows(s: loops.Setup, args) -> tuple[list[Row], dict[str, float]]:
    """Items 1 and 3: teacher and student, usual vs pipeline; distillation vs the baseline."""
    t, st, dr = loops.role(s, "teacher"), loops.role(s, "student"), loops.distill_role(s)
    cached, online = loops.distill_losses(s, max(args.batches, args.warmup))
    progress(f"teacher {s.teacher_arch}: usual vs pipeline, {args.batches} batches of "
             f"{t.train.batch_size}, {args.repeats} repeats")
    tr = interleaved({"usual": loops.usual_train(s, t), "pipeline": loops.pipeline_train(s, t)},
                     args.batches, args.warmup, args.repeats)
    progress(f"student {s.student_arch}: usual, pipeline, distill (cached, online)")
    sr = interleaved({"usual": loops.usual_train(s, st), "pipeline": loops.pipeline_train(s, st),
                      "cached": loops.pipeline_train(s, dr, cached),
                      "online": loops.pipeline_train(s, dr, online)},
                     args.batches, args.warmup, args.repeats)
    n = len(s.ds.train)
    epoch = lambda rate: n / rate  # noqa: E731  (seconds of one training epoch at this rate)
    rows = [
        ratio_row(f"1. teacher {s.teacher_arch} training", tr["pipeline"], tr["usual"],
                  "samples/s", 3),
        ratio_row(f"1. student {s.student_arch} training", sr["pipeline"], sr["usual"],
                  "samples/s", 3),
        ratio_row("3. distill epoch (cached soft targets) / student-baseline epoch",
                  epoch(sr["cached"]), epoch(sr["pipeline"]), "s", 1.05, at_least=False),
        ratio_row("3. distill epoch (teacher online every batch) / student-baseline epoch",
                  epoch(sr["online"]), epoch(sr["pipeline"]), "s"),
    ]
    return rows, {"teacher": tr["pipeline"], "student": sr["pipeline"],
                  "teacher_usual": tr["usual"], "student_usual": sr["usual"]}


def input_rows(s: loops.Setup, rates: dict[str, float], args) -> list[Row]:
    """Item 1, explained: the input path alone, and the best training ratio it allows here.

    A usual step is model time + loader time; the pipeline can at most remove the loader time,
    so usual / (usual - loader) bounds the item-1 ratio on this device, whatever the loop does.
    """
    r = loops.role(s, "student")
    progress("input path alone: DataLoader vs batch_inputs")
    ir = interleaved({"usual": loops.usual_inputs(s, r), "pipeline": loops.pipeline_inputs(s, r)},
                     args.batches, args.warmup, args.repeats)
    loader_s = 1 / ir["usual"]  # seconds per sample

    def ceiling(usual_rate: float) -> str:
        model_s = 1 / usual_rate - loader_s
        return f"{(1 / usual_rate) / model_s:.2f}" if model_s > 0 else "n/a (noise)"
    return [ratio_row(f"1. input path alone, batch {r.train.batch_size}: batch_inputs vs "
                      "DataLoader (ToTensor + Normalize)", ir["pipeline"], ir["usual"],
                      "samples/s"),
            Row("1. best training ratio possible here with a free input path: teacher / student",
                f"{ceiling(rates['teacher_usual'])} / {ceiling(rates['student_usual'])}",
                "usual step / its model part")]


def flop_rows(s: loops.Setup, teacher_rate: float, args) -> list[Row]:
    """Item 2: achieved FLOP/s of teacher training over the GEMM rate of the same shapes, and a
    split of one step into GEMMs, optimiser and the rest (what stands between the two)."""
    t = loops.role(s, "teacher")
    bs = t.train.batch_size
    shapes = compute.layer_shapes(s.teacher_arch, s.ds.in_shape[0] * s.ds.in_shape[1] *
                                  s.ds.in_shape[2], s.ds.num_classes)
    n_params = models.count_params(loops.build(s, t))
    progress("GEMM reference and optimiser step")
    gemm = compute.gemm_rate(s.dev, bs, shapes, args.batches, args.repeats)
    achieved = 6 * n_params * teacher_rate
    # The GEMMs training really runs: the first layer needs no input gradient.
    train_flops = sum(6 * bs * i * o for i, o in shapes) - 2 * bs * shapes[0][0] * shapes[0][1]
    step_ms, gemm_ms = 1000 * bs / teacher_rate, 1000 * train_flops / gemm
    iters = max(10, args.batches)
    opt_ms = compute.optimizer_step_ms(s, t, iters, args.repeats)
    try:
        fused_ms = compute.optimizer_step_ms(s, t, iters, args.repeats, fused=True)
        fused = f"{fused_ms:.2f} ms with SGD(fused=True)"
    except (RuntimeError, TypeError) as e:  # fused SGD on this device may be missing
        fused = f"fused SGD unavailable ({type(e).__name__})"
    kind = "bf16" if s.dev.type == "cuda" else "fp32"
    return [
        ratio_row(f"2. teacher achieved FLOP rate (6 x {n_params:,} params x samples/s) vs {kind} "
                  f"GEMMs of {'->'.join(str(i) for i, _ in shapes)}->{shapes[-1][1]}, batch {bs}",
                  achieved / 1e9, gemm / 1e9, "GFLOP/s", 0.9),
        Row("2. teacher step split: GEMMs (at the reference rate) / optimizer.step / rest",
            f"{gemm_ms:.1f} / {opt_ms:.1f} / {step_ms - gemm_ms - opt_ms:.1f} ms of {step_ms:.1f} ms",
            f"optimizer.step: {fused}"),
    ]


def eval_rows(s: loops.Setup, args) -> list[Row]:
    """Item 4: kd.loop.predict on the test split at the loop's EVAL_BATCH, vs a DataLoader loop;
    and at batch 512, which would cut eval memory 8x."""
    n = min(len(s.ds.test), max(1000, args.batches * 128))
    progress(f"teacher evaluation on {n:,} test images")
    r = compute.eval_rates(s, loops.role(s, "teacher"), n, args.repeats, (loop.EVAL_BATCH, 512))
    main = r[f"predict@{loop.EVAL_BATCH}"]
    return [ratio_row(f"4. teacher eval on {n:,} test images (predict, batch {loop.EVAL_BATCH}) vs "
                      "DataLoader batch 1000", main, r["usual"], "samples/s"),
            ratio_row(f"4. teacher eval: predict batch {loop.EVAL_BATCH} vs batch 512", main,
                      r["predict@512"], "samples/s")]


def overhead_rows(epoch_row: dict, student_rate: float, n_train: int, args) -> list[Row]:
    """Item 5: MLflow per epoch as a share of the shortest epoch (the student's), and start-up."""
    progress("MLflow: new SQLite store, then log_metrics of one epoch's dict")
    setup_s, log_s = overheads.mlflow_costs(epoch_row, 3 if args.quick else 20)
    epoch_s = n_train / student_rate
    share = log_s / epoch_s
    rows = [Row("5. MLflow log_metrics of one epoch's dict / one student epoch (training only)",
                f"{1000 * log_s:.1f} ms", f"{epoch_s:.1f} s", f"{100 * share:.3f}%", "< 2%",
                share < 0.02),
            Row("5. MLflow run set-up per stage (new SQLite store, experiment, start_run, params)",
                f"{setup_s:.2f} s")]
    progress("start-up of fresh interpreters")
    start = overheads.startup_seconds(overheads.startup_commands(args.quick),
                                      1 if args.quick else 2)
    base, torch_s = start.pop("python -c pass"), start["import torch"]
    rows.append(Row("5. start-up: import torch (vs bare python)", f"{torch_s:.2f} s",
                    f"{base:.2f} s"))
    rows.append(Row("5. start-up: import mlflow (vs import torch)", f"{start.pop('import mlflow'):.2f} s",
                    f"{torch_s:.2f} s"))
    start.pop("import torch")
    for name, sec in start.items():
        rows.append(Row(f"5. start-up: python -m {name} (vs import torch)", f"{sec:.2f} s",
                        f"{torch_s:.2f} s", f"{sec / torch_s:.2f}"))
    return rows


def stage_rows(args) -> list[Row]:
    """Items 6 and 7: each stage as a child process: wall time and peak RSS."""
    epochs = "params.yaml epochs" if args.stage_epochs == 0 else f"{args.stage_epochs} epoch(s)"
    runs = overheads.run_stages("fashion-mnist", args.data_root, args.stage_epochs)
    rows = [Row(f"6/7. stage {name} (fashion-mnist, {epochs}): wall, peak RSS",
                f"{c.seconds:.1f} s, {c.max_rss / GIB:.2f} GiB", target="< 1.5 GiB",
                met=c.max_rss < 1.5 * GIB) for name, c in runs.items()]
    total = sum(c.seconds for c in runs.values())
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
    torch.manual_seed(0)
    dev = device.pick()
    print("\n".join(machine_lines(dev)) + "\n", flush=True)
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="kd-bench-") as tmp:
        s, rows = prepare(Path(tmp), args, dev)
        train, rates = training_rows(s, args)
        rows = (train[:2] + input_rows(s, rates, args) + flop_rows(s, rates["teacher"], args)
                + train[2:] + eval_rows(s, args) + rows)
        epoch_row = loops.student_epoch_row(s)
        rows += overhead_rows(epoch_row, rates["student"], len(s.ds.train), args)
    if args.pipeline:
        rows += dvc_rows(args)
    if args.stages:
        rows += stage_rows(args)
    print(table(rows))
    print(f"{args.batches} batches x {args.repeats} repeats per contender after {args.warmup} "
          f"warm-up batches; medians; {time.perf_counter() - t_start:.0f} s in all.")


if __name__ == "__main__":
    main()
