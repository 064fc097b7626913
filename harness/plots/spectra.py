"""Spectral figures of a grid's ΔW (numbers from :mod:`harness.analysis.spectra`): singular-value decay,
effective rank per layer, principal angles with W, subspace similarity across seeds and inits (Hu et al.
2021, Fig. 3-4), and agreement of ΔW's subspaces between runs.  Methods are compared at one lr each (each
method's :func:`harness.analysis.runs.main_lr`); every caption says which runs and which lr it pools."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..analysis.runs import (describe_lrs, describe_runs, load_logs, main_lr_rows, method_order,
                             ref_rank, runs_table, sorted_unique)
from ..analysis.spectra import right_vectors, spectra_table, subspace_agreement_table
from ..tasks import order_tasks, task_label
from .style import display_entries, entry, merge_manifest, method_colors, new_figure, save, style, write_table


def pooled(log_dir, logs: list[dict]) -> str:
    """The caption's last sentence: which runs a figure pools and at which learning rate."""
    return f"{describe_runs(log_dir, logs)}; each method at its main learning rate ({describe_lrs(logs)})"


def spectra_figures(log_dir, fig_dir, task: str | None = None, show: bool | None = None) -> dict:
    """All spectral figures for the ok runs of ``log_dir`` (per task; ``task=None``: every task):

    * ``sv_decay_<task>.png``        σ_i/σ_1 vs i per method: one faint line per run × layer, mean bold;
    * ``effective_rank_<task>.png``  effective rank of ΔW vs layer index, query and value panels, per method;
    * ``angles_<task>.png``          heat map methods × layers of the overlap (mean cos²) of ΔW's top-r
      right singular subspace with W's top-r and bottom-r ones, random-subspace level marked;
    * ``similarity_<task>.png``      φ(i, j) (Hu et al. 2021 eq. 4) between the top right singular
      vectors of ΔW for seed 0 vs seed 1 of each method, and random vs svd init (seed 0), for the last
      layer's value projection; last panel φ(i, i) with the random-subspace expectation i/n.

    * ``subspace_agreement.png``     methods × methods heat map of φ(r, r) between ΔW's top-r subspaces of two
      runs (diagonal: another seed; off-diagonal: another init, same seed), per task, input and output side.

    The figures compare methods at one learning rate each, the method's main lr
    (:func:`harness.analysis.runs.main_lr`): a grid's extra lr block is left out, and every caption names the
    runs and the lr it pools.  Also writes ``spectra_<dir>.csv`` (every run, with its lr) and ``subspaces_<dir>.csv``
    (:func:`harness.analysis.spectra.subspace_agreement_table`) and merges the entries into
    ``fig_dir/manifest.json``.  Returns the manifest entries."""
    logs_all = load_logs(log_dir, task)
    out = {}
    if not logs_all:
        return out
    table = spectra_table(log_dir, task)
    if not len(table):
        return out
    stem = f"spectra_{Path(log_dir).resolve().name}" + (f"_{task}" if task else "")
    csv = write_table(table, fig_dir, stem, json_too=False)
    out[stem] = entry(csv, "Per run and adapted layer: singular values of ΔW, norms, stable and effective "
                            "rank, energy in the top 1/4 directions, amplification factor, subspace overlaps "
                            f"with W. {describe_runs(log_dir, logs_all)}.", logs_all)
    sub = subspace_agreement_table(log_dir, task)
    if len(sub):
        used = [lg for lg in logs_all if lg["run_id"] in set(sub["run_a"]) | set(sub["run_b"])]
        stem_s = f"subspaces_{Path(log_dir).resolve().name}" + (f"_{task}" if task else "")
        csv = write_table(sub, fig_dir, stem_s, json_too=False)
        out[stem_s] = entry(csv, "Per pair of runs that differ only in the seed or only in the init: subspace "
                                  "similarity φ of ΔW's top-r right (input) and left (output) singular vectors, "
                                  f"mean over layers. {describe_runs(log_dir, used)}.", used)
        out.update(_agreement(log_dir, sub, fig_dir, used))
    runs = runs_table(log_dir)
    for t in order_tasks(table["task"]):
        tt = main_lr_rows(table[table["task"] == t], runs)     # one lr per method: its main lr
        tl = [lg for lg in logs_all if lg["config"]["task"] == t and lg["run_id"] in set(tt["run_id"])]
        out.update(_sv_decay(log_dir, fig_dir, t, tt, tl))
        out.update(_effective_rank(log_dir, fig_dir, t, tt, tl))
        out.update(_angles(log_dir, fig_dir, t, tt, tl))
        out.update(_similarity(log_dir, fig_dir, t, tt, tl))
    merge_manifest(fig_dir, out)
    display_entries(out, show)
    return out


def _agreement(log_dir, sub, fig_dir, logs) -> dict:
    """``subspace_agreement.png``: per task (columns) and side (rows: input, output), a methods × methods
    heat map of the mean φ: diagonal = same method, another seed; off-diagonal = same seed, another init."""
    import seaborn as sns

    tasks = order_tasks(sub["task"])
    methods = method_order(set(sub["method_a"]) | set(sub["method_b"]))
    rnd = float(sub["random"].mean())
    with style():
        fig, axes = new_figure(len(tasks), 2, panel=(3.6, 3.1))
        for j, task in enumerate(tasks):
            g = sub[sub["task"] == task]
            for i, (col, side) in enumerate((("phi_in", "input (right)"), ("phi_out", "output (left)"))):
                M = np.full((len(methods), len(methods)), np.nan)
                for (ma, mb), v in g.groupby(["method_a", "method_b"])[col].mean().items():
                    M[methods.index(ma), methods.index(mb)] = M[methods.index(mb), methods.index(ma)] = v
                ax = axes[j, i]
                sns.heatmap(M, ax=ax, vmin=0, vmax=1, cmap="magma", square=True, annot=True, fmt=".2f",
                            annot_kws={"fontsize": 7}, xticklabels=methods, yticklabels=methods,
                            cbar_kws={"label": "φ(r, r)", "shrink": 0.7})
                ax.collections[0].colorbar.ax.axhline(rnd, color="cyan", lw=2)
                ax.set_title(f"{task_label(task)}: {side} subspaces", fontsize=9)
                ax.tick_params(labelsize=7)
        fig.suptitle("Do two runs put ΔW in the same top-r subspaces?\ndiagonal: another seed; "
                     "off-diagonal: another init, same seed", fontsize=9)
        path = save(fig, fig_dir, "subspace_agreement")
    cap = (f"Subspace similarity φ(r, r) = ‖V₁ᵀV₂‖²_F / r between the top-r singular vectors of ΔW of two runs, "
           f"mean over adapted layers and pairs (r = {ref_rank(logs)}; {rnd:.3f} = r/n for random subspaces, cyan "
           f"mark on the colour bars). Diagonal cells compare one method's runs with different seeds; off-diagonal "
           f"cells compare two inits run with the same seed. Left column: input (right) singular subspaces; right: "
           f"output (left); one row per task. `svd_naive` keeps its start U_r S_r V_rᵀ in ΔW and `lora_fa_svd` fixes ΔW's row space to "
           f"span(V_r), so their high values are built in by the init. {pooled(log_dir, logs)}.")
    return {"subspace_agreement": entry(path, cap, logs)}


def _sv_decay(log_dir, fig_dir, task, tt, tl) -> dict:
    methods = method_order(tt["method"])
    colors = method_colors()
    ncols = min(3, len(methods))
    nrows = math.ceil(len(methods) / ncols)
    with style():
        fig, axes = new_figure(nrows, ncols, panel=(3.8, 3.0), min_cols=2)
        flat = axes.ravel()
        for ax, method in zip(flat, methods):
            g = tt[tt["method"] == method]
            curves = []
            for _, row in g.iterrows():
                s = np.asarray(row["sv"], dtype=float)
                if s.size == 0 or s[0] <= 0:
                    continue
                s = np.clip(s / s[0], 1e-6, None)
                curves.append(s)
                ax.plot(np.arange(1, s.size + 1), s, color=colors.get(method), alpha=0.25, lw=0.7,
                        label="one layer × seed" if len(curves) == 1 else None)
            if curves:
                L = min(len(c) for c in curves)
                mean = np.exp(np.mean([np.log(c[:L]) for c in curves], axis=0))
                ax.plot(np.arange(1, L + 1), mean, color="k", lw=2, label="geometric mean")
            r = g["rank"].dropna()
            if len(r):
                ax.axvline(float(r.iloc[0]) + 0.5, ls=":", c="grey", lw=1,
                           label=f"stored rank {int(r.iloc[0])}" if method == "full" else f"r = {int(r.iloc[0])}")
            ax.set_yscale("log")
            ax.set_ylim(1e-4, 1.5)
            ax.xaxis.get_major_locator().set_params(integer=True)
            note = " (top-32 SVD of full update)" if method == "full" else ""
            ax.set(xlabel="index i", ylabel="σ_i / σ_1", title=f"{method}{note}")
            ax.legend(fontsize=7, loc="lower left")
        for ax in flat[len(methods):]:
            ax.set_visible(False)
        fig.suptitle(f"{task_label(task)}: normalised singular values of ΔW per method")
        name = f"sv_decay_{task}"
        path = save(fig, fig_dir, name)
    cap = (f"Singular-value decay of ΔW (relative to the pretrained W) on {task}: σ_i/σ_1 against i, one faint line "
           f"per adapted layer and seed, bold: geometric mean; for full fine-tuning only the top-32 SVD of the "
           f"update is stored. {pooled(log_dir, tl)}.")
    return {name: entry(path, cap, tl)}


def _effective_rank(log_dir, fig_dir, task, tt, tl) -> dict:
    methods = method_order(tt["method"])
    colors = method_colors()
    kinds = [k for k in ("query", "value") if k in set(tt["kind"])] or sorted_unique(tt["kind"])
    with style():
        fig, axes = new_figure(1, len(kinds), panel=(4.6, 3.4), min_cols=2)
        for ax, kind in zip(axes[0], kinds):
            for method in methods:
                g = tt[(tt["method"] == method) & (tt["kind"] == kind)]
                if g.empty:
                    continue
                st = g.groupby("layer_idx")["effective_rank"].agg(["mean", "min", "max", "count"])
                n = int(g["seed"].nunique())
                ax.errorbar(st.index, st["mean"], yerr=[st["mean"] - st["min"], st["max"] - st["mean"]],
                            marker="o", ms=4, capsize=2, color=colors.get(method), label=f"{method} (n={n})")
            r = tt["r_ref"].iloc[0]
            ax.axhline(r, ls="--", c="grey", lw=1, label=f"r = {r}")
            ax.set(xlabel="layer index", ylabel="effective rank of ΔW", title=f"{task_label(task)}: {kind}")
            ax.xaxis.get_major_locator().set_params(integer=True)
            ax.legend(fontsize=7)
        fig.suptitle(f"{task_label(task)}: effective rank (Roy & Vetterli) of ΔW per layer; mean, min–max over seeds")
        name = f"effective_rank_{task}"
        path = save(fig, fig_dir, name)
    cap = (f"Effective rank exp(H(σ/Σσ)) of ΔW for each layer and method on {task} (mean over seeds, bars: min–max); "
           f"dashed: the adapter rank r. full: computed from its stored top-32 SVD. {pooled(log_dir, tl)}.")
    return {name: entry(path, cap, tl)}


def _angles(log_dir, fig_dir, task, tt, tl) -> dict:
    """``angles_<task>.png``: methods × layers heat maps of the overlap of ΔW's top-r right singular subspace
    with W's top-r (upper panel) and bottom-r (lower panel) ones, one shared colour bar marking the
    random-subspace level.  7.2 inches wide (legible at the book's ~750 px); cell values are written only
    when there are at most 12 layers."""
    import seaborn as sns

    if "overlap_right_top" not in tt.columns or tt["overlap_right_top"].isna().all():
        return {}
    methods = method_order(tt["method"])
    keys = sorted(set(zip(tt["layer_idx"], tt["kind"])))
    labels = [f"{kind[0]}{idx}" for idx, kind in keys]
    base = float(tt["overlap_random"].mean())
    r_ref = int(tt["r_ref"].iloc[0])
    cmap = sns.color_palette("mako", as_cmap=True)
    with style():
        fig, axes = new_figure(2, 1, size=(7.2, 2 * (0.3 * len(methods) + 0.8) + 0.9), sharex=True)
        im = None
        for ax, which in zip(axes[:, 0], ("top", "bottom")):
            piv = (tt.groupby(["method", "layer_idx", "kind"])[f"overlap_right_{which}"].mean()
                   .unstack(["layer_idx", "kind"]).reindex(index=methods, columns=keys))
            im = ax.imshow(piv.to_numpy(dtype=float), vmin=0, vmax=1, cmap=cmap, aspect="auto")
            if len(keys) <= 12:
                for (yi, xi), v in np.ndenumerate(piv.to_numpy(dtype=float)):
                    if np.isfinite(v):
                        ax.text(xi, yi, f"{v:.2f}", ha="center", va="center", fontsize=8,
                                color="k" if v > 0.6 else "w")
            ax.set_yticks(range(len(methods)), methods, fontsize=8)
            ax.set_title(f"ΔW's top-{r_ref} right singular subspace vs W's {which}-{r_ref}", fontsize=9)
            ax.grid(False)
        axes[-1, 0].set_xticks(range(len(keys)), labels, fontsize=7)
        axes[-1, 0].set_xlabel("layer (q = query, v = value; number = block)", fontsize=8)
        cbar = fig.colorbar(im, ax=axes[:, 0].tolist(), shrink=0.9, pad=0.02)
        cbar.set_label("mean cos² of the principal angles", fontsize=8)
        cbar.ax.axhline(base, color="red", lw=2)
        cbar.ax.tick_params(labelsize=7)
        fig.suptitle(f"{task_label(task)}: ΔW's input subspace against W's, mean over seeds "
                     f"(red line: random subspaces, {base:.3f})", fontsize=9)
        name = f"angles_{task}"
        path = save(fig, fig_dir, name)
    cap = (f"Principal angles on {task}: mean cos² of the principal angles between ΔW's top-r right singular "
           f"subspace (r = min({r_ref}, rank ΔW)) and W's top-{r_ref} (upper panel) or bottom-{r_ref} (lower panel) "
           f"right singular subspace, per method and layer (q = query, v = value, with the block number), mean over "
           f"seeds; the red line on the colour bar is the expectation for random subspaces ({base:.3f}). "
           f"{pooled(log_dir, tl)}.")
    return {name: entry(path, cap, tl)}


def _similarity(log_dir, fig_dir, task, tt, tl) -> dict:
    import seaborn as sns

    from lora import spectra as sp

    values = tt[tt["kind"] == "value"]
    layer = (values if len(values) else tt).sort_values("layer_idx")["layer"].iloc[-1]
    r_ref = int(tt["r_ref"].iloc[0])
    by = {}
    for lg in tl:
        by.setdefault(lg["config"]["method"], {}).setdefault(lg["config"]["seed"], lg)
    pairs = []
    for method in method_order(by):
        seeds = sorted(by[method])
        if len(seeds) >= 2:
            pairs.append((f"{method}: seed {seeds[0]} vs {seeds[1]}", by[method][seeds[0]], by[method][seeds[1]],
                          f"seed {seeds[0]}", f"seed {seeds[1]}"))
    if "random" in by and "svd" in by:
        s = sorted(set(by["random"]) & set(by["svd"])) or [sorted(by["random"])[0]]
        a, b = by["random"].get(s[0]) or next(iter(by["random"].values())), \
            by["svd"].get(s[0]) or next(iter(by["svd"].values()))
        pairs.append((f"random vs svd init (seed {a['config']['seed']})", a, b, "random", "svd"))
    if not pairs:
        return {}
    grids = []
    n_in = None
    for title, a, b, la, lb in pairs:
        Ua, Ub = right_vectors(log_dir, a, layer, r_ref), right_vectors(log_dir, b, layer, r_ref)
        n_in = Ua.shape[0]
        if Ua.shape[1] and Ub.shape[1]:
            grids.append((title, sp.similarity_grid(Ua, Ub).numpy(), la, lb))
    if not grids:
        return {}
    used = sorted({lg["run_id"] for _, a, b, _, _ in pairs for lg in (a, b)})
    used_logs = [lg for lg in tl if lg["run_id"] in used]
    with style():
        npan = len(grids) + 1
        ncols = min(3, npan)
        fig, axes = new_figure(math.ceil(npan / ncols), ncols, panel=(2.3, 2.3))
        flat = axes.ravel()
        for ax in flat[npan:]:
            ax.set_visible(False)
        for ax, (title, G, la, lb) in zip(flat, grids):
            sns.heatmap(G, ax=ax, vmin=0, vmax=1, cmap="magma", square=True, cbar=False,
                        xticklabels=list(range(1, G.shape[1] + 1)), yticklabels=list(range(1, G.shape[0] + 1)))
            ax.set(xlabel=f"j ({lb})", ylabel=f"i ({la})", title=title)
        cbar = fig.colorbar(flat[0].collections[0], ax=flat[:len(grids)].tolist(), shrink=0.5, label="φ(i, j)")
        cbar.ax.axhline(r_ref / n_in, color="cyan", lw=2)
        ax = flat[npan - 1]
        pal = sns.color_palette("tab10", len(grids))
        for (title, G, _, _), col in zip(grids, pal):
            d = np.diag(G)
            ax.plot(np.arange(1, d.size + 1), d, marker="o", ms=3, color=col, label=title)
        m = max(G.shape[0] for _, G, _, _ in grids)
        ii = np.arange(1, m + 1)
        ax.plot(ii, ii / n_in, ls="--", c="grey", label=f"random subspaces: i/n (n={n_in})")
        ax.set(xlabel="i", ylabel="φ(i, i)", title="diagonal φ(i, i)", ylim=(0, 1.05))
        fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncols=3)
        fig.suptitle(f"{task_label(task)}: subspace similarity of ΔW's top right singular vectors,\nlayer {layer}")
        name = f"similarity_{task}"
        path = save(fig, fig_dir, name)
    cap = (f"Subspace similarity φ(i, j) = ‖V₁[:, :i]ᵀ V₂[:, :j]‖²_F / min(i, j) (Hu et al. 2021, eq. 4) between "
           f"the top right singular vectors of ΔW of two runs, for {layer} on {task}: same method with two seeds, "
           f"and random vs svd init; the last panel shows φ(i, i) and the random-subspace expectation i/n "
           f"(cyan mark on the colour bars: r/n). {pooled(log_dir, used_logs)}.")
    return {name: entry(path, cap, used_logs)}

