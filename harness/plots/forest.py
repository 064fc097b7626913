"""The one forest-plot drawing: one row per comparison, its 95 % interval as a line and the difference
as a dot, filled for a finding (an adjusted p below the threshold), hollow otherwise."""
from __future__ import annotations

import numpy as np


def forest_rows(ax, rows: list[dict], zero_color="k", fontsize=None) -> None:
    """Draw ``rows`` top to bottom on ``ax``: each a dict with label, diff, lo, hi, finding, color."""
    y = np.arange(len(rows))[::-1]
    for yi, r in zip(y, rows):
        ax.plot([r["lo"], r["hi"]], [yi, yi], color=r["color"], lw=1.6)
        ax.plot(r["diff"], yi, "o", color=r["color"], mfc=r["color"] if r["finding"] else "white", ms=6)
    ax.axvline(0, color=zero_color, lw=0.8)
    ax.set_yticks(y, [r["label"] for r in rows], fontsize=fontsize)
    ax.grid(axis="x", alpha=0.3)
