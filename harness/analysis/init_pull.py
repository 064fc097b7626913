"""The pull toward the init, a·Σ‖B − B₀‖²_F, from its logs (``configs/init_pull_sweep.yaml``, then
``configs/init_pull.yaml``).

* :func:`choice`  step 1: per task and method, every a's final validation score and the a the rule picks
                  (best score, ties to the smaller a; a = 0 competes), the rule of protocol v2's lr choice;
* :func:`effect`  step 2: final dev metric at a = 0 and with the pull (the chosen a; the seed project's 0.05
                  where the rule chose 0), paired by seed (pull − none), with the 95 % interval and the
                  adapter block's curvature shift 2a beside its step-0 λmax.

The two steps run on one machine (the CPU); v2's logs, from a GPU, are never compared with them.
"""
from __future__ import annotations

import math

from ..protocol import select_lr_from_scores, val_score
from .runs import load_logs, method_order
from .stats import paired

SEED_PROJECT_A = 0.05   # the seed project's a: step 2's arm with the pull where the rule keeps a = 0


def _pull(cfg: dict) -> float:
    return float(cfg.get("init_pull") or 0.0)


def choice(sweep_dir) -> "pd.DataFrame":
    """One row per (task, method, a) of the sweep: the final validation score and whether the rule chose it."""
    import pandas as pd
    groups: dict[tuple[str, str], dict[float, float]] = {}
    for lg in load_logs(sweep_dir, status=None):
        c = lg["config"]
        groups.setdefault((c["task"], c["method"]), {})[_pull(c)] = val_score(lg)
    order = method_order({m for _, m in groups})
    rows = []
    for (task, method) in sorted(groups, key=lambda k: (k[0], order.index(k[1]))):
        scores = groups[(task, method)]
        chosen = select_lr_from_scores(scores)      # the same rule as the lr choice: best, ties to the smaller value
        rows += [{"task": task, "method": method, "a": a, "val": v if math.isfinite(v) else None,
                  "chosen": a == chosen} for a, v in sorted(scores.items())]
    return pd.DataFrame(rows)


def chosen_pulls(sweep_dir) -> dict[tuple[str, str], float]:
    """{(task, method): the a the rule picks} from the sweep's logs."""
    t = choice(sweep_dir)
    return {} if t.empty else {(r.task, r.method): r.a for r in t[t["chosen"]].itertuples()}


def effect(final_dir, chosen: dict[tuple[str, str], float], step0_adapters: dict | None = None) -> "pd.DataFrame":
    """Per (task, method): dev metric mean at a = 0 and with the pull (``chosen`` a, or
    :data:`SEED_PROJECT_A` where the rule chose 0), their paired difference over seeds (pull − none) with its
    95 % interval, n, and the curvature shift: 2a against the adapter block's step-0 λmax (``step0_adapters``:
    {(task, method): λmax})."""
    import pandas as pd
    rows = []
    for (task, method), a_chosen in chosen.items():
        a = a_chosen or SEED_PROJECT_A
        per_a: dict[float, dict[int, float]] = {}
        for lg in load_logs(final_dir, task=task):
            c = lg["config"]
            if c["method"] == method:
                per_a.setdefault(_pull(c), {})[c["seed"]] = float(lg["final"][lg["task"]["main_metric"]])
        p = paired(per_a.get(0.0, {}), per_a.get(a, {}))
        lam = (step0_adapters or {}).get((task, method))
        rows.append({"task": task, "method": method, "a chosen": a_chosen, "a": a,
                     "dev (a = 0)": p["mean_a"], "dev (pull)": p["mean_b"], "diff": p["diff"], "lo": p["lo"],
                     "hi": p["hi"], "n": p["n"], "adapter λmax (step 0)": lam, "2a": 2 * a,
                     "2a / λmax": (2 * a / lam) if lam else None})
    return pd.DataFrame(rows)
