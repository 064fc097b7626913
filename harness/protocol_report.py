"""Protocol v2's results from its logs: the lr each method was given, the final table, the paired
comparisons (95 % intervals, Holm-adjusted p) and the seed project's claim.  Pure functions of
``logs/v2_sweep`` and ``logs/v2`` (logs → numbers → figures); the book's pages display them.

The family of comparisons on the findings page (:func:`comparisons`): on every task, each method
against ``random`` at the two methods' own selected learning rates; ``svd_seed`` against ``lora_fa``
(the seed project's comparison); and the seed's claim at small learning rates on MRPC (``svd_seed``
against ``lora_fa`` and ``random`` at lr 1e-4 and 3e-4), for the final dev metric and for the dev
metric after one epoch (convergence).  Holm's procedure runs over the whole family.
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from .logs import read_logs
from .protocol import selection_table
from .stats import format_mean_std, mean_sd, paired, with_holm
from .tasks import order_tasks, task_label

METHOD_ORDER = ("full", "random", "svd", "svd_naive", "svd_seed", "lora_fa", "lora_fa_svd")
CLAIM_LRS = (1e-4, 3e-4)


def method_order(methods) -> list[str]:
    known = [m for m in METHOD_ORDER if m in set(methods)]
    return known + sorted(set(methods) - set(known))


def selected_lrs(sweep_dir) -> dict[tuple[str, str], float]:
    """{(task, method): lr} chosen on validation by the rule of :mod:`harness.protocol`."""
    return {(r["task"], r["method"]): r["selected_lr"] for r in selection_table(read_logs(sweep_dir))}


def early_metric(log: dict, epoch: float = 1.0):
    """The dev main metric at the first evaluation at or after ``epoch`` (None if none)."""
    m = log["task"]["main_metric"]
    for e in log["history"]["evals"]:
        if e["epoch"] >= epoch - 1e-9:
            return e[m]
    return None


class Runs:
    """A grid's ok logs indexed by (task, method, lr) → {seed: log}."""

    def __init__(self, log_dir):
        self.logs = read_logs(log_dir)
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
    runs, lrs = Runs(log_dir), selected_lrs(sweep_dir)
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


def comparisons(log_dir, sweep_dir) -> list[dict]:
    """The page's family of paired comparisons (b − a), with 95 % intervals and Holm-adjusted p."""
    runs, lrs = Runs(log_dir), selected_lrs(sweep_dir)
    family = []

    def add(task, a, lr_a, b, lr_b, quantity, group):
        c = paired(runs.values(task, a, lr_a, quantity), runs.values(task, b, lr_b, quantity))
        if c["n"] >= 2:
            family.append({**c, "task": task, "a": a, "b": b, "lr_a": lr_a, "lr_b": lr_b, "quantity": quantity,
                           "group": group, "examples": c["diff"] * runs.n_dev(task),
                           "metric": _metric(runs, task)})

    for task in runs.tasks():
        for b in method_order({m for t, m in lrs if t == task}):
            if b != "random" and (task, "random") in lrs:
                add(task, "random", lrs[task, "random"], b, lrs[task, b], "final", "each at its own lr")
        if (task, "svd_seed") in lrs and (task, "lora_fa") in lrs:
            add(task, "lora_fa", lrs[task, "lora_fa"], "svd_seed", lrs[task, "svd_seed"], "final", "each at its own lr")
    for lr in CLAIM_LRS:
        for a in ("lora_fa", "random"):
            for q in ("final", "epoch1"):
                add("mrpc", a, lr, "svd_seed", lr, q, f"seed claim, lr {lr:g}")
    return with_holm(family)


def comparison_frame(comps: list[dict]) -> "pd.DataFrame":
    import pandas as pd
    return pd.DataFrame([{
        "task": task_label(c["task"]), "b − a": f"{c['b']} − {c['a']}",
        "lr (a, b)": f"{c['lr_a']:g}, {c['lr_b']:g}", "quantity": c["quantity"],
        "difference [95 % CI]": f"{c['diff']:+.3f} [{c['lo']:+.3f}, {c['hi']:+.3f}]",
        "dev examples": f"{c['examples']:+.1f}", "b ahead": f"{c['wins']}/{c['n']}",
        "p (Holm)": "–" if c["p_holm"] is None else f"{c['p_holm']:.3g}",
        "finding": "yes" if c["finding"] else "no"} for c in comps])


def forest_figure(comps: list[dict], title: str | None = None):
    """Differences b − a with their 95 % t intervals, one row per comparison; findings filled."""
    import matplotlib.pyplot as plt
    comps = list(comps)
    fig, ax = plt.subplots(figsize=(7.5, 0.32 * len(comps) + 1.2))
    for i, c in enumerate(comps):
        y = len(comps) - 1 - i
        color = "C3" if c["diff"] < 0 else "C0"
        ax.plot([c["lo"], c["hi"]], [y, y], color=color, lw=1.6)
        ax.plot(c["diff"], y, "o", color=color, mfc=color if c["finding"] else "white", ms=6)
    ax.axvline(0, color="0.4", lw=0.8)
    ax.set_yticks(range(len(comps)))
    ax.set_yticklabels([f"{task_label(c['task'])}: {c['b']} − {c['a']}"
                        + ("" if c["group"] == "each at its own lr" else f" (lr {c['lr_a']:g}")
                        + ("" if c["group"] == "each at its own lr" else (", ep. 1)" if c["quantity"] == "epoch1" else ")"))
                        for c in reversed(comps)], fontsize=8)
    ax.set_xlabel("b − a: paired difference of the final dev metric (95 % t interval)")
    if title:
        ax.set_title(title, fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig


def sweep_figure(sweep_dir):
    """Final validation metric against lr, one panel per task, a line per method, the chosen lr starred."""
    import matplotlib.pyplot as plt
    table = selection_table(read_logs(sweep_dir))
    tasks = order_tasks({r["task"] for r in table})
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.6), squeeze=False)
    colors = {m: f"C{i}" for i, m in enumerate(METHOD_ORDER)}
    for ax, task in zip(axes[0], tasks):
        for r in sorted((r for r in table if r["task"] == task), key=lambda r: method_order([r["method"]])):
            pts = sorted((float(k), v) for k, v in r["scores"].items())
            xs, ys = [p[0] for p in pts], [max(p[1], -0.05) for p in pts]
            ax.plot(xs, ys, "-o", ms=3, lw=1.2, color=colors.get(r["method"]), label=r["method"])
            ax.plot(r["selected_lr"], r["val_score"], "*", ms=13, color=colors.get(r["method"]), mec="k", mew=0.5)
        ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.set_title(task_label(task))
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("final validation metric")
    axes[0][-1].legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    return fig


def step0_change(model_id: str = "bundled:all-MiniLM-L6-v2", rank: int = 8, alpha: float = 1.0) -> dict:
    """How far ``svd_seed`` moves each adapted q/v weight before training: ‖s·B₀A₀‖_F / ‖W‖_F (mean, min, max
    over layers), and its spectral size ‖s·B₀A₀‖₂ / ‖W‖₂, with the v2 preset's s = alpha/r."""
    import torch
    import lora
    from .models import load_model_and_tokenizer
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
    logs = read_logs(Path(log_dir))
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


def findings_markdown(comps: list[dict]) -> str:
    """The comparisons that are findings (Holm-adjusted p < 0.05), one bullet each, or a sentence saying none is."""
    hits = [c for c in comps if c["finding"]]
    if not hits:
        return "No comparison of the family is a finding (every Holm-adjusted p ≥ 0.05)."
    lines = []
    for c in hits:
        where = "each at its own lr" if c["group"] == "each at its own lr" else f"both at lr {c['lr_a']:g}"
        lines.append(f"- {task_label(c['task'])}, {c['b']} − {c['a']} ({where}, {c['quantity']}): "
                     f"{c['diff']:+.3f} [{c['lo']:+.3f}, {c['hi']:+.3f}], {c['examples']:+.0f} dev examples, "
                     f"{c['b']} ahead in {c['wins']}/{c['n']} seeds, Holm-adjusted p = {c['p_holm']:.3g}")
    return "\n".join(lines)


def comparison(comps: list[dict], task: str, a: str, b: str, quantity: str = "final", lr=None) -> dict:
    """One comparison of the family by its names (and lr for the seed-claim block)."""
    for c in comps:
        if (c["task"], c["a"], c["b"], c["quantity"]) == (task, a, b, quantity) and (lr is None or c["lr_a"] == lr):
            if lr is not None or c["group"] == "each at its own lr":
                return c
    raise KeyError(f"no comparison {task} {b} − {a} ({quantity}, lr {lr})")


V2_BEGIN = "<!-- v2:begin (generated by `python -m harness readme` from logs/v2; do not edit by hand) -->"
V2_END = "<!-- v2:end -->"


def readme_block(log_dir, sweep_dir) -> str:
    """The README's protocol-v2 result: the final table and the findings, from the logs."""
    table = final_table(log_dir, sweep_dir)
    cols = list(table.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in table.itertuples(index=False)]
    comps = comparisons(log_dir, sweep_dir)
    wall, wall_sweep = grid_wall_time(log_dir), grid_wall_time(sweep_dir)
    return "\n".join([
        f"Protocol v2 (`configs/v2_sweep.yaml` → `configs/v2.yaml`): each method at the learning rate selected on a "
        f"validation split held out of train, {max(c['n'] for c in comps)} seeds, final dev metric (mean ± std (n)); "
        f"{wall_sweep['runs']} sweep + {wall['runs']} final runs, {wall['hours'] + wall_sweep['hours']:.2f} h of run "
        f"time summed over runs, {wall['span_minutes'] + wall_sweep['span_minutes']:.0f} minutes of wall-clock time on one "
        f"{wall['device']} (several runs at once).", "", *lines, "",
        f"Findings (paired by seed, 95 % t interval, Holm-adjusted p < 0.05 over the {len(comps)} comparisons of the "
        "book's chapter *Each init at its own learning rate*):", "", findings_markdown(comps)])


def update_readme_block(readme, log_dir, sweep_dir) -> bool:
    """Replace the text between :data:`V2_BEGIN` and :data:`V2_END`; atomic; whether it changed."""
    from .book import replace_block
    return bool(replace_block(readme, V2_BEGIN, V2_END, readme_block(log_dir, sweep_dir)))
