"""Statistics the book states its findings with: paired differences over seeds, their 95 % intervals,
and Holm–Bonferroni adjusted p-values over a family of comparisons.

A comparison pairs two sets of runs by seed (same task, same seed, the two methods).  With d_i = b_i − a_i
over the n shared seeds, the mean difference d̄ has the t interval d̄ ± t_{0.975, n−1}·s_d/√n and the
two-sided paired t-test p-value.  Holm's step-down procedure turns the m p-values of one page into
adjusted ones (sorted p_(1) ≤ … ≤ p_(m): p̃_(k) = max_{j≤k} min(1, (m − j + 1)·p_(j))); a finding is an
adjusted p < 0.05, which controls the family-wise error rate at 5 %.
"""
from __future__ import annotations

import math

import numpy as np
from scipy import stats as _st

ALPHA = 0.05


def paired(a: dict, b: dict) -> dict:
    """``a``, ``b``: {seed: value}.  The paired difference b − a over the seeds both have.

    Returns n, seeds, mean_a, mean_b, diff (mean), sd (of the differences), lo/hi (95 % t interval),
    p (two-sided paired t-test; None when n < 2 or the differences are all equal), wins (seeds with b > a).
    """
    seeds = sorted(set(a) & set(b))
    d = np.array([b[s] - a[s] for s in seeds], dtype=float)
    n = len(d)
    out = {"n": n, "seeds": seeds, "mean_a": float(np.mean([a[s] for s in seeds])) if n else math.nan,
           "mean_b": float(np.mean([b[s] for s in seeds])) if n else math.nan,
           "diff": float(d.mean()) if n else math.nan, "sd": float(d.std(ddof=1)) if n > 1 else math.nan,
           "lo": math.nan, "hi": math.nan, "p": None, "wins": int((d > 0).sum())}
    if n > 1:
        out["lo"], out["hi"] = t_interval(out["diff"], out["sd"], n)
        if out["sd"] > 0:
            out["p"] = float(_st.ttest_rel([b[s] for s in seeds], [a[s] for s in seeds]).pvalue)
        else:
            out["p"] = 0.0 if out["diff"] != 0 else 1.0
    return out


def t_interval(mean: float, sd: float, n: int) -> tuple[float, float]:
    """The 95 % t interval of a mean of n paired differences: mean ± t_{0.975, n−1}·sd/√n (NaN for n < 2 or a
    non-finite sd)."""
    if n < 2 or not math.isfinite(sd):
        return math.nan, math.nan
    half = float(_st.t.ppf(1 - ALPHA / 2, n - 1)) * sd / math.sqrt(n)
    return float(mean - half), float(mean + half)


def holm(pvalues: list[float | None]) -> list[float | None]:
    """Holm–Bonferroni adjusted p-values, in the input order (None stays None and is not counted)."""
    idx = [i for i, p in enumerate(pvalues) if p is not None]
    m = len(idx)
    order = sorted(idx, key=lambda i: pvalues[i])
    adjusted: list[float | None] = [None] * len(pvalues)
    running = 0.0
    for k, i in enumerate(order):
        running = max(running, min(1.0, (m - k) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def with_holm(comparisons: list[dict]) -> list[dict]:
    """Add ``p_holm`` and ``finding`` (p_holm < 0.05) to each comparison of one family."""
    adj = holm([c.get("p") for c in comparisons])
    return [{**c, "p_holm": a, "finding": a is not None and a < ALPHA} for c, a in zip(comparisons, adj)]


def mean_sd(values) -> tuple[float, float, int]:
    """(mean, sample std, n) of a list of numbers (std NaN for n < 2)."""
    v = np.asarray(list(values), dtype=float)
    return (float(v.mean()) if len(v) else math.nan, float(v.std(ddof=1)) if len(v) > 1 else math.nan, len(v))


def format_pm(mean: float, std: float | None, digits: int = 2) -> str:
    """``"0.52 ± 0.03"``; no ± when ``std`` is None or not finite; ``"n/a"`` when ``mean`` is not finite."""
    if mean is None or not math.isfinite(mean):
        return "n/a"
    if std is None or not math.isfinite(std):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def format_mean_std(mean: float, std: float, n: int, digits: int = 3) -> str:
    """``"0.812 ± 0.011 (n=3)"``; one value: ``"0.812 (n=1)"``; none: ``"n/a (n=0)"``."""
    if n == 0 or not np.isfinite(mean):
        return f"n/a (n={n})"
    return f"{format_pm(mean, std if n > 1 else None, digits)} (n={n})"


def spearman_ci(x, y, n_boot: int = 2000, seed: int = 0) -> dict:
    """Spearman's ρ of (x, y) with a 95 % percentile bootstrap interval (resampling pairs)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    rho = float(_st.spearmanr(x, y).statistic)
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(n_boot):
        i = rng.integers(0, len(x), len(x))
        if len(set(x[i])) > 1 and len(set(y[i])) > 1:
            boots.append(_st.spearmanr(x[i], y[i]).statistic)
    lo, hi = (np.percentile(boots, [2.5, 97.5]) if boots else (math.nan, math.nan))
    return {"rho": rho, "lo": float(lo), "hi": float(hi), "n": len(x),
            "p": float(_st.spearmanr(x, y).pvalue)}
