"""The planted-update experiment in words (book/planted.md): the predictions table and the glued numbers,
from :mod:`harness.analysis.planted`."""
from __future__ import annotations

from ..analysis.planted import SUBSPACES, Planted, final_rows


def predictions_frame(checks: list[dict]) -> "pd.DataFrame":
    import pandas as pd
    verdict = {True: "held", False: "did not hold", None: "not run"}
    return pd.DataFrame([{"prediction": c["id"], "stated before the run (criterion)": c["claim"],
                          "verdict": verdict[c["held"]], "measured": c["evidence"]} for c in checks])


def page_numbers(pl: Planted, checks: list[dict]) -> dict:
    """What the page glues: verdict counts and lists, and each (subspace, init)'s final rel_err and speed
    (``pl_<init>_<subspace>_err``, ``..._sd``, ``..._speed``)."""
    out = {"pl_n_predictions": sum(c["held"] is not None for c in checks),
           "pl_n_held": sum(c["held"] is True for c in checks),
           "pl_held": ", ".join(c["id"] for c in checks if c["held"] is True) or "none",
           "pl_failed": ", ".join(c["id"] for c in checks if c["held"] is False) or "none",
           "pl_seeds": max((r["seeds"] for r in final_rows(pl)), default=0)}
    for r in final_rows(pl):
        key = f"pl_{r['init']}_{r['subspace']}"
        out[f"{key}_err"], out[f"{key}_err_sd"], out[f"{key}_speed"] = r["rel_err"], r["rel_err_sd"], r["speed"]
    for sub in SUBSPACES:
        rows = [r for r in final_rows(pl) if r["subspace"] == sub]
        if rows:
            best = min(rows, key=lambda r: r["rel_err"])
            fastest = min(rows, key=lambda r: r["speed"])
            out[f"pl_best_{sub}"], out[f"pl_fastest_{sub}"] = best["init"], fastest["init"]
    return out
