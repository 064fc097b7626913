import math

import numpy as np
import pytest
import scipy.linalg as sla
import torch

from lora import spectra as sp


def rng(seed=0):
    return np.random.default_rng(seed)


def orthonormal(n, k, g):
    return np.linalg.qr(g.standard_normal((n, k)))[0]


def dense_metrics(S, k):
    fro = np.sqrt((S ** 2).sum())
    p = S / S.sum()
    p = p[p > 0]
    return dict(fro=fro, spectral=S[0], stable_rank=fro ** 2 / S[0] ** 2,
                effective_rank=np.exp(-(p * np.log(p)).sum()),
                energy=(S[:k] ** 2).sum() / (S ** 2).sum())


def no_nan(*xs):
    for x in xs:
        if isinstance(x, dict):
            no_nan(*x.values())
        elif isinstance(x, torch.Tensor):
            assert not torch.isnan(x).any()
        elif isinstance(x, float):
            assert not math.isnan(x)


# ------------------------------------------------------------------ SVD
@pytest.mark.parametrize("mix", [False, True])
def test_planted_spectrum(mix):
    g = rng(1)
    out, inn, k = 40, 25, 6
    sigma = np.array([10.0, 5.0, 2.0, 1.0, 0.1, 1e-3])
    U, V = orthonormal(out, k, g), orthonormal(inn, k, g)
    B, A = U * sigma, V.T
    if mix:
        M = g.standard_normal((k, k)) + 3 * np.eye(k)
        B, A = B @ M, np.linalg.solve(M, A)
    Uh, S, Vh = sp.lowrank_svd(torch.tensor(B), torch.tensor(A))
    assert S.dtype == torch.float64
    np.testing.assert_allclose(S.numpy(), sigma, rtol=1e-10)
    # singular vectors match up to sign
    signs = np.sign(np.sum(Uh.numpy() * U, axis=0))
    np.testing.assert_allclose(Uh.numpy() * signs, U, atol=1e-8)
    np.testing.assert_allclose(Vh.numpy() * signs, V, atol=1e-8)


@pytest.mark.parametrize("shape", [(30, 20, 5), (12, 9, 15), (8, 30, 4)])
def test_matches_dense_svd(shape):
    out, inn, k = shape
    g = rng(2)
    B, A = g.standard_normal((out, k)), g.standard_normal((k, inn))
    dW = B @ A
    S_ref = np.linalg.svd(dW, compute_uv=False)
    m = min(out, inn, k)
    U, S, V = sp.lowrank_svd(B, A)  # numpy inputs accepted
    assert U.shape == (out, m) and S.shape == (m,) and V.shape == (inn, m)
    np.testing.assert_allclose(S.numpy(), S_ref[:m], rtol=1e-6, atol=1e-12 * S_ref[0])
    np.testing.assert_allclose((U * S) @ V.T, dW, atol=1e-10 * S_ref[0])
    np.testing.assert_allclose(U.T @ U, np.eye(m), atol=1e-12)
    np.testing.assert_allclose(sp.singular_values(B, A).numpy(), S.numpy(), rtol=1e-12)
    assert sp.lowrank_svd(B, A, vectors=False)[0] is None
    # metrics
    got = sp.lowrank_metrics(torch.tensor(B), torch.tensor(A), k=2)
    ref = dense_metrics(S_ref[:m], 2)
    for key, val in ref.items():
        assert got[key] == pytest.approx(val, rel=1e-8), key
    assert got["rank"] == m


def test_metric_values_by_hand():
    S = torch.tensor([2.0, 1.0, 1.0, 0.0])
    assert sp.frobenius_norm(S) == pytest.approx(math.sqrt(6))
    assert sp.spectral_norm(S) == 2.0
    assert sp.stable_rank(S) == pytest.approx(1.5)
    assert sp.energy_fraction(S, 1) == pytest.approx(4 / 6)
    H = -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25))
    assert sp.effective_rank(S) == pytest.approx(math.exp(H))
    assert sp.effective_rank(torch.ones(7)) == pytest.approx(7.0)


# ------------------------------------------------------------ degenerate
def test_zero_B():
    g = rng(3)
    B, A = torch.zeros(20, 4, dtype=torch.float64), torch.tensor(g.standard_normal((4, 15)))
    U, S, V = sp.lowrank_svd(B, A)
    assert torch.all(S == 0)
    met = sp.lowrank_metrics(B, A, k=2)
    assert met == dict(fro=0.0, spectral=0.0, stable_rank=0.0, effective_rank=0.0,
                       energy=0.0, rank=0)
    W = torch.tensor(g.standard_normal((20, 15)))
    ov = sp.subspace_overlap_with_W(B, A, W, k=3)
    assert ov["r"] == 0 and all(ov[key].numel() == 0 for key in ("left_top", "right_bottom"))
    assert sp.amplification_factor(B, A, W) == 0.0
    assert sp.row_space_fixed_fraction(A, B, A) == 1.0
    no_nan(U, S, V, met, ov)


def test_rank_deficient_factors():
    g = rng(4)
    out, inn, k = 16, 12, 5
    B = g.standard_normal((out, k))
    B[:, 1] = 0.0                      # zero column
    A = g.standard_normal((k, inn))
    A[3] = A[2]                        # repeated row
    S_ref = np.linalg.svd(B @ A, compute_uv=False)[:k]
    U, S, V = sp.lowrank_svd(B, A)
    no_nan(U, S, V, sp.lowrank_metrics(B, A))
    # dW = sum over cols {0,2,3,4}, with rows 2,3 equal: rank 3
    assert sp.numerical_rank(S) == 3
    np.testing.assert_allclose(S[:3].numpy(), S_ref[:3], rtol=1e-10)
    assert S[3:].abs().max() < 1e-12 * S[0]
    np.testing.assert_allclose((U * S) @ V.T, B @ A, atol=1e-12 * S_ref[0])


# ------------------------------------------------------- principal angles
def test_principal_angles_vs_scipy():
    g = rng(5)
    X, Y = g.standard_normal((20, 4)), g.standard_normal((20, 6))
    ref = np.sort(sla.subspace_angles(X, Y))
    got = sp.principal_angles(X, Y).numpy()
    assert got.shape == (4,) and np.all(np.diff(got) >= 0)
    np.testing.assert_allclose(got, ref, rtol=1e-10)
    np.testing.assert_allclose(sp.principal_angles(Y, X).numpy(), ref, rtol=1e-10)


def test_principal_angles_tiny_and_identical():
    g = rng(6)
    n = 15
    Q = orthonormal(n, 5, g)
    X = Q[:, :3]
    # rotate column 0 towards the orthogonal direction Q[:,3] by 1e-8 and col 1 by 1e-4
    Y = X.copy()
    Y[:, 0] = np.cos(1e-8) * Q[:, 0] + np.sin(1e-8) * Q[:, 3]
    Y[:, 1] = np.cos(1e-4) * Q[:, 1] + np.sin(1e-4) * Q[:, 4]
    expect = np.array([0.0, 1e-8, 1e-4])
    got = sp.principal_angles(X, Y @ g.standard_normal((3, 3))).numpy()
    np.testing.assert_allclose(got[1:], expect[1:], rtol=1e-6)
    assert abs(got[0]) < 1e-12
    np.testing.assert_allclose(got, np.sort(sla.subspace_angles(X, Y)), rtol=1e-6, atol=1e-12)
    same = sp.principal_angles(X, X @ g.standard_normal((3, 3))).numpy()
    assert np.all(np.abs(same) < 1e-12)
    orth = sp.principal_angles(Q[:, :2], Q[:, 2:]).numpy()
    np.testing.assert_allclose(orth, np.pi / 2, rtol=1e-12)


# --------------------------------------------------- subspace similarity
def test_similarity_identical_and_grid():
    g = rng(7)
    U1 = orthonormal(50, 6, g)
    R = np.linalg.qr(g.standard_normal((6, 6)))[0]
    assert sp.subspace_similarity(U1, U1 @ R, 6, 6) == pytest.approx(1.0, abs=1e-12)
    U2 = orthonormal(50, 4, g)
    G = sp.similarity_grid(U1, U2)
    assert G.shape == (6, 4)
    for i in range(1, 7):
        for j in range(1, 5):
            assert G[i - 1, j - 1].item() == pytest.approx(sp.subspace_similarity(U1, U2, i, j),
                                                           rel=1e-12)
    assert torch.all((G >= 0) & (G <= 1 + 1e-12))
    # nested: top-2 of U1 inside U1 -> phi(U1, U1[:, :2], i, j) = 1 for all j <= i
    H = sp.similarity_grid(U1, U1[:, :2])
    np.testing.assert_allclose(H[1:].numpy(), 1.0, atol=1e-12)
    assert H[0, 1].item() == pytest.approx(1.0)  # min(i,j)=1: e1 inside span(e1,e2)


def test_similarity_random_baseline():
    g = rng(8)
    n, i = 512, 8
    base = sp.random_subspace_similarity_baseline(n, i, i)
    assert base == pytest.approx(8 / 512)
    phis = [sp.subspace_similarity(orthonormal(n, i, g), orthonormal(n, i, g), i, i)
            for _ in range(20)]
    # sd of a single phi ~ base*sqrt(2/(i*i)) ~ 0.0028; mean of 20 ~ 6e-4
    assert abs(np.mean(phis) - base) < 0.25 * base
    assert sp.random_subspace_similarity_baseline(100, 2, 5) == pytest.approx(0.05)


# ------------------------------------------------------------ geometry vs W
def test_top_bottom_subspaces_and_overlap():
    d = np.array([5.0, 4.0, 3.0, 2.0, 1.0, 0.5])
    W = np.zeros((8, 6))
    W[:6, :6] = np.diag(d)
    Ut, Vt = sp.top_singular_subspaces(W, 2)
    Ub, Vb = sp.top_singular_subspaces(W, 2, which="bottom")
    I8, I6 = np.eye(8), np.eye(6)
    np.testing.assert_allclose(np.abs(Ut.numpy()), I8[:, :2], atol=1e-12)
    np.testing.assert_allclose(np.abs(Vb.numpy()), I6[:, 4:6], atol=1e-12)
    # dW lives on coordinates (left e0,e1) x (right e4,e5): top-left, bottom-right of W
    B = I8[:, :2] * np.array([3.0, 1.0])
    A = I6[:, 4:6].T
    ov = sp.subspace_overlap_with_W(B, A, W, k=2)
    assert ov["r"] == 2
    np.testing.assert_allclose(ov["left_top"].numpy(), 0.0, atol=1e-12)
    np.testing.assert_allclose(ov["left_bottom"].numpy(), np.pi / 2, atol=1e-12)
    np.testing.assert_allclose(ov["right_top"].numpy(), np.pi / 2, atol=1e-12)
    np.testing.assert_allclose(ov["right_bottom"].numpy(), 0.0, atol=1e-12)


def test_amplification_factor_by_hand():
    W = np.diag([10.0, 6.0, 3.0, 1.0])
    I = np.eye(4)
    # dW = 2 e2 e2^T + 1 e3 e3^T -> U_r^T W V_r = diag(3, 1)
    B, A = I[:, 2:4] * np.array([2.0, 1.0]), I[:, 2:4].T
    assert sp.amplification_factor(B, A, W) == pytest.approx(np.sqrt(5) / np.sqrt(10), rel=1e-12)
    # r=1 keeps the full numerator: sqrt(5) / 3
    assert sp.amplification_factor(B, A, W, r=1) == pytest.approx(np.sqrt(5) / 3, rel=1e-12)
    # off-diagonal dW = e0 e1^T: U^T W V = W[0,1] = 0 -> inf
    assert sp.amplification_factor(I[:, :1], I[:, 1:2].T, W) == math.inf


# ---------------------------------------------------------------- frozen A
def test_row_space_fixed_fraction():
    g = rng(9)
    out, inn, r = 20, 16, 4
    A_frozen = g.standard_normal((r, inn))
    B = g.standard_normal((out, r))
    assert sp.row_space_fixed_fraction(A_frozen, B, A_frozen) == pytest.approx(1.0, abs=1e-12)
    # SVD-based frozen A (lora_fa_svd style): A = V_r^T of W
    W = g.standard_normal((out, inn))
    _, Vr = sp.top_singular_subspaces(W, r)
    assert sp.row_space_fixed_fraction(Vr.T, B, Vr.T) == pytest.approx(1.0, abs=1e-12)
    # random dense dW: expected fraction ~ r / inn
    dW = g.standard_normal((out, inn))
    frac = sp.row_space_fixed_fraction(A_frozen, dW, np.eye(inn))
    Q = np.linalg.qr(A_frozen.T)[0]
    ref = np.linalg.norm(dW @ Q) ** 2 / np.linalg.norm(dW) ** 2
    assert frac == pytest.approx(ref, rel=1e-10)
    assert 0.0 < frac < 0.6
