"""Exported graphs honour the contract: signatures, dynamic axes, parity, checksums."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from service.manifest import (
    ChecksumMismatch,
    Manifest,
    MissingModelFile,
    load_manifest,
    sha256_file,
    verify_files,
)
from training import export
from training.data import synthetic_dataset
from training.export import export_graph
from training.models import build_model
from training.quantize import INT8_MEAN_TOLERANCE, INT8_MODELS, compare, quantize_checked
from training.train import TrainConfig, train

EXPECTED = {  # role -> (input names, output names), from service/manifest.py's docstring
    "ae": {"encoder": (["image"], ["latent"]), "decoder": (["latent"], ["image"])},
    "vae": {"encoder": (["image"], ["mean", "logvar"]),
            "decoder": (["latent"], ["image", "logits"])},
    "vae2d": {"encoder": (["image"], ["mean", "logvar"]),
              "decoder": (["latent"], ["image", "logits"])},
    "cvae": {"encoder": (["image", "label"], ["mean", "logvar"]),
             "decoder": (["latent", "label"], ["image", "logits"])},
    "denoiser": {"model": (["image"], ["output"])},
    "upscaler_x2": {"model": (["image"], ["output"])},
    "upscaler_x4": {"model": (["image"], ["output"])},
}


@pytest.fixture(scope="module")
def manifest(tiny_models_dir) -> Manifest:
    return load_manifest(tiny_models_dir)


def session(root, graph) -> ort.InferenceSession:
    return ort.InferenceSession(str(root / graph.path), providers=["CPUExecutionProvider"])


def test_every_model_of_both_datasets_is_there(manifest):
    keys = {(m.dataset, m.name) for m in manifest.models}
    assert keys == {(d, n) for d in ("mnist", "fashion-mnist") for n in EXPECTED}
    assert set(manifest.datasets) == {"mnist", "fashion-mnist"}
    assert manifest.datasets["fashion-mnist"].class_names[9] == "Ankle boot"


def test_manifest_round_trips_and_is_valid_json(tiny_models_dir, manifest):
    raw = json.loads((tiny_models_dir / "manifest.json").read_text())
    assert Manifest.model_validate(raw) == manifest


def test_signatures_match_the_contract(manifest):
    for entry in manifest.models:
        for role, (inputs, outputs) in EXPECTED[entry.name].items():
            graph = entry.files[role]
            assert [t.name for t in graph.inputs] == inputs
            assert [t.name for t in graph.outputs] == outputs
            assert graph.inputs[0].shape[0] == "N"  # dynamic batch everywhere
        if entry.task in ("denoise", "upscale"):
            assert entry.files["model"].inputs[0].shape == ["N", 1, "H", "W"]


def test_files_pass_the_onnx_checker_and_checksums(tiny_models_dir, manifest):
    verify_files(manifest, tiny_models_dir)
    for entry in manifest.models:
        assert entry.parity_max_abs_diff <= export.PARITY_TOLERANCE
        assert entry.opset == export.OPSET and "torch" in entry.versions
        for graph in entry.files.values():
            path = tiny_models_dir / graph.path
            onnx.checker.check_model(onnx.load(str(path)))
            assert sha256_file(path) == graph.sha256


@pytest.mark.parametrize("batch", [1, 5])
def test_dynamic_batch(tiny_models_dir, manifest, batch):
    entry = manifest.get("mnist", "cvae")
    mean, logvar = session(tiny_models_dir, entry.files["encoder"]).run(None, {
        "image": np.random.rand(batch, 1, 28, 28).astype(np.float32),
        "label": np.arange(batch, dtype=np.int64) % 10,
    })
    assert mean.shape == logvar.shape == (batch, 16)
    image, logits = session(tiny_models_dir, entry.files["decoder"]).run(
        None, {"latent": mean, "label": np.zeros(batch, np.int64)})
    assert image.shape == (batch, 1, 28, 28)
    np.testing.assert_allclose(image, 1 / (1 + np.exp(-logits)), atol=1e-6)


@pytest.mark.parametrize(("name", "scale"), [("denoiser", 1), ("upscaler_x2", 2),
                                             ("upscaler_x4", 4)])
def test_dynamic_height_and_width(tiny_models_dir, manifest, name, scale):
    graph = manifest.get("mnist", name).files["model"]
    (out,) = session(tiny_models_dir, graph).run(
        None, {"image": np.random.rand(2, 1, 13, 40).astype(np.float32)})
    assert out.shape == (2, 1, 13 * scale, 40 * scale)
    assert out.min() >= 0.0 and out.max() <= 1.0


def test_tampered_file_is_named(tiny_models_dir, manifest, tmp_path):
    copy = tmp_path / "models"
    shutil.copytree(tiny_models_dir, copy)
    target = copy / manifest.get("mnist", "denoiser").files["model"].path
    target.write_bytes(target.read_bytes() + b"\0")
    with pytest.raises(ChecksumMismatch, match="denoiser.onnx: sha256"):
        verify_files(load_manifest(copy), copy)
    target.unlink()
    with pytest.raises(MissingModelFile, match="denoiser.onnx: missing"):
        verify_files(load_manifest(copy), copy)


def test_export_refuses_a_graph_that_disagrees_with_torch(tmp_path, monkeypatch):
    result = train(TrainConfig(model="upscaler_x2", epochs=1, synthetic=True, threads=1,
                               model_kwargs={"width": 4, "depth": 2}, runs_dir=str(tmp_path)),
                   progress=False)
    monkeypatch.setattr(export, "PARITY_TOLERANCE", -1.0)  # any difference, even 0, fails
    with pytest.raises(export.ExportError, match="upscaler_x2.onnx: torch vs onnxruntime"):
        export.export_model(result, tmp_path / "out", synthetic_dataset()["test"].images[:4])


def test_int8_models_are_served_quantized_beside_their_float_export(tiny_models_dir, manifest):
    """`INT8_MODELS` serve an int8 graph (really quantized, close to the float one);
    the float32 export it came from is kept, checksummed, and served by no one."""
    images = np.random.default_rng(0).uniform(0, 1, (8, 1, 28, 28)).astype(np.float32)
    for entry in manifest.models:
        for graph in entry.files.values():
            if entry.name not in INT8_MODELS:
                assert graph.int8 is None and graph.float_path == graph.path
                continue
            info = graph.int8
            assert info is not None and info.source_path != graph.path
            assert sha256_file(tiny_models_dir / info.source_path) == info.source_sha256
            ops = {n.op_type for n in onnx.load(str(tiny_models_dir / graph.path)).graph.node}
            assert {"QuantizeLinear", "DequantizeLinear"} <= ops
            max_diff, mean_diff = compare(tiny_models_dir / info.source_path,
                                          tiny_models_dir / graph.path, images)
            assert 0 < mean_diff <= INT8_MEAN_TOLERANCE and max_diff > 0


def test_quantization_that_strays_is_refused(tiny_models_dir, manifest, tmp_path):
    """Ranges calibrated on the wrong data (inputs 100x too dark) fail the export."""
    source = tiny_models_dir / manifest.get("mnist", "denoiser").files["model"].float_path
    images = np.random.default_rng(0).uniform(0, 1, (64, 1, 28, 28)).astype(np.float32)
    with pytest.raises(ValueError, match="int8 vs float32 mean abs diff"):
        quantize_checked(source, tmp_path / "int8.onnx", "x.onnx", images / 100, images)


def test_training_config_and_checksums_recorded(manifest):
    entry = manifest.get("mnist", "vae")
    assert entry.training.config["model"] == "vae"
    assert entry.training.epochs == 1 and entry.training.seed == 0
    assert entry.latent_dim == 16 and manifest.get("mnist", "vae2d").latent_dim == 2
    assert manifest.get("mnist", "upscaler_x4").scale == 4
    assert manifest.get("mnist", "cvae").num_classes == 10


@pytest.mark.parametrize(("name", "role", "prefix"),
                         [("vae", "decoder", "vae.decoder."), ("denoiser", "model", "")])
def test_every_parameter_is_an_initializer_under_its_name(tmp_path, name, role, prefix):
    """Weights can be read back from a shipped file, even where the export form
    computes its kernel from them (UpConv, the denoiser's split join)."""
    graph = build_model(name, width=4).eval().graphs()[role]
    export_graph(graph, tmp_path / "graph.onnx")
    stored = {i.name: i for i in onnx.load(str(tmp_path / "graph.onnx")).graph.initializer}
    params = {k: v for k, v in graph.module.state_dict().items() if k.startswith(prefix)}
    assert params
    for key, value in params.items():
        assert key in stored, f"{key} folded away"
        np.testing.assert_array_equal(numpy_helper.to_array(stored[key]), value.numpy())
