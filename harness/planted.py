"""Planted-update experiment: which LoRA init recovers a known low-rank ΔW*, and where can it?

``python -m harness planted [--device cuda] [--seeds 0 1 2] [--out logs/planted] [--steps N] [--inits ...]``

Teacher
    The pretrained encoder (default ``bundled:all-MiniLM-L6-v2``) with W ← W + ΔW* in every
    query/value ``nn.Linear`` (W: out×in).  ΔW* = B* A* has rank k (default 4):

        ΔW* = U_S P diag(σ) Qᵀ V_Sᵀ,     σ = c · ‖W‖₂ · linspace(1, 0.4, k)   (k = 4: 1, 0.8, 0.6, 0.4)

    with c = 0.5 by default (``scale``; on MiniLM this makes the teacher's final hidden states
    differ from the pretrained ones by a held-out MSE logged as ``teacher_gap_mse``).
    (U_S, V_S) — out×k and in×k orthonormal — depend on ``subspace``:
    ``top``: W's top-k left/right singular vectors; ``bottom``: W's bottom-k (of the thin SVD);
    ``random``: uniformly random (QR of a Gaussian).  P, Q are random k×k orthogonal matrices,
    so ΔW*'s column/row spaces are exactly span(U_S)/span(V_S) while its singular vectors are
    generic inside them (for ``top``, ΔW* is therefore not a mere rescaling of W's own
    singular values).  All of it is drawn from the run's seed: for one (subspace, seed) every
    init faces the same teacher.

Student
    The same pretrained encoder + ``lora.add_lora(rank r = 8, alpha = 16 → s = 2, query/value,
    init)``, trained with Adam (no weight decay, constant lr) to minimise

        L = mean over non-padding tokens and hidden units of (h_student − h_teacher)²

    with h the final hidden states (``last_hidden_state``); both models stay in eval mode
    (no dropout: the target is deterministic).  Data: the sentences of the MRPC (both
    sentences of each pair) and CoLA train sets, de-duplicated, read through
    :mod:`harness.data` (``--data-dir`` or ``$GLUE_DIR``); a fixed held-out set of
    ``n_heldout`` = 512 sentences (the same for every config), the rest for training;
    batches of 32, max length 64, order drawn from the seed (the same for every init).
    Data-aware inits (``lora.DATA_INITS``: eva, corda, lora_ga, ...) get
    their statistics from the first 8 of those batches: input second moments of the target
    layers and/or the mean gradient of this same MSE with respect to the pretrained W — for
    gradient inits a hint that points at ΔW*, which is part of what they are being tested on.

Layers
    ``layers`` (default: every encoder layer) restricts ΔW* and the adapters to those encoder layers.
    The layers below the first of them are then the pretrained ones in teacher and student alike,
    so what enters that layer is computed once per batch for a seed (:class:`Inputs`,
    :func:`seed_inputs`) and every step runs only the layers from there on; a guard
    (:func:`check_prefix`) checks this forward against the whole model's.  Planting only in the
    last layer makes a CPU run cheap (step times measured in NOTES.md).

Learning rate
    Every (subspace, init, seed) trains once per lr in ``lrs`` (default 3e-4, 1e-3, 3e-3); the
    headline numbers (``final``) come from the lr with the lowest final *held-out MSE* —
    what a practitioner can see — never from the recovery error.  Every lr's curves are kept.

Tracked every ``eval_every`` steps (and at step 0), per adapted layer and averaged:
    ``rel_err`` = ‖ΔW − ΔW*‖_F / ‖ΔW*‖_F (just ‖ΔW‖_F when ΔW* = 0, i.e. scale 0), with ΔW
    relative to the original W from the layer's ``delta_factors()`` (for residual inits such
    as ``svd``: s·BA − s·B₀A₀), computed from factors; principal angles (degrees) between
    ΔW's top-k left (column) / right (row) singular subspaces and ΔW*'s
    (``angle_left``/``angle_right`` = mean over layers of the largest angle; directions of ΔW
    with singular value < 1e-6·σ*₁ are rounding noise, and the k − m missing angles of a ΔW
    with fewer than k directions count as 90°); train MSE (mean since the last eval) and
    held-out MSE.

Predictions (written before any run; the analysis checks them)
    P1  lora_fa_svd (A frozen = V_rᵀ, W's top-r right singular vectors): ΔW = B V_rᵀ, so
        rowspace(ΔW) ⊂ span(V_r).  (a) top: span(V_S) ⊂ span(V_r) (k ≤ r), ΔW* is
        representable exactly → rel_err → ~0.  (b) bottom: V_S ⊥ V_r, the best ΔW is 0 →
        rel_err ≥ 1 forever, right angles stay 90°.  (c) random: only the projection onto
        span(V_r) is reachable, ‖ΔW* P_{V_r}‖/‖ΔW*‖ ≈ √(r/n) → rel_err ≥ √(1 − r/n) ≈ 0.99 (n = 384).
    P2  lora_fa (A frozen, random orthonormal rows): the (c)-type floor rel_err ≥ ≈ 0.99 in
        all three subspaces — it recovers none of them.
    P3  random (standard LoRA, B = 0): roughly indifferent to where ΔW* lies; differences
        between (a)/(b)/(c) only through how strongly the data excite V_S (input covariance).
    P4  svd (PiSSA): fastest of all inits in (a) (its A, B start spanning W's top-r subspaces
        with large norm), no advantage — likely slower than random — in (b) and (c).
    P5  svd_minor (bottom-r singular vectors, if available): fastest in (b), no advantage in (a)/(c).
    P6  olora (QR of W, if available): its starting subspaces are W's first r columns, not
        singular subspaces → behaves like random in all three.
    P7  For every init, value layers are recovered better (lower rel_err) than query layers:
        ΔW_q acts only through softmax attention logits, a weaker, saturating signal.
    P8  Held-out MSE ranks inits like rel_err within a subspace, except lora_fa/lora_fa_svd
        in (b)/(c), which can lower the MSE with a ΔW far from ΔW* (compensation).

Over 400 lines on purpose: this description (70 lines), then the experiment's planting, training loop,
recovery measures and resumable logging (about 390 lines), which are read together and used nowhere else.
"""
from __future__ import annotations

import copy
import json
import math
import random
import re
import time
from pathlib import Path
from typing import NamedTuple

import torch

import lora
from lora import spectra as sp

from .logs import write_json_atomic
from .presets import PLANTED_DEFAULTS
from .tasks import TASKS, UserError

SUBSPACES = ("top", "bottom", "random")
DEFAULT_INITS = ("random", "svd", "svd_minor", "lora_fa", "lora_fa_svd", "olora")
DEFAULTS = PLANTED_DEFAULTS            # every setting and its default: harness/presets.py
DEFAULT_MODEL = DEFAULTS["model"]
TARGETS = tuple(DEFAULTS["targets"])


# ----------------------------------------------------------------- the planted update
def planted_factors(W: torch.Tensor, k: int, subspace: str, scale: float, generator: torch.Generator):
    """ΔW* = B* A* = U_S P diag(σ) Qᵀ V_Sᵀ (see module doc), float64 on the CPU, as a dict:
    B = U_S P diag(σ) (out×k), A = Qᵀ V_Sᵀ (k×in), sigma = scale·‖W‖₂·linspace(1, 0.4, k),
    U = U_S P (out×k) and V = V_S Q (in×k): orthonormal bases of ΔW*'s column and row spaces."""
    if subspace not in SUBSPACES:
        raise ValueError(f"unknown subspace {subspace!r}; valid: {', '.join(SUBSPACES)}")
    W = W.detach().to(torch.float64).cpu()
    out_f, in_f = W.shape

    def haar(n, m):
        return torch.linalg.qr(torch.randn(n, m, generator=generator, dtype=torch.float64)).Q

    if subspace == "random":
        U_S, V_S = haar(out_f, k), haar(in_f, k)
    else:
        U_S, V_S = sp.top_singular_subspaces(W, k, subspace)
    P, Q = haar(k, k), haar(k, k)
    sigma = scale * torch.linalg.matrix_norm(W, ord=2) * torch.linspace(1.0, 0.4, k, dtype=torch.float64)
    return dict(B=(U_S @ P) * sigma, A=Q.T @ V_S.T, sigma=sigma, U=U_S @ P, V=V_S @ Q)


def target_linears(model: torch.nn.Module, targets=TARGETS) -> dict[str, torch.nn.Linear]:
    """The ``nn.Linear`` modules named by ``targets`` as add_lora matches them: a full module name or its
    last component ("query")."""
    return {n: m for n, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and (n in targets or n.rsplit(".", 1)[-1] in targets)}


def layer_index(name: str) -> int | None:
    """The encoder layer a module belongs to ("encoder.layer.5.attention.self.query" → 5), else None."""
    m = re.search(r"(?:^|\.)layer\.(\d+)\.", name)
    return int(m.group(1)) if m else None


def encoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The transformer's list of layers (BERT / RoBERTa: ``model.encoder.layer``)."""
    layers = getattr(getattr(model, "encoder", None), "layer", None)
    if not isinstance(layers, torch.nn.ModuleList):
        raise UserError(f"{type(model).__name__} has no encoder.layer list; the layers setting needs a BERT-like encoder")
    return layers


def layer_targets(model: torch.nn.Module, targets, layers) -> list[str]:
    """``targets`` restricted to the encoder layers ``layers`` (None: every layer), as full module names."""
    n = len(encoder_layers(model))
    bad = [i for i in (layers or []) if not (isinstance(i, int) and 0 <= i < n)]
    if bad:
        raise UserError(f"layers {bad[0]!r} is not an encoder layer of this model; valid: 0..{n - 1}")
    names = [nm for nm in target_linears(model, targets) if layers is None or layer_index(nm) in set(layers)]
    if not names:
        raise UserError(f"the model has no nn.Linear named {', '.join(targets)} in layers {layers}")
    return names


@torch.no_grad()
def plant(model: torch.nn.Module, k: int, subspace: str, scale: float, seed: int, targets=TARGETS) -> dict:
    """Add ΔW* to every target layer of ``model`` in place; returns {name: :func:`planted_factors` dict}."""
    g = torch.Generator().manual_seed(10_000 + seed)
    planted = {}
    for name, lin in target_linears(model, targets).items():
        pl = planted_factors(lin.weight, k, subspace, scale, g)
        lin.weight.add_((pl["B"] @ pl["A"]).to(lin.weight))
        planted[name] = pl
    if not planted:
        raise UserError(f"the model has no nn.Linear named {', '.join(targets)}")
    return planted


# ------------------------------------------------------------------------ measurements
def recovery(model: torch.nn.Module, planted: dict, k: int) -> dict:
    """Per-layer and mean recovery of ΔW* by the adapters of ``model`` (see module doc)."""
    layers = lora.lora_layers(model)
    errs, left, right = {}, {}, {}
    for name, pl in planted.items():
        B, A = (t.detach().to("cpu", torch.float64) for t in layers[name].delta_factors())
        norm = float(torch.linalg.vector_norm(pl["sigma"]))      # ‖ΔW*‖_F; 0 only for scale 0 (tests)
        errs[name] = sp.lowrank_distance(B, A, pl["B"], pl["A"]) / (norm if norm > 0 else 1.0)
        U, S, V = sp.lowrank_svd(B, A)
        # directions below 1e-6·σ*_max are rounding noise (e.g. s·BA − s·B₀A₀ at step 0 of svd init)
        m = min(k, int((S > 1e-6 * max(float(pl["sigma"].max()), 1e-30)).sum()))
        pad = [90.0] * (k - m)
        left[name] = [math.degrees(a) for a in sp.principal_angles(U[:, :m], pl["U"]).tolist()] + pad
        right[name] = [math.degrees(a) for a in sp.principal_angles(V[:, :m], pl["V"]).tolist()] + pad
    names = list(planted)

    def mean(xs):
        xs = list(xs)
        return sum(xs) / len(xs) if xs else None

    return dict(rel_err=mean(errs.values()),
                rel_err_query=mean(errs[n] for n in names if n.endswith("query")),
                rel_err_value=mean(errs[n] for n in names if n.endswith("value")),
                angle_left=mean(max(left[n]) for n in names), angle_right=mean(max(right[n]) for n in names),
                rel_err_layers=[errs[n] for n in names], angles_left_layers=left, angles_right_layers=right)


def masked_mse(h: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of (h − target)² over non-padding tokens (mask = 1) and hidden units."""
    m = mask.to(h.dtype).unsqueeze(-1)
    return ((h - target) ** 2 * m).sum() / (m.sum() * h.shape[-1])


# --------------------------------------------------------------------------------- data
def load_sentences(data_dir=None) -> tuple[list[str], dict]:
    """De-duplicated sentences of the MRPC (both of each pair) and CoLA train sets, and their sources."""
    from .data import load_task_data
    sentences, sources = [], {}
    for name in ("mrpc", "cola"):
        splits, source = load_task_data(TASKS[name], data_dir)
        sentences += [t.strip() for ex in splits["train"] for t in ex.texts]
        sources[name] = source
    return [s for s in dict.fromkeys(sentences) if s], sources


class Batches:
    """Token ids of a list of sentences, padded to ``max_length`` once; batches trimmed to their longest row."""

    def __init__(self, tok, sentences: list[str], max_length: int):
        enc = tok(sentences, padding="max_length", truncation=True, max_length=max_length, return_tensors="pt")
        self.ids, self.mask = enc["input_ids"], enc["attention_mask"]
        self.lengths = self.mask.sum(1)

    def __len__(self) -> int:
        return self.ids.shape[0]

    def get(self, idx: torch.Tensor, device):
        L = int(self.lengths[idx].max())
        return self.ids[idx, :L].to(device, non_blocking=True), self.mask[idx, :L].to(device, non_blocking=True)

    def train_order(self, batch_size: int, steps: int, seed: int):
        """``steps`` index batches from successive seeded permutations (the last partial batch of each dropped)."""
        g = torch.Generator().manual_seed(seed)
        per_epoch = max(1, len(self) // batch_size)
        out = []
        while len(out) < steps:
            perm = torch.randperm(len(self), generator=g)
            out += [perm[i * batch_size:(i + 1) * batch_size] for i in range(per_epoch)]
        return out[:steps]

    def in_order(self, batch_size: int):
        return [torch.arange(i, min(i + batch_size, len(self))) for i in range(0, len(self), batch_size)]


def hidden(model, ids, mask) -> torch.Tensor:
    return model(input_ids=ids, attention_mask=mask).last_hidden_state


class Inputs(NamedTuple):
    """One batch: token ids, attention mask and, when ΔW* and the adapters sit only in layers ≥ ``start``,
    ``prefix`` = (start, the hidden states entering layer ``start``, that layer's other call arguments).
    Layers below ``start`` are the pretrained ones in teacher and student alike, so their output is computed
    once per batch (:func:`with_prefix`) and every forward runs only the layers from ``start`` on."""
    ids: torch.Tensor
    mask: torch.Tensor
    prefix: tuple | None = None


class _Captured(Exception):
    pass


@torch.no_grad()
def with_prefix(model, ids, mask, start: int) -> Inputs:
    """Run ``model`` up to encoder layer ``start`` and keep what enters it (a pre-hook captures the layer's
    arguments and stops the forward there)."""
    if start == 0:
        return Inputs(ids, mask)
    box = {}

    def grab(module, args, kwargs):
        box["args"], box["kwargs"] = args, kwargs
        raise _Captured

    handle = encoder_layers(model)[start].register_forward_pre_hook(grab, with_kwargs=True)
    try:
        model(input_ids=ids, attention_mask=mask)
    except _Captured:
        pass
    finally:
        handle.remove()
    args = box["args"]
    return Inputs(ids, mask, (start, args[0].detach(), tuple(args[1:]), dict(box["kwargs"])))


def forward(model, x: Inputs) -> torch.Tensor:
    """Final hidden states of batch ``x``: the whole model, or only the layers from ``x.prefix``'s start."""
    if x.prefix is None:
        return hidden(model, x.ids, x.mask)
    start, h, args, kwargs = x.prefix
    for layer in encoder_layers(model)[start:]:
        out = layer(h, *args, **kwargs)
        h = out[0] if isinstance(out, tuple) else out      # transformers 4 returns a tuple, 5 the tensor
    return h


def check_prefix(model, x: Inputs, tol: float = 1e-4) -> None:
    """The cached-prefix forward must equal the whole model's: a guard against models whose last hidden state
    is not the last layer's output."""
    if x.prefix is None:
        return
    with torch.no_grad():
        err = float((forward(model, x) - hidden(model, x.ids, x.mask)).abs().max())
    if not err <= tol:
        raise UserError(f"the layers setting needs the last hidden state to be the last encoder layer's output; "
                        f"the cached-prefix forward differs by {err:.2g} on {type(model).__name__}")


@torch.no_grad()
def heldout_targets(teacher, data: Batches, batch_size: int, device, start: int = 0) -> list:
    """[(Inputs, teacher's final hidden states)] for the held-out batches, in order."""
    xs = [with_prefix(teacher, *data.get(idx, device), start) for idx in data.in_order(batch_size)]
    return [(x, forward(teacher, x)) for x in xs]


@torch.no_grad()
def heldout_mse(model, targets: list) -> float:
    num = den = 0.0
    for x, ht in targets:
        n = float(x.mask.sum())
        num += float(masked_mse(forward(model, x), ht, x.mask)) * n
        den += n
    return num / den


# ----------------------------------------------------------------------------- training
STAT_BATCHES = 8      # data-aware inits (lora.DATA_INITS): statistics from the first 8 training batches


def init_stats(base, teacher, init: str, targets, train: "Batches", order: list, device):
    """``lora.collect_layer_stats`` for a data-aware init (None for the others), on ``device``:
    input second moments of the target layers and/or the mean gradient of the planted MSE loss
    (against the teacher) with respect to their pretrained weights, over ``order``'s batches.
    The statistics come back on the CPU, where ``base`` (and add_lora) live."""
    needs = lora.DATA_INITS.get(init)
    if not needs:
        return None
    import dataclasses
    probe = copy.deepcopy(base).to(device)
    batches = [dict(zip(("input_ids", "attention_mask"), train.get(idx, device))) for idx in order]

    def loss_fn(model, batch):
        with torch.no_grad():
            target = hidden(teacher, batch["input_ids"], batch["attention_mask"])
        return masked_mse(hidden(model, batch["input_ids"], batch["attention_mask"]), target,
                          batch["attention_mask"])

    stats = lora.collect_layer_stats(probe, list(targets), batches, needs=needs, loss_fn=loss_fn)
    return {n: dataclasses.replace(st, **{f: getattr(st, f).cpu() for f in ("input_cov", "input_mean", "grad")
                                          if getattr(st, f) is not None}) for n, st in stats.items()}


def seed_inputs(base, train: Batches, cfg: dict, seed: int, start: int, device) -> list | None:
    """This seed's training batches with their prefix up to layer ``start`` computed once, for every init
    and lr of the seed (None when ``start`` is 0: nothing to cache)."""
    if start == 0:
        return None
    return [with_prefix(base, *train.get(idx, device), start)
            for idx in train.train_order(cfg["batch_size"], cfg["steps"], seed)]


def train_student(base, teacher, planted: dict, init: str, lr: float, seed: int, cfg: dict,
                  train: Batches, heldout: list, device, inputs: list | None = None) -> dict:
    """One student (one init, one lr): curves and final numbers (see module doc).  ``inputs``: the training
    batches of this seed's order as :class:`Inputs` with their cached prefix (:func:`seed_inputs`); None:
    read from ``train`` and run the whole model."""
    t0 = time.time()
    order = train.train_order(cfg["batch_size"], cfg["steps"], seed)
    student = copy.deepcopy(base)            # base lives on the CPU: add_lora's seeded init draws there
    stats = init_stats(base, teacher, init, cfg["targets"], train, order[:STAT_BATCHES], device)
    lora.add_lora(student, cfg["targets"], rank=cfg["rank"], alpha=cfg["alpha"], init=init, seed=seed,
                  **({"stats": stats} if stats is not None else {}))
    student.to(device).eval()
    trainable = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.Adam(trainable, lr=lr, fused=torch.device(device).type == "cuda")
    running, n_running, curves, diverged = torch.zeros((), device=device), 0, [], False

    def point(step):
        p = dict(step=step, train_mse=float(running) / n_running if n_running else None,
                 heldout_mse=heldout_mse(student, heldout))
        finite = all(bool(torch.isfinite(t).all()) for t in trainable) and math.isfinite(p["heldout_mse"]) \
            and (p["train_mse"] is None or math.isfinite(p["train_mse"]))
        return dict(p, **recovery(student, planted, cfg["k"])) if finite else None

    start = point(0)
    if start is None:
        raise ValueError(f"init {init!r} gave a non-finite student before training")
    curves.append(start)
    for step, idx in enumerate(order, start=1):
        x = inputs[step - 1] if inputs is not None else Inputs(*train.get(idx, device))
        with torch.no_grad():
            target = forward(teacher, x)
        loss = masked_mse(forward(student, x), target, x.mask)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        running += loss.detach()
        n_running += 1
        if step % cfg["eval_every"] == 0 or step == cfg["steps"]:
            p = point(step)
            running.zero_()
            n_running = 0
            if p is None:                   # a non-finite loss or adapter: stop this lr here
                diverged = True
                curves.append(dict(step=step, diverged=True))
                break
            curves.append(p)
    final = {k: v for k, v in curves[-1].items()} if not diverged else None
    return dict(lr=lr, diverged=diverged, curves=[{k: v for k, v in c.items() if not k.startswith("angles_")}
                                                  for c in curves],
                final=final, wall_time_s=time.time() - t0)


# --------------------------------------------------------------------------- the loop
def load_encoder(model_id: str, sentences: list[str]):
    """(bare encoder, tokenizer): the base model of harness.models' sequence classifier."""
    from .models import load_model_and_tokenizer
    model, tok = load_model_and_tokenizer(model_id, num_labels=2, seed=0, train_texts=sentences)
    return model.base_model.float(), tok      # float32 even if the checkpoint was stored in half precision


def _config(subspace, init, seed, params) -> dict:
    return json.loads(json.dumps(dict(subspace=subspace, init=init, seed=seed, **params)))


def log_name(subspace: str, init: str, seed: int) -> str:
    return f"{subspace}-{init}-s{seed}.json"


def validate(subspaces, inits, seeds, params) -> None:
    bad = [s for s in subspaces if s not in SUBSPACES]
    if bad:
        raise UserError(f"unknown subspace {bad[0]!r}; valid: {', '.join(SUBSPACES)}")
    bad = [m for m in inits if m not in valid_inits()]
    if bad:
        raise UserError(f"unknown init {bad[0]!r}; valid: {', '.join(valid_inits())}")
    for key in ("rank", "k", "steps", "batch_size", "max_length", "eval_every", "n_heldout"):
        v = params[key]
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise UserError(f"{key} must be a positive integer, got {v!r}")
    if not params["lrs"] or any(not (isinstance(x, (int, float)) and x > 0) for x in params["lrs"]):
        raise UserError(f"lrs must be positive numbers, got {params['lrs']!r}")
    layers = params.get("layers")
    if layers is not None and (not isinstance(layers, (list, tuple)) or not layers
                               or any(not isinstance(i, int) or isinstance(i, bool) for i in layers)):
        raise UserError(f"layers must be a non-empty list of encoder layer indices or None (all), got {layers!r}")
    if not (isinstance(params["scale"], (int, float)) and params["scale"] >= 0):
        raise UserError(f"scale must be a number >= 0, got {params['scale']!r}")
    if not seeds or any(not isinstance(s, int) for s in seeds):
        raise UserError(f"seeds must be integers, got {seeds!r}")


def valid_inits() -> tuple[str, ...]:
    """Every init lora offers at run time (``lora.ALL_INITS``, read from its registry)."""
    return lora.ALL_INITS


def default_inits() -> list[str]:
    """DEFAULT_INITS restricted to what lora offers now (svd_minor, olora may be absent)."""
    return [m for m in DEFAULT_INITS if m in valid_inits()]


def run_planted(out_dir="logs/planted", subspaces=SUBSPACES, inits=None, seeds=(0, 1, 2), data_dir=None,
                device: str | None = None, log=print, shard: tuple[int, int] = (0, 1), **overrides) -> dict[str, str]:
    """Every (subspace, init, seed) in one process, the model loaded once; one JSON log each.

    ``shard=(i, n)`` runs only the i-th of every n configs (in subspace, seed, init order), so that
    n processes can share one GPU (a MiniLM step is launch-bound; one process leaves it idle).

    ``overrides``: any key of :data:`DEFAULTS`.  A config whose log exists with status ``ok``
    and the same config is skipped (resumable); an existing log with a *different* config is
    an error (use another ``out_dir``).  Returns {log name: "done" | "skipped" | "failed"}.
    """
    from .steps import environment
    params = _settings(overrides)
    inits = list(default_inits() if inits is None else inits)
    subspaces, seeds = list(subspaces), list(seeds)
    validate(subspaces, inits, seeds, params)
    if not (len(shard) == 2 and 0 <= shard[0] < shard[1]):
        raise UserError(f"shard must be I/N with 0 <= I < N, got {shard[0]}/{shard[1]}")
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    sentences, sources = load_sentences(data_dir)
    everything = [(sub, seed, init) for sub in subspaces for seed in seeds for init in inits]
    todo, status = _todo(out, everything[shard[0]::shard[1]], params, log)
    if not todo:
        return status

    rng = random.Random(0)                   # the held-out split is the same for every config and seed
    shuffled = sentences[:]
    rng.shuffle(shuffled)
    n_held = params["n_heldout"]
    if n_held > len(shuffled) // 4:     # held-out sentences are at most a quarter of the data
        raise UserError(f"n_heldout {n_held} is more than a quarter of the {len(shuffled)} sentences; valid: 1 to "
                        f"{len(shuffled) // 4}")
    base, tok = load_encoder(params["model"], sentences)      # stays on the CPU; copies go to ``dev``
    base.eval()
    for p in base.parameters():
        p.requires_grad_(False)
    train = Batches(tok, shuffled[n_held:], params["max_length"])
    held = Batches(tok, shuffled[:n_held], params["max_length"])
    env = environment(dev)
    names = layer_targets(base, params["targets"], params["layers"])    # the adapted (and planted) modules
    start = min(layer_index(n) or 0 for n in names)       # layers below it are frozen and unplanted: cached
    base_dev = copy.deepcopy(base).to(dev)
    pretrained_held = heldout_targets(base_dev, held, params["batch_size"], dev, start)
    if pretrained_held:
        check_prefix(base_dev, pretrained_held[0][0])
    student_cfg = {**params, "targets": names}

    for seed in seeds:
        inputs = None
        for sub in subspaces:
            pending = [(init, *todo[(sub, seed, init)]) for init in inits if (sub, seed, init) in todo]
            if not pending:
                continue
            if inputs is None:
                inputs = seed_inputs(base_dev, train, params, seed, start, dev)
            teacher = copy.deepcopy(base)
            planted = plant(teacher, params["k"], sub, params["scale"], seed, names)
            teacher.to(dev)
            targets = heldout_targets(teacher, held, params["batch_size"], dev, start)
            gap = heldout_mse(teacher, pretrained_held)     # = MSE(pretrained, teacher), symmetric
            for init, name, cfg in pending:
                entry = dict(kind="planted", name=name, config=cfg, env=env, data=sources,
                             planted=dict(k=params["k"], teacher_gap_mse=gap,
                                          sigma_over_norm=[params["scale"] * x for x in
                                                           torch.linspace(1.0, 0.4, params["k"], dtype=torch.float64).tolist()],
                                          n_train=len(train), n_heldout=len(held)))
                status[name] = _student_cell(
                    entry, out / name, log, gap, params["lrs"],
                    lambda lr, teacher=teacher: train_student(base, teacher, planted, init, lr, seed, student_cfg, train, targets,
                                             dev, inputs))
            del teacher
    return status


def _settings(overrides: dict) -> dict:
    """:data:`DEFAULTS` with ``overrides`` (each a known setting), lists as lists."""
    unknown = sorted(set(overrides) - set(DEFAULTS))
    if unknown:
        raise UserError(f"unknown setting {unknown[0]!r}; valid: {', '.join(DEFAULTS)}")
    params = {**DEFAULTS, **overrides}
    params["lrs"], params["targets"] = [float(x) for x in params["lrs"]], list(params["targets"])
    if isinstance(params["layers"], tuple):
        params["layers"] = list(params["layers"])
    return params


def _todo(out: Path, cells, params: dict, log) -> tuple[dict, dict]:
    """({(subspace, seed, init): (log name, config)} still to run, {log name: "skipped"} for those logged ok).
    A log of the same name with another config is an error: its directory belongs to another experiment."""
    todo, status = {}, {}
    for sub, seed, init in cells:
        name, cfg = log_name(sub, init, seed), _config(sub, init, seed, params)
        try:
            old = json.loads((out / name).read_text())
        except (OSError, ValueError):
            old = None
        if old is not None and old.get("config") != cfg:
            diff = sorted(k for k in set(cfg) | set(old.get("config") or {})
                          if cfg.get(k) != (old.get("config") or {}).get(k))
            raise UserError(f"{out / name} was logged with a different config ({', '.join(diff)}); "
                            f"use another --out")
        if old is not None and old.get("status") == "ok":
            status[name] = "skipped"
            log(f"skipped {name} (logged)")
        else:
            todo[(sub, seed, init)] = (name, cfg)
    return todo, status


def _student_cell(entry: dict, path: Path, log, gap: float, lrs, train_at) -> str:
    """One (subspace, init, seed): a student per lr (``train_at(lr)``), the best by held-out MSE, its log
    ``entry`` completed and written atomically to ``path``.  Returns "done" or "failed"."""
    t0, name = time.time(), entry["name"]
    try:
        runs = [train_at(lr) for lr in lrs]
    except Exception as e:      # e.g. lora_ga with 2·rank > a layer's size: log it, go on
        entry.update(status="failed", error=f"{type(e).__name__}: {e}", wall_time_s=time.time() - t0)
        write_json_atomic(path, entry)
        log(f"failed  {name}: {entry['error'][:200]}")
        return "failed"
    ok = [r for r in runs if not r["diverged"]]
    best = min(ok, key=lambda r: r["final"]["heldout_mse"]) if ok else None
    final = None
    if best is not None:
        final = dict(best["final"], lr=best["lr"], heldout_rel=best["final"]["heldout_mse"] / gap if gap > 0 else None)
    entry.update(status="ok" if best else "diverged", best_lr=best and best["lr"], final=final,
                 lr_sweep={f"{r['lr']:g}": dict(diverged=r["diverged"], final=r["final"] and {
                     k: v for k, v in r["final"].items() if not k.startswith("angles_")}) for r in runs},
                 curves={f"{r['lr']:g}": r["curves"] for r in runs},
                 wall_time_s=time.time() - t0)
    write_json_atomic(path, entry)
    if final:
        def f(key, fmt=".3f"):
            return "-" if final[key] is None else format(final[key], fmt)
        log(f"done    {name}: lr {best['lr']:g} rel_err {f('rel_err')} (q {f('rel_err_query')}, "
            f"v {f('rel_err_value')}) angles L {f('angle_left', '.1f')}° R {f('angle_right', '.1f')}° "
            f"heldout/gap {f('heldout_rel', '.3g')} [{entry['wall_time_s']:.0f}s]")
    else:
        log(f"diverged {name}: every lr in {lrs} diverged")
    return "done" if best else "failed"
