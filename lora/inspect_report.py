"""The report of :func:`lora.inspect.inspect_adapter`: a one-page Markdown text that says in words what the
adapter did, the per-layer table (CSV and JSON) and figures (matplotlib's object API on the Agg canvas,
imported only when drawing; no pyplot state).  Every file is written to a temporary name and renamed."""
from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path

FORMATS = {"peft": "PEFT LoRA adapter", "factors": "factor file", "run log": "run log's factor file"}


# ------------------------------------------------------------------------------------------ tables
def _finite(x):
    """JSON-ready: NaN and ±inf → None (JSON has neither), recursively."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


def to_json(result: dict) -> str:
    return json.dumps(_finite(result), indent=1, allow_nan=False)


def table_rows(result: dict) -> list[dict]:
    """One flat row per layer: every scalar of :func:`lora.inspect.inspect_adapter`'s rows, the intruder
    counts as ``intruders_<ε>`` (lists of singular values and angles stay in the JSON)."""
    out = []
    for row in result["layers"]:
        flat = {k: v for k, v in row.items() if not isinstance(v, (list, dict))}
        if "intruders" in row:
            d = row["intruders"]
            flat.update({f"intruders_{e:g}": c for e, c in zip(d["eps"], d["counts"])}, intruder_k=d["k"],
                        intruder_method=d["method"])
        out.append(flat)
    return out


def to_csv(result: dict) -> str:
    rows = table_rows(result)
    cols = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


# ------------------------------------------------------------------------------------------ words
def _pct(x) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.0f} %"


def _num(x, fmt=".2g") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return "∞" if isinstance(x, float) and math.isinf(x) else format(x, fmt)


def _list(xs) -> str:
    xs = [f"{x:g}" if isinstance(x, float) else str(x) for x in xs]
    return xs[0] if len(xs) == 1 else "{" + ", ".join(xs) + "}"


def _kinds(result) -> list[str]:
    return [k for k in result["modules"] if k != "all"]


def describe(result: dict) -> list[str]:
    """The findings as sentences (Markdown bullets), from the per-module summaries."""
    mods, kinds, rows = result["modules"], _kinds(result), result["layers"]
    everything = mods.get("all", mods[kinds[0]])
    opts = result["options"]
    ek = opts["energy_k"]
    lines = []
    r_max = max(r["rank"] for r in rows)
    per_kind = "; ".join(f"{k} {mods[k]['effective_rank']:.1f}" for k in kinds) if len(kinds) > 1 else ""
    lines.append(
        f"**Rank.** The update is effectively rank {everything['effective_rank']:.1f} (median over its "
        f"{len(rows)} layers of exp H(σ/Σσ); adapter rank {r_max}, numerical rank {everything['num_rank']:g})"
        + (f" — by module: {per_kind}" if per_kind else "") + f". Its top direction carries "
        f"{_pct(everything['energy_top1'])} of ‖ΔW‖²_F" + (f", its top {ek} {_pct(everything['energy_topk'])}"
                                                          if ek > 1 else "")
        + f" (medians); stable rank {everything['stable_rank']:.1f}.")
    if result["base"] is None:
        lines.append("**Against W.** No base given (`--base`): overlap with W's singular subspaces, amplification "
                     "and intruder dimensions need the base weights.")
    else:
        big = max(rows, key=lambda r: r["rel_fro"] if r["rel_fro"] == r["rel_fro"] else -1)
        lines.append(f"**Size.** ‖ΔW‖_F / ‖W‖_F: median {_num(everything['rel_fro'], '.3g')} over layers, "
                     f"largest {_num(big['rel_fro'], '.3g')} in `{big['layer']}`.")
        ks = _list(everything["w_top"])
        by_in = sorted(kinds, key=lambda k: -(mods[k]["energy_in_w_right"] if mods[k]["energy_in_w_right"] ==
                                              mods[k]["energy_in_w_right"] else -1))
        parts = [f"{_pct(mods[k]['energy_in_w_right'])} in the {k} layers" for k in by_in]
        lines.append(
            f"**Where it lies.** Of ΔW's energy, {', '.join(parts)} lies in W's top-{ks} input subspace (right "
            f"singular vectors; mean over layers; a random subspace of that size holds "
            f"{_pct(everything['energy_random_right'])}); in W's top-{ks} output subspace: "
            + ", ".join(f"{_pct(mods[k]['energy_in_w_left'])} ({k})" for k in by_in)
            + f". The mean cos² of the principal angles between ΔW's top-r and W's top-{ks} subspaces (the study's "
            f"overlap; random: {_num(everything['overlap_random_right'], '.2g')}) is "
            + ", ".join(f"{_num(mods[k]['overlap_right'], '.2f')} in / {_num(mods[k]['overlap_left'], '.2f')} out ({k})"
                        for k in by_in) + ".")
        amp = everything["amplification"]
        lines.append(
            f"**Amplification.** ‖ΔW‖_F / ‖U_rᵀ W V_r‖_F (U_r, V_r: ΔW's own top-r singular vectors): median "
            f"{_num(amp, '.3g')}" + (" — " + ", ".join(f"{k} {_num(mods[k]['amplification'], '.3g')}" for k in kinds)
                                      if len(kinds) > 1 else "")
            + (". Above 1: ΔW is larger than what W does in the directions ΔW uses, so it strengthens directions W "
               "itself barely scales (Hu et al. 2021, §7.3)." if amp > 1 else
               ". Below 1: ΔW is smaller than what W already does in the directions ΔW uses (it adjusts directions "
               "W scales strongly, rather than amplifying ones W barely uses; Hu et al. 2021, §7.3).")
            if amp == amp else "**Amplification.** – (ΔW = 0 in every layer).")
        if "intruder_layers" in everything:
            k, eps = opts["intruder_k"], opts["eps"]
            n_at = [everything["intruder_layers"][str(e)] for e in eps]
            tot = [everything["intruders_total"][str(e)] for e in eps]
            e0 = eps[0]
            if n_at[0]:
                worst = max(rows, key=lambda r: r["intruders"]["counts"][0])
                lines.append(
                    f"**Intruder dimensions.** At ε = {e0:g}, {n_at[0]} of {len(rows)} layers have intruders among "
                    f"the top {k} left singular vectors of W + ΔW ({tot[0]} in all; most in `{worst['layer']}`: "
                    f"{worst['intruders']['counts'][0]}): directions of the fine-tuned weight close to none of W's "
                    f"(Shuttleworth et al. 2024). Layers with intruders at ε = "
                    + ", ".join(f"{e:g}: {n}" for e, n in zip(eps, n_at)) + ".")
            else:
                lines.append(
                    f"**Intruder dimensions.** None at ε = {e0:g}: each of the top {k} left singular vectors of "
                    f"W + ΔW has |cos| ≥ {e0:g} with one of W's. Layers with intruders at ε = "
                    + ", ".join(f"{e:g}: {n}" for e, n in zip(eps, n_at)) + ".")
    if result["compare"] is not None:
        c = result["compare"]
        lines.append(
            f"**Against `{c['path']}`** ({c['layers_compared']} layers in common). φ, the mean cos² of the principal "
            f"angles between the two updates' subspaces (1: the same; random: "
            f"{_num(everything['cmp_phi_random_right'], '.2g')}): input (row) space "
            + ", ".join(f"{_num(mods[k]['cmp_phi_right'], '.2f')} ({k})" for k in kinds)
            + ", output (column) space " + ", ".join(f"{_num(mods[k]['cmp_phi_left'], '.2f')} ({k})" for k in kinds)
            + f"; the top directions' cos²: {_num(everything['cmp_phi1_right'], '.2f')} in, "
            f"{_num(everything['cmp_phi1_left'], '.2f')} out; ‖ΔW₁ − ΔW₂‖_F / ‖ΔW₁‖_F: median "
            f"{_num(everything['cmp_rel_distance'], '.2f')}.")
    return lines


def _module_table(result) -> list[str]:
    mods = result["modules"]
    has_base = result["base"] is not None
    head = ["module", "layers", "eff. rank", "stable rank", "top-1 energy"]
    if has_base:
        head += ["‖ΔW‖/‖W‖", "in W's top-k (in / out)", "overlap (in / out)", "amplification"]
        if result["options"]["intruders"]:
            head += [f"layers with intruders (ε = {result['options']['eps'][0]:g})"]
    if result["compare"] is not None:
        head += ["φ with the other (in / out)"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for k, s in mods.items():
        cells = [k, str(s["layers"]), f"{s['effective_rank']:.2f}", f"{s['stable_rank']:.2f}", _pct(s["energy_top1"])]
        if has_base:
            cells += [_num(s["rel_fro"], ".3g"), f"{_pct(s['energy_in_w_right'])} / {_pct(s['energy_in_w_left'])}",
                      f"{_num(s['overlap_right'], '.2f')} / {_num(s['overlap_left'], '.2f')}",
                      _num(s["amplification"], ".3g")]
            if result["options"]["intruders"]:
                cells += [str(s["intruder_layers"][str(result["options"]["eps"][0])])]
        if result["compare"] is not None:
            cells += [f"{_num(s['cmp_phi_right'], '.2f')} / {_num(s['cmp_phi_left'], '.2f')}"]
        out.append("| " + " | ".join(cells) + " |")
    return out


def _layer_table(result) -> list[str]:
    has_base = result["base"] is not None
    head = ["layer", "r", "eff. rank", "top-1 energy", "‖ΔW‖_F"]
    if has_base:
        head += ["in W's top-k (in / out)", "amplification"]
        if result["options"]["intruders"]:
            head += [f"intruders (ε = {result['options']['eps'][0]:g})"]
    if result["compare"] is not None:
        head += ["φ in / out"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in result["layers"]:
        cells = [f"`{r['layer']}`", str(r["rank"]), f"{r['effective_rank']:.2f}", _pct(r["energy_top1"]), _num(r["fro"], ".3g")]
        if has_base:
            cells += [f"{_pct(r['energy_in_w_right'])} / {_pct(r['energy_in_w_left'])}", _num(r["amplification"], ".3g")]
            if result["options"]["intruders"]:
                cells += [str(r["intruders"]["counts"][0])]
        if result["compare"] is not None:
            cells += [f"{_num(r.get('cmp_phi_right'), '.2f')} / {_num(r.get('cmp_phi_left'), '.2f')}"]
        out.append("| " + " | ".join(cells) + " |")
    return out


MAX_LAYER_ROWS = 24      # longer adapters: the per-layer table lives in layers.csv only


def report_markdown(result: dict, figures=()) -> str:
    """The one-page report: what was read, the findings in words, a table per module kind (and per layer
    for small adapters), and the figures (file names relative to the report) if given."""
    a = result["adapter"]
    scal = "α/√r (rsLoRA)" if a["use_rslora"] else "α/r"
    mods = ", ".join(f"{k} ×{n}" for k, n in a["modules"].items())
    lines = ["# What this LoRA adapter does", "",
             f"`{a['path']}`: {FORMATS.get(a['format'], a['format'])}, {a['layers']} adapted layers ({mods}); "
             f"r = {_list(a['ranks'])}" + (f", α = {_list(a['alphas'])}" if a["alphas"] else "")
             + f", scaling s = {_list(a['scalings'])} (s = {scal}); ΔW = s·BA."
             + (f" It was trained on `{a['base_model']}`." if a["base_model"] else "")]
    if result["base"]:
        lines.append(f"Base weights: `{result['base']['path']}`.")
    lines += [f"Note: {n}." for n in a["notes"]]
    lines += ["", "## In words", ""] + [f"- {s}" for s in describe(result)]
    lines += ["", "## By module", ""] + _module_table(result)
    if len(result["layers"]) <= MAX_LAYER_ROWS:
        lines += ["", "## By layer", ""] + _layer_table(result)
    else:
        lines += ["", f"Every layer's numbers: `layers.csv` / `inspect.json` ({len(result['layers'])} layers)."]
    if figures:
        lines += ["", "## Figures", ""] + [f"![{name}]({name})" for name in figures]
    lines += ["", "Definitions: effective rank exp H(σ/Σσ) (Roy & Vetterli 2007); stable rank ‖ΔW‖²_F/‖ΔW‖²₂; "
              "\"in W's top-k\": ‖U_kᵀΔW‖²_F/‖ΔW‖²_F (output) and ‖ΔW V_k‖²_F/‖ΔW‖²_F (input), k = the adapter rank "
              "unless --w-top; overlap: mean cos² of the principal angles; intruders: Shuttleworth et al. (2024); "
              "φ: Hu et al. (2021), eq. 4.", ""]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ figures
def _x(rows) -> list[int]:
    """Each row's position along the model: its block index, else its order."""
    return [r["block"] if r["block"] is not None else i for i, r in enumerate(rows)]


def figures(result: dict) -> dict:
    """{file name: matplotlib Figure}: ``spectra.png`` always; ``overlap.png`` and ``intruders.png`` with a
    base; ``compare.png`` with a second adapter."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows, kinds = result["layers"], _kinds(result)
    out = {}
    by_kind = {k: [r for r in rows if r["module"] == k] for k in kinds}

    fig = Figure(figsize=(3.2 * len(kinds) + 1, 3.2), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(kinds), squeeze=False, sharey=True)[0]
    import matplotlib as mpl
    cmap = mpl.colormaps["viridis"]
    for ax, k in zip(axes, kinds):
        rs = by_kind[k]
        for i, r in enumerate(rs):
            sv = [s for s in r["sv"] if s > 0]
            if sv:
                ax.semilogy(range(1, len(sv) + 1), sv, marker=".", lw=1, color=cmap(i / max(1, len(rs) - 1)))
        ax.set_title(f"{k} ({len(rs)} layers)")
        ax.set_xlabel("i")
    axes[0].set_ylabel("σ_i(ΔW)")
    fig.suptitle("Singular values of ΔW by layer (dark: first layers, light: last)")
    out["spectra.png"] = fig

    if result["base"] is not None:
        fig = Figure(figsize=(7, 3.4), layout="constrained")
        FigureCanvasAgg(fig)
        ax1, ax2 = fig.subplots(1, 2, sharey=True)
        for j, k in enumerate(kinds):
            rs = by_kind[k]
            ax1.plot(_x(rs), [r["energy_in_w_right"] for r in rs], marker="o", color=f"C{j}", label=k)
            ax2.plot(_x(rs), [r["energy_in_w_left"] for r in rs], marker="o", color=f"C{j}", label=k)
        for ax, side, title in ((ax1, "right", "input side: ‖ΔW V_k‖²/‖ΔW‖²"), (ax2, "left", "output side: ‖U_kᵀΔW‖²/‖ΔW‖²")):
            ax.plot(_x(rows), [r[f"energy_random_{side}"] for r in rows], ls=":", color="grey", label="random subspace")
            ax.set_title(title, fontsize=9)
            ax.set_xlabel("layer")
            ax.set_ylim(0, 1.02)
        ax1.set_ylabel("share of ΔW's energy in W's top-k")
        ax2.legend(fontsize=8)
        out["overlap.png"] = fig

        if result["options"]["intruders"]:
            eps = result["options"]["eps"]
            fig = Figure(figsize=(4.5, 1.2 + 0.18 * len(rows)), layout="constrained")
            FigureCanvasAgg(fig)
            ax = fig.subplots()
            counts = [r["intruders"]["counts"] for r in rows]
            im = ax.imshow(counts, aspect="auto", cmap="Reds", vmin=0, vmax=max(1, result["options"]["intruder_k"]))
            ax.set_xticks(range(len(eps)), [f"{e:g}" for e in eps])
            ax.set_yticks(range(len(rows)), [r["layer"] for r in rows], fontsize=6 if len(rows) > 24 else 8)
            ax.set_xlabel("ε")
            ax.set_title(f"intruders among W + ΔW's top {result['options']['intruder_k']}", fontsize=9)
            fig.colorbar(im, ax=ax, label="count")
            out["intruders.png"] = fig

    if result["compare"] is not None:
        fig = Figure(figsize=(5, 3.4), layout="constrained")
        FigureCanvasAgg(fig)
        ax = fig.subplots()
        for j, k in enumerate(kinds):
            rs = [r for r in by_kind[k] if "cmp_phi_right" in r]
            ax.plot(_x(rs), [r["cmp_phi_right"] for r in rs], marker="o", color=f"C{j}", label=f"{k}, input")
            ax.plot(_x(rs), [r["cmp_phi_left"] for r in rs], marker="s", ls="--", color=f"C{j}", label=f"{k}, output")
        cmp_rows = [r for r in rows if "cmp_phi_random_right" in r]
        ax.plot(_x(cmp_rows), [r["cmp_phi_random_right"] for r in cmp_rows], ls=":", color="grey", label="random")
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("layer")
        ax.set_ylabel("φ (mean cos² of principal angles)")
        ax.set_title("How much the two updates share their subspaces", fontsize=9)
        ax.legend(fontsize=7)
        out["compare.png"] = fig
    return out


def png_bytes(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return buf.getvalue()


# ------------------------------------------------------------------------------------------ files
def _write(path: Path, data: bytes | str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    os.replace(tmp, path)


def write_report(result: dict, out_dir: str | os.PathLike, draw: bool = True) -> list[Path]:
    """Write ``inspect.json``, ``layers.csv``, the figures and ``report.md`` into ``out_dir`` (created);
    returns the paths.  The figures are drawn before the directory is made, so a failure leaves nothing."""
    figs = {name: png_bytes(f) for name, f in figures(result).items()} if draw else {}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {"inspect.json": to_json(result) + "\n", "layers.csv": to_csv(result), **figs,
             "report.md": report_markdown(result, list(figs))}
    for name, data in files.items():
        _write(out / name, data)
    return [out / n for n in files]
