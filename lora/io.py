"""Adapters on disk: our safetensors file (adapter + init factors) and the PEFT adapter format.

Our file holds ``lora_state_dict`` tensors and, in the safetensors metadata, ``lora_config``
(per-layer rank, alpha, scaling, init) so that ΔW can be analysed without the model:
``load_delta_factors(path)`` returns, per layer, (B_eff, A_eff) with ΔW = B_eff @ A_eff relative to
the original pretrained weight.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Iterable

import torch
from safetensors.torch import load_file, safe_open, save_file
from torch import nn

from .core import load_lora_state_dict, lora_config, lora_layers, lora_state_dict, relative_delta_factors


def delta_factors(model: nn.Module) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per adapted layer, (B_eff, A_eff) with B_eff @ A_eff = ΔW relative to the original W."""
    return {name: layer.delta_factors() for name, layer in lora_layers(model).items()}


def _atomic_save(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    os.replace(tmp, path)


def save_lora(model: nn.Module, path: str | os.PathLike, keep_trainable: Iterable[str] = (),
              extra: dict[str, torch.Tensor] | None = None) -> Path:
    """Write the adapter (and ``keep_trainable`` modules) atomically; ``extra`` tensors are stored
    as ``extra.<name>`` and ignored by :func:`load_lora`."""
    path = Path(path)
    tensors = lora_state_dict(model, keep_trainable) | {f"extra.{k}": v for k, v in (extra or {}).items()}
    _atomic_save(tensors, path, {"lora_config": json.dumps(lora_config(model))})
    return path


def save_factors(path: str | os.PathLike, factors: dict[str, tuple[torch.Tensor, torch.Tensor]],
                 init: str, info: dict[str, dict] | None = None) -> Path:
    """Write any per-layer ΔW = B_eff @ A_eff (e.g. a truncated SVD of a full fine-tuning update) in
    the :func:`save_lora` layout, so :func:`load_delta_factors` reads it like an adapter file."""
    path = Path(path)
    tensors, config = {}, {}
    for name, (B, A) in factors.items():
        tensors[f"{name}.lora_B"], tensors[f"{name}.lora_A"] = B.detach().float(), A.detach().float()
        config[name] = dict(rank=A.shape[0], alpha=float(A.shape[0]), scaling=1.0, init=init, residual=False,
                            freeze_A=False, **(info or {}).get(name, {}))
    _atomic_save(tensors, path, {"lora_config": json.dumps(config)})
    return path


def load_lora(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load a :func:`save_lora` file into a model adapted with the same targets and init."""
    state = {k: v for k, v in load_file(str(path)).items() if not k.startswith("extra.")}
    return load_lora_state_dict(model, state)


def read_lora_config(path: str | os.PathLike) -> dict[str, dict]:
    with safe_open(str(path), "pt") as f:
        return json.loads((f.metadata() or {}).get("lora_config", "{}"))


def load_delta_factors(path: str | os.PathLike) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """ΔW factors per layer from a :func:`save_lora` file, with no model needed.

    Same convention as :meth:`LoRALinear.delta_factors`: s·BA, or s·[B, −B₀]·[A; A₀] for residual inits.
    A file without our ``lora_config`` metadata (a PEFT ``adapter_model.safetensors``, whose scaling lives in
    the ``adapter_config.json`` beside it) is a ValueError: :func:`lora.inspect.read_adapter` reads those.
    """
    with safe_open(str(path), "pt") as f:
        meta, keys = f.metadata() or {}, list(f.keys())
    if "lora_config" not in meta:
        what = ("a PEFT adapter file (its r and lora_alpha are in adapter_config.json beside it); read it with "
                "lora.inspect.read_adapter(<its directory>)" if any(".lora_A." in k or k.endswith(".lora_embedding_A")
                                                                    for k in keys)
                else "not a file written by lora.save_lora, save_factors or save_delta_svd")
        raise ValueError(f"{path}: no lora_config metadata: {what}")
    config, tensors = json.loads(meta["lora_config"]), load_file(str(path))
    out = {}
    for name, c in config.items():
        if c.get("format") == "delta_svd":          # save_delta_svd: ΔW = U·diag(S)·Vᵀ
            U, S, V = (tensors[f"{name}.delta_{k}"].float() for k in "USV")
            out[name] = U * S, V.mT
            continue
        init = (tensors[f"{name}.lora_B0"], tensors[f"{name}.lora_A0"]) if c["residual"] else ()
        B, A = relative_delta_factors(tensors[f"{name}.lora_B"], tensors[f"{name}.lora_A"], *init)
        out[name] = c["scaling"] * B, A
    return out


# Model classes PEFT has a task type for, and the head modules PEFT then wraps and saves whole
# whatever the config says (its PeftModelForSequenceClassification etc. add them to modules_to_save).
# Matched on class names (duck typing: lora never imports transformers).
PEFT_TASK_HEADS = {
    "ForSequenceClassification": ("SEQ_CLS", ("classifier", "score")),
    "ForTokenClassification": ("TOKEN_CLS", ("classifier", "score")),
    "ForQuestionAnswering": ("QUESTION_ANS", ("qa_outputs",)),
}


def infer_task_type(model: nn.Module) -> str | None:
    """PEFT's task type for ``model`` from its class name or ``model.config.architectures``
    (``RobertaForSequenceClassification`` → ``"SEQ_CLS"``), else None."""
    names = [type(model).__name__, *(getattr(getattr(model, "config", None), "architectures", None) or [])]
    for suffix, (task_type, _) in PEFT_TASK_HEADS.items():
        if any(isinstance(n, str) and n.endswith(suffix) for n in names):
            return task_type
    return None


def trainable_modules(model: nn.Module) -> list[str]:
    """The fewest whole modules that hold every trainable parameter outside the adapters: for each
    such parameter, its highest ancestor (below the model itself) whose parameters all train, e.g.
    ``["classifier", "roberta.pooler"]`` for a head trained beside the adapters."""
    modules = dict(model.named_modules())
    out = []
    for pname, p in model.named_parameters():
        if not p.requires_grad or pname.rsplit(".", 1)[-1].startswith("lora_"):
            continue
        parts = pname.split(".")[:-1]
        owner = next((".".join(parts[:i]) for i in range(1, len(parts) + 1)
                      if all(q.requires_grad for q in modules[".".join(parts[:i])].parameters())), None)
        if owner is None:
            raise ValueError(f"trainable parameter {pname!r} is not in a module that trains whole (PEFT's "
                             f"modules_to_save saves whole modules); freeze it or train its whole module")
        if owner not in out:
            out.append(owner)
    return out


def _peft_wrapped(model: nn.Module, names: Iterable[str]) -> list[str]:
    """The modules PEFT wraps as modules_to_save for ``names``: it matches module names by suffix
    (``key.endswith(name)``); modules inside a wrapped one or inside an adapter are not separate."""
    names = tuple(n for n in names if n)
    adapters = tuple(lora_layers(model))
    out = []
    for mname, _ in model.named_modules():
        if not mname or not mname.endswith(names) or any(mname.startswith(w + ".") for w in out):
            continue
        if any(mname == a or mname.startswith(a + ".") for a in adapters):
            continue
        inside = [a for a in adapters if a.startswith(mname + ".")]
        if inside:
            raise ValueError(f"modules_to_save would save {mname!r} whole, but it holds LoRA layers "
                             f"({inside[0]!r}...); name only modules without adapters (e.g. the classifier head)")
        out.append(mname)
    return out


def export_peft(model: nn.Module, out_dir: str | os.PathLike, base_model_name_or_path: str | None = None,
                task_type: str | None = "auto", modules_to_save: Iterable[str] | None = None) -> Path:
    """Write ``adapter_config.json`` + ``adapter_model.safetensors`` readable by PEFT.

    ``peft.PeftModel.from_pretrained(original_base, out_dir)`` reproduces this model's outputs.
    PEFT applies W + s'·B'A' to the *original* W, so each layer exports ΔW relative to the original
    weight: for residual inits (``svd``: base = W − s·B₀A₀) the rank-2r pair B' = [B, −B₀],
    A' = [A; A₀], r' = 2r; otherwise B' = B, A' = A, r' = r.  The scaling is kept: lora_alpha' is
    s·r' (s·√r' with ``use_rslora`` for rsLoRA layers), so s' = s.  Dropout is exported as 0.

    ``task_type="auto"``: from the model's class name (``...ForSequenceClassification`` →
    ``SEQ_CLS``; see :data:`PEFT_TASK_HEADS`), None if unknown.  PEFT then also wraps the task's
    head (``classifier``/``score``) and expects its weights in the file, so they are saved.
    ``modules_to_save=None``: every module trained beside the adapters (:func:`trainable_modules`,
    e.g. the classifier and pooler), stored whole.  A trainable parameter outside the saved modules
    would be lost on reload: that is a ValueError.  ``base_model_name_or_path=None``: the model's
    ``name_or_path`` (a Hugging Face model's source), else a ValueError.
    """
    layers = lora_layers(model)
    if not layers:
        raise ValueError("model has no LoRA adapters to export")
    if any(m.merged for m in layers.values()):
        raise ValueError("unmerge_lora(model) before exporting: PEFT expects unmerged factors")
    if base_model_name_or_path is None:
        base_model_name_or_path = getattr(model, "name_or_path", None) or \
            getattr(getattr(model, "config", None), "_name_or_path", None)
        if not base_model_name_or_path:
            raise ValueError("export_peft: the model does not say where its base weights come from; "
                             "pass base_model_name_or_path (a hub id or a save_pretrained directory)")
    if task_type == "auto":
        task_type = infer_task_type(model)
    heads = next((h for t, h in PEFT_TASK_HEADS.values() if t == task_type), ())
    asked = trainable_modules(model) if modules_to_save is None else list(modules_to_save)
    keep = _peft_wrapped(model, [*asked, *heads])
    lost = [n for n, p in model.named_parameters() if p.requires_grad and not n.rsplit(".", 1)[-1].startswith("lora_")
            and not any(n.startswith(k + ".") for k in keep)]
    if lost:
        raise ValueError(f"trainable parameters outside the adapters and modules_to_save {asked} would be lost: "
                         f"{', '.join(lost[:4])}{' ...' if len(lost) > 4 else ''}; add their modules to "
                         f"modules_to_save (or pass modules_to_save=None to find them)")
    rslora = {bool(getattr(m, "rslora", False)) for m in layers.values()}
    if len(rslora) != 1:
        raise ValueError("export_peft needs all layers with rsLoRA scaling or none")
    use_rslora = rslora.pop()
    ranks, alphas, tensors = {}, {}, {}
    for name, layer in layers.items():
        B, A = relative_delta_factors(layer.lora_B.detach(), layer.lora_A.detach(),
                                      *((layer.lora_B0, layer.lora_A0) if layer.residual else ()))
        r = A.shape[0]
        tensors[f"base_model.model.{name}.lora_A.weight"] = A.clone()
        tensors[f"base_model.model.{name}.lora_B.weight"] = B.clone()
        ranks[name], alphas[name] = r, layer.scaling * (math.sqrt(r) if use_rslora else r)
    for pname, p in model.state_dict().items():
        if any(pname.startswith(k + ".") for k in keep):
            tensors[f"base_model.model.{pname}"] = p.detach().clone()
    if len(set(ranks.values())) != 1 or not all(math.isclose(a, next(iter(alphas.values())), rel_tol=1e-9)
                                                for a in alphas.values()):
        raise ValueError("export_peft needs one rank and alpha for all layers")
    config = {
        "peft_type": "LORA", "task_type": task_type, "base_model_name_or_path": base_model_name_or_path,
        "r": next(iter(ranks.values())), "lora_alpha": next(iter(alphas.values())), "lora_dropout": 0.0,
        "target_modules": sorted(layers),
        "modules_to_save": keep or None, "bias": "none", "fan_in_fan_out": False,
        "inference_mode": True, "init_lora_weights": True, "use_rslora": use_rslora, "use_dora": False,
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "adapter_config.json").write_text(json.dumps(config, indent=2))
    _atomic_save(tensors, out / "adapter_model.safetensors", {"format": "pt"})
    return out


def save_delta_svd(path: str | os.PathLike, model_or_factors, dtype: torch.dtype = torch.float16,
                   init: str | None = None, info: dict[str, dict] | None = None) -> Path:
    """Write each layer's ΔW (relative to the original W) as its thin SVD, compactly, for analysis.

    ΔW = B_eff·A_eff (rank k ≤ 2r) is stored as U (out×k) and V (in×k) with orthonormal columns in
    ``dtype`` and the singular values S (k,) in float32, plus the adapter's final A (r×in) in ``dtype``
    for row-space analyses.  The SVD is taken from the exact float64 factors *before* rounding, so a
    residual init's s·BA − s·B₀A₀ (a small difference of two large products) loses nothing to
    cancellation; rounding U, V to fp16 perturbs ΔW by ~1e-3 relative.  About 4× smaller than
    :func:`save_lora`; :func:`load_delta_factors` reads both (this one gives B_eff = U·S, A_eff = Vᵀ).
    Cannot be loaded back into a model (it keeps ΔW, not the training state).
    """
    from .spectra import lowrank_svd
    path = Path(path)
    if isinstance(model_or_factors, nn.Module):
        layers = lora_layers(model_or_factors)
        factors = {n: m.delta_factors() for n, m in layers.items()}
        cfgs = lora_config(model_or_factors)
        finals = {n: m.lora_A.detach() for n, m in layers.items()}
    else:
        factors, finals = model_or_factors, {}
        cfgs = {n: dict(rank=A.shape[0], alpha=float(A.shape[0]), scaling=1.0, init=init, residual=False,
                        freeze_A=False) for n, (B, A) in factors.items()}
    tensors, config = {}, {}
    for name, (B, A) in factors.items():
        U, S, V = lowrank_svd(B.detach().double().cpu(), A.detach().double().cpu())
        keep = S > S.max() * 1e-12 if S.numel() and S.max() > 0 else S > 0
        tensors[f"{name}.delta_U"] = U[:, keep].to(dtype).contiguous()
        tensors[f"{name}.delta_S"] = S[keep].float().contiguous()
        tensors[f"{name}.delta_V"] = V[:, keep].to(dtype).contiguous()
        if name in finals:
            tensors[f"{name}.lora_A"] = finals[name].to(dtype).cpu().contiguous()
        config[name] = {**cfgs[name], "format": "delta_svd", **(info or {}).get(name, {})}
    _atomic_save(tensors, path, {"lora_config": json.dumps(config)})
    return path
