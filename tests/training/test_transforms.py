"""The corruptions' statistics: what training and evaluation rely on."""

from __future__ import annotations

import numpy as np
import pytest

from training import transforms


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def test_gaussian_noise_has_the_requested_sigma_and_is_clipped(rng):
    x = np.full((200, 1, 28, 28), 0.5, np.float32)
    noisy = transforms.gaussian_noise(x, 0.05, rng)  # clipping is negligible at 10 sigma
    assert abs(float((noisy - x).mean())) < 1e-3
    assert float((noisy - x).std()) == pytest.approx(0.05, rel=0.02)
    strong = transforms.gaussian_noise(x, 0.6, rng)
    assert strong.min() == 0.0 and strong.max() == 1.0 and strong.dtype == np.float32


def test_gaussian_noise_per_image_sigma(rng):
    x = np.full((2, 1, 28, 28), 0.5, np.float32)
    noisy = transforms.gaussian_noise(x, np.array([0.0, 0.1]), rng)
    assert np.all(noisy[0] == 0.5)
    assert float((noisy[1] - 0.5).std()) == pytest.approx(0.1, rel=0.15)


def test_salt_and_pepper_rate_and_balance(rng):
    x = np.full((100, 1, 28, 28), 0.5, np.float32)
    noisy = transforms.salt_and_pepper(x, 0.2, rng)
    hit = noisy != 0.5
    assert hit.mean() == pytest.approx(0.2, abs=0.005)
    assert (noisy[hit] == 1.0).mean() == pytest.approx(0.5, abs=0.02)
    assert set(np.unique(noisy[hit])) <= {0.0, 1.0}


def test_downsample_is_block_average():
    x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    np.testing.assert_allclose(transforms.downsample(x, 2)[0, 0], [[2.5, 4.5], [10.5, 12.5]])
    assert transforms.downsample(np.ones((3, 1, 28, 28), np.float32), 4).shape == (3, 1, 7, 7)
    with pytest.raises(ValueError, match="not a multiple of 3"):
        transforms.downsample(x, 3)


def test_binarize_is_bernoulli_of_the_pixel(rng):
    x = np.full((50, 1, 28, 28), 0.3, np.float32)
    b = transforms.binarize(x, rng)
    assert set(np.unique(b)) == {0.0, 1.0}
    assert b.mean() == pytest.approx(0.3, abs=0.01)
    assert transforms.binarize(np.zeros((1, 4)), rng).sum() == 0


def test_blind_noise_mixes_both_corruptions(rng):
    x = np.full((400, 1, 28, 28), 0.5, np.float32)
    noisy = transforms.blind_noise(x, rng)
    binary_share = np.isin(noisy, [0.0, 1.0]).mean(axis=(1, 2, 3))
    gaussian_like = ((noisy != 0.5) & ~np.isin(noisy, [0.0, 1.0])).any(axis=(1, 2, 3))
    assert gaussian_like.mean() == pytest.approx(0.7, abs=0.08)
    assert noisy.min() >= 0 and noisy.max() <= 1
    assert binary_share.max() <= 0.31 + 0.2  # s&p p <= 0.3, clipping adds a little
