"""The study's settings as data: config fields and their defaults, the presets, the methods, and the planted
experiment's settings.  :mod:`harness.config` builds configs from these tables and :mod:`harness.validate` checks
against them; neither defines a setting of its own.
"""
from __future__ import annotations

from lora import ALL_INITS

METHODS = ("full", *ALL_INITS)

# Fields every config has, with the value used when neither the preset nor the user sets one.
# ``lr`` in a preset is {"lora": ..., "full": ...}: adapters and full fine-tuning need different rates.
DEFAULTS = dict(
    task="mrpc", method="random", preset="quick", seed=0,
    model=None, rank=8, alpha=16.0, dropout=0.1, targets=["query", "value"], head=["classifier", "pooler"],
    lr={"lora": 5e-4, "full": 5e-5}, epochs=3, batch_size=32, max_length=128, warmup_ratio=0.06, weight_decay=0.01,
    evals_per_epoch=4, max_train_examples=None, group_by_length=True, svd_method="full", niter=4,
    precision="fp32", val_fraction=None, init_batches=None, rslora=False, dropout_mask="torch", init_pull=0.0,
)

# Fields added after the round-1 grid: left out of the hash while they hold the value that round-1 runs
# had implicitly, so every committed log keeps its hash; any other value is hashed (and so names a new run).
#   precision     "fp32" or "bf16" (autocast for the forward/backward; weights and optimizer stay fp32)
#   val_fraction  None (train on all of train) or the fraction held out of train as a validation split
#   init_batches  training batches the data-aware inits (lora.DATA_INITS) read; set for those methods only
#   rslora        s = alpha/sqrt(r) instead of alpha/r
#   dropout_mask  "torch" (nn.Dropout) or "int16" (lora.Int16Dropout: same distribution, cheaper random stream)
#   init_pull     a in the training loss's pull toward the init, a·Σ‖B − B₀‖²_F (0: none; adapters only)
LEGACY = dict(precision="fp32", val_fraction=None, init_batches=None, rslora=False, dropout_mask="torch",
              init_pull=0.0)
DATA_INIT_BATCHES = 8

PRESETS: dict[str, dict] = {
    # Seconds on a CPU, no downloads: a tiny RoBERTa built from a config and a BPE tokenizer
    # trained on the task's own training text.  For tests and CI.
    "smoke": dict(model="tiny-roberta", rank=4, alpha=8.0, dropout=0.0, batch_size=8, max_length=64,
                  epochs=6, evals_per_epoch=2, weight_decay=0.0, lr={"lora": 2e-2, "full": 2e-3}),
    # A laptop-CPU study on the bundled all-MiniLM-L6-v2 (BERT, 6 layers, hidden 384).
    # Per-task lr/epochs come from the learning-rate sweep in configs/sweep.yaml (see the book).
    # lr 1e-3 for every adapter method: best final dev metric of {1e-3, 3e-3, 1e-2} on all three tasks;
    # CoLA gets 6 epochs (MCC 0.256 vs 0.212 at 3; ≈ 6 CPU-min).  See logs/sweep and the book's sweep page.
    # Full fine-tuning at 5e-5 (not swept; the usual BERT range).
    "quick": dict(model="bundled:all-MiniLM-L6-v2", lr={"lora": 1e-3, "full": 5e-5},
                  tasks={"mrpc": dict(epochs=3), "rte": dict(epochs=3), "cola": dict(epochs=6)}),
    # Protocol v2 (configs/v2_sweep.yaml, configs/v2.yaml): the quick setup, but 10 % of train held out as a
    # validation split on which each method's lr is chosen; dev is only reported.  svd_seed keeps the seed
    # project's alpha = 1 (s = 1/r), which also sets the size of its step-0 change W + s·B₀A₀.
    "v2": dict(model="bundled:all-MiniLM-L6-v2", lr={"lora": 1e-3, "full": 5e-5}, val_fraction=0.1,
               tasks={"mrpc": dict(epochs=3), "rte": dict(epochs=3), "cola": dict(epochs=6)},
               methods={"svd_seed": dict(alpha=1.0)}),
    # Base size (configs/base_pilot.yaml, base_sweep.yaml, base.yaml): all-mpnet-base-v2 (MPNet-base, 110 M,
    # hidden 768, 12 layers: roberta-base's shape), installed from PyPI (harness/models.py).  Protocol v2's
    # setup (10 % validation split, per-method lr) with MPNet's own layer names: adapters on attn.q/attn.v,
    # the head is ``classifier`` (dense + out_proj; MPNet has no pooler).  bf16 autocast on the CPU (the
    # precision_cpu grid found it equivalent to fp32 on MiniLM).  lr here is only the pilot's starting point
    # (the LoRA paper's roberta-base rates for adapters, the usual 2e-5 for full fine-tuning); the sweep
    # chooses each method's.  Epochs per task from the pilot's rule (logs/base_pilot, book chapter "At base size"):
    # MRPC 5, RTE 6, CoLA 4, each the pilot's own length (full fine-tuning's validation curve still moved by more
    # than the rule's tolerance before its last evaluation).
    "base": dict(model="bundled:all-mpnet-base-v2", targets=["q", "v"], head=["classifier"], val_fraction=0.1,
                 precision="bf16", evals_per_epoch=2, lr={"lora": 5e-4, "full": 2e-5},
                 tasks={"mrpc": dict(epochs=5), "rte": dict(epochs=6), "cola": dict(epochs=4)},
                 methods={"svd_seed": dict(alpha=1.0)}),
    # The LoRA paper's RoBERTa-base GLUE setup (Hu et al. 2021, Table 9; microsoft/LoRA examples/NLU/
    # roberta_base_{mrpc,rte}.sh): r = 8 on query/value, max length 512, warmup 6 %, linear decay, weight decay
    # 0.1.  alpha = 16: the scripts pass --lora_alpha 16 (Table 9 lists 8), so s = alpha/r = 2.  Not reproduced:
    # their MRPC and RTE runs start from an MNLI-trained LoRA (--lora_path roberta_base_mnli_lora.bin), these
    # from roberta-base itself; their batch sizes are per GPU on 8 GPUs.  There is no released roberta-base
    # CoLA script: CoLA's lr and epochs are Table 9's.  For a GPU.
    "paper": dict(model="roberta-base", rank=8, alpha=16.0, dropout=0.0, max_length=512, warmup_ratio=0.06,
                  weight_decay=0.1, head=["classifier"], evals_per_epoch=1,
                  lr={"lora": 4e-4, "full": 1e-5},
                  tasks={"mrpc": dict(lr={"lora": 4e-4}, epochs=30, batch_size=16),
                         "rte": dict(lr={"lora": 5e-4}, epochs=80, batch_size=32),
                         "cola": dict(lr={"lora": 4e-4}, epochs=80, batch_size=32)}),
}

# Keys that say where things are, not what the run is: kept out of the hash.
UNHASHED = ("data_dir", "hub_id", "out_dir")

# The planted-update experiment (harness/planted.py; ``python -m harness planted``, whose options are made from
# this table): setting → (default, what it is).
PLANTED: dict[str, tuple] = {
    "model": ("bundled:all-MiniLM-L6-v2", "the encoder whose q/v layers get ΔW*"),
    "rank": (8, "adapter rank r"),
    "alpha": (16.0, "adapter alpha (s = alpha / r)"),
    "k": (4, "rank of the planted ΔW*"),
    "scale": (0.5, "c in σ = c·‖W‖₂·linspace(1, 0.4, k)"),
    "steps": (1000, "training steps per student"),
    "batch_size": (32, "sentences per step"),
    "max_length": (64, "tokens per sentence (batches trimmed to their longest)"),
    "lrs": ([3e-4, 1e-3, 3e-3], "each init's lr is the one with the lowest held-out MSE"),
    "eval_every": (50, "steps between held-out evaluations"),
    "n_heldout": (512, "held-out sentences"),
    "targets": (["query", "value"], "the Linear layers that get ΔW* and the adapters"),
    "layers": (None, "encoder layers that get ΔW* and the adapters (None: all); the layers below the first are "
                     "run once per batch, not per step"),
}
PLANTED_DEFAULTS = {k: v for k, (v, _) in PLANTED.items()}
