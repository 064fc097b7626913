"""Tables of the throughput benchmark (``benchmarks/run_throughput.py`` → ``logs/benchmark_throughput.json``)
for the book's speed page, and the per-run wall times of logged grids.  Pure functions: dict/logs → tables.

Runs per hour of a lever = runs / wall time of its whole grid call; a ratio is new / old runs per hour
(> 1: cheaper runs).  "Steady" leaves out a worker pool's one-off start-up, as in a long grid.
"""
from __future__ import annotations

import statistics

from .benchmark import load_benchmark  # noqa: F401  (the page reads the benchmark through this module)

LEVER_ORDER = "abcdef"


def lever_rows(bench: dict) -> list[dict]:
    """One row per lever: setting, runs, grid wall, runs/h (measured and steady), × baseline, × the setting
    it changes (``against``); skipped levers carry their reason."""
    levers, ratios = bench["levers"], bench.get("ratios", {})
    rows = []
    for key in [k for k in LEVER_ORDER if k in levers]:
        lv = levers[key]
        row = dict(lever=key, name=lv["name"], setting=lv["what"], runs=lv.get("runs"),
                   grid_wall_s=lv.get("grid_wall_s"), runs_per_hour=lv.get("runs_per_hour"),
                   steady_runs_per_hour=lv.get("steady_runs_per_hour"),
                   vs_baseline=ratios.get(key, {}).get("vs_baseline"),
                   vs_baseline_steady=ratios.get(key, {}).get("vs_baseline_steady"),
                   against=lv.get("against"),
                   vs_against=ratios.get(key, {}).get(f"vs_{lv.get('against')}") if lv.get("against") else None,
                   skipped=lv.get("skipped"))
        rows.append(row)
    return rows


def lever_frame(bench: dict):
    import pandas as pd
    rows = lever_rows(bench)
    return pd.DataFrame([{"lever": r["lever"], "setting": r["setting"], "runs": r["runs"],
                          "grid wall (s)": r["grid_wall_s"], "runs/h": r["runs_per_hour"],
                          "× baseline": r["vs_baseline"],
                          "× previous": (f"{r['vs_against']:.2f} vs {r['against']}" if r["vs_against"] else "–"),
                          "runs/h steady": r["steady_runs_per_hour"], "× baseline steady": r["vs_baseline_steady"],
                          "note": r["skipped"] or ""} for r in rows])


def profile_rows(profile: dict) -> list[dict]:
    """(part, seconds per run, share) of one profile, largest first."""
    sec, frac = profile["seconds"], profile["fraction"]
    return [dict(part=k, seconds=sec[k], share=frac[k]) for k in sorted(sec, key=lambda k: -sec[k])]


def profile_frame(bench: dict, names: list[str] | None = None):
    """Parts of a whole run side by side, one column of seconds (and share) per profile."""
    import pandas as pd
    profs = bench.get("profiles", {})
    names = names or list(profs)
    parts = [r["part"] for r in profile_rows(profs[names[0]])]
    table = {"part": parts}
    for n in names:
        s = {r["part"]: r for r in profile_rows(profs[n])}
        table[f"{n} (s)"] = [s.get(p, {}).get("seconds") for p in parts]
        table[f"{n} (share)"] = [s.get(p, {}).get("share") for p in parts]
    return pd.DataFrame(table)


def projection_rows(bench: dict) -> list[dict]:
    """Seconds of machine time per run and runs/h of the baseline (a), the process executor (b) and the
    fp32 combination (d: two runs at once, so a run costs T_d / 2), per projected workload."""
    proj = bench.get("projection") or {}
    rows = []
    for name, w in proj.get("workloads", {}).items():
        rows.append(dict(workload=name, steps=w["steps"], evals=w["evals"], baseline_s=w["T_a_s"],
                         process_s=w["T_b_s"], combined_s=w.get("T_d_s", float("nan")) / 2,
                         ratio_process=w["ratio_b"], ratio_workers=w.get("ratio_d_vs_b"),
                         ratio_combined=w.get("ratio_combined")))
    return rows


def logged_wall_times(logs: list[dict], task: str | None = None, adapters_only: bool = True) -> dict:
    """Median (and n) of ``wall_time_s`` over ok logs, optionally one task, adapters only."""
    walls = [lg["wall_time_s"] for lg in logs if lg.get("status", "ok") == "ok"
             and (task is None or lg["config"]["task"] == task)
             and not (adapters_only and lg["config"]["method"] == "full")]
    return dict(n=len(walls), median_s=statistics.median(walls) if walls else float("nan"))


def per_run_rows(bench: dict, quick_logs: list[dict]) -> list[dict]:
    """Machine time per run: the round-1 grid's logged median (MRPC adapters), the benchmark's baseline
    and combination (measured on the short runs: grid wall / runs), and both projected to a full quick
    MRPC run."""
    lv, rows = bench["levers"], []
    logged = logged_wall_times(quick_logs, "mrpc")
    rows.append(dict(what="logs/quick, MRPC adapter runs (round 1, logged)", seconds=logged["median_s"],
                     n=logged["n"]))
    combo = (bench.get("combined") or {}).get("lever")
    for key, label in (("a", "baseline"), (combo, "combination")):
        if key and key in lv and not lv[key].get("skipped"):
            rows.append(dict(what=f"benchmark {label} ({lv[key]['what']}): short run, measured",
                             seconds=lv[key]["grid_wall_s"] / lv[key]["runs"], n=lv[key]["runs"]))
    proj = {r["workload"]: r for r in projection_rows(bench)}
    if "quick_mrpc" in proj:
        q = proj["quick_mrpc"]
        rows.append(dict(what="quick MRPC run, baseline, projected", seconds=q["baseline_s"], n=None))
        rows.append(dict(what="quick MRPC run, combination, projected", seconds=q["combined_s"], n=None))
    return rows


def full_run_rows(reference_logs: list[dict], candidate_logs: list[dict], workers: int = 2,
                  precision: str = "bf16", seeds: set[int] | None = None) -> list[dict]:
    """Full-length runs measured, not projected: per task, the median logged wall time of a reference
    grid's runs (round 1: ``logs/quick``, one run at a time on 2 threads, fp32) and of a candidate grid's
    runs of the same (task, method, lr) in the new default's per-run setting (``logs/precision_cpu``:
    1 thread, in-process, in ``precision``; the grid also holds fp32 references, which do not count),
    and the runs per hour of ``workers`` such runs side by side on the 2 cores, 3600·workers / median,
    against 3600 / the reference median.  ``seeds``: only these candidate seeds (runs made under
    different machine load are reported apart).  ``n``: candidate runs; ``n_reference``: reference runs."""
    def key(lg):
        c = lg["config"]
        return c["task"], c["method"], c["lr"]
    ok = lambda lg: lg.get("status", "ok") == "ok"
    cand = [lg for lg in candidate_logs if ok(lg) and (lg["config"].get("precision") or "fp32") == precision
            and (seeds is None or lg["config"]["seed"] in seeds)]
    rows = []
    for task in sorted({key(lg)[0] for lg in cand}):
        mine = [lg for lg in cand if key(lg)[0] == task]
        keys = {key(lg) for lg in mine}
        ref_logs = [lg for lg in reference_logs if ok(lg) and key(lg) in keys]
        if not ref_logs:
            continue
        ref = statistics.median(lg["wall_time_s"] for lg in ref_logs)
        new = statistics.median(lg["wall_time_s"] for lg in mine)
        rows.append(dict(task=task, n=len(mine), n_reference=len(ref_logs), reference_s=ref, candidate_s=new,
                         rph_reference=3600 / ref, rph_candidate=workers * 3600 / new,
                         ratio=(workers * 3600 / new) / (3600 / ref)))
    return rows
