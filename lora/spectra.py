"""Spectral analysis of low-rank (LoRA) updates  dW = B @ A.

Conventions
-----------
* ``B`` is (out x k), ``A`` is (k x in); dW = B @ A is (out x in).  Any LoRA
  scaling s = alpha / r must already be folded into ``B`` by the caller.
* ``W`` is a dense (out x in) matrix (the pretrained weight).
* Inputs may be torch tensors or numpy arrays; all work is done in float64.
  Matrices/vectors are returned as float64 torch tensors, scalars as floats.
* Singular values are always sorted descending; singular vectors are columns
  (dW = U diag(S) V^T, i.e. V is *not* transposed).
* Degenerate inputs (B = 0 at LoRA init, rank-deficient factors) give defined
  results: zeros, never NaN.
"""
from __future__ import annotations

import math

import numpy as np
import torch

_F64 = torch.float64


def _t(x) -> torch.Tensor:
    """Detached float64 torch view/copy of a tensor or array-like."""
    if isinstance(x, torch.Tensor):
        return x.detach().to(_F64)
    return torch.as_tensor(np.asarray(x), dtype=_F64)


def _orth(X: torch.Tensor, rtol: float | None = None) -> torch.Tensor:
    """Rank-revealing orthonormal basis of range(X) via SVD (like scipy.linalg.orth)."""
    if X.shape[1] == 0 or X.shape[0] == 0:
        return X.new_zeros(X.shape[0], 0)
    U, S, _ = torch.linalg.svd(X, full_matrices=False)
    if rtol is None:
        rtol = max(X.shape) * torch.finfo(_F64).eps
    return U[:, : int((S > rtol * S[0]).sum())] if S[0] > 0 else U[:, :0]


# --------------------------------------------------------------------------- SVD
def lowrank_svd(B, A, vectors: bool = True):
    """Thin SVD of dW = B @ A without forming the (out x in) product.

    B = Q_B R_B and A^T = Q_A R_A (thin QR), core C = R_B R_A^T (at most k x k),
    C = U_c diag(S) V_c^T, hence dW = (Q_B U_c) diag(S) (Q_A V_c)^T.

    Returns ``(U, S, V)`` with U (out x m), S (m,), V (in x m), m = min(out, k, in),
    S descending and >= 0.  With ``vectors=False`` returns ``(None, S, None)``.
    Householder QR / SVD are well defined for B = 0 or rank-deficient factors
    (the corresponding singular values are 0, vectors are some orthonormal
    completion).
    """
    B, A = _t(B), _t(A)
    if B.shape[1] != A.shape[0]:
        raise ValueError(f"inner dims differ: B {tuple(B.shape)}, A {tuple(A.shape)}")
    Qb, Rb = torch.linalg.qr(B)            # (out x kb), (kb x k)
    Qa, Ra = torch.linalg.qr(A.T)          # (in x ka),  (ka x k)
    core = Rb @ Ra.T                       # (kb x ka)
    if not vectors:
        return None, torch.linalg.svdvals(core), None
    Uc, S, Vch = torch.linalg.svd(core, full_matrices=False)
    return Qb @ Uc, S, Qa @ Vch.T


def singular_values(B, A) -> torch.Tensor:
    """Singular values (descending, length min(out, k, in)) of dW = B @ A."""
    return lowrank_svd(B, A, vectors=False)[1]


def numerical_rank(S, rtol: float | None = None) -> int:
    """#{S_i > rtol * S_0}; rtol defaults to len(S) * eps (at least 1e-12). 0 for S = 0."""
    S = _t(S)
    if S.numel() == 0 or S[0] <= 0:
        return 0
    rtol = max(S.numel() * torch.finfo(_F64).eps, 1e-12) if rtol is None else rtol
    return int((S > rtol * S[0]).sum())


# ----------------------------------------------------------------------- metrics
def frobenius_norm(S) -> float:
    """||M||_F = sqrt(sum_i S_i^2)."""
    return float(torch.linalg.vector_norm(_t(S)))


def spectral_norm(S) -> float:
    """||M||_2 = S_0 (0 for an empty / zero spectrum)."""
    S = _t(S)
    return float(S.max()) if S.numel() else 0.0


def stable_rank(S) -> float:
    """||M||_F^2 / ||M||_2^2 in [1, rank]; convention: 0 for the zero matrix."""
    s2 = spectral_norm(S)
    return frobenius_norm(S) ** 2 / s2 ** 2 if s2 > 0 else 0.0


def effective_rank(S) -> float:
    """Roy & Vetterli (2007): exp(H(p)), p_i = S_i / sum S, H = -sum p_i log p_i
    (0 log 0 = 0).  In [1, rank]; convention: 0 for the zero matrix."""
    S = _t(S).clamp_min(0)
    tot = S.sum()
    if tot <= 0:
        return 0.0
    p = S[S > 0] / tot
    return float(torch.exp(-(p * p.log()).sum()))


def energy_fraction(S, k: int) -> float:
    """Fraction of Frobenius energy in the top-k directions: sum_{i<k} S_i^2 / sum S_i^2.
    Convention: 0 for the zero matrix."""
    S2 = _t(S) ** 2
    tot = S2.sum()
    return float(S2[:k].sum() / tot) if tot > 0 else 0.0


def spectrum_metrics(S, k: int = 1) -> dict:
    """All scalar metrics of a spectrum S: keys fro, spectral, stable_rank,
    effective_rank, energy (top-k energy fraction), rank (numerical)."""
    return dict(fro=frobenius_norm(S), spectral=spectral_norm(S), stable_rank=stable_rank(S),
                effective_rank=effective_rank(S), energy=energy_fraction(S, k),
                rank=numerical_rank(S))


def lowrank_metrics(B, A, k: int = 1) -> dict:
    """``spectrum_metrics`` of dW = B @ A (computed from the factors)."""
    return spectrum_metrics(singular_values(B, A), k)


# ---------------------------------------------------------------- principal angles
def principal_angles(X, Y) -> torch.Tensor:
    """Principal angles (radians, ASCENDING; scipy.linalg.subspace_angles returns
    them descending) between range(X) and range(Y), X (n x p), Y (n x q), both
    assumed of full column rank.  Returns min(p, q) angles in [0, pi/2].

    Qx, Qy = qr(X), qr(Y); cos theta_i = sigma_i(Qx^T Qy).  For small angles
    (cos^2 >= 1/2) the sines sigma_i((I - Qx Qx^T) Qy) (for q <= p, else roles
    swapped) are used instead, so tiny angles are accurate (as in scipy).
    """
    Qx, Qy = torch.linalg.qr(_t(X))[0], torch.linalg.qr(_t(Y))[0]
    if Qx.shape[1] < Qy.shape[1]:
        Qx, Qy = Qy, Qx                     # now Qy has the fewer columns
    if Qy.shape[1] == 0:
        return Qx.new_zeros(0)
    M = Qx.T @ Qy
    cos = torch.linalg.svdvals(M).clamp(0.0, 1.0)            # descending
    sin = torch.linalg.svdvals(Qy - Qx @ M).flip(0).clamp(0.0, 1.0)  # ascending
    return torch.where(cos ** 2 >= 0.5, torch.arcsin(sin), torch.arccos(cos))


# --------------------------------------------------------------- geometry vs W
def top_singular_subspaces(W, k: int, which: str = "top"):
    """(U_k, V_k): left (out x k) / right (in x k) singular vectors of W for its
    k largest (``which="top"``) or k smallest (``"bottom"``, among the
    min(out, in) singular values of the thin SVD) singular values; columns
    are kept in descending-singular-value order."""
    U, _, Vh = torch.linalg.svd(_t(W), full_matrices=False)
    if which == "top":
        return U[:, :k], Vh[:k].T
    if which == "bottom":
        m = U.shape[1]
        return U[:, m - k:], Vh[m - k:].T
    raise ValueError(f"which must be 'top' or 'bottom', got {which!r}")


def subspace_overlap_with_W(B, A, W, k: int, r: int | None = None) -> dict:
    """Principal angles (ascending, radians) between dW's top-r left/right
    singular subspaces and W's top-k / bottom-k left/right singular subspaces.

    r defaults to the numerical rank of dW = B @ A (0 for B = 0, in which case
    all angle tensors are empty).  Keys: left_top, left_bottom, right_top,
    right_bottom (each min(r, k) angles), r, k.
    """
    U, S, V = lowrank_svd(B, A)
    r = numerical_rank(S) if r is None else r
    Ur, Vr = U[:, :r], V[:, :r]
    out = dict(r=r, k=k)
    for which in ("top", "bottom"):
        Uw, Vw = top_singular_subspaces(W, k, which)
        out[f"left_{which}"] = principal_angles(Ur, Uw)
        out[f"right_{which}"] = principal_angles(Vr, Vw)
    return out


def amplification_factor(B, A, W, r: int | None = None) -> float:
    """Hu et al. (2021) sec. 7.3:  ||dW||_F / ||U_r^T W V_r||_F, with U_r (out x r),
    V_r (in x r) the top-r left/right singular vectors of dW = B @ A; r defaults
    to dW's numerical rank.  How much dW amplifies the directions of W it lives in.

    Guards: dW = 0 -> 0.0 (also covers 0/0); nonzero dW whose subspaces W does
    not touch at all (denominator 0) -> inf.
    """
    U, S, V = lowrank_svd(B, A)
    num = frobenius_norm(S)
    if num == 0.0:
        return 0.0
    r = numerical_rank(S) if r is None else r
    den = float(torch.linalg.matrix_norm(U[:, :r].T @ _t(W) @ V[:, :r]))
    return num / den if den > 0 else math.inf


# ----------------------------------------------------------- subspace similarity
def subspace_similarity(U1, U2, i: int, j: int) -> float:
    """Hu et al. (2021) eq. 4:  phi = ||U1[:, :i]^T U2[:, :j]||_F^2 / min(i, j) in [0, 1].

    U1 (n x r1), U2 (n x r2) have orthonormal columns ordered by importance
    (e.g. singular vectors of two dW's or of two A's).  phi = 1 iff one of the
    two truncated subspaces contains the other; 0 iff they are orthogonal."""
    M = _t(U1)[:, :i].T @ _t(U2)[:, :j]
    return float((M ** 2).sum() / min(i, j))


def similarity_grid(U1, U2) -> torch.Tensor:
    """(r1 x r2) tensor G with G[i-1, j-1] = subspace_similarity(U1, U2, i, j)."""
    M2 = (_t(U1).T @ _t(U2)) ** 2
    C = M2.cumsum(0).cumsum(1)
    i = torch.arange(1, C.shape[0] + 1, dtype=_F64)[:, None]
    j = torch.arange(1, C.shape[1] + 1, dtype=_F64)[None, :]
    return C / torch.minimum(i, j)


def random_subspace_similarity_baseline(n: int, i: int, j: int) -> float:
    """E[phi] for independent uniformly random i- and j-dim subspaces of R^n:
    E||P_i^T Q_j||_F^2 = i j / n, so E[phi] = i j / (n min(i, j)) = max(i, j) / n."""
    return max(i, j) / n


# ------------------------------------------------------------------ frozen-A
def row_space_fixed_fraction(A_frozen, B, A) -> float:
    """Fraction of dW's Frobenius energy inside span(A_frozen^T) (a subspace of
    the input space R^in):  ||dW P||_F^2 / ||dW||_F^2,  P = Q Q^T, Q = orth(A_frozen^T).

    Frozen-A methods (LoRA-FA: A fixed, only B trained) have dW = B A_frozen,
    so rowspace(dW) subset rowspace(A_frozen) by construction and this is
    exactly 1: the right singular subspace of dW is confined to the r input
    directions fixed at init, and training B only chooses which (at most)
    r-dim column space those fixed input directions are mapped to (and how).
    With A_frozen = V_r^T (lora_fa_svd: W's top-r right singular vectors) the
    update only ever reads the input through W's top-r right singular
    directions.  For an unconstrained dW (or another method's A) the value
    is typically < 1.  Computed from the factors: dW Q = B (A Q).
    Convention: dW = 0 lies in every subspace -> 1.0.

    A_frozen (r x in), B (out x k), A (k x in); pass B = dW, A = I for dense dW.
    """
    B, A = _t(B), _t(A)
    tot = frobenius_norm(singular_values(B, A)) ** 2
    if tot == 0.0:
        return 1.0
    Q = _orth(_t(A_frozen).T)
    return float(torch.linalg.matrix_norm(B @ (A @ Q)) ** 2 / tot)


def lowrank_distance(B1, A1, B2, A2) -> float:
    """||B1 A1 - B2 A2||_F from the factors, without forming either product:
    B1 A1 - B2 A2 = [B1, -B2] [A1; A2] (rank <= k1 + k2), whose singular values come
    from :func:`lowrank_svd`'s small core (no cancellation of two large norms)."""
    B1, A1, B2, A2 = _t(B1), _t(A1), _t(B2), _t(A2)
    return frobenius_norm(singular_values(torch.cat([B1, -B2], 1), torch.cat([A1, A2], 0)))


# ------------------------------------------------ phi grids between two runs
def singular_directions(B, A, of: str = "A", side: str = "right", drop_null: bool = True) -> torch.Tensor:
    """Orthonormal directions of one adapter, as columns ordered by descending singular value.

    * ``of="A"``:  the right singular vectors of A (k x in), i.e. an ordered basis of A's row
      space in R^in (``B`` is ignored and may be None).  This is what Hu et al. (2021, sec. 7.2)
      compare between an r=8 and an r=64 run ("right-singular unitary matrix of A").
    * ``of="dW"``: the singular vectors of dW = B @ A (via :func:`lowrank_svd`): ``side="right"``
      gives V (in x m, input space), ``side="left"`` gives U (out x m, output space).

    ``drop_null`` keeps only the numerical_rank(S) directions with S_i > 0: the others are an
    arbitrary orthonormal completion (e.g. every direction of dW when B = 0 at init).
    """
    if of == "A":
        _, S, Vh = torch.linalg.svd(_t(A), full_matrices=False)
        X = Vh.T
    elif of == "dW":
        if side not in ("left", "right"):
            raise ValueError(f"side must be 'left' or 'right', got {side!r}")
        U, S, V = lowrank_svd(B, A)
        X = U if side == "left" else V
    else:
        raise ValueError(f"of must be 'A' or 'dW', got {of!r}")
    return X[:, :numerical_rank(S)] if drop_null else X


def normalized_subspace_similarity(run1, run2, of: str = "A", side: str = "right",
                                   i_max: int | None = None, j_max: int | None = None) -> torch.Tensor:
    """phi(i, j) grid (Hu et al. 2021 eq. 4) between two runs' adapters of the same layer.

    ``run1``, ``run2`` are factor pairs (B, A) (scaling folded into B or not: phi only
    depends on directions).  With X1, X2 = :func:`singular_directions` of each run,

        G[i-1, j-1] = phi(i, j) = ||X1[:, :i]^T X2[:, :j]||_F^2 / min(i, j),   1 <= i <= i_max, 1 <= j <= j_max.

    E.g. an r=8 and an r=64 run with ``of="A"`` give the (8 x 64) grid of the LoRA paper's
    Fig. 3.  i_max / j_max default to (and are clamped at) the number of nonzero directions of
    each run, so a run with dW = 0 gives an empty grid.  Compare against
    :func:`similarity_grid_baseline` (two random subspaces).
    """
    X1 = singular_directions(*run1, of=of, side=side)
    X2 = singular_directions(*run2, of=of, side=side)
    if X1.shape[0] != X2.shape[0]:
        raise ValueError(f"the two runs' directions live in different spaces: R^{X1.shape[0]} vs R^{X2.shape[0]}")
    i_max = X1.shape[1] if i_max is None else min(i_max, X1.shape[1])
    j_max = X2.shape[1] if j_max is None else min(j_max, X2.shape[1])
    return similarity_grid(X1[:, :i_max], X2[:, :j_max])


def similarity_grid_baseline(n: int, i_max: int, j_max: int) -> torch.Tensor:
    """(i_max x j_max) grid of E[phi(i, j)] = max(i, j) / n for independent uniformly random
    subspaces of R^n (see :func:`random_subspace_similarity_baseline`)."""
    i = torch.arange(1, i_max + 1, dtype=_F64)[:, None]
    j = torch.arange(1, j_max + 1, dtype=_F64)[None, :]
    return torch.maximum(i, j) / n


# --------------------------------------------------------- intruder dimensions
INTRUDER_EPS = (0.5, 0.6, 0.7, 0.8, 0.9)


def intruder_dimensions(W, W_ft, k: int = 10, eps=INTRUDER_EPS, side: str = "left", basis0=None) -> dict:
    """Intruder dimensions (Shuttleworth et al. 2024, "LoRA vs Full Fine-tuning: An Illusion
    of Equivalence", arXiv 2410.21228).

    With W = X S Y^T (pretrained, out x in) and W_ft = W + dW = X' S' Y'^T (fine-tuned), both
    thin SVDs, the j-th singular vector of W_ft is an intruder at threshold eps iff

        max_i |cos(x'_j, x_i)| = max_i |<x'_j, x_i>| < eps,

    where i runs over ALL min(out, in) singular vectors of W (not only its top ones), and only
    the top-k singular vectors of W_ft (k = 10 in the paper) are examined.  As in the paper's
    code we use the LEFT singular vectors (columns of U, the output space) by default, with
    the absolute cosine (singular vectors are defined up to sign); ``side="right"`` uses the
    right singular vectors instead.  Because the x_i form an orthonormal basis of range(W)
    (all of R^out when W has full row rank), a direction is an intruder only when it is spread
    over many of W's singular vectors rather than close to any single one: a rotation among
    W's own singular vectors by angle theta has max-cos max(|cos theta|, |sin theta|) >= 0.71.

    Returns a dict: ``k``, ``eps`` (list), ``counts`` (list of int, one per eps, strict ``<``),
    ``max_cos`` (float64 tensor (k,): max_i |<x'_j, x_i>| for j < k, to draw a count-vs-eps
    curve at any eps), ``sv_ft`` (W_ft's top-k singular values).  ``basis0`` may pass W's
    left (or right) singular vectors if the caller already has them (several checkpoints).
    """
    W, W_ft = _t(W), _t(W_ft)
    if W.shape != W_ft.shape or W.ndim != 2:
        raise ValueError(f"W and W_ft must be matrices of the same shape, got {tuple(W.shape)} and {tuple(W_ft.shape)}")
    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right', got {side!r}")
    m = min(W.shape)
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= m:
        raise ValueError(f"k must be an integer in 1..{m}, got {k!r}")
    eps = [float(e) for e in (eps if isinstance(eps, (list, tuple)) else [eps])]
    bad = [e for e in eps if not 0.0 < e <= 1.0]
    if bad:
        raise ValueError(f"eps must lie in (0, 1], got {bad}")
    if basis0 is None:
        U0, _, Vh0 = torch.linalg.svd(W, full_matrices=False)
        basis0 = U0 if side == "left" else Vh0.T
    else:
        basis0 = _t(basis0)
    U1, S1, Vh1 = torch.linalg.svd(W_ft, full_matrices=False)
    top = (U1 if side == "left" else Vh1.T)[:, :k]
    max_cos = (top.T @ basis0).abs().amax(dim=1).clamp(max=1.0)
    return dict(k=k, eps=eps, counts=[int((max_cos < e).sum()) for e in eps], max_cos=max_cos, sv_ft=S1[:k])


def intruder_dimensions_lowrank(W, B, A, k: int = 10, eps=INTRUDER_EPS, side: str = "left",
                                basis0=None) -> dict:
    """:func:`intruder_dimensions` of W_ft = W + B @ A, from the adapter's factors (e.g. a layer's
    ``delta_factors()``, scaling folded into B) so that no dense dW has to be stored."""
    W, B, A = _t(W), _t(B), _t(A)
    if B.shape[0] != W.shape[0] or A.shape[1] != W.shape[1] or B.shape[1] != A.shape[0]:
        raise ValueError(f"factors B {tuple(B.shape)}, A {tuple(A.shape)} do not fit W {tuple(W.shape)}")
    return intruder_dimensions(W, W + B @ A, k=k, eps=eps, side=side, basis0=basis0)
