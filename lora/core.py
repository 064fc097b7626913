"""Low-rank adapters for the Linear layers of any torch model (minLoRA style).

Notation used throughout (one adapted ``nn.Linear`` with weight W of shape out×in):

    y = x Wᵀ + s · dropout(x) Aᵀ Bᵀ          A: r×in,  B: out×r,  s = alpha / r

so the weight the model effectively uses is W + ΔW with ΔW = s·B·A (rank ≤ r).
The dense out×in update is never built during training: the adapter path runs on
activations (``x Aᵀ`` is batch×r).  Dividing by r keeps the update's scale roughly
independent of r when alpha is fixed (Hu et al. 2021).

The inits (``lora.ALL_INITS``) are declared once, in :mod:`lora.registry` (what each one is: frozen A,
residual, data, rank limit), and each is a factor function with its math in :mod:`lora.inits`: random
(LoRA), svd (PiSSA), svd_naive, svd_seed, lora_fa, lora_fa_svd, svd_minor (MiLoRA), olora, eva, corda (and corda_peft, PEFT's exact CorDA),
lora_ga, lora_fa_grad, lora_fa_eva.  :class:`LoRALinear` builds any of them from its spec alone.

Residual inits (``lora.RESIDUAL_INITS``) leave the frozen base at W − s·B₀A₀, so the model is unchanged at
step 0 and ΔW relative to W is s·BA − s·B₀A₀.  The data-aware ones (``lora.DATA_INITS``) read per-layer
statistics: ``add_lora(..., stats=lora.collect_layer_stats(model, targets, batches, needs=...))``.
``add_lora(..., rslora=True)`` uses s = alpha/√r (rsLoRA, Kalajdzievski 2023) instead of alpha/r.
The SVD inits' truncated SVD (:func:`lora.inits.truncated_svd`) is ``full`` or ``randomized``.
"""
from __future__ import annotations

import math
from typing import Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .inits import SVD_METHODS, InitContext, LayerStats, svd_seed_factors, truncated_svd  # noqa: F401 (re-exported)
from .registry import check_layer_stats, check_rank, init_spec
from .targets import matches as _matches, no_match_error

DROPOUT_MASKS = ("torch", "int16")     # how the adapter's dropout mask is drawn (see Int16Dropout)


def relative_delta_factors(B: torch.Tensor, A: torch.Tensor, B0: torch.Tensor | None = None,
                           A0: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The one home of "ΔW relative to the original W" (unscaled): (B', A') with B'A' = BA, or, for a
    residual init (base W − s·B₀A₀, pass ``B0``, ``A0``), B'A' = BA − B₀A₀ = [B, −B₀]·[A; A₀] (rank ≤ 2r).
    ΔW = s·B'A'.  Used by :meth:`LoRALinear.delta_factors`, :func:`lora.load_delta_factors` and
    :func:`lora.export_peft`."""
    if (B0 is None) != (A0 is None):
        raise ValueError("relative_delta_factors needs both B0 and A0 (a residual init) or neither")
    if B0 is None:
        return B, A
    return torch.cat([B, -B0], 1), torch.cat([A, A0], 0)


class Int16Dropout(nn.Module):
    """Dropout with the mask drawn from 16-bit integers: the same distribution as ``nn.Dropout`` at a
    fraction of the random-number cost on a CPU.

    Each element is dropped independently with probability p' = k/2¹⁶, k = round(p·2¹⁶) (so
    |p' − p| ≤ 2⁻¹⁷ ≈ 7.6e-6), and the kept ones are scaled by 1/(1 − p'), so E[dropout(x)] = x exactly.
    The uniform integers u ∈ [−2¹⁵, 2¹⁵) are the four 16-bit lanes of 64-bit words from the default
    generator (``random_`` over the full int64 range; one word per four elements); u < −2¹⁵ + k drops.
    ``nn.Dropout`` draws one float per element (``bernoulli_``): on this project's CPU (2 threads) 8.4 ms
    for a 32×75×384 activation against 4.0 ms here (random words 0.75, compare 0.4, select 1.3, scale
    1.1 ms); :class:`LoRALinear` skips the scale pass by putting 1/(1 − p') on A.  With 12 adapters the
    torch mask was about half of the adapter's cost above the rank-0 floor.  Saved for backward: the bool mask, as
    ``nn.Dropout``.  The masks differ from ``nn.Dropout``'s for the same seed (another random stream),
    not in distribution.
    """

    def __init__(self, p: float):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {p!r}")
        self.p = float(p)
        self.k = min(round(self.p * 65536), 65535)           # dropped lane values: [−2¹⁵, −2¹⁵ + k)
        self.scale = 65536.0 / (65536 - self.k)               # 1/(1 − p')

    @property
    def active(self) -> bool:
        return self.training and self.k > 0

    def keep_mask(self, x: torch.Tensor) -> torch.Tensor:
        """A fresh bool mask shaped like x: True (kept) with probability 1 − p'."""
        n = x.numel()
        words = torch.empty((n + 3) // 4, dtype=torch.int64, device=x.device).random_(-2**63, None)
        return words.view(torch.int16)[:n].view(x.shape) >= self.k - 32768

    def masked(self, x: torch.Tensor) -> torch.Tensor:
        """x with a fresh mask applied and NOT rescaled: forward(x) = masked(x)·scale while active."""
        return torch.where(self.keep_mask(x), x, 0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.active:
            return x
        return self.masked(x) * self.scale

    def extra_repr(self) -> str:
        return f"p={self.p} (p'={self.k}/65536)"


class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus a rank-r adapter: ``y = base(x) + s·dropout(x) Aᵀ Bᵀ``.

    Parameters ``lora_A`` (r×in) and ``lora_B`` (out×r); buffers ``lora_A0``/``lora_B0`` keep the
    init factors, so that ΔW relative to the *original* pretrained W is always recoverable:
    for residual inits (``lora.RESIDUAL_INITS``, whose base holds W − s·B₀A₀) it is s·BA − s·B₀A₀, otherwise s·BA.
    ``init`` names a registered init (:mod:`lora.registry`): its spec says whether A is frozen and whether
    the base becomes residual; its factor function gives (B₀, A₀).
    """

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0,
                 init: str = "random", svd_method: str = "full", niter: int = 4,
                 generator: torch.Generator | None = None, *, stats: LayerStats | None = None,
                 rslora: bool = False, dropout_mask: str = "torch"):
        super().__init__()
        if dropout_mask not in DROPOUT_MASKS:
            raise ValueError(f"unknown dropout mask {dropout_mask!r}; valid: {', '.join(DROPOUT_MASKS)}")
        spec = init_spec(init)
        out_f, in_f = base.weight.shape
        check_rank(init, "(this layer)", (out_f, in_f), rank)
        self.base = base
        self.rank, self.alpha, self.init, self.rslora = rank, float(alpha), init, bool(rslora)
        self.scaling = self.alpha / (math.sqrt(rank) if rslora else rank)
        self.freeze_A = spec.freeze_A
        self.residual = spec.residual               # base weight holds W − s·B₀A₀
        self.merged = False
        self.dropout = (nn.Identity() if dropout == 0 else
                        nn.Dropout(dropout) if dropout_mask == "torch" else Int16Dropout(dropout))
        w = base.weight
        # One draw per layer from the generator, whatever the init, before the init's own draws: the
        # randomized SVD's seed.  Skipping or moving it would change every seeded init's factors.
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator)) if generator is not None else None
        ctx = InitContext(stats=check_layer_stats(init, "(this layer)", stats, (out_f, in_f)), generator=generator,
                          seed=seed, svd_method=svd_method, niter=niter)
        B0, A0 = spec.factors(w, rank, self.scaling, ctx)
        if tuple(B0.shape) != (out_f, rank) or tuple(A0.shape) != (rank, in_f):
            raise ValueError(f"init {init!r} gave B₀ {tuple(B0.shape)} and A₀ {tuple(A0.shape)}; "
                             f"valid: {(out_f, rank)} and {(rank, in_f)}")
        A = torch.zeros(rank, in_f, dtype=w.dtype, device=w.device).copy_(A0.detach())    # cast to W's dtype
        B = torch.zeros(out_f, rank, dtype=w.dtype, device=w.device).copy_(B0.detach())
        self.lora_A = nn.Parameter(A, requires_grad=not self.freeze_A)
        self.lora_B = nn.Parameter(B)
        self.register_buffer("lora_A0", A.clone())
        self.register_buffer("lora_B0", B.clone())
        if self.residual:
            with torch.no_grad():
                base.weight.sub_(self.scaling * (B @ A))
        base.weight.requires_grad_(False)
        if base.bias is not None:
            base.bias.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        if self.merged:
            return y
        d = self.dropout
        if isinstance(d, Int16Dropout) and d.active:
            # (x ⊙ m / (1 − p')) Aᵀ = (x ⊙ m) (A / (1 − p'))ᵀ: the scale goes on A (r×in), not on the
            # batch×len×in activation, saving one elementwise pass forward and one backward.
            h = F.linear(d.masked(x), self.lora_A * d.scale)
        else:
            h = F.linear(d(x), self.lora_A)                              # (..., r): the only adapter activation
        # y + s·h Bᵀ in one BLAS call (scale and add fused), instead of materialising s·h Bᵀ first.
        return torch.addmm(y.reshape(-1, y.shape[-1]), h.reshape(-1, self.rank), self.lora_B.mT,
                           alpha=self.scaling).view(y.shape)

    def delta_weight(self) -> torch.Tensor:
        """The current s·B·A (out×in); for merging and inspection, never used in forward."""
        return self.scaling * (self.lora_B @ self.lora_A)

    def delta_factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(B_eff, A_eff) with B_eff @ A_eff = ΔW relative to the original pretrained W.

        s·BA, except for residual inits (``lora.RESIDUAL_INITS``) where it is s·BA − s·B₀A₀ = s·[B, −B₀]·[A; A₀]
        (rank ≤ 2r).  The scaling s is folded into B_eff.
        """
        B, A = relative_delta_factors(self.lora_B.detach(), self.lora_A.detach(),
                                      *((self.lora_B0, self.lora_A0) if self.residual else ()))
        return self.scaling * B, A

    def extra_repr(self) -> str:
        return f"rank={self.rank}, alpha={self.alpha:g}, init={self.init}, merged={self.merged}"


def in_modules(name: str, modules: Sequence[str]) -> bool:
    """Whether parameter ``name`` belongs to one of ``modules`` (e.g. "classifier" → "classifier.dense.weight")."""
    return any(name.startswith(k + ".") or f".{k}." in name for k in modules)


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    """All adapted layers, by module name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}


def add_lora(model: nn.Module, targets: str | Sequence[str] = ("query", "value"), rank: int = 8,
             alpha: float = 16.0, dropout: float = 0.0, init: str = "random",
             svd_method: str = "full", niter: int = 4, seed: int | None = None,
             keep_trainable: Iterable[str] = (), stats: Mapping[str, LayerStats] | None = None,
             rslora: bool = False, dropout_mask: str = "torch") -> nn.Module:
    """Replace the chosen ``nn.Linear`` layers of ``model`` by :class:`LoRALinear`, in place.

    ``targets``: a list of names (a module matches when its name equals one or ends with
    ``"." + name``, e.g. ``["query", "value"]``) or a regex string matched against the full
    module name.  Everything is then frozen except the adapters (and A stays frozen for the
    LoRA-FA inits) and parameters whose name starts with or contains a module in
    ``keep_trainable`` (e.g. ``["classifier"]``).  ``seed`` makes the init reproducible.
    ``stats``: per-layer :class:`LayerStats` from :func:`lora.collect_layer_stats` (same ``targets``),
    required by the ``lora.DATA_INITS``.  ``rslora``: s = alpha/√r instead of alpha/r.
    ``dropout_mask``: ``"torch"`` (``nn.Dropout``) or ``"int16"`` (:class:`Int16Dropout`: the same
    distribution, p rounded to a multiple of 2⁻¹⁶, a cheaper random stream).
    Returns the model.
    """
    init_spec(init)                          # an unknown init: one line naming the valid ones
    if svd_method not in SVD_METHODS:
        raise ValueError(f"unknown svd method {svd_method!r}; valid: {', '.join(SVD_METHODS)}")
    if dropout_mask not in DROPOUT_MASKS:
        raise ValueError(f"unknown dropout mask {dropout_mask!r}; valid: {', '.join(DROPOUT_MASKS)}")
    if not isinstance(rank, int) or isinstance(rank, bool) or rank <= 0:
        raise ValueError(f"rank must be a positive integer, got {rank!r}")
    adapted = lora_layers(model)
    chosen = []
    for name, mod in model.named_modules():
        if not name and isinstance(mod, nn.Linear) and _matches(name, targets):
            raise ValueError("the model itself is an nn.Linear: wrap it (e.g. nn.Sequential(linear)) so the adapter "
                             "can replace it in place")
        if not name or not _matches(name, targets):
            continue
        owner = name.rsplit(".", 1)[0] if name.endswith(".base") else None
        if name in adapted or owner in adapted:
            raise ValueError(f"layer {owner or name!r} already has a LoRA adapter; "
                             "call add_lora once per layer")
        if isinstance(mod, nn.Linear):
            chosen.append((name, mod))
    if not chosen:
        raise no_match_error(model, targets)
    for name, lin in chosen:                 # every check before the first layer is replaced
        check_rank(init, name, tuple(lin.weight.shape), rank)
    layer_stats = {name: check_layer_stats(init, name, stats, tuple(lin.weight.shape)) for name, lin in chosen}
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    for name, lin in chosen:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child, LoRALinear(lin, rank, alpha, dropout, init, svd_method, niter, generator,
                                          stats=layer_stats[name], rslora=rslora, dropout_mask=dropout_mask))
    mark_only_lora_as_trainable(model, keep_trainable)
    return model


def mark_only_lora_as_trainable(model: nn.Module, keep_trainable: Iterable[str] = ()) -> None:
    """Freeze all parameters but the adapters' (A only when not frozen by init) and ``keep_trainable``."""
    keep = tuple(keep_trainable)
    for name, p in model.named_parameters():
        p.requires_grad_(in_modules(name, keep))
    for layer in lora_layers(model).values():
        layer.lora_B.requires_grad_(True)
        layer.lora_A.requires_grad_(not layer.freeze_A)


@torch.no_grad()
def merge_lora(model: nn.Module) -> nn.Module:
    """Fold s·BA into each base weight (zero added latency at inference)."""
    for layer in lora_layers(model).values():
        if not layer.merged:
            layer.base.weight.add_(layer.delta_weight())
            layer.merged = True
    return model


@torch.no_grad()
def unmerge_lora(model: nn.Module) -> nn.Module:
    """Undo :func:`merge_lora`: subtract s·BA again, so the adapters train on."""
    for layer in lora_layers(model).values():
        if layer.merged:
            layer.base.weight.sub_(layer.delta_weight())
            layer.merged = False
    return model


def lora_state_dict(model: nn.Module, keep_trainable: Iterable[str] = ()) -> dict[str, torch.Tensor]:
    """Adapter tensors only (A, B and init factors A0, B0), plus parameters under ``keep_trainable``."""
    keep = tuple(keep_trainable)
    out = {}
    for name, t in model.state_dict().items():
        leaf = name.rsplit(".", 1)[-1]
        if leaf.startswith("lora_") or in_modules(name, keep):
            out[name] = t.detach().clone()
    return out


def lora_config(model: nn.Module) -> dict[str, dict]:
    """Per-layer adapter settings: rank, alpha, scaling, init, residual, freeze_A, rslora."""
    return {n: dict(rank=m.rank, alpha=m.alpha, scaling=m.scaling, init=m.init,
                    residual=m.residual, freeze_A=m.freeze_A, rslora=m.rslora) for n, m in lora_layers(model).items()}


@torch.no_grad()
def load_lora_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    """Load :func:`lora_state_dict` output into a model adapted with the same targets and init.

    For residual inits the base holds W − s·B₀A₀; if the stored B₀A₀ differ from this model's (e.g. a
    different randomized-SVD seed) the base is re-based onto the stored ones first.
    """
    if any(m.merged for m in lora_layers(model).values()):
        raise ValueError("unmerge_lora(model) before loading adapter weights")
    expected = set(lora_state_dict(model))
    unexpected = [k for k in state if k not in model.state_dict()]
    missing = [k for k in expected if k not in state]
    if unexpected or missing:    # check before touching any weight: a failed load leaves the model as it was
        raise KeyError(f"adapter state does not fit this model: unexpected {unexpected[:5]}, missing {missing[:5]}")
    for name, layer in lora_layers(model).items():
        A0, B0 = state.get(f"{name}.lora_A0"), state.get(f"{name}.lora_B0")
        if layer.residual and A0 is not None and not (torch.equal(A0, layer.lora_A0) and torch.equal(B0, layer.lora_B0)):
            layer.base.weight.add_(layer.scaling * (layer.lora_B0 @ layer.lora_A0 - B0 @ A0))
    model.load_state_dict(state, strict=False)
    return model
