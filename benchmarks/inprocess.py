"""In-process figures: onnxruntime against torch eager per graph, and onnxruntime's own limit.

Torch eager runs on the same weights as the graph it is compared with. For each
model the weights come from, in order of preference:

1. `runs/<dataset>/<model>/best.pt`, when its architecture arguments match the
   manifest entry's, and the shipped ONNX graph reproduces it (max abs diff
   <= 1e-4 on real-shaped inputs): the shipped graph is timed;
2. the shipped ONNX file itself: its initializers carry the state-dict names,
   so they load straight into the rebuilt module (again checked for parity);
3. otherwise a freshly initialised module, exported on the fly with
   `training.export.export_graph`, and that file is timed.

Each figure says which (`weights`). torch gets as many intra-op threads as
onnxruntime, and onnxruntime runs with the service's own session options
(`service.registry.session_options`). Timings alternate torch and onnxruntime
call by call, so drift on a noisy machine hits both alike; figures are medians.

torch and the training package are imported lazily: only this module needs them.
"""

from __future__ import annotations

import logging
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from service.manifest import Manifest, ModelEntry
from service.registry import session_options

log = logging.getLogger(__name__)
PARITY = 1e-4


def images(n: int, side: int = 28, seed: int = 0) -> np.ndarray:
    """`n` smooth digit-like float32 images `[n,side,side]` in [0,1] (blobs on black)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32)
    scale = side / 28
    centres = rng.uniform(8 * scale, 20 * scale, size=(n, 2, 1, 1)).astype(np.float32)
    width = rng.uniform(10, 40, size=(n, 1, 1)).astype(np.float32) * scale * scale
    blobs = np.exp(-((yy - centres[:, 0]) ** 2 + (xx - centres[:, 1]) ** 2) / width)
    noise = rng.uniform(0, 0.1, size=blobs.shape).astype(np.float32)
    return np.clip(blobs + noise, 0, 1).astype(np.float32)


def ort_session(path: Path, threads: int) -> ort.InferenceSession:
    """A session with the service's options."""
    return ort.InferenceSession(
        str(path), session_options(threads), providers=["CPUExecutionProvider"]
    )


def median_time(fn: Callable[[], object], min_time: float, min_reps: int = 3) -> float:
    """Median seconds per call of `fn`, after one warm-up call."""
    fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_reps or time.perf_counter() - start < min_time:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def ort_images_per_s(
    path: Path, feed_name: str, batch: np.ndarray, threads: int, min_time: float
) -> float:
    """Images/s of one onnxruntime session on `batch` (in-process: the serving limit)."""
    session = ort_session(path, threads)
    seconds = median_time(lambda: session.run(None, {feed_name: batch}), min_time)
    return batch.shape[0] / seconds


# ------------------------------------------------------------------ torch vs onnxruntime


@dataclass
class TorchGraph:
    """One graph of one model: the torch module and the ONNX file with the same weights."""

    dataset: str
    model: str
    role: str
    module: object  # torch.nn.Module
    graph: object  # training.models.Graph
    onnx_path: Path
    weights: str  # where the weights came from (module docstring)
    parity: float
    scale: int = 1  # upscalers take images `scale` times smaller


def _checkpoint(runs_dir: Path, entry: ModelEntry) -> dict | None:
    """The best checkpoint of this model, if its architecture matches the shipped one."""
    import torch

    path = runs_dir / entry.dataset / entry.name / "best.pt"
    if not path.is_file():
        return None
    state = torch.load(path, map_location="cpu", weights_only=False)
    shipped = entry.training.config.get("model_kwargs", {})
    if _normal(state["config"].get("model_kwargs", {})) != _normal(shipped):
        log.info("%s: architecture differs from the shipped model; not used", path)
        return None
    return state


def _normal(kwargs: dict) -> dict:
    return {k: list(v) if isinstance(v, tuple | list) else v for k, v in kwargs.items()}


def _parity(module, graph, path: Path, inputs) -> float:
    import torch

    with torch.inference_mode():
        expected = module(*inputs)
    expected = expected if isinstance(expected, tuple) else (expected,)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {n: t.numpy() for n, t in zip(graph.input_names, inputs, strict=True)}
    got = session.run(None, feeds)
    return max(float(np.abs(e.numpy() - g).max()) for e, g in zip(expected, got, strict=True))


def _load_from_onnx(module, path: Path) -> bool:
    """Copy the ONNX initializers named like the module's parameters into it."""
    import onnx
    import torch
    from onnx import numpy_helper

    stored = {i.name: i for i in onnx.load(str(path)).graph.initializer}
    state = module.state_dict()
    found = {
        k: torch.from_numpy(numpy_helper.to_array(stored[k]).copy()) for k in state if k in stored
    }
    if not found:
        return False
    module.load_state_dict(found, strict=False)
    return True


def torch_graphs(
    manifest: Manifest,
    models_dir: Path,
    dataset: str,
    names: list[str] | None,
    runs_dir: Path,
    scratch: Path | None = None,
) -> list[TorchGraph]:
    """Each model's graphs rebuilt in torch, with the weights of the ONNX file timed beside."""
    from training.export import export_graph, graph_inputs
    from training.models import build_model

    scratch = scratch or Path(tempfile.mkdtemp(prefix="ae-bench-onnx-"))
    probe = images(4)[:, None]
    out: list[TorchGraph] = []
    for entry in manifest.models:
        if entry.dataset != dataset or (names is not None and entry.name not in names):
            continue
        kwargs = entry.training.config.get("model_kwargs", {})
        state = _checkpoint(runs_dir, entry)
        model = build_model(entry.name, **kwargs)
        if state is not None:
            model.load_state_dict(state["model"])
        model.eval()
        scale = entry.scale or 1
        for role, graph in model.graphs().items():
            module = graph.module.eval()
            inputs = graph_inputs(graph, probe, scale)
            shipped = models_dir / entry.files[role].path
            weights, path, diff = "", shipped, float("inf")
            if state is not None:
                diff = _parity(module, graph, shipped, inputs)
                weights = f"checkpoint runs/{dataset}/{entry.name}/best.pt; shipped graph"
            elif _load_from_onnx(module, shipped):
                diff = _parity(module, graph, shipped, inputs)
                weights = "read from the shipped graph"
            if diff > PARITY:
                if state is None:  # fall back to fresh weights, exported on the fly
                    module = build_model(entry.name, **kwargs).graphs()[role].module.eval()
                    graph.module = module
                    weights = "freshly initialised; exported on the fly"
                else:
                    weights = (
                        f"checkpoint runs/{dataset}/{entry.name}/best.pt (differs from the "
                        "shipped graph); exported on the fly"
                    )
                path = scratch / f"{dataset}-{entry.name}-{role}.onnx"
                export_graph(graph, path)
                diff = _parity(module, graph, path, inputs)
            out.append(
                TorchGraph(dataset, entry.name, role, module, graph, path, weights, diff, scale)
            )
    return out


def torch_vs_ort(graphs: list[TorchGraph], batch: int, threads: int, min_time: float) -> list[dict]:
    """Per graph: median ms per batch for torch eager and onnxruntime, and the speed-up."""
    import torch

    from training.export import graph_inputs

    torch.set_num_threads(threads)
    base = images(batch)[:, None]
    rows = []
    for item in graphs:
        inputs = graph_inputs(item.graph, base, item.scale)
        feeds = {n: t.numpy() for n, t in zip(item.graph.input_names, inputs, strict=True)}
        session = ort_session(item.onnx_path, threads)

        def run_torch(module=item.module, inputs=inputs):
            with torch.inference_mode():
                module(*inputs)

        def run_ort(session=session, feeds=feeds):
            session.run(None, feeds)

        run_torch(), run_ort()  # warm-up
        torch_times, ort_times = [], []
        start = time.perf_counter()
        while len(torch_times) < 3 or time.perf_counter() - start < 2 * min_time:
            for fn, acc in ((run_torch, torch_times), (run_ort, ort_times)):
                t = time.perf_counter()
                fn()
                acc.append(time.perf_counter() - t)
        t_torch, t_ort = statistics.median(torch_times), statistics.median(ort_times)
        rows.append(
            {
                "graph": f"{item.dataset}/{item.model}.{item.role}",
                "batch": batch,
                "torch_ms": 1e3 * t_torch,
                "ort_ms": 1e3 * t_ort,
                "ratio": t_torch / t_ort,
                "reps": len(ort_times),
                "weights": item.weights,
                "parity_max_abs_diff": item.parity,
                "onnx": str(item.onnx_path),
            }
        )
        log.info("%s: torch %.2f ms, ort %.2f ms", rows[-1]["graph"], 1e3 * t_torch, 1e3 * t_ort)
    return rows
