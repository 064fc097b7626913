"""Which subspace should an adapter start in?  The numbers of the init study.

Pure functions: run logs (``logs/v2`` + ``logs/v2_sweep`` for the round-1 inits, ``logs/inits`` +
``logs/inits_sweep`` for the newer families) and ``logs/capture/capture.json`` (:mod:`harness.capture`)
in, DataFrames and dicts out.  Nothing trains, nothing reads model weights.  Figures:
:mod:`harness.plots.inits`; the page's formatted tables and pasted numbers: :mod:`harness.prose.inits`.

* :func:`init_runs`         one row per run at its (task, method)'s validation-selected lr
  (:func:`harness.protocol.select_lr` on the sweep), with the final, first-eval and epoch-1-loss numbers
  (:func:`harness.analysis.findings.curve_points`).
* :func:`init_table`        what each init is: subspace, frozen factor, residual, data, cost.
* :func:`results_table`     selected lr and final dev metric mean ± sd (n) per task and init.
* :func:`comparisons`       paired differences init − random per task over shared seeds, 95 % t interval,
  Holm-adjusted p over the whole family (every init × task on the page).
* :func:`capture_summary`, :func:`capture_layers`   the step-0 capture per (task, init) and per layer.
* :func:`outcome_points`, :func:`correlations`      capture against early progress and the final metric.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

import lora

from .stats import mean_sd, paired, spearman_ci, with_holm

TASKS = ("mrpc", "cola")
ROUND1 = lora.init_names(study="round1")         # logs/v2
NEW = lora.init_names(study="families")          # logs/inits
INITS = ROUND1 + NEW
STEP0_CHANGED = lora.init_names(changes_model=True)
BASELINE = "random"
OUTCOMES = {"first": "dev metric at the first eval (epoch 0.25)",
            "loss_epoch1": "mean training loss over epoch 1",
            "final": "final dev metric"}

# What subspace each init starts in: one line of prose each, declared with the init (lora.registry).
SUBSPACE = {n: lora.init_spec(n).subspace for n in lora.ALL_INITS}
DATA = {"input": "inputs", "grad": "gradient"}


def short_layer(name: str) -> str:
    """``bert.encoder.layer.3.attention.self.value`` → ``3.v``."""
    parts = name.split(".")
    idx = next((p for p in parts if p.isdigit()), "?")
    return f"{idx}.{parts[-1][0]}"


def run_record(log: dict) -> dict:
    """The numbers this page uses from one run log."""
    from .findings import curve_points
    c = log["config"]
    pts = curve_points(log)
    after = [e for e in log["history"]["evals"] if float(e["epoch"]) > 0]
    init = log.get("init") or {}
    return {"task": c["task"], "method": c["method"], "seed": c["seed"], "lr": c["lr"],
            "metric": log["task"]["main_metric"], "final": pts["final"], "first": pts["first"], "epoch1": pts["epoch1"],
            "first_epoch": float(after[0]["epoch"]) if after else math.nan, "loss_epoch1": pts["loss_epoch1"],
            "init_seconds": init.get("seconds", math.nan), "init_batches": init.get("batches", 0),
            "init_examples": init.get("examples", 0), "n_dev": (log.get("data") or {}).get("n_dev"),
            "run_id": log["run_id"]}


def init_runs(main_logs: list[dict], sweep_logs: list[dict], tasks=TASKS, methods=None) -> pd.DataFrame:
    """One row per run of ``main_logs`` whose lr is the one :func:`harness.protocol.select_lr` picks for its
    (task, method) from ``sweep_logs``; runs at other rates (e.g. v2's small-lr block) are left out."""
    from ..protocol import select_lr
    rows, chosen = [], {}
    for lg in main_logs:
        c = lg["config"]
        if c["task"] not in tasks or (methods is not None and c["method"] not in methods):
            continue
        key = (c["task"], c["method"])
        if key not in chosen:
            chosen[key] = select_lr(sweep_logs, *key)
        if np.isclose(c["lr"], chosen[key]):
            rows.append(run_record(lg))
    cols = ["task", "method", "seed", "lr", "metric", "final", "first", "first_epoch", "epoch1", "loss_epoch1",
            "init_seconds", "init_batches", "init_examples", "n_dev", "run_id"]
    return pd.DataFrame(rows, columns=cols).sort_values(["task", "method", "seed"], ignore_index=True)


GRIDS = (("v2", "v2_sweep"), ("inits", "inits_sweep"))


def load_runs(logs_root="logs", tasks=TASKS, dirs: dict | None = None) -> pd.DataFrame:
    """Round-1 inits + full fine-tuning (``v2``) and the newer families (``inits``), each at its selected lr.
    ``dirs`` maps a grid name to its directory (default ``<logs_root>/<name>``)."""
    from .runs import load_logs
    where = lambda name: Path(dirs[name]) if dirs and name in dirs else Path(logs_root) / name
    parts = [init_runs(load_logs(where(main)), load_logs(where(sweep)), tasks) for main, sweep in GRIDS]
    return pd.concat(parts, ignore_index=True)


def _order(methods) -> list[str]:
    known = [m for m in (*INITS, "full") if m in set(methods)]
    return known + sorted(set(methods) - set(known))


def init_table(runs: pd.DataFrame, capture: dict | None = None, inits=INITS) -> pd.DataFrame:
    """Per init: subspace, frozen factor, residual, model unchanged at step 0, data it reads, and its cost:
    seconds of the data-aware statistics in the runs (mean over the runs' ``init`` fields, on the device the
    runs used) with their batches, and seconds to build the factors of all adapted layers on one CPU thread
    (from ``capture``, mean over its (task, seed))."""
    build = {}
    if capture:
        for part in capture["parts"]:
            for c in part["captures"]:
                build.setdefault(c["init"], []).append(c["init_seconds"])
    rows = []
    for init in inits:
        r = runs[runs["method"] == init]
        needs = sorted(lora.DATA_INITS.get(init, ()))
        stats_s = r["init_seconds"].mean() if needs and len(r) else math.nan
        rows.append({"init": init, "subspace": SUBSPACE.get(init, ""),
                     "frozen": "A" if init in lora.FROZEN_A_INITS else "none",
                     "residual": init in lora.RESIDUAL_INITS,
                     "unchanged at step 0": init not in STEP0_CHANGED,
                     "data": ", ".join(DATA[n] for n in needs) or "weights only",
                     "batches": int(r["init_batches"].max()) if needs and len(r) else 0,
                     "stats s (runs)": stats_s,
                     "factors s (CPU)": float(np.mean(build[init])) if init in build else math.nan})
    return pd.DataFrame(rows)


def by_seed(runs: pd.DataFrame, task: str, method: str, quantity: str = "final") -> dict:
    r = runs[(runs["task"] == task) & (runs["method"] == method)]
    return {int(s): float(v) for s, v in zip(r["seed"], r[quantity])}


def results_table(runs: pd.DataFrame, seeds=None) -> pd.DataFrame:
    """Per task and method: the selected lr and the final dev metric mean, sd and n (over ``seeds`` if given)."""
    rows = []
    for task in [t for t in TASKS if t in set(runs["task"])] + sorted(set(runs["task"]) - set(TASKS)):
        rt = runs[runs["task"] == task]
        for m in _order(rt["method"].unique()):
            r = rt[rt["method"] == m]
            if seeds is not None:
                r = r[r["seed"].isin(seeds)]
            mean, sd, n = mean_sd(r["final"])
            rows.append({"task": task, "init": m, "metric": r["metric"].iloc[0] if len(r) else "",
                         "lr": float(r["lr"].iloc[0]) if len(r) else math.nan, "mean": mean, "sd": sd, "n": n})
    return pd.DataFrame(rows)


def comparisons(runs: pd.DataFrame, baseline: str = BASELINE, quantity: str = "final",
                exclude=("full",), seeds=None) -> pd.DataFrame:
    """init − baseline on ``quantity`` per task, paired by seed over the seeds both have (within ``seeds``
    if given); Holm over the whole family (all rows).  Columns of :func:`harness.analysis.stats.paired` plus
    task, init, p_holm, finding."""
    comps = []
    for task in [t for t in TASKS if t in set(runs["task"])]:
        rt = runs[runs["task"] == task]
        base = by_seed(rt, task, baseline, quantity)
        for m in _order(rt["method"].unique()):
            if m == baseline or m in exclude:
                continue
            other = by_seed(rt, task, m, quantity)
            if seeds is not None:
                base_s = {s: v for s, v in base.items() if s in seeds}
                other = {s: v for s, v in other.items() if s in seeds}
            else:
                base_s = base
            comps.append({"task": task, "init": m, **paired(base_s, other)})
    out = pd.DataFrame(with_holm(comps))
    return out


def capture_runs(capture: dict) -> pd.DataFrame:
    """One row per (task, seed, init): mean capture over layers, ‖G‖²-pooled capture, flags."""
    rows = [{"task": c["task"], "seed": c["seed"], "init": c["init"], "capture": c["mean"], "pooled": c["pooled"],
             "step0_changed": c["step0_changed"], "run_A_overlap": c.get("run_A_overlap", math.nan)}
            for part in capture["parts"] for c in part["captures"]]
    return pd.DataFrame(rows)


def capture_summary(capture: dict) -> pd.DataFrame:
    """Per (task, init): capture mean ± sd over seeds (of the per-seed layer mean), pooled capture, n."""
    df = capture_runs(capture)
    g = df.groupby(["task", "init"], sort=False)
    out = g.agg(capture=("capture", "mean"), capture_sd=("capture", "std"), pooled=("pooled", "mean"),
                n=("seed", "nunique"), step0_changed=("step0_changed", "first")).reset_index()
    return out


def gradient_reference(capture: dict) -> pd.DataFrame:
    """Per task: G's top-r and top-2r energy shares (mean over layers and seeds): the most a zero-B or
    frozen-A init, and any rank-r init, can capture."""
    rows = [{"task": p["task"], "seed": p["seed"], "layer": n, **g}
            for p in capture["parts"] for n, g in p["gradient"].items()]
    df = pd.DataFrame(rows)
    return df.groupby("task", sort=False)[["top_r", "top_2r"]].mean().reset_index()


def capture_layers(capture: dict, task: str) -> pd.DataFrame:
    """init × layer matrix of capture for one task (mean over seeds), layers as ``3.q``; plus rows
    ``G top-r``, ``G top-2r`` (the reference energies)."""
    acc: dict = {}
    refs: dict = {}
    layers: list = []
    for p in capture["parts"]:
        if p["task"] != task:
            continue
        layers = p["layers"]
        for c in p["captures"]:
            for n, v in c["per_layer"].items():
                acc.setdefault(c["init"], {}).setdefault(n, []).append(v)
        for n, g in p["gradient"].items():
            refs.setdefault("G top-r", {}).setdefault(n, []).append(g["top_r"])
            refs.setdefault("G top-2r", {}).setdefault(n, []).append(g["top_2r"])
    mat = {i: {short_layer(n): float(np.mean(acc[i][n])) for n in layers} for i in _order(acc)}
    mat.update({k: {short_layer(n): float(np.mean(v[n])) for n in layers} for k, v in refs.items()})
    return pd.DataFrame(mat).T[[short_layer(n) for n in layers]]


def outcome_points(runs: pd.DataFrame, capture: dict) -> pd.DataFrame:
    """Per (task, init): mean capture and the mean of each outcome over the capture's seeds."""
    cap = capture_runs(capture)
    rows = []
    for (task, init), c in cap.groupby(["task", "init"], sort=False):
        seeds = set(c["seed"])
        r = runs[(runs["task"] == task) & (runs["method"] == init) & (runs["seed"].isin(seeds))]
        rows.append({"task": task, "init": init, "capture": float(c["capture"].mean()),
                     "step0_changed": bool(c["step0_changed"].iloc[0]), "n": int(len(r)),
                     **{q: float(r[q].mean()) if len(r) else math.nan for q in OUTCOMES}})
    return pd.DataFrame(rows)


def correlations(points: pd.DataFrame, n_boot: int = 2000) -> pd.DataFrame:
    """Spearman ρ of capture against each outcome, per task, over all inits and over those that leave the
    model unchanged at step 0; 95 % bootstrap interval (:func:`harness.analysis.stats.spearman_ci`)."""
    rows = []
    for task in [t for t in TASKS if t in set(points["task"])]:
        pt = points[points["task"] == task]
        for subset, sel in (("all", pt), ("unchanged at step 0", pt[~pt["step0_changed"]])):
            for q in OUTCOMES:
                ok = sel[np.isfinite(sel[q])]
                r = spearman_ci(ok["capture"], ok[q], n_boot=n_boot)
                rows.append({"task": task, "outcome": q, "inits": subset, **r})
    return pd.DataFrame(rows)

