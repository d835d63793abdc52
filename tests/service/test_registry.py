"""Registry: verified sessions, one per graph; missing or tampered files stop it, named."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from service.errors import UnknownDataset, UnknownModel
from service.manifest import ChecksumMismatch, MissingModelFile, load_manifest
from service.registry import Registry, session_options


@pytest.fixture(scope="module")
def registry(tiny_models_dir: Path) -> Registry:
    return Registry.open(tiny_models_dir, threads=1)


def test_opens_every_graph(registry: Registry, tiny_models_dir: Path):
    manifest = load_manifest(tiny_models_dir)
    assert registry.datasets == ["fashion-mnist", "mnist"]
    for entry in manifest.models:
        for role in entry.files:
            graph = registry.graph(entry.dataset, entry.name, role)
            assert graph.entry.key == entry.key and graph.input_names
            session_inputs = sorted(i.name for i in graph.session.get_inputs())
            assert session_inputs == sorted(graph.input_names)
    cvae = registry.graph("mnist", "cvae", "decoder")
    assert cvae.label_input == "label" and cvae.data_input == "latent"
    assert cvae.output("image") == "image"


def test_sessions_open_on_first_use_unless_preloaded(tiny_models_dir: Path):
    lazy = Registry.open(tiny_models_dir)
    graphs = [lazy.graph("mnist", "ae", "encoder"), lazy.graph("mnist", "ae", "decoder")]
    assert not any(g.is_open for g in graphs)
    out = graphs[0].run({"image": np.zeros((2, 1, 28, 28), np.float32)})
    assert out["latent"].shape == (2, 16)
    assert graphs[0].is_open and not graphs[1].is_open
    eager = Registry.open(tiny_models_dir, preload=True)
    assert eager.graph("fashion-mnist", "upscaler_x4", "model").is_open


def test_file_swapped_after_start_is_refused_at_first_use(tiny_models_dir: Path, tmp_path: Path):
    root = _copy(tiny_models_dir, tmp_path)
    registry = Registry.open(root)
    victim = root / "mnist" / "denoiser.onnx"
    data = bytearray(victim.read_bytes())
    data[-1] ^= 1
    victim.write_bytes(bytes(data))
    with pytest.raises(ChecksumMismatch, match=str(victim)):
        _ = registry.graph("mnist", "denoiser", "model").session


def test_session_options():
    options = session_options(3)
    assert options.intra_op_num_threads == 3 and options.inter_op_num_threads == 1
    assert options.graph_optimization_level.name == "ORT_ENABLE_ALL"


def test_unknown_names(registry: Registry):
    with pytest.raises(UnknownDataset, match="cifar") as err:
        registry.entry("cifar", "ae")
    assert err.value.field == "dataset" and err.value.status == 404
    with pytest.raises(UnknownModel, match="served: ae") as err:
        registry.graph("mnist", "gan", "model")
    assert err.value.field == "model"
    with pytest.raises(UnknownModel, match="no model graph"):
        registry.graph("mnist", "ae", "model")


def _copy(src: Path, tmp_path: Path) -> Path:
    root = tmp_path / "models"
    shutil.copytree(src, root)
    return root


def test_tampered_file_is_named(tiny_models_dir: Path, tmp_path: Path):
    root = _copy(tiny_models_dir, tmp_path)
    victim = root / "fashion-mnist" / "upscaler_x4.onnx"
    data = bytearray(victim.read_bytes())
    data[-1] ^= 1
    victim.write_bytes(bytes(data))
    with pytest.raises(ChecksumMismatch, match=str(victim)):
        Registry.open(root)


def test_missing_file_is_named(tiny_models_dir: Path, tmp_path: Path):
    root = _copy(tiny_models_dir, tmp_path)
    victim = root / "mnist" / "vae.decoder.onnx"
    victim.unlink()
    with pytest.raises(MissingModelFile, match=str(victim)):
        Registry.open(root)
    (root / "manifest.json").unlink()
    with pytest.raises(MissingModelFile, match="manifest.json"):
        Registry.open(root)
