"""Protocol v2's selection rule: which learning rate each method runs at, chosen on validation.

The rule (stated once, used by the grid and shown by the book): for each task and method, among the
learning rates of the sweep, take the one with the best *final* validation metric (the task's main
metric on the split held out of train, after the last step); on a tie, the smaller lr.  A run that
failed (e.g. diverged) scores −∞.  Dev never enters the choice: it is the reported test set.
"""
from __future__ import annotations

import math

from .tasks import UserError

TIE = 1e-12


def val_score(log: dict) -> float:
    """The final validation main metric of a run log; −∞ for a failed run or a missing value."""
    if log.get("status") != "ok" or not log.get("final"):
        return -math.inf
    v = (log["final"].get("val") or {}).get(log["task"]["main_metric"])
    return -math.inf if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def select_lr_from_scores(scores: dict[float, float]) -> float:
    """argmax over lr of the score; ties (within 1e-12) go to the smaller lr."""
    best = max(scores.values())
    return min(lr for lr, v in scores.items() if v >= best - TIE)


def sweep_scores(logs: list[dict], task: str, method: str) -> dict[float, float]:
    """{lr: final validation score} for one task and method of a sweep's logs (ok and failed runs)."""
    out = {}
    for lg in logs:
        c = lg["config"]
        if c["task"] == task and c["method"] == method:
            if not (lg["final"] or {}).get("val") and lg["status"] == "ok":
                raise UserError(f"run {lg['run_id']} has no validation metrics; lr selection needs a sweep run "
                                f"with val_fraction set (protocol v2)")
            out[c["lr"]] = max(out.get(c["lr"], -math.inf), val_score(lg))
    return out


def select_lr(logs: list[dict], task: str, method: str, where: str = "the sweep") -> float:
    """The lr the rule picks for (task, method) from a sweep's logs."""
    scores = sweep_scores(logs, task, method)
    if not scores:
        raise UserError(f"{where} has no runs for task {task!r} and method {method!r}; add them to the sweep")
    if all(v == -math.inf for v in scores.values()):
        raise UserError(f"every sweep run of {task}/{method} in {where} failed; no lr to select")
    return select_lr_from_scores(scores)


def selection_table(logs: list[dict]) -> list[dict]:
    """One row per (task, method): every swept lr's score, the selected lr, and whether it sits at an edge."""
    rows = []
    for task, method in sorted({(lg["config"]["task"], lg["config"]["method"]) for lg in logs}):
        scores = sweep_scores(logs, task, method)
        chosen = select_lr_from_scores(scores)
        lrs = sorted(scores)
        rows.append({"task": task, "method": method, "selected_lr": chosen, "val_score": scores[chosen],
                     "at_edge": chosen in (lrs[0], lrs[-1]) and len(lrs) > 1, "n_lrs": len(lrs),
                     "scores": {f"{lr:g}": scores[lr] for lr in lrs}})
    return rows


def selected_lrs(logs: list[dict]) -> dict[tuple[str, str], float]:
    """{(task, method): the lr the rule picks} for every (task, method) that a sweep's ``logs`` have."""
    return {(r["task"], r["method"]): r["selected_lr"] for r in selection_table(logs)}
