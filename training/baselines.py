"""Honest non-learned and linear baselines, scored by the same code as the models.

Each baseline is fit on the training split only and returns predictions for the
test split; `training.evaluate` turns predictions into metrics with
`training.metrics`, exactly as it does for the ONNX models.

- PCA at the model's latent size: reconstruction (MSE) and k-NN on its features.
- Denoising: the noisy input itself, a 3x3 median filter, and the linear MMSE
  (Wiener) estimator over whole 784-pixel images, learned from (clean, noisy)
  training pairs made with the same corruption as the test condition. The linear
  estimator knows the noise level; the blind denoiser does not.
- Upscaling (inputs made by 2x2 / 4x4 average pooling): bicubic interpolation
  (Keys a=-0.75, torch's convention) and the linear MMSE map from the 196-d /
  49-d low-res image to the 784-d image, learned on training pairs.

DESIGN's reference figures were computed with unclipped linear and bicubic
outputs; those keep the plain names. Clipping to [0,1] can only lower the
error, so the `_clipped` variants are reported too, as the stricter baseline.

The test corruptions are defined here (`CONDITIONS`, `corrupt`) so that models
and baselines see the very same noisy images: one fixed seed per condition.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
from scipy import linalg, ndimage

from training.transforms import downsample, gaussian_noise, salt_and_pepper

TEST_NOISE_SEED = 20240601  # the noisy test sets: fixed once, shared by models and baselines
TRAIN_NOISE_SEED = 7  # the (clean, noisy) pairs the linear MMSE estimators learn from


@dataclass(frozen=True)
class Condition:
    """One test corruption: `kind` is "gaussian" (sigma, then clip) or "salt_pepper" (p)."""

    kind: str
    level: float

    @property
    def name(self) -> str:
        return f"{self.kind}_{self.level:g}"


# The denoising conditions of DESIGN section 7, in report order.
CONDITIONS = (Condition("gaussian", 0.3), Condition("gaussian", 0.5), Condition("salt_pepper", 0.2))


def corrupt(x: np.ndarray, condition: Condition, seed: int = TEST_NOISE_SEED) -> np.ndarray:
    """The noisy copy of `x` for `condition`; the same seed always gives the same images."""
    rng = np.random.default_rng([seed, zlib.crc32(condition.name.encode())])
    x = np.asarray(x, dtype=np.float32)
    if condition.kind == "gaussian":
        return gaussian_noise(x, condition.level, rng)
    if condition.kind == "salt_pepper":
        return salt_and_pepper(x, condition.level, rng)
    raise ValueError(f"unknown corruption {condition.kind!r}")


# ---------------------------------------------------------------- PCA


@dataclass
class PCABaseline:
    """PCA with d components fit on the training images (flattened)."""

    mean: np.ndarray  # [D]
    components: np.ndarray  # [d, D], orthonormal rows

    @classmethod
    def fit(cls, train_images: np.ndarray, d: int) -> PCABaseline:
        x = _flat64(train_images)
        mean = x.mean(0)
        # Eigen-decomposition of the DxD covariance: exact, and cheap for D=784.
        cov = (x - mean).T @ (x - mean) / len(x)
        evals, evecs = linalg.eigh(cov)
        order = np.argsort(evals)[::-1][:d]
        return cls(mean=mean, components=evecs[:, order].T)

    def encode(self, images: np.ndarray) -> np.ndarray:
        return ((_flat64(images) - self.mean) @ self.components.T).astype(np.float32)

    def decode(self, features: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        x = np.asarray(features, np.float64) @ self.components + self.mean
        return x.reshape((len(x), *shape)).astype(np.float32)

    def reconstruct(self, images: np.ndarray) -> np.ndarray:
        return self.decode(self.encode(images), images.shape[1:])


# ---------------------------------------------------------------- linear MMSE


@dataclass
class LinearMMSE:
    """x_hat = mu_x + C_xy C_yy^-1 (y - mu_y), the best linear (affine) estimator of x from y.

    Learned from paired samples; a tiny ridge (relative to the mean input variance)
    keeps C_yy invertible when some inputs never vary (e.g. corner pixels).
    """

    mu_x: np.ndarray
    mu_y: np.ndarray
    weights: np.ndarray  # [D_y, D_x]: x_hat - mu_x = (y - mu_y) @ weights

    @classmethod
    def fit(cls, targets: np.ndarray, observed: np.ndarray, ridge: float = 1e-6) -> LinearMMSE:
        x, y = _flat64(targets), _flat64(observed)
        if len(x) != len(y):
            raise ValueError(f"{len(x)} targets but {len(y)} observations")
        mu_x, mu_y = x.mean(0), y.mean(0)
        yc = y - mu_y
        c_yy = yc.T @ yc / len(y)
        c_yx = yc.T @ (x - mu_x) / len(y)
        c_yy[np.diag_indices_from(c_yy)] += ridge * max(np.trace(c_yy) / len(c_yy), 1e-12)
        weights = linalg.solve(c_yy, c_yx, assume_a="pos")
        return cls(mu_x=mu_x, mu_y=mu_y, weights=weights)

    def predict(
        self, observed: np.ndarray, shape: tuple[int, ...], clip: bool = False
    ) -> np.ndarray:
        """Estimates reshaped to [N, *shape]; `clip` to [0,1] can only help (the truth is there)."""
        x = (_flat64(observed) - self.mu_y) @ self.weights + self.mu_x
        if clip:
            x = np.clip(x, 0.0, 1.0)
        return x.reshape((len(x), *shape)).astype(np.float32)


# ---------------------------------------------------------------- denoising


def median3x3(images: np.ndarray) -> np.ndarray:
    """3x3 median filter on each image (last two axes), edges mirrored."""
    images = np.asarray(images, dtype=np.float32)
    size = (1,) * (images.ndim - 2) + (3, 3)
    return ndimage.median_filter(images, size=size, mode="reflect")


def denoise_baselines(
    train_images: np.ndarray, noisy_test: np.ndarray, condition: Condition
) -> dict[str, np.ndarray]:
    """Predictions of every denoising baseline for `noisy_test` (corrupted by `condition`).

    `linear_mmse` is DESIGN's definition (unclipped output); `linear_mmse_clipped`
    clips to [0,1] and is the stronger of the two.
    """
    train_noisy = corrupt(train_images, condition, seed=TRAIN_NOISE_SEED)
    wiener = LinearMMSE.fit(train_images, train_noisy)
    shape = noisy_test.shape[1:]
    return {
        "noisy": np.asarray(noisy_test, dtype=np.float32),
        "median3x3": median3x3(noisy_test),
        "linear_mmse": wiener.predict(noisy_test, shape, clip=False),
        "linear_mmse_clipped": wiener.predict(noisy_test, shape, clip=True),
    }


# ---------------------------------------------------------------- upscaling


def cubic_upsample_matrix(n: int, factor: int, a: float = -0.75) -> np.ndarray:
    """The [n*factor, n] matrix of 1-D cubic-convolution upscaling (Keys 1981).

    Same convention as torch's `interpolate(mode="bicubic", align_corners=False)`:
    half-pixel centres, a=-0.75, taps beyond the border clamped to the edge pixel.
    """

    def kernel(t: np.ndarray) -> np.ndarray:
        t = np.abs(t)
        near = ((a + 2) * t - (a + 3)) * t * t + 1
        far = ((a * t - 5 * a) * t + 8 * a) * t - 4 * a
        return np.where(t <= 1, near, np.where(t < 2, far, 0.0))

    matrix = np.zeros((n * factor, n))
    for out in range(n * factor):
        src = (out + 0.5) / factor - 0.5
        base = int(np.floor(src))
        for tap in range(base - 1, base + 3):
            matrix[out, min(max(tap, 0), n - 1)] += kernel(np.array(src - tap))
    return matrix


def bicubic_upscale(images: np.ndarray, factor: int, clip: bool = False) -> np.ndarray:
    """Bicubic upscaling of the last two axes by `factor` (torch's convention, see above).

    Unclipped by default, as DESIGN's reference figures were computed; cubic
    overshoot can leave [0,1], and `clip=True` gives the (slightly better) clipped variant.
    """
    images = np.asarray(images, dtype=np.float64)
    rows = cubic_upsample_matrix(images.shape[-2], factor)
    cols = cubic_upsample_matrix(images.shape[-1], factor)
    out = rows @ images @ cols.T
    if clip:
        out = np.clip(out, 0.0, 1.0)
    return out.astype(np.float32)


def upscale_baselines(
    train_images: np.ndarray, low_test: np.ndarray, factor: int
) -> dict[str, np.ndarray]:
    """Predictions of every upscaling baseline for the pooled test images `low_test`.

    `bicubic` and `linear_mmse` follow DESIGN's definitions (unclipped output);
    the `_clipped` variants clip to [0,1], which can only lower the error, so the
    margin against them is the stricter one.
    """
    linear = LinearMMSE.fit(train_images, downsample(train_images, factor))
    shape = (*low_test.shape[1:-2], low_test.shape[-2] * factor, low_test.shape[-1] * factor)
    return {
        "bicubic": bicubic_upscale(low_test, factor),
        "bicubic_clipped": bicubic_upscale(low_test, factor, clip=True),
        "linear_mmse": linear.predict(low_test, shape, clip=False),
        "linear_mmse_clipped": linear.predict(low_test, shape, clip=True),
    }


def _flat64(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x.reshape(len(x), -1)
