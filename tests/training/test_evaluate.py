"""training.evaluate on the tiny exported model set (synthetic data, onnxruntime only)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from service.manifest import load_manifest
from training import evaluate
from training.data import synthetic_dataset

EXPECTED_METRICS = {
    "ae": {"mse", "psnr_db", "ssim", "knn_accuracy"},
    "vae": {"mse", "psnr_db", "ssim", "knn_accuracy", "nll_iwae_nats", "nll_elbo_nats"},
    "vae2d": {"mse", "psnr_db", "ssim", "knn_accuracy", "nll_iwae_nats", "nll_elbo_nats"},
    "cvae": {"class_accuracy", "frechet_distance", "nll_iwae_nats", "nll_elbo_nats"},  # cvae_nll
    "denoiser": {f"{m}_{c}" for m in ("psnr", "ssim")
                 for c in ("gaussian_0.3", "gaussian_0.5", "salt_pepper_0.2")},
    "upscaler_x2": {"psnr_db", "ssim"},
    "upscaler_x4": {"psnr_db", "ssim"},
}


@pytest.fixture(scope="module")
def small_data():
    return synthetic_dataset(n_train=300, n_test=40, seed=1)


@pytest.fixture(scope="module")
def small_classifier(small_data):
    pytest.importorskip("torch")
    from training.classifier import ClassifierConfig, train_classifier

    config = ClassifierConfig(epochs=1, width=4, features=16)
    return train_classifier(small_data["train"], small_data["test"], config, "mnist")


@pytest.fixture(scope="module")
def evaluated(tiny_models_dir, small_data, small_classifier, tmp_path_factory):
    """A private copy of the tiny set (the session fixture stays untouched), evaluated once."""
    root = tmp_path_factory.mktemp("evaluated") / "models"
    shutil.copytree(tiny_models_dir, root)
    evaluate.evaluate_models("mnist", root, None, iwae_k=8, threads=1, data=small_data,
                             classifier=small_classifier, cvae_nll=True)
    return root


def test_every_model_gets_its_metrics_and_baselines(evaluated):
    manifest = load_manifest(evaluated)
    for entry in manifest.models:
        if entry.dataset != "mnist":
            assert entry.metrics == {}  # the other dataset is left alone
            continue
        assert set(entry.metrics) == EXPECTED_METRICS[entry.name], entry.name
        assert all(np.isfinite(v) for v in entry.metrics.values())
        assert entry.evaluation["test_images"] == 40
        assert entry.evaluation["split"] == "test"
        for metric, found in entry.baselines.items():
            assert metric in entry.metrics and found, (entry.name, metric)


def test_baselines_and_bookkeeping(evaluated):
    manifest = load_manifest(evaluated)
    ae, vae = manifest.get("mnist", "ae"), manifest.get("mnist", "vae2d")
    assert set(ae.baselines["mse"]) == {"pca_16"}
    assert set(vae.baselines["knn_accuracy"]) == {"pca_2"}
    den = manifest.get("mnist", "denoiser")
    assert set(den.baselines["psnr_gaussian_0.5"]) == {
        "noisy", "median3x3", "linear_mmse", "linear_mmse_clipped"}
    # served in int8: the float32 graph's figures beside, close but not the same numbers
    floats = den.evaluation["float32_metrics"]
    assert set(floats) == set(den.metrics) and floats != den.metrics
    assert abs(floats["psnr_gaussian_0.5"] - den.metrics["psnr_gaussian_0.5"]) < 1.0
    assert "float32_metrics" not in ae.evaluation
    cvae = manifest.get("mnist", "cvae")
    assert 0 <= cvae.metrics["class_accuracy"] <= 1
    assert cvae.evaluation["frechet_floor_real_vs_real"] >= 0
    assert "classifier_test_accuracy" in cvae.evaluation
    assert ae.evaluation["bars"]["mse"]["op"] == "<="
    assert "vs_baselines" in ae.evaluation
    # a lower bound on log p(x) cannot beat the ELBO's expectation by much on average
    assert vae.metrics["nll_iwae_nats"] <= vae.metrics["nll_elbo_nats"] + 1e-6


def test_reevaluation_reproduces_the_figures(evaluated, small_data, small_classifier):
    before = load_manifest(evaluated)
    evaluate.evaluate_models("mnist", evaluated, None, names=["vae", "denoiser"], iwae_k=8,
                             threads=1, data=small_data, classifier=small_classifier)
    after = load_manifest(evaluated)
    for name in ("vae", "denoiser"):
        assert after.get("mnist", name).metrics == before.get("mnist", name).metrics
        assert after.get("mnist", name).baselines == before.get("mnist", name).baselines


def test_iwae_of_the_first_images_does_not_depend_on_the_batch(tiny_models_dir):
    manifest = load_manifest(tiny_models_dir)
    model = evaluate.OnnxModel(manifest.get("mnist", "vae"), tiny_models_dir, threads=1)
    x = (np.random.default_rng(0).random((6, 1, 28, 28)) < 0.3).astype(np.float32)
    full, _ = evaluate.iwae_nll(model, x, None, k=16)
    part, _ = evaluate.iwae_nll(model, x[:2], None, k=16)
    assert np.allclose(full[:2], part)
    assert np.all(full < 0)


def test_unknown_models_are_refused(tiny_models_dir, small_data):
    with pytest.raises(KeyError, match="no models"):
        evaluate.evaluate_models("mnist", tiny_models_dir, None, names=["nope"],
                                 data=small_data)


def test_manifest_stays_valid_json(evaluated):
    json.loads(Path(evaluated, "manifest.json").read_text())


def test_card_reports_every_metric_beside_its_baselines(evaluated):
    from training.card import write_card

    text = write_card(evaluated).read_text()
    manifest = load_manifest(evaluated)
    assert "## mnist" in text and "## fashion-mnist" in text
    assert "*not evaluated yet*" in text  # the fashion-mnist half was left alone
    ae = manifest.get("mnist", "ae")
    assert f"**{ae.metrics['mse']:.4f}**" in text
    assert f"PCA-16 {ae.baselines['mse']['pca_16']:.4f}" in text
    assert "<= 0.0070" in text and "CC BY-SA 3.0" in text
    assert "python -m training train --dataset mnist --model denoiser" in text
    den = manifest.get("mnist", "denoiser")
    float_psnr = den.evaluation["float32_metrics"]["psnr_gaussian_0.5"]
    assert "`denoiser` is served in int8" in text
    assert f"PSNR (dB), Gaussian σ=0.5 {float_psnr:.2f}" in text


def test_figures_are_drawn_from_the_onnx_models(evaluated, small_data, tmp_path):
    from training.card import write_card
    from training.figures import make_figures

    paths = make_figures("mnist", evaluated, None, threads=1, data=small_data)
    names = {p.name for p in paths}
    assert {"reconstructions.png", "denoising.png", "upscaling.png", "cvae_samples.png",
            "vae2d_latent_map.png", "vae2d_manifold.png"} <= names
    assert all(p.stat().st_size > 1000 and p.read_bytes()[:4] == b"\x89PNG" for p in paths)
    assert all(p.parent == evaluated / "mnist" / "figures" for p in paths)
    assert "](mnist/figures/cvae_samples.png)" in write_card(evaluated).read_text()


def test_two_job_makespan_runs_longest_first():
    from training.card import two_job_makespan

    assert two_job_makespan([30, 20, 15, 10, 5]) == 40  # 30+10 | 20+15+5
    assert two_job_makespan([7]) == 7
