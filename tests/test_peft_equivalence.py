"""Our inits against PEFT 0.21 on a tiny BERT: which ones are PEFT's exactly, and by how much the others differ.

Each test builds the same BertForSequenceClassification (hidden 32, 2 layers, adapters on query and value,
rank 4 unless said, alpha 8) once with ``lora.add_lora`` and once with ``peft.get_peft_model`` and compares
s·B₀A₀, the effective weights W_base + s·BA and the logits at step 0 and after 3 SGD steps on the same batches
with the same lr.  The *training gap* is ‖o₃ − p₃‖ / ‖p₃ − p₀‖ (o ours, p PEFT's logits on a held-out batch):
how far apart the two runs end up as a share of how far the steps moved them.  The thresholds leave room
around the measured values that the docstrings in lora/inits.py quote.  Float32 on CPU, seconds each.
"""
from __future__ import annotations

import math
import warnings

import pytest
import torch

import lora

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.usefixtures("one_torch_thread")   # tests/conftest.py

TARGETS = ["query", "value"]
RANK, ALPHA, LR, STEPS, VOCAB = 4, 8.0, 0.2, 3, 50


# ----------------------------------------------------------------------------- tiny BERT, data, the two builds
def make_bert() -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=64, max_position_embeddings=32, hidden_dropout_prob=0.0,
                                  attention_probs_dropout_prob=0.0, num_labels=3, initializer_range=0.3)
    return transformers.BertForSequenceClassification(cfg).eval()


def make_batch(seed: int, b: int = 4, t: int = 10, pad: bool = True, labels: bool = True) -> dict:
    g = torch.Generator().manual_seed(1000 + seed)
    ids = torch.randint(1, VOCAB, (b, t), generator=g)
    mask = torch.ones(b, t, dtype=torch.long)
    if pad and b > 1:
        mask[0, -3:] = 0
        mask[-1, -5:] = 0
        ids[mask == 0] = 0
    batch = dict(input_ids=ids, attention_mask=mask)
    return dict(batch, labels=torch.randint(0, 3, (b,), generator=g)) if labels else batch


TRAIN = [make_batch(i) for i in range(STEPS)]
HELD_OUT = make_batch(99, b=6)


def ours(init: str, batches=None, rank: int = RANK) -> torch.nn.Module:
    model = make_bert()
    needs = lora.DATA_INITS.get(init)
    stats = lora.collect_layer_stats(model, TARGETS, batches, needs=needs) if needs else None
    return lora.add_lora(model, TARGETS, rank=rank, alpha=ALPHA, init=init, stats=stats, seed=0)


def config(init_lora_weights, rank: int = RANK, **kw):
    return peft.LoraConfig(r=rank, lora_alpha=ALPHA, target_modules=TARGETS, lora_dropout=0.0,
                           init_lora_weights=init_lora_weights, **kw)


def get_peft(base, cfg):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return peft.get_peft_model(base, cfg)


def layer_pairs(model, pm) -> list:
    """[(our LoRALinear, PEFT's LoRA layer)] by module name."""
    return [(layer, pm.base_model.model.get_submodule(name)) for name, layer in lora.lora_layers(model).items()]


def factors(m):
    """PEFT layer → (s, B, A, base weight), float64 copies."""
    return (m.scaling["default"], m.lora_B["default"].weight.detach().double().clone(),
            m.lora_A["default"].weight.detach().double().clone(), m.base_layer.weight.detach().double().clone())


def product_gap(model, pm) -> float:
    """max over layers of ‖s·BA − s·B_peft A_peft‖_F / ‖s·B_peft A_peft‖_F (0 when both are 0)."""
    out = 0.0
    for layer, m in layer_pairs(model, pm):
        s, B, A, _ = factors(m)
        theirs, mine = s * B @ A, (layer.scaling * layer.lora_B @ layer.lora_A).detach().double()
        gap = (mine - theirs).norm().item()
        out = max(out, gap / theirs.norm().item() if theirs.norm() > 0 else gap)
    return out


def weight_gap(model, pm) -> float:
    """max |W_base + s·BA − (W_base,peft + s·B_peft A_peft)| over layers: the weights the models use."""
    out = 0.0
    for layer, m in layer_pairs(model, pm):
        s, B, A, W = factors(m)
        mine = layer.base.weight.detach().double() + (layer.scaling * layer.lora_B @ layer.lora_A).detach().double()
        out = max(out, (mine - (W + s * B @ A)).abs().max().item())
    return out


def held_out_logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=HELD_OUT["input_ids"], attention_mask=HELD_OUT["attention_mask"]).logits.double()


def trajectory(model) -> list[torch.Tensor]:
    """Held-out logits at step 0 and after each of 3 SGD steps (lr 0.2) on the trainable parameters."""
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=LR)
    out = [held_out_logits(model)]
    for batch in TRAIN:
        opt.zero_grad()
        model(**batch).loss.backward()
        opt.step()
        out.append(held_out_logits(model))
    return out


def training_gap(model, pm) -> tuple[float, float]:
    """(max |logits| gap at step 0, ‖o₃ − p₃‖ / ‖p₃ − p₀‖); trains both models."""
    o, p = trajectory(model), trajectory(pm)
    moved = (p[-1] - p[0]).norm().item()
    assert moved > 0.5                                      # the steps do move the model
    return (o[0] - p[0]).abs().max().item(), (o[-1] - p[-1]).norm().item() / moved


def largest_sin(A: torch.Tensor, A_ref: torch.Tensor) -> float:
    """sin of the largest principal angle between the row spaces of A and A_ref (r×in, orthonormal rows)."""
    A, A_ref = A.double(), A_ref.double()
    return torch.linalg.svdvals(A - A @ A_ref.T @ A_ref).max().item()


# ----------------------------------------------------------------------------- weight-only inits: PEFT's exactly
@pytest.mark.parametrize("init, peft_init, product_tol", [("svd", "pissa", 1e-4), ("olora", "olora", 1e-5)])
def test_weight_inits_train_like_peft(init, peft_init, product_tol):
    model, pm = ours(init), get_peft(make_bert(), config(peft_init))
    assert product_gap(model, pm) <= product_tol
    assert weight_gap(model, pm) <= 1e-6
    step0, gap = training_gap(model, pm)
    assert step0 <= 1e-5 and gap <= 1e-4


def test_random_trains_like_peft_given_the_same_A():
    """PEFT's default init draws from the global RNG (after nn.Linear's own init), ours from add_lora's seed:
    the same Kaiming-uniform law (|A₀| ≤ 1/√in), other draws.  Given PEFT's A₀ the runs are identical."""
    model, pm = ours("random"), get_peft(make_bert(), config(True))
    for layer, m in layer_pairs(model, pm):
        assert 0 < layer.lora_A0.abs().max() <= 1 / math.sqrt(layer.lora_A0.shape[1])
        with torch.no_grad():
            layer.lora_A.copy_(m.lora_A["default"].weight)
            layer.lora_A0.copy_(layer.lora_A)
    assert product_gap(model, pm) == 0 and weight_gap(model, pm) == 0
    assert training_gap(model, pm) == (0.0, 0.0)


def test_lora_fa_trains_like_peft_lora_with_its_A_frozen():
    """lora_fa = a PEFT LoRA layer whose A is our orthonormal A₀, frozen (not PEFT's LoRA-FA optimizer)."""
    model, pm = ours("lora_fa"), get_peft(make_bert(), config(True))
    for layer, m in layer_pairs(model, pm):
        A0 = layer.lora_A0.double()
        assert torch.allclose(A0 @ A0.T, torch.eye(RANK, dtype=torch.float64), atol=1e-6)
        assert not layer.lora_A.requires_grad
        m.lora_A["default"].weight.data.copy_(layer.lora_A0)
        m.lora_A["default"].weight.requires_grad_(False)
    assert training_gap(model, pm) == (0.0, 0.0)


# ----------------------------------------------------------------------------- CorDA
def calibration_calls(k: int) -> list[dict]:
    """k forward calls of one unpadded 10-token sequence (PEFT's CorDA hook needs batch size 1)."""
    return [make_batch(200 + i, b=1, pad=False, labels=False) for i in range(k)]


def peft_corda(calls: list[dict]):
    from peft.tuners.lora.config import CordaConfig
    from peft.tuners.lora.corda import preprocess_corda
    base, cfg = make_bert(), config("corda", corda_config=CordaConfig(corda_method="ipm"))
    preprocess_corda(base, cfg, run_model=lambda: [base(**c) for c in calls])
    return get_peft(base, cfg)


@pytest.mark.parametrize("k, product_tol, gap_tol", [(1, 2e-3, 5e-3), (4, 5e-4, 5e-4)])
def test_corda_peft_trains_like_peft(k, product_tol, gap_tol):
    """PEFT's per-call max normalisation and factor scale: the same run.  What is left is PEFT's float32
    inverse of the damped covariance, worst for one 10-token call (rank-10 covariance in 32 dimensions)."""
    calls = calibration_calls(k)
    model, pm = ours("corda_peft", calls), peft_corda(calls)
    for layer, m in layer_pairs(model, pm):
        _, B, A, _ = factors(m)
        sign = torch.sign((layer.lora_A0.double() * A).sum(1))      # a joint flip of (u_i, v_i) is free
        assert (layer.lora_B0.double() * sign - B).abs().max() <= product_tol * B.abs().max()
    assert product_gap(model, pm) <= product_tol
    assert weight_gap(model, pm) <= 1e-6
    step0, gap = training_gap(model, pm)
    assert step0 <= 1e-5 and gap <= gap_tol


def test_corda_is_peft_product_with_factors_scaled_by_root_c():
    """One call: our C = XᵀX/n = c·C_peft with c = (max X)²/n, so s·B₀A₀ and the residual are PEFT's while
    B₀ = √c·B_peft, A₀ = A_peft/√c; that changes training (gap 0.51 measured)."""
    calls = calibration_calls(1)
    model, pm = ours("corda", calls), peft_corda(calls)
    inputs = {}
    probe = make_bert()
    hooks = [probe.get_submodule(n).register_forward_hook(lambda mod, a, o, n=n: inputs.__setitem__(n, a[0][0]))
             for n in lora.lora_layers(model)]
    with torch.no_grad():
        probe(**calls[0])
    for h in hooks:
        h.remove()
    assert product_gap(model, pm) <= 2e-3 and weight_gap(model, pm) <= 1e-6
    for (name, layer), (_, m) in zip(lora.lora_layers(model).items(), layer_pairs(model, pm)):
        X = inputs[name].double()
        c = X.max().item() ** 2 / X.shape[0]
        assert 0.1 < c < 10                                   # a real rescaling, not 1
        _, B, A, _ = factors(m)
        sign = torch.sign((layer.lora_A0.double() * A).sum(1))
        B_scaled = math.sqrt(c) * B
        assert (layer.lora_B0.double() * sign - B_scaled).abs().max() <= 1e-5 * B_scaled.abs().max()
        A_scaled = A / math.sqrt(c)
        assert (layer.lora_A0.double() * sign[:, None] - A_scaled).abs().max() <= 2e-3 * A_scaled.abs().max()
    step0, gap = training_gap(model, pm)
    assert step0 <= 1e-5 and gap > 0.2


def test_corda_product_differs_from_peft_with_several_calls():
    """Several calls: PEFT normalises each by its own max, so C is not c·C_peft and s·B₀A₀ differs."""
    calls = calibration_calls(4)
    model, pm = ours("corda", calls), peft_corda(calls)
    assert weight_gap(model, pm) <= 1e-6                    # both residual: the step-0 weights still agree
    assert product_gap(model, pm) > 0.3                     # 0.73 measured


# ----------------------------------------------------------------------------- EVA
def peft_eva(batches: list[dict], rank: int):
    from peft.tuners.lora.eva import initialize_lora_eva_weights
    pm = get_peft(make_bert(), config("eva", rank, eva_config=peft.EvaConfig(rho=1.0)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        initialize_lora_eva_weights(pm, dataloader=batches, show_progress_bar=False,
                                    prepare_model_inputs_fn=lambda inputs, cfg: inputs["attention_mask"].nonzero())
    return pm


def test_eva_equals_peft_for_one_batch_with_q_at_least_in():
    """r = 16: PEFT's svd_lowrank has q = 2r = 32 = in, so its incremental, randomized PCA of one batch is
    the exact centred PCA of its unpadded tokens: same A₀ (same signs), same run."""
    batch = [make_batch(300)]
    model, pm = ours("eva", batch, rank=16), peft_eva(batch, 16)
    for layer, m in layer_pairs(model, pm):
        _, B, A, W = factors(m)
        assert (layer.lora_A0.double() - A).abs().max() <= 2e-5
        assert B.abs().max() == 0 == layer.lora_B0.abs().max()
    step0, gap = training_gap(model, pm)
    assert step0 == 0 and gap <= 5e-5


@pytest.mark.parametrize("rank, n_batches, low, high", [(4, 1, 1e-3, 0.1), (16, 3, 0.3, 1.0), (4, 3, 0.3, 1.0)])
def test_eva_approximates_peft_otherwise(rank, n_batches, low, high):
    """q = 2r < in (randomized range finder) or several batches (incremental PCA truncated to r components
    between batches): PEFT's A₀ is an approximation of our exact PCA of all batches (sin θ measured: 0.015,
    0.93, 0.76)."""
    batches = [make_batch(300 + i) for i in range(n_batches)]
    model, pm = ours("eva", batches, rank=rank), peft_eva(batches, rank)
    sin = max(largest_sin(layer.lora_A0, factors(m)[2]) for layer, m in layer_pairs(model, pm))
    assert low < sin < high


# ----------------------------------------------------------------------------- LoRA-GA
def peft_lora_ga(batches: list[dict], rank: int):
    from peft.tuners.lora.loraga import preprocess_loraga
    base, cfg = make_bert(), config("lora_ga", rank, lora_ga_config=peft.LoraGAConfig())

    def train_step():
        for b in batches:
            base(**b).loss.backward()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        preprocess_loraga(base, cfg, train_step)
    return get_peft(base, cfg)


@pytest.mark.parametrize("rank", [4, 8])
def test_lora_ga_equals_peft_up_to_per_vector_signs(rank):
    """A₀'s rows (v_1..v_r) and B₀'s columns (u_{r+1..2r}) each match PEFT's up to their own sign; the signs
    of the terms of s·B₀A₀ then differ, so the product and the residual do, but not the step-0 model.
    With our signs set to PEFT's (factors and residual), the runs are the same."""
    batches = [make_batch(400 + i) for i in range(3)]
    model, pm = ours("lora_ga", batches, rank), peft_lora_ga(batches, rank)
    flipped = 0
    for layer, m in layer_pairs(model, pm):
        s, B, A, _ = factors(m)
        sa = torch.sign((layer.lora_A0.double() * A).sum(1))
        sb = torch.sign((layer.lora_B0.double() * B).sum(0))
        assert (layer.lora_A0.double() * sa[:, None] - A).abs().max() <= 2e-5
        assert (layer.lora_B0.double() * sb - B).abs().max() <= 2e-5 * B.abs().max()
        flipped += int((sa * sb < 0).sum())
        with torch.no_grad():                                 # set our signs to PEFT's, keeping W
            W = layer.base.weight + layer.scaling * layer.lora_B0 @ layer.lora_A0
            layer.lora_A0.mul_(sa[:, None].to(layer.lora_A0.dtype))
            layer.lora_B0.mul_(sb.to(layer.lora_B0.dtype))
            layer.lora_A.copy_(layer.lora_A0)
            layer.lora_B.copy_(layer.lora_B0)
            layer.base.weight.copy_(W - layer.scaling * layer.lora_B0 @ layer.lora_A0)
    assert flipped > 0                                        # 8 of 16 and 21 of 32 terms measured
    assert product_gap(model, pm) <= 5e-5 and weight_gap(model, pm) <= 1e-6
    step0, gap = training_gap(model, pm)
    assert step0 <= 1e-5 and gap <= 5e-5


def test_lora_ga_product_and_run_differ_from_peft_as_built():
    batches = [make_batch(400 + i) for i in range(3)]
    model, pm = ours("lora_ga", batches), peft_lora_ga(batches, RANK)
    assert product_gap(model, pm) > 0.5                       # 1.77 measured
    assert weight_gap(model, pm) <= 1e-6                      # both residual: the step-0 weights agree
    step0, gap = training_gap(model, pm)
    assert step0 <= 1e-5 and gap > 1e-3                       # 0.013 measured
