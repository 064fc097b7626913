"""One run, for every task family: config → data → model (+ adapters) → AdamW with linear warmup/decay → log.

The loop (:func:`run_loop`) owns what every run shares: the data split, seeding, the adapters and the
data-aware inits' batches, the optimizer and schedule, the steps, the evaluations' schedule, the factors file
and the log.  A task family supplies the rest (:class:`Family`): its model, how examples become batches, its
loss and its evaluation; the cross-encoder family is :class:`harness.train.CrossEncoder`, the bi-encoder one
:class:`harness.biencoder.BiEncoder`, and :func:`harness.train.run` picks one by the task.

The log (``<out_dir>/<run_id>.json``) is written atomically, after the adapter factors
(``<run_id>.safetensors``); a log that exists is therefore complete.
"""
from __future__ import annotations

import dataclasses
import math
import os
import platform
import random
import resource
import time
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from tqdm import tqdm

import lora

from .config import adapter_kwargs, config_hash, run_id
from .data import HUB_ID, load_task_data, split_validation
from .logs import write_json_atomic
from .models import qv_layers
from .provenance import code_state, lock_state
from .tasks import UserError

PRECISIONS = ("fp32", "bf16")   # autocast's: bf16 matmuls (weights and optimizer stay fp32), or none
FULL_FT_DELTA_RANK = 32   # full fine-tuning: keep the top-32 SVD factors of each q/v ΔW for the analysis
INIT_SEED_OFFSET = 10_000  # the data-aware inits' batches: their own seeded shuffle, apart from training's order


class Family(Protocol):
    """What a task family supplies to :func:`run_loop`.  ``data`` is what :meth:`encode` returns: it has
    ``train``/``dev``/``val`` (``val`` None without a validation split), ``n_train``, ``n_dev``, ``lengths``
    (one per training example, for length grouping) and ``batch(idx, labels=True)`` (a batch on the device)."""

    def data_task(self, task): ...                          # the task whose files hold the examples
    def check(self, task, splits: dict, source: dict) -> None: ...     # one-line errors for bad examples
    def build(self, cfg: dict, task, train_ex): ...         # (model, tokenizer), after the run's seeding
    def encode(self, tok, cfg: dict, task, train_ex, dev_ex, val_ex, device): ...
    def keep_trainable(self, cfg: dict): ...                # modules trained besides the adapters
    def loss(self, model, batch: dict, precision: str, device) -> torch.Tensor: ...
    def stats_loss(self, precision: str, device): ...      # loss_fn for lora.collect_layer_stats, or None
    def init_labels(self, needs) -> bool: ...               # do the init batches carry labels?
    def evaluate(self, model, data, split: str, device, precision: str, batch_size: int): ...   # (metrics, extra)
    def task_log(self, task, data, precision: str) -> dict: ...
    def data_log(self, data) -> dict: ...
    def extra_log(self, first, last) -> dict: ...           # from the first and the last evaluation's extra


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)

def train_batches(lengths: list[int], batch_size: int, generator: torch.Generator, group_by_length: bool):
    """Indices of one epoch's batches.  ``group_by_length``: shuffle, cut into mega-batches of
    50 batches, sort each by length (less padding, as HF Trainer's ``group_by_length``)."""
    order = torch.randperm(len(lengths), generator=generator).tolist()
    if group_by_length:
        mega = 50 * batch_size
        order = [i for s in range(0, len(order), mega)
                 for i in sorted(order[s:s + mega], key=lambda i: -lengths[i])]
    batches = [order[s:s + batch_size] for s in range(0, len(order), batch_size)]
    if group_by_length:   # keep the long batches from all landing at the start of each mega-batch
        perm = torch.randperm(len(batches), generator=generator).tolist()
        batches = [batches[i] for i in perm]
    return batches

def autocast(precision: str, device: torch.device):
    """The forward/backward's precision: ``"bf16"`` autocasts matmuls to bfloat16 (weights, gradients
    and optimizer state stay float32); ``"fp32"`` leaves everything in float32."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=precision == "bf16")

def eval_steps(steps_per_epoch: int, epochs: int, evals_per_epoch: int) -> set[int]:
    """Steps after which the dev set is evaluated: step 0 (the init), then evenly within each epoch."""
    k = max(1, min(evals_per_epoch, steps_per_epoch))
    return {0} | {e * steps_per_epoch + round(j * steps_per_epoch / k) for e in range(epochs) for j in range(1, k + 1)}

def linear_schedule(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step) / max(1, total - warmup))


@dataclasses.dataclass
class Prepared:
    """What a run trains, before its first step: the model (adapters added, on the device, in train mode),
    its tokenizer, the family's encoded splits, where the data came from, and for full fine-tuning the original
    q/v weights (the analysis's ΔW) or for a data-aware init what its statistics cost."""
    task: object
    family: object
    model: torch.nn.Module
    tok: object
    data: object
    source: dict
    val_info: dict | None
    originals: dict
    init_info: dict | None

    @property
    def train_rows(self):
        return self.data.train

    @property
    def dev_rows(self):
        return self.data.dev

    @property
    def val_rows(self):
        return self.data.val


def prepare(cfg: dict, family: Family, data_dir: str | None = None, hub_id: str = HUB_ID,
            dev: torch.device | None = None) -> Prepared:
    """Data → model (+ adapters, initialised as the config says) for ``cfg``, exactly as :func:`run_loop`
    starts: the same seeding, split and init, so the model is the one a run of ``cfg`` takes its first step from."""
    from .tasks import get_task
    dev = dev or torch.device("cpu")
    task = get_task(cfg["task"])
    source_task = family.data_task(task)
    splits, source = load_task_data(source_task, data_dir, hub_id)
    family.check(task, splits, source)
    train_ex, dev_ex, val_ex, val_info = splits["train"], splits["dev"], None, None
    if cfg.get("val_fraction"):        # protocol v2: choices are made on this split; dev is only reported
        train_ex, val_ex, val_info = split_validation(train_ex, source_task, cfg["val_fraction"])
    if cfg["max_train_examples"]:
        train_ex = train_ex[:cfg["max_train_examples"]]
    seed_everything(cfg["seed"])
    model, tok = family.build(cfg, task, train_ex)
    data = family.encode(tok, cfg, task, train_ex, dev_ex, val_ex, dev)
    originals, init_info = {}, None
    if cfg["method"] == "full":
        originals = full_ft_originals(model)
    else:
        stats = None
        if cfg["method"] in lora.DATA_INITS:   # data-aware init: statistics from training batches only
            t_init, needs = time.time(), lora.DATA_INITS[cfg["method"]]
            picks = init_batch_indices(data.n_train, cfg)
            batches = [data.batch(idx, labels=family.init_labels(needs)) for idx in picks]
            stats = lora.collect_layer_stats(model.to(dev), cfg["targets"], batches, needs=needs,
                                             loss_fn=family.stats_loss(cfg.get("precision") or "fp32", dev))
            model.cpu()
            stats = {n: _to_cpu(st) for n, st in stats.items()}
            init_info = {"batches": len(batches), "examples": sum(len(idx) for idx in picks),
                         "seconds": round(time.time() - t_init, 3), "split": "train"}
        lora.add_lora(model, cfg["targets"], keep_trainable=family.keep_trainable(cfg), stats=stats,
                      **adapter_kwargs(cfg))
    model.to(dev).train()
    return Prepared(task, family, model, tok, data, source, val_info, originals, init_info)


def init_batch_indices(n_train: int, cfg: dict) -> list[list[int]]:
    """The first ``cfg["init_batches"]`` batches (example indices) of a seeded shuffle of the *training*
    examples (never validation or dev), for the data-aware inits; its own generator, so training's order is
    unchanged."""
    gen = torch.Generator().manual_seed(INIT_SEED_OFFSET + cfg["seed"])
    order = torch.randperm(n_train, generator=gen).tolist()
    bs = cfg["batch_size"]
    return [order[b * bs:(b + 1) * bs] for b in range(min(cfg["init_batches"], math.ceil(n_train / bs)))]


def run_loop(cfg: dict, family: Family, out_dir: str | os.PathLike = "logs/adhoc", data_dir: str | None = None,
             hub_id: str = HUB_ID, device: str | None = None, progress: bool = True, save_factors: bool = True,
             compact_factors: bool = False) -> dict:
    """Train and evaluate one config of ``family``; write ``<out_dir>/<run_id>.{safetensors,json}``; return the log.

    ``save_factors=False`` writes no factors file (learning-rate sweeps need only the metrics);
    ``compact_factors`` stores ΔW as its fp16 thin SVD (:func:`lora.save_delta_svd`, ~4× smaller)."""
    t0 = time.time()
    rid = run_id(cfg)
    out = Path(out_dir)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    precision = cfg.get("precision") or "fp32"
    if precision not in PRECISIONS:     # configs are validated; a dict built by hand may not be
        raise UserError(f"unknown precision {precision!r}; valid: {', '.join(PRECISIONS)}")
    prep = prepare(cfg, family, data_dir, hub_id, dev)
    out.mkdir(parents=True, exist_ok=True)
    task, model, data = prep.task, prep.model, prep.data

    params, optimizer = make_optimizer(model, cfg, dev)
    steps_per_epoch = math.ceil(data.n_train / cfg["batch_size"])
    total = steps_per_epoch * cfg["epochs"]
    warmup = max(1, round(cfg["warmup_ratio"] * total))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: linear_schedule(s, warmup, total))
    when = eval_steps(steps_per_epoch, cfg["epochs"], cfg["evals_per_epoch"])
    eval_bs = 256 if dev.type == "cuda" else 64
    history = {"train_loss": [], "evals": []}
    extra = {}            # what the first and the last evaluation hand back besides metrics (bi: embeddings)

    def evaluation(step: int) -> None:
        """Dev metrics at the top level, validation metrics under "val"."""
        m, extra["last"] = family.evaluate(model, data, "dev", dev, precision, eval_bs)
        extra.setdefault("first", extra["last"])
        if data.val is not None:
            m["val"] = family.evaluate(model, data, "val", dev, precision, eval_bs)[0]
        history["evals"].append({"step": step, "epoch": round(step / steps_per_epoch, 4), **m})

    gen = torch.Generator().manual_seed(cfg["seed"])
    evaluation(0)

    def loss_of(idx):
        loss = family.loss(model, data.batch(idx), precision, dev)
        return loss + init_pull_penalty(model, cfg["init_pull"]) if cfg.get("init_pull") else loss

    def on_eval(step):
        evaluation(step)
        return {task.main_metric: f"{history['evals'][-1][task.main_metric]:.3f}"}

    bar = tqdm(total=total, desc=rid, disable=not progress, mininterval=5, dynamic_ncols=True)
    status, reason, step = train_steps(
        loss_of, lambda: train_batches(data.lengths, cfg["batch_size"], gen, cfg["group_by_length"]),
        cfg["epochs"], optimizer, scheduler, when, on_eval, history, bar)
    bar.close()

    factors_file = out / f"{rid}.safetensors"
    wrote = status == "ok" and save_factors
    if wrote:
        write_factors(model, cfg, prep.originals, factors_file, compact_factors)
    evals, main = history["evals"], task.main_metric
    finite = lambda e: e[main] if e[main] is not None and math.isfinite(e[main]) else -math.inf
    log = {
        "run_id": rid, "status": status, "reason": reason, "config": cfg, "config_hash": config_hash(cfg),
        "task": family.task_log(task, data, precision),
        "data": {**prep.source, "n_train": data.n_train, "n_dev": data.n_dev, **family.data_log(data),
                 **({"validation": prep.val_info} if prep.val_info else {})},
        "steps": step, "steps_per_epoch": steps_per_epoch,
        "history": history,
        "final": dict(evals[-1]),
        "best": max(evals, key=finite),
        **family.extra_log(extra["first"], extra["last"]),
        "factors_file": factors_file.name if wrote else None,
    }
    return finish_log(log, out, t0, dev, params, model, prep.init_info)


def write_factors(model, cfg: dict, originals: dict, path: Path, compact: bool) -> None:
    """The adapters' factors (``compact``: ΔW's fp16 thin SVD), or the top SVD factors of a full fine-tuning ΔW."""
    if cfg["method"] == "full":
        deltas = full_ft_delta_factors(model, originals, FULL_FT_DELTA_RANK)
        factors = {n: (B, A) for n, (B, A, _) in deltas.items()}
        info = {n: {"energy_kept": e} for n, (_, _, e) in deltas.items()}
        (lora.save_delta_svd if compact else lora.save_factors)(path, factors, init="full", info=info)
    elif compact:
        lora.save_delta_svd(path, model.cpu())
    else:
        lora.save_lora(model.cpu(), path)


def full_ft_delta_factors(model, originals: dict[str, torch.Tensor], rank: int):
    """Top-``rank`` SVD factors of W_finetuned − W for the layers in ``originals`` (as B_eff, A_eff)."""
    out = {}
    for name, W0 in originals.items():
        dW = model.get_submodule(name).weight.detach().cpu().double() - W0.double()
        U, S, Vh = torch.linalg.svd(dW, full_matrices=False)
        out[name] = ((U[:, :rank] * S[:rank]).float(), Vh[:rank].float(), float((S[:rank] ** 2).sum() / (S ** 2).sum().clamp_min(1e-300)))
    return out

def full_ft_originals(model) -> dict[str, torch.Tensor]:
    """The pretrained weights whose full fine-tuning update is kept for the analysis: the model's query and
    value layers (:func:`harness.models.qv_layers`: BERT's query/value, MPNet's q/v), as the adapters target."""
    return {n: model.get_submodule(n).weight.detach().clone() for n in qv_layers(model)}

def init_pull_penalty(model, a: float) -> torch.Tensor:
    """The seed project's pull toward the init, a·Σ‖B − B₀‖²_F over the adapted layers (B₀: the init's B).
    Its Hessian in B is 2a·I: it adds 2a to every eigenvalue of the loss Hessian with respect to B."""
    return a * sum(((m.lora_B - m.lora_B0) ** 2).sum() for m in lora.lora_layers(model).values())

def finish_log(log: dict, out: Path, t0: float, dev: torch.device, params, model, init_info: dict | None) -> dict:
    """Complete a run log with what every run kind records (parameter counts, wall time, peak memory,
    environment, finish time, the data-aware init's cost) and write it atomically, last; return it."""
    log.update({
        "params": {"trainable": sum(p.numel() for _, p in params), "total": sum(p.numel() for p in model.parameters())},
        "wall_time_s": round(time.time() - t0, 2),
        "peak_memory_bytes": (torch.cuda.max_memory_allocated(dev) if dev.type == "cuda"
                              else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024),
        "env": environment(dev),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    })
    if init_info:
        log["init"] = init_info
    write_json_atomic(out / f"{log['run_id']}.json", log)
    return log

def make_optimizer(model, cfg: dict, dev: torch.device):
    """(trainable (name, parameter) pairs, AdamW) with weight decay on all but biases and LayerNorms;
    fused into one kernel on a GPU (same math)."""
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    no_decay = lambda n: n.endswith("bias") or "LayerNorm" in n or "layer_norm" in n
    optimizer = torch.optim.AdamW([
        {"params": [p for n, p in params if not no_decay(n)], "weight_decay": cfg["weight_decay"]},
        {"params": [p for n, p in params if no_decay(n)], "weight_decay": 0.0}], lr=cfg["lr"],
        fused=dev.type == "cuda")
    return params, optimizer

def train_steps(loss_of, epoch_batches, epochs: int, optimizer, scheduler, when: set[int], on_eval, history: dict,
                bar) -> tuple[str, str | None, int]:
    """The optimisation loop every run kind shares: for each epoch's batches (``epoch_batches()`` → index
    lists), ``loss_of(idx)`` → backward → AdamW step → lr schedule; the loss of each step goes to
    ``history["train_loss"]``; after the steps in ``when``, ``on_eval(step)`` (which logs its evaluation and
    returns what the progress bar shows).  Stops at the first non-finite loss.  Returns (status, reason, steps)."""
    step = 0
    for _ in range(epochs):
        for idx in epoch_batches():
            loss = loss_of(idx)
            if not torch.isfinite(loss):
                return "failed", f"non-finite loss {loss.item()} at step {step + 1}", step
            loss.backward()
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            history["train_loss"].append(round(loss.item(), 6))
            bar.update(1)
            if step in when:
                bar.set_postfix({**on_eval(step), "loss": f"{loss.item():.3f}"})
    return "ok", None, step

def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what :mod:`platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()

def environment(device: torch.device) -> dict:
    """What made the run: versions (the lock's hash and any package installed off it), the commit, the hardware."""
    import transformers
    code = code_state()
    return dict(python=platform.python_version(), torch=torch.__version__, transformers=transformers.__version__,
                numpy=np.__version__, device=str(device), threads=torch.get_num_threads(),
                cpu=cpu_model(), host=platform.node(),
                gpu=torch.cuda.get_device_name(device) if device.type == "cuda" else None,
                git_commit=code["git_commit"], git_dirty=code["git_dirty"],
                model_dir=os.environ.get("HARNESS_BUNDLED_MODEL_DIR"), **lock_state())

def _to_cpu(obj):
    if dataclasses.is_dataclass(obj):
        return dataclasses.replace(obj, **{f.name: _to_cpu(getattr(obj, f.name)) for f in dataclasses.fields(obj)})
    return obj.cpu() if torch.is_tensor(obj) else obj
