"""GLUE tasks: where their text and labels live in each data source, and their metrics.

Adding a task is one ``Task(...)`` entry: the TSV layout of the classic GLUE files
(``<dir>/train.tsv``, ``<dir>/dev.tsv``) and the Hugging Face hub config of ``nyu-mll/glue``.
Labels are mapped to the hub's integer ids (e.g. RTE: entailment → 0).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


class UserError(Exception):
    """A bad input from the user: shown as one line, without a traceback."""


@dataclass(frozen=True)
class Task:
    name: str                      # our id, lower case: "mrpc"
    dir: str                       # classic GLUE directory: "MRPC"
    hub_config: str                # nyu-mll/glue config: "mrpc"
    hub_text: tuple[str, ...]      # hub text columns: ("sentence1", "sentence2")
    tsv_text: tuple                # TSV text columns: header names, or indices if no header
    tsv_label: str | int           # TSV label column: header name or index
    labels: tuple[str, ...] | None # TSV label strings in hub id order; None for regression
    metrics: tuple[str, ...]       # first one is the task's main metric
    has_header: bool = True
    dev_file: str = "dev.tsv"
    hub_dev_split: str = "validation"
    family = "cross"               # a cross-encoder classifier (harness/train.py); BiTask: "bi"

    @property
    def num_labels(self) -> int:
        return 1 if self.labels is None else len(self.labels)

    @property
    def main_metric(self) -> str:
        return self.metrics[0]

    def label_id(self, raw: str):
        if self.labels is None:
            return float(raw)
        return self.labels.index(raw)


TASKS: dict[str, Task] = {t.name: t for t in [
    Task("cola", "CoLA", "cola", ("sentence",), (3,), 1, ("0", "1"), ("mcc", "accuracy"), has_header=False),
    Task("sst2", "SST-2", "sst2", ("sentence",), ("sentence",), "label", ("0", "1"), ("accuracy",)),
    Task("mrpc", "MRPC", "mrpc", ("sentence1", "sentence2"), ("#1 String", "#2 String"), "Quality",
         ("0", "1"), ("accuracy", "f1")),
    Task("qqp", "QQP", "qqp", ("question1", "question2"), ("question1", "question2"), "is_duplicate",
         ("0", "1"), ("accuracy", "f1")),
    Task("stsb", "STS-B", "stsb", ("sentence1", "sentence2"), ("sentence1", "sentence2"), "score",
         None, ("pearson", "spearman")),
    Task("mnli", "MNLI", "mnli", ("premise", "hypothesis"), ("sentence1", "sentence2"), "gold_label",
         ("entailment", "neutral", "contradiction"), ("accuracy",), dev_file="dev_matched.tsv",
         hub_dev_split="validation_matched"),
    Task("qnli", "QNLI", "qnli", ("question", "sentence"), ("question", "sentence"), "label",
         ("entailment", "not_entailment"), ("accuracy",)),
    Task("rte", "RTE", "rte", ("sentence1", "sentence2"), ("sentence1", "sentence2"), "label",
         ("entailment", "not_entailment"), ("accuracy",)),
    Task("wnli", "WNLI", "wnli", ("sentence1", "sentence2"), ("sentence1", "sentence2"), "label",
         ("0", "1"), ("accuracy",)),
]}


@dataclass(frozen=True)
class BiTask:
    """A sentence-embedding (bi-encoder) task on a GLUE pair task's data (see harness/biencoder.py):
    each sentence is embedded on its own and a pair is scored by the cosine of its two embeddings."""
    name: str                          # "bi-mrpc"
    pair_task: str                     # the GLUE pair task whose files / hub config it reads: "mrpc"
    metrics: tuple[str, ...]           # first one is the main metric
    label_range: tuple[float, float]   # a label outside it (in a file) is a UserError
    label_scale: float = 1.0           # cosine target = label / label_scale (STS-B: score / 5 in [0, 1])
    retrieval: bool = False            # also paraphrase retrieval (label 1 pairs) on the dev sentences
    loss: str = "cosine_mse"
    family = "bi"
    num_labels = 1                     # no classifier; 1 for code that builds a model by task (report)

    @property
    def main_metric(self) -> str:
        return self.metrics[0]


BI_TASKS: dict[str, BiTask] = {t.name: t for t in [
    BiTask("bi-mrpc", "mrpc", ("roc_auc", "recall@1", "recall@10", "mrr@10", "exact_recall@1", "exact_recall@10",
                               "exact_mrr@10", "ann_overlap@10"), (0, 1), retrieval=True),
    BiTask("bi-stsb", "stsb", ("spearman", "pearson"), (0.0, 5.0), label_scale=5.0),
]}


STUDY_ORDER = ("mrpc", "rte", "cola")   # the order the study's tables and figures list tasks in


def order_tasks(names) -> list[str]:
    """Distinct task ids in display order: the study's tasks first, then the registry's, then unknown ones."""
    rank = {t: i for i, t in enumerate([*STUDY_ORDER, *(t for t in TASKS if t not in STUDY_ORDER)])}
    return sorted(dict.fromkeys(names), key=lambda t: (rank.get(t, len(rank)), t))


def task_label(name: str) -> str:
    """How a task is written in prose and figures: its GLUE name ("MRPC", "CoLA", "STS-B"); a bi-encoder
    task as its pair task's name with "(bi-encoder)": "MRPC (bi-encoder)"."""
    if name in BI_TASKS:
        return f"{TASKS[BI_TASKS[name].pair_task].dir} (bi-encoder)"
    return TASKS[name].dir if name in TASKS else name.upper()


def get_task(name: str) -> Task | BiTask:
    key = name.lower()
    if key in TASKS or key in BI_TASKS:
        return TASKS.get(key) or BI_TASKS[key]
    if key.startswith("bi-"):
        base = TASKS.get(key[3:])
        why = f" ({base.dir} has single sentences; a bi-encoder needs pairs)" if base and len(base.hub_text) < 2 else ""
        raise UserError(f"unknown bi-encoder task {name!r}{why}; valid: {', '.join(BI_TASKS)}")
    raise UserError(f"unknown task {name!r}; valid: {', '.join([*TASKS, *BI_TASKS])}")


def compute_metrics(task: Task, predictions, references) -> dict[str, float]:
    """The task's GLUE metrics (scikit-learn / scipy). ``predictions``: class ids or scores."""
    from scipy.stats import pearsonr, spearmanr          # imported here: every command imports this module,
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef   # and they take a second to load
    p, y = np.asarray(predictions), np.asarray(references)
    out = {}
    for m in task.metrics:
        if m == "accuracy":
            out[m] = accuracy_score(y, p)
        elif m == "f1":
            out[m] = f1_score(y, p, pos_label=1, zero_division=0.0)
        elif m == "mcc":
            out[m] = matthews_corrcoef(y, p)
        elif m == "pearson":
            out[m] = pearsonr(p, y).statistic
        elif m == "spearman":
            out[m] = spearmanr(p, y).statistic
    return {k: float(v) for k, v in out.items()}


def majority_baseline(task: Task, dev_labels) -> dict[str, float]:
    """Metrics of always predicting the most frequent dev label (the bar a run must beat)."""
    y = np.asarray(dev_labels)
    if task.labels is None:
        return {}
    majority = np.bincount(y.astype(int)).argmax()
    return compute_metrics(task, np.full_like(y, majority), y)
