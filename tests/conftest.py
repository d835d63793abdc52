"""Shared fixtures: a tiny exported model set (built once, cached) and the data folder."""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY_DATASETS = ("mnist", "fashion-mnist")


def data_dir() -> Path:
    """$AE_DATA_DIR, else ../shared/data beside the repo (the CI layout), else ./data."""
    if os.environ.get("AE_DATA_DIR"):
        return Path(os.environ["AE_DATA_DIR"])
    shared = REPO_ROOT.parent / "shared" / "data"
    return shared if shared.is_dir() else REPO_ROOT / "data"


@pytest.fixture(scope="session")
def real_data_dir() -> Path:
    """The folder holding mnist/ and fashion-mnist/; skips the test when MNIST is absent."""
    from training.data import data_available

    folder = data_dir()
    if not data_available("mnist", folder):
        pytest.skip(f"real MNIST files not found in {folder} (set AE_DATA_DIR)")
    return folder


def _tiny_key() -> str:
    """Changes whenever the code that builds the tiny models changes."""
    digest = hashlib.sha256(f"{sys.version}{TINY_DATASETS}".encode())
    for path in sorted([*(REPO_ROOT / "training").glob("*.py"), REPO_ROOT / "service/manifest.py"]):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


@pytest.fixture(scope="session")
def tiny_models_dir(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Path:
    """Every model, small and briefly trained on synthetic data, exported with its manifest.

    Building takes ~40 s on 2 cores, so the result is cached in pytest's cache folder,
    keyed by the training code; each session gets its own copy to do with as it likes.
    """
    from training.export import build_tiny_model_set

    root = tmp_path_factory.mktemp("tiny_models")
    if getattr(request.config, "cache", None) is None:  # run with -p no:cacheprovider
        build_tiny_model_set(root, datasets=TINY_DATASETS)
        return root
    cache = Path(request.config.cache.mkdir("tiny_models")) / _tiny_key()
    if not (cache / "manifest.json").is_file():
        build = tmp_path_factory.mktemp("tiny_build")
        build_tiny_model_set(build, datasets=TINY_DATASETS)
        for stale in cache.parent.iterdir():
            shutil.rmtree(stale, ignore_errors=True)
        shutil.copytree(build, cache, ignore=shutil.ignore_patterns("_runs", ".*"))
    shutil.copytree(cache, root, dirs_exist_ok=True)
    return root


@pytest.fixture(scope="session")
def digit_images() -> np.ndarray:
    """64 MNIST test digits, float32 [64,28,28] in [0,1]; smooth synthetic blobs without data."""
    path = data_dir() / "mnist" / "t10k-images-idx3-ubyte.gz"
    if path.is_file():
        with gzip.open(path, "rb") as handle:
            handle.read(16)  # IDX header: magic, count, rows, cols
            raw = handle.read(64 * 28 * 28)
        return np.frombuffer(raw, dtype=np.uint8).reshape(64, 28, 28).astype(np.float32) / 255.0
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:28, 0:28]
    centres = rng.uniform(8, 20, size=(64, 2, 1, 1))
    blobs = np.exp(-((yy - centres[:, 0]) ** 2 + (xx - centres[:, 1]) ** 2) / 20.0)
    return blobs.astype(np.float32)
