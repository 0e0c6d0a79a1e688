"""Stage 5: train the student network on the teacher's soft targets.

The loss is distill.loss's whole training loss (kd/losses/<loss>.py): kd, Hinton et al. (2015) eq. 2,
alpha * T^2 * KL(softmax(teacher/T) || softmax(student/T)) + (1 - alpha) * CE(student, y); or one
of its successors dkd, ls and dist, each as its authors combine it with the cross-entropy.

With no augmentation (distill.shift = 0, distill.flip = false, distill.mixup = 0) the student
sees exactly the images the teacher saw when the soft targets were cached, so the cached logits
are used. With augmentation, cached logits would be for other pixels: the teacher then runs (eval
mode, no_grad) on the very same augmented, mixed batch as the student ("consistent" teaching,
Beyer et al. 2022). Under kd with alpha = 1 (function matching) no label is read.

The transfer set can leave classes out, keep only some, or use a fraction of the training split
(distill.omit_classes, keep_classes, fraction; Hinton et al. section 3); classes it lacks get
the bias correction (distill.bias_correction, a number or auto: chosen on validation).

Reads params: dataset, seed, T and alpha (kd's), distill.* (training and the loss), student.* (the
network). Writes
model/distilled.pt, metrics/distilled.json, plots/distilled.csv and one MLflow run that records
the teacher's run id. Run: python -m stages.distill
"""

from __future__ import annotations

from pathlib import Path

import torch

from kd import losses
from kd.data import splits
from kd.datasets import resolve_arch
from kd.errors import PipelineError
from kd.process import cli, distributed, files
from kd.track import lineage, lookup, mlflow_runs
from kd.train import device, loop, metrics, steps, transfer
from kd.train.teaching import Teacher


def check_lineage(soft: dict, path: Path, teacher: Path, ds: splits.Dataset) -> None:
    """Cached logits are only the teacher's for the rows they were computed on, by the checkpoint
    that computed them: refuse any other pairing."""
    if soft["split"] != ds.lineage() or len(soft["train"]) != len(ds.train):
        raise PipelineError(f"{path}: soft targets were computed on another split "
                            f"({soft['split']}, not {ds.lineage()}); run the soft_targets stage")
    made_by = soft["teacher_sha256"]
    if made_by != files.file_sha256(teacher):
        raise PipelineError(f"{path}: soft targets were made by another teacher checkpoint "
                            f"(sha256 {made_by[:12]}..., not {teacher}'s); run the soft_targets stage")


def main(argv: list[str] | None = None) -> None:
    ap = cli.parser(__doc__)
    cli.data_option(ap)
    cli.path_option(ap, "soft-targets", "model/soft_targets.pt", "cached teacher logits")
    cli.path_option(ap, "teacher", "model/teacher.pt",
                    "run online when distill.shift, flip or mixup augment the batches")
    cli.model_outputs(ap, "distilled")
    args = ap.parse_args(argv)
    p = cli.params_or_exit(args.params, losses.validate)
    loss = losses.get(p.distill.loss)

    with cli.friendly_errors(), distributed.session():
        torch.manual_seed(p.seed)
        dev = device.pick()
        folder = Path(args.data or f"data/{p.dataset}")
        ds = splits.load(folder).to(dev)
        soft = files.load_torch(args.soft_targets, ("train", "val", "test", "dataset",
                                                 "teacher_sha256", "split"),
                             "soft-targets file", map_location=dev)
        check_lineage(soft, args.soft_targets, args.teacher, ds)
        # The transfer set: all of train by default, or the paper's omitted/kept classes, fraction.
        t = p.distill
        subset = transfer.transfer_indices(ds.train.y, t.omit_classes, t.keep_classes, t.fraction,
                                           p.seed).to(dev)
        missing = transfer.absent_classes(ds.train.y, subset, ds.num_classes)
        ds.train = splits.Split(ds.train.x[subset], ds.train.y[subset])
        # Cached logits are for un-augmented images: with augmentation the teacher runs online.
        online = p.distill.shift > 0 or p.distill.flip or p.distill.mixup > 0
        logits = ({"model": steps.load_checkpoint(args.teacher, dev)[0]} if online
                  else {"cached": soft["train"][subset]})
        teacher = Teacher(loss, loss.values(p), p.distill.epochs, setting=losses.describe(p),
                          **logits)

        arch = resolve_arch(p.student.arch, p.dataset, "student")
        model = steps.build_model(arch, p.student, ds)
        steps.announce("distill", arch, model, ds, p.distill)
        out = steps.Outputs("distilled", args.model, args.metrics, args.plots)
        settings = steps.run_params(p, arch, p.student, p.distill) | losses.settings(p)
        with mlflow_runs.stage_run("distill", p.dataset, settings, tags={
                "teacher_run_id": lookup.run_of(args.teacher),
                "soft_targets": "online" if online else "cached"}) as run:
            run.log_splits(folder, p.dataset)
            fit = loop.fit(model, ds, p.distill, seed=p.seed, teacher=teacher,
                           max_norm=p.student.max_norm, run=run, label="distill")
            correction = transfer.correct_bias(model, ds, missing, t.bias_correction)
            result = steps.evaluate(model, ds, fit)
            result.summary.update(transfer_images=len(subset), **correction,
                                  agreement=metrics.agreement(result.test_logits, soft["test"]))
            steps.save(run, out, model, arch, p.student, ds, result, register_tags={
                "experiment": lineage.experiment_name(), "dataset": p.dataset, "seed": p.seed,
                **losses.settings(p),
                "val_acc": round(result.summary["val_acc"], 6),  # what picks the one to ship
                "test_acc": round(result.summary["test_acc"], 6), "run_id": run.run_id})
        steps.conclude("distill", result, fit)


if __name__ == "__main__":
    main()
