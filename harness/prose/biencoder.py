"""The bi-encoder study in words (book/biencoder.md): the comparison table, the findings and the page's
glued numbers, all from :mod:`harness.analysis.biencoder`."""
from __future__ import annotations

import math

from ..analysis.biencoder import LABELS, BiStudy, outcome_rows
from ..tasks import task_label
from .protocol import interval_cells

STEP0_TOL = 1e-3    # a step-0 main metric further than this from the pretrained model's: the init moved the model


def comparison_frame(comps: list[dict]) -> "pd.DataFrame":
    import pandas as pd
    return pd.DataFrame([{"task": task_label(c["task"]), "b − a": f"{c['b']} − {c['a']}",
                          "metric": LABELS.get(c["metric"], c["metric"]), **interval_cells(c)} for c in comps])


def findings_markdown(comps: list[dict]) -> str:
    """The comparisons that are findings (Holm-adjusted p < 0.05), one bullet each."""
    hits = [c for c in comps if c["finding"]]
    if not hits:
        return "No comparison of the family is a finding (every Holm-adjusted p ≥ 0.05)."
    return "\n".join(
        f"- {task_label(c['task'])}, {c['b']} − {c['a']}: {c['diff']:+.3f} [{c['lo']:+.3f}, {c['hi']:+.3f}] "
        f"{LABELS.get(c['metric'], c['metric'])}, {c['b']} ahead in {c['wins']}/{c['n']} seeds, "
        f"Holm-adjusted p = {c['p_holm']:.3g}" for c in hits)


def _names(methods) -> str:
    methods = list(methods)
    return methods[0] if len(methods) == 1 else ", ".join(methods[:-1]) + " and " + methods[-1]


def _ci(c: dict) -> str:
    return f"{c['diff']:+.3f} [{c['lo']:+.3f}, {c['hi']:+.3f}]"


def gain_words(gains: list[dict]) -> str:
    """One task's gains over the pretrained model in words: the sign of each 95 % interval, the range, and how
    many survive Holm (with three seeds a t-test's p stays large unless the seeds agree closely)."""
    if not gains:
        return "no method has two seeds"
    up = [c for c in gains if c["lo"] > 0]
    down = [c for c in gains if c["hi"] < 0]
    lo, hi = min(gains, key=lambda c: c["diff"]), max(gains, key=lambda c: c["diff"])
    if len(up) == len(gains):
        head = (f"every method ends above the pretrained model, every 95 % interval above 0 (gains from "
                f"{lo['diff']:+.3f} for {lo['b']} to {hi['diff']:+.3f} for {hi['b']})")
    else:
        parts = [f"{_names([c['b'] for c in up])} end above it" if up else "",
                 f"{_names([c['b'] for c in down])} end below it" if down else "",
                 f"{_names([c['b'] for c in gains if c not in up and c not in down])} have intervals that include 0"
                 if len(up) + len(down) < len(gains) else ""]
        head = "; ".join(p for p in parts if p)
    n = sum(c["finding"] for c in gains)
    return f"{head}; {n} of these {len(gains)} gains {'is a finding' if n == 1 else 'are findings'} after Holm"


def vs_random_words(comps: list[dict]) -> str:
    """One task's comparisons with random init in words: those whose 95 % interval excludes 0, and the findings."""
    apart = [c for c in comps if c["lo"] > 0 or c["hi"] < 0]
    if not apart:
        return "no method's 95 % interval against random init excludes 0"
    return "; ".join(f"{c['b']} − random {_ci(c)} ({'a finding' if c['finding'] else 'not a finding'} after Holm)"
                     for c in apart)


def page_numbers(study: BiStudy, comps: list[dict]) -> dict:
    """Everything the page glues, keyed ``bi_<what>_<task>`` (task without the ``bi-`` prefix)."""
    out = {"bi_n_comparisons": len(comps), "bi_n_findings": sum(c["finding"] for c in comps),
           "bi_findings": findings_markdown(comps)}
    rows = outcome_rows(study)
    for task in study.tasks():
        t = task.removeprefix("bi-")
        mine = {r["method"]: r for r in rows if r["task"] == task}
        out[f"bi_pretrained_{t}"] = study.pretrained(task)
        out[f"bi_seeds_{t}"] = max(r["n"] for r in mine.values())
        best = max(mine.values(), key=lambda r: r["final"])
        out[f"bi_best_{t}"], out[f"bi_best_final_{t}"] = best["method"], best["final"]
        for m, r in mine.items():
            for k in ("zero", "final", "final_sd", "gain", "gain_lo", "gain_hi", "shift", "pre0", "pre1", "wall_s"):
                out[f"bi_{m}_{k}_{t}"] = r[k]
            if "final_recall@10" in r:
                out[f"bi_{m}_r10_zero_{t}"], out[f"bi_{m}_r10_final_{t}"] = r["zero_recall@10"], r["final_recall@10"]
                out[f"bi_{m}_mrr_zero_{t}"], out[f"bi_{m}_mrr_final_{t}"] = r["zero_mrr@10"], r["final_mrr@10"]
        out[f"bi_gain_words_{t}"] = gain_words([c for c in comps if c["task"] == task and c["group"] == "gain over pretrained"])
        out[f"bi_vs_random_words_{t}"] = vs_random_words(
            [c for c in comps if c["task"] == task and c["group"] == "against random"])
        moved = [m for m, r in mine.items() if abs(r["zero"] - r["pretrained"]) > STEP0_TOL]

        def start(m):
            r = mine[m]
            cos = "" if math.isnan(r["pre0"]) or r["pre0"] == 1.0 else \
                f", its dev embeddings at mean cosine {r['pre0']:.3f} to the pretrained ones"
            return f"{m} starts at {r['zero']:.3f}{cos} and ends at {r['final']:.3f}"
        out[f"bi_step0_words_{t}"] = "; ".join(start(m) for m in moved) \
            or "every init starts at the pretrained model's value"
        known = [r for r in mine.values() if not math.isnan(r["pre1"])]
        if known:
            shifts = sorted(known, key=lambda r: r["pre1"])
            out[f"bi_most_moved_{t}"], out[f"bi_most_moved_shift_{t}"] = shifts[0]["method"], shifts[0]["pre1"]
            out[f"bi_least_moved_{t}"], out[f"bi_least_moved_shift_{t}"] = shifts[-1]["method"], shifts[-1]["pre1"]
    return out
