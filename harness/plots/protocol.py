"""Figures of protocol v2 (book/protocol.md, book/intro.md): numbers from :mod:`harness.analysis.protocol_v2`."""
from __future__ import annotations

from ..analysis.protocol_v2 import METHOD_ORDER, method_order
from ..analysis.runs import load_logs
from ..protocol import selection_table
from ..tasks import order_tasks, task_label
from .forest import forest_rows
from .style import new_figure


def forest_figure(comps: list[dict], title: str | None = None):
    """Differences b − a with their 95 % t intervals, one row per comparison; findings filled."""
    comps = list(comps)
    fig, axes = new_figure(size=(7.5, 0.32 * len(comps) + 1.2))
    ax = axes[0, 0]
    own = "each at its own lr"
    forest_rows(ax, [dict(label=f"{task_label(c['task'])}: {c['b']} − {c['a']}"
                               + ("" if c["group"] == own else f" (lr {c['lr_a']:g}")
                               + ("" if c["group"] == own else (", ep. 1)" if c["quantity"] == "epoch1" else ")")),
                          diff=c["diff"], lo=c["lo"], hi=c["hi"], finding=c["finding"],
                          color="C3" if c["diff"] < 0 else "C0") for c in comps], zero_color="0.4", fontsize=8)
    ax.set_xlabel("b − a: paired difference of the final dev metric (95 % t interval)")
    if title:
        ax.set_title(title, fontsize=10)
    return fig


def sweep_figure(sweep_dir):
    """Final validation metric against lr, one panel per task, a line per method, the chosen lr starred."""
    table = selection_table(load_logs(sweep_dir))
    tasks = order_tasks({r["task"] for r in table})
    fig, axes = new_figure(1, len(tasks), panel=(4.2, 3.6))
    colors = {m: f"C{i}" for i, m in enumerate(METHOD_ORDER)}
    for ax, task in zip(axes[0], tasks):
        for r in sorted((r for r in table if r["task"] == task), key=lambda r: method_order([r["method"]])):
            pts = sorted((float(k), v) for k, v in r["scores"].items())
            xs, ys = [p[0] for p in pts], [max(p[1], -0.05) for p in pts]
            ax.plot(xs, ys, "-o", ms=3, lw=1.2, color=colors.get(r["method"]), label=r["method"])
            ax.plot(r["selected_lr"], r["val_score"], "*", ms=13, color=colors.get(r["method"]), mec="k", mew=0.5)
        ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.set_title(task_label(task))
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("final validation metric")
    axes[0][-1].legend(fontsize=7, loc="lower left")
    return fig
