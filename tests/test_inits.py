"""Tests of the inits in lora/inits.py: PEFT equivalence, step-0 invariants, statistics, capture.

PEFT 0.21 builds ``pissa`` (our ``svd``), ``olora``, ``eva``, ``corda`` and ``lora_ga`` on the same tiny
model from the same data; factors, s·B₀A₀ and the residual base weight must agree to 1e-5, with every
convention difference (sign, factor scale) asserted explicitly.  Everything is float32 on CPU, seconds.
"""
from __future__ import annotations

import math
import warnings
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import lora
from lora import (ALL_INITS, DATA_INITS, EXTRA_INITS, FROZEN_A_INITS, RESIDUAL_INITS, LayerStats, LoRALinear,
                  add_lora, collect_layer_stats, delta_factors, gradient_capture, layer_capture, lora_layers,
                  merge_lora, unmerge_lora)

TARGETS = ("fc1", "fc2")
D_IN, D_H, D_OUT = 6, 6, 5


pytestmark = pytest.mark.usefixtures("one_torch_thread")   # tests/conftest.py


# ----------------------------------------------------------------------------- tiny model and data
class TinyNet(nn.Module):
    """Token-level 2-layer net: x (batch, tokens, 6) -> (batch, tokens, 5); masked MSE loss vs labels."""

    def __init__(self, dropout: float = 0.0):
        super().__init__()
        self.fc1, self.act, self.drop, self.fc2 = nn.Linear(D_IN, D_H), nn.Tanh(), nn.Dropout(dropout), \
            nn.Linear(D_H, D_OUT)

    def forward(self, x, attention_mask=None, labels=None):
        logits = self.fc2(self.drop(self.act(self.fc1(x))))
        loss = None
        if labels is not None:
            err = ((logits - labels) ** 2).sum(-1)
            m = torch.ones_like(err) if attention_mask is None else attention_mask.to(err.dtype)
            loss = (err * m).sum() / m.sum()
        return SimpleNamespace(loss=loss, logits=logits)


def make_net(seed: int = 0, dropout: float = 0.0) -> TinyNet:
    torch.manual_seed(seed)
    return TinyNet(dropout).eval()


def make_batch(seed: int = 0, b: int = 3, t: int = 7) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + seed)
    x = torch.randn(b, t, D_IN, generator=g) + torch.linspace(-1.0, 1.5, D_IN)    # non-zero mean inputs
    mask = torch.ones(b, t, dtype=torch.long)
    mask[0, -2:] = 0
    mask[1, -3:] = 0
    x[mask == 0] = 25.0                                  # padding junk that must not reach the statistics
    return dict(x=x, attention_mask=mask, labels=torch.randn(b, t, D_OUT, generator=g))


BATCHES = [make_batch(i) for i in range(3)]


def logits(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model(x=batch["x"], attention_mask=batch["attention_mask"]).logits


def max_diff(a, b) -> float:
    return (a.double() - b.double()).abs().max().item()


def stats_for(model, init, batches=BATCHES):
    needs = DATA_INITS.get(init)
    return collect_layer_stats(model, TARGETS, batches, needs=needs) if needs else None


def ours(init, rank=2, alpha=4.0, rslora=False, batches=BATCHES, seed=0, **kw):
    model = make_net(seed)
    return add_lora(model, TARGETS, rank=rank, alpha=alpha, init=init, stats=stats_for(model, init, batches),
                    rslora=rslora, seed=0, **kw).eval()


def peft_model(base: nn.Module, init_lora_weights, rank, alpha, rslora=False, **cfg):
    peft = pytest.importorskip("peft")
    config = peft.LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(TARGETS), lora_dropout=0.0,
                             init_lora_weights=init_lora_weights, use_rslora=rslora, **cfg)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return peft.get_peft_model(base, config), config


def peft_layers(pm):
    """{name: (s, B₀, A₀, residual base weight)} of a PEFT LoRA model, in our layer names."""
    out = {}
    for name in TARGETS:
        mod = pm.base_model.model.get_submodule(name)
        out[name] = (mod.scaling["default"], mod.lora_B["default"].weight.detach().clone(),
                     mod.lora_A["default"].weight.detach().clone(), mod.base_layer.weight.detach().clone())
    return out


def align_signs(ref_rows: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """±1 per row making ``rows`` point like ``ref_rows`` (singular vectors are defined up to sign)."""
    s = torch.sign((ref_rows.double() * rows.double()).sum(1))
    s[s == 0] = 1
    return s


# ----------------------------------------------------------------------------- PEFT equivalence
@pytest.mark.parametrize("rslora", [False, True])
def test_svd_equals_peft_pissa(rslora):
    rank, alpha = 2, 4.0
    model = ours("svd", rank, alpha, rslora)
    theirs = peft_layers(peft_model(make_net(0), "pissa", rank, alpha, rslora)[0])
    for name, layer in lora_layers(model).items():
        s, B, A, W_res = theirs[name]
        assert layer.scaling == pytest.approx(s) == pytest.approx(alpha / (math.sqrt(rank) if rslora else rank))
        assert max_diff(layer.base.weight, W_res) <= 1e-5
        assert max_diff(s * layer.lora_B0 @ layer.lora_A0, s * B @ A) <= 1e-5
        sign = align_signs(A, layer.lora_A0)      # a singular pair (u_i, v_i) may flip jointly
        assert max_diff(layer.lora_A0 * sign[:, None], A) <= 1e-5 and max_diff(layer.lora_B0 * sign, B) <= 1e-5


@pytest.mark.parametrize("rslora", [False, True])
def test_olora_equals_peft(rslora):
    rank, alpha = 2, 6.0
    model = ours("olora", rank, alpha, rslora)
    theirs = peft_layers(peft_model(make_net(0), "olora", rank, alpha, rslora)[0])
    original = make_net(0)
    for name, layer in lora_layers(model).items():
        s, B, A, W_res = theirs[name]
        assert layer.scaling == pytest.approx(s)
        # same Householder QR: factors equal as they are (no sign freedom), s NOT folded into them
        assert max_diff(layer.lora_B0, B) <= 1e-5 and max_diff(layer.lora_A0, A) <= 1e-5
        assert max_diff(layer.base.weight, W_res) <= 1e-5
        Q = layer.lora_B0.double()
        assert torch.allclose(Q.T @ Q, torch.eye(rank, dtype=torch.float64), atol=1e-6)   # orthonormal B₀
        W = original.get_submodule(name).weight.detach().double()
        assert max_diff(layer.lora_B0 @ layer.lora_A0, Q @ Q.T @ W) <= 1e-5              # B₀A₀ = Q_r Q_rᵀ W


def test_eva_equals_peft_without_redistribution():
    """PEFT's EVA with rho=1 (no rank redistribution) on one batch: its incremental, randomized PCA is exact
    here (svd_lowrank with q = 2r = 6 = in_features), so A₀ must match our exact centred PCA, same signs."""
    peft = pytest.importorskip("peft")
    from peft.tuners.lora.eva import initialize_lora_eva_weights
    rank, alpha, batch = 3, 6.0, BATCHES[0]
    model = ours("eva", rank, alpha, batches=[batch])
    pm, _ = peft_model(make_net(0), "eva", rank, alpha, eva_config=peft.EvaConfig(rho=1.0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        initialize_lora_eva_weights(pm, dataloader=[batch], show_progress_bar=False,
                                    prepare_model_inputs_fn=lambda inputs, cfg: inputs["attention_mask"].nonzero())
    theirs = peft_layers(pm)
    original = make_net(0)
    for name, layer in lora_layers(model).items():
        s, B, A, W_res = theirs[name]
        assert layer.scaling == pytest.approx(s)
        assert max_diff(layer.lora_A0, A) <= 1e-5                                # signs: max-|·| entry positive
        assert layer.lora_B0.abs().max() == 0 and B.abs().max() == 0
        assert torch.equal(layer.base.weight, original.get_submodule(name).weight)
        assert torch.equal(W_res, layer.base.weight)


def test_eva_is_centred_pca_of_unpadded_inputs():
    """The convention explicitly: EVA's A₀ = right singular vectors of the *centred* unpadded activations
    (PEFT's IncrementalPCA centres), which differ from the uncentred ones on these non-zero-mean inputs."""
    rank = 3
    model, original = ours("eva", rank, 6.0), make_net(0)
    X = torch.cat([b["x"][b["attention_mask"].bool()] for b in BATCHES]).double()
    _, _, Vh = torch.linalg.svd(X - X.mean(0), full_matrices=False)
    A = lora_layers(model)["fc1"].lora_A0.double()
    assert torch.allclose((A @ Vh[:rank].T).abs(), torch.eye(rank, dtype=torch.float64), atol=1e-5)
    _, _, Vh_unc = torch.linalg.svd(X, full_matrices=False)
    assert (A @ Vh_unc[:rank].T).abs().diagonal().min() < 0.99               # not the uncentred directions
    st = collect_layer_stats(original, TARGETS, BATCHES, needs={"input"})["fc1"]
    A_unc = lora.inits.eva_init(original.fc1.weight, rank, 2.0, lora.InitContext(stats=st), center=False)[1]
    assert torch.allclose((A_unc @ Vh_unc[:rank].T).abs(), torch.eye(rank, dtype=torch.float64), atol=1e-5)


def _layer_inputs(model, x):
    seen = {}
    hooks = [model.get_submodule(n).register_forward_hook(lambda m, a, o, n=n: seen.__setitem__(n, a[0].detach()))
             for n in TARGETS]
    with torch.no_grad():
        model(x=x)
    for h in hooks:
        h.remove()
    return seen


def test_corda_equals_peft_ipm():
    """PEFT's preprocess_corda on one forward call of a 2-D input (its hook needs batch size 1 / 2-D inputs
    and does not mask padding).  Its covariance is (X/max X)ᵀ(X/max X), ours XᵀX/n_tokens = c·C_peft:
    s·B₀A₀ and the residual agree; the factors differ exactly by B = √c·B_peft, A = A_peft/√c."""
    peft = pytest.importorskip("peft")
    from peft.tuners.lora.config import CordaConfig
    from peft.tuners.lora.corda import preprocess_corda
    rank, alpha = 2, 4.0
    x = torch.randn(20, D_IN, generator=torch.Generator().manual_seed(5)) + 0.5   # (20, 6): one call, no padding
    model = make_net(0)
    stats = collect_layer_stats(model, TARGETS, [dict(x=x)], needs={"input"})
    add_lora(model, TARGETS, rank=rank, alpha=alpha, init="corda", stats=stats)
    base = make_net(0)
    inputs = _layer_inputs(base, x)
    config = peft.LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(TARGETS), init_lora_weights="corda",
                             corda_config=CordaConfig(corda_method="ipm"))
    preprocess_corda(base, config, run_model=lambda: base(x=x))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = peft_layers(peft.get_peft_model(base, config))
    for name, layer in lora_layers(model).items():
        s, B, A, W_res = theirs[name]
        X = inputs[name].double()
        c = X.max().abs() ** 2 / X.shape[0]                     # C_ours / C_peft
        assert torch.allclose(stats[name].input_cov, X.T @ X / X.shape[0])
        assert max_diff(layer.base.weight, W_res) <= 1e-5
        assert max_diff(s * layer.lora_B0 @ layer.lora_A0, s * B @ A) <= 1e-5
        sign = align_signs(A, layer.lora_A0)
        assert max_diff(layer.lora_B0 * sign, math.sqrt(c) * B) <= 1e-5 * max(1.0, B.abs().max().item())
        assert max_diff(layer.lora_A0 * sign[:, None] * math.sqrt(c), A) <= 1e-5 * max(1.0, A.abs().max().item())


def test_corda_reconstructs_w_exactly_with_covariance_weighting():
    """Our own construction: W C' = U S V̂ᵀ, Vᵀ = V̂ᵀ C'⁻¹ gives W = U S Vᵀ; the top-r piece is what is removed."""
    model, original = ours("corda", 2, 4.0), make_net(0)
    stats = collect_layer_stats(original, TARGETS, BATCHES, needs={"input"})
    for name, layer in lora_layers(model).items():
        W = original.get_submodule(name).weight.detach().double()
        Cd, inv = lora.inits.corda_damped_covariance(stats[name].input_cov)
        U, S, Vh = torch.linalg.svd(W @ Cd, full_matrices=False)
        assert torch.allclose((U * S) @ Vh @ inv, W, atol=1e-10)
        top = (U[:, :2] * S[:2]) @ Vh[:2] @ inv
        assert max_diff(layer.scaling * layer.lora_B0 @ layer.lora_A0, top) <= 1e-5
        assert max_diff(layer.base.weight, W - top) <= 1e-5


def test_lora_ga_equals_peft_defaults():
    """PEFT's LoRA-GA defaults (direction ArB2r, scale 'stable', gamma 16) from the same mean gradient over
    3 batches.  PEFT's svd_lowrank is exact here (q = min(4r, min dims) = min dims).  A₀ and B₀ come from
    different singular triplets (v_1..v_r, u_{r+1}..u_{2r}), so each row of A₀ / column of B₀ has its own
    sign freedom: after aligning signs the factors, s·B₀A₀ and the residual agree."""
    peft = pytest.importorskip("peft")
    from peft.tuners.lora.loraga import preprocess_loraga
    rank, alpha = 2, 4.0
    model = ours("lora_ga", rank, alpha)
    base = make_net(0)
    config = peft.LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(TARGETS), init_lora_weights="lora_ga",
                             lora_ga_config=peft.LoraGAConfig())
    assert (config.lora_ga_config.direction, config.lora_ga_config.scale, config.lora_ga_config.stable_gamma) == \
        ("ArB2r", "stable", 16)

    def train_step():
        for b in BATCHES:
            x = b["x"].clone().requires_grad_()           # an input needing grad keeps PEFT's backward hook quiet
            base(x=x, attention_mask=b["attention_mask"], labels=b["labels"]).loss.backward()

    preprocess_loraga(base, config, train_step)
    grads = {n: base.get_submodule(n)._peft_loraga_grad.clone() for n in TARGETS}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = peft_layers(peft.get_peft_model(base, config))
    stats = collect_layer_stats(make_net(0), TARGETS, BATCHES, needs={"grad"})
    original = make_net(0)
    for name, layer in lora_layers(model).items():
        s, B, A, W_res = theirs[name]
        assert max_diff(stats[name].grad, grads[name]) <= 1e-6          # same mean gradient (PEFT sums in float32)
        sa, sb = align_signs(A, layer.lora_A0), align_signs(B.T, layer.lora_B0.T)
        A_al, B_al = layer.lora_A0 * sa[:, None], layer.lora_B0 * sb
        assert max_diff(A_al, A) <= 1e-5 and max_diff(B_al, B) <= 1e-5
        W = original.get_submodule(name).weight.detach()
        assert max_diff(W - s * B_al @ A_al, W_res) <= 1e-5
        assert max_diff(layer.base.weight, W - s * layer.lora_B0 @ layer.lora_A0) <= 1e-6
        # the construction itself: A₀ = v_1..v_r, B₀ = u_{r+1..2r} S_{r+1..2r} · out^{1/4}/√16
        U, S, Vh = torch.linalg.svd(stats[name].grad, full_matrices=False)
        assert torch.allclose((layer.lora_A0.double() @ Vh[:rank].T).abs(), torch.eye(rank, dtype=torch.float64),
                              atol=1e-5)
        zeta = W.shape[0] ** 0.25 / 4.0
        assert torch.allclose(layer.lora_B0.double().norm(dim=0), S[rank:2 * rank] * zeta, rtol=1e-5)


# ----------------------------------------------------------------------------- step-0 invariants
PRESERVING = [i for i in ALL_INITS if not lora.init_spec(i).changes_model]


@pytest.mark.parametrize("init", PRESERVING)
def test_function_preserved_at_step_0(init):
    kw = dict(svd_method="randomized") if init == "svd" else {}
    model, ref = ours(init, rank=2, **kw), make_net(0)
    for b in BATCHES:
        assert max_diff(logits(model, b), logits(ref, b)) <= 1e-5
    for name, layer in lora_layers(model).items():
        assert layer.residual == (init in RESIDUAL_INITS) and layer.freeze_A == (init in FROZEN_A_INITS)
        W = ref.get_submodule(name).weight
        if layer.residual:
            assert max_diff(layer.base.weight + layer.scaling * layer.lora_B0 @ layer.lora_A0, W) <= 1e-6
            assert layer.lora_B0.abs().max() > 0 and layer.lora_A0.abs().max() > 0
        else:
            assert torch.equal(layer.base.weight, W)
        Be, Ae = layer.delta_factors()
        assert (Be @ Ae).abs().max() <= 1e-6                      # ΔW relative to the original W is 0


@pytest.mark.parametrize("init", ["eva", "lora_fa_eva", "lora_fa_grad"])
def test_zero_b_inits_have_orthonormal_a(init):
    model = ours(init, rank=3)
    for layer in lora_layers(model).values():
        A = layer.lora_A0.double()
        assert layer.lora_B0.abs().max() == 0
        assert torch.allclose(A @ A.T, torch.eye(3, dtype=torch.float64), atol=1e-6)
        assert layer.lora_A.requires_grad == (init == "eva")


def test_svd_minor_takes_bottom_triplets():
    rank = 2
    model, ref = ours("svd_minor", rank=rank), make_net(0)
    for name, layer in lora_layers(model).items():
        W = ref.get_submodule(name).weight.detach().double()
        U, S, Vh = torch.linalg.svd(W, full_matrices=False)
        minor = (U[:, -rank:] * S[-rank:]) @ Vh[-rank:]
        assert max_diff(layer.scaling * layer.lora_B0 @ layer.lora_A0, minor) <= 1e-5
        assert torch.allclose(torch.linalg.svdvals(layer.base.weight.double())[:-rank], S[:-rank], atol=1e-5)
        # balanced split like svd: B₀ᵀB₀ = A₀A₀ᵀ = diag(S_minor / s)
        BtB, AAt = layer.lora_B0.double().T @ layer.lora_B0.double(), layer.lora_A0.double() @ layer.lora_A0.double().T
        assert torch.allclose(BtB, AAt, atol=1e-5)
        assert torch.allclose(BtB.diagonal(), S[-rank:] / layer.scaling, atol=1e-5)


def test_lora_fa_grad_a_is_top_gradient_directions():
    model, ref = ours("lora_fa_grad", rank=2), make_net(0)
    G = collect_layer_stats(ref, TARGETS, BATCHES, needs={"grad"})
    for name, layer in lora_layers(model).items():
        _, _, Vh = torch.linalg.svd(G[name].grad, full_matrices=False)
        assert torch.allclose((layer.lora_A0.double() @ Vh[:2].T).abs(), torch.eye(2, dtype=torch.float64), atol=1e-5)


def test_rslora_scaling_stored_and_saved(tmp_path):
    model = ours("olora", rank=4, alpha=8.0, rslora=True)
    for layer in lora_layers(model).values():
        assert layer.rslora and layer.scaling == pytest.approx(8.0 / 2.0)
    cfg = lora.lora_config(model)
    assert all(c["rslora"] is True and c["scaling"] == pytest.approx(4.0) for c in cfg.values())
    path = lora.save_lora(model, tmp_path / "a.safetensors")
    assert lora.read_lora_config(path) == cfg
    plain = ours("olora", rank=4, alpha=8.0)
    assert all(c["rslora"] is False and c["scaling"] == pytest.approx(2.0) for c in lora.lora_config(plain).values())


# ----------------------------------------------------------------------------- merge / files / export
def train_steps(model, steps=3, lr=3e-2):
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    for i in range(steps):
        opt.zero_grad()
        model(**BATCHES[i % len(BATCHES)]).loss.backward()
        opt.step()
    return model.eval()


# svd_seed needs a square W (this net has none): tests/test_protocol_v2.py covers it
@pytest.mark.parametrize("init,rslora", [(i, False) for i in EXTRA_INITS if i != "svd_seed"] + [("corda", True), ("eva", True)])
def test_merge_unmerge_save_load(init, rslora, tmp_path):
    model, original = ours(init, rslora=rslora), make_net(0)
    A_init = {n: l.lora_A.detach().clone() for n, l in lora_layers(model).items()}
    train_steps(model)
    b = BATCHES[0]
    y = logits(model, b)
    assert max_diff(y, logits(original, b)) > 1e-4
    layers = lora_layers(model)
    for n, l in layers.items():
        assert torch.equal(l.lora_A, A_init[n]) == l.freeze_A
        assert not torch.equal(l.lora_B, l.lora_B0)
    base_w = {n: l.base.weight.detach().clone() for n, l in layers.items()}
    factors = delta_factors(model)
    merge_lora(model)
    assert max_diff(logits(model, b), y) <= 1e-5
    for n, l in layers.items():                # ΔW relative to the original W, for residual inits too
        Be, Ae = factors[n]
        assert max_diff(Be @ Ae, l.base.weight - original.get_submodule(n).weight) <= 1e-5
    unmerge_lora(model)
    for n, l in layers.items():
        assert max_diff(l.base.weight, base_w[n]) <= 1e-6
    assert max_diff(logits(model, b), y) <= 1e-5

    path = lora.save_lora(model, tmp_path / "a.safetensors")
    assert lora.read_lora_config(path) == lora.lora_config(model)
    for n, (B, A) in lora.load_delta_factors(path).items():
        assert torch.equal(B, factors[n][0]) and torch.equal(A, factors[n][1])
    # a fresh model adapted from *other* batches: residual bases differ, loading re-bases them
    fresh = ours(init, rslora=rslora, batches=[make_batch(7)] if init in DATA_INITS else BATCHES)
    lora.load_lora(fresh, path)
    assert max_diff(logits(fresh, b), y) <= 1e-5


@pytest.mark.parametrize("init,rslora", [("olora", False), ("lora_ga", True), ("lora_fa_eva", True)])
def test_export_peft_reproduces_outputs(init, rslora, tmp_path):
    peft = pytest.importorskip("peft")
    model = train_steps(ours(init, rslora=rslora))
    out = lora.export_peft(model, tmp_path / "peft", "tiny", task_type=None)
    cfg = peft.LoraConfig.from_pretrained(str(out))
    assert cfg.use_rslora == rslora and cfg.r == (4 if init in RESIDUAL_INITS else 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reloaded = peft.PeftModel.from_pretrained(make_net(0), str(out)).eval()
    for b in BATCHES:
        assert max_diff(logits(reloaded, b), logits(model, b)) <= 1e-5


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize("init", sorted(DATA_INITS))
def test_data_inits_without_stats_raise_one_line(init):
    model = make_net(0)
    with pytest.raises(ValueError, match=rf"^init '{init}' needs layer statistics") as err:
        add_lora(model, TARGETS, rank=2, init=init)
    assert "\n" not in str(err.value) and "collect_layer_stats" in str(err.value)
    assert not lora_layers(model)                                   # nothing replaced
    with pytest.raises(ValueError, match=rf"init '{init}' needs layer statistics"):
        LoRALinear(nn.Linear(6, 6), 2, 4.0, init=init)
    partial = collect_layer_stats(model, ("fc1",), BATCHES, needs=DATA_INITS[init])
    with pytest.raises(ValueError, match=rf"init '{init}' has no statistics for layer 'fc2'"):
        add_lora(model, TARGETS, rank=2, init=init, stats=partial)
    assert not lora_layers(model)
    other = "grad" if DATA_INITS[init] == {"input"} else "input"
    wrong = collect_layer_stats(model, TARGETS, BATCHES, needs={other})
    with pytest.raises(ValueError, match=rf"init '{init}' needs an? .* for layer 'fc1', got None"):
        add_lora(model, TARGETS, rank=2, init=init, stats=wrong)


def test_lora_ga_rank_limit_and_unknown_init():
    model = make_net(0)
    stats = collect_layer_stats(model, TARGETS, BATCHES, needs={"grad"})
    with pytest.raises(ValueError, match=r"rank 3 is too large for init 'lora_ga' on 'fc2' \(5×6, needs 2·rank ≤ 5\); "
                                         r"valid: 1\.\.2$"):
        add_lora(model, TARGETS, rank=3, init="lora_ga", stats=stats)       # fc1 (6×6) alone would allow 3
    assert not lora_layers(model)
    with pytest.raises(ValueError, match=r"unknown init 'pissa'; valid: .*svd_minor, olora, eva, corda, lora_ga"):
        add_lora(make_net(0), TARGETS, init="pissa")


# ----------------------------------------------------------------------------- collect_layer_stats
def test_collect_layer_stats_values_and_no_side_effects():
    model = make_net(0, dropout=0.3).train()
    model.fc2.eval()                                  # mixed modes must come back as they were
    model.fc1.bias.requires_grad_(False)
    model.fc2.weight.grad = torch.full_like(model.fc2.weight, 7.0)    # a pre-existing .grad stays
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    modes = {n: m.training for n, m in model.named_modules()}
    torch.manual_seed(123)
    stats = collect_layer_stats(model, TARGETS, BATCHES, needs={"input", "grad"})
    after_rng = torch.rand(3)
    torch.manual_seed(123)
    assert torch.equal(torch.rand(3), after_rng)                      # global RNG not consumed
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert {n: m.training for n, m in model.named_modules()} == modes
    for n, p in model.named_parameters():
        assert torch.equal(p, params[n])
        assert (p.grad is None) if n != "fc2.weight" else torch.equal(p.grad, torch.full_like(p, 7.0))

    # expected values, by hand: eval mode (no dropout), padding excluded, mean gradient over batches
    ref = make_net(0, dropout=0.3).eval()
    X = torch.cat([b["x"][b["attention_mask"].bool()] for b in BATCHES]).double()
    st = stats["fc1"]
    assert isinstance(st, LayerStats) and st.n_batches == 3 and st.n_tokens == X.shape[0] == 3 * 21 - 15
    assert torch.allclose(st.input_cov, X.T @ X / X.shape[0]) and torch.allclose(st.input_mean, X.mean(0))
    H = torch.cat([ref.act(ref.fc1(b["x"]))[b["attention_mask"].bool()] for b in BATCHES]).detach().double()
    assert torch.allclose(stats["fc2"].input_cov, H.T @ H / H.shape[0], atol=1e-6)
    G = [torch.autograd.grad(ref(**b).loss, [ref.fc1.weight, ref.fc2.weight]) for b in BATCHES]
    assert torch.allclose(stats["fc1"].grad, sum(g[0] for g in G).double() / 3, atol=1e-7)
    assert torch.allclose(stats["fc2"].grad, sum(g[1] for g in G).double() / 3, atol=1e-7)
    assert stats["fc1"].input_cov.dtype == stats["fc1"].grad.dtype == torch.float64

    again = collect_layer_stats(model, TARGETS, BATCHES, needs={"input", "grad"})
    assert torch.equal(again["fc1"].grad, stats["fc1"].grad)          # eval mode: deterministic despite dropout


def test_collect_layer_stats_options_and_errors():
    model = make_net(0)
    only_in = collect_layer_stats(model, TARGETS, iter(BATCHES), needs={"input"}, max_batches=2)
    assert only_in["fc1"].grad is None and only_in["fc1"].n_batches == 2
    custom = collect_layer_stats(model, r"fc2", BATCHES, needs={"grad"},
                                 loss_fn=lambda m, b: m(x=b["x"]).logits.pow(2).mean())
    assert set(custom) == {"fc2"} and custom["fc2"].input_cov is None and custom["fc2"].grad.abs().max() > 0
    with pytest.raises(ValueError, match=r"unknown statistics \['hessian'\]; valid: input, grad"):
        collect_layer_stats(model, TARGETS, BATCHES, needs={"hessian"})
    with pytest.raises(ValueError, match=r"needs loss_fn when model\(\*\*batch\) has no \.loss"):
        collect_layer_stats(model, TARGETS, [dict(x=BATCHES[0]["x"])], needs={"grad"})
    with pytest.raises(ValueError, match=r"matched no nn.Linear"):
        collect_layer_stats(model, ("nope",), BATCHES)
    with pytest.raises(ValueError, match=r"no batches"):
        collect_layer_stats(model, TARGETS, [])
    assert all(p.requires_grad for p in model.parameters()) and all(p.grad is None for p in model.parameters())


def test_collect_layer_stats_masks_padding_in_roberta():
    """On a real transformer, query/value inputs are (batch, seq, hidden): padded positions are dropped."""
    from transformers import RobertaConfig, RobertaForSequenceClassification
    torch.manual_seed(0)
    model = RobertaForSequenceClassification(RobertaConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=64, num_labels=2)).eval()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 100, (3, 10), generator=g)
    mask = torch.ones_like(ids)
    ids[0, -4:], mask[0, -4:] = 1, 0
    batch = dict(input_ids=ids, attention_mask=mask, labels=torch.tensor([0, 1, 1]))
    stats = collect_layer_stats(model, ("query",), [batch])
    name = "roberta.encoder.layer.0.attention.self.query"
    seen = []
    h = model.get_submodule(name).register_forward_hook(lambda m, a, o: seen.append(a[0].detach()))
    with torch.no_grad():
        model(**batch)
    h.remove()
    X = seen[0][mask.bool()].double()
    assert stats[name].n_tokens == 26 and torch.allclose(stats[name].input_cov, X.T @ X / 26, atol=1e-6)
    before = model(**batch).logits.detach()
    add_lora(model, ("query",), rank=4, init="lora_ga", stats=stats)
    assert max_diff(model(**batch).logits, before) <= 1e-5


# ----------------------------------------------------------------------------- gradient capture
def _orthonormal(n, k, seed):
    return torch.linalg.qr(torch.randn(n, k, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)).Q


def test_gradient_capture_constructed_cases():
    out_f, in_f, r = 7, 9, 2
    Qo, Qi = _orthonormal(out_f, out_f, 0), _orthonormal(in_f, in_f, 1)
    A, B, zeroB = Qi[:, :r].T * 3.0, Qo[:, :r] * 0.5, torch.zeros(out_f, r, dtype=torch.float64)
    g = torch.Generator().manual_seed(2)
    inside_row = torch.randn(out_f, r, generator=g, dtype=torch.float64) @ Qi[:, :r].T      # G = X·A-directions
    outside = Qo[:, r:] @ torch.randn(out_f - r, in_f - r, generator=g, dtype=torch.float64) @ Qi[:, r:].T
    inside_col = Qo[:, :r] @ torch.randn(r, in_f, generator=g, dtype=torch.float64)
    assert gradient_capture(zeroB, A, inside_row) == pytest.approx(1.0)
    assert gradient_capture(zeroB, A, outside) == pytest.approx(0.0, abs=1e-12)
    assert gradient_capture(B, A, outside) == pytest.approx(0.0, abs=1e-12)
    assert gradient_capture(B, A, inside_col) == pytest.approx(1.0)
    assert gradient_capture(B, A, inside_col, freeze_A=True) == pytest.approx(
        (inside_col @ Qi[:, :r]).pow(2).sum().item() / inside_col.pow(2).sum().item())
    assert gradient_capture(zeroB, torch.zeros(r, in_f), inside_row) == 0.0
    assert gradient_capture(B, torch.zeros(r, in_f, dtype=torch.float64), inside_col) == pytest.approx(1.0)
    assert gradient_capture(B, A, torch.zeros(out_f, in_f)) == 0.0
    mix = inside_row + outside
    share = inside_row.pow(2).sum() / mix.pow(2).sum()     # orthogonal pieces: energies add
    assert gradient_capture(zeroB, A, mix) == pytest.approx(share.item())


def test_gradient_capture_equals_least_squares_projection():
    """Check the closed form against brute force: project vec(G) onto span{vec(E_ij A), vec(B E_ij)}."""
    out_f, in_f, r = 5, 6, 2
    g = torch.Generator().manual_seed(3)
    B, A, G = (torch.randn(*s, generator=g, dtype=torch.float64) for s in ((out_f, r), (r, in_f), (out_f, in_f)))
    cols = []
    for i in range(out_f):
        for j in range(r):
            E = torch.zeros(out_f, r, dtype=torch.float64)
            E[i, j] = 1
            cols.append((E @ A).flatten())
    frozen_cols = len(cols)
    for i in range(r):
        for j in range(in_f):
            E = torch.zeros(r, in_f, dtype=torch.float64)
            E[i, j] = 1
            cols.append((B @ E).flatten())
    M = torch.stack(cols, 1)
    for freeze, basis in ((False, M), (True, M[:, :frozen_cols])):
        Q = lora.spectra._orth(basis)
        proj = Q @ (Q.T @ G.flatten())
        expected = (proj @ proj / (G.flatten() @ G.flatten())).item()
        assert gradient_capture(B, A, G, freeze_A=freeze) == pytest.approx(expected, abs=1e-10)
    P_B, P_A = B @ torch.linalg.pinv(B), torch.linalg.pinv(A) @ A
    energy = (P_B @ G).pow(2).sum() + (G @ P_A).pow(2).sum() - (P_B @ G @ P_A).pow(2).sum()
    assert gradient_capture(B, A, G) == pytest.approx((energy / G.pow(2).sum()).item())


def test_layer_capture_of_gradient_inits():
    """lora_fa_grad keeps G's top-r energy; lora_ga's first step reaches G's top-2r energy (its design)."""
    r = 2
    G = collect_layer_stats(make_net(0), TARGETS, BATCHES, needs={"grad"})
    for init, k in (("lora_fa_grad", r), ("lora_ga", 2 * r)):
        for name, layer in lora_layers(ours(init, rank=r)).items():
            S = torch.linalg.svdvals(G[name].grad)
            assert layer_capture(layer, G[name].grad) == pytest.approx((S[:k].pow(2).sum() / S.pow(2).sum()).item(),
                                                                       abs=1e-6)
    for name, layer in lora_layers(ours("random", rank=r)).items():       # B = 0, A random: ‖G P_A‖²/‖G‖² < 1
        c = layer_capture(layer, G[name].grad)
        P_A = torch.linalg.pinv(layer.lora_A0.double()) @ layer.lora_A0.double()
        assert c == pytest.approx(((G[name].grad @ P_A).pow(2).sum() / G[name].grad.pow(2).sum()).item(), abs=1e-8)
        assert 0 < c < 1
