"""Export trained models to ONNX, prove parity with torch, and write the manifest.

For each graph of a model (`model.graphs()`): export with torch's dynamo
exporter and named dynamic axes (batch always; H and W for the fully
convolutional models), run the onnx checker, run the file in onnxruntime on
real images and compare with torch. Export fails when the max abs difference
exceeds `PARITY_TOLERANCE`. The manifest entry records files, sha256s,
signatures, versions, training config and the parity figure. Models in
`quantize.INT8_MODELS` are then served as int8, their float32 export kept beside.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import io
import logging
import shutil
import warnings
from dataclasses import asdict
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import onnxscript.optimizer
import torch

from service.manifest import (
    DatasetInfo,
    GraphFile,
    Manifest,
    ModelEntry,
    TensorSpec,
    TrainingInfo,
    load_manifest,
    save_manifest,
    sha256_file,
)
from training.data import DATASETS, dataset_checksums
from training.models import Graph
from training.quantize import CALIBRATION_IMAGES, CHECK_IMAGES, INT8_MODELS, quantize_checked
from training.train import TrainConfig, TrainResult, model_inputs, train

log = logging.getLogger(__name__)

OPSET = 18
PARITY_TOLERANCE = 1e-4
DESCRIPTIONS = {
    "ae": "Convolutional autoencoder: 16-d embeddings and reconstructions.",
    "vae": "Convolutional VAE (d=16, Bernoulli decoder): sampling and likelihoods.",
    "vae2d": "Convolutional VAE with a 2-d latent space, for latent maps.",
    "cvae": "Conditional VAE: generate images of a chosen class.",
    "denoiser": "Blind denoiser (Gaussian sigma 0..0.6, salt-and-pepper), any image size.",
    "upscaler_x2": "Super-resolution x2 (trained on 2x2 average-pooled inputs), any size.",
    "upscaler_x4": "Super-resolution x4 (trained on 4x4 average-pooled inputs), any size.",
}


class ExportError(Exception):
    """An exported graph is invalid or disagrees with torch."""


def _dims(graph: Graph) -> tuple[dict[int, torch.export.Dim], ...]:
    dims = {name: torch.export.Dim(name, min=1, max=1 << 16) for name in ("N", "H", "W")}
    return tuple(
        {axis: dims[label] for axis, label in graph.dynamic.get(name, {}).items()}
        for name in graph.input_names
    )


def export_graph(graph: Graph, path: Path) -> None:
    """Export one graph to `path` (a single self-contained file) and check it.

    The graph is simplified by onnxscript's optimizer, but with constant folding
    limited to computations on no input data (`input_size_limit=0`): export forms
    that compute a kernel from a parameter (`UpConv`, the denoiser's split join)
    keep that parameter as an initializer under its state-dict name, so weights
    can always be read back from a shipped file; onnxruntime folds the rest when
    it opens the session.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    graph.module.eval()
    # The exporter narrates its passes and warns about its own internals: keep the CLI quiet.
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            graph.module, graph.example, None, input_names=graph.input_names,
            output_names=graph.output_names, dynamic_shapes=_dims(graph), dynamo=True,
            opset_version=OPSET, verbose=False, optimize=False,
        )
    model = onnxscript.optimizer.optimize(program.model_proto, input_size_limit=0)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))


def _tensor_specs(values) -> list[TensorSpec]:
    dtypes = {"tensor(float)": "float32", "tensor(int64)": "int64"}
    return [TensorSpec(name=v.name, shape=list(v.shape), dtype=dtypes[v.type]) for v in values]


def graph_inputs(graph: Graph, images: np.ndarray, scale: int = 1) -> tuple[torch.Tensor, ...]:
    """Real inputs for a parity check, shaped like the graph's example."""
    n = len(images)
    rng = np.random.default_rng(0)
    out = []
    for example in graph.example:
        if example.dtype == torch.int64:
            out.append(torch.from_numpy(rng.integers(0, 10, n)))
        elif example.ndim == 2:
            out.append(torch.from_numpy(rng.standard_normal((n, example.shape[1]),
                                                            dtype=np.float32)))
        elif scale > 1:
            pooled = images.reshape(n, 1, 28 // scale, scale, 28 // scale, scale).mean((3, 5))
            out.append(torch.from_numpy(pooled.astype(np.float32)))
        else:
            out.append(torch.from_numpy(images))
    return tuple(out)


def parity(graph: Graph, path: Path, inputs: tuple[torch.Tensor, ...]) -> float:
    """Max abs difference between torch and onnxruntime over every output."""
    with torch.no_grad():
        expected = graph.module(*inputs)
    expected = expected if isinstance(expected, tuple) else (expected,)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {name: t.numpy() for name, t in zip(graph.input_names, inputs, strict=True)}
    got = session.run(None, feeds)
    return max(float(np.abs(e.numpy() - g).max()) for e, g in zip(expected, got, strict=True))


def graph_file(path: Path, rel: str) -> GraphFile:
    """The manifest's record of the graph at `path` (`rel`: its path in the models folder)."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return GraphFile(
        path=rel, sha256=sha256_file(path), size_bytes=path.stat().st_size,
        inputs=_tensor_specs(session.get_inputs()), outputs=_tensor_specs(session.get_outputs()),
    )


def float_rel(name: str, rel: str) -> str:
    """Where a graph's float32 export goes: `rel` itself, or beside it for an int8 model."""
    return rel.removesuffix(".onnx") + ".float32.onnx" if name in INT8_MODELS else rel


def served_file(root: Path, rel: str, config: TrainConfig) -> GraphFile:
    """The manifest record of the graph served at `rel`, whose float32 export is in place.

    For `INT8_MODELS` the int8 graph is made here: calibrated on training inputs, then
    compared with the float one on validation inputs (both with the model's corruption).
    """
    source = float_rel(config.model, rel)
    if source == rel:
        return graph_file(root / rel, rel)
    inputs = model_inputs(config, {"fit": CALIBRATION_IMAGES, "val": CHECK_IMAGES})
    try:
        info = quantize_checked(root / source, root / rel, source, inputs["fit"], inputs["val"])
    except ValueError as err:
        raise ExportError(str(err)) from err
    return graph_file(root / rel, rel).model_copy(update={"int8": info})


def export_model(result: TrainResult, out_root: Path, parity_images: np.ndarray) -> ModelEntry:
    """Export every graph of a trained model; return its manifest entry."""
    config, model = result.config, result.model
    name, dataset = config.model, config.dataset
    scale = getattr(model, "scale", 1) if model.task == "upscale" else 1
    files, worst = {}, 0.0
    for role, graph in model.graphs().items():
        rel = f"{dataset}/{name}.onnx" if role == "model" else f"{dataset}/{name}.{role}.onnx"
        path = out_root / float_rel(name, rel)
        export_graph(graph, path)
        for images in (parity_images, parity_images[:1]):  # a batch, and batch size 1
            diff = parity(graph, path, graph_inputs(graph, images, scale))
            worst = max(worst, diff)
        if worst > PARITY_TOLERANCE:
            raise ExportError(f"{path}: torch vs onnxruntime max abs diff {worst:.2e} "
                              f"> {PARITY_TOLERANCE:.0e}")
        files[role] = served_file(out_root, rel, config)
    training = TrainingInfo(
        epochs=result.epochs_run, seed=config.seed, optimizer="AdamW + OneCycleLR",
        learning_rate=config.lr, batch_size=config.batch_size,
        train_examples=result.train_examples, validation_examples=result.val_examples,
        best_validation_loss=result.best_val_loss, wall_time_s=result.wall_time_s,
        data_sha256={} if config.synthetic else dataset_checksums(dataset),
        config={**asdict(config), "history": result.history},
    )
    return ModelEntry(
        name=name, dataset=dataset, task=model.task, description=DESCRIPTIONS.get(name, ""),
        latent_dim=getattr(model, "latent_dim", None),
        num_classes=10 if model.task == "cvae" else None,
        scale=scale if model.task == "upscale" else None,
        files=files, opset=OPSET,
        versions={"torch": torch.__version__, "onnx": onnx.__version__,
                  "onnxruntime": ort.__version__},
        parity_max_abs_diff=worst, training=training,
    )


def dataset_info(dataset: str) -> DatasetInfo:
    spec = DATASETS[dataset]
    return DatasetInfo(name=dataset, class_names=list(spec.class_names), licence=spec.licence,
                       source=spec.source, sha256=dataset_checksums(dataset))


def open_manifest(root: Path) -> Manifest:
    """The existing manifest in `root`, or a new empty one."""
    if (root / "manifest.json").is_file():
        return load_manifest(root)
    return Manifest(created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))


def record(root: Path, entries: list[ModelEntry]) -> Manifest:
    """Upsert `entries` (and their datasets' provenance) into `root/manifest.json`.

    Locked, so that two trainings (say one per dataset) can share one manifest.
    """
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".manifest.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        manifest = open_manifest(root)
        for entry in entries:
            manifest.upsert(entry)
            manifest.datasets[entry.dataset] = dataset_info(entry.dataset)
        save_manifest(manifest, root)
    return manifest


def train_and_export(config: TrainConfig, out_root: Path, resume: bool = False,
                     progress: bool = True) -> ModelEntry:
    """Train one model, export it into `out_root` and record it in the manifest."""
    result = train(config, resume=resume, progress=progress)
    entry = export_model(result, out_root, result.sample_images)
    record(out_root, [entry])
    return entry


TINY_KWARGS = {
    "ae": {"width": 4, "hidden": 16}, "vae": {"width": 4, "hidden": 16},
    "vae2d": {"width": 4, "hidden": 16}, "cvae": {"width": 4, "hidden": 16},
    "denoiser": {"width": 2}, "upscaler_x2": {"width": 4, "depth": 2},
    "upscaler_x4": {"width": 4, "depth": 2},
}


def build_tiny_model_set(root: Path, datasets: tuple[str, ...] = ("mnist",),
                         seed: int = 0) -> Manifest:
    """Small, briefly trained versions of every model on synthetic data, exported for real.

    For tests: no data files needed, but the same exporter, checks and manifest. The
    graphs are exported once and filed under every dataset (exports dominate the time).
    """
    root = Path(root)
    first, *others = datasets
    entries = []
    for name, kwargs in TINY_KWARGS.items():
        config = TrainConfig(model=name, dataset=first, epochs=1, batch_size=64, lr=3e-3,
                             seed=seed, synthetic=True, model_kwargs=kwargs, threads=1,
                             runs_dir=str(root / "_runs"))
        result = train(config, progress=False)
        entries.append(export_model(result, root, result.sample_images[:8]))
    for dataset in others:
        for entry in entries[: len(TINY_KWARGS)]:
            files = {}
            for role, graph in entry.files.items():
                moved = {rel: rel.replace(f"{first}/", f"{dataset}/", 1)
                         for rel in (graph.path, graph.float_path)}
                for rel, new_rel in moved.items():
                    (root / new_rel).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(root / rel, root / new_rel)
                int8 = graph.int8 and graph.int8.model_copy(
                    update={"source_path": moved[graph.float_path]})
                files[role] = graph.model_copy(update={"path": moved[graph.path], "int8": int8})
            entries.append(entry.model_copy(update={"dataset": dataset, "files": files}))
    return record(root, entries)
