"""The comparison table (markdown) and the learning-curve plot (PNG) of the report stage.

In:  per-model final metrics dicts and per-epoch histories (rows of plots/<name>.csv).
Out: a markdown string; PNG bytes (the report stage writes both together, after logging them).
`markdown_table` is the project's one markdown-table renderer: the sweep and benchmarks use it too.
"""

from __future__ import annotations

import csv
import io as _io
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402

from kd.io import UnreadableFile  # noqa: E402
from kd.params import describe_loss  # noqa: E402

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


# What each training run measured of its model's speed (kd/cost.py), read back from MLflow.
TIMINGS = ("latency_ms", "throughput_per_s", "cost_threads")


def _size(n: int) -> str:
    return f"{n / 2**20:.2f} MiB" if n >= 2**20 else f"{n / 2**10:.1f} KiB"


def _flops(n: float) -> str:
    return f"{n / 1e9:.3g} G" if n >= 1e9 else f"{n / 1e6:.3g} M" if n >= 1e6 else f"{n / 1e3:.3g} k"


def cost_table(rows: list[dict]) -> str:
    """Each model's size and compute (metrics files) and CPU speed (its training run; "—" where
    tracking was off)."""
    def timing(r: dict, key: str, fmt: str) -> str:
        return format(r[key], fmt) if key in r else "—"
    return markdown_table(
        ["model", "parameters", "FLOPs / image", "weights", "latency, batch 1 (ms)",
         "throughput, batch 256 (images/s)", "CPU threads"],
        [[r["name"], f"{r['params']:,}", _flops(r["flops_per_image"]) if "flops_per_image" in r else "—",
          _size(r["size_bytes"]) if "size_bytes" in r else "—", timing(r, "latency_ms", ".3f"),
          timing(r, "throughput_per_s", ",.0f"), timing(r, "cost_threads", ".0f")] for r in rows])


def per_class_table(names: list[str], classes: list[str], errors: dict[str, list[int]]
                    ) -> str:
    """Test errors of each true class (rows) for each model (columns)."""
    return markdown_table(["class", *names], [[f"{c} {label}", *(errors[n][c] for n in names)]
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


def report_markdown(p, experiment: str, rows: list[dict], head: dict, distilled: dict,
                    class_names: list[str], per_class: dict[str, list[int]]) -> str:
    teacher_lead = head["teacher_test_acc"] - head["student_test_acc"]
    bias = ""
    if "test_errors_uncorrected" in distilled:
        bias = (f"\n\nThe transfer set lacked some classes: raising their logits by "
                f"{distilled['bias_correction']:.1f} took the distilled student from "
                f"{distilled['test_errors_uncorrected']} to {distilled['test_errors']} test errors.")
    return (f"# Distillation report: {p.dataset}, {describe_loss(p)}, seed {p.seed}\n\n"
            f"Experiment {code_span(experiment)}, preset {code_span(p.preset)}.\n\n"
            f"{comparison_table(rows)}\n"
            f"Distillation changed the student's test accuracy by {100 * head['gain']:+.2f} points "
            f"({head['student_test_errors']} -> {head['distilled_test_errors']} errors); the "
            f"teacher is {100 * teacher_lead:+.2f} points from the student baseline.{bias}\n\n"
            f"![test accuracy per epoch](accuracy.png)\n\n"
            f"## What each model costs\n\n{cost_table(rows)}\n"
            "FLOPs count a multiply-add as 2 (torch.utils.flop_counter); weights are the bytes of "
            "the saved state_dict; latency and throughput are medians on this machine's CPU "
            "(kd/cost.py).\n\n![test accuracy against FLOPs per image](cost.png)\n\n"
            f"## Test errors per class\n\n{per_class_table(list(per_class), class_names, per_class)}")


def cost_png(rows: list[dict], others: list[dict], title: str) -> bytes:
    """Test accuracy against FLOPs per image (log axis): this execution's three models as labelled
    points, and `others` (dicts of flops_per_image, test_acc, loss: other experiments' distilled
    students) as small points beside them, one colour per loss."""
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, loss in enumerate(sorted({o["loss"] for o in others})):
        mine = [o for o in others if o["loss"] == loss]
        # Just right of their FLOPs (x 1.1): students of one architecture share this execution's
        # distilled student's x, whose marker would hide them.
        ax.scatter([1.1 * o["flops_per_image"] for o in mine], [100 * o["test_acc"] for o in mine],
                   s=14, alpha=0.5, color=colors[(i + 3) % len(colors)],
                   label=f"other experiments' distilled students, {loss} ({len(mine)}), at x 1.1")
    for r, marker in zip(rows, ("s", "D", "o"), strict=True):
        ax.scatter([r["flops_per_image"]], [100 * r["test_acc"]], s=80, marker=marker,
                   edgecolor="black", zorder=3, label=f"{r['name']}: {100 * r['test_acc']:.2f}%, "
                   f"{_flops(r['flops_per_image'])}FLOPs, {r['params']:,} parameters")
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: _flops(v)))  # 3 M, not 3x10^6
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: _flops(v)))
    ax.set_xlabel("FLOPs per image (log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize="small")
    fig.tight_layout()
    buf = _io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def accuracy_png(histories: dict[str, list[dict]], selected: dict[str, int], title: str
                 ) -> bytes:
    """Test accuracy per epoch, one colour per model; a ring marks the epoch each model keeps
    (the best validation accuracy), whose test accuracy is the one the report states."""
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    for name, rows in histories.items():
        epochs = [r["epoch"] for r in rows]
        acc = [100 * r["test_acc"] for r in rows]
        best = epochs.index(selected[name])
        # The value in the legend, not beside the ring: two models may keep the same epoch.
        (line,) = ax.plot(epochs, acc, marker="o", markersize=3,
                          label=f"{name}: {acc[best]:.2f}% (epoch {selected[name]})")
        ax.plot(epochs[best], acc[best], marker="o", markersize=11, markerfacecolor="none",
                markeredgewidth=1.8, color=line.get_color())
    ax.plot([], [], marker="o", markersize=9, markerfacecolor="none", color="gray", ls="none",
            label="selected epoch (best validation)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    buf = _io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()
