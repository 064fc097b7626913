"""The init study's page (book/inits.md) in words: formatted tables and the numbers its prose pastes."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ..analysis.inits import INITS, NEW, OUTCOMES, ROUND1, TASKS, _order
from ..tasks import task_label


def results_display(res: pd.DataFrame) -> pd.DataFrame:
    """init × task: ``lr`` and ``mean ± sd (n)`` of the final dev metric (4 decimals)."""
    out = {}
    for task in [t for t in TASKS if t in set(res["task"])]:
        r = res[res["task"] == task].set_index("init")
        metric = r["metric"].iloc[0]
        out[f"{task_label(task)} lr"] = r["lr"].map(lambda v: f"{v:g}")
        out[f"{task_label(task)} {metric}"] = [f"{m:.4f} ± {s:.4f} ({n})" for m, s, n in zip(r["mean"], r["sd"], r["n"])]
    df = pd.DataFrame(out)
    df = df.loc[_order(df.index)]
    return df.rename_axis("init").reset_index()


def comparisons_display(comp: pd.DataFrame) -> pd.DataFrame:
    """One row per comparison: task, init, n, difference with its 95 % interval, p, Holm p, finding."""
    return pd.DataFrame({
        "task": comp["task"].map(task_label), "init": comp["init"], "n": comp["n"],
        "init − random": [f"{d:+.4f} [{lo:+.4f}, {hi:+.4f}]" for d, lo, hi in zip(comp["diff"], comp["lo"], comp["hi"])],
        "p": comp["p"], "p (Holm)": comp["p_holm"], "finding": comp["finding"].map({True: "yes", False: ""})})


def capture_display(caps: pd.DataFrame, ref: pd.DataFrame) -> pd.DataFrame:
    """init × task: capture ``mean ± sd`` over seeds (layer mean) and the ‖G‖²-pooled capture; last rows:
    G's top-r and top-2r energy shares (the ceilings)."""
    out = {}
    for task in [t for t in TASKS if t in set(caps["task"])]:
        c = caps[caps["task"] == task].set_index("init")
        out[f"{task_label(task)} capture"] = [f"{m:.3f} ± {s:.3f}" for m, s in zip(c["capture"], c["capture_sd"])]
        out[f"{task_label(task)} pooled"] = [f"{p:.3f}" for p in c["pooled"]]
        rf = ref.set_index("task").loc[task]
        out[f"{task_label(task)} capture"] += [f"{rf['top_r']:.3f}", f"{rf['top_2r']:.3f}"]
        out[f"{task_label(task)} pooled"] += ["", ""]
    index = list(caps[caps["task"] == caps["task"].iloc[0]]["init"]) + ["G top-r (ceiling, B₀ = 0)", "G top-2r (ceiling)"]
    return pd.DataFrame(out, index=index).rename_axis("init").reset_index()


def correlations_display(corr: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({
        "task": corr["task"].map(task_label), "outcome": corr["outcome"].map(OUTCOMES), "inits": corr["inits"],
        "n": corr["n"], "Spearman ρ [95 % bootstrap]": [f"{r:+.2f} [{lo:+.2f}, {hi:+.2f}]"
                                                       for r, lo, hi in zip(corr["rho"], corr["lo"], corr["hi"])],
        "p": corr["p"]})


def page_numbers(runs: pd.DataFrame, comp: pd.DataFrame, caps: pd.DataFrame, ref: pd.DataFrame,
                 corr: pd.DataFrame, capture: dict, res: pd.DataFrame) -> dict:
    """The numbers and short phrases the chapter's prose pastes (``myst_nb.glue``), by name."""
    g: dict = {}
    g["n_comparisons"] = int(len(comp))
    g["n_ahead"] = int(((comp["diff"] > 0) & comp["finding"]).sum())
    behind = comp[(comp["diff"] < 0) & comp["finding"]]
    g["n_behind"] = int(len(behind))
    g["behind_text"] = "; ".join(f"{i} on {task_label(t)}, {d:+.3f} [{lo:+.3f}, {hi:+.3f}]"
                                 for t, i, d, lo, hi in zip(behind["task"], behind["init"], behind["diff"],
                                                            behind["lo"], behind["hi"])) or "none"
    for task in TASKS:
        c = caps[caps["task"] == task].set_index("init")
        for init in ("random", "lora_ga", "lora_fa_grad", "eva", "svd", "svd_minor"):
            if init in c.index:
                g[f"cap_{init}_{task}"] = float(c.loc[init, "capture"])
                g[f"pooled_{init}_{task}"] = float(c.loc[init, "pooled"])
        rf = ref.set_index("task")
        if task in rf.index:
            g[f"top_r_{task}"], g[f"top_2r_{task}"] = float(rf.loc[task, "top_r"]), float(rf.loc[task, "top_2r"])
        rt = res[(res["task"] == task) & (res["init"].isin(INITS))].sort_values("mean", ascending=False)
        g[f"top3_{task}"] = ", ".join(rt["init"].head(3))
        g[f"top3_mean_{task}"] = float(rt["mean"].head(3).mean()) if len(rt) else math.nan
        if "random" in set(rt["init"]):
            g[f"random_mean_{task}"] = float(rt.set_index("init").loc["random", "mean"])
        for q in OUTCOMES:
            for subset, tag in (("all", "all"), ("unchanged at step 0", "unch")):
                row = corr[(corr["task"] == task) & (corr["outcome"] == q) & (corr["inits"] == subset)]
                if len(row):
                    r = row.iloc[0]
                    g[f"rho_{q}_{task}_{tag}"] = float(r["rho"])
                    g[f"rho_{q}_{task}_{tag}_lo"], g[f"rho_{q}_{task}_{tag}_hi"] = float(r["lo"]), float(r["hi"])
                    g[f"rho_{q}_{task}_{tag}_n"] = int(r["n"])
                    g[f"rho_{q}_{task}_{tag}_p"] = float(r["p"])
        for init in ("lora_ga", "eva", "lora_fa_grad"):
            row = comp[(comp["task"] == task) & (comp["init"] == init)]
            if len(row):
                r = row.iloc[0]
                g[f"diff_{init}_{task}"], g[f"lo_{init}_{task}"], g[f"hi_{init}_{task}"] = r["diff"], r["lo"], r["hi"]
                g[f"pholm_{init}_{task}"] = r["p_holm"]
        nd = runs[runs["task"] == task]["n_dev"].dropna() if "n_dev" in runs else []
        if len(nd):
            g[f"n_dev_{task}"] = int(nd.iloc[0])
            g[f"one_example_{task}"] = 1 / int(nd.iloc[0])
        first = runs[(runs["task"] == task) & runs["method"].isin(INITS)]
        if len(first):
            g[f"first_epoch_{task}"] = float(first["first_epoch"].median())
            g[f"first_zero_runs_{task}"] = int((first["first"] == 0).sum())
            g[f"n_runs_{task}"] = int(len(first))
            losses = first.groupby("method")["loss_epoch1"].mean()
            g[f"loss_range_{task}"] = float(losses.max() - losses.min())
    gr = pd.DataFrame([{"task": p["task"], "kind": n.rsplit(".", 1)[-1], **v}
                       for p in capture["parts"] for n, v in p["gradient"].items()])
    for kind in ("query", "value"):
        k = gr[gr["kind"] == kind]
        if len(k):
            g[f"top1_{kind}"] = float(k["top_1"].mean()) if "top_1" in k else math.nan
            if "in_w_bottom_rows" in k:
                g[f"bottom_rows_{kind}"] = float(k["in_w_bottom_rows"].mean())
                g[f"top_rows_{kind}"] = float(k["in_w_top_rows"].mean())
    prov = capture["provenance"]
    g["capture_seconds"] = float(prov["seconds"])
    g["capture_parts"] = len(capture["parts"])
    g["capture_batches"] = int(prov["batches"])
    g["capture_examples"] = int(prov["batches"]) * int(prov["batch_size"])
    ov = [c.get("run_A_overlap") for p in capture["parts"] for c in p["captures"] if c.get("run_A_overlap") is not None]
    g["min_overlap"] = float(min(ov)) if ov else math.nan
    g["expected_random"] = int(prov["rank"]) / 384
    g["n_seeds_new"] = int(runs[runs["method"].isin(NEW)].groupby(["task", "method"])["seed"].nunique().max()) \
        if runs["method"].isin(NEW).any() else 0
    g["n_seeds_round1"] = int(runs[runs["method"].isin(ROUND1)].groupby(["task", "method"])["seed"].nunique().max()) \
        if runs["method"].isin(ROUND1).any() else 0
    # plain Python values: glue pastes their text/plain repr, which must parse as a number
    return {k: float(v) if isinstance(v, np.floating) else int(v) if isinstance(v, np.integer) else v
            for k, v in g.items()}

