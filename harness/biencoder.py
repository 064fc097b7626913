"""Bi-encoder (sentence-embedding) tasks: ``bi-mrpc`` and ``bi-stsb``.

Each sentence is encoded on its own, as sentence-transformers does for all-MiniLM-L6-v2:

    h = transformer(x)                          (n, T, d)   last hidden states
    e = Σ_t m_t h_t / max(Σ_t m_t, 1e-9)        (n, d)      mean over real tokens (attention mask m)
    u = e / max(‖e‖₂, 1e-12)                    (n, d)      L2 normalisation, so cos(u, v) = u·v

The forward is our Hugging Face model + this pooling (not a ``SentenceTransformer``), so the
``lora`` adapters (query/value of the transformer) apply and nothing here needs sentence-transformers;
``tests/test_biencoder.py`` checks the pooling and the loss against it.  One difference: sentences are
truncated at ``cfg["max_length"]`` tokens (128 in the quick preset), sentence-transformers' model at 256.

Loss, both tasks: cosine-similarity MSE (sentence-transformers' ``CosineSimilarityLoss``),
``L = mean_i (u_i·v_i − y_i)²`` with y = label / label_scale (MRPC: 1/0; STS-B: score/5 ∈ [0, 1]).
Why: STS-B's graded score is a cosine target as it stands (the SBERT STS-B recipe).  For MRPC the
labelled non-paraphrases are hard negatives (high word overlap) and the main metric, ROC-AUC of the
cosine, is exactly "rank paraphrases above them"; in-batch-negatives MultipleNegativesRankingLoss
would use only the positives against easy random negatives and drop those labels.  A target of 0
for related sentences is blunt, but AUC only depends on the order of the scores.

Metrics (main first): bi-mrpc: ROC-AUC of the cosine on dev (sklearn), then retrieval: for each
paraphrase pair (label 1) the query sentence1 looks for sentence2 among ALL distinct dev sentences
(itself excluded): recall@1, recall@10, MRR@10, through an HNSW index (``hnswlib``), and the same by
exact search (``exact_*``) with the mean top-10 overlap of the two (``ann_overlap@10``).  Without
hnswlib the index is exact search (``task.retrieval_index = "exact"``, the two sets coincide).
bi-stsb: Spearman and Pearson of the cosine against the score (scipy).
"""
from __future__ import annotations

import copy
import dataclasses
import math
import os
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import roc_auc_score
from torch import nn

import lora

from .config import adapter_kwargs
from .data import load_task_data, split_validation
from .models import load_model_and_tokenizer
from .tasks import TASKS, BiTask, UserError, get_task
from .steps import autocast, seed_everything

RETRIEVAL_K = 10
HNSW = dict(M=16, ef_construction=200, ef=100)


# ---------------------------------------------------------------------------------------- model
def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(n, T, d), (n, T) → (n, d): the mean of the token states the attention mask keeps."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp_min(1e-9)


class SentenceEncoder(nn.Module):
    """transformer → mean pooling → L2 normalisation.  The transformer is registered under its
    ``base_model_prefix`` ("bert", "roberta"), so layer names, and hence adapter and factor names
    (``bert.encoder.layer.0.attention.self.query``), are those of the cross-encoder runs."""

    def __init__(self, transformer: nn.Module):
        super().__init__()
        self.prefix = transformer.base_model_prefix
        self.add_module(self.prefix, transformer)

    def forward(self, input_ids, attention_mask, **kw) -> torch.Tensor:
        hidden = getattr(self, self.prefix)(input_ids=input_ids, attention_mask=attention_mask, **kw).last_hidden_state
        return F.normalize(mean_pool(hidden.float(), attention_mask), p=2, dim=-1)


def load_encoder(model_id: str, seed: int, train_texts=None):
    """(SentenceEncoder, tokenizer): the model loader's transformer without its head or pooler."""
    clf, tok = load_model_and_tokenizer(model_id, 1, seed, train_texts=train_texts)
    body = clf.base_model
    if getattr(body, "pooler", None) is not None:
        body.pooler = None            # the [CLS] pooler is unused by mean pooling: not trained, not counted
    return SentenceEncoder(body), tok


def cosine_mse(u: torch.Tensor, v: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """mean_i (cos(u_i, v_i) − t_i)²; equals sentence-transformers' CosineSimilarityLoss."""
    return F.mse_loss(F.cosine_similarity(u, v, dim=-1), target.float())


# ----------------------------------------------------------------------------------------- data
def check_labels(bt: BiTask, examples, where) -> None:
    """A label outside ``bt.label_range`` → UserError; ``where(i)`` names example i's file and line."""
    lo, hi = bt.label_range
    for i, ex in enumerate(examples):
        if not lo <= ex.label <= hi:                      # NaN fails too
            raise UserError(f"{where(i)}: label {ex.label!r} outside [{lo:g}, {hi:g}] for task {bt.name}")


def _where(source: dict, base, split: str):
    if source.get("kind") == "local":
        path = Path(source["dir"]) / base.dir / ("train.tsv" if split == "train" else base.dev_file)
        return lambda i: f"{path} line {i + 1 + base.has_header}"
    return lambda i: f"{source.get('id', 'hub')} config {base.hub_config} split {split} row {i}"


class EvalSet(NamedTuple):
    rows: list          # tokenised distinct sentences
    a: np.ndarray       # pair i = (sentences[a[i]], sentences[b[i]])
    b: np.ndarray
    labels: np.ndarray
    queries: np.ndarray  # retrieval: sentence ids of the label-1 pairs' sentence1 (≠ sentence2)
    targets: np.ndarray


def tokenize(tok, texts, max_length: int) -> list[dict]:
    enc = tok(list(texts), truncation=True, max_length=max_length)
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
    return [{k: enc[k][i] for k in keys} for i in range(len(texts))]


def make_evalset(tok, examples, max_length: int) -> EvalSet:
    ids: dict[str, int] = {}
    for ex in examples:
        for t in ex.texts:
            ids.setdefault(t, len(ids))
    a = np.array([ids[ex.texts[0]] for ex in examples])
    b = np.array([ids[ex.texts[1]] for ex in examples])
    labels = np.array([ex.label for ex in examples], dtype=np.float64)
    q = (labels == 1) & (a != b)
    return EvalSet(tokenize(tok, list(ids), max_length), a, b, labels, a[q], b[q])


# -------------------------------------------------------------------------------------- metrics
def pair_metrics(bt: BiTask, scores, labels) -> dict[str, float]:
    s, y = np.asarray(scores, dtype=np.float64), np.asarray(labels, dtype=np.float64)
    if bt.retrieval:       # binary labels: ROC-AUC (NaN when the set has one class only)
        return {"roc_auc": float(roc_auc_score(y, s)) if len(set(y)) == 2 else math.nan}
    return {"spearman": float(spearmanr(s, y).statistic), "pearson": float(pearsonr(s, y).statistic)}


def exact_search(E: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """(nq, k) ids of the k rows of E with the highest cosine to each query row, the query excluded."""
    S = E[queries] @ E.T
    S[np.arange(len(queries)), queries] = -np.inf
    return np.argsort(-S, axis=1, kind="stable")[:, :k]


def hnsw_search(E: np.ndarray, queries: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """As :func:`exact_search`, through an HNSW graph (hnswlib, inner product on unit vectors)."""
    import hnswlib
    index = hnswlib.Index(space="ip", dim=E.shape[1])
    index.init_index(max_elements=len(E), ef_construction=HNSW["ef_construction"], M=HNSW["M"], random_seed=seed)
    index.add_items(E, np.arange(len(E)), num_threads=1)
    index.set_ef(max(HNSW["ef"], k + 1))
    found, _ = index.knn_query(E[queries], k=k + 1, num_threads=1)
    return np.array([[j for j in row if j != q][:k] for row, q in zip(found, queries)])


def hnsw_available() -> bool:
    try:
        import hnswlib  # noqa: F401
        return True
    except ImportError:
        return False


def rank_metrics(top: np.ndarray, targets: np.ndarray, k: int, prefix: str = "") -> dict[str, float]:
    """recall@1, recall@k and MRR@k of ``targets`` in the ranked lists ``top`` (nq, ≤ k)."""
    hit = top == targets[:, None]
    rank = np.where(hit.any(1), hit.argmax(1) + 1, np.inf)
    return {f"{prefix}recall@1": float(np.mean(rank <= 1)), f"{prefix}recall@{k}": float(np.mean(rank <= k)),
            f"{prefix}mrr@{k}": float(np.mean(1.0 / rank))}


def retrieval_metrics(E: np.ndarray, queries, targets, index: str, k: int = RETRIEVAL_K) -> dict[str, float]:
    """Retrieval of each query's target among all rows of E (query excluded): ANN and exact, and their
    mean top-k overlap.  Named @k even where E has fewer than k + 1 rows (the lists are then shorter)."""
    queries, targets = np.asarray(queries, dtype=np.int64), np.asarray(targets, dtype=np.int64)
    if len(queries) == 0:      # no paraphrase pair (e.g. a tiny split): undefined
        names = [f"{p}{m}" for p in ("", "exact_") for m in ("recall@1", f"recall@{k}", f"mrr@{k}")]
        return dict.fromkeys([*names, f"ann_overlap@{k}"], math.nan)
    kk = min(k, len(E) - 1)
    exact = exact_search(E, queries, kk)
    ann = hnsw_search(E, queries, kk) if index == "hnsw" else exact
    overlap = np.mean([len(set(x) & set(y)) / kk for x, y in zip(ann, exact)])
    return {**rank_metrics(ann, targets, k), **rank_metrics(exact, targets, k, "exact_"),
            f"ann_overlap@{k}": float(overlap)}


# ---------------------------------------------------------------------------------------- loops
@torch.no_grad()
def embed(model, tok, rows, device, precision: str = "fp32", batch_size: int = 64) -> np.ndarray:
    """(n, d) float32 unit embeddings of tokenised sentences (batched by length)."""
    model.eval()
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]["input_ids"]))
    out = None
    for s in range(0, len(order), batch_size):
        idx = order[s:s + batch_size]
        batch = {k: v.to(device) for k, v in tok.pad([rows[i] for i in idx], return_tensors="pt").items()}
        with autocast(precision, device):
            e = model(**batch).float().cpu().numpy()
        out = np.empty((len(rows), e.shape[1]), dtype=np.float32) if out is None else out
        out[idx] = e
    model.train()
    return out


def evaluate(model, tok, es: EvalSet, bt: BiTask, device, precision: str, index: str, batch_size: int = 64):
    """(metrics, embeddings of the distinct sentences)."""
    E = embed(model, tok, es.rows, device, precision, batch_size)
    m = pair_metrics(bt, np.sum(E[es.a] * E[es.b], axis=1), es.labels)
    if bt.retrieval:
        m |= retrieval_metrics(E, es.queries, es.targets, index)
    return m, E


@dataclasses.dataclass
class BiData:
    """A bi-encoder run's encoded data: both sides of each training pair tokenised, their targets, the dev and
    validation evaluation sets, and the retrieval index in use."""
    tok: object
    task: BiTask
    a: list
    b: list
    targets: torch.Tensor
    dev: EvalSet
    val: EvalSet | None
    index: str
    n_dev: int
    device: torch.device

    n_train = property(lambda self: len(self.a))
    lengths = property(lambda self: [len(x["input_ids"]) + len(y["input_ids"]) for x, y in zip(self.a, self.b)])

    def batch(self, idx, labels: bool = True) -> dict:
        """Both sides of the pairs ``idx`` as ONE padded batch of 2B sentences (mean pooling ignores padding)."""
        feats = self.tok.pad([self.a[i] for i in idx] + [self.b[i] for i in idx], return_tensors="pt")
        return ({k: v.to(self.device) for k, v in feats.items()}
                | ({"labels": self.targets[idx].to(self.device)} if labels else {}))


def pair_loss(model, batch, precision: str, device) -> torch.Tensor:
    """The cosine-similarity loss of a batch of pairs (:func:`cosine_mse`)."""
    with autocast(precision, device):
        u, v = model(**{k: t for k, t in batch.items() if k != "labels"}).split(len(batch["labels"]))
    return cosine_mse(u, v, batch["labels"])


class BiEncoder:
    """The model is the preset's transformer → mean pooling → L2 normalisation (no head: LoRA trains only the
    adapters, ``full`` the whole transformer); the loss is cosine-MSE on the pair's label scaled to [0, 1]; an
    evaluation is the pair metrics (and retrieval on MRPC) of the dev or validation sentences' embeddings, which
    it also hands back, so that the log records how far training moved them (``embedding_shift``)."""
    name = "bi"

    def data_task(self, task):
        return TASKS[task.pair_task]

    def check(self, task, splits, source) -> None:
        for split, exs in splits.items():
            check_labels(task, exs, _where(source, TASKS[task.pair_task], split))

    def build(self, cfg, task, train_ex):
        return load_encoder(cfg["model"], cfg["seed"], train_texts=[t for ex in train_ex for t in ex.texts])

    def encode(self, tok, cfg, task, train_ex, dev_ex, val_ex, device) -> BiData:
        L = cfg["max_length"]
        return BiData(tok, task, tokenize(tok, [ex.texts[0] for ex in train_ex], L),
                      tokenize(tok, [ex.texts[1] for ex in train_ex], L),
                      torch.tensor([ex.label / task.label_scale for ex in train_ex], dtype=torch.float32),
                      make_evalset(tok, dev_ex, L), make_evalset(tok, val_ex, L) if val_ex else None,
                      "hnsw" if hnsw_available() else "exact", len(dev_ex), device)

    def keep_trainable(self, cfg):
        return ()

    def loss(self, model, batch, precision, device):
        return pair_loss(model, batch, precision, device)

    def stats_loss(self, precision, device):
        return lambda model, batch: pair_loss(model, batch, precision, device)

    def init_labels(self, needs) -> bool:
        return "grad" in needs

    def evaluate(self, model, data: BiData, split, device, precision, batch_size):
        return evaluate(model, data.tok, getattr(data, split), data.task, device, precision, data.index, batch_size)

    def task_log(self, task, data: BiData, precision) -> dict:
        return {"name": task.name, "family": "bi", "main_metric": task.main_metric, "metrics": list(task.metrics),
                "pair_task": task.pair_task, "loss": task.loss, "label_scale": task.label_scale,
                "pooling": "mean", "normalize": True, "precision": precision,
                "majority_baseline": {"roc_auc": 0.5} if task.retrieval else {},   # a constant score
                **({"retrieval_index": data.index, "retrieval_k": RETRIEVAL_K,
                    "hnsw": HNSW if data.index == "hnsw" else None} if task.retrieval else {})}

    def data_log(self, data: BiData) -> dict:
        return {"n_dev_sentences": len(data.dev.rows),
                **({"n_dev_queries": len(data.dev.queries)} if data.task.retrieval else {})}

    def extra_log(self, first, last) -> dict:
        # mean cosine between the step-0 and the last evaluation's unit embeddings of the distinct dev sentences
        return {"embedding_shift": float(np.mean(np.sum(first * last, axis=1)))}


# ------------------------------------------------------------------- drift from the pretrained space
STEP0_CHANGING = lora.init_names(changes_model=True)     # inits that add s·B₀A₀ on top of W


def _rebuild_encoder(cfg: dict, data_dir):
    """(encoder, tokenizer, dev examples) exactly as a run of ``cfg`` starts them (:func:`harness.steps.prepare`:
    seed, tokenizer texts), no adapters."""
    base = TASKS[get_task(cfg["task"]).pair_task]
    splits, _ = load_task_data(base, data_dir)
    train_ex = splits["train"]
    if cfg.get("val_fraction"):
        train_ex = split_validation(train_ex, base, cfg["val_fraction"])[0]
    if cfg["max_train_examples"]:
        train_ex = train_ex[:cfg["max_train_examples"]]
    seed_everything(cfg["seed"])
    model, tok = load_encoder(cfg["model"], cfg["seed"], train_texts=[t for ex in train_ex for t in ex.texts])
    return model, tok, splits["dev"]


def drift_from_pretrained(log_dir, out_path, data_dir=None, methods=(*STEP0_CHANGING, "random")) -> dict:
    """Mean cosine between each distinct dev sentence's pretrained embedding and (a) its step-0 embedding
    (the model as the init leaves it) and (b) its final one (pretrained W + the run's saved ΔW), per ok run of
    ``methods`` in ``log_dir``; fp32, no training.  A run's logged ``embedding_shift`` measures from *its*
    step-0 model, which for :data:`STEP0_CHANGING` is not the pretrained one; for zero-B inits (``random``)
    (b) recomputes that logged number, a check (bf16 evaluation in the run, fp16 factors here).
    Written atomically to ``out_path``; returned."""
    from .logs import read_logs, write_json_atomic
    t0, dev, out = time.time(), torch.device("cpu"), {}
    for lg in read_logs(log_dir):
        cfg = lg["config"]
        if cfg["method"] not in methods or not lg.get("factors_file"):
            continue
        if cfg["method"] in lora.DATA_INITS:
            raise UserError(f"{lg['run_id']}: data-aware inits need their statistics to rebuild step 0; "
                            f"valid methods: {', '.join(m for m in lora.ALL_INITS if m not in lora.DATA_INITS)}")
        model, tok, dev_ex = _rebuild_encoder(cfg, data_dir)
        rows = make_evalset(tok, dev_ex, cfg["max_length"]).rows
        E_pre = embed(model, tok, rows, dev)
        final = copy.deepcopy(model)                # the pretrained encoder, for W + ΔW below
        lora.add_lora(model, cfg["targets"], **adapter_kwargs(cfg))
        E0 = embed(model, tok, rows, dev)
        model = final
        with torch.no_grad():
            for name, (B, A) in lora.load_delta_factors(Path(log_dir) / lg["factors_file"]).items():
                model.get_submodule(name).weight.add_((B.double() @ A.double()).float())
        E1 = embed(model, tok, rows, dev)
        cos = lambda X: float(np.mean(np.sum(E_pre * X, axis=1)))    # noqa: E731  (rows are unit vectors)
        out[lg["run_id"]] = {"task": cfg["task"], "method": cfg["method"], "seed": cfg["seed"],
                             "step0_cos": cos(E0), "final_cos": cos(E1), "logged_shift": lg.get("embedding_shift"),
                             "n_sentences": len(rows)}
    result = {"provenance": {"log_dir": str(log_dir), "methods": list(methods), "precision": "fp32", "device": "cpu",
                             "threads": torch.get_num_threads(), "torch": torch.__version__,
                             "seconds": round(time.time() - t0, 1)},
              "runs": out}
    write_json_atomic(out_path, result)
    return result


def zero_shot(model_id: str, task: str = "bi-stsb", data_dir=None, max_length: int = 128,
              precision: str = "fp32") -> dict:
    """The pretrained encoder's dev metrics on a bi-encoder task (mean pooling, cosine), no training: the
    check that an installed model is the published one (compare with its published benchmark figure)."""
    t0, dev = time.time(), torch.device("cpu")
    bt = get_task(task)
    base = TASKS[bt.pair_task]
    splits, source = load_task_data(base, data_dir)
    model, tok = load_encoder(model_id, 0, train_texts=[t for ex in splits["train"] for t in ex.texts])
    es = make_evalset(tok, splits["dev"], max_length)
    metrics, _ = evaluate(model, tok, es, bt, dev, precision, "exact")
    return {"model": model_id, "task": bt.name, "split": "dev", "n_pairs": len(es.labels), "metrics": metrics,
            "max_length": max_length, "precision": precision, "seconds": round(time.time() - t0, 1),
            "data": source, "torch": torch.__version__, "threads": torch.get_num_threads()}


# Published STSBenchmark (test split) cosine Spearman of the two sentence embedders (MTEB leaderboard). GLUE's
# STS-B test labels are not public, so the check compares dev here: the two models' gap should match.
PUBLISHED_STSB_TEST = {"bundled:all-MiniLM-L6-v2": 0.8203, "bundled:all-mpnet-base-v2": 0.8342}


def zero_shot_file(out_path, data_dir=None) -> dict:
    """:func:`zero_shot` STS-B dev Spearman of every model in :data:`PUBLISHED_STSB_TEST`, beside the published figure."""
    from .logs import write_json_atomic
    res = {m: {**zero_shot(m, "bi-stsb", data_dir), "published_stsb_test_spearman": pub}
           for m, pub in PUBLISHED_STSB_TEST.items()}
    write_json_atomic(out_path, res)
    return res


if __name__ == "__main__":
    # python -m harness.biencoder drift       the drift file the book's bi-encoder chapter reads
    # python -m harness.biencoder zero-shot   the installed models' zero-shot STS-B check (chapter "At base size")
    import sys
    from .paths import repo_root, resolve
    glue = os.environ.get("GLUE_DIR") or str(repo_root().parent / "shared" / "glue")
    what = sys.argv[1] if len(sys.argv) > 1 else "drift"
    if what == "zero-shot":
        for m, r in zero_shot_file(resolve("logs/base_zero_shot.json"), glue).items():
            print(f"{m}: STS-B dev Spearman {r['metrics']['spearman']:.4f} (published, test: {r['published_stsb_test_spearman']})")
    elif what == "drift":
        res = drift_from_pretrained(resolve("logs/bi"), resolve("logs/bi_drift.json"), data_dir=glue)
        print(f"drift: {len(res['runs'])} runs in {res['provenance']['seconds']} s")
    else:
        sys.exit(f"unknown command {what!r}; valid: drift, zero-shot")
