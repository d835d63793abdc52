"""Test-set metrics of DESIGN section 6, in numpy (no torch, no onnxruntime).

Every function takes plain arrays so that the same code scores the exported ONNX
models and the baselines. Images are float arrays in [0,1], any leading shape;
the last two axes are height and width. Conventions:

- MSE is per pixel, averaged over every pixel of every image.
- PSNR is 10 log10(1 / MSE) with the MSE averaged over the whole set first
  (not the mean of per-image PSNRs, which rewards easy images).
- SSIM is scikit-image's `structural_similarity` with its defaults and
  data_range=1, computed per image and averaged.
- k-NN accuracy: k=5, Euclidean, fit on train features, scored on test features.
- Frechet distance: ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^1/2), as in FID
  (Heusel et al. 2017), on whatever features it is given.
- IWAE bound (Burda et al. 2016): log (1/k) sum_i p(x, z_i) / q(z_i | x),
  z_i ~ q(z | x); a lower bound on log p(x) that tightens as k grows.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import linalg
from scipy.special import logsumexp

LOG_2PI = math.log(2.0 * math.pi)


# ---------------------------------------------------------------- reconstruction


def mse(pred: np.ndarray, target: np.ndarray) -> float:
    """Mean squared error per pixel over the whole set (float64 accumulation)."""
    pred, target = _same_shape(pred, target)
    diff = pred.astype(np.float64) - target.astype(np.float64)
    return float(np.mean(diff * diff))


def psnr_from_mse(value: float, data_range: float = 1.0) -> float:
    """PSNR in dB from a set-level MSE; +inf for a perfect match."""
    if value <= 0:
        return math.inf
    return float(10.0 * math.log10(data_range**2 / value))


def psnr(pred: np.ndarray, target: np.ndarray) -> float:
    """PSNR in dB = 10 log10(1 / MSE), MSE averaged over the whole set."""
    return psnr_from_mse(mse(pred, target))


def ssim(pred: np.ndarray, target: np.ndarray) -> float:
    """Mean SSIM over images (scikit-image defaults: 7x7 uniform window, data_range=1)."""
    from skimage.metrics import structural_similarity

    pred, target = _same_shape(pred, target)
    h, w = pred.shape[-2:]
    a = pred.reshape(-1, h, w).astype(np.float64)
    b = target.reshape(-1, h, w).astype(np.float64)
    if len(a) == 0:
        raise ValueError("ssim of an empty set")
    scores = [structural_similarity(x, y, data_range=1.0) for x, y in zip(a, b, strict=True)]
    return float(np.mean(scores))


def _same_shape(pred: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred, target = np.asarray(pred), np.asarray(target)
    if pred.shape != target.shape:
        raise ValueError(f"shape mismatch: prediction {pred.shape}, target {target.shape}")
    return pred, target


# ---------------------------------------------------------------- embeddings


def knn_accuracy(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    test_features: np.ndarray,
    test_labels: np.ndarray,
    k: int = 5,
) -> float:
    """Accuracy of a k-NN classifier (Euclidean, uniform vote) fit on train, scored on test."""
    from sklearn.neighbors import KNeighborsClassifier

    clf = KNeighborsClassifier(n_neighbors=k)
    clf.fit(_flat(train_features), np.asarray(train_labels))
    pred = clf.predict(_flat(test_features))
    return float(np.mean(pred == np.asarray(test_labels)))


def _flat(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x.reshape(len(x), -1)


# ---------------------------------------------------------------- generation


def frechet_distance(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to two feature sets [N, D]."""
    a, b = _flat(features_a), _flat(features_b)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature sizes differ: {a.shape[1]} vs {b.shape[1]}")
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    return frechet_distance_gaussians(mu_a, cov_a, mu_b, cov_b)


def frechet_distance_gaussians(
    mu_a: np.ndarray, cov_a: np.ndarray, mu_b: np.ndarray, cov_b: np.ndarray
) -> float:
    """Closed form between N(mu_a, cov_a) and N(mu_b, cov_b)."""
    cov_a = np.atleast_2d(np.asarray(cov_a, np.float64))
    cov_b = np.atleast_2d(np.asarray(cov_b, np.float64))
    diff = np.asarray(mu_a, np.float64) - np.asarray(mu_b, np.float64)
    # Tr (S_a S_b)^1/2 = sum of sqrt eigenvalues of S_a^1/2 S_b S_a^1/2, a symmetric PSD
    # matrix: stabler than sqrtm of the non-symmetric product, and never complex.
    evals, evecs = linalg.eigh(cov_a)
    root_a = (evecs * np.sqrt(np.clip(evals, 0, None))) @ evecs.T
    inner = linalg.eigvalsh(root_a @ cov_b @ root_a)
    trace_covmean = np.sum(np.sqrt(np.clip(inner, 0, None)))
    value = diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2.0 * trace_covmean
    return float(max(value, 0.0))


# ---------------------------------------------------------------- likelihoods


def bernoulli_log_likelihood(x: np.ndarray, logits: np.ndarray, event_ndim: int = 3) -> np.ndarray:
    """log p(x | logits) of binary x under independent Bernoullis, summed over the last
    `event_ndim` axes (3 for [.., C, H, W] images, 1 for flat vectors).

    x and logits broadcast against each other. Computed stably as x*l - softplus(l),
    in float32 per pixel and float64 for the sum.
    """
    x = np.asarray(x, dtype=np.float32)
    logits = np.asarray(logits, dtype=np.float32)
    ll = x * logits - np.logaddexp(np.float32(0.0), logits)
    return ll.sum(axis=tuple(range(-event_ndim, 0)), dtype=np.float64)


def log_normal_diag(z: np.ndarray, mean: np.ndarray, logvar: np.ndarray) -> np.ndarray:
    """log N(z; mean, diag(exp(logvar))) summed over the last axis."""
    z, mean, logvar = (np.asarray(a, dtype=np.float64) for a in (z, mean, logvar))
    return -0.5 * np.sum(LOG_2PI + logvar + (z - mean) ** 2 * np.exp(-logvar), axis=-1)


def log_standard_normal(z: np.ndarray) -> np.ndarray:
    """log N(z; 0, I) summed over the last axis."""
    z = np.asarray(z, dtype=np.float64)
    return -0.5 * np.sum(LOG_2PI + z * z, axis=-1)


def iwae_bound(
    log_px_z: np.ndarray, log_pz: np.ndarray, log_qz: np.ndarray, axis: int = 0
) -> np.ndarray:
    """Importance-weighted bound log (1/k) sum_i exp(log p(x|z_i) + log p(z_i) - log q(z_i|x)).

    The k samples lie along `axis`; the result drops that axis. With k=1 this is
    the single-sample ELBO estimate.
    """
    log_w = np.asarray(log_px_z, np.float64) + np.asarray(log_pz, np.float64)
    log_w = log_w - np.asarray(log_qz, np.float64)
    k = log_w.shape[axis]
    return logsumexp(log_w, axis=axis) - math.log(k)
