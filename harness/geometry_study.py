"""ΔW geometry across LoRA ranks, and intruder dimensions (book pages ``ranks.md`` and ``intruders.md``).

Pure functions of the run logs and the factor files beside them (nothing trains):

* ``logs/ranks``: MRPC, methods random / svd / lora_fa_svd × r ∈ {1, 2, 4, 8, 16, 64} × seeds 0-2, each
  method at the lr the v2 sweep selected for r = 8, alpha = 16, so s = alpha/r (the LoRA paper's
  convention), plus an lr check at r = 64 (seed 0, one lr below and one above);
* ``logs/v2``: full fine-tuning on MRPC (seeds 0-4) as the reference; its factor files hold only the
  top-32 SVD of each dense q/v update (``energy_kept`` = the fraction of ‖ΔW‖_F² they keep).

Quantities (all per adapted layer, W = the pretrained 384×384 query / value weight):

* φ(i, j) = ‖X₁[:, :i]ᵀ X₂[:, :j]‖_F² / min(i, j)  (Hu et al. 2021, eq. 4) between two runs' ordered
  directions X: the right singular vectors of the final ``lora_A`` (its row space, the paper's Fig. 3-4)
  or of ΔW; random subspaces give E φ = max(i, j)/n, n = 384;
* amplification ‖ΔW‖_F / ‖U_rᵀ W V_r‖_F (Hu et al. 2021, §7.3), U_r, V_r = ΔW's own top-r singular
  vectors (:func:`lora.spectra.amplification_factor`), r = the adapter rank; beside it the same
  projection for W's top-r directions (√(Σ_{i≤r} σ_i(W)²), the largest any r-frame can give) and for
  random r-frames (r‖W‖_F/√(mn), the root of its expectation);
* effective rank exp H(σ/Σσ) of ΔW (:func:`lora.spectra.effective_rank`);
* intruder dimensions (Shuttleworth et al. 2024): among the top k = 10 left singular vectors of
  W + ΔW, those whose largest |cos| with every singular vector of W is below ε
  (:func:`lora.spectra.intruder_dimensions_lowrank`); we keep each vector's max-|cos| so that the
  count can be read at any ε.
"""
from __future__ import annotations

import io
import math
import re
from pathlib import Path

import numpy as np
import torch

from lora import spectra as sp

TASK = "mrpc"
METHODS = ("random", "svd", "lora_fa_svd")
RANKS = (1, 2, 4, 8, 16, 64)
K_INTRUDER = 10
TOP_M = 20                                   # "inside W's top-m left singular subspace" (m = 2k) for intruders
EPS = tuple(sp.INTRUDER_EPS)                 # 0.5, 0.6, 0.7, 0.8, 0.9
EPS_FINE = tuple(np.round(np.arange(0.30, 0.951, 0.025), 3))   # for the count-vs-ε curves
N_DIM = 384                                  # MiniLM's hidden size: the ambient dimension of q/v
COLORS = {"random": "#1f77b4", "svd": "#ff7f0e", "lora_fa_svd": "#2ca02c", "full": "#222222"}
DPI = 130
N_BOOT = 1000                                # bootstrap resamples of the Spearman intervals (page time)


# ============================================================================ runs
def layer_pos(name: str) -> tuple[int, str]:
    """``bert.encoder.layer.3.attention.self.value`` → (3, "value")."""
    m = re.search(r"\.layer\.(\d+)\.", name)
    if m is None:
        raise ValueError(f"layer name {name!r} has no '.layer.<i>.' part")
    return int(m.group(1)), name.rsplit(".", 1)[-1]


def layer_label(name: str) -> str:
    """``bert.encoder.layer.3.attention.self.value`` → "v3"."""
    i, kind = layer_pos(name)
    return f"{kind[0]}{i}"


def runs_table(log_dir, task: str = TASK, methods=None):
    """One row per ok run of ``task``: run_id, method, rank (0 for full), lr, seed, alpha, dev (final dev
    main metric), val (final validation main metric), factors (path of the factor file or None)."""
    import pandas as pd

    from .logs import read_logs
    rows = []
    for lg in read_logs(log_dir):
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
        out[m] = {f"r = {r}": fmt_pm(a, b, digits) for r, a, b in zip(g["rank"], g["mean"], g["sd"])}
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


# ============================================================================ factors and W
def load_run_factors(path) -> dict[str, dict]:
    """{layer: {"B", "A", "A_final", "energy_kept"}} from a factor file: ΔW = B @ A relative to the
    pretrained W (:func:`lora.load_delta_factors`, float64), the final ``lora_A`` (r×in) when the file
    has it (LoRA runs; None for full fine-tuning), and the kept energy fraction of a truncated
    full-fine-tuning update (None otherwise)."""
    from safetensors.torch import load_file

    from lora.io import load_delta_factors, read_lora_config
    cfg = read_lora_config(path)
    tensors = load_file(str(path))
    out = {}
    for name, (B, A) in load_delta_factors(path).items():
        a = tensors.get(f"{name}.lora_A") if cfg[name].get("format") == "delta_svd" else None
        out[name] = dict(B=B.double(), A=A.double(), A_final=None if a is None else a.double(),
                         energy_kept=cfg[name].get("energy_kept"))
    return out


def pretrained_weights(runs_log_dir, names=None) -> dict[str, torch.Tensor]:
    """{layer: W (float64)} of the model the runs in ``runs_log_dir`` start from (built as training builds
    it, :func:`harness.report.pretrained_weights`); ``names`` default to the q/v layers."""
    from .logs import read_logs
    from .report import pretrained_weights as _pw
    log = read_logs(runs_log_dir)[0]
    return {n: W.double() for n, W in sorted(_pw(log, names).items(), key=lambda kv: layer_pos(kv[0]))}


def initial_A(weights: dict, method: str, rank: int, seed: int, alpha: float = 16.0) -> dict[str, torch.Tensor]:
    """{layer: A₀} — the ``lora_A`` a run starts from, rebuilt with :func:`lora.add_lora` on stand-in
    Linear layers holding ``weights`` (same names, same order, same seed: the per-layer generator
    draws happen in the order train.py adapts the layers, query before value, layer by layer)."""
    from torch import nn

    import lora
    root = nn.Module()
    for name in sorted(weights, key=layer_pos):
        parent = root
        parts = name.split(".")
        for p in parts[:-1]:
            if not hasattr(parent, p):
                parent.add_module(p, nn.Module())
            parent = getattr(parent, p)
        W = weights[name]
        lin = nn.Linear(W.shape[1], W.shape[0], bias=False)
        with torch.no_grad():
            lin.weight.copy_(W.float())
        parent.add_module(parts[-1], lin)
    lora.add_lora(root, [n.rsplit(".", 1)[-1] for n in weights], rank=int(rank), alpha=alpha, init=method, seed=int(seed))
    return {n: m.lora_A0.detach().double() for n, m in lora.lora_layers(root).items()}


# ============================================================================ per-layer numbers
def projection_norms(W, r: int, U=None, V=None, W_svals=None) -> dict:
    """‖U_rᵀ W V_r‖_F for three kinds of r-frames (U out×r, V in×r orthonormal):

    * ``dw``: the given U, V (ΔW's top-r singular vectors; only when given);
    * ``w_top``: W's own top-r singular vectors, √(Σ_{i≤r} σ_i(W)²) — the largest value any pair of
      r-frames can reach;
    * ``random``: independent uniformly random r-frames, √E‖UᵀWV‖_F² = r‖W‖_F/√(mn) (W is m×n:
      E[UUᵀ] = (r/m) I, E[VVᵀ] = (r/n) I, so E‖UᵀWV‖_F² = tr(E[UUᵀ] W E[VVᵀ] Wᵀ) = r²‖W‖_F²/(mn)).

    ``W_svals``: W's singular values, if already known (else computed).
    """
    W = torch.as_tensor(W, dtype=torch.float64)
    m, n = W.shape
    S = torch.linalg.svdvals(W) if W_svals is None else torch.as_tensor(W_svals, dtype=torch.float64)
    out = dict(w_top=float(torch.sqrt((S[:r] ** 2).sum())), random=r * float(torch.linalg.matrix_norm(W)) / math.sqrt(m * n))
    if U is not None:
        out["dw"] = float(torch.linalg.matrix_norm(torch.as_tensor(U, dtype=torch.float64)[:, :r].T @ W
                                                   @ torch.as_tensor(V, dtype=torch.float64)[:, :r]))
    return out


def layer_geometry(W, B, A, r: int, energy_kept: float | None = None, intruders: bool = False,
                   basis0=None, k: int = K_INTRUDER, W_svals=None) -> dict:
    """The numbers of one layer's ΔW = B @ A (relative to W), r = the adapter rank.

    fro (‖ΔW‖_F), amp (amplification with ΔW's top-r directions), proj_dw / proj_wtop / proj_random
    (:func:`projection_norms`), eff_rank, stable_rank, num_rank (numerical rank of the stored factors).
    With ``energy_kept`` (a full fine-tuning update truncated to its top directions) ‖ΔW‖_F and the
    amplification are those of the whole update, ‖ΔW_trunc‖_F / √energy_kept; the spectrum-based
    ranks stay those of the stored (truncated) factors.
    With ``intruders``: :func:`intruder_profile`'s ``max_cos``, ``max_cos_right`` and ``top_energy``
    (``basis0`` = (U, V) of W's thin SVD, if already known).
    ``W_svals``: W's singular values, if already known.
    """
    U, S, V = sp.lowrank_svd(B, A)
    scale = 1.0 if energy_kept is None else 1.0 / math.sqrt(energy_kept)
    fro = sp.frobenius_norm(S) * scale
    r_eff = min(r, sp.numerical_rank(S))
    amp = sp.amplification_factor(B, A, W, r=r_eff) * scale if r_eff > 0 else 0.0
    proj = projection_norms(W, r_eff, U, V, W_svals) if r_eff > 0 else dict(dw=0.0, w_top=0.0, random=0.0)
    out = dict(fro=fro, amp=amp, proj_dw=proj["dw"], proj_wtop=proj["w_top"], proj_random=proj["random"],
               eff_rank=sp.effective_rank(S), stable_rank=sp.stable_rank(S), num_rank=sp.numerical_rank(S),
               spec=sp.spectral_norm(S))
    if intruders:
        W64 = torch.as_tensor(W, dtype=torch.float64)
        out.update(intruder_profile(W64, W64 + B @ A, k=k, basis0=basis0))
    return out


def intruder_profile(W, W_ft, k: int = K_INTRUDER, m: int = TOP_M, basis0=None) -> dict:
    """Per top-k singular direction of W_ft, what :func:`lora.spectra.intruder_dimensions` looks at, and
    one diagnostic more (W, W_ft: out×in; ``basis0`` = (U, V) of W's thin SVD, if already known):

    * ``max_cos``:  max_i |⟨u'_j, u_i⟩| over ALL left singular vectors u_i of W (the intruder test:
      u'_j is an intruder at ε iff max_cos_j < ε) — the numbers of ``intruder_dimensions(...,
      side="left")["max_cos"]`` (tests check they agree);
    * ``max_cos_right``: the same for the right singular vectors (``side="right"``);
    * ``top_energy``: ‖U_mᵀ u'_j‖², the part of u'_j inside the span of W's top-m left singular vectors
      (1 = u'_j is a mixture of W's own top-m directions, e.g. a rotation among nearly equal σ_i(W);
      ≈ m/out for a direction unrelated to W).

    Only W_ft's top-k pairs are needed, so they come from the symmetric eigenproblem of the smaller
    Gram matrix (W_ft W_ftᵀ = U' Σ'² U'ᵀ; then v'_j = W_ftᵀ u'_j / σ'_j), about twice as fast as a full
    SVD: that is what keeps the intruder page under a minute on one CPU thread.
    """
    W, W_ft = torch.as_tensor(W, dtype=torch.float64), torch.as_tensor(W_ft, dtype=torch.float64)
    if basis0 is None:
        U0, _, Vh0 = torch.linalg.svd(W, full_matrices=False)
        basis0 = (U0, Vh0.mT)
    U0, V0 = basis0
    left = W_ft.shape[0] <= W_ft.shape[1]
    M = W_ft @ W_ft.T if left else W_ft.T @ W_ft
    evals, evecs = torch.linalg.eigh(M)                         # ascending
    X = evecs[:, -k:].flip(1)                                   # top-k, descending
    sig = evals[-k:].flip(0).clamp_min(0).sqrt()
    Y = (W_ft.T @ X if left else W_ft @ X) / torch.where(sig > 0, sig, torch.ones_like(sig))
    U1, V1 = (X, Y) if left else (Y, X)
    CL = U1.T @ U0                                              # (k, min(out, in)) cosines
    CR = V1.T @ V0
    return dict(max_cos=CL.abs().amax(1).clamp(max=1.0).numpy(), max_cos_right=CR.abs().amax(1).clamp(max=1.0).numpy(),
                top_energy=(CL[:, :m] ** 2).sum(1).numpy())


def count_curve(max_cos, eps=EPS) -> np.ndarray:
    """Intruder counts #{j : max_cos_j < ε} for each ε (strict, as :func:`lora.spectra.intruder_dimensions`).
    ``max_cos``: (..., k) array → (..., len(eps)) counts."""
    mc = np.asarray(max_cos, dtype=float)
    return np.stack([(mc < e).sum(axis=-1) for e in eps], axis=-1)


def geometry_table(runs, weights: dict, intruders: bool = False, truncate=None, k: int = K_INTRUDER):
    """One row per (run, layer) with :func:`layer_geometry`'s numbers: run_id, method, rank, lr, seed,
    layer, block, kind, trunc, fro, amp, proj_*, eff_rank, stable_rank, [max_cos].

    ``truncate`` (full fine-tuning only): a list of t; each t adds rows whose ΔW keeps only the stored
    factors' top-t directions (``trunc`` = t; other rows have ``trunc`` = the stored rank), to see how
    the intruder counts move with the truncation.  Full runs use r = 8 for the amplification (and
    report it at other r through :func:`amplification_by_r`)."""
    import pandas as pd
    svd = {n: torch.linalg.svd(W, full_matrices=False) for n, W in weights.items()}   # once per layer
    rows = []
    for run in runs.itertuples(index=False):
        if run.factors is None:
            continue
        fac = load_run_factors(run.factors)
        for name, f in sorted(fac.items(), key=lambda kv: layer_pos(kv[0])):
            block, kind = layer_pos(name)
            W = weights[name]
            stored = f["A"].shape[0]
            ts = [stored] + [t for t in (truncate or []) if t < stored] if run.method == "full" else [stored]
            for t in ts:
                B, A = f["B"][:, :t], f["A"][:t]
                r = int(run.rank) if run.rank else 8
                g = layer_geometry(W, B, A, r, energy_kept=f["energy_kept"] if t == stored else None,
                                   intruders=intruders, basis0=(svd[name][0], svd[name][2].mT), k=k,
                                   W_svals=svd[name][1])
                rows.append(dict(run_id=run.run_id, method=run.method, rank=int(run.rank), lr=run.lr, seed=run.seed,
                                 layer=name, block=block, kind=kind, trunc=t, **g))
    return pd.DataFrame(rows)


def amplification_by_r(runs, weights: dict, ranks=RANKS, max_rank: int = 32):
    """Full fine-tuning's amplification at each r ≤ ``max_rank`` (its stored top directions): one row per
    (run, layer, r) with amp = ‖ΔW‖_F / ‖U_rᵀ W V_r‖_F (whole-update norm, see :func:`layer_geometry`)."""
    import pandas as pd
    rows = []
    for run in runs.itertuples(index=False):
        fac = load_run_factors(run.factors)
        for name, f in sorted(fac.items(), key=lambda kv: layer_pos(kv[0])):
            block, kind = layer_pos(name)
            for r in [r for r in ranks if r <= min(max_rank, f["A"].shape[0])]:
                amp = sp.amplification_factor(f["B"], f["A"], weights[name], r=r)
                if f["energy_kept"] is not None:
                    amp /= math.sqrt(f["energy_kept"])
                rows.append(dict(run_id=run.run_id, method=run.method, rank=r, seed=run.seed, layer=name,
                                 block=block, kind=kind, amp=amp))
    return pd.DataFrame(rows)


# ============================================================================ φ between runs
def phi_grid(run1: dict, run2: dict, of: str = "A", i_max: int = 8, j_max: int = 64) -> np.ndarray:
    """φ(i, j) grid (i ≤ i_max, j ≤ j_max) between one layer of two runs (dicts of
    :func:`load_run_factors`): ``of="A"`` compares the final ``lora_A``'s row spaces, ``of="dW"`` ΔW's
    right singular vectors (input space, like A's).  Rows / columns beyond a run's number of nonzero
    directions are NaN."""
    if of == "A":
        p1, p2 = (None, run1["A_final"]), (None, run2["A_final"])
        if p1[1] is None or p2[1] is None:
            raise ValueError("of='A' needs the final lora_A in both factor files (LoRA runs only)")
    elif of == "dW":
        p1, p2 = (run1["B"], run1["A"]), (run2["B"], run2["A"])
    else:
        raise ValueError(f"of must be 'A' or 'dW', got {of!r}")
    G = sp.normalized_subspace_similarity(p1, p2, of=of, side="right", i_max=i_max, j_max=j_max).numpy()
    out = np.full((i_max, j_max), np.nan)
    out[:G.shape[0], :G.shape[1]] = G
    return out


def phi_between(runs, pairs, of: str, i_max: int, j_max: int, cache: dict | None = None) -> dict:
    """{pair label: array (layers, i_max, j_max)} of :func:`phi_grid` for each (label, run_id_1, run_id_2)
    in ``pairs`` (layers in model order).  ``cache`` maps run_id → loaded factors (filled as needed)."""
    cache = {} if cache is None else cache
    path = dict(zip(runs["run_id"], runs["factors"]))
    out = {}
    for label, a, b in pairs:
        for rid in (a, b):
            if rid not in cache:
                cache[rid] = load_run_factors(path[rid])
        names = sorted(cache[a], key=layer_pos)
        out[label] = np.stack([phi_grid(cache[a][n], cache[b][n], of, i_max, j_max) for n in names])
    return out


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


def phi_init_random(weights: dict, seeds, r1: int = 8, r2: int = 64, i_max: int = 8, j_max: int = 64) -> dict:
    """{seed: (layers, i_max, j_max)} φ grid between the *initial* A of a random-init run at r1 and at r2
    (the control for the final A's: what the same seed's draws share before any training)."""
    out = {}
    for s in seeds:
        a1, a2 = initial_A(weights, "random", r1, s), initial_A(weights, "random", r2, s)
        out[s] = np.stack([phi_grid(dict(A_final=a1[n]), dict(A_final=a2[n]), "A", i_max, j_max)
                           for n in sorted(weights, key=layer_pos)])
    return out


def phi_summary(grids, cells=((1, 1), (1, 64), (8, 8), (8, 64))) -> dict:
    """From stacked φ grids (..., i, j): for each (i, j) in ``cells`` (1-based) the mean, sd, min and max
    over all leading entries (seeds × layers), keyed "i,j"."""
    g = np.asarray(grids, dtype=float)
    out = {}
    for i, j in cells:
        if i <= g.shape[-2] and j <= g.shape[-1]:
            v = g[..., i - 1, j - 1].ravel()
            v = v[~np.isnan(v)]
            out[f"{i},{j}"] = dict(mean=float(v.mean()), sd=float(v.std(ddof=1)) if len(v) > 1 else math.nan,
                                   min=float(v.min()), max=float(v.max()), n=len(v),
                                   baseline=sp.random_subspace_similarity_baseline(N_DIM, i, j))
    return out


# ============================================================================ aggregates
def per_seed(table, value: str, by=("method", "rank"), where=None, geometric: bool = False) -> "pd.DataFrame":
    """Mean of ``value`` over layers for each run (one number per seed; the geometric mean
    exp(mean log v) with ``geometric``, for ratios such as the amplification factor), then mean / sd / n
    over seeds per ``by`` group; columns: *by, mean, sd, n, by_seed ({seed: value})."""
    import pandas as pd
    t = table if where is None else table[where(table)]
    if geometric:
        t = t.assign(**{value: np.log(t[value].astype(float))})
    runs = t.groupby([*by, "seed"], sort=False)[value].mean().reset_index()
    if geometric:
        runs[value] = np.exp(runs[value])
    rows = []
    for key, g in runs.groupby(list(by), sort=False):
        key = key if isinstance(key, tuple) else (key,)
        v = g[value].to_numpy(float)
        rows.append({**dict(zip(by, key)), "mean": float(v.mean()), "sd": float(v.std(ddof=1)) if len(v) > 1 else math.nan,
                     "n": len(v), "by_seed": dict(zip(g["seed"].astype(int), v.astype(float)))})
    return pd.DataFrame(rows)


def intruder_counts(table, eps=EPS) -> "pd.DataFrame":
    """``table`` (rows with ``max_cos``) with one column ``n@ε`` per ε: the layer's intruder count."""
    t = table.copy()
    C = count_curve(np.stack(t["max_cos"].to_numpy()), eps)
    for i, e in enumerate(eps):
        t[f"n@{e:g}"] = C[:, i]
    return t


def intruder_curves(table, eps=EPS_FINE, by=("method", "rank")) -> "pd.DataFrame":
    """Count-vs-ε curves: for each ``by`` group and ε, the mean intruder count per layer (of the k examined)
    averaged over layers and seeds, with the sd over seeds of the per-seed layer means."""
    import pandas as pd
    rows = []
    for key, g in table.groupby(list(by), sort=False):
        key = key if isinstance(key, tuple) else (key,)
        C = count_curve(np.stack(g["max_cos"].to_numpy()), eps)          # (rows, eps)
        seeds = g["seed"].to_numpy()
        seed_means = np.stack([C[seeds == s].mean(axis=0) for s in np.unique(seeds)])
        for i, e in enumerate(eps):
            rows.append({**dict(zip(by, key)), "eps": float(e), "mean": float(seed_means[:, i].mean()),
                         "sd": float(seed_means[:, i].std(ddof=1)) if len(seed_means) > 1 else math.nan,
                         "n_seeds": len(seed_means)})
    return pd.DataFrame(rows)


def paired_family(specs) -> list[dict]:
    """Paired-by-seed comparisons with Holm over the family: ``specs`` = [(label, {seed: a}, {seed: b})];
    each result is :func:`harness.stats.paired` (b − a) plus label, p_holm, finding."""
    from .stats import paired, with_holm
    return with_holm([{**paired(a, b), "label": label} for label, a, b in specs])


def fmt_pm(mean: float, sd: float, digits: int = 2) -> str:
    """"0.52 ± 0.03" (no ± when sd is NaN)."""
    return f"{mean:.{digits}f}" if sd is None or not math.isfinite(sd) else f"{mean:.{digits}f} ± {sd:.{digits}f}"


# ============================================================================ figures
def _new_figure(nrows, ncols, size, **kw):
    from matplotlib.figure import Figure
    fig = Figure(figsize=size, layout="constrained")
    return fig, fig.subplots(nrows, ncols, squeeze=False, **kw)


def show(fig, path=None):
    """Display a Figure as a PNG (the page's cell output) and optionally write it to ``path``."""
    from IPython.display import Image, display
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_bytes(buf.getvalue())
    display(Image(data=buf.getvalue()))


def fig_accuracy(acc, check, full_ref=None, majority: float | None = None):
    """Final dev accuracy vs r per method (mean ± sd over seeds), the r = 64 lr check (seed 0, open
    markers, offset), full fine-tuning's mean ± sd as a band."""
    fig, axes = _new_figure(1, 1, (7.5, 3.6))
    ax = axes[0, 0]
    for i, method in enumerate(METHODS):
        g = acc[acc["method"] == method]
        x = np.asarray(g["rank"], float) * 2 ** ((i - 1) * 0.06)
        ax.errorbar(x, g["mean"], yerr=g["sd"], marker="o", ms=4, capsize=3, color=COLORS[method], label=method)
        c = check[(check["method"] == method) & (check["role"] != "main")]
        xc = 64 * 2 ** (0.45 + i * 0.45)                    # one column per method, right of r = 64
        for _, row in c.iterrows():
            mk = "v" if row["role"] == "lower" else "^"
            ax.plot([xc], [row["dev"]], mk, mfc="none", color=COLORS[method], ms=7)
            ax.annotate(f"{row['lr']:g}", (xc, row["dev"]), fontsize=6, xytext=(5, -2),
                        textcoords="offset points", color=COLORS[method])
    if full_ref is not None:
        m, s = full_ref
        ax.axhspan(m - s, m + s, color=COLORS["full"], alpha=0.12, lw=0)
        ax.axhline(m, color=COLORS["full"], lw=1, ls="--", label="full fine-tuning (mean ± sd)")
    if majority is not None:
        ax.axhline(majority, color="grey", lw=0.8, ls=":", label="majority class")
    ax.set_xscale("log", base=2)
    ax.set_xticks(RANKS, [str(r) for r in RANKS])
    ax.set_xlabel("rank r (alpha = 16, s = alpha/r)")
    ax.set_ylabel("MRPC dev accuracy (final)")
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    return fig


def _heat(ax, G, vmax=1.0, title=None, cmap="viridis"):
    im = ax.imshow(G, aspect="auto", origin="upper", vmin=0, vmax=vmax, cmap=cmap, interpolation="nearest",
                   extent=(0.5, G.shape[1] + 0.5, G.shape[0] + 0.5, 0.5))
    if title:
        ax.set_title(title, fontsize=8, loc="left")
    ax.tick_params(labelsize=7)
    return im


def fig_phi_r8_r64(panels: dict, kinds=("query", "value"), names=None):
    """Heat maps φ(i, j), i ≤ 8 (r = 8 run), j ≤ 64 (r = 64 run), mean over seeds and the layers of one
    kind: ``panels`` = {row title: array (seeds, layers, 8, 64)}, ``names`` = the layers (model order)."""
    rows = list(panels)
    fig, axes = _new_figure(len(rows), len(kinds), (10.5, 0.95 * len(rows) + 0.8), sharex=True, sharey=True)
    kind_of = np.array([layer_pos(n)[1] for n in names])
    for r, title in enumerate(rows):
        for c, kind in enumerate(kinds):
            G = np.nanmean(panels[title][:, kind_of == kind], axis=(0, 1))
            im = _heat(axes[r, c], G, title=f"{title} — {kind}")
            axes[r, c].set_yticks([1, 4, 8])
    for c in range(len(kinds)):
        axes[-1, c].set_xlabel("j (top-j directions of the r = 64 run)")
    for r in range(len(rows)):
        axes[r, 0].set_ylabel("i", fontsize=8)
    fig.colorbar(im, ax=axes, shrink=0.6, label="φ(i, j)")
    return fig


def fig_phi_layers(panels: dict, names, cells=((1, 1), (8, 8))):
    """Per-layer spread of φ between the r = 8 and r = 64 runs: for each (i, j) in ``cells`` one panel,
    x = layer, one series per panel row of ``panels`` (mean over seeds, bars = min–max over seeds)."""
    labels = [layer_label(n) for n in names]
    fig, axes = _new_figure(1, len(cells), (10.5, 3.2), sharey=True)
    series = list(panels)
    for c, (i, j) in enumerate(cells):
        ax = axes[0, c]
        for s, title in enumerate(series):
            v = panels[title][:, :, i - 1, j - 1]                 # (seeds, layers)
            x = np.arange(len(names)) + (s - (len(series) - 1) / 2) * 0.12
            m = np.nanmean(v, axis=0)
            # colour = method, marker = what is compared (A: circle, initial A₀: open circle, ΔW: square)
            color = next((COLORS[k] for k in ("lora_fa_svd", "svd", "random", "full") if k in title), "grey")
            init = "₀" in title or "init" in title
            ax.errorbar(x, m, yerr=[m - np.nanmin(v, axis=0), np.nanmax(v, axis=0) - m],
                        fmt="s" if title.startswith("ΔW") else "o", ms=3.5, capsize=2, lw=0.8, color=color,
                        mfc="white" if init else color, alpha=0.6 if init else 1.0, label=title)
        ax.axhline(sp.random_subspace_similarity_baseline(N_DIM, i, j), color="grey", ls=":", lw=0.8,
                   label="random subspaces")
        ax.set_xticks(range(len(names)), labels, fontsize=7)
        ax.set_title(f"φ({i}, {j})", fontsize=9)
        ax.set_ylim(-0.03, 1.03)
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("φ (r = 8 vs r = 64, same seed)")
    axes[0, -1].legend(fontsize=6.5, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return fig


def fig_phi_seeds(panels: dict, names, kinds=("query", "value"), size: int = 64):
    """Heat maps φ(i, j), i, j ≤ ``size``, between two seeds at r = 64 (mean over seed pairs and the
    layers of one kind): ``panels`` = {column title: array (pairs, layers, 64, 64)}."""
    cols = list(panels)
    fig, axes = _new_figure(len(kinds), len(cols), (10.5, 5.6), sharex=True, sharey=True)
    kind_of = np.array([layer_pos(n)[1] for n in names])
    for r, kind in enumerate(kinds):
        for c, title in enumerate(cols):
            G = np.nanmean(panels[title][:, kind_of == kind, :size, :size], axis=(0, 1))
            im = _heat(axes[r, c], G, title=f"{title} — {kind}")
            axes[r, c].set_aspect("equal")
        axes[r, 0].set_ylabel("i (seed a)", fontsize=8)
    for c in range(len(cols)):
        axes[-1, c].set_xlabel("j (seed b)", fontsize=8)
    fig.colorbar(im, ax=axes, shrink=0.6, label="φ(i, j)")
    return fig


def _by_rank_panel(ax, stats_df, methods, ref=None, ref_label="full fine-tuning", yscale=None, offset=0.05):
    for i, method in enumerate(methods):
        g = stats_df[stats_df["method"] == method].sort_values("rank")
        x = np.asarray(g["rank"], float) * 2 ** ((i - 1) * offset)
        ax.errorbar(x, g["mean"], yerr=g["sd"], marker="o", ms=4, capsize=3, color=COLORS.get(method), label=method)
    if ref is not None and len(ref):
        g = ref.sort_values("rank")
        ax.errorbar(g["rank"], g["mean"], yerr=g["sd"], marker="s", ms=3.5, capsize=3, color=COLORS["full"],
                    ls="--", lw=1, label=ref_label)
    ax.set_xscale("log", base=2)
    ax.set_xticks(RANKS, [str(r) for r in RANKS])
    if yscale:
        ax.set_yscale(yscale)
    ax.grid(alpha=0.3, which="both")


def fig_amplification(amp_stats, full_stats=None, kinds=("query", "value")):
    """Amplification factor vs r, one panel per kind: ``amp_stats`` rows (method, kind, rank, mean, sd)
    with sd over seeds of the per-seed layer means; ``full_stats`` the same for full fine-tuning."""
    fig, axes = _new_figure(1, len(kinds), (10, 3.5), sharey=True)
    for c, kind in enumerate(kinds):
        ax = axes[0, c]
        _by_rank_panel(ax, amp_stats[amp_stats["kind"] == kind], METHODS,
                       None if full_stats is None else full_stats[full_stats["kind"] == kind],
                       "full fine-tuning (top-r of ΔW)", yscale="log")
        ax.axhline(1.0, color="grey", lw=0.8, ls=":")
        ax.set_title(kind, fontsize=9)
        ax.set_xlabel("r")
    axes[0, 0].set_ylabel("‖ΔW‖_F / ‖U_rᵀ W V_r‖_F")
    axes[0, -1].legend(fontsize=7)
    return fig


def fig_effective_rank(er_stats, full_ref: tuple | None = None):
    """Effective rank of ΔW vs r (mean over layers, ± sd over seeds) with the line y = r (left) and as a
    fraction of r (right); ``full_ref`` = (mean, sd) of full fine-tuning's (top-32) ΔW, a band on the left."""
    fig, axes = _new_figure(1, 2, (10, 3.5))
    left, right = axes[0]
    _by_rank_panel(left, er_stats, METHODS, yscale="log")
    left.plot(RANKS, RANKS, color="grey", ls=":", lw=0.8, label="y = r")
    if full_ref is not None:
        left.axhspan(full_ref[0] - full_ref[1], full_ref[0] + full_ref[1], color=COLORS["full"], alpha=0.12, lw=0)
        left.axhline(full_ref[0], color=COLORS["full"], ls="--", lw=1, label="full fine-tuning (top-32 of ΔW)")
    left.set_ylabel("effective rank of ΔW")
    rel = er_stats.copy()
    rel["mean"], rel["sd"] = rel["mean"] / rel["rank"], rel["sd"] / rel["rank"]
    _by_rank_panel(right, rel, METHODS)
    right.set_ylabel("effective rank / r")
    for ax in (left, right):
        ax.set_xlabel("r")
        ax.legend(fontsize=7)
    return fig


def fig_intruder_curves(curves, full_curve=None, eps_marks=(0.5, 0.7)):
    """Mean intruder count per layer (of k = 10) vs ε, one panel per method, one line per rank (darker =
    larger r), full fine-tuning in black."""
    import matplotlib as mpl
    fig, axes = _new_figure(1, len(METHODS), (10.5, 3.4), sharey=True)
    cmap = mpl.colormaps["viridis"]
    for c, method in enumerate(METHODS):
        ax = axes[0, c]
        g = curves[curves["method"] == method]
        ranks = sorted(g["rank"].unique())
        for i, r in enumerate(ranks):
            h = g[g["rank"] == r].sort_values("eps")
            ax.plot(h["eps"], h["mean"], color=cmap(0.9 - 0.8 * i / max(1, len(ranks) - 1)), lw=1.3, label=f"r = {r}")
        if full_curve is not None:
            h = full_curve.sort_values("eps")
            ax.plot(h["eps"], h["mean"], color=COLORS["full"], lw=1.6, ls="--", label="full (top-32 ΔW)")
        for e in eps_marks:
            ax.axvline(e, color="grey", lw=0.6, ls=":")
        ax.set_title(method, fontsize=9)
        ax.set_xlabel("ε")
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("intruders per layer (of top 10)")
    axes[0, -1].legend(fontsize=6.5, loc="upper left")
    return fig


def fig_intruders_by_rank(stats_by_eps: dict, full_by_eps: dict | None = None):
    """Intruder count per layer vs r at each ε of ``stats_by_eps`` ({ε: rows (method, rank, mean, sd)}),
    full fine-tuning's mean ± sd as a band."""
    eps = list(stats_by_eps)
    fig, axes = _new_figure(1, len(eps), (10, 3.4), sharey=True)
    for c, e in enumerate(eps):
        ax = axes[0, c]
        _by_rank_panel(ax, stats_by_eps[e], METHODS)
        if full_by_eps is not None:
            m, s = full_by_eps[e]
            ax.axhspan(m - s, m + s, color=COLORS["full"], alpha=0.12, lw=0)
            ax.axhline(m, color=COLORS["full"], ls="--", lw=1, label="full fine-tuning")
        ax.set_title(f"ε = {e:g}", fontsize=9)
        ax.set_xlabel("r")
    axes[0, 0].set_ylabel("intruders per layer (of top 10)")
    axes[0, -1].legend(fontsize=7)
    return fig


def fig_intruder_layers(counts, eps: float, methods_ranks, full=None):
    """Heat map of the mean intruder count (over seeds) per layer (rows) and (method, rank) column at ε
    (columns grouped by method, labelled with r), with full fine-tuning as a last column."""
    col = f"n@{eps:g}"
    names = sorted(counts["layer"].unique(), key=layer_pos)
    groups, M = [], []
    for method, rank in methods_ranks:
        g = counts[(counts["method"] == method) & (counts["rank"] == rank)]
        M.append([g[g["layer"] == n][col].mean() for n in names])
        groups.append((method, str(rank)))
    if full is not None:
        M.append([full[full["layer"] == n][col].mean() for n in names])
        groups.append(("full", "full"))
    M = np.array(M).T
    fig, axes = _new_figure(1, 1, (10.5, 4.4))
    ax = axes[0, 0]
    im = ax.imshow(M, aspect="auto", cmap="magma_r", vmin=0, vmax=max(1.0, float(np.nanmax(M))))
    for (i, j), v in np.ndenumerate(M):
        ax.text(j, i, f"{v:.1f}", ha="center", va="center", fontsize=6,
                color="white" if v > 0.6 * np.nanmax(M) else "black")
    ax.set_xticks(range(len(groups)), [r for _, r in groups], fontsize=7)
    ax.set_xlabel("rank r (columns grouped by init)")
    for method in dict.fromkeys(m for m, _ in groups):
        idx = [j for j, (m, _) in enumerate(groups) if m == method]
        ax.text((idx[0] + idx[-1]) / 2, -0.9, method, ha="center", va="bottom", fontsize=8)
        if idx[0] > 0:
            ax.axvline(idx[0] - 0.5, color="white", lw=2)
    ax.set_yticks(range(len(names)), [layer_label(n) for n in names], fontsize=7)
    ax.set_ylabel("layer (q = query, v = value)")
    fig.colorbar(im, ax=ax, shrink=0.8, label=f"intruders at ε = {eps:g} (mean over seeds)")
    return fig


# ============================================================================ what the pages show
def shared_init_layers(phi_init: dict, threshold: float = 0.5) -> list[int]:
    """Indices of the layers whose random-init A₀ at r = 8 lies inside the r = 64 run's A₀ for some seed
    (φ₀(8, 64) > ``threshold``; independent draws give ≈ 64/384): the per-layer generator draws of the
    two ranks then start from the same state, so the first 8 rows coincide (train.py seeds one generator
    per run and adapts the layers in order; only the first layer's draws start from the same state)."""
    arr = np.stack(list(phi_init.values()))             # (seeds, layers, 8, 64)
    return sorted({int(i) for i in np.nonzero((arr[:, :, 7, 63] > threshold).any(axis=0))[0]})


def _pm(v, digits=2):
    v = np.asarray(list(v), float)
    return fmt_pm(float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else math.nan, digits)


def _p(p) -> str:
    """"Holm p = 0.048" / "Holm p < 0.001" for an adjusted p-value."""
    if p is None or not math.isfinite(p):
        return "Holm p n/a"
    return f"Holm p = {p:.2g}" if p >= 0.001 else "Holm p < 0.001"


def ranks_study(logs_root="logs", ranks_grid: str = "ranks", ref_grid: str = "v2", task: str = TASK) -> dict:
    """Everything ``book/ranks.md`` shows, from ``<logs_root>/<ranks_grid>`` (+ full fine-tuning of
    ``<ref_grid>``): tables, φ arrays, and ``glue`` = {name: formatted text} for the prose."""
    import pandas as pd

    from .stats import spearman_ci, with_holm
    root = Path(logs_root)
    runs = runs_table(root / ranks_grid, task, METHODS)
    full = runs_table(root / ref_grid, task, ("full",))
    lrs = main_lrs(runs)
    acc, check = accuracy_by_rank(runs), lr_check(runs)
    from .logs import read_logs
    majority = read_logs(root / ranks_grid)[0]["task"]["majority_baseline"].get("accuracy")
    W = pretrained_weights(root / ranks_grid)
    names = list(W)
    main = main_runs(runs)
    geo = geometry_table(main, W)
    full_geo = geometry_table(full, W)
    full_amp = amplification_by_r(full, W)
    G: dict[str, str] = {}
    D: dict = dict(runs=runs, full=full, lrs=lrs, acc=acc, check=check, majority=majority, names=names, glue=G)

    # ---- accuracy
    for m, lr in lrs.items():
        G[f"lr_{m}"] = f"{lr:g}"
    for row in acc.itertuples():
        G[f"acc_{row.method}_r{row.rank}"] = fmt_pm(row.mean, row.sd, 3)
    D["full_acc"] = (float(full["dev"].mean()), float(full["dev"].std(ddof=1)), len(full))
    G["acc_full"] = fmt_pm(*D["full_acc"][:2], 3)
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

    # ---- φ between r = 8 and r = 64 (same seed), and between seeds at r = 64
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
            G[f"phi_{of}_{m}_{i}_{j}"] = fmt_pm(st["mean"], st["sd"])
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
            G[f"phiseed_{of}_{m}_{i}_{j}"] = fmt_pm(st["mean"], st["sd"])
    Psvd = phi_between(runs, seed_pairs(runs, "svd", 64), "A", 64, 64, cache)
    G["phiseed_A_svd_8_8"] = _pm(np.concatenate([v[:, 7, 7] for v in Psvd.values()]))

    # ---- amplification and W-projections (the LoRA paper's Table 7), effective rank
    amp = per_seed(geo, "amp", by=("method", "kind", "rank"), geometric=True)
    famp = per_seed(full_amp, "amp", by=("method", "kind", "rank"), geometric=True)
    D["amp"], D["full_amp"] = amp, famp
    for row in pd.concat([amp, famp]).itertuples():
        G[f"amp_{row.method}_{row.kind}_r{row.rank}"] = fmt_pm(row.mean, row.sd)
    amp_all = per_seed(geo, "amp", by=("method", "rank"), geometric=True)
    for row in per_seed(full_amp, "amp", by=("method", "rank"), geometric=True).itertuples():
        G[f"amp_full_r{row.rank}"] = fmt_pm(row.mean, row.sd)
    for row in amp_all.itertuples():
        G[f"amp_{row.method}_r{row.rank}"] = fmt_pm(row.mean, row.sd)
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
        G[f"er_{row.method}_r{row.rank}"] = fmt_pm(row.mean, row.sd, 1)
        G[f"errel_{row.method}_r{row.rank}"] = f"{row.mean / row.rank:.2f}"
    fer = per_seed(full_geo, "eff_rank", by=("method",))
    D["full_er"] = (float(fer["mean"].iloc[0]), float(fer["sd"].iloc[0]))
    G["er_full"] = fmt_pm(*D["full_er"], 1)
    G["energy_kept_full"] = f"{np.mean([f['energy_kept'] for r in full.itertuples() for f in load_run_factors(r.factors).values()]):.2f}"
    D["geo"], D["full_geo"] = geo, full_geo
    return D


def intruders_study(logs_root="logs", ranks_grid: str = "ranks", ref_grid: str = "v2", task: str = TASK,
                    truncate=(8, 16)) -> dict:
    """Everything ``book/intruders.md`` shows: per-layer intruder data of the rank grid's main block and of
    full fine-tuning (also truncated to its top-``truncate`` directions), tables and ``glue`` texts."""
    import pandas as pd

    from .stats import spearman_ci, with_holm
    root = Path(logs_root)
    runs = runs_table(root / ranks_grid, task, METHODS)
    full = runs_table(root / ref_grid, task, ("full",))
    main = main_runs(runs)
    W = pretrained_weights(root / ranks_grid)
    it = intruder_counts(geometry_table(main, W, intruders=True))
    itf_all = intruder_counts(geometry_table(full, W, intruders=True, truncate=list(truncate)))
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
            G[f"n_{row.method}_r{row.rank}_e{int(e * 10)}"] = fmt_pm(row.mean, row.sd)
        G[f"n_full_e{int(e * 10)}"] = fmt_pm(*full_by_eps[e])
    D["by_eps"], D["full_by_eps"] = by_eps, full_by_eps
    # pooled over ranks (for the one-line answer)
    for e in (0.5, 0.7):
        col = f"n@{e:g}"
        pooled = per_seed(it, col, by=("method",))
        for row in pooled.itertuples():
            G[f"n_{row.method}_all_e{int(e * 10)}"] = fmt_pm(row.mean, row.sd)

    # ---- paired comparisons (by seed; one family, Holm)
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

    # ---- what the intruders are: inside W's top-m subspace (mixtures) or new directions
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
        G[f"nright_{row.method}_r{row.rank}_e7"] = fmt_pm(row.mean, row.sd)
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
    return D
