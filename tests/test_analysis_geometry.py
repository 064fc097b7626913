"""harness.analysis.geometry / .ranks / .weights: the numbers of the rank and intruder pages, on constructed inputs."""
import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import lora
from harness.analysis import geometry as geo
from harness.analysis import ranks
from harness.analysis import weights
from harness.analysis.stats import format_pm
from harness.logs import write_json_atomic
from lora import spectra as sp

Q0, V0 = "enc.layer.0.attention.self.query", "enc.layer.0.attention.self.value"
Q1 = "enc.layer.1.attention.self.query"


def orthonormal(n, k, g):
    return np.linalg.qr(g.standard_normal((n, k)))[0]


def svd_W(n=12, seed=0, S=None):
    g = np.random.default_rng(seed)
    U, V = orthonormal(n, n, g), orthonormal(n, n, g)
    S = np.linspace(10.0, 1.0, n) if S is None else np.asarray(S, float)
    return U, S, V, torch.tensor(U @ np.diag(S) @ V.T)


# ------------------------------------------------------------------------ names
def test_layer_pos_and_label():
    assert weights.layer_pos("bert.encoder.layer.3.attention.self.value") == (3, "value")
    assert weights.layer_label("bert.encoder.layer.11.attention.self.query") == "q11"
    with pytest.raises(ValueError, match="no '.layer.<i>.'"):
        weights.layer_pos("classifier.dense")


# ------------------------------------------------------------------------ logs
def _log(d, method, rank, lr, seed, dev, val):
    rid = f"mrpc-{method}-r{rank}-lr{lr:g}-s{seed}"
    write_json_atomic(d / f"{rid}.json", {
        "run_id": rid, "status": "ok", "config_hash": rid, "history": {}, "env": {}, "data": {},
        "config": {"task": "mrpc", "method": method, "rank": rank, "lr": lr, "seed": seed, "alpha": 16.0},
        "task": {"main_metric": "accuracy", "majority_baseline": {"accuracy": 0.68}},
        "final": {"accuracy": dev, "val": {"accuracy": val}}})


@pytest.fixture
def rank_logs(tmp_path):
    for rank, base in ((1, 0.70), (8, 0.80)):
        for seed, d in enumerate((0.00, 0.02, 0.04)):
            _log(tmp_path, "random", rank, 1e-3, seed, base + d, base)
    _log(tmp_path, "random", 8, 3e-4, 0, 0.5, 0.6)      # an lr check at r = 8, seed 0
    _log(tmp_path, "random", 8, 3e-3, 0, 0.9, 0.85)
    _log(tmp_path, "svd", 8, 1e-3, 0, 0.1, 0.1)
    return tmp_path


def test_runs_table_main_lrs_accuracy_and_lr_check(rank_logs):
    runs = ranks.rank_runs(rank_logs, methods=("random",))
    assert len(runs) == 8 and set(runs["method"]) == {"random"} and runs["factors"].isna().all()
    assert ranks.main_lrs(runs) == {"random": pytest.approx(1e-3)}
    acc = ranks.accuracy_by_rank(runs)
    assert list(acc["rank"]) == [1, 8] and list(acc["n"]) == [3, 3]
    assert acc["mean"].tolist() == pytest.approx([0.72, 0.82])
    assert acc["sd"].tolist() == pytest.approx([0.02, 0.02])
    assert acc["val_mean"].tolist() == pytest.approx([0.70, 0.80])
    assert ranks.accuracy_pivot(acc).to_dict("records") == [
        {"method": "random", "r = 1": "0.720 ± 0.020", "r = 8": "0.820 ± 0.020"}]
    chk = ranks.lr_check(runs, rank=8, seed=0)
    assert chk["role"].tolist() == ["lower", "main", "higher"]
    assert chk["dev"].tolist() == pytest.approx([0.5, 0.8, 0.9])


def test_main_lrs_needs_one_shared_rate(rank_logs):
    _log(rank_logs, "random", 1, 3e-3, 0, 0.7, 0.7)       # now 1e-3 and 3e-3 are both at every rank
    with pytest.raises(ValueError, match="no single lr"):
        ranks.main_lrs(ranks.rank_runs(rank_logs, methods=("random",)))


# ------------------------------------------------------------------------ W projections, amplification
def test_projection_norms_exact():
    W = torch.diag(torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0], dtype=torch.float64))
    E = torch.eye(5, dtype=torch.float64)
    out = geo.projection_norms(W, 2, U=E[:, [2, 3]], V=E[:, [2, 3]])
    assert out["dw"] == pytest.approx(math.sqrt(9 + 4))
    assert out["w_top"] == pytest.approx(math.sqrt(25 + 16))
    assert out["random"] == pytest.approx(2 * math.sqrt(55) / 5)


def test_random_projection_is_root_mean_square_over_frames():
    g = np.random.default_rng(0)
    W = torch.tensor(g.standard_normal((12, 9)))
    r, vals = 3, []
    for _ in range(3000):
        U, V = torch.tensor(orthonormal(12, r, g)), torch.tensor(orthonormal(9, r, g))
        vals.append(float(torch.linalg.matrix_norm(U.T @ W @ V)) ** 2)
    assert math.sqrt(np.mean(vals)) == pytest.approx(geo.projection_norms(W, r)["random"], rel=0.03)


def test_layer_geometry_of_a_rank_one_update_along_a_W_direction():
    U, S, V, W = svd_W()
    c = 4.0
    B, A = torch.tensor(c * U[:, [2]]), torch.tensor(V[:, [2]].T)     # ΔW = c u_2 v_2ᵀ
    g = geo.layer_geometry(W, B, A, r=1)
    assert g["fro"] == pytest.approx(c) and g["spec"] == pytest.approx(c)
    assert g["proj_dw"] == pytest.approx(S[2]) and g["proj_wtop"] == pytest.approx(S[0])
    assert g["amp"] == pytest.approx(c / S[2])
    assert g["eff_rank"] == pytest.approx(1.0) and g["num_rank"] == 1
    # a truncated full-fine-tuning update keeping 1/4 of the energy: the whole update is 2x longer
    h = geo.layer_geometry(W, B, A, r=1, energy_kept=0.25)
    assert h["fro"] == pytest.approx(2 * c) and h["amp"] == pytest.approx(2 * c / S[2])
    assert h["eff_rank"] == pytest.approx(1.0)


def test_amplification_agrees_with_the_library():
    g = np.random.default_rng(3)
    W = torch.tensor(g.standard_normal((10, 8)))
    B, A = torch.tensor(g.standard_normal((10, 3))), torch.tensor(g.standard_normal((3, 8)))
    assert geo.layer_geometry(W, B, A, r=3)["amp"] == pytest.approx(sp.amplification_factor(B, A, W, r=3))


# ------------------------------------------------------------------------ intruders
@pytest.mark.parametrize("shape", [(12, 12), (9, 14), (14, 9)])
def test_intruder_profile_matches_lora_spectra(shape):
    g = np.random.default_rng(sum(shape))
    W = torch.tensor(g.standard_normal(shape))
    dW = torch.tensor(2.0 * np.outer(g.standard_normal(shape[0]), g.standard_normal(shape[1])))
    prof = geo.intruder_profile(W, W + dW, k=5)
    for side, key in (("left", "max_cos"), ("right", "max_cos_right")):
        ref = sp.intruder_dimensions(W, W + dW, k=5, side=side)["max_cos"].numpy()
        assert np.allclose(prof[key], ref, atol=1e-8)


def test_intruder_profile_top_energy_separates_mixtures_from_new_directions():
    n = 20
    U, S, V, W = svd_W(n, S=np.r_[10.0, 9.98, 9.96, np.linspace(3.0, 1.0, n - 3)])
    # (a) mix W's three nearly equal top directions: u' ≈ (u0 + u1 + u2)/√3, σ' ≈ 13.9 > 10
    u = U[:, :3].sum(1) / math.sqrt(3)
    Wmix = W + torch.tensor(4.0 * np.outer(u, V[:, :3].sum(1) / math.sqrt(3)))
    p = geo.intruder_profile(W, Wmix, k=1, m=3)
    assert p["max_cos"][0] == pytest.approx(1 / math.sqrt(3), abs=0.01)    # an intruder at ε = 0.7 ...
    assert p["top_energy"][0] == pytest.approx(1.0, abs=1e-9)             # ... made only of W's top-3
    # (b) a new direction spread over W's bottom directions
    d = U[:, 3:].sum(1) / math.sqrt(n - 3)
    Wnew = W + torch.tensor(30.0 * np.outer(d, V[:, 5]))
    q = geo.intruder_profile(W, Wnew, k=1, m=3)
    assert q["top_energy"][0] == pytest.approx(0.0, abs=1e-9) and q["max_cos"][0] < 0.5


def test_count_curve_is_strict():
    mc = np.array([[0.2, 0.5, 0.69, 0.7, 0.95], [1.0, 1.0, 1.0, 1.0, 0.1]])
    assert geo.count_curve(mc, (0.5, 0.7, 0.96)).tolist() == [[1, 3, 5], [1, 1, 1]]


def _intruder_table():
    rows = []
    for seed, mcs in ((0, ([0.1, 0.9], [0.9, 0.9])), (1, ([0.1, 0.1], [0.1, 0.9]))):
        for layer, mc in zip((Q0, V0), mcs):
            rows.append(dict(method="random", rank=8, seed=seed, layer=layer, max_cos=np.array(mc)))
    return pd.DataFrame(rows)


def test_intruder_curves_and_counts():
    t = _intruder_table()
    cur = geo.intruder_curves(t, eps=(0.5, 0.95))
    # seed 0: layer counts (1, 0) at 0.5 -> 0.5; seed 1: (2, 1) -> 1.5; at 0.95 everything counts: 2
    assert cur["mean"].tolist() == pytest.approx([1.0, 2.0])
    assert cur["sd"].tolist() == pytest.approx([math.sqrt(0.5), 0.0])
    assert cur["n_seeds"].tolist() == [2, 2]
    c = geo.intruder_counts(t, eps=(0.5,))
    assert c["n@0.5"].tolist() == [1, 0, 2, 1]


def test_top_k_profile_is_a_prefix_of_a_wider_one():
    # the intruder page profiles the top 40 once and reads k = 5, 10, 20 as prefixes: same numbers as k alone
    U, S, V, W = svd_W(16)
    dW = torch.tensor(3.0 * np.outer(orthonormal(16, 1, np.random.default_rng(1))[:, 0], V[:, 2]))
    wide, narrow = geo.intruder_profile(W, W + dW, k=12), geo.intruder_profile(W, W + dW, k=4)
    for key in ("max_cos", "max_cos_right", "top_energy"):
        assert np.allclose(wide[key][:4], narrow[key], atol=1e-10)


def test_counts_by_k_uses_the_first_k_directions():
    from harness.analysis import intruders
    t = _intruder_table()
    full = t.assign(method="full", rank=None, max_cos=[np.array([0.1, 0.9])] * 4)
    cut = intruders.first_k(t, 1)
    assert [list(v) for v in cut["max_cos"]] == [[0.1], [0.9], [0.1], [0.1]]
    bk = intruders.counts_by_k(t, full, ks=(1, 2), eps=(0.5,))
    get = lambda k, m: bk[(bk["k"] == k) & (bk["method"] == m)].iloc[0]
    # k = 1: seed 0 layers (1, 0) -> 0.5; seed 1 (1, 1) -> 1.0.  k = 2: 0.5 and 1.5 (as the curves above)
    assert get(1, "random")["mean"] == pytest.approx(0.75) and get(2, "random")["mean"] == pytest.approx(1.0)
    assert get(1, "random")["by_seed"] == {0: 0.5, 1: 1.0}
    assert get(1, "full")["mean"] == get(2, "full")["mean"] == pytest.approx(1.0)
    assert math.isnan(get(1, "full")["rank"])


def test_per_seed_mean_and_geometric_mean():
    t = pd.DataFrame(dict(method="m", rank=1, seed=[0, 0, 1, 1], v=[1.0, 4.0, 2.0, 8.0]))
    a = geo.per_seed(t, "v").iloc[0]
    assert a["mean"] == pytest.approx((2.5 + 5.0) / 2) and a["by_seed"] == {0: 2.5, 1: 5.0}
    gm = geo.per_seed(t, "v", geometric=True).iloc[0]
    assert gm["by_seed"] == pytest.approx({0: 2.0, 1: 4.0}) and gm["sd"] == pytest.approx(math.sqrt(2.0))


# ------------------------------------------------------------------------ φ
def test_phi_grid_of_A_pads_with_nan_and_checks_input():
    E = torch.eye(6, dtype=torch.float64)
    run1 = dict(A_final=torch.diag(torch.tensor([3.0, 2.0, 1.0], dtype=torch.float64)) @ E[:3])   # e0, e1, e2
    run2 = dict(A_final=torch.stack([E[1], 0.5 * E[3]]))                                          # e1, e3
    G = geo.phi_grid(run1, run2, "A", i_max=4, j_max=3)
    assert G.shape == (4, 3)
    assert G[0, 0] == pytest.approx(0.0) and G[1, 0] == pytest.approx(1.0)     # e1 ∈ span(e0, e1)
    assert G[2, 1] == pytest.approx(0.5)                                        # {e1} of {e1, e3} in top-3
    assert np.isnan(G[3]).all() and np.isnan(G[:, 2]).all()
    with pytest.raises(ValueError, match="final lora_A"):
        geo.phi_grid(dict(A_final=None), run2, "A")
    with pytest.raises(ValueError, match="of must be"):
        geo.phi_grid(run1, run2, "B")


def test_phi_grid_of_dW_uses_right_singular_vectors():
    E = torch.eye(5, dtype=torch.float64)
    run = dict(B=torch.tensor([[3.0], [0], [0], [0], [0]], dtype=torch.float64), A=E[[2]])   # ΔW = 3 e0 e2ᵀ
    G = geo.phi_grid(run, run, "dW", i_max=1, j_max=1)
    assert G[0, 0] == pytest.approx(1.0)


def test_phi_summary_and_shared_layers():
    g = np.zeros((2, 3, 8, 64))
    g[0, :, 0, 0], g[1, :, 0, 0] = 0.2, 0.6
    s = geo.phi_summary(g, cells=((1, 1), (8, 64)))
    assert s["1,1"]["mean"] == pytest.approx(0.4) and s["1,1"]["n"] == 6
    assert s["1,1"]["min"] == pytest.approx(0.2) and s["1,1"]["max"] == pytest.approx(0.6)
    assert s["8,64"]["baseline"] == pytest.approx(64 / 384)
    init = {0: np.full((3, 8, 64), 0.17), 1: np.full((3, 8, 64), 0.17)}
    init[1][2, 7, 63] = 1.0
    assert geo.shared_init_layers(init) == [2]


# ------------------------------------------------------------------------ initial A
def test_initial_A_reproduces_add_lora_and_shows_the_shared_first_layer():
    g = np.random.default_rng(0)
    W = {n: torch.tensor(g.standard_normal((6, 6))) for n in (Q1, V0, Q0)}
    a2, a4 = weights.initial_A(W, "random", 2, seed=5), weights.initial_A(W, "random", 4, seed=5)
    assert list(a2) == [Q0, V0, Q1]                              # model order, whatever the dict order
    assert torch.equal(a2[Q0], a4[Q0][:2])                       # first layer: same generator state
    assert not torch.allclose(a2[V0], a4[V0][:2])                # later layers: different draws
    assert torch.equal(weights.initial_A(W, "random", 2, seed=5)[V0], a2[V0])
    s = weights.initial_A(W, "svd", 2, seed=0, alpha=4.0)              # s = alpha / r = 2
    U, S, Vh = torch.linalg.svd(W[Q0].float().double())
    assert torch.allclose(s[Q0], torch.sqrt(S[:2] / 2.0)[:, None] * Vh[:2], atol=1e-5)


# ------------------------------------------------------------------------ factor files
class _Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.query, self.value = nn.Linear(6, 6), nn.Linear(6, 6)


def test_load_run_factors_and_full_amplification_by_r(tmp_path):
    U, S, V, W = svd_W(6)
    dW = torch.tensor(U[:, :3] @ np.diag([0.6, 0.5, 0.4]) @ V[:, :3].T)   # a rank-3 update
    B, A = dW @ torch.tensor(V[:, :2]), torch.tensor(V[:, :2].T)          # stored: its top 2
    name = "m.layer.0.attention.self.query"
    path = lora.save_delta_svd(tmp_path / "full.safetensors", {name: (B, A)}, init="full",
                               info={name: {"energy_kept": 0.61 / 0.77}})
    f = weights.load_run_factors(path)[name]
    assert f["A_final"] is None and f["energy_kept"] == pytest.approx(0.61 / 0.77)
    assert torch.allclose(f["B"] @ f["A"], B @ A, atol=1e-3)
    runs = pd.DataFrame([dict(run_id="x", method="full", rank=0, seed=0, factors=path)])
    amp = geo.amplification_by_r(runs, {name: W}, ranks=(1, 2, 4))
    assert amp["rank"].tolist() == [1, 2]                          # r ≤ stored directions
    whole = math.sqrt(0.77)                                        # ‖ΔW‖_F of the whole rank-3 update
    assert amp["amp"].tolist() == pytest.approx([whole / S[0], whole / math.sqrt(S[0] ** 2 + S[1] ** 2)], rel=2e-3)
    # a LoRA model's compact file keeps the final A
    model = nn.Module()
    model.layer = nn.ModuleList([_Block()])
    lora.add_lora(model, ["query", "value"], rank=2, init="random", seed=0)
    p2 = lora.save_delta_svd(tmp_path / "lora.safetensors", model)
    g = weights.load_run_factors(p2)
    assert set(g) == {"layer.0.query", "layer.0.value"}
    assert torch.allclose(g["layer.0.query"]["A_final"], model.layer[0].query.lora_A.double(), atol=1e-3)


def test_paired_family_and_formatting():
    fam = ranks.paired_family([("a", {0: 0.0, 1: 0.0, 2: 0.0}, {0: 1.0, 1: 2.0, 2: 3.0}),
                            ("b", {0: 0.0, 1: 0.0}, {0: 1.0, 1: 1.0})])
    assert fam[0]["diff"] == pytest.approx(2.0) and fam[0]["label"] == "a"
    # Holm: b (p = 0) is first and stays 0; a is second, multiplied by m − 1 = 1
    assert fam[1]["p"] == 0.0 and fam[1]["p_holm"] == 0.0 and fam[0]["p_holm"] == pytest.approx(fam[0]["p"])
    assert format_pm(0.5234, 0.031) == "0.52 ± 0.03" and format_pm(0.5, math.nan) == "0.50"
