"""``lora inspect`` on adapters PEFT itself made (get_peft_model + save_pretrained) on a tiny BERT and a tiny
GPT-2: every number equals lora.spectra's on the same factors and a dense numpy computation (SVD of PEFT's
own ``get_delta_weight``, W + ΔW) to 1e-5; bad input is one stderr line, exit 2, nothing written."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch

from lora import spectra as sp
from lora.__main__ import main
from lora.inspect import (BaseWeights, InspectError, Layer, base_row, inspect_adapter, read_adapter,
                          top_singular)
from lora.inspect_report import to_json

ROOT = Path(__file__).resolve().parents[1]
EPS = list(sp.INTRUDER_EPS)
TOL = dict(rtol=1e-5, atol=1e-5)          # numpy.testing
APPROX = dict(rel=1e-5, abs=1e-5)        # pytest.approx

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ------------------------------------------------------------------------------------------ models
def tiny_bert(seed: int = 0, hidden: int = 32):
    from transformers import BertConfig, BertForSequenceClassification
    torch.manual_seed(seed)
    return BertForSequenceClassification(BertConfig(vocab_size=100, hidden_size=hidden, num_hidden_layers=2,
                                                    num_attention_heads=2, intermediate_size=64,
                                                    max_position_embeddings=64))


def tiny_gpt2(seed: int = 0):
    from transformers import GPT2Config, GPT2LMHeadModel
    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=2, n_positions=64,
                                      bos_token_id=0, eos_token_id=0))


def peft_adapter(model, out: Path, seed: int = 1, **lora_kwargs):
    """PEFT's adapter on ``model`` with its factors perturbed at random (PEFT's default init has B = 0),
    saved with save_pretrained.  Returns (peft model, {module: reference}) with, per adapted module, its
    factors s·B, A, its r and scaling, and its base weight W turned to out×in (Conv1D stores in×out);
    ``delta`` = s·B·A in float64, checked here against PEFT's own ``get_delta_weight`` (float32)."""
    from peft import LoraConfig, get_peft_model
    pm = get_peft_model(model, LoraConfig(**lora_kwargs))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():                # PEFT starts with B = 0 (an embedding's A = 0): ΔW = 0 until trained
        for n, p in pm.named_parameters():
            if "lora_" in n:
                p.add_(0.3 * torch.randn(p.shape, generator=g))
    pm.save_pretrained(str(out))
    ref = {}
    for name, mod in pm.named_modules():
        if not hasattr(mod, "get_delta_weight") or "default" not in getattr(mod, "scaling", {}):
            continue
        t = getattr(mod, "fan_in_fan_out", False)
        delta = mod.get_delta_weight("default").detach().double()
        W = mod.get_base_layer().weight.detach().double().clone()
        if hasattr(mod, "lora_embedding_A") and "default" in mod.lora_embedding_A:
            A, B = mod.lora_embedding_B["default"].T, mod.lora_embedding_A["default"].T
        else:
            A, B = mod.lora_A["default"].weight, mod.lora_B["default"].weight
        s = mod.scaling["default"]
        B, A = s * B.detach().double(), A.detach().double()
        np.testing.assert_allclose((delta.T if t else delta).numpy(), (B @ A).numpy(), rtol=1e-5, atol=1e-6)
        ref[name.removeprefix("base_model.model.")] = dict(delta=B @ A, W=W.T if t else W, B=B, A=A,
                                                           r=mod.r["default"], scaling=s)
    return pm, ref


def save_base(model, path: Path, **kw) -> Path:
    model.save_pretrained(str(path), **kw)
    return path


# ------------------------------------------------------------------------------------------ references
def dense_reference(D: torch.Tensor, W: torch.Tensor | None = None, k: int | None = None, r: int | None = None,
                    intruder_k: int = 10) -> dict:
    """The numbers from the dense ΔW (out×in) with numpy: SVD of ΔW, of W and of W + ΔW."""
    D = D.numpy()
    Ud, S, Vdh = np.linalg.svd(D)
    p = S[S > 0] / S.sum()
    out = dict(sv=S[:min(D.shape)], fro=np.linalg.norm(D), spectral=S[0], stable_rank=(S ** 2).sum() / S[0] ** 2,
               effective_rank=math.exp(-(p * np.log(p)).sum()), energy_top1=S[0] ** 2 / (S ** 2).sum())
    if W is None:
        return out
    W = W.numpy()
    Uw, Sw, Vwh = np.linalg.svd(W)
    ang = lambda X, Y: np.sort(np.rad2deg(scipy.linalg.subspace_angles(X, Y)))   # noqa: E731
    fro2 = (S ** 2).sum()
    U1 = np.linalg.svd(W + D)[0][:, :intruder_k]
    max_cos = np.abs(U1.T @ Uw[:, :min(W.shape)]).max(1)
    out.update(angles_left=ang(Ud[:, :r], Uw[:, :k]), angles_right=ang(Vdh[:r].T, Vwh[:k].T),
               energy_in_w_left=np.linalg.norm(Uw[:, :k].T @ D) ** 2 / fro2,
               energy_in_w_right=np.linalg.norm(D @ Vwh[:k].T) ** 2 / fro2,
               amplification=np.sqrt(fro2) / np.linalg.norm(Ud[:, :r].T @ W @ Vdh[:r].T),
               rel_fro=np.sqrt(fro2) / np.linalg.norm(W), max_cos=max_cos,
               counts=[int((max_cos < e).sum()) for e in EPS])
    return out


def check_layer(row: dict, ref: dict, with_base: bool = True):
    """One inspect row against lora.spectra on PEFT's factors and against the dense numpy numbers."""
    B, A, delta = ref["B"], ref["A"], ref["delta"]
    assert row["rank"] == ref["r"] and row["scaling"] == pytest.approx(ref["scaling"], rel=1e-12)
    S = sp.singular_values(B, A)
    m = sp.spectrum_metrics(S, 1)
    dense = dense_reference(delta, ref["W"] if with_base else None, k=row.get("w_top"), r=row.get("r"))
    np.testing.assert_allclose(row["sv"], S.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(row["sv"], dense["sv"][:len(row["sv"])], **TOL)
    for key in ("fro", "spectral", "stable_rank", "effective_rank"):
        assert row[key] == pytest.approx(m[key], rel=1e-10), key
        assert row[key] == pytest.approx(dense[key], rel=1e-5), key
    assert row["energy_top1"] == pytest.approx(dense["energy_top1"], rel=1e-5)
    if not with_base:
        return
    W, k, r = ref["W"], row["w_top"], row["r"]
    assert r == min(ref["r"], sp.numerical_rank(S)) and k == min(ref["r"], *W.shape)
    ov = sp.subspace_overlap_with_W(B, A, W, k, r)
    np.testing.assert_allclose(row["angles_left"], torch.rad2deg(ov["left_top"]).numpy(), rtol=1e-9, atol=1e-7)
    np.testing.assert_allclose(row["angles_right"], torch.rad2deg(ov["right_top"]).numpy(), rtol=1e-9, atol=1e-7)
    np.testing.assert_allclose(row["angles_left"], dense["angles_left"], rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(row["angles_right"], dense["angles_right"], rtol=1e-5, atol=1e-4)
    assert row["overlap_right"] == pytest.approx(float((ov["right_top"].cos() ** 2).mean()), rel=1e-10)
    assert row["amplification"] == pytest.approx(sp.amplification_factor(B, A, W, r=r), rel=1e-10)
    for key in ("energy_in_w_left", "energy_in_w_right", "amplification", "rel_fro"):
        assert row[key] == pytest.approx(dense[key], **APPROX), key
    intr = sp.intruder_dimensions_lowrank(W, B, A, k=10, eps=EPS)
    assert row["intruders"]["counts"] == intr["counts"] == dense["counts"]
    np.testing.assert_allclose(row["intruders"]["max_cos"], intr["max_cos"].numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(row["intruders"]["max_cos"], dense["max_cos"], **TOL)


# ------------------------------------------------------------------------------------------ PEFT adapters
@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    """Default-init PEFT adapter (B perturbed) on query, value and the word embeddings of a tiny BERT for
    sequence classification (PEFT also saves its classifier whole), the base saved beside it."""
    d = tmp_path_factory.mktemp("bert")
    model = tiny_bert()
    base = save_base(model, d / "base")
    pm, ref = peft_adapter(model, d / "adapter", r=4, lora_alpha=8, task_type="SEQ_CLS",
                           target_modules=["query", "value", "word_embeddings"])
    return dict(dir=d, base=base, adapter=d / "adapter", ref=ref)


def test_peft_default_init_equals_spectra_and_dense_numpy(bert):
    res = inspect_adapter(bert["adapter"], base=bert["base"])
    rows = {r["layer"]: r for r in res["layers"]}
    assert set(rows) == set(bert["ref"]) and len(rows) == 5          # 2 blocks × (query, value) + word_embeddings
    for name, row in rows.items():
        check_layer(row, bert["ref"][name])
        assert row["svd"] == "full" and row["intruders"]["method"] == "full SVD of W"
    assert rows["bert.embeddings.word_embeddings"]["out"] == 100      # ΔW of the 100×32 table is (B·A)ᵀ
    assert res["adapter"]["format"] == "peft" and res["adapter"]["modules"] == {"word_embeddings": 1, "query": 2, "value": 2}
    assert any("classifier" in n for n in res["adapter"]["notes"])   # modules_to_save: named, not inspected
    assert res["modules"]["all"]["layers"] == 5
    assert res["modules"]["query"]["effective_rank"] == pytest.approx(
        float(np.median([rows[n]["effective_rank"] for n in rows if n.endswith("query")])))


def test_without_base_only_the_spectrum(bert):
    res = inspect_adapter(bert["adapter"])
    for row in res["layers"]:
        check_layer(row, bert["ref"][row["layer"]], with_base=False)
        assert "w_top" not in row and "intruders" not in row
    assert res["base"] is None and res["options"]["intruders"] is False


def test_pissa_against_the_residual_base_it_was_trained_on(tmp_path):
    """PiSSA moves W's top-r part into the adapter: the base the adapter is relative to is the residual
    W − s·B₀A₀, saved here from the PEFT model (``unload``) and given as --base."""
    pm, ref = peft_adapter(tiny_bert(), tmp_path / "pissa", r=4, lora_alpha=4, target_modules=["query", "value"],
                           init_lora_weights="pissa")
    residual = save_base(pm.unload(), tmp_path / "residual")
    res = inspect_adapter(tmp_path / "pissa", base=residual)
    for row in res["layers"]:
        check_layer(row, ref[row["layer"]])
    assert any("changed the base weights" in n for n in res["adapter"]["notes"])


def test_rank_and_alpha_patterns_give_each_layer_its_r_and_scaling(tmp_path):
    pm, ref = peft_adapter(tiny_bert(), tmp_path / "pat", r=4, lora_alpha=8, target_modules=["query", "value"],
                           rank_pattern={"value": 2, "layer.1.attention.self.query": 6},
                           alpha_pattern={"query": 3})
    base = save_base(tiny_bert(), tmp_path / "base")
    rows = {r["layer"]: r for r in inspect_adapter(tmp_path / "pat", base=base)["layers"]}
    assert {n: (r["rank"], r["alpha"]) for n, r in rows.items()} == {
        "bert.encoder.layer.0.attention.self.query": (4, 3.0), "bert.encoder.layer.0.attention.self.value": (2, 8.0),
        "bert.encoder.layer.1.attention.self.query": (6, 3.0), "bert.encoder.layer.1.attention.self.value": (2, 8.0)}
    for name, row in rows.items():
        check_layer(row, ref[name])


def test_rslora_scales_by_alpha_over_root_r(tmp_path):
    pm, ref = peft_adapter(tiny_bert(), tmp_path / "rs", r=4, lora_alpha=8, target_modules=["query"], use_rslora=True)
    res = inspect_adapter(tmp_path / "rs", base=save_base(tiny_bert(), tmp_path / "base"))
    assert res["adapter"]["use_rslora"] and res["adapter"]["scalings"] == [4.0]     # 8 / √4
    for row in res["layers"]:
        check_layer(row, ref[row["layer"]])


def test_gpt2_conv1d_fan_in_fan_out(tmp_path):
    """GPT-2's Conv1D stores W as in×out: c_attn (32 → 96), the square attn.c_proj and mlp.c_proj (128 → 32);
    the base is read from the LM checkpoint (transformer.h.…) and from the bare GPT2Model's (h.…)."""
    model = tiny_gpt2()
    lm_base = save_base(model, tmp_path / "lm_base")
    bare_base = save_base(model.transformer, tmp_path / "bare_base")
    pm, ref = peft_adapter(model, tmp_path / "gpt2", r=4, lora_alpha=8, target_modules=["c_attn", "c_proj"],
                           fan_in_fan_out=True)
    for base in (lm_base, bare_base):
        res = inspect_adapter(tmp_path / "gpt2", base=base)
        rows = {r["layer"]: r for r in res["layers"]}
        assert rows["transformer.h.0.attn.c_attn"]["out"] == 96 and rows["transformer.h.0.mlp.c_proj"]["in"] == 128
        assert set(res["adapter"]["modules"]) == {"c_attn", "attn.c_proj", "mlp.c_proj"}   # c_proj: both kept apart
        for name, row in rows.items():
            check_layer(row, ref[name])


def test_sharded_base_reads_the_same_numbers(bert, tmp_path):
    sharded = save_base(tiny_bert(), tmp_path / "sharded", max_shard_size="20KB")
    assert (sharded / "model.safetensors.index.json").is_file() and len(list(sharded.glob("*.safetensors"))) > 2
    a = inspect_adapter(bert["adapter"], base=bert["base"])
    b = inspect_adapter(bert["adapter"], base=sharded)
    assert a["layers"] == b["layers"]


def test_compare_two_adapters_layer_by_layer(tmp_path):
    _, ref1 = peft_adapter(tiny_bert(), tmp_path / "a1", seed=1, r=4, lora_alpha=8, target_modules=["query", "value"])
    _, ref2 = peft_adapter(tiny_bert(), tmp_path / "a2", seed=2, r=2, lora_alpha=8, target_modules=["value"])
    res = inspect_adapter(tmp_path / "a1", compare=tmp_path / "a2")
    assert res["compare"]["layers_compared"] == 2
    for row in res["layers"]:
        if not row["layer"].endswith("value"):
            assert "cmp_phi_right" not in row
            continue
        r1, r2 = ref1[row["layer"]], ref2[row["layer"]]
        G = sp.normalized_subspace_similarity((r1["B"], r1["A"]), (r2["B"], r2["A"]), of="dW", side="right")
        assert row["cmp_phi_right"] == pytest.approx(float(G[-1, -1]), rel=1e-10)
        D1, D2 = r1["delta"].numpy(), r2["delta"].numpy()
        U1, _, V1h = np.linalg.svd(D1)
        U2, _, V2h = np.linalg.svd(D2)
        for side, X1, X2 in (("left", U1[:, :4], U2[:, :2]), ("right", V1h[:4].T, V2h[:2].T)):
            theta = np.sort(scipy.linalg.subspace_angles(X1, X2))
            np.testing.assert_allclose(row[f"cmp_angles_{side}"], np.rad2deg(theta), rtol=1e-5, atol=1e-4)
            assert row[f"cmp_phi_{side}"] == pytest.approx(float((np.cos(theta) ** 2).mean()), **APPROX)
            assert row[f"cmp_phi_random_{side}"] == pytest.approx(4 / 32)
        assert row["cmp_rel_distance"] == pytest.approx(np.linalg.norm(D1 - D2) / np.linalg.norm(D1), **APPROX)


# ------------------------------------------------------------------------------------------ this project's files
def test_factor_file_run_log_and_its_peft_export_agree(tmp_path):
    """An svd-init (residual) adapter of this library: its save_lora file, a run log naming it and its
    export_peft directory give the same ΔW (relative to the original W) and the same numbers."""
    import lora
    model = tiny_bert()
    W = {n: m.weight.detach().double().clone() for n, m in model.named_modules() if n.endswith(("query", "value"))}
    lora.add_lora(model, ["query", "value"], rank=4, alpha=8, init="svd")
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("lora_B"):
                p.add_(0.05 * torch.randn_like(p))
    lora.save_lora(model, tmp_path / "run.safetensors")
    (tmp_path / "run.json").write_text(json.dumps({"run_id": "run", "factors_file": "run.safetensors",
                                                   "config": {"model": "tiny"}}))
    lora.export_peft(model, tmp_path / "peft", base_model_name_or_path="tiny")
    base = save_base(tiny_bert(), tmp_path / "base")
    results = [inspect_adapter(p, base=base, w_top=4)
               for p in (tmp_path / "run.safetensors", tmp_path / "run.json", tmp_path / "peft")]
    assert [r["adapter"]["format"] for r in results] == ["factors", "run log", "peft"]
    assert results[1]["adapter"]["base_model"] == "tiny"
    factors = lora.delta_factors(model)
    for row in results[0]["layers"]:
        B, A = factors[row["layer"]]
        ref = dict(B=B.double(), A=A.double(), delta=B.double() @ A.double(), W=W[row["layer"]], r=4, scaling=2.0)
        check_layer(row, ref)
    for other in results[1:]:       # the PEFT export says r = 8 (ΔW = s·[B, −B₀]·[A; A₀]): compare what r does not set
        for a, b in zip(results[0]["layers"], other["layers"]):
            for key in ("sv", "effective_rank", "energy_in_w_left", "energy_in_w_right", "rel_fro"):
                np.testing.assert_allclose(b[key], a[key], rtol=1e-6, atol=1e-6)
            assert a["intruders"]["counts"] == b["intruders"]["counts"]


def test_load_delta_factors_names_a_peft_file_instead_of_returning_nothing(bert):
    import lora
    with pytest.raises(ValueError, match=r"PEFT adapter file.*lora\.inspect\.read_adapter"):
        lora.load_delta_factors(bert["adapter"] / "adapter_model.safetensors")


# ------------------------------------------------------------------------------------------ large layers
def planted(out: int, inn: int, seed: int = 0, decay: float = 0.8):
    """W with a decaying top spectrum (10·0.8^i) over a small noise floor, and a rank-4 ΔW about 4 % of ‖W‖₂."""
    g = torch.Generator().manual_seed(seed)
    U = torch.linalg.qr(torch.randn(out, 40, generator=g, dtype=torch.float64))[0]
    V = torch.linalg.qr(torch.randn(inn, 40, generator=g, dtype=torch.float64))[0]
    W = (U * (10 * decay ** torch.arange(40.0, dtype=torch.float64))) @ V.T + 0.001 * torch.randn(out, inn, generator=g, dtype=torch.float64)
    B, A = 0.02 * torch.randn(out, 4, generator=g, dtype=torch.float64), torch.randn(4, inn, generator=g, dtype=torch.float64) / inn ** 0.5
    return W, Layer("x.0.q", B, A, 4, 4.0, 1.0)


def test_randomized_top_singular_is_close_to_the_full_svd():
    W, _ = planted(300, 260)
    U, S, V = top_singular(W.float(), 16)
    U0, S0, V0h = torch.linalg.svd(W)
    assert float((S.double() - S0[:16]).abs().max() / S0[0]) < 1e-6
    for X, X0 in ((U.double(), U0[:, :16]), (V.double(), V0h[:16].T)):
        assert float(sp.principal_angles(X, X0).max()) < 1e-3          # radians; float32 vectors


def test_large_layer_path_equals_the_full_svd_path():
    """min(out, in) above full_svd_max: W's top subspaces by randomized SVD (float32), intruders decided by
    the top-m bound; the numbers agree with the full-SVD path."""
    W, layer = planted(300, 260)
    full = base_row(layer, W, w_top=8)
    rand = base_row(layer, W.float(), w_top=8, full_svd_max=0)
    assert full["svd"] == "full" and rand["svd"] == "randomized"
    assert rand["intruders"]["method"].startswith("bounded by W's top-")
    assert rand["intruders"]["counts"] == full["intruders"]["counts"]
    np.testing.assert_allclose(rand["intruders"]["max_cos"], full["intruders"]["max_cos"], atol=1e-4)
    np.testing.assert_allclose(rand["angles_left"], full["angles_left"], atol=1e-2)      # degrees
    np.testing.assert_allclose(rand["angles_right"], full["angles_right"], atol=1e-2)
    for key in ("overlap_left", "overlap_right", "energy_in_w_left", "energy_in_w_right", "amplification",
                "rel_fro", "w_spectral"):
        assert rand[key] == pytest.approx(full[key], rel=1e-4, abs=1e-6), key


def test_intruder_bound_falls_back_to_the_full_svd_when_it_cannot_decide():
    """A ΔW much larger than W puts W + ΔW's top directions outside W's top subspace, spread over W's other
    singular vectors: the bound straddles ε and the full SVD decides, with the exact path's counts."""
    g = torch.Generator().manual_seed(3)
    W = torch.randn(200, 180, generator=g, dtype=torch.float64) / 200 ** 0.5
    layer = Layer("x.0.q", 5 * torch.randn(200, 4, generator=g, dtype=torch.float64),
                  torch.randn(4, 180, generator=g, dtype=torch.float64) / 180 ** 0.5, 4, 4.0, 1.0)
    full = base_row(layer, W)
    rand = base_row(layer, W.float(), full_svd_max=0)
    assert rand["intruders"]["method"] == "full SVD of W (bound undecided)"
    assert rand["intruders"]["counts"] == full["intruders"]["counts"] and full["intruders"]["counts"][0] > 0


# ------------------------------------------------------------------------------------------ the command
def run_cli(*args, capsys):
    capsys.readouterr()                  # what building the models printed
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_writes_report_table_figures_and_json(bert, tmp_path, capsys):
    out_dir = tmp_path / "report"
    code, out, err = run_cli("inspect", bert["adapter"], "--base", bert["base"], "--compare", bert["adapter"],
                             "--out", out_dir, "--json", capsys=capsys)
    assert code == 0
    printed = json.loads(out)
    assert printed == json.loads((out_dir / "inspect.json").read_text())
    assert sorted(p.name for p in out_dir.iterdir()) == ["compare.png", "inspect.json", "intruders.png", "layers.csv",
                                                          "overlap.png", "report.md", "spectra.png"]
    lines = (out_dir / "layers.csv").read_text().splitlines()
    assert len(lines) == 1 + 5 and "intruders_0.5" in lines[0].split(",")
    report = (out_dir / "report.md").read_text()
    assert "The update is effectively rank" in report and "lies in W's top-4 input subspace" in report
    assert "![spectra.png](spectra.png)" in report
    for row in printed["layers"]:                      # an adapter against itself: the same subspaces
        assert row["cmp_phi_right"] == pytest.approx(1.0) and row["cmp_rel_distance"] == pytest.approx(0.0, abs=1e-12)
    code, out, err = run_cli("inspect", bert["adapter"], capsys=capsys)
    assert code == 0 and out.startswith("# What this LoRA adapter does") and "No base given" in out


def _peft_other(kind: str, path: Path):
    """Adapters lora inspect refuses, made by PEFT itself."""
    import peft
    model = tiny_bert()
    cfg = {"IA3": lambda: peft.IA3Config(target_modules=["query", "value"], feedforward_modules=[]),
           "LOHA": lambda: peft.LoHaConfig(r=4, target_modules=["query", "value"]),
           "DORA": lambda: peft.LoraConfig(r=4, target_modules=["query", "value"], use_dora=True)}[kind]()
    peft.get_peft_model(model, cfg).save_pretrained(str(path))
    return path


@pytest.mark.parametrize("case, expect", [
    ("missing", "no such file or directory"),
    ("IA3", "peft_type 'IA3' is not supported"),
    ("LOHA", "peft_type 'LOHA' is not supported"),
    ("DORA", "DoRA"),
    ("corrupt adapter", "not a readable safetensors file"),
    ("corrupt base", "not a readable safetensors file"),
    ("base of another shape", "has shape (100, 48) but the adapter's layer bert.embeddings.word_embeddings needs 100×32"),
    ("base without the layer", "no tensor for the adapter's layer"),
    ("not a model", "is not a path here nor a model in the Hugging Face cache"),
    ("bad eps", "every ε must lie in (0, 1]"),
])
def test_bad_input_is_one_line_exit_2_and_nothing_written(case, expect, bert, tmp_path, capsys, hf_offline):
    import shutil
    adapter, base, extra = bert["adapter"], None, []
    if case == "missing":
        adapter = tmp_path / "nope"
    elif case in ("IA3", "LOHA", "DORA"):
        adapter = _peft_other(case, tmp_path / case)
    elif case == "corrupt adapter":
        adapter = shutil.copytree(bert["adapter"], tmp_path / "corrupt")
        f = adapter / "adapter_model.safetensors"
        f.write_bytes(f.read_bytes()[:200])
    elif case == "corrupt base":
        base = tmp_path / "corrupt_base"
        base.mkdir()
        (base / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    elif case == "base of another shape":
        base = save_base(tiny_bert(hidden=48), tmp_path / "wide")
    elif case == "base without the layer":
        base = save_base(tiny_gpt2(), tmp_path / "gpt2")
    elif case == "not a model":
        base = "nobody/no-such-model"
    elif case == "bad eps":
        extra = ["--eps", "0.5,1.5"]
    out_dir = tmp_path / "out"
    args = ["inspect", adapter, "--out", out_dir, *extra] + (["--base", base] if base else [])
    code, out, err = run_cli(*args, capsys=capsys)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and expect in err, err
    assert not out_dir.exists()


def test_hub_id_is_read_from_the_local_cache_only(bert, tmp_path, hf_offline):
    """A hub id resolves through huggingface_hub's cache layout (models--org--name/snapshots/<rev>); nothing
    is downloaded."""
    import shutil

    import huggingface_hub.constants as hc
    repo = Path(hc.HF_HUB_CACHE) / "models--someone--tiny-bert"
    snap = repo / "snapshots" / ("0" * 40)
    snap.mkdir(parents=True)
    for f in bert["base"].iterdir():
        shutil.copy(f, snap / f.name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    a = inspect_adapter(bert["adapter"], base="someone/tiny-bert")
    b = inspect_adapter(bert["adapter"], base=bert["base"])
    assert a["layers"] == b["layers"] and Path(a["base"]["path"]) == snap
    with pytest.raises(InspectError, match="download it first"):
        BaseWeights("someone/not-cached")


def test_read_adapter_refuses_a_conv_lora_and_names_lora_keys(tmp_path):
    from safetensors.torch import save_file
    d = tmp_path / "conv"
    d.mkdir()
    (d / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 2, "lora_alpha": 2}))
    save_file({"base_model.model.conv.lora_A.weight": torch.zeros(2, 3, 1, 1),
               "base_model.model.conv.lora_B.weight": torch.zeros(4, 2, 1, 1)}, str(d / "adapter_model.safetensors"))
    with pytest.raises(InspectError, match="not convolutions"):
        read_adapter(d)


def test_json_has_no_nan(tmp_path):
    """ΔW = 0 (PEFT's untouched default init) has no subspace: overlaps are null in the JSON, not NaN."""
    from peft import LoraConfig, get_peft_model
    get_peft_model(tiny_bert(), LoraConfig(r=2, target_modules=["query"])).save_pretrained(str(tmp_path / "zero"))
    res = inspect_adapter(tmp_path / "zero", base=save_base(tiny_bert(), tmp_path / "base"))
    assert all(r["num_rank"] == 0 and r["amplification"] == 0.0 for r in res["layers"])
    text = to_json(res)
    assert "NaN" not in text and json.loads(text)["layers"][0]["overlap_right"] is None


def test_console_script_and_module_entry_point():
    import tomllib
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["lora"] == "lora.__main__:main"
    proc = subprocess.run([sys.executable, "-m", "lora", "inspect", "--help"], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert proc.returncode == 0 and proc.stdout.startswith("usage: lora inspect ADAPTER")
    assert "--base MODEL" in proc.stdout and "--compare ADAPTER2" in proc.stdout


def test_notebook_shows_the_report(bert, tmp_path):
    import papermill
    out = tmp_path / "nb_out"
    nb = papermill.execute_notebook(str(ROOT / "notebooks" / "inspect.ipynb"), str(tmp_path / "inspect.ipynb"),
                                    parameters=dict(adapter=str(bert["adapter"]), base=str(bert["base"]), out=str(out)),
                                    cwd=str(tmp_path), kernel_name="python3", progress_bar=False)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not any(o.get("output_type") == "error" for o in outputs)
    assert any("The update is effectively rank" in o.get("data", {}).get("text/markdown", "") for o in outputs)
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 3            # spectra, overlap, intruders
    assert (out / "report.md").is_file() and (out / "layers.csv").is_file()
