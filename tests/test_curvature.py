"""Tests of harness/curvature.py: the Hessian operator and Lanczos, on the tiny RoBERTa of the smoke preset.

Lanczos (scipy's eigsh on Hessian-vector products) against eigvalsh of the dense Hessian and against
curvlinops; a Hessian-vector product against a finite difference of gradients; the same numbers twice; the
adapter blocks' Kronecker forms (LoRA-FA: the full-weight Hessian compressed to A's row space; SVD init:
the same form with factors of size √σ); the init pull's exact 2a shift, its config field and its place in
the training loss; the sweep record (selected and collapsed rates); the command line's errors.
Float64 on the CPU, one thread, seconds each.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import lora
from harness import curvature as C
from harness.config import config_hash, make_config
from harness.tasks import UserError
from harness.steps import init_pull_penalty
from harness.train import prepare

pytestmark = pytest.mark.usefixtures("hf_offline", "one_torch_thread")

ONE_LAYER = ["layer.0.attention.self.query"]       # one 32×32 adapted layer: dense Hessians stay small


def tiny(glue_fixture, method="svd", n=16, **overrides):
    """(model in float64, eval mode; fixed batches of 8) for the smoke preset's tiny RoBERTa on MRPC."""
    cfg = make_config("mrpc", method, "smoke", seed=0, **overrides)
    prep = prepare(cfg, str(glue_fixture))
    model = prep.model.double().eval()
    return model, C.fixed_batches(prep.train_rows, prep.tok, n, cfg["batch_size"])


def hvp_of(model, batches, which="all", init_pull=0.0):
    _, params = zip(*C.trainable(model, which))
    return C.HVP(C.loss_terms(model, batches, init_pull), params)


def dense_in(model, batches, params):
    """The dense Hessian of the training loss in ``params`` (any tensors of the model, trainable or not)."""
    for p in params:
        p.requires_grad_(True)
    return C.dense_hessian(C.HVP(C.loss_terms(model, batches), params))


# ----------------------------------------------------------------------------- Lanczos and the products
def test_lanczos_top5_equals_dense_eigvalsh(glue_fixture):
    model, batches = tiny(glue_fixture, "svd", n=8, targets=ONE_LAYER, head=["out_proj"])
    hvp = hvp_of(model, batches)
    dense = torch.linalg.eigvalsh(C.dense_hessian(hvp)).flip(0)[:5].numpy()
    top = C.top_eigenvalues(C.hessian_operator(hvp), k=5, tol=0.0)
    assert hvp.n == 4 * 32 + 32 * 4 + 32 * 2 + 2     # A, B of the adapted layer and the output layer
    np.testing.assert_allclose(top, dense, rtol=1e-5)
    assert top[0] > 0 and dense[0] > 1e-3   # a non-trivial spectrum, not zeros agreeing


def test_hvp_equals_finite_difference_of_gradients(glue_fixture):
    model, batches = tiny(glue_fixture, "random")
    _, params = zip(*C.trainable(model))
    hvp = C.HVP(C.loss_terms(model, batches), params)
    v = torch.randn(hvp.n, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    v /= v.norm()
    hv = hvp(v)                               # before the finite difference moves the weights in place
    h = 1e-4

    def grad_at(shift):
        with torch.no_grad():
            for p, d in zip(params, C.unflatten(shift * v, params)):
                p.add_(d)
        g = C.flatten(torch.autograd.grad(sum(t() for t in C.loss_terms(model, batches)), params))
        with torch.no_grad():
            for p, d in zip(params, C.unflatten(shift * v, params)):
                p.sub_(d)
        return g

    fd = (grad_at(h) - grad_at(-h)) / (2 * h)
    assert hv.norm() > 1e-3
    torch.testing.assert_close(hv, fd, rtol=1e-6, atol=1e-9 * hv.norm().item())


def test_same_batches_and_seed_give_the_same_numbers(glue_fixture):
    runs = []
    for _ in range(2):
        model, batches = tiny(glue_fixture, "random", n=16)
        model.float()
        vb = [{k: v for k, v in b.items()} for b in batches]
        runs.append(C.measure(model, batches, k=3, vhat_batches=vb, tol=1e-6))
    assert runs[0]["top"] == runs[1]["top"] and runs[0]["precond_max"] == runs[1]["precond_max"]
    # random init: B = 0, so the gradient in every A is exactly zero and those coordinates leave P's support
    assert runs[0]["precond_left_out"] == 4 * 4 * 32


def test_preconditioned_operator_is_p_inverse_h():
    """P^{-1/2} H P^{-1/2} on the support of v̂ has the spectrum of P⁻¹H (dense check, synthetic H)."""
    g = torch.Generator().manual_seed(0)
    M = torch.randn(6, 6, generator=g, dtype=torch.float64)
    H = M @ M.T - 2 * torch.eye(6, dtype=torch.float64)
    vhat = torch.rand(6, generator=g, dtype=torch.float64)
    vhat[2] = 0.0

    class Fixed:
        n, calls = 6, 0

        def __call__(self, x):
            return H @ x

    op, left_out = C.preconditioned_operator(Fixed(), vhat, eps=1e-8)
    keep = [0, 1, 3, 4, 5]
    P = torch.diag(vhat[keep].sqrt() + 1e-8)
    want = torch.linalg.eigvals(torch.linalg.solve(P, H[keep][:, keep])).real.sort(descending=True).values
    assert left_out == 1
    np.testing.assert_allclose(C.top_eigenvalues(op, 2, tol=0.0), want[:2].numpy(), rtol=1e-10)


def test_curvlinops_hessian_agrees(glue_fixture):
    curvlinops = pytest.importorskip("curvlinops")
    model, batches = tiny(glue_fixture, "svd", n=16, targets=ONE_LAYER, head=["out_proj"])
    names, params = zip(*C.trainable(model))

    class Logits(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, X):
            return self.m(**X).logits

    data = [({k: v for k, v in b.items() if k != "labels"}, b["labels"]) for b in batches]
    from torch.nn.attention import SDPBackend, sdpa_kernel
    with sdpa_kernel(SDPBackend.MATH):
        H = curvlinops.HessianLinearOperator(Logits(model), torch.nn.CrossEntropyLoss(), list(params), data,
                                             batch_size_fn=lambda X: X["input_ids"].shape[0],
                                             check_deterministic=False).to_scipy()
        theirs = C.top_eigenvalues(H, k=5, tol=0.0)
        ours = C.top_eigenvalues(C.hessian_operator(hvp_of(model, batches)), k=5, tol=0.0)
    np.testing.assert_allclose(ours, theirs, rtol=1e-8)


# ----------------------------------------------------------------------------- the adapter blocks' linear algebra
def kron_blocks(model, batches):
    """(layer, s, H_W, H_BB, H_AA or None) for the one adapted layer, all dense, at the model's point."""
    (name, layer), = lora.lora_layers(model).items()
    s = layer.scaling
    H_W = dense_in(model, batches, [layer.base.weight])
    layer.base.weight.requires_grad_(False)
    H_BB = dense_in(model, batches, [layer.lora_B])
    H_AA = None
    if not layer.freeze_A:
        H_AA = dense_in(model, batches, [layer.lora_A])
    return layer, s, H_W, H_BB, H_AA


def test_lora_fa_hessian_in_B_is_the_full_weight_hessian_compressed_to_A_rows(glue_fixture):
    model, batches = tiny(glue_fixture, "lora_fa", n=8, targets=ONE_LAYER, head=[])
    (layer,) = lora.lora_layers(model).values()
    with torch.no_grad():    # away from B = 0, so nothing vanishes by accident
        layer.lora_B.copy_(0.3 * torch.randn(layer.lora_B.shape, generator=torch.Generator().manual_seed(2)))
    layer, s, H_W, H_BB, _ = kron_blocks(model, batches)
    A = layer.lora_A.detach()
    torch.testing.assert_close(A @ A.T, torch.eye(A.shape[0], dtype=A.dtype), rtol=0, atol=1e-6)   # orthonormal rows
    I = torch.eye(layer.lora_B.shape[0], dtype=A.dtype)
    J = torch.kron(I, A)                      # row-major vec: vec(BA) = (I ⊗ Aᵀ) vec(B), so H_B = s² J H_W Jᵀ
    torch.testing.assert_close(H_BB, s ** 2 * J @ H_W @ J.T, rtol=1e-7, atol=1e-10)
    ev_B, ev_W = torch.linalg.eigvalsh(H_BB), torch.linalg.eigvalsh(H_W)
    # J has orthonormal rows (to float32's precision): H_B/s² is a compression of H_W, inside its spectrum
    assert ev_B[-1] <= s ** 2 * ev_W[-1] * (1 + 1e-6) and ev_B[0] >= s ** 2 * ev_W[0] * (1 + 1e-6)


def test_svd_init_blocks_scale_with_the_singular_values(glue_fixture):
    model, batches = tiny(glue_fixture, "svd", n=8, targets=ONE_LAYER, head=[])
    layer, s, H_W, H_BB, H_AA = kron_blocks(model, batches)
    A, B = layer.lora_A.detach(), layer.lora_B.detach()
    out_f, in_f = layer.base.weight.shape
    torch.testing.assert_close(H_BB, s ** 2 * torch.kron(torch.eye(out_f, dtype=A.dtype), A) @ H_W
                               @ torch.kron(torch.eye(out_f, dtype=A.dtype), A).T, rtol=1e-7, atol=1e-10)
    KB = torch.kron(B, torch.eye(in_f, dtype=B.dtype))      # vec(BA) = (B ⊗ I) vec(A)
    torch.testing.assert_close(H_AA, s ** 2 * KB.T @ H_W @ KB, rtol=1e-7, atol=1e-10)
    # A = √(S_r/s)·V_rᵀ: A Aᵀ = S_r/s, so λmax(H_BB) ≤ s²·(σ₁/s)·λmax(H_W) = s·σ₁·λmax(H_W)
    sigma = torch.linalg.svdvals(layer.base.weight.detach() + s * B @ A)[:layer.rank]
    torch.testing.assert_close(torch.linalg.svdvals(A) ** 2, sigma / s, rtol=1e-4, atol=0)   # float32 factors
    lam_W = torch.linalg.eigvalsh(H_W)[-1]
    assert torch.linalg.eigvalsh(H_BB)[-1] <= s * sigma[0] * lam_W * (1 + 1e-4)


# ----------------------------------------------------------------------------- the init pull
def test_init_pull_shifts_every_eigenvalue_in_B_by_2a(glue_fixture):
    a = 0.37
    model, batches = tiny(glue_fixture, "random", n=8)
    with torch.no_grad():
        for layer in lora.lora_layers(model).values():
            layer.lora_B.add_(0.1 * torch.randn(layer.lora_B.shape, generator=torch.Generator().manual_seed(3)))
    ev0 = torch.linalg.eigvalsh(C.dense_hessian(hvp_of(model, batches, "B")))
    ev1 = torch.linalg.eigvalsh(C.dense_hessian(hvp_of(model, batches, "B", init_pull=a)))
    torch.testing.assert_close(ev1 - ev0, torch.full_like(ev0, 2 * a), rtol=0, atol=1e-10)
    assert ev0.abs().max() > 1e-6 and len(ev0) == 4 * 32 * 4


def test_init_pull_config_field_keeps_legacy_hashes():
    base = make_config("mrpc", "random", "v2")
    assert base["init_pull"] == 0.0
    legacy = {k: v for k, v in base.items() if k != "init_pull"}           # a log written before the field
    assert config_hash(base) == config_hash(legacy)
    assert config_hash(make_config("mrpc", "random", "v2", init_pull=0.01)) != config_hash(base)
    with pytest.raises(UserError, match="init_pull"):
        make_config("mrpc", "random", "v2", init_pull=-1.0)
    with pytest.raises(UserError, match="init_pull .*full"):
        make_config("mrpc", "full", "v2", init_pull=0.01)


def test_init_pull_is_in_the_training_loss(glue_fixture, tmp_path):
    from harness.train import run
    losses = {}
    for a in (0.0, 1e4):
        cfg = make_config("mrpc", "random", "smoke", seed=0, max_train_examples=16, epochs=1, init_pull=a)
        losses[a] = run(cfg, tmp_path / str(a), str(glue_fixture), progress=False, save_factors=False)
    l0, l1 = losses[0.0]["history"]["train_loss"], losses[1e4]["history"]["train_loss"]
    assert l0[0] == l1[0]                     # B = B₀ at the first step: the pull is zero
    # after one AdamW step every B entry moved ≈ lr = 0.02: the pull adds 1e4·Σ(B − B₀)² ≈ 1e4·512·4e-4
    assert l1[1] - l0[1] > 100
    model, _ = tiny(glue_fixture, "random")
    assert init_pull_penalty(model, 5.0).item() == 0.0


# ----------------------------------------------------------------------------- sweeps and the command line
def sweep_log(lr, score, status="ok", task="mrpc", method="random"):
    return {"run_id": f"{task}-{method}-{lr}", "status": status, "config": {"task": task, "method": method, "lr": lr},
            "task": {"main_metric": "accuracy"}, "final": {"val": {"accuracy": score}} if status == "ok" else None}


def test_sweep_record_selected_and_collapsed_rates():
    maj = 0.6749
    logs = [sweep_log(1e-4, maj), sweep_log(3e-4, 0.71), sweep_log(1e-3, 0.75), sweep_log(3e-3, 0.74),
            sweep_log(1e-2, maj), sweep_log(3e-2, None, status="failed")]
    rec = C.sweep_record(logs, "mrpc", "random", maj)
    assert rec["selected_lr"] == 1e-3
    assert rec["collapsed_lrs"] == [1e-2, 3e-2]        # 1e-4 sits at the majority too, but below: not learning yet
    assert rec["swept"]["0.03"] is None and rec["swept"]["0.001"] == 0.75


def test_results_merge_by_task_method_step(tmp_path):
    out = tmp_path / "c.json"
    C.merge_entry(out, {"task": "mrpc", "method": "svd", "step": 0, "top": [3.0]})
    C.merge_entry(out, {"task": "mrpc", "method": "svd", "step": 0, "precond_max": 9.0})
    C.merge_entry(out, {"task": "cola", "method": "svd", "step": 0, "top": [1.0]})
    data = json.loads(out.read_text())
    assert [(e["task"], e["method"]) for e in data["entries"]] == [("cola", "svd"), ("mrpc", "svd")]
    assert data["entries"][1]["top"] == [3.0] and data["entries"][1]["precond_max"] == 9.0
    assert C.missing_parts(data["entries"][1], C.PARTS, "svd") == ["adapters", "adapters_precond"]
    assert C.missing_parts(data["entries"][1], C.PARTS, "full") == []


def _merge_many(out, method, n):
    for step in range(n):
        C.merge_entry(out, {"task": "mrpc", "method": method, "step": step, "top": [float(step)]})


def test_results_merge_from_two_processes_keeps_every_entry(tmp_path):
    """Two measuring processes writing one results file: the lock around read-modify-write keeps both."""
    import multiprocessing as mp
    out = tmp_path / "c.json"
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_merge_many, args=(out, m, 40)) for m in ("svd", "random")]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    entries = json.loads(out.read_text())["entries"]
    assert sorted((e["method"], e["step"]) for e in entries) == sorted((m, s) for m in ("svd", "random")
                                                                       for s in range(40))


def test_train_fractions_parse_decimals_and_ratios():
    args = C._parser().parse_args(["train", "--task", "mrpc", "--method", "svd", "--at", "2/3", "1"])
    assert args.at == [pytest.approx(2 / 3), 1.0]
    assert C._parser().parse_args(["train", "--task", "mrpc", "--method", "svd"]).at == list(C.ALONG)


@pytest.mark.parametrize("argv, msg", [
    (["train", "--task", "mrpc", "--method", "svd", "--at", "1.5"], "bad fraction '1.5'; valid: a number in (0, 1]"),
    (["train", "--task", "mrpc", "--method", "svd", "--at", "x/3"], "bad fraction 'x/3'"),
    (["step0", "--tasks", "rte"], "unknown curvature task 'rte'; valid: mrpc, cola"),
    (["step0", "--methods", "nope"], "unknown method 'nope'; valid: v2, inits, all, full"),
    (["along", "--task", "mrpc", "--parts", "x"], "invalid choice"),
])
def test_cli_bad_input_is_one_line_exit_2_nothing_written(tmp_path, capsys, argv, msg):
    out = tmp_path / "c.json"
    with pytest.raises(SystemExit) as e:
        raise SystemExit(C.main([*argv, "--out", str(out)]))
    err = capsys.readouterr().err
    assert e.value.code == 2 and msg in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


# ----------------------------------------------------------------------------- the analysis (constructed file)
def constructed(tmp_path):
    """Five adapter inits whose λmax rises as their selected lr falls, full fine-tuning, one along-training entry."""
    def entry(method, lr, lam, pre, collapsed, step=0, adapters=None):
        return {"task": "mrpc", "method": method, "step": step, "fraction": step / 300, "selected_lr": lr,
                "collapsed_lrs": collapsed, "top": [lam, lam / 2], "precond_max": pre,
                **({"adapters_max": adapters} if adapters is not None else {}), "lr_next": lr}
    entries = [entry("svd_seed", 1e-2, 1.0, 1e3, [3e-2], adapters=0.1),
               entry("lora_fa", 3e-3, 2.0, 5e3, [1e-2], adapters=0.2),
               entry("lora_fa_svd", 3e-3, 3.0, 6e3, [], adapters=0.3),
               entry("random", 1e-3, 4.0, 2e4, [1e-2], adapters=0.4),
               entry("svd", 1e-3, 5.0, 3e4, [3e-3, 1e-2], adapters=0.5),
               entry("full", 1e-4, 50.0, 1e6, [3e-4]),
               entry("random", 1e-3, 8.0, 3.8e4, [1e-2], step=100)]
    path = tmp_path / "curvature.json"
    path.write_text(json.dumps({"entries": entries}))
    return path


def test_analysis_tables_bounds_and_spearman(tmp_path):
    from harness.analysis import curvature as A
    data = A.load(constructed(tmp_path))
    t = A.step0(data)
    svd = t[t["method"] == "svd"].iloc[0]
    assert svd["gd_bound"] == 2 / 5.0 and svd["adam_bound"] == pytest.approx(38 / 3e4)
    assert svd["collapsed_beyond_adam"] == [True, True] and bool(svd["selected_within_gd"])
    rho = A.correlations(data, n_boot=200)
    row = rho[(rho["inits"] == "adapter inits") & (rho["quantity"] == "lambda_max")].iloc[0]
    assert row["n"] == 5 and row["rho"] == pytest.approx(-0.9486832980505138)   # ties at 3e-3 and 1e-3
    assert row["hi"] < 0 and row["prediction"] == "holds"
    assert set(rho["quantity"]) == {"lambda_max", "precond_max", "adapters_max"}
    assert set(rho.loc[rho["quantity"] == "adapters_max", "inits"]) == {"adapter inits"}   # full has no adapters
    assert rho[(rho["inits"] == "with full fine-tuning") & (rho["quantity"] == "lambda_max")].iloc[0]["n"] == 6
    b = A.bound_checks(data).set_index("bound")
    # Adam: 38/λ_P = 0.038, 0.0076, 0.0063, 0.0019, 0.0013, 3.8e-5: selected lrs within but full's 1e-4;
    # collapsed 3e-2 > 0.038 no; 1e-2 > 0.0076 yes; 1e-2 > 0.0019 yes; 3e-3, 1e-2 > 0.0013 yes; 3e-4 > 3.8e-5 yes
    assert b.loc["38/λmax(P⁻¹H)", "selected_within"] == 5
    assert (b.loc["38/λmax(P⁻¹H)", "collapsed"], b.loc["38/λmax(P⁻¹H)", "collapsed_beyond"]) == (6, 5)
    along = A.along_table(data)
    assert list(along["step"]) == [0, 100] and along["lr_x_precond"].iloc[1] == pytest.approx(38.0)


def test_along_summary_judges_prediction_3_at_the_later_snapshots(tmp_path):
    from harness.analysis import curvature as A

    def entry(method, step, pre, lr=1e-3):
        return {"task": "mrpc", "method": method, "step": step, "fraction": step / 300, "selected_lr": lr,
                "collapsed_lrs": [], "top": [1.0 + step / 100], "precond_max": pre, "lr_next": lr}
    entries = [entry("random", 0, 2e3), entry("random", 100, 1e4), entry("random", 200, 3e4), entry("random", 300, 4e4),
               entry("svd", 0, 2e3), entry("svd", 100, 1e4), entry("svd", 200, 3e4), entry("svd", 300, 2e5),
               entry("lora_fa", 0, 2e3), entry("lora_fa", 100, 1e4)]
    path = tmp_path / "curvature.json"
    path.write_text(json.dumps({"entries": entries}))
    s = A.along_summary(A.load(path)).set_index("method")
    # η·λ: random 30 and 40 at 2/3 and the end, within [38/3, 114] and above 2 at step 0; svd's end 200 is not
    assert s.loc["random", "prediction 3"] == "held" and s.loc["random", "edge_end"] == pytest.approx(40.0)
    assert s.loc["svd", "prediction 3"] == "failed"
    assert s.loc["lora_fa", "prediction 3"] == "not yet"
    assert s.loc["random", "lambda_0"] == 1.0 and s.loc["random", "lambda_end"] == 4.0


def test_snapshot_rerun_takes_the_same_steps_as_the_run(glue_fixture, tmp_path, monkeypatch):
    """The seed-0 rerun behind the along-training entries (no evaluations in between, snapshots saved) ends
    at the same weights as harness.train.run of its config: the same final validation metric, to the bit."""
    from harness.train import run
    cfg = make_config("mrpc", "random", "smoke", seed=0, max_train_examples=32, epochs=2, val_fraction=0.25)
    monkeypatch.setattr(C, "model_for", lambda task, method, data_dir, dtype: (
        cfg, prepare(cfg, str(glue_fixture)), {"swept": {}}))
    r = C.train_snapshots("mrpc", "random", tmp_path / "snaps", fractions=(0.5, 1.0), data_dir=str(glue_fixture))
    log = run(cfg, tmp_path / "run", str(glue_fixture), progress=False, save_factors=True)
    assert r["status"] == log["status"] == "ok" and r["steps"] == log["steps"]
    assert r["val"] == log["final"]["val"]["accuracy"]
    assert sorted(r["snapshots"]) == [log["steps"] // 2, log["steps"]]
    from safetensors.torch import load_file
    last = load_file(r["snapshots"][log["steps"]])
    trained = load_file(tmp_path / "run" / log["factors_file"])
    pairs = [(k, t) for k, t in trained.items() if k.endswith("lora_B")]
    assert pairs
    for k, t in pairs:                 # the run's trained B equals the snapshot's, bit for bit
        (snap,) = [v for n, v in last.items() if n.startswith("param/") and n.endswith(k.split("base_model.")[-1])]
        assert torch.equal(snap, t)
    assert any(k.startswith("vhat/") for k in last) and all(torch.isfinite(v).all() for v in last.values())
