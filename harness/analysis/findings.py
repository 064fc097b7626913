"""Paired comparisons between methods of one grid (numbers only; :mod:`harness.prose.findings` words them).

Runs of different methods with the same seed share the data order and the classification head's
initial weights (``harness.train`` seeds both from the config's seed), so two methods a and b are
compared *paired by seed*: on one task, with d_k = m(b, seed k) − m(a, seed k) over the n seeds both
have, we report mean(d) and its sample std, in how many seeds b is ahead, and the two-sided paired
t-test p-value (n ≥ 3; NaN otherwise).  With three seeds only a difference that is large against its
seed-to-seed spread reaches p < 0.05.

Quantities compared (all on the task's main dev metric, from the run logs):

* ``final``  after the last epoch;
* ``step0``  before any training (differs from other methods only if the init changes the model);
* ``first``  at the first evaluation after step 0 (a quarter epoch in the quick preset);
* ``epoch1`` at the evaluation closest to the end of epoch 1;
* ``curve``  the mean over all evaluations after step 0: a normalised area under the dev curve,
  higher when a method gets good sooner;
* ``loss_epoch1`` the mean training loss over the first epoch's steps: how fast the optimiser makes
  progress on the training objective (lower is better; "ahead" then means a lower loss).

Each method is compared at its :func:`harness.analysis.runs.main_lr` unless an lr is given.

What counts as a finding is the book's rulebook (:mod:`harness.analysis.stats`): :func:`round1_family` puts
every comparison of :data:`COMPARISONS` on the tasks some adapter learns into the family ``round1`` and
Holm-adjusts it; :func:`compare` returns one comparison with the family's adjusted p and verdict (a
comparison outside the family, e.g. at a non-default lr, is never a finding).
"""
from __future__ import annotations

import math

import numpy as np

from ..tasks import order_tasks
from .runs import load_logs, main_lr, num, runs_table

QUANTITIES = ("final", "step0", "first", "epoch1", "curve", "loss_epoch1")
LOWER_IS_BETTER = {"loss_epoch1"}
ALPHA = 0.05
SPEED = ("first", "epoch1", "curve", "loss_epoch1")     # the quantities that measure early progress
COMPARISONS = (   # (a, b, quantities): the questions the study asks of every task
    ("random", "svd", ("final", "first", "epoch1", "curve", "loss_epoch1")),
    ("random", "lora_fa", ("final", "curve")),
    ("random", "lora_fa_svd", ("final", "curve")),
    ("lora_fa", "lora_fa_svd", ("final",)),
    ("svd", "svd_naive", ("final", "step0", "curve", "loss_epoch1")),
    ("random", "full", ("final", "curve", "loss_epoch1")),
)


def curve_points(log: dict) -> dict:
    """The main dev metric of one log at the points of :data:`QUANTITIES` (NaN where missing)."""
    main = log["task"]["main_metric"]
    ev = [(float(e["epoch"]), num(e.get(main))) for e in log["history"]["evals"]]
    after = [(ep, v) for ep, v in ev if ep > 0]
    step0 = next((v for ep, v in ev if ep == 0), math.nan)
    first = after[0][1] if after else math.nan
    epoch1 = min(after, key=lambda p: abs(p[0] - 1.0))[1] if after else math.nan
    vals = np.array([v for _, v in after], dtype=float)
    curve = float(np.nanmean(vals)) if np.isfinite(vals).any() else math.nan
    loss = np.array([num(x) for x in log["history"].get("train_loss", [])[:log.get("steps_per_epoch") or 0]])
    loss_epoch1 = float(np.nanmean(loss)) if np.isfinite(loss).any() else math.nan
    return dict(final=num((log.get("final") or {}).get(main)), step0=step0, first=first, epoch1=epoch1,
                curve=curve, loss_epoch1=loss_epoch1)


def points_table(log_dir):
    """:func:`harness.analysis.runs.runs_table` plus the columns step0, first, epoch1, curve."""
    runs = runs_table(log_dir)
    if len(runs) == 0:
        return runs
    pts = {lg["run_id"]: curve_points(lg) for lg in load_logs(log_dir)}
    for q in QUANTITIES[1:]:
        runs[q] = runs["run_id"].map(lambda r, q=q: pts[r][q])
    return runs


def paired(runs, task: str, a: str, b: str, quantity: str = "final", lr_a=None, lr_b=None) -> dict:
    """:func:`harness.analysis.stats.paired` (b − a over the shared seeds) of method ``b`` against ``a`` on ``task``,
    each side's values taken from the runs table at its learning rate (``lr_a``/``lr_b``; default
    :func:`harness.analysis.runs.main_lr`, the preset's).  Besides stats.paired's fields: task, a, b, quantity,
    lr_a, lr_b, std_a, std_b, diffs (b − a per shared seed), and wins / behind counted in the quantity's
    better direction (b < a is better for a quantity in :data:`LOWER_IS_BETTER`).  No p below three seeds or
    when every seed's difference is the same: such a comparison is reported, not tested."""
    from .stats import paired as paired_values

    def side(method, lr):
        lr = main_lr(runs, task, method) if lr is None else lr
        g = runs[(runs["task"] == task) & (runs["method"] == method)]
        if lr is not None:
            g = g[np.isclose(g["lr"].astype(float), lr)]
        return {int(s): float(v) for s, v in zip(g["seed"], g[quantity]) if np.isfinite(v)}, lr

    va, lr_a = side(a, lr_a)
    vb, lr_b = side(b, lr_b)
    c = paired_values(va, vb)
    xa, xb = np.array([va[s] for s in c["seeds"]]), np.array([vb[s] for s in c["seeds"]])
    d = xb - xa
    if c["n"] < 3 or not np.std(d) > 0:
        c["p"] = None
    lower = quantity in LOWER_IS_BETTER
    sd = lambda x: float(x.std(ddof=1)) if len(x) > 1 else math.nan    # noqa: E731
    return {**c, "task": task, "a": a, "b": b, "quantity": quantity, "lr_a": lr_a, "lr_b": lr_b,
            "std_a": sd(xa), "std_b": sd(xb), "wins": int((d < 0).sum() if lower else (d > 0).sum()),
            "behind": int((d > 0).sum() if lower else (d < 0).sum()), "diffs": [float(x) for x in d]}


def round1_family(runs) -> list[dict]:
    """Every comparison of :data:`COMPARISONS` on every task of ``runs`` at the default lrs, through the rulebook
    (:func:`harness.analysis.stats.with_holm`, family ``round1``); tasks no adapter learns (:func:`at_chance`)
    stay outside the family.  Equivalence margins only for the final metric (the others are other units).
    Cached on ``runs.attrs``."""
    from .stats import with_holm
    if "round1_family" not in runs.attrs:
        comps = []
        for task in order_tasks(runs["task"]):
            for a, b, qs in COMPARISONS:
                if has_methods(runs, task, a, b):
                    for q in qs:
                        c = paired(runs, task, a, b, q)
                        if c["n"]:
                            comps.append(c if q == "final" else {**c, "margin": None})
        unlearned = {t for t, chance in at_chance(runs).items() if chance}
        runs.attrs["round1_family"] = with_holm(comps, "round1", unlearned)
    return runs.attrs["round1_family"]


def compare(runs, task: str, a: str, b: str, quantity: str = "final", lr_a=None, lr_b=None) -> dict:
    """:func:`paired` with the rulebook's fields (``p_holm``, ``finding``, ``verdict``...) from
    :func:`round1_family` when the comparison is one of its members; otherwise ``finding`` False and the verdict
    "outside the round-1 family"."""
    c = paired(runs, task, a, b, quantity, lr_a, lr_b)
    for f in round1_family(runs):
        if (f["task"], f["a"], f["b"], f["quantity"], f["lr_a"], f["lr_b"]) == (task, a, b, quantity, c["lr_a"], c["lr_b"]):
            return {**c, **{k: f[k] for k in ("family", "p_holm", "finding", "level", "mdd", "verdict", "margin")}}
    return {**c, "family": None, "p_holm": None, "finding": False, "level": False, "verdict": "outside the round-1 family"}


def is_finding(c: dict) -> bool:
    """Whether a comparison from :func:`compare` is a finding by the rulebook (Holm-adjusted p < 0.05 in its family)."""
    return bool(c.get("finding"))


def b_ahead(c: dict) -> bool:
    """Whether ``b`` is on the better side of ``a`` on average (lower for :data:`LOWER_IS_BETTER`)."""
    return (c["diff"] < 0) if c.get("quantity") in LOWER_IS_BETTER else (c["diff"] > 0)


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


def has_methods(runs, task: str, *methods: str) -> bool:
    """Whether ``runs`` has runs of every one of ``methods`` on ``task``."""
    return set(methods) <= set(runs.loc[runs["task"] == task, "method"])


def at_chance(runs) -> dict[str, bool]:
    """Per task: True when no adapter method (``full`` aside) ends above the majority-class baseline."""
    return {t: not any(learned(runs, t).get(m, False) for m in set(runs.loc[runs["task"] == t, "method"]) - {"full"})
            for t in order_tasks(runs["task"])}

