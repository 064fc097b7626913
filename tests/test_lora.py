"""Tests of the LoRA library (lora.core, lora.io): init invariants, merge, files, PEFT export, errors.

Everything runs on tiny models built from configs (no downloads) in float32 on CPU:
an MLP (``nn.Sequential`` of Linears) and a 2-layer, 32-wide ``RobertaForSequenceClassification``.
"""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import re
import warnings

import pytest
import torch
from torch import nn

import lora
from lora import (INIT_METHODS, LoRALinear, add_lora, delta_factors, export_peft, load_delta_factors, load_lora,
                  load_lora_state_dict, lora_layers, lora_state_dict, merge_lora, save_lora, truncated_svd,
                  unmerge_lora)

RANK, ALPHA = 4, 8.0


pytestmark = pytest.mark.usefixtures("one_torch_thread")   # tests/conftest.py

# ----------------------------------------------------------------------------- tiny models and data
ROBERTA_KW = dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                  intermediate_size=64, max_position_embeddings=64, num_labels=2)
ROBERTA_TARGETS = ("query", "value")
ROBERTA_KEEP = ("classifier",)
MLP_TARGETS = ("0", "2")          # nn.Sequential children are named "0", "1", ...
MLP_KEEP = ("4",)                 # the last Linear plays the classifier head


def make_roberta(seed: int = 0):
    from transformers import RobertaConfig, RobertaForSequenceClassification
    torch.manual_seed(seed)
    return RobertaForSequenceClassification(RobertaConfig(**ROBERTA_KW)).float().eval()


def make_mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(16, 24), nn.Tanh(), nn.Linear(24, 12), nn.Tanh(), nn.Linear(12, 3)).eval()


def roberta_batch(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, ROBERTA_KW["vocab_size"], (4, 12), generator=g)
    mask = torch.ones_like(ids)
    ids[0, -3:], mask[0, -3:] = 1, 0            # one padded row (Roberta's pad id is 1)
    return dict(input_ids=ids, attention_mask=mask, labels=torch.randint(0, 2, (4,), generator=g))


def mlp_batch(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return dict(x=torch.randn(8, 16, generator=g), y=torch.randint(0, 3, (8,), generator=g))


KINDS = {  # kind -> (builder, batch, targets, keep_trainable)
    "roberta": (make_roberta, roberta_batch, ROBERTA_TARGETS, ROBERTA_KEEP),
    "mlp": (make_mlp, mlp_batch, MLP_TARGETS, MLP_KEEP),
}


def outputs(model: nn.Module, batch: dict, hidden: bool = False) -> torch.Tensor:
    """Logits (or Roberta's last hidden state) in eval mode, no grad."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        if "x" in batch:
            out = model(batch["x"])
        else:
            res = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                        output_hidden_states=hidden)
            out = res.hidden_states[-1] if hidden else res.logits
    model.train(was_training)
    return out


def loss_of(model: nn.Module, batch: dict) -> torch.Tensor:
    if "x" in batch:
        return nn.functional.cross_entropy(model(batch["x"]), batch["y"])
    return model(**batch).loss


def train(model: nn.Module, batch: dict, steps: int = 4, lr: float = 2e-2) -> nn.Module:
    """A few AdamW steps (in train mode, so adapter dropout is active) on all trainable params."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.01)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        loss_of(model, batch).backward()
        opt.step()
    return model.eval()


def adapted(kind: str, init: str, seed: int = 0, model_seed: int = 0, **kw):
    """(model, batch, keep) for a fresh tiny model of ``kind`` with LoRA added."""
    build, make_batch, targets, keep = KINDS[kind]
    model = build(model_seed)
    kw = dict(dict(rank=RANK, alpha=ALPHA, keep_trainable=keep), **kw)
    add_lora(model, targets, init=init, seed=seed, **kw)
    return model.eval(), make_batch(), keep


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


# ----------------------------------------------------------------------------- outputs at init
@pytest.mark.parametrize("kind", ["roberta", "mlp"])
@pytest.mark.parametrize("init,svd_method", [("random", "full"), ("svd", "full"), ("svd", "randomized"),
                                             ("lora_fa", "full"), ("lora_fa_svd", "full"),
                                             ("lora_fa_svd", "randomized")])
def test_init_preserves_outputs(kind, init, svd_method):
    build, make_batch, targets, keep = KINDS[kind]
    batch = make_batch()
    base = build(0)
    ref, ref_h = outputs(base, batch), (outputs(base, batch, hidden=True) if kind == "roberta" else None)
    model = build(0)
    add_lora(model, targets, rank=RANK, alpha=ALPHA, dropout=0.1, init=init, svd_method=svd_method, seed=3,
             keep_trainable=keep)
    assert len(lora_layers(model)) == (4 if kind == "roberta" else 2)
    assert max_diff(outputs(model, batch), ref) <= 1e-5
    if kind == "roberta":
        assert max_diff(outputs(model, batch, hidden=True), ref_h) <= 1e-5
    for layer in lora_layers(model).values():    # adapters are non-trivial, so this is not vacuous
        assert layer.lora_A.abs().max() > 0
        if init in ("random", "lora_fa", "lora_fa_svd"):
            assert torch.count_nonzero(layer.lora_B) == 0
        else:
            assert layer.lora_B.abs().max() > 0


@pytest.mark.parametrize("kind", ["roberta", "mlp"])
def test_svd_naive_changes_outputs(kind):
    build, make_batch, targets, keep = KINDS[kind]
    batch = make_batch()
    base = build(0)
    model = build(0)
    originals = {n: m.weight.detach().clone() for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    add_lora(model, targets, rank=RANK, alpha=ALPHA, dropout=0.1, init="svd_naive", seed=0, keep_trainable=keep)
    if kind == "roberta":   # logits of a random-init head are tiny; the hidden state is O(1)
        assert max_diff(outputs(model, batch, hidden=True), outputs(base, batch, hidden=True)) > 1e-2
    else:
        assert max_diff(outputs(model, batch), outputs(base, batch)) > 1e-2
    for name, layer in lora_layers(model).items():
        W = originals[name]
        assert torch.equal(layer.base.weight, W)                 # base left untouched ...
        U, S, Vh = torch.linalg.svd(W.double())
        top = (U[:, :RANK] * S[:RANK]) @ Vh[:RANK]
        assert torch.allclose(layer.delta_weight().double(), top, atol=1e-5)   # ... plus U_r S_r V_rᵀ
        S_eff = torch.linalg.svdvals((W + layer.delta_weight()).double())
        assert torch.allclose(S_eff[:RANK], 2 * S[:RANK], rtol=1e-4)          # top-r values doubled


# ----------------------------------------------------------------------------- merge / unmerge
@pytest.mark.parametrize("kind", ["roberta", "mlp"])
@pytest.mark.parametrize("init", INIT_METHODS)
def test_merge_unmerge(kind, init):
    model, batch, _ = adapted(kind, init, dropout=0.1)
    A_init = {n: l.lora_A.detach().clone() for n, l in lora_layers(model).items()}
    train(model, batch)
    layers = lora_layers(model)
    for n, layer in layers.items():
        assert layer.lora_B.abs().max() > 1e-4                  # B trained away from 0 / its init
        assert not torch.equal(layer.lora_B, layer.lora_B0)
        if not layer.freeze_A:
            assert not torch.equal(layer.lora_A, A_init[n])
    y = outputs(model, batch)
    base_w = {n: l.base.weight.detach().clone() for n, l in layers.items()}

    merge_lora(model)
    assert all(l.merged for l in layers.values())
    merged_w = {n: l.base.weight.detach().clone() for n, l in layers.items()}
    for n, l in layers.items():
        assert max_diff(merged_w[n], base_w[n] + l.delta_weight()) <= 1e-6
        assert max_diff(merged_w[n], base_w[n]) > 1e-4            # merging actually changed the weight
    assert max_diff(outputs(model, batch), y) <= 1e-5

    merge_lora(model)                                            # double merge: no-op
    for n, l in layers.items():
        assert torch.equal(l.base.weight, merged_w[n])
    assert max_diff(outputs(model, batch), y) <= 1e-5

    unmerge_lora(model)
    assert not any(l.merged for l in layers.values())
    for n, l in layers.items():
        assert max_diff(l.base.weight, base_w[n]) <= 1e-6
    unmerged_w = {n: l.base.weight.detach().clone() for n, l in layers.items()}
    unmerge_lora(model)                                          # double unmerge: no-op
    for n, l in layers.items():
        assert torch.equal(l.base.weight, unmerged_w[n])
    assert max_diff(outputs(model, batch), y) <= 1e-5


@pytest.mark.parametrize("init", INIT_METHODS)
def test_lora_linear_standalone(init):
    """LoRALinear on its own: shapes, scaling, frozen base, frozen A for LoRA-FA, y = base(x) + s·BA x."""
    torch.manual_seed(0)
    lin = nn.Linear(10, 6)
    W = lin.weight.detach().clone()
    layer = LoRALinear(lin, rank=3, alpha=12.0, init=init, generator=torch.Generator().manual_seed(0))
    assert layer.lora_A.shape == (3, 10) and layer.lora_B.shape == (6, 3) and layer.scaling == 4.0
    assert layer.lora_A0.shape == (3, 10) and "lora_A0" in dict(layer.named_buffers())
    assert not layer.base.weight.requires_grad and not layer.base.bias.requires_grad
    assert layer.lora_A.requires_grad == (init not in lora.FROZEN_A_METHODS) and layer.lora_B.requires_grad
    assert layer.residual == (init in lora.RESIDUAL_INITS) and layer.freeze_A == (init in lora.FROZEN_A_METHODS)
    with torch.no_grad():
        layer.lora_B.normal_()
        x = torch.randn(5, 10)
        expected = x @ layer.base.weight.T + lin.bias + 4.0 * x @ layer.lora_A.T @ layer.lora_B.T
    assert max_diff(layer(x), expected) <= 1e-5
    if init != "svd":
        assert torch.equal(layer.base.weight, W)


def test_dropout_acts_on_adapter_path_only_in_train_mode():
    model, batch, _ = adapted("mlp", "random", dropout=0.5)
    ref = make_mlp(0)
    x = batch["x"]
    model.train()
    with torch.no_grad():
        assert torch.equal(model(x), ref(x))                   # B = 0: dropout never touches the base path
        for l in lora_layers(model).values():
            l.lora_B.normal_()
        torch.manual_seed(1)
        y1 = model(x)
        torch.manual_seed(2)
        y2 = model(x)
    assert max_diff(y1, y2) > 1e-3                             # dropout active on the adapter input
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
        assert max_diff(model(x), ref(x)) > 1e-3


@pytest.mark.parametrize("p", [0.1, 0.5, 0.3])
def test_int16_dropout_has_nn_dropouts_distribution(p):
    """Each element dropped with probability p' = round(p·2¹⁶)/2¹⁶, kept ones scaled by 1/(1 − p'), in all
    four 16-bit lanes of a 64-bit word (a lane with a biased top bit would show at p = 0.5)."""
    drop = lora.Int16Dropout(p).train()
    k = round(p * 65536)
    assert abs(k / 65536 - p) <= 2 ** -17
    torch.manual_seed(0)
    x = torch.ones(4000, 1001)                                  # numel not a multiple of 4: the tail word is cut
    y = drop(x)
    kept = y != 0
    assert torch.equal(y[kept], torch.full_like(y[kept], 65536 / (65536 - k)))
    n = x.numel()
    sd = (p * (1 - p) / (n / 4)) ** 0.5
    for lane in range(4):                                       # element i comes from lane i mod 4
        frac = 1 - kept.flatten()[lane::4].float().mean().item()
        assert abs(frac - k / 65536) < 6 * sd, (lane, frac)
    assert y.mean().item() == pytest.approx(1.0, abs=6 * (p / (1 - p) / n) ** 0.5)


def test_int16_dropout_is_seeded_identity_in_eval_and_masks_the_gradient():
    drop = lora.Int16Dropout(0.25)
    x = torch.randn(3, 7, 11, requires_grad=True)
    torch.manual_seed(3)
    y = drop(x)
    torch.manual_seed(3)
    assert torch.equal(drop(x), y)                               # the default generator's seed fixes the mask
    torch.manual_seed(4)
    assert not torch.equal(drop(x), y)
    y.sum().backward()
    assert torch.equal(x.grad, (y != 0).float() * (4 / 3))       # ∂y/∂x = mask / (1 − p'), p' = 0.25 exactly
    assert drop.eval()(x) is x and lora.Int16Dropout(0.0).train()(x) is x
    with pytest.raises(ValueError, match=r"dropout must be in \[0, 1\), got 1.0"):
        lora.Int16Dropout(1.0)


def test_int16_dropout_masked_is_forward_without_the_scale():
    drop = lora.Int16Dropout(0.3).train()
    x = torch.randn(4, 5, 6)
    torch.manual_seed(1)
    m = drop.masked(x)
    torch.manual_seed(1)
    assert torch.equal(m * drop.scale, drop(x))                  # the same mask; forward adds only the scale
    assert torch.equal(m, torch.where(m != 0, x, 0.0))           # every element is x or 0


def test_dropout_mask_int16_changes_only_the_training_noise():
    ref, batch, _ = adapted("mlp", "random", dropout=0.5)
    model = add_lora(make_mlp(0), MLP_TARGETS, rank=RANK, alpha=ALPHA, dropout=0.5, seed=0, dropout_mask="int16",
                     keep_trainable=MLP_KEEP)
    assert all(isinstance(l.dropout, lora.Int16Dropout) for l in lora_layers(model).values())
    assert all(isinstance(l.dropout, nn.Dropout) for l in lora_layers(ref).values())
    x = batch["x"]
    with torch.no_grad():
        for a, b in zip(lora_layers(model).values(), lora_layers(ref).values()):
            assert torch.equal(a.lora_A, b.lora_A)                # the mask does not touch the init's random stream
            a.lora_B.normal_(generator=torch.Generator().manual_seed(1))
            b.lora_B.copy_(a.lora_B)
        assert torch.equal(model.eval()(x), ref.eval()(x))        # no dropout in eval: the same function
        torch.manual_seed(1)
        y1 = model.train()(x)
        torch.manual_seed(2)
        assert max_diff(y1, model(x)) > 1e-3
    with pytest.raises(ValueError, match="unknown dropout mask 'int8'; valid: torch, int16"):
        add_lora(make_mlp(0), MLP_TARGETS, rank=RANK, dropout=0.5, dropout_mask="int8")


def test_int16_dropout_scale_folded_into_A_gives_the_same_output_and_gradients():
    """LoRALinear puts Int16Dropout's 1/(1 − p') on A instead of on the activation: same function, same grads."""
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(16, 12), rank=3, alpha=6.0, dropout=0.3, dropout_mask="int16").train()
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(5, 7, 16)
    torch.manual_seed(9)
    y = layer(x)
    y.square().sum().backward()
    gA, gB = layer.lora_A.grad.clone(), layer.lora_B.grad.clone()
    layer.zero_grad()
    torch.manual_seed(9)                                              # the same mask, through Int16Dropout.forward
    ref = layer.base(x) + layer.scaling * layer.dropout(x) @ layer.lora_A.T @ layer.lora_B.T
    ref.square().sum().backward()
    assert max_diff(y, ref) <= 1e-5
    torch.testing.assert_close(gA, layer.lora_A.grad, rtol=1e-5, atol=1e-5)        # rounding only (grads ~1e3)
    torch.testing.assert_close(gB, layer.lora_B.grad, rtol=1e-5, atol=1e-5)


def test_merged_model_refuses_loading_and_export(tmp_path):
    model, batch, keep = adapted("roberta", "random")
    path = save_lora(model, tmp_path / "a.safetensors", keep)
    merge_lora(model)
    with pytest.raises(ValueError, match="unmerge_lora"):
        load_lora(model, path)
    with pytest.raises(ValueError, match="unmerge_lora"):
        export_peft(model, tmp_path / "peft", "tiny")


# ----------------------------------------------------------------------------- trainable parameters
@pytest.mark.parametrize("kind", ["roberta", "mlp"])
@pytest.mark.parametrize("init", INIT_METHODS)
@pytest.mark.parametrize("with_keep", [True, False])
def test_only_intended_params_train(kind, init, with_keep):
    build, _, targets, keep = KINDS[kind]
    model = build(0)
    add_lora(model, targets, rank=RANK, alpha=ALPHA, init=init, seed=0, keep_trainable=keep if with_keep else ())
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    expected = set()
    for name in lora_layers(model):
        expected.add(f"{name}.lora_B")
        if init not in lora.FROZEN_A_METHODS:
            expected.add(f"{name}.lora_A")
    if with_keep:
        head = {n for n, _ in model.named_parameters() if n.split(".")[0] == keep[0]}
        assert len(head) == (4 if kind == "roberta" else 2)
        expected |= head
    assert trainable == expected
    assert len(lora_layers(model)) == (4 if kind == "roberta" else 2)


@pytest.mark.parametrize("kind", ["roberta", "mlp"])
@pytest.mark.parametrize("init", lora.FROZEN_A_METHODS)
def test_lora_fa_keeps_A_bit_identical(kind, init):
    model, batch, _ = adapted(kind, init, dropout=0.1)
    A0 = {n: l.lora_A.detach().clone() for n, l in lora_layers(model).items()}
    # All parameters go to AdamW (with weight decay): frozen A must still not move.
    opt = torch.optim.AdamW(model.parameters(), lr=2e-2, weight_decay=0.1)
    model.train()
    for _ in range(4):
        opt.zero_grad()
        loss_of(model, batch).backward()
        opt.step()
    for n, l in lora_layers(model).items():
        assert l.lora_A.grad is None
        assert torch.equal(l.lora_A, A0[n]) and torch.equal(l.lora_A, l.lora_A0)
        assert l.lora_B.abs().max() > 1e-4 and not torch.equal(l.lora_B, l.lora_B0)
        A = l.lora_A.detach().double()
        assert torch.allclose(A @ A.T, torch.eye(RANK, dtype=torch.float64), atol=1e-5)   # orthonormal rows
        if init == "lora_fa_svd":     # rows are the top-r right singular vectors of W (up to sign)
            _, _, Vh = torch.linalg.svd(l.base.weight.double())
            assert torch.allclose((A @ Vh[:RANK].T).abs(), torch.eye(RANK, dtype=torch.float64), atol=1e-4)


# ----------------------------------------------------------------------------- SVD init math
@pytest.mark.parametrize("kind", ["roberta", "mlp"])
def test_svd_residual_is_eckart_young_tail(kind):
    build, make_batch, targets, keep = KINDS[kind]
    model = build(0)
    originals = {n: m.weight.detach().clone() for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    add_lora(model, targets, rank=RANK, alpha=ALPHA, init="svd", seed=0, keep_trainable=keep)
    for name, layer in lora_layers(model).items():
        W, W_res = originals[name].double(), layer.base.weight.detach().double()
        assert layer.residual
        S = torch.linalg.svdvals(W)
        top = S[:RANK].pow(2).sum().sqrt()
        assert abs(torch.linalg.norm(W - W_res).item() - top.item()) <= 1e-4 * top.item()
        expected = torch.cat([S[RANK:], torch.zeros(RANK, dtype=torch.float64)])
        assert torch.allclose(torch.linalg.svdvals(W_res), expected, rtol=0, atol=1e-4 * S[0].item())
        # s·B₀A₀ is the principal part, so W_res + s·BA == W at step 0
        assert max_diff(W_res + layer.delta_weight().double(), W) <= 1e-5
        Be, Ae = layer.delta_factors()
        assert Be.shape == (W.shape[0], 2 * RANK) and Ae.shape == (2 * RANK, W.shape[1])
        assert (Be @ Ae).abs().max() <= 1e-6                    # ΔW relative to W is 0 at init


@pytest.mark.parametrize("kind", ["roberta", "mlp"])
@pytest.mark.parametrize("init", INIT_METHODS)
def test_delta_factors_equal_merged_minus_original(kind, init):
    build, make_batch, targets, keep = KINDS[kind]
    model, batch = build(0), make_batch()
    originals = {n: m.weight.detach().clone() for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    add_lora(model, targets, rank=RANK, alpha=ALPHA, init=init, seed=0, keep_trainable=keep)
    train(model, batch)
    factors = delta_factors(model)
    assert set(factors) == set(lora_layers(model))
    merge_lora(model)
    for name, layer in lora_layers(model).items():
        Be, Ae = factors[name]
        dW = Be @ Ae
        assert dW.abs().max() > 1e-4
        assert max_diff(dW, layer.base.weight - originals[name]) <= 1e-5
        s = layer.scaling
        if init == "svd":
            assert torch.allclose(dW, s * layer.lora_B @ layer.lora_A - s * layer.lora_B0 @ layer.lora_A0, atol=1e-6)
        else:
            assert torch.equal(Be, s * layer.lora_B.detach()) and torch.equal(Ae, layer.lora_A.detach())


def _decaying(out_f=64, in_f=48, seed=0, base=0.7):
    g = torch.Generator().manual_seed(seed)
    Q1 = torch.linalg.qr(torch.randn(out_f, in_f, generator=g, dtype=torch.float64)).Q
    Q2 = torch.linalg.qr(torch.randn(in_f, in_f, generator=g, dtype=torch.float64)).Q
    S = base ** torch.arange(in_f, dtype=torch.float64)
    return ((Q1 * S) @ Q2.T).float(), S


def test_randomized_svd_reproducible_and_accurate():
    W, S_true = _decaying()
    r = 6
    U1, S1, V1 = truncated_svd(W, r, "randomized", niter=2, generator_seed=123)
    U2, S2, V2 = truncated_svd(W, r, "randomized", niter=2, generator_seed=123)
    U3, S3, V3 = truncated_svd(W, r, "randomized", niter=2, generator_seed=124)
    assert U1.shape == (64, r) and S1.shape == (r,) and V1.shape == (48, r) and U1.dtype == torch.float32
    assert torch.equal(U1, U2) and torch.equal(S1, S2) and torch.equal(V1, V2)
    assert not torch.equal(U1, U3) and not torch.equal(V1, V3)
    Uf, Sf, Vf = truncated_svd(W, r, "full")
    assert torch.allclose(Sf.double(), S_true[:r], rtol=1e-5)
    for S in (S1, S3):
        assert torch.allclose(S, Sf, rtol=1e-4)
    # Same subspace as the full SVD: |U_rand^T U_full| = I up to sign
    assert torch.allclose((U1.T @ Uf).abs(), torch.eye(r), atol=1e-3)
    # The global RNG stream is not disturbed (fork_rng)
    torch.manual_seed(5)
    a = torch.rand(4)
    torch.manual_seed(5)
    truncated_svd(W, r, "randomized", generator_seed=9)
    assert torch.equal(torch.rand(4), a)


@pytest.mark.parametrize("init,svd_method,seed_sensitive", [
    ("random", "full", True), ("lora_fa", "full", True), ("svd", "randomized", True),
    ("svd", "full", False), ("lora_fa_svd", "full", False)])
def test_add_lora_seed_reproducibility(init, svd_method, seed_sensitive):
    def init_factors(seed):
        m = make_mlp(0)
        add_lora(m, MLP_TARGETS, rank=RANK, alpha=ALPHA, init=init, svd_method=svd_method, niter=0, seed=seed)
        return [t.clone() for l in lora_layers(m).values() for t in (l.lora_A0, l.lora_B0)]
    a, b, c = init_factors(7), init_factors(7), init_factors(8)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert all(torch.equal(x, y) for x, y in zip(a, c)) != seed_sensitive


# ----------------------------------------------------------------------------- files
@pytest.mark.parametrize("kind", ["roberta", "mlp"])
@pytest.mark.parametrize("init", INIT_METHODS)
def test_save_load_round_trip(kind, init, tmp_path):
    model, batch, keep = adapted(kind, init, dropout=0.1, seed=11)
    before = outputs(model, batch)
    train(model, batch)
    y = outputs(model, batch)
    assert max_diff(y, before) > 1e-4
    path = save_lora(model, tmp_path / "adapter.safetensors", keep_trainable=keep)
    assert path.exists() and not (tmp_path / "adapter.safetensors.tmp").exists()
    assert lora.read_lora_config(path) == lora.lora_config(model)

    fresh, _, _ = adapted(kind, init, dropout=0.1, seed=11)
    assert max_diff(outputs(fresh, batch), y) > 1e-4            # not trivially equal before loading
    load_lora(fresh, path)
    assert torch.equal(outputs(fresh, batch), y)
    state = lora_state_dict(model, keep)
    assert any(k.startswith(keep[0] + ".") for k in state)
    for k, v in lora_state_dict(fresh, keep).items():
        assert torch.equal(v, state[k])


def test_round_trip_rebases_svd_residual_for_other_seed(tmp_path):
    """Randomized SVD with a different seed at re-creation gives other B₀A₀: load must re-base W_res."""
    kw = dict(svd_method="randomized", niter=0, rank=2, dropout=0.1)   # niter=0: crude, seed-dependent
    model, batch, keep = adapted("roberta", "svd", seed=1, **kw)
    train(model, batch)
    y = outputs(model, batch)
    path = save_lora(model, tmp_path / "a.safetensors", keep)

    fresh, _, _ = adapted("roberta", "svd", seed=2, **kw)
    for name, layer in lora_layers(fresh).items():       # the two residual bases really differ
        old = lora_layers(model)[name]
        assert max_diff(layer.lora_B0 @ layer.lora_A0, old.lora_B0 @ old.lora_A0) > 1e-3
        assert max_diff(layer.base.weight, old.base.weight) > 1e-3
    load_lora(fresh, path)
    assert max_diff(outputs(fresh, batch), y) <= 1e-5
    for name, layer in lora_layers(fresh).items():
        old = lora_layers(model)[name]
        assert max_diff(layer.base.weight, old.base.weight) <= 1e-6
        assert torch.equal(layer.lora_A0, old.lora_A0) and torch.equal(layer.lora_B0, old.lora_B0)


def test_save_lora_extra_tensors_round_trip(tmp_path):
    """save_lora(..., extra=...) documents extra tensors; load_lora skips keys named "extra.*", so a
    file written with extras must load back (the extras kept in the file, under "extra.<name>" or as given)."""
    from safetensors.torch import load_file
    model, batch, keep = adapted("mlp", "random")
    train(model, batch)
    y = outputs(model, batch)
    path = save_lora(model, tmp_path / "a.safetensors", keep, extra={"step": torch.tensor([4])})
    stored = load_file(str(path))
    assert torch.equal(stored.get("extra.step", stored.get("step")), torch.tensor([4]))
    fresh, _, _ = adapted("mlp", "random")
    load_lora(fresh, path)
    assert torch.equal(outputs(fresh, batch), y)


def test_load_rejects_missing_and_unexpected_keys(tmp_path):
    model, _, keep = adapted("mlp", "random")
    state = lora_state_dict(model, keep)
    fresh, _, _ = adapted("mlp", "random")
    with pytest.raises(KeyError, match="missing"):
        load_lora_state_dict(fresh, {k: v for k, v in state.items() if not k.endswith("lora_B")})
    with pytest.raises(KeyError, match="unexpected"):
        load_lora_state_dict(fresh, state | {"9.lora_A": torch.zeros(1)})


@pytest.mark.parametrize("kind", ["roberta", "mlp"])
@pytest.mark.parametrize("init", INIT_METHODS)
def test_load_delta_factors_matches_model(kind, init, tmp_path):
    model, batch, keep = adapted(kind, init)
    train(model, batch)
    path = save_lora(model, tmp_path / "a.safetensors", keep)
    from_file, from_model = load_delta_factors(path), delta_factors(model)
    assert set(from_file) == set(from_model) == set(lora_layers(model))
    for name, (B, A) in from_model.items():
        Bf, Af = from_file[name]
        assert torch.equal(Bf, B) and torch.equal(Af, A)
        assert (B @ A).abs().max() > 1e-4


# ----------------------------------------------------------------------------- PEFT export
@pytest.mark.parametrize("init", INIT_METHODS)
def test_export_peft_reloads_with_equal_logits(init, tmp_path):
    peft = pytest.importorskip("peft")
    model, batch, keep = adapted("roberta", init, dropout=0.1)
    train(model, batch)
    y = outputs(model, batch)
    assert max_diff(y, outputs(make_roberta(0), batch)) > 1e-4
    out = export_peft(model, tmp_path / "peft", "tiny-roberta-from-config", task_type="SEQ_CLS",
                      modules_to_save=keep)
    cfg = peft.LoraConfig.from_pretrained(str(out))
    assert cfg.r == (2 * RANK if init == "svd" else RANK)
    assert cfg.lora_alpha / cfg.r == pytest.approx(ALPHA / RANK)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        reloaded = peft.PeftModel.from_pretrained(make_roberta(0), str(out)).eval()
    key_warnings = [str(w.message) for w in caught if "key" in str(w.message).lower()]
    assert not key_warnings, key_warnings            # e.g. "Found missing adapter keys" / unexpected keys
    # Same tensor names as PEFT writes itself for this config (LoRA factors and modules_to_save head)
    from safetensors.torch import load_file
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        own = peft.get_peft_model(make_roberta(0), peft.LoraConfig.from_pretrained(str(out)))
        own.save_pretrained(str(tmp_path / "peft_own"))
    assert set(load_file(str(out / "adapter_model.safetensors"))) == \
        set(load_file(str(tmp_path / "peft_own" / "adapter_model.safetensors")))
    with torch.no_grad():
        y_peft = reloaded(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert max_diff(y_peft, y) <= 1e-5
    # the trained head came through modules_to_save (not the fresh model's random head)
    ours = dict(model.named_parameters())
    heads = {n: p for n, p in reloaded.named_parameters() if "modules_to_save" in n}
    assert heads, "PEFT did not wrap the classifier as modules_to_save"
    for n, p in heads.items():
        short = re.sub(r"^.*?(classifier\.)modules_to_save\.default\.", r"\1", n)
        assert torch.equal(p, ours[short]), n


# ----------------------------------------------------------------------------- bad input
def test_bad_rank_raises():
    for bad in (0, -1):
        model = make_roberta(0)
        with pytest.raises(ValueError, match=rf"rank must be a positive integer, got {bad}"):
            add_lora(model, ROBERTA_TARGETS, rank=bad)
    model = make_roberta(0)
    with pytest.raises(ValueError, match=r"rank 33 is too large.*query.*valid: 1\.\.32"):
        add_lora(model, ROBERTA_TARGETS, rank=33)
    assert not lora_layers(model)                    # nothing was replaced
    mlp = make_mlp(0)                                # "4" is 3×12: valid 1..3; "0" is fine
    with pytest.raises(ValueError, match=r"rank 4 is too large for '4' \(3×12\); valid: 1\.\.3"):
        add_lora(mlp, ("0", "4"), rank=4)
    assert not lora_layers(mlp)                      # validation happens before any replacement
    add_lora(make_roberta(0), ROBERTA_TARGETS, rank=32)   # the boundary itself is fine


def test_unknown_init_and_svd_method_raise():
    with pytest.raises(ValueError, match=r"unknown init 'pissa'; valid: " + re.escape(", ".join(INIT_METHODS))):
        add_lora(make_mlp(0), MLP_TARGETS, init="pissa")
    with pytest.raises(ValueError, match=r"unknown svd method 'lanczos'; valid: full, randomized"):
        add_lora(make_mlp(0), MLP_TARGETS, init="svd", svd_method="lanczos")
    with pytest.raises(ValueError, match=r"unknown svd method 'lanczos'"):
        truncated_svd(torch.randn(5, 4), 2, method="lanczos")


@pytest.mark.parametrize("targets", [("nonexistent",), r".*attention", r"roberta\.encoder\.layer\.0\.attention\.self"])
def test_target_matching_no_linear_raises(targets):
    model = make_roberta(0)
    with pytest.raises(ValueError, match=re.escape(repr(targets)) + r" matched no nn.Linear; Linear layers include: "
                       r"roberta\.encoder\.layer\.0\.attention\.self\.query"):
        add_lora(model, targets)
    assert not lora_layers(model)


def test_bare_linear_root_is_rejected_cleanly():
    """A model that *is* a Linear matches a regex like ".*" by its empty name "".  add_lora must refuse
    (it cannot replace the root in place) rather than make the Linear a child of its own adapter:
    that adapter is never called (silent no-op) and repr(model) recurses forever."""
    lin = nn.Linear(6, 5)
    with pytest.raises(ValueError):
        add_lora(lin, r".*", rank=2)
    assert not any(isinstance(m, LoRALinear) for m in lin.children())


@pytest.mark.parametrize("first,second", [
    (("query", "value"), ("query", "value")),
    (("query", "value"), ("value",)),
    (r".*query.*", r".*query.*"),
    (r".*query", ("query",)),
    (("query",), r".*\.base"),           # the wrapped Linear inside an adapter is not a new target
])
def test_add_lora_twice_raises(first, second):
    model = make_roberta(0)
    add_lora(model, first, rank=RANK, seed=0)
    layers = lora_layers(model)
    A = {n: l.lora_A.detach().clone() for n, l in layers.items()}
    with pytest.raises(ValueError, match=r"already has a LoRA adapter"):
        add_lora(model, second, rank=RANK, seed=1)
    assert lora_layers(model).keys() == layers.keys()
    for n, l in lora_layers(model).items():
        assert isinstance(l.base, nn.Linear) and not isinstance(l.base, LoRALinear)
        assert torch.equal(l.lora_A, A[n])


def test_relative_delta_factors_is_the_one_home_of_delta_w():
    """[B, −B₀]·[A; A₀] = BA − B₀A₀ for a residual init, (B, A) otherwise; half a residual pair is an error."""
    from lora.core import relative_delta_factors
    g = torch.Generator().manual_seed(0)
    B, A, B0, A0 = (torch.randn(*s, generator=g, dtype=torch.float64) for s in ((6, 2), (2, 5), (6, 2), (2, 5)))
    Bp, Ap = relative_delta_factors(B, A, B0, A0)
    assert Bp.shape == (6, 4) and Ap.shape == (4, 5)
    assert torch.allclose(Bp @ Ap, B @ A - B0 @ A0, atol=1e-12)
    assert relative_delta_factors(B, A) == (B, A)
    with pytest.raises(ValueError, match="both B0 and A0"):
        relative_delta_factors(B, A, B0)
