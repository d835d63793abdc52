"""training.metrics on cases whose answer is known in closed form."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.special import logsumexp

from training import metrics


def test_mse_and_psnr_of_a_constant_offset():
    target = np.zeros((4, 1, 28, 28), np.float32)
    pred = target + 0.1
    assert metrics.mse(pred, target) == pytest.approx(0.01)
    assert metrics.psnr(pred, target) == pytest.approx(20.0)


def test_psnr_averages_the_mse_over_the_set_not_the_psnr_over_images():
    target = np.zeros((2, 1, 4, 4))
    pred = np.stack([np.full((1, 4, 4), 0.1), np.full((1, 4, 4), 0.01)])
    set_mse = (0.01 + 0.0001) / 2
    assert metrics.psnr(pred, target) == pytest.approx(10 * math.log10(1 / set_mse))
    assert metrics.psnr(target, target) == math.inf


def test_mse_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="shape mismatch"):
        metrics.mse(np.zeros((2, 28, 28)), np.zeros((2, 1, 28, 28)))


def test_ssim_is_one_for_identical_images_and_matches_skimage():
    from skimage.metrics import structural_similarity

    rng = np.random.default_rng(0)
    clean = rng.random((3, 1, 28, 28)).astype(np.float32)
    noisy = np.clip(clean + rng.normal(0, 0.2, clean.shape), 0, 1)
    assert metrics.ssim(clean, clean) == pytest.approx(1.0)
    pairs = zip(noisy.astype(np.float64), clean.astype(np.float64), strict=True)
    expected = np.mean([structural_similarity(a[0], b[0], data_range=1.0) for a, b in pairs])
    assert metrics.ssim(noisy, clean) == pytest.approx(expected)
    assert metrics.ssim(noisy, clean) < 0.9


def test_knn_accuracy_on_separated_clusters():
    rng = np.random.default_rng(0)
    centres = np.eye(3) * 10
    train_y, test_y = rng.integers(0, 3, 60), rng.integers(0, 3, 30)
    train_x = centres[train_y] + rng.normal(0, 0.5, (60, 3))
    test_x = centres[test_y] + rng.normal(0, 0.5, (30, 3))
    assert metrics.knn_accuracy(train_x, train_y, test_x, test_y) == 1.0
    assert metrics.knn_accuracy(train_x, train_y, test_x, (test_y + 1) % 3) == 0.0


def test_frechet_distance_of_identical_sets_is_zero():
    x = np.random.default_rng(0).normal(size=(500, 8))
    assert metrics.frechet_distance(x, x) == pytest.approx(0.0, abs=1e-6)


def test_frechet_distance_of_a_shifted_set_is_the_squared_shift():
    x = np.random.default_rng(0).normal(size=(500, 8))
    shift = np.arange(8) / 4.0
    assert metrics.frechet_distance(x, x + shift) == pytest.approx(shift @ shift, rel=1e-6)


def test_frechet_closed_form_for_diagonal_gaussians():
    mu_a, mu_b = np.array([0.0, 1.0]), np.array([2.0, -1.0])
    var_a, var_b = np.array([1.0, 4.0]), np.array([9.0, 1.0])
    expected = np.sum((mu_a - mu_b) ** 2) + np.sum((np.sqrt(var_a) - np.sqrt(var_b)) ** 2)
    got = metrics.frechet_distance_gaussians(mu_a, np.diag(var_a), mu_b, np.diag(var_b))
    assert got == pytest.approx(expected)
    # and from samples, approximately
    rng = np.random.default_rng(1)
    a = mu_a + np.sqrt(var_a) * rng.normal(size=(200_000, 2))
    b = mu_b + np.sqrt(var_b) * rng.normal(size=(200_000, 2))
    assert metrics.frechet_distance(a, b) == pytest.approx(expected, rel=0.02)


def test_bernoulli_log_likelihood_matches_the_direct_formula():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (5, 1, 4, 4))
    x = (rng.random((5, 1, 4, 4)) < 0.5).astype(np.float32)
    p = 1 / (1 + np.exp(-logits))
    direct = np.sum(x * np.log(p) + (1 - x) * np.log(1 - p), axis=(1, 2, 3))
    assert metrics.bernoulli_log_likelihood(x, logits) == pytest.approx(direct, rel=1e-5)
    flat = metrics.bernoulli_log_likelihood(x.reshape(5, -1), logits.reshape(5, -1), event_ndim=1)
    assert flat == pytest.approx(direct, rel=1e-5)


def test_gaussian_log_densities():
    z = np.array([[0.5, -1.0]])
    assert metrics.log_standard_normal(z)[0] == pytest.approx(
        -math.log(2 * math.pi) - 0.5 * (0.25 + 1.0))
    assert metrics.log_normal_diag(z, np.zeros(2), np.zeros(2)) == pytest.approx(
        metrics.log_standard_normal(z))


# A latent-variable model small enough for an exact likelihood: z ~ N(0,1) in 1-d,
# x in {0,1}^3 with logits a*z + b. log p(x) by quadrature over z.
A, B = np.array([2.0, -1.0, 0.5]), np.array([0.3, 0.0, -0.5])
X = np.array([1.0, 0.0, 1.0])


def _log_px_z(z: np.ndarray) -> np.ndarray:
    logits = z[..., None] * A + B
    return metrics.bernoulli_log_likelihood(X, logits, event_ndim=1)


def _exact_log_px() -> float:
    grid = np.linspace(-12, 12, 200_001)
    log_joint = _log_px_z(grid) + metrics.log_standard_normal(grid[:, None])
    return float(logsumexp(log_joint) + math.log(grid[1] - grid[0]))


def _iwae(k: int, reps: int, seed: int = 0) -> np.ndarray:
    """`reps` independent IWAE estimates, k samples each from a poor q = N(0.5, 0.6^2)."""
    rng = np.random.default_rng(seed)
    mean, logvar = np.array([0.5]), np.array([2 * math.log(0.6)])
    z = mean + 0.6 * rng.normal(size=(k, reps, 1))
    log_qz = metrics.log_normal_diag(z, mean, logvar)
    return metrics.iwae_bound(_log_px_z(z[..., 0]), metrics.log_standard_normal(z), log_qz)


def test_iwae_with_one_sample_is_the_elbo_sample():
    log_px_z, log_pz = np.array([[-3.0, -5.0]]), np.array([[-1.0, -2.0]])
    log_qz = np.array([[0.5, -0.5]])
    got = metrics.iwae_bound(log_px_z, log_pz, log_qz)
    assert got == pytest.approx((log_px_z + log_pz - log_qz)[0])


def test_iwae_is_a_lower_bound_that_tightens_with_k():
    exact = _exact_log_px()
    elbo, k10, k1000 = _iwae(1, 4000).mean(), _iwae(10, 4000).mean(), _iwae(1000, 200).mean()
    assert elbo < k10 < k1000 <= exact + 1e-3
    assert exact - k1000 < 0.01
