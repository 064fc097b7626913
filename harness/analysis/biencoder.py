"""The bi-encoder study from its logs: zero-shot → final per init, how far each init moves the
embedding space, retrieval, and the paired comparisons.  Pure functions of ``logs/bi_sweep`` (the lr each
method was given, :mod:`harness.protocol`'s rule) and ``logs/bi`` (seeds at those rates); figures in
:mod:`harness.plots.biencoder`, words in :mod:`harness.prose.biencoder`.

Quantities, per run (``harness/biencoder.py`` logs them):

* **zero-shot**: the dev metrics of the first evaluation (step 0), i.e. the model as the init leaves it before
  any update.  For the function-preserving inits (``random``: B₀ = 0; residual inits such as ``svd``: the base
  holds W − s·B₀A₀) and for ``full`` this is the pretrained model; ``svd_naive`` and ``svd_seed`` add s·B₀A₀
  on top of W, so their step-0 model is already a different one.
* **pretrained** (per task): the step-0 main metric of the ``full`` runs (the untouched model), else of
  ``random``'s.
* **gain** = final − pretrained (main dev metric), per seed; its 95 % t interval over seeds.
* **embedding shift** (logged): the mean cosine between a dev sentence's unit embedding at step 0 and after
  training (1 = unmoved).  For the inits that change the model at step 0 it measures from *their* step-0
  model; ``logs/bi_drift.json`` (:func:`harness.biencoder.drift_from_pretrained`) adds, for those runs, the
  mean cosine to the *pretrained* embeddings at step 0 (``step0_cos``: the init alone) and after training
  (``final_cos``).  **Cosine to pretrained** (``pre0``, ``pre1``): those, and for every other method 1 at step 0
  and the logged shift after training (their step-0 model is the pretrained one).

The page's family of comparisons (Holm over all of it): per task, each method's final main metric against
``random``'s (paired by seed, each at its own selected lr), and each method's gain over the pretrained model.
"""
from __future__ import annotations

import math
from collections import defaultdict

import lora

from ..tasks import order_tasks
from ..protocol import selected_lrs
from .protocol_v2 import Runs, method_order
from .runs import load_logs
from .stats import mean_sd, paired, t_interval, with_holm

RETRIEVAL = ("recall@1", "recall@10", "mrr@10")
LABELS = {"roc_auc": "ROC-AUC", "spearman": "Spearman", "pearson": "Pearson", "recall@1": "recall@1",
          "recall@10": "recall@10", "mrr@10": "MRR@10"}


def zero_shot(log: dict) -> dict:
    """The step-0 evaluation of a run (dev metrics; ``val`` under its key)."""
    first = log["history"]["evals"][0]
    if first["step"] != 0:
        raise ValueError(f"{log['run_id']}: the first evaluation is at step {first['step']}, not 0")
    return first


STEP0_CHANGING = lora.init_names(changes_model=True)     # inits whose step-0 model is not the pretrained one


class BiStudy:
    """The final grid's ok logs at each method's selected lr: ``cells[(task, method)] = {seed: log}``;
    ``drift``: the runs of ``drift_path`` (``logs/bi_drift.json``) by run id, {} when it is absent."""

    def __init__(self, log_dir, sweep_dir, drift_path=None):
        import json
        from pathlib import Path
        self.drift = json.loads(Path(drift_path).read_text())["runs"] if drift_path and Path(drift_path).is_file() else {}
        self.runs, self.lrs = Runs(log_dir), selected_lrs(load_logs(sweep_dir))
        self.cells: dict[tuple[str, str], dict[int, dict]] = defaultdict(dict)
        for (task, method), lr in self.lrs.items():
            for seed, lg in self.runs.cells.get((task, method, lr), {}).items():
                self.cells[task, method][seed] = lg

    def tasks(self) -> list[str]:
        return order_tasks({t for t, _ in self.cells})

    def methods(self, task: str) -> list[str]:
        return method_order({m for t, m in self.cells if t == task})

    def metric(self, task: str) -> str:
        return next(iter(self.cells[task, self.methods(task)[0]].values()))["task"]["main_metric"]

    def values(self, task: str, method: str, what: str = "final", metric: str | None = None) -> dict[int, float]:
        """{seed: value}; ``what``: final, zero (step 0), shift (logged embedding shift), pre0 / pre1 (cosine to
        the pretrained embeddings at step 0 / after training; None where unknown), wall (seconds)."""
        metric = metric or self.metric(task)
        out = {}
        for seed, lg in self.cells.get((task, method), {}).items():
            v = {"final": lambda: lg["final"].get(metric), "zero": lambda: zero_shot(lg).get(metric),
                 "shift": lambda: lg.get("embedding_shift"), "wall": lambda: lg["wall_time_s"],
                 "pre0": lambda: self._to_pretrained(lg, 0), "pre1": lambda: self._to_pretrained(lg, 1)}[what]()
            if v is not None and math.isfinite(v):
                out[seed] = float(v)
        return out

    def _to_pretrained(self, lg: dict, when: int):
        d = self.drift.get(lg["run_id"])
        if d is not None:
            return d["step0_cos" if when == 0 else "final_cos"]
        if lg["config"]["method"] in STEP0_CHANGING:
            return None
        return 1.0 if when == 0 else lg.get("embedding_shift")

    def pretrained(self, task: str, metric: str | None = None) -> float:
        """The untouched model's dev metric: step 0 of the full (else random) runs (identical over seeds)."""
        for ref in ("full", "random"):
            v = self.values(task, ref, "zero", metric)
            if v:
                return float(sum(v.values()) / len(v))
        raise ValueError(f"no full or random runs for {task}: the pretrained model's metric is unknown")

    def logs(self) -> list[dict]:
        return [lg for cell in self.cells.values() for lg in cell.values()]


def outcome_rows(study: BiStudy) -> list[dict]:
    """One row per (task, method): lr, seeds, the main metric at step 0 and at the end (mean, sd), the gain
    over the pretrained model with its 95 % t interval, the embedding shift, retrieval (bi-mrpc), wall time."""
    rows = []
    for task in study.tasks():
        metric, z = study.metric(task), study.pretrained(task)
        for method in study.methods(task):
            final, zero = study.values(task, method), study.values(task, method, "zero")
            fm, fs, n = mean_sd(final.values())
            gm, gs, _ = mean_sd(v - z for v in final.values())
            lo, hi = t_interval(gm, gs, n)
            sm, ss, _ = mean_sd(study.values(task, method, "shift").values())
            p0 = mean_sd(study.values(task, method, "pre0").values())[0]
            p1, p1s, _ = mean_sd(study.values(task, method, "pre1").values())
            wall = sorted(study.values(task, method, "wall").values())
            row = dict(task=task, method=method, metric=metric, lr=study.lrs[task, method], n=n,
                       pretrained=z, zero=mean_sd(zero.values())[0], final=fm, final_sd=fs,
                       gain=gm, gain_lo=lo, gain_hi=hi, shift=sm, shift_sd=ss, pre0=p0, pre1=p1, pre1_sd=p1s,
                       wall_s=wall[len(wall) // 2] if wall else math.nan)
            if any(m in next(iter(study.cells[task, method].values()))["final"] for m in RETRIEVAL):
                for m in RETRIEVAL:
                    row[f"zero_{m}"] = mean_sd(study.values(task, method, "zero", m).values())[0]
                    row[f"final_{m}"], row[f"final_{m}_sd"], _ = mean_sd(study.values(task, method, "final", m).values())
            rows.append(row)
    return rows


def outcome_table(study: BiStudy, task: str) -> "pd.DataFrame":
    """The page's table for one task, formatted: zero-shot → final (mean ± sd), gain [95 % CI], shift."""
    import pandas as pd
    out = []
    for r in (r for r in outcome_rows(study) if r["task"] == task):
        label = LABELS.get(r["metric"], r["metric"])
        row = {"method": r["method"], "lr": f"{r['lr']:g}", "seeds": r["n"],
               f"{label} step 0": f"{r['zero']:.3f}",
               f"{label} final": f"{r['final']:.3f} ± {r['final_sd']:.3f}" if r["n"] > 1 else f"{r['final']:.3f}",
               "gain over pretrained [95 % CI]": f"{r['gain']:+.3f} [{r['gain_lo']:+.3f}, {r['gain_hi']:+.3f}]",
               "cosine to step 0": f"{r['shift']:.3f} ± {r['shift_sd']:.3f}",
               "cosine to pretrained: step 0 → final": "n/a" if math.isnan(r["pre1"]) else
               f"{r['pre0']:.3f} → {r['pre1']:.3f} ± {r['pre1_sd']:.3f}"}
        if "final_recall@10" in r:
            row["recall@10 step 0 → final"] = f"{r['zero_recall@10']:.3f} → {r['final_recall@10']:.3f}"
            row["MRR@10 step 0 → final"] = f"{r['zero_mrr@10']:.3f} → {r['final_mrr@10']:.3f}"
        row["median run s"] = f"{r['wall_s']:.0f}"
        out.append(row)
    return pd.DataFrame(out)


def comparisons(study: BiStudy) -> list[dict]:
    """The page's family (Holm over all of it): each method against random (final main metric, paired by
    seed) and each method's gain over the pretrained model (one-sample, as a pairing with a constant)."""
    family = []
    for task in study.tasks():
        metric, z = study.metric(task), study.pretrained(task)
        ref = study.values(task, "random")
        for method in study.methods(task):
            final = study.values(task, method)
            c = paired({s: z for s in final}, final)
            if c["n"] >= 2:
                family.append({**c, "task": task, "metric": metric, "a": "pretrained", "b": method,
                               "group": "gain over pretrained"})
            if method != "random" and ref:
                c = paired(ref, final)
                if c["n"] >= 2:
                    family.append({**c, "task": task, "metric": metric, "a": "random", "b": method,
                                   "group": "against random"})
    return with_holm(family)


def comparison(comps: list[dict], task: str, a: str, b: str) -> dict | None:
    return next((c for c in comps if (c["task"], c["a"], c["b"]) == (task, a, b)), None)


def curves(study: BiStudy, task: str, method: str, metric: str | None = None) -> tuple[list[int], list[float]]:
    """The dev metric against step, mean over the seeds that reached each evaluation."""
    metric = metric or study.metric(task)
    per_step = defaultdict(list)
    for lg in study.cells.get((task, method), {}).values():
        for e in lg["history"]["evals"]:
            if e.get(metric) is not None:
                per_step[e["step"]].append(e[metric])
    steps = sorted(per_step)
    return steps, [sum(per_step[s]) / len(per_step[s]) for s in steps]


def retrieval_check(study: BiStudy) -> dict:
    """HNSW against exact search over every evaluation of every retrieval run: the smallest overlap of the
    top-10 lists, and the largest |recall@k − exact_recall@k| and |MRR@10 − exact|."""
    overlap, gap, n = math.inf, 0.0, 0
    for lg in study.logs():
        for e in lg["history"]["evals"]:
            if "ann_overlap@10" not in e:
                continue
            n += 1
            overlap = min(overlap, e["ann_overlap@10"])
            gap = max(gap, *(abs(e[m] - e[f"exact_{m}"]) for m in RETRIEVAL))
    index = next((lg["task"].get("retrieval_index") for lg in study.logs() if lg["task"].get("retrieval_index")), None)
    return {"evaluations": n, "min_overlap": overlap if n else math.nan, "max_gap": gap if n else math.nan,
            "index": index}
