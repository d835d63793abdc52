"""Re-exporting shipped models keeps their function and weights, and refuses to guess."""

from __future__ import annotations

import shutil

import numpy as np
import onnxruntime as ort
import pytest

from service.manifest import load_manifest, save_manifest, verify_files
from training.export import PARITY_TOLERANCE, ExportError
from training.reexport import reexport


def _outputs(path, feeds):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)


@pytest.fixture()
def models(tiny_models_dir, tmp_path):
    root = tmp_path / "models"
    shutil.copytree(tiny_models_dir, root)
    return root


def test_reexport_keeps_the_function_and_clears_the_metrics(models, tmp_path):
    manifest = load_manifest(models)
    for entry in manifest.models:
        entry.metrics = {"psnr_db": 1.0}
    save_manifest(manifest, models)
    old = tmp_path / "old"
    shutil.copytree(models, old)

    done = reexport("mnist", models, tmp_path / "no-runs", names=["vae", "denoiser"])

    assert sorted(e.name for e in done) == ["denoiser", "vae"]
    after = load_manifest(models)
    verify_files(after, models)
    rng = np.random.default_rng(1)
    feeds = {
        "vae.decoder.onnx": {"latent": rng.standard_normal((5, 16), dtype=np.float32)},
        "denoiser.onnx": {"image": rng.uniform(0, 1, (5, 1, 13, 17)).astype(np.float32)},
    }
    for name, feed in feeds.items():
        for new, was in zip(_outputs(models / "mnist" / name, feed),
                            _outputs(old / "mnist" / name, feed), strict=True):
            assert np.abs(new - was).max() <= PARITY_TOLERANCE
    for entry in after.models:
        redone = entry.name in ("vae", "denoiser") and entry.dataset == "mnist"
        assert (entry.metrics == {}) == redone, entry.key
        if redone:
            assert entry.parity_max_abs_diff <= PARITY_TOLERANCE


def test_reexport_refuses_weights_that_do_not_reproduce_the_graph(models, tmp_path):
    manifest = load_manifest(models)
    entry = manifest.get("mnist", "ae")
    entry.training.config["model_kwargs"] = {"width": 6, "hidden": 16}  # not what was shipped
    save_manifest(manifest, models)
    with pytest.raises(ExportError, match="no weights"):
        reexport("mnist", models, tmp_path / "no-runs", names=["ae"])
