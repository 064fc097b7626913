"""Figures of the planted-update experiment: numbers from :mod:`harness.analysis.planted`."""
from __future__ import annotations

import numpy as np

from ..analysis.planted import SUBSPACE_LABELS, Planted
from .style import method_colors, new_figure


def recovery_figure(pl: Planted, key: str = "rel_err", ylabel: str = "‖ΔW − ΔW*‖_F / ‖ΔW*‖_F"):
    """One panel per planted subspace: ``key`` against step for each init (mean over seeds, band ± sd)."""
    subs, colors = pl.subspaces(), method_colors()
    fig, axes = new_figure(1, len(subs), panel=(4.2, 3.4), sharey=True)
    for ax, sub in zip(axes[0], subs):
        for init in pl.inits():
            if not pl.has(sub, init):
                continue
            steps, mean, sd = pl.curve(sub, init, key)
            mean, sd = np.asarray(mean), np.nan_to_num(np.asarray(sd))
            ax.plot(steps, mean, "-", lw=1.4, color=colors.get(init), label=init)
            ax.fill_between(steps, mean - sd, mean + sd, color=colors.get(init), alpha=0.15, lw=0)
        ax.set_title(SUBSPACE_LABELS[sub], fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(ylabel)
    axes[0][-1].legend(fontsize=7)
    return fig
