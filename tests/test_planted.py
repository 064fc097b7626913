"""harness.planted: the planted ΔW*, the recovery measures, training, logs and the CLI (tiny model, CPU)."""
import copy
import json
import math

import pytest
import torch

import lora
from harness import planted as P
from harness.logs import read_log
from harness.tasks import UserError
from lora import spectra as sp

TINY = dict(model="tiny-roberta", k=2, rank=4, batch_size=16, n_heldout=32, max_length=32)


@pytest.fixture(scope="module")
def tiny(glue_fixture):
    sentences, _ = P.load_sentences(glue_fixture)
    base, tok = P.load_encoder("tiny-roberta", sentences)
    base.eval()
    for p in base.parameters():
        p.requires_grad_(False)
    held = P.Batches(tok, sentences[:32], 32)
    train = P.Batches(tok, sentences[32:], 32)
    return base, held, train


def cfg(**kw):
    return {**P.DEFAULTS, **TINY, "steps": 4, "eval_every": 2, **kw}


# ------------------------------------------------------------------ the planted update
@pytest.mark.parametrize("subspace", P.SUBSPACES)
def test_planted_factors_rank_spectrum_subspaces(subspace):
    g = torch.Generator().manual_seed(0)
    W = torch.randn(24, 20, generator=g, dtype=torch.float64) @ torch.diag(torch.linspace(3, 0.1, 20, dtype=torch.float64))
    pl = P.planted_factors(W, 4, subspace, 0.5, torch.Generator().manual_seed(1))
    S = sp.singular_values(pl["B"], pl["A"])
    norm_W = torch.linalg.matrix_norm(W, ord=2).item()
    assert torch.allclose(S, 0.5 * norm_W * torch.tensor([1.0, 0.8, 0.6, 0.4], dtype=torch.float64), rtol=1e-10)
    assert sp.numerical_rank(S) == 4
    U, V = pl["U"], pl["V"]
    assert torch.allclose(U.T @ U, torch.eye(4, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(pl["B"] @ pl["A"], U @ torch.diag(pl["sigma"]) @ V.T, atol=1e-10)   # ΔW*'s SVD
    for which in ("top", "bottom"):
        Uw, Vw = sp.top_singular_subspaces(W, 4, which)
        left, right = sp.principal_angles(U, Uw), sp.principal_angles(V, Vw)
        if which == subspace:                                  # column/row spaces ARE W's top (bottom) ones
            assert left.max().item() < 1e-6 and right.max().item() < 1e-6
        else:
            assert left.max().item() > 0.3 and right.max().item() > 0.3
    # ΔW*'s row space is spanned by V: ΔW* (I − V Vᵀ) = 0
    assert torch.linalg.matrix_norm(pl["B"] @ pl["A"] @ (torch.eye(20, dtype=torch.float64) - V @ V.T)) < 1e-10


def test_bottom_is_unreachable_for_frozen_top_A():
    """P1: lora_fa_svd's ΔW = B V_rᵀ is orthogonal to a bottom-subspace ΔW* (best rel_err = 1),
    and can equal a top-subspace ΔW* exactly (k <= r)."""
    g = torch.Generator().manual_seed(3)
    W = torch.randn(16, 16, generator=g, dtype=torch.float64)
    _, Vr = sp.top_singular_subspaces(W, 8, "top")
    top = P.planted_factors(W, 4, "top", 0.5, g)
    bottom = P.planted_factors(W, 4, "bottom", 0.5, g)
    assert sp.row_space_fixed_fraction(Vr.T, top["B"], top["A"]) == pytest.approx(1.0, abs=1e-12)
    assert sp.row_space_fixed_fraction(Vr.T, bottom["B"], bottom["A"]) == pytest.approx(0.0, abs=1e-12)


def test_plant_adds_delta_to_every_query_value(tiny):
    base = tiny[0]
    teacher = copy.deepcopy(base)
    planted = P.plant(teacher, 2, "top", 0.5, seed=0)
    assert sorted(n.rsplit(".", 1)[-1] for n in planted) == ["query", "query", "value", "value"]
    before, after = P.target_linears(base), P.target_linears(teacher)
    for name, pl in planted.items():
        diff = (after[name].weight - before[name].weight).double()
        assert torch.allclose(diff, pl["B"] @ pl["A"], atol=1e-6)
        W = before[name].weight.double()
        Uw, Vw = sp.top_singular_subspaces(W, 2, "top")
        assert sp.principal_angles(pl["U"], Uw).max().item() < 1e-5
        assert sp.principal_angles(pl["V"], Vw).max().item() < 1e-5
        assert pl["sigma"][0].item() == pytest.approx(0.5 * torch.linalg.matrix_norm(W, ord=2).item(), rel=1e-9)
    # the same seed plants the same update; another seed a different one
    again = P.plant(copy.deepcopy(base), 2, "top", 0.5, seed=0)
    other = P.plant(copy.deepcopy(base), 2, "random", 0.5, seed=1)
    name = next(iter(planted))
    assert torch.equal(again[name]["B"], planted[name]["B"])
    assert not torch.allclose(other[name]["U"].abs(), planted[name]["U"].abs())


# ------------------------------------------------------------ zero error at the teacher
def test_student_holding_the_planted_factors_has_zero_error(tiny):
    base, held, _ = tiny
    teacher = copy.deepcopy(base)
    planted = P.plant(teacher, 2, "random", 0.5, seed=0)
    targets = P.heldout_targets(teacher, held, 16, "cpu")
    student = lora.add_lora(copy.deepcopy(base), ["query", "value"], rank=4, init="random", seed=0)
    with torch.no_grad():
        for name, layer in lora.lora_layers(student).items():
            layer.lora_B.zero_()
            layer.lora_A.zero_()
            layer.lora_B[:, :2] = (planted[name]["B"] / layer.scaling).float()
            layer.lora_A[:2] = planted[name]["A"].float()
    rec = P.recovery(student, planted, 2)
    assert rec["rel_err"] < 1e-6
    assert max(rec["angle_left"], rec["angle_right"]) < 0.1          # degrees
    assert P.heldout_mse(student, targets) < 1e-10
    assert P.heldout_mse(base, targets) > 1e3 * P.heldout_mse(student, targets)


def test_zero_plant_and_zero_start_give_zero_loss(tiny):
    """ΔW* = 0 (scale 0) and a B = 0 student: the student is the teacher, loss exactly 0 at step 0."""
    base, held, train = tiny
    teacher = copy.deepcopy(base)
    planted = P.plant(teacher, 2, "top", 0.0, seed=0)
    targets = P.heldout_targets(teacher, held, 16, "cpu")
    run = P.train_student(base, teacher, planted, "random", 1e-3, 0, cfg(scale=0.0, steps=1), train, targets, "cpu")
    first = run["curves"][0]
    assert first["heldout_mse"] == 0.0 and first["rel_err"] == 0.0
    assert first["angle_left"] == 90.0                                # dW = 0 has no directions: counted as 90°


# ------------------------------------------------------------------------ training
@pytest.mark.parametrize("seed", [0, 1])
def test_recovery_error_decreases(tiny, seed):
    """svd init, value layers, ΔW* in W's top subspace: a few Adam steps move ΔW towards ΔW*."""
    base, held, train = tiny
    teacher = copy.deepcopy(base)
    planted = P.plant(teacher, 2, "top", 0.5, seed, ("value",))
    targets = P.heldout_targets(teacher, held, 16, "cpu")
    run = P.train_student(base, teacher, planted, "svd", 3e-4, seed,
                          cfg(targets=["value"], steps=60, eval_every=15), train, targets, "cpu")
    c = run["curves"]
    assert [p["step"] for p in c] == [0, 15, 30, 45, 60]
    assert c[0]["rel_err"] == pytest.approx(1.0, abs=1e-6)           # svd: ΔW relative to W is 0 at step 0
    assert c[-1]["rel_err"] < 0.95
    assert c[-1]["heldout_mse"] < 0.05 * c[0]["heldout_mse"]
    assert not run["diverged"] and run["final"]["rel_err"] == c[-1]["rel_err"]
    assert len(run["final"]["angles_left_layers"]) == 2 and len(c[-1]["rel_err_layers"]) == 2


def test_divergence_is_caught(tiny):
    base, held, train = tiny
    teacher = copy.deepcopy(base)
    planted = P.plant(teacher, 2, "top", 0.5, 0)
    targets = P.heldout_targets(teacher, held, 16, "cpu")
    run = P.train_student(base, teacher, planted, "random", 1e30, 0, cfg(steps=6), train, targets, "cpu")
    assert run["diverged"] and run["final"] is None


# ------------------------------------------------------------------- run_planted, logs
def test_run_planted_logs_resumes_and_shards(glue_fixture, tmp_path):
    out = tmp_path / "planted"
    lines = []
    kw = dict(subspaces=["top", "random"], inits=["random", "lora_fa_svd"], seeds=[0], data_dir=glue_fixture,
              device="cpu", log=lines.append, **TINY, steps=3, eval_every=3, lrs=[1e-3, 3e-3])
    status = P.run_planted(out, shard=(0, 2), **kw)
    assert status == {"top-random-s0.json": "done", "random-random-s0.json": "done"}
    status = P.run_planted(out, shard=(1, 2), **kw)
    assert status == {"top-lora_fa_svd-s0.json": "done", "random-lora_fa_svd-s0.json": "done"}
    assert len(lines) == 4 and all(ln.startswith("done") for ln in lines)
    log = json.loads((out / "top-random-s0.json").read_text())
    assert log["kind"] == "planted" and log["status"] == "ok"
    assert log["config"]["init"] == "random" and log["config"]["subspace"] == "top" and log["config"]["k"] == 2
    assert set(log["curves"]) == {"0.001", "0.003"} and set(log["lr_sweep"]) == {"0.001", "0.003"}
    best = min(log["lr_sweep"].values(), key=lambda r: r["final"]["heldout_mse"])
    assert log["final"]["heldout_mse"] == best["final"]["heldout_mse"]
    assert log["final"]["heldout_rel"] == pytest.approx(log["final"]["heldout_mse"] / log["planted"]["teacher_gap_mse"])
    assert log["planted"]["sigma_over_norm"] == pytest.approx([0.5, 0.2])
    assert log["planted"]["teacher_gap_mse"] > 0 and math.isfinite(log["wall_time_s"])
    assert [p["step"] for p in log["curves"]["0.001"]] == [0, 3]
    assert read_log(out / "top-random-s0.json") is None        # not a GLUE run log: `figures` skips it

    mtimes = {p.name: p.stat().st_mtime_ns for p in out.glob("*.json")}
    lines.clear()
    status = P.run_planted(out, **kw)
    assert set(status.values()) == {"skipped"} and len(status) == 4
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.json")} == mtimes
    with pytest.raises(UserError, match="different config .*steps"):
        P.run_planted(out, **{**kw, "steps": 5})


@pytest.mark.parametrize("kw, msg", [(dict(inits=["nope"]), "unknown init 'nope'; valid: random"),
                                     (dict(subspaces=["middle"]), "unknown subspace 'middle'; valid: top"),
                                     (dict(steps=0), "steps must be a positive integer"),
                                     (dict(lrs=[]), "lrs must be"),
                                     (dict(shard=(2, 2)), "shard must be"),
                                     (dict(width=3), "unknown setting 'width'")])
def test_run_planted_bad_input(glue_fixture, tmp_path, kw, msg):
    with pytest.raises(UserError, match=msg):
        P.run_planted(tmp_path, data_dir=glue_fixture, device="cpu", **{**TINY, **kw})


def test_default_inits_follow_lora():
    assert P.default_inits()[0] == "random"
    assert set(lora.INIT_METHODS) <= set(P.valid_inits())
    assert set(P.default_inits()) <= set(P.valid_inits())
    assert {"random", "svd", "lora_fa", "lora_fa_svd"} <= set(P.default_inits())


@pytest.mark.parametrize("init", ["eva", "lora_ga"])
def test_data_aware_inits_get_statistics(tiny, init):
    """Inits in lora.DATA_INITS are given statistics from the planted loss."""
    base, held, train = tiny
    teacher = copy.deepcopy(base)
    planted = P.plant(teacher, 2, "top", 0.5, 0)
    targets = P.heldout_targets(teacher, held, 16, "cpu")
    run = P.train_student(base, teacher, planted, init, 1e-3, 0, cfg(rank=2, steps=2), train, targets, "cpu")
    assert not run["diverged"] and math.isfinite(run["final"]["rel_err"])
    # the model is unchanged at step 0 (zero-B or residual init): held-out MSE = the teacher gap
    assert run["curves"][0]["heldout_mse"] == pytest.approx(P.heldout_mse(base, targets), rel=1e-3)


def test_cli(glue_fixture, tmp_path, capsys):
    from harness.__main__ import main
    args = ["planted", "--model", "tiny-roberta", "--data-dir", str(glue_fixture), "--device", "cpu",
            "--seeds", "0", "--subspaces", "bottom", "--inits", "lora_fa", "--steps", "2", "--eval-every", "2",
            "--lrs", "1e-3", "--rank", "4", "--k", "2", "--batch-size", "8", "--n-heldout", "16",
            "--out", str(tmp_path / "p")]
    assert main(args) == 0
    assert "done    bottom-lora_fa-s0.json" in capsys.readouterr().out
    assert (tmp_path / "p" / "bottom-lora_fa-s0.json").is_file()
    assert main(args) == 0 and "skipped" in capsys.readouterr().out
    assert main([*args[:-2], "--out", str(tmp_path / "q"), "--inits", "bogus"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown init 'bogus'") and "Traceback" not in err
    assert main([*args, "--shard", "x"]) == 2


# ------------------------------------------------------------- layers: a cached prefix
def test_prefix_forward_equals_the_whole_model(tiny):
    """Layers below the planted one are cached: teacher and an adapted student give the whole model's output."""
    base, held, _ = tiny
    names = P.layer_targets(base, ["query", "value"], [1])
    assert names and all(P.layer_index(n) == 1 for n in names)
    teacher = copy.deepcopy(base)
    P.plant(teacher, 2, "random", 0.5, 0, names)
    student = lora.add_lora(copy.deepcopy(base), names, rank=4, init="svd", seed=0)
    with torch.no_grad():
        for layer in lora.lora_layers(student).values():
            layer.lora_B.normal_()                     # a student that differs from the base
    ids, mask = held.get(torch.arange(16), "cpu")
    x = P.with_prefix(base, ids, mask, 1)
    assert x.prefix[0] == 1
    for model in (teacher, student):
        with torch.no_grad():
            torch.testing.assert_close(P.forward(model, x), P.hidden(model, ids, mask), rtol=0, atol=1e-6)
    P.check_prefix(student, x)                         # passes; a model whose output is not the last layer's fails
    with pytest.raises(UserError, match="cached-prefix forward differs"):
        P.check_prefix(student, x._replace(prefix=(1, x.prefix[1] + 1.0, *x.prefix[2:])))


def test_run_planted_in_one_layer(glue_fixture, tmp_path):
    kw = dict(subspaces=["top"], inits=["lora_fa_svd"], seeds=[0], data_dir=glue_fixture, device="cpu",
              log=lambda _: None, **TINY, steps=4, eval_every=2, lrs=[1e-3])
    assert P.run_planted(tmp_path / "one", layers=[1], **kw) == {"top-lora_fa_svd-s0.json": "done"}
    log = json.loads((tmp_path / "one" / "top-lora_fa_svd-s0.json").read_text())
    assert log["config"]["layers"] == [1]
    assert len(log["final"]["rel_err_layers"]) == 2             # query and value of layer 1 only
    assert log["planted"]["teacher_gap_mse"] > 0
    with pytest.raises(UserError, match=r"layers 5 is not an encoder layer of this model; valid: 0..1"):
        P.run_planted(tmp_path / "bad", layers=[5], **kw)
    with pytest.raises(UserError, match="layers must be a non-empty list"):
        P.run_planted(tmp_path / "bad", layers=[], **kw)
