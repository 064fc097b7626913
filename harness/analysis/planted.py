"""The planted-update experiment's results from its logs (``logs/planted/*.json``, written by
:mod:`harness.planted`): the final recovery per (subspace, init), the recovery curves, and the checks of the
predictions P1–P8 stated in :mod:`harness.planted` before any run.

Every number is at each (subspace, init, seed)'s selected lr (lowest final held-out MSE, the experiment's rule);
means and sample standard deviations are over seeds.  *Speed* is the mean of rel_err over the logged
evaluations (steps 0, eval_every, …, steps): the normalised area under the recovery curve, lower = faster.

The pass/fail criteria below were fixed before the experiment was run (with the predictions written
before that); a prediction whose inits or subspaces are missing from the logs is "not run".
"""
from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path

from .stats import at_least, below, mean_sd

SUBSPACES = ("top", "bottom", "random")
SUBSPACE_LABELS = {"top": "(a) W's top-k", "bottom": "(b) W's bottom-k", "random": "(c) random"}
INIT_ORDER = ("random", "svd", "svd_minor", "olora", "lora_fa", "lora_fa_svd")

# the criteria (fixed before the run)
REACH_MAX = 0.5          # P1(a): lora_fa_svd in top ends with rel_err below this
FLOOR_MIN = 0.97         # P1(b, c), P2: a frozen A that cannot represent ΔW* stays at rel_err ≥ this
ANGLE_MIN = 89.0         # P1(b): its right (row-space) angle stays ≥ this many degrees
INDIFFERENT_MAX = 0.10   # P3: random init's final rel_err varies by less than this across subspaces
LIKE_RANDOM_MAX = 0.05   # P6: olora's final rel_err within this of random's in every subspace
RANK_AGREEMENT_MIN = 0.8  # P8: Spearman ρ of held-out MSE and rel_err over inits, per subspace


def load_planted(log_dir) -> list[dict]:
    """The ok planted logs of ``log_dir`` (kind "planted")."""
    out = []
    for p in sorted(Path(log_dir).glob("*.json")):
        try:
            lg = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(lg, dict) and lg.get("kind") == "planted" and lg.get("status") == "ok" and lg.get("final"):
            out.append(lg)
    return out


def init_order(inits) -> list[str]:
    known = [m for m in INIT_ORDER if m in set(inits)]
    return known + sorted(set(inits) - set(known))


def speed(log: dict) -> float:
    """Mean rel_err over the evaluations of the selected lr's curve (lower = recovered sooner)."""
    pts = [p["rel_err"] for p in log["curves"][f"{log['best_lr']:g}"] if p.get("rel_err") is not None]
    return sum(pts) / len(pts)


class Planted:
    """``cells[(subspace, init)] = {seed: log}``."""

    def __init__(self, logs: list[dict]):
        self.logs = logs
        self.cells: dict[tuple[str, str], dict[int, dict]] = defaultdict(dict)
        for lg in logs:
            c = lg["config"]
            self.cells[c["subspace"], c["init"]][c["seed"]] = lg

    def subspaces(self) -> list[str]:
        return [s for s in SUBSPACES if any(k[0] == s for k in self.cells)]

    def inits(self) -> list[str]:
        return init_order({i for _, i in self.cells})

    def has(self, subspace: str, init: str) -> bool:
        return bool(self.cells.get((subspace, init)))

    def values(self, subspace: str, init: str, key: str) -> list[float]:
        out = []
        for lg in self.cells.get((subspace, init), {}).values():
            v = speed(lg) if key == "speed" else lg["final"].get(key)
            if v is not None and math.isfinite(v):
                out.append(float(v))
        return out

    def mean(self, subspace: str, init: str, key: str) -> float:
        return mean_sd(self.values(subspace, init, key))[0]

    def curve(self, subspace: str, init: str, key: str = "rel_err") -> tuple[list[int], list[float], list[float]]:
        """(steps, mean, sd) of ``key`` over seeds along the selected lr's curve."""
        per = defaultdict(list)
        for lg in self.cells.get((subspace, init), {}).values():
            for p in lg["curves"][f"{lg['best_lr']:g}"]:
                if p.get(key) is not None:
                    per[p["step"]].append(p[key])
        steps = sorted(per)
        ms = [mean_sd(per[s]) for s in steps]
        return steps, [m[0] for m in ms], [m[1] for m in ms]


def final_rows(pl: Planted) -> list[dict]:
    """One row per (subspace, init): seeds, selected lrs, final rel_err (query, value), angles, speed,
    held-out MSE relative to the teacher–pretrained gap."""
    rows = []
    for sub in pl.subspaces():
        for init in pl.inits():
            if not pl.has(sub, init):
                continue
            cell = pl.cells[sub, init]
            row = dict(subspace=sub, init=init, seeds=len(cell),
                       lrs=sorted({lg["best_lr"] for lg in cell.values()}))
            for key in ("rel_err", "rel_err_query", "rel_err_value", "angle_left", "angle_right", "heldout_rel", "speed"):
                row[key], row[f"{key}_sd"], _ = mean_sd(pl.values(sub, init, key))
            rows.append(row)
    return rows


def final_table(pl: Planted) -> "pd.DataFrame":
    import pandas as pd

    def pm(r, k, d=3):
        return f"{r[k]:.{d}f} ± {r[k + '_sd']:.{d}f}" if r["seeds"] > 1 else f"{r[k]:.{d}f}"
    return pd.DataFrame([{
        "subspace": SUBSPACE_LABELS[r["subspace"]], "init": r["init"], "seeds": r["seeds"],
        "lr": ", ".join(f"{x:g}" for x in r["lrs"]), "rel_err": pm(r, "rel_err"),
        "query / value": f"{r['rel_err_query']:.3f} / {r['rel_err_value']:.3f}",
        "angle out / in (°)": f"{r['angle_left']:.1f} / {r['angle_right']:.1f}",
        "speed (mean rel_err)": pm(r, "speed"), "held-out MSE / gap": pm(r, "heldout_rel")}
        for r in final_rows(pl)])


def _result(pid: str, claim: str, held, evidence: str) -> dict:
    return {"id": pid, "claim": claim, "held": held, "evidence": evidence}


def _fastest_check(pl: Planted, pid: str, init: str, home: str) -> dict:
    """``init`` is the fastest of all inits when ΔW* lies in ``home``, and not faster than random elsewhere."""
    others = [s for s in SUBSPACES if s != home]
    claim = f"{init} fastest of all inits in {SUBSPACE_LABELS[home]}; not faster than random in the others"
    if not all(pl.has(s, init) and pl.has(s, "random") for s in SUBSPACES):
        return _result(pid, claim, None, "not run")
    speeds = {i: pl.mean(home, i, "speed") for i in pl.inits() if pl.has(home, i)}
    fastest = min(speeds, key=speeds.get)
    vs = {s: (pl.mean(s, init, "speed"), pl.mean(s, "random", "speed")) for s in others}
    return _result(pid, claim, fastest == init and all(a >= b for a, b in vs.values()),
                   f"fastest in {home}: {fastest} ({speeds[fastest]:.3f}; {init} {speeds[init]:.3f}); {init} vs random "
                   "speed " + ", ".join(f"{s} {a:.3f} vs {b:.3f}" for s, (a, b) in vs.items()))


def check_predictions(pl: Planted) -> list[dict]:
    """P1–P8 against the logs: each {id, claim, held (True/False/None = not run), evidence}."""
    out, m = [], pl.mean
    subs = pl.subspaces()

    # P1: lora_fa_svd reaches (a), not (b) or (c)
    if all(pl.has(s, "lora_fa_svd") for s in SUBSPACES):
        a, b, c = (m(s, "lora_fa_svd", "rel_err") for s in SUBSPACES)
        ang = m("bottom", "lora_fa_svd", "angle_right")
        held = below(a, REACH_MAX) and at_least(b, FLOOR_MIN) and at_least(ang, ANGLE_MIN) and at_least(c, FLOOR_MIN)
        out.append(_result("P1", f"lora_fa_svd (A = V_rᵀ frozen): (a) rel_err < {REACH_MAX}; (b) rel_err ≥ {FLOOR_MIN} "
                           f"with row-space angle ≥ {ANGLE_MIN:.0f}°; (c) rel_err ≥ {FLOOR_MIN}", held,
                           f"rel_err (a) {a:.3f}, (b) {b:.3f} (angle {ang:.1f}°), (c) {c:.3f}"))
    else:
        out.append(_result("P1", "lora_fa_svd reaches (a) only", None, "not run"))
    # P2: lora_fa recovers none
    if all(pl.has(s, "lora_fa") for s in SUBSPACES):
        v = {s: m(s, "lora_fa", "rel_err") for s in SUBSPACES}
        out.append(_result("P2", f"lora_fa (random frozen A): rel_err ≥ {FLOOR_MIN} in all three", all(at_least(x, FLOOR_MIN) for x in v.values()),
                           ", ".join(f"{s} {x:.3f}" for s, x in v.items())))
    else:
        out.append(_result("P2", "lora_fa recovers none", None, "not run"))
    # P3: random init indifferent
    if all(pl.has(s, "random") for s in SUBSPACES):
        v = {s: m(s, "random", "rel_err") for s in SUBSPACES}
        spread = max(v.values()) - min(v.values())
        out.append(_result("P3", f"random init: final rel_err within {INDIFFERENT_MAX} across subspaces",
                           below(spread, INDIFFERENT_MAX), ", ".join(f"{s} {x:.3f}" for s, x in v.items()) + f" (spread {spread:.3f})"))
    else:
        out.append(_result("P3", "random init indifferent", None, "not run"))
    out.append(_fastest_check(pl, "P4", "svd", "top"))            # svd (PiSSA) starts in W's top subspaces
    out.append(_fastest_check(pl, "P5", "svd_minor", "bottom"))   # svd_minor (MiLoRA) in its bottom ones
    # P6: olora like random
    if all(pl.has(s, "olora") and pl.has(s, "random") for s in SUBSPACES):
        d = {s: m(s, "olora", "rel_err") - m(s, "random", "rel_err") for s in SUBSPACES}
        out.append(_result("P6", f"olora: final rel_err within {LIKE_RANDOM_MAX} of random's in every subspace",
                           all(below(abs(x), LIKE_RANDOM_MAX) for x in d.values()),
                           ", ".join(f"{s} {x:+.3f}" for s, x in d.items())))
    else:
        out.append(_result("P6", "olora like random", None, "not run"))
    # P7: value recovered better than query, every (subspace, init)
    pairs = [(s, i, m(s, i, "rel_err_query"), m(s, i, "rel_err_value")) for s in subs for i in pl.inits() if pl.has(s, i)]
    if pairs:
        bad = [f"{s}/{i} (q {q:.3f}, v {v:.3f})" for s, i, q, v in pairs if not v < q]
        out.append(_result("P7", "value layers end with lower rel_err than query layers, for every init and subspace",
                           not bad, f"{len(pairs) - len(bad)}/{len(pairs)} cells" + (f"; not in {', '.join(bad)}" if bad else "")))
    # P8: held-out MSE ranks inits like rel_err (frozen-A inits excluded in (b), (c))
    from scipy.stats import spearmanr
    rhos = {}
    for s in subs:
        inits = [i for i in pl.inits() if pl.has(s, i) and not (s != "top" and i in ("lora_fa", "lora_fa_svd"))]
        if len(inits) >= 3:
            rhos[s] = float(spearmanr([m(s, i, "heldout_rel") for i in inits], [m(s, i, "rel_err") for i in inits]).statistic)
    if rhos:
        out.append(_result("P8", f"held-out MSE ranks inits like rel_err (Spearman ρ ≥ {RANK_AGREEMENT_MIN} per subspace; "
                           "lora_fa, lora_fa_svd left out in (b), (c))",
                           all(at_least(r, RANK_AGREEMENT_MIN) for r in rhos.values()),
                           ", ".join(f"{s} ρ = {r:.2f}" for s, r in rhos.items())))
    return out
