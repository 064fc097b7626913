"""Does bf16 autocast change what is learned?  Paired bf16 − fp32 differences against the seed spread.

Runs that differ only in ``precision`` (and the seed) form one cell (task, method, and the rest of the
config).  Per seed i the final dev metric gives d_i = m_bf16,i − m_fp32,i; :func:`harness.analysis.stats.paired`
gives the mean d̄ with its 95 % t-interval [lo, hi] over the n seeds.  The seed spread is the
seed-to-seed standard deviation of the metric, pooled over the two precisions:
sd_seed = √((s²_fp32 + s²_bf16)/2) (each s with ddof = 1).

Verdict, per cell, by the book's rulebook (:func:`harness.analysis.stats.with_holm`, family ``bf16``,
margin δ = sd_seed: a change smaller than what a new seed does is no change worth having):

* ``different``     Holm-adjusted paired t-test p < 0.05;
* ``equivalent``    the two one-sided tests (TOST) put d̄ inside ±sd_seed, Holm-adjusted p < 0.05, i.e. the 90 %
                    interval lies inside the band of one seed sd;
* ``inconclusive``  neither: these seeds cannot tell bf16 from fp32 at the scale of the seed noise (not
                    evidence of a difference).

With n = 3 seeds the 90 % half-width is t₀.₉₅,₂·s_d/√3 ≈ 1.69·s_d, so "equivalent" needs the paired
differences to vary much less than the runs themselves.
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


def verdict(row: dict) -> str:
    """A cell's word from the rulebook's fields: 'different' (a finding), 'equivalent' (level within ±sd_seed),
    else 'inconclusive'."""
    return "different" if row["finding"] else "equivalent" if row["level"] else "inconclusive"


def seeds_needed(sd_diff: float, sd: float, max_n: int = 1000) -> int | None:
    """Smallest n ≥ 2 with t₀.₉₅,ₙ₋₁·sd_diff/√n < sd: the seeds at which paired differences this variable,
    centred on 0, would pass TOST against ±sd (None if not within ``max_n``)."""
    from scipy import stats as st
    if not (sd_diff >= 0 and sd > 0):
        return None
    for n in range(2, max_n + 1):
        if st.t.ppf(0.95, n - 1) * sd_diff / math.sqrt(n) < sd:
            return n
    return None


def equivalence_table(logs: list[dict], reference: str = REFERENCE, candidate: str = CANDIDATE) -> list[dict]:
    """One row per cell with both precisions: the paired candidate − reference difference of the final
    dev metric (95 % interval, p, Holm-adjusted p over the cells), the pooled seed sd, TOST against it, and
    the verdict."""
    rows = []
    for cell in precision_cells(logs):
        a, b = cell["values"].get(reference, {}), cell["values"].get(candidate, {})
        if not (set(a) & set(b)):
            continue
        c = paired(a, b)
        sd = seed_sd(a, b)
        rows.append(dict(task=cell["task"], method=cell["method"], metric=cell["metric"], lr=cell["lr"], n=c["n"],
                         mean_ref=c["mean_a"], mean_cand=c["mean_b"], diff=c["diff"], lo=c["lo"], hi=c["hi"],
                         half_width=(c["hi"] - c["lo"]) / 2, seed_sd=sd, sd=c["sd"], sd_diff=c["sd"], p=c["p"],
                         wins=c["wins"], margin=sd if math.isfinite(sd) else None,
                         seeds_needed=seeds_needed(c["sd"], sd)))
    return [{**r, "verdict": verdict(r)} for r in with_holm(rows, "bf16")]


def equivalence_frame(log_dir: str | Path):
    """:func:`equivalence_table` of the ok logs in ``log_dir`` as a DataFrame for the book."""
    from ..logs import read_logs
    return equivalence_frame_of(read_logs(log_dir))


def equivalence_frame_of(logs: list[dict]):
    """:func:`equivalence_table` of ``logs`` (e.g. two grids' logs together) as a DataFrame for the book."""
    import pandas as pd

    rows = equivalence_table(logs)
    return pd.DataFrame([{"task": r["task"], "method": r["method"], "seeds": r["n"], "fp32": r["mean_ref"],
                          "bf16": r["mean_cand"],
                          "bf16 − fp32 [95 % CI]": f"{r['diff']:+.4f} [{r['lo']:+.4f}, {r['hi']:+.4f}]",
                          "seed sd (margin)": r["seed_sd"], "p (Holm)": r["p_holm"], "verdict": r["verdict"],
                          "seeds for a verdict": r["seeds_needed"]} for r in rows])


def verdict_counts(rows: list[dict]) -> dict[str, int]:
    return {v: sum(r["verdict"] == v for r in rows) for v in VERDICTS}
