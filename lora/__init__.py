"""A small LoRA library: adapters on named Linear layers with random, SVD and LoRA-FA inits,
plus data-aware and other init families (:mod:`lora.inits`).

Pure PyTorch (+ safetensors for files). See :mod:`lora.core` for the math of each init,
:mod:`lora.io` for files and PEFT export, :mod:`lora.spectra` for the analysis of ΔW = s·BA.
"""
from . import inits, spectra
from .core import (DROPOUT_MASKS, FROZEN_A_METHODS, INIT_METHODS, SVD_METHODS, Int16Dropout, LoRALinear, add_lora,
                   load_lora_state_dict, lora_config, lora_layers, lora_state_dict, mark_only_lora_as_trainable, merge_lora,
                   truncated_svd, unmerge_lora)
from .core import ALL_INITS, EXTRA_INITS, FROZEN_A_INITS, RESIDUAL_INITS
from .inits import DATA_INITS, LayerStats, collect_layer_stats, gradient_capture, layer_capture
from .io import save_delta_svd, delta_factors, export_peft, load_delta_factors, load_lora, read_lora_config, save_factors, save_lora

__all__ = ["DROPOUT_MASKS", "Int16Dropout", "save_delta_svd", "INIT_METHODS", "SVD_METHODS", "FROZEN_A_METHODS", "LoRALinear", "add_lora", "merge_lora",
           "unmerge_lora", "mark_only_lora_as_trainable", "lora_layers", "lora_state_dict", "lora_config",
           "load_lora_state_dict", "truncated_svd", "delta_factors", "save_lora", "load_lora",
           "read_lora_config", "load_delta_factors", "save_factors", "export_peft", "spectra",
           "inits", "ALL_INITS", "EXTRA_INITS", "FROZEN_A_INITS", "RESIDUAL_INITS", "DATA_INITS", "LayerStats",
           "collect_layer_stats", "gradient_capture", "layer_capture"]
