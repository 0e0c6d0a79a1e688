"""The report stage's markdown: the comparison, cost and per-class tables, and the headline.

In:  per-model final metrics dicts (metrics/<name>.json) and per-epoch histories (rows of
     plots/<name>.csv).
Out: a markdown string that depends on those files and params alone, so the same inputs give the
     same report.md on any machine and store.
`markdown_table` is the project's one markdown-table renderer: the sweep and benchmarks use it too.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

from kd.process.files import UnreadableFile

COLUMNS = ("model", "architecture", "parameters", "test accuracy", "test errors",
           "agreement with teacher", "test ECE", "best val epoch")


def read_history(path: Path) -> list[dict[str, float]]:
    """The rows of a plots/<name>.csv as numbers; a missing or mangled file is one line."""
    try:
        with open(path, newline="") as fh:
            rows = [{k: float(v) for k, v in row.items()} for row in csv.DictReader(fh)]
    except FileNotFoundError:
        raise UnreadableFile(f"{path}: no such file (run the stage that writes it)") from None
    except (ValueError, TypeError, csv.Error, UnicodeDecodeError) as e:
        raise UnreadableFile(f"{path}: not a per-epoch history CSV ({e})") from None
    if not rows or not {"epoch", "test_acc"} <= set(rows[0]):
        raise UnreadableFile(f"{path}: not a per-epoch history CSV (no rows, or no epoch and "
                             "test_acc columns)")
    return rows


def code_span(text: str) -> str:
    """`text` as a Markdown code span that shows it literally, whatever it holds: `jumpy-bats`.

    Experiment names are user input (`dvc exp run -n`, DVC_EXP_NAME) and the report is read
    rendered. Inside a code span Markdown shows every character as typed: no HTML, no entities, no
    emphasis (so escaping & < > as entities here would garble them: `&lt;` shows as `&lt;`). The
    only ways out of a span are its closing delimiter and a blank line, so the delimiter is one
    backtick longer than the longest run of backticks in `text`, padded with a space when `text`
    starts or ends with a backtick or a space (the renderer strips one from each side), and line
    breaks become spaces. In a table cell, markdown_table escapes `|` as well.
    """
    text = " ".join(text.splitlines())
    fence = "`" * (1 + max(map(len, re.findall("`+", text)), default=0))
    pad = " " if text[:1] in ("`", " ") or text[-1:] in ("`", " ") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def markdown_table(header: list[str], rows: list[list]) -> str:
    """A markdown table: the header, the `|---|` line, then one line per row (cells as str(), a `|`
    in a cell escaped, since it would split the cell even inside a code span)."""
    def line(cells: list) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"
    return "\n".join([line(header), "|" + "---|" * len(header), *map(line, rows)]) + "\n"


def comparison_table(rows: list[dict]) -> str:
    """rows: dicts with name, arch and the metrics-file keys plus 'agreement'."""
    return markdown_table(list(COLUMNS), [
        [r["name"], code_span(r["arch"]), f"{r['params']:,}", f"{100 * r['test_acc']:.2f}%",
         r["test_errors"], "—" if r["agreement"] is None else f"{100 * r['agreement']:.2f}%",
         f"{r['test_ece']:.4f}", r["best_epoch"]] for r in rows])


def size(n: int) -> str:
    return f"{n / 2**20:.2f} MiB" if n >= 2**20 else f"{n / 2**10:.1f} KiB"


def flops(n: float) -> str:
    return f"{n / 1e9:.3g} G" if n >= 1e9 else f"{n / 1e6:.3g} M" if n >= 1e6 else f"{n / 1e3:.3g} k"


def cost_table(rows: list[dict]) -> str:
    """Each model's size and compute, as its metrics file records them. Its speed on the machine
    that trained it is in its MLflow run (latency_ms, throughput_per_s): a measurement of that
    machine, which would make this file differ from one machine to the next."""
    return markdown_table(
        ["model", "parameters", "FLOPs / image", "weights"],
        [[r["name"], f"{r['params']:,}", flops(r["flops_per_image"]), size(r["size_bytes"])]
         for r in rows])


def per_class_table(names: list[str], classes: list[str], errors: dict[str, list[int]]
                    ) -> str:
    """Test errors of each true class (rows) for each model (columns); a class is its index and
    its name, or its index alone where the name is the index (digits: `3`, not `3 3`)."""
    return markdown_table(["class", *names], [
        [str(c) if label == str(c) else f"{c} {label}", *(errors[n][c] for n in names)]
        for c, label in enumerate(classes)])


def headline(finals: dict[str, dict], student_agreement: float, distilled_agreement: float
             ) -> dict[str, float]:
    """The pipeline run's metrics: each model's validation accuracy (what settings are chosen on),
    test accuracy and errors, the gain, agreement. The distilled student's validation accuracy
    comes first: MLflow's compare view opens its parallel-coordinates chart on the first metric."""
    out: dict[str, float] = {}
    for name in ("distilled", "student", "teacher"):  # distilled_val_acc first
        out[f"{name}_val_acc"] = finals[name]["val_acc"]
        out[f"{name}_test_acc"] = finals[name]["test_acc"]
        out[f"{name}_test_errors"] = finals[name]["test_errors"]
    out["gain"] = finals["distilled"]["test_acc"] - finals["student"]["test_acc"]
    out["student_agreement"] = student_agreement
    out["distilled_agreement"] = distilled_agreement
    return out


def report_markdown(p, loss: str, rows: list[dict], head: dict, distilled: dict,
                    class_names: list[str], per_class: dict[str, list[int]]) -> str:
    teacher_lead = head["teacher_test_acc"] - head["student_test_acc"]
    bias = ""
    if "test_errors_uncorrected" in distilled:
        bias = (f"\n\nThe transfer set lacked some classes: raising their logits by "
                f"{distilled['bias_correction']:.1f} took the distilled student from "
                f"{distilled['test_errors_uncorrected']} to {distilled['test_errors']} test errors.")
    return (f"# Distillation report: {p.dataset}, {loss}, seed {p.seed}\n\n"
            f"Preset {code_span(p.preset)}.\n\n"
            f"{comparison_table(rows)}\n"
            f"Distillation changed the student's test accuracy by {100 * head['gain']:+.2f} points "
            f"({head['student_test_errors']} -> {head['distilled_test_errors']} errors); the "
            f"teacher is {100 * teacher_lead:+.2f} points from the student baseline.{bias}\n\n"
            f"![test accuracy per epoch](accuracy.png)\n\n"
            f"## What each model costs\n\n{cost_table(rows)}\n"
            "FLOPs count a multiply-add as 2 (torch.utils.flop_counter); weights are the bytes of "
            "the saved state_dict. Each model's speed on the machine that trained it is in its "
            "MLflow run (latency_ms, throughput_per_s).\n\n"
            "![test accuracy against FLOPs per image](cost.png)\n\n"
            f"## Test errors per class\n\n{per_class_table(list(per_class), class_names, per_class)}")
