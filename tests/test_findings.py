"""Tests of harness.analysis.findings and harness.prose.findings / .readme: paired-by-seed comparisons
(against scipy), the points read off a dev curve, verdict wording, and the book's generated sentences on hand-made logs (no training)."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from harness import book
from harness.analysis import findings as af
from harness.analysis import spectra as asp
from harness.plots import training
from harness.prose import findings as pf
from harness.prose import readme as pr
from harness.config import make_config
from test_analysis_spectra import make_log, write_logs

RANDOM = {0: 0.80, 1: 0.84, 2: 0.79}
SVD = {0: 0.83, 1: 0.88, 2: 0.82, 3: 0.99}         # seed 3 has no random partner: left out of pairs
NAIVE = {0: 0.60, 1: 0.62, 2: 0.61}
PRESET_LR = make_config("mrpc", "random", "smoke")["lr"]


def _logs(**kw):
    """MRPC logs at the smoke preset's own learning rate (lr=None: not overridden)."""
    kw.setdefault("lr", None)
    return ([make_log("mrpc", "random", s, final={"accuracy": v}, n_evals=5, **kw) for s, v in RANDOM.items()]
            + [make_log("mrpc", "svd", s, final={"accuracy": v}, n_evals=5, **kw) for s, v in SVD.items()]
            + [make_log("mrpc", "svd_naive", s, final={"accuracy": v}, n_evals=5, **kw) for s, v in NAIVE.items()])


@pytest.fixture()
def grid_dir(tmp_path):
    logs = _logs()
    # RTE where nothing beats the majority class (baseline 0.6)
    logs += [make_log("rte", m, s, final={"accuracy": 0.5 + 0.01 * s}, n_evals=5, baseline=0.6, lr=None)
             for m in ("random", "svd") for s in range(3)]
    return write_logs(tmp_path / "quick", logs)


def test_curve_points_read_the_dev_curve():
    lg = make_log("mrpc", "random", 0, final={"accuracy": 0.8}, n_evals=5, epochs=2)
    # evals at epochs 0, .5, 1, 1.5, 2 with accuracy 0.8·(i+1)/5, the last one = final
    p = af.curve_points(lg)
    assert p["step0"] == pytest.approx(0.16)
    assert p["first"] == pytest.approx(0.32)                   # epoch 0.5
    assert p["epoch1"] == pytest.approx(0.48)                  # the evaluation at epoch 1.0
    assert p["curve"] == pytest.approx(np.mean([0.32, 0.48, 0.64, 0.8]))
    assert p["final"] == pytest.approx(0.8)
    # training loss 1/(1+i) per step, 4 steps per epoch: the first epoch's mean
    assert p["loss_epoch1"] == pytest.approx(np.mean([1, 1 / 2, 1 / 3, 1 / 4]))


def test_paired_matches_scipy_and_drops_unpaired_seeds(grid_dir):
    runs = af.points_table(grid_dir)
    c = af.paired(runs, "mrpc", "random", "svd")
    a, b = np.array([RANDOM[s] for s in range(3)]), np.array([SVD[s] for s in range(3)])
    assert c["seeds"] == [0, 1, 2] and c["n"] == 3
    assert c["diff"] == pytest.approx((b - a).mean())
    assert c["sd"] == pytest.approx((b - a).std(ddof=1))
    assert c["diffs"] == pytest.approx(list(b - a))
    assert c["mean_a"] == pytest.approx(a.mean()) and c["std_b"] == pytest.approx(b.std(ddof=1))
    assert c["p"] == pytest.approx(stats.ttest_rel(b, a).pvalue)
    assert c["wins"] == 3 and c["behind"] == 0


def test_verdicts():
    """The words follow the rulebook's fields (finding = Holm-adjusted p < 0.05 in the family; level = TOST)."""
    base = dict(a="random", b="svd", diff=0.03, sd=0.005, level=False)
    hit = {**base, "n": 3, "p": 0.001, "p_holm": 0.01, "finding": True, "wins": 3}
    assert pf.verdict(hit) == "svd ahead of random (Holm-adjusted p = 0.01)"
    assert pf.verdict({**hit, "wins": 0, "diff": -0.03}).startswith("svd behind random")
    # a small raw p that does not survive Holm is not a finding
    assert pf.verdict({**base, "n": 3, "p": 0.01, "p_holm": 0.2, "finding": False, "wins": 3}) == (
        "not determined at n = 3 (p = 0.01, Holm-adjusted 0.20)")
    assert pf.verdict({**base, "n": 3, "p": 0.4, "p_holm": 1.0, "finding": False, "level": True, "margin": 0.01,
                       "wins": 3}) == "level within ±0.01 (equivalence test)"
    assert "no conclusion" in pf.verdict({**base, "n": 2, "p": math.nan, "wins": 2})
    assert pf.verdict({**base, "n": 0, "p": math.nan, "wins": 0}) == "no shared seeds yet"
    # a loss: lower is better, so a negative difference puts b ahead
    loss = {**hit, "quantity": "loss_epoch1"}
    assert pf.verdict({**loss, "diff": -0.03}).startswith("svd ahead of random")
    assert pf.verdict({**loss, "diff": 0.03, "wins": 0}).startswith("svd behind random")


def test_paired_counts_a_lower_loss_as_a_win(grid_dir):
    runs = af.points_table(grid_dir)
    runs["loss_epoch1"] = 0.4
    rnd = (runs["task"] == "mrpc") & (runs["method"] == "random")
    runs.loc[rnd, "loss_epoch1"] = runs.loc[rnd, "seed"].map({0: 0.5, 1: 0.45, 2: 0.38})
    c = af.paired(runs, "mrpc", "random", "svd", "loss_epoch1")
    assert c["diffs"] == pytest.approx([-0.1, -0.05, 0.02]) and c["wins"] == 2 and c["behind"] == 1


def test_findings_markdown_states_computed_numbers(grid_dir, tmp_path):
    text = pf.findings_markdown(grid_dir)
    d = np.array([SVD[s] - RANDOM[s] for s in range(3)])
    assert f"{d.mean():+.3f} ± {d.std(ddof=1):.3f}" in text          # svd − random, final, paired
    holm = next(c["p_holm"] for c in af.round1_family(af.points_table(grid_dir))
                if (c["task"], c["b"], c["quantity"]) == ("mrpc", "svd", "final"))
    assert holm == pytest.approx(4 * stats.ttest_rel([SVD[s] for s in range(3)], [RANDOM[s] for s in range(3)]).pvalue)
    assert f"svd ahead of random (Holm-adjusted p = {holm:.2f})" in text
    assert "Computed from 16 runs in `logs/quick`" in text
    naive0 = np.mean([NAIVE[s] / 5 for s in range(3)])                  # step-0 value of make_log's curve
    assert f"before training its accuracy is {naive0:.3f}" in text
    # RTE: nothing above the baseline, and the page says the comparison is uninformative there
    assert "RTE: no adapter method ends above the majority-class baseline (0.600)" in text
    assert "differences are noise" in text


def test_brief_answers_each_question_on_the_tasks_that_learn(grid_dir):
    runs = af.points_table(grid_dir)
    chance = {"mrpc": False, "rte": True}
    lines = pf.brief(runs, chance)
    text = "\n".join(lines)
    assert lines[0].startswith("**In brief** (on MRPC, where adapters learn")     # RTE (at chance) left out
    assert "RTE" not in text
    d = np.array([SVD[s] - RANDOM[s] for s in range(3)])
    p = stats.ttest_rel([SVD[s] for s in range(3)], [RANDOM[s] for s in range(3)]).pvalue
    assert (f"svd − random, final: MRPC {d.mean():+.3f} ± {d.std(ddof=1):.3f} (svd ahead in 3/3 seeds, "
            f"Holm p = {4 * p:.2f})" in text) and "Distinguishable on MRPC." in text
    naive = np.array([NAIVE[s] for s in range(3)])
    svd = np.array([SVD[s] for s in range(3)])
    assert (f"seed-to-seed std {naive.std(ddof=1):.3f} against {svd.std(ddof=1):.3f} for svd" in text)
    assert "LoRA-FA" not in text and "smaller learning rates" not in text     # no such runs yet
    assert pf.brief(runs, {"mrpc": True, "rte": True})[0].startswith("**In brief.** No adapter method")


def test_short_names_the_side_most_seeds_are_on():
    c = dict(b="svd", n=3, p=0.4, wins=1, behind=2, diffs=[0.01, -0.02, -0.03], quantity="final")
    assert pf._short(c) == "svd behind in 2/3 seeds, p = 0.40, not a finding"
    # a lower training loss is "ahead"
    loss = {**c, "quantity": "loss_epoch1", "wins": 2, "behind": 1}
    assert pf._short(loss) == "svd ahead in 2/3 seeds, p = 0.40, not a finding"
    assert pf._short({**c, "n": 2}) == "2 shared seeds, no conclusion"


def test_comparison_and_lr_tables(grid_dir, tmp_path):
    t = pf.comparison_table(grid_dir)
    row = t[(t["task"] == "mrpc") & (t["comparison"] == "svd − random") & (t["at"] == "final")].iloc[0]
    assert row["seeds"] == 3 and row["b ahead in"] == "3/3"
    assert set(t["comparison"]) == {"svd − random", "svd_naive − svd"}     # only pairs that have runs
    assert len(pf.lr_table(grid_dir)) == 0                          # one lr: no lr block yet
    # add an lr block: random and svd at lr 1e-4 for seeds 0-2
    extra = [make_log("mrpc", m, s, final={"accuracy": v}, n_evals=5, lr=1e-4)
             for m, vals in (("random", {0: 0.70, 1: 0.71, 2: 0.69}), ("svd", {0: 0.75, 1: 0.77, 2: 0.74}))
             for s, v in vals.items()]
    write_logs(grid_dir, extra)
    lt = pf.lr_table(grid_dir)
    assert sorted(set(lt["lr"])) == pytest.approx([1e-4, PRESET_LR])
    r = lt[(lt["lr"] == 1e-4) & (lt["at"] == "final")].iloc[0]
    assert r["svd − random (paired)"] == f"{np.mean([0.05, 0.06, 0.05]):+.3f} ± {np.std([0.05, 0.06, 0.05], ddof=1):.3f}"
    # the main comparison still uses the preset's lr, not the block's (random has 3 runs at each: a tie)
    c = af.paired(af.points_table(grid_dir), "mrpc", "random", "svd")
    assert c["lr_a"] == pytest.approx(PRESET_LR) and c["lr_b"] == pytest.approx(PRESET_LR) and c["n"] == 3
    head, _ = book.headline(grid_dir)
    assert head.loc[head["method"] == "random", "mrpc"].iloc[0].startswith(f"{np.mean(list(RANDOM.values())):.3f}")
    # the page's summary states the lr block too, one entry per learning rate
    brief = "\n".join(pf.brief(af.points_table(grid_dir), {"mrpc": False, "rte": True}))
    assert ("**And at smaller learning rates** (the original claim)? Final accuracy on MRPC, svd vs random and "
            "svd − random: lr 0.0001: 0.753 vs 0.700, +0.053") in brief
    assert f"lr {PRESET_LR:g}: 0.843 vs 0.810, +0.033" in brief and "(majority class 0.500)." in brief


def test_differences_figure(grid_dir, tmp_path):
    out = training.differences_figure(grid_dir, tmp_path / "fig")
    entry = out["differences"]
    assert (tmp_path / "fig" / "differences.png").stat().st_size > 5000
    assert "mrpc-svd-" in " ".join(entry["runs"]) and "paired differences" in entry["caption"].lower()
    assert not training.differences_figure(write_logs(tmp_path / "solo", _logs()[:1]), tmp_path / "fig2")


def test_spectra_sentences_average_the_chosen_tasks(tmp_path):
    import pandas as pd
    rows = [dict(task=t, method=m, stable_rank=sr, effective_rank=2 * sr, energy_top1=0.5, overlap_right_top=ov,
                 overlap_left_top=ov, overlap_random=8 / 384)
            for t, m, sr, ov in (("mrpc", "svd", 3.0, 0.5), ("mrpc", "svd", 5.0, 0.7), ("rte", "svd", 100.0, 0.0),
                                 ("mrpc", "random", 1.5, 0.02))]
    csv = tmp_path / "spectra.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)
    lines = pf.spectra_sentences(csv, ["mrpc"])
    assert "(MRPC)" in lines[0] and "0.021 for random subspaces" in lines[0]
    assert lines[1].startswith("- random: stable rank 1.50")                # method order: random before svd
    assert lines[2].startswith("- svd: stable rank 4.00, effective rank 8.0") and "input subspace 0.600" in lines[2]
    assert "stable rank 36.00" in pf.spectra_sentences(csv)[2]       # all tasks: (3 + 5 + 100) / 3


def test_spectra_sentences_pool_each_method_at_its_main_lr(tmp_path):
    """A grid's extra lr block is not pooled into the spectra sentences, which name the runs and the lr."""
    import pandas as pd
    runs = pd.DataFrame([dict(task="mrpc", method=m, lr=lr, preset="quick", seed=s)
                         for m, lr in (("random", 1e-3), ("svd", 1e-3), ("svd", 1e-4)) for s in range(3)])
    rows = [dict(run_id=f"{m}-{lr:g}-{s}", task="mrpc", method=m, lr=lr, stable_rank=sr, effective_rank=1.0,
                 energy_top1=0.5, overlap_right_top=0.1, overlap_left_top=0.1, overlap_random=8 / 384)
            for m, lr, sr in (("random", 1e-3, 2.0), ("svd", 1e-3, 4.0), ("svd", 1e-4, 100.0)) for s in range(3)]
    csv = tmp_path / "spectra.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)
    lines = pf.spectra_sentences(csv, ["mrpc"], runs)
    assert lines[2].startswith("- svd: stable rank 4.00")                  # the lr-1e-4 block left out
    assert "random: 3 runs at lr 0.001; svd: 3 runs at lr 0.001" in lines[0]
    assert pf.spectra_sentences(csv, ["mrpc"])[2].startswith("- svd: stable rank 52.00")   # no runs: all pooled


def test_convergence_figure_leaves_out_the_lr_block(grid_dir, tmp_path):
    extra = [make_log("mrpc", "random", s, final={"accuracy": 0.7}, n_evals=5, lr=1e-4) for s in range(3)]
    write_logs(grid_dir, extra)
    runs = training.convergence_figure(grid_dir, tmp_path / "fig", "mrpc")["convergence_mrpc"]["runs"]
    assert len(runs) == 10 and not any("lr1e-4" in r for r in runs)        # 3 random + 4 svd + 3 svd_naive
    every = training.convergence_figure(grid_dir, tmp_path / "fig", "mrpc", main_lr_only=False)
    assert len(every["convergence_mrpc"]["runs"]) == 13


def test_benchmark_verdict_from_json(tmp_path):
    import json
    ms = {"ours_lora": 1030.0, "peft_lora": 1035.0, "full_ft": 1280.0, "floor_qv": 894.0}
    b = {"created": "2026-01-01", "threads": 2, "cpu_model": "cpu", "load_avg_before_after": [0.1, 1.0],
         "step_time_ms": {k: {"median": v, "trainable_params": 22_713_986 if k == "full_ft" else 1} for k, v in ms.items()},
         "ratios": {"ours_over_peft": 1030 / 1035, "ours_over_full": 1030 / 1280, "floor_over_full": 894 / 1280,
                    "ours_over_floor": 1030 / 894},
         "ratios_paired_median": {"ours_over_peft": 0.99, "ours_over_full": 0.81, "floor_over_full": 0.7,
                                  "ours_over_floor": 1.15},
         "ratio_targets": {"ours_over_peft": 1.0, "ours_over_full": 0.70}}
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(b))
    text = book.benchmark_verdict(path)
    assert "`ours_over_peft` = 0.995 (paired 0.990): within the target ≤ 1.00." in text
    assert "`ours_over_full` = 0.805 (paired 0.810): above the target ≤ 0.70" in text
    assert f"{0.70 * 1280 - 894:.0f} ms above the floor" in text and "out of reach" in text
    assert "22.7 M parameters" in text and "Our adapters add 136 ms" in text
    assert "no benchmark" in book.benchmark_verdict(tmp_path / "none.json")


def _planted(rows_in, rows_out, n_in=12, n_out=10):
    """ΔW = B A of rank len(rows_in) whose row space is span(e_i, i ∈ rows_in) (input side) and column
    space span(e_j, j ∈ rows_out) (output side), with distinct singular values 4, 3, 2, 1."""
    import torch
    r = len(rows_in)
    A, B = torch.zeros(r, n_in), torch.zeros(n_out, r)
    for k, (i, j) in enumerate(zip(rows_in, rows_out)):
        A[k, i], B[j, k] = 1.0, float(r - k)
    return B, A


def test_subspace_agreement_pairs_runs_that_differ_in_one_thing(tmp_path):
    import lora
    layers = ("enc.0.query", "enc.0.value")
    plan = {   # (task, method, seed, lr): (input rows, output rows); smoke preset: r = 4, lr 2e-2
        ("mrpc", "random", 0, None): ((0, 1, 2, 3), (0, 1, 2, 3)),
        ("mrpc", "random", 1, None): ((0, 1, 4, 5), (0, 1, 2, 3)),    # half the input span shared: φ_in = 0.5
        ("mrpc", "svd", 0, None): ((8, 9, 10, 11), (0, 1, 2, 9)),     # disjoint input, 3/4 output span shared
        ("mrpc", "random", 2, 1e-4): ((0, 1, 2, 3), (0, 1, 2, 3)),    # lr block: left out
        ("rte", "random", 0, None): ((0, 1, 2, 3), (0, 1, 2, 3)),     # alone on its task: no pair
    }
    logs = []
    d = tmp_path / "quick"
    d.mkdir()
    for (task, method, seed, lr), (ri, ro) in plan.items():
        lg = make_log(task, method, seed, lr=lr)
        lg["factors_file"] = f"{lg['run_id']}.safetensors"
        lora.save_factors(d / lg["factors_file"], {n: _planted(ri, ro) for n in layers}, init=method)
        logs.append(lg)
    write_logs(d, logs)
    t = asp.subspace_agreement_table(d)
    assert len(t) == 2 and set(t["task"]) == {"mrpc"} and set(t["layers"]) == {2}
    assert not t["run_a"].str.contains("lr1e-4").any() and not t["run_b"].str.contains("lr1e-4").any()
    row = {(r.method_a, r.seed_a, r.method_b, r.seed_b): r for r in t.itertuples()}
    seed_pair = row[("random", 0, "random", 1)]
    assert seed_pair.relation == "seed" and seed_pair.phi_in == pytest.approx(0.5) and seed_pair.phi_out == pytest.approx(1.0)
    init_pair = row[("random", 0, "svd", 0)]
    assert init_pair.relation == "init" and init_pair.phi_in == pytest.approx(0.0, abs=1e-12)
    assert init_pair.phi_out == pytest.approx(0.75)
    assert ("random", 1, "svd", 0) not in row                       # differ in both seed and method
    assert set(t["random"]) == {4 / 12}                               # r/n of the input space

    csv = tmp_path / "subspaces.csv"
    t.to_csv(csv, index=False)
    lines = pf.subspace_sentences(csv, ["mrpc"])
    assert "0.333 = independent random subspaces" in lines[0] and "(MRPC)" in lines[0]
    assert lines[1] == "- Same method, another seed: random 0.50 / 1.00."
    assert lines[2] == "- Same seed, another init: random vs svd 0.00 / 0.75."
    assert pf.subspace_sentences(csv, ["rte"]) == []


def test_readme_results_block_is_rewritten_from_the_logs(tmp_path):
    import yaml

    from harness.config import config_hash
    from harness.grid import expand
    from harness.tasks import UserError
    out = tmp_path / "logs" / "mini"
    spec = {"name": "mini", "preset": "smoke", "out_dir": str(out), "tasks": ["mrpc", "cola"],
            "methods": ["random", "full"], "seeds": [0, 1]}
    spec_path = tmp_path / "mini.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    cfgs = expand(spec)
    finals = {("mrpc", "random", 0): 0.70, ("mrpc", "random", 1): 0.74, ("mrpc", "full", 0): 0.80,
              ("cola", "random", 0): 0.20}
    logs = []
    for c in cfgs:
        key = (c["task"], c["method"], c["seed"])
        if key in finals:
            main = "mcc" if c["task"] == "cola" else "accuracy"
            lg = make_log(c["task"], c["method"], c["seed"], final={main: finals[key]}, main=main, lr=None,
                          epochs=c["epochs"], baseline=0.0 if main == "mcc" else 0.684)
            assert lg["config"] == c
            lg["config_hash"] = config_hash(c)
            logs.append(lg)
    failed = next(c for c in cfgs if (c["task"], c["method"], c["seed"]) == ("cola", "full", 1))
    logs.append(make_log("cola", "full", 1, status="failed", reason="boom", lr=None, epochs=failed["epochs"]))
    assert logs[-1]["config"] == failed
    logs[-1]["config_hash"] = config_hash(logs[-1]["config"])
    write_logs(out, logs)

    readme = tmp_path / "README.md"
    readme.write_text(f"# t\n\nbefore\n{pr.README_BEGIN}\nstale\n{pr.README_END}\nafter\n")
    assert pr.update_readme(readme, spec_path) is True
    text = readme.read_text()
    assert text.startswith("# t\n\nbefore\n") and text.endswith(f"{pr.README_END}\nafter\n") and "stale" not in text
    assert "**4 of 8 runs** logged (1 failed, reasons in their logs)" in text
    assert "| method | MRPC (accuracy) | CoLA (MCC) |" in text
    assert "| random | 0.720 ± 0.028 (n=2) | 0.200 (n=1) |" in text
    assert "| full fine-tuning | 0.800 (n=1) | – |" in text
    assert "| majority class | 0.684 | 0 |" in text
    assert pr.update_readme(readme, spec_path) is False                  # idempotent
    readme.write_text("# no block\n")
    with pytest.raises(UserError, match="no '<!-- results:begin"):
        pr.update_readme(readme, spec_path)


def test_readme_results_add_the_lr_comparison(tmp_path):
    import yaml

    from harness.config import config_hash
    from harness.grid import expand
    out = tmp_path / "logs" / "lrs"
    spec = {"name": "lrs", "preset": "smoke", "out_dir": str(out), "tasks": ["mrpc"], "methods": ["random", "svd"],
            "seeds": [0, 1], "blocks": [{}, {"vary": {"lr": [1e-4]}}]}
    (tmp_path / "lrs.yaml").write_text(yaml.safe_dump(spec))
    acc = {("random", PRESET_LR, 0): 0.70, ("random", PRESET_LR, 1): 0.72, ("svd", PRESET_LR, 0): 0.71,
           ("svd", PRESET_LR, 1): 0.75, ("random", 1e-4, 0): 0.60, ("random", 1e-4, 1): 0.62,
           ("svd", 1e-4, 0): 0.70, ("svd", 1e-4, 1): 0.73}
    logs = []
    for c in expand(spec):
        lg = make_log("mrpc", c["method"], c["seed"], final={"accuracy": acc[(c["method"], c["lr"], c["seed"])]},
                      lr=c["lr"], epochs=c["epochs"])
        assert lg["config"] == c
        lg["config_hash"] = config_hash(c)
        logs.append(lg)
    write_logs(out, logs)
    text = pr.readme_results(tmp_path / "lrs.yaml")
    assert "**8 of 8 runs** logged." in text
    assert "| random | 0.710 ± 0.014 (n=2) |" in text                       # the preset's lr only
    assert "| 0.0001 | 0.610 ± 0.014 | 0.715 ± 0.021 | +0.105 ± 0.007 | 2/2 |" in text
    assert f"| {PRESET_LR:g} | 0.710 ± 0.014 | 0.730 ± 0.028 | +0.020 ± 0.014 | 2/2 |" in text
    # the summary bullets of the book's findings page follow the tables; two seeds are no conclusion
    assert ("**Does SVD init end higher than random init?** svd − random, final: MRPC +0.020 ± 0.014 "
            "(2 shared seeds, no conclusion). Too few shared seeds for a conclusion yet.") in text


# ----------------------------------------------------------------------------- the rulebook (harness.analysis.stats)


def test_rulebook_finding_level_and_not_determined():
    from harness.analysis import stats as st
    comps = [dict(task="mrpc", diff=-0.04, sd=0.004, n=5, p=1e-4),      # clearly behind
             dict(task="mrpc", diff=0.001, sd=0.002, n=5, p=0.3),       # inside ±0.01, tight: level
             dict(task="mrpc", diff=0.004, sd=0.02, n=5, p=0.7),        # wide: not determined
             dict(task="rte", diff=0.05, sd=0.001, n=5, p=1e-6)]        # not learned: outside the family
    out = st.with_holm(comps, "init_vs_random", unlearned={"rte"})
    assert [c["verdict"].split(" (")[0] for c in out] == ["behind", "level", "not determined at n = 5",
                                                          "not learned"]
    assert out[0]["p_holm"] == pytest.approx(3e-4)                    # Holm over the three inside, not four
    assert out[3]["p_holm"] is None and out[3]["family"] is None
    # the minimum detectable difference: t_{1 − 0.05/6, 4}·sd/√5 for the family of three
    from scipy import stats
    assert out[2]["mdd"] == pytest.approx(stats.t.ppf(1 - 0.05 / 6, 4) * 0.02 / 5 ** 0.5)
    assert "detectable: |Δ| ≥ 0.035" in out[2]["verdict"]
    # TOST by hand: the larger one-sided p of (d̄ ± δ)/(s/√n)
    se = 0.002 / 5 ** 0.5
    assert out[1]["p_tost"] == pytest.approx(max(stats.t.sf((0.001 + 0.01) / se, 4), stats.t.cdf((0.001 - 0.01) / se, 4)))
    with pytest.raises(ValueError, match="unknown family 'nope'"):
        st.with_holm(comps, "nope")


def test_thresholds_ignore_float_noise():
    from harness.analysis.stats import at_least, below
    assert at_least(0.7999999999999999, 0.8) and not at_least(0.7999, 0.8)
    assert below(0.0999999, 0.1) and not below(0.10000000000000002, 0.1)
