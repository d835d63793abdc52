"""The model set a benchmark runs on: the shipped one, or a stand-in of the same architecture.

The benchmark needs, for one dataset, the models behind the endpoints it drives
(`ae` for `encode`, `denoiser` for `denoise`). When `exported_models/` holds them
(the normal case once `python -m training train-all` has run) they are used as
they are. Otherwise a stand-in set is exported into `runs/bench-models/` with
the shipped architectures (the defaults of `training.models.MODELS`): weights
from `runs/<dataset>/<model>/best.pt` when a checkpoint exists, else freshly
initialised; speed depends on the architecture, not on the weight values. The
stand-in's manifest says so in each entry's description.
"""

from __future__ import annotations

import logging
from pathlib import Path

from service.manifest import MANIFEST_NAME, load_manifest

log = logging.getLogger(__name__)
NEEDED = ("ae", "denoiser")


def has_models(models_dir: Path, dataset: str, names: tuple[str, ...] = NEEDED) -> bool:
    """Whether `models_dir` holds a manifest with every model of `names` for `dataset`."""
    if not (Path(models_dir) / MANIFEST_NAME).is_file():
        return False
    served = {(m.dataset, m.name) for m in load_manifest(models_dir).models}
    return all((dataset, name) in served for name in names)


def build_standin(out: Path, dataset: str, runs_dir: Path, names: tuple[str, ...] = NEEDED) -> Path:
    """Export `names` with the shipped architectures into `out` (see the module docstring)."""
    import numpy as np
    import torch

    from training.export import export_model, record
    from training.models import build_model
    from training.train import TrainConfig, TrainResult

    out = Path(out)
    entries = []
    for name in names:
        checkpoint = Path(runs_dir) / dataset / name / "best.pt"
        kwargs: dict = {}
        source = "freshly initialised weights"
        state = None
        if checkpoint.is_file():
            state = torch.load(checkpoint, map_location="cpu", weights_only=False)
            kwargs = state["config"].get("model_kwargs", {})
            source = f"weights of {checkpoint}"
        model = build_model(name, **kwargs)
        if state is not None:
            model.load_state_dict(state["model"])
        model.eval()
        config = TrainConfig(model=name, dataset=dataset, synthetic=True, model_kwargs=kwargs)
        result = TrainResult(
            model=model,
            config=config,
            history=[],
            best_val_loss=0.0,
            epochs_run=0,
            wall_time_s=0.0,
            train_examples=0,
            val_examples=0,
            sample_images=np.random.default_rng(0).random((8, 1, 28, 28), dtype=np.float32),
        )
        log.info("exporting a stand-in %s/%s (%s) into %s", dataset, name, source, out)
        entry = export_model(result, out, result.sample_images)
        entry.description = f"Benchmark stand-in: shipped architecture, {source}."
        entries.append(entry)
    record(out, entries)
    return out
