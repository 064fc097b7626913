"""Why each init wants its own learning rate: the curvature measurements against the selected rates.

Pure functions of ``logs/curvature/curvature.json`` (written by :mod:`harness.curvature`, whose docstring
holds the operator, the bounds and the prediction).  Nothing here trains or reads a model.

* :func:`entries_table`   one row per task × method × step: λmax and λ₂…λ₅ of the Hessian in the trainable
  parameters, λmax of the adapter block alone, the preconditioned λmax(P⁻¹H), the selected lr, the collapsed
  rates, and the two stability bounds: gradient descent's 2/λmax and Adam's 38/λmax(P⁻¹H) (β₁ = 0.9).
* :func:`correlations`    Spearman ρ over inits of each curvature quantity against the selected lr, per task,
  with a 95 % bootstrap interval (:func:`harness.analysis.stats.spearman_ci`); over the adapter inits, and with
  full fine-tuning added.
* :func:`bound_checks`    per task and bound: how many selected rates lie within the bound and how many
  collapsed rates beyond it.
* :func:`along_table`     the along-training entries: λmax, λmax(P⁻¹H) and η·λmax(P⁻¹H) against 38.
* :func:`along_summary`   per task × method measured along training: step 0 against the end, and prediction 3
  (η·λmax(P⁻¹H) rises to O(38) at the later snapshots) judged by :data:`EDGE_FACTOR`.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from .stats import spearman_ci

ADAM_BETA1 = 0.9
ADAM_BOUND = (2 + 2 * ADAM_BETA1) / (1 - ADAM_BETA1)     # 38
GD_BOUND = 2.0
# Prediction 3 says η·λmax(P⁻¹H) is "O(38)" at the later snapshots; read as: within a factor of 3 of 38 at
# both of them (2/3 and the end of training).  Fixed before any along-training number was computed.
EDGE_FACTOR = 3.0
LATER = (2 / 3, 1.0)
QUANTITIES = {"lambda_max": "λmax(H)", "adapters_max": "λmax(H), adapter block", "precond_max": "λmax(P⁻¹H)"}
BOUNDS = {"gd": ("lambda_max", GD_BOUND, "2/λmax(H)"), "adam": ("precond_max", ADAM_BOUND, "38/λmax(P⁻¹H)")}


def load(path="logs/curvature/curvature.json") -> dict:
    return json.loads(Path(path).read_text())


def _get(e: dict, key: str) -> float:
    v = e.get(key)
    return float(v) if v is not None else math.nan


def entries_table(data: dict) -> pd.DataFrame:
    """One row per entry (see the module docstring); NaN where a part was not measured."""
    rows = []
    for e in data["entries"]:
        top = e.get("top") or []
        lam, pre = (float(top[0]) if top else math.nan), _get(e, "precond_max")
        gd = GD_BOUND / lam if lam > 0 else math.inf
        adam = ADAM_BOUND / pre if pre > 0 else math.inf
        collapsed = list(e.get("collapsed_lrs") or [])
        rows.append({
            "task": e["task"], "method": e["method"], "step": e["step"], "fraction": e.get("fraction", 0.0),
            "lambda_max": lam, "top": top, "adapters_max": _get(e, "adapters_max"), "precond_max": pre,
            "adapters_precond_max": _get(e, "adapters_precond_max"),
            "selected_lr": e["selected_lr"], "lr_next": _get(e, "lr_next"), "collapsed_lrs": collapsed,
            "gd_bound": gd, "adam_bound": adam, "lr_x_precond": e["selected_lr"] * pre,
            "selected_within_gd": e["selected_lr"] <= gd, "selected_within_adam": e["selected_lr"] <= adam,
            "collapsed_beyond_gd": [lr > gd for lr in collapsed],
            "collapsed_beyond_adam": [lr > adam for lr in collapsed],
            "seconds_lambda": _get(e, "seconds_lambda"), "hvps_lambda": e.get("hvps_lambda"),
            "n_params": e.get("n_params")})
    return pd.DataFrame(rows)


def step0(data: dict) -> pd.DataFrame:
    t = entries_table(data)
    return t[t["step"] == 0].reset_index(drop=True)


N_BOOT = 2000         # bootstrap resamples of the inits behind each Spearman interval


def correlations(data: dict, n_boot: int = N_BOOT) -> pd.DataFrame:
    """Spearman ρ(quantity at step 0, selected lr) over inits, per task: over the adapter inits, and with full
    fine-tuning; 95 % percentile bootstrap interval.  The prediction says ρ < 0 (interval below 0)."""
    t = step0(data)
    rows = []
    for task in sorted(set(t["task"]), key=lambda x: (x != "mrpc", x)):
        tt = t[t["task"] == task]
        subsets = [("adapter inits", tt[tt["method"] != "full"])]
        if (tt["method"] == "full").any():      # else the same rows again
            subsets.append(("with full fine-tuning", tt))
        for subset, sel in subsets:
            for q in QUANTITIES:
                if q == "adapters_max" and subset != "adapter inits":
                    continue            # full fine-tuning has no adapter block: the same rows as above
                ok = sel[np.isfinite(sel[q])]
                if len(ok) < 3:
                    continue
                r = spearman_ci(ok[q], ok["selected_lr"], n_boot=n_boot)
                verdict = ("holds" if r["hi"] < 0 else "fails: ρ > 0 with the interval above 0" if r["lo"] > 0
                           else "not shown: the interval includes 0")
                rows.append({"task": task, "inits": subset, "quantity": q, **r, "prediction": verdict})
    return pd.DataFrame(rows)


def bound_checks(data: dict) -> pd.DataFrame:
    """Per task and bound (step 0): selected rates within the bound, collapsed rates beyond it (counts)."""
    t = step0(data)
    rows = []
    for task in sorted(set(t["task"]), key=lambda x: (x != "mrpc", x)):
        tt = t[t["task"] == task]
        for name, (q, c, label) in BOUNDS.items():
            ok = tt[np.isfinite(tt[q])]
            beyond = [b for bs in ok[f"collapsed_beyond_{name}"] for b in bs]
            rows.append({"task": task, "bound": label, "methods": len(ok),
                         "selected_within": int(ok[f"selected_within_{name}"].sum()),
                         "collapsed": len(beyond), "collapsed_beyond": int(sum(beyond))})
    return pd.DataFrame(rows)


def along_table(data: dict) -> pd.DataFrame:
    """Entries with a step > 0 and each method's step-0 entry: λmax, λmax(P⁻¹H), η·λmax(P⁻¹H) (η the selected
    lr; Adam's bound is η·λmax(P⁻¹H) < 38) and the lr actually used at the next step."""
    t = entries_table(data)
    along = set(t.loc[t["step"] > 0, "method"].map(str) + "/" + t.loc[t["step"] > 0, "task"])
    t = t[(t["method"] + "/" + t["task"]).isin(along)]
    cols = ["task", "method", "step", "fraction", "lambda_max", "precond_max", "selected_lr", "lr_x_precond",
            "lr_next"]
    return t[cols].sort_values(["task", "method", "step"]).reset_index(drop=True)


def along_summary(data: dict) -> pd.DataFrame:
    """Per task × method with snapshots: λmax(H) and λmax(P⁻¹H) at step 0 and at the last snapshot, η·λmax(P⁻¹H)
    (η the selected lr) at step 0 and at each later snapshot, and prediction 3's verdict: "held" when it is
    within a factor :data:`EDGE_FACTOR` of 38 at both later snapshots and above its step-0 value, "failed"
    otherwise, "not yet" while a later snapshot is unmeasured."""
    t = along_table(data)
    rows = []
    for (task, method), g in t.groupby(["task", "method"], sort=False):
        g = g.sort_values("step")
        s0, last = g.iloc[0], g.iloc[-1]
        later = [g[np.isclose(g["fraction"], f, atol=0.01)] for f in LATER]
        ok = [len(x) and np.isfinite(x["lr_x_precond"].iloc[0]) for x in later]
        vals = [float(x["lr_x_precond"].iloc[0]) if k else math.nan for x, k in zip(later, ok)]
        if not all(ok) or s0["step"] != 0:
            verdict = "not yet"
        else:
            near = all(ADAM_BOUND / EDGE_FACTOR <= v <= ADAM_BOUND * EDGE_FACTOR for v in vals)
            verdict = "held" if near and vals[-1] > s0["lr_x_precond"] else "failed"
        rows.append({"task": task, "method": method, "selected_lr": s0["selected_lr"],
                     "lambda_0": s0["lambda_max"], "lambda_end": last["lambda_max"],
                     "precond_0": s0["precond_max"], "precond_end": last["precond_max"],
                     "edge_0": s0["lr_x_precond"], "edge_2/3": vals[0], "edge_end": vals[1],
                     "end_fraction": last["fraction"], "prediction 3": verdict})
    return pd.DataFrame(rows)


def coverage(data: dict, methods_per_task: int) -> pd.DataFrame:
    """Per task: the methods measured at step 0 (of ``methods_per_task``), those measured along training, and
    the median seconds of one λmax (Lanczos on the whole trainable block)."""
    t = entries_table(data)
    rows = []
    for task in sorted(set(t["task"]), key=lambda x: (x != "mrpc", x)):
        tt = t[t["task"] == task]
        s0 = tt[tt["step"] == 0]
        rows.append({"task": task, "step0": int(s0["method"].nunique()), "of": methods_per_task,
                     "along": int(tt.loc[tt["step"] > 0, "method"].nunique()),
                     "median_seconds": float(np.nanmedian(s0["seconds_lambda"])) if len(s0) else math.nan,
                     "max_seconds": float(np.nanmax(s0["seconds_lambda"])) if len(s0) else math.nan})
    return pd.DataFrame(rows)


def adam_separation(data: dict) -> pd.DataFrame:
    """Per task (step 0): of the inits with a collapsed rate, those whose selected rate is within Adam's bound
    38/λmax(P⁻¹H) and every collapsed rate beyond it ("separated"); collapsed rates within the bound, and swept rates beyond it that trained
    without collapsing (from the sweep record: ``swept`` minus ``collapsed_lrs``)."""
    rows = []
    for e in data["entries"]:
        if e["step"] != 0 or e.get("precond_max") is None:
            continue
        bound = ADAM_BOUND / e["precond_max"]
        collapsed = list(e.get("collapsed_lrs") or [])
        swept = [float(x) for x in (e.get("swept") or [])]
        rows.append({"task": e["task"], "method": e["method"], "bound": bound,
                     "separated": bool(collapsed) and e["selected_lr"] <= bound and all(c > bound for c in collapsed),
                     "with_collapse": bool(collapsed),
                     "collapsed_within": sum(c <= bound for c in collapsed), "collapsed": len(collapsed),
                     "fine_beyond": sum(lr > bound and lr not in collapsed for lr in swept)})
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    return df.groupby("task", sort=False).agg(inits=("method", "size"), with_collapse=("with_collapse", "sum"),
                                              separated=("separated", "sum"),
                                              collapsed=("collapsed", "sum"),
                                              collapsed_within=("collapsed_within", "sum"),
                                              fine_beyond=("fine_beyond", "sum")).reset_index()
