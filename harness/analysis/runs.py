"""A grid's logs → one runs table, and the choice of each method's comparison learning rate.

Everything in :mod:`harness.analysis` is a pure function of a directory of run logs (``<run_id>.json``)
and the adapter factor files beside them; nothing trains.  :func:`load_logs` reads a directory once and
keeps it (re-read only when a file in it changes), so building every figure of a grid parses each log once.

* :func:`runs_table`     one row per ok run (config, final/best metrics, parameters, time);
* :func:`main_lr`        the learning rate at which a (task, method) is compared with other methods;
* :func:`failed_runs`    run_id and reason of every failed run (listed, never plotted);
* :func:`summary_table`  per (task, method[, lr ...]) mean ± std over seeds of every final metric;
* :func:`describe_runs`  the sentence a caption names its runs with.
"""
from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import numpy as np

from ..logs import read_logs
from .stats import format_mean_std

SUMMARY_VARY = ("lr", "rank", "alpha", "epochs", "model", "preset")   # grouping keys, used when they vary
MAX_IDS_IN_CAPTION = 8
_LOGS: dict[tuple, tuple] = {}


def num(x) -> float:
    """A metric value as float; None (JSON's NaN) and non-numbers → NaN."""
    try:
        return float(x) if x is not None else math.nan
    except (TypeError, ValueError):
        return math.nan


def load_logs(log_dir, task: str | None = None, status: str | None = "ok") -> list[dict]:
    """The logs of ``log_dir`` (:func:`harness.logs.read_logs`; ``status=None``: all), optionally of one task.
    Read once per directory and kept until a ``*.json`` file there is added, removed or rewritten
    (the key is every file's name, size and mtime).  Callers must not modify the dicts."""
    d = Path(log_dir).resolve()
    files = sorted(d.glob("*.json")) if d.is_dir() else []
    sig = tuple((p.name, st.st_size, st.st_mtime_ns) for p in files for st in [p.stat()])
    hit = _LOGS.get((d, status))
    if hit is None or hit[0] != sig:
        hit = (sig, read_logs(d, status=status))
        _LOGS[(d, status)] = hit
    return [lg for lg in hit[1] if task is None or lg["config"]["task"] == task]


def sorted_unique(values) -> list:
    """The distinct values, sorted when they can be (else in first-seen order)."""
    out = []
    for v in values:
        if v not in out:
            out.append(v)
    try:
        return sorted(out)
    except TypeError:
        return out


# The methods of protocol v2, in the order the book introduces them (full fine-tuning, then the SVD family, then
# LoRA-FA); the init families follow in the registry's order (:data:`harness.config.METHODS`).
METHOD_ORDER = ("full", "random", "svd", "svd_naive", "svd_seed", "lora_fa", "lora_fa_svd")


def method_order(methods) -> list[str]:
    """The distinct methods in the study's order (:data:`METHOD_ORDER`, then the other inits in the registry's
    order), unknown ones last, alphabetically."""
    from ..config import METHODS
    order = METHOD_ORDER + tuple(m for m in METHODS if m not in METHOD_ORDER)
    return sorted(set(methods), key=lambda m: (order.index(m) if m in order else len(order), m))


def fmt_lr(lr) -> str:
    return "n/a" if lr is None or (isinstance(lr, float) and math.isnan(lr)) else f"{lr:g}"


def ref_rank(logs: list[dict]) -> int:
    """The most common adapter rank among ``logs`` (8 when none has one): the r_ref of the spectra."""
    ranks = [lg["config"].get("rank") for lg in logs if lg["config"].get("rank")]
    return Counter(ranks).most_common(1)[0][0] if ranks else 8


def describe_runs(log_dir, logs: list[dict]) -> str:
    """Names the runs a figure or table is built from: the log directory, the count as
    tasks × methods × seeds, and the run ids themselves when there are at most 8."""
    ids = sorted(lg["run_id"] for lg in logs)
    if not ids:
        return f"no runs from {log_dir}"
    cfgs = [lg["config"] for lg in logs]
    tasks = sorted_unique(c["task"] for c in cfgs)
    methods = method_order(c["method"] for c in cfgs)
    seeds = sorted_unique(c["seed"] for c in cfgs)
    text = (f"{len(ids)} run{'s' if len(ids) != 1 else ''} from {log_dir}: "
            f"{len(tasks)} task{'s' if len(tasks) != 1 else ''} ({', '.join(tasks)}) × "
            f"{len(methods)} method{'s' if len(methods) != 1 else ''} ({', '.join(methods)}) × "
            f"{len(seeds)} seed{'s' if len(seeds) != 1 else ''} ({', '.join(map(str, seeds))})")
    lrs = sorted_unique(c.get("lr") for c in cfgs if c.get("lr") is not None)
    if len(lrs) > 1:
        text += f", lr ∈ {{{', '.join(fmt_lr(x) for x in lrs)}}}"
    if len(ids) <= MAX_IDS_IN_CAPTION:
        text += "; run ids: " + ", ".join(ids)
    else:
        text += " (run ids in the manifest)"
    return text


def runs_table(log_dir) -> "pd.DataFrame":
    """One row per ok run: run_id, task, method, seed, lr, rank, alpha, epochs, preset, model,
    main_metric, final / best (main metric; best over the dev evaluations, incl. step 0),
    best_step, baseline (majority class), final_<metric> for every dev metric, trainable and total
    parameters, wall_time_s, steps, factors_file.  Null metrics are NaN."""
    import pandas as pd

    rows = []
    for lg in load_logs(log_dir):
        c, main = lg["config"], lg["task"]["main_metric"]
        final, best = lg.get("final") or {}, lg.get("best") or {}
        row = dict(run_id=lg["run_id"], task=c["task"], method=c["method"], seed=c["seed"], lr=c.get("lr"),
                   rank=c.get("rank"), alpha=c.get("alpha"), epochs=c.get("epochs"), preset=c.get("preset"),
                   model=c.get("model"), main_metric=main, final=num(final.get(main)),
                   best=num(best.get(main)), best_step=best.get("step"),
                   baseline=num((lg["task"].get("majority_baseline") or {}).get(main)))
        for k, v in final.items():
            if k not in ("step", "epoch"):
                row[f"final_{k}"] = num(v)
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
    df.attrs["selected_lrs"] = lrs_from_sweep(log_dir)
    return df


def lrs_from_sweep(log_dir) -> dict[tuple[str, str], float]:
    """{(task, method): lr} that protocol v2 selected for a grid whose spec (``configs/<grid>.yaml``, the log
    directory's name) runs each method at the lr its sweep chose (``lr_from``): the rule of
    :func:`harness.protocol.select_lr` on the sweep's logs, read from the sweep's directory beside ``log_dir``.
    {} for any other grid, or when the spec or the sweep's logs are not there."""
    from ..grid import load_spec
    from ..paths import repo_root, resolve
    from ..protocol import selected_lrs
    from ..tasks import UserError

    spec_path = repo_root() / "configs" / f"{Path(log_dir).resolve().name}.yaml"
    try:
        spec = load_spec(spec_path) if spec_path.is_file() else {}
        if not spec.get("lr_from"):
            return {}
        sweep = load_spec(resolve(spec["lr_from"]))
        sweep_dir = Path(log_dir).resolve().parent / Path(sweep.get("out_dir") or sweep["name"]).name
        return selected_lrs(load_logs(sweep_dir))
    except (UserError, OSError, KeyError):
        return {}


def main_lr(runs, task: str, method: str):
    """The learning rate at which (task, method) is compared with other methods: the lr protocol v2
    selected for it (:func:`lrs_from_sweep`, a grid run with ``lr_from``) when some of its runs use it; else its
    preset's lr when some of its runs use it (a grid's extra lr block must not replace it); else the lr most
    of its runs use.  ``runs``: a :func:`runs_table`.  None without runs."""
    from ..config import make_config
    from ..tasks import UserError

    g = runs[(runs["task"] == task) & (runs["method"] == method)]
    if len(g) == 0:
        return None
    lrs = g["lr"].astype(float)
    chosen = runs.attrs.get("selected_lrs", {}).get((task, method))
    if chosen is not None and np.isclose(lrs, chosen).any():
        return float(chosen)
    try:
        lr = float(make_config(task, method, g["preset"].mode().iloc[0])["lr"])
        if np.isclose(lrs, lr).any():
            return lr
    except (UserError, KeyError, TypeError):
        pass
    return float(lrs.mode().iloc[0])


def at_main_lr(logs: list[dict], runs) -> list[dict]:
    """The logs whose lr is their (task, method)'s :func:`main_lr` (``runs``: the :func:`runs_table` of
    their directory): what a figure that compares methods pools, leaving an extra lr block out."""
    return [lg for lg in logs if np.isclose(float(lg["config"]["lr"]),
                                            main_lr(runs, lg["config"]["task"], lg["config"]["method"]))]


def describe_lrs(logs: list[dict]) -> str:
    """Which learning rate each method's runs use, for a caption: "lr 0.001 for every method" or
    "lr: random 0.001, svd 0.0003" (per task when tasks differ)."""
    by: dict[tuple, set] = {}
    for lg in logs:
        c = lg["config"]
        by.setdefault((c["task"], c["method"]), set()).add(c.get("lr"))
    lrs = {lr for v in by.values() for lr in v}
    if len(lrs) == 1:
        return f"lr {fmt_lr(next(iter(lrs)))} for every method"
    per_method: dict[str, set] = {}
    for (t, m), v in by.items():
        per_method.setdefault(m, set()).update(v)
    if all(len(v) == 1 for v in per_method.values()):
        return "lr: " + ", ".join(f"{m} {fmt_lr(next(iter(per_method[m])))}" for m in method_order(per_method))
    return "lr: " + "; ".join(f"{t}/{m} " + ", ".join(fmt_lr(x) for x in sorted_unique(v))
                              for (t, m), v in sorted(by.items()))


def failed_runs(log_dir) -> "pd.DataFrame":
    """run_id, task, method, seed, lr and reason of every log whose status is not ok."""
    import pandas as pd

    rows = [dict(run_id=lg["run_id"], task=lg["config"].get("task"), method=lg["config"].get("method"),
                 seed=lg["config"].get("seed"), lr=lg["config"].get("lr"), status=lg["status"],
                 reason=lg.get("reason"))
            for lg in load_logs(log_dir, status=None) if lg["status"] != "ok"]
    return pd.DataFrame(rows, columns=["run_id", "task", "method", "seed", "lr", "status", "reason"])


def varying_keys(df) -> list[str]:
    """Config fields (of SUMMARY_VARY) that take more than one value within some (task, method)."""
    keys = []
    for k in SUMMARY_VARY:
        if k in df.columns and (df.groupby(["task", "method"])[k].nunique(dropna=True) > 1).any():
            keys.append(k)
    return keys


def summary_table(log_dir) -> "pd.DataFrame":
    """Final dev metrics per (task, method[, lr, ...]) as mean ± std over seeds.

    Grouped by task and method, plus any config field of ``SUMMARY_VARY`` (lr, rank, ...) that
    varies within a (task, method).  Columns: the group keys, main_metric, runs (ok runs in the
    group), seeds, n / mean / std / summary of the final main metric, best_mean / best_std / best of
    the best-during-training main metric, baseline (majority class), then for every metric m of the
    task: m_n, m_mean, m_std and m (the formatted string).  std is the sample standard deviation
    (ddof=1; NaN for n=1, printed as "(n=1)"); null/NaN metrics are left out of n, mean and std.
    """
    import pandas as pd

    runs = runs_table(log_dir)
    keys = ["task", "method"]
    rows = []
    if len(runs):
        keys += varying_keys(runs)
        runs = runs.assign(_morder=runs["method"].map({m: i for i, m in enumerate(method_order(runs["method"]))}))
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
    return df



def main_lr_rows(table, runs):
    """The rows of ``table`` (any frame with task, method and lr columns, e.g. a spectra CSV) whose lr is
    their (task, method)'s :func:`main_lr` in ``runs`` (a :func:`runs_table`)."""
    if not len(table):
        return table
    lrs = {tm: main_lr(runs, *tm) for tm in set(zip(table["task"], table["method"]))}
    keep = [lrs[(t, m)] is not None and bool(np.isclose(float(lr), lrs[(t, m)]))
            for t, m, lr in zip(table["task"], table["method"], table["lr"])]
    return table[keep]
