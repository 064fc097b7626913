"""The book's statistical rulebook, in code: every page states its comparisons through this module
(the page ``book/rules.md`` says the same in words).

* **Comparison.** Two sets of runs paired by seed (same task, same seed, the two methods).  With
  d_i = b_i − a_i over the n shared seeds, the mean difference d̄ has the 95 % t interval
  d̄ ± t_{0.975, n−1}·s_d/√n and the two-sided paired t-test p-value (:func:`paired`).
* **Family.** One per question (:data:`FAMILIES` names each question once); a comparison belongs to exactly
  one family, so it has one adjusted p wherever the book shows it.  Tasks the model does not learn (every
  adapter at or below the majority class on dev) are reported but left out of the families.
* **Correction.** Holm's step-down procedure over the m p-values of a family (sorted p_(1) ≤ … ≤ p_(m):
  p̃_(k) = max_{j≤k} min(1, (m − j + 1)·p_(j))), which controls the family-wise error rate at 5 %.
* **Finding.** A Holm-adjusted p < :data:`ALPHA`: "ahead" or "behind".
* **Level.** Claimed only when two one-sided t-tests (TOST) put the difference inside ±δ, δ the task's
  margin in :data:`MARGINS` (fixed with this rulebook, before any equivalence test was run): the TOST p
  max(P(T ≥ (d̄ + δ)/(s_d/√n)), P(T ≤ (d̄ − δ)/(s_d/√n))), Holm-adjusted over the same family, below ALPHA.
* **Otherwise** "not determined at n seeds", with the minimum detectable difference
  t_{1 − α/(2m), n−1}·s_d/√n: the smallest |d̄| that, at the observed spread, would be a finding even as the
  smallest p of its family (Holm's first step is Bonferroni's α/m).
* **Thresholds** on a computed number are compared after rounding it to :data:`THRESHOLD_DIGITS` decimals
  (:func:`at_least`, :func:`below`), so float noise (a Spearman ρ of 0.7999999999999999 for 4/5) cannot
  flip a verdict.
"""
from __future__ import annotations

import math

import numpy as np
from scipy import stats as _st

ALPHA = 0.05
THRESHOLD_DIGITS = 9

# Equivalence margins δ on the final dev metric, by task: the smallest difference this study would choose
# an init for.  MRPC accuracy 0.01 (4 of its 408 dev examples); CoLA MCC 0.02; RTE accuracy 0.01; the
# bi-encoder's MRPC ROC-AUC 0.01 and STS-B Spearman 0.005.
MARGINS = {"mrpc": 0.01, "cola": 0.02, "rte": 0.01, "bi-mrpc": 0.01, "bi-stsb": 0.005}

# The questions, one Holm family each (name → the question, as the rulebook page prints it).
FAMILIES = {
    "init_vs_random": "Does an init end differently from random init, each at its own validation-selected "
                      "learning rate? (every init other than random, MRPC and CoLA; grids v2 and inits)",
    "full_vs_random": "Does full fine-tuning end differently from a random-init adapter, each at its own "
                      "learning rate? (MRPC and CoLA; grid v2)",
    "seed_claim": "Does the seed project's svd_seed beat LoRA-FA, at each one's own learning rate and at the small "
                  "shared rates it was reported at (final and after one epoch)? (grid v2)",
    "round1": "Under one shared learning rate (round 1), does an init differ from random init, or full fine-tuning "
              "from it, finally or in early progress? (grid quick, learned tasks)",
    "bi": "As a sentence embedder, does each method gain over the pretrained model, and does an init differ "
          "from random init? (grid bi)",
    "bf16": "Does bf16 autocast change the final dev metric against fp32? (grids precision, precision_cpu)",
}


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


def tost(diff: float, sd: float, n: int, margin: float) -> float | None:
    """Two one-sided paired t-tests of |mean difference| < ``margin``: the larger of the two one-sided p-values
    (H₀: d ≤ −δ, H₀: d ≥ δ).  None for n < 2 or no margin; with no spread, 0 inside the margin and 1 outside."""
    if n < 2 or margin is None or not math.isfinite(diff):
        return None
    if not sd > 0:
        return 0.0 if abs(diff) < margin else 1.0
    se = sd / math.sqrt(n)
    lower = float(_st.t.sf((diff + margin) / se, n - 1))
    upper = float(_st.t.cdf((diff - margin) / se, n - 1))
    return max(lower, upper)


def detectable(sd: float, n: int, m: int) -> float:
    """The minimum detectable difference: t_{1 − α/(2m), n−1}·sd/√n, the smallest |mean difference| that
    would be a finding, at this spread, as the smallest p of a family of m (NaN for n < 2)."""
    if n < 2 or m < 1 or not math.isfinite(sd):
        return math.nan
    return float(_st.t.ppf(1 - ALPHA / (2 * m), n - 1)) * sd / math.sqrt(n)


def with_holm(comparisons: list[dict], family: str | None = None, unlearned=()) -> list[dict]:
    """The rulebook applied to one family (see the module docstring): each comparison gets ``family``,
    ``p_holm`` and ``finding``, and, where its task has a margin, ``margin``, ``p_tost``, ``p_tost_holm``,
    ``level``, ``mdd`` and ``verdict`` (a comparison's own ``margin`` key, when it has one, replaces the task's;
    None: no equivalence test).
    Comparisons on a task in ``unlearned`` are kept, with verdict
    "not learned", but left out of the family (no adjusted p)."""
    if family is not None and family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; the families are {', '.join(FAMILIES)}")
    inside = [c.get("task") not in set(unlearned) for c in comparisons]
    adj = holm([c.get("p") if ok else None for c, ok in zip(comparisons, inside)])
    margins = [c["margin"] if "margin" in c else MARGINS.get(c.get("task")) for c in comparisons]
    tosts = [tost(c.get("diff", math.nan), c.get("sd", math.nan), c.get("n", 0), d) if ok else None
             for c, ok, d in zip(comparisons, inside, margins)]
    tost_adj = holm(tosts)
    m = sum(p is not None for p in adj)
    out = []
    for c, ok, a, pt, pta, d in zip(comparisons, inside, adj, tosts, tost_adj, margins):
        finding = a is not None and a < ALPHA
        level = pta is not None and pta < ALPHA
        sd = c.get("sd", math.nan)
        mdd = detectable(sd, c.get("n", 0), m) if ok and c.get("p") is not None else math.nan
        row = {**c, "family": family if ok else None, "p_holm": a, "finding": finding,
               "margin": d, "p_tost": pt, "p_tost_holm": pta, "level": level, "mdd": mdd}
        row["verdict"] = verdict(row, ok)
        out.append(row)
    return out


def verdict(c: dict, in_family: bool = True) -> str:
    """The rulebook's word for one adjusted comparison: "ahead"/"behind" (a finding; "…, within ±δ" when TOST
    also puts it inside the margin), "level (±δ)", "not determined at n = … (detectable: |Δ| ≥ …)", or
    "not learned (outside the family)"."""
    if not in_family:
        return "not learned (outside the family)"
    if c["finding"]:
        side = "ahead" if c.get("diff", c.get("rho", 0.0)) > 0 else "behind"
        return f"{side}, within ±{c['margin']:.3g}" if c.get("level") else side
    if c.get("level"):
        return f"level (±{c['margin']:.3g})"
    mdd = c.get("mdd", math.nan)
    return f"not determined at n = {c.get('n', 0)}" + (f" (detectable: |Δ| ≥ {mdd:.3f})" if math.isfinite(mdd) else "")


def at_least(value: float, bound: float) -> bool:
    """``value ≥ bound`` after rounding ``value`` to :data:`THRESHOLD_DIGITS` decimals (no float-noise verdicts)."""
    return round(float(value), THRESHOLD_DIGITS) >= bound


def below(value: float, bound: float) -> bool:
    """``value < bound`` after rounding ``value`` to :data:`THRESHOLD_DIGITS` decimals."""
    return round(float(value), THRESHOLD_DIGITS) < bound


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
