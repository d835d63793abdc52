"""Re-export shipped models with the current export code, without retraining.

When an export form improves (say `UpConv`, which onnxruntime runs faster than a
transposed conv), the shipped graphs should get it without a new training run
changing their weights and metrics. For each model this:

1. rebuilds the module from the manifest entry's `model_kwargs` and loads its
   weights (`shipped_weights`): the run's `best.pt` when it reproduces the shipped
   graph, else the shipped graph's own initializers, which carry the state-dict
   names (`export_graph` keeps them);
2. exports every graph to a scratch file, with the usual torch parity check;
3. proves that the new file computes what the shipped one does (max abs diff
   <= `PARITY_TOLERANCE` on random images and latents, batch 64 and 1);
4. swaps the files in and updates the entry's checksums, signatures, versions
   and parity. Training information is kept; the test metrics are dropped,
   because they describe the old files: run `python -m training evaluate` after.

Models in `quantize.INT8_MODELS` are compared and re-exported through their
float32 graphs, then quantized again (calibration reads the training data, so
these need `data_dir`); a model shipped in float32 becomes int8 this way.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import numpy_helper

from service.manifest import ModelEntry, load_manifest
from training.export import (
    PARITY_TOLERANCE,
    ExportError,
    export_graph,
    float_rel,
    graph_inputs,
    parity,
    record,
    served_file,
)
from training.models import build_model
from training.train import TrainConfig

log = logging.getLogger(__name__)


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _max_diff(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    return max(float(np.abs(x - y).max()) for x, y in zip(a, b, strict=True))


def _normal(kwargs: dict) -> dict:
    """Keyword arguments as JSON has them (tuples become lists)."""
    return {k: list(v) if isinstance(v, tuple | list) else v for k, v in kwargs.items()}


def _load_checkpoint(model: torch.nn.Module, entry: ModelEntry, runs_dir: Path) -> bool:
    """Load `runs/<dataset>/<model>/best.pt` if it has the shipped architecture."""
    path = runs_dir / entry.dataset / entry.name / "best.pt"
    if not path.is_file():
        return False
    state = torch.load(path, map_location="cpu", weights_only=False)
    if _normal(state["config"].get("model_kwargs", {})) != _normal(
            entry.training.config.get("model_kwargs", {})):
        return False
    model.load_state_dict(state["model"])
    return True


def _load_initializers(model: torch.nn.Module, entry: ModelEntry, models_dir: Path) -> bool:
    """Load every parameter from the shipped graphs' initializers (False if any is missing).

    Each graph's export wrapper names the model's tensors its own way (`vae.decoder...`),
    so tensors are matched per graph and counted by storage, not by name.
    """
    covered: set[int] = set()
    for role, graph in model.graphs().items():
        stored = {i.name: i for i in
                  onnx.load(str(models_dir / entry.files[role].float_path)).graph.initializer}
        state = graph.module.state_dict()
        hits = {k: torch.from_numpy(numpy_helper.to_array(stored[k]).copy())
                for k in state if k in stored}
        try:
            graph.module.load_state_dict(hits, strict=False)
        except RuntimeError as err:  # shapes differ: not this architecture's weights
            log.info("%s/%s: %s", entry.dataset, entry.name, str(err).splitlines()[0])
            return False
        covered |= {state[k].data_ptr() for k in hits}
    missing = [k for k, v in model.state_dict().items() if v.data_ptr() not in covered]
    if missing:
        log.info("%s/%s: %d parameters not in the shipped graphs (%s, ...)", entry.dataset,
                 entry.name, len(missing), missing[0])
    return not missing


def shipped_weights(entry: ModelEntry, models_dir: Path, runs_dir: Path, probe: np.ndarray
                    ) -> tuple[torch.nn.Module, str, dict[str, float]]:
    """The entry's module with the weights of its shipped graphs, where they came from, and
    each graph's torch vs shipped-file max abs diff on `probe`."""
    scale = entry.scale or 1
    for source in ("checkpoint", "shipped graph"):
        model = build_model(entry.name, **entry.training.config.get("model_kwargs", {})).eval()
        if source == "checkpoint":
            loaded = _load_checkpoint(model, entry, runs_dir)
        else:
            loaded = _load_initializers(model, entry, models_dir)
        if not loaded:
            continue
        diffs = {
            role: parity(graph, models_dir / entry.files[role].float_path,
                         graph_inputs(graph, probe, scale))
            for role, graph in model.graphs().items()
        }
        if max(diffs.values()) <= PARITY_TOLERANCE:
            return model, source, diffs
    raise ExportError(f"{entry.dataset}/{entry.name}: no weights that reproduce the shipped "
                      "graphs (neither a matching checkpoint nor complete initializers)")


def _train_config(entry: ModelEntry, data_dir: str | None, allow_download: bool
                  ) -> TrainConfig:
    """The entry's training config (what int8 calibration draws its inputs from)."""
    known = TrainConfig.__dataclass_fields__
    recorded = {k: v for k, v in entry.training.config.items() if k in known}
    return TrainConfig(**{**recorded, "data_dir": data_dir or recorded.get("data_dir"),
                          "allow_download": allow_download})


def reexport_model(entry: ModelEntry, models_dir: Path, runs_dir: Path, seed: int = 0,
                   data_dir: str | None = None, allow_download: bool = False) -> ModelEntry:
    """The entry with its graphs re-exported into `models_dir` (see the module docstring)."""
    rng = np.random.default_rng(seed)
    probe = rng.uniform(0, 1, (64, 1, 28, 28)).astype(np.float32)
    model, source, _ = shipped_weights(entry, models_dir, runs_dir, probe)
    scale = entry.scale or 1
    new, worst = entry.model_copy(deep=True), 0.0
    with tempfile.TemporaryDirectory(prefix="ae-reexport-") as scratch:
        fresh: dict[str, Path] = {}
        for role, graph in model.graphs().items():
            path = Path(scratch) / f"{role}.onnx"
            export_graph(graph, path)
            sessions = [_session(path), _session(models_dir / entry.files[role].float_path)]
            for images in (probe, probe[:1]):
                inputs = graph_inputs(graph, images, scale)
                feeds = {n: t.numpy() for n, t in zip(graph.input_names, inputs, strict=True)}
                new_out, shipped_out = (s.run(None, feeds) for s in sessions)
                vs_shipped = _max_diff(new_out, shipped_out)
                vs_torch = parity(graph, path, inputs)
                if max(vs_shipped, vs_torch) > PARITY_TOLERANCE:
                    raise ExportError(f"{entry.dataset}/{entry.name}.{role}: new graph differs "
                                      f"(shipped {vs_shipped:.1e}, torch {vs_torch:.1e})")
                worst = max(worst, vs_torch)
            fresh[role] = path
        config = _train_config(entry, data_dir, allow_download)
        for role, path in fresh.items():
            rel = entry.files[role].path
            shutil.copyfile(path, models_dir / float_rel(entry.name, rel))
            new.files[role] = served_file(models_dir, rel, config)
    new.parity_max_abs_diff = worst
    new.versions = {"torch": torch.__version__, "onnx": onnx.__version__,
                    "onnxruntime": ort.__version__}
    new.metrics, new.baselines, new.evaluation = {}, {}, {}
    log.info("%s/%s re-exported (weights from the %s)", entry.dataset, entry.name, source)
    return new


def reexport(dataset: str, models_dir: Path, runs_dir: Path, names: list[str] | None = None,
             data_dir: str | None = None, allow_download: bool = False) -> list[ModelEntry]:
    """Re-export the named models of `dataset` (all by default), recording each as it is done
    (so that a failure leaves every file matching its manifest entry)."""
    manifest = load_manifest(models_dir)
    entries = [e for e in manifest.models
               if e.dataset == dataset and (names is None or e.name in names)]
    if not entries:
        raise KeyError(f"no models of {dataset!r} named {names or 'any'} in {models_dir}")
    done = []
    for entry in entries:
        done.append(reexport_model(entry, models_dir, runs_dir, data_dir=data_dir,
                                   allow_download=allow_download))
        record(models_dir, done[-1:])
    return done
