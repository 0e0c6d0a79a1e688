"""Stage 4: run the trained teacher once over every split and cache its logits.

The logits are stored raw (before any temperature): T is applied at distillation time, so a new
T never re-runs the teacher. The teacher runs in eval mode under no_grad (dropout off), on the
un-augmented images, so the cache is exact for a student that also sees un-augmented images.

Reads params: dataset. Writes model/soft_targets.pt ({train, val, test} float32 logits, and
their lineage: the SHA-256 of the teacher checkpoint that made them and the split they were
computed on, which the distill stage checks) and one MLflow run, tagged with the teacher's run
id. Run: python -m stages.soft_targets
"""

from __future__ import annotations

import time
from pathlib import Path

from kd.data import splits
from kd.process import cli, distributed, files
from kd.track import lookup, mlflow_runs
from kd.train import device, loop, metrics, steps


def main(argv: list[str] | None = None) -> None:
    ap = cli.parser(__doc__)
    cli.data_option(ap)
    cli.path_option(ap, "teacher", "model/teacher.pt", "teacher checkpoint")
    cli.path_option(ap, "out", "model/soft_targets.pt", "logits file to write")
    args = ap.parse_args(argv)
    p = cli.params_or_exit(args.params)

    with cli.friendly_errors(), distributed.session():
        dev = device.pick()
        ds = splits.load(Path(args.data or f"data/{p.dataset}")).to(dev)
        teacher, _ = steps.load_checkpoint(args.teacher, dev)
        settings = {"dataset": p.dataset, "world_size": distributed.world_size()}
        with mlflow_runs.stage_run("soft_targets", p.dataset, settings,
                                tags={"teacher_run_id": lookup.run_of(args.teacher)}) as run:
            t0 = time.perf_counter()
            # Under torchrun each rank scores a block of rows; every rank gets them all, in order.
            logits = {s: loop.predict(teacher, getattr(ds, s), ds).cpu()
                      for s in ("train", "val", "test")}
            seconds = time.perf_counter() - t0
            n = sum(len(v) for v in logits.values())
            summary = {"images": n, "seconds": seconds, "samples_per_s": n / seconds,
                       **metrics.scores(logits["train"], ds.train.y, "transfer"),
                       **metrics.scores(logits["test"], ds.test.y, "test")}
            run.log_summary(summary)  # MLflow first: a failure there leaves the old file
            if distributed.is_main():
                files.save_torch(args.out, {**logits, "dataset": p.dataset,
                                         "teacher_sha256": files.file_sha256(args.teacher),
                                         "split": ds.lineage()})
    print(f"soft_targets: {n:,} images through the teacher in {seconds:.1f}s; teacher transfer-set "
          f"accuracy {summary['transfer_acc']:.4f} -> {args.out}")


if __name__ == "__main__":
    main()
