"""The display helpers the book's pages glue numbers and figures with (harness.book): the round-1 comparisons
with their 95 % intervals, the numbers of the findings page, and the trainable-parameter breakdown."""
from __future__ import annotations

import json
import math

import pytest
from scipy import stats

from harness import round1_page as r1
from harness.analysis.benchmark import trainable_parts
from test_analysis_spectra import make_log, write_logs

RANDOM = {0: 0.80, 1: 0.84, 2: 0.79}
SVD = {0: 0.83, 1: 0.88, 2: 0.82}


@pytest.fixture()
def grid_dir(tmp_path):
    logs = ([make_log("mrpc", "random", s, final={"accuracy": v}, n_evals=5, lr=None) for s, v in RANDOM.items()]
            + [make_log("mrpc", "svd", s, final={"accuracy": v}, n_evals=5, lr=None) for s, v in SVD.items()])
    return write_logs(tmp_path / "quick", logs)


def test_round1_comparisons_carry_the_t_interval(grid_dir):
    (c,) = r1.round1_comparisons(grid_dir)
    d = [SVD[s] - RANDOM[s] for s in RANDOM]
    mean, sd = sum(d) / 3, stats.tstd(d)
    half = stats.t.ppf(0.975, 2) * sd / math.sqrt(3)
    assert (c["a"], c["b"], c["quantity"], c["n"]) == ("random", "svd", "final", 3)
    assert c["lo"] == pytest.approx(mean - half) and c["hi"] == pytest.approx(mean + half)
    assert c["finding"] == (c["p_holm"] < 0.05) and c["family"] == "round1"
    row = r1.round1_comparison_frame(grid_dir).iloc[0]
    assert row["difference [95 % interval]"] == f"{mean:+.3f} [{mean - half:+.3f}, {mean + half:+.3f}]"
    assert row["b ahead"] == "3/3" and "quantity" not in row.index     # one quantity: no column for it
    assert row["verdict"] == ("svd ahead (finding)" if c["finding"] else "not determined at n = 3")


def test_round1_numbers_resolve_every_key_even_without_the_runs(grid_dir, tmp_path):
    full = r1.round1_numbers(grid_dir, tmp_path / "no_benchmark.json")
    empty = r1.round1_numbers(write_logs(tmp_path / "empty", []), tmp_path / "no_benchmark.json")
    assert set(full) == set(empty)                  # the page's glue keys never depend on what ran
    assert all(isinstance(v, str) for v in full.values())
    assert full["r1_runs"] == "6" and full["r1_seeds"] == "3"
    assert full["r1_svd_random_final_mrpc"].startswith(f"{sum(SVD[s] - RANDOM[s] for s in RANDOM) / 3:+.3f} [")
    assert full["r1_svd_random_final_rte"] == "n/a" and full["r1_full_random_v_cola"] == "not run"
    assert empty["r1_runs"] == "0" and empty["bench_params_lora"] == "n/a"


def test_trainable_parts_add_up_to_the_logged_counts(tmp_path):
    parts = trainable_parts(model_config={"hidden_size": 384, "num_hidden_layers": 6})
    assert parts["lora"] == 6 * 2 * 8 * (384 + 384) == 73_728
    assert parts["lora_fa"] == parts["lora"] // 2
    assert parts["pooler"] == 384 * 384 + 384 and parts["classifier"] == 2 * 384 + 2
    # the study's runs train adapters + pooler + classifier; the benchmark adapters + classifier only
    assert parts["lora"] + parts["pooler"] + parts["classifier"] == 222_338
    assert parts["lora_fa"] + parts["pooler"] + parts["classifier"] == 185_474
    assert parts["lora"] + parts["classifier"] == 74_498


def test_trainable_table_sets_logged_beside_the_sum(tmp_path):
    logs = [make_log("mrpc", "random", 0)]
    logs[0]["params"]["trainable"] = 222_338
    bench = tmp_path / "benchmark_lora.json"
    bench.write_text(json.dumps({"step_time_ms": {"ours_lora": {"trainable_params": 74_498}}}))
    table, caption = r1.trainable_table(write_logs(tmp_path / "quick", logs), bench)
    assert list(table["logged"]) == list(table["sum"]) == [222_338, 74_498]
    assert "pooler" in caption
