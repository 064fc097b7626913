"""Step-0 gradient capture of every init the init study ran, computed offline (no training).

For one (task, seed) this rebuilds exactly what a run of the v2 preset starts from: ``seed_everything(seed)``,
MiniLM with that seed's classifier head (:func:`harness.models.load_model_and_tokenizer`), the v2 validation
split held out of train (:func:`harness.data.split_validation`), and the same 8 training batches the
data-aware inits read (:func:`harness.train.init_batches`).  Over those batches it takes, for every adapted
q/v weight W (out×in), the mean full-fine-tuning gradient G = mean_b ∂loss_b/∂W and the input statistics
(:func:`lora.collect_layer_stats`, eval mode).  Then, for each init, on a fresh copy of the model,
:func:`lora.add_lora` with the run's config (``make_config(task, init, "v2", seed=seed)``: rank, alpha,
svd_method, seed; alpha = 1 for ``svd_seed``) builds (B₀, A₀), and :func:`lora.layer_capture` gives

    capture = 1 − ‖(I − P_B) G (I − P_A)‖²_F / ‖G‖²_F      (= ‖G P_A‖²/‖G‖² when B₀ = 0 or A is frozen)

the share of G the adapter's first (SGD) step can express.

G is always the gradient at the *original* W.  For zero-B and residual inits the model at step 0 is the
original one, so G is also the gradient the run sees (the gradient of the loss w.r.t. ΔW is ∂loss/∂W at the
unchanged model).  For ``svd_naive`` and ``svd_seed`` the model at step 0 is W + s·B₀A₀ ≠ W: their run's
first gradient differs, and their capture here is measured against the original model's G (stated in the
file's provenance and the book).

Also per layer: ‖G‖_F; G's top-1, top-r and top-2r energy shares Σ_{i≤k} σ_i²/Σ σ_i² (k = r: the most any
zero-B / frozen-A init can capture; k = 2r: the most any rank-r init can, reached by LoRA-GA's layout); and the
share of ‖G‖² in the span of W's top-r and bottom-r right singular vectors (``in_w_top_rows``,
``in_w_bottom_rows``: where G's input side sits relative to W's spectrum).
Where the run kept its final A and A was frozen (``lora_fa*``, ``svd_seed``), the run's A equals its A₀;
the file records how well the offline A₀ matches it (mean over layers of ‖A_off A_runᵀ‖²_F / r after
orthonormalising the rows; 1 = the same row space), a check that the offline statistics are the runs'.
"""
from __future__ import annotations

import copy
import glob
import os
import time
from pathlib import Path

import torch

import lora

from .config import adapter_kwargs, make_config
from .data import load_task_data, split_validation
from .logs import write_json_atomic
from .models import load_model_and_tokenizer
from .tasks import get_task
from .steps import seed_everything
from .train import encode, init_batches

ROUND1 = lora.init_names(study="round1")
NEW = lora.init_names(study="families")
INITS = ROUND1 + NEW
STEP0_CHANGED = lora.init_names(changes_model=True)     # model ≠ original at step 0: G is the original model's
RUN_DIRS = {**{m: "logs/v2" for m in ROUND1}, **{m: "logs/inits" for m in NEW}}
ROOT = Path(__file__).resolve().parent.parent


def energy_shares(G: torch.Tensor, ks) -> list[float]:
    """Σ_{i≤k} σ_i² / Σ σ_i² of G for each k (0.0 for G = 0)."""
    S = torch.linalg.svdvals(G.to(torch.float64))
    total = float((S ** 2).sum())
    return [float((S[:k] ** 2).sum()) / total if total > 0 else 0.0 for k in ks]


def w_row_shares(W: torch.Tensor, G: torch.Tensor, rank: int) -> dict:
    """Share of ‖G‖²_F in the row space of W's top-r and of W's bottom-r right singular vectors:
    ‖G V_k V_kᵀ‖²_F / ‖G‖²_F (0.0 for G = 0)."""
    G = G.to(torch.float64)
    Vh = torch.linalg.svd(W.detach().to(torch.float64), full_matrices=False).Vh
    total = float((G * G).sum())
    share = lambda V: float((G @ V.mT).pow(2).sum()) / total if total > 0 else 0.0
    return {"in_w_top_rows": share(Vh[:rank]), "in_w_bottom_rows": share(Vh[-rank:])}


def row_space_overlap(A1: torch.Tensor, A2: torch.Tensor) -> float:
    """‖Q₁ Q₂ᵀ‖²_F / r for orthonormal bases Q of the row spaces of A1, A2 (r×in): 1 = same row space."""
    Q1 = torch.linalg.qr(A1.to(torch.float64).mT).Q.mT
    Q2 = torch.linalg.qr(A2.to(torch.float64).mT).Q.mT
    return float((Q1 @ Q2.mT).pow(2).sum()) / min(Q1.shape[0], Q2.shape[0])


def _run_A(task: str, init: str, seed: int, lr: float | None = None) -> dict | None:
    """The final ``lora_A`` per layer of the run (task, init, seed) at its grid's selected lr, or None."""
    from safetensors.torch import load_file
    pattern = f"{task}-{init.replace('_', '')}-r8-lr*-s{seed}-*.safetensors"
    files = sorted(glob.glob(str(ROOT / RUN_DIRS[init] / pattern)))
    if lr is not None:
        import numpy as np
        files = [f for f in files if np.isclose(float(Path(f).name.split("-lr")[1].split("-s")[0]), lr)]
    if len(files) != 1:
        return None
    t = load_file(files[0])
    return {k[: -len(".lora_A")]: v for k, v in t.items() if k.endswith(".lora_A")}


def capture_one(task: str, seed: int, data_dir, inits=INITS, run_lrs: dict | None = None) -> dict:
    """Statistics, gradient and the capture of every init for one (task, seed); see the module docstring."""
    t0 = time.time()
    t = get_task(task)
    base = make_config(task, "eva", "v2", seed=seed)            # a data-aware config: init_batches = 8
    splits, source = load_task_data(t, data_dir)
    train_ex, _, _ = split_validation(splits["train"], t, base["val_fraction"])
    seed_everything(seed)
    model, tok = load_model_and_tokenizer(base["model"], t.num_labels, seed)
    rows = encode(tok, train_ex, base["max_length"])
    batches = list(init_batches(rows, tok, base, torch.device("cpu")))
    t_stats = time.time()
    stats = lora.collect_layer_stats(model, base["targets"], batches, needs={"input", "grad"})
    stats_s = time.time() - t_stats
    layers = list(stats)
    rank = base["rank"]
    gradient = {}
    for name in layers:
        G = stats[name].grad
        top_1, top_r, top_2r = energy_shares(G, (1, rank, 2 * rank))
        gradient[name] = {"norm": float(G.norm()), "top_1": top_1, "top_r": top_r, "top_2r": top_2r,
                          **w_row_shares(model.get_submodule(name).weight, G, rank)}
    out = []
    for init in inits:
        cfg = make_config(task, init, "v2", seed=seed)
        m = copy.deepcopy(model)
        t_init = time.time()
        lora.add_lora(m, cfg["targets"], keep_trainable=cfg["head"], stats=stats if init in lora.DATA_INITS else None,
                      **adapter_kwargs(cfg))
        init_s = time.time() - t_init
        adapted = lora.lora_layers(m)
        per_layer = {n: lora.layer_capture(adapted[n], stats[n].grad) for n in layers}
        num = sum(c * gradient[n]["norm"] ** 2 for n, c in per_layer.items())
        den = sum(gradient[n]["norm"] ** 2 for n in layers)
        row = {"task": task, "seed": seed, "init": init, "rank": cfg["rank"], "alpha": cfg["alpha"],
               "freeze_A": init in lora.FROZEN_A_INITS, "residual": init in lora.RESIDUAL_INITS,
               "step0_changed": init in STEP0_CHANGED,
               "mean": sum(per_layer.values()) / len(per_layer), "pooled": num / den if den > 0 else 0.0,
               "per_layer": per_layer, "init_seconds": round(init_s, 4)}
        if adapted[layers[0]].freeze_A:
            run_A = _run_A(task, init, seed, (run_lrs or {}).get((task, init)))
            if run_A is not None:
                row["run_A_overlap"] = sum(row_space_overlap(adapted[n].lora_A0, run_A[n]) for n in layers) / len(layers)
        out.append(row)
        del m
    return {"task": task, "seed": seed, "layers": layers, "gradient": gradient, "captures": out,
            "stats_seconds": round(stats_s, 3), "seconds": round(time.time() - t0, 2), "data": source,
            "n_batches": stats[layers[0]].n_batches, "n_tokens": stats[layers[0]].n_tokens,
            "examples": sum(len(b["labels"]) for b in batches)}


def run_lrs(tasks) -> dict:
    """{(task, init): lr} the runs used (validation-selected on v2_sweep / inits_sweep)."""
    from .logs import read_logs
    from .protocol import select_lr
    sweeps = {"logs/v2": read_logs(ROOT / "logs/v2_sweep"), "logs/inits": read_logs(ROOT / "logs/inits_sweep")}
    return {(t, i): select_lr(sweeps[RUN_DIRS[i]], t, i) for t in tasks for i in INITS}


def compute_capture(out_path, tasks=("mrpc", "cola"), seeds=(0, 1, 2), data_dir=None, inits=INITS) -> dict:
    """Capture of every (task, init, seed); written atomically to ``out_path`` with provenance; returned."""
    t0 = time.time()
    lrs = run_lrs(tasks)
    parts = [capture_one(task, seed, data_dir, inits, lrs) for task in tasks for seed in seeds]
    cfg = make_config(tasks[0], "eva", "v2", seed=seeds[0])
    result = {
        "provenance": {
            "model": cfg["model"], "preset": "v2", "targets": cfg["targets"], "rank": cfg["rank"],
            "batches": cfg["init_batches"], "batch_size": cfg["batch_size"], "split": "train (v2 validation held out)",
            "batch_source": "harness.train.init_batches (the data-aware inits' batches, seed 10000 + seed)",
            "gradient": "mean over batches of d loss / d W at the original pretrained W, eval mode (no dropout)",
            "step0_changed_note": "svd_naive and svd_seed change the model at step 0; their capture uses the "
                                  "original model's G, not the gradient their runs' first step saw",
            "device": "cpu", "threads": torch.get_num_threads(), "torch": torch.__version__,
            "tasks": list(tasks), "seeds": list(seeds), "inits": list(inits),
            "seconds": round(time.time() - t0, 1),
            "runs_lr": {f"{t}/{i}": lr for (t, i), lr in lrs.items()},
        },
        "parts": parts,
    }
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out_path, result)
    return result


if __name__ == "__main__":
    import sys
    seeds = tuple(int(s) for s in sys.argv[1].split(",")) if len(sys.argv) > 1 else (0, 1, 2)
    res = compute_capture(ROOT / "logs/capture/capture.json", seeds=seeds,
                          data_dir=os.environ.get("GLUE_DIR", str(ROOT / ".." / "shared" / "glue")))
    print(f"capture: {len(res['parts'])} (task, seed) in {res['provenance']['seconds']} s")
