"""The base-size chapter's analysis (harness/analysis/base.py) on constructed logs: the pilot's budget rule."""
from __future__ import annotations

import math

import pytest

from harness.analysis import base
from harness.config import config_hash, make_config, run_id
from harness.logs import write_json_atomic


def _pilot_log(out, task, method, curve, majority=0.5, metric="accuracy", steps_per_epoch=10):
    """A well-formed run log whose evaluations (twice per epoch) give ``curve`` on both dev and validation."""
    cfg = make_config(task, method, "smoke", epochs=len(curve) // 2)
    evals = [{"step": 0, "epoch": 0.0, metric: majority, "val": {metric: majority}}]
    for i, v in enumerate(curve, 1):
        evals.append({"step": i * steps_per_epoch // 2, "epoch": i / 2, metric: v, "val": {metric: v}})
    log = {"run_id": run_id(cfg), "status": "ok", "reason": None, "config": cfg, "config_hash": config_hash(cfg),
           "task": {"name": task, "main_metric": metric, "num_labels": 2, "majority_baseline": {metric: majority}},
           "data": {"n_dev": 100}, "history": {"train_loss": [], "evals": evals}, "final": evals[-1],
           "env": {}, "factors_file": None}
    write_json_atomic(out / f"{log['run_id']}.json", log)


def test_flat_from_is_the_first_whole_epoch_after_which_the_curve_stays_within_tolerance():
    epochs = [0.5, 1.0, 1.5, 2.0, 2.5, 3.0]
    assert base.flat_from(epochs, [0.60, 0.70, 0.75, 0.795, 0.80, 0.80], 0.01) == 2.0
    assert base.flat_from(epochs, [0.60, 0.70, 0.75, 0.78, 0.79, 0.80], 0.01) == 3.0     # still rising
    assert base.flat_from(epochs, [0.80] * 6, 0.01) == 1.0
    # exactly at the tolerance counts as flat, whatever the float noise (0.81 − 0.80 ≠ 0.01 in binary)
    assert base.flat_from([1.0, 2.0], [0.81, 0.80], 0.01) == 1.0


def test_pilot_budget_applies_the_specs_rule(tmp_path):
    _pilot_log(tmp_path, "mrpc", "random", [0.70, 0.76, 0.80, 0.805, 0.80, 0.80], majority=0.684)
    _pilot_log(tmp_path, "mrpc", "full", [0.75, 0.82, 0.85, 0.86, 0.86, 0.865], majority=0.684)
    _pilot_log(tmp_path, "rte", "random", [0.52, 0.53, 0.52, 0.53, 0.53, 0.53], majority=0.527)
    _pilot_log(tmp_path, "cola", "random", [0.1, 0.3, 0.4, 0.45, 0.45, 0.46], majority=0.0, metric="mcc")
    df = base.pilot_budget(tmp_path).set_index(["task", "method"])
    assert list(dict.fromkeys(t for t, _ in df.index)) == ["mrpc", "rte", "cola"]        # study order
    assert df.loc[("mrpc", "random"), "flat from epoch"] == 2.0
    assert df.loc[("mrpc", "full"), "flat from epoch"] == 2.0
    assert df.loc[("mrpc", "random"), "task budget (epochs)"] == 2.0
    assert bool(df.loc[("mrpc", "random"), "learned"]) and bool(df.loc[("cola", "random"), "learned"])
    assert not bool(df.loc[("rte", "random"), "learned"])                               # at the majority class
    assert df.loc[("cola", "random"), "flat from epoch"] == 2.0                           # MCC tolerance 0.02


@pytest.mark.parametrize("metric, final, majority, expected", [
    ("accuracy", 0.714, 0.684, True), ("accuracy", 0.713, 0.684, False), ("mcc", 0.2, 0.0, True), ("mcc", 0.19, 0.0, False)])
def test_learned_threshold(metric, final, majority, expected):
    assert base.learned(metric, final, majority) is expected


def test_sweep_progress_shows_scores_so_far_and_selects_only_a_complete_series(tmp_path):
    import yaml
    out = tmp_path / "sweep"
    out.mkdir()
    spec = {"preset": "smoke", "out_dir": str(out), "tasks": ["mrpc"], "seeds": [0],
            "blocks": [{"methods": ["random", "svd"], "vary": {"lr": [1e-4, 3e-4, 1e-3]}}]}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec))

    def log(method, lr, val, minutes):
        cfg = make_config("mrpc", method, "smoke", seed=0, lr=lr)
        final = {"step": 9, "epoch": 1.0, "accuracy": 0.7, "val": {"accuracy": val}}
        write_json_atomic(out / f"{run_id(cfg)}.json", {
            "run_id": run_id(cfg), "status": "ok", "reason": None, "config": cfg, "config_hash": config_hash(cfg),
            "task": {"name": "mrpc", "main_metric": "accuracy", "num_labels": 2, "majority_baseline": {}},
            "data": {}, "history": {"train_loss": [], "evals": [final]}, "final": final, "env": {},
            "factors_file": None, "wall_time_s": minutes * 60})
    for lr, v in ((1e-4, 0.70), (3e-4, 0.74), (1e-3, 0.74)):
        log("random", lr, v, 40)
    log("svd", 1e-4, 0.71, 50)
    p = base.sweep_progress(path).set_index("method")
    assert p.loc["random", "selected lr"] == 3e-4                      # tie → the smaller rate
    assert p.loc["random", "minutes per run"] == pytest.approx(40)
    assert p.loc["random", "val by lr"] == "0.0001: 0.700; 0.0003: 0.740; 0.001: 0.740"
    assert (p.loc["svd", "logged"], p.loc["svd", "planned"]) == (1, 3)
    assert math.isnan(p.loc["svd", "selected lr"]) and "0.0003: to run" in p.loc["svd", "val by lr"]
