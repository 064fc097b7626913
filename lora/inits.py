"""The LoRA inits' factor functions, each one a choice of subspace with its math, plus the data they need.

(Over 400 lines on purpose: fourteen inits, each a short function with its math, and the statistics they
share; one file keeps the inits and their PEFT-equivalence notes side by side.  What each init *is* to the
rest of the code (frozen A, residual, data, rank limit, ...) is declared once, in :mod:`lora.registry`.)

Notation as in :mod:`lora.core`: one adapted ``nn.Linear`` with weight W (out×in) = U S Vᵀ (its SVD),

    y = x Wᵀ + s · x Aᵀ Bᵀ        A: r×in,  B: out×r,  s = alpha/r  (alpha/√r with rsLoRA)

Every init is a function ``f(W, rank, scaling, ctx) -> (B₀, A₀)`` (out×r, r×in; ``ctx`` an
:class:`InitContext`: the layer's statistics, the random generator, the SVD settings);
:class:`lora.core.LoRALinear` casts the factors to W's dtype.  Three kinds:

* **residual** inits (``svd``, ``svd_minor``, ``olora``, ``corda``, ``corda_peft``, ``lora_ga``) give B₀, A₀ ≠ 0 and the
  frozen base becomes W_res = W − s·B₀A₀, computed from the cast factors, so the model is unchanged at
  step 0 (up to rounding) and ΔW relative to the original W is s·BA − s·B₀A₀ (``LoRALinear.residual``).
* **zero-B** inits (``random``, ``lora_fa``, ``lora_fa_svd``, ``eva``, ``lora_fa_grad``, ``lora_fa_eva``)
  give B₀ = 0: ΔW = 0 at step 0, W untouched; only the row space of the first updates (span of A₀'s
  rows) is chosen.  ``lora_fa*`` freeze A.
* **model-changing** inits (``svd_naive``, ``svd_seed``) give s·B₀A₀ ≠ 0 and leave W as it is: the model
  starts at W + s·B₀A₀, not at the pretrained one (ablations).

Data-aware inits read :class:`LayerStats` from :func:`collect_layer_stats` (``lora.DATA_INITS`` says which):
the uncentred input second moment C = XᵀX/n_tokens (and the input mean μ), and/or the mean gradient G of
the loss with respect to W over a few batches.

:func:`gradient_capture` measures, for given init factors and a full-fine-tuning gradient G, the share of
G that the adapter's first step can express.

Where these follow PEFT 0.21 (``peft/tuners/lora/layer.py``: ``pissa_init``, ``olora_init``, ``corda_init``,
``lora_ga_init``; ``peft/tuners/lora/eva.py``, ``corda.py``, ``loraga.py``) the docstrings say exactly where
they equal PEFT's and name every difference with its measured size.  The measurements
(``tests/test_peft_equivalence.py``) use a tiny BERT (hidden 32, 2 layers, rank 4 unless said, alpha 8,
adapters on query and value) built once by :func:`lora.add_lora` and once by ``peft.get_peft_model``; the
*training gap* is ‖o₃ − p₃‖ / ‖p₃ − p₀‖ for the logits o (ours) and p (PEFT's) at step 0 and after 3 identical
SGD steps (lr 0.2), i.e. how far apart the two runs are as a share of how far the steps moved them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Sequence

import torch
from torch import nn

from .targets import matches, no_match_error

_F64 = torch.float64
STAT_KINDS = ("input", "grad")
SVD_METHODS = ("full", "randomized")


# =========================================================================== statistics
@dataclass
class LayerStats:
    """Data statistics of one ``nn.Linear`` (in→out), all float64.

    input_cov   in×in  uncentred second moment C = Σ_t x_t x_tᵀ / n_tokens (padding tokens excluded
                when the batch has an ``attention_mask`` of the layer input's leading shape), or None
    input_mean  (in,)  μ = Σ_t x_t / n_tokens, or None
    grad        out×in mean over batches of ∂loss_b/∂W, or None
    n_batches, n_tokens   how much data went in (n_tokens: rows of the input statistics)
    input_cov_maxnorm  in×in  PEFT CorDA's calibration covariance (1/K) Σ_k (X_k/|max X_k|)ᵀ(X_k/|max X_k|)
                over the layer's K forward calls, X_k a call's (unpadded) tokens and max X_k its largest
                entry, or None (read only by ``corda_peft``)
    """
    input_cov: torch.Tensor | None
    input_mean: torch.Tensor | None
    grad: torch.Tensor | None
    n_batches: int
    n_tokens: int
    input_cov_maxnorm: torch.Tensor | None = None

    def input_directions(self, rank: int, center: bool = True) -> torch.Tensor:
        """Top-``rank`` principal input directions as orthonormal rows (rank×in), float64.

        With ``center`` the eigenvectors of the covariance Σ = C − μμᵀ (= the right singular vectors of
        the centred activation matrix X − 1μᵀ, i.e. PCA, as PEFT's EVA computes them); otherwise those
        of C (= right singular vectors of X itself).  Sign: the largest-|·| entry of each row is
        positive (sklearn's ``svd_flip`` convention, which PEFT's IncrementalPCA uses).
        """
        if self.input_cov is None:
            raise ValueError("these statistics have no input covariance; collect them with needs={'input'}")
        M = self.input_cov.to(_F64)
        if center:
            M = M - torch.outer(self.input_mean.to(_F64), self.input_mean.to(_F64))
        evals, evecs = torch.linalg.eigh((M + M.mT) / 2)            # ascending
        return _canonical_sign(evecs.flip(1)[:, :rank].mT)


@dataclass
class InitContext:
    """What an init's factor function may read besides W, rank and s.

    stats       the layer's :class:`LayerStats` (data-aware inits only, else None)
    generator   the random generator of :func:`lora.add_lora`'s ``seed`` (None: torch's global RNG)
    seed        an int drawn from ``generator`` for this layer (None without one): seeds the randomized SVD
    svd_method, niter   how :func:`truncated_svd` computes the top-r SVD
    """
    stats: LayerStats | None = None
    generator: torch.Generator | None = None
    seed: int | None = None
    svd_method: str = "full"
    niter: int = 4


def collect_layer_stats(model: nn.Module, targets: str | Sequence[str], batches: Iterable[Mapping],
                        needs: Iterable[str] = frozenset(STAT_KINDS),
                        loss_fn: Callable | None = None, max_batches: int | None = None) -> dict[str, LayerStats]:
    """Statistics of the target ``nn.Linear`` layers over a few batches, for the data-aware inits.

    ``targets`` select layers exactly as in :func:`lora.add_lora` (names or a regex), so the keys of the
    result are the names ``add_lora(..., stats=...)`` looks up.  Each batch is a dict passed as
    ``model(**batch)``; with ``"grad"`` in ``needs`` the loss is ``loss_fn(model, batch)`` if given, else
    ``model(**batch).loss``, and G is the mean over batches of its gradient with respect to each target
    weight (one forward serves both statistics).  ``max_batches`` stops early.  With ``"input"`` it also
    keeps PEFT CorDA's per-call max-normalised covariance (``LayerStats.input_cov_maxnorm``).

    The model runs in eval mode (no dropout) and is left as found: every module's train/eval flag, every
    parameter's ``requires_grad`` and ``.grad`` (gradients are taken with ``torch.autograd.grad``, never
    accumulated into ``.grad``), and the global torch RNG (``torch.random.fork_rng``).
    """
    needs = set(needs)
    if not needs or not needs <= set(STAT_KINDS):
        raise ValueError(f"unknown statistics {sorted(needs - set(STAT_KINDS)) or '(none)'}; valid: "
                         f"{', '.join(STAT_KINDS)}")
    layers = {n: m for n, m in model.named_modules() if n and isinstance(m, nn.Linear) and matches(n, targets)}
    if not layers:
        raise no_match_error(model, targets)
    want_in, want_grad = "input" in needs, "grad" in needs
    acc = {n: dict(xx=None, x=None, tok=0, g=None, xx_max=None, calls=0) for n in layers}
    current: dict = {}
    modes = {m: m.training for m in model.modules()}
    flags = {p: p.requires_grad for p in model.parameters()}
    devices = sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})
    handles = [m.register_forward_hook(_input_hook(acc[n], current)) for n, m in layers.items()] if want_in else []
    n_batches = 0
    try:
        with torch.random.fork_rng(devices=devices):
            model.eval()
            if want_grad:
                for p in flags:
                    p.requires_grad_(False)
                for m in layers.values():
                    m.weight.requires_grad_(True)
            for batch in batches:
                if max_batches is not None and n_batches >= max_batches:
                    break
                current.clear()
                current["attention_mask"] = batch.get("attention_mask") if isinstance(batch, Mapping) else None
                if not want_grad:
                    with torch.no_grad():
                        model(**batch)
                else:
                    _add_gradient(model, batch, loss_fn, layers, acc)
                n_batches += 1
    finally:
        for h in handles:
            h.remove()
        for p, f in flags.items():
            p.requires_grad_(f)
        for m, t in modes.items():
            m.training = t
    if n_batches == 0:
        raise ValueError("collect_layer_stats got no batches")
    return {n: _layer_stats(n, a, n_batches, want_in, want_grad) for n, a in acc.items()}


def _input_hook(a: dict, current: dict):
    """A forward hook adding one call's input statistics to ``a``: Σ xxᵀ, Σ x and the token count over the
    tokens the batch's attention mask keeps (``current["attention_mask"]``), in float64."""
    def fn(module, args, output):
        x = args[0].detach()
        mask = current.get("attention_mask")
        if mask is not None and tuple(mask.shape) == tuple(x.shape[:-1]):
            x = x[mask.to(x.device).bool()]
        x = x.reshape(-1, x.shape[-1]).to(_F64)
        xx = x.mT @ x
        a["xx"] = xx if a["xx"] is None else a["xx"] + xx
        a["x"] = x.sum(0) if a["x"] is None else a["x"] + x.sum(0)
        a["tok"] += x.shape[0]
        if x.shape[0]:          # PEFT's CorDA hook: each call's tokens divided by |their largest entry|
            peak = x.max().abs()
            xx_max = xx / peak ** 2 if peak > 0 else torch.zeros_like(xx)
            a["xx_max"] = xx_max if a["xx_max"] is None else a["xx_max"] + xx_max
            a["calls"] += 1
    return fn


def _add_gradient(model, batch, loss_fn, layers: dict, acc: dict) -> None:
    """Add the batch loss's gradient with respect to each target weight to ``acc`` (float64; never into .grad)."""
    with torch.enable_grad():
        if loss_fn is not None:
            loss = loss_fn(model, batch)
        else:
            loss = getattr(model(**batch), "loss", None)
            if loss is None:
                raise ValueError("collect_layer_stats needs loss_fn when model(**batch) has no .loss")
        grads = torch.autograd.grad(loss, [m.weight for m in layers.values()], allow_unused=True)
    for (n, m), g in zip(layers.items(), grads):
        g = torch.zeros_like(m.weight, dtype=_F64) if g is None else g.detach().to(_F64)
        acc[n]["g"] = g if acc[n]["g"] is None else acc[n]["g"] + g


def _layer_stats(name: str, a: dict, n_batches: int, want_in: bool, want_grad: bool) -> LayerStats:
    """One layer's :class:`LayerStats` from its sums over ``n_batches`` batches."""
    tok = a["tok"]
    if want_in and tok == 0:
        raise ValueError(f"layer {name!r} saw no (unmasked) input tokens in {n_batches} batches")
    return LayerStats(input_cov=a["xx"] / tok if want_in else None, input_mean=a["x"] / tok if want_in else None,
                      grad=a["g"] / n_batches if want_grad else None, n_batches=n_batches, n_tokens=tok,
                      input_cov_maxnorm=a["xx_max"] / a["calls"] if want_in else None)


# =========================================================================== helpers
def _canonical_sign(Vh: torch.Tensor, U: torch.Tensor | None = None):
    """Flip each row of Vh (and the matching column of U) so that its largest-|·| entry is positive."""
    idx = Vh.abs().argmax(dim=1, keepdim=True)
    sign = torch.sign(torch.gather(Vh, 1, idx))
    sign[sign == 0] = 1
    Vh = Vh * sign
    return Vh if U is None else (Vh, U * sign.mT)


def _svd(M: torch.Tensor):
    """Full thin SVD in float64 with canonical signs: M = U diag(S) Vh, S descending."""
    U, S, Vh = torch.linalg.svd(M.detach().to(_F64), full_matrices=False)
    Vh, U = _canonical_sign(Vh, U)
    return U, S, Vh


def _split(U, S, Vh, scaling):
    """PiSSA-style balanced split of U diag(S) Vh: B = U·sqrt(S/s), A = sqrt(S/s)·Vh, so s·BA = U S Vh."""
    root = torch.sqrt(S / scaling)
    return U * root, root[:, None] * Vh


def truncated_svd(W: torch.Tensor, rank: int, method: str = "full", niter: int = 4,
                  generator_seed: int | None = None):
    """Top-``rank`` SVD of W (out×in): returns U_r (out×r), S_r (r,), V_r (in×r) in W's dtype.

    ``full``: ``torch.linalg.svd`` in float64.  ``randomized``: ``torch.svd_lowrank`` with ``niter`` power
    iterations, oversampled by 10, reproducible for a given ``generator_seed`` (the global RNG is untouched).
    """
    if method not in SVD_METHODS:
        raise ValueError(f"unknown svd method {method!r}; valid: {', '.join(SVD_METHODS)}")
    W64 = W.detach().to(torch.float64)
    if method == "full":
        U, S, Vh = torch.linalg.svd(W64, full_matrices=False)
        V = Vh.mT
    else:
        q = min(rank + 10, *W64.shape)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0 if generator_seed is None else generator_seed)
            U, S, V = torch.svd_lowrank(W64, q=q, niter=niter)
    dtype = W.dtype
    return U[:, :rank].to(dtype), S[:rank].to(dtype), V[:, :rank].to(dtype)


# =========================================================================== random and weight-only inits
def random_init(W: torch.Tensor, rank: int, scaling: float, ctx: InitContext):
    """LoRA's default (Hu et al. 2021; loralib, PEFT's ``init_lora_weights=True``): A₀ ~ Kaiming-uniform(a=√5)
    (r×in, i.e. U(−1/√in, 1/√in)), B₀ = 0 (out×r).  ΔW = 0 at step 0, W untouched.  A trains.
    Draws from ``ctx.generator`` (torch's global RNG when None); factors in W's dtype.

    PEFT's ``init_lora_weights=True`` draws the same distribution from the global RNG after ``nn.Linear``'s
    own init of A and B, so the draws differ; given the same A₀ the two adapters train identically (training
    gap 0: the same float32 operations).
    """
    A = torch.zeros(rank, W.shape[1], dtype=W.dtype, device=W.device)
    nn.init.kaiming_uniform_(A, a=math.sqrt(5), generator=ctx.generator)
    return torch.zeros(W.shape[0], rank, dtype=W.dtype, device=W.device), A


def lora_fa_init(W: torch.Tensor, rank: int, scaling: float, ctx: InitContext):
    """LoRA-FA (Zhang et al. 2023): A₀ frozen with orthonormal rows, B₀ = 0; only B trains.

    A₀ = Qᵀ (r×in) from the thin QR of a float64 Gaussian G (in×r) drawn from ``ctx.generator``: a uniformly
    random r-dimensional row space.  ΔW = s·B·A₀ always has its row space in span(A₀ᵀ); W untouched.

    This is LoRA-FA's parameterisation (frozen A, B = 0), not PEFT's LoRA-FA: PEFT 0.21 has it as an optimizer
    (``peft.optimizers.create_lorafa_optimizer``) that keeps PEFT's Kaiming A₀, freezes it, and inside an
    AdamW multiplies B's gradient by (A₀A₀ᵀ + 10⁻⁸I)⁻¹/s².  A PEFT LoRA layer given this A₀ and a frozen A
    trains identically (training gap 0).  With orthonormal rows A₀A₀ᵀ = I, so PEFT's factor is the scalar
    1/(s²(1 + 10⁻⁸)), which Adam's normalisation cancels except through eps and PEFT's bf16 autocast of that
    product: torch AdamW on this init against ``create_lorafa_optimizer`` with the same A₀ (lr 0.01, 3 steps)
    gives a training gap of 7e-3 (eps s²·10⁻⁶ vs PEFT's 10⁻⁶), 2e-4 with eps = 0 on both.
    """
    G = torch.randn(W.shape[1], rank, generator=ctx.generator, dtype=_F64).to(W.device)
    return torch.zeros(W.shape[0], rank, dtype=_F64, device=W.device), torch.linalg.qr(G).Q.mT


def svd_init(W: torch.Tensor, rank: int, scaling: float, ctx: InitContext):
    """Principal SVD init (PiSSA, Meng et al. 2024; PEFT's ``pissa``), with the residual.

    W's top-r triplets U_r S_r V_rᵀ (:func:`truncated_svd` with ``ctx.svd_method``, seeded by ``ctx.seed``):
    B₀ = U_r·sqrt(S_r/s) (out×r), A₀ = sqrt(S_r/s)·V_rᵀ (r×in), so s·B₀A₀ = U_r S_r V_rᵀ.  The frozen base
    becomes W_res = W − s·B₀A₀ (from the actual product): the model is unchanged at step 0,
    ‖W − W_res‖_F = ‖S_r‖ (Eckart–Young) and W_res's singular values are W's tail.  Factors in W's dtype.

    With ``svd_method="full"`` this is PEFT's ``init_lora_weights="pissa"`` (PEFT: float32 SVD, LAPACK's
    signs; a joint sign flip of (u_i, v_i) changes neither B₀A₀ nor training): s·B₀A₀ agrees to 7e-6
    relative and the training gap is 6e-6.  ``"randomized"`` is not PEFT's ``pissa_niter_k`` (PEFT:
    ``svd_lowrank(W, r, niter=k)``, q = r, the global RNG; ours oversamples to q = r + 10, seeded).
    """
    U, S, V = truncated_svd(W, rank, ctx.svd_method, ctx.niter, ctx.seed)
    root = torch.sqrt(S / scaling)
    return U * root, root[:, None] * V.mT


def svd_naive_init(W: torch.Tensor, rank: int, scaling: float, ctx: InitContext):
    """:func:`svd_init`'s B₀, A₀ with W left as it is, so the model starts at W + U_r S_r V_rᵀ: the top-r
    singular values of every adapted layer are doubled before any training.  An ablation, "svd without the
    residual" (it is *not* the seed project's init: that is :func:`svd_seed_init`)."""
    return svd_init(W, rank, scaling, ctx)


def lora_fa_svd_init(W: torch.Tensor, rank: int, scaling: float, ctx: InitContext):
    """LoRA-FA with W's principal subspace: A₀ frozen = V_rᵀ (r×in, W's top-r right singular vectors, via
    :func:`truncated_svd`), B₀ = 0 (out×r).  Only B trains; W untouched.  Factors in W's dtype."""
    _, _, V = truncated_svd(W, rank, ctx.svd_method, ctx.niter, ctx.seed)
    return torch.zeros(W.shape[0], rank, dtype=W.dtype, device=W.device), V.mT


def svd_seed_factors(W: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The seed project's "svd" init (svd-lorafa, ``lora/model.py``), reproduced as it is, quirks included.

    With ``U, S, Vh = torch.linalg.svd(W)`` (torch returns Vᵀ, here Vh), that code sets

        A = (U[:, :r] · diag(S[:r]))ᵀ      (r×out)  frozen (a LoRA-FA layer)
        B = Vh[:, :r]                      (in×r)   trained

    i.e. B holds the first r *columns* of Vᵀ (entries V[j, i] for i < r: the first r coordinates of every
    right singular vector), not the top-r right singular vectors V[:, :r] it was presumably meant to be.
    The shapes only fit a square W (out = in), and nothing is subtracted from W, so the model starts at
    W + s·B·A ≠ W: every adapted layer is changed before the first step.  The seed used alpha = 1
    (s = 1/r); pass ``alpha=1`` to reproduce that (the study's specs do).  Returns (B, A) in W's dtype.
    """
    out_f, in_f = W.shape
    if out_f != in_f:
        raise ValueError(f"svd_seed needs a square weight (the seed project's construction), got {out_f}×{in_f}; "
                         f"valid: out_features == in_features")
    U, S, Vh = torch.linalg.svd(W.detach().to(torch.float64))
    A = (U[:, :rank] * S[:rank]).mT
    B = Vh[:, :rank]
    return B.to(W.dtype), A.to(W.dtype)


def svd_seed_init(W: torch.Tensor, rank: int, scaling: float, ctx: InitContext):
    """The seed project's init, :func:`svd_seed_factors`: A₀ = (U_r S_r)ᵀ frozen, B₀ = the first r columns
    of Vᵀ, no residual (the model changes at step 0), square W only."""
    return svd_seed_factors(W, rank)


def svd_minor_init(W: torch.Tensor, rank: int, scaling: float, ctx: InitContext):
    """MiLoRA (Wang et al. 2024): the *bottom*-r singular triplets of W, with the residual.

    W = U S Vᵀ (thin, S descending, k = min(out, in)); take the last r triplets U_m (out×r), S_m, V_m (in×r)
    and split them like ``svd``: B₀ = U_m·sqrt(S_m/s) (out×r), A₀ = sqrt(S_m/s)·V_mᵀ (r×in), so
    s·B₀A₀ = U_m S_m V_mᵀ is subtracted from W: the base keeps W's top k−r components, the adapter starts
    on the minor ones and the model is unchanged at step 0.  (If W has zero singular values among the
    last r, those rows/columns of A₀, B₀ are 0 and that direction gets no gradient.)  Not in PEFT 0.21.
    """
    U, S, Vh = _svd(W)
    return _split(U[:, -rank:], S[-rank:], Vh[-rank:], scaling)


def olora_init(W: torch.Tensor, rank: int, scaling: float, ctx: InitContext):
    """OLoRA (Büyükakyüz 2024), exactly as PEFT 0.21's ``olora_init``: thin QR of W, with the residual.

    W = Q R (Q: out×k orthonormal columns, R: k×in upper-trapezoidal, k = min(out, in));
    B₀ = Q[:, :r] (out×r, orthonormal columns), A₀ = R[:r] (r×in), so B₀A₀ = Q_r Q_rᵀ W, the projection of
    W onto the span of its first r columns' Gram–Schmidt basis.  The scaling is *not* folded into the
    factors (PEFT does not divide by s): the base becomes W − s·Q_r R_r, so for s ≠ 1 it is not the
    "rest" (I − Q_r Q_rᵀ)W, but the model is still unchanged at step 0.  Signs are LAPACK's Householder
    convention (torch.linalg.qr), the same as PEFT's: factors agree to 2e-7 relative, training gap 6e-6
    (float64 QR here, float32 in PEFT).
    """
    Q, R = torch.linalg.qr(W.detach().to(_F64))
    return Q[:, :rank].clone(), R[:rank].clone()


# =========================================================================== data-aware inits
def _need(stats: LayerStats | None, field: str, init: str) -> torch.Tensor:
    value = None if stats is None else getattr(stats, field)
    if value is None:
        kind = "grad" if field == "grad" else "input"
        raise ValueError(f"init {init!r} needs layer statistics with {kind!r}: pass stats=lora.collect_layer_stats("
                         f"model, targets, batches, needs={{{kind!r}}})")
    return value.to(_F64)


def eva_init(W: torch.Tensor, rank: int, scaling: float, ctx: InitContext, center: bool = True):
    """EVA (Paischer et al. 2024): A₀ = the top-r principal directions of the layer's inputs, B₀ = 0.

    A₀ (r×in, orthonormal rows) = top-r eigenvectors of the input covariance Σ = C − μμᵀ, i.e. the top-r
    right singular vectors of the centred activation matrix (PEFT's EVA runs IncrementalPCA, which
    centres; ``center=False`` uses C, the uncentred second moment, instead).  B₀ = 0 (out×r): ΔW = 0, W is
    not touched, the model is unchanged at step 0.  A trains.

    Relation to PEFT 0.21's ``initialize_lora_eva_weights``: (1) no rank redistribution across layers
    (every layer keeps rank r: PEFT's ``rho=1``, so ``adjust_scaling_factors`` never applies); (2) no
    whitening (PEFT's default too); signs as PEFT's (largest-|·| entry of each row positive); (3) the PCA
    here is exact, of the union of the batches given (from C and μ in float64).  PEFT's is incremental
    (``IncrementalPCA.partial_fit`` per batch, keeping only the top r components between batches) and
    randomized (``svd_lowrank`` with q = 2r, 4 power iterations), cycling the batches until consecutive
    components agree to cosine ``tau``.  Both are the same PCA for one batch with q = 2r ≥ in (the range
    finder then spans every input direction, and re-feeding the same batch keeps its top r): A₀ equal to
    2e-6, training gap 1e-6 (r = 16, in = 32).  Otherwise PEFT's is an approximation of it: one batch with
    q < in (r = 4): largest principal angle between the two row spaces sin θ = 0.015, training gap 0.005;
    three batches: sin θ = 0.93 (r = 16) and 0.76 (r = 4), training gap 0.14 and 0.42.
    """
    _need(ctx.stats, "input_cov", "eva")
    A = ctx.stats.input_directions(rank, center=center)
    return torch.zeros(W.shape[0], rank, dtype=_F64, device=A.device), A


def lora_fa_eva_init(W: torch.Tensor, rank: int, scaling: float, ctx: InitContext):
    """LoRA-FA with EVA's subspace: A₀ frozen = the top-r principal input directions (as :func:`eva_init`,
    centred, orthonormal rows), B₀ = 0 (out×r).  Only B trains, so ΔW = s·B·A₀ always has its row space
    in the principal input subspace.  W untouched; the model is unchanged at step 0."""
    _need(ctx.stats, "input_cov", "lora_fa_eva")
    return eva_init(W, rank, scaling, ctx)


def corda_damped_covariance(C: torch.Tensor, damp: float = 0.01, tol: float = 0.05):
    """PEFT's CorDA damping: C' = C + d·mean(diag C)·I with d = 0.01, doubled until ‖C' C'⁻¹ − I‖_F < 0.05.
    Returns (C', C'⁻¹)."""
    C = C.to(_F64)
    eye = torch.eye(C.shape[0], dtype=_F64, device=C.device)
    mean_diag = torch.diagonal(C).mean()
    for _ in range(64):
        Cd = C + damp * mean_diag * eye
        inv = torch.linalg.inv(Cd)
        if torch.dist(Cd @ inv, eye) < tol:
            return Cd, inv
        damp *= 2
    raise ValueError("corda: the input covariance could not be inverted even with heavy damping")


def corda_init(W: torch.Tensor, rank: int, scaling: float, ctx: InitContext):
    """CorDA, instruction-previewed mode (IPM; Yang et al. 2024): PEFT 0.21's construction on our input
    covariance, with the residual (:func:`corda_peft_init` is PEFT's exactly).

    C' = damped input covariance (:func:`corda_damped_covariance`, in×in); W C' = U S V̂ᵀ (thin SVD);
    Vᵀ := V̂ᵀ C'⁻¹ (k×in, *not* orthonormal) so that W = U S Vᵀ exactly.  Take the top r (IPM):
    B₀ = U_r·sqrt(S_r/s) (out×r), A₀ = sqrt(S_r/s)·V_rᵀ (r×in), s·B₀A₀ = U_r S_r V̂_rᵀ C'⁻¹, the best rank-r
    approximation of W in the ‖(·) C'‖_F sense (the directions that matter most for the observed inputs).
    It is subtracted from W: the model is unchanged at step 0.

    C here is the uncentred second moment XᵀX/n_tokens over every unpadded token of every batch.  PEFT's
    ``preprocess_corda`` uses C_peft = (1/K) Σ_k (X_k/|max X_k|)ᵀ(X_k/|max X_k|) over the layer's K forward
    calls, each call's tokens divided by their own largest entry (and padding not masked).  C → c·C leaves
    s·B₀A₀ and the residual unchanged (S → cS, Vᵀ → Vᵀ/c; the damping scales along) but not the factors:
    B₀ → √c·B₀, A₀ → A₀/√c.  Hence:

    * one forward call without padding: C = c·C_peft with c = (max X)²/n_tokens, so s·B₀A₀, the residual
      and the step-0 model are PEFT's (to 1.4e-4 relative, PEFT's float32 inverse of the damped covariance),
      while B₀ = √c·B_peft and A₀ = A_peft/√c (c = 0.73 and 0.80 on the tiny BERT's two layers).  The
      factors' scale sets the training dynamics (∂L/∂B ∝ A, ∂L/∂A ∝ B), so the training gap is 0.51: the
      runs part by about as much as the steps move them;
    * several calls: the calls are weighted differently, C is not proportional to C_peft and s·B₀A₀ itself
      differs from PEFT's (0.73 relative with 4 calls of 10 tokens, 0.17 with 16; training gap 0.59, 0.95).

    The committed init-study runs (logs/inits, logs/inits_sweep) use this construction, so it is kept as
    it is under this name.
    """
    C = _need(ctx.stats, "input_cov", "corda")
    return _corda_factors(W, C, rank, scaling)


def corda_peft_init(W: torch.Tensor, rank: int, scaling: float, ctx: InitContext):
    """CorDA-IPM exactly as PEFT 0.21 (``preprocess_corda`` + ``corda_init``): :func:`corda_init`'s
    construction on PEFT's calibration covariance C_peft = (1/K) Σ_k (X_k/|max X_k|)ᵀ(X_k/|max X_k|), the
    mean over the layer's K forward calls of each call's tokens divided by their largest entry
    (``LayerStats.input_cov_maxnorm``), so factors, s·B₀A₀ and training match PEFT's, not only the product.

    Left from PEFT: padding tokens are excluded (PEFT's hook takes every token of a call, and needs batch
    size 1 or 2-D inputs), and the SVD is float64 with canonical signs (PEFT: float32, LAPACK's signs; a
    joint sign flip of (u_i, v_i) changes neither B₀A₀ nor the training trajectory).  Measured: s·B₀A₀ to
    1.4e-4 / 4e-5 / 3e-5 relative and training gap 5e-4 / 2e-5 / 2e-6 for 1 / 4 / 16 calls of 10 tokens
    (PEFT's float32 inverse of the damped covariance, worst when one call gives a rank-10 covariance in
    32 dimensions).
    """
    C = _need(ctx.stats, "input_cov_maxnorm", "corda_peft")
    return _corda_factors(W, C, rank, scaling)


def _corda_factors(W: torch.Tensor, C: torch.Tensor, rank: int, scaling: float):
    """CorDA-IPM's split of W by the input covariance C (see :func:`corda_init`): (B₀, A₀), float64."""
    Cd, inv = corda_damped_covariance(C.to(W.device))
    U, S, Vh = _svd(W.detach().to(_F64) @ Cd)
    Vh = Vh @ inv
    return _split(U[:, :rank], S[:rank], Vh[:rank], scaling)


LORA_GA_DIRECTIONS = ("ArB2r", "A2rBr", "ArBr")
LORA_GA_SCALES = ("stable", "unit")


def lora_ga_init(W: torch.Tensor, rank: int, scaling: float, ctx: InitContext,
                 direction: str = "ArB2r", scale: str = "stable", gamma: float = 16.0):
    """LoRA-GA (Wang et al. 2024) as PEFT 0.21's ``lora_ga_init`` with its defaults, with the residual.

    G = mean gradient of W (out×in) = U S Vᵀ; needs 2r ≤ min(out, in).  Default ``direction="ArB2r"``:
    A₀ = V_{1..r}ᵀ (r×in, orthonormal rows), B₀ = U_{r+1..2r}·diag(S_{r+1..2r}) (out×r);
    ``"A2rBr"``: A₀ = V_{r+1..2r}ᵀ, B₀ = U_{1..r}·diag(S_{1..r}) (the paper's layout);
    ``"ArBr"``: A₀ = V_{2,4,..,2r}ᵀ, B₀ = U_{1,3,..,2r−1}·diag(S_{1,3,..}).
    ``scale="stable"`` (default) multiplies B₀ by out^{1/4}/√gamma (gamma = 16); ``"unit"`` leaves it.
    The base becomes W − s·B₀A₀: the model is unchanged at step 0.  Rationale: the first step's reachable
    updates {X A₀ + B₀ Y} contain the top-2r part of G (see :func:`gradient_capture`).

    Relation to PEFT: the same mean gradient (PEFT estimates it in train mode, we in eval mode: the same
    without dropout) and the same construction, up to each singular vector's sign.  PEFT takes a randomized
    ``torch.svd_lowrank(G, q=min(4r, min(out, in)), niter=4)`` from the global RNG, whose signs are arbitrary;
    ours is an exact float64 SVD with fixed signs (largest-|·| entry of each v_i positive, u_i flipped with
    it).  After a ±1 per row of A₀ and per column of B₀ the factors are PEFT's (to 2e-6 on the tiny BERT's
    gradients, rank 4 and 8: the randomized SVD is accurate there).  But A₀'s row i (v_i) and B₀'s column i
    (u_{r+i}) come from *different* triplets, so these signs are not a joint flip: the sign of each term of
    s·B₀A₀ = Σ_i s·S_{r+i}ζ u_{r+i} v_iᵀ is a coin toss of the SVD routine (8 of 16 and 21 of 32 terms
    differed from PEFT's in one run), s·B₀A₀ differs by 1.8–1.9 relative, and so does the residual base.  The
    step-0 model is the same (residual); the training gap is 0.009–0.013, and 1e-6 once our signs are set
    to PEFT's.
    PEFT's ``"random"`` direction and ``"weight_svd"``/``"gd_scale"`` scales are not implemented.
    """
    G = _need(ctx.stats, "grad", "lora_ga")
    if direction not in LORA_GA_DIRECTIONS:
        raise ValueError(f"unknown lora_ga direction {direction!r}; valid: {', '.join(LORA_GA_DIRECTIONS)}")
    if scale not in LORA_GA_SCALES:
        raise ValueError(f"unknown lora_ga scale {scale!r}; valid: {', '.join(LORA_GA_SCALES)}")
    if 2 * rank > min(W.shape):
        raise ValueError(f"lora_ga needs 2·rank ≤ min(out, in); rank {rank} is too large for "
                         f"{W.shape[0]}×{W.shape[1]}; valid: 1..{min(W.shape) // 2}")
    U, S, Vh = _svd(G.to(W.device))
    a_idx, b_idx = {"ArB2r": (slice(0, rank), slice(rank, 2 * rank)),
                    "A2rBr": (slice(rank, 2 * rank), slice(0, rank)),
                    "ArBr": (slice(1, 2 * rank, 2), slice(0, 2 * rank, 2))}[direction]
    A = Vh[a_idx].clone()
    B = U[:, b_idx] * S[b_idx]
    if scale == "stable":
        B = B * (W.shape[0] ** 0.25 / math.sqrt(gamma))
    return B, A


def lora_fa_grad_init(W: torch.Tensor, rank: int, scaling: float, ctx: InitContext):
    """LoRA-FA with the gradient's subspace: A₀ frozen = the top-r right singular vectors of the mean
    gradient G (r×in, orthonormal rows, canonical signs), B₀ = 0 (out×r).  Only B trains; the first step
    then moves along G·P_A, which keeps the largest share of ‖G‖² any frozen rank-r A can
    (Σ_{i≤r} S_i² / Σ S_i²).  W untouched; the model is unchanged at step 0."""
    G = _need(ctx.stats, "grad", "lora_fa_grad")
    _, _, Vh = _svd(G.to(W.device))
    return torch.zeros(W.shape[0], rank, dtype=_F64, device=W.device), Vh[:rank].clone()


# =========================================================================== step-0 gradient capture
def _row_projector(M: torch.Tensor, rtol: float = 1e-10) -> torch.Tensor:
    """Orthogonal projector onto the row space of M (k×n), n×n float64; 0 for M = 0."""
    M = M.detach().to(_F64)
    if M.numel() == 0:
        return torch.zeros(M.shape[1], M.shape[1], dtype=_F64, device=M.device)
    _, S, Vh = torch.linalg.svd(M, full_matrices=False)
    keep = S > rtol * S[0] if S[0] > 0 else S < 0
    V = Vh[keep]
    return V.mT @ V


def gradient_capture(B0: torch.Tensor, A0: torch.Tensor, G: torch.Tensor, freeze_A: bool = False) -> float:
    """Share of the full-fine-tuning gradient G (out×in) that the adapter's first step can express.

    The adapter changes W by s·BA.  To first order around (B₀, A₀) a step changes it by
    s·(dB·A₀ + B₀·dA) (dB out×r, dA r×in), so the reachable set is the subspace
    𝓢 = {X A₀ + B₀ Y} of out×in matrices (only {X A₀} when A is frozen).  The first step itself has
    dB ∝ G A₀ᵀ, dA ∝ B₀ᵀ G, both inside 𝓢.  Orthogonal complement: M ⟂ 𝓢 ⇔ ⟨M, X A₀⟩ = tr(Xᵀ M A₀ᵀ) = 0 ∀X
    and ⟨M, B₀ Y⟩ = 0 ∀Y ⇔ M A₀ᵀ = 0 and B₀ᵀ M = 0 ⇔ M = (I−P_B) M (I−P_A), with P_A (in×in) the projector
    onto A₀'s row space and P_B (out×out) onto B₀'s column space.  The map N ↦ (I−P_B) N (I−P_A) is
    self-adjoint and idempotent, so it *is* the projection onto 𝓢^⊥ and

        capture = ‖proj_𝓢 G‖²_F / ‖G‖²_F = 1 − ‖(I−P_B) G (I−P_A)‖²_F / ‖G‖²_F
                = (‖P_B G‖² + ‖G P_A‖² − ‖P_B G P_A‖²) / ‖G‖²     (energy of G in col(B₀) ⊕ row(A₀)).

    B₀ = 0 (P_B = 0) or frozen A give ‖G P_A‖²/‖G‖²: for B₀ = 0 the first step is ΔW ∝ G A₀ᵀA₀, in
    G·P_A's span.  A₀ = 0 gives ‖P_B G‖²/‖G‖².  G = 0 gives 0.0.  Scale-free: s plays no role.
    """
    G = G.detach().to(_F64)
    total = float((G * G).sum())
    if total == 0.0:
        return 0.0
    A0 = A0.detach().to(_F64, copy=False).to(G.device)
    B0 = B0.detach().to(_F64, copy=False).to(G.device)
    P_A = _row_projector(A0)
    P_B = torch.zeros(G.shape[0], G.shape[0], dtype=_F64, device=G.device) if freeze_A else _row_projector(B0.mT)
    R = G - P_B @ G
    R = R - R @ P_A
    return float(min(1.0, max(0.0, 1.0 - float((R * R).sum()) / total)))


def layer_capture(layer, G: torch.Tensor) -> float:
    """:func:`gradient_capture` of a :class:`lora.core.LoRALinear` from its init factors (``lora_B0``,
    ``lora_A0``) and whether its A is frozen; G is the out×in gradient of the original weight."""
    return gradient_capture(layer.lora_B0, layer.lora_A0, G, freeze_A=layer.freeze_A)
