"""Figures and tables from logs (never from training): what the notebooks and the book show.

Everything here is a pure function of a directory of run logs (``<run_id>.json``) and the adapter
factor files beside them (``<run_id>.safetensors``); nothing trains.

Tables (pandas DataFrames; written as CSV/JSON when a ``fig_dir`` is given):

* :func:`runs_table`     one row per ok run (config, final/best metrics, parameters, time);
* :func:`failed_runs`    run_id and reason of every failed run (listed, never plotted);
* :func:`summary_table`  per (task, method[, lr ...]) mean ± std over seeds of every final metric;
* :func:`spectra_table`  per run and adapted layer: spectrum of ΔW and its geometry against W.

Figures (PNG, dpi 130, seaborn styling; each returns manifest entries
``{name: {"path", "caption", "runs"}}`` whose caption names the runs):

* :func:`convergence_figure`  dev metric and smoothed training loss vs epoch, mean and min–max over seeds;
* :func:`lr_sweep_figure`     final / best metric vs learning rate, and the curves per learning rate;
* :func:`spectra_figures`     singular-value decay, effective rank per layer, principal-angle heat map,
  subspace similarity across seeds and across inits (Hu et al. 2021, Fig. 3-4);
* :func:`compare_figures`     tables + convergence (+ lr sweep) for one log directory;
* :func:`build_all`           all of the above for every log directory under ``logs/``.

Conventions of the spectral analysis (all from the factors, never the dense ΔW):

* ΔW is relative to the ORIGINAL pretrained W (:func:`lora.load_delta_factors`); for ``svd`` it has
  rank ≤ 2r, for ``full`` the file holds only the top-32 SVD of the dense update (column
  ``trunc_energy_kept`` is the fraction of ‖ΔW‖_F² those 32 directions keep).
* r_ref ("reference rank") is the most common adapter rank among the LoRA runs of the directory (8 in
  the quick preset); geometry compares ΔW's top-r_ref singular subspaces (r = min(r_ref, rank ΔW))
  with W's top-r_ref / bottom-r_ref singular subspaces.
* Overlap of two subspaces = mean cos² of their principal angles = ‖Q₁ᵀQ₂‖_F² / min(p, q), which is
  Hu et al.'s φ; 1 = one contains the other, 0 = orthogonal.  Its expectation for uniformly random
  subspaces of R^n is max(p, q)/n (column ``overlap_random``); ``max_cos_*`` is the largest cosine
  (smallest angle).
* ``fa_energy`` is the fraction of ‖ΔW‖_F² inside span(A₀ᵀ) (A₀ = the init A): exactly 1 for the
  frozen-A methods (lora_fa, lora_fa_svd) by construction.
"""
from __future__ import annotations

import json
import math
import os
import re
import sys
from collections import Counter
from pathlib import Path

import numpy as np

from .stats import format_mean_std
from .tasks import order_tasks, task_label

DPI = 130
SUMMARY_VARY = ("lr", "rank", "alpha", "epochs", "model", "preset")   # grouping keys, used when they vary
MAX_IDS_IN_CAPTION = 8


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


# ============================================================================ helpers
def _num(x) -> float:
    """A metric value as float; None (JSON's NaN) and non-numbers → NaN."""
    try:
        return float(x) if x is not None else math.nan
    except (TypeError, ValueError):
        return math.nan


def _logs(log_dir, task: str | None = None, status: str | None = "ok") -> list[dict]:
    from .logs import read_logs
    logs = read_logs(log_dir, status=status)
    return [lg for lg in logs if task is None or lg["config"]["task"] == task]


def _sorted_unique(values) -> list:
    out = []
    for v in values:
        if v not in out:
            out.append(v)
    try:
        return sorted(out)
    except TypeError:
        return out


def _method_order(methods) -> list[str]:
    from .config import METHODS
    return sorted(set(methods), key=lambda m: (METHODS.index(m) if m in METHODS else len(METHODS), m))


def _method_colors() -> dict:
    import seaborn as sns
    from .config import METHODS
    return dict(zip(METHODS, sns.color_palette("tab10", len(METHODS))))


def _fmt_lr(lr) -> str:
    return "n/a" if lr is None or (isinstance(lr, float) and math.isnan(lr)) else f"{lr:g}"


def describe_runs(log_dir, logs: list[dict]) -> str:
    """Names the runs a figure or table is built from: the log directory, the count as
    tasks × methods × seeds, and the run ids themselves when there are at most 8."""
    ids = sorted(lg["run_id"] for lg in logs)
    if not ids:
        return f"no runs from {log_dir}"
    cfgs = [lg["config"] for lg in logs]
    tasks = _sorted_unique(c["task"] for c in cfgs)
    methods = _method_order(c["method"] for c in cfgs)
    seeds = _sorted_unique(c["seed"] for c in cfgs)
    text = (f"{len(ids)} run{'s' if len(ids) != 1 else ''} from {log_dir}: "
            f"{len(tasks)} task{'s' if len(tasks) != 1 else ''} ({', '.join(tasks)}) × "
            f"{len(methods)} method{'s' if len(methods) != 1 else ''} ({', '.join(methods)}) × "
            f"{len(seeds)} seed{'s' if len(seeds) != 1 else ''} ({', '.join(map(str, seeds))})")
    lrs = _sorted_unique(c.get("lr") for c in cfgs if c.get("lr") is not None)
    if len(lrs) > 1:
        text += f", lr ∈ {{{', '.join(_fmt_lr(x) for x in lrs)}}}"
    if len(ids) <= MAX_IDS_IN_CAPTION:
        text += "; run ids: " + ", ".join(ids)
    else:
        text += " (run ids in the manifest)"
    return text


def _entry(path: Path, caption: str, logs: list[dict]) -> dict:
    return {"path": str(path), "caption": caption, "runs": sorted(lg["run_id"] for lg in logs)}


def _in_notebook() -> bool:
    ip = sys.modules.get("IPython")
    if ip is None:
        return False
    try:
        shell = ip.get_ipython()
    except Exception:
        return False
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


def _display(manifest: dict, show: bool | None) -> None:
    """In a Jupyter kernel (``show=None``) or when asked, show the saved PNGs with their captions."""
    if not (_in_notebook() if show is None else show):
        return
    try:
        from IPython.display import Image, Markdown, display
    except ImportError:
        return
    for name, e in manifest.items():
        if e["path"].endswith(".png"):
            display(Image(filename=e["path"]))
            display(Markdown(f"**{name}**: {e['caption']}"))


def _new_figure(nrows: int, ncols: int, panel=(4.6, 3.4), squeeze=False, **kw):
    """A matplotlib Figure that is never registered with pyplot (nothing to close, no global state)."""
    from matplotlib.figure import Figure
    # at least two panels wide, so that a one-panel figure's suptitle is not cut off
    fig = Figure(figsize=(panel[0] * max(ncols, 2), panel[1] * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=squeeze, **kw)
    return fig, axes


def _style():
    """Seaborn styling as a context manager (rcParams are restored afterwards)."""
    import contextlib

    import matplotlib as mpl
    import seaborn as sns

    @contextlib.contextmanager
    def ctx():
        with mpl.rc_context(), sns.axes_style("whitegrid"), sns.plotting_context("notebook", font_scale=0.8):
            yield
    return ctx()


def _save(fig, fig_dir, name: str) -> Path:
    path = Path(fig_dir) / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=DPI)
    os.replace(tmp, path)
    fig.clear()
    return path


def _write_table(df, fig_dir, stem: str, json_too: bool = True) -> Path:
    from .logs import write_json_atomic
    d = Path(fig_dir)
    d.mkdir(parents=True, exist_ok=True)
    out = df.copy()
    for c in out.columns:   # lists (e.g. singular values) as JSON text in the CSV
        if out[c].map(lambda v: isinstance(v, (list, tuple, np.ndarray))).any():
            out[c] = out[c].map(lambda v: json.dumps([round(float(x), 8) for x in v])
                                if isinstance(v, (list, tuple, np.ndarray)) else v)
    csv = d / f"{stem}.csv"
    out.to_csv(csv, index=False)
    if json_too:
        write_json_atomic(d / f"{stem}.json", json.loads(df.to_json(orient="records")))
    return csv


def _merge_manifest(fig_dir, entries: dict) -> None:
    """Add ``entries`` to ``fig_dir/manifest.json`` (created if needed)."""
    from .logs import write_json_atomic
    path = Path(fig_dir) / "manifest.json"
    old = {}
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except ValueError:
            old = {}
    write_json_atomic(path, {**old, **entries})


# ============================================================================ tables
def runs_table(log_dir) -> "pd.DataFrame":
    """One row per ok run: run_id, task, method, seed, lr, rank, alpha, epochs, preset, model,
    main_metric, final / best (main metric; best over the dev evaluations, incl. step 0),
    best_step, baseline (majority class), final_<metric> for every dev metric, trainable and total
    parameters, wall_time_s, steps, factors_file.  Null metrics are NaN."""
    import pandas as pd

    rows = []
    for lg in _logs(log_dir):
        c, main = lg["config"], lg["task"]["main_metric"]
        final, best = lg.get("final") or {}, lg.get("best") or {}
        row = dict(run_id=lg["run_id"], task=c["task"], method=c["method"], seed=c["seed"], lr=c.get("lr"),
                   rank=c.get("rank"), alpha=c.get("alpha"), epochs=c.get("epochs"), preset=c.get("preset"),
                   model=c.get("model"), main_metric=main, final=_num(final.get(main)),
                   best=_num(best.get(main)), best_step=best.get("step"),
                   baseline=_num((lg["task"].get("majority_baseline") or {}).get(main)))
        for k, v in final.items():
            if k not in ("step", "epoch"):
                row[f"final_{k}"] = _num(v)
        params = lg.get("params") or {}
        row.update(trainable=params.get("trainable"), total=params.get("total"),
                   wall_time_s=lg.get("wall_time_s"), steps=lg.get("steps"), factors_file=lg.get("factors_file"))
        rows.append(row)
    cols = ["run_id", "task", "method", "seed", "lr", "rank", "alpha", "epochs", "preset", "model", "main_metric",
            "final", "best", "best_step", "baseline"]
    df = pd.DataFrame(rows, columns=None if rows else cols)
    if rows:
        metric_cols = sorted(c for c in df.columns if c.startswith("final_"))
        rest = [c for c in df.columns if c not in cols and c not in metric_cols]
        df = df[cols + metric_cols + rest]
    return df


def main_lr(runs, task: str, method: str):
    """The learning rate at which (task, method) is compared with other methods: its preset's lr
    when some of its runs use it (a grid's extra lr block must not replace it), else the lr most of
    its runs use.  ``runs``: a :func:`runs_table`.  None without runs."""
    from .config import make_config
    from .tasks import UserError

    g = runs[(runs["task"] == task) & (runs["method"] == method)]
    if len(g) == 0:
        return None
    lrs = g["lr"].astype(float)
    try:
        lr = float(make_config(task, method, g["preset"].mode().iloc[0])["lr"])
        if np.isclose(lrs, lr).any():
            return lr
    except (UserError, KeyError, TypeError):
        pass
    return float(lrs.mode().iloc[0])


def failed_runs(log_dir) -> "pd.DataFrame":
    """run_id, task, method, seed, lr and reason of every log whose status is not ok."""
    import pandas as pd

    rows = [dict(run_id=lg["run_id"], task=lg["config"].get("task"), method=lg["config"].get("method"),
                 seed=lg["config"].get("seed"), lr=lg["config"].get("lr"), status=lg["status"],
                 reason=lg.get("reason"))
            for lg in _logs(log_dir, status=None) if lg["status"] != "ok"]
    return pd.DataFrame(rows, columns=["run_id", "task", "method", "seed", "lr", "status", "reason"])


def _varying_keys(df) -> list[str]:
    """Config fields (of SUMMARY_VARY) that take more than one value within some (task, method)."""
    keys = []
    for k in SUMMARY_VARY:
        if k in df.columns and (df.groupby(["task", "method"])[k].nunique(dropna=True) > 1).any():
            keys.append(k)
    return keys


def summary_table(log_dir, fig_dir=None, name: str | None = None) -> "pd.DataFrame":
    """Final dev metrics per (task, method[, lr, ...]) as mean ± std over seeds.

    Grouped by task and method, plus any config field of ``SUMMARY_VARY`` (lr, rank, ...) that
    varies within a (task, method).  Columns: the group keys, main_metric, runs (ok runs in the
    group), seeds, n / mean / std / summary of the final main metric, best_mean / best_std / best of
    the best-during-training main metric, baseline (majority class), then for every metric m of the
    task: m_n, m_mean, m_std and m (the formatted string).  std is the sample standard deviation
    (ddof=1; NaN for n=1, printed as "(n=1)"); null/NaN metrics are left out of n, mean and std.
    With ``fig_dir``, writes ``summary_<name>.csv`` and ``.json`` there (name: the log directory's).
    """
    import pandas as pd

    runs = runs_table(log_dir)
    keys = ["task", "method"]
    rows = []
    if len(runs):
        keys += _varying_keys(runs)
        runs = runs.assign(_morder=runs["method"].map({m: i for i, m in enumerate(_method_order(runs["method"]))}))
        for gk, g in runs.sort_values(["task", "_morder", *keys[2:]]).groupby(keys, sort=False, dropna=False):
            gk = gk if isinstance(gk, tuple) else (gk,)
            row = dict(zip(keys, gk))
            row.update(main_metric=g["main_metric"].iloc[0], runs=len(g),
                       seeds=",".join(str(s) for s in sorted(g["seed"])))

            def stats(values):
                v = np.asarray(values, dtype=float)
                v = v[np.isfinite(v)]
                return len(v), (float(v.mean()) if len(v) else math.nan), \
                    (float(v.std(ddof=1)) if len(v) > 1 else math.nan)

            n, mean, std = stats(g["final"])
            row.update(n=n, mean=mean, std=std, summary=format_mean_std(mean, std, n))
            nb, bmean, bstd = stats(g["best"])
            row.update(best_mean=bmean, best_std=bstd, best=format_mean_std(bmean, bstd, nb),
                       baseline=float(np.nanmean(g["baseline"])) if g["baseline"].notna().any() else math.nan)
            for col in sorted(c for c in g.columns if c.startswith("final_")):
                if g[col].isna().all() and col[6:] != row["main_metric"]:
                    continue   # a metric of another task
                m = col[len("final_"):]
                nm, mm, sm = stats(g[col])
                row.update({f"{m}_n": nm, f"{m}_mean": mm, f"{m}_std": sm, m: format_mean_std(mm, sm, nm)})
            rows.append(row)
    df = pd.DataFrame(rows, columns=None if rows else keys + ["main_metric", "runs", "n", "mean", "std", "summary"])
    if fig_dir is not None:
        _write_table(df, fig_dir, f"summary_{name or Path(log_dir).resolve().name}")
    return df


# ============================================================================ curves
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
            lab += f" lr={_fmt_lr(c.get('lr'))}"
        out[lg["run_id"]] = lab
    return out


def _eval_frame(logs: list[dict], metric: str, x: str = "epoch"):
    """DataFrame indexed by x (epoch or step), one column per run, values of ``metric`` (NaN if null)."""
    import pandas as pd
    cols = {}
    for lg in logs:
        ev = lg["history"]["evals"]
        s = pd.Series([_num(e.get(metric)) for e in ev], index=[float(e[x]) for e in ev])
        cols[lg["run_id"]] = s[~s.index.duplicated(keep="last")]
    return pd.DataFrame(cols).sort_index()


def _loss_frame(logs: list[dict], x: str = "epoch"):
    """Smoothed training loss (centered rolling mean over ~1/4 epoch), index = epoch (or step), one column per run."""
    import pandas as pd
    cols = {}
    for lg in logs:
        loss = pd.Series([_num(v) for v in lg["history"]["train_loss"]], dtype=float)
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
    logs = _logs(log_dir, task)
    if logs and main_lr_only:
        runs = runs_table(log_dir)
        logs = [lg for lg in logs if np.isclose(lg["config"]["lr"], main_lr(runs, task, lg["config"]["method"]))]
    if not logs:
        return {}
    main = logs[0]["task"]["main_metric"]
    labels = _variant_labels(logs)
    colors = _method_colors()
    import seaborn as sns
    with _style():
        fig, axes = _new_figure(1, 2, panel=(5.2, 3.6))
        ax, axl = axes[0]
        groups: dict[str, list] = {}
        for lg in logs:
            groups.setdefault(labels[lg["run_id"]], []).append(lg)
        order = sorted(groups, key=lambda k: (_method_order([g["config"]["method"] for g in logs]).index(
            groups[k][0]["config"]["method"]), groups[k][0]["config"].get("lr") or 0))
        extra = sns.color_palette("husl", max(1, len(order)))
        multi_lr = len(order) > len({groups[k][0]["config"]["method"] for k in order})
        for i, lab in enumerate(order):
            g = groups[lab]
            color = extra[i] if multi_lr else colors.get(g[0]["config"]["method"], extra[i])
            _band(ax, _eval_frame(g, main, x), lab, color, marker="o")
            _band(axl, _loss_frame(g, x), lab, color)
        base = [_num((lg["task"].get("majority_baseline") or {}).get(main)) for lg in logs]
        base = [b for b in base if np.isfinite(b)]
        if base:
            ax.axhline(float(np.mean(base)), ls="--", c="grey", lw=1, label=f"majority class ({np.mean(base):.3f})")
        ax.set(xlabel=x, ylabel=f"dev {main}", title=f"{task_label(task)}: dev {main} (mean, min–max over seeds)")
        axl.set(xlabel=x, ylabel="training loss (smoothed)", title=f"{task_label(task)}: training loss (mean over seeds)")
        ax.legend(fontsize=7)
        axl.legend(fontsize=7)
        name = f"convergence_{task}"
        path = _save(fig, fig_dir, name)
    caption = (f"Convergence on {task_label(task)}: dev {main} against {x} (step 0 = the init) and the smoothed training "
               f"loss; lines are means over seeds, bands span min to max; dashed: majority-class baseline. "
               f"{describe_runs(log_dir, logs)}.")
    out = {name: _entry(path, caption, logs)}
    _display(out, show)
    return out


def differences_figure(log_dir, fig_dir, reference: str = "random", show: bool | None = False) -> dict:
    """``differences.png``: per task (columns), every other method's paired difference to
    ``reference`` for the same seed, one dot per seed and a bar at the mean; top row the final dev
    main metric, bottom row the mean over the dev curve (higher = good sooner).  Methods at their
    preset learning rate only (see :mod:`harness.findings`).  Empty when no task has ``reference``
    and another method."""
    from .findings import paired, points_table

    runs = points_table(log_dir)
    if len(runs) == 0:
        return {}
    tasks = [t for t in order_tasks(runs["task"])
             if reference in set(runs.loc[runs["task"] == t, "method"])
             and len(set(runs.loc[runs["task"] == t, "method"])) > 1]
    if not tasks:
        return {}
    colors = _method_colors()
    used = []
    with _style():
        fig, axes = _new_figure(2, len(tasks), panel=(4.2, 3.0))
        for j, task in enumerate(tasks):
            methods = [m for m in _method_order(runs.loc[runs["task"] == task, "method"]) if m != reference]
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
            used += [lg for lg in _logs(log_dir, task) if np.isclose(lg["config"]["lr"], main_lr(
                runs, task, lg["config"]["method"]))]
        path = _save(fig, fig_dir, "differences")
    out = {"differences": _entry(path, (
        f"Paired differences to {reference} init, same seed (dots: seeds; bars: mean): final dev main metric (top) "
        f"and its mean over all dev evaluations after step 0 (bottom; higher = good sooner). Preset learning rate "
        f"of each method. {describe_runs(log_dir, used)}."), used)}
    _display(out, show)
    return out


def lr_sweep_figure(log_dir, fig_dir, show: bool | None = False) -> dict:
    """For the (task, method) pairs of a log directory that have several learning rates (methods run at
    one lr only are left out):

    * ``lr_sweep.png``: per task, the final (solid) and best (dashed) dev main metric vs lr (log x),
      one colour per method (mean over seeds, error bar = min–max), majority baseline grey;
    * ``lr_curves.png``: per task, dev main metric vs epoch, one line per lr (mean over seeds).

    Returns manifest entries (empty when no lr varies)."""
    import seaborn as sns

    logs = _logs(log_dir)
    by_tm: dict[tuple, list] = {}
    for lg in logs:
        by_tm.setdefault((lg["config"]["task"], lg["config"]["method"]), []).append(lg)
    swept = {tm for tm, g in by_tm.items() if len({lg["config"]["lr"] for lg in g}) > 1}
    tasks = order_tasks(t for t, m in swept)
    if not tasks:
        return {}
    used = [lg for lg in logs if (lg["config"]["task"], lg["config"]["method"]) in swept]
    colors = _method_colors()
    out = {}
    with _style():
        fig, axes = _new_figure(1, len(tasks), panel=(4.4, 3.4))
        for ax, task in zip(axes[0], tasks):
            main, all_lrs = None, set()
            for method in _method_order(m for (t, m) in swept if t == task):
                g = by_tm[(task, method)]
                main = g[0]["task"]["main_metric"]
                lrs = sorted({lg["config"]["lr"] for lg in g})
                for key, ls, mk, lab in (("final", "-", "o", "final"), ("best", "--", "^", "best")):
                    vals = [[_num((lg.get(key) or {}).get(main)) for lg in g if lg["config"]["lr"] == lr] for lr in lrs]
                    mean = np.array([np.nanmean(v) if np.isfinite(v).any() else np.nan for v in vals])
                    lo = np.array([np.nanmin(v) if np.isfinite(v).any() else np.nan for v in vals])
                    hi = np.array([np.nanmax(v) if np.isfinite(v).any() else np.nan for v in vals])
                    ax.errorbar(lrs, mean, yerr=[mean - lo, hi - mean], ls=ls, marker=mk, ms=4, capsize=2,
                                color=colors.get(method), alpha=1.0 if key == "final" else 0.6,
                                label=f"{method} {lab}")
                all_lrs.update(lrs)
            base = [_num((lg["task"].get("majority_baseline") or {}).get(main)) for lg in used
                    if lg["config"]["task"] == task]
            base = [b for b in base if np.isfinite(b)]
            if base:
                ax.axhline(float(np.mean(base)), ls=":", c="grey", lw=1, label="majority class")
            ax.set_xscale("log")
            ax.set_xticks(sorted(all_lrs), [_fmt_lr(x) for x in sorted(all_lrs)])
            ax.minorticks_off()
            ax.set(xlabel="learning rate", ylabel=f"dev {main}", title=f"{task_label(task)}: {main} vs learning rate")
            ax.legend(fontsize=7)
        path = _save(fig, fig_dir, "lr_sweep")
        out["lr_sweep"] = _entry(path, (
            "Learning-rate sweep: final (solid) and best-during-training (dashed) dev main metric against the "
            "learning rate, mean over seeds with min–max error bars; dotted: majority-class baseline. "
            f"{describe_runs(log_dir, used)}."), used)

        fig, axes = _new_figure(1, len(tasks), panel=(4.4, 3.4))
        for ax, task in zip(axes[0], tasks):
            tl = [lg for lg in used if lg["config"]["task"] == task]
            main = tl[0]["task"]["main_metric"]
            lrs = sorted({lg["config"]["lr"] for lg in tl})
            pal = dict(zip(lrs, sns.color_palette("viridis", len(lrs))))
            methods = _method_order(lg["config"]["method"] for lg in tl)
            styles = dict(zip(methods, ["-", "--", ":", "-."] * 3))
            for method in methods:
                for lr in lrs:
                    g = [lg for lg in tl if lg["config"]["lr"] == lr and lg["config"]["method"] == method]
                    if not g:
                        continue
                    fr = _eval_frame(g, main)
                    ax.plot(fr.index, fr.mean(axis=1).values, ls=styles[method], marker="o", ms=2.5, color=pal[lr],
                            label=f"{method} lr={_fmt_lr(lr)} (n={len(g)})")
            base = [_num((lg["task"].get("majority_baseline") or {}).get(main)) for lg in tl]
            base = [b for b in base if np.isfinite(b)]
            if base:
                ax.axhline(float(np.mean(base)), ls="--", c="grey", lw=1, label="majority class")
            ax.set(xlabel="epoch", ylabel=f"dev {main}", title=f"{task_label(task)}: dev {main} per learning rate")
            ax.legend(fontsize=7)
        path = _save(fig, fig_dir, "lr_curves")
        out["lr_curves"] = _entry(path, (
            "Dev main metric against epoch for each learning rate (mean over seeds; dashed grey: majority class). "
            f"{describe_runs(log_dir, used)}."), used)
    _display(out, show)
    return out


# ============================================================================ pretrained W
_W_CACHE: dict[tuple, dict] = {}
_WSVD_CACHE: dict[tuple, tuple] = {}


def _weights_key(log: dict) -> tuple:
    c = log["config"]
    if c["model"] == "tiny-roberta":   # weights depend on the seed and the vocabulary (the texts)
        data = log.get("data") or {}
        src = json.dumps({k: data.get(k) for k in ("kind", "dir", "id", "config", "files", "fingerprints")},
                         sort_keys=True)
        return (c["model"], c["seed"], c["task"], c.get("max_train_examples"), src)
    return (c["model"],)               # a pretrained checkpoint: the encoder does not depend on the seed


def _adapted_names(model, cfg: dict) -> list[str]:
    """The Linear layers train.py adapts: ``targets`` (query/value for full fine-tuning)."""
    import torch

    from lora.core import _matches
    targets = cfg.get("targets") or ["query", "value"]
    return [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and _matches(n, targets)]


def pretrained_weights(log: dict, layers=None, log_dir=None) -> dict:
    """{layer_name: W} — the ORIGINAL pretrained weight (float32, CPU) of every adapted layer of the run,
    rebuilt exactly as :func:`harness.train.run` builds the base model: data → ``seed_everything(seed)``
    → ``load_model_and_tokenizer``.  Layers: ``layers``, else the names in the run's factor file (when
    ``log_dir`` is given), else the config's ``targets`` (query/value for full).  For ``tiny-roberta``
    this reads the run's training texts (its tokenizer, hence its vocabulary and random init, depend
    on them).  Cached per model (and per seed and data for tiny-roberta, whose weights depend on them)."""
    import torch

    key = _weights_key(log)
    if layers is None and log_dir is not None and _factor_path(log, log_dir) is not None:
        import lora
        layers = sorted(lora.read_lora_config(_factor_path(log, log_dir)))
    cached = _W_CACHE.get(key, {})
    if layers is not None and all(n in cached for n in layers):
        return {n: cached[n] for n in layers}
    from .models import load_model_and_tokenizer
    from .tasks import get_task
    from .train import seed_everything

    c = log["config"]
    task = get_task(c["task"])
    texts = None
    if c["model"] == "tiny-roberta":
        from .data import load_task_data
        data = log.get("data") or {}
        if data.get("kind") == "hub":
            splits, _ = load_task_data(task, None, data.get("id"))
        else:
            splits, _ = load_task_data(task, data.get("dir"))
        train_ex = splits["train"]
        if c.get("max_train_examples"):
            train_ex = train_ex[:c["max_train_examples"]]
        texts = [t for ex in train_ex for t in ex.texts]
    import random
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):   # leave the caller's RNG states alone
        seed_everything(c["seed"])
        model, _ = load_model_and_tokenizer(c["model"], task.num_labels, c["seed"], train_texts=texts)
    random.setstate(py_state)
    np.random.set_state(np_state)
    if layers is None:
        layers = _adapted_names(model, c)
    ws = {n: model.get_submodule(n).weight.detach().float().cpu().clone() for n in layers}
    del model
    _W_CACHE[key] = {**cached, **ws}
    return ws


def _factor_path(log: dict, log_dir) -> Path | None:
    f = log.get("factors_file")
    if not f:
        return None
    p = Path(log_dir) / f
    return p if p.is_file() else None


def _w_svd(key: tuple, layer: str, W):
    """(U, S, V) of W in float64 (columns = singular vectors, descending), cached per model/layer."""
    import torch
    k = (key, layer)
    if key is None or k not in _WSVD_CACHE:
        U, S, Vh = torch.linalg.svd(torch.as_tensor(W).detach().double(), full_matrices=False)
        if key is None:
            return U, S, Vh.mT
        _WSVD_CACHE[k] = (U, S, Vh.mT)
    return _WSVD_CACHE[k]


# ============================================================================ spectra
def _layer_pos(name: str) -> tuple[int, str]:
    m = re.search(r"\.(\d+)\.", name)
    return (int(m.group(1)) if m else -1), name.rsplit(".", 1)[-1]


def _ref_rank(logs: list[dict]) -> int:
    ranks = [lg["config"].get("rank") for lg in logs if lg["config"].get("rank")]
    return Counter(ranks).most_common(1)[0][0] if ranks else 8


def spectra_table(log_dir, task: str | None = None, weights=None, top: int | None = None,
                  fig_dir=None, name: str | None = None) -> "pd.DataFrame":
    """Per ok run and adapted layer, the spectrum of ΔW (from its factors) and its geometry vs W.

    Columns: run_id, task, method, seed, lr, layer, layer_idx, kind (query/value), rank (adapter r;
    for full the stored truncation, 32), factor_rank (inner dimension of the stored factors), r_ref,
    sv (singular values, descending, all min(out, k, in) of them, or the first ``top``), num_rank,
    fro, spectral, stable_rank, effective_rank, energy_top1, energy_top4, trunc_energy_kept (full
    only), amplification (‖ΔW‖_F / ‖U_rᵀ W V_r‖_F, r = min(r_ref, rank ΔW)), overlap_{left,right}_
    {top,bottom} (mean cos² of the principal angles between ΔW's top-r subspace and W's top-/bottom-
    r_ref subspace), max_cos_{left,right}_{top,bottom} (largest cosine), overlap_random (max(r, r_ref)/n
    for random subspaces of the input space R^n), fa_energy (fraction of ‖ΔW‖_F² in span(A₀ᵀ), LoRA
    methods only; 1 for frozen-A).  ``weights``: a callable log → {layer: W} or a dict, to replace
    :func:`pretrained_weights` (tests).  With ``fig_dir`` writes ``spectra_<name>.csv`` there."""
    import pandas as pd
    import torch
    from safetensors.torch import load_file

    import lora
    from lora import spectra as sp

    logs = _logs(log_dir, task)
    r_ref = _ref_rank(logs)
    rows = []
    for lg in logs:
        path = _factor_path(lg, log_dir)
        if path is None:
            continue
        c = lg["config"]
        cfg = lora.read_lora_config(path)
        factors = lora.load_delta_factors(path)
        raw = load_file(str(path))
        if weights is None:
            try:
                W_all, wkey = pretrained_weights(lg, sorted(factors)), _weights_key(lg)
            except Exception as e:   # base model not available here: spectra only, no geometry
                import warnings
                warnings.warn(f"{lg['run_id']}: pretrained weights unavailable ({type(e).__name__}: "
                              f"{str(e)[:200]}); geometry columns left NaN")
                W_all, wkey = None, None
        else:   # caller's weights: not cached
            W_all, wkey = (weights(lg) if callable(weights) else weights), None
        for layer in sorted(factors, key=lambda n: (_layer_pos(n), n)):
            B, A = factors[layer]
            lc = cfg[layer]
            U, S, V = sp.lowrank_svd(B, A)
            nr = sp.numerical_rank(S)
            r = min(r_ref, nr)
            idx, kind = _layer_pos(layer)
            row = dict(run_id=lg["run_id"], task=c["task"], method=c["method"], seed=c["seed"], lr=c.get("lr"),
                       layer=layer, layer_idx=idx, kind=kind, rank=lc.get("rank"), factor_rank=int(A.shape[0]),
                       r_ref=r_ref, sv=(S if top is None else S[:top]).tolist(), num_rank=nr,
                       fro=sp.frobenius_norm(S), spectral=sp.spectral_norm(S), stable_rank=sp.stable_rank(S),
                       effective_rank=sp.effective_rank(S), energy_top1=sp.energy_fraction(S, 1),
                       energy_top4=sp.energy_fraction(S, 4),
                       trunc_energy_kept=_num(lc.get("energy_kept")) if lc.get("init") == "full" else math.nan)
            W = W_all.get(layer) if W_all is not None else None
            if W is not None and r > 0:
                Uw, _, Vw = _w_svd(wkey, layer, W)
                m = Uw.shape[1]
                k = min(r_ref, m)
                den = float(torch.linalg.matrix_norm(U[:, :r].T @ torch.as_tensor(W).double() @ V[:, :r]))
                row["amplification"] = row["fro"] / den if den > 0 else math.inf
                for side, X, Yw in (("left", U[:, :r], Uw), ("right", V[:, :r], Vw)):
                    for which, Y in (("top", Yw[:, :k]), ("bottom", Yw[:, m - k:])):
                        cos = torch.cos(sp.principal_angles(X, Y))
                        row[f"overlap_{side}_{which}"] = float((cos ** 2).mean())
                        row[f"max_cos_{side}_{which}"] = float(cos.max())
                row["overlap_random"] = sp.random_subspace_similarity_baseline(int(V.shape[0]), r, k)
            else:
                row["amplification"] = math.nan
            A0 = raw.get(f"{layer}.lora_A0")
            row["fa_energy"] = sp.row_space_fixed_fraction(A0, B, A) if A0 is not None else math.nan
            row["freeze_A"] = bool(lc.get("freeze_A"))
            rows.append(row)
    df = pd.DataFrame(rows)
    if fig_dir is not None and len(df):
        _write_table(df, fig_dir, f"spectra_{name or Path(log_dir).resolve().name}", json_too=False)
    return df


def subspace_agreement_table(log_dir, task: str | None = None, fig_dir=None, name: str | None = None) -> "pd.DataFrame":
    """Do two runs put ΔW in the same subspaces?  One row per pair of ok runs of a task (each at its
    method's :func:`main_lr`, so an lr block is left out) that differ in exactly one thing: the seed
    (same method: ``relation == "seed"``) or the method (same seed: ``relation == "init"``).

    For every layer both runs adapted, with V (in × r) and U (out × r) the top-r right and left
    singular vectors of each ΔW (r = r_ref, the grid's usual adapter rank, capped by ΔW's numerical
    rank), φ = ‖V₁ᵀV₂‖²_F / r (Hu et al. 2021, eq. 4 at i = j = r) is 1 for the same subspace and
    r/n in expectation for independent random ones.  Columns: run_a, run_b, task, method_a, method_b, seed_a,
    seed_b, relation, layers, phi_in (mean over layers, right/input side), phi_out (left/output),
    random (r/n of the input space).  With ``fig_dir`` writes ``subspaces_<name>.csv`` there."""
    import itertools

    import pandas as pd

    import lora
    from lora import spectra as sp

    logs = _logs(log_dir, task)
    runs = runs_table(log_dir)
    r_ref = _ref_rank(logs)
    keep = []
    for lg in logs:
        c = lg["config"]
        lr = main_lr(runs, c["task"], c["method"]) if len(runs) else None
        if _factor_path(lg, log_dir) is not None and (lr is None or np.isclose(float(c["lr"]), lr)):
            keep.append(lg)
    vecs = {}
    for lg in keep:
        per_layer = {}
        for layer, (B, A) in lora.load_delta_factors(_factor_path(lg, log_dir)).items():
            U, S, V = sp.lowrank_svd(B, A)
            k = min(r_ref, sp.numerical_rank(S))
            if k > 0:
                per_layer[layer] = (U[:, :k], V[:, :k])
        vecs[lg["run_id"]] = per_layer
    rows = []
    order = {m: i for i, m in enumerate(_method_order(lg["config"]["method"] for lg in keep))}
    keep.sort(key=lambda lg: (lg["config"]["task"], order[lg["config"]["method"]], lg["config"]["seed"]))
    for a, b in itertools.combinations(keep, 2):
        ca, cb = a["config"], b["config"]
        same_method, same_seed = ca["method"] == cb["method"], ca["seed"] == cb["seed"]
        if ca["task"] != cb["task"] or same_method == same_seed:
            continue
        va, vb = vecs[a["run_id"]], vecs[b["run_id"]]
        layers = sorted(set(va) & set(vb))
        if not layers:
            continue
        phi_in, phi_out = [], []
        for layer in layers:
            (Ua, Va), (Ub, Vb) = va[layer], vb[layer]
            k = min(Va.shape[1], Vb.shape[1])
            phi_in.append(sp.subspace_similarity(Va, Vb, k, k))
            phi_out.append(sp.subspace_similarity(Ua, Ub, k, k))
        n_in = int(next(iter(va.values()))[1].shape[0])
        rows.append(dict(run_a=a["run_id"], run_b=b["run_id"], task=ca["task"], method_a=ca["method"], method_b=cb["method"], seed_a=ca["seed"],
                         seed_b=cb["seed"], relation="seed" if same_method else "init", layers=len(layers),
                         phi_in=float(np.mean(phi_in)), phi_out=float(np.mean(phi_out)),
                         random=sp.random_subspace_similarity_baseline(n_in, r_ref, r_ref)))
    df = pd.DataFrame(rows)
    if fig_dir is not None and len(df):
        _write_table(df, fig_dir, f"subspaces_{name or Path(log_dir).resolve().name}", json_too=False)
    return df


def _right_vectors(log_dir, log: dict, layer: str, m: int):
    """Top-m right singular vectors of the run's ΔW for ``layer`` (in × m), from the factors."""
    import lora
    from lora import spectra as sp
    B, A = lora.load_delta_factors(_factor_path(log, log_dir))[layer]
    _, S, V = sp.lowrank_svd(B, A)
    return V[:, :min(m, sp.numerical_rank(S))]


def spectra_figures(log_dir, fig_dir, task: str | None = None, show: bool | None = None) -> dict:
    """All spectral figures for the ok runs of ``log_dir`` (per task; ``task=None``: every task):

    * ``sv_decay_<task>.png``        σ_i/σ_1 vs i per method: one faint line per run × layer, mean bold;
    * ``effective_rank_<task>.png``  effective rank of ΔW vs layer index, query and value panels, per method;
    * ``angles_<task>.png``          heat map methods × layers of the overlap (mean cos²) of ΔW's top-r
      right singular subspace with W's top-r and bottom-r ones, random-subspace level marked;
    * ``similarity_<task>.png``      φ(i, j) (Hu et al. 2021 eq. 4) between the top right singular
      vectors of ΔW for seed 0 vs seed 1 of each method, and random vs svd init (seed 0), for the last
      layer's value projection; last panel φ(i, i) with the random-subspace expectation i/n.

    * ``subspace_agreement.png``     methods × methods heat map of φ(r, r) between ΔW's top-r subspaces of two
      runs (diagonal: another seed; off-diagonal: another init, same seed), per task, input and output side.

    Also writes ``spectra_<dir>.csv`` and ``subspaces_<dir>.csv`` (:func:`subspace_agreement_table`) and merges the entries into ``fig_dir/manifest.json``.
    Returns the manifest entries."""
    logs_all = _logs(log_dir, task)
    out = {}
    if not logs_all:
        return out
    table = spectra_table(log_dir, task)
    if not len(table):
        return out
    stem = f"spectra_{Path(log_dir).resolve().name}" + (f"_{task}" if task else "")
    csv = _write_table(table, fig_dir, stem, json_too=False)
    out[stem] = _entry(csv, "Per run and adapted layer: singular values of ΔW, norms, stable and effective "
                            "rank, energy in the top 1/4 directions, amplification factor, subspace overlaps "
                            f"with W. {describe_runs(log_dir, logs_all)}.", logs_all)
    sub = subspace_agreement_table(log_dir, task)
    if len(sub):
        used = [lg for lg in logs_all if lg["run_id"] in set(sub["run_a"]) | set(sub["run_b"])]
        stem_s = f"subspaces_{Path(log_dir).resolve().name}" + (f"_{task}" if task else "")
        csv = _write_table(sub, fig_dir, stem_s, json_too=False)
        out[stem_s] = _entry(csv, "Per pair of runs that differ only in the seed or only in the init: subspace "
                                  "similarity φ of ΔW's top-r right (input) and left (output) singular vectors, "
                                  f"mean over layers. {describe_runs(log_dir, used)}.", used)
        out.update(_agreement(log_dir, sub, fig_dir, used))
    for t in order_tasks(table["task"]):
        tt = table[table["task"] == t]
        tl = [lg for lg in logs_all if lg["config"]["task"] == t and lg["run_id"] in set(tt["run_id"])]
        out.update(_sv_decay(log_dir, fig_dir, t, tt, tl))
        out.update(_effective_rank(log_dir, fig_dir, t, tt, tl))
        out.update(_angles(log_dir, fig_dir, t, tt, tl))
        out.update(_similarity(log_dir, fig_dir, t, tt, tl))
    _merge_manifest(fig_dir, out)
    _display(out, show)
    return out


def _agreement(log_dir, sub, fig_dir, logs) -> dict:
    """``subspace_agreement.png``: per task (columns) and side (rows: input, output), a methods × methods
    heat map of the mean φ: diagonal = same method, another seed; off-diagonal = same seed, another init."""
    import seaborn as sns

    tasks = order_tasks(sub["task"])
    methods = _method_order(set(sub["method_a"]) | set(sub["method_b"]))
    rnd = float(sub["random"].mean())
    with _style():
        fig, axes = _new_figure(2, len(tasks), panel=(3.9, 3.4))
        for j, task in enumerate(tasks):
            g = sub[sub["task"] == task]
            for i, (col, side) in enumerate((("phi_in", "input (right)"), ("phi_out", "output (left)"))):
                M = np.full((len(methods), len(methods)), np.nan)
                for (ma, mb), v in g.groupby(["method_a", "method_b"])[col].mean().items():
                    M[methods.index(ma), methods.index(mb)] = M[methods.index(mb), methods.index(ma)] = v
                ax = axes[i, j]
                sns.heatmap(M, ax=ax, vmin=0, vmax=1, cmap="magma", square=True, annot=True, fmt=".2f",
                            annot_kws={"fontsize": 6}, xticklabels=methods, yticklabels=methods,
                            cbar_kws={"label": "φ(r, r)", "shrink": 0.7})
                ax.collections[0].colorbar.ax.axhline(rnd, color="cyan", lw=2)
                ax.set_title(f"{task_label(task)}: {side} subspaces", fontsize=9)
                ax.tick_params(labelsize=6)
        fig.suptitle("Do two runs put ΔW in the same top-r subspaces? diagonal: another seed; "
                     "off-diagonal: another init, same seed")
        path = _save(fig, fig_dir, "subspace_agreement")
    cap = (f"Subspace similarity φ(r, r) = ‖V₁ᵀV₂‖²_F / r between the top-r singular vectors of ΔW of two runs, "
           f"mean over adapted layers and pairs (r = {_ref_rank(logs)}; {rnd:.3f} = r/n for random subspaces, cyan "
           f"mark on the colour bars). Diagonal cells compare one method's runs with different seeds; off-diagonal "
           f"cells compare two inits run with the same seed. Top row: input (right) singular subspaces; bottom: "
           f"output (left). `svd_naive` keeps its start U_r S_r V_rᵀ in ΔW and `lora_fa_svd` fixes ΔW's row space to "
           f"span(V_r), so their high values are built in by the init. {describe_runs(log_dir, logs)}.")
    return {"subspace_agreement": _entry(path, cap, logs)}


def _sv_decay(log_dir, fig_dir, task, tt, tl) -> dict:
    methods = _method_order(tt["method"])
    colors = _method_colors()
    ncols = min(3, len(methods))
    nrows = math.ceil(len(methods) / ncols)
    with _style():
        fig, axes = _new_figure(nrows, ncols, panel=(3.8, 3.0))
        flat = axes.ravel()
        for ax, method in zip(flat, methods):
            g = tt[tt["method"] == method]
            curves = []
            for _, row in g.iterrows():
                s = np.asarray(row["sv"], dtype=float)
                if s.size == 0 or s[0] <= 0:
                    continue
                s = np.clip(s / s[0], 1e-6, None)
                curves.append(s)
                ax.plot(np.arange(1, s.size + 1), s, color=colors.get(method), alpha=0.25, lw=0.7,
                        label="one layer × seed" if len(curves) == 1 else None)
            if curves:
                L = min(len(c) for c in curves)
                mean = np.exp(np.mean([np.log(c[:L]) for c in curves], axis=0))
                ax.plot(np.arange(1, L + 1), mean, color="k", lw=2, label="geometric mean")
            r = g["rank"].dropna()
            if len(r):
                ax.axvline(float(r.iloc[0]) + 0.5, ls=":", c="grey", lw=1,
                           label=f"stored rank {int(r.iloc[0])}" if method == "full" else f"r = {int(r.iloc[0])}")
            ax.set_yscale("log")
            ax.set_ylim(1e-4, 1.5)
            ax.xaxis.get_major_locator().set_params(integer=True)
            note = " (top-32 SVD of full update)" if method == "full" else ""
            ax.set(xlabel="index i", ylabel="σ_i / σ_1", title=f"{method}{note}")
            ax.legend(fontsize=6, loc="lower left")
        for ax in flat[len(methods):]:
            ax.set_visible(False)
        fig.suptitle(f"{task_label(task)}: normalised singular values of ΔW per method")
        name = f"sv_decay_{task}"
        path = _save(fig, fig_dir, name)
    cap = (f"Singular-value decay of ΔW (relative to the pretrained W) on {task}: σ_i/σ_1 against i, one faint line "
           f"per adapted layer and seed, bold: geometric mean; for full fine-tuning only the top-32 SVD of the "
           f"update is stored. {describe_runs(log_dir, tl)}.")
    return {name: _entry(path, cap, tl)}


def _effective_rank(log_dir, fig_dir, task, tt, tl) -> dict:
    methods = _method_order(tt["method"])
    colors = _method_colors()
    kinds = [k for k in ("query", "value") if k in set(tt["kind"])] or _sorted_unique(tt["kind"])
    with _style():
        fig, axes = _new_figure(1, len(kinds), panel=(4.6, 3.4))
        for ax, kind in zip(axes[0], kinds):
            for method in methods:
                g = tt[(tt["method"] == method) & (tt["kind"] == kind)]
                if g.empty:
                    continue
                st = g.groupby("layer_idx")["effective_rank"].agg(["mean", "min", "max", "count"])
                n = int(g["seed"].nunique())
                ax.errorbar(st.index, st["mean"], yerr=[st["mean"] - st["min"], st["max"] - st["mean"]],
                            marker="o", ms=4, capsize=2, color=colors.get(method), label=f"{method} (n={n})")
            r = tt["r_ref"].iloc[0]
            ax.axhline(r, ls="--", c="grey", lw=1, label=f"r = {r}")
            ax.set(xlabel="layer index", ylabel="effective rank of ΔW", title=f"{task_label(task)}: {kind}")
            ax.xaxis.get_major_locator().set_params(integer=True)
            ax.legend(fontsize=7)
        fig.suptitle(f"{task_label(task)}: effective rank (Roy & Vetterli) of ΔW per layer; mean, min–max over seeds")
        name = f"effective_rank_{task}"
        path = _save(fig, fig_dir, name)
    cap = (f"Effective rank exp(H(σ/Σσ)) of ΔW for each layer and method on {task} (mean over seeds, bars: min–max); "
           f"dashed: the adapter rank r. full: computed from its stored top-32 SVD. {describe_runs(log_dir, tl)}.")
    return {name: _entry(path, cap, tl)}


def _angles(log_dir, fig_dir, task, tt, tl) -> dict:
    import pandas as pd
    import seaborn as sns
    from matplotlib.lines import Line2D

    if "overlap_right_top" not in tt.columns or tt["overlap_right_top"].isna().all():
        return {}
    methods = _method_order(tt["method"])
    tt = tt.assign(col=[f"{i}.{k[0]}" for i, k in zip(tt["layer_idx"], tt["kind"])])
    cols = sorted(set(tt["col"]), key=lambda s: (int(s.split(".")[0]), s))
    base = float(tt["overlap_random"].mean())
    r_ref = int(tt["r_ref"].iloc[0])
    with _style():
        wide = len(cols) > 8
        fig, axes = _new_figure(2 if wide else 1, 1 if wide else 2,
                                panel=(max(4.0, 0.55 * len(cols) + 2.2), 0.45 * len(methods) + 1.8))
        for ax, which in zip(axes.ravel(), ("top", "bottom")):
            piv = (tt.groupby(["method", "col"])[f"overlap_right_{which}"].mean().unstack("col")
                   .reindex(index=methods, columns=cols))
            sns.heatmap(pd.DataFrame(piv), ax=ax, vmin=0, vmax=1, cmap="mako", annot=len(cols) <= 24, fmt=".2f",
                        annot_kws={"fontsize": 6}, cbar_kws={"label": "mean cos² (φ)"})
            cbar = ax.collections[0].colorbar
            cbar.ax.axhline(base, color="red", lw=2)
            ax.set(xlabel="layer (index.q/v)", ylabel="method",
                   title=f"ΔW top-{r_ref} right subspace vs W's {which}-{r_ref}")
            ax.legend(handles=[Line2D([], [], color="red", lw=2, label=f"random subspaces: {base:.3f}")],
                      loc="upper left", bbox_to_anchor=(0, -0.18), fontsize=7, frameon=False)
        fig.suptitle(f"{task_label(task)}: overlap of ΔW's input (right) singular subspace with W's, mean over seeds")
        name = f"angles_{task}"
        path = _save(fig, fig_dir, name)
    cap = (f"Principal angles on {task}: mean cos² of the principal angles between ΔW's top-r right singular "
           f"subspace (r = min({r_ref}, rank ΔW)) and W's top-{r_ref} (left panel) or bottom-{r_ref} (right panel) "
           f"right singular subspace, per method and layer (q = query, v = value), mean over seeds; the red "
           f"mark on the colour bar is the expectation for random subspaces ({base:.3f}). "
           f"{describe_runs(log_dir, tl)}.")
    return {name: _entry(path, cap, tl)}


def _similarity(log_dir, fig_dir, task, tt, tl) -> dict:
    import seaborn as sns

    from lora import spectra as sp

    values = tt[tt["kind"] == "value"]
    layer = (values if len(values) else tt).sort_values("layer_idx")["layer"].iloc[-1]
    r_ref = int(tt["r_ref"].iloc[0])
    by = {}
    for lg in tl:
        by.setdefault(lg["config"]["method"], {}).setdefault(lg["config"]["seed"], lg)
    pairs = []
    for method in _method_order(by):
        seeds = sorted(by[method])
        if len(seeds) >= 2:
            pairs.append((f"{method}: seed {seeds[0]} vs {seeds[1]}", by[method][seeds[0]], by[method][seeds[1]],
                          f"seed {seeds[0]}", f"seed {seeds[1]}"))
    if "random" in by and "svd" in by:
        s = sorted(set(by["random"]) & set(by["svd"])) or [sorted(by["random"])[0]]
        a, b = by["random"].get(s[0]) or next(iter(by["random"].values())), \
            by["svd"].get(s[0]) or next(iter(by["svd"].values()))
        pairs.append((f"random vs svd init (seed {a['config']['seed']})", a, b, "random", "svd"))
    if not pairs:
        return {}
    grids = []
    n_in = None
    for title, a, b, la, lb in pairs:
        Ua, Ub = _right_vectors(log_dir, a, layer, r_ref), _right_vectors(log_dir, b, layer, r_ref)
        n_in = Ua.shape[0]
        if Ua.shape[1] and Ub.shape[1]:
            grids.append((title, sp.similarity_grid(Ua, Ub).numpy(), la, lb))
    if not grids:
        return {}
    used = sorted({lg["run_id"] for _, a, b, _, _ in pairs for lg in (a, b)})
    used_logs = [lg for lg in tl if lg["run_id"] in used]
    with _style():
        npan = len(grids) + 1
        ncols = min(4, npan)
        fig, axes = _new_figure(math.ceil(npan / ncols), ncols, panel=(3.4, 3.1))
        flat = axes.ravel()
        for ax in flat[npan:]:
            ax.set_visible(False)
        for ax, (title, G, la, lb) in zip(flat, grids):
            sns.heatmap(G, ax=ax, vmin=0, vmax=1, cmap="magma", square=True,
                        xticklabels=list(range(1, G.shape[1] + 1)), yticklabels=list(range(1, G.shape[0] + 1)),
                        cbar_kws={"label": "φ(i, j)", "shrink": 0.7})
            ax.collections[0].colorbar.ax.axhline(r_ref / n_in, color="cyan", lw=2)
            ax.set(xlabel=f"j ({lb})", ylabel=f"i ({la})", title=title)
            ax.tick_params(labelsize=6)
        ax = flat[npan - 1]
        pal = sns.color_palette("tab10", len(grids))
        for (title, G, _, _), col in zip(grids, pal):
            d = np.diag(G)
            ax.plot(np.arange(1, d.size + 1), d, marker="o", ms=3, color=col, label=title)
        m = max(G.shape[0] for _, G, _, _ in grids)
        ii = np.arange(1, m + 1)
        ax.plot(ii, ii / n_in, ls="--", c="grey", label=f"random subspaces: i/n (n={n_in})")
        ax.set(xlabel="i", ylabel="φ(i, i)", title="diagonal φ(i, i)", ylim=(0, 1.05))
        ax.legend(fontsize=6)
        fig.suptitle(f"{task_label(task)}: subspace similarity of ΔW's top right singular vectors, layer {layer}")
        name = f"similarity_{task}"
        path = _save(fig, fig_dir, name)
    cap = (f"Subspace similarity φ(i, j) = ‖V₁[:, :i]ᵀ V₂[:, :j]‖²_F / min(i, j) (Hu et al. 2021, eq. 4) between "
           f"the top right singular vectors of ΔW of two runs, for {layer} on {task}: same method with two seeds, "
           f"and random vs svd init; the last panel shows φ(i, i) and the random-subspace expectation i/n "
           f"(cyan mark on the colour bars: r/n). {describe_runs(log_dir, used_logs)}.")
    return {name: _entry(path, cap, used_logs)}


# ============================================================================ drivers
def compare_figures(log_dir, fig_dir, show: bool | None = None) -> dict:
    """Tables and convergence figures for one log directory (what notebooks/compare.ipynb shows):

    ``runs_<dir>.csv``, ``failed_<dir>.csv``, ``summary_<dir>.csv/.json``, ``convergence_<task>.png``
    per task, and ``lr_sweep.png`` + ``lr_curves.png`` when a (task, method) has several learning
    rates.  Merges the entries into ``fig_dir/manifest.json`` and returns them."""
    name = Path(log_dir).resolve().name
    logs, all_logs = _logs(log_dir), _logs(log_dir, status=None)
    out = {}
    runs = runs_table(log_dir)
    failed = failed_runs(log_dir)
    summ = summary_table(log_dir, fig_dir, name)
    p = _write_table(runs, fig_dir, f"runs_{name}", json_too=False)
    out[f"runs_{name}"] = _entry(p, f"All ok runs, one row each. {describe_runs(log_dir, logs)}.", logs)
    failed_logs = [lg for lg in all_logs if lg["status"] != "ok"]
    p = _write_table(failed, fig_dir, f"failed_{name}", json_too=False)
    out[f"failed_{name}"] = _entry(p, f"{len(failed)} failed run(s) from {log_dir} (not plotted)"
                                      + (": " + ", ".join(failed["run_id"]) if len(failed) else "") + ".",
                                   failed_logs)
    out[f"summary_{name}"] = _entry(Path(fig_dir) / f"summary_{name}.csv",
                                    f"Final dev metrics, mean ± sample std over seeds (n = runs with a finite "
                                    f"value). {describe_runs(log_dir, logs)}.", logs)
    for task in order_tasks(lg["config"]["task"] for lg in logs):
        out.update(convergence_figure(log_dir, fig_dir, task))
    out.update(differences_figure(log_dir, fig_dir))
    out.update(lr_sweep_figure(log_dir, fig_dir))
    _merge_manifest(fig_dir, out)
    if (_in_notebook() if show is None else show):
        try:
            from IPython.display import display
            display(summ)
            if len(failed):
                display(failed)
        except ImportError:
            pass
    _display({k: v for k, v in out.items()}, show)
    return out


def _benchmark(path: Path, fig_dir: Path) -> dict:
    """Copy ``benchmark_lora.json`` through: the JSON itself and a flat key/value table."""
    import pandas as pd
    from .logs import write_json_atomic
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    rows = []

    def walk(prefix, obj):
        if isinstance(obj, dict):
            for k, v in obj.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        elif isinstance(obj, list) and obj and all(isinstance(v, (int, float)) for v in obj):
            rows.append(dict(key=prefix, value=json.dumps(obj), n=len(obj), median=float(np.median(obj))))
        else:
            rows.append(dict(key=prefix, value=obj if not isinstance(obj, list) else json.dumps(obj)))
    walk("", data)
    fig_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(fig_dir / path.name, data)
    csv = _write_table(pd.DataFrame(rows), fig_dir, path.stem, json_too=False)
    return {path.stem: {"path": str(csv), "caption": f"The LoRA speed/memory benchmark, copied from {path} "
                                                      f"(flattened keys).", "runs": []}}


def build_all(logs_root="logs", fig_root="figures", show: bool | None = False) -> dict:
    """Figures and tables for every subdirectory of ``logs_root`` holding run logs (logs/quick,
    logs/sweep, logs/smoke, ...): ``fig_root/<subdir>/`` gets compare_figures + spectra_figures
    output and its ``manifest.json``; ``logs_root/benchmark_lora.json``, if present, is copied
    through as a table to ``fig_root/benchmark/``.  Returns the manifest of everything, keyed
    ``<subdir>/<name>`` (also written to ``fig_root/manifest.json``)."""
    from .logs import write_json_atomic
    root, froot = Path(logs_root), Path(fig_root)
    everything = {}
    subdirs = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    for d in subdirs:
        if not _logs(d, status=None):
            continue
        out_dir = froot / d.name
        out_dir.mkdir(parents=True, exist_ok=True)
        manifest = {}
        manifest.update(compare_figures(d, out_dir, show=show))
        manifest.update(spectra_figures(d, out_dir, show=show))
        write_json_atomic(out_dir / "manifest.json", manifest)
        everything.update({f"{d.name}/{k}": v for k, v in manifest.items()})
    bench = root / "benchmark_lora.json"
    if bench.is_file():
        b = _benchmark(bench, froot / "benchmark")
        if b:
            write_json_atomic(froot / "benchmark" / "manifest.json", b)
            everything.update({f"benchmark/{k}": v for k, v in b.items()})
    froot.mkdir(parents=True, exist_ok=True)
    write_json_atomic(froot / "manifest.json", everything)
    return everything
