"""The one list of LoRA inits: each declared once, with everything the rest of the code asks of it.

An init is a factor function ``factors(W, rank, scaling, ctx) -> (B₀ out×r, A₀ r×in)`` (its math in its
docstring, :mod:`lora.inits`) plus the facts in :class:`InitSpec`.  :class:`lora.LoRALinear` builds every
adapter from the spec alone (frozen A, residual base); :func:`lora.add_lora` checks its rank limit and
statistics before touching the model; and every list of init names (``lora.ALL_INITS``,
``lora.FROZEN_A_INITS``, ``lora.RESIDUAL_INITS``, ``lora.DATA_INITS``, ...) and the init study's groups
(:func:`init_names`) are read from the registry when asked for, so one :func:`register_init` call (the
built-in ones are :data:`BUILT_IN` below) adds an init everywhere.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping

from . import inits
from .inits import STAT_KINDS, LayerStats

STUDY_GROUPS = ("round1", "families")        # the init study's two sets of runs (logs/v2, logs/inits)


@dataclass(frozen=True)
class InitSpec:
    """One init.

    name           what ``add_lora(init=...)`` and a run config's ``method`` call it
    factors        ``(W, rank, scaling, ctx: lora.inits.InitContext) -> (B₀, A₀)``
    freeze_A       A is not trained (LoRA-FA): ΔW's row space stays span(A₀ᵀ)
    residual       the frozen base becomes W − s·B₀A₀, so the model is unchanged at step 0
    changes_model  s·B₀A₀ ≠ 0 is added on top of W: the step-0 model is not the pretrained one
    needs          the statistics it reads from :func:`lora.collect_layer_stats` ("input", "grad")
    max_rank       ``(out, in) -> the largest rank`` for an out×in weight (0: that shape is refused);
                   None: min(out, in), like every adapter
    rank_rule      what ``max_rank`` demands, for its error (``{min}`` stands for min(out, in))
    subspace       the subspace the adapter starts in, one line (the init study's table)
    study          which set of the init study's runs it belongs to (:data:`STUDY_GROUPS`), None if none
    """
    name: str
    factors: Callable
    freeze_A: bool = False
    residual: bool = False
    changes_model: bool = False
    needs: frozenset = field(default_factory=frozenset)
    max_rank: Callable[[int, int], int] | None = None
    rank_rule: str = ""
    subspace: str = ""
    study: str | None = None

    def __post_init__(self):
        object.__setattr__(self, "needs", frozenset(self.needs))
        if not self.name.isidentifier():
            raise ValueError(f"init name {self.name!r} is not an identifier; valid: letters, digits, _")
        if not self.needs <= set(STAT_KINDS):
            raise ValueError(f"init {self.name!r}: unknown statistics {sorted(self.needs - set(STAT_KINDS))}; "
                             f"valid: {', '.join(STAT_KINDS)}")
        if self.residual and self.changes_model:
            raise ValueError(f"init {self.name!r}: a residual init leaves the model unchanged; valid: residual "
                             f"or changes_model, not both")
        if (self.max_rank is None) != (not self.rank_rule):
            raise ValueError(f"init {self.name!r}: give max_rank and rank_rule together")
        if self.study not in (None, *STUDY_GROUPS):
            raise ValueError(f"init {self.name!r}: unknown study {self.study!r}; "
                             f"valid: None, {', '.join(STUDY_GROUPS)}")


_REGISTRY: dict[str, InitSpec] = {}


def register_init(spec: InitSpec) -> InitSpec:
    """Add an init: from now on ``add_lora(init=spec.name)`` builds it and every derived list names it."""
    if spec.name in _REGISTRY:
        raise ValueError(f"init {spec.name!r} is already registered; unregister_init it first")
    _REGISTRY[spec.name] = spec
    return spec


def unregister_init(name: str) -> InitSpec:
    """Remove an init (the inverse of :func:`register_init`); returns its spec."""
    init_spec(name)
    return _REGISTRY.pop(name)


def init_spec(name: str) -> InitSpec:
    """The spec of init ``name``, or a one-line ValueError naming the valid ones."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown init {name!r}; valid: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def init_names(**where) -> tuple[str, ...]:
    """The registered inits whose spec has every given field value, in registration order:
    ``init_names()`` all, ``init_names(study="round1")``, ``init_names(changes_model=True)``, ..."""
    fields = InitSpec.__dataclass_fields__
    bad = sorted(set(where) - set(fields))
    if bad:
        raise ValueError(f"unknown InitSpec fields {bad}; valid: {', '.join(fields)}")
    return tuple(n for n, s in _REGISTRY.items() if all(getattr(s, k) == v for k, v in where.items()))


def _any_shape_weights_only() -> tuple[str, ...]:
    """Round 1's inits that take any nn.Linear from its weight alone (no data, no rank limit of their own)."""
    return tuple(n for n in init_names(study="round1") if not _REGISTRY[n].needs and _REGISTRY[n].max_rank is None)


# The lists the rest of the code reads (as ``lora.NAME``), each derived from the registry when read.
DERIVED: dict[str, Callable[[], object]] = {
    "ALL_INITS": init_names,
    "INIT_METHODS": _any_shape_weights_only,
    "EXTRA_INITS": lambda: tuple(n for n in init_names() if n not in _any_shape_weights_only()),
    "FROZEN_A_METHODS": lambda: tuple(n for n in _any_shape_weights_only() if _REGISTRY[n].freeze_A),
    "FROZEN_A_INITS": lambda: init_names(freeze_A=True),
    "RESIDUAL_INITS": lambda: init_names(residual=True),
    "DATA_INITS": lambda: {n: set(s.needs) for n, s in _REGISTRY.items() if s.needs},
}


def check_rank(init: str, name: str, shape: tuple[int, int], rank: int) -> None:
    """A one-line ValueError unless an out×in layer ``name`` takes a rank-``rank`` adapter of ``init``."""
    out_f, in_f = shape
    k = min(out_f, in_f)
    if rank > k:
        raise ValueError(f"rank {rank} is too large for {name!r} ({out_f}×{in_f}); valid: 1..{k}")
    spec = init_spec(init)
    if spec.max_rank is None:
        return
    limit, rule = spec.max_rank(out_f, in_f), spec.rank_rule.format(min=k)
    if limit < 1:
        raise ValueError(f"{init} needs {rule}, got {out_f}×{in_f} for {name!r}; valid: targets that have one")
    if rank > limit:
        raise ValueError(f"rank {rank} is too large for init {init!r} on {name!r} ({out_f}×{in_f}, needs {rule}); "
                         f"valid: 1..{limit}")


def check_layer_stats(init: str, name: str, stats: Mapping[str, LayerStats] | LayerStats | None,
                      shape: tuple[int, int]) -> LayerStats | None:
    """The statistics of layer ``name`` for ``init`` (None for inits that need none), or a one-line ValueError."""
    needs = init_spec(init).needs
    if not needs:
        return None
    hint = f"pass stats=lora.collect_layer_stats(model, targets, batches, needs={sorted(needs)})"
    if stats is None:
        raise ValueError(f"init {init!r} needs layer statistics ({', '.join(sorted(needs))}); {hint}")
    st = stats if isinstance(stats, LayerStats) else stats.get(name)
    if st is None:
        have = ", ".join(sorted(stats)[:6]) or "none"
        raise ValueError(f"init {init!r} has no statistics for layer {name!r} (have: {have}); {hint}")
    out_f, in_f = shape
    if "input" in needs and (st.input_cov is None or tuple(st.input_cov.shape) != (in_f, in_f)):
        got = None if st.input_cov is None else tuple(st.input_cov.shape)
        raise ValueError(f"init {init!r} needs an input covariance of shape {(in_f, in_f)} for layer {name!r}, "
                         f"got {got}; {hint}")
    if "grad" in needs and (st.grad is None or tuple(st.grad.shape) != (out_f, in_f)):
        got = None if st.grad is None else tuple(st.grad.shape)
        raise ValueError(f"init {init!r} needs a gradient of shape {(out_f, in_f)} for layer {name!r}, "
                         f"got {got}; {hint}")
    return st


def _half(out_f: int, in_f: int) -> int:
    return min(out_f, in_f) // 2


def _square(out_f: int, in_f: int) -> int:
    return out_f if out_f == in_f else 0


# The built-in inits, in the order every list (and harness.config.METHODS, hence plot colours) shows them.
# W = U S Vᵀ the pretrained weight, G = U_G S_G V_Gᵀ the mean gradient, C the input covariance.
BUILT_IN = (
    InitSpec("random", inits.random_init, study="round1", subspace="random row space (Kaiming A), B = 0"),
    InitSpec("svd", inits.svd_init, residual=True, study="round1",
             subspace="top-r singular triplets of W (PiSSA)"),
    InitSpec("svd_naive", inits.svd_naive_init, changes_model=True, study="round1",
             subspace="top-r singular triplets of W, added on top of W"),
    InitSpec("lora_fa", inits.lora_fa_init, freeze_A=True, study="round1",
             subspace="random orthonormal row space, B = 0"),
    InitSpec("lora_fa_svd", inits.lora_fa_svd_init, freeze_A=True, study="round1",
             subspace="row space of W's top-r right singular vectors, B = 0"),
    InitSpec("svd_seed", inits.svd_seed_init, freeze_A=True, changes_model=True, study="round1",
             max_rank=_square, rank_rule="a square weight (the seed project's construction)",
             subspace="A = (U_r S_r)ᵀ, B = first r columns of Vᵀ (seed project's code)"),
    InitSpec("svd_minor", inits.svd_minor_init, residual=True, study="families",
             subspace="bottom-r singular triplets of W (MiLoRA)"),
    InitSpec("olora", inits.olora_init, residual=True, study="families",
             subspace="first r columns' QR basis of W (OLoRA)"),
    InitSpec("eva", inits.eva_init, needs={"input"}, study="families",
             subspace="top-r principal directions of the layer inputs, B = 0 (EVA)"),
    InitSpec("corda", inits.corda_init, residual=True, needs={"input"}, study="families",
             subspace="top-r triplets of W·C, mapped back by C⁻¹ (CorDA-IPM)"),
    InitSpec("lora_ga", inits.lora_ga_init, residual=True, needs={"grad"}, study="families",
             max_rank=_half, rank_rule="2·rank ≤ {min}", subspace="A = V_G,1..r, B = U_G,r+1..2r S_G (LoRA-GA)"),
    InitSpec("lora_fa_grad", inits.lora_fa_grad_init, freeze_A=True, needs={"grad"}, study="families",
             subspace="row space of G's top-r right singular vectors, B = 0"),
    InitSpec("lora_fa_eva", inits.lora_fa_eva_init, freeze_A=True, needs={"input"}, study="families",
             subspace="top-r principal input directions, B = 0"),
    InitSpec("corda_peft", inits.corda_peft_init, residual=True, needs={"input"},
             subspace="corda with PEFT's per-call max-normalised covariance: PEFT's CorDA-IPM factors"),
)
for _spec in BUILT_IN:
    register_init(_spec)
