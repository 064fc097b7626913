"""Intruder dimensions, phi grids between two runs, factor distances (lora.spectra)."""
import math

import numpy as np
import pytest
import torch

from lora import spectra as sp


def orthonormal(n, k, g):
    return np.linalg.qr(g.standard_normal((n, k)))[0]


def full_rank_W(n=32, m=24, seed=0):
    """W = U diag(S) V^T with distinct singular values 10 .. 1 (full rank, well separated)."""
    g = np.random.default_rng(seed)
    U, V = orthonormal(n, m, g), orthonormal(m, m, g)
    S = np.linspace(10.0, 1.0, m)
    return U, S, V, U @ np.diag(S) @ V.T


# ------------------------------------------------------------ intruder dimensions
def test_no_intruders_when_W_ft_keeps_W_singular_vectors():
    U, S, V, W = full_rank_W()
    S2 = S.copy()
    S2[[0, 5, 17]] = [3.0, 25.0, 12.0]            # reorders which singular vector ranks top
    res = sp.intruder_dimensions(W, U @ np.diag(S2) @ V.T, k=10, eps=[0.5, 0.9, 0.99])
    assert res["counts"] == [0, 0, 0]
    assert torch.allclose(res["max_cos"], torch.ones(10, dtype=torch.float64), atol=1e-8)
    assert res["sv_ft"][0].item() == pytest.approx(25.0)


def test_rotation_among_own_singular_vectors_is_no_intruder_below_cos():
    U, S, V, W = full_rank_W()
    th = math.radians(20)
    R = np.eye(U.shape[1])
    R[:2, :2] = [[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]]
    S2 = S.copy()
    S2[:2] = [20.0, 15.0]
    res = sp.intruder_dimensions(W, (U @ R) @ np.diag(S2) @ V.T, k=5, eps=[0.5, 0.9, 0.95])
    assert res["max_cos"][0].item() == pytest.approx(math.cos(th), abs=1e-9)
    assert res["counts"] == [0, 0, 2]           # the two rotated vectors: max-cos cos(20°) = 0.94


def test_spread_direction_is_an_intruder():
    """A large rank-1 update along d = U 1/sqrt(m): every |<d, u_i>| = 1/sqrt(m) ≈ 0.2, so the new top
    left singular vector is close to none of W's (full-rank, spanning) singular vectors."""
    U, S, V, W = full_rank_W()
    m = U.shape[1]
    d = U @ np.ones(m) / math.sqrt(m)
    g = np.random.default_rng(1)
    v = g.standard_normal(W.shape[1])
    v /= np.linalg.norm(v)
    W_ft = W + 200.0 * np.outer(d, v)
    res = sp.intruder_dimensions(W, W_ft, k=10, eps=[0.3, 0.5, 0.9])
    assert res["max_cos"][0].item() == pytest.approx(1 / math.sqrt(m), abs=0.02)
    assert res["counts"][:2] == [1, 1]          # only the planted direction at eps 0.3 and 0.5
    assert int(torch.argmin(res["max_cos"])) == 0
    # the same result from the factors, without a dense dW
    low = sp.intruder_dimensions_lowrank(W, 200.0 * d[:, None], v[None, :], k=10, eps=[0.3, 0.5, 0.9])
    assert low["counts"] == res["counts"]
    assert torch.allclose(low["max_cos"], res["max_cos"], atol=1e-10)


def test_right_side_and_basis0():
    U, S, V, W = full_rank_W()
    m = V.shape[1]
    e = V @ np.ones(m) / math.sqrt(m)             # spread in the input space this time
    W_ft = W + 200.0 * np.outer(U[:, 3], e)
    assert sp.intruder_dimensions(W, W_ft, k=3, eps=0.5, side="right")["counts"] == [1]
    assert sp.intruder_dimensions(W, W_ft, k=3, eps=0.5, side="left")["counts"] == [0]
    pre = sp.intruder_dimensions(W, W_ft, k=3, eps=0.5, side="right", basis0=V)
    assert pre["counts"] == [1]


def test_intruder_counts_monotone_in_eps():
    U, S, V, W = full_rank_W(seed=3)
    g = np.random.default_rng(4)
    W_ft = W + 8.0 * g.standard_normal((32, 4)) @ g.standard_normal((4, 24)) / 5
    eps = np.linspace(0.05, 1.0, 20).tolist()
    res = sp.intruder_dimensions(W, W_ft, k=10, eps=eps)
    assert res["counts"] == sorted(res["counts"])
    assert res["counts"][-1] <= 10 and res["counts"][0] == 0
    assert res["counts"] == [int((res["max_cos"] < e).sum()) for e in eps]


@pytest.mark.parametrize("kw, msg", [(dict(k=0), "k must be"), (dict(k=25), "1..24"),
                                     (dict(eps=[0.5, 1.5]), "eps must lie"), (dict(side="up"), "side")])
def test_intruder_bad_input(kw, msg):
    _, _, _, W = full_rank_W()
    with pytest.raises(ValueError, match=msg):
        sp.intruder_dimensions(W, W, **kw)
    with pytest.raises(ValueError, match="same shape"):
        sp.intruder_dimensions(W, W[:, :3])


# ------------------------------------------------------------ phi between runs
def test_phi_grid_identical_and_orthogonal_A():
    g = np.random.default_rng(0)
    n = 40
    Q = orthonormal(n, 24, g)
    A8 = np.diag(np.linspace(3, 1, 8)) @ Q[:, :8].T          # r=8 run: rows span Q[:, :8]
    A16 = np.diag(np.linspace(5, 1, 16)) @ Q[:, :16].T       # r=16 run contains it
    G = sp.normalized_subspace_similarity((None, A8), (None, A16))
    assert G.shape == (8, 16)
    # both orderings follow Q's columns, so top-i and top-j are nested: phi(i, j) = 1 everywhere
    assert torch.allclose(G, torch.ones(8, 16, dtype=torch.float64), atol=1e-10)
    A_orth = Q[:, 8:24].T                                     # a run orthogonal to the r=8 one
    assert sp.normalized_subspace_similarity((None, A8), (None, A_orth)).abs().max().item() < 1e-12
    assert sp.normalized_subspace_similarity((None, A8), (None, A16), i_max=4, j_max=99).shape == (4, 16)


def test_phi_grid_dW_sides_and_null_directions():
    g = np.random.default_rng(2)
    B, A = g.standard_normal((30, 6)), g.standard_normal((6, 20))
    for side, dim in (("left", 30), ("right", 20)):
        X = sp.singular_directions(B, A, of="dW", side=side)
        assert X.shape == (dim, 6)
        assert torch.allclose(X.T @ X, torch.eye(6, dtype=torch.float64), atol=1e-10)
        G = sp.normalized_subspace_similarity((B, A), (2 * B, A), of="dW", side=side)
        assert torch.allclose(G, torch.ones(6, 6, dtype=torch.float64), atol=1e-10)
    # dW = 0 (B = 0 at LoRA init) has no directions: an empty grid, never NaN
    assert sp.singular_directions(np.zeros((30, 6)), A, of="dW").shape == (20, 0)
    assert sp.normalized_subspace_similarity((np.zeros((30, 6)), A), (B, A), of="dW").shape == (0, 6)
    with pytest.raises(ValueError, match="of must be"):
        sp.singular_directions(B, A, of="W")
    with pytest.raises(ValueError, match="different spaces"):
        sp.normalized_subspace_similarity((B, A), (B, A[:, :10]), of="dW")


def test_phi_grid_random_matches_baseline():
    n, r1, r2, reps = 64, 4, 16, 300
    g = np.random.default_rng(5)
    mean = sum(sp.normalized_subspace_similarity((None, g.standard_normal((r1, n))),
                                                 (None, g.standard_normal((r2, n)))) for _ in range(reps)) / reps
    base = sp.similarity_grid_baseline(n, r1, r2)
    assert base.shape == (4, 16)
    assert base[1, 9].item() == pytest.approx(sp.random_subspace_similarity_baseline(n, 2, 10))
    assert base[3, 0].item() == pytest.approx(4 / 64)
    assert torch.allclose(mean, base, atol=0.02)       # MC error ~ 0.005 at these sizes


def test_lowrank_distance():
    g = np.random.default_rng(7)
    B1, A1, B2, A2 = g.standard_normal((9, 3)), g.standard_normal((3, 7)), g.standard_normal((9, 2)), \
        g.standard_normal((2, 7))
    assert sp.lowrank_distance(B1, A1, B2, A2) == pytest.approx(np.linalg.norm(B1 @ A1 - B2 @ A2), rel=1e-12)
    assert sp.lowrank_distance(B1, A1, B1, A1) < 1e-12
