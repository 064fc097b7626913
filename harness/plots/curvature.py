"""Figures of the curvature chapter (book/curvature.md): numbers from :mod:`harness.analysis.curvature`."""
from __future__ import annotations

import numpy as np

from ..analysis.curvature import BOUNDS, QUANTITIES
from ..tasks import order_tasks, task_label
from .style import method_colors, new_figure

def marker_of(method: str) -> str:
    """A dot for the first ten methods of :data:`harness.config.METHODS`, a triangle for the rest: tab10's
    colours repeat after ten, the colour and the marker together do not."""
    from ..config import METHODS
    return "o" if method not in METHODS or METHODS.index(method) < 10 else "^"


def lr_against_curvature_figure(step0):
    """The selected learning rate against each curvature quantity at step 0, log–log: a row per quantity
    (λmax(H), its adapter block, λmax(P⁻¹H)), a column per task, a point per init (labelled); the rates at which
    the sweep's run collapsed as crosses above it; where the quantity has a stability bound (2/λmax for
    gradient descent, 38/λmax(P⁻¹H) for Adam), the bound as a dashed line."""
    tasks = order_tasks(set(step0["task"]))
    bound_of = {q: (c, label) for q, c, label in BOUNDS.values()}
    fig, axes = new_figure(len(QUANTITIES), len(tasks), panel=(3.4, 2.6), squeeze=False)
    colors = method_colors()
    for i, (q, qlabel) in enumerate(QUANTITIES.items()):
        for j, task in enumerate(tasks):
            ax = axes[i, j]
            t = step0[(step0["task"] == task) & np.isfinite(step0[q]) & (step0[q] > 0)]
            for _, r in t.iterrows():
                c = colors.get(r["method"])
                ax.scatter(r[q], r["selected_lr"], color=c, s=22, zorder=3, label=r["method"],
                           marker=marker_of(r["method"]))
                if r["collapsed_lrs"]:
                    ax.scatter([r[q]] * len(r["collapsed_lrs"]), r["collapsed_lrs"], marker="x", color=c, s=16)
            if q in bound_of and len(t):
                const, blabel = bound_of[q]
                x = np.geomspace(t[q].min() / 1.5, t[q].max() * 1.5, 50)
                (line,) = ax.plot(x, const / x, "--", color="0.35", lw=1, label=f"bound {blabel}")
                ax.legend(handles=[line], fontsize=6.5, loc="lower left")
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel(f"{qlabel} at step 0")
            ax.set_ylabel("learning rate")
            ax.set_title(f"{task_label(task)}: {qlabel}", fontsize=8.5)
    _methods_legend(fig, axes, title="selected lr (dot) and collapsed rates (×), by method")
    return fig


def spectrum_figure(step0):
    """The top-k eigenvalues of the Hessian in the trainable parameters at step 0, a line per init (k on the
    x axis), one panel per task."""
    tasks = order_tasks(set(step0["task"]))
    fig, axes = new_figure(1, len(tasks), panel=(3.4, 2.6), squeeze=False)
    colors = method_colors()
    for ax, task in zip(axes[0], tasks):
        for _, r in step0[step0["task"] == task].iterrows():
            top = list(r["top"] or [])
            if top:
                ax.plot(range(1, len(top) + 1), top, "-", marker=marker_of(r["method"]), ms=3.5,
                        color=colors.get(r["method"]), label=r["method"])
        ax.set_yscale("log")
        ax.set_xlabel("k")
        ax.set_ylabel("λ_k(H)")
        ax.set_title(task_label(task), fontsize=8.5)
    _methods_legend(fig, axes)
    return fig


def _methods_legend(fig, axes, title=None) -> None:
    """One legend below the panels with each method once (the bound lines keep their own panel legends)."""
    seen = {}
    for ax in axes.flat:
        for h, label in zip(*ax.get_legend_handles_labels()):
            if not label.startswith("bound"):
                seen.setdefault(label, h)
    fig.legend(list(seen.values()), list(seen), loc="outside lower center", ncol=5, fontsize=7, title=title,
               title_fontsize=7)
