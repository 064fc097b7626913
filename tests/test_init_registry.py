"""The init registry (lora/registry.py): an init is one InitSpec, and everything else follows from it.

A toy init registered here (``identity_rows``: A₀ = the first r rows of the identity, frozen; B₀ = 0) is built
by add_lora, keeps the model exactly at step 0 and shows up in every derived list, with no other code touched;
the built-in specs' declared facts (frozen A, residual, model changed at step 0) are checked against what
LoRALinear actually does.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

import lora
from lora import InitSpec, add_lora, lora_layers

pytestmark = pytest.mark.usefixtures("one_torch_thread")   # tests/conftest.py


def identity_rows_init(W: torch.Tensor, rank: int, scaling: float, ctx: lora.InitContext):
    """A₀ = [I_r 0] (r×in: the first r input coordinates), B₀ = 0 (out×r)."""
    out_f, in_f = W.shape
    return torch.zeros(out_f, rank, dtype=W.dtype), torch.eye(rank, in_f, dtype=W.dtype)


@pytest.fixture
def identity_rows():
    spec = lora.register_init(InitSpec("identity_rows", identity_rows_init, freeze_A=True,
                                       subspace="the first r input coordinates, B = 0"))
    try:
        yield spec
    finally:
        lora.unregister_init("identity_rows")


def make_net(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 6), nn.Tanh(), nn.Linear(6, 6), nn.Tanh(), nn.Linear(6, 4)).eval()


TARGETS = ("0", "2")
X = torch.randn(5, 6, generator=torch.Generator().manual_seed(1))
BATCHES = [{"input": torch.randn(4, 6, generator=torch.Generator().manual_seed(i))} for i in range(3)]


def stats_for(model, init):
    needs = lora.DATA_INITS.get(init)
    return None if not needs else lora.collect_layer_stats(model, TARGETS, BATCHES, needs=needs,
                                                           loss_fn=lambda m, b: m(**b).square().mean())


# ----------------------------------------------------------------------------- a registered toy init
def test_add_lora_builds_a_registered_init_and_keeps_the_model(identity_rows):
    model, ref = make_net(0), make_net(0)
    add_lora(model, TARGETS, rank=2, alpha=4.0, init="identity_rows", seed=0)
    with torch.no_grad():
        assert torch.equal(model(X), ref(X))                       # B₀ = 0 and no residual: exactly the same
    for name, layer in lora_layers(model).items():
        assert torch.equal(layer.lora_A, torch.eye(2, 6)) and torch.equal(layer.lora_B, torch.zeros(6, 2))
        assert layer.freeze_A and not layer.residual and not layer.lora_A.requires_grad
        assert torch.equal(layer.base.weight, ref.get_submodule(name).weight)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"0.lora_B", "2.lora_B"}
    assert lora.lora_config(model)["0"]["init"] == "identity_rows"


def test_derived_lists_pick_up_a_registered_init_and_drop_it_again():
    before = {name: lora.registry.DERIVED[name]() for name in lora.registry.DERIVED}
    lora.register_init(InitSpec("identity_rows", identity_rows_init, freeze_A=True))
    try:
        assert lora.ALL_INITS == before["ALL_INITS"] + ("identity_rows",)
        assert lora.EXTRA_INITS == before["EXTRA_INITS"] + ("identity_rows",)
        assert lora.FROZEN_A_INITS == before["FROZEN_A_INITS"] + ("identity_rows",)
        for unchanged in ("INIT_METHODS", "FROZEN_A_METHODS", "RESIDUAL_INITS", "DATA_INITS"):
            assert getattr(lora, unchanged) == before[unchanged]       # not round 1, not residual, no data
        assert "identity_rows" in lora.init_names(freeze_A=True, study=None)
        assert lora.init_spec("identity_rows").subspace == ""
    finally:
        lora.unregister_init("identity_rows")
    assert {name: lora.registry.DERIVED[name]() for name in lora.registry.DERIVED} == before
    with pytest.raises(ValueError, match=r"unknown init 'identity_rows'; valid: random, svd, "):
        add_lora(make_net(0), TARGETS, init="identity_rows")


def test_a_rank_limit_is_checked_before_any_layer_changes():
    lora.register_init(InitSpec("first_row", lambda W, r, s, ctx: identity_rows_init(W, r, s, ctx),
                                max_rank=lambda out_f, in_f: 1, rank_rule="rank 1"))
    try:
        model = make_net(0)
        with pytest.raises(ValueError, match=r"^rank 2 is too large for init 'first_row' on '0' \(6×6, needs rank 1\); "
                                             r"valid: 1\.\.1$"):
            add_lora(model, TARGETS, rank=2, init="first_row")
        assert not lora_layers(model)
        add_lora(model, TARGETS, rank=1, init="first_row")
        assert len(lora_layers(model)) == 2
    finally:
        lora.unregister_init("first_row")
    model = make_net(0)                                  # svd_seed: "0" is square, "4" (4×6) is not
    with pytest.raises(ValueError, match=r"^svd_seed needs a square weight .*, got 4×6 for '4'; valid: "):
        add_lora(model, ("0", "4"), rank=2, init="svd_seed")
    assert not lora_layers(model)


def test_registry_refuses_bad_specs_and_bad_factors(identity_rows):
    with pytest.raises(ValueError, match=r"init 'identity_rows' is already registered"):
        lora.register_init(InitSpec("identity_rows", identity_rows_init))
    with pytest.raises(ValueError, match=r"unknown statistics \['labels'\]; valid: input, grad"):
        InitSpec("x", identity_rows_init, needs={"labels"})
    with pytest.raises(ValueError, match=r"residual or changes_model, not both"):
        InitSpec("x", identity_rows_init, residual=True, changes_model=True)
    with pytest.raises(ValueError, match=r"unknown study 'round3'"):
        InitSpec("x", identity_rows_init, study="round3")
    with pytest.raises(ValueError, match=r"unknown InitSpec fields \['frozen'\]"):
        lora.init_names(frozen=True)
    lora.register_init(InitSpec("transposed", lambda W, r, s, ctx: identity_rows_init(W, r, s, ctx)[::-1]))
    try:
        with pytest.raises(ValueError, match=r"init 'transposed' gave B₀ \(2, 6\) and A₀ \(6, 2\); "
                                             r"valid: \(6, 2\) and \(2, 6\)"):
            add_lora(make_net(0), TARGETS, rank=2, init="transposed")
    finally:
        lora.unregister_init("transposed")


# ----------------------------------------------------------------------------- the built-in specs
@pytest.mark.parametrize("init", lora.ALL_INITS)
def test_built_in_spec_says_what_the_adapter_does(init):
    """freeze_A, residual and changes_model as declared: the model is unchanged at step 0 unless
    changes_model, and then it moves by s·B₀A₀; the data inits get their statistics from DATA_INITS."""
    spec, model, ref = lora.init_spec(init), make_net(0), make_net(0)
    add_lora(model, TARGETS, rank=2, alpha=4.0, init=init, seed=0, stats=stats_for(ref, init))
    with torch.no_grad():
        moved = (model(X) - ref(X)).abs().max().item()
    assert (moved > 1e-3) if spec.changes_model else (moved <= 1e-5)
    for name, layer in lora_layers(model).items():
        assert (layer.freeze_A, layer.residual) == (spec.freeze_A, spec.residual)
        assert layer.lora_A.requires_grad != spec.freeze_A
        W, s_BA = ref.get_submodule(name).weight, layer.scaling * layer.lora_B0 @ layer.lora_A0
        assert torch.allclose(layer.base.weight, W - s_BA if spec.residual else W, atol=1e-6)


def test_built_in_order_is_the_studys():
    """harness.config.METHODS (hence plot colours and method order) is ("full", *ALL_INITS)."""
    assert lora.ALL_INITS == ("random", "svd", "svd_naive", "lora_fa", "lora_fa_svd", "svd_seed", "svd_minor",
                              "olora", "eva", "corda", "lora_ga", "lora_fa_grad", "lora_fa_eva", "corda_peft")
    assert lora.init_names(study="round1") == lora.ALL_INITS[:6]
    assert lora.init_names(study="families") == lora.ALL_INITS[6:13]
    assert lora.init_names(study=None) == ("corda_peft",)
    assert lora.init_names(changes_model=True) == ("svd_naive", "svd_seed")
