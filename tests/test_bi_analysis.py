"""The bi-encoder study's numbers (harness.analysis.biencoder, harness.prose.biencoder) on constructed logs:
each method is read at the lr the sweep selects, the pretrained reference is full's step 0, the gain and the
comparisons are the paired t intervals of harness.analysis.stats, and the page's words follow the data."""
import json
import math

import pytest
from scipy import stats as st

from harness.analysis import biencoder as bi
from harness.prose import biencoder as btext

PRETRAINED = {"bi-mrpc": 0.73, "bi-stsb": 0.86}


def _log(task, method, lr, seed, zero, final, val=0.5, shift=0.9, wall=100.0, retrieval=None):
    metric = "roc_auc" if task == "bi-mrpc" else "spearman"
    first = {"step": 0, "epoch": 0.0, metric: zero, "val": {metric: 0.0}}
    last = {"step": 100, "epoch": 1.0, metric: final, "val": {metric: val}}
    if retrieval:
        first |= retrieval
        last |= retrieval
    rid = f"{task}-{method}-lr{lr:g}-s{seed}"
    return {"run_id": rid, "status": "ok", "config": {"task": task, "method": method, "lr": lr, "seed": seed},
            "config_hash": rid, "task": {"name": task, "main_metric": metric}, "env": {"cpu": "test cpu"},
            "data": {"n_dev": 10}, "history": {"evals": [first, last]}, "final": last,
            "embedding_shift": shift, "wall_time_s": wall, "finished_at": "2026-12-04T20:00:00+0000"}


def _write(d, logs):
    d.mkdir(parents=True, exist_ok=True)
    for lg in logs:
        (d / f"{lg['run_id']}.json").write_text(json.dumps(lg))
    return d


RETR = {"recall@1": 0.9, "recall@10": 0.99, "mrr@10": 0.95, "exact_recall@1": 0.9, "exact_recall@10": 0.98,
        "exact_mrr@10": 0.95, "ann_overlap@10": 0.97}


@pytest.fixture
def study(tmp_path):
    # sweep: random best at 1e-3 (val 0.8 > 0.7), full at 1e-5, svd_naive at 3e-3
    sweep = [_log("bi-mrpc", "random", 1e-3, 0, 0.73, 0.8, val=0.8), _log("bi-mrpc", "random", 3e-3, 0, 0.73, 0.9, val=0.7),
             _log("bi-mrpc", "full", 1e-5, 0, 0.73, 0.8, val=0.6),
             _log("bi-mrpc", "svd_naive", 3e-3, 0, 0.60, 0.8, val=0.9)]
    final = []
    for s, (r, f, n) in enumerate([(0.80, 0.82, 0.76), (0.81, 0.80, 0.75), (0.79, 0.81, 0.77)]):
        final += [_log("bi-mrpc", "random", 1e-3, s, PRETRAINED["bi-mrpc"], r, shift=0.9 + s / 100, retrieval=RETR),
                  _log("bi-mrpc", "full", 1e-5, s, PRETRAINED["bi-mrpc"], f, shift=0.8, retrieval=RETR),
                  _log("bi-mrpc", "svd_naive", 3e-3, s, 0.60, n, shift=0.7, retrieval=RETR)]
    final.append(_log("bi-mrpc", "random", 3e-3, 0, 0.73, 0.99))     # not the selected lr: ignored
    drift = {"runs": {f"bi-mrpc-svd_naive-lr0.003-s{s}": {"step0_cos": 0.95, "final_cos": 0.6 + s / 100}
                      for s in range(3)}}
    (tmp_path / "drift.json").write_text(json.dumps(drift))
    return bi.BiStudy(_write(tmp_path / "bi", final), _write(tmp_path / "bi_sweep", sweep), tmp_path / "drift.json")


def test_cells_at_selected_lr_and_pretrained_reference(study):
    assert study.lrs[("bi-mrpc", "random")] == 1e-3 and study.lrs[("bi-mrpc", "svd_naive")] == 3e-3
    assert study.values("bi-mrpc", "random") == {0: 0.80, 1: 0.81, 2: 0.79}     # the 3e-3 run is left out
    assert study.pretrained("bi-mrpc") == pytest.approx(0.73)
    assert study.methods("bi-mrpc") == ["full", "random", "svd_naive"]


def test_gain_is_the_t_interval_over_seeds(study):
    row = next(r for r in bi.outcome_rows(study) if r["method"] == "svd_naive")
    gains = [0.76 - 0.73, 0.75 - 0.73, 0.77 - 0.73]
    m, sd = sum(gains) / 3, st.tstd(gains)
    half = st.t.ppf(0.975, 2) * sd / math.sqrt(3)
    assert row["gain"] == pytest.approx(m) and row["gain_lo"] == pytest.approx(m - half)
    assert row["zero"] == pytest.approx(0.60) and row["shift"] == pytest.approx(0.7)      # from its own step 0
    assert row["pre0"] == pytest.approx(0.95) and row["pre1"] == pytest.approx(0.61)     # from the pretrained model
    rnd = next(r for r in bi.outcome_rows(study) if r["method"] == "random")
    assert rnd["pre0"] == 1.0 and rnd["pre1"] == pytest.approx(rnd["shift"])          # no drift entry: the log's
    assert row["final_recall@10"] == pytest.approx(0.99) and row["zero_mrr@10"] == pytest.approx(0.95)


def test_comparisons_paired_by_seed_with_holm(study):
    comps = bi.comparisons(study)
    # 3 gains + 2 against random
    assert len(comps) == 5
    c = bi.comparison(comps, "bi-mrpc", "random", "svd_naive")
    d = [0.76 - 0.80, 0.75 - 0.81, 0.77 - 0.79]
    assert c["diff"] == pytest.approx(sum(d) / 3)
    assert c["p"] == pytest.approx(st.ttest_rel([0.76, 0.75, 0.77], [0.80, 0.81, 0.79]).pvalue)
    ps = sorted(x["p"] for x in comps)
    assert min(x["p_holm"] for x in comps) == pytest.approx(min(1.0, 5 * ps[0]))


def test_page_words_follow_the_data(study):
    nums = btext.page_numbers(study, bi.comparisons(study))
    assert nums["bi_step0_words_mrpc"] == ("svd_naive starts at 0.600, its dev embeddings at mean cosine 0.950 to "
                                           "the pretrained ones and ends at 0.760")       # only the moved init
    assert nums["bi_best_mrpc"] == "full" and nums["bi_best_final_mrpc"] == pytest.approx(0.81)
    assert nums["bi_most_moved_mrpc"] == "svd_naive" and nums["bi_most_moved_shift_mrpc"] == pytest.approx(0.61)
    assert nums["bi_least_moved_mrpc"] == "random"
    assert nums["bi_pretrained_mrpc"] == pytest.approx(0.73)
    assert nums["bi_gain_words_mrpc"].startswith("every method ends above the pretrained model, every 95 % interval")
    assert nums["bi_vs_random_words_mrpc"] == "no method's 95 % interval against random init excludes 0"


def test_retrieval_check_reports_the_worst_hnsw_gap(study):
    check = bi.retrieval_check(study)
    assert check["evaluations"] == 18
    assert check["min_overlap"] == pytest.approx(0.97) and check["max_gap"] == pytest.approx(0.01)


def test_zero_shot_needs_a_step0_evaluation():
    lg = _log("bi-mrpc", "random", 1e-3, 0, 0.7, 0.8)
    lg["history"]["evals"] = lg["history"]["evals"][1:]
    with pytest.raises(ValueError, match="step 100, not 0"):
        bi.zero_shot(lg)


def test_figures_have_a_panel_per_task_and_a_mark_per_method(study):
    from harness.plots import biencoder as bplot
    fig = bplot.zero_to_final_figure(study)
    (ax,) = fig.axes
    assert [t.get_text() for t in ax.get_xticklabels()] == ["full", "random", "svd_naive"]
    assert ax.get_lines()[0].get_ydata()[0] == pytest.approx(0.73)        # the pretrained line
    fig = bplot.shift_figure(study)
    assert sorted(t.get_text() for t in fig.axes[0].get_legend().get_texts()) == ["full", "random", "svd_naive"]
    fig = bplot.curves_figure(study)
    assert len(fig.axes[0].get_lines()) == 1 + 3
    fig = bplot.forest_figure(bi.comparisons(study))
    assert len(fig.axes[0].get_yticklabels()) == 5


def test_vs_random_words_name_the_intervals_that_exclude_zero():
    from harness.prose.biencoder import vs_random_words
    c = dict(b="svd_naive", diff=-0.008, lo=-0.013, hi=-0.003, finding=False)
    assert vs_random_words([c, dict(c, b="svd", lo=-0.01, hi=0.01)]) == \
        "svd_naive − random -0.008 [-0.013, -0.003] (not a finding after Holm)"
