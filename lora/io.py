"""Adapters on disk: our safetensors file (adapter + init factors) and the PEFT adapter format.

Our file holds ``lora_state_dict`` tensors and, in the safetensors metadata, ``lora_config``
(per-layer rank, alpha, scaling, init) so that ΔW can be analysed without the model:
``load_delta_factors(path)`` returns, per layer, (B_eff, A_eff) with ΔW = B_eff @ A_eff relative to
the original pretrained weight.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable

import torch
from safetensors.torch import load_file, safe_open, save_file
from torch import nn

from .core import in_modules, load_lora_state_dict, lora_config, lora_layers, lora_state_dict


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

    Same convention as :meth:`LoRALinear.delta_factors`: s·BA, or s·[B, −B₀]·[A; A₀] for ``svd``.
    """
    config, tensors = read_lora_config(path), load_file(str(path))
    out = {}
    for name, c in config.items():
        A, B = tensors[f"{name}.lora_A"], tensors[f"{name}.lora_B"]
        s = c["scaling"]
        if c["residual"]:
            out[name] = s * torch.cat([B, -tensors[f"{name}.lora_B0"]], 1), torch.cat([A, tensors[f"{name}.lora_A0"]], 0)
        else:
            out[name] = s * B, A
    return out


def export_peft(model: nn.Module, out_dir: str | os.PathLike, base_model_name_or_path: str,
                task_type: str | None = "SEQ_CLS", modules_to_save: Iterable[str] = ()) -> Path:
    """Write ``adapter_config.json`` + ``adapter_model.safetensors`` readable by PEFT.

    ``peft.PeftModel.from_pretrained(original_base, out_dir)`` reproduces this model's outputs.
    PEFT applies W + (alpha'/r')·B'A' to the *original* W, so each layer exports ΔW relative to
    the original weight: for ``svd`` that is the rank-2r pair B' = [B, −B₀], A' = [A; A₀] with
    r' = 2r and alpha' = 2·alpha (same scaling s); otherwise B' = B, A' = A with r, alpha as is.
    Dropout is exported as 0 (an inference adapter). ``modules_to_save`` (e.g. the classifier
    head) are stored whole.
    """
    layers = lora_layers(model)
    if not layers:
        raise ValueError("model has no LoRA adapters to export")
    if any(m.merged for m in layers.values()):
        raise ValueError("unmerge_lora(model) before exporting: PEFT expects unmerged factors")
    ranks, alphas, tensors = {}, {}, {}
    for name, layer in layers.items():
        B, A = layer.lora_B.detach(), layer.lora_A.detach()
        r, alpha = layer.rank, layer.alpha
        if layer.residual:
            B, A, r, alpha = torch.cat([B, -layer.lora_B0], 1), torch.cat([A, layer.lora_A0], 0), 2 * r, 2 * alpha
        tensors[f"base_model.model.{name}.lora_A.weight"] = A.clone()
        tensors[f"base_model.model.{name}.lora_B.weight"] = B.clone()
        ranks[name], alphas[name] = r, alpha
    keep = tuple(modules_to_save)
    for pname, p in model.state_dict().items():
        if in_modules(pname, keep):
            tensors[f"base_model.model.{pname}"] = p.detach().clone()
    if len(set(ranks.values())) != 1 or len(set(alphas.values())) != 1:
        raise ValueError("export_peft needs one rank and alpha for all layers")
    config = {
        "peft_type": "LORA", "task_type": task_type, "base_model_name_or_path": base_model_name_or_path,
        "r": next(iter(ranks.values())), "lora_alpha": next(iter(alphas.values())), "lora_dropout": 0.0,
        "target_modules": sorted(layers),
        "modules_to_save": list(keep) or None, "bias": "none", "fan_in_fan_out": False,
        "inference_mode": True, "init_lora_weights": True, "use_rslora": False, "use_dora": False,
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "adapter_config.json").write_text(json.dumps(config, indent=2))
    _atomic_save(tensors, out / "adapter_model.safetensors", {"format": "pt"})
    return out
