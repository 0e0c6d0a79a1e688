"""What each trained model costs to keep and to run, side by side in one process: parameters,
FLOPs per image, weights size (kd/train/cost.py: functions of the architecture) and CPU latency at
batch 1 and throughput at batch 256 (medians, kd/train/cost.py), for the checkpoints of the last
`dvc repro`, and how much cheaper the student is than its teacher.

The stages measure the same for their own model (MLflow, report/report.md), each while it
shares the machine with whatever else runs; this script measures the three together, so their
ratios compare like with like. Run it on a quiet machine:

    python -m benchmarks.cost [--models model] [--repeats 5]

Progress on stderr; the machine and the table on stdout.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch

from benchmarks.common import machine_lines, progress
from kd.report.tables import markdown_table
from kd.train import cost, steps

MODELS = (("teacher", "teacher"), ("student baseline", "student"), ("distilled student", "distilled"))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", type=Path, default=Path("model"),
                    help="folder of teacher.pt, student.pt and distilled.pt (default: model)")
    ap.add_argument("--repeats", type=int, default=5,
                    help="rounds; in each, every model is timed once in turn; medians count")
    args = ap.parse_args(argv)

    nets = {}
    for label, name in MODELS:
        net, ckpt = steps.load_checkpoint(args.models / f"{name}.pt", torch.device("cpu"))
        nets[label] = (net, tuple(ckpt["in_shape"]), ckpt["arch"])
    sizes = {label: cost.size(net, shape) for label, (net, shape, _) in nets.items()}
    speeds: dict[str, list[dict]] = {label: [] for label in nets}
    for round_ in range(1, args.repeats + 1):
        progress(f"round {round_}/{args.repeats}")
        for label, (net, shape, _) in nets.items():  # in turn, so a neighbour slows all alike
            speeds[label].append(cost.speed(net, shape))
    rows = []
    for label, (_, _, arch) in nets.items():
        s = sizes[label]
        latency = statistics.median(r["latency_ms"] for r in speeds[label])
        throughput = statistics.median(r["throughput_per_s"] for r in speeds[label])
        rows.append([label, f"`{arch}`", f"{s['params']:,}", f"{s['flops_per_image'] / 1e6:.2f} M",
                     f"{s['size_bytes'] / 2**20:.2f} MiB", f"{latency:.3f}", f"{throughput:,.0f}",
                     speeds[label][-1]["cost_threads"]])
    teacher = statistics.median(r["throughput_per_s"] for r in speeds["teacher"])
    student = statistics.median(r["throughput_per_s"] for r in speeds["distilled student"])
    flops = sizes["distilled student"]["flops_per_image"] / sizes["teacher"]["flops_per_image"]
    print("\n".join(machine_lines(torch.device("cpu"))))
    print()
    print(markdown_table(["model", "architecture", "parameters", "FLOPs / image", "weights",
                          "latency, batch 1 (ms)", "throughput, batch 256 (images/s)",
                          "threads"], rows))
    print(f"The distilled student runs {student / teacher:.1f}x the teacher's images per second at "
          f"batch 256, with {flops:.2f}x its FLOPs (medians of {args.repeats} rounds).")


if __name__ == "__main__":
    main()
