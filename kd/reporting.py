"""The comparison table (markdown) and the learning-curve plot (PNG) of the report stage.

In:  per-model final metrics dicts and per-epoch histories (rows of plots/<name>.csv).
Out: a markdown string; a PNG written atomically.
"""

from __future__ import annotations

import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402

from kd.io import atomic_path  # noqa: E402

COLUMNS = ("model", "architecture", "parameters", "test accuracy", "test errors",
           "agreement with teacher", "test ECE", "best val epoch")


def read_history(path: Path) -> list[dict[str, float]]:
    with open(path, newline="") as fh:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(fh)]


def comparison_table(rows: list[dict]) -> str:
    """rows: dicts with name, arch and the metrics-file keys plus 'agreement'."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        agree = "—" if r["agreement"] is None else f"{100 * r['agreement']:.2f}%"
        lines.append(f"| {r['name']} | `{r['arch']}` | {r['params']:,} | "
                     f"{100 * r['test_acc']:.2f}% | {r['test_errors']} | {agree} | "
                     f"{r['test_ece']:.4f} | {r['best_epoch']} |")
    return "\n".join(lines) + "\n"


def per_class_table(names: list[str], classes: tuple[str, ...], errors: dict[str, list[int]]
                    ) -> str:
    """Test errors of each true class (rows) for each model (columns)."""
    lines = ["| class | " + " | ".join(names) + " |", "|" + "---|" * (len(names) + 1)]
    for c, label in enumerate(classes):
        lines.append(f"| {c} {label} | " + " | ".join(str(errors[n][c]) for n in names) + " |")
    return "\n".join(lines) + "\n"


def accuracy_plot(histories: dict[str, list[dict]], path: Path, title: str) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    for name, rows in histories.items():
        ax.plot([r["epoch"] for r in rows], [100 * r["test_acc"] for r in rows], marker="o",
                markersize=3, label=name)
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
