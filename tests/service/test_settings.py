"""Settings: defaults, AE_* variables, refusals, thread budget."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.settings import REPO_ROOT, Settings, available_cores


def test_defaults_point_at_the_shipped_models():
    settings = Settings.from_env({})
    assert settings.models_dir == REPO_ROOT / "exported_models"
    assert settings.api_key is None and settings.workers == 1
    assert settings.threads == available_cores()


def test_environment(tmp_path: Path):
    env = {
        "AE_MODELS_DIR": str(tmp_path),
        "AE_API_KEY": "s3cret",
        "AE_MAX_BATCH": "7",
        "AE_WORKERS": "2",
        "AE_MAX_REQUEST_BYTES": "1000",
    }
    settings = Settings.from_env(env)
    assert settings.models_dir == tmp_path and settings.api_key == "s3cret"
    assert settings.max_batch == 7 and settings.max_request_bytes == 1000
    assert settings.threads == max(1, available_cores() // 2)
    assert settings.workers * settings.threads <= max(available_cores(), settings.workers)
    assert Settings.from_env({"AE_THREADS": "1"}).threads == 1
    assert Settings.from_env({"AE_THREADS": "999"}).threads == available_cores()  # capped
    assert Settings.from_env({"AE_API_KEY": ""}).api_key is None


@pytest.mark.parametrize("value", ["lots", "0", "-1"])
def test_bad_values(value: str):
    with pytest.raises(ValueError, match="AE_MAX_N"):
        Settings.from_env({"AE_MAX_N": value})
