"""Stage 1: fetch the dataset, verify it, hold out a validation split, store compact tensors.

Reads params: dataset, data.*. Writes data/<dataset>/{train,val,test}.pt (uint8 images
(N, C, H, W) + int64 labels) and meta.json (classes, per-channel mean/std, sizes, source,
checksums). Run: python -m stages.download
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

from kd.data import sources, splits
from kd.process import cli
from kd.track import mlflow_runs


def main(argv: list[str] | None = None) -> None:
    ap = cli.parser(__doc__)
    ap.add_argument("--out", help="folder for the prepared splits (default: data/<dataset>)")
    ap.add_argument("--cache", default="data/raw",
                    help="where torchvision downloads to (data.root null, no local copy) and a "
                         "CIFAR archive is extracted (default: data/raw)")
    args = ap.parse_args(argv)
    p = cli.params_or_exit(args.params)
    out = Path(args.out or f"data/{p.dataset}")

    with cli.friendly_errors(), mlflow_runs.stage_run(
            "download", p.dataset, {"dataset": p.dataset, "data": asdict(p.data)}) as run:
        t0 = time.perf_counter()
        raw = sources.fetch(p.dataset, p.data.root, Path(args.cache))
        train, val = splits.split_off_validation(raw.train_x, raw.train_y, p.data.val_fraction,
                                               p.data.split_seed)
        test = splits.Split(raw.test_x, raw.test_y)
        splits.save(out, p.dataset, train, val, test, raw.classes,
                  {"source": raw.source, "checksums": raw.checksums,
                   "split": {"split_seed": p.data.split_seed, "val_fraction": p.data.val_fraction}})
        seconds = time.perf_counter() - t0
        run.log_summary({"train_images": len(train), "val_images": len(val),
                         "test_images": len(test), "seconds": seconds})
        run.set_tags({"source": raw.source})
    print(f"download: {p.dataset} from {raw.source}: {len(train):,} train / {len(val):,} val / "
          f"{len(test):,} test images {tuple(train.x.shape[1:])} -> {out} ({seconds:.1f}s)")


if __name__ == "__main__":
    main()
