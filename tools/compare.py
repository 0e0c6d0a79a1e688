"""Compare experiments in a terminal: one line per DVC experiment, narrow enough for 120 columns.

    python -m tools.compare          # the workspace, its commit and every experiment run from it
    python -m tools.compare -n 3     # the same for the last 3 commits (dvc exp show -n 3)

Columns: Experiment, dataset, preset, seed, the distillation loss with its settings (`kd T=2
a=0.9`: T and alpha; a successor's knobs where they depart from its authors' recipe, by the first
letter after the loss's name: `dkd b=2` is DKD as mdistiller trains it but distill.dkd_beta 2,
`dkd` alone is the recipe itself: its `Loss.recipe` in kd/losses/), the teacher's, student baseline's and
distilled student's test accuracy in % (`teacher%` ...), and the distilled student's validation
accuracy (`val%`, what settings are chosen on) (metrics/*.json), as `dvc.api.exp_show` returns
them. Plain `dvc exp show` cannot show these in 120 columns: DVC prefixes a metric name that
appears in several files with the file's path (`metrics/distilled.json:test_acc`), and the table
has a column for every param. Queued, running and failed experiments show `-` for accuracies not
yet there (a failed one's metrics files are its baseline's, not its own). Exit status 1 with a
one-line message when DVC fails.
"""

from __future__ import annotations

import argparse
import sys

from kd import losses

PARAMS = ("dataset", "preset", "seed")
MODELS = ("teacher", "student", "distilled")


def _label(rec: dict) -> str:
    if rec.get("Experiment"):
        return rec["Experiment"]
    rev = str(rec.get("rev") or "")
    return rev if rev == "workspace" or len(rev) != 40 else rev[:7]


def _number(v) -> str:
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return "-" if v is None else f"{v:g}" if isinstance(v, float) else str(v)


def _accuracy(v) -> str:
    return f"{100 * v:.2f}%" if isinstance(v, int | float) else "-"


def _loss(rec: dict) -> str:
    """distill.loss and its settings, each as its first letter=value: kd's T and alpha; another
    loss's `distill.<loss>_<knob>` where it is not its authors' value, in params.yaml's order."""
    name = str(rec.get("distill.loss") or "kd")  # an experiment from before the loss was a param
    if name == "kd":
        own = {"T": rec.get("T"), "alpha": rec.get("alpha")}
    else:  # a loss this code no longer has shows all its knobs
        recipe = losses.get(name).recipe if name in losses.names() else {}
        own = {k.removeprefix(f"distill.{name}_"): v for k, v in rec.items()
               if k.startswith(f"distill.{name}_") and recipe.get(k.removeprefix(f"distill.{name}_")) != v}
    return " ".join([name, *(f"{k[0]}={_number(v)}" for k, v in own.items())])


def rows(records: list[dict]) -> list[list[str]]:
    """`dvc.api.exp_show()` records -> table cells, header first."""
    header = ["Experiment", *PARAMS, "loss", *(f"{model}%" for model in MODELS), "val%"]
    out = [header]
    for rec in records:
        state = rec.get("State")
        name = _label(rec) + (f" ({state.lower()})" if state and state != "Success" else "")
        # A failed experiment's metrics files are its baseline's, left as they were: not its own.
        scores = {} if state == "Failed" else rec
        out.append([name, *(_number(rec.get(p)) for p in PARAMS), _loss(rec),
                    *(_accuracy(scores.get(f"metrics/{model}.json:test_acc")) for model in MODELS),
                    _accuracy(scores.get("metrics/distilled.json:val_acc"))])
    return out


def render(table: list[list[str]]) -> str:
    """Left-aligned text columns (numbers right-aligned), two spaces apart."""
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    numeric = [i >= 3 and i != 4 for i in range(len(widths))]  # seed onwards, but the loss
    lines = []
    for r in table:
        cells = [c.rjust(w) if num else c.ljust(w) for c, w, num in zip(r, widths, numeric, strict=True)]
        lines.append("  ".join(cells).rstrip())
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n", 1)[1])
    ap.add_argument("-n", "--num", type=int, default=1,
                    help="how many commits back from HEAD to show, with their experiments "
                         "(default: 1)")
    args = ap.parse_args(argv)
    import dvc.api
    from dvc.exceptions import DvcException

    try:
        records = dvc.api.exp_show(num=args.num)
    except DvcException as e:
        print(f"error: dvc exp show: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    print(render(rows(records)))


if __name__ == "__main__":
    main()
