"""Figures of the init study (book/inits.md): numbers from :mod:`harness.analysis.inits`."""
from __future__ import annotations

import numpy as np
import pandas as pd

from ..analysis.inits import NEW, OUTCOMES, STEP0_CHANGED, TASKS, capture_layers
from ..tasks import task_label
from .forest import forest_rows
from .style import new_figure


def forest_figure(comp: pd.DataFrame):
    """Paired difference init − random with its 95 % interval, one panel per task; filled = Holm finding."""
    tasks = [t for t in TASKS if t in set(comp["task"])]
    fig, axes = new_figure(1, len(tasks), panel=(4.8, 4.6))
    for ax, task in zip(axes[0], tasks):
        c = comp[comp["task"] == task].reset_index(drop=True)
        forest_rows(ax, [dict(label=f"{row['init']} (n={row['n']})", diff=row["diff"], lo=row["lo"], hi=row["hi"],
                              finding=row["finding"],
                              color="C3" if row["init"] in STEP0_CHANGED else ("C1" if row["init"] in NEW else "C0"))
                         for _, row in c.iterrows()])
        metric = "accuracy" if task == "mrpc" else "MCC"
        ax.set_xlabel(f"Δ final dev {metric} vs random")
        ax.set_title(task_label(task))
    return fig


def scatter_figure(points: pd.DataFrame, corr: pd.DataFrame):
    """Capture (x, log scale) against each outcome (columns) per task (rows), points labelled by init;
    hollow = the model changes at step 0; panel title: Spearman ρ [95 % CI] over all inits."""
    tasks = [t for t in TASKS if t in set(points["task"])]
    fig, axes = new_figure(len(tasks), len(OUTCOMES), panel=(4.4, 3.6))
    for i, task in enumerate(tasks):
        pt = points[points["task"] == task]
        for j, q in enumerate(OUTCOMES):
            ax = axes[i][j]
            for _, row in pt.iterrows():
                color = "C3" if row["step0_changed"] else ("C1" if row["init"] in NEW else "C0")
                ax.plot(row["capture"], row[q], "o", color=color, mfc="white" if row["step0_changed"] else color, ms=5)
                ax.annotate(row["init"], (row["capture"], row[q]), fontsize=7, xytext=(3, 2),
                            textcoords="offset points")
            ax.set_xscale("log")
            c = corr[(corr["task"] == task) & (corr["outcome"] == q) & (corr["inits"] == "all")].iloc[0]
            name = task_label(task)
            ax.set_title(f"{name}: ρ = {c['rho']:.2f} [{c['lo']:.2f}, {c['hi']:.2f}]", fontsize=9)
            ax.set_xlabel("step-0 capture (mean over layers)")
            ax.set_ylabel(OUTCOMES[q], fontsize=8)
            ax.grid(alpha=0.3)
    return fig


def heatmap_figure(capture: dict):
    """Capture per layer (columns) and init (rows), one panel per task, mean over seeds; the last two rows
    are G's top-r and top-2r energy shares (the ceilings)."""
    tasks = [t for t in TASKS if any(p["task"] == t for p in capture["parts"])]
    fig, axes = new_figure(1, len(tasks), panel=(5.2, 5.0))
    im = None
    for ax, task in zip(axes[0], tasks):
        mat = capture_layers(capture, task)
        im = ax.imshow(mat.values, vmin=0, vmax=1, cmap="viridis", aspect="auto")
        ax.set_xticks(range(mat.shape[1]), mat.columns, rotation=90, fontsize=7)
        ax.set_yticks(range(mat.shape[0]), mat.index, fontsize=7)
        ax.axhline(mat.shape[0] - 2.5, color="w", lw=1.5)
        for (yi, xi), v in np.ndenumerate(mat.values):
            label = f"{v:.2f}"
            ax.text(xi, yi, label[1:] if label.startswith("0") else label, ha="center", va="center", fontsize=7,
                    color="k" if v > 0.6 else "w")
        ax.set_xlabel("layer (block.q / block.v)")
        ax.set_title(task_label(task))
    if im is not None:
        fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label="capture")
    return fig

