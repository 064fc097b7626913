"""The pretrained weights a run starts from, and the ΔW factors it ends with (numbers for the spectra).

* :func:`pretrained_weights`  the ORIGINAL W of a run's adapted layers, rebuilt as training builds the model
  (cached per model); :func:`grid_weights` the same for a grid, float64, in model order;
* :func:`w_subspaces`         W's top-/bottom-k singular subspaces (:func:`lora.spectra.top_singular_subspaces`),
  cached per model and layer;
* :func:`load_run_factors`    ΔW = B @ A relative to W from a factor file (:func:`lora.load_delta_factors`,
  the one home of that convention), with the final ``lora_A`` and a truncated update's kept energy;
* :func:`initial_A`           the ``lora_A`` a run starts from, rebuilt with :func:`lora.add_lora`.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import torch

from ..models import TINY

_W_CACHE: dict[tuple, dict] = {}
_WSUB_CACHE: dict[tuple, tuple] = {}


# MPNet names its projections q/k/v/o; the analysis speaks of them as BERT does.
_KIND = {"q": "query", "k": "key", "v": "value", "o": "output"}


def layer_pos(name: str) -> tuple[int, str]:
    """``bert.encoder.layer.3.attention.self.value`` → (3, "value"), ``mpnet.encoder.layer.3.attention.attn.v``
    → (3, "value"); ValueError without a ``.<i>.`` part."""
    m = re.search(r"\.(\d+)\.", name)
    if m is None:
        raise ValueError(f"layer name {name!r} has no '.layer.<i>.' part")
    leaf = name.rsplit(".", 1)[-1]
    return int(m.group(1)), _KIND.get(leaf, leaf)


def layer_label(name: str) -> str:
    """``bert.encoder.layer.3.attention.self.value`` → "v3"."""
    i, kind = layer_pos(name)
    return f"{kind[0]}{i}"


def factor_path(log: dict, log_dir) -> Path | None:
    """The run's factor file (``<run_id>.safetensors`` beside its log), None when it has none."""
    f = log.get("factors_file")
    if not f:
        return None
    p = Path(log_dir) / f
    return p if p.is_file() else None


def weights_key(log: dict) -> tuple:
    c = log["config"]
    if c["model"] in TINY:   # weights depend on the seed and the vocabulary (the texts)
        data = log.get("data") or {}
        src = json.dumps({k: data.get(k) for k in ("kind", "dir", "id", "config", "files", "fingerprints")},
                         sort_keys=True)
        return (c["model"], c["seed"], c["task"], c.get("max_train_examples"), src)
    return (c["model"],)               # a pretrained checkpoint: the encoder does not depend on the seed


def adapted_names(model, cfg: dict) -> list[str]:
    """The Linear layers train.py adapts: ``targets`` (the model's query/value layers for full fine-tuning)."""
    from lora.core import _matches

    from ..models import qv_layers
    if not cfg.get("targets"):
        return qv_layers(model)
    return [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and _matches(n, cfg["targets"])]


def pretrained_weights(log: dict, layers=None, log_dir=None) -> dict:
    """{layer_name: W} — the ORIGINAL pretrained weight (float32, CPU) of every adapted layer of the run,
    rebuilt exactly as :func:`harness.train.run` builds the base model: data → ``seed_everything(seed)``
    → ``load_model_and_tokenizer``.  Layers: ``layers``, else the names in the run's factor file (when
    ``log_dir`` is given), else the config's ``targets`` (query/value for full).  For ``tiny-roberta``
    this reads the run's training texts (its tokenizer, hence its vocabulary and random init, depend
    on them).  Cached per model (and per seed and data for tiny-roberta, whose weights depend on them)."""
    key = weights_key(log)
    if layers is None and log_dir is not None and factor_path(log, log_dir) is not None:
        import lora
        layers = sorted(lora.read_lora_config(factor_path(log, log_dir)))
    cached = _W_CACHE.get(key, {})
    if layers is not None and all(n in cached for n in layers):
        return {n: cached[n] for n in layers}
    from ..models import load_model_and_tokenizer
    from ..tasks import get_task
    from ..steps import seed_everything

    c = log["config"]
    task = get_task(c["task"])
    texts = None
    if c["model"] in TINY:
        from ..data import load_task_data
        data = log.get("data") or {}
        if data.get("kind") == "hub":
            splits, _ = load_task_data(task, None, data.get("id"))
        else:
            splits, _ = load_task_data(task, data.get("dir"))
        train_ex = splits["train"]
        if c.get("max_train_examples"):
            train_ex = train_ex[:c["max_train_examples"]]
        texts = [t for ex in train_ex for t in ex.texts]
    import random
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):   # leave the caller's RNG states alone
        seed_everything(c["seed"])
        model, _ = load_model_and_tokenizer(c["model"], task.num_labels, c["seed"], train_texts=texts)
    random.setstate(py_state)
    np.random.set_state(np_state)
    if layers is None:
        layers = adapted_names(model, c)
    ws = {n: model.get_submodule(n).weight.detach().float().cpu().clone() for n in layers}
    del model
    _W_CACHE[key] = {**cached, **ws}
    return ws


def w_subspaces(key: tuple | None, layer: str, W, k: int, which: str) -> tuple:
    """(U_k, V_k) of :func:`lora.spectra.top_singular_subspaces` (W's top or bottom k singular vectors),
    cached per model (``key``: :func:`weights_key` of the run; None: not cached) and layer."""
    from lora import spectra as sp
    ck = (key, layer, k, which)
    if key is None:
        return sp.top_singular_subspaces(W, k, which)
    if ck not in _WSUB_CACHE:
        _WSUB_CACHE[ck] = sp.top_singular_subspaces(W, k, which)
    return _WSUB_CACHE[ck]


def grid_weights(log_dir, names=None) -> dict[str, torch.Tensor]:
    """{layer: W (float64)} of the model the runs in ``log_dir`` start from (:func:`pretrained_weights` of
    its first ok log), in model order; ``names`` default to the adapted q/v layers."""
    from .runs import load_logs
    log = load_logs(log_dir)[0]
    return {n: W.double() for n, W in sorted(pretrained_weights(log, names).items(), key=lambda kv: layer_pos(kv[0]))}


def load_run_factors(path) -> dict[str, dict]:
    """{layer: {"B", "A", "A_final", "energy_kept"}} from a factor file: ΔW = B @ A relative to the
    pretrained W (:func:`lora.load_delta_factors`, float64), the final ``lora_A`` (r×in) when the file
    has it (LoRA runs; None for full fine-tuning), and the kept energy fraction of a truncated
    full-fine-tuning update (None otherwise)."""
    from safetensors.torch import load_file

    from lora.io import load_delta_factors, read_lora_config
    cfg = read_lora_config(path)
    tensors = load_file(str(path))
    out = {}
    for name, (B, A) in load_delta_factors(path).items():
        a = tensors.get(f"{name}.lora_A") if cfg[name].get("format") == "delta_svd" else None
        out[name] = dict(B=B.double(), A=A.double(), A_final=None if a is None else a.double(),
                         energy_kept=cfg[name].get("energy_kept"))
    return out


def initial_A(weights: dict, method: str, rank: int, seed: int, alpha: float = 16.0) -> dict[str, torch.Tensor]:
    """{layer: A₀} — the ``lora_A`` a run starts from, rebuilt with :func:`lora.add_lora` on stand-in
    Linear layers holding ``weights`` (same names, same order, same seed: the per-layer generator
    draws happen in the order train.py adapts the layers, query before value, layer by layer)."""
    from torch import nn

    import lora
    root = nn.Module()
    for name in sorted(weights, key=layer_pos):
        parent = root
        parts = name.split(".")
        for p in parts[:-1]:
            if not hasattr(parent, p):
                parent.add_module(p, nn.Module())
            parent = getattr(parent, p)
        W = weights[name]
        lin = nn.Linear(W.shape[1], W.shape[0], bias=False)
        with torch.no_grad():
            lin.weight.copy_(W.float())
        parent.add_module(parts[-1], lin)
    lora.add_lora(root, [n.rsplit(".", 1)[-1] for n in weights], rank=int(rank), alpha=alpha, init=method, seed=int(seed))
    return {n: m.lora_A0.detach().double() for n, m in lora.lora_layers(root).items()}

