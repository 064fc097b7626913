"""Curvature of the training loss: the top eigenvalues of its Hessian, by Lanczos on Hessian-vector products.

Why does each init want its own learning rate?  Protocol v2 selects a rate per init on validation
(MRPC: random and svd 1e-3, lora_fa and lora_fa_svd 3e-3, svd_seed 1e-2 with α = 1, full fine-tuning
1e-4) and several inits collapse to the majority class one step above theirs.  Lee et al. 2026 trace the
rate to the largest eigenvalue of the loss Hessian.  This module measures it.

The operator.  θ = the trainable parameters of a run (adapter factors and the classifier head; every
weight for full fine-tuning), flattened in ``model.named_parameters()`` order (each tensor row-major).
L(θ) = the training loss on a fixed set of N training examples, cut into batches b of n_b examples,
L = Σ_b (n_b/N)·CE_b(θ) (+ the init pull a·Σ‖B − B₀‖²_F when the config sets ``init_pull``), with
dropout off (the Hessian of the deterministic network; dropout makes the training loss a random function).
A Hessian-vector product is Pearlmutter's trick, two reverse passes: g(θ) = ∇L with its graph kept, then
Hv = ∇_θ(g·v) (:func:`hvp`); the graph of g is built once per batch and reused by every product.
:func:`hessian_operator` wraps it as a scipy ``LinearOperator`` (float64 vectors; the model's own dtype
inside), and :func:`top_eigenvalues` runs ARPACK's implicitly restarted Lanczos (``scipy.sparse.linalg.eigsh``,
``which="LA"``: the largest algebraic eigenvalues, from a seeded start vector, so the same batches and seed
give the same numbers).  The tests check it against ``torch.linalg.eigvalsh`` of the dense Hessian, against
a finite difference of gradients, and against curvlinops' ``HessianLinearOperator``.

Adam's view.  AdamW steps by η·m̂/(√v̂ + ε): a diagonal preconditioner P = diag(√v̂ + ε).  Its stability is
governed by the preconditioned sharpness λmax(P⁻¹H) (Cohen et al. 2022, "Adaptive gradient methods at the
edge of stability"), computed here as the top eigenvalue of the symmetric P^{-1/2} H P^{-1/2}, which has the
same spectrum (:func:`preconditioned_operator`).  Where v̂ comes from: along training, AdamW's own
``exp_avg_sq``/(1 − β₂ᵗ) at that step; at step 0 (no optimizer state yet) the mean of g_b² over
``vhat_batches`` minibatches of the training batch size, i.e. the bias-corrected v̂ AdamW would hold after
that many steps had the weights not moved (v̂_t = Σᵢ(1−β₂)β₂^{t−i} gᵢ² / (1−β₂ᵗ) → mean gᵢ² for t ≪ 1/(1−β₂)).
Coordinates whose v̂ is exactly 0 (A of the B = 0 inits: ∂L/∂A = s·Bᵀ(…) vanishes at B = 0) get no Adam step
at that point and P = ε there would measure ε, not curvature: the operator is restricted to v̂ > 0 and the
number left out is recorded.

Stability bounds.  Gradient descent on a quadratic with top eigenvalue λ diverges for η > 2/λ.  Adam with
β₁ (heavy-ball momentum on the preconditioned quadratic, Cohen et al. 2022) is stable while
λmax(P⁻¹H) < (2 + 2β₁)/((1 − β₁)·η) = 38/η at β₁ = 0.9; so its bound on the rate is η < 38/λmax(P⁻¹H).
Both are reported; the Adam bound is the one the prediction is about, because every run trains with AdamW.

Linear algebra of the adapter blocks (tested in tests/test_curvature.py; row-major vec, vec(BA) =
(I_out ⊗ Aᵀ) vec(B) = (B ⊗ I_in) vec(A)).  With W_eff = W + s·B·A linear in each factor,

    H_BB = s² (I ⊗ A) H_W (I ⊗ Aᵀ),        H_AA = s² (Bᵀ ⊗ I) H_W (B ⊗ I),

H_W the Hessian with respect to the layer's full weight.  For LoRA-FA (A frozen with orthonormal rows) the
Hessian in B is the full-weight Hessian compressed to A's row space: its eigenvalues interlace those of
s²H_W, so λmax(H_B) ≤ s²λmax(H_W).  For the residual SVD inits A = √(S_r/s)·V_rᵀ and B = U_r√(S_r/s) start at
size √σᵢ instead of (B) zero, so those blocks scale with the singular values: λmax(H_BB) ≤ s·σ₁·λmax(H_W).
The seed project's regulariser a·Σ‖B − B₀‖²_F adds 2a·I to H_BB: every eigenvalue of the Hessian in B
shifts by exactly 2a.

PREDICTION (written before any number below was computed).
  1. Across the adapter inits of a task (v2 and init-family grids, MiniLM), the selected learning rate falls
     as the step-0 λmax of the Hessian in the trainable parameters rises: Spearman ρ(λmax, selected lr) < 0,
     with a 95 % bootstrap interval below 0.  The same holds for the preconditioned sharpness λmax(P⁻¹H).
  2. The rates at which a sweep run collapsed to the majority class (above the selected rate) lie beyond
     the Adam stability bound 38/λmax(P⁻¹H), while the selected rates lie within it; for plain gradient
     descent's 2/λmax the same ordering, though Adam's per-coordinate scaling is expected to make 2/λmax far
     too small to be the bound in absolute terms.
  3. Along training at the selected rate (MRPC, the v2 inits), the preconditioned sharpness rises towards
     38/η and hovers there (Adam's edge of stability), so lr·λmax(P⁻¹H) is O(38) at the later checkpoints.
  Where this fails is reported with the numbers (harness/analysis/curvature.py), not tuned away.

Run side: ``python -m harness.curvature step0|train|along ...`` (``-h``) builds each model exactly as
:func:`harness.train.prepare` does for its config, measures, and merges one entry per task × method × step
into ``logs/curvature/curvature.json`` (atomically).  The analysis: :mod:`harness.analysis.curvature`.
"""
from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy.sparse.linalg import LinearOperator, eigsh

OUT = Path("logs/curvature/curvature.json")
SNAPSHOT_DIR = Path("logs/adhoc/curvature")      # trainable state + Adam's v along training (large; not committed)
SWEEPS = ("logs/v2_sweep", "logs/inits_sweep")
V2_METHODS = ("full", "random", "svd", "svd_naive", "svd_seed", "lora_fa", "lora_fa_svd")
INIT_METHODS = ("svd_minor", "olora", "eva", "corda", "lora_ga", "lora_fa_grad", "lora_fa_eva")
TASKS = ("mrpc", "cola")
FIXED_SEED = 20_000          # the fixed examples' shuffle: the same for every method and seed of a task
ALONG = (1 / 3, 2 / 3, 1.0)  # fractions of training at which the along-training snapshots are taken
SETTINGS = dict(n_examples=64, vhat_batches=8, k=5, tol=1e-2, dtype="float32", eps=1e-8)


# ============================================================================ the operator
def flatten(tensors) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def unflatten(vec: torch.Tensor, like) -> list[torch.Tensor]:
    out, i = [], 0
    for p in like:
        out.append(vec[i:i + p.numel()].view_as(p))
        i += p.numel()
    return out


class HVP:
    """Hessian-vector products of ``loss_terms`` (a list of closures, each returning one scalar term of the
    loss; their sum is L) with respect to ``params``.  Each term's gradient is built once with its graph
    (``create_graph``) and reused: Hv = Σ_terms ∇_θ(g_term · v)."""

    def __init__(self, loss_terms, params):
        from torch.nn.attention import SDPBackend, sdpa_kernel
        self.params = list(params)
        self.grads, self.loss = [], 0.0
        for term in loss_terms:
            with sdpa_kernel(SDPBackend.MATH):   # attention as plain ops: the fused CPU kernels have no double backward
                loss = term()
                g = torch.autograd.grad(loss, self.params, create_graph=True, allow_unused=True)
            self.grads.append([gi if gi is not None else torch.zeros_like(p) for gi, p in zip(g, self.params)])
            self.loss += float(loss.detach())
        self.n = sum(p.numel() for p in self.params)
        self.calls = 0

    def gradient(self) -> torch.Tensor:
        return flatten([sum(g[i].detach() for g in self.grads) for i in range(len(self.params))])

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        vs = unflatten(v.to(self.params[0].dtype), self.params)
        out = [torch.zeros_like(p) for p in self.params]
        for g in self.grads:
            live = [i for i, gi in enumerate(g) if gi.requires_grad]   # a gradient constant in θ adds nothing
            hv = torch.autograd.grad([g[i] for i in live], self.params, [vs[i] for i in live],
                                     retain_graph=True, allow_unused=True)
            for j, h in enumerate(hv):
                if h is not None:
                    out[j] += h.detach()
        return flatten(out)


def hessian_operator(hvp: HVP) -> LinearOperator:
    """The Hessian as a scipy ``LinearOperator`` on float64 vectors (products in the model's dtype)."""
    return LinearOperator((hvp.n, hvp.n), matvec=lambda x: hvp(torch.from_numpy(np.ascontiguousarray(
        x, dtype=np.float64).reshape(-1))).double().numpy(), dtype=np.float64)


def preconditioned_operator(hvp: HVP, vhat: torch.Tensor, eps: float = 1e-8) -> tuple[LinearOperator, int]:
    """P^{-1/2} H P^{-1/2} with P = diag(√v̂ + ε), restricted to the coordinates with v̂ > 0 (see the module
    docstring); same spectrum as P⁻¹H there.  Returns (operator, number of coordinates left out)."""
    keep = (vhat > 0).nonzero().squeeze(1)
    d = (vhat[keep].double().sqrt() + eps).rsqrt()

    def matvec(x):
        full = torch.zeros(hvp.n, dtype=torch.float64)
        full[keep] = d * torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64).reshape(-1))
        return (d * hvp(full).double()[keep]).numpy()

    return LinearOperator((len(keep), len(keep)), matvec=matvec, dtype=np.float64), hvp.n - len(keep)


def top_eigenvalues(op: LinearOperator, k: int = 5, tol: float = 0.0, seed: int = 0) -> np.ndarray:
    """The k largest (algebraic) eigenvalues of a symmetric operator, descending, by ARPACK's Lanczos
    (``eigsh``) from a seeded start vector.  ``tol`` is ARPACK's: Ritz residual ≤ tol·|λ| (0: machine precision);
    the eigenvalue error is about the residual squared over the gap, so λmax, an outlier, converges to many
    more digits than the clustered λ₂ … λ_k.  ncv = max(20, 6k) Lanczos vectors (fewer restarts for k = 5)."""
    n = op.shape[0]
    k = min(k, n - 1)
    v0 = np.random.default_rng(seed).standard_normal(n)
    vals = eigsh(op, k=k, which="LA", v0=v0, tol=tol, ncv=min(n, max(20, 6 * k)), return_eigenvectors=False)
    return np.sort(vals)[::-1]


def dense_hessian(hvp: HVP) -> torch.Tensor:
    """H built column by column from products with the basis vectors (for tests on tiny models)."""
    eye = torch.eye(hvp.n, dtype=torch.float64)
    H = torch.stack([hvp(eye[i]).double() for i in range(hvp.n)], 1)
    return (H + H.T) / 2


# ============================================================================ the training loss of a run
def trainable(model, which: str = "all") -> list[tuple[str, torch.nn.Parameter]]:
    """The parameters the Hessian is taken in: every trainable one (``"all"``), the adapter factors only
    (``"adapters"``), or the B factors only (``"B"``)."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if which == "adapters":
        named = [(n, p) for n, p in named if n.rsplit(".", 1)[-1] in ("lora_A", "lora_B")]
    elif which == "B":
        named = [(n, p) for n, p in named if n.endswith("lora_B")]
    elif which != "all":
        raise ValueError(f"unknown parameter block {which!r}; valid: all, adapters, B")
    return named


def loss_terms(model, batches: list[dict], init_pull: float = 0.0) -> list:
    """Closures for the terms of L = Σ_b (n_b/N)·CE_b (+ a·Σ‖B − B₀‖²_F on the first term); dropout off."""
    model.eval()
    N = sum(len(b["labels"]) for b in batches)

    def term(b, first):
        def f():
            loss = model(**b).loss * (len(b["labels"]) / N)
            if first and init_pull:
                from .steps import init_pull_penalty
                loss = loss + init_pull_penalty(model, init_pull)
            return loss
        return f
    return [term(b, i == 0) for i, b in enumerate(batches)]


def minibatch_vhat(model, params, batches: list[dict]) -> torch.Tensor:
    """Step 0's v̂: the mean over minibatches of the squared minibatch gradient (see the module docstring)."""
    model.eval()
    acc = None
    for b in batches:
        g = torch.autograd.grad(model(**b).loss, params, allow_unused=True)
        sq = flatten([(gi if gi is not None else torch.zeros_like(p)).double() ** 2 for gi, p in zip(g, params)])
        acc = sq if acc is None else acc + sq
    return acc / len(batches)


def measure(model, batches: list[dict], *, k: int = 5, vhat: dict | None = None, vhat_batches=None,
            which: str = "all", init_pull: float = 0.0, k_precond: int = 1, tol: float = 1e-4, eps: float = 1e-8,
            seed: int = 0) -> dict:
    """The k largest eigenvalues of the Hessian of the training loss on ``batches`` in the ``which``
    parameters (k = 0: none), and, when ``vhat`` ({parameter name: v̂}) or ``vhat_batches`` (step 0: v̂ from
    their squared gradients) is given, the top ``k_precond`` of P^{-1/2} H P^{-1/2}.  Seconds and numbers of
    Hessian-vector products per eigensolve come with them."""
    names, params = zip(*trainable(model, which))
    t0 = time.time()
    hvp = HVP(loss_terms(model, batches, init_pull), params)
    out = {"n_params": hvp.n, "loss": hvp.loss, "grad_norm": float(hvp.gradient().double().norm())}
    if k:
        top = top_eigenvalues(hessian_operator(hvp), k, tol, seed)
        out.update(top=[float(x) for x in top], seconds_lambda=round(time.time() - t0, 2), hvps_lambda=hvp.calls)
    if vhat is None and vhat_batches is None:
        return out
    t0, calls = time.time(), hvp.calls
    flat = (minibatch_vhat(model, params, vhat_batches) if vhat is None
            else flatten([vhat[n].double() for n in names]))
    op, left_out = preconditioned_operator(hvp, flat, eps)
    ptop = top_eigenvalues(op, k_precond, tol, seed)
    return {**out, "precond_top": [float(x) for x in ptop], "precond_max": float(ptop[0]),
            "precond_left_out": left_out, "seconds_precond": round(time.time() - t0, 2),
            "hvps_precond": hvp.calls - calls}


# ============================================================================ run side: models, batches, sweeps
def fixed_batches(rows: list[dict], tok, n: int, batch_size: int, seed: int = FIXED_SEED) -> list[dict]:
    """The first ``n`` rows of a seeded shuffle of the training rows (its own generator: the same examples for
    every method of a task), sorted by length and cut into batches of ``batch_size`` (little padding, like
    training's length-grouped batches)."""
    from .train import collate
    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed)).tolist()
    chosen = sorted(order[:n], key=lambda i: (len(rows[i]["input_ids"]), i))
    return [collate(tok, [rows[i] for i in chosen[s:s + batch_size]]) for s in range(0, len(chosen), batch_size)]


def sweep_record(logs: list[dict], task: str, method: str, val_majority: float) -> dict:
    """From a sweep's logs: the selected lr (:mod:`harness.protocol`'s rule), every swept lr's final
    validation score, and the collapsed rates: above the selected one, where the run failed or ended at the
    majority-class score (a constant predictor: accuracy = the majority share, MCC = 0)."""
    from .protocol import select_lr, sweep_scores
    scores = sweep_scores(logs, task, method)
    chosen = select_lr(logs, task, method, "the v2/inits sweeps")
    collapsed = sorted(lr for lr, v in scores.items()
                       if lr > chosen and (not math.isfinite(v) or v <= val_majority + 1e-9))
    return {"selected_lr": chosen, "swept": {f"{lr:g}": (v if math.isfinite(v) else None)
                                             for lr, v in sorted(scores.items())},
            "collapsed_lrs": collapsed, "val_majority": val_majority}


def sweep_logs(dirs=SWEEPS) -> list[dict]:
    from .logs import read_logs
    from .paths import resolve
    return [lg for d in dirs for lg in read_logs(resolve(d), status=None)]


def selected_config(task: str, method: str, data_dir=None) -> tuple[dict, dict]:
    """(the v2 config of ``task`` × ``method`` at seed 0 and its selected lr, the sweep record): the sweep run the
    rate was chosen from.  The majority-class score is that of the validation split the sweep scored on."""
    from .config import make_config
    from .data import load_task_data, split_validation
    from .tasks import get_task, majority_baseline
    cfg0 = make_config(task, method, "v2", seed=0)
    t = get_task(cfg0["task"])
    _, val, _ = split_validation(load_task_data(t, data_dir)[0]["train"], t, cfg0["val_fraction"])
    val_majority = majority_baseline(t, [ex.label for ex in val])[t.main_metric]
    rec = sweep_record(sweep_logs(), cfg0["task"], method, val_majority)
    return make_config(task, method, "v2", seed=0, lr=rec["selected_lr"]), rec


def model_for(task: str, method: str, data_dir=None, dtype: str = "float32"):
    """(config, the prepared run, the sweep record) for ``task`` × ``method`` at its selected lr (seed 0): the
    model that sweep run (and every seed-0 run of the method, whatever its lr) started from."""
    from .train import prepare
    cfg, rec = selected_config(task, method, data_dir)
    prep = prepare(cfg, data_dir)
    prep.model.to(getattr(torch, dtype))
    return cfg, prep, rec


def base_entry(cfg: dict, prep, rec: dict, step: int, total: int, settings: dict, batches) -> dict:
    from .config import config_hash, run_id
    return {"task": cfg["task"], "method": cfg["method"], "step": step, "fraction": round(step / total, 4),
            "total_steps": total, "run_id": run_id(cfg), "config_hash": config_hash(cfg), **rec,
            "n_examples": sum(len(b["labels"]) for b in batches),
            "tokens": int(sum(int(b["attention_mask"].sum()) for b in batches)), "settings": dict(settings)}


def schedule(cfg: dict, n_train: int) -> tuple[int, int]:
    """(warmup, total) steps of a run of ``cfg`` on ``n_train`` rows (as :func:`harness.train.run`)."""
    total = math.ceil(n_train / cfg["batch_size"]) * cfg["epochs"]
    return max(1, round(cfg["warmup_ratio"] * total)), total


# ============================================================================ the log: one entry per task × method × step
def read_results(path) -> dict:
    import json
    p = Path(path)
    return json.loads(p.read_text()) if p.is_file() else {"entries": []}


def merge_entry(path, entry: dict) -> dict:
    """Put ``entry`` into the results file, replacing the one with the same (task, method, step); atomic, and
    under a file lock, so that two measuring processes cannot drop each other's entries (read-modify-write)."""
    from filelock import FileLock
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(p.with_name(f".{p.name}.lock"))):
        return _merge_entry(p, entry)


def _merge_entry(path: Path, entry: dict) -> dict:
    from .logs import write_json_atomic
    data = read_results(path)
    key = (entry["task"], entry["method"], entry["step"])
    old = next((e for e in data["entries"] if (e["task"], e["method"], e["step"]) == key), {})
    data["entries"] = [e for e in data["entries"] if (e["task"], e["method"], e["step"]) != key] + [{**old, **entry}]
    data["entries"].sort(key=lambda e: (e["task"], e["method"], e["step"]))
    data["description"] = ("Top eigenvalues of the training loss's Hessian in the trainable parameters (Lanczos), "
                           "the Adam-preconditioned sharpness and the selected/collapsed learning rates; "
                           "written by python -m harness.curvature (see its docstring)")
    write_json_atomic(path, data)
    return data


def find_entry(path, task: str, method: str, step: int) -> dict | None:
    return next((e for e in read_results(path)["entries"]
                 if (e["task"], e["method"], e["step"]) == (task, method, step)), None)


# ============================================================================ step 0, training snapshots, along
PARTS = ("lambda", "precond", "adapters", "adapters_precond")
NEEDS = {"lambda": "top", "precond": "precond_max", "adapters": "adapters_max",
         "adapters_precond": "adapters_precond_max"}       # the field that says a part is done


def measure_parts(model, batches, vhat_batches, vhat, parts, settings, init_pull: float = 0.0) -> dict:
    """The requested parts of an entry: ``lambda`` (top-k in all trainable parameters), ``precond``
    (λmax(P⁻¹H)), ``adapters`` and ``adapters_precond`` (the same two for the adapter-factor block alone, the
    head held fixed: at step 0 the head's curvature is the same for every init that leaves the model unchanged)."""
    s, out = settings, {}
    if "lambda" in parts:
        out.update(measure(model, batches, which="all", init_pull=init_pull, k=s["k"], tol=s["tol"]))
    if "precond" in parts:
        r = measure(model, batches, k=0, vhat=vhat, vhat_batches=vhat_batches, which="all", init_pull=init_pull,
                    tol=s["tol"], eps=s["eps"])
        out.update({k: v for k, v in r.items() if k.startswith("precond") or k.endswith("_precond")})
    if "adapters" in parts and any(n.endswith("lora_B") for n, _ in trainable(model)):
        r = measure(model, batches, which="adapters", init_pull=init_pull, k=1, tol=s["tol"])
        out.update({"adapters_max": r["top"][0], "adapters_n_params": r["n_params"],
                    "seconds_adapters": r["seconds_lambda"], "hvps_adapters": r["hvps_lambda"]})
    if "adapters_precond" in parts and any(n.endswith("lora_B") for n, _ in trainable(model)):
        r = measure(model, batches, k=0, vhat=vhat, vhat_batches=vhat_batches, which="adapters",
                    init_pull=init_pull, tol=s["tol"], eps=s["eps"])
        out.update({f"adapters_{k}": v for k, v in r.items() if k.startswith("precond") or k.endswith("_precond")})
    return out


def missing_parts(entry: dict | None, parts, method: str) -> list[str]:
    have = entry or {}
    return [p for p in parts if NEEDS[p] not in have and not (p.startswith("adapters") and method == "full")]


def step0(task: str, method: str, out, parts=PARTS, settings=SETTINGS, data_dir=None) -> dict:
    """Measure the step-0 entry of ``task`` × ``method`` (only its missing ``parts``) and merge it into ``out``."""
    cfg, prep, rec = model_for(task, method, data_dir, settings["dtype"])
    todo = missing_parts(find_entry(out, cfg["task"], method, 0), parts, method)
    batches = fixed_batches(prep.train_rows, prep.tok, settings["n_examples"], cfg["batch_size"])
    vb = fixed_batches(prep.train_rows, prep.tok, settings["vhat_batches"] * cfg["batch_size"], cfg["batch_size"])
    warmup, total = schedule(cfg, len(prep.train_rows))
    entry = {**base_entry(cfg, prep, rec, 0, total, settings, batches), "lr_next": cfg["lr"] / warmup,
             "vhat_source": f"mean squared gradient over {len(vb)} minibatches of {cfg['batch_size']} (step 0)"}
    entry.update(measure_parts(prep.model, batches, vb, None, todo, settings, cfg.get("init_pull") or 0.0))
    return merge_entry(out, entry)


def snapshot_path(snap_dir, cfg: dict, step: int) -> Path:
    from .config import run_id
    return Path(snap_dir) / run_id(cfg) / f"step{step}.safetensors"


def train_snapshots(task: str, method: str, snap_dir=SNAPSHOT_DIR, fractions=ALONG, data_dir=None,
                    progress: bool = False) -> dict:
    """Re-run the seed-0 sweep run of ``task`` × ``method`` at its selected lr (:func:`harness.train.prepare`,
    the same optimizer, schedule, batch order and loss as :func:`harness.train.run`, no evaluations in between:
    they draw no random numbers, so the steps are the same) and save, after the steps at ``fractions`` of
    training, the trainable parameters and AdamW's ``exp_avg_sq`` (safetensors).  Returns {step: path} and
    the final validation metric next to the sweep log's (CPU and GPU dropout streams differ: the same run in
    distribution, not bit for bit)."""
    from safetensors.torch import save_file

    from .config import run_id
    from .steps import init_pull_penalty, linear_schedule, make_optimizer, train_batches, train_steps
    from .train import collate, evaluate
    cfg, prep, rec = model_for(task, method, data_dir, "float32")
    model, tok, rows = prep.model, prep.tok, prep.train_rows
    prep.model.train()
    dev = torch.device("cpu")
    params, optimizer = make_optimizer(model, cfg, dev)
    warmup, total = schedule(cfg, len(rows))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: linear_schedule(s, warmup, total))
    steps = {max(1, round(f * total)) for f in fractions}
    gen = torch.Generator().manual_seed(cfg["seed"])
    lengths = [len(r["input_ids"]) for r in rows]
    paths, history = {}, {"train_loss": []}

    def loss_of(idx):
        loss = model(**collate(tok, [rows[i] for i in idx])).loss
        return loss + init_pull_penalty(model, cfg["init_pull"]) if cfg.get("init_pull") else loss

    def save(step):
        tensors, beta2 = {}, optimizer.param_groups[0]["betas"][1]
        for name, p in params:
            st = optimizer.state[p]
            tensors[f"param/{name}"] = p.detach().clone().contiguous()
            tensors[f"vhat/{name}"] = (st["exp_avg_sq"] / (1 - beta2 ** float(st["step"]))).contiguous()
        path = snapshot_path(snap_dir, cfg, step)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        save_file(tensors, str(tmp), metadata={"step": str(step), "total": str(total), "run_id": run_id(cfg),
                                               "lr_next": repr(cfg["lr"] * linear_schedule(step, warmup, total))})
        os.replace(tmp, path)
        paths[step] = str(path)
        return {}

    from tqdm import tqdm
    bar = tqdm(total=total, disable=not progress, mininterval=10)
    status, reason, done = train_steps(loss_of, lambda: train_batches(lengths, cfg["batch_size"], gen,
                                       cfg["group_by_length"]), cfg["epochs"], optimizer, scheduler, steps, save,
                                       history, bar)
    bar.close()
    main = prep.task.main_metric
    val = evaluate(model, tok, prep.val_rows, prep.task, dev)[main]
    swept = rec["swept"].get(f"{cfg['lr']:g}")
    return {"status": status, "reason": reason, "steps": done, "snapshots": paths, "val": val, "sweep_val": swept}


def along(task: str, method: str, out, snap_dir=SNAPSHOT_DIR, parts=("lambda", "precond"), settings=SETTINGS,
          data_dir=None, max_seconds: float | None = None, t_start: float | None = None,
          fresh: bool = True) -> list[dict]:
    """Measure the entries of ``task`` × ``method`` at each saved snapshot (parameters loaded into the prepared
    model; P from the snapshot's AdamW v̂), skipping the parts already in ``out``."""
    from safetensors import safe_open
    cfg, _ = selected_config(task, method, data_dir)
    snaps = sorted(snapshot_path(snap_dir, cfg, 0).parent.glob("step*.safetensors"), key=lambda p: int(p.stem[4:]))
    if not any(missing_parts(find_entry(out, cfg["task"], method, int(p.stem[4:])), parts, method) for p in snaps):
        return []
    cfg, prep, rec = model_for(task, method, data_dir, settings["dtype"])
    batches = fixed_batches(prep.train_rows, prep.tok, settings["n_examples"], cfg["batch_size"])
    warmup, total = schedule(cfg, len(prep.train_rows))
    named = dict(trainable(prep.model))
    done = []
    for path in snaps:
        step = int(path.stem[4:])
        todo = missing_parts(find_entry(out, cfg["task"], method, step), parts, method)
        if todo and max_seconds is not None:   # the parts that fit in the time slot, by step 0's costs
            todo = fitting(todo, cost_estimates(out, cfg["task"], method), max_seconds - (time.time() - t_start),
                           fresh=not done and fresh)
            if not todo:
                break
        if not todo:
            continue
        with safe_open(str(path), "pt") as f:
            meta = f.metadata()
            with torch.no_grad():
                for name, p in named.items():
                    p.copy_(f.get_tensor(f"param/{name}"))
            vhat = {name: f.get_tensor(f"vhat/{name}") for name in named}
        entry = {**base_entry(cfg, prep, rec, step, total, settings, batches), "lr_next": float(meta["lr_next"]),
                 "vhat_source": f"AdamW exp_avg_sq / (1 - beta2^t) after step {step}"}
        entry.update(measure_parts(prep.model, batches, None, vhat, todo, settings, cfg.get("init_pull") or 0.0))
        merge_entry(out, entry)
        done.append(entry)
    return done


# ============================================================================ command line
SECONDS = {"lambda": "seconds_lambda", "precond": "seconds_precond", "adapters": "seconds_adapters",
           "adapters_precond": "adapters_seconds_precond"}
BUILD_SECONDS = 30.0      # model, data, v̂ and the gradient graph, per part, roughly


def cost_estimates(out, task: str, method: str) -> dict[str, float]:
    """Seconds each part took, the most over the logged step-0 entries of ``task``: full fine-tuning's for full
    fine-tuning, the adapter inits' for an adapter init (full fine-tuning's until one is logged)."""
    task_entries = [e for e in read_results(out)["entries"] if e["task"] == task and e["step"] == 0]
    same_kind = [e for e in task_entries if (e["method"] == "full") == (method == "full")]
    est = {}
    for p, k in SECONDS.items():
        for entries in (same_kind, task_entries):     # an adapter init's first part: full fine-tuning's as a guess
            if any(k in e for e in entries):
                est[p] = max(e[k] for e in entries if k in e)
                break
    return est


def fitting(parts: list[str], estimates: dict[str, float], seconds_left: float, fresh: bool) -> list[str]:
    """The leading parts whose estimated cost fits in ``seconds_left``; a part with no estimate yet runs alone,
    first in a ``fresh`` time slot."""
    out, used = [], 0.0
    for p in parts:
        if p not in estimates:
            return out or ([p] if fresh else [])
        used += estimates[p] + BUILD_SECONDS
        if used > seconds_left:
            break
        out.append(p)
    return out


def _methods(names: list[str]) -> list[str]:
    from .config import METHODS
    out = []
    for n in names:
        group = {"v2": V2_METHODS, "inits": INIT_METHODS, "all": V2_METHODS + INIT_METHODS}.get(n, (n,))
        for m in group:
            if m not in METHODS:
                from .tasks import UserError
                raise UserError(f"unknown method {m!r}; valid: v2, inits, all, {', '.join(METHODS)}")
            out.append(m)
    return list(dict.fromkeys(out))


def _fraction(text: str) -> float:
    """A fraction of training in (0, 1], written as a decimal or as p/q."""
    import argparse
    try:
        num, _, den = text.partition("/")
        value = float(num) / float(den or 1)
    except (ValueError, ZeroDivisionError):
        value = math.nan
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"bad fraction {text!r}; valid: a number in (0, 1], e.g. 1 or 2/3")
    return value


def _parser():
    """``python -m harness.curvature``'s options: step0, train (snapshots) and along."""
    import argparse

    class Parser(argparse.ArgumentParser):
        def error(self, message):          # one line, like every harness command's errors
            print(f"error: {self.prog}: {message} (see {self.prog} -h)", file=sys.stderr)
            raise SystemExit(2)

    ap = Parser(prog="python -m harness.curvature",
                description="Top Hessian eigenvalues (Lanczos) of the training loss per init; merged into --out.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    common = Parser(add_help=False)
    common.add_argument("--out", default=str(OUT), help=f"results file (default {OUT}; from the repository root)")
    common.add_argument("--data-dir", help="classic GLUE directory; default $GLUE_DIR")
    common.add_argument("--max-seconds", type=float, default=None,
                        help="start no new measurement after this many seconds (to fit a time slot)")
    p0 = sub.add_parser("step0", parents=[common], help="measure at the init (step 0)")
    p0.add_argument("--tasks", nargs="+", default=list(TASKS), help=f"default: {' '.join(TASKS)}")
    p0.add_argument("--methods", nargs="+", default=["all"], help="names, or v2 / inits / all (default all)")
    p0.add_argument("--parts", nargs="+", default=list(PARTS), choices=PARTS)
    p0.add_argument("--k", type=int, default=SETTINGS["k"],
                    help=f"how many top eigenvalues (default {SETTINGS['k']}; 1 where a product is slow)")
    pt = sub.add_parser("train", parents=[common], help="re-run seed 0 at the selected lr, saving snapshots")
    pt.add_argument("--task", required=True)
    pt.add_argument("--method", required=True)
    pt.add_argument("--snapshots", default=str(SNAPSHOT_DIR), help=f"default {SNAPSHOT_DIR}")
    pt.add_argument("--at", nargs="+", type=_fraction, default=list(ALONG), metavar="FRACTION",
                    help="fractions of training after which to save (default 1/3 2/3 1)")
    pa = sub.add_parser("along", parents=[common], help="measure at the saved snapshots")
    pa.add_argument("--task", required=True)
    pa.add_argument("--methods", nargs="+", default=["v2"])
    pa.add_argument("--snapshots", default=str(SNAPSHOT_DIR), help=f"default {SNAPSHOT_DIR}")
    pa.add_argument("--parts", nargs="+", default=["lambda", "precond"], choices=PARTS)
    pa.add_argument("--k", type=int, default=SETTINGS["k"], help=f"default {SETTINGS['k']}")
    return ap


def main(argv=None) -> int:
    from .paths import at_repo_root, resolve
    from .tasks import UserError

    args = _parser().parse_args(argv)
    t_start = time.time()
    try:
        from .tasks import get_task
        with at_repo_root():
            out = resolve(args.out)
            tasks = [get_task(t).name for t in (args.tasks if args.cmd == "step0" else [args.task])]
            bad = [t for t in tasks if t not in TASKS]
            if bad:
                raise UserError(f"unknown curvature task {bad[0]!r}; valid: {', '.join(TASKS)}")
            methods = _methods(args.methods if args.cmd != "train" else [args.method])
            if args.cmd == "train":
                r = train_snapshots(tasks[0], methods[0], resolve(args.snapshots), fractions=args.at,
                                    data_dir=args.data_dir)
                print(f"{tasks[0]} {methods[0]}: {r['status']}, {r['steps']} steps, final val {r['val']:.4f} "
                      f"(sweep run: {r['sweep_val']}); snapshots: {', '.join(r['snapshots'].values())}")
                return 0
            ran = False
            for task in tasks:
                for method in methods:
                    if args.cmd == "along":
                        for e in along(task, method, out, resolve(args.snapshots), args.parts,
                                       {**SETTINGS, "k": args.k}, data_dir=args.data_dir,
                                       max_seconds=args.max_seconds, t_start=t_start, fresh=not ran):
                            ran = True
                            print(f"{task} {method} step {e['step']}: top {[round(x, 4) for x in e.get('top', [])]}"
                                  f", P⁻¹H {e.get('precond_max')}", flush=True)
                        continue
                    todo = missing_parts(find_entry(out, task, method, 0), args.parts, method)
                    if args.max_seconds:
                        todo = fitting(todo, cost_estimates(out, task, method), args.max_seconds - (time.time() - t_start),
                                       fresh=not ran)
                    if not todo:
                        if missing_parts(find_entry(out, task, method, 0), args.parts, method):
                            print(f"time slot used up before {task} {method}")
                            return 0
                        continue
                    t0, ran = time.time(), True
                    data = step0(task, method, out, todo, {**SETTINGS, "k": args.k}, data_dir=args.data_dir)
                    e = next(e for e in data["entries"] if (e["task"], e["method"], e["step"]) == (task, method, 0))
                    print(f"{task} {method} step 0 ({', '.join(todo)}): top {[round(x, 4) for x in e.get('top', [])]}, "
                          f"P⁻¹H {e.get('precond_max')}, adapters {e.get('adapters_max')} "
                          f"({time.time() - t0:.0f} s)", flush=True)
            if args.cmd == "step0" and not ran:
                print("all measured")
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
