"""harness.analysis.inits and harness.prose.inits (and the numeric helpers of harness.capture) on constructed logs and capture files."""
from __future__ import annotations

import math

import pandas as pd

import numpy as np
import pytest
import torch

from harness.analysis import inits as st
from harness.prose import inits as pi
from harness.capture import energy_shares, row_space_overlap
from harness.analysis.stats import holm


def mk_log(task, method, seed, lr, final, first=None, losses=(1.0, 0.5), spe=2, init=None, val=None):
    metric = "accuracy" if task == "mrpc" else "mcc"
    evals = [{"step": 0, "epoch": 0.0, metric: 0.5}, {"step": 1, "epoch": 0.5, metric: first if first is not None else final},
             {"step": 2, "epoch": 1.0, metric: final, "val": {metric: val if val is not None else final}}]
    log = {"run_id": f"{task}-{method}-{lr}-s{seed}", "status": "ok",
           "config": {"task": task, "method": method, "seed": seed, "lr": lr},
           "task": {"main_metric": metric}, "history": {"evals": evals, "train_loss": list(losses)},
           "steps_per_epoch": spe, "final": evals[-1]}
    if init:
        log["init"] = init
    return log


def sweep(task, method, scores):
    return [mk_log(task, method, 0, lr, 0.0, val=v) for lr, v in scores.items()]


@pytest.fixture
def runs():
    sw = sweep("mrpc", "random", {1e-3: 0.8, 3e-3: 0.7}) + sweep("mrpc", "eva", {3e-3: 0.9, 1e-3: 0.6})
    main = [mk_log("mrpc", "random", s, 1e-3, f, first=f - 0.1, losses=(1.0, 0.6 + s / 10))
            for s, f in zip(range(5), [0.70, 0.72, 0.74, 0.76, 0.78])]
    main += [mk_log("mrpc", "random", s, 3e-3, 0.1) for s in range(3)]          # not the selected lr: left out
    main += [mk_log("mrpc", "eva", s, 3e-3, f, init={"batches": 8, "examples": 256, "seconds": sec})
             for s, f, sec in zip(range(3), [0.75, 0.78, 0.77], [0.2, 0.4, 0.6])]
    return st.init_runs(main, sw)


def test_runs_table_keeps_selected_lr_and_reads_early_numbers(runs):
    assert sorted(set(zip(runs["method"], runs["lr"]))) == [("eva", 3e-3), ("random", 1e-3)]
    r = runs[runs["method"] == "random"].set_index("seed")
    assert len(r) == 5
    assert r.loc[2, "first"] == pytest.approx(0.64)
    assert r.loc[2, "first_epoch"] == 0.5
    assert r.loc[3, "loss_epoch1"] == pytest.approx((1.0 + 0.9) / 2)
    assert r.loc[3, "epoch1"] == pytest.approx(0.76)            # the eval closest to epoch 1


def test_results_table_mean_sd_n(runs):
    t = st.results_table(runs).set_index("init")
    assert list(t.index) == ["random", "eva"]                    # study order
    assert t.loc["random", "mean"] == pytest.approx(0.74)
    assert t.loc["random", "sd"] == pytest.approx(np.std([0.70, 0.72, 0.74, 0.76, 0.78], ddof=1))
    assert t.loc["random", "n"] == 5 and t.loc["eva", "n"] == 3
    assert t.loc["eva", "lr"] == 3e-3
    assert st.results_table(runs, seeds={0, 1}).set_index("init").loc["random", "n"] == 2


def test_comparisons_pair_shared_seeds_and_holm(runs):
    c = st.comparisons(runs)
    assert len(c) == 1
    row = c.iloc[0]
    assert row["init"] == "eva" and row["n"] == 3 and row["seeds"] == [0, 1, 2]
    d = np.array([0.75 - 0.70, 0.78 - 0.72, 0.77 - 0.74])
    assert row["diff"] == pytest.approx(d.mean())
    half = 4.302652729911275 * d.std(ddof=1) / math.sqrt(3)       # t_{0.975, 2}
    assert row["lo"] == pytest.approx(d.mean() - half) and row["hi"] == pytest.approx(d.mean() + half)
    assert row["p_holm"] == pytest.approx(row["p"])               # a family of one


def test_comparisons_holm_over_tasks_and_seed_filter():
    rows = []
    for task in ("mrpc", "cola"):
        for s in range(3):
            rows.append({"task": task, "method": "random", "seed": s, "final": 0.5 + 0.01 * s})
            rows.append({"task": task, "method": "svd", "seed": s, "final": 0.6 + 0.02 * s * (task == "cola")
                         + 0.013 * (s == 1)})
            rows.append({"task": task, "method": "full", "seed": s, "final": 0.9})
    runs = pd.DataFrame(rows)
    c = st.comparisons(runs)
    assert list(zip(c["task"], c["init"])) == [("mrpc", "svd"), ("cola", "svd")]   # full excluded
    assert list(c["p_holm"]) == pytest.approx(holm(list(c["p"])))
    c2 = st.comparisons(runs, seeds={0, 1})
    assert list(c2["n"]) == [2, 2]


def capture_fixture():
    layers = ["bert.encoder.layer.0.attention.self.query", "bert.encoder.layer.0.attention.self.value"]
    parts = []
    for seed in (0, 1):
        caps = []
        for init, base, changed in (("random", 0.02, False), ("eva", 0.3, False), ("svd_naive", 0.1, True),
                                    ("lora_fa_grad", 0.8, False)):
            pl = {layers[0]: base + 0.01 * seed, layers[1]: base + 0.03 * seed}
            caps.append({"task": "mrpc", "seed": seed, "init": init, "mean": float(np.mean(list(pl.values()))),
                         "pooled": base, "per_layer": pl, "step0_changed": changed, "init_seconds": 0.1 * (seed + 1)})
        parts.append({"task": "mrpc", "seed": seed, "layers": layers, "captures": caps,
                      "gradient": {layers[0]: {"norm": 1.0, "top_r": 0.8, "top_2r": 0.9},
                                   layers[1]: {"norm": 2.0, "top_r": 0.6 + 0.1 * seed, "top_2r": 0.7}}})
    return {"parts": parts}


def test_capture_summary_layers_and_reference():
    cap = capture_fixture()
    s = st.capture_summary(cap).set_index("init")
    assert s.loc["eva", "capture"] == pytest.approx(np.mean([0.3, 0.3 + 0.02]))
    assert s.loc["eva", "n"] == 2 and bool(s.loc["svd_naive", "step0_changed"])
    m = st.capture_layers(cap, "mrpc")
    assert list(m.columns) == ["0.q", "0.v"]
    assert list(m.index) == ["random", "svd_naive", "eva", "lora_fa_grad", "G top-r", "G top-2r"]
    assert m.loc["eva", "0.v"] == pytest.approx(0.3 + 0.015)
    assert m.loc["G top-r", "0.v"] == pytest.approx(0.65)
    ref = st.gradient_reference(cap).set_index("task")
    assert ref.loc["mrpc", "top_r"] == pytest.approx((0.8 + 0.6 + 0.8 + 0.7) / 4)


def test_outcome_points_and_correlations():
    cap = capture_fixture()
    rows = []
    finals = {"random": 0.70, "eva": 0.75, "svd_naive": 0.60, "lora_fa_grad": 0.80}
    for init, f in finals.items():
        for s in (0, 1, 2):      # seed 2 has no capture: not averaged in
            rows.append({"task": "mrpc", "method": init, "seed": s, "final": f + (0.5 if s == 2 else 0.01 * s),
                         "first": f, "epoch1": f, "loss_epoch1": 1 - f})
    runs = pd.DataFrame(rows)
    pts = st.outcome_points(runs, cap).set_index("init")
    assert pts.loc["eva", "final"] == pytest.approx(0.755) and pts.loc["eva", "n"] == 2
    corr = st.correlations(pts.reset_index(), n_boot=50)
    unchanged = corr[(corr["inits"] == "unchanged at step 0") & (corr["outcome"] == "final")].iloc[0]
    assert unchanged["rho"] == pytest.approx(1.0) and unchanged["n"] == 3
    loss = corr[(corr["inits"] == "unchanged at step 0") & (corr["outcome"] == "loss_epoch1")].iloc[0]
    assert loss["rho"] == pytest.approx(-1.0)
    everything = corr[(corr["inits"] == "all") & (corr["outcome"] == "final")].iloc[0]
    assert everything["n"] == 4 and everything["rho"] == pytest.approx(0.8)   # svd_naive: rank 2 in capture, 1 in final


def test_init_table_flags_and_costs(runs):
    t = st.init_table(runs, capture_fixture(), inits=("random", "eva", "svd", "svd_naive", "lora_fa_grad")).set_index("init")
    assert t.loc["eva", "data"] == "inputs" and t.loc["lora_fa_grad", "data"] == "gradient"
    assert t.loc["random", "data"] == "weights only" and t.loc["random", "batches"] == 0
    assert t.loc["eva", "batches"] == 8 and t.loc["eva", "stats s (runs)"] == pytest.approx(0.4)
    assert bool(t.loc["svd", "residual"]) and not bool(t.loc["eva", "residual"])
    assert not bool(t.loc["svd_naive", "unchanged at step 0"]) and bool(t.loc["svd", "unchanged at step 0"])
    assert t.loc["lora_fa_grad", "frozen"] == "A" and t.loc["eva", "frozen"] == "none"
    assert t.loc["eva", "factors s (CPU)"] == pytest.approx(0.15)
    assert math.isnan(t.loc["svd", "factors s (CPU)"])


def test_short_layer():
    assert st.short_layer("bert.encoder.layer.3.attention.self.value") == "3.v"
    assert st.short_layer("bert.encoder.layer.11.attention.self.query") == "11.q"


def test_energy_shares_and_row_space_overlap():
    G = torch.diag(torch.tensor([3.0, 2.0, 1.0, 0.0]))
    assert energy_shares(G, (1, 2, 4)) == pytest.approx([9 / 14, 13 / 14, 1.0])
    assert energy_shares(torch.zeros(3, 3), (1,)) == [0.0]
    A = torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0]])
    assert row_space_overlap(A, torch.tensor([[2.0, 1.0, 0, 0], [1.0, -3.0, 0, 0]])) == pytest.approx(1.0)
    assert row_space_overlap(A, torch.tensor([[0, 0, 1.0, 0], [0, 0, 0, 1.0]])) == pytest.approx(0.0)
    assert row_space_overlap(A, torch.tensor([[1.0, 0, 1.0, 0], [0, 0, 0, 1.0]])) == pytest.approx(0.25)


def test_w_row_shares():
    from harness.capture import w_row_shares
    W = torch.diag(torch.tensor([4.0, 3.0, 2.0, 1.0]))          # right singular vectors e1..e4, descending
    G = torch.zeros(4, 4)
    G[0, 0], G[1, 3], G[2, 2] = 1.0, 2.0, 1.0                  # energy 1 on e1, 4 on e4, 1 on e3
    s = w_row_shares(W, G, 1)
    assert s["in_w_top_rows"] == pytest.approx(1 / 6) and s["in_w_bottom_rows"] == pytest.approx(4 / 6)
    assert w_row_shares(W, G, 2)["in_w_bottom_rows"] == pytest.approx(5 / 6)


def test_page_numbers_plain_values(runs):
    cap = capture_fixture()
    cap["provenance"] = {"seconds": 12.5, "batches": 8, "batch_size": 32, "rank": 8}
    comp = st.comparisons(runs)
    caps, ref = st.capture_summary(cap), st.gradient_reference(cap)
    pts = st.outcome_points(runs, cap)
    corr = st.correlations(pts, n_boot=20)
    g = pi.page_numbers(runs, comp, caps, ref, corr, cap, st.results_table(runs))
    assert all(type(v) in (int, float, str) for v in g.values())
    assert comp.iloc[0]["p_holm"] < 0.05                       # diffs .05, .06, .03: p = 0.034
    assert g["n_comparisons"] == 1 and g["n_ahead"] == 1 and g["n_behind"] == 0 and g["behind_text"] == "none"
    assert g["diff_eva_mrpc"] == pytest.approx(comp.iloc[0]["diff"])
    assert g["top3_mrpc"] == "eva, random" and g["random_mean_mrpc"] == pytest.approx(0.74)
    assert g["capture_examples"] == 256 and g["capture_seconds"] == 12.5


def test_load_runs_from_grid_dirs(tmp_path):
    from harness.logs import write_json_atomic
    for grid, logs in {"a": [mk_log("mrpc", "random", 0, 1e-3, 0.7)], "a_sw": sweep("mrpc", "random", {1e-3: 0.8}),
                       "b": [mk_log("mrpc", "eva", 0, 1e-3, 0.75)], "b_sw": sweep("mrpc", "eva", {1e-3: 0.9})}.items():
        (tmp_path / grid).mkdir()
        for i, lg in enumerate(logs):
            write_json_atomic(tmp_path / grid / f"{i}.json", {**lg, "config_hash": "x", "env": {}, "data": {"n_dev": 408}})
    runs = st.load_runs(dirs={"v2": tmp_path / "a", "v2_sweep": tmp_path / "a_sw", "inits": tmp_path / "b",
                              "inits_sweep": tmp_path / "b_sw"})
    assert list(runs["method"]) == ["random", "eva"] and list(runs["n_dev"]) == [408, 408]
