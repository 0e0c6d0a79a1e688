"""The report stage's figures, as PNG bytes: test accuracy per epoch, and accuracy against compute.

In:  each model's per-epoch history (rows of plots/<name>.csv) and its metrics-file summary.
Out: PNG bytes (the report stage writes them with report.md, after logging them).
"""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402

from kd.report.tables import flops  # noqa: E402


def _png(fig) -> bytes:
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def cost_png(rows: list[dict], title: str) -> bytes:
    """Test accuracy against FLOPs per image (log axis): the three models as labelled points."""
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    for r, marker in zip(rows, ("s", "D", "o"), strict=True):
        ax.scatter([r["flops_per_image"]], [100 * r["test_acc"]], s=80, marker=marker,
                   edgecolor="black", zorder=3, label=f"{r['name']}: {100 * r['test_acc']:.2f}%, "
                   f"{flops(r['flops_per_image'])}FLOPs, {r['params']:,} parameters")
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: flops(v)))  # 3 M, not 3x10^6
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: flops(v)))
    ax.set_xlabel("FLOPs per image (log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize="small")
    return _png(fig)


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
    return _png(fig)
