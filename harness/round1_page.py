"""The round-1 chapter's numbers, tables and forest plot (``book/round1.md``): one page's glue between
:mod:`harness.analysis`, :mod:`harness.prose` and :mod:`harness.plots`, kept out of :mod:`harness.book` (the
display helpers every page uses)."""
from __future__ import annotations

from pathlib import Path

from .analysis.benchmark import load_benchmark, trainable_parts
from .book import log_file
from .tasks import order_tasks, task_label

TASKS_ALL = ("mrpc", "rte", "cola")


def _interval(c: dict) -> tuple[float, float]:
    """95 % t interval of a :func:`harness.analysis.findings.paired` difference (:func:`harness.analysis.stats.t_interval`)."""
    from .analysis.stats import t_interval

    return t_interval(c["diff"], c["sd"], c["n"])


def _diff_ci(c: dict, digits: int = 3) -> str:
    """"+0.012 [−0.004, +0.028]": a paired difference with its 95 % interval ("n/a" without shared seeds)."""
    import numpy as np

    if c is None or not c["n"] or not np.isfinite(c["diff"]):
        return "n/a"
    d = c["diff"] if round(c["diff"], digits) != 0 else 0.0
    lo, hi = _interval(c)
    return f"{d:+.{digits}f}" + (f" [{lo:+.{digits}f}, {hi:+.{digits}f}]" if np.isfinite(lo) else "")


def round1_comparisons(log_dir, quantities=("final",)) -> list[dict]:
    """The round-1 paired comparisons (:data:`harness.analysis.findings.COMPARISONS`) of ``log_dir``, restricted to
    ``quantities``, each a :func:`harness.analysis.findings.paired` dict plus ``lo``/``hi`` (95 % t interval),
    ``finding`` (:func:`harness.analysis.findings.is_finding`) and ``group``, in task and question order."""
    from .analysis.findings import COMPARISONS, compare, has_methods, is_finding, points_table

    runs = points_table(log_dir)
    out = []
    if len(runs) == 0:
        return out
    for task in order_tasks(runs["task"]):
        for a, b, qs in COMPARISONS:
            for q in qs:
                if q in quantities and has_methods(runs, task, a, b):
                    c = compare(runs, task, a, b, q)
                    if c["n"]:
                        lo, hi = _interval(c)
                        out.append({**c, "lo": lo, "hi": hi, "finding": is_finding(c), "group": "each at its own lr"})
    return out


def round1_forest(log_dir) -> None:
    """Display (as the cell's single output) the forest plot of the round-1 final-metric comparisons:
    b − a with 95 % intervals, findings filled; a one-line note when no comparison has two seeds."""
    import numpy as np
    from IPython.display import Markdown, display

    from .plots.protocol import forest_figure
    from .plots.style import show

    comps = [c for c in round1_comparisons(log_dir) if np.isfinite(c["lo"])]
    if not comps:
        display(Markdown("*(fewer than two shared seeds per comparison: no intervals to draw yet)*"))
        return
    show(forest_figure(comps))


# How the pages name the quantities of harness.analysis.findings (defined on the findings page before use).
QUANTITY_NAMES = {"final": "final", "step0": "before training", "first": "first evaluation", "epoch1": "after epoch 1",
                  "curve": "curve mean", "loss_epoch1": "epoch-1 loss"}


def round1_comparison_frame(log_dir, quantities=("final",), pairs=None):
    """A short table of :func:`round1_comparisons` (only the (a, b) ``pairs`` when given): task, b − a, the
    quantity (left out when there is one), the paired difference with its 95 % interval, seeds where b is
    ahead, p, and the verdict."""
    import pandas as pd

    from .prose.findings import _p, verdict

    comps = [c for c in round1_comparisons(log_dir, quantities) if pairs is None or (c["a"], c["b"]) in pairs]
    t = pd.DataFrame([{"task": task_label(c["task"]), "b − a": f"{c['b']} − {c['a']}",
                       "quantity": QUANTITY_NAMES.get(c["quantity"], c["quantity"]),
                       "difference [95 % interval]": _diff_ci(c), "b ahead": f"{c['wins']}/{c['n']}",
                       "p": _p(c["p"]), "p (Holm)": _p(c.get("p_holm")), "verdict": _short_verdict(c, verdict)}
                      for c in comps])
    return t.drop(columns="quantity") if len(quantities) == 1 and len(t) else t


def _short_verdict(c: dict, verdict) -> str:
    """The table's verdict by the rulebook: "lora_fa behind (finding)", "level", "not determined at n = 3", or
    :func:`harness.prose.findings.verdict`'s words when there are too few seeds for a conclusion."""
    from .analysis.findings import b_ahead, is_finding

    if c["n"] < 3:
        return verdict(c)
    if is_finding(c):
        return f"{c['b']} {'ahead' if b_ahead(c) else 'behind'} (finding)"
    return "level" if c.get("level") else f"not determined at n = {c['n']}"


def trainable_table(log_dir, benchmark=None):
    """(table, caption): where the trainable-parameter counts the book quotes come from: the runs of
    ``log_dir`` (head = classifier + pooler) against the speed benchmark (head = classifier only), each logged
    count beside the sum of its parts (:func:`trainable_parts`)."""
    import pandas as pd

    from .analysis.runs import runs_table

    parts = trainable_parts()
    runs = runs_table(log_dir)
    logged = runs.groupby("method")["trainable"].median() if len(runs) else {}
    rows = []
    for method, adapters in (("random", "lora"), ("lora_fa", "lora_fa")):
        if method in getattr(logged, "index", []):
            rows.append({"what": f"runs of {method} (logs/{Path(log_dir).name})", "adapters": parts[adapters],
                         "pooler": parts["pooler"], "classifier": parts["classifier"],
                         "sum": parts[adapters] + parts["pooler"] + parts["classifier"],
                         "logged": int(logged[method])})
    bj = load_benchmark(Path(benchmark) if benchmark else log_file("benchmark_lora.json"))
    if bj:
        b = bj["step_time_ms"]
        rows.append({"what": "speed benchmark, ours_lora", "adapters": parts["lora"], "pooler": 0,
                     "classifier": parts["classifier"], "sum": parts["lora"] + parts["classifier"],
                     "logged": int(b["ours_lora"]["trainable_params"])})
    t = pd.DataFrame(rows)
    return t, (f"Trainable parameters by part (MiniLM: hidden size {parts['hidden']}, {parts['layers']} layers, "
               f"rank-8 adapters on the {parts['adapters']} query and value matrices). The study's runs train the "
               "pooler with the classifier (config `head: [classifier, pooler]`), the speed benchmark the classifier "
               "only. 'logged': the count recorded in the logs, equal to 'sum' when the breakdown is right.")


def round1_numbers(log_dir, benchmark=None, spectra_csv=None, subspaces_csv=None) -> dict:
    """Every computed number and verdict of the round-1 findings page, as strings keyed for ``glue``
    (``r1_...``); a comparison the grid cannot make reads "n/a", so the page's fixed prose always resolves.

    Keys: ``r1_runs``, ``r1_seeds``, ``r1_chance_tasks``; per task t ∈ {mrpc, rte, cola} and comparison
    ``<b>_<a>`` of :data:`harness.analysis.findings.COMPARISONS`: ``r1_<b>_<a>_<q>_<t>`` (difference [95 % interval])
    and ``..._v_<t>`` (the short verdict, final only); the lr block ``r1_lr_<i>`` (i = 0, 1, 2);
    ``r1_n_findings`` / ``r1_n_comparisons`` (final), ``r1_speed_findings`` / ``r1_speed_n`` (svd − random early
    progress); parameter counts; benchmark memory; spectra and subspace means."""
    from .analysis.findings import at_chance, points_table

    out: dict = {}
    runs = points_table(log_dir)
    n = len(runs)
    out["r1_runs"] = f"{n}"
    out["r1_grid"] = f"`logs/{Path(log_dir).name}`"
    if n:
        seeds = runs.groupby(["task", "method"])["seed"].nunique()
        out["r1_seeds"] = f"{seeds.min()}" if seeds.min() == seeds.max() else f"{seeds.min()}–{seeds.max()}"
        chance = at_chance(runs)
    else:
        out["r1_seeds"], chance = "0", {}
    at = [task_label(t) for t, c in chance.items() if c]
    out["r1_chance_tasks"] = (", ".join(at) if at else "none")

    _comparison_numbers(out, runs, n, chance)
    _parameter_numbers(out, runs, n, benchmark)
    learned_tasks = [t for t in TASKS_ALL if t in chance and not chance[t]] or [t for t in TASKS_ALL if t in chance]
    out["r1_learned_tasks"] = ", ".join(task_label(t) for t in learned_tasks) or "none"
    _geometry_numbers(out, runs, learned_tasks, spectra_csv, subspaces_csv)
    return out


def _comparison_numbers(out: dict, runs, n: int, chance: dict) -> None:
    """The round-1 comparisons (difference, interval, verdict, means), the findings, the early-progress
    comparisons and the lr block, into ``out``."""
    from .analysis.findings import COMPARISONS, SPEED, compare, has_methods, is_finding, lr_block
    from .prose.findings import _ms, _short
    tasks_all = TASKS_ALL
    comps = []
    for a, b, qs in COMPARISONS:
        for q in qs:
            for t in tasks_all:
                key = f"r1_{b}_{a}_{q}_{t}"
                c = compare(runs, t, a, b, q) if n and has_methods(runs, t, a, b) else None
                out[key] = _diff_ci(c)
                if q == "final":
                    out[f"r1_{b}_{a}_v_{t}"] = _short(c) if c else "not run"
                    out[f"r1_{b}_{a}_means_{t}"] = (f"{_ms(c['mean_b'], c['std_b'])} against {_ms(c['mean_a'], c['std_a'])}"
                                                    if c else "n/a")
                    if c and c["n"]:
                        comps.append(c)
                if q == "step0" and c is not None:
                    out[f"r1_{b}_step0_{t}"] = _ms(c["mean_b"], c["std_b"])
                    out[f"r1_{a}_step0_{t}"] = _ms(c["mean_a"], c["std_a"])
    for t in tasks_all:
        out.setdefault(f"r1_svd_naive_step0_{t}", "n/a")
        out.setdefault(f"r1_svd_step0_{t}", "n/a")
    out["r1_n_comparisons"] = f"{len(comps)}"
    found = [c for c in comps if is_finding(c)]
    out["r1_n_findings"] = f"{len(found)}"
    out["r1_findings_list"] = ("; ".join(f"{task_label(c['task'])} {c['b']} − {c['a']} {c['diff']:+.3f}" for c in found)
                               or "none")
    speed = [compare(runs, t, "random", "svd", q) for t in tasks_all if n and has_methods(runs, t, "random", "svd")
             and not chance.get(t) for q in SPEED]
    out["r1_speed_n"] = f"{len(speed)}"
    out["r1_speed_findings"] = f"{sum(is_finding(c) for c in speed)}"

    lr_task, lrs = lr_block(runs) if n else (None, [])
    out["r1_lr_task"] = task_label(lr_task) if lr_task else "n/a"
    for i in range(3):
        if i < len(lrs):
            c = compare(runs, lr_task, "random", "svd", "final", lrs[i], lrs[i])
            out[f"r1_lr_{i}"] = (f"lr {lrs[i]:g}: {c['mean_b']:.3f} vs {c['mean_a']:.3f}, svd − random "
                                 f"{_diff_ci(c)} ({_short(c)})")
        else:
            out[f"r1_lr_{i}"] = "n/a"



def _parameter_numbers(out: dict, runs, n: int, benchmark) -> None:
    """Trainable-parameter counts (logged and by part) and the benchmark's memory numbers, into ``out``."""
    logged = runs.groupby("method")["trainable"].median() if n else {}
    for m in ("random", "lora_fa", "full"):
        out[f"r1_params_{m}"] = f"{int(logged[m]):,}" if m in getattr(logged, "index", []) else "n/a"
    parts = trainable_parts()
    for k in ("lora", "lora_fa", "pooler", "classifier"):
        out[f"params_{k}"] = f"{parts[k]:,}"
    bj = load_benchmark(Path(benchmark) if benchmark else log_file("benchmark_lora.json"))
    if bj:
        sb, fa, s = bj["saved_bytes"], bj["fa_saving"], bj["settings"]
        out["bench_params_lora"] = f"{bj['step_time_ms']['ours_lora']['trainable_params']:,}"
        out["bench_shape"] = f"{s['batch']} × {s['seq_len']}"
        out["bench_fa_saved_qv"] = f"{fa['lora_qv_vs_lora_fa_qv']['measured'] / 2**20:.1f}"
        out["bench_fa_saved_qv_pct"] = f"{fa['lora_qv_vs_lora_fa_qv']['measured'] / sb['lora_qv']:.1%}"
        out["bench_lora_qv"] = f"{sb['lora_qv'] / 2**20:.0f}"
        out["bench_full"] = f"{sb['full_ft'] / 2**20:.0f}"
        out["bench_fa_saved_all"] = f"{fa['lora_all_vs_lora_fa_all']['measured'] / 2**20:.0f}"
        out["bench_fa_saved_all_pct"] = f"{fa['lora_all_vs_lora_fa_all']['measured'] / sb['lora_all']:.0%}"
    else:
        for k in ("bench_params_lora", "bench_shape", "bench_fa_saved_qv", "bench_fa_saved_qv_pct", "bench_lora_qv",
                  "bench_full", "bench_fa_saved_all", "bench_fa_saved_all_pct"):
            out[k] = "n/a"



def _geometry_numbers(out: dict, runs, learned_tasks: list, spectra_csv, subspaces_csv) -> None:
    """ΔW's effective rank, top-direction energy and overlap (spectra table) and the φ similarities (subspaces
    table), each method at its main lr on the learned tasks, into ``out``."""
    methods = ("full", "random", "svd", "svd_naive", "lora_fa", "lora_fa_svd")
    if spectra_csv and Path(spectra_csv).is_file():
        import pandas as pd

        from .analysis.runs import main_lr_rows
        sp = main_lr_rows(pd.read_csv(spectra_csv), runs)    # each method at its main lr: no lr block pooled
        sp = sp[sp["task"].isin(learned_tasks)]
        g = sp.groupby("method")[["effective_rank", "energy_top1", "overlap_right_top"]].mean()
        out["r1_overlap_chance"] = f"{sp['overlap_random'].mean():.3f}" if len(sp) else "n/a"
        for m in methods:
            ok = m in g.index
            out[f"r1_effrank_{m}"] = f"{g.loc[m, 'effective_rank']:.1f}" if ok else "n/a"
            out[f"r1_top1_{m}"] = f"{g.loc[m, 'energy_top1']:.0%}" if ok else "n/a"
            out[f"r1_overlap_{m}"] = f"{g.loc[m, 'overlap_right_top']:.2f}" if ok else "n/a"
    else:
        out["r1_overlap_chance"] = "n/a"
        for m in methods:
            out[f"r1_effrank_{m}"] = out[f"r1_top1_{m}"] = out[f"r1_overlap_{m}"] = "n/a"
    pairs = {"random_svd": ("random", "svd"), "full_random": ("full", "random")}
    if subspaces_csv and Path(subspaces_csv).is_file():
        import pandas as pd

        ss = pd.read_csv(subspaces_csv)
        ss = ss[ss["task"].isin(learned_tasks)]
        seed = ss[ss["relation"] == "seed"].groupby("method_a")[["phi_in", "phi_out"]].mean()
        init = ss[ss["relation"] == "init"]
        out["r1_phi_random_level"] = f"{ss['random'].mean():.3f}" if len(ss) else "n/a"
        for m in methods:
            out[f"r1_phi_seed_{m}"] = (f"{seed.loc[m, 'phi_in']:.2f} / {seed.loc[m, 'phi_out']:.2f}"
                                       if m in seed.index else "n/a")
        for key, (x, y) in pairs.items():
            g = init[((init["method_a"] == x) & (init["method_b"] == y)) | ((init["method_a"] == y) & (init["method_b"] == x))]
            out[f"r1_phi_init_{key}"] = f"{g['phi_in'].mean():.2f} / {g['phi_out'].mean():.2f}" if len(g) else "n/a"
    else:
        out["r1_phi_random_level"] = "n/a"
        for m in methods:
            out[f"r1_phi_seed_{m}"] = "n/a"
        for key in pairs:
            out[f"r1_phi_init_{key}"] = "n/a"
