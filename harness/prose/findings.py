"""What a grid's logs show, in sentences and formatted tables (the book's findings page and README).

Numbers from :mod:`harness.analysis.findings` (paired by seed; see there); the spectral sentences read the
CSVs ``harness figures`` writes (``figures/<grid>/spectra_<grid>.csv``, ``subspaces_<grid>.csv``), keeping
each method's runs at its main learning rate only (:func:`harness.analysis.runs.main_lr`).  A difference is
called one only when :func:`harness.analysis.findings.is_finding`; otherwise "not distinguishable from
zero at n seeds", never "equal".
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..analysis.benchmark import load_benchmark
from ..analysis.findings import (COMPARISONS, SPEED, at_chance, b_ahead, compare, has_methods, is_finding, lr_block, paired,
                                 points_table, shared_lrs)
from ..analysis.runs import fmt_lr, main_lr_rows, method_order
from ..analysis.stats import format_pm
from ..tasks import order_tasks, task_label

QUANTITY_LABELS = {"final": "final dev metric", "step0": "dev metric before training",
                   "first": "dev metric at the first evaluation", "epoch1": "dev metric after epoch 1",
                   "curve": "dev metric averaged over the curve", "loss_epoch1": "training loss over epoch 1 (lower is better)"}


def verdict(c: dict) -> str:
    """A short judgement of a paired comparison: ahead / behind / not distinguishable / too few seeds."""
    if c["n"] == 0:
        return "no shared seeds yet"
    if c["n"] < 3:
        return f"only {c['n']} shared seed{'s' if c['n'] > 1 else ''}: no conclusion yet"
    if is_finding(c):
        better = b_ahead(c)
        return f"{c['b']} {'ahead of' if better else 'behind'} {c['a']} (Holm-adjusted p = {_p(c['p_holm'])})"
    if c.get("level"):
        return f"level within ±{c['margin']:.3g} (equivalence test)"
    if c.get("p_holm") is None:
        return f"not determined at n = {c['n']} (p = {_p(c['p'])}; outside the Holm family)"
    return f"not determined at n = {c['n']} (p = {_p(c['p'])}, Holm-adjusted {_p(c.get('p_holm'))})"


def _p(p) -> str:
    return "n/a" if p is None or not np.isfinite(p) else f"{p:.2f}" if p >= 0.01 else f"{p:.3f}"


def _d(c, digits=3) -> str:
    """"+0.012 ± 0.008" (mean ± std of the paired differences; no ± for one seed)."""
    if not np.isfinite(c["diff"]):
        return "n/a"
    d = c["diff"] if round(c["diff"], digits) != 0 else 0.0     # no "-0.000"
    s = f"{d:+.{digits}f}"
    return s + (f" ± {c['sd']:.{digits}f}" if np.isfinite(c["sd"]) else "")


def _count(seeds) -> str:
    lo, hi = int(seeds.min()), int(seeds.max())
    return f"{hi} seed{'s' if hi > 1 else ''}" if lo == hi else f"{lo}–{hi} seeds"


def _ms(mean, std, digits: int = 3) -> str:
    """"0.812 ± 0.011" (3 digits): :func:`harness.analysis.stats.format_pm` as the findings tables print it."""
    return format_pm(mean, std, digits)


def comparison_table(log_dir):
    """One row per task × comparison of :data:`COMPARISONS` × quantity whose two methods both have runs:
    the paired statistics of :func:`paired`, formatted, with :func:`verdict`."""
    import pandas as pd

    runs = points_table(log_dir)
    rows = []
    if len(runs) == 0:
        return pd.DataFrame(rows)
    for task in order_tasks(runs["task"]):
        have = set(runs.loc[runs["task"] == task, "method"])
        for a, b, quantities in COMPARISONS:
            if a not in have or b not in have:
                continue
            for q in quantities:
                c = compare(runs, task, a, b, q)
                rows.append({"task": task, "comparison": f"{b} − {a}", "at": q, "seeds": len(c["seeds"]),
                             "mean a": format_pm(c["mean_a"], c["std_a"], 3),
                             "mean b": format_pm(c["mean_b"], c["std_b"], 3), "b − a (paired)": _d(c),
                             "b ahead in": f"{c['wins']}/{c['n']}", "p": _p(c["p"]), "verdict": verdict(c)})
    return pd.DataFrame(rows)


def lr_table(log_dir, task: str = "mrpc", methods=("random", "svd")):
    """Per learning rate that both ``methods`` have on ``task``: the paired comparison of the second
    against the first (final and curve).  Empty when the grid has one learning rate."""
    import pandas as pd

    runs = points_table(log_dir)
    if len(runs) == 0:
        return pd.DataFrame()
    a, b = methods
    rows = []
    for lr in shared_lrs(runs, task, a, b):
        for q in ("final", "curve"):
            c = compare(runs, task, a, b, q, lr_a=lr, lr_b=lr)
            rows.append({"lr": lr, "at": q, "seeds": c["n"], a: format_pm(c["mean_a"], c["std_a"], 3),
                         b: format_pm(c["mean_b"], c["std_b"], 3), f"{b} − {a} (paired)": _d(c),
                         f"{b} ahead in": f"{c['wins']}/{c['n']}", "p": _p(c["p"]), "verdict": verdict(c)})
    return pd.DataFrame(rows)


def _short(c: dict) -> str:
    """"svd ahead in all 3 seeds, p = 0.016" for a finding, else e.g. "svd behind in 2/3 seeds, p = 0.42, n.s."
    (the side most seeds are on; a seed with a zero difference counts on neither)."""
    if c["n"] < 3:
        return f"{c['n']} shared seed{'s' if c['n'] != 1 else ''}, no conclusion"
    if is_finding(c):
        return f"{c['b']} {'ahead' if b_ahead(c) else 'behind'} in {max(c['wins'], c['behind'])}/{c['n']} seeds, Holm p = {_p(c['p_holm'])}"
    side, k = ("behind", c["behind"]) if c["behind"] > c["wins"] else ("ahead", c["wins"])
    return f"{c['b']} {side} in {k}/{c['n']} seeds, p = {_p(c['p'])}, not a finding"


def brief(runs, chance: dict, benchmark=None, spectra_csv=None) -> list[str]:
    """The page's opening summary: one bullet per question of the study, each a computed statement over
    the tasks where some adapter beats the majority class (``chance[task]`` False).  Differences are
    paired by seed (b − a, mean ± std); a difference is called a difference only when :func:`is_finding`."""
    tasks = [t for t in order_tasks(runs["task"]) if not chance[t]]

    def over(a, b, q="final"):
        return [(t, compare(runs, t, a, b, q)) for t in tasks if has_methods(runs, t, a, b)]

    def listed(pairs):
        return "; ".join(f"{task_label(t)} {_d(c)} ({_short(c)})" for t, c in pairs)

    if not tasks:
        return ["**In brief.** No adapter method beats the majority-class baseline on any task yet, so the runs "
                "say nothing about the inits."]
    out = [f"**In brief** (on {', '.join(task_label(t) for t in tasks)}, where adapters learn; "
           "every difference is b − a paired by seed, mean ± std over seeds):"]
    finals = over("random", "svd")
    if finals:
        found = [(t, c) for t, c in finals if is_finding(c)]
        line = f"- **Does SVD init end higher than random init?** svd − random, final: {listed(finals)}. "
        few = any(c["n"] < 3 for _, c in finals)
        line += (("Distinguishable on " + ", ".join(task_label(t) for t, _ in found) + ".") if found else
                 "Too few shared seeds for a conclusion yet." if few else
                 "Not determined: no difference is a finding at this number of seeds.")
        out.append(line)
        speed = [(t, q, compare(runs, t, "random", "svd", q)) for t, _ in finals for q in SPEED]
        fast = [(t, q, c) for t, q, c in speed if is_finding(c)]
        line = "- **Does it converge faster?** "
        if fast:
            line += ("; ".join(f"{task_label(t)}, {QUANTITY_LABELS[q]}: {_d(c)} ({_short(c)})" for t, q, c in fast)
                     + f". The other {len(speed) - len(fast)} of {len(speed)} early-progress measures "
                     "are not findings.")
        elif few:
            line += "Too few shared seeds for a conclusion yet."
        else:
            line += (f"Not measurably: none of the {len(speed)} early-progress measures (dev metric at the first "
                     "evaluation and after epoch 1, dev metric averaged over the curve, training loss over epoch 1) "
                     "separates them.")
        out.append(line)
    lr_task, lrs = lr_block(runs)
    if lr_task:
        parts = [f"lr {lr:g}: {c['mean_b']:.3f} vs {c['mean_a']:.3f}, {_d(c)} ({_short(c)})"
                 for lr in lrs for c in [compare(runs, lr_task, "random", "svd", "final", lr, lr)]]
        g = runs[runs["task"] == lr_task]
        out.append(f"- **And at smaller learning rates** (the original claim)? Final {g['main_metric'].iloc[0]} on "
                   f"{task_label(lr_task)}, svd vs random and svd − random: " + "; ".join(parts)
                   + f" (majority class {float(np.nanmean(g['baseline'])):.3f}).")
    fa, fasvd = over("random", "lora_fa"), over("random", "lora_fa_svd")
    if fa or fasvd:
        line = "- **What does LoRA-FA cost?** "
        if fa:
            line += f"Freezing a random A, lora_fa − random, final: {listed(fa)}. "
        if fasvd:
            line += f"Freezing A to W's top-r right singular vectors, lora_fa_svd − random: {listed(fasvd)}. "
        params = runs.groupby("method")["trainable"].median()
        if {"random", "lora_fa"} <= set(params.index):
            line += (f"It trains {int(params['lora_fa']):,} parameters instead of {int(params['random']):,} "
                     "(with the classifier head)")
            b = load_benchmark(benchmark)
            if b:
                saved, lora_qv = b["fa_saving"]["lora_qv_vs_lora_fa_qv"]["measured"], b["saved_bytes"]["lora_qv"]
                line += (f" and keeps {saved / 2**20:.1f} MiB ({saved / lora_qv:.1%}) fewer activations for backward "
                         f"(benchmark, batch {b['settings']['batch']} × {b['settings']['seq_len']} tokens)")
            line += "."
        out.append(line.rstrip())
    naive = over("svd", "svd_naive")
    if naive:
        out.append("- **How does the naive SVD init behave?** Adding U_r S_r V_rᵀ on top of W without the residual, "
                   "svd_naive − svd, final: " + "; ".join(
                       f"{task_label(t)} {_d(c)} ({_short(c)}; seed-to-seed std {c['std_b']:.3f} against "
                       f"{c['std_a']:.3f} for svd)" for t, c in naive) + ".")
    full = over("random", "full")
    if full:
        out.append(f"- **How far is LoRA from full fine-tuning?** full − random, final: {listed(full)}.")
    if spectra_csv and Path(spectra_csv).is_file():
        import pandas as pd

        t = main_lr_rows(pd.read_csv(spectra_csv), runs)
        t = t[t["task"].isin(tasks)]
        g = t.groupby("method")[["effective_rank", "energy_top1", "overlap_right_top"]].mean()
        shown = [m for m in ("random", "svd", "full") if m in g.index]
        if shown and len(t):
            out.append("- **How do the updates differ?** " + "; ".join(
                f"{m}: effective rank {g.loc[m, 'effective_rank']:.1f}, top direction {g.loc[m, 'energy_top1']:.0%} "
                f"of ‖ΔW‖²_F, overlap with W's top-r input subspace {g.loc[m, 'overlap_right_top']:.2f}"
                for m in shown) + f" (independent random subspaces: {t['overlap_random'].mean():.2f}"
                + (f"; {pooled}" if (pooled := _runs_at(t, shown)) else "") + ").")
    return out


def findings_markdown(log_dir, benchmark=None, spectra_csv=None, subspaces_csv=None) -> str:
    """The book's "what the results show" section, every number computed here from the logs of
    ``log_dir`` (plus the benchmark JSON and the spectra and subspace CSVs when given)."""
    runs = points_table(log_dir)
    if len(runs) == 0:
        return "*(no runs logged yet)*"
    name = Path(log_dir).name
    seeds = runs.groupby(["task", "method"])["seed"].nunique()
    out = [f"*Computed from {len(runs)} runs in `logs/{name}` "
           f"({_count(seeds)} per task and method; "
           f"differences are paired by seed, ± is their sample std, p a paired t-test).*", ""]
    tasks = order_tasks(runs["task"])
    chance = at_chance(runs)
    out += brief(runs, chance, benchmark, spectra_csv) + [""]

    def metric(task):
        return runs.loc[runs["task"] == task, "main_metric"].iloc[0]

    # 1. SVD vs random
    out.append("**Does SVD init beat random init?**")
    for t in tasks:
        if not has_methods(runs, t, "random", "svd"):
            continue
        f, q1, cv, lo = (compare(runs, t, "random", "svd", q) for q in ("final", "first", "curve", "loss_epoch1"))
        line = (f"- {task_label(t)} ({metric(t)}): final {format_pm(f['mean_b'], f['std_b'], 3)} for svd vs "
                f"{format_pm(f['mean_a'], f['std_a'], 3)} for random, paired difference {_d(f)} ({verdict(f)}). "
                f"Early, after the first evaluation: {_d(q1)} ({verdict(q1)}); "
                f"averaged over the dev curve: {_d(cv)} ({verdict(cv)}); mean training loss over epoch 1: "
                f"{format_pm(lo['mean_b'], lo['std_b'], 3)} vs {format_pm(lo['mean_a'], lo['std_a'], 3)}, {_d(lo)} ({verdict(lo)}).")
        if chance[t]:
            line += " No adapter method beats the majority-class baseline here, so these differences are noise."
        out.append(line)
    lr_task, lrs = lr_block(runs)
    if lr_task:
        parts = [f"lr {lr:g}: {_d(c)} ({verdict(c)})" for lr in lrs
                 for c in [compare(runs, lr_task, "random", "svd", "final", lr, lr)]]
        out.append(f"- At smaller learning rates on {task_label(lr_task)} (the original claim: SVD init helps most "
                   "there), svd − random, final: " + "; ".join(parts) + ".")
    out.append("")

    # 2. LoRA-FA
    out.append("**What does LoRA-FA cost, and save?**")
    for t in tasks:
        for b in ("lora_fa", "lora_fa_svd"):
            if has_methods(runs, t, "random", b):
                c = compare(runs, t, "random", b)
                out.append(f"- {task_label(t)}: {b} − random, final {metric(t)}: {_d(c)} ({verdict(c)})"
                           + (" (at chance level)" if chance[t] else "") + ".")
    params = runs.groupby("method")["trainable"].median()
    if {"random", "lora_fa"} <= set(params.index):
        out.append("- Trainable parameters (with the classifier head): "
                   + ", ".join(f"{m} {int(params[m]):,}" for m in ("random", "lora_fa", "full") if m in params.index)
                   + ".")
    b = load_benchmark(benchmark)
    if b:
        sb, fa = b["saved_bytes"], b["fa_saving"]["lora_qv_vs_lora_fa_qv"]
        s = b["settings"]
        out.append(f"- Memory (benchmark, batch {s['batch']} × {s['seq_len']} tokens): freezing A cuts the "
                   f"activations kept for backward by {fa['measured'] / 2**20:.1f} MiB "
                   f"({fa['measured'] / sb['lora_qv']:.1%} of LoRA's {sb['lora_qv'] / 2**20:.0f} MiB on query/value; "
                   f"full fine-tuning keeps {sb['full_ft'] / 2**20:.0f} MiB; predicted saving "
                   f"{fa['predicted'] / 2**20:.1f} MiB), and with adapters on every Linear of the encoder by "
                   f"{b['fa_saving']['lora_all_vs_lora_fa_all']['measured'] / 2**20:.0f} MiB "
                   f"({b['fa_saving']['lora_all_vs_lora_fa_all']['measured'] / sb['lora_all']:.0%}).")
    out.append("")

    # 3. naive SVD
    if any(has_methods(runs, t, "svd", "svd_naive") for t in tasks):
        out.append("**How does the naive SVD init behave?**")
        for t in tasks:
            if not has_methods(runs, t, "svd", "svd_naive"):
                continue
            z, f = compare(runs, t, "svd", "svd_naive", "step0"), compare(runs, t, "svd", "svd_naive")
            out.append(f"- {task_label(t)}: before training its {metric(t)} is {format_pm(z['mean_b'], z['std_b'], 3)} against "
                       f"{format_pm(z['mean_a'], z['std_a'], 3)} for the function-preserving svd init (the model it starts "
                       f"from is W + U_r S_r V_rᵀ); after training svd_naive − svd is {_d(f)} ({verdict(f)}).")
        out.append("")

    # 4. full fine-tuning
    if any(has_methods(runs, t, "random", "full") for t in tasks):
        out.append("**How far are the adapters from full fine-tuning?**")
        for t in tasks:
            if has_methods(runs, t, "random", "full"):
                c = compare(runs, t, "random", "full")
                out.append(f"- {task_label(t)}: full − random (LoRA), final {metric(t)}: {_d(c)} ({verdict(c)}).")
        out.append("")

    # 5. spectra
    if spectra_csv and Path(spectra_csv).is_file():
        out += spectra_sentences(spectra_csv, [t for t in tasks if not chance[t]] or tasks, runs) + [""]
    if subspaces_csv and Path(subspaces_csv).is_file():
        out += subspace_sentences(subspaces_csv, [t for t in tasks if not chance[t]] or tasks) + [""]

    # 6. limits, computed where possible
    out.append("**What these results do not show.**")
    for t in tasks:
        if chance[t]:
            base = float(np.nanmean(runs.loc[runs["task"] == t, "baseline"]))
            out.append(f"- {task_label(t)}: no adapter method ends above the majority-class baseline ({base:.3f}); "
                       "the comparisons on this task say nothing about the inits.")
    out.append(f"- With {_count(seeds)} a difference of about one seed-to-seed std cannot be "
               "told from noise; \"not distinguishable\" is not \"equal\".")
    out.append("- One small model (all-MiniLM-L6-v2, 22 M parameters), one rank (8, on query and value), one adapter "
               "learning rate per task (tuned on random init only) and a few CPU epochs: the ranking of inits may "
               "differ for larger models, other ranks and longer training.")
    return "\n".join(out)


def _runs_at(t, methods) -> str:
    """"random: 3 runs at lr 0.001; svd: 3 runs at lr 0.001": which runs a spectra average pools
    ("" for a table without run_id and lr columns)."""
    if not {"run_id", "lr"} <= set(t.columns):
        return ""
    parts = []
    for m in methods:
        g = t[t["method"] == m]
        parts.append(f"{m}: {g['run_id'].nunique()} runs at lr "
                     + ", ".join(fmt_lr(float(x)) for x in sorted(set(g["lr"].dropna()))))
    return "; ".join(parts)


def spectra_sentences(spectra_csv, tasks=None, runs=None) -> list[str]:
    """Sentences on ΔW's spectra per method, from the per-layer CSV, averaged over layers, seeds and
    ``tasks`` (default: all; the book passes the tasks where some adapter beat the baseline).  With
    ``runs`` (the grid's :func:`harness.analysis.runs.runs_table`) only each method's runs at its main lr
    are pooled (a grid's extra lr block is left out); the sentence says which runs it pools."""
    import pandas as pd

    t = pd.read_csv(spectra_csv)
    if runs is not None:
        t = main_lr_rows(t, runs)
    tasks = list(tasks) if tasks is not None else sorted(set(t["task"]))
    t = t[t["task"].isin(tasks)]
    g = t.groupby("method")[["stable_rank", "effective_rank", "energy_top1", "overlap_right_top",
                             "overlap_left_top", "overlap_random"]].mean()
    rnd = float(g["overlap_random"].mean())
    out = ["**How do the updates differ?** (ΔW relative to the pretrained W, averaged over the adapted layers, "
           f"seeds and tasks ({', '.join(task_label(x) for x in tasks)}); overlap = mean cos² of the principal angles between ΔW's top-r singular subspace and "
           f"W's, {rnd:.3f} for random subspaces" + (f"; runs pooled: {pooled}" if (pooled := _runs_at(t, method_order(g.index)))
                                                    else "") + ")"]
    for m in method_order(g.index):
        r = g.loc[m]
        out.append(f"- {m}: stable rank {r['stable_rank']:.2f}, effective rank {r['effective_rank']:.1f}, top singular "
                   f"value holds {r['energy_top1']:.0%} of the energy; overlap with W's top-r input subspace "
                   f"{r['overlap_right_top']:.3f}, output subspace {r['overlap_left_top']:.3f}.")
    return out


def subspace_sentences(subspaces_csv, tasks=None) -> list[str]:
    """Sentences on whether runs agree on ΔW's top-r subspaces, from ``subspaces_<grid>.csv``
    (:func:`harness.analysis.spectra.subspace_agreement_table`), averaged over pairs, layers and ``tasks``."""
    import pandas as pd

    t = pd.read_csv(subspaces_csv)
    tasks = list(tasks) if tasks is not None else sorted(set(t["task"]))
    t = t[t["task"].isin(tasks)]
    if not len(t):
        return []
    rnd = float(t["random"].mean())
    out = ["**Do different runs find the same subspaces?** (subspace similarity φ(r, r) of ΔW's top-r singular "
           f"vectors of two runs, mean over layers, pairs and tasks ({', '.join(task_label(x) for x in tasks)}); "
           f"1 = the same subspace, {rnd:.3f} = independent random subspaces; input side / output side)"]
    seeds = t[t["relation"] == "seed"].groupby("method_a")[["phi_in", "phi_out"]].mean()
    if len(seeds):
        out.append("- Same method, another seed: " + "; ".join(
            f"{m} {seeds.loc[m, 'phi_in']:.2f} / {seeds.loc[m, 'phi_out']:.2f}" for m in method_order(seeds.index))
            + ".")
    inits = t[t["relation"] == "init"].copy()
    if len(inits):
        order = {m: i for i, m in enumerate(method_order(set(inits["method_a"]) | set(inits["method_b"])))}
        inits["pair"] = [" vs ".join(sorted((a, b), key=order.get)) for a, b in zip(inits["method_a"], inits["method_b"])]
        g = inits.groupby("pair")[["phi_in", "phi_out"]].mean()
        wanted = [p for p in ("random vs svd", "full vs random", "full vs svd", "random vs lora_fa",
                              "svd vs lora_fa_svd") if p in g.index]
        if wanted:
            out.append("- Same seed, another init: " + "; ".join(
                f"{p} {g.loc[p, 'phi_in']:.2f} / {g.loc[p, 'phi_out']:.2f}" for p in wanted) + ".")
    if {"random", "full"} <= set(seeds.index):
        r, f = seeds.loc["random", "phi_in"], seeds.loc["full", "phi_in"]
        out.append(f"- Across seeds, full fine-tuning's input subspaces agree at {f / rnd:.1f}× the random level and "
                   f"random-init LoRA's at {r / rnd:.1f}×.")
    out.append("- `svd_naive` keeps its start U_r S_r V_rᵀ inside ΔW and `lora_fa_svd` fixes ΔW's row space to "
               "span(V_r), so their agreement on the input side is built in by the init, not found by training; "
               "`svd` starts every seed from the same factors (W's top-r singular pairs), so part of its agreement "
               "is the init's too.")
    return out

