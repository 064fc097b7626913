"""Numbers of the throughput chapter: the bf16/fp32 equivalence verdicts (harness/analysis/equivalence.py), the
benchmark tables (harness/analysis/throughput.py) and the benchmark's projection to full-length runs
(benchmarks/run_throughput.py), on constructed inputs with hand-computed results."""
from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest

from harness.analysis.equivalence import (equivalence_table, precision_cells, seed_sd, seeds_needed, verdict,
                                 verdict_counts)
from harness.analysis.throughput import lever_rows, logged_wall_times, per_run_rows, projection_rows

ROOT = Path(__file__).resolve().parent.parent
T975_2 = 4.302652729749462          # t quantile 0.975 with 2 degrees of freedom


def mklog(task, method, seed, value, precision=None, lr=1e-3, status="ok", metric="accuracy", wall=10.0):
    cfg = dict(task=task, method=method, seed=seed, lr=lr, rank=8)
    if precision is not None:            # round-1 style logs have no precision field: fp32
        cfg["precision"] = precision
    return dict(run_id=f"{task}-{method}-{seed}-{precision}", status=status, config=cfg,
                task=dict(main_metric=metric), final={metric: value} if status == "ok" else None,
                wall_time_s=wall)


def cell_logs(task, method, fp32, bf16, **kw):
    return ([mklog(task, method, s, v, None if s == 0 else "fp32", **kw) for s, v in enumerate(fp32)]
            + [mklog(task, method, s, v, "bf16", **kw) for s, v in enumerate(bf16)])


# ----------------------------------------------------------------------------- equivalence
def test_verdict_rule():
    assert verdict({"finding": True, "level": False}) == "different"
    assert verdict({"finding": False, "level": True}) == "equivalent"
    assert verdict({"finding": False, "level": False}) == "inconclusive"


def test_seed_sd_pools_the_two_variances():
    assert seed_sd({0: 1.0, 1: 3.0}, {0: 2.0, 1: 2.0}) == pytest.approx(1.0)       # √((2 + 0)/2)
    assert seed_sd({0: 1.0, 1: 3.0}, {0: 5.0}) == pytest.approx(math.sqrt(2.0))    # one setting has no spread
    assert math.isnan(seed_sd({0: 1.0}, {0: 2.0}))


def test_seeds_needed():
    assert seeds_needed(0.0, 0.1) == 2
    assert seeds_needed(1.0, 1.0) == 5               # t₀.₉₅,₃/√4 = 1.177, t₀.₉₅,₄/√5 = 0.953
    assert seeds_needed(0.5, 1.0) == 3               # t/√n < 2: 4.465 at n = 2, 1.686 at n = 3
    assert seeds_needed(1.0, 0.0) is None


def test_cells_pair_by_seed_and_keep_other_configs_apart():
    logs = (cell_logs("mrpc", "random", [0.70, 0.72, 0.74], [0.71, 0.73, 0.75])
            + [mklog("mrpc", "random", 0, 0.9, "bf16", lr=3e-3),                       # another lr: another cell
               mklog("mrpc", "random", 1, 0.1, "bf16", status="failed"),               # not ok: left out
               mklog("cola", "svd", 0, None, "fp32", metric="mcc")])                   # NaN metric: left out
    cells = precision_cells(logs)
    assert [(c["task"], c["method"], c["lr"]) for c in cells] == [("mrpc", "random", 1e-3), ("mrpc", "random", 3e-3)]
    assert cells[0]["values"] == {"fp32": {0: 0.70, 1: 0.72, 2: 0.74}, "bf16": {0: 0.71, 1: 0.73, 2: 0.75}}
    rows = equivalence_table(logs)
    assert len(rows) == 1                            # the 3e-3 cell has no fp32 runs to pair with


def test_equivalence_table_numbers_and_verdicts():
    logs = (cell_logs("mrpc", "random", [0.70, 0.72, 0.74], [0.71, 0.73, 0.75])        # +0.01 every seed
            + cell_logs("mrpc", "svd", [0.5, 0.6, 0.7], [0.51, 0.59, 0.7])             # ±0.01, 0
            + cell_logs("cola", "random", [0.70, 0.71, 0.72], [0.74, 0.69, 0.72], metric="mcc"))
    rows = {(r["task"], r["method"]): r for r in equivalence_table(logs)}

    same = rows["mrpc", "random"]
    assert same["n"] == 3 and same["diff"] == pytest.approx(0.01)
    assert same["lo"] == pytest.approx(0.01) and same["hi"] == pytest.approx(0.01)   # no spread in d
    assert same["p"] == 0.0 and same["verdict"] == "different" and same["wins"] == 3
    assert same["seed_sd"] == pytest.approx(0.02)

    eq = rows["mrpc", "svd"]
    assert eq["diff"] == pytest.approx(0.0, abs=1e-12)
    assert eq["half_width"] == pytest.approx(T975_2 * 0.01 / math.sqrt(3))            # 0.024841
    assert eq["seed_sd"] == pytest.approx(0.0977241014)
    assert eq["sd_diff"] == pytest.approx(0.01) and eq["verdict"] == "equivalent"
    assert eq["seeds_needed"] == 2

    inc = rows["cola", "random"]
    assert inc["metric"] == "mcc"
    assert inc["diff"] == pytest.approx(0.02 / 3)
    assert inc["half_width"] == pytest.approx(T975_2 * 0.0305505046 / math.sqrt(3))    # 0.075892
    assert inc["seed_sd"] == pytest.approx(0.0191485422)
    assert inc["verdict"] == "inconclusive"
    assert inc["seeds_needed"] == 9     # need t₀.₉₅,ₙ₋₁/√n < 0.01915/0.03055 = 0.627: 0.670 at n = 8, 0.620 at 9
    # TOST against ±seed sd: the svd cell's 90 % interval lies inside it, the CoLA cell's does not
    assert eq["margin"] == pytest.approx(eq["seed_sd"]) and eq["p_tost_holm"] < 0.05 and eq["level"]
    assert inc["p_tost"] > 0.05 and not inc["level"]

    assert verdict_counts(list(rows.values())) == {"equivalent": 1, "inconclusive": 1, "different": 1}
    assert all("p_holm" in r for r in rows.values())
    # Holm over the three cells: the smallest p (0.0) stays 0, the others are at least their raw p
    assert same["p_holm"] == 0.0 and eq["p_holm"] >= eq["p"]


# ----------------------------------------------------------------------------- throughput tables
BENCH = {
    "levers": {
        "a": dict(name="baseline", what="notebook 1×2", runs=2, grid_wall_s=100.0, runs_per_hour=72.0,
                  steady_runs_per_hour=72.0, against=None),
        "b": dict(name="process", what="process 1×2", runs=2, grid_wall_s=80.0, runs_per_hour=90.0,
                  steady_runs_per_hour=90.0, against="a"),
        "c": dict(name="+ bf16", what="process bf16", against="b", skipped="bf16 slower"),
        "d": dict(name="2×1", what="process 2×1", runs=4, grid_wall_s=120.0, runs_per_hour=120.0,
                  steady_runs_per_hour=144.0, against="b"),
    },
    "ratios": {"a": {"vs_baseline": 1.0, "vs_baseline_steady": 1.0},
               "b": {"vs_baseline": 1.25, "vs_baseline_steady": 1.25, "vs_a": 1.25},
               "d": {"vs_baseline": 120 / 72, "vs_baseline_steady": 2.0, "vs_b": 120 / 90}},
    "combined": {"lever": "d"},
    "projection": {"workloads": {"quick_mrpc": dict(steps=345, evals=13, T_a_s=510.0, T_b_s=500.0, T_d_s=700.0,
                                                    ratio_b=1.02, ratio_d_vs_b=2 * 500 / 700,
                                                    ratio_combined=2 * 510 / 700)}},
}


def test_lever_rows():
    rows = {r["lever"]: r for r in lever_rows(BENCH)}
    assert list(rows) == ["a", "b", "c", "d"]
    assert rows["b"]["vs_against"] == 1.25 and rows["b"]["against"] == "a"
    assert rows["d"]["vs_against"] == pytest.approx(4 / 3) and rows["d"]["vs_baseline_steady"] == 2.0
    assert rows["c"]["skipped"] == "bf16 slower" and rows["c"]["runs_per_hour"] is None
    assert rows["a"]["vs_against"] is None


def test_projection_and_per_run_rows():
    (q,) = projection_rows(BENCH)
    assert q["combined_s"] == 350.0 and q["baseline_s"] == 510.0 and q["ratio_combined"] == pytest.approx(510 / 350)
    quick = [mklog("mrpc", "random", s, 0.7, wall=w) for s, w in enumerate([300.0, 340.0, 320.0])] + \
            [mklog("mrpc", "full", 0, 0.8, wall=900.0), mklog("cola", "svd", 0, 0.2, wall=600.0)]
    assert logged_wall_times(quick, "mrpc") == {"n": 3, "median_s": 320.0}
    assert logged_wall_times(quick, "mrpc", adapters_only=False)["median_s"] == 330.0
    rows = per_run_rows(BENCH, quick)
    assert [r["seconds"] for r in rows] == [320.0, 50.0, 30.0, 510.0, 350.0]   # a: 100/2, d: 120/4


# ----------------------------------------------------------------------------- the benchmark's projection
def _bench_module():
    spec = importlib.util.spec_from_file_location("run_throughput", ROOT / "benchmarks" / "run_throughput.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _profile(run_s, step_total, steps, evals, eval_total, tok=0.5, load=1.0):
    seconds = {"evaluation (dev)": eval_total, "tokenisation": tok, "model + tokenizer load": load,
               "train steps (forward, backward, AdamW)": step_total}
    return dict(run_s=run_s, seconds=seconds, s_per_step=step_total / steps, s_per_eval=eval_total / evals)


def test_benchmark_projection_from_measured_parts():
    rt = _bench_module()

    class Args:
        examples = 592          # + 408 dev = 1000 examples tokenised: 0.5 s → 0.0005 s per example

    profiles = {"process_fp32_2threads": _profile(31.5, 20.0, 20, 5, 10.0),
                "process_fp32_1thread": _profile(46.5, 30.0, 20, 5, 15.0)}
    levers = {"a": dict(grid_wall_s=83.0, runs=2), "b": dict(grid_wall_s=63.0, runs=2),
              "d": dict(run_wall_warm_mean_s=51.15)}
    wl = {"full": dict(examples=4000, steps=300, evals=13)}
    proj = rt.project(levers, profiles, Args, wl)
    assert proj["K_notebook_s_per_run"] == pytest.approx(10.0)            # (83 − 63) / 2
    assert proj["contention_2x1"] == pytest.approx(1.1)                   # 51.15 / 46.5
    row = proj["workloads"]["full"]
    T_b = 1.0 + 0.0005 * 4000 + 1.0 * 300 + 2.0 * 13                      # fixed + tokens + steps + evals = 329
    T_1 = 1.0 + 0.0005 * 4000 + 1.5 * 300 + 3.0 * 13                      # 492
    assert row["T_b_s"] == pytest.approx(T_b) and row["T_a_s"] == pytest.approx(T_b + 10.0)
    assert row["T_d_s"] == pytest.approx(1.1 * T_1)
    assert row["ratio_b"] == pytest.approx((T_b + 10) / T_b)
    assert row["ratio_combined"] == pytest.approx(2 * (T_b + 10) / (1.1 * T_1))


def test_round_one_logs_without_the_new_fields_pair_with_new_bf16_logs():
    """A round-1 fp32 log lacks precision/rslora/val_fraction; a new bf16 log carries them at their legacy
    values (precision aside): they are one cell, paired by seed."""
    old = [mklog("mrpc", "random", s, v) for s, v in enumerate([0.76, 0.75, 0.77])]
    new = [mklog("mrpc", "random", s, v, "bf16") for s, v in enumerate([0.77, 0.75, 0.77])]
    for lg in new:
        lg["config"].update(rslora=False, val_fraction=None, init_batches=None)
    rows = equivalence_table(old + new)
    assert len(rows) == 1 and rows[0]["n"] == 3
    assert rows[0]["diff"] == pytest.approx(0.01 / 3)
    new[0]["config"]["rslora"] = True            # a real difference in the config: no longer the same cell
    assert [r["n"] for r in equivalence_table(old + new)] == [2]


def test_full_run_rows_pair_configs_and_count_two_workers():
    from harness.analysis.throughput import full_run_rows
    ref = [mklog("mrpc", m, s, 0.7, wall=300.0 + s) for m in ("random", "svd") for s in range(3)]
    ref.append(mklog("mrpc", "full", 0, 0.7, wall=999.0))          # no candidate: left out
    cand = [mklog("mrpc", m, s, 0.7, "bf16", wall=400.0 + s) for m in ("random", "svd") for s in range(3)]
    cand += [mklog("mrpc", "random", s, 0.7, wall=10.0) for s in range(3)]   # the grid's fp32 references: not candidates
    (row,) = full_run_rows(ref, cand)
    assert row["n"] == 6 and row["reference_s"] == 301.0 and row["candidate_s"] == 401.0
    assert row["ratio"] == pytest.approx(2 * 301.0 / 401.0)
    cand += [mklog("mrpc", "random", s, 0.7, "bf16", wall=300.0 + s) for s in (3, 4)]   # new seeds: the reference
    (row,) = full_run_rows(ref, cand, seeds={3, 4})                                      # is every matching run
    assert row["n"] == 2 and row["n_reference"] == 3 and row["candidate_s"] == 303.5 and row["reference_s"] == 301.0
