"""Run configurations: presets, methods, the config hash and the run id.

A config is a flat dict of JSON values.  Everything that can change a run's result is in it
(and so in its hash); where the data came from is recorded in the log, not hashed, because
the local files and the hub give the same examples.
"""
from __future__ import annotations

import hashlib
import json

import numpy as np

from lora import DATA_INITS

from .presets import DATA_INIT_BATCHES, DEFAULTS, LEGACY, METHODS, PRESETS, UNHASHED  # noqa: F401  (the config API)
from .tasks import UserError, get_task
from .validate import validate_config, validate_identity

def make_config(task: str = "mrpc", method: str = "random", preset: str = "quick", **overrides) -> dict:
    """Resolve a full config: DEFAULTS < preset < preset's per-task values < explicit overrides."""
    validate_identity(task, method, preset)
    if preset not in PRESETS:
        raise UserError(f"unknown preset {preset!r}; valid: {', '.join(PRESETS)}")
    if method not in METHODS:
        raise UserError(f"unknown method {method!r}; valid: {', '.join(METHODS)}")
    task_name = get_task(task).name
    unknown = sorted(set(overrides) - set(DEFAULTS))
    if unknown:
        raise UserError(f"unknown config field(s) {', '.join(unknown)}; valid: {', '.join(sorted(DEFAULTS))}")
    p = {k: v for k, v in PRESETS[preset].items() if k not in ("tasks", "methods")}
    per_task = PRESETS[preset].get("tasks", {}).get(task_name, {})
    per_method = PRESETS[preset].get("methods", {}).get(method, {})
    cfg = {**DEFAULTS, **p, **per_task, **per_method}
    cfg["lr"] = {**DEFAULTS["lr"], **p.get("lr", {}), **per_task.get("lr", {})}["full" if method == "full" else "lora"]
    cfg.update({k: v for k, v in overrides.items() if v is not None})
    if method in DATA_INITS and cfg["init_batches"] is None:
        cfg["init_batches"] = DATA_INIT_BATCHES
    cfg.update(task=task_name, method=method, preset=preset)
    if method == "full":   # adapter fields do not apply; keep them out of the hash
        for k in ("rank", "alpha", "dropout", "targets", "svd_method", "niter", "init_batches"):
            cfg[k] = None
    cfg = validate_config(cfg)     # every field's type and range (harness/validate.py)
    if method == "full" and cfg["init_pull"]:
        raise UserError(f"invalid init_pull {cfg['init_pull']!r} for method 'full' (it pulls adapter factors toward "
                        f"their init; full fine-tuning has none); valid: 0")
    for k in ("lr", "alpha", "dropout", "warmup_ratio", "weight_decay", "init_pull"):
        if cfg[k] is not None:
            cfg[k] = float(cfg[k])
    return cfg


def adapter_kwargs(cfg: dict) -> dict:
    """The ``lora.add_lora`` keyword arguments a config sets (all but the model, targets and stats):
    rank, alpha, dropout, init, svd_method, niter, seed, rslora, dropout_mask (legacy values for configs
    logged before those fields existed)."""
    return dict(rank=cfg["rank"], alpha=cfg["alpha"], dropout=cfg["dropout"], init=cfg["method"],
                svd_method=cfg["svd_method"], niter=cfg["niter"], seed=cfg["seed"],
                rslora=bool(cfg.get("rslora")), dropout_mask=cfg.get("dropout_mask") or LEGACY["dropout_mask"])


def config_hash(cfg: dict) -> str:
    """sha256 of the canonical JSON of the hashed fields; the first 8 hex digits name the run."""
    canon = json.dumps({k: cfg[k] for k in sorted(cfg)
                        if k not in UNHASHED and not (k in LEGACY and cfg[k] == LEGACY[k])}, sort_keys=True)
    return hashlib.sha256(canon.encode()).hexdigest()


def run_id(cfg: dict) -> str:
    """A readable id that cannot collide: ``mrpc-svd-r8-lr5e-4-s0-1a2b3c4d``."""
    lr = np.format_float_scientific(cfg["lr"], trim="-", exp_digits=1)
    rank = "" if cfg["method"] == "full" else f"-r{cfg['rank']}"
    return f"{cfg['task']}-{cfg['method'].replace('_', '')}{rank}-lr{lr}-s{cfg['seed']}-{config_hash(cfg)[:8]}"
