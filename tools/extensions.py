"""Write docs/extensions.md: the losses and datasets this code has, read from their registries
(kd/losses/, kd/datasets/), so the docs never list them by hand. Run it after adding either:

    python -m tools.extensions            # rewrites docs/extensions.md
    python -m tools.extensions --check    # exit 1 if the file is not what the registries say
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from kd import datasets, losses
from kd.config.params import allowed
from kd.process import files
from kd.report.tables import markdown_table

OUT = Path(__file__).resolve().parents[1] / "docs" / "extensions.md"


def _number(v: float) -> str:
    return f"{v:g}"


def loss_table() -> str:
    rows = []
    for loss in map(losses.get, losses.names()):
        knobs = "<br>".join(f"`{loss.key(k)}`: {allowed(kind)}"
                            + (f"; authors' {_number(loss.recipe[k])}" if k in loss.recipe else "")
                            for k, kind in loss.knobs.items())
        rows.append([f"`{loss.name}`", loss.paper, loss.source, knobs])
    return markdown_table(["`distill.loss`", "paper", "follows", "knobs"], rows)


def dataset_table() -> str:
    rows = []
    for ds in map(datasets.get, datasets.names()):
        where = ", ".join(filter(None, [f"`{ds.system_dir}`" if ds.system_dir else "",
                                        f"torchvision `{ds.torchvision}`" if ds.torchvision else "",
                                        "bundled with scikit-learn" if ds.format == "sklearn-digits"
                                        else "`data.root`"]))
        rows.append([f"`{ds.name}`", ds.classes, f"{ds.side}x{ds.side}", ds.format,
                     ", ".join(f"`{p}`" for p in ds.presets) or "-", where])
    return markdown_table(["`dataset`", "classes", "images", "format", "presets", "found in"], rows)


def page() -> str:
    return ("# Extensions: the losses and datasets this code has\n\n"
            "Written by `python -m tools.extensions` from the registries (`kd/losses/`, "
            "`kd/datasets/`); do not edit by hand. How to add one: "
            "[architecture.md](architecture.md#adding-a-loss).\n\n"
            f"## Distillation losses\n\n{loss_table()}\n"
            "Why the shipped defaults are what they are: [results.md](results.md#distillation-losses).\n\n"
            f"## Datasets\n\n{dataset_table()}\n"
            "Where each copy comes from and how it is verified: [datasets.md](datasets.md).\n")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="only say whether the file is current")
    ap.add_argument("--out", type=Path, default=OUT, help="the file to write (default: %(default)s)")
    args = ap.parse_args(argv)
    text = page()
    if args.check:
        current = args.out.read_text() if args.out.is_file() else ""
        if current != text:
            print(f"error: {args.out} is not what kd/losses/ and kd/datasets/ register; "
                  "run: python -m tools.extensions", file=sys.stderr)
            raise SystemExit(1)
        print(f"{args.out} is current")
        return
    files.write_text(args.out, text)
    print(f"extensions: wrote {args.out}")


if __name__ == "__main__":
    main()
