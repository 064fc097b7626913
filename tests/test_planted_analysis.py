"""harness.analysis.planted on constructed logs: the selected lr's curve gives the speed, and each prediction's
verdict follows its stated criterion (held, not held, not run)."""
import json

import pytest

from harness.analysis import planted as pa


def _log(sub, init, seed, final_err, speed_err=None, q=None, v=None, angle=45.0, heldout=0.5):
    lr = 1e-3
    speed = speed_err if speed_err is not None else (1.0 + final_err) / 2
    mid = 3 * speed - 1.0 - final_err                   # the curve (1, mid, final) has mean rel_err = speed
    pt = lambda step, e: dict(step=step, rel_err=e, heldout_mse=heldout)                       # noqa: E731
    final = dict(step=20, rel_err=final_err, rel_err_query=q if q is not None else final_err + 0.01,
                 rel_err_value=v if v is not None else final_err - 0.01, angle_left=angle, angle_right=angle,
                 heldout_mse=heldout, heldout_rel=heldout)
    return {"kind": "planted", "status": "ok", "config": {"subspace": sub, "init": init, "seed": seed},
            "best_lr": lr, "final": final, "curves": {f"{lr:g}": [pt(0, 1.0), pt(10, mid), pt(20, final_err)]}}


def _planted(tmp_path, logs):
    for i, lg in enumerate(logs):
        (tmp_path / f"{i}.json").write_text(json.dumps(lg))
    (tmp_path / "junk.json").write_text("{not json")
    return pa.Planted(pa.load_planted(tmp_path))


def test_speed_is_the_mean_of_the_selected_curve(tmp_path):
    pl = _planted(tmp_path, [_log("top", "random", 0, 0.4, speed_err=0.6)])
    assert pa.speed(pl.logs[0]) == pytest.approx(0.6)
    steps, mean, _ = pl.curve("top", "random")
    assert steps == [0, 10, 20] and mean[-1] == pytest.approx(0.4)


def test_predictions_follow_their_criteria(tmp_path):
    logs = []
    for seed in (0, 1):
        logs += [_log("top", "lora_fa_svd", seed, 0.1), _log("bottom", "lora_fa_svd", seed, 1.0, angle=90.0),
                 _log("random", "lora_fa_svd", seed, 0.995),
                 _log("top", "random", seed, 0.50), _log("bottom", "random", seed, 0.55), _log("random", "random", seed, 0.70)]
    res = {r["id"]: r for r in pa.check_predictions(_planted(tmp_path, logs))}
    assert res["P1"]["held"] is True and "(b) 1.000 (angle 90.0°)" in res["P1"]["evidence"]
    assert res["P3"]["held"] is False and "spread 0.200" in res["P3"]["evidence"]   # 0.70 − 0.50 ≥ 0.10
    assert res["P2"]["held"] is None and res["P6"]["evidence"] == "not run"
    assert res["P7"]["held"] is True                                                # value below query everywhere


def test_p1_fails_when_the_frozen_top_A_reaches_the_bottom(tmp_path):
    logs = [_log("top", "lora_fa_svd", 0, 0.1), _log("bottom", "lora_fa_svd", 0, 0.5, angle=90.0),
            _log("random", "lora_fa_svd", 0, 0.99)]
    res = {r["id"]: r for r in pa.check_predictions(_planted(tmp_path, logs))}
    assert res["P1"]["held"] is False


def test_final_table_has_one_row_per_cell(tmp_path):
    pl = _planted(tmp_path, [_log("top", "svd", 0, 0.2), _log("top", "svd", 1, 0.4), _log("bottom", "svd", 0, 0.9)])
    t = pa.final_table(pl)
    assert len(t) == 2 and t.iloc[0]["rel_err"] == "0.300 ± 0.141"


def test_recovery_figure_has_a_panel_per_subspace(tmp_path):
    from harness.plots.planted import recovery_figure
    pl = _planted(tmp_path, [_log("top", "svd", 0, 0.2), _log("bottom", "svd", 0, 0.9), _log("bottom", "random", 0, 0.8)])
    fig = recovery_figure(pl)
    assert [ax.get_title() for ax in fig.axes] == ["(a) W's top-k", "(b) W's bottom-k"]
    assert len(fig.axes[1].get_lines()) == 2 and fig.axes[0].get_lines()[0].get_ydata()[-1] == pytest.approx(0.2)


def test_page_numbers_and_verdicts(tmp_path):
    from harness.prose import planted as pp
    logs = [_log("top", "lora_fa_svd", 0, 0.1), _log("bottom", "lora_fa_svd", 0, 1.0, angle=90.0),
            _log("random", "lora_fa_svd", 0, 0.995), _log("top", "random", 0, 0.3, speed_err=0.5)]
    pl = _planted(tmp_path, logs)
    checks = pa.check_predictions(pl)
    nums = pp.page_numbers(pl, checks)
    assert nums["pl_held"].startswith("P1") and nums["pl_best_top"] == "lora_fa_svd"
    assert nums["pl_random_top_speed"] == pytest.approx(0.5) and nums["pl_fastest_top"] == "random"   # speed 0.5 < 0.55
    frame = pp.predictions_frame(checks)
    assert frame.iloc[0]["verdict"] == "held" and (frame["verdict"] == "not run").sum() == 5   # P2-P6


def test_fastest_prediction(tmp_path):
    """P4: svd fastest in (a) and not faster than random in (b), (c)."""
    logs = []
    for sub, svd, rnd in (("top", 0.3, 0.5), ("bottom", 0.7, 0.6), ("random", 0.8, 0.6)):
        logs += [_log(sub, "svd", 0, svd, speed_err=svd), _log(sub, "random", 0, rnd, speed_err=rnd)]
    res = {r["id"]: r for r in pa.check_predictions(_planted(tmp_path, logs))}
    assert res["P4"]["held"] is True and res["P4"]["evidence"].startswith("fastest in top: svd (0.300")
    assert res["P5"]["held"] is None
    logs[2] = _log("bottom", "svd", 0, 0.5, speed_err=0.5)          # svd now faster than random in (b)
    (tmp_path / "b").mkdir()
    res = {r["id"]: r for r in pa.check_predictions(_planted(tmp_path / "b", logs))}
    assert res["P4"]["held"] is False


def test_p8_holds_at_exactly_the_criterion(tmp_path):
    """Four inits whose held-out MSE and rel_err orders differ by one swap: Spearman ρ = 1 − 6·2/60 = 0.8 exactly,
    which scipy returns as 0.7999999999999999; the criterion ρ ≥ 0.8 is met."""
    from scipy.stats import spearmanr
    errs, held = [0.1, 0.2, 0.3, 0.4], [0.1, 0.3, 0.2, 0.4]
    assert spearmanr(held, errs).statistic < 0.8                    # the float noise the rule must not see
    logs = [_log("top", i, 0, e, heldout=h) for i, e, h in zip(("random", "svd", "svd_minor", "olora"), errs, held)]
    res = {r["id"]: r for r in pa.check_predictions(_planted(tmp_path, logs))}
    assert res["P8"]["held"] is True and "top ρ = 0.80" in res["P8"]["evidence"]
    logs[3] = _log("top", "olora", 0, 0.4, heldout=0.05)           # olora's MSE now the lowest: ρ = 0.2
    (tmp_path / "b").mkdir()
    res = {r["id"]: r for r in pa.check_predictions(_planted(tmp_path / "b", logs))}
    assert res["P8"]["held"] is False
