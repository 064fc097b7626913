"""Protocol v2's results from its logs: the lr each method was given, the final table, the paired
comparisons (95 % intervals, Holm-adjusted p) and the seed project's claim.  Pure functions of
``logs/v2_sweep`` and ``logs/v2``; figures in :mod:`harness.plots.protocol`, words in
:mod:`harness.prose.protocol`.

The page's comparisons (:func:`comparisons`) fall into three of the rulebook's families
(:data:`harness.analysis.stats.FAMILIES`), each with its own Holm correction:

* ``init_vs_random``: every init against ``random``, each at its own selected learning rate, on the tasks
  the model learns.  The family also holds the newer init families of grid ``inits`` (when its logs are
  there), so it is the same family, with the same adjusted p, as on the init chapter;
* ``full_vs_random``: full fine-tuning against ``random``;
* ``seed_claim``: ``svd_seed`` against ``lora_fa`` at each one's own rate (the seed project's comparison),
  and the seed's claim at small learning rates on MRPC (``svd_seed`` against ``lora_fa`` and ``random`` at
  lr 1e-4 and 3e-4), for the final dev metric and for the dev metric after one epoch.

A task on which no adapter ends above the majority class on dev (RTE on MiniLM) keeps its rows, marked
"not learned", outside every family.
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from ..protocol import selected_lrs, selection_table  # noqa: F401
from ..tasks import order_tasks, task_label
from .runs import METHOD_ORDER, load_logs, method_order  # noqa: F401  (the v2 pages read them here)
from .stats import format_mean_std, mean_sd, paired, with_holm

CLAIM_LRS = (1e-4, 3e-4)


def early_metric(log: dict, epoch: float = 1.0):
    """The dev main metric at the first evaluation at or after ``epoch`` (None if none)."""
    m = log["task"]["main_metric"]
    for e in log["history"]["evals"]:
        if e["epoch"] >= epoch - 1e-9:
            return e[m]
    return None


class Runs:
    """The ok logs of one grid (or several, e.g. ``v2`` and ``inits``) indexed by (task, method, lr) → {seed: log}."""

    def __init__(self, *log_dirs):
        self.logs = [lg for d in log_dirs for lg in load_logs(d)]
        self.cells: dict[tuple, dict[int, dict]] = defaultdict(dict)
        for lg in self.logs:
            c = lg["config"]
            self.cells[(c["task"], c["method"], c["lr"])][c["seed"]] = lg

    def values(self, task, method, lr, quantity="final") -> dict[int, float]:
        out = {}
        for seed, lg in self.cells.get((task, method, lr), {}).items():
            v = lg["final"][lg["task"]["main_metric"]] if quantity == "final" else early_metric(lg)
            if v is not None:
                out[seed] = v
        return out

    def tasks(self):
        return order_tasks({t for t, _, _ in self.cells})

    def n_dev(self, task) -> int:
        return next(lg["data"]["n_dev"] for lg in self.logs if lg["config"]["task"] == task)

    def majority(self, task) -> float:
        lg = next(lg for lg in self.logs if lg["config"]["task"] == task)
        return lg["task"]["majority_baseline"].get(lg["task"]["main_metric"], 0.0)


def final_table(log_dir, sweep_dir) -> "pd.DataFrame":
    """One row per method: per task the selected lr and the final dev metric, mean ± std (n)."""
    import pandas as pd
    runs, lrs = Runs(log_dir), selected_lrs(load_logs(sweep_dir))
    rows = []
    for method in method_order({m for _, m in lrs}):
        row = {"method": method}
        for task in runs.tasks():
            lr = lrs.get((task, method))
            row[f"{task_label(task)} lr"] = f"{lr:g}" if lr else "–"
            row[f"{task_label(task)} ({_metric(runs, task)})"] = (
                format_mean_std(*mean_sd(runs.values(task, method, lr).values())) if lr else "–")
        rows.append(row)
    rows.append({"method": "majority class", **{f"{task_label(t)} ({_metric(runs, t)})": f"{runs.majority(t):.3f}"
                                                for t in runs.tasks()}})
    return pd.DataFrame(rows).fillna("")


def _metric(runs: Runs, task: str) -> str:
    return next(lg["task"]["main_metric"] for lg in runs.logs if lg["config"]["task"] == task)


def unlearned_tasks(runs: Runs, lrs: dict) -> set[str]:
    """Tasks on which no adapter method (full fine-tuning aside) ends, on mean over seeds at its selected lr,
    above the majority class on dev: reported, but outside the rulebook's families."""
    out = set()
    for task in runs.tasks():
        means = [sum(v.values()) / len(v) for (t, m), lr in lrs.items() if t == task and m != "full"
                 for v in [runs.values(task, m, lr)] if v]
        if means and max(means) <= runs.majority(task):
            out.add(task)
    return out


def _inits_dirs(log_dir, sweep_dir) -> tuple:
    """The newer init families' grid beside ``log_dir`` (``inits`` / ``inits_sweep``), or () when absent."""
    main, sweep = Path(log_dir).parent / "inits", Path(sweep_dir).parent / "inits_sweep"
    return (main, sweep) if main.is_dir() and sweep.is_dir() else ()


def comparisons(log_dir, sweep_dir, inits_dirs=None) -> list[dict]:
    """The page's paired comparisons (b − a), with 95 % intervals and the rulebook's adjusted p and verdict,
    family by family (see the module docstring).  ``inits_dirs``: (main, sweep) of the newer init families
    (default: ``inits`` / ``inits_sweep`` beside ``log_dir`` when they exist; () for none)."""
    extra = _inits_dirs(log_dir, sweep_dir) if inits_dirs is None else tuple(inits_dirs)
    runs = Runs(log_dir, *extra[:1])
    lrs = {**selected_lrs(load_logs(sweep_dir)), **(selected_lrs(load_logs(extra[1])) if extra else {})}
    unlearned = unlearned_tasks(runs, lrs)
    families: dict[str, list] = defaultdict(list)

    def add(family, task, a, lr_a, b, lr_b, quantity, group):
        c = paired(runs.values(task, a, lr_a, quantity), runs.values(task, b, lr_b, quantity))
        if c["n"] >= 2:
            families[family].append({**c, "task": task, "a": a, "b": b, "lr_a": lr_a, "lr_b": lr_b,
                                     "quantity": quantity, "group": group, "examples": c["diff"] * runs.n_dev(task),
                                     "metric": _metric(runs, task)})

    for task in runs.tasks():
        for b in method_order({m for t, m in lrs if t == task}):
            if b != "random" and (task, "random") in lrs:
                add("full_vs_random" if b == "full" else "init_vs_random", task, "random", lrs[task, "random"],
                    b, lrs[task, b], "final", "each at its own lr")
        if (task, "svd_seed") in lrs and (task, "lora_fa") in lrs:
            add("seed_claim", task, "lora_fa", lrs[task, "lora_fa"], "svd_seed", lrs[task, "svd_seed"], "final",
                "each at its own lr")
    for lr in CLAIM_LRS:
        for a in ("lora_fa", "random"):
            for q in ("final", "epoch1"):
                add("seed_claim", "mrpc", a, lr, "svd_seed", lr, q, f"seed claim, lr {lr:g}")
    return [c for name in ("init_vs_random", "full_vs_random", "seed_claim")
            for c in with_holm(families[name], name, unlearned)]


def round1_inits(comps: list[dict]) -> list[dict]:
    """The comparisons of ``comps`` among grid v2's methods (the newer init families left out)."""
    return [c for c in comps if c["b"] in METHOD_ORDER and c["a"] in METHOD_ORDER]


def step0_change(model_id: str = "bundled:all-MiniLM-L6-v2", rank: int = 8, alpha: float = 1.0) -> dict:
    """How far ``svd_seed`` moves each adapted q/v weight before training: ‖s·B₀A₀‖_F / ‖W‖_F (mean, min, max
    over layers), and its spectral size ‖s·B₀A₀‖₂ / ‖W‖₂, with the v2 preset's s = alpha/r."""
    import torch
    import lora
    from ..models import load_model_and_tokenizer
    model, _ = load_model_and_tokenizer(model_id, 2, 0)
    rel_f, rel_2 = [], []
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear) and name.rsplit(".", 1)[-1] in ("query", "value"):
            W = mod.weight.detach().double()
            B, A = lora.core.svd_seed_factors(W, rank)
            D = (alpha / rank) * B @ A
            rel_f.append(float(D.norm() / W.norm()))
            rel_2.append(float(torch.linalg.matrix_norm(D, 2) / torch.linalg.matrix_norm(W, 2)))
    return {"frobenius_mean": sum(rel_f) / len(rel_f), "frobenius_min": min(rel_f), "frobenius_max": max(rel_f),
            "spectral_mean": sum(rel_2) / len(rel_2), "layers": len(rel_f)}


def grid_wall_time(log_dir) -> dict:
    """Run-time summary of a grid's logs: runs, summed wall time, median per task, hardware."""
    import statistics
    logs = load_logs(Path(log_dir))
    per_task = defaultdict(list)
    for lg in logs:
        per_task[lg["config"]["task"]].append(lg["wall_time_s"])
    env = logs[0]["env"] if logs else {}
    from datetime import datetime
    ends = [datetime.strptime(lg["finished_at"], "%Y-%m-%dT%H:%M:%S%z").timestamp() for lg in logs]
    span = (max(ends) - min(e - lg["wall_time_s"] for e, lg in zip(ends, logs))) / 60 if logs else 0.0
    return {"runs": len(logs), "hours": sum(lg["wall_time_s"] for lg in logs) / 3600, "span_minutes": span,
            "median_s": {t: statistics.median(v) for t, v in per_task.items()},
            "device": env.get("gpu") or env.get("cpu"), "torch": env.get("torch")}


def comparison(comps: list[dict], task: str, a: str, b: str, quantity: str = "final", lr=None) -> dict:
    """One comparison of the family by its names (and lr for the seed-claim block)."""
    for c in comps:
        if (c["task"], c["a"], c["b"], c["quantity"]) == (task, a, b, quantity) and (lr is None or c["lr_a"] == lr):
            if lr is not None or c["group"] == "each at its own lr":
                return c
    raise KeyError(f"no comparison {task} {b} − {a} ({quantity}, lr {lr})")

