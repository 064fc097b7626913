"""ΔW's spectrum and geometry against W, per run and layer, and whether runs agree on ΔW's subspaces.

All from the stored factors (never the dense ΔW), with :mod:`lora.spectra` doing the math:

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

:func:`spectra_table` keeps every run (with its lr); what compares methods pools each method's runs at
its :func:`harness.analysis.runs.main_lr` (:func:`harness.analysis.runs.main_lr_rows`).
"""
from __future__ import annotations

import math

import numpy as np

from .runs import load_logs, main_lr, method_order, num, ref_rank, runs_table
from .weights import factor_path, layer_pos, pretrained_weights, w_subspaces, weights_key


def spectra_table(log_dir, task: str | None = None, weights=None, top: int | None = None) -> "pd.DataFrame":
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
    :func:`pretrained_weights` (tests)."""
    import pandas as pd
    from safetensors.torch import load_file

    import lora
    from lora import spectra as sp

    logs = load_logs(log_dir, task)
    r_ref = ref_rank(logs)
    rows = []
    for lg in logs:
        path = factor_path(lg, log_dir)
        if path is None:
            continue
        c = lg["config"]
        cfg = lora.read_lora_config(path)
        factors = lora.load_delta_factors(path)
        raw = load_file(str(path))
        if weights is None:
            try:
                W_all, wkey = pretrained_weights(lg, sorted(factors)), weights_key(lg)
            except Exception as e:   # base model not available here: spectra only, no geometry
                import warnings
                warnings.warn(f"{lg['run_id']}: pretrained weights unavailable ({type(e).__name__}: "
                              f"{str(e)[:200]}); geometry columns left NaN")
                W_all, wkey = None, None
        else:   # caller's weights: not cached
            W_all, wkey = (weights(lg) if callable(weights) else weights), None
        for layer in sorted(factors, key=lambda n: (layer_pos(n), n)):
            B, A = factors[layer]
            lc = cfg[layer]
            U, S, V = sp.lowrank_svd(B, A)
            nr = sp.numerical_rank(S)
            r = min(r_ref, nr)
            idx, kind = layer_pos(layer)
            row = dict(run_id=lg["run_id"], task=c["task"], method=c["method"], seed=c["seed"], lr=c.get("lr"),
                       layer=layer, layer_idx=idx, kind=kind, rank=lc.get("rank"), factor_rank=int(A.shape[0]),
                       r_ref=r_ref, sv=(S if top is None else S[:top]).tolist(), num_rank=nr,
                       fro=sp.frobenius_norm(S), spectral=sp.spectral_norm(S), stable_rank=sp.stable_rank(S),
                       effective_rank=sp.effective_rank(S), energy_top1=sp.energy_fraction(S, 1),
                       energy_top4=sp.energy_fraction(S, 4),
                       trunc_energy_kept=num(lc.get("energy_kept")) if lc.get("init") == "full" else math.nan)
            W = W_all.get(layer) if W_all is not None else None
            if W is not None and r > 0:
                k = min(r_ref, min(W.shape))
                row["amplification"] = sp.amplification_factor(B, A, W, r=r)
                sub = {which: w_subspaces(wkey, layer, W, k, which) for which in ("top", "bottom")}   # (U_k, V_k)
                for i, (side, X) in enumerate((("left", U[:, :r]), ("right", V[:, :r]))):
                    for which in ("top", "bottom"):
                        cos = sp.principal_angles(X, sub[which][i]).cos()
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
    return df


def subspace_agreement_table(log_dir, task: str | None = None) -> "pd.DataFrame":
    """Do two runs put ΔW in the same subspaces?  One row per pair of ok runs of a task (each at its
    method's :func:`main_lr`, so an lr block is left out) that differ in exactly one thing: the seed
    (same method: ``relation == "seed"``) or the method (same seed: ``relation == "init"``).

    For every layer both runs adapted, with V (in × r) and U (out × r) the top-r right and left
    singular vectors of each ΔW (r = r_ref, the grid's usual adapter rank, capped by ΔW's numerical
    rank), φ = ‖V₁ᵀV₂‖²_F / r (Hu et al. 2021, eq. 4 at i = j = r) is 1 for the same subspace and
    r/n in expectation for independent random ones.  Columns: run_a, run_b, task, method_a, method_b, seed_a,
    seed_b, relation, layers, phi_in (mean over layers, right/input side), phi_out (left/output),
    random (r/n of the input space)."""
    import itertools

    import pandas as pd

    import lora
    from lora import spectra as sp

    logs = load_logs(log_dir, task)
    runs = runs_table(log_dir)
    r_ref = ref_rank(logs)
    keep = []
    for lg in logs:
        c = lg["config"]
        lr = main_lr(runs, c["task"], c["method"]) if len(runs) else None
        if factor_path(lg, log_dir) is not None and (lr is None or np.isclose(float(c["lr"]), lr)):
            keep.append(lg)
    vecs = {}
    for lg in keep:
        per_layer = {}
        for layer, (B, A) in lora.load_delta_factors(factor_path(lg, log_dir)).items():
            U, S, V = sp.lowrank_svd(B, A)
            k = min(r_ref, sp.numerical_rank(S))
            if k > 0:
                per_layer[layer] = (U[:, :k], V[:, :k])
        vecs[lg["run_id"]] = per_layer
    rows = []
    order = {m: i for i, m in enumerate(method_order(lg["config"]["method"] for lg in keep))}
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
    return df


def right_vectors(log_dir, log: dict, layer: str, m: int):
    """Top-m right singular vectors of the run's ΔW for ``layer`` (in × m), from the factors."""
    import lora
    from lora import spectra as sp
    B, A = lora.load_delta_factors(factor_path(log, log_dir))[layer]
    _, S, V = sp.lowrank_svd(B, A)
    return V[:, :min(m, sp.numerical_rank(S))]

