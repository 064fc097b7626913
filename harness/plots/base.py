"""Figures of the base-size chapter (book/base.md): numbers from :mod:`harness.analysis.base`."""
from __future__ import annotations

from ..tasks import order_tasks, task_label
from .style import method_colors, new_figure


def pilot_figure(curves):
    """Dev (solid) and validation (dashed) metric against epoch, one panel per task, a line per method;
    the majority class dotted."""
    tasks = order_tasks(set(curves["task"]))
    fig, axes = new_figure(1, len(tasks), panel=(3.4, 2.8), squeeze=False)
    colors = method_colors()
    for ax, task in zip(axes[0], tasks):
        t = curves[curves["task"] == task]
        for method, g in t.groupby("method", sort=False):
            g = g.sort_values("step")
            ax.plot(g["epoch"], g["dev"], "-o", ms=3, color=colors.get(method), label=f"{method} (dev)")
            ax.plot(g["epoch"], g["val"], "--", color=colors.get(method), alpha=0.7, label=f"{method} (validation)")
        ax.axhline(t["majority"].iloc[0], ls=":", color="0.4", label="majority class")
        ax.set_title(task_label(task), fontsize=10)
        ax.set_xlabel("epoch")
        ax.set_ylabel(t["metric"].iloc[0])
    axes[0, -1].legend(fontsize=7, loc="lower right")
    return fig
