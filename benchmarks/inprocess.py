"""In-process figures: onnxruntime against torch eager per graph, and onnxruntime's own limit.

Torch eager runs the model as trained (say a transposed conv where the graph
has its export form, `training.models.UpConv`) on the same weights as the graph
it is compared with: those of the run's checkpoint or of the shipped graph's
own initializers, whichever reproduces the graph (`training.reexport.shipped_weights`);
the shipped graph is timed (for an int8 model, its int8 file). Failing both, a
freshly initialised module is exported on the fly and that file is timed. Each
figure says which (`weights`).

torch gets as many intra-op threads as onnxruntime, and onnxruntime runs with
the service's own session options (`service.registry.session_options`). Timings
alternate torch and onnxruntime in blocks of calls (`alternating_blocks`), so
drift on a noisy machine hits both alike; figures are medians. Blocks, not
single calls: after each call torch's OpenMP workers spin-wait for more work,
and an onnxruntime call made right then shares its cores with them (call by
call, onnxruntime's time on the small encoders nearly doubled). torch's heap is
kept warm (`warm_heap`).

torch and the training package are imported lazily: only this module needs them.
"""

from __future__ import annotations

import logging
import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from service.heap import M_MMAP_THRESHOLD, M_TRIM_THRESHOLD, mallopt
from service.manifest import Manifest
from service.registry import session_options

log = logging.getLogger(__name__)


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
    """Images/s of onnxruntime in-process on `batch` (the serving limit): the better of one
    session with `threads` intra-op threads, and a single-threaded session called from
    `threads` threads at once, each on a share of the batch (the service's way)."""
    whole = ort_session(path, threads)
    seconds = [median_time(lambda: whole.run(None, {feed_name: batch}), min_time)]
    if threads > 1:
        single = ort_session(path, 1)
        shares = np.array_split(batch, threads)
        with ThreadPoolExecutor(threads) as pool:
            def run_shares():
                list(pool.map(lambda share: single.run(None, {feed_name: share}), shares))

            seconds.append(median_time(run_shares, min_time))
    return batch.shape[0] / min(seconds)


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
    int8: bool = False  # the timed file is the int8 form of the float32 weights


def torch_graphs(
    manifest: Manifest,
    models_dir: Path,
    dataset: str,
    names: list[str] | None,
    runs_dir: Path,
    scratch: Path | None = None,
) -> list[TorchGraph]:
    """Each model's graphs rebuilt in torch, with the weights of the ONNX file timed beside."""
    from training.export import ExportError, export_graph, graph_inputs, parity
    from training.models import build_model
    from training.reexport import shipped_weights

    scratch = scratch or Path(tempfile.mkdtemp(prefix="ae-bench-onnx-"))
    probe = images(4)[:, None]
    out: list[TorchGraph] = []
    for entry in manifest.models:
        if entry.dataset != dataset or (names is not None and entry.name not in names):
            continue
        scale = entry.scale or 1
        try:
            model, source, diffs = shipped_weights(entry, models_dir, runs_dir, probe)
            weights = f"{source} (reproduces the shipped graph)"
            if any(spec.int8 for spec in entry.files.values()):
                weights = f"{source} (reproduces the float32 export; its int8 form is timed)"
        except ExportError:
            model = build_model(entry.name, **entry.training.config.get("model_kwargs", {}))
            model, weights, diffs = model.eval(), "freshly initialised; exported on the fly", None
        for role, graph in model.graphs().items():
            int8 = diffs is not None and entry.files[role].int8 is not None
            if diffs is not None:
                path, diff = models_dir / entry.files[role].path, diffs[role]
                if int8:  # diffs compare torch with the float32 source: now the int8 file
                    diff = parity(graph, path, graph_inputs(graph, probe, scale))
            else:
                path = scratch / f"{dataset}-{entry.name}-{role}.onnx"
                export_graph(graph, path)
                diff = parity(graph, path, graph_inputs(graph, probe, scale))
            out.append(TorchGraph(dataset, entry.name, role, graph.module.eval(), graph, path,
                                  weights, diff, scale, int8))
    return out


def warm_heap() -> None:
    """Serve torch's activations from a heap that keeps them, as in a long-running process.

    torch allocates with malloc, and glibc maps (and zeroes) each buffer above its
    mmap threshold afresh, until enough frees raise the threshold: torch's decoders
    take ~1.6x longer in that cold state, and which graphs run in it depends on what
    ran before. Fixing the threshold at its 32 MB maximum and never trimming gives
    every graph the warm state. onnxruntime allocates from its own arena either way.
    """
    mallopt(M_MMAP_THRESHOLD, 32 << 20)
    mallopt(M_TRIM_THRESHOLD, 1 << 30)


BLOCK_CALLS = 8
BLOCK_GAP_S = 0.02  # lets the previous runtime's worker threads go back to sleep


def alternating_blocks(
    run_a: Callable[[], object], run_b: Callable[[], object], min_time: float
) -> tuple[list[float], list[float]]:
    """Seconds per call of `a` and `b`, timed in alternating blocks of `BLOCK_CALLS`.

    Each block starts with an untimed call and a short pause, so neither runtime
    is timed while the other's thread pool is still awake.
    """
    times: tuple[list[float], list[float]] = ([], [])
    start = time.perf_counter()
    while len(times[1]) < 3 * BLOCK_CALLS or time.perf_counter() - start < 2 * min_time:
        for fn, acc in zip((run_a, run_b), times, strict=True):
            time.sleep(BLOCK_GAP_S)
            fn()
            for _ in range(BLOCK_CALLS):
                t = time.perf_counter()
                fn()
                acc.append(time.perf_counter() - t)
    return times


def torch_vs_ort(graphs: list[TorchGraph], batch: int, threads: int, min_time: float) -> list[dict]:
    """Per graph: median ms per batch for torch eager and onnxruntime, and the speed-up."""
    import torch

    from training.export import graph_inputs

    torch.set_num_threads(threads)
    warm_heap()
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

        torch_times, ort_times = alternating_blocks(run_torch, run_ort, min_time)
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
                "int8": item.int8,
                "onnx": str(item.onnx_path),
            }
        )
        log.info("%s: torch %.2f ms, ort %.2f ms", rows[-1]["graph"], 1e3 * t_torch, 1e3 * t_ort)
    return rows
