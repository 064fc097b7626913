"""A small LoRA library: adapters on named Linear layers with random, SVD, LoRA-FA, data-aware and other
inits, each declared once in :mod:`lora.registry` (add one with :func:`register_init`).

Pure PyTorch (+ safetensors for files). See :mod:`lora.core` for the adapter, :mod:`lora.inits` for the
math of each init, :mod:`lora.io` for files and PEFT export, :mod:`lora.spectra` for the analysis of ΔW = s·BA.
"""
from . import inits, registry, spectra
from .core import (DROPOUT_MASKS, SVD_METHODS, Int16Dropout, LoRALinear, add_lora,
                   load_lora_state_dict, lora_config, lora_layers, lora_state_dict, mark_only_lora_as_trainable, merge_lora,
                   truncated_svd, unmerge_lora)
from .inits import InitContext, LayerStats, collect_layer_stats, gradient_capture, layer_capture
from .registry import InitSpec, init_names, init_spec, register_init, unregister_init
from .io import save_delta_svd, delta_factors, export_peft, load_delta_factors, load_lora, read_lora_config, save_factors, save_lora

__all__ = ["DROPOUT_MASKS", "Int16Dropout", "save_delta_svd", "INIT_METHODS", "SVD_METHODS", "FROZEN_A_METHODS", "LoRALinear", "add_lora", "merge_lora",
           "unmerge_lora", "mark_only_lora_as_trainable", "lora_layers", "lora_state_dict", "lora_config",
           "load_lora_state_dict", "truncated_svd", "delta_factors", "save_lora", "load_lora",
           "read_lora_config", "load_delta_factors", "save_factors", "export_peft", "spectra",
           "inits", "ALL_INITS", "EXTRA_INITS", "FROZEN_A_INITS", "RESIDUAL_INITS", "DATA_INITS", "LayerStats",
           "collect_layer_stats", "gradient_capture", "layer_capture", "registry", "InitSpec", "InitContext",
           "register_init", "unregister_init", "init_spec", "init_names"]


def __getattr__(name: str):
    """``ALL_INITS``, ``INIT_METHODS``, ``EXTRA_INITS``, ``FROZEN_A_METHODS``, ``FROZEN_A_INITS``,
    ``RESIDUAL_INITS`` and ``DATA_INITS`` are read from the registry at each access (:data:`lora.registry.DERIVED`),
    so an init added with :func:`register_init` is in them at once."""
    if name in registry.DERIVED:
        return registry.DERIVED[name]()
    raise AttributeError(f"module 'lora' has no attribute {name!r}")
