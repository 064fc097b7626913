"""Intruder dimensions across LoRA ranks and in full fine-tuning: what ``book/intruders.md`` shows.

Among the top k = 10 left singular vectors of W + ΔW, an intruder at ε has max |cos| < ε with every
singular vector of W (Shuttleworth et al. 2024; per-layer numbers in :mod:`harness.analysis.geometry`).
Same runs as :mod:`harness.analysis.ranks`.  The top K_WIDEST = 40 directions are profiled once; the
k = 10 analysis and the count against k (:data:`K_VALUES`) are prefixes of that profile (W + ΔW's singular
vectors come in descending order, so the top-k of the 40 are the top-k).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from lora import spectra as sp

from .geometry import EPS, K_INTRUDER, N_DIM, TOP_M, geometry_table, intruder_counts, intruder_curves, per_seed
from .ranks import METHODS, N_BOOT, RANKS, TASK, _p, _sort_methods, main_lrs, main_runs, paired_family, rank_runs
from .stats import format_pm
from .weights import grid_weights, load_run_factors

K_VALUES = (5, 10, 20, 40)      # how many top directions of W + ΔW are examined (the paper's k)
K_WIDEST = max(K_VALUES)
PROFILE = ("max_cos", "max_cos_right", "top_energy")


def first_k(table, k: int):
    """``table`` with the per-direction profiles (max_cos, max_cos_right, top_energy) cut to their first k
    entries: the intruder profile of W + ΔW's top-k directions."""
    t = table.copy()
    for col in PROFILE:
        if col in t:
            t[col] = [np.asarray(v)[:k] for v in t[col]]
    return t


def counts_by_k(table, full_table, ks=K_VALUES, eps=(0.5, 0.7)) -> "pd.DataFrame":
    """Intruders per layer (mean over layers per run, then mean ± sd over seeds) among the top k directions,
    for each k in ``ks``, ε in ``eps`` and (method, rank), plus full fine-tuning (rank = None)."""
    import pandas as pd
    rows = []
    for k in ks:
        for e in eps:
            for tab, by in ((table, ("method", "rank")), (full_table, ("method",))):
                t = intruder_counts(first_k(tab, k), eps=(e,))
                for row in per_seed(t, f"n@{e:g}", by=by).itertuples():
                    rows.append(dict(k=k, eps=e, method=row.method, rank=getattr(row, "rank", None),
                                     mean=row.mean, sd=row.sd, by_seed=row.by_seed))
    return pd.DataFrame(rows)


def intruders_study(logs_root="logs", ranks_grid: str = "ranks", ref_grid: str = "v2", task: str = TASK,
                    truncate=(8, 16)) -> dict:
    """Everything ``book/intruders.md`` shows: per-layer intruder data of the rank grid's main block and of
    full fine-tuning (also truncated to its top-``truncate`` directions), tables and ``glue`` texts."""
    root = Path(logs_root)
    runs = rank_runs(root / ranks_grid, task, METHODS)
    full = rank_runs(root / ref_grid, task, ("full",))
    main = main_runs(runs)
    W = grid_weights(root / ranks_grid)
    wide = geometry_table(main, W, intruders=True, k=K_WIDEST)
    wide_full = geometry_table(full, W, intruders=True, truncate=list(truncate), k=K_WIDEST)
    it = intruder_counts(first_k(wide, K_INTRUDER))
    itf_all = intruder_counts(first_k(wide_full, K_INTRUDER))
    stored = int(itf_all["trunc"].max())
    itf = itf_all[itf_all["trunc"] == stored]
    G: dict[str, str] = {}
    D: dict = dict(runs=runs, full=full, lrs=main_lrs(runs), counts=it, full_counts=itf, full_all=itf_all, glue=G)
    for m, lr in D["lrs"].items():
        G[f"lr_{m}"] = f"{lr:g}"
    G["full_lr"] = ", ".join(f"{v:g}" for v in sorted(full["lr"].unique()))
    G["n_full"] = str(full["seed"].nunique())
    G["stored"] = str(stored)
    D["curves"] = intruder_curves(it)
    D["full_curve"] = intruder_curves(itf, by=("method",))
    by_eps, full_by_eps = {}, {}
    for e in EPS:
        col = f"n@{e:g}"
        st = per_seed(it, col)
        fs = per_seed(itf, col, by=("method",))
        by_eps[e], full_by_eps[e] = st, (float(fs["mean"].iloc[0]), float(fs["sd"].iloc[0]))
        for row in st.itertuples():
            G[f"n_{row.method}_r{row.rank}_e{int(e * 10)}"] = format_pm(row.mean, row.sd)
        G[f"n_full_e{int(e * 10)}"] = format_pm(*full_by_eps[e])
    D["by_eps"], D["full_by_eps"] = by_eps, full_by_eps
    # pooled over ranks (for the one-line answer)
    for e in (0.5, 0.7):
        col = f"n@{e:g}"
        pooled = per_seed(it, col, by=("method",))
        for row in pooled.itertuples():
            G[f"n_{row.method}_all_e{int(e * 10)}"] = format_pm(row.mean, row.sd)
    _k_numbers(D, G, wide, wide_full, stored)
    _paired_numbers(D, G, it, itf)
    _nature_numbers(D, G, it, itf, itf_all, stored, full, W)
    return D


def _k_numbers(D: dict, G: dict, wide, wide_full, stored: int) -> None:
    """The number k of top directions examined: counts by k, and whether the inits' order depends on k."""
    bk = counts_by_k(wide, wide_full[wide_full["trunc"] == stored])
    D["by_k"] = bk
    # the order of the inits at each rank (ε = 0.7), compared with the k = K_INTRUDER order
    ranked = bk[(bk["eps"] == 0.7) & (bk["method"] != "full")].sort_values("mean", ascending=False, kind="stable")
    order = {(k, r): tuple(g["method"]) for (k, r), g in ranked.groupby(["k", "rank"])}
    G["k_values"] = ", ".join(str(k) for k in K_VALUES)
    G["n_k_order_same"] = str(sum(o == order[(K_INTRUDER, r)] for (k, r), o in order.items()))
    G["n_k_order_cells"] = str(len(order))



def _paired_numbers(D: dict, G: dict, it, itf) -> None:
    """The paired comparisons (by seed; one family, Holm) and the Spearman trends of the count on rank."""
    import pandas as pd

    from .stats import spearman_ci, with_holm
    by_eps = D["by_eps"]
    specs = []
    for e in (0.5, 0.7):
        st = by_eps[e]
        get = lambda m, r: st[(st["method"] == m) & (st["rank"] == r)]["by_seed"].iloc[0]
        for r in RANKS:
            for m in ("svd", "lora_fa_svd"):
                specs.append((f"ε={e:g} r={r}: {m} − random", get("random", r), get(m, r)))
        fs = per_seed(itf, f"n@{e:g}", by=("method",))["by_seed"].iloc[0]
        for m in METHODS:
            specs.append((f"ε={e:g} r=8: {m} − full", fs, get(m, 8)))
    fam = paired_family(specs)
    same_sign = [all(b[k] > a[k] for k in a) or all(b[k] < a[k] for k in a)
                 for label, a, b in specs if "− random" in label and label.startswith("ε=0.7")]
    G["n_same_sign_e7"] = str(sum(same_sign))
    G["n_init_tests_e7"] = str(len(same_sign))
    D["tests"] = pd.DataFrame([{k: t[k] for k in ("label", "n", "mean_a", "mean_b", "diff", "lo", "hi", "p",
                                                   "p_holm", "finding")} for t in fam])
    G["n_tests"] = str(len(fam))
    G["n_findings"] = str(int(sum(t["finding"] for t in fam)))
    for t in fam:
        key = t["label"].replace("ε=", "e").replace(" r=", "_r").replace(": ", "_").replace(" − ", "_vs_").replace(".", "")
        G[f"test_{key}"] = (f"{t['diff']:+.2f} [{t['lo']:.2f}, {t['hi']:.2f}], {_p(t['p_holm'])}")
    svd_wins = [t for t in fam if "− random" in t["label"] and t["finding"]]
    G["n_method_findings"] = str(len(svd_wins))
    G["n_method_tests"] = str(sum("− random" in t["label"] for t in fam))
    trends = []
    for e in (0.5, 0.7):
        col = f"n@{e:g}"
        per_run = it.groupby(["method", "rank", "seed"])[col].mean().reset_index()
        for m in METHODS:
            g = per_run[per_run["method"] == m]
            trends.append({**spearman_ci(g["rank"], g[col], n_boot=N_BOOT), "method": m, "eps": e})
    trends = with_holm(trends)
    D["trends"] = trends
    for t in trends:
        G[f"rho_{t['method']}_e{int(t['eps'] * 10)}"] = (f"ρ = {t['rho']:.2f} [{t['lo']:.2f}, {t['hi']:.2f}], "
                                                         f"{_p(t['p_holm'])}")



def _nature_numbers(D: dict, G: dict, it, itf, itf_all, stored: int, full, W) -> None:
    """What the intruders are (mixtures inside W's top-m subspace, or new directions), right singular vectors,
    W's spectrum, ΔW's size, and full fine-tuning's truncation."""
    import pandas as pd
    e = 0.7
    mc = np.stack(it["max_cos"].to_numpy())
    te = np.stack(it["top_energy"].to_numpy())
    rows = []
    for (m, r), idx in it.groupby(["method", "rank"], sort=False).groups.items():
        sel = mc[it.index.get_indexer(idx)] < e
        en = te[it.index.get_indexer(idx)][sel]
        rows.append(dict(method=m, rank=int(r), intruders=int(sel.sum()), layers=len(idx),
                         per_layer=float(sel.sum() / len(idx)),
                         energy_top=float(en.mean()) if len(en) else math.nan,
                         mixtures=float((en >= 0.9).mean()) if len(en) else math.nan,
                         new_per_layer=float((en < 0.5).sum() / len(idx))))
    nature = _sort_methods(pd.DataFrame(rows).sort_values("rank", kind="stable")).reset_index(drop=True)
    D["nature"] = nature
    for row in nature.itertuples():
        G[f"energy_{row.method}_r{row.rank}"] = "–" if not math.isfinite(row.energy_top) else f"{row.energy_top:.2f}"
        G[f"mix_{row.method}_r{row.rank}"] = "–" if not math.isfinite(row.mixtures) else f"{row.mixtures:.0%}"
        G[f"new_{row.method}_r{row.rank}"] = f"{row.new_per_layer:.2f}"
    sub = nature[nature["method"] != "random"]
    tot = sub["intruders"].sum()
    G["mix_svdinits_all"] = (f"{(sub['mixtures'] * sub['intruders']).sum() / tot:.0%}" if tot else "–")
    G["top_m"] = str(TOP_M)
    G["top_m_base"] = f"{TOP_M / N_DIM:.3f}"
    # right singular vectors (side="right") at ε = 0.7, for the same runs
    mr = np.stack(it["max_cos_right"].to_numpy())
    it_r = it.assign(nr=(mr < e).sum(1))
    right = per_seed(it_r, "nr")
    for row in right.itertuples():
        G[f"nright_{row.method}_r{row.rank}_e7"] = format_pm(row.mean, row.sd)
    D["right"] = right
    # W's spectrum: how close its top singular values are (why mixtures are easy)
    gaps = []
    for w in W.values():
        S = torch.linalg.svdvals(w)
        gaps.append(float((S[0] - S[K_INTRUDER - 1]) / S[0]))
    G["W_top10_spread"] = f"{np.min(gaps):.2f}–{np.max(gaps):.2f}"
    # magnitude of ΔW
    geo_spec = it.groupby(["method", "rank"])["spec"].mean()
    for (m, r), v in geo_spec.items():
        G[f"spec_{m}_r{r}"] = f"{v:.2f}"
    G["spec_full"] = f"{itf['spec'].mean():.2f}"
    G["W_spec"] = f"{np.mean([float(torch.linalg.matrix_norm(w, 2)) for w in W.values()]):.2f}"
    # truncation of full fine-tuning
    trunc = []
    for t, g in itf_all.groupby("trunc"):
        trunc.append({"kept directions t": int(t), **{f"ε = {e:g}": float(g[f'n@{e:g}'].mean()) for e in EPS}})
    D["trunc"] = pd.DataFrame(trunc)
    for row in D["trunc"].itertuples(index=False):
        for i, e in enumerate(EPS):
            G[f"trunc_t{row[0]}_e{int(e * 10)}"] = f"{row[i + 1]:.2f}"
    T = D["trunc"].set_index("kept directions t")
    G["trunc_maxdiff"] = f"{float((T - T.loc[stored]).abs().to_numpy().max()):.2f}"
    G["trunc_maxdiff_e7"] = f"{float((T - T.loc[stored]).abs()[[f'ε = {e:g}' for e in EPS if e <= 0.7]].to_numpy().max()):.2f}"
    fac = [f for r in full.itertuples() for f in load_run_factors(r.factors).values()]
    G["energy_kept_full"] = f"{np.mean([f['energy_kept'] for f in fac]):.2f}"
    s_last = [float(sp.singular_values(f["B"], f["A"])[-1] / sp.singular_values(f["B"], f["A"])[0]) for f in fac]
    G["full_s32_rel"] = f"{np.mean(s_last):.2f}"
    G["full_min_maxcos"] = f"{float(np.min(np.stack(itf['max_cos'].to_numpy()))):.2f}"


def by_k_table(by_k, eps: float = 0.7) -> "pd.DataFrame":
    """:func:`counts_by_k` at one ε as a table: a row per (method, r) and full fine-tuning, a column per k
    ("mean ± sd" intruders per layer over seeds)."""
    import pandas as pd
    t = by_k[by_k["eps"] == eps]
    rows = []
    for (m, r), g in t.groupby(["method", "rank"], sort=False, dropna=False):
        row = {"method": m, "r": "–" if pd.isna(r) else int(r)}
        for x in g.itertuples():
            row[f"k = {x.k}"] = format_pm(x.mean, x.sd)
        rows.append(row)
    out = pd.DataFrame(rows).sort_values("r", key=lambda c: c.map(lambda v: -1 if v == "–" else v), kind="stable")
    return _sort_methods(out).reset_index(drop=True)          # methods in study order, ranks ascending, full last
