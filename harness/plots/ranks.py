"""Figures of the rank and intruder chapters (book/ranks.md, book/intruders.md): numbers from
:mod:`harness.analysis.ranks`, :mod:`harness.analysis.intruders` and :mod:`harness.analysis.geometry`."""
from __future__ import annotations

import numpy as np

from lora import spectra as sp

from ..analysis.geometry import N_DIM, RANKS
from ..analysis.ranks import METHODS
from ..analysis.weights import layer_label, layer_pos
from .style import new_figure

COLORS = {"random": "#1f77b4", "svd": "#ff7f0e", "lora_fa_svd": "#2ca02c", "full": "#222222"}


def fig_accuracy(acc, check, full_ref=None, majority: float | None = None):
    """Final dev accuracy vs r per method (mean ± sd over seeds), the r = 64 lr check (seed 0, open
    markers, offset), full fine-tuning's mean ± sd as a band."""
    fig, axes = new_figure(1, 1, size=(7.5, 3.6))
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
            ax.annotate(f"{row['lr']:g}", (xc, row["dev"]), fontsize=7, xytext=(5, -2),
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
    fig, axes = new_figure(len(rows), len(kinds), size=(10.5, 0.95 * len(rows) + 0.8), sharex=True, sharey=True)
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
    fig, axes = new_figure(1, len(cells), size=(10.5, 3.2), sharey=True)
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
    axes[0, -1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return fig


def fig_phi_seeds(panels: dict, names, kinds=("query", "value"), size: int = 64):
    """Heat maps φ(i, j), i, j ≤ ``size``, between two seeds at r = 64 (mean over seed pairs and the
    layers of one kind): ``panels`` = {column title: array (pairs, layers, 64, 64)}."""
    cols = list(panels)
    fig, axes = new_figure(len(kinds), len(cols), size=(10.5, 5.6), sharex=True, sharey=True)
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
    fig, axes = new_figure(1, len(kinds), size=(10, 3.5), sharey=True)
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
    fig, axes = new_figure(1, 2, size=(10, 3.5))
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
    fig, axes = new_figure(1, len(METHODS), size=(10.5, 3.4), sharey=True)
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
    axes[0, -1].legend(fontsize=7, loc="upper left")
    return fig


def fig_intruders_by_rank(stats_by_eps: dict, full_by_eps: dict | None = None):
    """Intruder count per layer vs r at each ε of ``stats_by_eps`` ({ε: rows (method, rank, mean, sd)}),
    full fine-tuning's mean ± sd as a band."""
    eps = list(stats_by_eps)
    fig, axes = new_figure(1, len(eps), size=(10, 3.4), sharey=True)
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
    fig, axes = new_figure(1, 1, size=(10.5, 4.4))
    ax = axes[0, 0]
    im = ax.imshow(M, aspect="auto", cmap="magma_r", vmin=0, vmax=max(1.0, float(np.nanmax(M))))
    for (i, j), v in np.ndenumerate(M):
        ax.text(j, i, f"{v:.1f}", ha="center", va="center", fontsize=7,
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

