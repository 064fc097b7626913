"""The pull-toward-the-init experiment's analysis: the rule's choice of a and the paired effect."""
import math

import pytest
from test_analysis_spectra import make_log, write_logs

from harness.analysis import init_pull as ip


def pull_log(method, a, seed=0, val=0.7, dev=0.8, status="ok"):
    lg = make_log("mrpc", method, seed=seed, final={"accuracy": dev}, lr=1e-2, status=status, init_pull=a)
    if lg["final"]:
        lg["final"]["val"] = {"accuracy": val}
    return lg


def test_choice_takes_the_best_validation_score_and_ties_to_the_smaller_a(tmp_path):
    d = write_logs(tmp_path / "sweep", [
        pull_log("svd_seed", 0.0, val=0.70), pull_log("svd_seed", 0.01, val=0.72),
        pull_log("svd_seed", 0.05, val=0.72), pull_log("svd_seed", 0.2, val=0.60),
        pull_log("lora_fa_svd", 0.0, val=0.75), pull_log("lora_fa_svd", 0.05, val=0.74),
        pull_log("lora_fa_svd", 0.2, status="failed")])
    t = ip.choice(d)
    assert list(t["method"].unique()) == ["svd_seed", "lora_fa_svd"]        # the study's method order
    assert ip.chosen_pulls(d) == {("mrpc", "svd_seed"): 0.01, ("mrpc", "lora_fa_svd"): 0.0}
    failed = t[(t["method"] == "lora_fa_svd") & (t["a"] == 0.2)].iloc[0]
    assert math.isnan(failed["val"]) and not failed["chosen"]


def test_effect_pairs_seeds_and_puts_2a_beside_the_adapter_curvature(tmp_path):
    dev0 = {0: 0.80, 1: 0.82, 2: 0.78}
    dev1 = {0: 0.81, 1: 0.84, 2: 0.78, 3: 0.99}          # seed 3 has no a = 0 partner: left out
    d = write_logs(tmp_path / "final", [pull_log("svd_seed", 0.0, seed=s, dev=v) for s, v in dev0.items()]
                   + [pull_log("svd_seed", 0.05, seed=s, dev=v) for s, v in dev1.items()]
                   + [pull_log("lora_fa_svd", 0.0, seed=s, dev=0.7) for s in range(2)]
                   + [pull_log("lora_fa_svd", 0.05, seed=s, dev=0.6) for s in range(2)])
    t = ip.effect(d, {("mrpc", "svd_seed"): 0.05, ("mrpc", "lora_fa_svd"): 0.0},
                  {("mrpc", "svd_seed"): 0.002}).set_index("method")
    row = t.loc["svd_seed"]
    assert row["n"] == 3 and row["diff"] == pytest.approx(0.01)
    assert row["lo"] < row["diff"] < row["hi"]
    assert row["2a / λmax"] == pytest.approx(0.1 / 0.002)
    zero = t.loc["lora_fa_svd"]                          # a = 0 chosen: the seed project's 0.05 is the pull arm
    assert zero["a chosen"] == 0.0 and zero["a"] == ip.SEED_PROJECT_A
    assert zero["n"] == 2 and zero["diff"] == pytest.approx(-0.1)
    assert math.isnan(zero["2a / λmax"])
