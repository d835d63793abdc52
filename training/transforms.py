"""Corruptions and resamplings shared by training and evaluation (numpy, no torch).

Every random transform takes an explicit `np.random.Generator`, so a fixed seed
reproduces the exact noisy test set. Inputs are float32 arrays in [0,1] of any
shape ending in (H, W); outputs are float32 in [0,1].
"""

from __future__ import annotations

import numpy as np


def gaussian_noise(
    x: np.ndarray, sigma: float | np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Add N(0, sigma^2) per pixel, then clip to [0,1]. `sigma` may be one value per image."""
    sigma = np.asarray(sigma, dtype=np.float32)
    if sigma.ndim == 1:
        sigma = sigma.reshape((-1,) + (1,) * (x.ndim - 1))
    noisy = x + sigma * rng.standard_normal(x.shape, dtype=np.float32)
    return np.clip(noisy, 0.0, 1.0).astype(np.float32)


def salt_and_pepper(x: np.ndarray, p: float | np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Set each pixel with probability p to 0 or 1 (equal odds). `p` may be per image."""
    p = np.asarray(p, dtype=np.float32)
    if p.ndim == 1:
        p = p.reshape((-1,) + (1,) * (x.ndim - 1))
    hit = rng.random(x.shape, dtype=np.float32) < p
    salt = rng.random(x.shape, dtype=np.float32) < 0.5
    return np.where(hit, salt.astype(np.float32), x).astype(np.float32)


def downsample(x: np.ndarray, factor: int) -> np.ndarray:
    """Average-pool the last two axes by `factor` (H and W must be multiples of it)."""
    *lead, h, w = x.shape
    if h % factor or w % factor:
        raise ValueError(f"image {h}x{w} is not a multiple of {factor}")
    pooled = x.reshape(*lead, h // factor, factor, w // factor, factor).mean(axis=(-1, -3))
    return pooled.astype(np.float32)


def binarize(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Dynamic binarization: pixel p -> Bernoulli(p), as in the VAE literature."""
    return (rng.random(x.shape, dtype=np.float32) < x).astype(np.float32)


def blind_noise(x: np.ndarray, rng: np.random.Generator, max_sigma: float = 0.6,
                sp_fraction: float = 0.3, max_p: float = 0.3) -> np.ndarray:
    """The denoiser's training corruption: per image, Gaussian with sigma ~ U(0, max_sigma),
    or (with probability `sp_fraction`) salt-and-pepper with p ~ U(0, max_p)."""
    n = x.shape[0]
    sigma = rng.uniform(0.0, max_sigma, n).astype(np.float32)
    p = rng.uniform(0.0, max_p, n).astype(np.float32)
    use_sp = rng.random(n) < sp_fraction
    gauss = gaussian_noise(x, sigma, rng)
    sp = salt_and_pepper(x, p, rng)
    mask = use_sp.reshape((-1,) + (1,) * (x.ndim - 1))
    return np.where(mask, sp, gauss).astype(np.float32)
