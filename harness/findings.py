"""What a grid's logs show: paired comparisons between methods, and the sentences the book states.

Runs of different methods with the same seed share the data order and the classification head's
initial weights (``harness.train`` seeds both from the config's seed), so two methods a and b are
compared *paired by seed*: on one task, with d_k = m(b, seed k) − m(a, seed k) over the n seeds both
have, we report mean(d) and its sample std, in how many seeds b is ahead, and the two-sided paired
t-test p-value (n ≥ 3; NaN otherwise).  With three seeds only a difference that is large against its
seed-to-seed spread reaches p < 0.05; a smaller one is reported as "not distinguishable from zero at
n seeds", never as "equal".

Quantities compared (all on the task's main dev metric, from the run logs):

* ``final``  after the last epoch;
* ``step0``  before any training (differs from other methods only if the init changes the model);
* ``first``  at the first evaluation after step 0 (a quarter epoch in the quick preset);
* ``epoch1`` at the evaluation closest to the end of epoch 1;
* ``curve``  the mean over all evaluations after step 0: a normalised area under the dev curve,
  higher when a method gets good sooner;
* ``loss_epoch1`` the mean training loss over the first epoch's steps: how fast the optimiser makes
  progress on the training objective (lower is better; "ahead" then means a lower loss).

Nothing here trains or reads model weights; the spectral part reads the CSV that
``harness figures`` writes (``figures/<grid>/spectra_<grid>.csv``).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from .report import _logs, _method_order, _num, main_lr, runs_table
from .tasks import order_tasks, task_label

QUANTITIES = ("final", "step0", "first", "epoch1", "curve", "loss_epoch1")
LOWER_IS_BETTER = {"loss_epoch1"}
ALPHA = 0.05


# ----------------------------------------------------------------------------- per-run numbers
def curve_points(log: dict) -> dict:
    """The main dev metric of one log at the points of :data:`QUANTITIES` (NaN where missing)."""
    main = log["task"]["main_metric"]
    ev = [(float(e["epoch"]), _num(e.get(main))) for e in log["history"]["evals"]]
    after = [(ep, v) for ep, v in ev if ep > 0]
    step0 = next((v for ep, v in ev if ep == 0), math.nan)
    first = after[0][1] if after else math.nan
    epoch1 = min(after, key=lambda p: abs(p[0] - 1.0))[1] if after else math.nan
    vals = np.array([v for _, v in after], dtype=float)
    curve = float(np.nanmean(vals)) if np.isfinite(vals).any() else math.nan
    loss = np.array([_num(x) for x in log["history"].get("train_loss", [])[:log.get("steps_per_epoch") or 0]])
    loss_epoch1 = float(np.nanmean(loss)) if np.isfinite(loss).any() else math.nan
    return dict(final=_num((log.get("final") or {}).get(main)), step0=step0, first=first, epoch1=epoch1,
                curve=curve, loss_epoch1=loss_epoch1)


def points_table(log_dir):
    """:func:`harness.report.runs_table` plus the columns step0, first, epoch1, curve."""
    runs = runs_table(log_dir)
    if len(runs) == 0:
        return runs
    pts = {lg["run_id"]: curve_points(lg) for lg in _logs(log_dir)}
    for q in QUANTITIES[1:]:
        runs[q] = runs["run_id"].map(lambda r, q=q: pts[r][q])
    return runs


# ----------------------------------------------------------------------------- paired comparisons
def paired(runs, task: str, a: str, b: str, quantity: str = "final", lr_a=None, lr_b=None) -> dict:
    """Paired-by-seed comparison of method ``b`` against ``a`` on ``task`` (see the module docstring).

    ``lr_a``/``lr_b``: the learning rate of each side (default: :func:`harness.report.main_lr`, the preset's).
    Returns n, seeds, mean_a, mean_b, std_a, std_b, diff (mean of b − a), diff_std, wins (seeds where
    b is better: b > a, or b < a for a quantity in :data:`LOWER_IS_BETTER`), behind (seeds where b is worse),
    p (paired t-test; NaN for n < 3 or zero spread), diffs (b − a per shared seed)."""
    from scipy import stats

    def side(method, lr):
        lr = main_lr(runs, task, method) if lr is None else lr
        g = runs[(runs["task"] == task) & (runs["method"] == method)]
        if lr is not None:
            g = g[np.isclose(g["lr"].astype(float), lr)]
        return {int(s): float(v) for s, v in zip(g["seed"], g[quantity]) if np.isfinite(v)}, lr

    va, lr_a = side(a, lr_a)
    vb, lr_b = side(b, lr_b)
    seeds = sorted(set(va) & set(vb))
    xa, xb = np.array([va[s] for s in seeds]), np.array([vb[s] for s in seeds])
    d = xb - xa
    n = len(seeds)
    p = math.nan
    if n >= 3 and np.std(d) > 0:
        p = float(stats.ttest_rel(xb, xa).pvalue)

    def sd(x):
        return float(x.std(ddof=1)) if len(x) > 1 else math.nan
    return dict(task=task, a=a, b=b, quantity=quantity, lr_a=lr_a, lr_b=lr_b, n=n, seeds=seeds,
                mean_a=float(xa.mean()) if n else math.nan, mean_b=float(xb.mean()) if n else math.nan,
                std_a=sd(xa), std_b=sd(xb), diff=float(d.mean()) if n else math.nan, diff_std=sd(d),
                wins=int((d < 0).sum() if quantity in LOWER_IS_BETTER else (d > 0).sum()),
                behind=int((d > 0).sum() if quantity in LOWER_IS_BETTER else (d < 0).sum()), p=p,
                diffs=[float(x) for x in d])


def is_finding(c: dict) -> bool:
    """A paired comparison counts as a finding when n ≥ 3, p < :data:`ALPHA` and every seed has the same sign."""
    return c["n"] >= 3 and bool(np.isfinite(c["p"])) and c["p"] < ALPHA and c["wins"] in (0, c["n"])


def b_ahead(c: dict) -> bool:
    """Whether ``b`` is on the better side of ``a`` on average (lower for :data:`LOWER_IS_BETTER`)."""
    return (c["diff"] < 0) if c.get("quantity") in LOWER_IS_BETTER else (c["diff"] > 0)


def verdict(c: dict) -> str:
    """A short judgement of a paired comparison: ahead / behind / not distinguishable / too few seeds."""
    if c["n"] == 0:
        return "no shared seeds yet"
    if c["n"] < 3:
        return f"only {c['n']} shared seed{'s' if c['n'] > 1 else ''}: no conclusion yet"
    if is_finding(c):
        better = b_ahead(c)
        return f"{c['b']} {'ahead of' if better else 'behind'} {c['a']} in all {c['n']} seeds (p = {c['p']:.3f})"
    return f"not distinguishable from zero at n = {c['n']} (p = {_p(c['p'])})"


def _p(p) -> str:
    return "n/a" if not np.isfinite(p) else f"{p:.2f}" if p >= 0.01 else f"{p:.3f}"


def _d(c, digits=3) -> str:
    """"+0.012 ± 0.008" (mean ± std of the paired differences; no ± for one seed)."""
    if not np.isfinite(c["diff"]):
        return "n/a"
    d = c["diff"] if round(c["diff"], digits) != 0 else 0.0     # no "-0.000"
    s = f"{d:+.{digits}f}"
    return s + (f" ± {c['diff_std']:.{digits}f}" if np.isfinite(c["diff_std"]) else "")


def _count(seeds) -> str:
    lo, hi = int(seeds.min()), int(seeds.max())
    return f"{hi} seed{'s' if hi > 1 else ''}" if lo == hi else f"{lo}–{hi} seeds"


def _ms(mean, std, digits=3) -> str:
    return "n/a" if not np.isfinite(mean) else f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if np.isfinite(std) else "")


COMPARISONS = (   # (a, b, quantities): the questions the study asks of every task
    ("random", "svd", ("final", "first", "epoch1", "curve", "loss_epoch1")),
    ("random", "lora_fa", ("final", "curve")),
    ("random", "lora_fa_svd", ("final", "curve")),
    ("lora_fa", "lora_fa_svd", ("final",)),
    ("svd", "svd_naive", ("final", "step0", "curve", "loss_epoch1")),
    ("random", "full", ("final", "curve", "loss_epoch1")),
)


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
                c = paired(runs, task, a, b, q)
                rows.append({"task": task, "comparison": f"{b} − {a}", "at": q, "seeds": len(c["seeds"]),
                             "mean a": _ms(c["mean_a"], c["std_a"]),
                             "mean b": _ms(c["mean_b"], c["std_b"]), "b − a (paired)": _d(c),
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
            c = paired(runs, task, a, b, q, lr_a=lr, lr_b=lr)
            rows.append({"lr": lr, "at": q, "seeds": c["n"], a: _ms(c["mean_a"], c["std_a"]),
                         b: _ms(c["mean_b"], c["std_b"]), f"{b} − {a} (paired)": _d(c),
                         f"{b} ahead in": f"{c['wins']}/{c['n']}", "p": _p(c["p"]), "verdict": verdict(c)})
    return pd.DataFrame(rows)


def shared_lrs(runs, task: str, a: str, b: str) -> list[float]:
    """The learning rates at which both methods have runs on ``task``; [] when they share fewer than two."""
    g = runs[runs["task"] == task]
    lrs = sorted(set(g.loc[g["method"] == a, "lr"]) & set(g.loc[g["method"] == b, "lr"]))
    return lrs if len(lrs) > 1 else []


def lr_block(runs, a: str = "random", b: str = "svd") -> tuple:
    """(task, lrs): the first task (in display order) where ``a`` and ``b`` share several learning rates, and
    those rates; (None, []) when no task has such a block."""
    for task in order_tasks(runs["task"]):
        lrs = shared_lrs(runs, task, a, b)
        if lrs:
            return task, lrs
    return None, []


# ----------------------------------------------------------------------------- the book's sentences
def learned(runs, task: str) -> dict:
    """Which methods end above the majority-class baseline on ``task`` (mean final over seeds at the
    preset lr), with the baseline."""
    g = runs[runs["task"] == task]
    out = {}
    for method in dict.fromkeys(g["method"]):
        lr = main_lr(runs, task, method)
        gm = g[(g["method"] == method) & np.isclose(g["lr"].astype(float), lr)]
        out[method] = float(np.nanmean(gm["final"])) > float(np.nanmean(gm["baseline"]))
    return out


QUANTITY_LABELS = {"final": "final dev metric", "step0": "dev metric before training",
                   "first": "dev metric at the first evaluation", "epoch1": "dev metric after epoch 1",
                   "curve": "dev metric averaged over the curve", "loss_epoch1": "training loss over epoch 1 (lower is better)"}
SPEED = ("first", "epoch1", "curve", "loss_epoch1")     # the quantities that measure early progress


def _short(c: dict) -> str:
    """"svd ahead in all 3 seeds, p = 0.016" for a finding, else e.g. "svd behind in 2/3 seeds, p = 0.42, n.s."
    (the side most seeds are on; a seed with a zero difference counts on neither)."""
    if c["n"] < 3:
        return f"{c['n']} shared seed{'s' if c['n'] != 1 else ''}, no conclusion"
    if is_finding(c):
        return f"{c['b']} {'ahead' if b_ahead(c) else 'behind'} in all {c['n']} seeds, p = {_p(c['p'])}"
    side, k = ("behind", c["behind"]) if c["behind"] > c["wins"] else ("ahead", c["wins"])
    return f"{c['b']} {side} in {k}/{c['n']} seeds, p = {_p(c['p'])}, n.s."


def brief(runs, chance: dict, benchmark=None, spectra_csv=None) -> list[str]:
    """The page's opening summary: one bullet per question of the study, each a computed statement over
    the tasks where some adapter beats the majority class (``chance[task]`` False).  Differences are
    paired by seed (b − a, mean ± std); a difference is called a difference only when :func:`is_finding`."""
    tasks = [t for t in order_tasks(runs["task"]) if not chance[t]]

    def over(a, b, q="final"):
        return [(t, paired(runs, t, a, b, q)) for t in tasks if has_methods(runs, t, a, b)]

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
                 "No: neither init ends higher on any of these tasks at this number of seeds.")
        out.append(line)
        speed = [(t, q, paired(runs, t, "random", "svd", q)) for t, _ in finals for q in SPEED]
        fast = [(t, q, c) for t, q, c in speed if is_finding(c)]
        line = "- **Does it converge faster?** "
        if fast:
            line += ("; ".join(f"{task_label(t)}, {QUANTITY_LABELS[q]}: {_d(c)} ({_short(c)})" for t, q, c in fast)
                     + f". The other {len(speed) - len(fast)} of {len(speed)} early-progress measures "
                     "are not distinguishable from zero.")
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
                 for lr in lrs for c in [paired(runs, lr_task, "random", "svd", "final", lr, lr)]]
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
            if benchmark and Path(benchmark).is_file():
                b = json.loads(Path(benchmark).read_text())
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

        t = pd.read_csv(spectra_csv)
        t = t[t["task"].isin(tasks)]
        g = t.groupby("method")[["effective_rank", "energy_top1", "overlap_right_top"]].mean()
        shown = [m for m in ("random", "svd", "full") if m in g.index]
        if shown and len(t):
            out.append("- **How do the updates differ?** " + "; ".join(
                f"{m}: effective rank {g.loc[m, 'effective_rank']:.1f}, top direction {g.loc[m, 'energy_top1']:.0%} "
                f"of ‖ΔW‖²_F, overlap with W's top-r input subspace {g.loc[m, 'overlap_right_top']:.2f}"
                for m in shown) + f" (independent random subspaces: {t['overlap_random'].mean():.2f}).")
    return out


def has_methods(runs, task: str, *methods: str) -> bool:
    """Whether ``runs`` has runs of every one of ``methods`` on ``task``."""
    return set(methods) <= set(runs.loc[runs["task"] == task, "method"])


def at_chance(runs) -> dict[str, bool]:
    """Per task: True when no adapter method (``full`` aside) ends above the majority-class baseline."""
    return {t: not any(learned(runs, t).get(m, False) for m in set(runs.loc[runs["task"] == t, "method"]) - {"full"})
            for t in order_tasks(runs["task"])}


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
        f, q1, cv, lo = (paired(runs, t, "random", "svd", q) for q in ("final", "first", "curve", "loss_epoch1"))
        line = (f"- {task_label(t)} ({metric(t)}): final {_ms(f['mean_b'], f['std_b'])} for svd vs "
                f"{_ms(f['mean_a'], f['std_a'])} for random, paired difference {_d(f)} ({verdict(f)}). "
                f"Early, after the first evaluation: {_d(q1)} ({verdict(q1)}); "
                f"averaged over the dev curve: {_d(cv)} ({verdict(cv)}); mean training loss over epoch 1: "
                f"{_ms(lo['mean_b'], lo['std_b'])} vs {_ms(lo['mean_a'], lo['std_a'])}, {_d(lo)} ({verdict(lo)}).")
        if chance[t]:
            line += " No adapter method beats the majority-class baseline here, so these differences are noise."
        out.append(line)
    lr_task, lrs = lr_block(runs)
    if lr_task:
        parts = [f"lr {lr:g}: {_d(c)} ({verdict(c)})" for lr in lrs
                 for c in [paired(runs, lr_task, "random", "svd", "final", lr, lr)]]
        out.append(f"- At smaller learning rates on {task_label(lr_task)} (the original claim: SVD init helps most "
                   "there), svd − random, final: " + "; ".join(parts) + ".")
    out.append("")

    # 2. LoRA-FA
    out.append("**What does LoRA-FA cost, and save?**")
    for t in tasks:
        for b in ("lora_fa", "lora_fa_svd"):
            if has_methods(runs, t, "random", b):
                c = paired(runs, t, "random", b)
                out.append(f"- {task_label(t)}: {b} − random, final {metric(t)}: {_d(c)} ({verdict(c)})"
                           + (" (at chance level)" if chance[t] else "") + ".")
    params = runs.groupby("method")["trainable"].median()
    if {"random", "lora_fa"} <= set(params.index):
        out.append("- Trainable parameters (with the classifier head): "
                   + ", ".join(f"{m} {int(params[m]):,}" for m in ("random", "lora_fa", "full") if m in params.index)
                   + ".")
    if benchmark and Path(benchmark).is_file():
        b = json.loads(Path(benchmark).read_text())
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
            z, f = paired(runs, t, "svd", "svd_naive", "step0"), paired(runs, t, "svd", "svd_naive")
            out.append(f"- {task_label(t)}: before training its {metric(t)} is {_ms(z['mean_b'], z['std_b'])} against "
                       f"{_ms(z['mean_a'], z['std_a'])} for the function-preserving svd init (the model it starts "
                       f"from is W + U_r S_r V_rᵀ); after training svd_naive − svd is {_d(f)} ({verdict(f)}).")
        out.append("")

    # 4. full fine-tuning
    if any(has_methods(runs, t, "random", "full") for t in tasks):
        out.append("**How far are the adapters from full fine-tuning?**")
        for t in tasks:
            if has_methods(runs, t, "random", "full"):
                c = paired(runs, t, "random", "full")
                out.append(f"- {task_label(t)}: full − random (LoRA), final {metric(t)}: {_d(c)} ({verdict(c)}).")
        out.append("")

    # 5. spectra
    if spectra_csv and Path(spectra_csv).is_file():
        out += spectra_sentences(spectra_csv, [t for t in tasks if not chance[t]] or tasks) + [""]
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


def spectra_sentences(spectra_csv, tasks=None) -> list[str]:
    """Sentences on ΔW's spectra per method, from the per-layer CSV, averaged over layers, seeds and
    ``tasks`` (default: all; the book passes the tasks where some adapter beat the baseline)."""
    import pandas as pd

    t = pd.read_csv(spectra_csv)
    tasks = list(tasks) if tasks is not None else sorted(set(t["task"]))
    t = t[t["task"].isin(tasks)]
    g = t.groupby("method")[["stable_rank", "effective_rank", "energy_top1", "overlap_right_top",
                             "overlap_left_top", "overlap_random"]].mean()
    rnd = float(g["overlap_random"].mean())
    out = ["**How do the updates differ?** (ΔW relative to the pretrained W, averaged over the adapted layers, "
           f"seeds and tasks ({', '.join(task_label(x) for x in tasks)}); overlap = mean cos² of the principal angles between ΔW's top-r singular subspace and "
           f"W's, {rnd:.3f} for random subspaces)"]
    for m in _method_order(g.index):
        r = g.loc[m]
        out.append(f"- {m}: stable rank {r['stable_rank']:.2f}, effective rank {r['effective_rank']:.1f}, top singular "
                   f"value holds {r['energy_top1']:.0%} of the energy; overlap with W's top-r input subspace "
                   f"{r['overlap_right_top']:.3f}, output subspace {r['overlap_left_top']:.3f}.")
    return out


def subspace_sentences(subspaces_csv, tasks=None) -> list[str]:
    """Sentences on whether runs agree on ΔW's top-r subspaces, from ``subspaces_<grid>.csv``
    (:func:`harness.report.subspace_agreement_table`), averaged over pairs, layers and ``tasks``."""
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
            f"{m} {seeds.loc[m, 'phi_in']:.2f} / {seeds.loc[m, 'phi_out']:.2f}" for m in _method_order(seeds.index))
            + ".")
    inits = t[t["relation"] == "init"].copy()
    if len(inits):
        order = {m: i for i, m in enumerate(_method_order(set(inits["method_a"]) | set(inits["method_b"])))}
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
