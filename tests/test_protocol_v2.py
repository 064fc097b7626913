"""Protocol v2: the seed project's init, the validation split, the lr selection rule and its grid
plumbing (edge extension, lr_from), the statistics, and the compact factor files."""
from __future__ import annotations

import math
from functools import partial

import numpy as np
import pytest
import torch
from scipy import stats as st

import lora
from harness import protocol
from harness.config import config_hash, make_config, run_id
from harness.data import Example, split_validation
from harness.grid import _ladder, expand, load_spec
from harness.logs import write_json_atomic
from harness.analysis.stats import holm, paired
from harness.tasks import UserError, get_task


# ------------------------------------------------------------------ svd_seed
def test_svd_seed_factors_equal_the_seed_projects_construction():
    torch.manual_seed(0)
    W = torch.randn(12, 12, dtype=torch.float64)
    B, A = lora.core.svd_seed_factors(W, 3)
    u, s, v = torch.linalg.svd(W)            # the seed code: v is Vᵀ, used as if it were V
    assert torch.allclose(A, (u[:, :3] * s[:3]).T) and torch.allclose(B, v[:, :3])
    assert not torch.allclose(B, v[:3].T)    # i.e. *not* the top right singular vectors


def test_svd_seed_changes_the_model_freezes_A_and_refuses_non_square_layers():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(10, 10))
    x = torch.randn(4, 10)
    y0 = net(x).detach()
    lora.add_lora(net, ["0"], rank=2, alpha=1.0, init="svd_seed", seed=0)
    layer = lora.lora_layers(net)["0"]
    assert not layer.lora_A.requires_grad and layer.lora_B.requires_grad and not layer.residual
    B0, A0 = lora.core.svd_seed_factors(layer.base.weight, 2)
    assert torch.allclose(net(x) - y0, x @ (0.5 * B0 @ A0).T, atol=1e-5)      # s = alpha/r = 1/2
    with pytest.raises(ValueError, match=r"svd_seed needs a square weight.*8×10"):
        lora.add_lora(torch.nn.Sequential(torch.nn.Linear(10, 8)), ["0"], rank=2, init="svd_seed")


# ------------------------------------------------------------------ validation split
def test_validation_split_is_fixed_stratified_and_disjoint():
    task = get_task("mrpc")
    ex = [Example((f"a{i}", f"b{i}"), int(i % 3 == 0)) for i in range(300)]
    tr, va, info = split_validation(ex, task, 0.1)
    tr2, va2, info2 = split_validation(ex, task, 0.1)
    assert va == va2 and info == info2                                 # the same every time
    assert len(va) == 30 and len(tr) == 270 and not set(va) & set(tr)
    assert sum(e.label for e in va) == 10                              # 1/3 positives, as in the whole set
    assert info["indices_sha256"] != split_validation(ex, task, 0.1, seed=1)[2]["indices_sha256"]
    reg = [Example((f"a{i}", f"b{i}"), i / 60) for i in range(300)]    # a regression task: score quintiles
    _, vr, _ = split_validation(reg, get_task("stsb"), 0.2)
    assert len(vr) == 60 and {int(e.label // 1) for e in vr} == {0, 1, 2, 3, 4}
    with pytest.raises(UserError, match="val_fraction"):
        split_validation(ex, task, 1.5)


# ------------------------------------------------------------------ selection rule
def _log(task, method, lr, val, status="ok", seed=0):
    cfg = {"task": task, "method": method, "lr": lr, "seed": seed}
    return {"run_id": f"{task}-{method}-{lr}", "status": status, "config": cfg,
            "task": {"main_metric": "accuracy"}, "final": {"accuracy": 0.0, "val": {"accuracy": val}}}


def test_selection_rule_best_final_validation_ties_to_smaller_lr_failed_is_minus_infinity():
    logs = [_log("mrpc", "svd", 1e-4, 0.70), _log("mrpc", "svd", 1e-3, 0.75), _log("mrpc", "svd", 3e-3, 0.75),
            _log("mrpc", "svd", 1e-2, 0.99, status="failed")]
    assert protocol.select_lr(logs, "mrpc", "svd") == 1e-3
    assert protocol.sweep_scores(logs, "mrpc", "svd")[1e-2] == -math.inf
    row = protocol.selection_table(logs)[0]
    assert row["selected_lr"] == 1e-3 and not row["at_edge"] and row["n_lrs"] == 4
    with pytest.raises(UserError, match="no runs for task 'rte'"):
        protocol.select_lr(logs, "rte", "svd")


def test_lr_ladder_continues_the_one_three_sequence():
    assert _ladder(1e-2, True) == 3e-2 and _ladder(3e-2, True) == 1e-1
    assert _ladder(1e-4, False) == 3e-5 and _ladder(3e-5, False) == 1e-5


def _sweep_and_final(tmp_path, methods: str, lrs: str, extra: str = ""):
    """A smoke sweep spec (seed 0, one edge extension per side) and a final spec taking its lrs (seeds 0, 1):
    (sweep path, final path, the sweep's log directory, made)."""
    sweep, final, out = tmp_path / "sweep.yaml", tmp_path / "final.yaml", tmp_path / "sw"
    sweep.write_text(f"preset: smoke\nout_dir: {out}\ntasks: [mrpc]\nmethods: {methods}\nseeds: [0]\n"
                     f"extend_lr_edges: 1\nvary: {{lr: {lrs}}}\n{extra}")
    final.write_text(f"preset: smoke\nout_dir: {tmp_path / 'fin'}\nlr_from: {sweep}\ntasks: [mrpc]\n"
                     f"methods: {methods}\nseeds: [0, 1]\n{extra}")
    out.mkdir()
    return sweep, final, out


def _sweep_log(out, cfg: dict, val: float) -> None:
    """A sweep run's ok log with final validation metric ``val``."""
    log = {**_log("mrpc", cfg["method"], cfg["lr"], val), "run_id": run_id(cfg), "config": cfg,
           "config_hash": config_hash(cfg), "history": {}, "env": {}, "data": {}}
    write_json_atomic(out / f"{run_id(cfg)}.json", log)


def test_edge_extension_and_lr_from_follow_the_sweep_logs(tmp_path):
    sweep, final, out = _sweep_and_final(tmp_path, "[random]", "[0.001, 0.003]", "overrides: {val_fraction: 0.2}\n")
    spec = load_spec(sweep)
    cfgs = expand(spec, out)
    assert [c["lr"] for c in cfgs] == [1e-3, 3e-3]                     # nothing logged: no extension yet
    with pytest.raises(UserError, match="not finished"):
        expand(load_spec(final))

    log = partial(_sweep_log, out)
    log(cfgs[0], 0.6)
    log(cfgs[1], 0.7)                                                  # best at the upper edge → one more rate
    ext = expand(spec, out)
    assert [c["lr"] for c in ext] == [1e-3, 3e-3, 1e-2]
    log(ext[2], 0.8)                                                   # still at the edge, but the limit is 1
    assert [c["lr"] for c in expand(spec, out)] == [1e-3, 3e-3, 1e-2]
    assert {c["lr"] for c in expand(load_spec(final))} == {1e-2}        # the final grid runs the selected lr


def test_lr_from_runs_the_cells_whose_sweep_is_finished_and_lists_the_rest_as_waiting(tmp_path, capsys,
                                                                                     glue_fixture):
    from harness.__main__ import main
    sweep, final, out = _sweep_and_final(tmp_path, "[random, svd]", "[0.001, 0.003, 0.01]")
    for cfg, val in zip(expand(load_spec(sweep), out), [0.6, 0.7, 0.65, 0.6, 0.6, 0.7]):
        if cfg["method"] == "random" or cfg["lr"] != 0.01:     # svd's last rate is still to run
            _sweep_log(out, cfg, val)
    with pytest.raises(UserError, match="not finished for mrpc svd"):
        expand(load_spec(final))
    waiting = []
    ready = expand(load_spec(final), None, waiting)
    assert [(c["method"], c["lr"], c["seed"]) for c in ready] == [("random", 3e-3, 0), ("random", 3e-3, 1)]
    assert waiting == [("mrpc", "svd", 0), ("mrpc", "svd", 1)]
    capsys.readouterr()
    assert main(["status", str(final)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == "2 todo, 2 waiting" and sum(ln.startswith("waiting mrpc svd seed") for ln in lines) == 2
    from harness.analysis.base import coverage
    assert coverage(final) == {"logged": 0, "failed": 0, "todo": 2, "waiting": 2, "total": 4}
    assert main(["grid", str(final), "--data-dir", str(glue_fixture), "--executor", "process", "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith("; 2 wait for their lr sweep (mrpc svd)"), lines[0]
    assert lines[-1].startswith("2 done, 0 failed, 2 waiting for their lr sweep"), lines[-1]
    assert coverage(final) == {"logged": 2, "failed": 0, "todo": 0, "waiting": 2, "total": 4}


# ------------------------------------------------------------------ statistics
def test_paired_interval_and_p_match_scipy():
    a, b = {0: 0.70, 1: 0.72, 2: 0.71, 3: 0.69}, {0: 0.73, 1: 0.72, 2: 0.75, 3: 0.70}
    c = paired(a, b)
    d = np.array([b[s] - a[s] for s in range(4)])
    half = st.t.ppf(0.975, 3) * d.std(ddof=1) / 2
    assert c["n"] == 4 and c["wins"] == 3 and math.isclose(c["diff"], d.mean())
    assert math.isclose(c["lo"], d.mean() - half) and math.isclose(c["hi"], d.mean() + half)
    assert math.isclose(c["p"], st.ttest_rel(list(b.values()), list(a.values())).pvalue)


def test_holm_adjusts_step_down_and_keeps_order():
    adj = holm([0.01, 0.04, 0.03, None])
    assert adj[:3] == pytest.approx([0.03, 0.06, 0.06]) and adj[3] is None
    assert holm([0.5, 0.001]) == pytest.approx([0.5, 0.002])


# ------------------------------------------------------------------ configs and factor files
def test_new_fields_keep_round1_hashes_and_name_new_runs():
    cfg = make_config("mrpc", "svd", "quick", seed=0)
    assert run_id(cfg) == "mrpc-svd-r8-lr1e-3-s0-09e97aa4"            # committed in logs/quick
    assert config_hash(make_config("mrpc", "full", "quick", seed=0)).startswith("5469cf5b")
    assert config_hash({**cfg, "precision": "bf16"}) != config_hash(cfg)
    assert make_config("mrpc", "svd_seed", "v2")["alpha"] == 1.0
    assert make_config("mrpc", "eva", "v2")["init_batches"] == 8 and make_config("mrpc", "svd", "v2")["init_batches"] is None


@pytest.mark.parametrize("init", ["svd", "random", "svd_seed"])
def test_compact_factor_file_keeps_delta_w_without_cancellation(tmp_path, init):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.Linear(16, 16))
    lora.add_lora(net, ["0", "1"], rank=4, alpha=8.0, init=init, seed=0)
    with torch.no_grad():
        for layer in lora.lora_layers(net).values():
            layer.lora_B.add_(1e-3 * torch.randn_like(layer.lora_B))   # a small update beside large init factors
    exact = {n: B.double() @ A.double() for n, (B, A) in lora.delta_factors(net).items()}
    lora.save_delta_svd(tmp_path / "f.safetensors", net)
    back = lora.load_delta_factors(tmp_path / "f.safetensors")
    for n, dW in exact.items():
        B, A = back[n]
        assert torch.linalg.norm(B.double() @ A.double() - dW) <= 2e-3 * torch.linalg.norm(dW)


def test_one_comparison_has_one_adjusted_p_on_every_page():
    """The committed logs: an init against random init is a member of the one family ``init_vs_random``, so the
    protocol chapter (grid v2) and the init chapter (v2 + inits) show the same Holm-adjusted p; RTE, which no
    adapter learns, stays outside the families."""
    from pathlib import Path
    from harness.analysis import inits, protocol_v2 as pr
    logs = Path(__file__).resolve().parent.parent / "logs"
    comps = pr.comparisons(logs / "v2", logs / "v2_sweep")
    on_protocol = {(c["task"], c["b"]): c["p_holm"] for c in comps if c["family"] == "init_vs_random"}
    on_inits = {(r.task, r.init): r.p_holm for r in inits.comparisons(inits.load_runs(logs)).itertuples()}
    assert on_protocol.keys() == on_inits.keys() and len(on_inits) == 24
    assert all(on_protocol[k] == pytest.approx(on_inits[k], rel=1e-12) for k in on_inits)
    assert on_protocol["mrpc", "svd_seed"] < 0.05                     # the same finding on both pages
    rte = [c for c in comps if c["task"] == "rte"]
    assert rte and all(c["family"] is None and c["p_holm"] is None for c in rte)
