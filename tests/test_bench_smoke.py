"""CI smoke of the benchmark (`python -m benchmarks --smoke`): every figure, and its JSON.

Runs the whole pipeline for seconds on the tiny model set: torch vs onnxruntime,
the real `bentoml serve`, the FastAPI baseline, the load generator. Bars are
not checked here (a shared CI box is too noisy for speed ratios); that the
figures exist and that no request failed is. The full run is a separate command
(docs/PERFORMANCE.md).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
FIGURES = (
    "ort_vs_torch",
    "binary_vs_inprocess",
    "json_batch_vs_baseline",
    "single_rps_vs_baseline",
    "single_p99_vs_baseline",
    "start_to_ready_s",
    "worker_rss_mb",
)


@pytest.mark.integration
def test_benchmark_smoke_produces_every_figure(tiny_models_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    command = [
        sys.executable, "-m", "benchmarks", "--smoke",
        "--models-dir", str(tiny_models_dir), "--out", str(out),
    ]  # fmt: skip
    done = subprocess.run(
        command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=240, check=False
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]

    results = json.loads(out.read_text())
    figures = results["figures"]
    assert set(FIGURES) <= set(figures)
    for name in FIGURES:
        ratio = figures[name]["ratio"]
        assert isinstance(ratio, float) and math.isfinite(ratio) and ratio > 0, (name, ratio)
        assert isinstance(figures[name]["met"], bool), name
    assert "| figure | measured |" in done.stdout  # the table was printed

    graphs = {row["graph"] for row in figures["ort_vs_torch"]["rows"]}
    assert {"mnist/ae.encoder", "mnist/denoiser.model"} <= graphs
    for row in figures["ort_vs_torch"]["rows"]:
        # torch and onnxruntime: same weights; the denoiser's file is their int8 form
        assert row["int8"] == (row["graph"] == "mnist/denoiser.model"), row
        if row["int8"]:
            assert 1e-4 < row["parity_max_abs_diff"] < 0.5, row
        else:
            assert row["parity_max_abs_diff"] <= 1e-4, row

    for name in ("json_batch_vs_baseline", "single_rps_vs_baseline"):
        for endpoint in ("encode", "denoise"):
            row = figures[name]["endpoints"][endpoint]
            assert row["service"]["requests"] > 0 and row["baseline"]["requests"] > 0
    # Adaptive batching never turns load into errors.
    service_runs = [s for s in results["scenarios"] if s["server"] == "service"]
    assert service_runs and all(s["errors"] == 0 for s in service_runs), service_runs
    assert figures["worker_rss_mb"]["requests_served"] > 0
    assert results["meta"]["same_answers_max_abs_diff"]["encode"] <= 1e-4
    every = results["meta"]["worker_rss_every_graph_mb"]
    assert every["requests"] >= 12 and every["rss_mb"] > 0  # one request per graph


def test_architecture_comparison_runs(tmp_path: Path) -> None:
    """`python -m benchmarks.architectures` times a candidate in torch, onnxruntime and training."""
    out = tmp_path / "arch.json"
    command = [sys.executable, "-m", "benchmarks.architectures", "--only", "decoder.shipped",
               "--batch", "8", "--seconds", "0.05", "--out", str(out)]
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=240,
                          check=False)
    assert done.returncode == 0, done.stderr[-4000:]
    (row,) = json.loads(out.read_text())
    assert row["graph"] == "decoder.shipped" and row["params"] > 0
    assert row["torch_ms"] > 0 and row["ort_ms"] > 0 and row["train_step_ms_1thread"] > 0


def test_memory_figures_run(tiny_models_dir: Path, tmp_path: Path) -> None:
    """`python -m benchmarks.memory` measures its cases in fresh processes and writes them."""
    out = tmp_path / "memory.json"
    command = [sys.executable, "-m", "benchmarks.memory", "--models-dir", str(tiny_models_dir),
               "--only", "sessions_memfd", "denoiser_rows_64", "--out", str(out)]
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=240,
                          check=False)
    assert done.returncode == 0, done.stderr[-4000:]
    rows = json.loads(out.read_text())
    assert [r["case"] for r in rows] == ["sessions_memfd", "denoiser_rows_64"]
    assert all(r["graphs"] > 0 and r["added_mb"] > 0 for r in rows)
