"""Figures of the bi-encoder study (book/biencoder.md): numbers from :mod:`harness.analysis.biencoder`."""
from __future__ import annotations

import numpy as np

from ..analysis.biencoder import LABELS, BiStudy, curves
from ..tasks import task_label
from .forest import forest_rows
from .style import method_colors, new_figure


def zero_to_final_figure(study: BiStudy):
    """Per task, per method: the step-0 main metric (hollow) and each seed's final one (dots, bar = mean);
    the dashed line is the pretrained model."""
    tasks, colors = study.tasks(), method_colors()
    fig, axes = new_figure(1, len(tasks), panel=(4.6, 3.6))
    for ax, task in zip(axes[0], tasks):
        methods = study.methods(task)
        z = study.pretrained(task)
        ax.axhline(z, ls="--", color="0.45", lw=1, label="pretrained (zero-shot)")
        for i, m in enumerate(methods):
            zero = study.values(task, m, "zero")
            final = list(study.values(task, m).values())
            if zero:
                z0 = float(np.mean(list(zero.values())))
                ax.plot(i - 0.18, z0, "o", ms=7, mfc="white", mec=colors[m], mew=1.5)
                ax.annotate("", (i + 0.1, np.mean(final)), (i - 0.14, z0),
                            arrowprops=dict(arrowstyle="->", color=colors[m], lw=0.9, alpha=0.7))
            ax.plot([i + 0.18] * len(final), final, "o", ms=4, color=colors[m], alpha=0.8)
            ax.plot([i + 0.06, i + 0.30], [np.mean(final)] * 2, color=colors[m], lw=2)
        ax.set_xticks(range(len(methods)), methods, rotation=35, ha="right", fontsize=8)
        ax.set_ylabel(f"dev {LABELS.get(study.metric(task), study.metric(task))}")
        ax.set_title(task_label(task), fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend(fontsize=7, loc="lower left")
    return fig


def shift_figure(study: BiStudy):
    """Final main metric minus the pretrained model's against how far the run moved the embedding space: the
    mean cosine of each dev sentence's pretrained and final embeddings (``pre1``), one dot per run; a run
    without it (a step-0-changing init with no drift file) is left out."""
    tasks, colors = study.tasks(), method_colors()
    fig, axes = new_figure(1, len(tasks), panel=(4.4, 3.5))
    for ax, task in zip(axes[0], tasks):
        z = study.pretrained(task)
        for m in study.methods(task):
            shift, final = study.values(task, m, "pre1"), study.values(task, m)
            seeds = sorted(set(shift) & set(final))
            ax.plot([shift[s] for s in seeds], [final[s] - z for s in seeds], "o", ms=5, color=colors[m],
                    alpha=0.85, label=m)
        ax.axhline(0, color="0.45", lw=0.8, ls="--")
        ax.set_xlabel("mean cosine, pretrained vs final dev embeddings")
        ax.set_ylabel(f"final − pretrained {LABELS.get(study.metric(task), study.metric(task))}")
        ax.set_title(task_label(task), fontsize=10)
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7)
    return fig


def curves_figure(study: BiStudy):
    """Dev main metric against training step from step 0, mean over seeds, one line per method."""
    tasks, colors = study.tasks(), method_colors()
    fig, axes = new_figure(1, len(tasks), panel=(4.4, 3.4))
    for ax, task in zip(axes[0], tasks):
        ax.axhline(study.pretrained(task), ls="--", color="0.45", lw=1)
        for m in study.methods(task):
            xs, ys = curves(study, task, m)
            ax.plot(xs, ys, "-o", ms=3, lw=1.3, color=colors[m], label=m)
        ax.set_xlabel("training step")
        ax.set_ylabel(f"dev {LABELS.get(study.metric(task), study.metric(task))}")
        ax.set_title(task_label(task), fontsize=10)
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7)
    return fig


def forest_figure(comps: list[dict]):
    """The page's comparisons with their 95 % t intervals; filled = a finding after Holm."""
    fig, axes = new_figure(size=(7.5, 0.3 * len(comps) + 1.2))
    forest_rows(axes[0, 0], [dict(label=f"{task_label(c['task'])}: {c['b']} − {c['a']}", diff=c["diff"],
                                  lo=c["lo"], hi=c["hi"], finding=c["finding"],
                                  color="C3" if c["diff"] < 0 else "C0") for c in comps],
                zero_color="0.4", fontsize=8)
    axes[0, 0].set_xlabel("paired difference of the final dev main metric over seeds (95 % t interval)")
    return fig
