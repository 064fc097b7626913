"""One run: config → data → model (+ adapters) → AdamW with linear warmup/decay → log.

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
import subprocess
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import lora

from .config import adapter_kwargs, config_hash, run_id
from .data import HUB_ID, load_task_data, split_validation
from .logs import write_json_atomic
from .models import load_model_and_tokenizer, qv_layers
from .tasks import compute_metrics, get_task, majority_baseline

FULL_FT_DELTA_RANK = 32   # full fine-tuning: keep the top-32 SVD factors of each q/v ΔW for the analysis


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


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


def eval_steps(steps_per_epoch: int, epochs: int, evals_per_epoch: int) -> set[int]:
    """Steps after which the dev set is evaluated: step 0 (the init), then evenly within each epoch."""
    k = max(1, min(evals_per_epoch, steps_per_epoch))
    return {0} | {e * steps_per_epoch + round(j * steps_per_epoch / k) for e in range(epochs) for j in range(1, k + 1)}


def linear_schedule(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step) / max(1, total - warmup))


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
    import transformers
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "--verify", "-q", "HEAD"], cwd=root, capture_output=True,
                              text=True, timeout=10)
        commit = head.stdout.strip() if head.returncode == 0 else None
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "lora", "harness"],
                                    cwd=root, capture_output=True, text=True, timeout=10).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        commit, dirty = None, None
    if commit is None and os.environ.get("HARNESS_GIT_COMMIT"):   # a copy of the tree without .git (GPU machine)
        commit, dirty = os.environ["HARNESS_GIT_COMMIT"], os.environ.get("HARNESS_GIT_DIRTY") == "1"
    return dict(python=platform.python_version(), torch=torch.__version__, transformers=transformers.__version__,
                numpy=np.__version__, device=str(device), threads=torch.get_num_threads(),
                cpu=cpu_model(), host=platform.node(),
                gpu=torch.cuda.get_device_name(device) if device.type == "cuda" else None,
                git_commit=commit, git_dirty=dirty, model_dir=os.environ.get("HARNESS_BUNDLED_MODEL_DIR"))


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


@dataclasses.dataclass
class Prepared:
    """What a run trains, before its first step: the model (adapters added, on the device, in train mode),
    its tokenizer, the encoded splits, where the data came from, and for full fine-tuning the original q/v
    weights (the analysis's ΔW) or for a data-aware init what its statistics cost."""
    task: object
    model: torch.nn.Module
    tok: object
    train_rows: list
    dev_rows: list
    val_rows: list | None
    source: dict
    val_info: dict | None
    originals: dict
    init_info: dict | None


def prepare(cfg: dict, data_dir: str | None = None, hub_id: str = HUB_ID, dev: torch.device | None = None) -> Prepared:
    """Data → model (+ adapters, initialised as the config says) for ``cfg``, exactly as :func:`run` starts:
    the same seeding, split and init, so the model is the one a run of ``cfg`` takes its first step from."""
    dev = dev or torch.device("cpu")
    task = get_task(cfg["task"])
    splits, source = load_task_data(task, data_dir, hub_id)
    train_ex, dev_ex, val_ex, val_info = splits["train"], splits["dev"], None, None
    if cfg.get("val_fraction"):        # protocol v2: choices are made on this split; dev is only reported
        train_ex, val_ex, val_info = split_validation(train_ex, task, cfg["val_fraction"])
    if cfg["max_train_examples"]:
        train_ex = train_ex[:cfg["max_train_examples"]]
    seed_everything(cfg["seed"])
    model, tok = load_model_and_tokenizer(cfg["model"], task.num_labels, cfg["seed"],
                                          train_texts=[t for ex in train_ex for t in ex.texts])
    train_rows, dev_rows = encode(tok, train_ex, cfg["max_length"]), encode(tok, dev_ex, cfg["max_length"])
    val_rows = encode(tok, val_ex, cfg["max_length"]) if val_ex is not None else None
    originals, init_info = {}, None
    if cfg["method"] == "full":
        originals = full_ft_originals(model)
    else:
        stats = None
        if cfg["method"] in lora.DATA_INITS:   # data-aware init: statistics from training batches only
            t_init = time.time()
            stats = collect_init_stats(model, tok, train_rows, cfg, dev)
            init_info = {"batches": cfg["init_batches"], "examples": min(len(train_rows), cfg["init_batches"] *
                         cfg["batch_size"]), "seconds": round(time.time() - t_init, 3), "split": "train"}
        lora.add_lora(model, cfg["targets"], keep_trainable=cfg["head"], stats=stats, **adapter_kwargs(cfg))
    model.to(dev).train()
    return Prepared(task, model, tok, train_rows, dev_rows, val_rows, source, val_info, originals, init_info)


def init_pull_penalty(model, a: float) -> torch.Tensor:
    """The seed project's pull toward the init, a·Σ‖B − B₀‖²_F over the adapted layers (B₀: the init's B).
    Its Hessian in B is 2a·I: it adds 2a to every eigenvalue of the loss Hessian with respect to B."""
    return a * sum(((m.lora_B - m.lora_B0) ** 2).sum() for m in lora.lora_layers(model).values())


def run(cfg: dict, out_dir: str | os.PathLike = "logs/adhoc", data_dir: str | None = None,
        hub_id: str = HUB_ID, device: str | None = None, progress: bool = True, save_factors: bool = True,
        compact_factors: bool = False) -> dict:
    """Train and evaluate one config; write ``<out_dir>/<run_id>.{safetensors,json}``; return the log.

    ``save_factors=False`` writes no factors file (learning-rate sweeps need only the metrics);
    ``compact_factors`` stores ΔW as its fp16 thin SVD (:func:`lora.save_delta_svd`, ~4× smaller)."""
    if get_task(cfg["task"]).family == "bi":   # sentence-embedding tasks: harness/biencoder.py
        from .biencoder import run as run_bi
        return run_bi(cfg, out_dir, data_dir, hub_id, device, progress, save_factors, compact_factors)
    t0 = time.time()
    rid = run_id(cfg)
    out = Path(out_dir)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    precision = cfg.get("precision") or "fp32"
    out.mkdir(parents=True, exist_ok=True)
    prep = prepare(cfg, data_dir, hub_id, dev)
    task, model, tok, source, init_info = prep.task, prep.model, prep.tok, prep.source, prep.init_info
    train_rows, dev_rows, val_rows, val_info = prep.train_rows, prep.dev_rows, prep.val_rows, prep.val_info

    params, optimizer = make_optimizer(model, cfg, dev)
    steps_per_epoch = math.ceil(len(train_rows) / cfg["batch_size"])
    total = steps_per_epoch * cfg["epochs"]
    warmup = max(1, round(cfg["warmup_ratio"] * total))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: linear_schedule(s, warmup, total))
    when = eval_steps(steps_per_epoch, cfg["epochs"], cfg["evals_per_epoch"])
    eval_bs = 256 if dev.type == "cuda" else 64

    def evaluation(step: int) -> dict:
        e = {"step": step, "epoch": round(step / steps_per_epoch, 4),
             **evaluate(model, tok, dev_rows, task, dev, eval_bs, precision)}
        if val_rows is not None:
            e["val"] = evaluate(model, tok, val_rows, task, dev, eval_bs, precision)
        return e

    history = {"train_loss": [], "evals": []}
    gen = torch.Generator().manual_seed(cfg["seed"])
    lengths = [len(r["input_ids"]) for r in train_rows]
    history["evals"].append(evaluation(0))

    def loss_of(idx):
        batch = {k: v.to(dev) for k, v in collate(tok, [train_rows[i] for i in idx]).items()}
        with autocast(precision, dev):
            loss = model(**batch).loss
        return loss + init_pull_penalty(model, cfg["init_pull"]) if cfg.get("init_pull") else loss

    def on_eval(step):
        history["evals"].append(evaluation(step))
        return {task.main_metric: f"{history['evals'][-1][task.main_metric]:.3f}"}

    bar = tqdm(total=total, desc=rid, disable=not progress, mininterval=5, dynamic_ncols=True)
    status, reason, step = train_steps(
        loss_of, lambda: train_batches(lengths, cfg["batch_size"], gen, cfg["group_by_length"]), cfg["epochs"],
        optimizer, scheduler, when, on_eval, history, bar)
    bar.close()

    factors_file = out / f"{rid}.safetensors"
    write_factors = status == "ok" and save_factors
    if write_factors:
        if cfg["method"] == "full":
            deltas = full_ft_delta_factors(model, prep.originals, FULL_FT_DELTA_RANK)
            factors = {n: (B, A) for n, (B, A, _) in deltas.items()}
            info = {n: {"energy_kept": e} for n, (_, _, e) in deltas.items()}
            if compact_factors:
                lora.save_delta_svd(factors_file, factors, init="full", info=info)
            else:
                lora.save_factors(factors_file, factors, init="full", info=info)
        elif compact_factors:
            lora.save_delta_svd(factors_file, model.cpu())
        else:
            lora.save_lora(model.cpu(), factors_file)
    evals = history["evals"]
    main = task.main_metric
    log = {
        "run_id": rid, "status": status, "reason": reason, "config": cfg, "config_hash": config_hash(cfg),
        "task": {"name": task.name, "main_metric": main, "num_labels": task.num_labels,
                 "majority_baseline": majority_baseline(task, [r["labels"] for r in dev_rows])},
        "data": {**source, "n_train": len(train_rows), "n_dev": len(dev_rows),
                 **({"validation": val_info} if val_info else {})},
        "steps": step, "steps_per_epoch": steps_per_epoch,
        "history": history,
        "final": {k: v for k, v in evals[-1].items()} if evals else None,
        "best": max(evals, key=lambda e: e[main]) if evals else None,
        "factors_file": factors_file.name if write_factors else None,
    }
    return finish_log(log, out, t0, dev, params, model, init_info)


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


def init_batches(rows: list[dict], tok, cfg: dict, device: torch.device):
    """The first ``cfg["init_batches"]`` batches of a seeded shuffle of the *training* rows (never
    validation or dev), for the data-aware inits; its own generator, so training's order is unchanged."""
    gen = torch.Generator().manual_seed(10_000 + cfg["seed"])
    order = torch.randperm(len(rows), generator=gen).tolist()
    bs = cfg["batch_size"]
    for b in range(min(cfg["init_batches"], math.ceil(len(rows) / bs))):
        yield {k: v.to(device) for k, v in collate(tok, [rows[i] for i in order[b * bs:(b + 1) * bs]]).items()}


def collect_init_stats(model, tok, rows, cfg: dict, device: torch.device) -> dict:
    """Per-layer statistics a data-aware init needs (:data:`lora.DATA_INITS`), gathered on ``device``
    from training batches, returned on the CPU (where :func:`lora.add_lora` builds the factors)."""
    model.to(device)
    stats = lora.collect_layer_stats(model, cfg["targets"], init_batches(rows, tok, cfg, device),
                                     needs=lora.DATA_INITS[cfg["method"]])
    model.cpu()
    return {n: _to_cpu(st) for n, st in stats.items()}


def _to_cpu(obj):
    if dataclasses.is_dataclass(obj):
        return dataclasses.replace(obj, **{f.name: _to_cpu(getattr(obj, f.name)) for f in dataclasses.fields(obj)})
    return obj.cpu() if torch.is_tensor(obj) else obj
