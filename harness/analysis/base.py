"""Base size (all-mpnet-base-v2) from its logs: the pilot that fixed the budget, the grid's coverage, and the
question the chapter asks: does the MiniLM answer hold at base size?

* :func:`pilot_curves`      every evaluation of the pilot runs (dev and validation metric by epoch);
* :func:`pilot_budget`      the budget rule of ``configs/base_pilot.yaml``, applied to the pilot's curves;
* :func:`coverage`          runs logged / planned per grid spec (what ``python -m harness status`` counts);
* :func:`sweep_progress`    per task × method, each planned lr's validation score so far and, once the series is
                            complete, the selected lr (the rule of :mod:`harness.protocol`);
* :func:`model_differences` (method − random) at each method's own lr on MPNet beside the same on MiniLM.

Pure functions of ``logs/base_pilot``, ``logs/base_sweep``, ``logs/base`` and, for MiniLM, ``logs/v2_sweep`` and
``logs/v2``; the rule's thresholds are the spec's, written before any pilot run.
"""
from __future__ import annotations

import math

from ..tasks import order_tasks
from .runs import load_logs

# configs/base_pilot.yaml's rule, fixed before the pilot ran.
FLAT_TOLERANCE = {"accuracy": 0.01, "mcc": 0.02}   # the validation metric stays within this of its final value
LEARNED_MARGIN = {"accuracy": 0.03}                 # dev ≥ majority + margin (accuracy tasks)
LEARNED_MCC = 0.2                                   # dev MCC ≥ this (CoLA; its majority class has MCC 0)


def pilot_curves(log_dir) -> "pd.DataFrame":
    """One row per evaluation: task, method, lr, epoch, step, dev metric, validation metric, majority class."""
    import pandas as pd
    rows = []
    for lg in load_logs(log_dir):
        c, m = lg["config"], lg["task"]["main_metric"]
        for e in lg["history"]["evals"]:
            rows.append({"task": c["task"], "method": c["method"], "lr": c["lr"], "epoch": e["epoch"],
                         "step": e["step"], "metric": m, "dev": e[m], "val": (e.get("val") or {}).get(m),
                         "majority": lg["task"]["majority_baseline"].get(m, 0.0)})
    return pd.DataFrame(rows)


def flat_from(epochs, values, tol: float) -> float:
    """The smallest whole epoch E such that every value logged at epoch ≥ E lies within ``tol`` of the last
    value (compared on values rounded to 6 digits, so float noise cannot decide)."""
    last = round(values[-1], 6)
    ok_from = epochs[-1]
    for ep, v in sorted(zip(epochs, values), reverse=True):
        if abs(round(v, 6) - last) > tol + 1e-12:
            break
        ok_from = ep
    return float(math.ceil(ok_from - 1e-9))


def learned(metric: str, dev_final: float, majority: float) -> bool:
    if metric == "mcc":
        return round(dev_final, 6) >= LEARNED_MCC
    return round(dev_final - majority, 6) >= LEARNED_MARGIN.get(metric, 0.03)


def pilot_budget(log_dir) -> "pd.DataFrame":
    """Per task and method: final dev vs majority, whether learned, the epoch from which validation is flat;
    and per task the budget E (the larger of the methods' flat epochs) with the rule's verdict."""
    import pandas as pd
    curves = pilot_curves(log_dir)
    rows = []
    for (task, method), g in curves.groupby(["task", "method"], sort=False):
        g = g.sort_values("step")
        metric = g["metric"].iloc[0]
        rows.append({"task": task, "method": method, "lr": g["lr"].iloc[0], "epochs run": g["epoch"].max(),
                     "metric": metric, "dev final": g["dev"].iloc[-1], "majority": g["majority"].iloc[0],
                     "learned": learned(metric, g["dev"].iloc[-1], g["majority"].iloc[0]),
                     "flat from epoch": flat_from(list(g["epoch"]), list(g["val"]), FLAT_TOLERANCE.get(metric, 0.01))})
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    df["task budget (epochs)"] = df.groupby("task")["flat from epoch"].transform("max")
    order = {t: i for i, t in enumerate(order_tasks(set(df["task"])))}
    return df.sort_values(["task", "method"], key=lambda s: s.map(order) if s.name == "task" else s).reset_index(drop=True)


def coverage(spec_path) -> dict:
    """{"logged": ok runs, "failed": failed/interrupted, "todo": configs without a log, "waiting": configs whose
    lr sweep series is unfinished (an lr_from spec), "total": planned} of a grid spec, as ``python -m harness
    status`` counts them."""
    from ..grid import grid_counts, grid_out_dir, load_spec
    spec = load_spec(spec_path)
    n = grid_counts(spec, grid_out_dir(spec))
    return {"logged": n["done"], "failed": n["failed"] + n["corrupt"], "todo": n["todo"], "waiting": n["waiting"],
            "total": sum(n.values())}


def sweep_progress(spec_path) -> "pd.DataFrame":
    """One row per (task, method) of a sweep spec: each planned lr's final validation score ("to run" while
    unlogged; edge extensions appear once their series asks for them), runs logged of planned, minutes per run,
    and the selected lr once every planned run of the series is logged."""
    import pandas as pd
    from ..config import run_id
    from ..grid import expand, grid_out_dir, load_spec, run_status
    from ..logs import read_log
    from ..protocol import select_lr_from_scores, val_score
    spec = load_spec(spec_path)
    out = grid_out_dir(spec)
    series: dict[tuple[str, str], dict] = {}
    for c in expand(spec, out):
        done = run_status(c, out) in ("done", "failed")
        lg = read_log(out / f"{run_id(c)}.json") if done else None
        s = series.setdefault((c["task"], c["method"]), {"scores": {}, "planned": 0, "minutes": []})
        s["planned"] += 1
        if lg is not None:
            s["scores"][c["lr"]] = val_score(lg)
            s["minutes"].append(lg["wall_time_s"] / 60)
        else:
            s["scores"].setdefault(c["lr"], None)
    rows = []
    for (task, method), s in series.items():
        logged = {lr: v for lr, v in s["scores"].items() if v is not None}
        complete = len(logged) == s["planned"]
        rows.append({"task": task, "method": method,
                     "val by lr": "; ".join(f"{lr:g}: " + ("to run" if v is None else "failed" if not math.isfinite(v)
                                                           else f"{v:.3f}") for lr, v in sorted(s["scores"].items())),
                     "logged": len(logged), "planned": s["planned"],
                     "minutes per run": (sum(s["minutes"]) / len(s["minutes"])) if s["minutes"] else None,
                     "selected lr": select_lr_from_scores(logged) if complete else None})
    return pd.DataFrame(rows)


def model_differences(base_logs, base_sweep, minilm_logs, minilm_sweep) -> "pd.DataFrame":
    """Per task and method: (method − random), final dev metric, each at its own selected lr, paired by seed,
    with its 95 % interval and n, on MPNet and on MiniLM side by side (Holm-adjusted p within each model's
    own family, as that model's chapter reports it)."""
    import pandas as pd
    from .protocol_v2 import comparisons, method_order

    def own_lr(comps):
        return {(c["task"], c["b"]): c for c in comps
                if c["a"] == "random" and c["quantity"] == "final" and c["group"] == "each at its own lr"}

    base = own_lr(comparisons(base_logs, base_sweep))
    mini = own_lr(comparisons(minilm_logs, minilm_sweep))
    keys = set(base) | set(mini)
    rows = []
    for key in [(t, m) for t in order_tasks({t for t, _ in keys}) for m in method_order({m for t2, m in keys if t2 == t})]:
        row = {"task": key[0], "method": key[1]}
        for name, comps in (("MPNet", base), ("MiniLM", mini)):
            c = comps.get(key)
            row[f"{name} diff"] = c["diff"] if c else None
            row[f"{name} lo"] = c["lo"] if c else None
            row[f"{name} hi"] = c["hi"] if c else None
            row[f"{name} n"] = c["n"] if c else 0
            row[f"{name} p (Holm)"] = c.get("p_holm") if c else None
        rows.append(row)
    return pd.DataFrame(rows)
