"""Per-layer ΔW geometry against W and between runs: the numbers of the rank and intruder chapters.

Quantities (all per adapted layer, W = the pretrained 384×384 query / value weight, ΔW = B @ A relative to
W from :func:`harness.analysis.weights.load_run_factors`):

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

import math

import numpy as np
import torch

from lora import spectra as sp

from .weights import initial_A, layer_pos, load_run_factors

RANKS = (1, 2, 4, 8, 16, 64)                 # the rank grid's adapter ranks
K_INTRUDER = 10
TOP_M = 20                                   # "inside W's top-m left singular subspace" (m = 2k) for intruders
EPS = tuple(sp.INTRUDER_EPS)                 # 0.5, 0.6, 0.7, 0.8, 0.9
EPS_FINE = tuple(np.round(np.arange(0.30, 0.951, 0.025), 3))   # for the count-vs-ε curves
N_DIM = 384                                  # MiniLM's hidden size: the ambient dimension of q/v


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


def shared_init_layers(phi_init: dict, threshold: float = 0.5) -> list[int]:
    """Indices of the layers whose random-init A₀ at r = 8 lies inside the r = 64 run's A₀ for some seed
    (φ₀(8, 64) > ``threshold``; independent draws give ≈ 64/384): the per-layer generator draws of the
    two ranks then start from the same state, so the first 8 rows coincide (train.py seeds one generator
    per run and adapts the layers in order; only the first layer's draws start from the same state)."""
    arr = np.stack(list(phi_init.values()))             # (seeds, layers, 8, 64)
    return sorted({int(i) for i in np.nonzero((arr[:, :, 7, 63] > threshold).any(axis=0))[0]})

