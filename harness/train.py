"""The cross-encoder family (GLUE MRPC, RTE, CoLA: a sequence classifier on sentence pairs) and :func:`run`,
one config of any task family through :func:`harness.steps.run_loop`.
"""
from __future__ import annotations

import dataclasses
import os

import numpy as np
import torch

from .biencoder import BiEncoder
from .data import HUB_ID
from .models import load_model_and_tokenizer
from .steps import Prepared, autocast, init_batch_indices, run_loop
from .steps import prepare as prepare_family
from .tasks import compute_metrics, get_task, majority_baseline


def encode(tok, examples, max_length: int) -> list[dict]:
    texts = list(zip(*[ex.texts for ex in examples]))
    enc = tok(*texts, truncation=True, max_length=max_length)
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
    return [{**{k: enc[k][i] for k in keys}, "labels": ex.label} for i, ex in enumerate(examples)]

def collate(tok, rows: list[dict]) -> dict[str, torch.Tensor]:
    """Dynamic padding: pad to the longest row of this batch."""
    labels = [r["labels"] for r in rows]
    batch = tok.pad([{k: v for k, v in r.items() if k != "labels"} for r in rows], return_tensors="pt")
    batch["labels"] = torch.tensor(labels, dtype=torch.float32 if isinstance(labels[0], float) else torch.long)
    return dict(batch)

@torch.inference_mode()
def evaluate(model, tok, rows, task, device, batch_size: int = 64, precision: str = "fp32") -> dict[str, float]:
    """The task's metrics on ``rows``: batches of similar length (sorted), no autograd."""
    model.eval()
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]["input_ids"]))
    preds = np.empty(len(rows), dtype=np.float64 if task.labels is None else np.int64)
    for s in range(0, len(order), batch_size):
        idx = order[s:s + batch_size]
        batch = {k: v.to(device) for k, v in collate(tok, [rows[i] for i in idx]).items() if k != "labels"}
        with autocast(precision, device):
            logits = model(**batch).logits.float()
        preds[idx] = (logits.squeeze(-1) if task.labels is None else logits.argmax(-1)).cpu().numpy()
    model.train()
    return compute_metrics(task, preds, [r["labels"] for r in rows])


@dataclasses.dataclass
class CrossData:
    """A cross-encoder run's encoded splits (rows: token ids, mask, label) and how a batch is made."""
    tok: object
    task: object
    train: list
    dev: list
    val: list | None
    device: torch.device

    n_train = property(lambda self: len(self.train))
    n_dev = property(lambda self: len(self.dev))
    lengths = property(lambda self: [len(r["input_ids"]) for r in self.train])

    def batch(self, idx, labels: bool = True) -> dict:
        """The training rows ``idx``, padded to their longest, on the device."""
        return {k: v.to(self.device) for k, v in collate(self.tok, [self.train[i] for i in idx]).items()}


class CrossEncoder:
    """The model is the preset's sequence classifier; the loss its cross-entropy (MSE for a regression task);
    the head (``cfg["head"]``) trains beside the adapters; evaluation is the task's metrics on dev/validation."""
    name = "cross"

    def data_task(self, task):
        return task

    def check(self, task, splits, source) -> None:
        pass

    def build(self, cfg, task, train_ex):
        return load_model_and_tokenizer(cfg["model"], task.num_labels, cfg["seed"],
                                        train_texts=[t for ex in train_ex for t in ex.texts])

    def encode(self, tok, cfg, task, train_ex, dev_ex, val_ex, device) -> CrossData:
        L = cfg["max_length"]
        return CrossData(tok, task, encode(tok, train_ex, L), encode(tok, dev_ex, L),
                         encode(tok, val_ex, L) if val_ex is not None else None, device)

    def keep_trainable(self, cfg):
        return cfg["head"]

    def loss(self, model, batch, precision, device):
        with autocast(precision, device):
            return model(**batch).loss

    def stats_loss(self, precision, device):
        return None                 # lora.collect_layer_stats' default: the model's own loss, in fp32

    def init_labels(self, needs) -> bool:
        return True

    def evaluate(self, model, data: CrossData, split, device, precision, batch_size):
        return evaluate(model, data.tok, getattr(data, split), data.task, device, batch_size, precision), None

    def task_log(self, task, data: CrossData, precision) -> dict:
        return {"name": task.name, "main_metric": task.main_metric, "num_labels": task.num_labels,
                "majority_baseline": majority_baseline(task, [r["labels"] for r in data.dev])}

    def data_log(self, data) -> dict:
        return {}

    def extra_log(self, first, last) -> dict:
        return {}


FAMILIES = {"cross": CrossEncoder, "bi": BiEncoder}


def family_of(cfg: dict):
    """The family object of ``cfg``'s task."""
    return FAMILIES[get_task(cfg["task"]).family]()


def prepare(cfg: dict, data_dir: str | None = None, hub_id: str = HUB_ID, dev: torch.device | None = None) -> Prepared:
    """The model a run of ``cfg`` takes its first step from (:func:`harness.steps.prepare` for its family)."""
    return prepare_family(cfg, family_of(cfg), data_dir, hub_id, dev)


def run(cfg: dict, out_dir: str | os.PathLike = "logs/adhoc", data_dir: str | None = None,
        hub_id: str = HUB_ID, device: str | None = None, progress: bool = True, save_factors: bool = True,
        compact_factors: bool = False) -> dict:
    """Train and evaluate one config of any task family; write ``<out_dir>/<run_id>.{safetensors,json}``;
    return the log (:func:`harness.steps.run_loop`)."""
    return run_loop(cfg, family_of(cfg), out_dir, data_dir, hub_id, device, progress, save_factors, compact_factors)


def init_batches(rows: list[dict], tok, cfg: dict, device: torch.device):
    """The data-aware inits' batches of the cross-encoder rows (:func:`harness.steps.init_batch_indices`)."""
    for idx in init_batch_indices(len(rows), cfg):
        yield {k: v.to(device) for k, v in collate(tok, [rows[i] for i in idx]).items()}
