"""The rank grid (``logs/ranks``) and what ``book/ranks.md`` shows: accuracy and ΔW geometry across LoRA ranks.

* ``logs/ranks``: MRPC, methods random / svd / lora_fa_svd × r ∈ {1, 2, 4, 8, 16, 64} × seeds 0-2, each
  method at the lr the v2 sweep selected for r = 8, alpha = 16, so s = alpha/r (the LoRA paper's
  convention), plus an lr check at r = 64 (seed 0, one lr below and one above);
* ``logs/v2``: full fine-tuning on MRPC (seeds 0-4) as the reference; its factor files hold only the
  top-32 SVD of each dense q/v update (``energy_kept`` = the fraction of ‖ΔW‖_F² they keep).

Per-layer numbers: :mod:`harness.analysis.geometry`; figures: :mod:`harness.plots.ranks`.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from lora import spectra as sp

from .geometry import RANKS  # noqa: F401  (the rank grid's ranks, for the pages)
from .geometry import (N_DIM, amplification_by_r, geometry_table, per_seed, phi_between, phi_init_random, phi_summary,
                       shared_init_layers)
from .stats import format_pm
from .weights import grid_weights, layer_label, load_run_factors

TASK = "mrpc"
METHODS = ("random", "svd", "lora_fa_svd")
N_BOOT = 1000                                # bootstrap resamples of the Spearman intervals (page time)


def rank_runs(log_dir, task: str = TASK, methods=None):
    """One row per ok run of ``task``: run_id, method, rank (0 for full), lr, seed, alpha, dev (final dev
    main metric), val (final validation main metric), factors (path of the factor file or None)."""
    import pandas as pd

    from .runs import load_logs
    rows = []
    for lg in load_logs(log_dir):
        c = lg["config"]
        if c["task"] != task or (methods is not None and c["method"] not in methods):
            continue
        metric = lg["task"]["main_metric"]
        f = lg.get("factors_file")
        path = Path(log_dir) / f if f else None
        rows.append(dict(run_id=lg["run_id"], method=c["method"], rank=int(c.get("rank") or 0) if c["method"] != "full"
                         else 0, lr=float(c["lr"]), seed=int(c["seed"]), alpha=float(c.get("alpha") or 0.0),
                         dev=float(lg["final"][metric]), val=float((lg["final"].get("val") or {}).get(metric, math.nan)),
                         factors=path if path is not None and path.is_file() else None))
    cols = ["run_id", "method", "rank", "lr", "seed", "alpha", "dev", "val", "factors"]
    return pd.DataFrame(rows, columns=cols)


def main_lrs(runs) -> dict[str, float]:
    """{method: lr} — the one learning rate a method uses at every one of its ranks (the rank grid's main
    block; the r = 64 check adds other rates at one rank only).  ValueError if there is none or several."""
    out = {}
    for method, g in runs.groupby("method", sort=False):
        common = None
        for _, gr in g.groupby("rank"):
            lrs = set(np.round(gr["lr"].to_numpy(), 12))
            common = lrs if common is None else common & lrs
        if not common or len(common) != 1:
            raise ValueError(f"method {method!r}: no single lr shared by all its ranks (found {sorted(common or [])})")
        out[method] = float(common.pop())
    return out


def main_runs(runs):
    """The runs of the main block: each method at its :func:`main_lrs` rate."""
    lrs = main_lrs(runs)
    return runs[[np.isclose(lr, lrs[m]) for m, lr in zip(runs["method"], runs["lr"])]].reset_index(drop=True)


def accuracy_by_rank(runs):
    """Final dev metric per (method, rank) of the main block: mean, sd (sample), n, seeds, and the
    mean validation metric."""
    import pandas as pd
    rows = []
    for (method, rank), g in main_runs(runs).groupby(["method", "rank"], sort=False):
        rows.append(dict(method=method, rank=int(rank), mean=float(g["dev"].mean()),
                         sd=float(g["dev"].std(ddof=1)) if len(g) > 1 else math.nan, n=len(g),
                         seeds=sorted(g["seed"].tolist()), val_mean=float(g["val"].mean())))
    out = pd.DataFrame(rows).sort_values("rank", kind="stable")
    return _sort_methods(out).reset_index(drop=True)


def accuracy_pivot(acc, digits: int = 3):
    """:func:`accuracy_by_rank` as a methods × ranks table of "mean ± sd" strings."""
    import pandas as pd
    out = {}
    for m in [m for m in (*METHODS, *sorted(set(acc["method"]) - set(METHODS))) if m in set(acc["method"])]:
        g = acc[acc["method"] == m].sort_values("rank")
        out[m] = {f"r = {r}": format_pm(a, b, digits) for r, a, b in zip(g["rank"], g["mean"], g["sd"])}
    return pd.DataFrame.from_dict(out, orient="index").rename_axis("method").reset_index()


def lr_check(runs, rank: int = 64, seed: int = 0):
    """The lr check at ``rank``: for each method, seed ``seed``'s final dev and validation metric at every
    lr run at that rank, with ``role`` "main" (the method's main lr), "lower" or "higher"."""
    lrs = main_lrs(runs)
    g = runs[(runs["rank"] == rank) & (runs["seed"] == seed)].copy()
    g["role"] = ["main" if np.isclose(lr, lrs[m]) else ("lower" if lr < lrs[m] else "higher")
                 for m, lr in zip(g["method"], g["lr"])]
    g = g.sort_values(["method", "lr"])
    return _sort_methods(g[["method", "lr", "role", "dev", "val", "run_id"]]).reset_index(drop=True)


def _sort_methods(df):
    order = {m: i for i, m in enumerate((*METHODS, "full"))}
    return df.sort_values("method", key=lambda s: s.map(lambda m: order.get(m, 99)), kind="stable")


def rank_pairs(runs, method: str, r1: int = 8, r2: int = 64) -> list[tuple]:
    """[(seed, run_id at r1, run_id at r2)] of the main block, same seed."""
    g = main_runs(runs)
    g = g[g["method"] == method]
    a = dict(zip(g[g["rank"] == r1]["seed"], g[g["rank"] == r1]["run_id"]))
    b = dict(zip(g[g["rank"] == r2]["seed"], g[g["rank"] == r2]["run_id"]))
    return [(s, a[s], b[s]) for s in sorted(set(a) & set(b))]


def seed_pairs(runs, method: str, rank: int = 64) -> list[tuple]:
    """[((s1, s2), run_id s1, run_id s2)] for every pair of seeds of the main block at ``rank``."""
    g = main_runs(runs)
    g = g[(g["method"] == method) & (g["rank"] == rank)].sort_values("seed")
    ids = list(zip(g["seed"], g["run_id"]))
    return [((s1, s2), a, b) for i, (s1, a) in enumerate(ids) for s2, b in ids[i + 1:]]


def paired_family(specs) -> list[dict]:
    """Paired-by-seed comparisons with Holm over the family: ``specs`` = [(label, {seed: a}, {seed: b})];
    each result is :func:`harness.analysis.stats.paired` (b − a) plus label, p_holm, finding."""
    from .stats import paired, with_holm
    return with_holm([{**paired(a, b), "label": label} for label, a, b in specs])


def _pm(v, digits=2):
    v = np.asarray(list(v), float)
    return format_pm(float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else math.nan, digits)


def _p(p) -> str:
    """"Holm p = 0.048" / "Holm p < 0.001" for an adjusted p-value."""
    if p is None or not math.isfinite(p):
        return "Holm p n/a"
    return f"Holm p = {p:.2g}" if p >= 0.001 else "Holm p < 0.001"


def ranks_study(logs_root="logs", ranks_grid: str = "ranks", ref_grid: str = "v2", task: str = TASK) -> dict:
    """Everything ``book/ranks.md`` shows, from ``<logs_root>/<ranks_grid>`` (+ full fine-tuning of
    ``<ref_grid>``): tables, φ arrays, and ``glue`` = {name: formatted text} for the prose."""
    root = Path(logs_root)
    runs = rank_runs(root / ranks_grid, task, METHODS)
    full = rank_runs(root / ref_grid, task, ("full",))
    lrs = main_lrs(runs)
    acc, check = accuracy_by_rank(runs), lr_check(runs)
    from .runs import load_logs
    majority = load_logs(root / ranks_grid)[0]["task"]["majority_baseline"].get("accuracy")
    W = grid_weights(root / ranks_grid)
    names = list(W)
    main = main_runs(runs)
    geo = geometry_table(main, W)
    full_geo = geometry_table(full, W)
    full_amp = amplification_by_r(full, W)
    G: dict[str, str] = {}
    D: dict = dict(runs=runs, full=full, lrs=lrs, acc=acc, check=check, majority=majority, names=names, glue=G)
    _accuracy_numbers(D, G, main)
    _phi_numbers(D, G, runs, main, W, names)
    _geometry_numbers(D, G, geo, full_geo, full_amp, full, W)
    D["geo"], D["full_geo"] = geo, full_geo
    return D


def _accuracy_numbers(D: dict, G: dict, main) -> None:
    """Accuracy by rank, full fine-tuning, the Spearman tests of accuracy on rank, the lr check (into D and G)."""
    from .stats import spearman_ci, with_holm
    lrs, acc, check, full, majority = D["lrs"], D["acc"], D["check"], D["full"], D["majority"]
    for m, lr in lrs.items():
        G[f"lr_{m}"] = f"{lr:g}"
    for row in acc.itertuples():
        G[f"acc_{row.method}_r{row.rank}"] = format_pm(row.mean, row.sd, 3)
    D["full_acc"] = (float(full["dev"].mean()), float(full["dev"].std(ddof=1)), len(full))
    G["acc_full"] = format_pm(*D["full_acc"][:2], 3)
    G["n_full"] = str(len(full))
    G["full_lr"] = ", ".join(f"{v:g}" for v in sorted(full["lr"].unique()))
    G["majority"] = f"{majority:.3f}"
    tests = []
    for m in METHODS:
        g = main[main["method"] == m]
        tests.append({**spearman_ci(g["rank"], g["dev"], n_boot=N_BOOT), "method": m})
    tests = with_holm(tests)
    D["acc_tests"] = tests
    for t in tests:
        G[f"rho_acc_{t['method']}"] = (f"ρ = {t['rho']:.2f} [{t['lo']:.2f}, {t['hi']:.2f}], {_p(t['p_holm'])}")
    for row in check.itertuples():
        G[f"check_{row.method}_{row.role}"] = f"{row.dev:.3f}"
        G[f"checklr_{row.method}_{row.role}"] = f"{row.lr:g}"
        G[f"checkval_{row.method}_{row.role}"] = f"{row.val:.3f}"



def _phi_numbers(D: dict, G: dict, runs, main, W, names) -> None:
    """φ between r = 8 and r = 64 (same seed) and between seeds at r = 64, against the random baseline."""
    cache: dict = {}
    init = phi_init_random(W, sorted(main["seed"].unique()))
    shared = shared_init_layers(init)
    keep = [i for i in range(len(names)) if i not in shared]
    D["shared_layers"] = [names[i] for i in shared]
    G["shared_layers"] = ", ".join(layer_label(names[i]) for i in shared) or "none"
    r8 = {}
    for of, methods in (("A", ("random", "svd")), ("dW", METHODS)):
        for m in methods:
            P = phi_between(runs, [(s, a, b) for s, a, b in rank_pairs(runs, m)], of, 8, 64, cache)
            r8[(of, m)] = np.stack([P[s] for s in sorted(P)])
    r8[("A0", "random")] = np.stack([init[s] for s in sorted(init)])
    D["phi_r8"] = r8
    D["phi_keep"] = keep
    cells = ((1, 1), (1, 64), (4, 4), (8, 8), (8, 64))
    for (of, m), arr in r8.items():
        for key, st in phi_summary(arr[:, keep], cells).items():
            i, j = key.split(",")
            G[f"phi_{of}_{m}_{i}_{j}"] = format_pm(st["mean"], st["sd"])
            G[f"phirange_{of}_{m}_{i}_{j}"] = f"{st['min']:.2f}–{st['max']:.2f}"
    # the shared layer itself (the reason it is left out)
    if shared:
        G["phi_shared_A0"] = f"{np.mean(r8[('A0', 'random')][:, shared, 7, 63]):.2f}"
        G["phi_shared_A"] = f"{np.mean(r8[('A', 'random')][:, shared, 7, 63]):.2f}"
    for i, j in (*cells, (64, 64)):
        G[f"phi_base_{i}_{j}"] = f"{sp.random_subspace_similarity_baseline(N_DIM, i, j):.3f}"
    # lora_fa_svd's A is frozen at V_rᵀ: the stored final A's give φ(8, 64) = 1 by construction
    fa = phi_between(runs, rank_pairs(runs, "lora_fa_svd"), "A", 8, 64, cache)
    G["phi_A_lora_fa_svd_8_64"] = f"{np.mean([v[:, 7, 63] for v in fa.values()]):.3f}"
    seeds = {}
    for of, methods in (("A", ("random",)), ("dW", METHODS)):
        for m in methods:
            P = phi_between(runs, seed_pairs(runs, m, 64), of, 64, 64, cache)
            seeds[(of, m)] = np.stack(list(P.values()))
    D["phi_seeds"] = seeds
    G["n_seed_pairs"] = str(len(seed_pairs(runs, "random", 64)))
    for (of, m), arr in seeds.items():
        for key, st in phi_summary(arr, ((1, 1), (4, 4), (8, 8), (64, 64))).items():
            i, j = key.split(",")
            G[f"phiseed_{of}_{m}_{i}_{j}"] = format_pm(st["mean"], st["sd"])
    Psvd = phi_between(runs, seed_pairs(runs, "svd", 64), "A", 64, 64, cache)
    G["phiseed_A_svd_8_8"] = _pm(np.concatenate([v[:, 7, 7] for v in Psvd.values()]))



def _geometry_numbers(D: dict, G: dict, geo, full_geo, full_amp, full, W) -> None:
    """Amplification and W-projections (the LoRA paper's Table 7), effective rank, ‖ΔW‖ (into D and G)."""
    import pandas as pd
    amp = per_seed(geo, "amp", by=("method", "kind", "rank"), geometric=True)
    famp = per_seed(full_amp, "amp", by=("method", "kind", "rank"), geometric=True)
    D["amp"], D["full_amp"] = amp, famp
    for row in pd.concat([amp, famp]).itertuples():
        G[f"amp_{row.method}_{row.kind}_r{row.rank}"] = format_pm(row.mean, row.sd)
    amp_all = per_seed(geo, "amp", by=("method", "rank"), geometric=True)
    for row in per_seed(full_amp, "amp", by=("method", "rank"), geometric=True).itertuples():
        G[f"amp_full_r{row.rank}"] = format_pm(row.mean, row.sd)
    for row in amp_all.itertuples():
        G[f"amp_{row.method}_r{row.rank}"] = format_pm(row.mean, row.sd)
    comps = []
    for m in METHODS:
        a = amp_all[(amp_all["method"] == m) & (amp_all["rank"] == 8)]["by_seed"].iloc[0]
        b = amp_all[(amp_all["method"] == m) & (amp_all["rank"] == 64)]["by_seed"].iloc[0]
        comps.append((f"{m}: amplification r = 64 − r = 8", a, b))
    D["amp_tests"] = paired_family(comps)
    for m, t in zip(METHODS, D["amp_tests"]):
        G[f"amp_test_{m}"] = f"{t['diff']:+.2f} [{t['lo']:.2f}, {t['hi']:.2f}], {_p(t['p_holm'])}"
    rows = []
    for r in (4, 8, 64):
        for kind in ("query", "value"):
            for m in METHODS:
                g = geo[(geo["method"] == m) & (geo["rank"] == r) & (geo["kind"] == kind)]
                rows.append({"r": r, "kind": kind, "method": m, "‖ΔW‖_F": g["fro"].mean(),
                             "ΔW's U,V": g["proj_dw"].mean(), "W's top-r": g["proj_wtop"].mean(),
                             "random": g["proj_random"].mean(), "ΔW's / random": (g["proj_dw"] / g["proj_random"]).mean(),
                             "amplification": float(np.exp(np.log(g["amp"]).mean()))})
    D["table7"] = pd.DataFrame(rows)
    frac = geo.assign(q=geo["proj_dw"] / geo["proj_wtop"]).groupby(["method", "rank"])["q"].mean()
    for (m, r), v in frac.items():
        G[f"projfrac_{m}_r{r}"] = f"{v:.0%}"
    ratio = geo.assign(q=geo["proj_dw"] / geo["proj_random"]).groupby(["method", "rank"])["q"].mean()
    for (m, r), v in ratio.items():
        G[f"projratio_{m}_r{r}"] = f"{v:.1f}"
    wtop = geo.groupby(["rank"])["proj_wtop"].mean()
    for r, v in wtop.items():
        G[f"wtop_r{r}"] = f"{v:.1f}"
    fro = geo.groupby(["method", "rank"])["fro"].mean()
    for (m, r), v in fro.items():
        G[f"fro_{m}_r{r}"] = f"{v:.2f}"
    G["fro_full"] = f"{full_geo['fro'].mean():.2f}"
    G["W_fro"] = f"{np.mean([float(torch.linalg.matrix_norm(w)) for w in W.values()]):.1f}"
    er = per_seed(geo, "eff_rank", by=("method", "rank"))
    D["eff_rank"] = er
    for row in er.itertuples():
        G[f"er_{row.method}_r{row.rank}"] = format_pm(row.mean, row.sd, 1)
        G[f"errel_{row.method}_r{row.rank}"] = f"{row.mean / row.rank:.2f}"
    fer = per_seed(full_geo, "eff_rank", by=("method",))
    D["full_er"] = (float(fer["mean"].iloc[0]), float(fer["sd"].iloc[0]))
    G["er_full"] = format_pm(*D["full_er"], 1)
    G["energy_kept_full"] = f"{np.mean([f['energy_kept'] for r in full.itertuples() for f in load_run_factors(r.factors).values()]):.2f}"

