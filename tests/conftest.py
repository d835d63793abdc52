"""Shared fixtures: a tiny exported model set (built once per session) and the data folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


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


@pytest.fixture(scope="session")
def tiny_models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every model, small and briefly trained on synthetic data, exported with its manifest."""
    from training.export import build_tiny_model_set

    root = tmp_path_factory.mktemp("tiny_models")
    build_tiny_model_set(root, datasets=("mnist", "fashion-mnist"))
    return root
