"""Does bf16 autocast change what is learned?  Paired bf16 − fp32 differences against the seed spread.

Runs that differ only in ``precision`` (and the seed) form one cell (task, method, and the rest of the
config).  Per seed i the final dev metric gives d_i = m_bf16,i − m_fp32,i; :func:`harness.analysis.stats.paired`
gives the mean d̄ with its 95 % t-interval [lo, hi] over the n seeds.  The seed spread is the
seed-to-seed standard deviation of the metric, pooled over the two precisions:
sd_seed = √((s²_fp32 + s²_bf16)/2) (each s with ddof = 1).

Verdict, per cell:

* ``different``     the interval excludes 0;
* ``equivalent``    it contains 0 and is narrower than the seed spread, i.e. hi − lo < 2·sd_seed (the width
                    of the band mean ± one seed sd): the precision moves the metric by less than what a new
                    seed does, and that is resolved by the data;
* ``inconclusive``  it contains 0 but is wider: these seeds cannot tell bf16 from fp32 at the scale of
                    the seed noise (not evidence of a difference).

With n = 3 seeds the half-width is t₀.₉₇₅,₂·s_d/√3 ≈ 2.48·s_d, so "equivalent" needs the paired
differences to vary much less than the runs themselves (s_d < 0.4·sd_seed).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from ..config import LEGACY
from .stats import paired, with_holm

REFERENCE, CANDIDATE = "fp32", "bf16"
VERDICTS = ("equivalent", "inconclusive", "different")


def _rest(cfg: dict) -> str:
    """The config without precision and seed: runs with the same rest are one cell.  Fields at their
    legacy value (``config.LEGACY``) count as absent, as in the config hash, so a log written before a
    field existed (round 1's ``logs/quick``: no ``precision``, ``rslora`` ...) pairs with a new one."""
    return json.dumps({k: v for k, v in sorted(cfg.items()) if k not in ("precision", "seed")
                       and not (k in LEGACY and v == LEGACY[k])}, sort_keys=True)


def precision_cells(logs: list[dict]) -> list[dict]:
    """Group ok logs into cells: [{task, method, metric, lr, values: {precision: {seed: final metric}}}],
    in the order the cells first appear.  A missing metric (NaN stored as null) is left out."""
    cells: dict[str, dict] = {}
    for lg in logs:
        if lg.get("status", "ok") != "ok" or not lg.get("final"):
            continue
        cfg = lg["config"]
        metric = lg["task"]["main_metric"]
        value = lg["final"].get(metric)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            continue
        cell = cells.setdefault(_rest(cfg), dict(task=cfg["task"], method=cfg["method"], metric=metric,
                                                 lr=cfg["lr"], values={}))
        cell["values"].setdefault(cfg.get("precision") or REFERENCE, {})[cfg["seed"]] = float(value)
    return list(cells.values())


def seed_sd(a: dict, b: dict) -> float:
    """√((s²_a + s²_b)/2): the seed-to-seed sd of the metric pooled over two settings ({seed: value} each)."""
    var = [float(np.var(list(v.values()), ddof=1)) for v in (a, b) if len(v) > 1]
    return math.sqrt(sum(var) / len(var)) if var else math.nan


def verdict(lo: float, hi: float, sd: float) -> str:
    """'different' if 0 ∉ [lo, hi]; else 'equivalent' if hi − lo < 2·sd, else 'inconclusive'."""
    if any(math.isnan(x) for x in (lo, hi)):
        return "inconclusive"
    if not lo <= 0.0 <= hi:
        return "different"
    return "equivalent" if (hi - lo) < 2 * sd else "inconclusive"


def seeds_needed(sd_diff: float, sd: float, max_n: int = 1000) -> int | None:
    """Smallest n ≥ 2 with 2·t₀.₉₇₅,ₙ₋₁·sd_diff/√n < 2·sd: the seeds at which paired differences this
    variable would give an interval narrower than the seed spread (None if not within ``max_n``)."""
    from scipy import stats as st
    if not (sd_diff >= 0 and sd > 0):
        return None
    for n in range(2, max_n + 1):
        if st.t.ppf(0.975, n - 1) * sd_diff / math.sqrt(n) < sd:
            return n
    return None


def equivalence_table(logs: list[dict], reference: str = REFERENCE, candidate: str = CANDIDATE) -> list[dict]:
    """One row per cell with both precisions: the paired candidate − reference difference of the final
    dev metric (95 % interval, p, Holm-adjusted p over the cells), the pooled seed sd, and the verdict."""
    rows = []
    for cell in precision_cells(logs):
        a, b = cell["values"].get(reference, {}), cell["values"].get(candidate, {})
        if not (set(a) & set(b)):
            continue
        c = paired(a, b)
        sd = seed_sd(a, b)
        rows.append(dict(task=cell["task"], method=cell["method"], metric=cell["metric"], lr=cell["lr"], n=c["n"],
                         mean_ref=c["mean_a"], mean_cand=c["mean_b"], diff=c["diff"], lo=c["lo"], hi=c["hi"],
                         half_width=(c["hi"] - c["lo"]) / 2, seed_sd=sd, sd_diff=c["sd"], p=c["p"], wins=c["wins"],
                         verdict=verdict(c["lo"], c["hi"], sd), seeds_needed=seeds_needed(c["sd"], sd)))
    return with_holm(rows)


def equivalence_frame(log_dir: str | Path):
    """:func:`equivalence_table` of the ok logs in ``log_dir`` as a DataFrame for the book."""
    from ..logs import read_logs
    return equivalence_frame_of(read_logs(log_dir))


def equivalence_frame_of(logs: list[dict]):
    """:func:`equivalence_table` of ``logs`` (e.g. two grids' logs together) as a DataFrame for the book."""
    import pandas as pd

    rows = equivalence_table(logs)
    cols = {"task": "task", "method": "method", "metric": "metric", "n": "seeds", "mean_ref": "fp32",
            "mean_cand": "bf16", "diff": "bf16 − fp32", "lo": "95 % lo", "hi": "95 % hi", "seed_sd": "seed sd",
            "p_holm": "p (Holm)", "verdict": "verdict", "seeds_needed": "seeds for a verdict"}
    return pd.DataFrame([{v: r[k] for k, v in cols.items()} for r in rows], columns=list(cols.values()))


def verdict_counts(rows: list[dict]) -> dict[str, int]:
    return {v: sum(r["verdict"] == v for r in rows) for v in VERDICTS}
