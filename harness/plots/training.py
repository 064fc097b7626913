"""Training curves of a grid: one run (train.ipynb), convergence per task, paired differences to random
init, and the learning-rate figures.  Each figure function saves PNGs under ``fig_dir`` and returns
manifest entries ``{name: {"path", "caption", "runs"}}`` whose caption names the runs and their lr."""
from __future__ import annotations

import numpy as np

from ..analysis.findings import paired, points_table
from ..analysis.runs import (at_main_lr, describe_runs, fmt_lr, load_logs, method_order, num,
                             runs_table)
from ..tasks import order_tasks, task_label
from .style import display_entries, entry, method_colors, new_figure, save, style


def show_run(log: dict) -> None:
    """Print one run's outcome and plot its dev metric and training loss against steps."""
    import matplotlib.pyplot as plt

    if log["status"] != "ok":
        print(f"{log['run_id']}: FAILED: {log['reason']}")
        return
    m = log["task"]["main_metric"]
    base = log["task"]["majority_baseline"].get(m)
    print(f"{log['run_id']}: final {m} = {log['final'][m]:.4f}, best {log['best'][m]:.4f} at step "
          f"{log['best']['step']}, majority baseline {base if base is None else round(base, 4)}; "
          f"{log['params']['trainable']:,} trainable parameters; {log['wall_time_s']:.0f} s")
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3))
    loss = log["history"]["train_loss"]
    ax1.plot(range(1, len(loss) + 1), loss, lw=0.6)
    ax1.set(xlabel="step", ylabel="train loss", title="training loss")
    ev = log["history"]["evals"]
    ax2.plot([e["step"] for e in ev], [e[m] for e in ev], marker="o", ms=3)
    if base is not None:
        ax2.axhline(base, ls="--", c="grey", lw=0.8, label="majority class")
        ax2.legend()
    ax2.set(xlabel="step", ylabel=f"dev {m}", title=f"{log['config']['task']} / {log['config']['method']}")
    fig.tight_layout()
    plt.show()


def _variant_labels(logs: list[dict]) -> dict[str, str]:
    """run_id → label: the method, plus lr when lr varies within that (task, method)."""
    lrs: dict[tuple, set] = {}
    for lg in logs:
        c = lg["config"]
        lrs.setdefault((c["task"], c["method"]), set()).add(c.get("lr"))
    out = {}
    for lg in logs:
        c = lg["config"]
        lab = c["method"]
        if len(lrs[(c["task"], c["method"])]) > 1:
            lab += f" lr={fmt_lr(c.get('lr'))}"
        out[lg["run_id"]] = lab
    return out


def _eval_frame(logs: list[dict], metric: str, x: str = "epoch"):
    """DataFrame indexed by x (epoch or step), one column per run, values of ``metric`` (NaN if null)."""
    import pandas as pd
    cols = {}
    for lg in logs:
        ev = lg["history"]["evals"]
        s = pd.Series([num(e.get(metric)) for e in ev], index=[float(e[x]) for e in ev])
        cols[lg["run_id"]] = s[~s.index.duplicated(keep="last")]
    return pd.DataFrame(cols).sort_index()


def _loss_frame(logs: list[dict], x: str = "epoch"):
    """Smoothed training loss (centered rolling mean over ~1/4 epoch), index = epoch (or step), one column per run."""
    import pandas as pd
    cols = {}
    for lg in logs:
        loss = pd.Series([num(v) for v in lg["history"]["train_loss"]], dtype=float)
        if loss.empty:
            continue
        spe = max(1, int(lg.get("steps_per_epoch") or len(loss)))
        w = max(1, spe // 4)
        sm = loss.rolling(w, min_periods=1, center=True).mean()
        steps = np.arange(1, len(loss) + 1)
        sm.index = (steps / spe).round(6) if x == "epoch" else steps
        cols[lg["run_id"]] = sm
    return pd.DataFrame(cols).sort_index()


def _band(ax, frame, label, color, marker=None):
    """Mean line and min–max band over the columns (seeds) of ``frame``; NaNs are skipped."""
    if frame.empty:
        return
    mean = frame.mean(axis=1, skipna=True)
    n = frame.shape[1]
    ax.plot(mean.index, mean.values, color=color, lw=1.6, marker=marker, ms=3, label=f"{label} (n={n})")
    if n > 1:
        ax.fill_between(mean.index, frame.min(axis=1, skipna=True).values, frame.max(axis=1, skipna=True).values,
                        color=color, alpha=0.18, lw=0)


def convergence_figure(log_dir, fig_dir, task: str, x: str = "epoch", show: bool | None = False,
                       main_lr_only: bool = True) -> dict:
    """``convergence_<task>.png``: left, the dev main metric vs epoch (``x="step"``: vs step) per
    method — mean over seeds, min–max band, majority baseline dashed; right, the training loss
    (rolling mean over ~1/4 epoch, then mean over seeds, with min–max band).  Failed runs are not
    plotted; with ``main_lr_only`` neither are runs of an extra learning-rate block (each method at
    :func:`main_lr`; the lr figures show the others).  Returns manifest entries
    ``{"convergence_<task>": {...}}`` (empty without runs)."""
    logs = load_logs(log_dir, task)
    if logs and main_lr_only:
        runs = runs_table(log_dir)
        logs = at_main_lr(logs, runs)
    if not logs:
        return {}
    main = logs[0]["task"]["main_metric"]
    labels = _variant_labels(logs)
    colors = method_colors()
    import seaborn as sns
    with style():
        fig, axes = new_figure(1, 2, panel=(5.2, 3.6), min_cols=2)
        ax, axl = axes[0]
        groups: dict[str, list] = {}
        for lg in logs:
            groups.setdefault(labels[lg["run_id"]], []).append(lg)
        order = sorted(groups, key=lambda k: (method_order([g["config"]["method"] for g in logs]).index(
            groups[k][0]["config"]["method"]), groups[k][0]["config"].get("lr") or 0))
        extra = sns.color_palette("husl", max(1, len(order)))
        multi_lr = len(order) > len({groups[k][0]["config"]["method"] for k in order})
        for i, lab in enumerate(order):
            g = groups[lab]
            color = extra[i] if multi_lr else colors.get(g[0]["config"]["method"], extra[i])
            _band(ax, _eval_frame(g, main, x), lab, color, marker="o")
            _band(axl, _loss_frame(g, x), lab, color)
        base = [num((lg["task"].get("majority_baseline") or {}).get(main)) for lg in logs]
        base = [b for b in base if np.isfinite(b)]
        if base:
            ax.axhline(float(np.mean(base)), ls="--", c="grey", lw=1, label=f"majority class ({np.mean(base):.3f})")
        ax.set(xlabel=x, ylabel=f"dev {main}", title=f"{task_label(task)}: dev {main} (mean, min–max over seeds)")
        axl.set(xlabel=x, ylabel="training loss (smoothed)", title=f"{task_label(task)}: training loss (mean over seeds)")
        ax.legend(fontsize=7)
        axl.legend(fontsize=7)
        name = f"convergence_{task}"
        path = save(fig, fig_dir, name)
    caption = (f"Convergence on {task_label(task)}: dev {main} against {x} (step 0 = the init) and the smoothed training "
               f"loss; lines are means over seeds, bands span min to max; dashed: majority-class baseline. "
               f"{describe_runs(log_dir, logs)}.")
    out = {name: entry(path, caption, logs)}
    display_entries(out, show)
    return out


def differences_figure(log_dir, fig_dir, reference: str = "random", show: bool | None = False) -> dict:
    """``differences.png``: per task (columns), every other method's paired difference to
    ``reference`` for the same seed, one dot per seed and a bar at the mean; top row the final dev
    main metric, bottom row the mean over the dev curve (higher = good sooner).  Methods at their
    main learning rate only (see :mod:`harness.analysis.findings`).  Empty when no task has ``reference``
    and another method."""
    runs = points_table(log_dir)
    if len(runs) == 0:
        return {}
    tasks = [t for t in order_tasks(runs["task"])
             if reference in set(runs.loc[runs["task"] == t, "method"])
             and len(set(runs.loc[runs["task"] == t, "method"])) > 1]
    if not tasks:
        return {}
    colors = method_colors()
    used = []
    with style():
        fig, axes = new_figure(2, len(tasks), panel=(4.2, 3.0), min_cols=2)
        for j, task in enumerate(tasks):
            methods = [m for m in method_order(runs.loc[runs["task"] == task, "method"]) if m != reference]
            main = runs.loc[runs["task"] == task, "main_metric"].iloc[0]
            for i, (q, label) in enumerate((("final", f"final dev {main}"), ("curve", f"mean dev {main} over curve"))):
                ax = axes[i][j]
                for x, m in enumerate(methods):
                    d = np.array(paired(runs, task, reference, m, q)["diffs"])
                    if len(d):
                        ax.bar(x, d.mean(), color=colors.get(m), alpha=0.35, width=0.6)
                        ax.scatter(np.full(len(d), x) + np.linspace(-0.12, 0.12, len(d)), d, color=colors.get(m),
                                   s=14, zorder=3)
                ax.axhline(0, c="k", lw=0.8)
                ax.set_xticks(range(len(methods)), methods, rotation=30, fontsize=7)
                ax.set(ylabel=f"Δ vs {reference}", title=f"{task_label(task)}: {label}")
            used += at_main_lr(load_logs(log_dir, task), runs)
        path = save(fig, fig_dir, "differences")
    out = {"differences": entry(path, (
        f"Paired differences to {reference} init, same seed (dots: seeds; bars: mean): final dev main metric (top) "
        f"and its mean over all dev evaluations after step 0 (bottom; higher = good sooner). Preset learning rate "
        f"of each method. {describe_runs(log_dir, used)}."), used)}
    display_entries(out, show)
    return out


def lr_sweep_figure(log_dir, fig_dir, show: bool | None = False) -> dict:
    """For the (task, method) pairs of a log directory that have several learning rates (methods run at
    one lr only are left out):

    * ``lr_sweep.png``: per task, the final (solid) and best (dashed) dev main metric vs lr (log x),
      one colour per method (mean over seeds, error bar = min–max), majority baseline grey;
    * ``lr_curves.png``: per task, dev main metric vs epoch, one line per lr (mean over seeds).

    Returns manifest entries (empty when no lr varies)."""
    import seaborn as sns

    logs = load_logs(log_dir)
    by_tm: dict[tuple, list] = {}
    for lg in logs:
        by_tm.setdefault((lg["config"]["task"], lg["config"]["method"]), []).append(lg)
    swept = {tm for tm, g in by_tm.items() if len({lg["config"]["lr"] for lg in g}) > 1}
    tasks = order_tasks(t for t, m in swept)
    if not tasks:
        return {}
    used = [lg for lg in logs if (lg["config"]["task"], lg["config"]["method"]) in swept]
    colors = method_colors()
    out = {}
    with style():
        fig, axes = new_figure(1, len(tasks), panel=(4.4, 3.4), min_cols=2)
        for ax, task in zip(axes[0], tasks):
            main, all_lrs = None, set()
            for method in method_order(m for (t, m) in swept if t == task):
                g = by_tm[(task, method)]
                main = g[0]["task"]["main_metric"]
                lrs = sorted({lg["config"]["lr"] for lg in g})
                for key, ls, mk, lab in (("final", "-", "o", "final"), ("best", "--", "^", "best")):
                    vals = [[num((lg.get(key) or {}).get(main)) for lg in g if lg["config"]["lr"] == lr] for lr in lrs]
                    mean = np.array([np.nanmean(v) if np.isfinite(v).any() else np.nan for v in vals])
                    lo = np.array([np.nanmin(v) if np.isfinite(v).any() else np.nan for v in vals])
                    hi = np.array([np.nanmax(v) if np.isfinite(v).any() else np.nan for v in vals])
                    ax.errorbar(lrs, mean, yerr=[mean - lo, hi - mean], ls=ls, marker=mk, ms=4, capsize=2,
                                color=colors.get(method), alpha=1.0 if key == "final" else 0.6,
                                label=f"{method} {lab}")
                all_lrs.update(lrs)
            base = [num((lg["task"].get("majority_baseline") or {}).get(main)) for lg in used
                    if lg["config"]["task"] == task]
            base = [b for b in base if np.isfinite(b)]
            if base:
                ax.axhline(float(np.mean(base)), ls=":", c="grey", lw=1, label="majority class")
            ax.set_xscale("log")
            ax.set_xticks(sorted(all_lrs), [fmt_lr(x) for x in sorted(all_lrs)])
            ax.minorticks_off()
            ax.set(xlabel="learning rate", ylabel=f"dev {main}", title=f"{task_label(task)}: {main} vs learning rate")
            ax.legend(fontsize=7)
        path = save(fig, fig_dir, "lr_sweep")
        out["lr_sweep"] = entry(path, (
            "Learning-rate sweep: final (solid) and best-during-training (dashed) dev main metric against the "
            "learning rate, mean over seeds with min–max error bars; dotted: majority-class baseline. "
            f"{describe_runs(log_dir, used)}."), used)

        fig, axes = new_figure(1, len(tasks), panel=(4.4, 3.4), min_cols=2)
        for ax, task in zip(axes[0], tasks):
            tl = [lg for lg in used if lg["config"]["task"] == task]
            main = tl[0]["task"]["main_metric"]
            lrs = sorted({lg["config"]["lr"] for lg in tl})
            pal = dict(zip(lrs, sns.color_palette("viridis", len(lrs))))
            methods = method_order(lg["config"]["method"] for lg in tl)
            styles = dict(zip(methods, ["-", "--", ":", "-."] * 3))
            for method in methods:
                for lr in lrs:
                    g = [lg for lg in tl if lg["config"]["lr"] == lr and lg["config"]["method"] == method]
                    if not g:
                        continue
                    fr = _eval_frame(g, main)
                    ax.plot(fr.index, fr.mean(axis=1).values, ls=styles[method], marker="o", ms=2.5, color=pal[lr],
                            label=f"{method} lr={fmt_lr(lr)} (n={len(g)})")
            base = [num((lg["task"].get("majority_baseline") or {}).get(main)) for lg in tl]
            base = [b for b in base if np.isfinite(b)]
            if base:
                ax.axhline(float(np.mean(base)), ls="--", c="grey", lw=1, label="majority class")
            ax.set(xlabel="epoch", ylabel=f"dev {main}", title=f"{task_label(task)}: dev {main} per learning rate")
            ax.legend(fontsize=7)
        path = save(fig, fig_dir, "lr_curves")
        out["lr_curves"] = entry(path, (
            "Dev main metric against epoch for each learning rate (mean over seeds; dashed grey: majority class). "
            f"{describe_runs(log_dir, used)}."), used)
    display_entries(out, show)
    return out

